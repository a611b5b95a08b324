#!/usr/bin/env bash
# Several nodes for real: `tessera train` across Linux network namespaces
# (tests/netns/lib.sh), each a "node" with its own address, Open MPI's TCP
# transport between them (TAP). $1: the tessera binary.
#
# Every layout trains the same 12 steps as one process and must follow its
# losses within 1e-5 (relative), the tolerance of the single-host MPI tests
# (tests/test_train_mpi.sh). Needs root and `ip netns`: skipped otherwise.
set -u
tessera=$(realpath "$1")
here=$(cd "$(dirname "$0")" && pwd)
. "$here/tap.sh"
. "$here/netns/lib.sh"

if ! netns_usable; then
    echo "1..0 # SKIP $NETNS_WHY"
    exit 0
fi
if ! command -v mpirun >/dev/null; then
    echo "1..0 # SKIP no mpirun"
    exit 0
fi

# the run directories: a path every "node" sees (namespaces share the file
# system, as nodes share a network file system)
work=$(mktemp -d /tmp/tessera-multinode.XXXXXX)
cleanup() { netns_down; rm -rf "$work"; }
trap cleanup EXIT
trap 'exit 1' INT TERM
export TESSERA_DATA_CACHE=$work/token-cache
env_flags=(-x TESSERA_THREADS=1 -x POCL_MAX_PTHREAD_COUNT=1 -x TESSERA_DATA_CACHE)
run() { # layout, tessera arguments...: mpirun across the nodes, bounded
    local layout=$1; shift
    timeout 120 bash -c '. "$1/netns/lib.sh"; NETNS_WORK=$2 NETNS_NODES=$3; shift 3; netns_mpirun "$@"' \
        _ "$here" "$NETNS_WORK" "$NETNS_NODES" "$layout" "${env_flags[@]}" "$tessera" "$@"
}

echo "TAP version 13"
echo "1..30"

small=(--device cpu --layers 4 --heads 4 --width 64 --seq-len 32 --batch 12 --accum 2 --lr 0.003 --warmup 4
       --steps 12 --eval-batches 2)

netns_up 3
check "three namespace nodes n1..n3 on a private bridge; their only links are lo and eth0, their only route $NETNS_SUBNET.0/24, and the host has no address there" $? "$(ip netns list)"

TESSERA_THREADS=1 "$tessera" train "${small[@]}" --quiet --out "$work/one" >"$work/one.out" 2>&1
check "one process trains the reference run" $? "$(tail -5 "$work/one.out")"

# compare NAME LAYOUT FLAGS: a run across nodes against one process
compare() {
    local name=$1 layout=$2 flags=$3 dir
    dir=$work/$(printf %s "$layout $flags" | tr -c 'a-z0-9' _)
    # shellcheck disable=SC2086
    run "$layout" train "${small[@]}" $flags --out "$dir" >"$dir.out" 2>&1
    local rc=$? d
    d=$(maxrel "$dir/log.jsonl" "$work/one/log.jsonl")
    [ $rc -eq 0 ] && within "$d" 1e-5 && grep -q "processes on ${layout%x*} nodes" "$dir.out"
    check "$name follows one process's losses (largest relative difference $d)" $? "exit $rc" \
        "$(grep -v '^\[' "$dir.out" | grep -v '^ *$' | tail -8)"
    last=$dir
}

