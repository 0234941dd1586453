#!/usr/bin/env bash
# Call 36 (1 x H200): dropout16_ (16 values a thread, the stream mixed once a thread): kernels check, the dense step under
# Nsight Compute, and the dense cell's first step: default, ReadyToRun-compiled bench, graphs off; HF's dense cell.
set -uo pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 CUDA_VISIBLE_DEVICES=0
D=.dev-lead; export DEVICE_DIR=$D
t0=$(date +%s); mark() { echo "== $(( $(date +%s) - t0 ))s $*"; }
R=/tmp/r; mkdir -p $R/bench /tmp/bench-models
mark start
source $D/on-gpu.sh $D/dotnet.tgz >/dev/null
source /opt/torch/.venv/bin/activate
tar xJf $D/bench-r2r.tar.xz -C /tmp; tar xJf $D/bench.tar.xz -C $D
python3 tools/bench/reference.py make-data --out /tmp/qa.jsonl --rows 2000 > /dev/null
m=/tmp/bench-models/qwen2-7b; ( python3 tools/bench/reference.py make-model --shape qwen2-7b --out $m > $R/make.txt 2>&1 ) & mk=$!
b="dotnet $D/bench/FineTune.Bench.dll"
mark kernels; timeout 150 $b kernels --out $R/kernels.json > $R/kernels.txt 2>&1; echo "rc $? pass $(grep -c PASS $R/kernels.txt) fail $(grep -c FAIL $R/kernels.txt)"; grep -E "FAIL|rror" $R/kernels.txt | cut -c1-200 | head -5; grep -i "dropout p" $R/kernels.txt | cut -c1-200
wait $mk; tail -1 $R/make.txt
mark "ncu dense:4"
timeout 150 /usr/local/cuda/bin/ncu --profile-from-start off --metrics gpu__time_duration.sum --csv --print-units base --clock-control none --cache-control none \
  $b profile --model $m --cells dense:4 --data /tmp/qa.jsonl --steps 1 --profiler-steps 1 > $R/ncu-dense4.csv 2> $R/ncu-dense4.err
echo "rc $?"; tail -1 $R/ncu-dense4.err | cut -c1-300
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
for n, (c, t) in sorted(agg.items(), key=lambda x: -x[1][1])[:14]:
    print(f"{100*t/tot:5.1f}% {t/1e6:7.2f}ms n={c:5d} avg={t/c/1e3:7.1f}us {n}")
PY
show() { python3 -c "
import json,sys; d=json.load(open(sys.argv[1])); g=d.get('cuda_graphs') or ''
print('  tok/s', round(d['tokens_per_s'],1), '| 2nd half', round(d.get('second_half_tokens_per_s') or 0,1), '| first step s', round(d.get('first_step_s') or 0,3), '| wall', round(d['wall_s'],2), '| load', round(d.get('load_s') or 0,2), '| loss10', round(d['mean_loss_last_10'],5), '|', g[g.find('GPU memory'):][:260])" "$1"; }
run() { # label env... cell
  local label=$1; shift; mark "$label"
  env "$@" OUT=$R timeout 150 bash tools/bench/run-gpu.sh qwen2-7b 2000 ${CELL:-ft-dense-lora} > $R/log-$label.txt 2>&1
  local f=$R/bench/qwen2-7b-${CELL:-ft-dense-lora}.json; [ -f $f ] && mv $f $R/bench/$label.json && show $R/bench/$label.json || tail -3 $R/log-$label.txt
}
run ft-dense-1 X=1
run ft-dense-r2r BENCH_DLL=/tmp/bench-r2r/FineTune.Bench.dll
run ft-dense-graphs-off FINETUNE_CUDA_GRAPHS=off
CELL=hf-dense-lora run hf-dense X=1
run ft-dense-2 X=1
run ft-dense-r2r-2 BENCH_DLL=/tmp/bench-r2r/FineTune.Bench.dll
cd $R && tar cJf $OUT/r.tar.xz . ; mark end
