#!/usr/bin/env bash
# GPT-2 124M training step (L=12, H=12, C=768, V=50257, B=4, T=64, fp32)
# on the CPU backend against PyTorch on the same shape, in one run: the two
# alternate ROUNDS times (the machine is shared and noisy), and the medians
# of each side's per-round medians are compared. Also tokens/s of the same
# step on the first OpenCL device.
# usage: bench/train_vs_pytorch.sh [BUILD_DIR] [ROUNDS] [THREADS]
set -euo pipefail
build=${1:-build}
rounds=${2:-3}
threads=${3:-2}
step=$build/bench/train_step
dir=$(cd "$(dirname "$0")" && pwd)
py=""
for p in /usr/bin/python3 python3; do
    if command -v "$p" >/dev/null && "$p" -c 'import torch' 2>/dev/null; then py=$p; break; fi
done
field() { sed -n "s/.*\"$2\": \([0-9.]*\).*/\1/p" <<<"$1"; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
ts=() pt=()
echo "GPT-2 124M shape, B=4 T=64, fp32, $threads threads; $rounds alternating rounds of 5 timed steps"
for ((r = 1; r <= rounds; r++)); do
    out=$(OMP_NUM_THREADS=$threads "$step" --device cpu --threads "$threads" --steps 5 --warmup 2)
    ts+=("$(field "$out" median_s)")
    echo "  round $r tessera: $out"
    if [ -n "$py" ]; then
        out=$(OMP_NUM_THREADS=$threads "$py" "$dir/torch_step.py" --threads "$threads" --steps 5 --warmup 2)
        pt+=("$(field "$out" median_s)")
        echo "  round $r pytorch: $out"
    fi
done
t=$(printf '%s\n' "${ts[@]}" | median)
printf '%-28s %8.3f s/step  %7.0f tokens/s\n' "tessera cpu backend" "$t" "$(awk -v t="$t" 'BEGIN{print 256/t}')"
if [ -n "$py" ]; then
    p=$(printf '%s\n' "${pt[@]}" | median)
    printf '%-28s %8.3f s/step  %7.0f tokens/s\n' "pytorch $("$py" -c 'import torch; print(torch.__version__)')" "$p" "$(awk -v t="$p" 'BEGIN{print 256/t}')"
    printf '%-28s %8.2fx\n' "speed-up over pytorch" "$(awk -v a="$p" -v b="$t" 'BEGIN{print a/b}')"
else
    echo "pytorch: not installed (python3-torch), no comparison"
fi
if "$build/core/cli/tessera" devices 2>/dev/null | grep -q '^opencl:0'; then
    out=$("$step" --device opencl --steps 3 --warmup 1)
    printf '%-28s %8.3f s/step  %7.0f tokens/s   (%s)\n' "tessera opencl:0" "$(field "$out" median_s)" "$(field "$out" tokens_per_s)" \
        "$("$build/core/cli/tessera" devices | sed -n 's/^opencl:0 *//p')"
fi
