#!/usr/bin/env bash
# Lead's call 13, session of 2026-11-30 04:21 (1 x H200), main at 073fbfb (flash attention + fused dropout/LoRA A).
# flash-check, kernels, lora-check, graph-check; 7B Q&A 2,000 rows 16-bit and QLoRA; 0.5B Q&A 2,000 rows 16-bit and QLoRA.
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
[ -d /tmp/bench-models/qwen2-7b ] || { python3 tools/bench/reference.py make-model --shape qwen2-7b --out /tmp/bench-models/qwen2-7b > $OUT/make.txt 2>&1 & }
mk=$!
b="dotnet $D/bench/FineTune.Bench.dll"; fx=FineTune.Tests/Fixtures/models
mark flash-check; timeout 90 $b flash-check --out $OUT/flash-check.json > $OUT/flash-check.txt 2>&1; echo "rc $?"; grep -v "^{\"gpu" $OUT/flash-check.txt | cut -c1-330
mark kernels; timeout 120 $b kernels --out $OUT/kernels.json > $OUT/kernels.txt 2>&1; echo "rc $?"; grep -ciE "pass" $OUT/kernels.txt; grep -iE "fail|dropout\+lora|rror" $OUT/kernels.txt | cut -c1-200 | head -20
mark lora-check; timeout 120 $b lora-check $fx > $OUT/lora-check.txt 2>&1; echo "rc $?"; grep -iE "fail|device-seeded|fused functions|rror" $OUT/lora-check.txt | cut -c1-200 | head -16
mark graph-check; timeout 150 $b graph-check $fx --out $OUT/graph-check.json > $OUT/graph-check.txt 2>&1; echo "rc $?"; grep -E "unit|rror|xception" $OUT/graph-check.txt | cut -c1-140 | head -9
python3 - $OUT/graph-check.json <<'PY'
import json, sys
for c in json.load(open(sys.argv[1]))["checks"]:
    if "graph_vs_eager_max_loss_diff" in c:
        print(c["case"][:70], "PASS" if c["pass"] else "FAIL", "| loss diff graph", c["graph_vs_eager_max_loss_diff"], "eager", c["eager_vs_eager_max_loss_diff"], "| adapter", c["adapter_max_abs_diff"], "|", c["graph_log"][:70])
PY
mark waiting for the model; timeout $(( $(left) - 150 )) tail --pid=$mk -f /dev/null 2>/dev/null; ls /tmp/bench-models
cell() { # name shape env cell
  local name=$1 s=$2 envs=$3 c=$4
  if [ $(left) -lt 40 ]; then echo "SKIP $name (deadline)"; return; fi
  mark "$name"; env $envs OUT=$OUT/$name timeout $(( $(left) - 5 )) bash tools/bench/run-gpu.sh $s 2000 $c 2>&1 | grep -v bitsandbytes | tail -1 | cut -c1-60
  python3 - $OUT/$name/bench/$s-$c.json <<'PY' 2>/dev/null
import json, sys
d = json.load(open(sys.argv[1]))
print({k: d.get(k) for k in ["tokens_per_s", "peak_device_bytes", "mean_loss_last_10", "wall_s"]}, round(d.get("peak_device_bytes", 0) / 2**30, 3), "GiB |", d.get("cuda_graphs","")[:90])
PY
}
cell qa7-lora qwen2-7b "X=1" ft-qa-lora
cell qa7-qlora qwen2-7b "X=1" ft-qa-qlora
cell qa05-lora qwen2.5-0.5b "X=1" ft-qa-lora
cell qa05-qlora qwen2.5-0.5b "X=1" ft-qa-qlora
mark end
