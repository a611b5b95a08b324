#!/usr/bin/env bash
# `tessera classify train | eval | predict` end to end (TAP). $1: the
# tessera binary, $2 (optional): mpirun.
#
# The task is made here: three classes, each text a few filler words and
# one word that names its class ("the fox near", "bug", "late kiwi her"),
# written as JSON lines, CSV (quoted texts with commas and quotes) and TSV.
# A small model learns it in a second; it must then classify every held-out
# text right. Bad files must fail with a message that names the file and
# the line, and never crash. --init takes a `tessera train` model's trunk
# and tokenizer; a run stopped by SIGTERM resumes to the same losses; two
# processes under mpirun follow one process's losses. An ensemble trains
# its members with their own seeds and pools, and eval and predict average
# their probabilities.
set -u
tessera=$1
mpirun=${2:-}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# one thread a process: the same sums in the one-process and MPI runs
export TESSERA_THREADS=1 POCL_MAX_PTHREAD_COUNT=1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
. "$(dirname "$0")/tap.sh"
py=
for p in /usr/bin/python3 python3; do command -v "$p" >/dev/null && { py=$p; break; }; done

# gen N SEED FORMAT: N examples (a Park-Miller generator: the same under every awk)
gen() {
    awk -v n="$1" -v s="$2" -v fmt="$3" '
    function rnd(k) { s = (s * 16807) % 2147483647; return int(s / 2147483647 * k) }
    BEGIN {
        split("fox bug kiwi", cls, " ")
        split("the and a near at late sad her men then", filler, " ")
        if (fmt == "csv") print "text,label"
        if (fmt == "tsv") print "category\tsentence"
        for (i = 0; i < n; i++) {
            c = cls[1 + rnd(3)]; k = rnd(6); at = rnd(k + 1); t = ""
            for (j = 0; j <= k; j++) t = t (j ? " " : "") (j == at ? c : filler[1 + rnd(10)])
            if (fmt == "jsonl") printf "{\"text\": \"%s\", \"label\": \"%s\"}\n", t, c
            else if (fmt == "csv") printf "\"%s, \"\"%s\"\"\",%s\n", t, filler[1 + rnd(10)], c
            else if (fmt == "tsv") printf "%s\t%s\n", c, t
            else print t
        }
    }'
}
for f in jsonl csv tsv; do gen 300 7 $f >"$work/train.$f"; gen 60 99 $f >"$work/test.$f"; done
gen 20 5 lines >"$work/texts.txt"

small=(--device cpu --layers 1 --heads 2 --width 32 --max-len 48 --batch 16 --lr 5e-3 --best-by loss --quiet)
# accuracy of `classify eval` on a file: the fraction in the table's accuracy line
accuracy() { sed -n 's/^accuracy  *\([0-9.]*\) .*/\1/p' "$1"; }
# an error that names file:line, from a run that failed without crashing
# (nor a sanitizer report, in sanitizer builds: those exit below 128 too)
named_error() { # rc, output file, expected text
    [ "$1" -ne 0 ] && [ "$1" -lt 128 ] && grep -qF -- "$3" "$2" && ! grep -q 'Sanitizer\|runtime error:' "$2"
}

echo "TAP version 13"
echo "1..30"

# 1-3. the task learned from each format, every held-out text right
"$tessera" classify train "${small[@]}" --train "$work/train.jsonl" --epochs 4 --out "$work/j" >"$work/j.out" 2>&1
rc=$?
"$tessera" classify eval --device cpu --checkpoint "$work/j" --data "$work/test.jsonl" >"$work/j.eval" 2>&1
erc=$?; acc=$(accuracy "$work/j.eval")
[ $rc -eq 0 ] && [ $erc -eq 0 ] && [ "$acc" = 1.000 ]
check "JSON lines (last-token pooling, causal): classify train then eval gets every held-out text right (accuracy ${acc:-?})" $? \
    "train exit $rc, eval exit $erc" "$(tail -5 "$work/j.out")" "$(cat "$work/j.eval")"

"$tessera" classify train "${small[@]}" --train "$work/train.csv" --pool mean --attention bidirectional --epochs 4 \
    --out "$work/c" >"$work/c.out" 2>&1
rc=$?
"$tessera" classify eval --device cpu --checkpoint "$work/c" --data "$work/test.csv" >"$work/c.eval" 2>&1
erc=$?; acc=$(accuracy "$work/c.eval")
[ $rc -eq 0 ] && [ $erc -eq 0 ] && [ "$acc" = 1.000 ]
check "CSV with quoted texts (mean pooling, bidirectional): every held-out text right (accuracy ${acc:-?})" $? \
    "train exit $rc, eval exit $erc" "$(tail -5 "$work/c.out")" "$(cat "$work/c.eval")"

