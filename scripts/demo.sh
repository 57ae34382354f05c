#!/usr/bin/env bash
# The README's "command 1": builds everything, starts a coordinator and two workers on local
# PostgreSQL and RabbitMQ (started here when they do not answer), and loads the ratestask prices
# through the CLI, following the batch to commit. Whatever happens, the processes it started are
# stopped on exit; when the run fails it says where their logs are.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh

export DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/ratestask}
export INGEST_LISTEN=${INGEST_LISTEN:-127.0.0.1:8080}
export INGEST_URL=${INGEST_URL:-http://$INGEST_LISTEN}
EXPECTED_ROWS=56689

logs=$(mktemp -d -t ingest-demo.XXXXXX)
pids=()

# True while one of the started processes runs.
any_alive() {
  local pid
  for pid in "${pids[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then return 0; fi
  done
  return 1
}

# Stops what this script started (SIGTERM, then a bounded wait) and reports a failed run.
stop_all() {
  local status=$?
  trap - EXIT
  if ((${#pids[@]})); then
    kill -TERM "${pids[@]}" 2>/dev/null || true
    local deadline=$((SECONDS + 40))
    while any_alive && ((SECONDS < deadline)); do sleep 0.2; done
    kill -KILL "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
  fi
  if ((status != 0)); then
    echo "demo: failed; logs are in $logs" >&2
  else
    rm -rf "$logs"
  fi
  exit "$status"
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

count_prices() { psql "$DATABASE_URL" -tAc 'SELECT count(*) FROM prices'; }

echo "== services"
ensure_services

echo "== build (release; a few minutes the first time)"
cargo build --release --bins --quiet

echo "== database"
exists=$(psql -h 127.0.0.1 -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='ratestask'")
if [[ -z $exists ]]; then
  psql -h 127.0.0.1 -U postgres -qc 'CREATE DATABASE ratestask'
  echo "created database ratestask"
fi
target/release/ingest-coordinator seed --data-dir data/ratestask 2>"$logs/seed.log"

echo "== start coordinator and 2 workers"
if curl -fsS -o /dev/null --max-time 2 "$INGEST_URL/healthz" 2>/dev/null; then
  echo "demo: something already answers at $INGEST_URL; stop it or set INGEST_LISTEN" >&2
  exit 1
fi
target/release/ingest-coordinator >"$logs/coordinator.log" 2>&1 &
coordinator=$!
pids+=("$coordinator")
for n in 1 2; do
  # Each worker serves its metrics and health on a port of its own: 9091, 9092.
  INGEST_WORKER_NAME=demo-worker-$n INGEST_WORKER_LISTEN=127.0.0.1:909$n \
    target/release/ingest-worker >"$logs/worker-$n.log" 2>&1 &
  pids+=($!)
done

deadline=$((SECONDS + 60))
until curl -fsS -o /dev/null --max-time 2 "$INGEST_URL/readyz" 2>/dev/null; do
  if ! kill -0 "$coordinator" 2>/dev/null; then
    echo "demo: the coordinator exited: $(tail -n 1 "$logs/coordinator.log")" >&2
    exit 1
  fi
  if ((SECONDS >= deadline)); then
    echo "demo: the coordinator was not ready at $INGEST_URL within 60 s" >&2
    exit 1
  fi
  sleep 0.5
done
echo "coordinator ready at $INGEST_URL"

before=$(count_prices)
echo "== submit data/ratestask/prices.csv (prices before: $before)"
target/release/ingest submit data/ratestask/prices.csv

after=$(count_prices)
added=$((after - before))
echo "== prices: $before -> $after (this batch added $added rows; expected $EXPECTED_ROWS)"
if ((added != EXPECTED_ROWS)); then
  echo "demo: expected $EXPECTED_ROWS new rows, got $added" >&2
  exit 1
fi

echo "== a few metrics (all of them: $INGEST_URL/metrics, and 127.0.0.1:9091/metrics, :9092/metrics)"
curl -fsS "$INGEST_URL/metrics" | grep -E '^ingest_(rows_committed_total|commits_total\{outcome="committed"\}|batches\{state="committed"\}) '
for port in 9091 9092; do
  curl -fsS "http://127.0.0.1:$port/metrics" | grep -E '^ingest_(rows_loaded_total|chunk_load_duration_seconds_count) ' |
    sed "s/^/worker :$port  /"
done
echo "status page: $INGEST_URL/ (while the demo's processes run)"

