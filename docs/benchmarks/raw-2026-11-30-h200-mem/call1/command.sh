#!/usr/bin/env bash
# H-mem call 1 (issue 14, fused RMSNorm/SiLU·up in training): `kernels` (the fused functions' checks) while the 7B
# model is made, then 7B Q&A 300 rows 16-bit: this branch, main's build, HF padding-free, HF padded (priority order
# under a deadline), then `parity` if time is left. Waits only for named pids.
set -uo pipefail
D=.dev-mem; export DEVICE_DIR=$D
cp $D/tools/*.sh $D/tools/*.py tools/bench/
t0=$(date +%s); deadline=${DEADLINE:-115}
left() { echo $(( deadline - ($(date +%s) - t0) )); }
mark() { echo "== $(( $(date +%s) - t0 ))s $*"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/gpu.txt
source $D/on-gpu.sh $D/dotnet.tgz >/dev/null
source /opt/torch/.venv/bin/activate
for f in $D/bench/*; do [ -e $D/bench-main/$(basename $f) ] || cp $f $D/bench-main/; done
b="dotnet $D/bench/FineTune.Bench.dll"
mkdir -p /tmp/bench-models $OUT/bench
python3 tools/bench/reference.py make-model --shape qwen2-7b --out /tmp/bench-models/qwen2-7b > $OUT/make7b.txt 2>&1 & mk=$!
python3 tools/bench/reference.py make-data --out /tmp/qa.jsonl --rows 2000 > /dev/null 2>&1
mark kernels; timeout 40 $b kernels --out $OUT/kernels.json > $OUT/kernels.txt 2>&1; echo "kernels rc $?"; grep -E "FAIL|grad|train|fwd\+bwd|kernels:" $OUT/kernels.txt | cut -c1-170
mark waiting for the 7B model; timeout $(( $(left) - 60 )) tail --pid=$mk -f /dev/null; tail -1 $OUT/make7b.txt | cut -c1-200
cell() { # out-subdir bench-dll cell
  if [ $(left) -lt 22 ]; then echo "SKIP $1 $3 (deadline)"; return; fi
  mark "$1 $3"; BENCH_DLL=$2 OUT=$OUT/$1 timeout $(left) bash tools/bench/run-gpu.sh qwen2-7b 300 $3 2>&1 | grep -v bitsandbytes | tail -1 | cut -c1-700
}
cell new $D/bench/FineTune.Bench.dll ft-qa-lora
cell main $D/bench-main/FineTune.Bench.dll ft-qa-lora
cell hf $D/bench/FineTune.Bench.dll hf-qa-lora-flat
cell hf $D/bench/FineTune.Bench.dll hf-qa-lora
if [ $(left) -gt 12 ]; then mark parity; timeout $(( $(left) - 3 )) $b parity FineTune.Tests/Fixtures/models > $OUT/parity.txt 2>&1; echo "parity rc $?"; grep -i -E "fail|mismatch|pass" $OUT/parity.txt | tail -4 | cut -c1-200; fi
mark summary
for d in new main hf; do [ -d $OUT/$d/bench ] && python3 tools/bench/summarize.py $OUT/$d/bench 2>&1 | grep -v "^|---" | grep -v "^| model"; done
mark end
cd $OUT && tar czf results.tgz new main hf kernels.json kernels.txt parity.txt make7b.txt gpu.txt 2>/dev/null; rm -rf new main hf kernels.json kernels.txt