# max pooling: each channel's max over the real tokens, saved with the
# model; an unknown pooling names the choices
"$tessera" classify train "${small[@]}" --train "$work/train.jsonl" --pool max --epochs 4 --out "$work/mx" \
    >"$work/mx.out" 2>&1
rc=$?
"$tessera" classify eval --device cpu --checkpoint "$work/mx" --data "$work/test.jsonl" >"$work/mx.eval" 2>&1
erc=$?; acc=$(accuracy "$work/mx.eval")
"$tessera" classify train "${small[@]}" --train "$work/train.jsonl" --pool maximum --out "$work/mx2" >"$work/mx2.out" 2>&1
brc=$?
# (the model's metadata, a JSON string in the safetensors header: its quotes escaped)
[ $rc -eq 0 ] && [ $erc -eq 0 ] && [ "$acc" = 1.000 ] \
    && grep -aqF '\"pool\": \"max\"' "$work/mx/$(cat "$work/mx/latest" 2>/dev/null)/model.safetensors" \
    && named_error $brc "$work/mx2.out" "--pool must be last, mean, max, not 'maximum'"
check "max pooling: every held-out text right (accuracy ${acc:-?}), saved as max; an unknown pooling names the choices" $? \
    "train exit $rc, eval exit $erc" "$(tail -5 "$work/mx.out")" "$(cat "$work/mx.eval")" "$(cat "$work/mx2.out")"

tsv_fields=(--text-field sentence --label-field category)
"$tessera" classify train "${small[@]}" --train "$work/train.tsv" "${tsv_fields[@]}" --layers 2 --attention bidirectional \
    --epochs 4 --out "$work/t" >"$work/t.out" 2>&1
rc=$?
"$tessera" classify eval --device cpu --checkpoint "$work/t" --data "$work/test.tsv" "${tsv_fields[@]}" >"$work/t.eval" 2>&1
erc=$?; acc=$(accuracy "$work/t.eval")
[ $rc -eq 0 ] && [ $erc -eq 0 ] && [ "$acc" = 1.000 ]
check "TSV with named columns in another order (2 layers, bidirectional): every held-out text right (accuracy ${acc:-?})" $? \
    "train exit $rc, eval exit $erc" "$(tail -5 "$work/t.out")" "$(cat "$work/t.eval")"

# a word tokenizer trained on the texts: each class name is one token
"$tessera" classify train "${small[@]}" --train "$work/train.jsonl" --tokenizer word:400 --epochs 4 --out "$work/w" \
    >"$work/w.out" 2>&1
rc=$?
"$tessera" classify eval --device cpu --checkpoint "$work/w" --data "$work/test.jsonl" >"$work/w.eval" 2>&1
erc=$?; acc=$(accuracy "$work/w.eval")
hexes=$(for c in fox bug kiwi; do printf %s "$c" | od -An -tx1 | tr -d ' \n'; echo; done)
[ $rc -eq 0 ] && [ $erc -eq 0 ] && [ "$acc" = 1.000 ] && grep -q '^type word' "$work/w/tokenizer.txt" \
    && [ "$(grep -cxF "$hexes" "$work/w/tokenizer.txt")" -eq 3 ]
check "a word tokenizer (word:400, each class name one token): every held-out text right (accuracy ${acc:-?})" $? \
    "train exit $rc, eval exit $erc" "$(tail -5 "$work/w.out")" "$(cat "$work/w.eval")" "$(head -8 "$work/w/tokenizer.txt")"

# character n-grams (fastText's subwords) on word tokens: the table is in
# the checkpoint and its size in the metadata; eval and predict read it
"$tessera" classify train "${small[@]}" --train "$work/train.jsonl" --tokenizer word:300 --char-ngrams 512 --epochs 4 \
    --out "$work/g" >"$work/g.out" 2>&1
rc=$?
"$tessera" classify eval --device cpu --checkpoint "$work/g" --data "$work/test.jsonl" >"$work/g.eval" 2>&1
erc=$?; acc=$(accuracy "$work/g.eval")
"$tessera" classify predict --device cpu --checkpoint "$work/g" --data "$work/texts.txt" --format lines --out "$work/g.pred" \
    >"$work/g.pout" 2>&1
