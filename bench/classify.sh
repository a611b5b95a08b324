#!/usr/bin/env bash
# Text classification on the Debian package descriptions, from nothing to
# the test-set figures, timed, beside the anchor (TF-IDF + logistic
# regression, bench/classify_anchor.py) in the same run:
#   1. pretrain a small GPT on the training texts (labels unused),
#   2. fine-tune it on the labels (tessera classify train --init),
#   3. the same classifier trained from scratch, for what pretraining gains,
#   4. tessera classify eval of both on the test file.
# OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE are unset (a benchmark's own choice).
# Writes bench/results/classify-DATE.{md,json}.
# usage: bench/classify.sh [BUILD_DIR] [DATA_DIR]
set -euo pipefail
unset OPENBLAS_CORETYPE OPENBLAS_L2_SIZE
build=$(cd "${1:-build}" && pwd)
data=$(cd "${2:-$(dirname "$0")/../../shared/data}" && pwd)
train=$data/debian-packages-train.jsonl test=$data/debian-packages-test.jsonl
here=$(cd "$(dirname "$0")" && pwd)
out=$here/results
date=$(date -u +%Y-%m-%d)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"
tessera=$build/tessera
# Debian's python3 has scikit-learn (python3-sklearn); PYTHON overrides
py=${PYTHON:-$( [ -x /usr/bin/python3 ] && echo /usr/bin/python3 || echo python3 )}
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", b - a }'; }
now() { date +%s.%N; }

# the recipe (README "Text classification")
lm=(--tokenizer bpe:2048 --layers 2 --heads 4 --width 128 --seq-len 64 --batch 32 --steps 800 --lr 2e-3
    --eval-every 200)
cls=(--epochs 8 --max-len 48 --pool last --token-dropout 0.2)

"$py" "$here/classify_anchor.py" "$train" "$test" --json "$work/anchor.json"

t0=$(now)
"$tessera" train --data "$train" "${lm[@]}" --out "$work/lm" --quiet
t1=$(now)
"$tessera" classify train --train "$train" --init "$work/lm" "${cls[@]}" --out "$work/fine" --quiet
t2=$(now)
"$tessera" classify eval --checkpoint "$work/fine" --data "$test" --out "$work/fine.json" --quiet
t3=$(now)
# from scratch: the same trunk shape and tokenizer, new weights
"$tessera" classify train --train "$train" --tokenizer "$work/lm/tokenizer.txt" --layers 2 --heads 4 --width 128 \
    "${cls[@]}" --out "$work/scratch" --quiet
t4=$(now)
"$tessera" classify eval --checkpoint "$work/scratch" --data "$test" --out "$work/scratch.json" --quiet

"$py" - "$work" "$out/classify-$date" "$(secs "$t0" "$t1")" "$(secs "$t1" "$t2")" "$(secs "$t2" "$t3")" \
    "$(secs "$t3" "$t4")" "$(uname -n)" "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" \
    "$(grep -o -m1 avx512f /proc/cpuinfo || echo avx2)" <<'PY'
import json, sys
work, base, pre, fine, ev, scratch, host, cpu, isa = sys.argv[1:]
a = json.load(open(f"{work}/anchor.json"))
f = json.load(open(f"{work}/fine.json"))["metrics"]
s = json.load(open(f"{work}/scratch.json"))["metrics"]
def row(name, m, seconds):
    return (f"| {name} | {100 * m['accuracy']:.2f}% | {m['macro_precision']:.3f} | {m['macro_recall']:.3f} | "
            f"{m['macro_f1']:.3f} | {seconds} |")
total = int(pre) + int(fine) + int(ev)
lines = [f"Debian package descriptions, 5 sections, {a['test_examples']} test examples; {cpu} ({isa}), {host}",
         "", "| method | accuracy | macro precision | macro recall | macro F1 | seconds |",
         "| --- | --- | --- | --- | --- | --- |",
         row("anchor: TF-IDF word+char n-grams, logistic regression", a, f"{a['seconds']:.0f}"),
         row("tessera: pretrain 2x128 GPT on the texts, then fine-tune", f,
             f"{total} ({pre} pretrain + {fine} fine-tune + {ev} eval)"),
         row("tessera: the same classifier from scratch", s, scratch)]
text = "\n".join(lines)
print(text)
open(base + ".md", "w").write(text + "\n")
json.dump({"anchor": a, "pretrained": f, "scratch": s, "seconds": {"pretrain": int(pre), "fine_tune": int(fine),
           "eval": int(ev), "scratch": int(scratch)}}, open(base + ".json", "w"), indent=1)
PY
