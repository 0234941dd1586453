#!/usr/bin/env bash
# Data parallel on 2 GPUs (issue 17), for nvidia-h200-x2, in priority order (DEVICE_DIR: the carried folder with
# dotnet.tgz, on-gpu.sh, reference.py and bench/, see tools/device/README.md; default .device):
#   1. dp-abort on the 2 GPUs (NCCL failure path: rank fails before the first collective / in an all-reduce / cancel)
#   2. dp-check bf16 (1 vs 2 GPUs equal) with the grouped NCCL init
#   3. is the 2-GPU slowdown in-process? the same half step (2 x 512, 7B) alone, then in two processes at once
#   4. FULL=1: the cells again (7B Q&A 2,000 rows and dense 4 x 512 at 1 and 2 GPUs)
# Never a bare `wait` here: `exec > >(tee)` makes it wait for tee forever.
set -uo pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 NCCL_DEBUG=WARN
d=${DEVICE_DIR:-.device}; out=${OUT:-/tmp/out}; mkdir -p $out
exec > >(tee $out/log.txt) 2>&1
t0=$(date +%s); mark() { echo "== $(( $(date +%s) - t0 ))s $*"; }
mark start; nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader
source $d/on-gpu.sh $d/dotnet.tgz >/dev/null
b="dotnet $d/bench/FineTune.Bench.dll"; fx=FineTune.Tests/Fixtures/models/qwen2
m=/dev/shm/qwen2-7b; [ "$(df --output=avail -k /dev/shm | tail -1)" -gt 20000000 ] || m=/tmp/qwen2-7b
python3 $d/reference.py make-model --shape qwen2-7b --out $m > $out/make-model.txt 2>&1 &
mk=$!
mark dp-abort; timeout 150 $b dp-abort --model $fx --devices 2 --out $out/dp-abort.json 2>&1 | tail -3; echo "dp-abort rc ${PIPESTATUS[0]}"
mark dp-check; timeout 90 $b dp-check --model $fx --devices 2 --dtype bf16 --out $out/dp-check-bf16.json 2>&1 | tail -1; echo "dp-check rc ${PIPESTATUS[0]}"
wait $mk; mark model made
mark half step alone; CUDA_VISIBLE_DEVICES=0 timeout 60 $b profile --model $m --cells dense:2 --steps 10 --out $out/alone.json > /dev/null 2>&1
mark half step in two processes
CUDA_VISIBLE_DEVICES=0 timeout 60 $b profile --model $m --cells dense:2 --steps 10 --out $out/proc0.json > /dev/null 2>&1 & p0=$!
CUDA_VISIBLE_DEVICES=1 timeout 60 $b profile --model $m --cells dense:2 --steps 10 --out $out/proc1.json > /dev/null 2>&1 & p1=$!
wait $p0 $p1
for f in alone proc0 proc1; do python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(sys.argv[1], 'host', round(d['host']['step_ms'],1), 'synced', round(d['synced']['step_ms'],1), 'fwd', round(d['synced']['forward_ms'],1), 'bwd', round(d['synced']['backward_ms'],1))" $out/$f.json; done
if [ "${FULL:-0}" = 1 ]; then
  mkdir -p /tmp/models; ln -sfn $m /tmp/models/qwen2-7b
  [ -f /tmp/qa.jsonl ] || python3 $d/reference.py make-data --out /tmp/qa.jsonl --rows 2000 > /dev/null
  for c in ft-qa-lora-2gpu ft-qa-lora ft-dense-lora-2gpu ft-dense-lora; do
    w=${c#ft-}; w=${w%%-*}
    mark $c; timeout 120 $b train --model $m --workload $w --data /tmp/qa.jsonl $( [[ $c == *2gpu ]] && echo --gpus 2 ) --out $out/$c.json 2>&1 | tail -1
  done
fi
mark end
