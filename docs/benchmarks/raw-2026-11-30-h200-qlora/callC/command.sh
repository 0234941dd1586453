#!/usr/bin/env bash
set -uo pipefail
D=.dev-qlora; export DEVICE_DIR=$D
cp $D/tools/*.sh $D/tools/*.py tools/bench/
source $D/on-gpu.sh $D/dotnet.tgz >/dev/null
source /opt/torch/.venv/bin/activate
t0=$(date +%s)
for f in $D/bench/*; do [ -e $D/bench-main/$(basename $f) ] || cp $f $D/bench-main/; done
echo "== host-calls"; timeout 40 dotnet $D/bench/FineTune.Bench.dll host-calls 2>&1 | tail -1
python3 tools/bench/reference.py make-model --shape qwen2-7b --out /tmp/bench-models/qwen2-7b 2>&1 | grep -v Writing | tail -1
for b in bench-main bench; do
  echo "== profile $b ($(( $(date +%s) - t0 )) s)"
  timeout 80 dotnet $D/$b/FineTune.Bench.dll profile --model /tmp/bench-models/qwen2-7b --workload dense --cells dense:1 --steps 8 --qlora --out $OUT/p-$b.json 2>&1 | tail -1 | cut -c1-1800
done
echo "== done ($(( $(date +%s) - t0 )) s)"
