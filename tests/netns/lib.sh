# Several "nodes" on one machine (sourced): Linux network namespaces joined
# through a bridge that lives in a namespace of its own, so the nodes'
# addresses (10.213.0.1..N/24) and every packet between them exist only
# inside namespaces this file made; the host's interfaces and routes are
# never touched. Needs root and iproute2.
#
#   . tests/netns/lib.sh; trap netns_down EXIT
#   netns_up 2                       # nodes n1, n2
#   netns_mpirun 2x2 build/tessera train ...   # 2 nodes x 2 ranks
#   netns_down
#
# Open MPI starts its daemons through tests/netns/agent.sh (its rsh agent),
# which runs each command inside the namespace of the node it names; mpirun
# itself runs inside the first node so that its daemons can call it back.
# Names are private to this shell (prefix ts<pid>-), so two harnesses on one
# machine do not meet.
NETNS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")" && pwd)
NETNS_PREFIX=${NETNS_PREFIX:-ts$$-}
NETNS_SUBNET=${NETNS_SUBNET:-10.213.0}
NETNS_NODES=0
NETNS_WORK=""
export NETNS_PREFIX NETNS_SUBNET

# netns_usable: 0 when this machine can make namespaces (root, ip netns),
# else 1 with the reason in NETNS_WHY.
netns_usable() {
    NETNS_WHY=""
    if [ "$(id -u)" -ne 0 ]; then NETNS_WHY="not root (network namespaces need root)"; return 1; fi
    if ! command -v ip >/dev/null 2>&1; then NETNS_WHY="no ip command (apt-get install iproute2)"; return 1; fi
    if ! ip netns list >/dev/null 2>&1; then NETNS_WHY="ip netns does not work here"; return 1; fi
    local probe=${NETNS_PREFIX}probe
    if ! ip netns add "$probe" 2>/dev/null; then NETNS_WHY="cannot create a network namespace"; return 1; fi
    ip netns del "$probe" 2>/dev/null
    return 0
}

netns_ip() { echo "$NETNS_SUBNET.$1"; }   # node number -> address

# netns_up N: nodes n1..nN, each with eth0 at 10.213.0.K on a private bridge
netns_up() {
    local n=$1 k
    netns_down
    NETNS_WORK=$(mktemp -d /tmp/tessera-netns.XXXXXX)
    export NETNS_WORK
    local hub=${NETNS_PREFIX}hub
    ip netns add "$hub" || return 1
    ip -n "$hub" link set lo up
    ip -n "$hub" link add br0 type bridge forward_delay 0 stp_state 0 || return 1
    ip -n "$hub" link set br0 up
    for k in $(seq 1 "$n"); do
        local ns=${NETNS_PREFIX}n$k
        ip netns add "$ns" || return 1
        ip -n "$ns" link set lo up
        # both ends are made inside the node's namespace, then one moves to the hub
        ip -n "$ns" link add eth0 type veth peer name p$k || return 1
        ip -n "$ns" link set p$k netns "$hub" || return 1
        ip -n "$hub" link set p$k master br0
        ip -n "$hub" link set p$k up
        ip -n "$ns" addr add "$(netns_ip "$k")/24" dev eth0
        ip -n "$ns" link set eth0 up
        echo "$(netns_ip "$k") n$k" >> "$NETNS_WORK/hosts"
    done
    NETNS_NODES=$n
    netns_guard || return 1
    return 0
}

# netns_down: remove every namespace (and with them their links) this shell
# made; safe to call twice
netns_down() {
    local ns
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^${NETNS_PREFIX}" ); do
        # processes still inside would keep the namespace's links alive
        local pids
        pids=$(ip netns pids "$ns" 2>/dev/null)
        [ -n "$pids" ] && kill -9 $pids 2>/dev/null
        ip netns del "$ns" 2>/dev/null
    done
    [ -n "$NETNS_WORK" ] && rm -rf "$NETNS_WORK"
    NETNS_WORK=""
    NETNS_NODES=0
    return 0
}

# netns_guard: the nodes can reach nothing but each other (their only links
# are loopback and eth0, their only route the private subnet) and the host
# has no address on that subnet: every packet between them stays inside
# the namespaces. 0 when so, else 1 with the reason on stderr.
netns_guard() {
    local k ns links routes
    if ip -4 -br addr 2>/dev/null | grep -q " $NETNS_SUBNET\."; then
        echo "netns_guard: the host itself has an address on $NETNS_SUBNET.0/24" >&2; return 1
    fi
    for k in $(seq 1 "$NETNS_NODES"); do
        ns=${NETNS_PREFIX}n$k
        links=$(ip -n "$ns" -br link | awk '{sub(/@.*/, "", $1); print $1}' | sort | tr '\n' ' ')
        routes=$(ip -n "$ns" route | awk '{print $1}' | tr '\n' ' ')
        if [ "$links" != "eth0 lo " ] || [ "$routes" != "$NETNS_SUBNET.0/24 " ]; then
            echo "netns_guard: node n$k has links [$links] and routes [$routes]" >&2; return 1
        fi
    done
    return 0
}

# netns_exec K COMMAND...: run a command on node K
netns_exec() { local k=$1; shift; ip netns exec "${NETNS_PREFIX}n$k" "$@"; }

# netns_hostfile LAYOUT: "NxR" (N nodes, R slots each) or "R1,R2,..." (slots
# per node); prints the hostfile's path
netns_hostfile() {
    local layout=$1 f=$NETNS_WORK/hostfile.$1 k=0 slots
    : > "$f"
    if [[ $layout == *x* ]]; then
        local nodes=${layout%x*} per=${layout#*x}
        for k in $(seq 1 "$nodes"); do echo "n$k slots=$per" >> "$f"; done
    else
        for slots in ${layout//,/ }; do k=$((k + 1)); echo "n$k slots=$slots" >> "$f"; done
    fi
    echo "$f"
}

# The mpirun options that keep Open MPI on the namespaces' network: daemons
# started through the agent, TCP between nodes (shared memory inside one),
# and only the private subnet for both the MPI and the runtime's traffic.
# TCP keepalives let mpirun notice a node that dropped off the network in
# about 4 s (default: minutes) and end the job; without them a job that
# lost a node's link hangs in mpirun (its abort waits on the lost daemon).
netns_mpi_options() {
    echo --allow-run-as-root --oversubscribe --mca plm_rsh_agent "$NETNS_DIR/agent.sh" \
        --mca plm_rsh_no_tree_spawn 1 --mca btl tcp,vader,self \
        --mca btl_tcp_if_include "$NETNS_SUBNET.0/24" --mca oob_tcp_if_include "$NETNS_SUBNET.0/24" \
        --mca oob_tcp_keepalive_time 1 --mca oob_tcp_keepalive_intvl 1 --mca oob_tcp_keepalive_probes 3
}

# netns_mpirun LAYOUT [mpirun options and command...]: N processes laid out
# as LAYOUT ("2x2": 2 nodes x 2 ranks, by node in order), started from n1
netns_mpirun() {
    local layout=$1; shift
    local hf np=0 slots
    hf=$(netns_hostfile "$layout") || return 1
    for slots in $(sed 's/.*slots=//' "$hf"); do np=$((np + slots)); done
    # shellcheck disable=SC2046
    netns_exec 1 env NETNS_HOSTS="$NETNS_WORK/hosts" mpirun $(netns_mpi_options) \
        --hostfile "$hf" --map-by slot -np "$np" "$@"
}
