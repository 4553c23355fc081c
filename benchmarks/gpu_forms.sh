#!/usr/bin/env bash
# Two measuring calls on the GPU host (after benchmarks/gpu_host.sh setup) for the device attention's
# graph forms (ort_graphs.FORMS): where the time of the first form went at 40K, and what the form
# changes end to end. Run back to back while the machine is warm (the SmolLM2 bundle of part a is
# reused by part b). Results land in $OUT (at most 8 files come back).
#   bash benchmarks/gpu_forms.sh a      # parts, kernels, tests, SmolLM2 text (CUDA and 2 CPU cores)
#   bash benchmarks/gpu_forms.sh b      # the same text run in the first form, device caches, embedded
set -uo pipefail
part=${1:?usage: gpu_forms.sh a|b}
eval "$(bash "$(dirname "$0")/gpu_host.sh" env)"
out=${OUT:-/tmp/out}
mkdir -p "$out"
log=$out/log_$part.txt
t() { local s=$1; shift; timeout "$s" /usr/bin/time -f "%e s wall, %U s user, %S s sys, %M KiB peak" "$@"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >> "$log" 2>&1
text() {  # cores, limit, out name, extra args
    local cores=$1 limit=$2 name=$3; shift 3
    t "$limit" taskset -c "$cores" python3 -m vrex_edge bench --workload text --sizes 1000,8000,40000 \
        --frames 6 --gen 2 --probes 1 --out "/tmp/$name" "$@" >> "$log" 2>&1
    cp "/tmp/$name/policies_text.md" "$out/$name.md" 2>> "$log"
}
case "$part" in
a)
    t 150 taskset -c 0-5 python3 -c "from vrex_edge.bench.streams import smollm2_bundle; smollm2_bundle()" >> "$log" 2>&1
    (text 12,13 470 text_cpu --policies 'full resv window') &
    (t 470 taskset -c 8,9 python3 benchmarks/bench_embedded.py --cache 6000 --threads 2 \
        --policy full resv topk window > "$out/emb_cpu.txt" 2>&1) &
    t 100 taskset -c 0-5 python3 benchmarks/profile_gpu_attention.py --sizes 1000 8000 40000 --torch-profile \
        > "$out/prof.txt" 2>&1
    t 80 taskset -c 0-5 python3 benchmarks/bench_gpu_attention.py --forms flat 2d transposed >> "$out/prof.txt" 2>&1
    t 120 taskset -c 0-5 python3 -m pytest -m gpu tests/test_device_tiers.py tests/test_device_caches.py \
        tests/test_gpu.py -rs -p no:cacheprovider > "$out/gpu_tests.txt" 2>&1
    text 0-5 200 text_gpu --policies 'full resv window' --provider cuda
    wait
    ;;
b)
    VREX_ORT_CUDA_FORM=transposed text 0-5 200 text_gpu_transposed --policies 'full resv window' --provider cuda
    for form in flat transposed; do
        echo "form $form" >> "$out/caches.txt"
        VREX_ORT_CUDA_FORM=$form t 100 taskset -c 0-5 python3 benchmarks/bench_gpu_caches.py \
            --sizes 1000 8000 40000 --layers 8 --variants "full device" "resv device" "full offload" "resv budget" \
            >> "$out/caches.txt" 2>&1
    done
    t 100 taskset -c 0-5 python3 benchmarks/bench_embedded.py --cache 6000 --provider cuda \
        --policy full resv topk window > "$out/emb_cuda.txt" 2>&1
    ;;
esac
