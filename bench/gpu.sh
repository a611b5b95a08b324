#!/usr/bin/env bash
# One GPU run of tessera, for a machine with a GPU and its driver and nothing
# of tessera's set up: build, register the driver's OpenCL library with the
# ICD loader if the driver ships no vendors file, list the devices, run the
# conformance suite on the GPU, the kernel benchmarks with an HTML report,
# and a GPT-2 124M training step beside PyTorch (CUDA when PyTorch has it).
# Everything lands in one directory; the whole run fits in about 8 minutes.
#
# usage: bench/gpu.sh [--out DIR] [--debs DIR] [--build DIR] [--prebuilt]
#                     [--libs DIR] [--device ID] [--allow-cpu] [--budget SECONDS]
#   --out DIR     results (default bench/results/gpu-<host>-<date>)
#   --debs DIR    install these .deb files (unpacked into /) when apt-get
#                 cannot reach an archive: ocl-icd, headers, CLBlast, ...
#   --prebuilt    use --build DIR as it is, built on another machine of the
#                 same architecture: no packages, no compiler, no meson
#   --libs DIR    shared libraries for a prebuilt build, each used only
#                 where the system has none of that name (ocl-icd, CLBlast..)
#   --device ID   the device to measure (default: every GPU-type device)
#   --allow-cpu   with no GPU, run on CPU-type OpenCL devices (a dry run)
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out="" debs="" build="$root/build-gpu" device="" allow_cpu=0 budget=480 prebuilt=0 libs=""
while [ $# -gt 0 ]; do
    case $1 in
    --out) out=$2; shift 2 ;;
    --debs) debs=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    --prebuilt) prebuilt=1; shift ;;
    --libs) libs=$2; shift 2 ;;
    --device) device=$2; shift 2 ;;
    --allow-cpu) allow_cpu=1; shift ;;
    --budget) budget=$2; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
start=$(date +%s)
out=${out:-$root/bench/results/gpu-$(hostname -s 2>/dev/null || echo host)-$(date -u +%Y-%m-%d)}
mkdir -p "$out" || exit 1
log=$out/gpu.log
say() { echo "== $*" | tee -a "$log"; }
left() { echo $(( budget - ($(date +%s) - start) )); }
# run a step with what is left of the budget (at least 30 s), logging it
step() { # name, timeout share in seconds, command...
    local name=$1 t=$2; shift 2
    local l; l=$(left); [ "$t" -gt "$l" ] && t=$l; [ "$t" -lt 30 ] && t=30
    say "$name (up to ${t}s): $*"
    timeout -k 10 "$t" "$@" >>"$log" 2>&1
    local rc=$?
    [ $rc -eq 124 ] && say "$name: stopped at its time limit"
    [ $rc -ne 0 ] && [ $rc -ne 124 ] && say "$name: exit $rc"
    return $rc
}
SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && SUDO=sudo
# the linker cache (a user's PATH on Debian has no /sbin)
LDCONFIG=$(command -v ldconfig || echo /sbin/ldconfig)

# 1. packages: apt-get where an archive answers, else the given .deb files
need=(build-essential pkg-config meson ninja-build python3 ocl-icd-opencl-dev opencl-headers
      ocl-icd-libopencl1 clinfo libclblast-dev libopenblas-dev libhwloc-dev)
