#!/usr/bin/env python3
"""PEFT's logits in bf16 on the GPU for the committed PEFT goldens (the bf16 half of FineTune's PEFT parity).

    python3 tools/parity/peft_bf16.py --base FineTune.Tests/Fixtures/models/qwen2 \
        --golden FineTune.Tests/Adapters/Golden/peft --out /tmp/peft_bf16_logits.safetensors

Loads the qwen2 fixture in bf16 on CUDA with each committed adapter (PEFT's own, and ours) through
PeftModel.from_pretrained and writes "peft.N" / "ours.N": (T, V) fp32 logits for the inputs of inputs.json.
FineTune.Bench peft-parity then compares our engine's bf16 logits with these and with the fp32 goldens.
"""
import argparse, json, os
import torch
from safetensors.torch import save_file


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--base", required=True); p.add_argument("--golden", required=True); p.add_argument("--out", required=True)
    a = p.parse_args()
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    inputs = json.load(open(os.path.join(a.golden, "inputs.json")))["input_ids"]
    out = {}
    for name, folder in (("peft", "peft_adapter"), ("ours", "ours_adapter")):
        base = AutoModelForCausalLM.from_pretrained(a.base, dtype=torch.bfloat16).cuda().eval()
        model = PeftModel.from_pretrained(base, os.path.join(a.golden, folder)).eval()
        with torch.no_grad():
            for i, ids in enumerate(inputs):
                out[f"{name}.{i}"] = model(input_ids=torch.tensor([ids], device="cuda")).logits[0].float().cpu().contiguous()
    save_file(out, a.out)
    print("wrote", a.out, sorted(out))


if __name__ == "__main__":
    main()
