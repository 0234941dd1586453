#!/usr/bin/env bash
# Lead's final call F3 (1 x H200): issue 14's targets in one call on one GPU. F1 ran on a 2-GPU machine, where HF's Trainer
# wrapped the model in nn.DataParallel over both GPUs (its Q&A cells: 72 GiB, the padding-free loss doubled): not a
# one-GPU reference. Priority order under a deadline: 7B Q&A (FineTune, HF padded, HF padding-free), 7B QLoRA dense 1 x 512,
# 7B QLoRA Q&A, 0.5B Q&A 16-bit and QLoRA, 7B dense (FineTune, HF).
set -uo pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 CUDA_VISIBLE_DEVICES=0
D=.dev-lead; export DEVICE_DIR=$D
t0=$(date +%s); deadline=${DEADLINE:-480}
left() { echo $(( deadline - ($(date +%s) - t0) )); }
mark() { echo "== $(( $(date +%s) - t0 ))s $*"; }
mark start; nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader | tee $OUT/gpu.txt
source $D/on-gpu.sh $D/dotnet.tgz >/dev/null
source /opt/torch/.venv/bin/activate
mkdir -p /tmp/bench-models $OUT/bench
cell() { # shape cell min_seconds_left
  local s=$1 c=$2 need=${3:-40}
  if [ $(left) -lt $need ]; then echo "SKIP $s $c (deadline)"; return; fi
  mark "$s $c"; OUT=$OUT timeout $(( $(left) - 3 )) bash tools/bench/run-gpu.sh $s 2000 $c > $OUT/log-$s-$c.txt 2>&1; tail -1 $OUT/log-$s-$c.txt | cut -c1-60
  python3 - $OUT/bench/$s-$c.json <<'PY' 2>/dev/null
import json, sys
d = json.load(open(sys.argv[1]))
print("  tok/s", round(d.get("tokens_per_s", 0), 1), "| peak", round(d.get("peak_device_bytes", 0) / 2**30, 3), "GiB | loss10", d.get("mean_loss_last_10"), "| wall", d.get("wall_s"), "|", (d.get("cuda_graphs") or "")[30:330])
PY
}
cell qwen2-7b ft-qa-lora
cell qwen2-7b hf-qa-lora 110
cell qwen2-7b hf-qa-lora-flat 110
cell qwen2-7b ft-dense1-qlora 30
cell qwen2-7b ft-qa-qlora 70
cell qwen2.5-0.5b ft-qa-lora 40
cell qwen2.5-0.5b ft-qa-qlora 35
cell qwen2-7b ft-dense-lora 25
cell qwen2-7b hf-dense-lora 30
mark summary; python3 tools/bench/summarize.py $OUT/bench 2>&1 | grep -v "^|---" | head -24
mark end
