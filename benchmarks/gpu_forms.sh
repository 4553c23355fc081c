#!/usr/bin/env bash
# One measuring call on the GPU host (after benchmarks/gpu_host.sh setup) for the device attention's
# graph forms (ort_graphs.FORMS): the kernels of each form, the engine per form, the GPU tests, and
# SmolLM2 text end to end in both forms beside a 2-core CPU run of the same host; then the device caches
# per form and the embedded model. Results land in $OUT (at most 8 files come back).
#   bash benchmarks/gpu_forms.sh
set -uo pipefail
eval "$(bash "$(dirname "$0")/gpu_host.sh" env)"
out=${OUT:-/tmp/out}
mkdir -p "$out"
log=$out/log.txt
t() { local s=$1; shift; timeout "$s" /usr/bin/time -f "%e s wall, %U s user, %S s sys, %M KiB peak" "$@"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >> "$log" 2>&1
text() {  # cores, limit, out name, extra args
    local cores=$1 limit=$2 name=$3; shift 3
    t "$limit" taskset -c "$cores" python3 -m vrex_edge bench --workload text --sizes 1000,8000,40000 \
        --frames 6 --gen 2 --probes 1 --out "/tmp/$name" "$@" >> "$log" 2>&1
    cp "/tmp/$name/policies_text.md" "$out/$name.md" 2>> "$log"
}
t 150 taskset -c 0-5 python3 -c "from vrex_edge.bench.streams import smollm2_bundle; smollm2_bundle()" >> "$log" 2>&1
(text 12,13 400 text_cpu --policies 'full resv window') &
(t 400 taskset -c 8,9 python3 benchmarks/bench_embedded.py --cache 6000 --threads 2 \
    --policy full resv topk window > "$out/emb.txt" 2>&1) &
t 60 taskset -c 0-5 python3 benchmarks/profile_gpu_attention.py --sizes 1000 8000 40000 --torch-profile \
    > "$out/prof.txt" 2>&1
t 60 taskset -c 0-5 python3 benchmarks/bench_gpu_attention.py --forms flat transposed >> "$out/prof.txt" 2>&1
t 100 taskset -c 0-5 python3 -m pytest -m gpu tests/test_device_tiers.py tests/test_device_caches.py \
    tests/test_gpu.py -rs -p no:cacheprovider > "$out/gpu_tests.txt" 2>&1
text 0-5 150 text_gpu --policies 'full resv window' --provider cuda
VREX_ORT_CUDA_FORM=transposed text 0-5 150 text_gpu_transposed --policies 'full resv window' --provider cuda
for form in flat transposed; do
    echo "form $form" >> "$out/caches.txt"
    VREX_ORT_CUDA_FORM=$form t 70 taskset -c 0-5 python3 benchmarks/bench_gpu_caches.py \
        --sizes 1000 8000 40000 --layers 8 --variants "full device" "resv device" "full offload" "resv budget" \
        >> "$out/caches.txt" 2>&1
done
wait
echo "embedded model, CUDA" >> "$out/caches.txt"
t 60 taskset -c 0-5 python3 benchmarks/bench_embedded.py --cache 6000 --provider cuda \
    --policy full resv topk window >> "$out/caches.txt" 2>&1
