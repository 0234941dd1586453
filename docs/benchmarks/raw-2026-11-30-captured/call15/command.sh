#!/usr/bin/env bash
# Call 15 (1 x H200): where the 7B Q&A 16-bit step's time and memory go. Baseline cell, the same with expandable segments,
# the phase profile, and (if the machine has it) nsys's kernel summary of the Q&A step.
set -uo pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 CUDA_VISIBLE_DEVICES=0
D=.dev-lead; export DEVICE_DIR=$D
t0=$(date +%s); mark() { echo "== $(( $(date +%s) - t0 ))s $*"; }
mark start; nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader
source $D/on-gpu.sh $D/dotnet.tgz >/dev/null
source /opt/torch/.venv/bin/activate
echo "nsys: $(which nsys 2>/dev/null; ls -d /usr/local/cuda*/bin/nsys /opt/nvidia/nsight-systems*/bin/nsys 2>/dev/null | head -2)"; echo "ncu: $(which ncu 2>/dev/null)"
mkdir -p $OUT/bench
summ() { python3 - $1 <<'PY' 2>/dev/null
import json, sys
d = json.load(open(sys.argv[1]))
print("  tok/s", round(d.get("tokens_per_s", 0), 1), "| peak", round(d.get("peak_device_bytes", 0) / 2**30, 3), "GiB | loss10", d.get("mean_loss_last_10"), "| wall", round(d.get("wall_s"),2), "| gc", d.get("gc_load_and_train"))
PY
}
mark cell base; OUT=$OUT bash tools/bench/run-gpu.sh qwen2-7b 2000 ft-qa-lora > $OUT/log-base.txt 2>&1; summ $OUT/bench/qwen2-7b-ft-qa-lora.json; mv $OUT/bench/qwen2-7b-ft-qa-lora.json $OUT/base.json
mark cell expandable; PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True OUT=$OUT bash tools/bench/run-gpu.sh qwen2-7b 2000 ft-qa-lora > $OUT/log-exp.txt 2>&1; summ $OUT/bench/qwen2-7b-ft-qa-lora.json; mv $OUT/bench/qwen2-7b-ft-qa-lora.json $OUT/expandable.json
B="dotnet $D/bench/FineTune.Bench.dll"; m=/tmp/bench-models/qwen2-7b
mark profile; timeout 150 $B profile --model $m --cells qa:8,qa:4 --data /tmp/qa.jsonl --steps 20 --out $OUT/profile.json 2>&1 | tail -2 | cut -c1-1500
NSYS=$(which nsys 2>/dev/null || ls /usr/local/cuda*/bin/nsys /opt/nvidia/nsight-systems*/bin/nsys 2>/dev/null | head -1)
if [ -n "$NSYS" ]; then
  mark nsys; timeout 200 $NSYS profile -t cuda,nvtx -o /tmp/qa8 --force-overwrite true $B profile --model $m --cells qa:8 --data /tmp/qa.jsonl --steps 6 > /tmp/nsys.log 2>&1; tail -3 /tmp/nsys.log
  $NSYS stats -r cuda_gpu_kern_sum -f csv -o /tmp/kern /tmp/qa8.nsys-rep > /dev/null 2>&1
  python3 - <<'PY'
import csv, glob
f = glob.glob('/tmp/kern*.csv')[0]
rows = list(csv.DictReader(open(f)))
tot = sum(float(r['Total Time (ns)']) for r in rows)
print('kernels total ms', round(tot/1e6,1), 'kinds', len(rows))
for r in rows[:45]:
    print(f"{float(r['Time (%)']):5.1f}% {float(r['Total Time (ns)'])/1e6:8.1f}ms n={r['Instances']:>6} avg={float(r['Avg (ns)'])/1e3:8.1f}us {r['Name'][:150]}")
PY
  cp /tmp/kern*.csv $OUT/ 2>/dev/null
fi
mark end
