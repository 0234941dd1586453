#!/usr/bin/env python3
"""Reference loss curve: HF Trainer + PEFT on the same data, initial adapter and hyper-parameters as FineTune.

Run on the GPU machine (torch, transformers, peft, safetensors). Three steps:

  1. python3 tools/parity/loss_curve.py init --base MODEL --out OUT [--rank 16 --alpha 32 --targets q_proj,k_proj,v_proj,o_proj]
       writes OUT/init_adapter: PEFT's own initial adapter (A Kaiming-uniform from a fixed seed, B zeros),
       so both trainers start from the same weights.
  2. FineTune (any machine with .NET):
       dotnet run --project FineTune.Web -- train --model MODEL --data DATA.csv --output OUT/ours.zip \
           --init-adapter OUT/init_adapter --dropout 0 --validation 0 [same --epochs --lr --rank --alpha --batch 1 --accum ...]
       writes OUT/ours/loss.csv
  3. python3 tools/parity/loss_curve.py train --base MODEL --data DATA.csv --out OUT [same hyper-parameters] \
           --compare OUT/ours/loss.csv
       trains with HF Trainer + PEFT from OUT/init_adapter and writes OUT/hf_losses.json
       ({"steps": [{"step", "loss", "learning_rate", "grad_norm"}], "settings": {...}}); with --compare it prints the
       largest per-step loss difference to ours.

What is kept equal: the tutorial prompt layout (FineTune.Engine/Tokenization/PromptTemplate.cs, style Tutorial), answer-only
labels with EOS appended, the per-epoch order torch.randperm(n, generator seeded with seed + epoch), batch 1 (FineTune's
packed batches of several rows equal HF's DataCollatorWithFlattening, which needs flash attention; keep --batch 1 here),
AdamW (0.9, 0.999, 1e-8, weight decay 0), clipping 1.0, linear schedule, fp32 on the CPU, dropout 0 (the two RNG streams
differ). HF's loss per optimizer step is normalised by the label tokens of the whole accumulation window, as ours is.
"""
import argparse
import csv
import json
import os

import torch


def tutorial_prompt(instruction, inp=""):
    """FineTune.Engine/Tokenization/PromptTemplate.cs TutorialTemplate(WithInput), the text before {output}."""
    if inp and inp.strip():
        return "### 指令：\n" + instruction + "\n\n### 輸入：\n" + inp + "\n\n### 回應：\n"
    return "### 指令：\n" + instruction + "\n\n### 回應：\n"


def special_prefix(tok, text):
    """The ids the tokenizer puts before a text when adding special tokens (Llama's BOS; nothing for Qwen)."""
    with_special = tok(text)["input_ids"]
    without = tok(text, add_special_tokens=False)["input_ids"]
    for start in range(0, len(with_special) - len(without) + 1):
        if with_special[start:start + len(without)] == without:
            return with_special[:start]
    return []


def read_rows(path):
    rows = []
    if path.endswith(".jsonl"):
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    o = json.loads(line)
                    rows.append((o.get("instruction", ""), o.get("output", ""), o.get("input", "")))
    else:
        with open(path, encoding="utf-8-sig", newline="") as f:
            for r in csv.DictReader(f):
                rows.append((r.get("instruction") or r.get("問題") or "", r.get("output") or r.get("回答") or "", r.get("input") or ""))
    return [r for r in rows if r[0].strip() and r[1].strip()]


def lora_config(args):
    from peft import LoraConfig
    return LoraConfig(r=args.rank, lora_alpha=args.alpha, lora_dropout=0.0, target_modules=args.targets.split(","),
                      bias="none", task_type="CAUSAL_LM")


def cmd_init(args):
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM
    torch.manual_seed(args.seed)
    base = AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.float32)
    model = get_peft_model(base, lora_config(args))
    model.save_pretrained(os.path.join(args.out, "init_adapter"))
    print(f"wrote {os.path.join(args.out, 'init_adapter')}")


