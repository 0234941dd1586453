#!/usr/bin/env bash
# Lead's call 3 of 2026-11-30 (2 x H200): graph-check with gradient norms and variants; QLoRA 1 x 512 memory with sliced NF4
# quantization; dense 2 x 512 on one GPU (the data-parallel half step) and 4 x 512 on 2 GPUs, graphs on.
set -uo pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
D=.dev-lead; export DEVICE_DIR=$D
t0=$(date +%s); deadline=${DEADLINE:-330}
left() { echo $(( deadline - ($(date +%s) - t0) )); }
mark() { echo "== $(( $(date +%s) - t0 ))s $*"; }
mark start; nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader | tee $OUT/gpu.txt
source $D/on-gpu.sh $D/dotnet.tgz >/dev/null
source /opt/torch/.venv/bin/activate
mkdir -p /tmp/bench-models
python3 tools/bench/reference.py make-model --shape qwen2-7b --out /tmp/bench-models/qwen2-7b > $OUT/make7b.txt 2>&1 & mk=$!
b="dotnet $D/bench/FineTune.Bench.dll"; fx=FineTune.Tests/Fixtures/models
mark graph-check; timeout 150 $b graph-check $fx --out $OUT/graph-check.json > $OUT/graph-check.txt 2>&1; echo "rc $?"
python3 - $OUT/graph-check.json <<'PY'
import json, sys
for c in json.load(open(sys.argv[1]))["checks"]:
    print(c["case"], "PASS" if c["pass"] else "FAIL", "| loss diff graph", c["graph_vs_eager_max_loss_diff"], "eager", c["eager_vs_eager_max_loss_diff"], "| adapter", c["adapter_max_abs_diff"])
    print("   gn eager", c["eager_grad_norms"][:120]); print("   gn graph", c["graph_grad_norms"][:120])
PY
mark waiting for the 7B model; timeout $(( $(left) - 150 )) tail --pid=$mk -f /dev/null; tail -1 $OUT/make7b.txt | cut -c1-200
cell() { # name env cell
  local name=$1 envs=$2 c=$3
  if [ $(left) -lt 35 ]; then echo "SKIP $name (deadline)"; return; fi
  mark "$name"; env $envs OUT=$OUT/$name timeout $(( $(left) - 5 )) bash tools/bench/run-gpu.sh qwen2-7b 300 $c 2>&1 | grep -v bitsandbytes | tail -1 | cut -c1-100
  python3 - $OUT/$name/bench/qwen2-7b-$c.json <<'PY' 2>/dev/null
import json, sys
d = json.load(open(sys.argv[1]))
print({k: d.get(k) for k in ["tokens_per_s", "peak_device_bytes", "mean_loss_last_10", "wall_s", "cuda_graphs"]})
PY
}
cell qlora-on "FINETUNE_CUDA_GRAPHS=on" ft-dense1-qlora
cell qlora-off "FINETUNE_CUDA_GRAPHS=off" ft-dense1-qlora
mark dense-2x512-1gpu; timeout 60 $b train --model /tmp/bench-models/qwen2-7b --workload dense --dense-batch 2 --dense-steps 60 --out $OUT/half.json 2>&1 | tail -1 | python3 -c "import json,sys; d=json.loads(sys.stdin.read()); print({k: d.get(k) for k in ['tokens_per_s','wall_s','cuda_graphs']})"
[ $(nvidia-smi -L | wc -l) -ge 2 ] && cell dense2-on "FINETUNE_CUDA_GRAPHS=on" ft-dense-lora-2gpu
cell dense1-on "FINETUNE_CUDA_GRAPHS=on" ft-dense-lora
mark end
