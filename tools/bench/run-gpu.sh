#!/usr/bin/env bash
# One benchmark cell set on the GPU machine, both stacks in the same call (see tools/bench/README.md).
#   bash tools/bench/run-gpu.sh SHAPE [ROWS] [CELL ...]   SHAPE: qwen2.5-0.5b | qwen2-7b
#   CELL: hf-qa-lora hf-qa-lora-flat ft-qa-lora hf-dense-lora ft-dense-lora ft-qa-qlora ft-dense1-qlora (default: these
#         seven; hf-qa-lora-flat is HF's padding-free DataCollatorWithFlattening; ft-qa-qlora decides gradient
#         checkpointing as a run does (auto: off when the GPU holds the run without it); ft-dense1-qlora is issue 14's
#         "QLoRA NF4, dense 1 x 512, checkpointing" cell, checkpointing forced on),
#         hf-generate ft-generate ft-generate-qlora (batch 1, greedy, 256 new tokens; the last with a 4-bit base),
#         ft-dense1-qlora-keep (QLoRA 1 x 512 keeping all activations: gradient checkpointing off),
#         ft-qa-qlora-ckpt (QLoRA Q&A with gradient checkpointing forced on: the recomputing path's speed),
#         ft-qa-lora-2gpu ft-dense-lora-2gpu (the same on two GPUs, data parallel: same global batch and steps),
#         ft-qa-lora-mlp (FineTune's Q&A with LoRA on all seven projections, the MLP's too; no HF twin),
#         ft-qa-lora-keep (FineTune's Q&A with every micro-batch keeping all its activations: long ones checkpoint none)
# GEN_ARGS: extra arguments for every generate cell, both stacks (e.g. "--repeats 2").
# FT_ARGS: extra arguments for every FineTune train cell (e.g. "--loss-chunk 128"; with OUT set apart, as BENCH_DLL).
# Needs: .device/dotnet.tgz, .device/on-gpu.sh and .device/bench (FineTune.Bench published with TorchBackend=none);
#        DEVICE_DIR names another folder than .device.
# Writes $OUT/bench/<shape>-<stack>-<workload>-<mode>.json, each with the peak device memory seen by nvidia-smi.
set -uo pipefail
shape=${1:?shape}; rows=${2:-2000}; shift $(( $# >= 2 ? 2 : $# ))
cells=${*:-hf-qa-lora hf-qa-lora-flat ft-qa-lora hf-dense-lora ft-dense-lora ft-qa-qlora ft-dense1-qlora}
dev=${DEVICE_DIR:-.device}
source $dev/on-gpu.sh $dev/dotnet.tgz >/dev/null
source /opt/torch/.venv/bin/activate
out=${OUT:-/tmp/out}/bench; mkdir -p "$out"
models=/tmp/bench-models; mkdir -p $models
[ -f /tmp/qa.jsonl ] || python3 tools/bench/reference.py make-data --out /tmp/qa.jsonl --rows 2000
[ -d $models/$shape ] || python3 tools/bench/reference.py make-model --shape "$shape" --out $models/$shape 2>&1 | grep -v Writing
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$out/gpu.txt"

# measure NAME COMMAND...: runs COMMAND with nvidia-smi sampling used memory every 100 ms; adds peak_device_bytes
# (the largest any one GPU used; PEAK_GPUS, e.g. "1" or "0,1", limits that to the cell's GPUs when another process
# computes on the machine's other GPU at the same time).
measure() {
  local name=$1; shift
  nvidia-smi ${PEAK_GPUS:+--id=$PEAK_GPUS} --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > /tmp/mem.$name.txt &
  local sampler=$!
  "$@" > /tmp/log.$name.txt 2>&1; local rc=$?
  kill $sampler; wait $sampler 2>/dev/null
  tail -2 /tmp/log.$name.txt
  local peak; peak=$(sort -n /tmp/mem.$name.txt | tail -1)
  if [ -f "$out/$name.json" ]; then
    python3 - "$out/$name.json" "$peak" <<'PY'
import json, sys
p, peak = sys.argv[1], int(sys.argv[2])
d = json.load(open(p)); d["peak_device_bytes"] = peak * 1024 * 1024; json.dump(d, open(p, "w"), indent=1)
PY
  else echo "$name failed (rc $rc)"; tail -20 /tmp/log.$name.txt; fi
}

bench=${BENCH_DLL:-$dev/bench/FineTune.Bench.dll} # BENCH_DLL: another build, e.g. the baseline in the same call
# HF's Trainer wraps the model in nn.DataParallel when it sees more than one GPU: its cells see one (HF_GPU, default 0),
# as FineTune's one-GPU cells use one (on a 2-GPU machine its Q&A cells otherwise ran on both: 72 GiB, the loss doubled).
hfgpu="env CUDA_VISIBLE_DEVICES=${HF_GPU:-0}"
data="--data /tmp/qa.jsonl --max-rows $rows"
for cell in $cells; do
  case $cell in
    hf-qa-lora)      measure "$shape-$cell" $hfgpu python3 tools/bench/reference.py train --model $models/$shape --workload qa $data --out "$out/$shape-$cell.json" ;;
    hf-qa-lora-flat) measure "$shape-$cell" $hfgpu python3 tools/bench/reference.py train --model $models/$shape --workload qa $data --collator flatten --out "$out/$shape-$cell.json" ;;
    hf-dense-lora)   measure "$shape-$cell" $hfgpu python3 tools/bench/reference.py train --model $models/$shape --workload dense --out "$out/$shape-$cell.json" ;;
    ft-qa-lora)      measure "$shape-$cell" dotnet $bench train --model $models/$shape --workload qa $data ${FT_ARGS:-} --out "$out/$shape-$cell.json" ;;
    ft-dense-lora)   measure "$shape-$cell" dotnet $bench train --model $models/$shape --workload dense ${FT_ARGS:-} --out "$out/$shape-$cell.json" ;;
    ft-qa-lora-keep) measure "$shape-$cell" dotnet $bench train --model $models/$shape --workload qa $data --long-micro-batches off ${FT_ARGS:-} --out "$out/$shape-$cell.json" ;;
    ft-qa-lora-mlp)  measure "$shape-$cell" dotnet $bench train --model $models/$shape --workload qa $data --targets q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj ${FT_ARGS:-} --out "$out/$shape-$cell.json" ;;
    ft-qa-lora-2gpu) measure "$shape-$cell" dotnet $bench train --model $models/$shape --workload qa $data --gpus 2 ${FT_ARGS:-} --out "$out/$shape-$cell.json" ;;
    ft-dense-lora-2gpu) measure "$shape-$cell" dotnet $bench train --model $models/$shape --workload dense --gpus 2 ${FT_ARGS:-} --out "$out/$shape-$cell.json" ;;
    ft-qa-qlora)     measure "$shape-$cell" dotnet $bench train --model $models/$shape --workload qa $data --qlora ${FT_ARGS:-} --out "$out/$shape-$cell.json" ;;
    ft-qa-qlora-ckpt) measure "$shape-$cell" dotnet $bench train --model $models/$shape --workload qa $data --qlora --gradient-checkpointing on ${FT_ARGS:-} --out "$out/$shape-$cell.json" ;;
    ft-dense1-qlora) measure "$shape-$cell" dotnet $bench train --model $models/$shape --workload dense --dense-batch 1 --dense-steps 30 --qlora --gradient-checkpointing on ${FT_ARGS:-} --out "$out/$shape-$cell.json" ;;
    ft-dense1-qlora-keep) measure "$shape-$cell" dotnet $bench train --model $models/$shape --workload dense --dense-batch 1 --dense-steps 30 --qlora --gradient-checkpointing off ${FT_ARGS:-} --out "$out/$shape-$cell.json" ;;
    hf-generate)     measure "$shape-$cell" $hfgpu python3 tools/bench/reference.py generate --model $models/$shape ${GEN_ARGS:-} --out "$out/$shape-$cell.json" ;;
    ft-generate-qlora) measure "$shape-$cell" dotnet $bench generate --model $models/$shape --qlora ${GEN_ARGS:-} --out "$out/$shape-$cell.json" ;;
    ft-generate)     measure "$shape-$cell" dotnet $bench generate --model $models/$shape ${GEN_ARGS:-} --out "$out/$shape-$cell.json" ;;
    *) echo "unknown cell $cell"; exit 2 ;;
  esac
done
python3 -c "import bitsandbytes" 2>/dev/null || echo "bitsandbytes is not installed on this machine: no QLoRA reference cells" | tee "$out/no-bitsandbytes.txt"
