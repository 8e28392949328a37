#!/usr/bin/env bash
# Renderer benchmark: pug's renderer vs one-Chromium-per-render vs an open tab (the floor),
# same page, same Chromium. Writes bench/renderer/results.md.
#   bench/renderer/run.sh [--c1 N] [--c4 N] [--fresh N] [--long N] [--chrome PATH]
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ ! -x "${CHROME_BIN:-/usr/bin/chromium}" ]; then
  echo "Chromium not found: apt-get install chromium (or set CHROME_BIN)" >&2
  exit 1
fi
exec cargo run --release -p pug-renderer --example renderer-bench -- "$@"
