#!/usr/bin/env bash
# Call 21 (2 x H200): this session's first look. Lead's build (main 4ac3603 + collections skipped on replay-only steps + the
# host-gap clock). The cost-chosen graph shapes (76ceecc) had no GPU run yet. QLoRA Q&A with and without checkpointing;
# Nsight Compute over one 7B dense 4 x 512 step on GPU 1 while GPU 0 runs the one-GPU cells.
set -uo pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
D=.dev-lead; export DEVICE_DIR=$D
t0=$(date +%s); deadline=${DEADLINE:-420}
left() { echo $(( deadline - ($(date +%s) - t0) )); }
mark() { echo "== $(( $(date +%s) - t0 ))s $*"; }
mark start; nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader | tee $OUT/gpu.txt
source $D/on-gpu.sh $D/dotnet.tgz >/dev/null
source /opt/torch/.venv/bin/activate
mkdir -p /tmp/bench-models $OUT/bench
python3 tools/bench/reference.py make-data --out /tmp/qa.jsonl --rows 2000 > /dev/null
python3 tools/bench/reference.py make-model --shape qwen2.5-0.5b --out /tmp/bench-models/qwen2.5-0.5b > $OUT/make05.txt 2>&1
python3 tools/bench/reference.py make-model --shape qwen2-7b --out /tmp/bench-models/qwen2-7b > $OUT/make.txt 2>&1
mark made; tail -1 $OUT/make.txt
b="dotnet $D/bench/FineTune.Bench.dll"; m=/tmp/bench-models/qwen2-7b
( CUDA_VISIBLE_DEVICES=1 timeout 200 /usr/local/cuda/bin/ncu --profile-from-start off --metrics gpu__time_duration.sum --csv --print-units base --clock-control none --cache-control none \
  $b profile --model $m --cells dense:4 --steps 1 --profiler-steps 1 > /tmp/ncu.csv 2> /tmp/ncu.err; echo "ncu rc $?" > /tmp/ncu.rc ) &
ncu=$!
show() { python3 - "$1" <<'PY' 2>/dev/null
import json, sys
d = json.load(open(sys.argv[1]))
g = d.get("cuda_graphs") or ""
print("  tok/s", round(d.get("tokens_per_s", 0), 1), "| 2nd half", round(d.get("second_half_tokens_per_s") or 0, 1), "| first step s", round(d.get("first_step_s") or 0, 2), "| peak", round(d.get("peak_device_bytes", 0) / 2**30, 3), "GiB | loss10", d.get("mean_loss_last_10"), "| ckpt", d.get("gradient_checkpointing"), "| wall", d.get("wall_s"), "|", g[g.find("CUDA graphs"):][:420])
PY
}
cell() { # shape cell min_seconds_left
  local s=$1 c=$2 need=${3:-45}
  if [ $(left) -lt $need ]; then echo "SKIP $s $c (deadline)"; return; fi
  mark "$s $c"; OUT=$OUT timeout $(( $(left) - 3 )) bash tools/bench/run-gpu.sh $s 2000 $c > $OUT/log-$s-$c.txt 2>&1; tail -1 $OUT/log-$s-$c.txt | cut -c1-60
  show $OUT/bench/$s-$c.json
}
direct() { # name min_seconds_left args...
  local n=$1 need=$2; shift 2
  if [ $(left) -lt $need ]; then echo "SKIP $n (deadline)"; return; fi
  mark "$n"; CUDA_VISIBLE_DEVICES=0 timeout $(( $(left) - 3 )) $b train "$@" --out $OUT/bench/$n.json > $OUT/log-$n.txt 2>&1; echo "rc $?"; show $OUT/bench/$n.json
}
ft1() { CUDA_VISIBLE_DEVICES=0 cell "$@"; }
ft1 qwen2-7b ft-qa-lora 50
direct qwen2-7b-ft-qa-qlora-off 60 --model $m --workload qa --data /tmp/qa.jsonl --max-rows 2000 --qlora --gradient-checkpointing off
ft1 qwen2-7b ft-qa-qlora 60
ft1 qwen2-7b ft-dense-lora 30
ft1 qwen2.5-0.5b ft-qa-lora 25
ft1 qwen2.5-0.5b ft-qa-qlora 25
direct qwen2.5-0.5b-ft-qa-qlora-off 25 --model /tmp/bench-models/qwen2.5-0.5b --workload qa --data /tmp/qa.jsonl --max-rows 2000 --qlora --gradient-checkpointing off
mark waiting for ncu; wait $ncu; cat /tmp/ncu.rc; tail -2 /tmp/ncu.err | cut -c1-200
xz -9 -c /tmp/ncu.csv > $OUT/ncu-dense.csv.xz
python3 - <<'PY'
import csv, collections
rows = [r for r in csv.reader(l for l in open('/tmp/ncu.csv') if l.startswith('"'))]
if rows:
    h = rows[0]; rows = rows[1:]
    ix = {k: i for i, k in enumerate(h)}
    ks = [(r[ix['Kernel Name']], float(r[ix['Metric Value']])) for r in rows if r[ix['Metric Name']] == 'gpu__time_duration.sum']
    tot = sum(k[1] for k in ks)
    print('dense 4x512 step: kernels', len(ks), 'total ms', round(tot / 1e6, 2))
    agg = collections.defaultdict(lambda: [0, 0.0])
    for n, t in ks:
        a = agg[n[:100]]; a[0] += 1; a[1] += t
    for n, (c, t) in sorted(agg.items(), key=lambda x: -x[1][1])[:40]:
        print(f"{100*t/tot:5.1f}% {t/1e6:8.2f}ms n={c:5d} avg={t/c/1e3:8.1f}us {n}")
PY
cell qwen2-7b ft-qa-lora-2gpu 45
cell qwen2-7b ft-dense-lora-2gpu 25
mark end