def cmd_train(args):
    from peft import PeftModel
    from torch.utils.data import Dataset, Sampler
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainerCallback, TrainingArguments

    tok = AutoTokenizer.from_pretrained(args.base)
    eos = tok.eos_token_id
    examples = []
    for instruction, output, inp in read_rows(args.data):
        prompt = tutorial_prompt(instruction, inp)
        p = special_prefix(tok, prompt) + tok(prompt, add_special_tokens=False)["input_ids"]
        a = tok(output, add_special_tokens=False)["input_ids"]
        if not a or a[-1] != eos:
            a = a + [eos]
        ids = (p + a)[: args.max_length]
        labels = ([-100] * len(p) + a)[: args.max_length]
        examples.append({"input_ids": ids, "labels": labels})

    class Rows(Dataset):
        def __len__(self):
            return len(examples)

        def __getitem__(self, i):
            return examples[i]

    state = {"epoch": 0}

    class SeededOrder(Sampler):
        """FineTune's order: torch.randperm(n) with a generator seeded seed + epoch."""

        def __len__(self):
            return len(examples)

        def set_epoch(self, epoch):
            state["epoch"] = int(epoch)

        def __iter__(self):
            g = torch.Generator()
            g.manual_seed(args.seed + state["epoch"])
            return iter(torch.randperm(len(examples), generator=g).tolist())

    class EpochTracker(TrainerCallback):
        def on_epoch_begin(self, a, s, c, **kw):
            state["epoch"] = int(round(s.epoch or 0))

    class OrderedTrainer(Trainer):
        def _get_train_sampler(self, *a, **kw):
            return SeededOrder()

    def collate(batch):
        assert len(batch) == 1, "keep --batch 1 (see the docstring)"
        ids = torch.tensor([batch[0]["input_ids"]], dtype=torch.long)
        return {"input_ids": ids, "labels": torch.tensor([batch[0]["labels"]], dtype=torch.long),
                "attention_mask": torch.ones_like(ids)}

    base = AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, os.path.join(args.out, "init_adapter"), is_trainable=True)
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0

    logs = []

    class Collect(TrainerCallback):
        def on_log(self, a, s, c, logs_=None, **kw):
            entry = kw.get("logs") or logs_ or {}
            if "loss" in entry:
                logs.append({"step": s.global_step, "loss": entry["loss"], "learning_rate": entry.get("learning_rate"),
                             "grad_norm": entry.get("grad_norm")})

    targs = TrainingArguments(
        output_dir=os.path.join(args.out, "hf_run"), num_train_epochs=args.epochs, learning_rate=args.lr,
        per_device_train_batch_size=1, gradient_accumulation_steps=args.accum, weight_decay=0.0, max_grad_norm=1.0,
        lr_scheduler_type="linear", warmup_steps=0, logging_steps=1, save_strategy="no", report_to=[], seed=args.seed,
        use_cpu=not args.gpu, dataloader_num_workers=0, remove_unused_columns=False, optim="adamw_torch",
    )
    trainer = OrderedTrainer(model=model, args=targs, train_dataset=Rows(), data_collator=collate,
                             callbacks=[EpochTracker(), Collect()])
    trainer.train()
    result = {"steps": logs, "settings": vars(args)}
    path = os.path.join(args.out, "hf_losses.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {path}: {len(logs)} steps")

    if args.compare:
        ours = {}
        with open(args.compare, encoding="utf-8") as f:
            for r in csv.DictReader(f):
                ours[int(r["step"])] = float(r["loss"])
        diffs = [(e["step"], abs(e["loss"] - ours[e["step"]])) for e in logs if e["step"] in ours]
        worst = max(diffs, key=lambda d: d[1]) if diffs else None
        print(f"compared {len(diffs)} steps with {args.compare}: steps HF {len(logs)} vs ours {len(ours)}; "
              f"largest loss difference {worst[1]:.3g} at step {worst[0]}" if worst else "nothing to compare")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["init", "train"])
    parser.add_argument("--base", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--data")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--alpha", type=float, default=32)
    parser.add_argument("--targets", default="q_proj,k_proj,v_proj,o_proj")
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--accum", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--gpu", action="store_true", help="train on the GPU (fp32) instead of the CPU")
    parser.add_argument("--compare", help="FineTune's loss.csv to compare with")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if args.command == "init":
        cmd_init(args)
    else:
        if not args.data:
            parser.error("train needs --data")
        cmd_train(args)


if __name__ == "__main__":
    main()
