#!/usr/bin/env bash
# Lead's call 2 of 2026-11-30 (2 x H200): CUDA graphs (branch lead): graph-check, dp-check with graphs, 7B dense 4 x 512
# on 1 and 2 GPUs with graphs on and off, 7B QLoRA dense 1 x 512 with the graphs' memory trace. Never a bare `wait`.
set -uo pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
D=.dev-lead; export DEVICE_DIR=$D
t0=$(date +%s); deadline=${DEADLINE:-450}
left() { echo $(( deadline - ($(date +%s) - t0) )); }
mark() { echo "== $(( $(date +%s) - t0 ))s $*"; }
mark start; nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader | tee $OUT/gpu.txt
source $D/on-gpu.sh $D/dotnet.tgz >/dev/null
source /opt/torch/.venv/bin/activate
mkdir -p /tmp/bench-models
python3 tools/bench/reference.py make-model --shape qwen2-7b --out /tmp/bench-models/qwen2-7b > $OUT/make7b.txt 2>&1 & mk=$!
b="dotnet $D/bench/FineTune.Bench.dll"; fx=FineTune.Tests/Fixtures/models
mark symbols; L=$FINETUNE_LIBTORCH; nm -D --defined-only $L/libc10_cuda.so | grep -i -E "emptyCache|CachingAllocator9allocatorE" | head -8; nm --defined-only $L/libc10_cuda.so 2>&1 | grep -E "_ZTVN3c104cuda20CUDACachingAllocator6Native22NativeCachingAllocatorE|NativeCachingAllocator10emptyCache" | head -4
mark graph-check; timeout 150 $b graph-check $fx --out $OUT/graph-check.json > $OUT/graph-check.txt 2>&1; echo "rc $?"; grep -E "PASS|FAIL|rror" $OUT/graph-check.txt | cut -c1-700
mark dp-check; timeout 90 $b dp-check --model $fx/qwen2 --devices 2 --dtype bf16 --out $OUT/dp-check.json 2>&1 | tail -1 | cut -c1-700
mark waiting for the 7B model; timeout $(( $(left) - 200 )) tail --pid=$mk -f /dev/null; tail -1 $OUT/make7b.txt | cut -c1-200
cell() { # name env cell
  local name=$1 envs=$2 c=$3
  if [ $(left) -lt 35 ]; then echo "SKIP $name (deadline)"; return; fi
  mark "$name"; env $envs OUT=$OUT/$name timeout $(( $(left) - 5 )) bash tools/bench/run-gpu.sh qwen2-7b 300 $c 2>&1 | grep -v bitsandbytes | tail -1 | cut -c1-120
  python3 - $OUT/$name/bench/qwen2-7b-$c.json <<'PY' 2>/dev/null
import json, sys
d = json.load(open(sys.argv[1]))
print({k: d.get(k) for k in ["tokens_per_s", "peak_device_bytes", "mean_loss_last_10", "wall_s", "cuda_graphs"]})
PY
}
cell qlora-on "FINETUNE_CUDA_GRAPHS=on" ft-dense1-qlora
cell dense2-on "FINETUNE_CUDA_GRAPHS=on" ft-dense-lora-2gpu
cell dense1-on "FINETUNE_CUDA_GRAPHS=on" ft-dense-lora
cell dense2-off "FINETUNE_CUDA_GRAPHS=off" ft-dense-lora-2gpu
cell dense1-off "FINETUNE_CUDA_GRAPHS=off" ft-dense-lora
mark end
