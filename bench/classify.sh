#!/usr/bin/env bash
# Text classification on the Debian package descriptions, from nothing to
# the test-set figures, timed, beside the anchor (TF-IDF + logistic
# regression, bench/classify_anchor.py) in the same run:
#   1. pretrain a small GPT on the training texts (labels unused),
#   2. fine-tune an ensemble (MEMBERS, 5 by default) on the labels, each token's embedding
#      with its word's character n-grams (--char-ngrams 32768), the texts'
#      language-model loss beside the classes' (tessera classify train
#      --init --ensemble N --pool mixed --lm-weight 1); its first member
#      alone is the single-classifier recipe,
#   3. the same ensemble without character n-grams, for what they gain; the
#      same classifier trained from scratch, for what pretraining gains;
#      the single classifier without the language-model loss, and with max
#      pooling,
#   4. tessera classify eval of each on the test file.
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
lm=(--tokenizer word:16384 --layers 2 --heads 4 --width 128 --seq-len 64 --batch 32 --steps 800 --lr 2e-3
    --eval-every 200)
cls=(--epochs 8 --max-len 48 --pool last --token-dropout 0.2 --lm-weight 1 --char-ngrams 32768)
members=${MEMBERS:-5}

"$py" "$here/classify_anchor.py" "$train" "$test" --json "$work/anchor.json"

t0=$(now)
"$tessera" train --data "$train" "${lm[@]}" --out "$work/lm" --quiet
t1=$(now)
"$tessera" classify train --train "$train" --init "$work/lm" "${cls[@]}" --ensemble $members --pool mixed \
    --out "$work/fine" --quiet
t2=$(now)
"$tessera" classify eval --checkpoint "$work/fine" --data "$test" --out "$work/fine.json" --quiet
t3=$(now)
# member 0 (seed 1337, pool last) is the recipe without --ensemble
"$tessera" classify eval --checkpoint "$work/fine/member-0" --data "$test" --out "$work/one.json" --quiet
one=$(sed -n 's/.*"event": "end".*"seconds": \([0-9.]*\).*/\1/p' "$work/fine/member-0/log.jsonl")
# from scratch: the same trunk shape and tokenizer, new weights
"$tessera" classify train --train "$train" --tokenizer "$work/lm/tokenizer.txt" --layers 2 --heads 4 --width 128 \
    "${cls[@]}" --out "$work/scratch" --quiet
t4=$(now)
"$tessera" classify eval --checkpoint "$work/scratch" --data "$test" --out "$work/scratch.json" --quiet
# the recipe without character n-grams (--char-ngrams 0): the ensemble and its first member
"$tessera" classify train --train "$train" --init "$work/lm" "${cls[@]}" --char-ngrams 0 --ensemble $members --pool mixed \
    --out "$work/nong" --quiet
"$tessera" classify eval --checkpoint "$work/nong" --data "$test" --out "$work/nong.json" --quiet
"$tessera" classify eval --checkpoint "$work/nong/member-0" --data "$test" --out "$work/nong-one.json" --quiet
# the recipe's single classifier without GPT-1's auxiliary language-model loss (--lm-weight 0)
"$tessera" classify train --train "$train" --init "$work/lm" "${cls[@]}" --lm-weight 0 --out "$work/nolm" --quiet
"$tessera" classify eval --checkpoint "$work/nolm" --data "$test" --out "$work/nolm.json" --quiet
# one classifier pooling each channel's max over the text (--pool max), seed 1337 as member 0
"$tessera" classify train --train "$train" --init "$work/lm" "${cls[@]}" --pool max --out "$work/max" --quiet
"$tessera" classify eval --checkpoint "$work/max" --data "$test" --out "$work/max.json" --quiet

"$py" - "$work" "$out/classify-$date" "$(secs "$t0" "$t1")" "$(secs "$t1" "$t2")" "$(secs "$t2" "$t3")" \
    "$(secs "$t3" "$t4")" "$(secs 0 "$one")" "$members" "$(uname -n)" "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" \
    "$(grep -o -m1 avx512f /proc/cpuinfo || echo avx2)" <<'PY'
import json, sys
work, base, pre, fine, ev, scratch, one_s, members, host, cpu, isa = sys.argv[1:]
a = json.load(open(f"{work}/anchor.json"))
f = json.load(open(f"{work}/fine.json"))["metrics"]
o = json.load(open(f"{work}/one.json"))["metrics"]
s = json.load(open(f"{work}/scratch.json"))["metrics"]
g = json.load(open(f"{work}/nong.json"))["metrics"]
g1 = json.load(open(f"{work}/nong-one.json"))["metrics"]
n = json.load(open(f"{work}/nolm.json"))["metrics"]
mx = json.load(open(f"{work}/max.json"))["metrics"]
def row(name, m, seconds):
    return (f"| {name} | {100 * m['accuracy']:.2f}% | {m['macro_precision']:.3f} | {m['macro_recall']:.3f} | "
            f"{m['macro_f1']:.3f} | {seconds} |")
total = int(pre) + int(fine) + int(ev)
lines = [f"Debian package descriptions, 5 sections, {a['test_examples']} test examples; {cpu} ({isa}), {host}",
         "", "| method | accuracy | macro precision | macro recall | macro F1 | seconds |",
         "| --- | --- | --- | --- | --- | --- |",
         row("anchor: TF-IDF word+char n-grams, logistic regression", a, f"{a['seconds']:.0f}"),
         row(f"tessera: pretrain 2x128 GPT (word tokens) on the texts, then fine-tune an ensemble of {members} "
             "(character n-grams)", f,
             f"{total} ({pre} pretrain + {fine} fine-tune + {ev} eval)"),
         row("tessera: its first member alone (the recipe without --ensemble)", o,
             f"{int(pre) + int(one_s)} ({pre} pretrain + {one_s} fine-tune)"),
         row("tessera: the same classifier from scratch", s, scratch),
         row("tessera: the ensemble without character n-grams (--char-ngrams 0)", g, ""),
         row("tessera: its first member alone", g1, ""),
         row("tessera: the single classifier without the language-model loss (--lm-weight 0)", n, ""),
         row("tessera: the recipe's single classifier with max pooling (--pool max)", mx, "")]
text = "\n".join(lines)
print(text)
open(base + ".md", "w").write(text + "\n")
json.dump({"anchor": a, "pretrained_ensemble": f, "pretrained_single": o, "scratch": s,
           "without_char_ngrams": {"ensemble": g, "single": g1}, "single_without_lm_loss": n,
           "single_max_pool": mx, "members": int(members),
           "seconds": {"pretrain": int(pre), "fine_tune": int(fine), "eval": int(ev), "single_fine_tune": int(one_s),
                       "scratch": int(scratch)}}, open(base + ".json", "w"), indent=1)
PY
