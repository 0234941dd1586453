#!/usr/bin/env python3
"""Turns the JSON files of tools/bench/run-gpu.sh into the table of docs/benchmarks.md.

    python3 tools/bench/summarize.py RAW_DIR [RAW_DIR ...] > table.md

MFU = 4 x N_matmul x real_tokens / (wall_s x peak x GPUs), per GPU, with N_matmul the decoder + lm_head weights
(frozen base: forward 2N, backward input gradients 2N per token; attention's own FLOPs left out, so
this understates both stacks alike) and peak = 989 TFLOP/s (H100/H200 SXM dense bf16).
"""
import json, os, sys

SHAPES = {"qwen2.5-0.5b": dict(hidden=896, layers=24, inter=4864, heads=14, kv=2, vocab=151936),
          "qwen2-7b": dict(hidden=3584, layers=28, inter=18944, heads=28, kv=4, vocab=152064)}
PEAK = 989e12


def n_matmul(shape):
    s = SHAPES[shape]
    hd = s["hidden"] // s["heads"]
    attn = s["hidden"] * hd * (s["heads"] * 2 + s["kv"] * 2)
    mlp = 3 * s["hidden"] * s["inter"]
    return s["layers"] * (attn + mlp) + s["vocab"] * s["hidden"]


def load(dirs):
    cells = {}
    for d in dirs:
        for f in sorted(os.listdir(d)):
            if f.endswith(".json"):
                r = json.load(open(os.path.join(d, f)))
                shape = f.split("-hf-")[0].split("-ft-")[0]
                if "stack" in r:  # bench cells only (not parity or profile files)
                    cells[f[:-5]] = dict(r, shape=shape)
    return cells


def mode_of(c):
    mode = c.get("mode", "lora-16bit")
    if c.get("gradient_checkpointing") is True:
        mode += ", checkpointing"
    elif c.get("gradient_checkpointing") is False and mode.startswith("qlora"):
        mode += ", no checkpointing"
    return mode


def main():
    cells = load(sys.argv[1:])
    train = {k: c for k, c in cells.items() if c["workload"] != "generate"}
    generate = {k: c for k, c in cells.items() if c["workload"] == "generate"}
    print("| model | workload | mode | stack | wall s | real tokens/s | vs HF | peak GPU GiB | final loss | mean loss, last 10 steps | MFU |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, c in sorted(train.items()):
        flat = c.get("collator") == "flatten"
        gpus = c.get("gpus", 1)
        stack = ("HF transformers + PEFT" + (", padding-free" if flat else "")) if c["stack"].startswith("hf") else "FineTune" + (f", {gpus} GPUs" if gpus > 1 else "")
        if c["stack"].startswith("hf"):
            ratio = "1.00x"
        else:
            # Against HF padded, and for Q&A also against HF padding-free (DataCollatorWithFlattening).
            refs = [(train.get(name.replace("-ft-", "-hf-")), ""), (train.get(name.replace("-ft-", "-hf-") + "-flat"), " padding-free")]
            ratio = " / ".join(f"{c['tokens_per_s'] / r['tokens_per_s']:.2f}x{label}" for r, label in refs if r) or "no reference"
        mfu = 4 * n_matmul(c["shape"]) * c["real_tokens"] / (c["wall_s"] * PEAK * gpus)  # per GPU
        acc, epochs = c.get("accumulation", 1), c.get("epochs", 1)
        workload = (f"Q&A {c['rows']:,} rows, {c.get('batch', 8)}{f' x {acc}' if acc > 1 else ''}/step" if c["workload"] == "qa"
                    else f"dense {c.get('batch', 4)} x 512{f' x {acc}' if acc > 1 else ''}") + (f", {epochs} epochs" if epochs > 1 else "")
        print(f"| {c['shape']} | {workload} | {mode_of(c)} | {stack} | {c['wall_s']:.1f} | {c['tokens_per_s']:,.0f} | {ratio} "
              f"| {c.get('peak_device_bytes', 0) / 2**30:.2f} | {c['final_loss']:.4f} | {c.get('mean_loss_last_10', float('nan')):.4f} | {mfu:.1%} |")
    if generate:
        print()
        print("| model | generation | stack | best of 3, s | tokens/s | vs HF | peak GPU GiB |")
        print("|---|---|---|---:|---:|---:|---:|")
        for name, c in sorted(generate.items()):
            four_bit = c.get("mode", "").startswith("qlora")
            stack = "HF transformers generate()" if c["stack"].startswith("hf") else "FineTune Generator" + (", NF4 base" if four_bit else "")
            # A 4-bit base against HF's 16-bit generate(): the GPU machine has no bitsandbytes for HF's 4-bit one.
            ref = generate.get(name.replace("-ft-", "-hf-").removesuffix("-qlora"))
            ratio = (f"{c['tokens_per_s'] / ref['tokens_per_s']:.2f}x" + (" (HF 16-bit)" if four_bit else "")) if ref else "no reference"
            print(f"| {c['shape']} | batch 1, {c['prompt_tokens']}-token prompt, {c['new_tokens']} greedy tokens | {stack} | {c['wall_s']:.2f} "
                  f"| {c['tokens_per_s']:.1f} | {ratio} | {c.get('peak_device_bytes', 0) / 2**30:.2f} |")


if __name__ == "__main__":
    main()
