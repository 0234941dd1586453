#!/usr/bin/env bash
# Call 31 (2 x H200, nvidia-h200-x2), 2026-11-30 late: issue 17 with packed rows dealt row by row (each replica packs
# micro-batches as large as one GPU's). Phase 0: data, model; kernels and graph-check meanwhile. Phase 1 (nothing else
# on the machine): Q&A 8 x accumulation 2, the tutorial's 3 epochs, 1 then 2 GPUs; dense 4 x 512 x accumulation 2, 60
# steps, 1 then 2 GPUs; the old 8-rows-a-step cells 1 and 2 GPUs; dp-check.
set -uo pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
D=.dev-lead; export DEVICE_DIR=$D
t0=$(date +%s); deadline=${DEADLINE:-560}
left() { echo $(( deadline - ($(date +%s) - t0) )); }
mark() { echo "== $(( $(date +%s) - t0 ))s $*"; }
R=/tmp/r; mkdir -p $R/bench $R/acc2/bench /tmp/bench-models
mark start; nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader | tee $R/gpu.txt
source $D/on-gpu.sh $D/dotnet.tgz >/dev/null
source /opt/torch/.venv/bin/activate
python3 tools/bench/reference.py make-data --out /tmp/qa.jsonl --rows 2000 > /dev/null
( python3 tools/bench/reference.py make-model --shape qwen2-7b --out /tmp/bench-models/qwen2-7b > $R/make.txt 2>&1 ) &
mk=$!
b="dotnet $D/bench/FineTune.Bench.dll"; fx=FineTune.Tests/Fixtures/models
mark kernels; CUDA_VISIBLE_DEVICES=0 timeout 120 $b kernels --out $R/kernels.json > $R/kernels.txt 2>&1; echo "rc $? pass $(grep -c PASS $R/kernels.txt) fail $(grep -c FAIL $R/kernels.txt)"; grep -E "FAIL|rror" $R/kernels.txt | cut -c1-160 | head -5
mark graph-check; timeout 150 $b graph-check $fx --out $R/graph-check.json > $R/graph-check.txt 2>&1; echo "rc $? pass $(grep -c PASS $R/graph-check.txt) fail $(grep -c FAIL $R/graph-check.txt)"; grep -E "FAIL|rror" $R/graph-check.txt | cut -c1-160 | head -6
mark dp-check; timeout 90 $b dp-check --model $fx/qwen2 --devices 2 --dtype bf16 --out $R/dp-check.json > $R/dp-check.txt 2>&1; echo "dp-check rc $?"; tail -1 $R/dp-check.txt | cut -c1-420
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
A2="--accumulation 2"
FT_ARGS="$A2 --epochs 3" R=$R/acc2 CUDA_VISIBLE_DEVICES=0 PEAK_GPUS=0 cell qwen2-7b ft-qa-lora 110
FT_ARGS="$A2 --epochs 3" R=$R/acc2 PEAK_GPUS=0,1 cell qwen2-7b ft-qa-lora-2gpu 70
FT_ARGS="$A2" R=$R/acc2 CUDA_VISIBLE_DEVICES=0 PEAK_GPUS=0 cell qwen2-7b ft-dense-lora 40
FT_ARGS="$A2" R=$R/acc2 PEAK_GPUS=0,1 cell qwen2-7b ft-dense-lora-2gpu 30
CUDA_VISIBLE_DEVICES=0 PEAK_GPUS=0 cell qwen2-7b ft-qa-lora 45
PEAK_GPUS=0,1 cell qwen2-7b ft-qa-lora-2gpu 35
mark summary; for d in $R/acc2/bench $R/bench; do python3 tools/bench/summarize.py $d 2>&1 | grep -v "^|---" | head -12; done
cd $R && tar cJf $OUT/r.tar.xz . ; mark end
