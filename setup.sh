#!/bin/sh
# Set up tessera on Debian 12 or Ubuntu 22.04+ (root or not): install the
# packages it builds with and tests against, then configure and build
# build/ (build/tessera is the command). README's first command; CI runs
# it too.
#
#   sh setup.sh              packages, then the build
#   sh setup.sh --no-build   packages only
#   sh setup.sh --fuzz       also clang and its sanitizer runtimes (libFuzzer)
set -eu
cd "$(dirname "$0")"

build=1
fuzz=0
for arg in "$@"; do
    case $arg in
    --no-build) build=0 ;;
    --fuzz) fuzz=1 ;;
    -h | --help) sed -n '2,9s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option '$arg' (see --help)" >&2; exit 2 ;;
    esac
done

# the compiler and build tools; OpenCL (loader, headers, PoCL as a CPU
# device, CLBlast); OpenBLAS; Open MPI; hwloc; for the tests PyTorch and
# NumPy (the reference), oclgrind (a simulated GPU that checks kernels) and
# iproute2 (`ip netns`: the multi-node test's namespace "nodes"); oneDNN
# (bf16 matrix products on the CPU backend; meson finds it through cmake)
packages="build-essential pkg-config meson ninja-build cmake python3
ocl-icd-opencl-dev opencl-headers pocl-opencl-icd clinfo libclblast-dev
libopenblas-dev libdnnl-dev libopenmpi-dev openmpi-bin libhwloc-dev iproute2
python3-numpy python3-torch oclgrind"
if [ $fuzz = 1 ]; then
    # Debian 12's clang 14 keeps libFuzzer and the sanitizers in libclang-rt-14-dev
    packages="$packages clang"
    if apt-cache show libclang-rt-14-dev >/dev/null 2>&1; then packages="$packages libclang-rt-14-dev"; fi
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null; then
        echo "setup.sh: not root and no sudo: run it as root, or install these packages first:" >&2
        echo "$packages" >&2
        exit 1
    fi
    sudo=sudo
fi
echo "== installing packages (apt-get)"
$sudo apt-get update -qq
# shellcheck disable=SC2086 # the list splits into package names
if ! $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $packages; then
    echo "setup.sh: apt-get install failed (on Ubuntu, enable the universe component:" >&2
    echo "  sudo add-apt-repository universe)" >&2
    exit 1
fi

[ $build = 1 ] || exit 0
echo "== building build/"
if [ -f build/build.ninja ]; then
    meson setup --reconfigure build
else
    meson setup build
fi
meson compile -C build
echo "== built: build/tessera ($(build/tessera --version))"
