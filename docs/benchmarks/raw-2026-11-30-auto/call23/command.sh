#!/usr/bin/env bash
# Call 23 (1 x H200): the rotary kernels rewritten (a thread per pair, 32-bit index arithmetic, output laid out (B, T, nH, hD)).
# Checks first (kernels, graph-check, lora-check), then 7B dense and Q&A FineTune cells.
set -uo pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 CUDA_VISIBLE_DEVICES=0
D=.dev-lead; export DEVICE_DIR=$D
t0=$(date +%s); deadline=${DEADLINE:-300}
left() { echo $(( deadline - ($(date +%s) - t0) )); }
mark() { echo "== $(( $(date +%s) - t0 ))s $*"; }
mark start; nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader
source $D/on-gpu.sh $D/dotnet.tgz >/dev/null
source /opt/torch/.venv/bin/activate
mkdir -p /tmp/bench-models /tmp/r/bench
python3 tools/bench/reference.py make-data --out /tmp/qa.jsonl --rows 2000 > /dev/null
python3 tools/bench/reference.py make-model --shape qwen2-7b --out /tmp/bench-models/qwen2-7b > /tmp/r/make.txt 2>&1 &
mk=$!
b="dotnet $D/bench/FineTune.Bench.dll"; fx=FineTune.Tests/Fixtures/models
mark kernels; timeout 120 $b kernels --out /tmp/r/kernels.json > /tmp/r/kernels.txt 2>&1; echo "rc $? pass $(grep -c PASS /tmp/r/kernels.txt) fail $(grep -c FAIL /tmp/r/kernels.txt)"; grep -E "FAIL|rror" /tmp/r/kernels.txt | cut -c1-160 | head -5; grep -iE "rotary" /tmp/r/kernels.txt | cut -c1-150 | head -14
mark graph-check; timeout 150 $b graph-check $fx --out /tmp/r/graph-check.json > /tmp/r/graph-check.txt 2>&1; echo "rc $? pass $(grep -c PASS /tmp/r/graph-check.txt) fail $(grep -c FAIL /tmp/r/graph-check.txt)"; grep -E "FAIL|rror|rotary" /tmp/r/graph-check.txt | cut -c1-160 | head -6
mark lora-check; timeout 100 $b lora-check $fx > /tmp/r/lora-check.txt 2>&1; echo "rc $?"; tail -6 /tmp/r/lora-check.txt | cut -c1-200
mark flash-check; timeout 90 $b flash-check --out /tmp/r/flash-check.json > /tmp/r/flash-check.txt 2>&1; echo "rc $?"; grep -v '^{"gpu' /tmp/r/flash-check.txt | cut -c1-250 | tail -8
mark parity; timeout 90 $b parity $fx > /tmp/r/parity.txt 2>&1; echo "parity rc $?"; grep -i -E "greedy|fail|mismatch|max" /tmp/r/parity.txt | head -10 | cut -c1-250
mark waiting for the model; wait $mk; tail -1 /tmp/r/make.txt
show() { python3 - "$1" <<'PY' 2>/dev/null
import json, sys
d = json.load(open(sys.argv[1]))
g = d.get("cuda_graphs") or ""
print("  tok/s", round(d.get("tokens_per_s", 0), 1), "| 2nd half", round(d.get("second_half_tokens_per_s") or 0, 1), "| first step s", round(d.get("first_step_s") or 0, 2), "| peak", round(d.get("peak_device_bytes", 0) / 2**30, 3), "GiB | loss10", d.get("mean_loss_last_10"), "| ckpt", d.get("gradient_checkpointing"), "| wall", d.get("wall_s"), "|", g[g.find("CUDA graphs"):][:300])
PY
}
cell() { local s=$1 c=$2 need=${3:-45}
  if [ $(left) -lt $need ]; then echo "SKIP $s $c (deadline)"; return; fi
  mark "$s $c"; OUT=/tmp/r timeout $(( $(left) - 3 )) bash tools/bench/run-gpu.sh $s 2000 $c > /tmp/r/log-$s-$c.txt 2>&1; tail -1 /tmp/r/log-$s-$c.txt | cut -c1-60
  show /tmp/r/bench/$s-$c.json; }
cell qwen2-7b ft-dense-lora 30
cell qwen2-7b ft-qa-lora 50
cd /tmp/r && tar cJf $OUT/r.tar.xz --exclude='*.safetensors' . ; mark end
