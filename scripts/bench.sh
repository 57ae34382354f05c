#!/usr/bin/env bash
# The benchmark command: this project against psql \copy, 2 parallel raw \copy, the same by hand
# with the index and the foreign keys, and pgloader — on the same generated rows, in one run,
# median of --runs. See scripts/bench.py for what each method measures.
#
#   scripts/bench.sh [--rows N] [--workers W] [--runs R] [--out DIR] [--no-pgloader]
#
# Defaults: 8,000,000 rows (real port codes), 2 workers, 3 runs, results in target/bench
# (results.json, chart.png). Not part of the test run at that size (minutes on 2 cores);
# scripts/test.sh runs it once at 200,000 rows so that it keeps working.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
ensure_services
if ! command -v pgloader >/dev/null 2>&1 && [[ " $* " != *" --no-pgloader "* ]]; then
  echo "bench: installing pgloader" >&2
  apt-get install -y -q pgloader >/dev/null 2>&1 ||
    { apt-get update -q >/dev/null && apt-get install -y -q pgloader >/dev/null; }
fi
if ! python3 -c 'import matplotlib' 2>/dev/null; then
  echo "bench: installing matplotlib" >&2
  pip install -q matplotlib >/dev/null 2>&1
fi
cargo build --release --locked --bins -q
exec python3 scripts/bench.py "$@"
