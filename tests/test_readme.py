#!/usr/bin/env python3
"""README.md works as typed: every fenced block of it is run or checked.

usage: test_readme.py SOURCE_ROOT BUILD_DIR [SANITIZE]

Each block is matched to one entry of BLOCKS (by a substring of its text);
a block no entry claims fails the test, so a new block needs a way to be
checked. Shell blocks run in order with bash -e in a scratch directory that
looks like the source tree (build/ and ../shared/ are links), so a later
block sees the runs an earlier one made. Only what would take minutes is
shortened (steps, widths, token counts), and each substitution must match
or the test fails: the README cannot drift away from what is run. mpirun
lines run without OMPI_ALLOW_RUN_AS_ROOT, so their flags must be right as
typed. SANITIZE is meson's b_sanitize, for compiling the C example.
"""
import glob
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile

SRC, BUILD = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
SANITIZE = sys.argv[3] if len(sys.argv) > 3 and sys.argv[3] != "none" else ""
SHARED = os.path.join(os.path.dirname(SRC), "shared")
HAVE_DATA = os.path.isfile(os.path.join(SHARED, "data", "tinyshakespeare.txt")) and os.path.isfile(
    os.path.join(SHARED, "data", "debian-packages-train.jsonl"))
OCLGRIND_ICD = "/usr/lib/oclgrind/liboclgrind-rt-icd.so"

results = []


def report(ok, name, why=""):
    results.append((ok, name, why))


def blocks(text):
    for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M):
        yield m.group(1), m.group(2), text[:m.start()].count("\n") + 1


def shorten(body, subs):
    """Apply each (old, new) substitution; every one must match."""
    for old, new in subs:
        if old not in body:
            raise AssertionError(f"README no longer has {old!r}: update tests/test_readme.py")
        body = body.replace(old, new)
    return body


def env():
    e = dict(os.environ)
    for k in list(e):
        if k.startswith("OMPI_ALLOW_RUN_AS_ROOT"):
            del e[k]
    e["ASAN_OPTIONS"] = e.get("ASAN_OPTIONS", "") + ":detect_leaks=0"
    return e


def sh(script, work, timeout=600):
    p = subprocess.run(["bash", "-e", "-c", script], cwd=work, env=env(), capture_output=True, text=True, errors="replace",
                       timeout=timeout)
    if p.returncode != 0:
        raise AssertionError(f"exit {p.returncode}\n{script}\n--- stdout\n{p.stdout[-3000:]}\n--- stderr\n"
                             f"{p.stderr[-3000:]}")
    return p.stdout + p.stderr


# ---- what each block is and how it is checked ----

def check_first_run(body, work, ctx):
    # `sh setup.sh` is what CI runs on a bare machine (.ci/run); here the
    # tree is built, so the run itself is what is checked
    ci = open(os.path.join(SRC, ".ci", "run")).read()
    assert re.search(r"\bsh setup\.sh\b", ci), ".ci/run does not run sh setup.sh"
    assert body.strip() == "sh setup.sh && build/tessera train", body
    ctx["first_run"] = sh("build/tessera train --steps 150", work)


def check_first_run_output(body, work, ctx):
    # every kind of line the README shows, the run prints (numbers and
    # machine names aside)
    out = [" ".join(l.split()) for l in ctx["first_run"].splitlines()]
    for line in body.splitlines():
        words = line.split()
        if not words or words[0] == "..." or words[0].startswith("[") or "->" in line:
            continue
        prefix = []
        for w in words[:2]:
            if re.search(r"\d", w):
                break
            prefix.append(w)
        want = " ".join(prefix)
        assert any(o.startswith(want) for o in out), f"no output line starts with {want!r}:\n" + "\n".join(out)
    assert any(re.match(r"^\S+ -> \S* (ok|wrong \(want \S+\))$", o) for o in out), "no 'problem -> answer ok' line"
    assert any(re.match(r"^step \d+: validation loss [0-9.]+$", o) for o in out), "no validation line"


