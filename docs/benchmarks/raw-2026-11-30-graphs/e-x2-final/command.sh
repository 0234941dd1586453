#!/usr/bin/env bash
# Lead's call 6 of 2026-11-30 (2 x H200): CUDA graphs only for repeating shapes, loss chunk 256, sliced NF4 quantization
# (branch lead). graph-check (1 and 2 GPUs), the four QLoRA memory cells the estimate is calibrated on, 7B dense 4 x 512
# and Q&A on 1 and 2 GPUs, dp-check.
set -uo pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
D=.dev-lead; export DEVICE_DIR=$D
t0=$(date +%s); deadline=${DEADLINE:-400}
left() { echo $(( deadline - ($(date +%s) - t0) )); }
mark() { echo "== $(( $(date +%s) - t0 ))s $*"; }
mark start; nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader | tee $OUT/gpu.txt
source $D/on-gpu.sh $D/dotnet.tgz >/dev/null
source /opt/torch/.venv/bin/activate
mkdir -p /tmp/bench-models
(python3 tools/bench/reference.py make-model --shape qwen2-7b --out /tmp/bench-models/qwen2-7b; python3 tools/bench/reference.py make-model --shape qwen2.5-0.5b --out /tmp/bench-models/qwen2.5-0.5b) > $OUT/make.txt 2>&1 & mk=$!
b="dotnet $D/bench/FineTune.Bench.dll"; fx=FineTune.Tests/Fixtures/models
mark graph-check; timeout 150 $b graph-check $fx --out $OUT/graph-check.json > $OUT/graph-check.txt 2>&1; echo "rc $?"; grep -E "unit|rror|xception" $OUT/graph-check.txt | cut -c1-150 | head
python3 - $OUT/graph-check.json <<'PY'
import json, sys
for c in json.load(open(sys.argv[1]))["checks"]:
    if "graph_vs_eager_max_loss_diff" in c:
        print(c["case"], "PASS" if c["pass"] else "FAIL", "| loss diff graph", c["graph_vs_eager_max_loss_diff"], "eager", c["eager_vs_eager_max_loss_diff"], "other seed", round(c["other_seed_max_loss_diff"],4), "| adapter", c["adapter_max_abs_diff"], "|", c["graph_log"][:60], "| s", round(c["eager_s"],2), round(c["graph_s"],2))
PY
mark dp-check; timeout 90 $b dp-check --model $fx/qwen2 --devices 2 --dtype bf16 --out $OUT/dp-check.json 2>&1 | tail -1 | cut -c1-420
mark waiting for the models; timeout $(( $(left) - 200 )) tail --pid=$mk -f /dev/null; grep saved $OUT/make.txt | cut -c1-120
cell() { # shape cell
  local s=$1 c=$2
  if [ $(left) -lt 35 ]; then echo "SKIP $s $c (deadline)"; return; fi
  mark "$s $c"; OUT=$OUT timeout $(( $(left) - 5 )) bash tools/bench/run-gpu.sh $s 2000 $c 2>&1 | grep -v bitsandbytes | tail -1 | cut -c1-80
  python3 - $OUT/bench/$s-$c.json <<'PY' 2>/dev/null
import json, sys
d = json.load(open(sys.argv[1]))
print({k: d.get(k) for k in ["tokens_per_s", "peak_device_bytes", "mean_loss_last_10", "wall_s", "cuda_graphs"]}, round(d.get("peak_device_bytes", 0) / 2**30, 3), "GiB")
PY
}
cell qwen2-7b ft-dense1-qlora
cell qwen2-7b ft-dense1-qlora-keep
cell qwen2.5-0.5b ft-dense1-qlora
cell qwen2.5-0.5b ft-dense1-qlora-keep
cell qwen2-7b ft-dense-lora
cell qwen2-7b ft-dense-lora-2gpu
cell qwen2-7b ft-qa-lora
cell qwen2-7b ft-qa-lora-2gpu
mark end
