#!/usr/bin/env bash
# A run is never lost and bad input never accepted (TAP): resume without a
# checkpoint, a new run over an old one, pruning, leftovers of crashes,
# signals, out-of-range options, binary and non-UTF-8 data, llm.c token
# files, tokenize and eval edge cases. $1: the tessera binary.
set -u
tessera=$1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export TESSERA_DATA_CACHE=$work/token-cache
. "$(dirname "$0")/tap.sh"
loud=(--device cpu --layers 1 --heads 2 --width 32 --seq-len 32 --batch 4 --lr 0.003 --warmup 2)
small=("${loud[@]}" --quiet)
run() { "$tessera" train "${small[@]}" "$@"; }

echo "TAP version 13"
echo "1..25"

# 1. --resume where there is nothing to resume: an error, nothing written
mkdir -p "$work/empty"
err=$(run --resume --out "$work/empty" --steps 2 2>&1); rc=$?
[ $rc -ne 0 ] && echo "$err" | grep -q "no checkpoint to resume" && [ -z "$(ls -A "$work/empty")" ]
check "--resume without a checkpoint is an error and writes nothing" $? "exit $rc: $err" "$(ls -A "$work/empty")"

# 2. a damaged `latest`: garbage, a path out of the run, a missing checkpoint
run --steps 4 --ckpt-every 2 --out "$work/r" >/dev/null 2>&1
before=$(ls "$work/r" | tr '\n' ' ')
log_lines=$(wc -l <"$work/r/log.jsonl")
bad=""
for content in "garbage" "../../etc" "step_00000099"; do
    echo "$content" >"$work/r/latest"
    err=$(run --resume --out "$work/r" --steps 6 2>&1); rc=$?
    { [ $rc -ne 0 ] && echo "$err" | grep -q "latest"; } || bad="$bad '$content' (exit $rc: $err);"
done
echo step_00000004 >"$work/r/latest"
[ -z "$bad" ] && [ "$(ls "$work/r" | tr '\n' ' ')" = "$before" ] && [ "$(wc -l <"$work/r/log.jsonl")" -eq "$log_lines" ]
check "--resume with a damaged latest file fails, naming it, and changes nothing" $? "$bad" "before: $before" \
    "after: $(ls "$work/r" | tr '\n' ' ')"

# 3. a new run into a directory that holds one is refused, unless --force
err=$(run --steps 1 --ckpt-every 1 --out "$work/r" 2>&1); rc=$?
[ $rc -ne 0 ] && echo "$err" | grep -q -- "--force" && [ "$(cat "$work/r/latest")" = step_00000004 ] &&
    [ -d "$work/r/step_00000004" ]
check "a new run into an existing run directory is refused and the old run kept" $? "exit $rc: $err"
run --steps 1 --ckpt-every 1 --out "$work/r" --force >/dev/null 2>&1; rc=$?
[ $rc -eq 0 ] && [ "$(cat "$work/r/latest")" = step_00000001 ] && [ ! -d "$work/r/step_00000004" ] &&
    [ "$(grep -c '"loss"' "$work/r/log.jsonl")" -eq 1 ]
check "--force starts the run over: old checkpoints and log gone" $? "exit $rc, latest $(cat "$work/r/latest")" \
    "$(ls "$work/r" | tr '\n' ' ')"

# 4. pruning keeps the newest checkpoints and whatever latest and best name
run --steps 6 --ckpt-every 1 --keep 2 --out "$work/p" >/dev/null 2>&1
kept=$(ls -d "$work/p"/step_* | xargs -n1 basename | tr '\n' ' ')
[ "$kept" = "step_00000005 step_00000006 " ] && [ "$(cat "$work/p/latest")" = step_00000006 ] &&
    [ "$(cat "$work/p/best")" = step_00000006 ]
check "--keep 2 keeps the two newest checkpoints (latest and best among them)" $? "kept: $kept"
echo step_00000005 >"$work/p/best"
run --resume --steps 9 --ckpt-every 1 --keep 1 --out "$work/p" --eval-batches 0 >/dev/null 2>&1
kept=$(ls -d "$work/p"/step_* | xargs -n1 basename | tr '\n' ' ')
[ "$kept" = "step_00000005 step_00000009 " ]
check "pruning never removes the checkpoint best names" $? "kept: $kept"

# 5. leftovers of a crash are removed when the run resumes
touch "$work/p/.tmp-tessera-AbC123"
mkdir -p "$work/p/.tmp-step_00000010" && touch "$work/p/.tmp-step_00000010/model.safetensors"
run --resume --steps 10 --out "$work/p" >/dev/null 2>&1; rc=$?
left=$(find "$work/p" -maxdepth 1 -name '.tmp-*' | wc -l)
[ $rc -eq 0 ] && [ "$left" -eq 0 ]
check "stray temporary files of a crash are cleaned on resume" $? "exit $rc, $left left"