prc=$?
gl=$(cat "$work/g/latest" 2>/dev/null)
head -c 4000 "$work/g/$gl/model.safetensors" 2>/dev/null | tr -d '\\' >"$work/g.head"
[ $rc -eq 0 ] && [ $erc -eq 0 ] && [ $prc -eq 0 ] && [ "$acc" = 1.000 ] && [ "$(wc -l <"$work/g.pred")" -eq 20 ] &&
    grep -q '"char_ngrams": 512' "$work/g.head" && grep -q '"ngram.weight":{"dtype":"F32","shape":\[512,32\]' "$work/g.head"
check "--char-ngrams 512: every held-out text right (accuracy ${acc:-?}), the table [512, 32] in the checkpoint, predict reads it" \
    $? "train exit $rc, eval exit $erc, predict exit $prc" "$(tail -5 "$work/g.out")" "$(head -c 600 "$work/g.head")"

# 4-5. predict: a JSON line per text, in order, with its label and the
# probabilities of every class
"$tessera" classify predict --device cpu --checkpoint "$work/j" --data "$work/test.jsonl" >"$work/pred.jsonl" 2>"$work/pred.err"
rc=$?
msg=$("$py" - "$work/pred.jsonl" "$work/test.jsonl" "$work/j/labels.json" <<'EOF' 2>&1
import json, sys
preds = [json.loads(l) for l in open(sys.argv[1])]
inputs = [json.loads(l) for l in open(sys.argv[2])]
labels = json.load(open(sys.argv[3]))
assert len(preds) == len(inputs), f"{len(preds)} lines for {len(inputs)} texts"
for p, x in zip(preds, inputs):
    assert p["text"] == x["text"] and p["true_label"] == x["label"], (p, x)
    probs = p["probabilities"]
    assert sorted(probs) == sorted(labels), probs
    assert abs(sum(probs.values()) - 1) < 1e-5, f"probabilities sum to {sum(probs.values())}: {p}"
    assert all(0 <= v <= 1 for v in probs.values()), p
    assert p["label"] == max(probs, key=probs.get), f"the label is not the most probable class: {p}"
    assert p["label"] == x["label"], f"wrong: {p}"
print(f"{len(preds)} lines")
EOF
)
check "predict writes one JSON line per text in order: text, label (the most probable, right), probabilities summing to 1 ($msg)" \
    $(( rc != 0 || $? != 0 )) "exit $rc" "$msg" "$(head -3 "$work/pred.jsonl")" "$(cat "$work/pred.err")"

"$tessera" classify predict --device cpu --checkpoint "$work/c" --data "$work/test.csv" --out "$work/pred-csv.jsonl" >/dev/null 2>&1
rc=$?
"$tessera" classify predict --device cpu --checkpoint "$work/j" --data "$work/texts.txt" --out "$work/pred-txt.jsonl" >/dev/null 2>&1
rc2=$?
msg=$("$py" - "$work/pred-csv.jsonl" "$work/test.csv" "$work/pred-txt.jsonl" "$work/texts.txt" <<'EOF' 2>&1
import csv, json, sys
preds = [json.loads(l) for l in open(sys.argv[1])]
rows = list(csv.DictReader(open(sys.argv[2], newline="")))
assert [p["text"] for p in preds] == [r["text"] for r in rows], "CSV texts differ from Python's csv module's"
assert all(p["label"] == r["label"] for p, r in zip(preds, rows)), "a CSV text classified wrong"
preds = [json.loads(l) for l in open(sys.argv[3])]
texts = open(sys.argv[4]).read().splitlines()
assert [p["text"] for p in preds] == texts and not any("true_label" in p for p in preds)
assert all(abs(sum(p["probabilities"].values()) - 1) < 1e-5 for p in preds)
assert all(p["label"] in p["text"].split() for p in preds), "a plain text classified wrong"
print(f'{len(rows)} CSV rows, {len(texts)} lines, e.g. {rows[0]["text"]!r}')
EOF
)
check "predict reads CSV quoting as Python's csv module does and plain lines of text ($msg)" \
    $(( rc != 0 || rc2 != 0 || $? != 0 )) "exit $rc, $rc2" "$msg"

# 6. eval --out: the JSON holds the printed table's numbers. An untrained
# model (zero head: every text gets the first class) has classes that are
# never predicted: precision 0, not NaN.
"$tessera" classify train "${small[@]}" --train "$work/train.jsonl" --epochs 0 --out "$work/zero" >/dev/null 2>&1
"$tessera" classify eval --device cpu --checkpoint "$work/zero" --data "$work/test.jsonl" --out "$work/zero.json" \
    >"$work/zero.table" 2>&1
