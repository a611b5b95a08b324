#!/usr/bin/env bash
# Process start-up cost of the OpenCL kernels: each case is a fresh process
# (bench/kernel_startup) that builds every program, with PoCL's and
# tessera's caches cold or warm. Prints the median wall time of N runs.
# usage: bench/kernel_startup.sh [BUILD_DIR] [RUNS]
set -euo pipefail
build=${1:-build}
runs=${2:-5}
probe=$build/bench/kernel_startup
[ -x "$probe" ] || { echo "build first: $probe is missing" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

run() { # pocl-cache tessera-cache -> "wall seconds"
    local t0 t1
    t0=$(date +%s.%N)
    POCL_CACHE_DIR=$1 TESSERA_CACHE_DIR=$2 "$probe" >"$work/out" || { cat "$work/out"; exit 1; }
    t1=$(date +%s.%N)
    grep -q '^no-opencl' "$work/out" && { echo "no OpenCL device" >&2; exit 0; }
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f\n", b - a }'
}
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

declare -A times
for ((i = 0; i < runs; i++)); do
    rm -rf "$work/p" "$work/t"
    times[cold]+="$(run "$work/p" "$work/t") "            # both caches empty
    rm -rf "$work/p"
    times[tessera]+="$(run "$work/p" "$work/t") "         # tessera's cache warm only
    times[both]+="$(run "$work/p" "$work/t") "            # both warm
    times[pocl]+="$(run "$work/p" off) "                  # PoCL's warm, tessera's off
done
printf '%-44s %10s\n' "start of a process that builds every kernel" "median (s)"
printf '%-44s %10.3f\n' "cold (no cache anywhere)" "$(tr ' ' '\n' <<<"${times[cold]}" | grep . | median)"
printf '%-44s %10.3f\n' "tessera binary cache warm, PoCL cache cold" "$(tr ' ' '\n' <<<"${times[tessera]}" | grep . | median)"
printf '%-44s %10.3f\n' "PoCL cache warm, tessera cache off" "$(tr ' ' '\n' <<<"${times[pocl]}" | grep . | median)"
printf '%-44s %10.3f\n' "both warm" "$(tr ' ' '\n' <<<"${times[both]}" | grep . | median)"