# 6. resuming a finished run says so and keeps its loss
out=$("$tessera" train --device cpu --resume --out "$work/p" 2>&1); rc=$?
[ $rc -eq 0 ] && echo "$out" | grep -q "is complete: step 10 of 10, last loss [0-9]" && ! echo "$out" | grep -qi nan
check "resuming a finished run reports it complete with its last loss" $? "exit $rc: $(echo "$out" | tail -2)"

# 7. a resumed run keeps its settings: a different --lr is refused, naming both
err=$(run --resume --steps 12 --out "$work/p" --lr 0.5 2>&1); rc=$?
[ $rc -eq 2 ] && echo "$err" | grep -q "lr (0.003 vs 0.5)"
check "--resume refuses options that would change the run, naming saved and given values" $? "exit $rc: $err"

# 8-9. SIGINT and SIGTERM: finish the step, checkpoint, summary, 130/143
for sig in INT TERM; do
    "$tessera" train "${loud[@]}" --steps 100000 --out "$work/s$sig" --log "$work/s$sig.jsonl" \
        >"$work/s$sig.out" 2>&1 &
    pid=$!
    for _ in $(seq 200); do grep -qs '"step": 20,' "$work/s$sig.jsonl" && break; sleep 0.05; done
    kill -$sig $pid
    wait $pid
    rc=$?
    want=$([ $sig = INT ] && echo 130 || echo 143)
    latest=$(cat "$work/s$sig/latest" 2>/dev/null)
    step=$(sed -n 's/^{"step": \([0-9]*\), "loss".*/\1/p' "$work/s$sig.jsonl" | tail -1)
    [ $rc -eq "$want" ] && [ "$latest" = "$(printf 'step_%08d' "${step:-0}")" ] &&
        grep -q "stopped by SIG$sig after step $step" "$work/s$sig.out" && grep -q '"event": "stopped"' "$work/s$sig.jsonl"
    check "SIG$sig ends the run after the step in flight with a checkpoint and exit $want" $? \
        "exit $rc, latest '$latest', last logged step '$step'" "$(tail -3 "$work/s$sig.out")"
done

# 10. values out of range are refused, not replaced by defaults
bad=""
for opt in "--seq-len 0" "--width 0" "--layers 0" "--batch 0" "--context 0" "--lr -1" "--threads -2" "--keep -1" \
    "--steps -1" "--heads 0" "--eval-batches -1" "--width 2000000000 --heads 1" "--grad-clip -1" "--beta2 1"; do
    err=$("$tessera" train --device cpu $opt --steps 1 2>&1); rc=$?
    { [ $rc -eq 2 ] && echo "$err" | grep -q "must be between"; } || bad="$bad [$opt: exit $rc: $err]"
done
[ -z "$bad" ]
check "every out-of-range option is an error naming its range" $? "$bad"

# 11. --steps 0 writes the untrained model
run --steps 0 --out "$work/zero" >/dev/null 2>&1; rc=$?
[ $rc -eq 0 ] && [ "$(cat "$work/zero/latest" 2>/dev/null)" = step_00000000 ] &&
    "$tessera" sample --device cpu --checkpoint "$work/zero" --tokens 3 >/dev/null 2>&1
check "--steps 0 saves the untrained model as a checkpoint" $? "exit $rc" "$(ls "$work/zero" 2>&1)"

# 12. a model or batch that cannot fit is refused before any allocation
err=$(timeout 60 "$tessera" train --device cpu --seq-len 65536 --batch 512 --steps 1 --out "$work/huge" 2>&1); rc=$?
[ $rc -eq 1 ] && echo "$err" | grep -q "needs about" && [ ! -e "$work/huge" ]
check "a run too big for the device is refused, naming the memory it needs, and leaves no directory" $? \
    "exit $rc: $err"

# 13. the built-in task past its old 4096-token limit works
err=$(run --seq-len 5000 --context 5000 --batch 1 --steps 1 2>&1); rc=$?
[ $rc -eq 0 ]
check "the built-in task fills sequences longer than 4096 tokens" $? "exit $rc: $err"

# 14-15. binary data and invalid UTF-8 are not text
head -c 4096 "$tessera" >"$work/binary.dat"
err=$(run --data "$work/binary.dat" --steps 1 --out "$work/binrun" 2>&1); rc=$?
[ $rc -eq 1 ] && echo "$err" | grep -q "NUL byte at offset" && [ ! -e "$work/binrun" ]
check "binary data is refused as text and leaves no run directory" $? "exit $rc: $err"
printf 'good text\nthen \xc3\x28 bad\n' >"$work/latin.txt"
err=$("$tessera" tokenize --input "$work/latin.txt" --output "$work/latin.tok" 2>&1); rc=$?
[ $rc -eq 1 ] && echo "$err" | grep -q "not valid UTF-8: byte 0xc3 at offset 15"
check "invalid UTF-8 is reported with its byte offset" $? "exit $rc: $err"

