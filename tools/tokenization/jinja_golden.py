#!/usr/bin/env python3
"""Renders the Jinja cases of FineTune.Tests/Tokenization/Data/jinja_cases.json with jinja2 set up exactly as
transformers sets it up for chat templates (ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks,
loopcontrols, tojson with ensure_ascii=False, raise_exception, strftime_now) and writes each case's
"expected" (or "error" when jinja2 raises). Usage: python3 tools/tokenization/jinja_golden.py [cases.json]
Needs only jinja2 (3.1.x). strftime_now is pinned to 2026-07-04 09:05:00 so renders are stable.
"""
import datetime
import json
import sys

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

PATH = sys.argv[1] if len(sys.argv) > 1 else "FineTune.Tests/Tokenization/Data/jinja_cases.json"


class TemplateError(Exception):
    pass


def raise_exception(message):
    raise TemplateError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def strftime_now(fmt):
    return datetime.datetime(2026, 7, 4, 9, 5, 0).strftime(fmt)


env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
env.filters["tojson"] = tojson
env.globals["raise_exception"] = raise_exception
env.globals["strftime_now"] = strftime_now

with open(PATH, encoding="utf-8") as f:
    cases = json.load(f)
for case in cases:
    case.pop("expected", None)
    case.pop("error", None)
    try:
        case["expected"] = env.from_string(case["template"]).render(**case.get("variables", {}))
    except (TemplateError, jinja2.TemplateError) as e:
        case["error"] = f"{type(e).__name__}: {e}"
with open(PATH, "w", encoding="utf-8") as f:
    json.dump(cases, f, ensure_ascii=False, indent=1)
    f.write("\n")
print(f"{len(cases)} cases rendered with jinja2 {jinja2.__version__}")