missing=()
[ $prebuilt -eq 0 ] && for p in "${need[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
    if [ -n "$debs" ]; then
        say "unpacking ${#missing[@]} missing packages from $debs"
        for f in "$debs"/*.deb; do $SUDO dpkg -x "$f" / >>"$log" 2>&1; done
        $SUDO "$LDCONFIG"
    else
        say "installing: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        $SUDO apt-get update -qq >>"$log" 2>&1
        $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >>"$log" 2>&1 ||
            say "apt-get failed (offline? use --debs DIR); going on with what is installed"
    fi
fi

# a prebuilt build's libraries, where the system lacks them: a newer system
# libstdc++ or libgomp must win, since the driver's libraries may need it
if [ -n "$libs" ]; then
    mkdir -p "$out/lib"
    for f in "$libs"/*.so*; do
        name=$(basename "$f")
        "$LDCONFIG" -p 2>/dev/null | grep -q "^[[:space:]]*$name " && continue
        ln -sf "$(cd "$(dirname "$f")" && pwd)/$name" "$out/lib/$name"
    done
    export LD_LIBRARY_PATH=$out/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    say "libraries from $libs: $(ls "$out/lib" | tr '\n' ' ')"
fi

# 2. the ICD: a vendors file for every driver library that has none
vendors=$out/vendors
mkdir -p "$vendors"
for d in /etc/OpenCL/vendors; do [ -d $d ] && cp $d/*.icd "$vendors/" 2>/dev/null; done
for lib in libnvidia-opencl.so.1 libamdocl64.so libamdocl-orca64.so libigdrcl.so libintelocl.so; do
    path=$("$LDCONFIG" -p 2>/dev/null | awk -v l="$lib" '$1 == l {print $NF; exit}')
    [ -z "$path" ] && for dir in /usr/lib/x86_64-linux-gnu /usr/lib64 /usr/lib /usr/local/nvidia/lib64 \
        /usr/local/nvidia/lib /opt/rocm/lib /opt/amdgpu/lib64 /usr/lib/x86_64-linux-gnu/intel-opencl; do
        [ -e "$dir/$lib" ] && { path=$dir/$lib; break; }
    done
    [ -z "$path" ] && continue
    grep -qs "$lib" "$vendors"/*.icd || { echo "$path" >"$vendors/${lib%%.so*}.icd"; say "registered $path"; }
done
export OCL_ICD_VENDORS=$vendors
ls "$vendors" >>"$log"
command -v nvidia-smi >/dev/null && nvidia-smi >"$out/nvidia-smi.txt" 2>&1

# 3. build
if [ $prebuilt -eq 1 ]; then
    [ -x "$build/tessera" ] || { say "--prebuilt: no $build/tessera"; exit 1; }
    lost=$(ldd "$build/tessera" "$build/tests/test_conformance" 2>&1 | grep 'not found' | sort -u)
    [ -n "$lost" ] && { say "--prebuilt: libraries not found (add them to --libs):"; echo "$lost" | tee -a "$log"; exit 1; }
else
    if [ ! -x "$build/tessera" ]; then
        step "configure" 120 meson setup "$build" "$root" -Dmpi=disabled || { say "configure failed"; exit 1; }
    fi
    step "build" 240 meson compile -C "$build" || { say "build failed"; exit 1; }
fi
tessera=$build/tessera
export TESSERA_CACHE_DIR=$out/kernel-cache POCL_CACHE_DIR=$out/pocl-cache

# 4. devices: the GPUs (or, with --allow-cpu and none, CPU-type OpenCL devices)
"$tessera" devices >"$out/devices.txt" 2>&1
"$tessera" devices --json >"$out/devices.json" 2>>"$log"
cat "$out/devices.txt" | tee -a "$log"
if [ -z "$device" ]; then
    device=$(python3 - "$out/devices.json" "$allow_cpu" <<'PY'
import json, sys
data = json.load(open(sys.argv[1]))
devs = data if isinstance(data, list) else data.get("devices", [])
gpus = [d["id"] for d in devs if d.get("type") == "GPU"]
if not gpus and sys.argv[2] == "1":
    gpus = [d["id"] for d in devs if d.get("backend") == "opencl"]
print(",".join(gpus))
PY
)
fi
if [ -z "$device" ]; then
    say "no GPU found: see $out/devices.txt (is the driver's OpenCL library installed?)"
    exit 1
fi
say "measuring $device"

# 5. conformance on each measured device (tests built with the library)
for id in ${device//,/ }; do
    tap=$out/conformance-${id/:/}.tap
    say "conformance on $id"
    timeout -k 10 120 "$build/tests/test_conformance" "on $id" >"$tap" 2>>"$log"
    grep -E '^(not ok|# crashed)' "$tap" | tee -a "$log"
    say "conformance on $id: $(grep -c '^ok' "$tap") passed, $(grep -c '^not ok' "$tap") failed"
done

# 6. kernel benchmarks with the HTML report, 7. a training step beside PyTorch
step "kernel benchmarks" 180 "$tessera" bench --device "$device" --min-time 0.2 --json "$out/kernels.json" \
    --csv "$out/kernels.csv" --markdown "$out/kernels.md" --report "$out/report"
step "training step" 240 "$tessera" bench train --device "$device" --model d12 --vocab 50257 --batch 4 \
    --seq-len 64 --steps 5 --warmup 2 --dtype fp32,bf16,fp16 --vs-pytorch --json "$out/train.json" --csv "$out/train.csv" ||
    step "training step (tessera only)" 180 "$tessera" bench train --device "$device" --model d12 \
        --vocab 50257 --batch 4 --seq-len 64 --steps 5 --warmup 2 --dtype fp32,bf16,fp16 --json "$out/train.json"
# 8. the 16-bit steps again with the fused attention's local-memory kernels
# (GPUs take them only when asked): bf16 and fp16 with no fp32 copies of
# any activation there, against the composite route's above
TESSERA_ATTENTION=fused step "training step, fused attention" 120 "$tessera" bench train --device "$device" \
    --model d12 --vocab 50257 --batch 4 --seq-len 64 --steps 5 --warmup 2 --dtype bf16,fp16 \
    --json "$out/train-fused.json"
say "done in $(( $(date +%s) - start )) s; results in $out"
