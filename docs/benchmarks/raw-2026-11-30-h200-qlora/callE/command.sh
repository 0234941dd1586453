#!/usr/bin/env bash
# Final call (H-qlora): 7B QLoRA dense 1 x 512 (the trainer, checkpointing), main's build then this branch's, same machine.
set -uo pipefail
D=.dev-qlora; export DEVICE_DIR=$D
cp $D/tools/*.sh $D/tools/*.py tools/bench/
t0=$(date +%s)
for f in $D/bench/*; do [ -e $D/bench-main/$(basename $f) ] || cp $f $D/bench-main/; done
for b in bench-main bench; do
  echo "== $b ($(( $(date +%s) - t0 )) s)"
  BENCH_DLL=$D/$b/FineTune.Bench.dll OUT=$OUT/$b timeout 45 bash tools/bench/run-gpu.sh qwen2-7b 300 ft-dense1-qlora 2>&1 | grep -v bitsandbytes | tail -1 | cut -c1-700
done
echo "== done ($(( $(date +%s) - t0 )) s)"
