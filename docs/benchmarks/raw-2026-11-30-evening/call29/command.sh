#!/usr/bin/env bash
# Call 29 (2 x H200, nvidia-h200-x2), 2026-11-30 evening: the same-call table of issues 14 and 17 with the
# cross-entropy kernel, SwiGLU's gradients in place and the long-micro-batch budget at the 80th percentile (default).
# Phase 0: data, models; kernels (the new cross-entropy cases) and graph-check meanwhile. Phase 1 (both GPUs, nothing
# else running): FineTune's 16-bit Q&A and dense on 1 GPU then 2 GPUs; dp-check. Phase 2: HF's cells on GPU 1 while
# FineTune's other cells run on GPU 0 (each cell's peak sampled on its own GPU: PEAK_GPUS), the first of them the Q&A
# cell with the old budget (95th percentile) for its peak.
set -uo pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
D=.dev-lead; export DEVICE_DIR=$D
t0=$(date +%s); deadline=${DEADLINE:-580}
left() { echo $(( deadline - ($(date +%s) - t0) )); }
mark() { echo "== $(( $(date +%s) - t0 ))s $*"; }
R=/tmp/r; mkdir -p $R/bench /tmp/bench-models
mark start; nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader | tee $R/gpu.txt
source $D/on-gpu.sh $D/dotnet.tgz >/dev/null
source /opt/torch/.venv/bin/activate
python3 tools/bench/reference.py make-data --out /tmp/qa.jsonl --rows 2000 > /dev/null
( python3 tools/bench/reference.py make-model --shape qwen2.5-0.5b --out /tmp/bench-models/qwen2.5-0.5b > $R/make05.txt 2>&1
  python3 tools/bench/reference.py make-model --shape qwen2-7b --out /tmp/bench-models/qwen2-7b > $R/make.txt 2>&1 ) &
mk=$!
b="dotnet $D/bench/FineTune.Bench.dll"; fx=FineTune.Tests/Fixtures/models
mark kernels; CUDA_VISIBLE_DEVICES=0 timeout 120 $b kernels --out $R/kernels.json > $R/kernels.txt 2>&1; echo "rc $? pass $(grep -c PASS $R/kernels.txt) fail $(grep -c FAIL $R/kernels.txt)"; grep -E "FAIL|rror" $R/kernels.txt | cut -c1-160 | head -5; grep -E "cross entropy|lm head loss" $R/kernels.txt | cut -c1-190
mark graph-check; timeout 150 $b graph-check $fx --out $R/graph-check.json > $R/graph-check.txt 2>&1; echo "rc $? pass $(grep -c PASS $R/graph-check.txt) fail $(grep -c FAIL $R/graph-check.txt)"; grep -E "FAIL|rror" $R/graph-check.txt | cut -c1-160 | head -6
mark waiting for the models; wait $mk; tail -1 $R/make.txt
show() { python3 - "$1" <<'PY' 2>/dev/null
import json, sys
d = json.load(open(sys.argv[1]))
g = d.get("cuda_graphs") or ""
if "tokens_per_s" in d:
    print("  tok/s", round(d.get("tokens_per_s", 0), 1), "| pct", d.get("long_micro_batch_percentile"), "| 2nd half", round(d.get("second_half_tokens_per_s") or 0, 1), "| first step s", round(d.get("first_step_s") or 0, 2), "| peak", round(d.get("peak_device_bytes", 0) / 2**30, 3), "GiB | loss10", d.get("mean_loss_last_10"), "| ckpt", d.get("gradient_checkpointing"), "| wall", d.get("wall_s"), "|", g[g.find("Long") if "Long" in g else g.find("CUDA graphs"):][:330])
else:
    print("  ", {k: v for k, v in d.items() if not isinstance(v, (list, dict)) and k not in ("text",)})
PY
}
cell() { # shape cell min_seconds_left (env: CUDA_VISIBLE_DEVICES / HF_GPU, PEAK_GPUS)
  local s=$1 c=$2 need=${3:-45}
  if [ $(left) -lt $need ]; then echo "SKIP $s $c (deadline)"; return; fi
  mark "$s $c"; OUT=$R timeout $(( $(left) - 3 )) bash tools/bench/run-gpu.sh $s 2000 $c > $R/log-$s-$c.txt 2>&1; tail -1 $R/log-$s-$c.txt | cut -c1-60
  show $R/bench/$s-$c.json
}
ft0() { CUDA_VISIBLE_DEVICES=0 PEAK_GPUS=0 cell "$@"; }
# Phase 1: alone on the machine.
ft0 qwen2-7b ft-qa-lora 50
PEAK_GPUS=0,1 cell qwen2-7b ft-qa-lora-2gpu 45
ft0 qwen2-7b ft-dense-lora 30
PEAK_GPUS=0,1 cell qwen2-7b ft-dense-lora-2gpu 25
mark dp-check; timeout 90 $b dp-check --model $fx/qwen2 --devices 2 --dtype bf16 --out $R/dp-check.json > $R/dp-check.txt 2>&1; echo "dp-check rc $?"; tail -2 $R/dp-check.txt | cut -c1-300
# Phase 2: HF on GPU 1 in the background, FineTune on GPU 0.
( hf1() { HF_GPU=1 PEAK_GPUS=1 cell "$@"; }
  hf1 qwen2-7b hf-qa-lora 110; hf1 qwen2-7b hf-qa-lora-flat 110; hf1 qwen2-7b hf-dense-lora 45
  hf1 qwen2-7b hf-generate 60; hf1 qwen2.5-0.5b hf-generate 30 ) > $R/hf-stream.txt 2>&1 &
hf=$!
mkdir -p $R/p95/bench; FT_ARGS="--long-micro-batch-percentile 0.95" CUDA_VISIBLE_DEVICES=0 PEAK_GPUS=0 R=$R/p95 cell qwen2-7b ft-qa-lora 50
ft0 qwen2-7b ft-qa-qlora 55
ft0 qwen2-7b ft-dense1-qlora 30
ft0 qwen2.5-0.5b ft-qa-lora 20
ft0 qwen2.5-0.5b ft-qa-qlora 20
ft0 qwen2-7b ft-generate 50
ft0 qwen2-7b ft-generate-qlora 50
ft0 qwen2.5-0.5b ft-generate 25
ft0 qwen2.5-0.5b ft-generate-qlora 25
mark waiting for HF; wait $hf; cat $R/hf-stream.txt
mark summary; python3 tools/bench/summarize.py $R/bench 2>&1 | grep -v "^|---" | head -40
cd $R && tar cJf $OUT/r.tar.xz . ; mark end
