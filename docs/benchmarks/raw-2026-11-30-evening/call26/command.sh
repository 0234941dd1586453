#!/usr/bin/env bash
# Call 26 (1 x H200), for the session after 2026-11-30 (that session had no device time left): main 9aae371 or later.
# 1. Checks of what that session changed without a GPU: `kernels` (silu_mul_dropout cases), `graph-check` (a bf16 case of
#    rows of 8-119 tokens, whose long micro-batches checkpoint layers inside their graphs; the SwiGLU + down LoRA A unit),
#    `lora-check` (the fused SwiGLU + down function against the torch graph through a model, with device-drawn masks), parity.
# 2. 7B Q&A memory: long micro-batches on (the default) and off, the loss in chunks of 64 rows, LoRA on the MLP too;
#    HF's padding-free cell for the peak ratio in the same call.
# Publish first (from a worktree): tools/debian13 dotnet publish tools/FineTune.Bench -c Release -r linux-x64
#   --self-contained false -o /work/main/.dev-lead/bench -p:TorchBackend=none
set -uo pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 CUDA_VISIBLE_DEVICES=0
D=.dev-lead; export DEVICE_DIR=$D
t0=$(date +%s); deadline=${DEADLINE:-560}
left() { echo $(( deadline - ($(date +%s) - t0) )); }
mark() { echo "== $(( $(date +%s) - t0 ))s $*"; }
R=/tmp/r; mkdir -p $R/bench /tmp/bench-models
mark start; nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader | tee $R/gpu.txt
source $D/on-gpu.sh $D/dotnet.tgz >/dev/null
source /opt/torch/.venv/bin/activate
python3 tools/bench/reference.py make-data --out /tmp/qa.jsonl --rows 2000 > /dev/null
( python3 tools/bench/reference.py make-model --shape qwen2-7b --out /tmp/bench-models/qwen2-7b > $R/make.txt 2>&1 ) &
mk=$!
b="dotnet $D/bench/FineTune.Bench.dll"; fx=FineTune.Tests/Fixtures/models
mark kernels; timeout 100 $b kernels --out $R/kernels.json > $R/kernels.txt 2>&1; echo "rc $? pass $(grep -c PASS $R/kernels.txt) fail $(grep -c FAIL $R/kernels.txt)"; grep -E "FAIL|rror" $R/kernels.txt | cut -c1-200 | head -8; grep -E "silu mul" $R/kernels.txt | cut -c1-170 | head -20
mark graph-check; timeout 150 $b graph-check $fx --out $R/graph-check.json > $R/graph-check.txt 2>&1; echo "rc $? pass $(grep -c PASS $R/graph-check.txt) fail $(grep -c FAIL $R/graph-check.txt)"; grep -E "FAIL|rror|8-119|silu" $R/graph-check.txt | cut -c1-260 | head -8
mark lora-check; timeout 60 $b lora-check $fx > $R/lora-check.txt 2>&1; echo "rc $? pass $(grep -c PASS $R/lora-check.txt) fail $(grep -c FAIL $R/lora-check.txt)"; grep -E "FAIL|rror" $R/lora-check.txt | cut -c1-200 | head -4
mark parity; timeout 60 $b parity $fx > $R/parity.txt 2>&1; echo "parity rc $?"; tail -1 $R/parity.txt | cut -c1-200
mark waiting for the model; wait $mk; tail -1 $R/make.txt
show() { python3 - "$1" <<'PY' 2>/dev/null
import json, sys
d = json.load(open(sys.argv[1]))
g = d.get("cuda_graphs") or ""
print("  tok/s", round(d.get("tokens_per_s", 0), 1), "| 2nd half", round(d.get("second_half_tokens_per_s") or 0, 1), "| peak", round(d.get("peak_device_bytes", 0) / 2**30, 3), "GiB | loss10", d.get("mean_loss_last_10"), "| targets", d.get("lora_targets"), "| long", d.get("long_micro_batches"), "| chunk", d.get("loss_chunk"), "|", g[g.find("CUDA graphs") if "Long" not in g else g.find("Long"):][:420])
PY
}
cell() { local out=$1 s=$2 c=$3 need=${4:-45}
  if [ $(left) -lt $need ]; then echo "SKIP $out $c (deadline)"; return; fi
  mkdir -p $out/bench; mark "$s $c ${FT_ARGS:-}"; OUT=$out timeout $(( $(left) - 3 )) bash tools/bench/run-gpu.sh $s 2000 $c > $out/log-$s-$c.txt 2>&1; tail -1 $out/log-$s-$c.txt | cut -c1-60
  show $out/bench/$s-$c.json; }
cell $R qwen2-7b ft-qa-lora 45
cell $R qwen2-7b ft-qa-lora-keep 45
FT_ARGS="--loss-chunk 64" cell $R/chunk64 qwen2-7b ft-qa-lora 45
cell $R qwen2-7b ft-qa-lora-mlp 45
cell $R qwen2-7b hf-qa-lora-flat 100
cd $R && tar cJf $OUT/r.tar.xz . ; mark end
