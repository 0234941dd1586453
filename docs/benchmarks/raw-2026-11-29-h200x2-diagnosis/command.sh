#!/usr/bin/env bash
set -uo pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 NCCL_DEBUG=WARN
d=.dev-i17; out=${OUT:-/tmp/out}; m=/dev/shm/qwen2-7b
t0=$(date +%s); mark() { echo "== $(( $(date +%s) - t0 ))s $*"; }
ls $m | head -3; source $d/on-gpu.sh $d/dotnet.tgz >/dev/null
nvidia-smi --query-gpu=timestamp,index,utilization.gpu,memory.used --format=csv,noheader -lms 250 > $out/smi.csv &
smi=$!
b="dotnet $d/bench/FineTune.Bench.dll"
mark profile
CUDA_VISIBLE_DEVICES=0 timeout 24 $b profile --model $m --cells dense:4,dense:2 --steps 8 --out $out/profile.json 2>&1 | tail -3
mark dp
timeout 27 $b train --model $m --workload dense --gpus 2 --dense-steps 30 --step-phases --out $out/dp-dense-phases.json 2>&1 | tail -2
mark end; kill $smi