rc=$?
table_vs_json() { # table, JSON: every number of the table equals the JSON's
    "$py" - "$1" "$2" <<'EOF' 2>&1
import json, sys
table = open(sys.argv[1]).read().splitlines()
doc = json.load(open(sys.argv[2]))
m = doc["metrics"]
f3 = lambda v: f"{v:.3f}"
K = len(m["labels"])
head = next(i for i, l in enumerate(table) if l.split()[:2] == ["class", "precision"])
for name, line in zip(m["labels"], table[head + 1:head + 1 + K]):
    *label, p, r, f1, support = line.split()
    c = m["per_class"][name]
    assert " ".join(label) == name and [p, r, f1, support] == [f3(c["precision"]), f3(c["recall"]), f3(c["f1"]), str(c["support"])], (line, c)
    assert all(v is not None and v == v for v in c.values()), c
macro = table[head + 1 + K].split()
assert macro[:2] == ["macro", "avg"] and macro[2:] == [f3(m["macro_precision"]), f3(m["macro_recall"]), f3(m["macro_f1"]), str(m["examples"])], macro
acc = table[head + 2 + K].split()
assert acc[:4] == ["accuracy", f3(m["accuracy"]), str(m["examples"]), f'({m["correct"]}'], acc
conf = next(i for i, l in enumerate(table) if l.startswith("confusion matrix"))
rows = [l.split() for l in table[conf + 2:] if l.strip()]
assert [r[-K:] for r in rows] == [[str(v) for v in row] for row in m["confusion"]], (rows, m["confusion"])
assert (rows[-1][0] == "(unseen)") == (m["unseen"] > 0), rows
print(f'accuracy {m["accuracy"]}, macro-F1 {m["macro_f1"]}, {len(rows)} confusion rows')
EOF
}
msg=$(table_vs_json "$work/zero.table" "$work/zero.json")
ok=$?
nan=$(grep -c -e NaN -e nan "$work/zero.json")
zero_p=$(grep -o '"precision": 0[,}]' "$work/zero.json" | wc -l)
[ $rc -eq 0 ] && [ $ok -eq 0 ] && [ "$nan" -eq 0 ] && [ "$zero_p" -eq 2 ]
check "eval --out writes the printed table's numbers as JSON; classes never predicted have precision 0, not NaN ($msg)" $? \
    "exit $rc, $nan NaN, $zero_p zero precisions" "$msg" "$(cat "$work/zero.table")"

# 7-14. bad files: each fails, without crashing, naming the file and line
printf '{"text": "fox a", "label": "fox"}\n{"text": "bug", "label": "bug"}\n{"text": "kiwi", "label": "kiwi"\n' >"$work/broken.jsonl"
printf '{"text": "fox a", "label": "fox"}\n{"text": "  ", "label": "bug"}\n' >"$work/empty.jsonl"
printf '{"text": "fox a", "label": "fox"}\n\n{"text": "bug a"}\n' >"$work/nolabel.jsonl"
printf 'text,category\n"fox",fox\n' >"$work/nocolumn.csv"
printf 'text\tlabel\nthe fox\tfox\nbug\n' >"$work/fields.tsv"
printf 'text,label\nfox,fox\n"bug, then,bug\n' >"$work/quote.csv"
printf '{"text": "the fox", "label": "fox"}\n{"text": "a bug", "label": "bug"}\n{"text": "kiwi", "label": "kiwi"}\n{"text": "the mole", "label": "mole"}\n' \
    >"$work/unseen.jsonl"
bad() { # name, expected message, command...
    local name=$1 want=$2
    shift 2
    "$@" >"$work/bad.out" 2>&1
    local rc=$?
    named_error $rc "$work/bad.out" "$want"
    check "$name fails naming the file and line (exit $rc)" $? "wanted: $want" "$(cat "$work/bad.out")"
}
train=("$tessera" classify train "${small[@]}" --epochs 1)
bad "a malformed JSON line" "$work/broken.jsonl:3: not a JSON object" "${train[@]}" --train "$work/broken.jsonl"
bad "an empty text" "$work/empty.jsonl:2: the text is empty" "${train[@]}" --train "$work/empty.jsonl"
bad "a missing label member" "$work/nolabel.jsonl:3: no label (column or member \"label\")" "${train[@]}" --train "$work/nolabel.jsonl"
bad "CSV without the named label column" "$work/nocolumn.csv:1: the header names no \"label\" column" \
    "${train[@]}" --train "$work/nocolumn.csv"
