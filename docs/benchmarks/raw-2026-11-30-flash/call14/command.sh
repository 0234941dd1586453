#!/usr/bin/env bash
# Lead's call 14 (1 x H200): branch lead (flash attention, fused dropout + LoRA A, packed rows padded to buckets for graphs
# where the host bounds the step). graph-check (incl. rows of 8-119 tokens), 7B and 0.5B QLoRA Q&A 2,000 rows, 7B 16-bit Q&A.
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
mark graph-check; timeout 200 $b graph-check $fx --out $OUT/graph-check.json > $OUT/graph-check.txt 2>&1; echo "rc $?"; grep -E "unit|rror|xception" $OUT/graph-check.txt | cut -c1-140 | head -12
python3 - $OUT/graph-check.json <<'PY'
import json, sys
for c in json.load(open(sys.argv[1]))["checks"]:
    if "graph_vs_eager_max_loss_diff" in c:
        print(c["case"][:80], "PASS" if c["pass"] else "FAIL", "| loss diff graph", c["graph_vs_eager_max_loss_diff"], "eager", c["eager_vs_eager_max_loss_diff"], "other", round(c["other_seed_max_loss_diff"],3), "| adapter", c["adapter_max_abs_diff"], "|", c["graph_log"][12:80])
PY
mark waiting for the model; timeout $(( $(left) - 150 )) tail --pid=$mk -f /dev/null 2>/dev/null; ls /tmp/bench-models
cell() { # name shape env cell
  local name=$1 s=$2 envs=$3 c=$4
  if [ $(left) -lt 40 ]; then echo "SKIP $name (deadline)"; return; fi
  mark "$name"; env $envs OUT=$OUT/$name timeout $(( $(left) - 5 )) bash tools/bench/run-gpu.sh $s 2000 $c 2>&1 | grep -v bitsandbytes | tail -1 | cut -c1-60
  python3 - $OUT/$name/bench/$s-$c.json <<'PY' 2>/dev/null
import json, sys
d = json.load(open(sys.argv[1]))
print({k: d.get(k) for k in ["tokens_per_s", "mean_loss_last_10", "wall_s"]}, round(d.get("peak_device_bytes", 0) / 2**30, 3), "GiB |", d.get("cuda_graphs","")[30:230])
PY
}
cell qa7-qlora qwen2-7b "X=1" ft-qa-qlora
cell qa05-qlora qwen2.5-0.5b "X=1" ft-qa-qlora
cell qa7-lora qwen2-7b "X=1" ft-qa-lora
mark end
