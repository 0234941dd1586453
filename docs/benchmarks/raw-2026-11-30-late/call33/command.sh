#!/usr/bin/env bash
# Call 33 (1 x H200): Nsight Compute over one 7B 16-bit step of lead f3dd743 (q/k/v stacked in training, LoRA's up half as addmm),
# dense 4 x 512 and Q&A 8 rows, against call 30's; then the dense cell with CUDA graphs on and off (FINETUNE_CUDA_GRAPHS).
set -uo pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 CUDA_VISIBLE_DEVICES=0
D=.dev-lead
t0=$(date +%s); mark() { echo "== $(( $(date +%s) - t0 ))s $*"; }
mark start; nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader
source $D/on-gpu.sh $D/dotnet.tgz >/dev/null
source /opt/torch/.venv/bin/activate
mkdir -p /tmp/bench-models $OUT /tmp/r
python3 tools/bench/reference.py make-data --out /tmp/qa.jsonl --rows 2000 > /dev/null
m=/tmp/bench-models/qwen2-7b; python3 tools/bench/reference.py make-model --shape qwen2-7b --out $m 2>&1 | tail -1
b="dotnet $D/bench/FineTune.Bench.dll"
for cell in qa:8 dense:4; do
  mark "ncu $cell"
  timeout 130 /usr/local/cuda/bin/ncu --profile-from-start off --metrics gpu__time_duration.sum --csv --print-units base --clock-control none --cache-control none \
    $b profile --model $m --cells $cell --data /tmp/qa.jsonl --steps 1 --profiler-steps 1 > /tmp/r/ncu-${cell/:/}.csv 2> /tmp/r/ncu-${cell/:/}.err
  echo "rc $?"; tail -2 /tmp/r/ncu-${cell/:/}.err | cut -c1-200
  python3 - /tmp/r/ncu-${cell/:/}.csv <<'PY'
import csv, collections, sys
rows = [r for r in csv.reader(l for l in open(sys.argv[1]) if l.startswith('"'))]
h = rows[0]; rows = rows[1:]
ix = {k: i for i, k in enumerate(h)}
ks = [(r[ix['Kernel Name']], float(r[ix['Metric Value']].replace(',', ''))) for r in rows if r[ix['Metric Name']] == 'gpu__time_duration.sum']
tot = sum(k[1] for k in ks)
print('kernels', len(ks), 'total ms', round(tot / 1e6, 2), '| under 10 us:', sum(1 for k in ks if k[1] < 1e4), 'kernels,', round(sum(k[1] for k in ks if k[1] < 1e4) / 1e6, 2), 'ms')
agg = collections.defaultdict(lambda: [0, 0.0])
for n, t in ks:
    a = agg[n[:90]]; a[0] += 1; a[1] += t
for n, (c, t) in sorted(agg.items(), key=lambda x: -x[1][1])[:45]:
    print(f"{100*t/tot:5.1f}% {t/1e6:7.2f}ms n={c:5d} avg={t/c/1e3:7.1f}us {n}")
PY
done
show() { python3 -c "
import json,sys; d=json.load(open(sys.argv[1])); g=d.get('cuda_graphs') or ''
print('  tok/s', round(d['tokens_per_s'],1), '| 2nd half', round(d.get('second_half_tokens_per_s') or 0,1), '| first step s', round(d.get('first_step_s') or 0,3), '| wall', round(d['wall_s'],2), '| loss10', round(d['mean_loss_last_10'],5), '|', g[:200])" "$1"; }
for mode in on off on off; do
  mark "dense graphs $mode"; FINETUNE_CUDA_GRAPHS=$mode timeout 90 $b train --model $m --workload dense --out /tmp/r/dense-graphs-$mode.json > /tmp/r/dense-graphs-$mode.log 2>&1; echo "rc $?"; show /tmp/r/dense-graphs-$mode.json
done
cd /tmp/r && tar cJf $OUT/ncu.tar.xz *.csv *.err *.json *.log; mark end