bad "a TSV row with a field missing" "$work/fields.tsv:3: 1 fields, but the header has 2" "${train[@]}" --train "$work/fields.tsv"
bad "a CSV quote never closed" "$work/quote.csv:3: a quoted field is never closed" \
    "$tessera" classify predict --device cpu --checkpoint "$work/j" --data "$work/quote.csv"
bad "eval on a label never seen in training" "$work/unseen.jsonl:4: the label \"mole\" is not one the model was trained on" \
    "$tessera" classify eval --device cpu --checkpoint "$work/j" --data "$work/unseen.jsonl"

"$tessera" classify eval --device cpu --checkpoint "$work/j" --data "$work/unseen.jsonl" --count-unseen \
    --out "$work/unseen.json" >"$work/unseen.table" 2>&1
rc=$?
msg=$(table_vs_json "$work/unseen.table" "$work/unseen.json")
ok=$?
counts=$("$py" -c 'import json,sys; m=json.load(open(sys.argv[1]))["metrics"]; print(m["examples"], m["correct"], m["unseen"], m["accuracy"])' \
    "$work/unseen.json" 2>&1)
[ $rc -eq 0 ] && [ $ok -eq 0 ] && [ "$counts" = "4 3 1 0.75" ]
check "with --count-unseen that example counts as wrong: 4 examples, 3 right, 1 unseen ($counts), in the table and the JSON" $? \
    "exit $rc" "$msg" "$(cat "$work/unseen.table")"

# 15-16. --init: a `tessera train` language model (on the same texts, a BPE
# tokenizer) gives the classifier its trunk and tokenizer; the head starts at zero
"$tessera" train --device cpu --data "$work/train.jsonl" --tokenizer bpe:300 --layers 1 --heads 2 --width 32 --seq-len 48 \
    --batch 4 --steps 3 --out "$work/lm" --quiet >"$work/lm.out" 2>&1
lrc=$?
"$tessera" classify train "${small[@]}" --train "$work/train.jsonl" --init "$work/lm" --epochs 0 --out "$work/init0" \
    >"$work/init0.out" 2>&1
rc=$?
lm_ckpt=$work/lm/$(cat "$work/lm/latest" 2>/dev/null)
msg=$("$py" - "$lm_ckpt/model.safetensors" "$work/init0/step_00000000/model.safetensors" <<'EOF' 2>&1
import json, struct, sys
def tensors(path):
    data = open(path, "rb").read()
    (n,) = struct.unpack("<Q", data[:8])
    h = json.loads(data[8:8 + n])
    h.pop("__metadata__", None)
    return {k: data[8 + n + e["data_offsets"][0]:8 + n + e["data_offsets"][1]] for k, e in h.items()}
lm, cls = tensors(sys.argv[1]), tensors(sys.argv[2])
trunk = {k: v for k, v in cls.items() if not k.startswith("score.")}
assert sorted(trunk) == sorted(lm), (sorted(trunk), sorted(lm))
diff = [k for k in lm if lm[k] != trunk[k]]
assert not diff, f"tensors differ from the language model's: {diff}"
assert sorted(set(cls) - set(trunk)) == ["score.bias", "score.weight"]
assert not any(cls["score.weight"]) and not any(cls["score.bias"]), "the head is not zero"
print(f"{len(lm)} trunk tensors equal")
EOF
)
ok=$?
cmp -s "$lm_ckpt/tokenizer.txt" "$work/init0/tokenizer.txt"
tok=$?
[ $lrc -eq 0 ] && [ $rc -eq 0 ] && [ $ok -eq 0 ] && [ $tok -eq 0 ] && grep -q '^type bpe' "$work/init0/tokenizer.txt"
check "--init takes the language model's trunk weights (bit for bit) and its BPE tokenizer, with a zero head ($msg)" $? \
    "train exit $lrc, classify exit $rc, tokenizer cmp $tok" "$msg" "$(tail -n 3 "$work/lm.out" "$work/init0.out")"

"$tessera" classify train "${small[@]}" --train "$work/train.jsonl" --init "$work/lm" --epochs 4 --out "$work/init" \
    >"$work/init.out" 2>&1
rc=$?
"$tessera" classify eval --device cpu --checkpoint "$work/init" --data "$work/test.jsonl" >"$work/init.eval" 2>&1
erc=$?; acc=$(accuracy "$work/init.eval")
[ $rc -eq 0 ] && [ $erc -eq 0 ] && [ "$acc" = 1.000 ]
check "fine-tuned from --init it gets every held-out text right (accuracy ${acc:-?})" $? "exit $rc, eval exit $erc" \
    "$(tail -5 "$work/init.out")" "$(cat "$work/init.eval")"

