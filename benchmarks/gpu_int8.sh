#!/usr/bin/env bash
# One measuring call on the GPU host (after benchmarks/gpu_host.sh setup): the GPU tests, the device
# caches at 8K and 40K (the attention and WiCSum graphs as committed), the embedded model at 6K and
# SmolLM2 text on CUDA, with 2-core CPU runs of the same host beside them (int8 representatives on the
# host path, their float32 form on the device; benchmarks/results/gpu.md). Results land in $OUT.
#   bash benchmarks/gpu_int8.sh
set -uo pipefail
eval "$(bash "$(dirname "$0")/gpu_host.sh" env)"
out=${OUT:-/tmp/out}
mkdir -p "$out"
log=$out/log.txt
t() { local s=$1; shift; timeout "$s" /usr/bin/time -f "%e s wall, %U s user, %S s sys, %M KiB peak" "$@"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >> "$log" 2>&1
t 150 taskset -c 0-5 python3 -c "from vrex_edge.bench.streams import smollm2_bundle; smollm2_bundle()" >> "$log" 2>&1
(t 420 taskset -c 8,9 python3 benchmarks/bench_embedded.py --cache 6000 --threads 2 \
    --policy full resv:reps=f32 resv window > "$out/emb_cpu.txt" 2>&1) &
(t 420 taskset -c 12,13 python3 -m vrex_edge bench --workload text --sizes 1000,8000,40000 \
    --policies 'full resv:reps=f32 resv window' --frames 6 --gen 2 --probes 1 --out /tmp/text_cpu >> "$log" 2>&1
 cp /tmp/text_cpu/policies_text.md "$out/text_cpu.md" 2>> "$log") &
t 120 taskset -c 0-5 python3 -m pytest -m gpu tests/test_device_tiers.py tests/test_device_caches.py \
    tests/test_gpu.py -rs -p no:cacheprovider > "$out/gpu_tests.txt" 2>&1
t 90 taskset -c 0-5 python3 benchmarks/bench_gpu_caches.py --sizes 8000 40000 --layers 8 \
    --variants "full device" "resv device" "full offload" "resv budget" > "$out/caches.txt" 2>&1
t 60 taskset -c 0-5 python3 benchmarks/bench_embedded.py --cache 6000 --provider cuda \
    --policy full resv:reps=f32 resv window >> "$out/caches.txt" 2>&1
t 170 taskset -c 0-5 python3 -m vrex_edge bench --workload text --sizes 1000,8000,40000 \
    --policies 'full resv window' --provider cuda --frames 6 --gen 2 --probes 1 --out /tmp/text_gpu >> "$log" 2>&1
cp /tmp/text_gpu/policies_text.md "$out/text_gpu.md" 2>> "$log"
wait
