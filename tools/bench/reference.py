#!/usr/bin/env python3
"""The reference stack for FineTune's benchmark: HF transformers + PEFT (the tutorial's stack), on the GPU.

    python3 tools/bench/reference.py make-model --shape qwen2.5-0.5b --out /tmp/m/qwen2.5-0.5b
    python3 tools/bench/reference.py make-data  --out /tmp/qa.jsonl [--rows 2000]
    python3 tools/bench/reference.py train --model DIR --workload qa|dense --data /tmp/qa.jsonl --out result.json

Q&A workload: rows of token ids (prompt = the tutorial template "### 指令：\\n{q}\\n\\n### 回應：\\n" around a
question, answer after it, EOS appended), answer-only loss (labels -100 on the prompt), one epoch, 8 rows per
optimizer step, padded per batch by DataCollatorForSeq2Seq as HF users do. Dense: 4 x 512 continuous tokens.
Both: LoRA r=16 alpha=32 dropout 0.05 on q/k/v/o, AdamW lr 2e-4, linear schedule, bf16, sdpa, HF Trainer.
"""
import argparse, json, math, os, random, sys, time

SHAPES = {
    # Qwen2.5-0.5B and Qwen2-7B configs (public config.json values); weights random.
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, rope_theta=1000000.0,
                         max_position_embeddings=32768, rms_norm_eps=1e-6),
    "qwen2-7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                     num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False, rope_theta=1000000.0,
                     max_position_embeddings=32768, rms_norm_eps=1e-6),
}
# Token ids of the tutorial template in Qwen2's tokenizer are not available offline; fixed ids stand in for them.
TEMPLATE_HEAD = [14374, 220, 64108, 5122, 198]          # stands for "### 指令：\n" (5 tokens)
TEMPLATE_MID = [271, 14374, 220, 107420, 5122, 198]      # stands for "\n\n### 回應：\n" (6 tokens)
EOS = 151643


def make_model(shape, out):
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config
    cfg = dict(SHAPES[shape])
    theta = cfg.pop("rope_theta")
    config = Qwen2Config(**cfg, rope_parameters={"rope_type": "default", "rope_theta": theta})
    config.eos_token_id = EOS
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out, max_shard_size="4GB")
    print("saved", shape, sum(p.numel() for p in model.parameters()) / 1e9, "B params to", out)


def make_data(out, rows, seed=0):
    """Synthetic Chinese Q&A as token ids: question 8-60 tokens, answer 10-330, so rows span about 20-400 tokens."""
    rng = random.Random(seed)
    with open(out, "w") as f:
        for _ in range(rows):
            q = [rng.randrange(100000, 150000) for _ in range(rng.randint(8, 60))]
            a_len = min(int(rng.lognormvariate(math.log(110), 0.7)), 330)
            a = [rng.randrange(100000, 150000) for _ in range(max(10, a_len))]
            prompt = TEMPLATE_HEAD + q + TEMPLATE_MID
            f.write(json.dumps({"prompt": prompt, "answer": a + [EOS]}) + "\n")
    print("wrote", rows, "rows to", out)


def load_rows(path):
    with open(path) as f:
        return [json.loads(l) for l in f]