def check_shakespeare(body, work, ctx):
    body = shorten(body, [("bpe:1024", "bpe:300"), ("--width 256", "--width 64"), ("--steps 1000", "--steps 6"),
                          ("--eval-every 250", "--eval-every 3"), ("--tokens 200", "--tokens 20")])
    out = sh(body, work)
    assert re.search(r"loss [0-9.]+", out), out
    assert os.path.isdir(os.path.join(work, "runs", "shakespeare", "step_00000006")), os.listdir(
        os.path.join(work, "runs", "shakespeare"))


def check_test_command(body, work, ctx):
    ci = open(os.path.join(SRC, ".ci", "run")).read()
    assert body.strip() in ci or "meson test" in ci, ".ci/run does not run the README's test command"


def check_command_list(body, work, ctx):
    for line in body.splitlines():
        m = re.match(r"tessera (\S+)", line)
        assert m, line
        cmd = m.group(1)
        args = ["--version"] if cmd == "--version" else [cmd, "--help"]
        p = subprocess.run([os.path.join(work, "build", "tessera")] + args, capture_output=True, text=True)
        assert p.returncode == 0, f"tessera {' '.join(args)}: exit {p.returncode}\n{p.stderr}"


def check_weights_python(body, work, ctx):
    body = shorten(body, [("step_00001000", "step_00000006")])
    p = subprocess.run([sys.executable, "-c", body + "\nprint(wte.shape)"], cwd=work, capture_output=True,
                       text=True)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().endswith(", 64)"), p.stdout


def check_finetune(body, work, ctx):
    body = shorten(body, [("--steps 300", "--steps 4"), ("--warmup 30", "--warmup 1"),
                          ("--eval-every 100", "--eval-every 2"), ("--tokens 40", "--tokens 10")])
    out = sh(body, work)
    page = open(os.path.join(work, "runs", "compare.html")).read()
    assert "<svg" in page and "debian" in page, "plot page without charts"
    assert out.count('{"text": "') >= 3, out


def check_convert(body, work, ctx):
    sh(body, work)
    for f in ("hf/debian/config.json", "hf/debian/model.safetensors", "debian.bin"):
        assert os.path.isfile(os.path.join(work, f)), f
    sh("build/tessera eval --checkpoint from-hf --data ../shared/data/debian-packages-train.jsonl", work)


def check_classify(body, work, ctx):
    body = shorten(body, [("--width 128", "--width 32"), ("--steps 800", "--steps 6"), ("--epochs 8", "--epochs 1"),
                          ("--max-len 48", "--max-len 16"), ("--ensemble 5", "--ensemble 2"), ("--char-ngrams 32768", "--char-ngrams 1024")])
    out = sh(body, work)
    assert re.search(r"^accuracy\s+[0-9.]+\s+588", out, re.M), out
    assert re.search(r"^macro avg", out, re.M), out
    rows = [json.loads(l) for l in open(os.path.join(work, "predictions.jsonl"))]
    assert len(rows) == 588, len(rows)
    for r in rows[:20]:
        assert r["label"] in ("games", "graphics", "net", "science", "sound"), r
        assert abs(sum(r["probabilities"].values()) - 1) < 1e-4, r


