#!/usr/bin/env python3
"""The layering of the tree, checked from its #include lines (TAP).

Every quoted #include of every .c and .h file under core/, backends/,
parallel/, bench/ is resolved the way the build resolves it (the file's own
folder, then the include directories), and each include between two layers
must be one of these:

    cli      -> bench, train, parallel, model, runtime
    bench    -> train, parallel, model, runtime
    train    -> parallel, model, runtime
    parallel -> model, runtime
    model    -> runtime
    backends -> runtime (the interface they implement, core/backend.h), kernels
    runtime  -> nothing above it and no backend: it reaches the backends
                through the entry points the one registry file declares

so the layers form no cycle.
usage: check_layers.py SOURCE_ROOT
"""
import os
import re
import sys

root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..")
root = os.path.abspath(root)

# layer of a path (relative to root), most specific first
LAYERS = [
    ("core/cli/", "cli"),
    ("core/train/", "train"),
    ("core/model/", "model"),
    ("core/", "runtime"),
    ("parallel/", "parallel"),
    ("bench/", "bench"),
    ("backends/", "backends"),
    ("kernels/", "kernels"),
]
ALLOWED = {
    "kernels": set(),
    "runtime": set(),
    "backends": {"runtime", "kernels"},
    "model": {"runtime"},
    "parallel": {"model", "runtime"},
    "train": {"parallel", "model", "runtime"},
    "bench": {"train", "parallel", "model", "runtime"},
    "cli": {"bench", "train", "parallel", "model", "runtime"},
}
INCLUDE_DIRS = ["core", "core/model", "core/train", "parallel", "bench", "backends", "core/cli"]


def layer_of(rel):
    for prefix, name in LAYERS:
        if rel.startswith(prefix):
            return name
    return None


def resolve(src_rel, inc):
    here = os.path.dirname(os.path.join(root, src_rel))
    for base in [here] + [os.path.join(root, d) for d in INCLUDE_DIRS]:
        p = os.path.normpath(os.path.join(base, inc))
        if os.path.isfile(p):
            return os.path.relpath(p, root)
    return None


files = []
for top in ("core", "backends", "parallel", "bench"):
    for dirpath, _, names in os.walk(os.path.join(root, top)):
        for n in names:
            if n.endswith((".c", ".h")):
                files.append(os.path.relpath(os.path.join(dirpath, n), root))

bad, unresolved, edges = [], [], set()
for f in sorted(files):
    src = layer_of(f)
    for line in open(os.path.join(root, f), encoding="utf-8", errors="replace"):
        m = re.match(r'\s*#\s*include\s+"([^"]+)"', line)
        if not m:
            continue
        target = resolve(f, m.group(1))
        if target is None:
            if not m.group(1).startswith("ts_kernels"):  # generated at build time
                unresolved.append(f"{f}: {m.group(1)}")
            continue
        dst = layer_of(target)
        if dst is None or dst == src:
            continue
        edges.add((src, dst))
        if dst not in ALLOWED[src]:
            bad.append(f"{f} ({src}) includes {target} ({dst})")

# a cycle between folders (layers) is a failure whatever the rules say
def has_cycle(edges):
    graph = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
    state = {}

    def visit(n, path):
        state[n] = 1
        for m in graph.get(n, ()):
            if state.get(m) == 1:
                return path + [n, m]
            if not state.get(m):
                c = visit(m, path + [n])
                if c:
                    return c
        state[n] = 2
        return None

    for n in list(graph):
        if not state.get(n):
            c = visit(n, [])
            if c:
                return c
    return None


cycle = has_cycle(edges)
print("TAP version 13")
print("1..3")
print(("ok" if not bad else "not ok") + f" 1 - every include points down the layers ({len(files)} files)")
for b in bad[:40]:
    print(f"# {b}")
print(("ok" if not cycle else "not ok") + " 2 - no cycle between layers")
if cycle:
    print("# cycle: " + " -> ".join(cycle))
print(("ok" if not unresolved else "not ok") + " 3 - every quoted include resolves to a file of the tree")
for u in unresolved[:20]:
    print(f"# {u}")
print("# layer edges: " + ", ".join(f"{a}->{b}" for a, b in sorted(edges)))
sys.exit(1 if bad or cycle or unresolved else 0)