# 3-18. every strategy with and without ZeRO-1, at 2 nodes x 2 and 3 nodes x 1
# (the parameter server keeps the optimizer on one rank, so ZeRO, which
# shards it, is refused with it: on every rank, before training)
for layout in 2x2 3x1; do
    for s in mpi ring hier ps; do
        compare "$layout ($s)" $layout "--strategy $s"
        if [ "$layout $s" = "2x2 hier" ]; then hier_log=$last.out; fi
        if [ $s != ps ]; then
            compare "$layout ($s, ZeRO-1)" $layout "--strategy $s --zero"
            continue
        fi
        dir=$work/ps_zero_$layout
        run $layout train "${small[@]}" --strategy ps --zero --out "$dir" >"$dir.out" 2>&1
        rc=$?
        said=$(grep -c "ZeRO shards the optimizer over the replicas; the parameter-server strategy keeps it on one" "$dir.out")
        [ $rc -ne 0 ] && [ "$said" -eq $((${layout%x*} * ${layout#*x})) ]
        check "$layout (ps, ZeRO-1) is refused on all $said ranks: ZeRO shards the optimizer, the parameter server keeps it on one rank" $? \
            "exit $rc" "$(head -3 "$dir.out")"
    done
done

# 19. what the log says about the nodes: per-node local ranks (which deal out
# the devices and the cores), and hier's inter-node phase
out=$hier_log
ranks=$(grep -cE '^rank [0-3] +node [01] n[12], local rank [01] of 2, cpu: ' "$out")
grep -q '^layout   4 processes on 2 nodes' "$out" &&
    grep -qE '^rank 2 +node 1 n2, local rank 0 of 2, cpu: bound to 1 core \(PUs 0\)' "$out" &&
    grep -qE '^rank 1 +node 0 n1, local rank 1 of 2, cpu: bound to 1 core \(PUs 1\)' "$out" && [ "$ranks" -eq 4 ]
check "2x2: the log names 2 nodes, each rank's node and local rank, and devices and cores dealt per node (rank 2 is n2's first: PU 0)" $? \
    "$(grep -E '^(layout|rank)' "$out")"
inter=$(sed -n 's/^hier .* then \([0-9]*\) inter-node allreduces .* across \([0-9]*\) nodes$/\1 \2/p' "$out")
[ "${inter% *}" -gt 0 ] 2>/dev/null && [ "${inter#* }" = 2 ]
check "2x2 hier: the inter-node phase ran (${inter% *} allreduces across ${inter#* } nodes)" $? "$(grep '^hier' "$out")"

# 21. tensor parallel inside each node, data parallel across
compare "2x2 --tp 2 (tensor-parallel pairs inside each node, data parallel across nodes)" 2x2 "--tp 2"

# 22-23. a tensor-parallel group asked to span nodes: refused, with the reason
for layout in 2x1 1,2,1; do
    dir=$work/tpspan_${layout//,/_}
    run "$layout" train "${small[@]}" --tp 2 --out "$dir" >"$dir.out" 2>&1
    rc=$?
    said=$(grep -c "tensor-parallel group of world ranks 0..1 would span nodes (rank 0 is on node n1, rank 1 on node n2)" "$dir.out")
    [ $rc -ne 0 ] && [ "$said" -ge 1 ] && ! [ -e "$dir/log.jsonl" ]
    check "--tp 2 on layout $layout (a pair across two nodes) is refused before training, naming the group and the nodes" $? \
        "exit $rc" "$(head -4 "$dir.out")"
done

# 24-25. pipeline stages on different nodes
compare "2x1 --pp 2 (one stage per node)" 2x1 "--pp 2"
compare "2x2 --tp 2 --pp 2 (tensor pairs inside nodes, stages across)" 2x2 "--tp 2 --pp 2 --ckpt-every 6 --keep 0"
ck=$last

# 26. a checkpoint saved at tp 2 x pp 2 on 2 nodes resumes at 3 nodes x 1
# (data parallel 3) with the saved run's losses
mkdir -p "$work/re3"
cp -r "$ck/step_00000006" "$work/re3/" 2>/dev/null; echo step_00000006 >"$work/re3/latest"
cp "$ck/tokenizer.txt" "$work/re3/" 2>/dev/null
run 3x1 train "${small[@]}" --out "$work/re3" --resume >"$work/re3.out" 2>&1
rc=$?; d=$(maxrel "$work/re3/log.jsonl" "$ck/log.jsonl")
steps=$(losses "$work/re3/log.jsonl" | awk '$1 > 6' | wc -l)
[ $rc -eq 0 ] && [ "$steps" -eq 6 ] && within "$d" 1e-5
check "the 2x2 tp 2 x pp 2 checkpoint at step 6 resumes on 3 nodes x 1 (dp 3) with the same losses (largest relative difference $d over $steps steps)" $? \
    "exit $rc" "$(grep -v '^\[' "$work/re3.out" | tail -5)"

# 27-30. faults: a node lost mid-run. The survivors must end within the
# watchdog's hard timeout (2 x --watchdog) plus the 2 s they wait for the
# others to fail with them, and a few seconds for Open MPI to end the job;
# the last checkpoint must load on the nodes that remain.
fault_flags=(--schedule constant --steps 100000 --ckpt-every 5 --watchdog 2 --quiet)
# fault NAME ACTION: start 2 nodes x 2, at step 12 do ACTION to node 2
fault() {
    local name=$1 action=$2 dir=$work/fault_$1
    run 2x2 train "${small[@]}" "${fault_flags[@]}" --out "$dir" >"$dir.out" 2>&1 &
    local job=$! i
    for i in $(seq 600); do grep -qs '"step": 12,' "$dir/log.jsonl" && break; sleep 0.1; done
    local t0
    t0=$(date +%s.%N)
    case $action in
        link) netns_exec 2 ip link set eth0 down ;;
        kill) for p in $(ip netns pids "${NETNS_PREFIX}n2"); do
                  tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -q "^$tessera train" && kill -9 "$p"
              done ;;
    esac
    # survivors: the tessera processes on node 1
    for i in $(seq 600); do
        alive=0
        for p in $(ip netns pids "${NETNS_PREFIX}n1"); do
            tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -q "^$tessera train" && alive=1
        done
        [ $alive = 0 ] && break
        sleep 0.1
    done
    gone=$(echo "$(date +%s.%N) $t0" | awk '{printf "%.1f", $1 - $2}')
    wait $job
    fault_rc=$?
    ended=$(echo "$(date +%s.%N) $t0" | awk '{printf "%.1f", $1 - $2}')
    fault_dir=$dir
}

# resume_left WHAT: the last checkpoint of the lost run, resumed on the one
# node left (2 ranks: data parallel 2 instead of 4), continues with the
# losses of one process trained straight through to the same step, and with
# those the lost run logged after that checkpoint, if it got that far before
# the fault (the resumed run rewrites the log from its checkpoint on: keep
# the lost run's)
resume_left() {
    local what=$1 saved at rc both d dref last ok
    saved=$(cat "$fault_dir/latest" 2>/dev/null)
    case $saved in step_[0-9]*) at=$((10#${saved#step_})) ;; *) saved="no checkpoint"; at=0 ;; esac
    cp "$fault_dir/log.jsonl" "$work/lost.jsonl"
    run 1x2 train "${small[@]}" "${fault_flags[@]}" --steps $((at + 8)) --out "$fault_dir" --resume \
        >"$fault_dir.resume.out" 2>&1
    rc=$?
    TESSERA_THREADS=1 "$tessera" train "${small[@]}" --schedule constant --steps $((at + 8)) --quiet \
        --out "$fault_dir.ref" >/dev/null 2>&1
    after() { losses "$1" | awk -v a="$at" '$1 > a {printf "{\"step\": %d, \"loss\": %s,\n", $1, $2}'; }
    dref=$(maxrel <(after "$fault_dir/log.jsonl") "$fault_dir.ref/log.jsonl")
    both=$(losses "$work/lost.jsonl" | awk -v a="$at" -v b=$((at + 8)) '$1 > a && $1 <= b' | wc -l)
    d=none
    ok=0
    if [ "$both" -ge 1 ]; then
        d=$(maxrel <(after "$fault_dir/log.jsonl") "$work/lost.jsonl")
        within "$d" 1e-5 || ok=1
    fi
    last=$(losses "$fault_dir/log.jsonl" | tail -1 | cut -d' ' -f1)
    [ $rc -eq 0 ] && [ "${last:-0}" -eq $((at + 8)) ] && within "$dref" 1e-5 && [ $ok -eq 0 ]
    check "$what: the last checkpoint ($saved) resumes on the node left (1 x 2, dp 2) to step ${last:-?} with one process's losses (largest relative difference $dref) and with the $both the lost run logged after it ($d)" $? \
        "exit $rc" "$(grep -v '^\[' "$fault_dir.resume.out" | tail -5)"
}

netns_down; netns_up 2
fault link link
# the watchdog names both ranks of n2 and the node
named=$(grep -c "rank 2 (world 2 on node n2) not responding; rank 3 (world 3 on node n2) not responding; not responding from node n2" "$fault_dir.out")
[ "$fault_rc" -ne 0 ] && [ "$named" -ge 1 ] && awk -v g="$gone" -v e="$ended" 'BEGIN { exit !(g <= 12 && e <= 20) }'
check "n2's link cut at step 12: the watchdog names ranks 2 and 3 on node n2; the survivors end after ${gone} s, mpirun after ${ended} s (exit $fault_rc)" $? \
    "$(grep 'tessera \[' "$fault_dir.out" | head -4 | cut -c1-300)" "$(grep -v '^\[' "$fault_dir.out" | tail -4)"
resume_left "link cut"

netns_down; netns_up 2
fault kill kill
named=$(grep -cE "(process rank [23] .* on node n2 exited on signal 9|rank [23] \(world [23] on node n2\) not responding)" "$fault_dir.out")
[ "$fault_rc" -ne 0 ] && [ "$named" -ge 1 ] && awk -v g="$gone" -v e="$ended" 'BEGIN { exit !(g <= 12 && e <= 20) }'
check "n2's ranks killed at step 12: the lost rank and node are named; the survivors end after ${gone} s, mpirun after ${ended} s (exit $fault_rc)" $? \
    "$(grep -E 'tessera \[|on node n2' "$fault_dir.out" | head -4 | cut -c1-300)"
resume_left "ranks killed"

netns_down
exit 0
