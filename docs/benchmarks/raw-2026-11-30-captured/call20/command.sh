#!/usr/bin/env bash
# Call 20 (1 x H200), the session's last device time: 7B dense 4 x 512 FineTune and HF again (both stacks now report the rate
# after warm-up), then generation (batch 1, greedy, 256 tokens) on both shapes, 16-bit and 4-bit base, as time allows.
set -uo pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 CUDA_VISIBLE_DEVICES=0
D=.dev-lead; export DEVICE_DIR=$D
t0=$(date +%s); deadline=${DEADLINE:-245}
left() { echo $(( deadline - ($(date +%s) - t0) )); }
mark() { echo "== $(( $(date +%s) - t0 ))s $*"; }
mark start; nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader | tee $OUT/gpu.txt
source $D/on-gpu.sh $D/dotnet.tgz >/dev/null
source /opt/torch/.venv/bin/activate
mkdir -p /tmp/bench-models $OUT/bench
cell() { # shape cell min_seconds_left
  local s=$1 c=$2 need=${3:-30}
  if [ $(left) -lt $need ]; then echo "SKIP $s $c (deadline)"; return; fi
  mark "$s $c"; OUT=$OUT timeout $(( $(left) - 2 )) bash tools/bench/run-gpu.sh $s 2000 $c > $OUT/log-$s-$c.txt 2>&1; tail -1 $OUT/log-$s-$c.txt | cut -c1-60
  python3 - $OUT/bench/$s-$c.json <<'PY' 2>/dev/null
import json, sys
d = json.load(open(sys.argv[1]))
print("  tok/s", round(d.get("tokens_per_s", 0), 1), "| 2nd half", round(d.get("second_half_tokens_per_s") or 0, 1), "| first step s", round(d.get("first_step_s") or 0, 2), "| peak", round(d.get("peak_device_bytes", 0) / 2**30, 3), "GiB | loss10", d.get("mean_loss_last_10"), "| wall", d.get("wall_s"), "| text", str(d.get("text") or d.get("generated_ids") or "")[:60])
PY
}
cell qwen2-7b ft-dense-lora 30
cell qwen2-7b hf-dense-lora 45
cell qwen2.5-0.5b hf-generate 25
cell qwen2.5-0.5b ft-generate 20
cell qwen2.5-0.5b ft-generate-qlora 20
cell qwen2-7b hf-generate 40
cell qwen2-7b ft-generate 25
cell qwen2-7b ft-generate-qlora 25
mark summary; python3 tools/bench/summarize.py $OUT/bench 2>&1 | grep -v "^|---" | head -24
mark end
