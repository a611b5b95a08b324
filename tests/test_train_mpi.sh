#!/usr/bin/env bash
# Parallel training end to end: `mpirun ... tessera train` in every layout
# against one process (TAP). $1: the tessera binary, $2: mpirun.
#
# Tolerances: over 12 AdamW steps every layout's losses stay within 1e-5
# (relative) of one process training on the same batches; layouts sum the
# same numbers in other orders, and Adam lets such differences grow a
# little each step. Resumed runs are compared the same way.
set -u
tessera=$1
mpirun=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export TESSERA_DATA_CACHE=$work/token-cache
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export TESSERA_THREADS=1 POCL_MAX_PTHREAD_COUNT=1
mpi() { local np=$1; shift; timeout 300 "$mpirun" --allow-run-as-root --oversubscribe -np "$np" "$@"; }
. "$(dirname "$0")/tap.sh"

echo "TAP version 13"
echo "1..24"

# a model that every layout can divide: 4 layers, 4 heads, vocabulary 256
small=(--device cpu --layers 4 --heads 4 --width 64 --seq-len 32 --batch 8 --accum 2 --lr 0.003 --warmup 4 --steps 12 --eval-batches 2 --quiet)

"$tessera" train "${small[@]}" --out "$work/one" >"$work/one.out" 2>&1
rc=$?
check "one process trains the reference run" $rc "$(tail -5 "$work/one.out")"

# 2. data parallel
mpi 2 "$tessera" train "${small[@]}" --out "$work/dp2" >"$work/dp2.out" 2>&1
rc=$?; d=$(maxrel "$work/dp2/log.jsonl" "$work/one/log.jsonl")
[ $rc -eq 0 ] && within "$d" 1e-5
check "data parallel 2 follows one process's losses (largest relative difference $d)" $? "exit $rc" "$(tail -5 "$work/dp2.out")"

