#!/usr/bin/env bash
# The measuring calls on the GPU host (after benchmarks/gpu_host.sh setup), in three phases so that no
# call runs past the device tool's 10 minutes. The 2-core CPU baselines start detached (setsid) in phase a
# on cores 8-9 and 12-13 and are collected in phase c; the CUDA runs use cores 0-5. Results land in $OUT
# (at most 8 files come back per call).
#   bash benchmarks/gpu_forms.sh a   # SmolLM2 export, CPU baselines started, kernels, GPU tests
#   bash benchmarks/gpu_forms.sh b   # SmolLM2 text on CUDA, device caches, embedded model on CUDA
#   bash benchmarks/gpu_forms.sh c   # waits for the CPU baselines and returns them
#   bash benchmarks/gpu_forms.sh one   # one call of ~10 minutes: the device caches, the embedded model on
#                                      # CUDA and 2 CPU cores, the GPU tests, SmolLM2 text on CUDA only
#   bash benchmarks/gpu_forms.sh core  # one call without SmolLM2 (no GGUF carried): kernels, GPU tests,
#                                      # device caches, embedded model on CUDA and on 2 CPU cores
set -uo pipefail
phase=${1:?usage: gpu_forms.sh a|b|c|one|core}
here=$(cd "$(dirname "$0")" && pwd)
eval "$(bash "$here/gpu_host.sh" env)"
out=${OUT:-/tmp/out}
mkdir -p "$out" /tmp/cpu
log=$out/log.txt
t() { local s=$1; shift; timeout "$s" /usr/bin/time -f "%e s wall, %U s user, %S s sys, %M KiB peak" "$@"; }
text() {  # cores, limit, result file, extra args
    local cores=$1 limit=$2 dest=$3; shift 3
    local name; name=$(basename "$dest" .md)
    t "$limit" taskset -c "$cores" python3 -m vrex_edge bench --workload text --sizes 1000,8000,40000 \
        --frames 6 --gen 2 --probes 1 --out "/tmp/$name" "$@"
    cp "/tmp/$name/policies_text.md" "$dest"
}
embedded() {  # cores, limit, extra args
    local cores=$1 limit=$2; shift 2
    for cache in 1000 6000; do
        t "$limit" taskset -c "$cores" python3 "$here/bench_embedded.py" --cache "$cache" \
            --seconds $((cache < 2000 ? 90 : 360)) --window $((cache < 2000 ? 300 : 500)) \
            --policy full resv topk window "$@"
    done
}
case "$phase" in
a)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >> "$log" 2>&1
    t 200 taskset -c 0-5 python3 -c "from vrex_edge.bench.streams import smollm2_bundle; smollm2_bundle()" \
        >> "$log" 2>&1
    export -f t text embedded; export here
    setsid bash -c "text 12,13 1500 /tmp/cpu/text_cpu.md --policies 'full resv window' > /tmp/cpu/text_log.txt 2>&1; \
        touch /tmp/cpu/text.done" < /dev/null > /dev/null 2>&1 &
    setsid bash -c "embedded 8,9 700 --threads 2 > /tmp/cpu/emb.txt 2>&1; touch /tmp/cpu/emb.done" \
        < /dev/null > /dev/null 2>&1 &
    t 80 taskset -c 0-5 python3 "$here/profile_gpu_attention.py" --sizes 1000 8000 40000 --torch-profile \
        > "$out/prof.txt" 2>&1
    t 60 taskset -c 0-5 python3 "$here/bench_gpu_attention.py" --forms flat transposed >> "$out/prof.txt" 2>&1
    t 240 taskset -c 0-5 python3 -m pytest -m gpu tests/test_device_tiers.py tests/test_device_caches.py \
        tests/test_gpu.py -rs -p no:cacheprovider > "$out/gpu_tests.txt" 2>&1
    ;;
