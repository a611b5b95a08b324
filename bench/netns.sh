#!/usr/bin/env bash
# Collectives across two "nodes" (network namespaces on this machine,
# tests/netns/lib.sh): `tessera bench collectives` on 2 nodes x 2 ranks,
# beside the bandwidth of the veth link itself, measured in the same run by
# a plain TCP stream from n1 to n2, so that each strategy's inter-node
# efficiency is a ratio (bus bandwidth / link bandwidth). Needs root.
# usage: bench/netns.sh [BUILD_DIR] [OUT_PREFIX]
#   writes OUT_PREFIX.json and OUT_PREFIX.md
#   (default bench/results/netns-collectives-DATE)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=$(realpath "${1:-$root/build}")
out=${2:-$root/bench/results/netns-collectives-$(date -u +%Y-%m-%d)}
. "$root/tests/netns/lib.sh"
netns_usable || { echo "bench/netns.sh: $NETNS_WHY" >&2; exit 1; }
trap netns_down EXIT
netns_up 2
tmp=$NETNS_WORK
py=$(command -v /usr/bin/python3 python3 | head -1)

# the link: a TCP stream n1 -> n2 for 3 s, 3 times; the receiver counts
link_gbs() {
    netns_exec 2 "$py" - "$(netns_ip 2)" >"$tmp/recv.txt" <<'EOF' &
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 5201)); s.listen(1)
c, _ = s.accept(); buf = bytearray(4 << 20); n = 0; t0 = None
while True:
    k = c.recv_into(buf)
    if t0 is None: t0 = time.perf_counter()
    if not k: break
    n += k
print(n / (time.perf_counter() - t0) / 1e9)
EOF
    local rx=$!
    sleep 0.5
    netns_exec 1 "$py" - "$(netns_ip 2)" <<'EOF'
import socket, sys, time
c = socket.create_connection((sys.argv[1], 5201)); buf = bytes(4 << 20); t0 = time.perf_counter()
while time.perf_counter() - t0 < 3.0: c.sendall(buf)
c.close()
EOF
    wait $rx
    cat "$tmp/recv.txt"
}
links=()
for _ in 1 2 3; do links+=("$(link_gbs)"); done
echo "veth link, TCP stream n1 -> n2: ${links[*]} GB/s"

# the collectives: nothing else running (the link runs are over)
cmd=(netns_mpirun 2x2 -x TESSERA_THREADS=1 -x POCL_MAX_PTHREAD_COUNT=1 "$build/tessera" bench collectives
     --min-time 0.3 --json "$tmp/coll.json")
env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE bash -c '. "$1/tests/netns/lib.sh"; NETNS_WORK=$2 NETNS_NODES=2; shift 2; "$@"' \
    _ "$root" "$NETNS_WORK" "${cmd[@]}" | tee "$tmp/coll.txt"

"$py" - "$tmp/coll.json" "$out" "${links[@]}" <<'EOF'
import json, statistics, subprocess, sys, time
src, out, links = sys.argv[1], sys.argv[2], [float(x) for x in sys.argv[3:]]
bench = json.load(open(src))
link = statistics.median(links)
cpu = open("/proc/cpuinfo").read()
model = next((l.split(":", 1)[1].strip() for l in cpu.splitlines() if l.startswith("model name")), "?")
avx512 = " avx512f " in cpu.replace("\n", " ")
rows = {}
for r in bench["results"]:
    if r["name"].startswith("allreduce "):
        # the message size ("4096 bytes, 4 processes"; "bytes" is the bus traffic)
        rows.setdefault(int(r["shape"].split()[0]), {})[r["name"].split()[1]] = r["gbs"]
strategies = ["mpi", "ring", "hier", "ps"]
result = {
    "format": "tessera-netns-collectives-1",
    "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "layout": "2 nodes (network namespaces joined by a bridge over veth pairs) x 2 ranks, Open MPI TCP between nodes",
    "command": "bench/netns.sh: netns_mpirun 2x2 -x TESSERA_THREADS=1 tessera bench collectives --min-time 0.3 "
               "(OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset)",
    "cpu": model, "avx512f": avx512, "host_cpus": bench.get("host_cpus"),
    "load_average_after": open("/proc/loadavg").read().split()[:3],
    "link_tcp_gbs": links, "link_tcp_gbs_median": link,
    "allreduce_bus_gbs": [{"bytes": b, **{s: rows[b].get(s) for s in strategies},
                           "efficiency": {s: (rows[b].get(s) or 0) / link for s in strategies}}
                          for b in sorted(rows)],
    "versions": bench.get("versions"),
}
json.dump(result, open(out + ".json", "w"), indent=1)
L = [f"# Collectives across two namespace nodes, {result['date'][:10]}", "",
     f"`bash bench/netns.sh build` as root: two Linux network namespaces on one machine ({model}, "
     f"{bench.get('host_cpus')} CPUs, {'AVX-512 (avx512f)' if avx512 else 'no AVX-512'}), each a node with 2 ranks "
     "(`tessera bench collectives` under `mpirun` through tests/netns/lib.sh), Open MPI's TCP transport over "
     "a veth pair and a bridge between the nodes, shared memory inside each. OPENBLAS_CORETYPE and "
     "OPENBLAS_L2_SIZE were unset in the bench command; 1 thread per rank; all four ranks share the "
     "machine's cores, so every figure is bounded by CPU time as much as by the link (load average "
     f"{' '.join(result['load_average_after'])} at the end: the machine is shared).", "",
     f"The link itself, a plain TCP stream n1 -> n2 (Python sockets, 3 s, 3 runs, in the same run): "
     f"{', '.join(f'{x:.2f}' for x in links)} GB/s; median **{link:.2f} GB/s**.", "",
     "Allreduce bus bandwidth (GB/s, nccl-tests' algbw x 2(n-1)/n, n = 4) and, in brackets, its ratio to the link:", "",
     "| bytes | " + " | ".join(strategies) + " |", "| ---: |" + " ---: |" * len(strategies)]
for row in result["allreduce_bus_gbs"]:
    L.append(f"| {int(row['bytes'])} | " + " | ".join(
        f"{row[s]:.2f} ({100 * row['efficiency'][s]:.0f}%)" if row[s] is not None else "-" for s in strategies) + " |")
best = max(result["allreduce_bus_gbs"], key=lambda r: r["bytes"])
L += ["", f"At {int(best['bytes']) >> 20} MiB: " + ", ".join(f"{s} {100 * best['efficiency'][s]:.0f}%" for s in strategies)
      + " of the link.", ""]
open(out + ".md", "w").write("\n".join(L))
print("\n".join(L))
EOF
