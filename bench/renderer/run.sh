#!/usr/bin/env bash
# Renderer benchmark: pug's renderer vs one-Chromium-per-render vs an open tab (the floor),
# same page, same Chromium — once per installed browser build: Chromium's headless shell (what
# pug picks) and the full Chromium (what the reference renderer's image runs). Writes
# bench/renderer/results.md.
#   bench/renderer/run.sh [--c1 N] [--c4 N] [--fresh N] [--long N]
#   CHROME_BIN=/path/to/chrome bench/renderer/run.sh ...   # one browser only
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ -n "${CHROME_BIN:-}" ]; then
  browsers=("$CHROME_BIN")
else
  browsers=()
  for b in /usr/lib/chromium/chromium-headless-shell /usr/lib/chromium/chromium; do
    [ -x "$b" ] && browsers+=("$b")
  done
fi
if [ "${#browsers[@]}" -eq 0 ]; then
  echo "no browser found: apt-get install chromium-headless-shell chromium (or set CHROME_BIN)" >&2
  exit 1
fi
cargo build --release -q -p pug-renderer --example renderer-bench
target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
i=0
for b in "${browsers[@]}"; do
  i=$((i + 1))
  "$target_dir/release/examples/renderer-bench" --chrome "$b" --results "$work/$i.md" "$@"
done
for f in "$work"/*.md; do cat "$f"; echo; done > bench/renderer/results.md
echo "wrote bench/renderer/results.md" >&2