b)
    text 0-5 240 "$out/text_gpu.md" --policies 'full resv window' --provider cuda >> "$log" 2>&1
    t 120 taskset -c 0-5 python3 "$here/bench_gpu_caches.py" --sizes 1000 8000 40000 --layers 8 \
        --variants "full device" "resv device" "full offload" "resv budget" > "$out/caches.txt" 2>&1
    t 60 taskset -c 0-5 python3 "$here/bench_gpu_caches.py" --sizes 40000 --layers 4 --repeats 10 \
        --variants "full device" "resv device" "resv budget" --torch-profile > "$out/caches_kernels.txt" 2>&1
    embedded 0-5 120 --provider cuda > "$out/emb_cuda.txt" 2>&1
    ;;
one)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >> "$log" 2>&1
    (embedded 8,9 200 --threads 2 > "$out/emb_cpu.txt" 2>&1) &
    (t 200 taskset -c 10-15 python3 -c "from vrex_edge.bench.streams import smollm2_bundle; smollm2_bundle()" \
        >> "$log" 2>&1; touch /tmp/exported) &
    t 90 taskset -c 0-5 python3 "$here/bench_gpu_caches.py" --sizes 1000 8000 40000 --layers 8 \
        --variants "full device" "resv device" "full offload" "resv budget" > "$out/caches.txt" 2>&1
    embedded 0-5 60 --provider cuda > "$out/emb_cuda.txt" 2>&1
    t 150 taskset -c 0-5 python3 -m pytest -m gpu tests/test_device_tiers.py tests/test_device_caches.py \
        tests/test_gpu.py -rs -p no:cacheprovider > "$out/gpu_tests.txt" 2>&1
    for _ in $(seq 1 40); do [ -e /tmp/exported ] && break; sleep 3; done
    text 0-5 150 "$out/text_gpu.md" --policies 'full resv window' --provider cuda >> "$log" 2>&1
    t 40 taskset -c 0-5 python3 "$here/bench_gpu_caches.py" --sizes 40000 --layers 4 --repeats 10 \
        --variants "full device" "resv device" "resv budget" --torch-profile > "$out/caches_kernels.txt" 2>&1
    t 30 taskset -c 0-5 python3 "$here/profile_gpu_attention.py" --sizes 1000 8000 40000 > "$out/prof.txt" 2>&1
    wait
    ;;
core)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >> "$log" 2>&1
    (embedded 8,9 240 --threads 2 > "$out/emb_cpu.txt" 2>&1) &
    t 60 taskset -c 0-5 python3 "$here/profile_gpu_attention.py" --sizes 1000 8000 40000 --torch-profile \
        > "$out/prof.txt" 2>&1
    t 40 taskset -c 0-5 python3 "$here/bench_gpu_attention.py" --forms flat transposed >> "$out/prof.txt" 2>&1
    t 90 taskset -c 0-5 python3 "$here/bench_gpu_caches.py" --sizes 1000 8000 40000 --layers 8 \
        --variants "full device" "resv device" "full offload" "resv budget" > "$out/caches.txt" 2>&1
    t 60 taskset -c 0-5 python3 "$here/bench_gpu_caches.py" --sizes 40000 --layers 4 --repeats 10 \
        --variants "full device" "resv device" "resv budget" --torch-profile > "$out/caches_kernels.txt" 2>&1
    embedded 0-5 60 --provider cuda > "$out/emb_cuda.txt" 2>&1
    t 200 taskset -c 0-5 python3 -m pytest -m gpu tests/test_device_tiers.py tests/test_device_caches.py \
        tests/test_gpu.py -rs -p no:cacheprovider > "$out/gpu_tests.txt" 2>&1
    wait
    ;;
c)
    for _ in $(seq 1 110); do
        [ -e /tmp/cpu/text.done ] && [ -e /tmp/cpu/emb.done ] && break
        sleep 5
    done
    ls /tmp/cpu >> "$log"
    cp /tmp/cpu/*.txt /tmp/cpu/*.md "$out"/ 2>> "$log"
    ;;
esac
