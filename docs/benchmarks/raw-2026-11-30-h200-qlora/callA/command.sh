#!/usr/bin/env bash
# Call A (issue 14, H-qlora): GPU checks of the LoRA step changes, then the 7B QLoRA profile and dense 1 x 512 cell of this branch.
set -uo pipefail
D=.dev-qlora; export DEVICE_DIR=$D
cp $D/tools/*.sh $D/tools/*.py tools/bench/
source $D/on-gpu.sh $D/dotnet.tgz >/dev/null
t0=$(date +%s); deadline=${DEADLINE:-170}
left() { echo $(( deadline - ($(date +%s) - t0) )); }
echo "== lora-check"; timeout 60 dotnet $D/bench/FineTune.Bench.dll lora-check FineTune.Tests/Fixtures/models --out $OUT/lora-check.json 2>&1 | grep -E "PASS|FAIL|rror" | cut -c1-200
echo "== make model ($(( $(date +%s) - t0 )) s)"
source /opt/torch/.venv/bin/activate
python3 tools/bench/reference.py make-data --out /tmp/qa.jsonl --rows 2000 >/dev/null
python3 tools/bench/reference.py make-model --shape qwen2-7b --out /tmp/bench-models/qwen2-7b 2>&1 | grep -v Writing | tail -2
echo "== profile ($(( $(date +%s) - t0 )) s)"
timeout $(left) dotnet $D/bench/FineTune.Bench.dll profile --model /tmp/bench-models/qwen2-7b --workload dense --cells dense:1 --steps 8 --qlora --out $OUT/p-qlora.json 2>&1 | tail -1 | cut -c1-1500
echo "== dense1 ($(( $(date +%s) - t0 )) s)"
OUT=$OUT/new timeout $(left) bash tools/bench/run-gpu.sh qwen2-7b 300 ft-dense1-qlora 2>&1 | tail -2 | cut -c1-1200
cp $OUT/new/bench/qwen2-7b-ft-dense1-qlora.json $OUT/ 2>/dev/null; rm -rf $OUT/new
echo "== done ($(( $(date +%s) - t0 )) s)"
