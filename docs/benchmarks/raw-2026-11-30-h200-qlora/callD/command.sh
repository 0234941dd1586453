#!/usr/bin/env bash
set -uo pipefail
D=.dev-qlora; export DEVICE_DIR=$D
source $D/on-gpu.sh $D/dotnet.tgz >/dev/null
source /opt/torch/.venv/bin/activate
cp $D/tools/*.sh $D/tools/*.py tools/bench/
t0=$(date +%s)
for f in $D/bench/*; do [ -e $D/bench-diag/$(basename $f) ] || cp $f $D/bench-diag/; done
python3 tools/bench/reference.py make-model --shape qwen2-7b --out /tmp/bench-models/qwen2-7b 2>&1 | grep -v Writing | tail -1
echo "== profile diag ($(( $(date +%s) - t0 )) s)"
timeout 80 dotnet $D/bench-diag/FineTune.Bench.dll profile --model /tmp/bench-models/qwen2-7b --workload dense --cells dense:1 --steps 8 --qlora --out $OUT/p-diag.json 2>&1 | tail -1 | cut -c1-4000
echo "== done ($(( $(date +%s) - t0 )) s)"
