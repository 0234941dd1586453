#!/usr/bin/env bash
# Lead's call, 2026-11-30 (one H200, main at 4fb7c4f): QLoRA Q&A against our 16-bit Q&A on both shapes (issue 14's 70 %
# target), 7B QLoRA dense 1 x 512 with checkpointing, 7B 16-bit greedy folded vs unfolded with the near-tie report, then
# 7B dense 4 x 512 both stacks. Priority order under a deadline. Never a bare `wait`.
set -uo pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
D=.dev-lead; export DEVICE_DIR=$D
t0=$(date +%s); deadline=${DEADLINE:-330}
left() { echo $(( deadline - ($(date +%s) - t0) )); }
mark() { echo "== $(( $(date +%s) - t0 ))s $*"; }
mark start; nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader | tee $OUT/gpu.txt
source $D/on-gpu.sh $D/dotnet.tgz >/dev/null
source /opt/torch/.venv/bin/activate
mkdir -p /tmp/bench-models $OUT/bench
python3 tools/bench/reference.py make-model --shape qwen2-7b --out /tmp/bench-models/qwen2-7b > $OUT/make7b.txt 2>&1 & mk=$!
cell() { # shape rows cells...
  local s=$1 r=$2; shift 2
  for c in "$@"; do
    if [ $(left) -lt 25 ]; then echo "SKIP $s $c (deadline)"; continue; fi
    mark "$s $c"; OUT=$OUT GEN_ARGS="${GEN:-}" timeout $(left) bash tools/bench/run-gpu.sh $s $r $c 2>&1 | tail -1 | cut -c1-300
  done
}
cell qwen2.5-0.5b 300 ft-qa-lora ft-qa-qlora
mark waiting for the 7B model; timeout $(( $(left) - 100 )) tail --pid=$mk -f /dev/null; tail -1 $OUT/make7b.txt | cut -c1-200
cell qwen2-7b 300 ft-qa-lora ft-qa-qlora ft-dense1-qlora
GEN="--repeats 2 --compare-unfolded" cell qwen2-7b 100 ft-generate
cell qwen2-7b 300 ft-dense-lora hf-dense-lora
mark summary
python3 tools/bench/summarize.py $OUT/bench 2>&1 | grep -v "^|---" | head -30
for f in $OUT/bench/qwen2-7b-ft-generate.json; do [ -f $f ] && python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(json.dumps(d.get('unfolded'))[:1500])" $f; done
mark end
