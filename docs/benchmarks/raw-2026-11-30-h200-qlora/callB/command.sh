#!/usr/bin/env bash
set -uo pipefail
D=.dev-qlora; export DEVICE_DIR=$D
cp $D/tools/*.sh $D/tools/*.py tools/bench/
source $D/on-gpu.sh $D/dotnet.tgz >/dev/null
source /opt/torch/.venv/bin/activate
t0=$(date +%s)
echo "== lora-check"; timeout 60 dotnet $D/bench/FineTune.Bench.dll lora-check FineTune.Tests/Fixtures/models --out $OUT/lora-check-b.json 2>&1 | grep -E "PASS|FAIL|rror" | cut -c1-100
[ -d /tmp/bench-models/qwen2-7b ] || python3 tools/bench/reference.py make-model --shape qwen2-7b --out /tmp/bench-models/qwen2-7b 2>&1 | grep -v Writing | tail -1
echo "== profile ($(( $(date +%s) - t0 )) s)"
timeout 150 dotnet $D/bench/FineTune.Bench.dll profile --model /tmp/bench-models/qwen2-7b --workload dense --cells dense:1 --steps 8 --qlora --out $OUT/p-qlora-b.json 2>&1 | tail -1 | cut -c1-2500
echo "== done ($(( $(date +%s) - t0 )) s)"
