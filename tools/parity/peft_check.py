#!/usr/bin/env python3
"""PEFT parity data for FineTune's LoRA (run on the GPU machine: torch, transformers, peft, safetensors).

Two directions, both on a tiny fixture base model in fp32 on the CPU (exact math, no TF32):

1. OUR adapter in PEFT: loads the base with transformers, applies the adapter folder FineTune wrote
   (PeftModel.from_pretrained) and writes the logits, so our engine's logits can be compared (<= 1e-4).
2. A PEFT-made adapter for OUR engine: LoraConfig(r=8, lora_alpha=16, q/k/v/o_proj, dropout 0) with a fixed
   seed and a non-zero lora_B (PEFT initialises B to zeros, which would test nothing), saved with
   save_pretrained, plus PEFT's logits, so our engine can load it and compare.

Usage (from the repository root):
  python3 tools/parity/peft_check.py --base FineTune.Tests/Fixtures/models/qwen2 \
      --ours /path/to/our/adapter_folder --out FineTune.Tests/Adapters/Golden/peft
  (--ours is optional; without it only direction 2 is written)

Writes into --out:
  inputs.json                       {"input_ids": [[...], ...]} the token ids used
  peft_adapter/                     adapter_config.json + adapter_model.safetensors made by PEFT
  peft_logits.safetensors           "logits.N": (T, V) fp32 for input N, base + PEFT adapter
  base_logits.safetensors           the same without any adapter (sanity: the adapter must change them)
  ours_in_peft_logits.safetensors   (with --ours) logits of base + OUR adapter as PEFT computes them
  versions.json                     torch / transformers / peft versions
"""
import argparse
import json
import os

import torch
from safetensors.torch import save_file


def logits_for(model, batches):
    out = {}
    with torch.no_grad():
        for i, ids in enumerate(batches):
            x = torch.tensor([ids], dtype=torch.long)
            out[f"logits.{i}"] = model(input_ids=x).logits[0].float().contiguous()
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="HF model folder (a fixture such as FineTune.Tests/Fixtures/models/qwen2)")
    parser.add_argument("--ours", help="adapter folder written by FineTune (train command output folder)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args()

    import peft
    import transformers
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.backends.cuda.matmul.allow_tf32 = False
    os.makedirs(args.out, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(args.base)
    texts = ["### 指令：\n你們的產品保固期是多久？\n\n### 回應：\n", "Hello, how are you today?", "可以退貨嗎？ 7 天內"]
    batches = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    with open(os.path.join(args.out, "inputs.json"), "w") as f:
        json.dump({"texts": texts, "input_ids": batches}, f, ensure_ascii=False, indent=1)

    def base_model():
        return AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.float32).eval()

    save_file(logits_for(base_model(), batches), os.path.join(args.out, "base_logits.safetensors"))

    # 2. A PEFT-made adapter with non-zero B.
    torch.manual_seed(args.seed)
    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                        bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(base_model(), config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn_like(p) * 0.1)
    model.eval()
    save_file(logits_for(model, batches), os.path.join(args.out, "peft_logits.safetensors"))
    model.save_pretrained(os.path.join(args.out, "peft_adapter"))

    # 1. Our adapter, applied by PEFT.
    if args.ours:
        ours = PeftModel.from_pretrained(base_model(), args.ours).eval()
        n_lora = sum(1 for n, _ in ours.named_parameters() if "lora_A" in n)
        print(f"our adapter: PEFT attached {n_lora} lora_A matrices")
        save_file(logits_for(ours, batches), os.path.join(args.out, "ours_in_peft_logits.safetensors"))

    with open(os.path.join(args.out, "versions.json"), "w") as f:
        json.dump({"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
