#!/usr/bin/env bash
# Call 34 (2 x H200, nvidia-h200-x2), 2026-11-30 late: issue 17's cells in two more settings, main 395df61's engine:
# the tutorial's batch 1 x accumulation 4 (one epoch) and 8 x accumulation 2 over one epoch (call 31 ran three), each on
# 1 then 2 GPUs, nothing else on the machine. No checks (call 32 ran them on this engine).
set -uo pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
D=.dev-lead; export DEVICE_DIR=$D
t0=$(date +%s); deadline=${DEADLINE:-560}
left() { echo $(( deadline - ($(date +%s) - t0) )); }
mark() { echo "== $(( $(date +%s) - t0 ))s $*"; }
R=/tmp/r; mkdir -p $R/bench $R/acc2/bench $R/b1acc4/bench /tmp/bench-models
mark start; nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader | tee $R/gpu.txt
source $D/on-gpu.sh $D/dotnet.tgz >/dev/null
source /opt/torch/.venv/bin/activate
python3 tools/bench/reference.py make-data --out /tmp/qa.jsonl --rows 2000 > /dev/null
( python3 tools/bench/reference.py make-model --shape qwen2-7b --out /tmp/bench-models/qwen2-7b > $R/make.txt 2>&1 ) &
mk=$!
b="dotnet $D/bench/FineTune.Bench.dll"; fx=FineTune.Tests/Fixtures/models
mark waiting for the model; wait $mk; tail -1 $R/make.txt
show() { python3 - "$1" <<'PY' 2>/dev/null
import json, sys
d = json.load(open(sys.argv[1]))
g = d.get("cuda_graphs") or ""
print("  gpus", d.get("gpus"), "acc", d.get("accumulation"), "ep", d.get("epochs"), "steps", d.get("optimizer_steps"), "| tok/s", round(d.get("tokens_per_s", 0), 1), "| 2nd half", round(d.get("second_half_tokens_per_s") or 0, 1), "| first step s", round(d.get("first_step_s") or 0, 2), "| peak", round(d.get("peak_device_bytes", 0) / 2**30, 3), "GiB | loss10", round(d.get("mean_loss_last_10"), 5), "| wall", round(d.get("wall_s"), 2), "|", g[g.find("Long") if "Long" in g else g.find("CUDA graphs"):][:400])
PY
}
cell() { # shape cell min_seconds_left (env: CUDA_VISIBLE_DEVICES, PEAK_GPUS, FT_ARGS, R)
  local s=$1 c=$2 need=${3:-45}
  if [ $(left) -lt $need ]; then echo "SKIP $s $c (deadline)"; return; fi
  mark "$s $c ${FT_ARGS:-}"; OUT=$R timeout $(( $(left) - 3 )) bash tools/bench/run-gpu.sh $s 2000 $c > $R/log-$s-$c.txt 2>&1; tail -1 $R/log-$s-$c.txt | cut -c1-60
  show $R/bench/$s-$c.json
}
A1="--qa-batch 1 --accumulation 4"
FT_ARGS="$A1" R=$R/b1acc4 CUDA_VISIBLE_DEVICES=0 PEAK_GPUS=0 cell qwen2-7b ft-qa-lora 100
FT_ARGS="$A1" R=$R/b1acc4 PEAK_GPUS=0,1 cell qwen2-7b ft-qa-lora-2gpu 60
FT_ARGS="--accumulation 2" R=$R/acc2 CUDA_VISIBLE_DEVICES=0 PEAK_GPUS=0 cell qwen2-7b ft-qa-lora 45
FT_ARGS="--accumulation 2" R=$R/acc2 PEAK_GPUS=0,1 cell qwen2-7b ft-qa-lora-2gpu 30
mark summary; for d in $R/b1acc4/bench $R/acc2/bench; do python3 tools/bench/summarize.py $d 2>&1 | grep -v "^|---" | head -6; done
cd $R && tar cJf $OUT/r.tar.xz . ; mark end
