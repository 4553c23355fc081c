#!/usr/bin/env bash
# Runs the real-size family checks (tests/test_families_realsize.py) on a larger host reached through
# a copy of this checkout, where pip cannot reach PyPI: the export extra's pure-Python and cp312 wheels
# travel in .rs-carry-a/ and .rs-carry-b/ (git ignores them; one per call, as a call carries at most
# 64 MiB with the tree; torch, numpy, onnxruntime and OpenCV are the host's own).
#
# Here (a machine with pip):   benchmarks/realsize_host.sh pack
# There, in the checkout:      benchmarks/realsize_host.sh take a    (one call; the next carries b)
#                              benchmarks/realsize_host.sh take b && benchmarks/realsize_host.sh run [fixture ...]
#                              benchmarks/realsize_host.sh wait 540 OUTDIR
#   one detached pytest process per fixture (default: all five), in parallel, THREADS torch threads each
#   (default 3); fixtures, bundles and logs are kept in /tmp/rs, so a later call on the warm host waits on
#   the same processes (or restarts those that were lost, reusing what they had written).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LOGS=/tmp/rs/logs
case "${1:-}" in
pack)
    work=$(mktemp -d)
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$work" transformers==5.24.0 peft==0.21.2 accelerate==1.16.0 onnx==1.23.2 onnx-ir==1.1.0 \
        safetensors==0.8.0 tokenizers==0.23.3 huggingface_hub==2.4.0 hf-xet==1.8.0 httpx2==2.16.2 \
        httpcore2==2.16.2 anyio==4.16.0 h11==0.16.0 idna==3.20 certifi sniffio gguf==0.19.0 tqdm pyyaml regex \
        typer==0.29.2 rich==15.0.0 click==8.5.1 shellingham markdown-it-py mdurl pygments annotated-doc psutil \
        ml_dtypes==0.7.0 protobuf==7.36.2 truststore  # truststore: httpcore2 imports it
    mkdir -p "$ROOT/.rs-carry-a" "$ROOT/.rs-carry-b"
    mv "$work"/transformers-* "$work"/hf_xet-* "$work"/tokenizers-* "$ROOT/.rs-carry-a"/ && mv "$work"/*.whl "$ROOT/.rs-carry-b"/
    grep -qx '/.rs-carry-\*/' "$ROOT/.git/info/exclude" 2>/dev/null || echo '/.rs-carry-*/' >> "$ROOT/.git/info/exclude"
    rm -rf "$work" && du -sh "$ROOT"/.rs-carry-?
    ;;
take)
    mkdir -p /tmp/wheels && cp "$ROOT/.rs-carry-$2"/*.whl /tmp/wheels/ && ls /tmp/wheels | wc -l
    ;;
run)  # starts one detached pytest per fixture (a later call on the warm host finds them running)
    shift
    names=("$@")
    [ ${#names[@]} -gt 0 ] || names=(smolvlm2-256m smolvlm2-500m llava-onevision-0.5b smolvlm2-2.2b videollm-online-8b-L2)
    mkdir -p "$LOGS" /tmp/rs
    [ -d /tmp/site/transformers ] || python3 -m pip install -q --no-index --no-deps --target /tmp/site /tmp/wheels/*.whl
    export PYTHONPATH=/tmp/site:$ROOT HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
    export OMP_NUM_THREADS=${THREADS:-3} VREX_REALSIZE_CACHE=/tmp/rs
    { nproc; free -g | sed -n 2p; python3 -c "import sys, torch, transformers, peft, onnx, onnxruntime, numpy
print(sys.version.split()[0], 'torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__,
      'onnx', onnx.__version__, 'onnxruntime', onnxruntime.__version__, 'numpy', numpy.__version__)"; } > "$LOGS/host.txt" 2>&1
    for n in "${names[@]}"; do
        { [ -f "$LOGS/$n.rc" ] || pgrep -f "VREX_RS=$n" > /dev/null; } && continue
        VREX_REALSIZE=$n setsid nohup bash -c "cd '$ROOT' && start=\$(date +%s) && python3 -m pytest -q \
            -p no:cacheprovider -rA tests/test_families_realsize.py > '$LOGS/$n.txt' 2>&1; rc=\$?; \
            echo \"rc=\$rc wall_s=\$((\$(date +%s) - start))\" > '$LOGS/$n.rc' # VREX_RS=$n" > /dev/null 2>&1 &
    done
    ;;
wait)  # wait SECONDS OUTDIR: until every started fixture has finished or SECONDS pass; copy the logs
    end=$(($(date +%s) + $2))
    while pgrep -f "VREX_RS=" > /dev/null && [ "$(date +%s)" -lt "$end" ]; do sleep 5; done
    mkdir -p "$3" && cp "$LOGS"/* "$3"/ && tail -n 3 "$LOGS"/*.txt; cat "$LOGS"/*.rc 2>/dev/null || true
    ;;
*)
    echo "usage: realsize_host.sh pack | take a|b | run [fixture ...] | wait SECONDS OUTDIR" >&2
    exit 2
    ;;
esac