# 16. llm.c's token files are read as token files (GPT-2 vocabulary)
python3 - "$work/llmc.bin" <<'PY'
import struct, sys, random
random.seed(3)
toks = [random.randrange(50257) for _ in range(5000)]
head = [20240520, 1, len(toks)] + [0] * 253
open(sys.argv[1], "wb").write(struct.pack("<256i", *head) + struct.pack("<%dH" % len(toks), *toks))
PY
out=$("$tessera" train "${loud[@]}" --data "$work/llmc.bin" --steps 2 --out "$work/llmc" --sample-tokens 0 2>&1); rc=$?
[ $rc -eq 0 ] && echo "$out" | grep -q "5000 training tokens\|4500 training tokens" &&
    grep -q '"vocab_size": 50257' "$work/llmc/step_00000002/state.json"
check "an llm.c .bin token file trains with its GPT-2 vocabulary" $? "exit $rc: $(echo "$out" | head -4)"

# 17-18. tokenize: directories, pipes and unwritable outputs
err=$("$tessera" tokenize --input "$work" --output "$work/dir.tok" 2>&1); rc=$?
[ $rc -eq 1 ] && echo "$err" | grep -q "is a directory" && [ ! -e "$work/dir.tok" ]
check "tokenize refuses a directory as input" $? "exit $rc: $err"
out=$(printf 'hello from a pipe\n' | "$tessera" tokenize --input - --output "$work/pipe.tok" 2>&1); rc=$?
err=$("$tessera" tokenize --input "$work/latin.txt" --output "$work/no/such/dir/x.tok" 2>&1); rc2=$?
[ $rc -eq 0 ] && echo "$out" | grep -q "18 bytes -> 18 tokens" && [ $rc2 -eq 1 ]
check "tokenize reads a pipe to its end and reports an unwritable output" $? "pipe exit $rc: $out" "exit $rc2: $err"

# 19. eval: a token file of another tokenizer is refused
for i in $(seq 80); do echo "line $i of a small corpus for the tokenizer test"; done >"$work/corpus.txt"
"$tessera" tokenize --input "$work/corpus.txt" --output "$work/bpe.tok" --tokenizer bpe:300 >/dev/null 2>&1
err=$("$tessera" eval --device cpu --checkpoint "$work/p" --data "$work/bpe.tok" --seq-len 8 2>&1); rc=$?
[ $rc -eq 1 ] && echo "$err" | grep -q "another tokenizer"
check "eval refuses a token file made by another tokenizer" $? "exit $rc: $err"

# 20. eval scores every token of the file, the first one included
python3 -c 'import sys; sys.stdout.write(("0123456789abcdef" * 17)[:257])' >"$work/exact.txt"
out=$("$tessera" eval --device cpu --checkpoint "$work/p" --data "$work/exact.txt" --seq-len 32 --batch 8 2>&1); rc=$?
[ $rc -eq 0 ] && echo "$out" | grep -q "over 256 tokens of .* (the whole file)"
check "eval over a file of B*T+1 tokens scores all B*T predictions" $? "exit $rc: $out"

# 21. a run that fails its checks leaves no files behind
err=$("$tessera" train --device cpu --data "$work/missing.txt" --out "$work/nothing" 2>&1); rc=$?
[ $rc -ne 0 ] && [ ! -e "$work/nothing" ]
check "a run that fails before training leaves no run directory" $? "exit $rc: $err"

# 22. an edited state.json that contradicts the weights is refused
cp -r "$work/p" "$work/edited"
sed -i 's/"n_layer": 1/"n_layer": 3/' "$work/edited/$(cat "$work/edited/latest")/state.json"
err=$("$tessera" train --device cpu --resume --out "$work/edited" --steps 12 --quiet 2>&1); rc=$?
[ $rc -ne 0 ] && echo "$err" | grep -q "not the one state.json describes"
check "an edited state.json that contradicts the weights is refused" $? "exit $rc: $err"

# 23. a fractional seed in state.json is a format error, not undefined behaviour
cp -r "$work/p" "$work/seed"
sed -i 's/"seed": [0-9]*/"seed": 1.5/' "$work/seed/$(cat "$work/seed/latest")/state.json"
err=$("$tessera" train --device cpu --resume --out "$work/seed" --steps 12 --quiet 2>&1); rc=$?
[ $rc -ne 0 ] && echo "$err" | grep -q '"seed" must be a non-negative integer'
check "a fractional seed in state.json is refused" $? "exit $rc: $err"

exit $(( fails > 0 ))