def train(args):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments, TrainerCallback
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16, attn_implementation="sdpa").cuda()
    model.config.use_cache = False
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                      bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    n_params = sum(p.numel() for p in model.parameters())

    if args.workload == "qa":
        rows = load_rows(args.data)[:args.max_rows]
        data = [{"input_ids": r["prompt"] + r["answer"], "attention_mask": [1] * (len(r["prompt"]) + len(r["answer"])),
                 "labels": [-100] * len(r["prompt"]) + r["answer"]} for r in rows]
        batch, steps = 8, None
        real_tokens = sum(len(d["input_ids"]) for d in data)
        pad = EOS

        def collate(features):  # what DataCollatorForSeq2Seq does: pad to the longest row, labels with -100
            T = max(len(f["input_ids"]) for f in features)
            ids = torch.tensor([f["input_ids"] + [pad] * (T - len(f["input_ids"])) for f in features])
            mask = torch.tensor([f["attention_mask"] + [0] * (T - len(f["attention_mask"])) for f in features])
            labels = torch.tensor([f["labels"] + [-100] * (T - len(f["labels"])) for f in features])
            return {"input_ids": ids, "attention_mask": mask, "labels": labels}
        collator = collate
        if args.collator == "flatten":
            # HF's padding-free path: the 8 rows as one row with position ids restarting per row (no padding);
            # transformers builds the block-diagonal causal mask from the position ids.
            from transformers import DataCollatorWithFlattening
            data = [{"input_ids": d["input_ids"], "labels": d["labels"]} for d in data]
            collator = DataCollatorWithFlattening(return_position_ids=True, separator_id=-100)
    else:
        g = torch.Generator().manual_seed(1)
        n_batches = args.dense_steps
        batch = args.dense_batch
        ids = torch.randint(100000, 150000, (n_batches * batch, 512), generator=g)
        data = [{"input_ids": r.tolist(), "attention_mask": [1] * 512, "labels": r.tolist()} for r in ids]
        real_tokens = n_batches * batch * 512

        def collate(features):
            return {k: torch.tensor([f[k] for f in features]) for k in ("input_ids", "attention_mask", "labels")}
        collator = collate

    losses = []
    step_ends = []      # perf_counter at each optimizer step's end
    batch_tokens = []   # real tokens of each batch, in the order the collator made them (the steps' order)
    inner_collator = collator

    def collator(features):
        batch_tokens.append(sum(len(f["input_ids"]) for f in features))
        return inner_collator(features)

    class Record(TrainerCallback):
        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append({"step": state.global_step, "loss": logs["loss"]})

        def on_step_end(self, a, state, control, **kw):
            step_ends.append(time.perf_counter())

    targs = TrainingArguments(output_dir="/tmp/ref-out", per_device_train_batch_size=batch, gradient_accumulation_steps=1,
                              num_train_epochs=1, learning_rate=2e-4, lr_scheduler_type="linear", warmup_steps=0,
                              bf16=True, logging_steps=1, save_strategy="no", report_to=[], dataloader_num_workers=0,
                              remove_unused_columns=False, max_grad_norm=1.0, seed=0, disable_tqdm=True)
    trainer = Trainer(model=model, args=targs, train_dataset=data, data_collator=collator, callbacks=[Record()])
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    trainer.train()
    torch.cuda.synchronize()
    wall = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated()
    # As FineTune.Bench's second_half_tokens_per_s: the steps after the middle one, once warm-up is behind.
    n, i0 = len(step_ends), len(step_ends) // 2
    second_half = sum(batch_tokens[i0 + 1:n]) / (step_ends[-1] - step_ends[i0]) if n >= 4 else None
    result = {"stack": "hf-transformers+peft", "versions": {"torch": torch.__version__,
              "transformers": __import__("transformers").__version__, "peft": __import__("peft").__version__},
              "workload": args.workload, "mode": "lora-16bit", "collator": args.collator, "batch": batch, "model": os.path.basename(args.model.rstrip("/")), "params": n_params,
              "rows": len(data), "optimizer_steps": trainer.state.global_step, "wall_s": wall,
              "real_tokens": real_tokens, "tokens_per_s": real_tokens / wall, "peak_gpu_bytes": peak,
              "second_half_tokens_per_s": second_half, "first_step_s": step_ends[0] - start if step_ends else None,
              "final_loss": losses[-1]["loss"] if losses else None,
              "mean_loss_last_10": sum(l["loss"] for l in losses[-10:]) / max(1, len(losses[-10:])),
              "losses": losses, "gpu": torch.cuda.get_device_name(0)}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps({k: v for k, v in result.items() if k != "losses"}))


