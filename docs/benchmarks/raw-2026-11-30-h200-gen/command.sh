#!/usr/bin/env bash
# H-gen call 1 (issue 14, decode folds): `kernels` and `parity` of this build, then batch-1 greedy generation on both
# shapes: FineTune with the folds and, in the same process, with them suspended (--compare-unfolded: ids compared),
# 16-bit and NF4 base, and HF generate(); priority order under a deadline. Never a bare `wait` past the deadline.
set -uo pipefail
D=.dev-gen; export DEVICE_DIR=$D
cp $D/tools/*.sh $D/tools/*.py tools/bench/
t0=$(date +%s); deadline=${DEADLINE:-300}
left() { echo $(( deadline - ($(date +%s) - t0) )); }
mark() { echo "== $(( $(date +%s) - t0 ))s $*"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/gpu.txt
source $D/on-gpu.sh $D/dotnet.tgz >/dev/null
source /opt/torch/.venv/bin/activate
b="dotnet $D/bench/FineTune.Bench.dll"
mkdir -p /tmp/bench-models $OUT/bench
python3 tools/bench/reference.py make-model --shape qwen2-7b --out /tmp/bench-models/qwen2-7b > $OUT/make7b.txt 2>&1 & mk=$!
mark kernels; timeout 90 $b kernels --out $OUT/kernels.json > $OUT/kernels.txt 2>&1; echo "kernels rc $?"; grep -E "FAIL|rotary store|add rms|halves|gqa|stacked" $OUT/kernels.txt | cut -c1-160
mark parity; timeout 90 $b parity FineTune.Tests/Fixtures/models > $OUT/parity.txt 2>&1; echo "parity rc $?"; grep -i -E "greedy|fail|mismatch" $OUT/parity.txt | head -14 | cut -c1-200
mark waiting for the 7B model; timeout $(( $(left) - 120 )) tail --pid=$mk -f /dev/null; tail -1 $OUT/make7b.txt | cut -c1-200
cell() { # shape cell gen-args
  if [ $(left) -lt 25 ]; then echo "SKIP $1 $2 (deadline)"; return; fi
  mark "$1 $2"; GEN_ARGS="$3" OUT=$OUT timeout $(left) bash tools/bench/run-gpu.sh $1 100 $2 2>&1 | tail -1 | cut -c1-900
}
F="--repeats 2 --compare-unfolded"
cell qwen2.5-0.5b ft-generate "$F"
cell qwen2.5-0.5b hf-generate "--repeats 2"
cell qwen2-7b ft-generate "$F"
cell qwen2-7b hf-generate "--repeats 2"
cell qwen2-7b ft-generate-qlora "$F"
cell qwen2.5-0.5b ft-generate-qlora "$F"
if [ $(left) -gt 30 ]; then mark profile; timeout $(( $(left) - 8 )) $b generate --model /tmp/bench-models/qwen2-7b --new-tokens 96 --repeats 1 --profile --out $OUT/bench/p-decode-7b.json > /dev/null 2>&1; echo "profile rc $?"; fi
mark summary
python3 tools/bench/summarize.py $OUT/bench 2>&1 | grep -v "^|---" | head -20
cd $OUT && tar czf results.tgz bench kernels.json kernels.txt parity.txt make7b.txt gpu.txt 2>/dev/null; rm -rf bench kernels.json kernels.txt make7b.txt
mark end
