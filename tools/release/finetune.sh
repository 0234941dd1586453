#!/usr/bin/env bash
# FineTune for Linux: starts the app from this folder (data in ./data, models in the Hugging Face cache) and opens
# the wizard in the browser once it answers (xdg-open, where there is a desktop). Ctrl+C stops it.
cd "$(dirname "$0")"
( for _ in $(seq 120); do
    curl -fs http://localhost:5080/healthz >/dev/null 2>&1 && { command -v xdg-open >/dev/null && xdg-open http://localhost:5080; exit 0; }
    sleep 1
  done ) &
exec ./FineTune.Web --contentRoot "$PWD"
