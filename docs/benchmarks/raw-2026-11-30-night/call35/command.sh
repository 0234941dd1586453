#!/usr/bin/env bash
# Call 35 (1 x H200): the dense step as the trainer runs it (kernel-drawn LoRA dropout) under Nsight Compute, and the
# SM clock / power during FineTune's and HF's dense cells (is the real step slower than ncu's sum because clocks drop?).
set -uo pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 CUDA_VISIBLE_DEVICES=0
D=.dev-lead; export DEVICE_DIR=$D
t0=$(date +%s); mark() { echo "== $(( $(date +%s) - t0 ))s $*"; }
R=/tmp/r; mkdir -p $R/bench /tmp/bench-models
mark start; nvidia-smi --query-gpu=index,name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv,noheader
source $D/on-gpu.sh $D/dotnet.tgz >/dev/null
source /opt/torch/.venv/bin/activate
python3 tools/bench/reference.py make-data --out /tmp/qa.jsonl --rows 2000 > /dev/null
m=/tmp/bench-models/qwen2-7b; python3 tools/bench/reference.py make-model --shape qwen2-7b --out $m 2>&1 | tail -1
b="dotnet $D/bench/FineTune.Bench.dll"
mark "ncu dense:4 (trainer's path)"
timeout 150 /usr/local/cuda/bin/ncu --profile-from-start off --metrics gpu__time_duration.sum --csv --print-units base --clock-control none --cache-control none \
  $b profile --model $m --cells dense:4 --data /tmp/qa.jsonl --steps 1 --profiler-steps 1 > $R/ncu-dense4.csv 2> $R/ncu-dense4.err
echo "rc $?"; tail -2 $R/ncu-dense4.err | cut -c1-300
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
for n, (c, t) in sorted(agg.items(), key=lambda x: -x[1][1])[:40]:
    print(f"{100*t/tot:5.1f}% {t/1e6:7.2f}ms n={c:5d} avg={t/c/1e3:7.1f}us {n}")
PY
reason=clocks_event_reasons.active; nvidia-smi --query-gpu=$reason --format=csv >/dev/null 2>&1 || reason=clocks_throttle_reasons.active
clocks() { nvidia-smi --id=0 --query-gpu=clocks.sm,power.draw,temperature.gpu,utilization.gpu,$reason --format=csv,noheader,nounits -lms 100 > $R/clocks-$1.txt & echo $!; }
summ() { python3 - $R/clocks-$1.txt <<'PY'
import sys
rows = [l.strip().split(', ') for l in open(sys.argv[1]) if l.strip()]
busy = [r for r in rows if r[3].strip() not in ('0',) and float(r[1]) > 250]
if not busy: print('  no busy samples'); sys.exit()
cl = sorted(float(r[0]) for r in busy); pw = sorted(float(r[1]) for r in busy)
reasons = {}
for r in busy: reasons[r[4]] = reasons.get(r[4], 0) + 1
print(f"  busy samples {len(busy)}: SM clock median {cl[len(cl)//2]:.0f} MHz (min {cl[0]:.0f}, max {cl[-1]:.0f}); power median {pw[len(pw)//2]:.0f} W (max {pw[-1]:.0f}); temp max {max(float(r[2]) for r in busy):.0f} C; event reasons {reasons}")
PY
}
show() { python3 -c "
import json,sys; d=json.load(open(sys.argv[1]))
print('  tok/s', round(d['tokens_per_s'],1), '| 2nd half', round(d.get('second_half_tokens_per_s') or 0,1), '| first step s', round(d.get('first_step_s') or 0,3), '| wall', round(d['wall_s'],2), '| loss10', round(d['mean_loss_last_10'],5))" "$1"; }
for c in ft-dense-lora hf-dense-lora ft-dense-lora; do
  mark $c; s=$(clocks $c); OUT=$R timeout 150 bash tools/bench/run-gpu.sh qwen2-7b 2000 $c > $R/log-$c.txt 2>&1; kill $s; show $R/bench/qwen2-7b-$c.json; summ $c
done
cd $R && tar cJf $OUT/r.tar.xz . ; mark end
