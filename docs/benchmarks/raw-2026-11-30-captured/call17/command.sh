#!/usr/bin/env bash
# Call 17 (1 x H200): a kernel-by-kernel account of one 7B Q&A 16-bit step (8 rows), Nsight Compute, clocks as they run.
set -uo pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 CUDA_VISIBLE_DEVICES=0
D=.dev-lead
t0=$(date +%s); mark() { echo "== $(( $(date +%s) - t0 ))s $*"; }
mark start; nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader
source $D/on-gpu.sh $D/dotnet.tgz >/dev/null
source /opt/torch/.venv/bin/activate
mkdir -p /tmp/bench-models $OUT
[ -f /tmp/qa.jsonl ] || python3 tools/bench/reference.py make-data --out /tmp/qa.jsonl --rows 2000 > /dev/null
m=/tmp/bench-models/qwen2-7b; [ -d $m ] || python3 tools/bench/reference.py make-model --shape qwen2-7b --out $m 2>&1 | grep -v Writing
mark ncu
timeout 420 /usr/local/cuda/bin/ncu --profile-from-start off --metrics gpu__time_duration.sum --csv --print-units base --clock-control none --cache-control none \
  dotnet $D/bench/FineTune.Bench.dll profile --model $m --cells qa:8 --data /tmp/qa.jsonl --steps 1 --profiler-steps 1 > /tmp/ncu.csv 2> /tmp/ncu.err
echo "ncu rc $?"; tail -3 /tmp/ncu.err; grep -v '^"' /tmp/ncu.csv | head -5 | cut -c1-300
xz -9 -c /tmp/ncu.csv > $OUT/ncu.csv.xz
python3 - <<'PY'
import csv, collections
rows = [r for r in csv.reader(l for l in open('/tmp/ncu.csv') if l.startswith('"'))]
h = rows[0]; rows = rows[1:]
ix = {k: i for i, k in enumerate(h)}
ks = [(r[ix['Kernel Name']], float(r[ix['Metric Value']]), r[ix['Grid Size']], r[ix['Block Size']]) for r in rows if r[ix['Metric Name']] == 'gpu__time_duration.sum']
tot = sum(k[1] for k in ks)
print('kernels', len(ks), 'total ms', round(tot / 1e6, 2))
first_bwd = next((i for i, k in enumerate(ks) if 'bwd' in k[0].lower()), None)
if first_bwd: print('before first bwd kernel (#%d): %.2f ms, after: %.2f ms' % (first_bwd, sum(k[1] for k in ks[:first_bwd]) / 1e6, sum(k[1] for k in ks[first_bwd:]) / 1e6))
agg = collections.defaultdict(lambda: [0, 0.0])
for n, t, g, b in ks:
    a = agg[n[:110]]; a[0] += 1; a[1] += t
for n, (c, t) in sorted(agg.items(), key=lambda x: -x[1][1])[:45]:
    print(f"{100*t/tot:5.1f}% {t/1e6:8.2f}ms n={c:5d} avg={t/c/1e3:8.1f}us {n}")
# the largest single launches with grids (GEMM shapes)
shape = collections.defaultdict(lambda: [0, 0.0])
for n, t, g, b in ks:
    if 'gemm' in n.lower() or 'xmma' in n.lower() or 'cutlass' in n.lower():
        a = shape[(n[:60], g)]; a[0] += 1; a[1] += t
print('GEMM kernels by grid:')
for (n, g), (c, t) in sorted(shape.items(), key=lambda x: -x[1][1])[:25]:
    print(f"{t/1e6:8.2f}ms n={c:4d} avg={t/c/1e3:7.1f}us grid={g} {n}")
PY
mark end
