#!/usr/bin/env bash
# The parallel layer's figures on this machine, in one run:
#  1. allreduce bus bandwidth of each strategy, 4 KB to 64 MB, on 2 and 4
#     processes, beside memcpy bandwidth (goal: the intra-node path at least
#     half of memcpy at 64 MB);
#  2. data-parallel weak scaling: 2 processes of 1 thread against 1, the
#     same batch per process, rounds alternating (goal: at least 90%);
#  3. the pipeline bubble of 2 stages against (P-1)/(m+P-1).
# usage: bench/parallel.sh [BUILD_DIR] [ROUNDS]
set -euo pipefail
build=${1:-build}
rounds=${2:-3}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 TESSERA_THREADS=1 POCL_MAX_PTHREAD_COUNT=1
mpi() { local np=$1; shift; mpirun --allow-run-as-root --oversubscribe -np "$np" "$@"; }
field() { sed -n "s/.*\"$2\": \"*\([0-9.a-z]*\).*/\1/p" <<<"$1"; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
echo "tessera parallel benchmarks, $(date -u +%Y-%m-%d), $(nproc) cores: $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)"
echo "Open MPI $(mpirun --version 2>&1 | sed -n 's/.*Open MPI) //p' | head -1)"

echo; echo "== 1. allreduce"
for np in 2 4; do mpi "$np" "$build/tessera" bench collectives --min-time 0.3; echo; done

echo "== 2. data-parallel weak scaling (L=4 C=256 T=64, batch 8 per process, 4.2M parameters)"
for s in mpi ring hier ps; do
    one=() two=()
    for ((r = 0; r < rounds; r++)); do
        one+=("$(field "$("$build/bench/parallel_train" --steps 8)" median_step_s)")
        two+=("$(field "$(mpi 2 "$build/bench/parallel_train" --steps 8 --strategy "$s")" median_step_s)")
    done
    t1=$(printf '%s\n' "${one[@]}" | median) t2=$(printf '%s\n' "${two[@]}" | median)
    printf '  %-5s 1 process %.4f s/step, 2 processes %.4f s/step: efficiency %.1f%%\n' "$s" "$t1" "$t2" \
        "$(awk -v a="$t1" -v b="$t2" 'BEGIN {print 100 * a / b}')"
done

# the machine's own limit: two independent processes, one per core
alone=() pair=()
for ((r = 0; r < rounds; r++)); do
    alone+=("$(field "$(taskset -c 0 "$build/bench/parallel_train" --steps 8)" median_step_s)")
    taskset -c 0 "$build/bench/parallel_train" --steps 8 >"${TMPDIR:-/tmp}/tessera-pair0.json" &
    pair+=("$(field "$(taskset -c 1 "$build/bench/parallel_train" --steps 8)" median_step_s)")
    wait
done
t1=$(printf '%s\n' "${alone[@]}" | median) t2=$(printf '%s\n' "${pair[@]}" | median)
printf '  two independent processes (no communication): %.4f s/step alone, %.4f s/step side by side: %.1f%%\n' \
    "$t1" "$t2" "$(awk -v a="$t1" -v b="$t2" 'BEGIN {print 100 * a / b}')"

echo; echo "== 3. pipeline bubble, 2 stages of 4 layers (C=256 T=64, vocabulary 256 so the stages weigh the same, micro-batches of 4)"
for m in 1 2 4 8 16; do
    out=$(mpi 2 "$build/bench/parallel_train" --pp 2 --layers 8 --batch 4 --micro "$m" --steps 6 --vocab 256)
    printf '  m=%-3d measured %.3f, (P-1)/(m+P-1) = %.3f, step %.3f s\n' "$m" "$(field "$out" bubble)" \
        "$(field "$out" bubble_theory)" "$(field "$out" median_step_s)"
done
