#!/usr/bin/env bash
# Self-contained release zips (no .NET needed on the user's machine), one per runtime identifier, each with a
# launcher that starts the app and opens the wizard in the browser once /healthz answers:
#   tools/release/release.sh [RID...]        default: win-x64 osx-arm64 linux-x64
# Output: artifacts/release/FineTune-<version>-<rid>.zip (folder FineTune-<rid>/ inside).
# Natives per RID come from FineTune.Engine.csproj (libtorch-cpu-<rid>; the HF tokenizers library only on linux-x64,
# elsewhere tokenizer.json runs managed).
set -euo pipefail
cd "$(dirname "$0")/../.."
rids=("$@")
[ ${#rids[@]} -gt 0 ] || rids=(win-x64 osx-arm64 linux-x64)
version=$(git describe --tags --always 2>/dev/null || echo dev)
out=artifacts/release
mkdir -p "$out"
for rid in "${rids[@]}"; do
  folder="$out/FineTune-$rid"
  rm -rf "$folder"
  dotnet publish FineTune.Web/FineTune.Web.csproj -c Release -r "$rid" --self-contained -p:TorchBackend=cpu -o "$folder" -nologo -v q
  case "$rid" in
    win-*) cp tools/release/FineTune.cmd "$folder/" ;;
    osx-*) cp tools/release/FineTune.command "$folder/"; chmod +x "$folder/FineTune.command" "$folder/FineTune.Web" ;;
    *)     cp tools/release/finetune.sh "$folder/"; chmod +x "$folder/finetune.sh" "$folder/FineTune.Web" ;;
  esac
  rm -f "$out/FineTune-$version-$rid.zip"
  (cd "$out" && zip -qr -9 "FineTune-$version-$rid.zip" "FineTune-$rid")
  echo "release: $out/FineTune-$version-$rid.zip ($(du -h "$out/FineTune-$version-$rid.zip" | cut -f1))"
done
