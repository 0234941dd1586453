#!/usr/bin/env bash
# Lead's x2 call, 2026-11-30 (main at 32a26b1): data-parallel equality after this session's training changes (adapter
# working copies, seeded dropout, fused RMSNorm and SiLU·up in training), then 7B dense 4 x 512 on 1 and 2 GPUs.
set -uo pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 NCCL_DEBUG=WARN
D=.dev-lead; export DEVICE_DIR=$D
t0=$(date +%s); deadline=${DEADLINE:-140}
left() { echo $(( deadline - ($(date +%s) - t0) )); }
mark() { echo "== $(( $(date +%s) - t0 ))s $*"; }
mark start; nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader | tee $OUT/gpu.txt
source $D/on-gpu.sh $D/dotnet.tgz >/dev/null
source /opt/torch/.venv/bin/activate
b="dotnet $D/bench/FineTune.Bench.dll"
mkdir -p /tmp/bench-models $OUT/bench
python3 tools/bench/reference.py make-model --shape qwen2-7b --out /tmp/bench-models/qwen2-7b > $OUT/make7b.txt 2>&1 & mk=$!
mark dp-check bf16; timeout 60 $b dp-check --model FineTune.Tests/Fixtures/models/qwen2 --devices 2 --dtype bf16 --out $OUT/dp-check-bf16.json > $OUT/dp-check.txt 2>&1; echo "dp-check rc $?"; tail -3 $OUT/dp-check.txt | cut -c1-600
mark waiting for the 7B model; timeout $(( $(left) - 60 )) tail --pid=$mk -f /dev/null; tail -1 $OUT/make7b.txt | cut -c1-200
for c in ft-dense-lora ft-dense-lora-2gpu; do
  if [ $(left) -lt 25 ]; then echo "SKIP $c (deadline)"; continue; fi
  mark "qwen2-7b $c"; OUT=$OUT timeout $(left) bash tools/bench/run-gpu.sh qwen2-7b 300 $c 2>&1 | tail -1 | cut -c1-300
done
mark summary
python3 tools/bench/summarize.py $OUT/bench 2>&1 | grep -v "^|---" | head -12
mark end