# 17-19. stopped by SIGTERM in the middle of an epoch, resumed: the losses
# and final weights of the uninterrupted run, bit for bit, with word
# dropout on (its draws depend on the step, not on how the run got there)
run=("$tessera" classify train "${small[@]}" --train "$work/train.jsonl" --epochs 12 --token-dropout 0.25)
"${run[@]}" --out "$work/whole" >/dev/null 2>&1
"${run[@]}" --out "$work/part" >/dev/null 2>&1 &
job=$!
for _ in $(seq 3000); do grep -qs '"step": 3,' "$work/part/log.jsonl" && break; sleep 0.01; done
kill -TERM $job 2>/dev/null
wait $job
src=$?
stopped=$(cat "$work/part/latest" 2>/dev/null)
"$tessera" classify train --device cpu --out "$work/part" --resume --quiet >"$work/resume.out" 2>&1
rc=$?
diff <(losses "$work/whole/log.jsonl") <(losses "$work/part/log.jsonl") >"$work/resume.diff" 2>&1
same=$?
logged=$(grep -c '^{"step": [0-9]*, "loss"' "$work/part/log.jsonl")
total=$(losses "$work/whole/log.jsonl" | wc -l)
[ $src -eq 143 ] && [ -n "$stopped" ] && [ "$stopped" != "step_$(printf %08d "$total")" ] && [ $rc -eq 0 ] && [ $same -eq 0 ] &&
    [ "$logged" -eq "$total" ] && [ "$total" -gt 100 ]
check "stopped by SIGTERM at $stopped and resumed, the run logs each of its $total steps once with the uninterrupted run's losses, bit for bit" \
    $? "stop exit $src, resume exit $rc, $logged step lines" "$(head "$work/resume.diff")" "$(tail -3 "$work/resume.out")"
last=$(cat "$work/whole/latest" 2>/dev/null)
cmp -s "$work/whole/$last/model.safetensors" "$work/part/$last/model.safetensors"
check "and its final weights are identical ($last)" $?
"$tessera" classify train "${small[@]}" --train "$work/train.jsonl" --epochs 1 --out "$work/nodrop" >/dev/null 2>&1
first=$(losses "$work/nodrop/log.jsonl" | wc -l)
differ=$(diff <(losses "$work/nodrop/log.jsonl") <(losses "$work/whole/log.jsonl" | head -n "$first") | grep -c '^>')
[ "$first" -gt 5 ] && [ "$differ" -gt $((first / 2)) ]
check "--token-dropout 0.25 changes the training losses ($differ of the first $first steps differ from a run without it)" $?

# 20-21. two processes under mpirun, each a share of every batch (uneven
# shares, a last batch of one example, balanced class weights, word
# dropout): the losses of one process
maxrel() { # largest relative difference between the step losses of two logs
    awk 'NR == FNR {ref[$1] = $2; next} ($1 in ref) {d = ($2 - ref[$1]) / ref[$1]; if (d < 0) d = -d; if (d > m) m = d; k++}
         END {if (k == 0) print "none"; else printf "%.3g\n", m}' <(losses "$2") <(losses "$1")
}
within() { [ "$1" != none ] && awk -v a="$1" -v b="$2" 'BEGIN { exit !(a <= b) }'; }
if [ -z "$mpirun" ] || ! "$tessera" --version | grep -qw mpi; then
    skip "two processes under mpirun follow one process's losses" "no mpirun, or tessera built without MPI"
    skip "and their held-out scores" "no mpirun, or tessera built without MPI"
