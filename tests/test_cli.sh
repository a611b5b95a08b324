#!/usr/bin/env bash
# The `tessera` command as a user runs it. TAP output; $1 is the binary,
# $2 a deliberately broken OpenCL ICD library (tests/fake_icd.c).
set -u
tessera=$1
broken_icd=${2:-}
. "$(dirname "$0")/tap.sh"
pyjson() { # a python that can parse JSON (any python3 will do)
    for p in /usr/bin/python3 python3; do command -v "$p" >/dev/null && { echo "$p"; return; }; done
}

echo "TAP version 13"
echo "1..19"

out=$("$tessera" devices 2>&1); rc=$?
echo "$out" | grep -q '^cpu ' ; check "devices lists the CPU backend" $(( rc != 0 || $? != 0 )) "$out"

features=$("$tessera" --version)
if ! echo "$features" | grep -qw opencl; then
    n=$((n + 1)); echo "ok $n - devices lists OpenCL devices # SKIP built without OpenCL"
elif ls "${OCL_ICD_VENDORS:-/etc/OpenCL/vendors}" 2>/dev/null | grep -q icd; then
    echo "$out" | grep -q '^opencl:0 '
    check "devices lists OpenCL devices from the installed ICDs" $? "$out"
else
    n=$((n + 1)); echo "ok $n - devices lists OpenCL devices # SKIP no ICD installed"
fi

if echo "$out" | grep -q 'built without hwloc'; then
    n=$((n + 1)); echo "ok $n - devices reports the cores near each device # SKIP built without hwloc"
else
    echo "$out" | grep -q 'near      cores'
    check "devices reports the cores near each device (hwloc)" $? "$out"
fi

json=$("$tessera" devices --json 2>&1)
py=$(pyjson)
echo "$json" | "$py" -c 'import json,sys; d=json.load(sys.stdin); assert d[0]["id"]=="cpu" and "locality" in d[0], d' 2>&1
check "devices --json is valid JSON with ids and locality" $? "$json"

echo "$features" | grep -q '^tessera [0-9.]* (.*cpu)$'
check "--version names the version and the compiled-in features" $? "$features"

err=$("$tessera" frobnicate 2>&1); rc=$?
[ $rc -eq 2 ] && echo "$err" | grep -q "unknown command 'frobnicate'"
check "an unknown command exits 2 with a message" $? "exit $rc: $err"

out=$(TESSERA_THREADS=1 "$tessera" devices 2>&1)
echo "$out" | grep -q 'threads 1 (OpenMP'
check "TESSERA_THREADS sets the CPU thread count" $? "$out"

out1=$(TESSERA_ATTENTION=composite "$tessera" devices 2>&1); out2=$(TESSERA_ATTENTION=fast "$tessera" devices 2>&1)
grep -q '^attention: TESSERA_ATTENTION=composite sets every device' <<<"$out1" \
    && grep -q '^attention: TESSERA_ATTENTION=fast is not fused' <<<"$out2" \
    && ! env -u TESSERA_ATTENTION "$tessera" devices 2>&1 | grep -q '^attention:' \
    && TESSERA_ATTENTION=composite "$tessera" devices --json | "$py" -c 'import json,sys; d=json.load(sys.stdin)
assert all(x["attention_env"] == {"value": "composite", "valid": True} for x in d), d' \
    && TESSERA_ATTENTION=fast "$tessera" devices --json | "$py" -c 'import json,sys; d=json.load(sys.stdin)
assert d[0]["attention_env"] == {"value": "fast", "valid": False}, d' \
    && env -u TESSERA_ATTENTION "$tessera" devices --json | "$py" -c 'import json,sys; d=json.load(sys.stdin)
assert all(x["attention_env"] is None for x in d), d'
check "devices (and devices --json) says when TESSERA_ATTENTION overrides the default routes it lists" $? "$(head -3 <<<"$out1")" "$(head -3 <<<"$out2")"

# mixed precision: the route each device takes is named; a dtype a device
# cannot do, or no dtype at all, is an error that says so
echo "$("$tessera" devices 2>&1)" | grep -E '^  matmul +bf16: .*; fp16: ' | head -1 | grep -q 'matmul'
check "devices names each device's bf16 and fp16 matrix-product route" $? "$("$tessera" devices 2>&1 | grep matmul)"
err1=$("$tessera" train --dtype fp64 --steps 1 2>&1); rc1=$?
err2=$("$tessera" bench train --dtype bf17 2>&1); rc2=$?
ok=0
[ $rc1 -eq 2 ] && echo "$err1" | grep -q "fp32, bf16 or fp16" && [ $rc2 -eq 2 ] && echo "$err2" | grep -q "bf17" || ok=1
if [ $ok -eq 0 ] && "$tessera" devices 2>&1 | grep -q "bf16: not available"; then
    dev=$("$tessera" devices 2>&1 | grep -B20 "bf16: not available" | grep -E '^opencl:[0-9]+ ' | tail -1 | cut -d' ' -f1)
    err3=$("$tessera" train --device "$dev" --dtype bf16 --steps 1 --quiet 2>&1); rc3=$?
    [ $rc3 -ne 0 ] && echo "$err3" | grep -q "has no bf16 matrix products" || ok=1
