#!/usr/bin/env bash
# Lead's call (x2): kernels on both GPUs, GPU parity, the 0.5B table cells, the 2-process half-step test (issue 17),
# 7B 16-bit dense cells. Priority order under a deadline. Never a bare `wait`.
set -uo pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 NCCL_DEBUG=WARN
D=.dev-lead; export DEVICE_DIR=$D GEN_ARGS="--repeats 2"
t0=$(date +%s); deadline=${DEADLINE:-380}
left() { echo $(( deadline - ($(date +%s) - t0) )); }
mark() { echo "== $(( $(date +%s) - t0 ))s $*"; }
mark start; nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader | tee $OUT/gpu.txt
source $D/on-gpu.sh $D/dotnet.tgz >/dev/null
source /opt/torch/.venv/bin/activate
b="dotnet $D/bench/FineTune.Bench.dll"
mkdir -p /tmp/bench-models
python3 tools/bench/reference.py make-model --shape qwen2-7b --out /tmp/bench-models/qwen2-7b > $OUT/make7b.txt 2>&1 & mk=$!
mark kernels; timeout 90 $b kernels --out $OUT/kernels.json > $OUT/kernels.txt 2>&1; echo "kernels rc $?"; tail -4 $OUT/kernels.txt | cut -c1-400
mark parity; timeout 90 $b parity FineTune.Tests/Fixtures/models > $OUT/parity.txt 2>&1; echo "parity rc $?"; grep -i -E "greedy|fail|mismatch|max" $OUT/parity.txt | head -14 | cut -c1-300
cell() { # shape rows cells...
  local s=$1 r=$2; shift 2
  for c in "$@"; do
    if [ $(left) -lt 25 ]; then echo "SKIP $s $c (deadline)"; continue; fi
    mark "$s $c"; OUT=$OUT timeout $(left) bash tools/bench/run-gpu.sh $s $r $c 2>&1 | tail -1 | cut -c1-300
  done
}
cell qwen2.5-0.5b 500 ft-qa-lora ft-qa-qlora hf-qa-lora hf-qa-lora-flat ft-generate hf-generate ft-generate-qlora ft-dense-lora hf-dense-lora
if [ $(left) -gt 60 ]; then
  wait $mk; mark 7b model made
  m=/tmp/bench-models/qwen2-7b
  mark half step alone; CUDA_VISIBLE_DEVICES=0 timeout 60 $b profile --model $m --cells dense:2 --steps 10 --out $OUT/alone.json > /dev/null 2>&1
  mark half step in two processes
  CUDA_VISIBLE_DEVICES=0 timeout 60 $b profile --model $m --cells dense:2 --steps 10 --out $OUT/proc0.json > /dev/null 2>&1 & p0=$!
  CUDA_VISIBLE_DEVICES=1 timeout 60 $b profile --model $m --cells dense:2 --steps 10 --out $OUT/proc1.json > /dev/null 2>&1 & p1=$!
  wait $p0; wait $p1
  for f in alone proc0 proc1; do [ -f $OUT/$f.json ] && python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(sys.argv[1].split('/')[-1], json.dumps(d)[:600])" $OUT/$f.json; done
fi
wait $mk 2>/dev/null; cell qwen2-7b 300 ft-dense-lora hf-dense-lora
mark summary
python3 tools/bench/summarize.py $OUT/bench 2>&1 | head -40
mark end