else
    gen 271 11 jsonl >"$work/train271.jsonl"
    dp=("$tessera" classify train "${small[@]}" --train "$work/train271.jsonl" --val "$work/test.jsonl" --batch 15 --epochs 2
        --class-weights balanced --pool mean --attention bidirectional --token-dropout 0.2 --tokenizer word:300
        --char-ngrams 256)
    "${dp[@]}" --out "$work/one" >"$work/one.out" 2>&1
    orc=$?
    ASAN_OPTIONS=detect_leaks=0 timeout 300 "$mpirun" --allow-run-as-root --oversubscribe -np 2 "${dp[@]}" --out "$work/two" \
        >"$work/two.out" 2>&1
    rc=$?
    d=$(maxrel "$work/two/log.jsonl" "$work/one/log.jsonl")
    steps=$(losses "$work/two/log.jsonl" | wc -l)
    [ $orc -eq 0 ] && [ $rc -eq 0 ] && [ "$steps" -eq 38 ] && within "$d" 1e-5
    check "two processes under mpirun (word tokens, character n-grams) follow one process's losses over $steps steps (largest relative difference $d)" $? \
        "exit $orc, $rc" "$(tail -n 5 "$work/one.out" "$work/two.out")"
    vals() { sed -n 's/.*"val_accuracy": \([^,]*\), .*"val_loss": \([^}]*\)}.*/\1 \2/p' "$1"; }
    paste <(vals "$work/one/log.jsonl") <(vals "$work/two/log.jsonl") >"$work/vals"
    [ "$(wc -l <"$work/vals")" -eq 2 ] && awk '{ d = ($4 - $2) / $2; if (d < 0) d = -d; if ($1 != $3 || d > 1e-5) exit 1 }' "$work/vals"
    check "and their held-out accuracy and loss after each epoch" $? "$(cat "$work/vals")"
fi
# 22. a run fine-tuned from --init continues with more epochs (the trunk's
# shape comes from the checkpoint, not from the from-scratch defaults)
"$tessera" classify train --device cpu --out "$work/init" --resume --epochs 5 --quiet >"$work/more.out" 2>&1
rc=$?
steps5=$(losses "$work/init/log.jsonl" | wc -l)
[ $rc -eq 0 ] && [ "$(cat "$work/init/latest")" = "step_$(printf %08d "$steps5")" ] && [ "$steps5" -gt 0 ]
check "a fine-tune from --init resumed with --epochs 5 trains on to step $steps5" $? "exit $rc" "$(tail -3 "$work/more.out")"

# 23-25. an ensemble of three from --init, pools mixed: member i has seed
# 1337 + i and pool last, mean, last; eval and predict use the mean of the
# members' probabilities
ens=("$tessera" classify train "${small[@]}" --train "$work/train.jsonl" --init "$work/lm" --epochs 4 --ensemble 3 --pool mixed)
"${ens[@]}" --out "$work/ens" >"$work/ens.out" 2>&1
rc=$?
"$tessera" classify eval --device cpu --checkpoint "$work/ens" --data "$work/test.jsonl" >"$work/ens.eval" 2>&1
erc=$?; acc=$(accuracy "$work/ens.eval")
members=""
for i in 0 1 2; do
    st=$work/ens/member-$i/$(cat "$work/ens/member-$i/latest" 2>/dev/null)/state.json
    members="$members $(sed -n 's/.*"pool": "\([a-z]*\)".*"seed": \([0-9]*\),.*/\1:\2/p' "$st" 2>/dev/null)"
done
[ $rc -eq 0 ] && [ $erc -eq 0 ] && [ "$acc" = 1.000 ] && [ "$members" = " last:1337 mean:1338 last:1339" ] &&
    grep -q '"members": \["member-0", "member-1", "member-2"\]' "$work/ens/ensemble.json"
check "--ensemble 3 --pool mixed trains members ($members ) that eval scores together: every held-out text right (accuracy ${acc:-?})" $? \
    "exit $rc, eval exit $erc" "$(tail -4 "$work/ens.out")" "$(cat "$work/ens.eval")"
for i in ens ens/member-0 ens/member-1 ens/member-2; do
    "$tessera" classify predict --device cpu --checkpoint "$work/$i" --data "$work/test.jsonl" --out "$work/${i//\//_}.pred" 2>&1
