#!/usr/bin/env bash
# Call 25 (1 x H200): the RMSNorm kernels 16 values a thread (lead branch after main fbc7031). Checks, then the 7B dense pair
# (FineTune, HF) and FineTune's 7B Q&A, then 0.5B generation with the decode folds compared to unfolded.
set -uo pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 CUDA_VISIBLE_DEVICES=0
D=.dev-lead; export DEVICE_DIR=$D
t0=$(date +%s); deadline=${DEADLINE:-260}
left() { echo $(( deadline - ($(date +%s) - t0) )); }
mark() { echo "== $(( $(date +%s) - t0 ))s $*"; }
R=/tmp/r; mkdir -p $R/bench /tmp/bench-models
mark start; nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader | tee $R/gpu.txt
source $D/on-gpu.sh $D/dotnet.tgz >/dev/null
source /opt/torch/.venv/bin/activate
python3 tools/bench/reference.py make-data --out /tmp/qa.jsonl --rows 2000 > /dev/null
( python3 tools/bench/reference.py make-model --shape qwen2.5-0.5b --out /tmp/bench-models/qwen2.5-0.5b > $R/make05.txt 2>&1
  python3 tools/bench/reference.py make-model --shape qwen2-7b --out /tmp/bench-models/qwen2-7b > $R/make.txt 2>&1 ) &
mk=$!
b="dotnet $D/bench/FineTune.Bench.dll"; fx=FineTune.Tests/Fixtures/models
mark kernels; timeout 100 $b kernels --out $R/kernels.json > $R/kernels.txt 2>&1; echo "rc $? pass $(grep -c PASS $R/kernels.txt) fail $(grep -c FAIL $R/kernels.txt)"; grep -E "FAIL|rror" $R/kernels.txt | cut -c1-200 | head -8; grep -E "rms norm" $R/kernels.txt | cut -c1-140 | head -20
mark graph-check; timeout 100 $b graph-check $fx --out $R/graph-check.json > $R/graph-check.txt 2>&1; echo "rc $? pass $(grep -c PASS $R/graph-check.txt) fail $(grep -c FAIL $R/graph-check.txt)"; grep -E "FAIL|rror" $R/graph-check.txt | cut -c1-160 | head -6
mark lora-check; timeout 60 $b lora-check $fx > $R/lora-check.txt 2>&1; echo "rc $? pass $(grep -c PASS $R/lora-check.txt) fail $(grep -c FAIL $R/lora-check.txt)"; grep -E "FAIL|rror" $R/lora-check.txt | cut -c1-200 | head -4
mark parity; timeout 60 $b parity $fx > $R/parity.txt 2>&1; echo "parity rc $?"; tail -1 $R/parity.txt | cut -c1-200
mark waiting for the models; wait $mk; tail -1 $R/make.txt
show() { python3 - "$1" <<'PY' 2>/dev/null
import json, sys
d = json.load(open(sys.argv[1]))
g = d.get("cuda_graphs") or ""
if "tokens_per_s" in d and "mean_loss_last_10" in d:
    print("  tok/s", round(d.get("tokens_per_s", 0), 1), "| 2nd half", round(d.get("second_half_tokens_per_s") or 0, 1), "| first step s", round(d.get("first_step_s") or 0, 2), "| peak", round(d.get("peak_device_bytes", 0) / 2**30, 3), "GiB | loss10", d.get("mean_loss_last_10"), "| wall", d.get("wall_s"), "|", g[g.find("CUDA graphs"):][:200])
else:
    print("  ", {k: (v if not isinstance(v, dict) else {kk: vv for kk, vv in v.items() if not isinstance(vv, list)}) for k, v in d.items() if not isinstance(v, list) and k != "text"})
PY
}
cell() { local s=$1 c=$2 need=${3:-45}
  if [ $(left) -lt $need ]; then echo "SKIP $s $c (deadline)"; return; fi
  mark "$s $c"; OUT=$R timeout $(( $(left) - 3 )) bash tools/bench/run-gpu.sh $s 2000 $c > $R/log-$s-$c.txt 2>&1; tail -1 $R/log-$s-$c.txt | cut -c1-60
  show $R/bench/$s-$c.json; }
cell qwen2-7b ft-dense-lora 30
cell qwen2-7b hf-dense-lora 45
GEN_ARGS="--repeats 2 --compare-unfolded" cell qwen2.5-0.5b ft-generate 30
cell qwen2-7b ft-qa-lora 45
cd $R && tar cJf $OUT/r.tar.xz . ; mark end