# 3-5. the hybrids on four processes
for layout in "tp 2 x dp 2:--tp 2" "tp 2 x pp 2:--tp 2 --pp 2" "dp 2 x pp 2, ZeRO-1, ring:--pp 2 --zero --strategy ring"; do
    name=${layout%%:*}; flags=${layout#*:}; dir=$work/$(echo "$name" | tr -c 'a-z0-9' _)
    # shellcheck disable=SC2086
    mpi 4 "$tessera" train "${small[@]}" $flags --out "$dir" >"$dir.out" 2>&1
    rc=$?; d=$(maxrel "$dir/log.jsonl" "$work/one/log.jsonl")
    [ $rc -eq 0 ] && within "$d" 1e-5
    check "hybrid $name follows one process's losses (largest relative difference $d)" $? "exit $rc" "$(tail -5 "$dir.out")"
done

# bf16 products under tensor parallelism: bf16 activations, and the
# vocabulary-parallel logits in bf16 too; against one process in bf16
# (rounding to bf16 after sums in another order flips a few roundings:
# 7e-5 over these 12 steps on Zen 5)
"$tessera" train "${small[@]}" --dtype bf16 --out "$work/one16" >"$work/one16.out" 2>&1
mpi 2 "$tessera" train "${small[@]}" --dtype bf16 --tp 2 --out "$work/tp16" >"$work/tp16.out" 2>&1
rc=$?; d=$(maxrel "$work/tp16/log.jsonl" "$work/one16/log.jsonl")
[ $rc -eq 0 ] && within "$d" 1e-3
check "tp 2 with bf16 products follows one process in bf16 (largest relative difference $d)" $? "exit $rc" "$(tail -5 "$work/tp16.out")"

# 6-7. a checkpoint saved at tp 2 x pp 2 resumes at dp 4 and on one process
mpi 4 "$tessera" train "${small[@]}" --tp 2 --pp 2 --steps 12 --ckpt-every 6 --keep 0 --out "$work/tp2pp2" >"$work/ck.out" 2>&1
rc=$?
for target in "dp 4:4" "one process:1"; do
    name=${target%%:*}; np=${target#*:}; dir=$work/resume$np
    mkdir -p "$dir"; cp -r "$work/tp2pp2/step_00000006" "$dir/"; echo step_00000006 >"$dir/latest"
    cp "$work/tp2pp2/tokenizer.txt" "$dir/" 2>/dev/null
    if [ "$np" = 1 ]; then "$tessera" train "${small[@]}" --out "$dir" --resume >"$dir.out" 2>&1
    else mpi "$np" "$tessera" train "${small[@]}" --out "$dir" --resume >"$dir.out" 2>&1; fi
    r2=$?; d=$(maxrel "$dir/log.jsonl" "$work/tp2pp2/log.jsonl")
    steps=$(losses "$dir/log.jsonl" | awk '$1 > 6' | wc -l)
    [ $rc -eq 0 ] && [ $r2 -eq 0 ] && [ "$steps" -eq 6 ] && within "$d" 1e-5
    check "the tp 2 x pp 2 checkpoint at step 6 resumes at $name with the same losses (largest relative difference $d over $steps steps)" $? \
        "save exit $rc, resume exit $r2" "$(tail -5 "$dir.out")"
done

# 8. settings that differ between ranks: every rank says so
timeout 120 "$mpirun" --allow-run-as-root --oversubscribe -np 1 "$tessera" train "${small[@]}" --seed 1 --eval-every 4 : \
    -np 1 "$tessera" train "${small[@]}" --seed 2 --eval-every 6 >"$work/mismatch.out" 2>&1
rc=$?
ranks=$(grep "settings differ between ranks" "$work/mismatch.out" | grep "eval_every (4 vs 6)" | grep -c "seed (1 vs 2)")
[ $rc -ne 0 ] && [ "$ranks" -eq 2 ]
check "different seeds and evaluation intervals on two ranks fail on both ranks, naming each setting with both values" $? "exit $rc, $ranks ranks reported" "$(head -6 "$work/mismatch.out")"

# 9. different grids: refused before any group forms
timeout 120 "$mpirun" --allow-run-as-root --oversubscribe -np 1 "$tessera" train "${small[@]}" : \
    -np 1 "$tessera" train "${small[@]}" --tp 2 >"$work/grid.out" 2>&1
rc=$?
ranks=$(grep -c "rank 0 asks for tensor-parallel 1 x pipeline 1, rank 1 for 2 x 1" "$work/grid.out")
[ $rc -ne 0 ] && [ "$ranks" -eq 2 ]
check "ranks asking for different grids fail on both ranks" $? "exit $rc, $ranks ranks reported" "$(head -6 "$work/grid.out")"

# 10. a rank that stops (SIGSTOP) mid-run: the watchdog names it after 1 s
# and the job ends after 2 s (twice --watchdog), on every rank, instead of
# hanging
mpi 2 "$tessera" train "${small[@]}" --steps 100000 --watchdog 1 --log "$work/absent.jsonl" >"$work/absent.out" 2>&1 &
job=$!
victim=""
for _ in $(seq 600); do
    for p in $(pgrep -f "tessera train .*absent.jsonl"); do
        tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=1" && victim=$p
    done
    [ -n "$victim" ] && grep -qs '"step": 3,' "$work/absent.jsonl" && break
    sleep 0.1
done
t0=$(date +%s)
[ -n "$victim" ] && kill -STOP "$victim"
wait $job
rc=$?
took=$(( $(date +%s) - t0 ))
[ -n "$victim" ] && kill -CONT "$victim" 2>/dev/null
grep -q "not joined: rank 1 (world 1 on node " "$work/absent.out" && [ $rc -ne 0 ] && [ $took -lt 60 ]
check "a rank that stops is named by the watchdog and the job ends (exit $rc after ${took}s)" $? \
    "rank 1 was pid ${victim:-not found}" "$(grep -v '^\[' "$work/absent.out" | head -8)"

# 11. the timeline: one Chrome trace with every rank, placement in the log
mpi 2 "$tessera" train "${small[@]}" --steps 3 --pp 2 --trace "$work/trace.json" --out "$work/traced" >"$work/trace.out" 2>&1
rc=$?
summary=$(python3 - "$work/trace.json" <<'EOF' 2>&1
import json, sys
events = json.load(open(sys.argv[1]))["traceEvents"]
pids = {e["pid"] for e in events if e.get("ph") == "X"}
names = {e["name"].split()[0] for e in events if e.get("ph") == "X"}
assert pids == {0, 1}, pids
assert {"forward", "backward", "activations"} <= names, names
print(f"{len(events)} events from ranks {sorted(pids)}")
EOF
)
prc=$?
placed=$(grep -c '"placement": \[' "$work/traced/log.jsonl" 2>/dev/null)
[ $rc -eq 0 ] && [ $prc -eq 0 ] && [ "${placed:-0}" -ge 1 ]
check "--trace writes one timeline with every rank ($summary); the log records each rank's placement" $? "exit $rc" "$summary" "$(tail -3 "$work/trace.out")"

# 12-19. devices of different speed: replicas take unequal rows of the
# batch; the update is still the one process's on the whole batch
have_ocl=0
"$tessera" devices 2>/dev/null | grep -q '^opencl:0' && have_ocl=1
mixed=cpu; [ $have_ocl = 1 ] && mixed=cpu,opencl:0
for layout in "shares 3,1|2|--balance 3,1" "shares 1,7, ZeRO-1, ring|2|--balance 1,7 --zero --strategy ring" \
              "measured (auto) on $mixed, hier|2|--balance auto --strategy hier --device $mixed" \
              "shares 3,1 over dp 2 x pp 2, parameter server|4|--balance 3,1 --pp 2 --strategy ps" \
              "shares from a tessera bench train JSON on $mixed|2|--balance $(dirname "$0")/../bench/results/train-2026-11-22.json --device $mixed"; do
    name=${layout%%|*}; rest=${layout#*|}; np=${rest%%|*}; flags=${rest#*|}; dir=$work/bal_$(echo "$name" | tr -c 'a-z0-9' _)
    # shellcheck disable=SC2086
    mpi "$np" "$tessera" train "${small[@]}" $flags --out "$dir" >"$dir.out" 2>&1
    rc=$?; d=$(maxrel "$dir/log.jsonl" "$work/one/log.jsonl")
    rows=$(sed -n 's/.*"rows": "\([0-9+]*\)".*/\1/p' "$dir/log.jsonl" | head -1)
    [ $rc -eq 0 ] && within "$d" 1e-5 && [ -n "$rows" ]
    check "balanced data parallel, $name (rows $rows) follows one process's losses (largest relative difference $d)" $? \
        "exit $rc" "$(tail -5 "$dir.out")"
done
# the start measured each rank and split by it, and the log says so
grep -q '"balance": "auto"' "$work"/bal_measured__auto__on_*/log.jsonl && \
    grep '"event": "start"' "$work"/bal_measured__auto__on_*/log.jsonl | grep -q '"tokens_per_s": [1-9]'
check "--balance auto logs each rank's device and measured tokens/s" $? "$(head -c 600 "$work"/bal_measured__auto__on_*/log.jsonl)"

# a re-split mid-run (forced: any change of split counts as a gain) from a
# lopsided start still follows one process
dir=$work/rebal
mpi 2 "$tessera" train "${small[@]}" --balance 7,1 --rebalance-every 3 --rebalance-gain -1 --out "$dir" >"$dir.out" 2>&1
rc=$?; d=$(maxrel "$dir/log.jsonl" "$work/one/log.jsonl")
resplits=$(grep -c '"event": "rebalance"' "$dir/log.jsonl")
[ $rc -eq 0 ] && within "$d" 1e-5 && [ "$resplits" -ge 1 ]
check "re-splitting mid-run ($resplits re-splits: $(grep -o '"rows": "[0-9+]*"' "$dir/log.jsonl" | tr '\n' ' ')) follows one process (largest relative difference $d)" $? \
    "exit $rc" "$(tail -5 "$dir.out")"

# a checkpoint from shares 3,1 resumes with shares 1,3 and ZeRO-1 on the same losses
dir=$work/balres
mpi 2 "$tessera" train "${small[@]}" --balance 3,1 --ckpt-every 6 --keep 0 --out "$dir" >"$dir.out" 2>&1
rc=$?
mkdir -p "$dir.r"; cp -r "$dir/step_00000006" "$dir.r/"; echo step_00000006 >"$dir.r/latest"; cp "$dir/tokenizer.txt" "$dir.r/" 2>/dev/null
mpi 2 "$tessera" train "${small[@]}" --balance 1,3 --zero --out "$dir.r" --resume >"$dir.r.out" 2>&1
r2=$?; d=$(maxrel "$dir.r/log.jsonl" "$work/one/log.jsonl")
steps=$(losses "$dir.r/log.jsonl" | awk '$1 > 6' | wc -l)
[ $rc -eq 0 ] && [ $r2 -eq 0 ] && [ "$steps" -eq 6 ] && within "$d" 1e-5
check "a run saved with shares 3,1 resumes with shares 1,3 and ZeRO-1 on one process's losses (largest relative difference $d over $steps steps)" $? \
    "save exit $rc, resume exit $r2" "$(tail -5 "$dir.r.out")"

# bad shares: every rank fails with the reason, nobody hangs
printf '2\n0\n' >"$work/bad-shares.txt"
bad_ok=0; msgs=""
for bad in "3|has 1 share for 2 data-parallel replicas" "$work/bad-shares.txt|share 2 is 0" \
           "$work/no-such-file|is not even, auto, a list of shares or a readable file"; do
    spec=${bad%%|*}; want=${bad#*|}
    mpi 2 "$tessera" train "${small[@]}" --balance "$spec" --out "$work/bad" >"$work/bad.out" 2>&1
    rc=$?; ranks=$(grep -c -- "$want" "$work/bad.out")
    [ $rc -ne 0 ] && [ "$ranks" -ge 2 ] || bad_ok=1
    msgs="$msgs | $spec: exit $rc, $ranks ranks: $(grep -m1 -- "$want" "$work/bad.out")"
done
check "bad --balance shares (a count, a zero in a file, a missing file) fail on every rank with the reason" $bad_ok "$msgs"

# a tensor-parallel group of unequal devices is refused on every rank
if [ $have_ocl = 1 ]; then
    mpi 2 "$tessera" train "${small[@]}" --tp 2 --device cpu,opencl:0 --out "$work/tpmix" >"$work/tpmix.out" 2>&1
    rc=$?; ranks=$(grep -c "tensor-parallel groups need equal devices" "$work/tpmix.out")
    [ $rc -ne 0 ] && [ "$ranks" -ge 2 ]
    check "a tensor-parallel group of a CPU and an OpenCL device is refused on every rank" $? "exit $rc, $ranks ranks" "$(head -5 "$work/tpmix.out")"
else
    skip "a tensor-parallel group of unequal devices is refused" "no OpenCL device"
fi

# pipeline stages of unequal size: as given (3 layers + 1), and as measured
# on two devices; both follow one process, and the log holds the stage map
dir=$work/stages31
TESSERA_STAGES=3,1 mpi 4 "$tessera" train "${small[@]}" --pp 2 --balance 1,3 --zero --out "$dir" >"$dir.out" 2>&1
rc=$?; d=$(maxrel "$dir/log.jsonl" "$work/one/log.jsonl")
map=$(sed -n 's/.*"stage_map": "\([^"]*\)".*/\1/p' "$dir/log.jsonl" | head -1)
[ $rc -eq 0 ] && within "$d" 1e-5 && [ "$map" = "0-2 | 3-3" ]
check "pipeline stages of 3 and 1 layers (map '$map') x dp 2 with shares 1,3 and ZeRO-1 follow one process (largest relative difference $d)" $? \
    "exit $rc" "$(tail -5 "$dir.out")"
dir=$work/stagesauto
mpi 2 "$tessera" train "${small[@]}" --pp 2 --balance auto --device "$mixed" --out "$dir" >"$dir.out" 2>&1
rc=$?; d=$(maxrel "$dir/log.jsonl" "$work/one/log.jsonl")
map=$(sed -n 's/.*"stage_map": "\([^"]*\)".*/\1/p' "$dir/log.jsonl" | head -1)
[ $rc -eq 0 ] && within "$d" 1e-5 && [ -n "$map" ]
check "pipeline stages by measured cost on $mixed (map '$map') follow one process (largest relative difference $d)" $? \
    "exit $rc" "$(tail -5 "$dir.out")"
