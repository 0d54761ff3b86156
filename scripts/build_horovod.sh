#!/usr/bin/env bash
# Build Horovod 0.28.1 against the .venv's torch, once, and install it into the .venv.
#
#   scripts/build_horovod.sh            CPU collectives with Gloo (no MPI, no NCCL)
#   scripts/build_horovod.sh --nccl     GPU collectives with NCCL as well (needs nvcc and NCCL; a GPU node)
#   scripts/build_horovod.sh --rebuild  build again even when the cache has the wheel
#   scripts/build_horovod.sh --no-test  skip `horovodrun --check-build` and the 2-process smoke test
#   scripts/build_horovod.sh --cache-only   install the cached wheel; exit 3, building nothing, if there is none
#
# Horovod 0.28.1 (June 2023, the last release) does not build against torch >= 2.1 as released: it compiles with
# -std=c++14 and torch's headers need C++17. scripts/horovod-0.28.1-cxx17.patch is the fix of horovod PR #3998
# (merged upstream, never released). The sdist comes from PyPI with pip and must match HOROVOD_SHA256.
#
# The wheel is built once into ${HOROVOD_WHEEL_CACHE:-$HOME/.cache/audio-ddp-pipeline/horovod}/<key>/ (key: horovod,
# torch and Python versions, cpu|nccl and the CUDA toolkit the build compiled against, if any); a later run with the
# same key only installs it (seconds). Environment read: HOROVOD_WHEEL_CACHE, HOROVOD_BUILD_JOBS (parallel compile
# jobs; default: the cores, at most 8), HOROVOD_BUILD_CUDA_CC_LIST (e.g. 90 for H100/H200; default: all the CUDA
# toolkit supports), HOROVOD_NCCL_HOME (default: the .venv's nvidia-nccl package), HOROVOD_CUDA_HOME/CUDA_HOME
# (the CUDA toolkit), VENV (default: .venv). Every other HOROVOD_* variable is cleared so that the build is the same
# whatever the calling shell exported.
set -euo pipefail

HOROVOD_VERSION=0.28.1
HOROVOD_SHA256=92a43f5a94c43907a56805bad15f19700c62ffc83b7ca483f9e104e229f67ef0
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PATCH_FILE="$ROOT/scripts/horovod-$HOROVOD_VERSION-cxx17.patch"
VENV=${VENV:-$ROOT/.venv}
PY="$VENV/bin/python"
CACHE_ROOT=${HOROVOD_WHEEL_CACHE:-$HOME/.cache/audio-ddp-pipeline/horovod}
cores=$(nproc)
BUILD_JOBS=${HOROVOD_BUILD_JOBS:-$((cores < 8 ? cores : 8))}

flavour=cpu rebuild=0 run_tests=1 cache_only=0
for arg in "$@"; do
    case "$arg" in
        --nccl) flavour=nccl ;;
        --rebuild) rebuild=1 ;;
        --no-test) run_tests=0 ;;
        --cache-only) cache_only=1 ;;
        -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "build_horovod: unknown argument '$arg' (see --help)" >&2; exit 2 ;;
    esac
done

say() { echo "build_horovod: $*"; }
started=$(date +%s)

# ---- 1. what the build needs, checked up front -------------------------------------------------------------------
missing=()
need() { missing+=("$1"); }
version_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]; }