done
"$tessera" classify eval --device cpu --checkpoint "$work/ens" --data "$work/test.jsonl" --out "$work/ens.json" --quiet
msg=$("$py" - "$work" <<'EOF' 2>&1
import json, math, sys
w = sys.argv[1]
rows = lambda n: [json.loads(l) for l in open(f"{w}/{n}.pred")]
ens, mem = rows("ens"), [rows(f"ens_member-{i}") for i in range(3)]
assert len(ens) == 60 and all(len(m) == 60 for m in mem)
worst, loss = 0.0, 0.0
for i, r in enumerate(ens):
    for k, p in r["probabilities"].items():
        worst = max(worst, abs(p - sum(m[i]["probabilities"][k] for m in mem) / 3))
    assert r["label"] == max(r["probabilities"], key=r["probabilities"].get)
    loss -= math.log(r["probabilities"][r["true_label"]])
m = json.load(open(f"{w}/ens.json"))
assert m["ensemble"] == 3, m
got = m["metrics"]["loss"]
assert worst < 1e-6 and abs(got - loss / 60) < 1e-5 * loss / 60, (worst, got, loss / 60)
print(f"largest difference {worst:.2g}, loss {got:.6g}")
EOF
)
check "the ensemble's predicted probabilities are its members' mean and eval's loss is theirs ($msg)" $? "$msg"
"${ens[@]}" --out "$work/ens" >"$work/again.out" 2>&1
r1=$?
"$tessera" classify train --device cpu --out "$work/ens" --resume --ensemble 4 --quiet >"$work/four.out" 2>&1
r2=$?
"$tessera" classify train "${small[@]}" --train "$work/train.jsonl" --pool mixed --out "$work/mixed1" >"$work/mixed1.out" 2>&1
r3=$?
"$tessera" classify train --device cpu --out "$work/ens" --resume --epochs 5 --quiet >"$work/ens5.out" 2>&1
r4=$?
named_error $r1 "$work/again.out" "already holds a run" && named_error $r2 "$work/four.out" "ensemble (3 vs 4)" &&
    named_error $r3 "$work/mixed1.out" "--ensemble 2 or more" && [ $r4 -eq 0 ] &&
    [ "$(cat "$work/ens/member-2/latest")" = "step_$(printf %08d "$steps5")" ]
check "an ensemble is not written over, its size is fixed on --resume, mixed pools need one; --resume --epochs 5 extends every member" $? \
    "exits $r1 $r2 $r3 $r4" "$(cat "$work/again.out" "$work/four.out" "$work/mixed1.out" "$work/ens5.out" | tail -8)"

# 26-27. --lm-weight (GPT-1's auxiliary language-model loss): logged each
# step and learned; refused with bidirectional attention; under mpirun the
# losses of one process (its mean is over the whole batch's tokens)
gen 271 11 jsonl >"$work/train271.jsonl"
lmw=("$tessera" classify train "${small[@]}" --train "$work/train271.jsonl" --val "$work/test.jsonl" --batch 15 --epochs 2
     --class-weights balanced --pool last --token-dropout 0.2 --lm-weight 0.5)
"${lmw[@]}" --out "$work/lm1" >"$work/lm1.out" 2>&1
rc=$?
"${lmw[@]}" --attention bidirectional --out "$work/lm2" >"$work/lm2.out" 2>&1
brc=$?
lml() { sed -n 's/.*"lm_loss": \([^,]*\),.*/\1/p' "$1"; }
n_lm=$(lml "$work/lm1/log.jsonl" | wc -l)
first=$(lml "$work/lm1/log.jsonl" | head -3 | awk '{s += $1} END {print s / NR}')
last=$(lml "$work/lm1/log.jsonl" | tail -3 | awk '{s += $1} END {print s / NR}')
[ $rc -eq 0 ] && [ "$n_lm" -eq 38 ] && awk -v a="$first" -v b="$last" 'BEGIN { exit !(b < 0.8 * a) }' \
    && named_error $brc "$work/lm2.out" "--lm-weight needs causal attention" && [ ! -e "$work/lm2" ]
check "--lm-weight logs a language-model loss each step that falls ($first to $last over $n_lm steps); bidirectional is refused" $? \
    "exit $rc, bidirectional exit $brc" "$(tail -n 3 "$work/lm1.out" "$work/lm2.out")"
if [ -z "$mpirun" ] || ! "$tessera" --version | grep -qw mpi; then
    skip "two processes with --lm-weight follow one process's losses" "no mpirun, or tessera built without MPI"
else
    ASAN_OPTIONS=detect_leaks=0 timeout 300 "$mpirun" --allow-run-as-root --oversubscribe -np 2 "${lmw[@]}" \
        --out "$work/lm3" >"$work/lm3.out" 2>&1
    rc=$?
    d=$(maxrel "$work/lm3/log.jsonl" "$work/lm1/log.jsonl")
    dl=$(paste <(lml "$work/lm1/log.jsonl") <(lml "$work/lm3/log.jsonl") |
        awk '{d = ($2 - $1) / $1; if (d < 0) d = -d; if (d > m) m = d; k++} END {if (k != 38) print "none"; else printf "%.3g\n", m}')
    [ $rc -eq 0 ] && within "$d" 1e-5 && within "$dl" 1e-5
    check "two processes with --lm-weight follow one process's losses (largest relative difference $d, LM loss $dl)" $? \
        "exit $rc" "$(tail -n 5 "$work/lm3.out")"
fi

exit $(( fails > 0 ))
