#!/bin/sh
# Open MPI's rsh agent for the namespace harness (tests/netns/lib.sh): called
# as `agent.sh [ssh options] HOST COMMAND...` it runs COMMAND inside the
# namespace of node HOST (n1, n2, ... or its 10.213.0.K address).
while [ $# -gt 0 ]; do
    case $1 in
        -[1246AaCfGgKkMNnqsTtVvXxYy]) shift ;;          # flags without a value
        -[BbcDEeFIiJLlmOopQRSWw]) shift 2 ;;            # options with a value
        -*) shift ;;
        *) break ;;
    esac
done
host=$1
shift
[ -n "$host" ] || { echo "agent.sh: no host" >&2; exit 255; }
case $host in
    n[0-9]*) k=${host#n} ;;
    *) k=$(awk -v h="$host" '$1 == h {sub(/^n/, "", $2); print $2; exit}' "${NETNS_HOSTS:-/dev/null}") ;;
esac
ns=${NETNS_PREFIX:-ts-}n$k
[ -n "$k" ] && ip netns list | grep -q "^$ns\b" || { echo "agent.sh: no namespace for host '$host'" >&2; exit 255; }
# its own UTS namespace too, so that the node's processes see hostname nK
# (MPI_Get_processor_name, the log's node names), as on separate machines
exec ip netns exec "$ns" unshare --uts sh -c "hostname n$k && exec sh -c \"\$0\"" "$*"