fi
check "an unknown --dtype, and bf16 on a device without bf16 products, are clear errors" $ok \
    "train: exit $rc1: $err1" "bench train: exit $rc2: $err2" "${err3:-}"

out=$(TESSERA_BLAS_CORE=Haswell "$tessera" devices 2>&1)
if echo "$out" | grep -q 'GEMM: OpenBLAS'; then
    echo "$out" | grep -q 'kernels Haswell'
    check "TESSERA_BLAS_CORE re-selects OpenBLAS kernels in-process" $? "$out"
else
    n=$((n + 1)); echo "ok $n - TESSERA_BLAS_CORE re-selects OpenBLAS kernels # SKIP not OpenBLAS"
fi

# A core the CPU cannot run must be refused, not crash the process.
out=$(TESSERA_BLAS_CORE=SkylakeX "$tessera" devices 2>&1); rc=$?
if ! echo "$out" | grep -q 'GEMM: OpenBLAS'; then
    n=$((n + 1)); echo "ok $n - SkylakeX kernels on an AVX-512 CPU only # SKIP not OpenBLAS"
elif echo "$out" | grep -q 'details .*; AVX-512'; then
    echo "$out" | grep -q 'kernels SkylakeX'
    check "SkylakeX kernels are used on an AVX-512 CPU" $? "$out"
else
    [ $rc -eq 0 ] && ! echo "$out" | grep -q 'kernels SkylakeX'
    check "AVX-512 kernels are refused on a CPU without AVX-512" $? "exit $rc" "$out"
fi

# A process whose devices are all OpenCL runs again with passive OpenMP
# waiting (libgomp reads the policy when it loads); a CPU-backend run, or a
# policy the user set, is left as it is. OMP_DISPLAY_ENV=verbose makes
# libgomp print its spin count each time it loads: 0 is passive.
spins() { sed -n "s/^ *GOMP_SPINCOUNT = '\([0-9]*\)'/\1/p" <<<"$1" | paste -sd' ' -; }
if ! echo "$features" | grep -qw openmp; then
    n=$((n + 1)); echo "ok $n - an all-OpenCL run re-runs itself with passive OpenMP waiting # SKIP built without OpenMP"
    n=$((n + 1)); echo "ok $n - started through its loader by hand, it does not re-run the loader # SKIP built without OpenMP"
else
quiet=(env -u OMP_WAIT_POLICY -u TESSERA_DEVICE TESSERA_LOG=info OMP_DISPLAY_ENV=verbose)
out1=$("${quiet[@]}" "$tessera" train --device opencl:0 --help 2>&1); rc1=$?
out2=$("${quiet[@]}" "$tessera" train --device cpu --help 2>&1); rc2=$?
out3=$(env -u TESSERA_DEVICE OMP_WAIT_POLICY=active TESSERA_LOG=info "$tessera" classify train --device=opencl --help 2>&1); rc3=$?
# sample reads TESSERA_DEVICE only in place of "auto"
out4=$("${quiet[@]}" TESSERA_DEVICE=opencl:0 "$tessera" sample --device cpu --help 2>&1); rc4=$?
ok=0
[ $rc1 -eq 0 ] && [ $rc2 -eq 0 ] && [ $rc3 -eq 0 ] && [ $rc4 -eq 0 ] && [ "$(grep -c 'wait passively' <<<"$out1")" -eq 1 ] \
    && ! grep -q 'wait passively' <<<"$out2$out3$out4" && ! grep -q 'could not re-run' <<<"$out1" \
    && grep -q 'usage: tessera train' <<<"$out1" || ok=1
if [ -n "$(spins "$out1")" ]; then # libgomp: loaded twice, the second time passive
    [ "$(spins "$out1")" = "$(spins "$out2") 0" ] && [ "$(spins "$out2")" != 0 ] || ok=1
fi
check "an all-OpenCL run re-runs itself with passive OpenMP waiting; cpu or a set policy is left alone" $ok \
    "opencl: exit $rc1, spin counts $(spins "$out1"): $(grep -v '^  ' <<<"$out1" | head -3)" \
    "cpu: exit $rc2, spin counts $(spins "$out2")" "set policy: exit $rc3: $(grep 'wait' <<<"$out3")"
