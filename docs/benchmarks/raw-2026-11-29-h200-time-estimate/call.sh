#!/usr/bin/env bash
# H13 (issue 13): the settings page's measured time estimate vs the measured run, Qwen2.5-0.5B shape, random weights, bf16 LoRA.
set -uo pipefail
D=.dev-i13
t0=$(date +%s); deadline=${DEADLINE:-100}
left() { echo $(( deadline - ($(date +%s) - t0) )); }
source $D/on-gpu.sh $D/dotnet.tgz >/dev/null
source /opt/torch/.venv/bin/activate
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee $OUT/gpu.txt
python3 $D/reference.py make-model --shape qwen2.5-0.5b --out /tmp/m 2>&1 | grep -v Writing | tail -1
python3 $D/reference.py make-data --out /tmp/qa.jsonl --rows 2000 | tail -1
echo "setup $(( $(date +%s) - t0 )) s"
run() { # name args...
  local name=$1; shift
  if [ $(left) -lt 15 ]; then echo "SKIP $name"; return; fi
  timeout $(left) dotnet $D/bench/FineTune.Bench.dll train --model /tmp/m --workload qa --data /tmp/qa.jsonl "$@" --estimate --out $OUT/$name.json > $OUT/$name.log 2>&1
  echo "$name rc $? ($(( $(date +%s) - t0 )) s)"
  python3 - $OUT/$name.json <<'PY' 2>/dev/null || tail -5 $OUT/$name.log
import json,sys
d=json.load(open(sys.argv[1])); e=d["estimate"]
print(f'{d["mode"]} rows {d["rows"]} steps {e["steps"]} evals {e["evaluations"]}x{e["eval_batches"]}: estimate {e["total_s"]:.1f} s (load {e["load_s"]:.1f}, train {e["train_s"]:.1f}, eval {e["eval_s"]:.1f}) vs run {e["run_s"]:.1f} s (load {d["load_s"]:.1f}) ratio {e["ratio"]:.3f}; timed steps {e["timed_steps"]}')
PY
}
run lora --max-rows 2000 --validation 0.1 --evaluations 10
run qlora --max-rows 1000 --validation 0.1 --evaluations 10 --qlora
