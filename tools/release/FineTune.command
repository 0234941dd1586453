#!/bin/bash
# FineTune for macOS (double-click in Finder): starts the app from this folder (data in ./data, models in the
# Hugging Face cache) and opens the wizard in the default browser once it answers. Close the window to stop it.
cd "$(dirname "$0")"
( for _ in $(seq 120); do
    curl -fs http://localhost:5080/healthz >/dev/null 2>&1 && { open http://localhost:5080; exit 0; }
    sleep 1
  done ) &
exec ./FineTune.Web --contentRoot "$PWD"
