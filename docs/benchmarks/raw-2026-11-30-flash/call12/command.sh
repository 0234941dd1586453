#!/usr/bin/env bash
# Lead's call 12, session of 2026-11-30 04:21 (1 x H200): flash attention through aten::_flash_attention_forward (branch lead, ddc91c1).
# Symbol check in the machine's libtorch, flash-check (vs the SDPA path), graph-check (training with graphs, bit-equal to eager),
# 7B Q&A 2,000 rows with flash on and off, 7B dense 4 x 512 with flash on.
set -uo pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
D=.dev-lead; export DEVICE_DIR=$D
t0=$(date +%s); deadline=${DEADLINE:-420}
left() { echo $(( deadline - ($(date +%s) - t0) )); }
mark() { echo "== $(( $(date +%s) - t0 ))s $*"; }
mark start; nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader | tee $OUT/gpu.txt
source $D/on-gpu.sh $D/dotnet.tgz >/dev/null
source /opt/torch/.venv/bin/activate
mkdir -p /tmp/bench-models
python3 tools/bench/reference.py make-model --shape qwen2-7b --out /tmp/bench-models/qwen2-7b > $OUT/make.txt 2>&1 & mk=$!
nm -D --defined-only $FINETUNE_LIBTORCH/libtorch_cpu.so | grep -E "_flash_attention_(forward|backward)4call" | awk '{print $3}' | tee $OUT/flash-symbols.txt
nm -D --defined-only $FINETUNE_LIBTORCH/libtorch_cpu.so | grep -E "_flash_attention_forward4call" | awk '{print $3}' | c++filt
b="dotnet $D/bench/FineTune.Bench.dll"; fx=FineTune.Tests/Fixtures/models
mark flash-check; timeout 90 $b flash-check --out $OUT/flash-check.json > $OUT/flash-check.txt 2>&1; echo "rc $?"; grep -v "^{\"gpu" $OUT/flash-check.txt | cut -c1-400
mark graph-check; timeout 150 $b graph-check $fx --out $OUT/graph-check.json > $OUT/graph-check.txt 2>&1; echo "rc $?"; grep -E "unit|rror|xception" $OUT/graph-check.txt | cut -c1-160 | head -7
python3 - $OUT/graph-check.json <<'PY'
import json, sys
for c in json.load(open(sys.argv[1]))["checks"]:
    if "graph_vs_eager_max_loss_diff" in c:
        print(c["case"], "PASS" if c["pass"] else "FAIL", "| loss diff graph", c["graph_vs_eager_max_loss_diff"], "eager", c["eager_vs_eager_max_loss_diff"], "other", round(c["other_seed_max_loss_diff"],4), "| adapter", c["adapter_max_abs_diff"], "|", c["graph_log"][:110])
PY
mark waiting for the model; timeout $(( $(left) - 150 )) tail --pid=$mk -f /dev/null; grep saved $OUT/make.txt | cut -c1-120
cell() { # name env cell
  local name=$1 envs=$2 c=$3
  if [ $(left) -lt 50 ]; then echo "SKIP $name (deadline)"; return; fi
  mark "$name"; env $envs OUT=$OUT/$name timeout $(( $(left) - 5 )) bash tools/bench/run-gpu.sh qwen2-7b 2000 $c 2>&1 | grep -v bitsandbytes | tail -1 | cut -c1-80
  python3 - $OUT/$name/bench/qwen2-7b-$c.json <<'PY' 2>/dev/null
import json, sys
d = json.load(open(sys.argv[1]))
print({k: d.get(k) for k in ["tokens_per_s", "peak_device_bytes", "mean_loss_last_10", "wall_s", "cuda_graphs", "flash_attention"]}, round(d.get("peak_device_bytes", 0) / 2**30, 3), "GiB")
PY
}
cell qa-flash "FINETUNE_FLASH_ATTENTION=on" ft-qa-lora
cell qa-sdpa "FINETUNE_FLASH_ATTENTION=off" ft-qa-lora
cell dense-flash "FINETUNE_FLASH_ATTENTION=on" ft-dense-lora
mark end
