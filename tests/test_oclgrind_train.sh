#!/usr/bin/env bash
# A few training steps of a tiny model on the oclgrind device (a simulated
# GPU that checks every memory access), through the `tessera` command, with
# data-race, uninitialized-value and API checks on. Passes when training
# works and oclgrind reports nothing. $1: the tessera binary. The
# environment (OCL_ICD_VENDORS naming oclgrind, OCLGRIND_*) comes from meson.
set -u
tessera=$1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
. "$(dirname "$0")/tap.sh"
# oclgrind's reports: indented "Kernel:" lines of a diagnostic block, API
# errors and fatal errors (it stops a kernel it cannot simulate)
diagnostics() { grep -c -E '^[[:space:]]*Kernel:|Oclgrind - OpenCL runtime error|OCLGRIND FATAL' "$1"; }

echo "TAP version 13"
echo "1..2"
"$tessera" devices >"$work/devices" 2>&1
grep -q "Oclgrind" "$work/devices" || {
    echo "ok 1 - training on oclgrind # SKIP no oclgrind device (OCL_ICD_VENDORS=${OCL_ICD_VENDORS:-unset})"
    echo "ok 2 - no oclgrind diagnostics # SKIP no oclgrind device"
    exit 0
}
sed -n '/Oclgrind/,/^$/p' "$work/devices" | sed 's/^/# /'
# a small text (the built-in task would end by decoding 200 problems)
for i in $(seq 40); do echo "line $i: the quick brown fox jumps over the lazy dog"; done >"$work/text.txt"
tiny=(--data "$work/text.txt" --layers 1 --heads 2 --width 16 --seq-len 24 --batch 2 --lr 0.01 --warmup 1 --eval-every 3
      --eval-batches 1 --sample-tokens 0 --quiet)
# tessera's own GEMM kernel (conformance-oclgrind covers CLBlast: untuned,
# it pads these tiny products to large tiles that take minutes to simulate),
# and no start-up GEMM-rate measurement (a 1024^3 product) for MFU
TESSERA_GEMM=kernel TESSERA_PEAK_GFLOPS=1 \
    "$tessera" train --device opencl:0 "${tiny[@]}" --steps 3 --out "$work/run" >"$work/out" 2>"$work/err"
rc=$?
loss=$(sed -n 's/^{"step": 3, "loss": \([^,]*\),.*/\1/p' "$work/run/log.jsonl" 2>/dev/null | tail -1)
[ $rc -eq 0 ] && awk -v l="${loss:-nan}" 'BEGIN { exit !(l + 0 == l && l > 0 && l < 10) }'
check "three training steps of a tiny model on oclgrind: loss after step 3 ${loss:-?}" $? \
    "exit $rc" "$(tail -5 "$work/out")" "$(grep -v '^[[:space:]]' "$work/err" | head -5)"
count=$(diagnostics "$work/err")
[ "$count" -eq 0 ]
check "oclgrind reports no race, uninitialized read, out-of-bounds access or API error" $? \
    "$count reports, the first:" "$(grep -E -B1 -A3 '^[[:space:]]*Kernel:|Oclgrind - OpenCL|OCLGRIND FATAL' "$work/err" | head -20)"
