#!/usr/bin/env bash
# Call 39 (2 x H200): call 37/38's build on two GPUs: graph-check (its 2-GPU cases too) and dp-check (bf16, 1 vs 2 GPUs).
set -uo pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
D=.dev-lead; t0=$(date +%s); mark() { echo "== $(( $(date +%s) - t0 ))s $*"; }
R=/tmp/r; mkdir -p $R
source $D/on-gpu.sh $D/dotnet.tgz >/dev/null; tar xJf $D/bench.tar.xz -C $D
b="dotnet $D/bench/FineTune.Bench.dll"; fx=FineTune.Tests/Fixtures/models
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader
mark graph-check; timeout 100 $b graph-check $fx --out $R/graph-check.json > $R/graph-check.txt 2>&1; echo "rc $? pass $(grep -c PASS $R/graph-check.txt) fail $(grep -c FAIL $R/graph-check.txt)"; grep -E "FAIL|rror|GPUs" $R/graph-check.txt | cut -c1-200 | head -6
mark dp-check; timeout 90 $b dp-check --model $fx/qwen2 --devices 2 --dtype bf16 --out $R/dp-check.json > $R/dp-check.txt 2>&1; echo "dp-check rc $?"; tail -1 $R/dp-check.txt | cut -c1-400
cd $R && tar cJf $OUT/r.tar.xz . ; mark end
