#!/usr/bin/env bash
# Call 19 (2 x H200, nvidia-h200-x2): this session's engine (graph shapes captured before training, largest first; the loss's
# gradient made in forward; fused RoPE and SwiGLU backward kernels). Checks first, then issue 17's and 14's cells in priority order.
# HF's cells see one GPU (run-gpu.sh's HF_GPU=0); FineTune's 1-GPU cells CUDA_VISIBLE_DEVICES=0.
set -uo pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
D=.dev-lead; export DEVICE_DIR=$D
t0=$(date +%s); deadline=${DEADLINE:-575}
left() { echo $(( deadline - ($(date +%s) - t0) )); }
mark() { echo "== $(( $(date +%s) - t0 ))s $*"; }
mark start; nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader | tee $OUT/gpu.txt
source $D/on-gpu.sh $D/dotnet.tgz >/dev/null
source /opt/torch/.venv/bin/activate
mkdir -p /tmp/bench-models $OUT/bench
python3 tools/bench/reference.py make-data --out /tmp/qa.jsonl --rows 2000 > /dev/null
python3 tools/bench/reference.py make-model --shape qwen2-7b --out /tmp/bench-models/qwen2-7b > $OUT/make.txt 2>&1 &
mk=$!
b="dotnet $D/bench/FineTune.Bench.dll"; fx=FineTune.Tests/Fixtures/models
mark kernels; CUDA_VISIBLE_DEVICES=0 timeout 120 $b kernels --out $OUT/kernels.json > $OUT/kernels.txt 2>&1; echo "rc $? pass $(grep -c PASS $OUT/kernels.txt) fail $(grep -c FAIL $OUT/kernels.txt)"; grep -E "FAIL|rror" $OUT/kernels.txt | cut -c1-160 | head -5; grep -iE "rotary|rope|silu mul grad" $OUT/kernels.txt | cut -c1-150 | head -12
mark graph-check; timeout 150 $b graph-check $fx --out $OUT/graph-check.json > $OUT/graph-check.txt 2>&1; echo "rc $? pass $(grep -c PASS $OUT/graph-check.txt) fail $(grep -c FAIL $OUT/graph-check.txt)"; grep -E "FAIL|rror|rotary|rope" $OUT/graph-check.txt | cut -c1-160 | head -6
python3 - $OUT/graph-check.json <<'PY'
import json, sys
for c in json.load(open(sys.argv[1]))["checks"]:
    if "graph_vs_eager_max_loss_diff" in c and ("GPUs" in c["case"] or "8-119" in c["case"]):
        print(c["case"][:84], "PASS" if c["pass"] else "FAIL", "| loss", c["graph_vs_eager_max_loss_diff"], "| adapter", c["adapter_max_abs_diff"], "|", c["graph_log"][12:90])
PY
mark waiting for the model; wait $mk; tail -1 $OUT/make.txt
cell() { # shape cell min_seconds_left [env...]
  local s=$1 c=$2 need=${3:-45}
  if [ $(left) -lt $need ]; then echo "SKIP $s $c (deadline)"; return; fi
  mark "$s $c"; OUT=$OUT timeout $(( $(left) - 3 )) bash tools/bench/run-gpu.sh $s 2000 $c > $OUT/log-$s-$c.txt 2>&1; tail -1 $OUT/log-$s-$c.txt | cut -c1-60
  python3 - $OUT/bench/$s-$c.json <<'PY' 2>/dev/null
import json, sys
d = json.load(open(sys.argv[1]))
g = d.get("cuda_graphs") or ""
print("  tok/s", round(d.get("tokens_per_s", 0), 1), "| 2nd half", round(d.get("second_half_tokens_per_s") or 0, 1), "| first step s", round(d.get("first_step_s") or 0, 2), "| peak", round(d.get("peak_device_bytes", 0) / 2**30, 3), "GiB | loss10", d.get("mean_loss_last_10"), "| wall", d.get("wall_s"), "|", g[g.find("CUDA graphs"):][:330])
PY
}
ft1() { CUDA_VISIBLE_DEVICES=0 cell "$@"; }
ft1 qwen2-7b ft-qa-lora 50
cell qwen2-7b ft-qa-lora-2gpu 45
cell qwen2-7b hf-qa-lora 110
cell qwen2-7b hf-qa-lora-flat 110
ft1 qwen2-7b ft-dense-lora 30
cell qwen2-7b ft-dense-lora-2gpu 25
cell qwen2-7b hf-dense-lora 45
mark dp-check; if [ $(left) -gt 70 ]; then timeout $(( $(left) - 5 )) $b dp-check --model $fx/qwen2 --devices 2 --dtype bf16 --out $OUT/dp-check.json > $OUT/dp-check.txt 2>&1; echo "dp-check rc $?"; tail -3 $OUT/dp-check.txt | cut -c1-300; fi
ft1 qwen2-7b ft-dense1-qlora 30
ft1 qwen2-7b ft-qa-qlora 70
mark summary; python3 tools/bench/summarize.py $OUT/bench 2>&1 | grep -v "^|---" | head -24
mark end
