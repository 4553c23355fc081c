#!/usr/bin/env bash
# One measuring call on the GPU host (after benchmarks/gpu_host.sh setup): CPU runs pinned to their own
# cores in parallel with the CUDA runs (cores 0-5), each under a time limit so what finished comes back.
# Results land in $OUT (at most 8 files come back).
#   bash benchmarks/gpu_session.sh SECONDS     (the CPU runs' limit; the CUDA chain fits inside it)
set -uo pipefail
limit=${1:-500}
eval "$(bash "$(dirname "$0")/gpu_host.sh" env)"
out=${OUT:-/tmp/out}
mkdir -p "$out"
t() { local s=$1; shift; timeout "$s" /usr/bin/time -f "%e s wall, %U s user, %S s sys, %M KiB peak" "$@"; }

python3 -m vrex_edge.world.sample --seed 7 --seconds 1200 --out /tmp/w20 > /dev/null
python3 -c "from vrex_edge.bench.streams import smollm2_bundle; smollm2_bundle()" > /dev/null 2>&1

# CPU: the 20-minute 2 fps file with the README's endless settings and with the defaults (issue 15 item 5)
(t "$limit" taskset -c 8,9 python3 -m vrex_edge caption /tmp/w20.mp4 --kv-budget 64M --opt max_kept=4096 \
    --opt fine=2048 --opt positions=compact -q -o /tmp/endless.txt > "$out/w20_endless.txt" 2>&1
 wc -l /tmp/endless.txt /tmp/.endless.txt.*.tmp >> "$out/w20_endless.txt" 2>&1) &
(t "$limit" taskset -c 10,11 python3 -m vrex_edge caption /tmp/w20.mp4 -q -o /tmp/defaults.txt > "$out/w20_defaults.txt" 2>&1
 wc -l /tmp/defaults.txt /tmp/.defaults.txt.*.tmp >> "$out/w20_defaults.txt" 2>&1) &
# CPU: SmolLM2 text on 2 cores (issue 15 item 7, issue 16's CPU column)
(t "$limit" taskset -c 2,3 python3 -m vrex_edge bench --workload text --sizes 1000,8000,40000 \
    --policies 'full full:engine=numpy resv topk window' --frames 10 --gen 4 --probes 1 --out /tmp/text_cpu \
    > "$out/text_cpu.txt" 2>&1; cp /tmp/text_cpu/policies_text.md "$out/text_cpu.md" 2>/dev/null) &

# CUDA
t 100 taskset -c 0-5 python3 -m pytest -q -m gpu tests/test_device_tiers.py tests/test_device_caches.py tests/test_gpu.py \
    -rs -p no:cacheprovider > "$out/gpu_tests.txt" 2>&1
t 230 taskset -c 0-5 python3 -m vrex_edge bench --workload text --sizes 1000,8000,40000 --policies 'full resv window' \
    --provider cuda --frames 10 --gen 4 --probes 1 --out /tmp/text_gpu > "$out/text_gpu.txt" 2>&1
cp /tmp/text_gpu/policies_text.md "$out/text_gpu.md" 2>/dev/null
t 150 taskset -c 0-5 python3 benchmarks/bench_gpu_caches.py --sizes 1000 8000 40000 --layers 8 \
    --variants "full device" "full offload" "resv device" "resv budget" > "$out/caches.txt" 2>&1
wait
