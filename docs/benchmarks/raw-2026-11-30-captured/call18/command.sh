#!/usr/bin/env bash
# Call 18 (1 x H200): packed rows padded to shapes captured before training, largest first (branch lead): graph-check, then
# 7B Q&A 16-bit and QLoRA, 0.5B Q&A 16-bit and QLoRA (FineTune cells only).
set -uo pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 CUDA_VISIBLE_DEVICES=0
D=.dev-lead; export DEVICE_DIR=$D
t0=$(date +%s); mark() { echo "== $(( $(date +%s) - t0 ))s $*"; }
mark start; nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader
source $D/on-gpu.sh $D/dotnet.tgz >/dev/null
source /opt/torch/.venv/bin/activate
mkdir -p /tmp/bench-models $OUT
python3 tools/bench/reference.py make-data --out /tmp/qa.jsonl --rows 2000 > /dev/null
python3 tools/bench/reference.py make-model --shape qwen2-7b --out /tmp/bench-models/qwen2-7b > /tmp/mk7.txt 2>&1 &
mk=$!
B="dotnet $D/bench/FineTune.Bench.dll"
mark graph-check; timeout 200 $B graph-check FineTune.Tests/Fixtures/models --out $OUT/graph-check.json > $OUT/graph-check.txt 2>&1; echo "rc $? pass $(grep -c PASS $OUT/graph-check.txt) fail $(grep -c FAIL $OUT/graph-check.txt)"; grep -E "FAIL|rror" $OUT/graph-check.txt | cut -c1-200 | head -5
python3 - $OUT/graph-check.json <<'PY'
import json, sys
for c in json.load(open(sys.argv[1]))["checks"]:
    if "graph_vs_eager_max_loss_diff" in c:
        print(c["case"][:84], "PASS" if c["pass"] else "FAIL", "| loss", c["graph_vs_eager_max_loss_diff"], "| adapter", c["adapter_max_abs_diff"], "|", c["graph_log"][12:200])
PY
wait $mk; python3 tools/bench/reference.py make-model --shape qwen2.5-0.5b --out /tmp/bench-models/qwen2.5-0.5b > /dev/null 2>&1
run() { local name=$1; shift
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > /tmp/mem.$name.txt & local s=$!
  mark $name; timeout 150 "$@" --out $OUT/$name.json > $OUT/log-$name.txt 2>&1; echo "rc $?"; kill $s; wait $s 2>/dev/null
  python3 - $OUT/$name.json $(sort -n /tmp/mem.$name.txt | tail -1) <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); peak = int(sys.argv[2])
print("  tok/s", round(d["tokens_per_s"], 1), "| peak", round(peak / 1024, 3), "GiB | loss10", d.get("mean_loss_last_10"), "| wall", round(d["wall_s"], 2))
PY
  grep -h 'CUDA graphs' $OUT/log-$name.txt | cut -c1-500 | head -2
}
Q="--workload qa --data /tmp/qa.jsonl --max-rows 2000"
run 7b-qa $B train --model /tmp/bench-models/qwen2-7b $Q
run 7b-qa-qlora $B train --model /tmp/bench-models/qwen2-7b $Q --qlora
run 05b-qa $B train --model /tmp/bench-models/qwen2.5-0.5b $Q
run 05b-qa-qlora $B train --model /tmp/bench-models/qwen2.5-0.5b $Q --qlora
mark end