# One interpreter start (importing torch takes seconds): the versions, and the CUDA toolkit torch's extension
# builder sees before this script exports any
torch_version="" torch_cuda="" py_version="" torch_sees=""
if [ -x "$PY" ]; then
    { read -r torch_version; read -r torch_cuda; read -r py_version; read -r torch_sees; } < <("$PY" -c '
import sys, torch
print(torch.__version__, torch.version.cuda or "", "%d.%d" % sys.version_info[:2], sep="\n")
if torch.version.cuda:
    from torch.utils.cpp_extension import CUDA_HOME
    print(CUDA_HOME or "")
else:
    print("")
' 2>/dev/null) || true
fi
if [ -z "$torch_version" ]; then
    need "the venv with torch ($PY): run ./setup.sh first"
fi
if ! command -v cmake >/dev/null; then
    need "cmake >= 3.13: apt-get install cmake (or .venv/bin/pip install cmake and put .venv/bin on PATH)"
else
    cmake_version=$(cmake --version | sed -n 's/^cmake version \([0-9][0-9.]*\).*/\1/p')
    version_ge "$cmake_version" 3.13 || need "cmake >= 3.13 (found $cmake_version): apt-get install cmake"
fi
CXX=${CXX:-$(command -v g++ || command -v c++ || true)}
if [ -z "$CXX" ]; then
    need "a C++17 compiler: apt-get install g++"
elif ! printf '#include <string_view>\nint main() { return std::string_view("").size(); }\n' \
        | "$CXX" -std=c++17 -x c++ - -o /dev/null 2>/dev/null; then
    need "a C++17 compiler ($CXX cannot compile -std=c++17; GCC >= 7): apt-get install g++"
fi
command -v make >/dev/null || need "make: apt-get install make"
command -v patch >/dev/null || need "patch: apt-get install patch"
command -v sha256sum >/dev/null || need "sha256sum: apt-get install coreutils"
if [ -x "$PY" ]; then
    py_include=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
    [ -f "$py_include/Python.h" ] || need "the Python headers ($py_include/Python.h): apt-get install python3-dev \
(for Debian's python3), or a Python built with its headers"
    # horovod/torch/CMakeLists.txt asks distutils for the include path: Python <= 3.11 only
    "$PY" -c 'import distutils.sysconfig' 2>/dev/null \
        || need "Python <= 3.11 (Horovod $HOROVOD_VERSION's CMake imports distutils)"
    "$PY" -m pip --version >/dev/null 2>&1 || need "pip in the venv: $PY -m ensurepip"
    "$PY" -c 'import setuptools, packaging' 2>/dev/null || need "setuptools and packaging in the venv: run ./setup.sh"
fi
if [ ${#missing[@]} -gt 0 ]; then
    say "cannot build Horovod, missing:" >&2
    printf '  - %s\n' "${missing[@]}" >&2
    exit 1
fi

# A CUDA build of torch makes Horovod compile its CUDA parts (horovod/torch/CMakeLists.txt: Pytorch_CUDA ->
# add_cuda()) whenever torch.utils.cpp_extension finds a CUDA toolkit ($CUDA_HOME, nvcc on PATH or /usr/local/cuda),
# even for a Gloo-only build. Then nvcc and the toolkit's headers are needed, and torch, CMake and Horovod must all
# see the same toolkit, so its root is exported to each of them.
cuda_home="" cuda_version=""
if [ -n "$torch_cuda" ]; then
    nvcc_path=$(command -v nvcc || true)
    for candidate in "${HOROVOD_CUDA_HOME:-}" "${CUDA_HOME:-}" "${CUDA_PATH:-}" /usr/local/cuda \
                     "${nvcc_path:+$(dirname "$(dirname "$(readlink -f "$nvcc_path")")")}"; do
        if [ -n "$candidate" ] && [ -x "$candidate/bin/nvcc" ] && [ -f "$candidate/include/cuda_runtime.h" ]; then
            cuda_home=$(readlink -f "$candidate")
            break
        fi
    done
    if [ "$flavour" = nccl ] || [ -n "$torch_sees" ]; then
        if [ -z "$cuda_home" ]; then
            if [ "$flavour" = nccl ]; then
                say "--nccl needs the CUDA toolkit (nvcc and its headers, CUDA $torch_cuda like torch): install it" \
                    "(or: pip install nvidia-cuda-nvcc nvidia-cuda-runtime nvidia-cuda-cccl into a prefix) and set" \
                    "HOROVOD_CUDA_HOME to its root" >&2
            else
                say "torch $torch_version sees a CUDA toolkit at '$torch_sees', so Horovod compiles its CUDA parts," \
                    "but no complete toolkit (bin/nvcc and include/cuda_runtime.h) was found there or in" \
                    "\$HOROVOD_CUDA_HOME, \$CUDA_HOME, /usr/local/cuda: point HOROVOD_CUDA_HOME at one (CUDA" \
                    "$torch_cuda), or remove the partial one from PATH" >&2
            fi
            exit 1
        fi
        cuda_version=$("$cuda_home/bin/nvcc" --version | sed -n 's/.*release \([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p')
        export CUDA_HOME="$cuda_home" CUDAToolkit_ROOT="$cuda_home" PATH="$cuda_home/bin:$PATH"
    fi
elif [ "$flavour" = nccl ]; then
    say "--nccl needs a CUDA build of torch; $torch_version is CPU-only" >&2
    exit 1
fi

if [ "$flavour" = nccl ]; then
    # FindNCCL looks for include/nccl.h and lib/libnccl.so; pip's nvidia-nccl-cu* ships only libnccl.so.2, so the
    # build links against a staged folder with that link (the loaded library is then the same one torch loads).
    nccl_home=${HOROVOD_NCCL_HOME:-}
    if [ -z "$nccl_home" ]; then
        nccl_home=$("$PY" -c 'import nvidia.nccl; print(list(nvidia.nccl.__path__)[0])' 2>/dev/null || true)
    fi
    if [ -z "$nccl_home" ] || [ ! -f "$nccl_home/include/nccl.h" ] \
            || ! ls "$nccl_home"/lib/libnccl.so* >/dev/null 2>&1; then
        say "--nccl needs NCCL (include/nccl.h and lib/libnccl.so*): the .venv's nvidia-nccl-cu${torch_cuda%%.*}" \
            "package (installed with torch) or HOROVOD_NCCL_HOME=<nccl root>; found '${nccl_home}'" >&2
        exit 1
    fi
fi

cc_list=${HOROVOD_BUILD_CUDA_CC_LIST:-}
key="horovod-$HOROVOD_VERSION-torch-$torch_version-py$py_version-$flavour"
if [ -n "$cuda_version" ]; then
    key="$key-cuda$cuda_version"
    if [ -n "$cc_list" ]; then key="$key-sm${cc_list//,/_}"; fi
fi
cache_dir="$CACHE_ROOT/$key"

# ---- 2. the wheel: from the cache, or built once ----------------------------------------------------------------
mkdir -p "$cache_dir"
# One build per key at a time: a second run (another shell, another node on a shared $HOME) waits, then finds the wheel
if command -v flock >/dev/null; then
    exec 9>"$cache_dir/.lock"
    flock 9
fi
# A wheel without the torch extension at its place installs, imports, and fails in hvd.init(): never used
wheel_complete() {
    "$PY" - "$1" <<'PYTHON'
import sys, sysconfig, zipfile
wanted = "horovod/torch/mpi_lib_v2" + sysconfig.get_config_var("EXT_SUFFIX")
sys.exit(0 if wanted in zipfile.ZipFile(sys.argv[1]).namelist() else f"{sys.argv[1]} lacks {wanted}")
PYTHON
}
wheel=$(ls "$cache_dir"/horovod-"$HOROVOD_VERSION"-*.whl 2>/dev/null | head -n1 || true)
if [ -n "$wheel" ] && ! wheel_complete "$wheel"; then
    say "the cached wheel is incomplete: building it again"
    rm -f "$wheel"
    wheel=""
fi
built_s=""
if [ -n "$wheel" ] && [ "$rebuild" = 0 ]; then
    say "using the cached wheel $wheel"
elif [ "$cache_only" = 1 ]; then
    say "--cache-only: no cached wheel in $cache_dir" >&2
    exit 3
else
    # A fixed build folder per key (the lock above keeps it to one build), so that the paths compiled into the wheel
    # (debug info, RUNPATH) are the same on every rebuild. Only plain characters in it: Horovod's CMake uses the
    # source folder as a regular expression (cmake/Utilities.cmake), and a '+' (torch's +cu130) there puts the
    # libraries outside the package.
    work="${TMPDIR:-/tmp}/build-horovod-${key//[^A-Za-z0-9._-]/_}"
    if [[ ! "$work" =~ ^[A-Za-z0-9._/-]+$ ]]; then
        say "the build folder $work has characters Horovod's CMake cannot take; set TMPDIR to a plain path" >&2
        exit 1
    fi
    rm -rf "$work"
    mkdir -p "$work" "$CACHE_ROOT/sdist"
    trap 'rm -rf "$work"' EXIT
    sdist="$CACHE_ROOT/sdist/horovod-$HOROVOD_VERSION.tar.gz"
    if [ ! -f "$sdist" ] || ! echo "$HOROVOD_SHA256  $sdist" | sha256sum -c --status; then
        say "downloading the horovod==$HOROVOD_VERSION sdist from PyPI"
        # --no-build-isolation: pip reads the sdist's metadata with the venv's setuptools instead of building one
        "$PY" -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: --no-build-isolation \
            -d "$work/download" "horovod==$HOROVOD_VERSION"
        mv "$work/download/horovod-$HOROVOD_VERSION.tar.gz" "$sdist.part"
        if ! echo "$HOROVOD_SHA256  $sdist.part" | sha256sum -c --status; then
            say "the downloaded sdist's sha256 is $(sha256sum "$sdist.part" | cut -d' ' -f1), not the pinned" \
                "$HOROVOD_SHA256: refusing to build it" >&2
            rm -f "$sdist.part"
            exit 1
        fi
        mv "$sdist.part" "$sdist"
    fi
    say "sdist $sdist (sha256 $HOROVOD_SHA256, checked)"
    tar -xzf "$sdist" -C "$work"
    src="$work/horovod-$HOROVOD_VERSION"
    # --forward --fuzz=0: a patch that is already applied, or whose context differs, is an error, not a guess
    if ! (cd "$src" && patch -p1 --forward --fuzz=0 --batch --dry-run <"$PATCH_FILE" >"$work/patch.log" 2>&1); then
        say "$PATCH_FILE does not apply cleanly to the horovod $HOROVOD_VERSION sdist; refusing to build:" >&2
        cat "$work/patch.log" >&2
        exit 1
    fi
    (cd "$src" && patch -p1 --forward --fuzz=0 --batch --quiet <"$PATCH_FILE")
    say "applied $(basename "$PATCH_FILE")"

    if [ "$flavour" = nccl ]; then
        # Kept next to the wheel: the library's RUNPATH names this folder (torch has loaded libnccl.so.2 anyway)
        nccl_stage="$cache_dir/nccl"
        rm -rf "$nccl_stage"
        mkdir -p "$nccl_stage/lib"
        ln -s "$(readlink -f "$nccl_home/include")" "$nccl_stage/include"
        for lib in "$nccl_home"/lib/libnccl.so*; do
            ln -sf "$(readlink -f "$lib")" "$nccl_stage/lib/$(basename "$lib")"
        done
        if [ ! -e "$nccl_stage/lib/libnccl.so" ]; then
            ln -s "$(ls "$nccl_stage"/lib/libnccl.so.* | head -n1)" "$nccl_stage/lib/libnccl.so"
        fi
    fi

    # The build's whole environment, from nothing the calling shell set
    for var in $(compgen -e | grep '^HOROVOD_' || true); do unset "$var"; done
    export HOROVOD_WITH_PYTORCH=1 HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 HOROVOD_WITH_GLOO=1 \
        HOROVOD_WITHOUT_MPI=1 HOROVOD_CPU_OPERATIONS=GLOO
    if [ -n "$cuda_version" ]; then
        export HOROVOD_CUDA_HOME="$cuda_home"
        if [ -n "$cc_list" ]; then export HOROVOD_BUILD_CUDA_CC_LIST="$cc_list"; fi
    fi
    if [ "$flavour" = nccl ]; then
        export HOROVOD_GPU_OPERATIONS=NCCL HOROVOD_NCCL_HOME="$nccl_stage" HOROVOD_NCCL_LINK=SHARED
    fi
    export MAKEFLAGS="-j$BUILD_JOBS"
    say "building $key with $BUILD_JOBS jobs (log: $cache_dir/build.log):"
    compgen -e | grep -E '^(HOROVOD_|CUDA_HOME$|CUDAToolkit_ROOT$|MAKEFLAGS$)' | while read -r var; do
        echo "  $var=${!var}"
    done
    build_started=$(date +%s)
    if ! "$PY" -m pip wheel -v --disable-pip-version-check --no-deps --no-build-isolation -w "$work/dist" "$src" \
            >"$cache_dir/build.log" 2>&1; then
        say "the build failed; the end of $cache_dir/build.log:" >&2
        grep -n -E 'error|Error|FAILED' "$cache_dir/build.log" | head -n 20 >&2 || true
        tail -n 30 "$cache_dir/build.log" >&2
        exit 1
    fi
    built_s=$(($(date +%s) - build_started))
    if ! wheel_complete "$work"/dist/horovod-"$HOROVOD_VERSION"-*.whl; then
        say "the built wheel is incomplete (see $cache_dir/build.log); not caching it" >&2
        exit 1
    fi
    rm -f "$cache_dir"/horovod-*.whl
    mv "$work"/dist/horovod-"$HOROVOD_VERSION"-*.whl "$cache_dir/"
    wheel=$(ls "$cache_dir"/horovod-"$HOROVOD_VERSION"-*.whl | head -n1)
    {
        echo "key: $key"
        echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname) ($(nproc) cores, $BUILD_JOBS jobs) in ${built_s} s"
        echo "sdist sha256: $HOROVOD_SHA256"
        echo "patch sha256: $(sha256sum "$PATCH_FILE" | cut -d' ' -f1)"
        echo "compiler: $("$CXX" --version | head -n1); cmake $cmake_version"
        compgen -e | grep -E '^(HOROVOD_|CUDA_HOME$|CUDAToolkit_ROOT$)' | while read -r var; do
            echo "env: $var=${!var}"
        done
    } >"$cache_dir/build-info.txt"
    say "built $wheel in $((built_s / 60)) min $((built_s % 60)) s"
fi

# ---- 3. install, check ------------------------------------------------------------------------------------------
# --force-reinstall: the installed horovod may be another build of the same version (cpu vs nccl)
"$VENV/bin/pip" install -q --disable-pip-version-check --no-deps --force-reinstall "$wheel"
# What was installed, for tests/test_horovod_build.py to rerun the same build from the cache
printf 'key=%s\nflavour=%s\ncuda_cc_list=%s\nwheel=%s\n' "$key" "$flavour" "$cc_list" "$wheel" >"$VENV/.horovod-build"
say "installed $(basename "$wheel") into $VENV"

if [ "$run_tests" = 1 ]; then
    export PATH="$VENV/bin:$PATH"
    check=$("$VENV/bin/horovodrun" --check-build)
    echo "$check"
    for needed in PyTorch Gloo; do
        echo "$check" | grep -q "\[X\] $needed" || { say "horovodrun --check-build does not list $needed" >&2; exit 1; }
    done
    if [ "$flavour" = nccl ] && ! echo "$check" | grep -q '\[X\] NCCL'; then
        say "horovodrun --check-build does not list NCCL" >&2
        exit 1
    fi

    # Two ranks over Gloo: an all-reduce with a known result, and one DistributedOptimizer step whose averaged
    # gradient gives the same, known weights on both ranks.
    smoke=$(cat <<'PYTHON'
import torch
import horovod.torch as hvd

hvd.init()
rank, size = hvd.rank(), hvd.size()
assert size == 2, size
total = hvd.allreduce(torch.full((4,), rank + 1.0), op=hvd.Sum, name="sum")
assert torch.equal(total, torch.full((4,), 3.0)), total

torch.manual_seed(rank)  # different initial weights per rank: the broadcast must make them rank 0's
model = torch.nn.Linear(4, 1, bias=False)
hvd.broadcast_parameters(model.state_dict(), root_rank=0)
start = model.weight.detach().clone()
optimizer = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                                     named_parameters=model.named_parameters())
model(torch.full((1, 4), rank + 1.0)).sum().backward()  # gradient: the input, so 1 and 2, averaged 1.5
optimizer.step()
expected = start - 0.1 * 1.5
assert torch.allclose(model.weight, expected), (model.weight, expected)
weights = hvd.allgather(model.weight.detach(), name="weights")
assert torch.equal(weights[0], weights[1]), weights
print(f"smoke test rank {rank}/{size}: allreduce and DistributedOptimizer step ok", flush=True)
PYTHON
)
    "$VENV/bin/horovodrun" -np 2 --gloo -H localhost:2 "$PY" -c "$smoke"
    say "2-process smoke test passed"
fi

total_s=$(($(date +%s) - started))
if [ -n "$built_s" ]; then
    say "done in $((total_s / 60)) min $((total_s % 60)) s (build $((built_s / 60)) min $((built_s % 60)) s)"
else
    say "done in ${total_s} s (cached wheel, no build)"
fi