def check_transformers(body, work, ctx):
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        return f"SKIP {e.name} is not installed"
    p = subprocess.run([sys.executable, "-c", body], cwd=work, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    loss = float(p.stdout.split()[-1])
    assert math.isfinite(loss) and 0 < loss < 20, p.stdout


def gelu(x):
    return 0.5 * x * (1 + math.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def check_c_api(body, work, ctx):
    dest = os.path.join(work, "destdir")
    p = subprocess.run(["meson", "install", "-C", BUILD, "--no-rebuild", "--quiet", "--destdir", dest],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    pcs = glob.glob(os.path.join(dest, "**", "pkgconfig", "tessera.pc"), recursive=True)
    assert pcs, "meson install wrote no tessera.pc"
    e = dict(os.environ, PKG_CONFIG_PATH=os.path.dirname(pcs[0]), PKG_CONFIG_SYSROOT_DIR=dest)
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "tessera"], env=e, capture_output=True, text=True)
    assert flags.returncode == 0, flags.stderr
    src = os.path.join(work, "example.c")
    open(src, "w").write(body)
    cc = os.environ.get("CC", "cc")
    san = [f"-fsanitize={SANITIZE}"] if SANITIZE else []
    p = subprocess.run([cc, "-std=c11", "-Wall", "-Wextra", "-Werror", src, "-o", os.path.join(work, "example")]
                       + san + flags.stdout.split(), capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    libdir = os.path.dirname(glob.glob(os.path.join(dest, "**", "libtessera.so"), recursive=True)[0])
    p = subprocess.run([os.path.join(work, "example")], env=dict(env(), LD_LIBRARY_PATH=libdir),
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    got = [[float(v) for v in row.split()] for row in p.stdout.splitlines()]
    # the example's inputs, in double precision
    n, c, oc = 4, 8, 3
    x = [(i % 7) / 7 - 0.5 for i in range(n * c)]
    w = [(i % 5) / 5 - 0.4 for i in range(oc * c)]
    want = [[gelu(sum(x[r * c + k] * w[o * c + k] for k in range(c))) for o in range(oc)] for r in range(n)]
    err = max(abs(g - v) for gr, wr in zip(got, want) for g, v in zip(gr, wr))
    assert len(got) == n and all(len(r) == oc for r in got), p.stdout
    assert err < 1e-5, f"largest error {err:.3g}\n{p.stdout}"


def check_oclgrind(body, work, ctx):
    if not os.path.isfile(OCLGRIND_ICD):
        return "SKIP oclgrind is not installed"
    if not os.path.isfile(os.path.join(BUILD, "tests", "test_conformance")):
        return "SKIP no conformance test in this build"
    # one op, not the whole suite, and the .icd file in the scratch directory
    body = shorten(body, [("/tmp/oclgrind.icd", os.path.join(work, "oclgrind.icd")),
                          ("test_conformance opencl", "test_conformance opencl gelu")])
    out = sh(body, work)
    assert re.search(r"^ok \d+ - gelu", out, re.M) and "not ok" not in out, out


def check_mpirun(body, work, ctx):
    if not shutil.which("mpirun"):
        return "SKIP mpirun is not installed"
    with open(os.path.join(work, "hosts"), "w") as f:
        f.write("localhost slots=4\n")
    root = ["--allow-run-as-root"] if os.geteuid() == 0 else []
    body = shorten(body, [("--accum 4 --out", "--accum 4 --steps 2 --out"),
                          ("mpirun -np 16 --hostfile", "mpirun -np 4 --oversubscribe " + " ".join(root) + " --hostfile"),
                          ("corpus.txt", "../shared/data/tinyshakespeare.txt --steps 2 --seq-len 32"),
                          ("--model d12", "--model tiny"), ("/shared/runs/d12", "runs/d12")])
    out = sh(body, work)
    assert out.count("trained 2 steps") == 2, out


def netns_script(body, work):
    """A script that makes namespace nodes (tests/netns/lib.sh) around body,
    or a SKIP reason when this machine cannot (not root, no ip netns)."""
    if not os.path.exists(os.path.join(work, "tests")):
        os.symlink(os.path.join(SRC, "tests"), os.path.join(work, "tests"))
    probe = subprocess.run(["bash", "-c", ". tests/netns/lib.sh; netns_usable || { echo \"$NETNS_WHY\"; exit 1; }"],
                           cwd=work, capture_output=True, text=True)
    if probe.returncode != 0 or not shutil.which("mpirun"):
        return None, "SKIP " + (probe.stdout.strip() or "mpirun is not installed")
    return body, None


def check_multinode_cluster(body, work, ctx):
    # the real-cluster line, on two namespace nodes: its hostfile, its
    # network (the namespaces' subnet), as root
    body, skip = netns_script(body, work)
    if skip:
        return skip
    body = shorten(body, [
        ("mpirun -np 8", 'netns_exec 1 env NETNS_HOSTS="$NETNS_WORK/hosts" mpirun --allow-run-as-root --oversubscribe '
                         '--mca plm_rsh_agent "$NETNS_DIR/agent.sh" --mca plm_rsh_no_tree_spawn 1 -np 8'),
        ("10.1.0.0/24", "10.213.0.0/24"), ("/shared/runs/two-nodes", "runs/cluster"),
        ("--watchdog 60", "--watchdog 60 --steps 3")])
    out = sh(". tests/netns/lib.sh; trap netns_down EXIT; netns_up 2\nprintf 'n1 slots=4\\nn2 slots=4\\n' > hosts\n"
             + body, work)
    assert "layout   8 processes on 2 nodes: tensor 2 x pipeline 1 x data 4" in out and "trained 3 steps" in out, out


def check_multinode_netns(body, work, ctx):
    body, skip = netns_script(body, work)
    if skip:
        return skip
    out = sh(body, work)
    assert "layout   4 processes on 2 nodes" in out and "trained 20 steps" in out, out
    assert re.search(r"^hier .* then [1-9]\d* inter-node allreduces .* across 2 nodes$", out, re.M), out


def check_mixed_devices(body, work, ctx):
    if not shutil.which("mpirun"):
        return "SKIP mpirun is not installed"
    devices = subprocess.run([os.path.join(BUILD, "tessera"), "devices"], capture_output=True, text=True).stdout
    if not re.search(r"^opencl:0", devices, re.M):
        return "SKIP no OpenCL device"
    body = shorten(body, [("--out runs/mixed", "--steps 2 --out runs/mixed")])
    out = sh(body, work)
    assert out.count("trained 2 steps") == 2, out
    assert "balance  auto: rows" in out and "stages   layers" in out, out


def check_layout(body, work, ctx):
    for line in body.splitlines():
        m = re.match(r"(\S+/)\s", line)
        if m:
            assert os.path.isdir(os.path.join(SRC, m.group(1))), f"README names {m.group(1)}, which is not there"


# (a substring of the block, what it needs, how it is checked), in README order
BLOCKS = [
    ("sh setup.sh && build/tessera train", "", check_first_run),
    ("What the model learned", "", check_first_run_output),
    ("--data ../shared/data/tinyshakespeare.txt --tokenizer bpe", "data", check_shakespeare),
    ("meson test -C build", "", check_test_command),
    ("tessera train [options]", "", check_command_list),
    ("import json, struct, numpy", "data", check_weights_python),
    ("train --init runs/shakespeare", "data", check_finetune),
    ("convert --to hf runs/debian", "data", check_convert),
    ("from transformers import GPT2LMHeadModel", "data", check_transformers),
    ("classify train --train", "data", check_classify),
    ("#include <tessera/tessera.h>", "", check_c_api),
    ("liboclgrind-rt-icd.so", "", check_oclgrind),
    ("mpirun -np 4", "data", check_mpirun),
    ("--balance auto --rebalance-every", "", check_mixed_devices),
    ("mpirun -np 8 --hostfile hosts", "", check_multinode_cluster),
    ("netns_mpirun 2x2", "", check_multinode_netns),
    ("core/cli/ ", "", check_layout),
]


def main():
    text = open(os.path.join(SRC, "README.md")).read()
    tmp = tempfile.mkdtemp(prefix="tessera-readme-")
    work = os.path.join(tmp, "tessera")
    os.makedirs(work)
    os.symlink(BUILD, os.path.join(work, "build"))
    if os.path.isdir(SHARED):
        os.symlink(SHARED, os.path.join(tmp, "shared"))
    os.environ["TESSERA_DATA_CACHE"] = os.path.join(tmp, "cache")
    ctx = {}
    try:
        for lang, body, line in blocks(text):
            entry = [b for b in BLOCKS if b[0] in body]
            name = f"README line {line} ({lang or 'text'}): {body.splitlines()[0][:60]}"
            if len(entry) != 1:
                report(False, name, f"{len(entry)} entries of tests/test_readme.py claim this block: give it one")
                continue
            _, needs, fn = entry[0]
            if needs == "data" and not HAVE_DATA:
                report(True, name, f"SKIP the shared data files are not in {SHARED}/data")
                continue
            try:
                why = fn(body, work, ctx)
                report(True, name, why or "")
            except (AssertionError, subprocess.TimeoutExpired, OSError, KeyError) as e:
                report(False, name, str(e))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"1..{len(results)}")
    for i, (ok, name, why) in enumerate(results, 1):
        skip = why.startswith("SKIP")
        print(f"{'ok' if ok else 'not ok'} {i} - {name}{' # ' + why if skip else ''}")
        if not ok:
            for l in why.splitlines():
                print("# " + l)
    return 0


if __name__ == "__main__":
    sys.exit(main())
