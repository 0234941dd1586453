#!/usr/bin/env bash
# Lead's final call F1, session of 2026-11-30 04:21 (2 x H200 where lent): main with flash attention, fused dropout + LoRA A
# (q/k/v grouped), packed rows padded for graphs where the run measures itself host-bound. Checks (flash-check, kernels,
# lora-check, graph-check), then 7B Q&A 2,000 rows: FineTune 16-bit, HF padded, HF padding-free, FineTune on 2 GPUs;
# 7B dense 4 x 512: FineTune, HF, FineTune on 2 GPUs. Priority order under a deadline.
set -uo pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
D=.dev-lead; export DEVICE_DIR=$D
t0=$(date +%s); deadline=${DEADLINE:-560}
left() { echo $(( deadline - ($(date +%s) - t0) )); }
mark() { echo "== $(( $(date +%s) - t0 ))s $*"; }
mark start; nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader | tee $OUT/gpu.txt
source $D/on-gpu.sh $D/dotnet.tgz >/dev/null
source /opt/torch/.venv/bin/activate
mkdir -p /tmp/bench-models $OUT/bench
[ -d /tmp/bench-models/qwen2-7b ] || { python3 tools/bench/reference.py make-model --shape qwen2-7b --out /tmp/bench-models/qwen2-7b > $OUT/make.txt 2>&1 & }
mk=$!
b="dotnet $D/bench/FineTune.Bench.dll"; fx=FineTune.Tests/Fixtures/models
mark flash-check; timeout 60 $b flash-check --out $OUT/flash-check.json > $OUT/flash-check.txt 2>&1; echo "rc $?"; grep -E "flash-check:" $OUT/flash-check.txt
mark kernels; timeout 90 $b kernels --out $OUT/kernels.json > $OUT/kernels.txt 2>&1; echo "rc $? pass $(grep -c PASS $OUT/kernels.txt) fail $(grep -c FAIL $OUT/kernels.txt)"; grep -E "FAIL|rror" $OUT/kernels.txt | cut -c1-160 | head -5
mark lora-check; timeout 90 $b lora-check $fx > $OUT/lora-check.txt 2>&1; echo "rc $? pass $(grep -c PASS $OUT/lora-check.txt) fail $(grep -c FAIL $OUT/lora-check.txt)"; grep -E "FAIL|rror|qkv_shared" $OUT/lora-check.txt | cut -c1-200 | head -6
mark graph-check; timeout 150 $b graph-check $fx --out $OUT/graph-check.json > $OUT/graph-check.txt 2>&1; echo "rc $?"; grep -E "^unit" $OUT/graph-check.txt | cut -c1-90
python3 - $OUT/graph-check.json <<'PY'
import json, sys
for c in json.load(open(sys.argv[1]))["checks"]:
    if "graph_vs_eager_max_loss_diff" in c:
        print(c["case"][:84], "PASS" if c["pass"] else "FAIL", "| loss", c["graph_vs_eager_max_loss_diff"], "eager", c["eager_vs_eager_max_loss_diff"], "| adapter", c["adapter_max_abs_diff"], "|", c["graph_log"][12:62])
PY
mark waiting for the model; timeout $(( $(left) - 200 )) tail --pid=$mk -f /dev/null 2>/dev/null; ls /tmp/bench-models
cell() { # shape cell
  local s=$1 c=$2
  if [ $(left) -lt 45 ]; then echo "SKIP $s $c (deadline)"; return; fi
  mark "$s $c"; OUT=$OUT timeout $(( $(left) - 5 )) bash tools/bench/run-gpu.sh $s 2000 $c > $OUT/log-$s-$c.txt 2>&1; tail -1 $OUT/log-$s-$c.txt | cut -c1-50
  python3 - $OUT/bench/$s-$c.json <<'PY' 2>/dev/null
import json, sys
d = json.load(open(sys.argv[1]))
print("  tok/s", round(d.get("tokens_per_s", 0)), "| peak", round(d.get("peak_device_bytes", 0) / 2**30, 3), "GiB | loss10", d.get("mean_loss_last_10"), "| wall", d.get("wall_s"), "|", (d.get("cuda_graphs") or "")[30:330])
PY
}
two=$(nvidia-smi -L | wc -l)
cell qwen2-7b ft-qa-lora
cell qwen2-7b hf-qa-lora
cell qwen2-7b hf-qa-lora-flat
[ $two -ge 2 ] && cell qwen2-7b ft-qa-lora-2gpu
cell qwen2-7b ft-dense-lora
cell qwen2-7b hf-dense-lora
[ $two -ge 2 ] && cell qwen2-7b ft-dense-lora-2gpu
mark summary; python3 tools/bench/summarize.py $OUT/bench 2>&1 | grep -v "^|---" | head -20
mark end
