#!/usr/bin/env bash
# Call 38 (1 x H200): the same build as call 37 (lead's dropout16_ with a hash per pair of elements). Checks again, then
# one cell at a time: FineTune's 7B 16-bit Q&A and dense, HF's dense, FineTune's QLoRA cells (7B Q&A, 7B dense 1 x 512
# with checkpointing; 0.5B Q&A 16-bit and QLoRA), generation (FineTune 16-bit and NF4 base, HF generate(), both
# shapes), then Nsight Compute over one dense step (the dropout kernels after).
set -uo pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 CUDA_VISIBLE_DEVICES=0
D=.dev-lead; export DEVICE_DIR=$D
t0=$(date +%s); deadline=${DEADLINE:-570}
left() { echo $(( deadline - ($(date +%s) - t0) )); }
mark() { echo "== $(( $(date +%s) - t0 ))s $*"; }
R=/tmp/r; mkdir -p $R/bench /tmp/bench-models
mark start; nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader | tee $R/gpu.txt
source $D/on-gpu.sh $D/dotnet.tgz >/dev/null
tar xJf $D/bench.tar.xz -C $D
source /opt/torch/.venv/bin/activate
python3 tools/bench/reference.py make-data --out /tmp/qa.jsonl --rows 2000 > /dev/null
( python3 tools/bench/reference.py make-model --shape qwen2.5-0.5b --out /tmp/bench-models/qwen2.5-0.5b > $R/make05.txt 2>&1
  python3 tools/bench/reference.py make-model --shape qwen2-7b --out /tmp/bench-models/qwen2-7b > $R/make.txt 2>&1 ) &
mk=$!
b="dotnet $D/bench/FineTune.Bench.dll"; fx=FineTune.Tests/Fixtures/models
mark kernels; CUDA_VISIBLE_DEVICES=0 timeout 120 $b kernels --out $R/kernels.json > $R/kernels.txt 2>&1; echo "rc $? pass $(grep -c PASS $R/kernels.txt) fail $(grep -c FAIL $R/kernels.txt)"; grep -E "FAIL|rror" $R/kernels.txt | cut -c1-160 | head -5
mark graph-check; timeout 150 $b graph-check $fx --out $R/graph-check.json > $R/graph-check.txt 2>&1; echo "rc $? pass $(grep -c PASS $R/graph-check.txt) fail $(grep -c FAIL $R/graph-check.txt)"; grep -E "FAIL|rror" $R/graph-check.txt | cut -c1-160 | head -6
mark lora-check; CUDA_VISIBLE_DEVICES=0 timeout 60 $b lora-check $fx > $R/lora-check.txt 2>&1; echo "rc $? pass $(grep -c PASS $R/lora-check.txt) fail $(grep -c FAIL $R/lora-check.txt)"; grep -E "FAIL|rror" $R/lora-check.txt | cut -c1-200 | head -4
mark parity; CUDA_VISIBLE_DEVICES=0 timeout 60 $b parity $fx > $R/parity.txt 2>&1; echo "parity rc $?"; tail -1 $R/parity.txt | cut -c1-300
mark waiting for the models; wait $mk; tail -1 $R/make.txt
if grep -q FAIL $R/kernels.txt $R/graph-check.txt $R/lora-check.txt || ! grep -q PASS $R/lora-check.txt; then
  echo "checks failed: no table"; grep -h FAIL $R/*.txt | cut -c1-250 | head -10; cd $R && tar cJf $OUT/r.tar.xz . ; exit 1
fi
show() { python3 - "$1" <<'PY' 2>/dev/null
import json, sys
d = json.load(open(sys.argv[1]))
g = d.get("cuda_graphs") or ""
if "tokens_per_s" in d:
    print("  tok/s", round(d.get("tokens_per_s", 0), 1), "| 2nd half", round(d.get("second_half_tokens_per_s") or 0, 1), "| first step s", round(d.get("first_step_s") or 0, 2), "| peak", round(d.get("peak_device_bytes", 0) / 2**30, 3), "GiB | loss10", d.get("mean_loss_last_10"), "| ckpt", d.get("gradient_checkpointing"), "| wall", d.get("wall_s"), "|", g[g.find("Long") if "Long" in g else g.find("CUDA graphs"):][:330])
else:
    print("  ", {k: v for k, v in d.items() if not isinstance(v, (list, dict)) and k not in ("text",)})
PY
}
cell() { # shape cell min_seconds_left (env: CUDA_VISIBLE_DEVICES / HF_GPU, PEAK_GPUS)
  local s=$1 c=$2 need=${3:-45}
  if [ $(left) -lt $need ]; then echo "SKIP $s $c (deadline)"; return; fi
  mark "$s $c"; OUT=$R timeout $(( $(left) - 3 )) bash tools/bench/run-gpu.sh $s 2000 $c > $R/log-$s-$c.txt 2>&1; tail -1 $R/log-$s-$c.txt | cut -c1-60
  show $R/bench/$s-$c.json
}
g0() { CUDA_VISIBLE_DEVICES=0 HF_GPU=0 PEAK_GPUS=0 cell "$@"; }
g1() { CUDA_VISIBLE_DEVICES=1 HF_GPU=1 PEAK_GPUS=1 cell "$@"; }
g0 qwen2-7b ft-qa-lora 50
g0 qwen2-7b ft-dense-lora 30
g0 qwen2-7b hf-dense-lora 40
g0 qwen2-7b ft-qa-qlora 55
g0 qwen2-7b ft-dense1-qlora 45
g0 qwen2.5-0.5b ft-qa-lora 25
g0 qwen2.5-0.5b ft-qa-qlora 25
g0 qwen2.5-0.5b ft-generate 25
g0 qwen2.5-0.5b ft-generate-qlora 25
g0 qwen2.5-0.5b hf-generate 40
g0 qwen2-7b ft-generate 45
g0 qwen2-7b ft-generate-qlora 45
g0 qwen2-7b hf-generate 75
if [ $(left) -gt 60 ]; then
  mark "ncu dense:4"
  timeout $(( $(left) - 8 )) /usr/local/cuda/bin/ncu --profile-from-start off --metrics gpu__time_duration.sum --csv --print-units base --clock-control none --cache-control none \
    $b profile --model /tmp/bench-models/qwen2-7b --cells dense:4 --data /tmp/qa.jsonl --steps 1 --profiler-steps 1 > $R/ncu-dense4.csv 2> $R/ncu-dense4.err
  echo "rc $?"
  python3 - $R/ncu-dense4.csv <<'PY'
import csv, collections, sys
rows = [r for r in csv.reader(l for l in open(sys.argv[1]) if l.startswith('"'))]
h = rows[0]; rows = rows[1:]
ix = {k: i for i, k in enumerate(h)}
ks = [(r[ix['Kernel Name']], float(r[ix['Metric Value']].replace(',', ''))) for r in rows if r[ix['Metric Name']] == 'gpu__time_duration.sum']
tot = sum(k[1] for k in ks)
print('kernels', len(ks), 'total ms', round(tot / 1e6, 2))
agg = collections.defaultdict(lambda: [0, 0.0])
for n, t in ks:
    a = agg[n[:100]]; a[0] += 1; a[1] += t
for n, (c, t) in sorted(agg.items(), key=lambda x: -x[1][1])[:8]:
    print(f"{100*t/tot:5.1f}% {t/1e6:7.2f}ms n={c:5d} avg={t/c/1e3:7.1f}us {n}")
PY
fi
mark summary; python3 tools/bench/summarize.py $R/bench 2>&1 | grep -v "^|---" | head -40
cd $R && tar cJf $OUT/r.tar.xz . ; mark end
