#!/usr/bin/env bash
# One measuring call on the GPU host (after benchmarks/gpu_host.sh setup): the CUDA chain on cores 0-5,
# CPU baselines pinned to their own 2-core pairs in parallel, each under a time limit so that what
# finished comes back. Results land in $OUT (at most 8 files come back; see benchmarks/results/gpu.md).
#   bash benchmarks/gpu_session.sh SECONDS     (the CPU runs' limit; the CUDA chain fits inside it)
set -uo pipefail
limit=${1:-500}
eval "$(bash "$(dirname "$0")/gpu_host.sh" env)"
out=${OUT:-/tmp/out}
mkdir -p "$out"
log=$out/log.txt
t() { local s=$1; shift; timeout "$s" /usr/bin/time -f "%e s wall, %U s user, %S s sys, %M KiB peak" "$@"; }
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" >> "$log" 2>&1
# the SmolLM2 bundle, exported here once from the GGUF (needs torch; the text runs fail without it)
t 120 taskset -c 0-5 python3 -c "from vrex_edge.bench.streams import smollm2_bundle; smollm2_bundle()" >> "$log" 2>&1

# CPU, 2 cores each: the embedded model at 6K, video and text at three sizes, the 20-minute file
(t "$limit" taskset -c 8,9 python3 benchmarks/bench_embedded.py --cache 6000 --threads 2 \
    --policy full resv resv:cluster_batch=1 topk window > "$out/emb_cpu.txt" 2>&1) &
(t "$limit" taskset -c 10,11 python3 -m vrex_edge bench --workload video --sizes 1000,10000,40000 \
    --policies 'full full:engine=numpy resv resv:cluster_batch=1 topk window' --frames 10 --gen 4 --probes 1 \
    --out /tmp/video_cpu >> "$log" 2>&1; cp /tmp/video_cpu/policies_video.md "$out/video_cpu.md") &
(t "$limit" taskset -c 12,13 python3 -m vrex_edge bench --workload text --sizes 1000,8000,40000 \
    --policies 'full full:engine=numpy resv topk window' --frames 6 --gen 2 --probes 1 \
    --out /tmp/text_cpu >> "$log" 2>&1; cp /tmp/text_cpu/policies_text.md "$out/text_cpu.md") &
(python3 -m vrex_edge.world.sample --seed 7 --seconds 1200 --out /tmp/w20 > /dev/null
 t "$limit" taskset -c 14,15 python3 -m vrex_edge caption /tmp/w20.mp4 -q -o /tmp/defaults.txt > "$out/w20.txt" 2>&1
 wc -l /tmp/defaults.txt /tmp/.defaults.txt.*.tmp >> "$out/w20.txt" 2>&1) &

# CUDA
t 100 taskset -c 0-5 python3 -m pytest -m gpu tests/test_device_tiers.py tests/test_device_caches.py tests/test_gpu.py \
    -rs -p no:cacheprovider > "$out/gpu_tests.txt" 2>&1
t 100 taskset -c 0-5 python3 benchmarks/bench_embedded.py --cache 6000 --provider cuda \
    --policy full resv topk window > "$out/emb_cuda.txt" 2>&1
t 90 taskset -c 0-5 python3 benchmarks/bench_gpu_caches.py --sizes 1000 8000 40000 --layers 8 \
    --variants "full device" "resv device" "full offload" "resv budget" >> "$out/emb_cuda.txt" 2>&1
t 170 taskset -c 0-5 python3 -m vrex_edge bench --workload text --sizes 1000,8000,40000 --policies 'full resv window' \
    --provider cuda --frames 6 --gen 2 --probes 1 --out /tmp/text_gpu >> "$log" 2>&1
cp /tmp/text_gpu/policies_text.md "$out/text_gpu.md" 2>/dev/null
wait
