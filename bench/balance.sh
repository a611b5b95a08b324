#!/usr/bin/env bash
# Devices of different speed, side by side in one run (issue 13): two
# ranks of one core each, rank 0 on the CPU backend and rank 1 on PoCL
# (`--device cpu,opencl:0`), or the devices given in $DEVICES.
#  1. each device's solo throughput on the whole batch (same core, threads
#     and binding as in the pair);
#  2. data parallel, --balance even and --balance auto: tokens/s and the
#     balanced run as a fraction of the summed solos (goal >= 90%);
#  3. a 2-stage pipeline, even stages and stages by measured cost;
#  4. Chrome traces (--trace) of even and balanced runs: each rank's idle
#     share of the timed steps (1 - compute / wall), from the trace JSON.
# Throughput is taken from the log's elapsed times after the first WARM
# steps (PoCL compiles its kernels in the first). Not a timed test.
# usage: bench/balance.sh [BUILD_DIR] [OUT_DIR]
set -euo pipefail
build=${1:-build}
out=${2:-$(mktemp -d)}
mkdir -p "$out"
tessera=$build/tessera
devices=${DEVICES:-cpu,opencl:0}
d0=${devices%%,*} d1=${devices#*,}
# one thread per process everywhere: tessera's, OpenMP's, OpenBLAS's, PoCL's
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 TESSERA_THREADS=1 OMP_NUM_THREADS=1 \
    OPENBLAS_NUM_THREADS=1 POCL_MAX_PTHREAD_COUNT=1 POCL_AFFINITY=0
unset OPENBLAS_CORETYPE OPENBLAS_L2_SIZE
L=${L:-4} C=${C:-192} T=${T:-128} B=${B:-32} STEPS=${STEPS:-14} WARM=${WARM:-4} ACCUM_PP=${ACCUM_PP:-16}
model=(--layers "$L" --heads 4 --width "$C" --seq-len "$T" --lr 0.001 --warmup 2 --eval-batches 0 --sample-tokens 0
       --quiet --no-bind --steps "$STEPS" --log -)
pair() { mpirun --allow-run-as-root --oversubscribe -np 2 --bind-to core --map-by core "$@"; }

# tokens/s after the warm-up steps, from a log (step lines carry elapsed_s)
rate() {
    python3 - "$1" "$2" "$WARM" <<'PY'
import json, sys
path, tokens_per_step, warm = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
steps = [json.loads(l) for l in open(path) if l.startswith('{"step"') and '"loss"' in l]
a, b = steps[warm - 1], steps[-1]
print("%.1f" % ((b["step"] - a["step"]) * tokens_per_step / (b["elapsed_s"] - a["elapsed_s"])))
PY
}
# each rank's idle share over the timed steps, from a Chrome trace
idle() {
    python3 - "$1" "$WARM" <<'PY'
import json, sys
ev = [e for e in json.load(open(sys.argv[1]))["traceEvents"] if e.get("ph") == "X"]
warm = int(sys.argv[2])
out = []
for pid in sorted({e["pid"] for e in ev}):
    mine = [e for e in ev if e["pid"] == pid and e.get("args", {}).get("step", -1) > warm]
    t0 = min(e["ts"] for e in mine); t1 = max(e["ts"] + e["dur"] for e in mine)
    busy = sum(e["dur"] for e in mine if e["tid"] == 0 and e["cat"] == "compute"
               and not e["name"].startswith("gradient reduction wait"))
    out.append("rank %d %.1f%%" % (pid, 100 * (1 - busy / (t1 - t0))))
print(", ".join(out))
PY
}
waitload() { # a quiet machine: the other users' load below 0.5 (up to 10 minutes)
    for _ in $(seq 30); do
        awk '{exit !($1 < 0.5)}' /proc/loadavg && return 0
        sleep 20
    done
    echo "(load stayed at $(cut -d' ' -f1 /proc/loadavg); measuring anyway)"
}
waitload
load0=$(cut -d' ' -f1-3 /proc/loadavg)
echo "tessera balance benchmark, $(date -u +%Y-%m-%dT%H:%MZ), $(getconf _NPROCESSORS_ONLN) cores: $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1), avx512f: $(grep -o -m1 avx512f /proc/cpuinfo || echo no)"
echo "model L=$L C=$C T=$T, global batch $B, $STEPS steps (first $WARM not timed), devices $d0 and $d1, one core and one thread each"
echo "load average at start: $load0"
tps=$((B * T))

echo; echo "== 1. solo, whole batch, one core"
taskset -c 0 "$tessera" train "${model[@]}" --batch "$B" --device "$d0" --log "$out/solo0.jsonl" >/dev/null
taskset -c 1 "$tessera" train "${model[@]}" --batch "$B" --device "$d1" --log "$out/solo1.jsonl" >/dev/null
s0=$(rate "$out/solo0.jsonl" $tps) s1=$(rate "$out/solo1.jsonl" $tps)
sum=$(awk -v a="$s0" -v b="$s1" 'BEGIN {print a + b}')
echo "  $d0 $s0 tokens/s, $d1 $s1 tokens/s, sum $sum"

echo; echo "== 2. data parallel on both"
for mode in even auto; do
    pair "$tessera" train "${model[@]}" --batch "$B" --device "$devices" --balance $mode --log "$out/dp-$mode.jsonl" \
        --trace "$out/dp-$mode.trace.json" >/dev/null
    r=$(rate "$out/dp-$mode.jsonl" $tps)
    rows=$(sed -n 's/.*"rows": "\([0-9+]*\)".*/\1/p' "$out/dp-$mode.jsonl" | head -1)
    printf '  --balance %-4s rows %-6s %8s tokens/s = %5.1f%% of the summed solos; idle %s\n' "$mode" "$rows" "$r" \
        "$(awk -v a="$r" -v b="$sum" 'BEGIN {print 100 * a / b}')" "$(idle "$out/dp-$mode.trace.json")"
done

echo; echo "== 3. pipeline of 2 stages (stage 0 on $d0, stage 1 on $d1), $ACCUM_PP micro-batches"
for mode in even auto; do
    pair "$tessera" train "${model[@]}" --batch "$((B / ACCUM_PP > 0 ? B / ACCUM_PP : 1))" --accum "$ACCUM_PP" \
        --pp 2 --device "$devices" --balance $mode --log "$out/pp-$mode.jsonl" --trace "$out/pp-$mode.trace.json" >/dev/null
    r=$(rate "$out/pp-$mode.jsonl" $tps)
    map=$(sed -n 's/.*"stage_map": "\([^"]*\)".*/\1/p' "$out/pp-$mode.jsonl" | head -1)
    printf '  %-5s stages %-10s %8s tokens/s = %5.1f%% of the summed solos; idle %s\n' "$mode" "${map:-even}" "$r" \
        "$(awk -v a="$r" -v b="$sum" 'BEGIN {print 100 * a / b}')" "$(idle "$out/pp-$mode.trace.json")"
done
echo; echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg); files in $out"
