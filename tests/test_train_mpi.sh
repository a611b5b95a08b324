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
echo "1..11"

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
