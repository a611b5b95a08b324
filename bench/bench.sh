#!/usr/bin/env bash
# The benchmark figures in README.md, all from `tessera bench`, in one run:
# the kernel suites on every device, a GPT-2 124M training step beside
# PyTorch, and allreduce bandwidth under mpirun. Writes JSON, CSV and
# markdown to bench/results/ and the HTML report to bench/results/report-DATE/.
# PyTorch: Debian's python3-torch, or the python in $TESSERA_PYTHON (a venv
# with torch >= 2 from PyPI: then also compiled with torch.compile).
# usage: bench/bench.sh [BUILD_DIR] [MIN_TIME]
set -euo pipefail
build=${1:-build}
min_time=${2:-0.5}
tessera=$build/tessera
out=$(cd "$(dirname "$0")" && pwd)/results
date=$(date -u +%Y-%m-%d)
mkdir -p "$out"
"$tessera" bench --min-time "$min_time" --json "$out/kernels-$date.json" --csv "$out/kernels-$date.csv" \
    --markdown "$out/kernels-$date.md"
py=${TESSERA_PYTHON:-/usr/bin/python3}
compile=()
"$py" -c 'import sys, torch; sys.exit(int(torch.__version__.split(".")[0]) < 2)' 2>/dev/null && compile=(--torch-compile)
train=(bench train --model d12 --vocab 50257 --batch 4 --seq-len 64 --steps 5 --warmup 2 --dtype fp32,bf16)
# the CPU backend and any GPU first, beside PyTorch; then CPU-type OpenCL
# devices (PoCL) in a process of their own, which tessera runs with passive
# OpenMP waiting (every device it opens is OpenCL): the host products'
# OpenMP workers otherwise spin after each product on the cores PoCL's
# threads need (README, "How devices run ops"); the CPU backend keeps the
# default, which is faster for it
devices=$("$tessera" devices)
cpu_cl=$(awk '/^[a-z]/ {id = $1} /^  type / && id ~ /^opencl:/ && $2 == "CPU," {print id}' <<<"$devices")
others=$(awk '/^[a-z]/ {id = $1} /^  type / && !(id ~ /^opencl:/ && $2 == "CPU,") {print id}' <<<"$devices" |
    paste -sd, -)
"$tessera" "${train[@]}" --device "${others:-cpu}" --vs-pytorch "${compile[@]}" \
    --json "$out/train-$date.json" --csv "$out/train-$date.csv"
files=("$out/kernels-$date.json" "$out/train-$date.json")
for dev in $cpu_cl; do
    "$tessera" "${train[@]}" --device "$dev" \
        --json "$out/train-$date-${dev/:/}.json" --csv "$out/train-$date-${dev/:/}.csv"
    files+=("$out/train-$date-${dev/:/}.json")
done
if command -v mpirun >/dev/null && "$tessera" --version | grep -qw mpi; then
    OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 TESSERA_THREADS=1 \
        mpirun --allow-run-as-root --oversubscribe -np 2 "$tessera" bench collectives --min-time "$min_time" \
        --json "$out/collectives-$date.json"
fi
[ -f "$out/collectives-$date.json" ] && files+=("$out/collectives-$date.json")
"$tessera" bench report "$out/report-$date" "${files[@]}"