# `ld.so tessera ...`: /proc/self/exe is the loader, which would take the
# command's first argument for the program to load
loader=$(readelf -l "$tessera" 2>/dev/null | sed -n 's/.*interpreter: \(.*\)]$/\1/p')
if [ -z "$loader" ] || [ ! -x "$loader" ]; then
    n=$((n + 1)); echo "ok $n - started through its loader by hand, it does not re-run the loader # SKIP no loader named"
else
    out=$("${quiet[@]}" "$loader" "$tessera" train --device opencl:0 --help 2>&1); rc=$?
    [ $rc -eq 0 ] && grep -q 'usage: tessera train' <<<"$out" && grep -q 'cannot run itself again' <<<"$out" \
        && ! grep -q 'wait passively' <<<"$out"
    check "started through its loader by hand, it does not re-run the loader (and says so)" $? \
        "$loader: exit $rc: $(grep -v '^  ' <<<"$out" | head -4)"
fi
fi

# One broken ICD must not hide the others; no ICD at all means no OpenCL
# devices, not an error.
vendors=$(mktemp -d)
if echo "$features" | grep -qw opencl && [ -f /etc/OpenCL/vendors/pocl.icd ] && [ -n "$broken_icd" ]; then
    cp /etc/OpenCL/vendors/pocl.icd "$vendors/"
    echo "$broken_icd" > "$vendors/broken.icd"
    out=$(OCL_ICD_VENDORS=$vendors "$tessera" devices 2>&1); rc=$?
    [ $rc -eq 0 ] && echo "$out" | grep -q "platform 'Broken test platform' failed to list devices" \
        && echo "$out" | grep -q '^opencl:0 '
    check "a broken OpenCL platform is reported and the others still listed" $? "exit $rc" "$out"
else
    n=$((n + 1)); echo "ok $n - a broken OpenCL platform is reported # SKIP needs OpenCL and PoCL"
fi
rm -f "$vendors"/*
out=$(OCL_ICD_VENDORS=$vendors "$tessera" devices 2>&1); rc=$?
[ $rc -eq 0 ] && echo "$out" | grep -q '^cpu ' && ! echo "$out" | grep -q '^opencl'
check "no OpenCL platform at all leaves the CPU backend working" $? "exit $rc" "$out"
rmdir "$vendors"

# tessera plot: a run's curves on one page.
work=$(mktemp -d)
out=$(TESSERA_DEVICE=cpu "$tessera" train --steps 6 --eval-every 2 --sample-tokens 0 --quiet --out "$work/a" 2>&1) \
    && out=$("$tessera" plot "$work/p.html" "$work/a" 2>&1); rc=$?
vals=$(grep -c '"val_loss"' "$work/a/log.jsonl" 2>/dev/null)
[ $rc -eq 0 ] && [ "$(grep -o '<svg ' "$work/p.html" | wc -l)" -eq 4 ] \
    && [ "$(grep -o "<title>$work/a step [0-9]*: val_loss" "$work/p.html" | wc -l)" -eq "$vals" ] \
    && grep -q "$work/a (validation)" "$work/p.html"
check "plot draws loss, lr, throughput and norm, a marker per evaluation" $? "exit $rc: $out" "$vals evaluations"

# a second run as a log file with a torn last line (a killed run)
cp "$work/a/log.jsonl" "$work/b.jsonl"
printf '{"step": 7, "loss": 2.' >> "$work/b.jsonl"
out=$("$tessera" plot "$work/p.html" "$work/a" "$work/b.jsonl" 2>&1); rc=$?
[ $rc -eq 0 ] && grep -q "$work/b.jsonl (train)" "$work/p.html" \
    && grep -q "b.jsonl: 1 of [0-9]* lines were not JSON objects" "$work/p.html"
check "plot overlays runs and reports a torn log line instead of failing" $? "exit $rc: $out"

# swapped arguments must not write over a log; a file that is not a log is named
before=$(md5sum < "$work/a/log.jsonl")
err1=$("$tessera" plot "$work/a/log.jsonl" "$work/a" 2>&1); rc1=$?
err2=$("$tessera" plot "$work/q.html" /etc/hostname 2>&1); rc2=$?
[ $rc1 -eq 2 ] && [ "$before" = "$(md5sum < "$work/a/log.jsonl")" ] && echo "$err1" | grep -q 'must end in .html' \
    && [ $rc2 -eq 1 ] && echo "$err2" | grep -q '/etc/hostname has no training steps' && [ ! -e "$work/q.html" ]
check "plot refuses an output that is not .html and a file that is not a log" $? "exit $rc1: $err1" "exit $rc2: $err2"
rm -rf "$work"

exit $(( fails > 0 ))
