#!/usr/bin/env bash
# Call 16 (1 x H200): 7B Q&A 16-bit with packed rows padded for CUDA graphs (bench --pad-packed) against as it runs now.
set -uo pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 CUDA_VISIBLE_DEVICES=0
D=.dev-lead; export DEVICE_DIR=$D
t0=$(date +%s); mark() { echo "== $(( $(date +%s) - t0 ))s $*"; }
mark start; nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader
source $D/on-gpu.sh $D/dotnet.tgz >/dev/null
source /opt/torch/.venv/bin/activate
echo "exports:"; nm -D --defined-only $FINETUNE_LIBTORCH/libc10_cuda.so | grep -i 'emptyCache\|CUDACachingAllocator9allocatorE\|releasePool\|setMemoryFraction' | head -12
mkdir -p /tmp/bench-models $OUT
[ -f /tmp/qa.jsonl ] || python3 tools/bench/reference.py make-data --out /tmp/qa.jsonl --rows 2000 > /dev/null
m=/tmp/bench-models/qwen2-7b; [ -d $m ] || python3 tools/bench/reference.py make-model --shape qwen2-7b --out $m 2>&1 | grep -v Writing
B="dotnet $D/bench/FineTune.Bench.dll"
run() { local name=$1; shift
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > /tmp/mem.$name.txt & local s=$!
  mark $name; "$@" --out $OUT/$name.json > $OUT/log-$name.txt 2>&1; echo "rc $?"; kill $s; wait $s 2>/dev/null
  python3 - $OUT/$name.json $(sort -n /tmp/mem.$name.txt | tail -1) <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); peak = int(sys.argv[2])
print("  tok/s", round(d["tokens_per_s"], 1), "| peak", round(peak / 1024, 3), "GiB | loss10", d.get("mean_loss_last_10"), "| wall", round(d["wall_s"], 2), "|", d.get("cuda_graphs"))
PY
  grep -h 'busy\|CUDA graphs' $OUT/log-$name.txt | cut -c1-400 | head -3
}
Q="train --model $m --workload qa --data /tmp/qa.jsonl --max-rows 2000"
run qa-base $B $Q
run qa-padded $B $Q --pad-packed
run qa-padded-expandable env PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True $B $Q --pad-packed
mark end