def generate(args):
    """HF generate(): batch 1, greedy, exactly --new-tokens new tokens (eos ignored), KV cache, bf16, sdpa."""
    import torch
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16, attn_implementation="sdpa").cuda().eval()
    prompt = torch.tensor([TEMPLATE_HEAD + list(range(100000, 100032)) + TEMPLATE_MID], device="cuda")
    kwargs = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False, use_cache=True,
                  eos_token_id=None, pad_token_id=EOS)
    with torch.no_grad():
        model.generate(prompt, **kwargs)  # warm-up
        torch.cuda.synchronize()
        runs = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            out = model.generate(prompt, **kwargs)
            torch.cuda.synchronize()
            runs.append(time.perf_counter() - start)
    new = out.shape[1] - prompt.shape[1]
    best = min(runs)
    result = {"stack": "hf-transformers", "workload": "generate", "model": os.path.basename(args.model.rstrip("/")),
              "prompt_tokens": prompt.shape[1], "new_tokens": new, "wall_s": best, "runs_s": runs,
              "tokens_per_s": new / best, "gpu": torch.cuda.get_device_name(0),
              "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__}}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result))


def profile(args):
    """Where an HF + PEFT training step's time goes (FineTune.Bench profile's counterpart): forward (loss included),
    backward and AdamW, first as HF runs them (host time; the GPU runs behind), then with a sync after each phase."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16, attn_implementation="sdpa").cuda()
    model.config.use_cache = False
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05,
                                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM"))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4, fused=True)
    rows = load_rows(args.data)
    batches = []
    for b in range(0, 8 * (args.steps + 3), 8):
        chunk = rows[b:b + 8]
        T = max(len(r["prompt"]) + len(r["answer"]) for r in chunk)
        ids = [r["prompt"] + r["answer"] + [EOS] * (T - len(r["prompt"]) - len(r["answer"])) for r in chunk]
        mask = [[1] * (len(r["prompt"]) + len(r["answer"])) + [0] * (T - len(r["prompt"]) - len(r["answer"])) for r in chunk]
        labels = [[-100] * len(r["prompt"]) + r["answer"] + [-100] * (T - len(r["prompt"]) - len(r["answer"])) for r in chunk]
        batches.append({k: torch.tensor(v) for k, v in (("input_ids", ids), ("attention_mask", mask), ("labels", labels))})
    result = {"stack": "hf-transformers+peft", "gpu": torch.cuda.get_device_name(0)}
    for synced in (False, True):
        totals = {"collate": 0.0, "forward": 0.0, "backward": 0.0, "optimizer": 0.0}
        wall = 0.0
        for s, batch in enumerate(batches):
            start = time.perf_counter(); t = start
            def mark(name):
                nonlocal t
                if synced: torch.cuda.synchronize()
                now = time.perf_counter()
                if s >= 3: totals[name] += (now - t) * 1000
                t = now
            batch = {k: v.cuda() for k, v in batch.items()}; mark("collate")
            loss = model(**batch).loss; mark("forward")
            loss.backward(); mark("backward")
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0); opt.step(); opt.zero_grad(); loss.item()
            torch.cuda.synchronize(); mark("optimizer")
            if s >= 3: wall += (time.perf_counter() - start) * 1000
        result["synced" if synced else "host"] = {"step_ms": wall / args.steps, **{k + "_ms": v / args.steps for k, v in totals.items()}}
    x = torch.ones(1024, dtype=torch.bfloat16, device="cuda")
    for _ in range(2):
        torch.cuda.synchronize(); start = time.perf_counter()
        for _ in range(20000):
            y = x * 2
        new = (time.perf_counter() - start) * 1e6 / 20000; start = time.perf_counter()
        for _ in range(20000):
            x.mul_(1.0)
        inplace = (time.perf_counter() - start) * 1e6 / 20000
        torch.cuda.synchronize()
    result["small_op_us"] = {"mul_new_tensor_us": new, "mul_in_place_us": inplace}
    print(json.dumps(result))
    if args.out:
        json.dump(result, open(args.out, "w"), indent=1)


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make-model"); m.add_argument("--shape", choices=SHAPES, required=True); m.add_argument("--out", required=True)
    d = sub.add_parser("make-data"); d.add_argument("--out", required=True); d.add_argument("--rows", type=int, default=2000)
    t = sub.add_parser("train"); t.add_argument("--model", required=True); t.add_argument("--workload", choices=["qa", "dense"], required=True)
    t.add_argument("--data"); t.add_argument("--out", required=True); t.add_argument("--dense-steps", type=int, default=60)
    t.add_argument("--dense-batch", type=int, default=4); t.add_argument("--max-rows", type=int, default=None)
    t.add_argument("--collator", choices=["pad", "flatten"], default="pad",
                   help="qa: pad each batch (DataCollatorForSeq2Seq) or flatten it padding-free (DataCollatorWithFlattening)")
    g = sub.add_parser("generate"); g.add_argument("--model", required=True); g.add_argument("--out", required=True)
    g.add_argument("--new-tokens", type=int, default=256); g.add_argument("--repeats", type=int, default=3)
    f = sub.add_parser("profile"); f.add_argument("--model", required=True); f.add_argument("--data", required=True)
    f.add_argument("--steps", type=int, default=20); f.add_argument("--out")
    a = p.parse_args()
    if a.cmd == "make-model":
        make_model(a.shape, a.out)
    elif a.cmd == "make-data":
        make_data(a.out, a.rows)
    elif a.cmd == "profile":
        profile(a)
    elif a.cmd == "generate":
        generate(a)
    else:
        train(a)


if __name__ == "__main__":
    main()
