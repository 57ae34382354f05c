#!/usr/bin/env bash
# The chaos run: one big batch through real faults, judged against the file.
#
#   scripts/chaos.sh [--rows N] [--mode loading|upload] [--dir DIR]
#
# Starts a coordinator and 3 workers (release binaries) on the local PostgreSQL and RabbitMQ,
# submits N generated rows (default 8,000,000, real port codes) with `ingest submit` (which sends
# the file again with its Idempotency-Key when the coordinator cannot take it), and applies, about
# 1 s apart:
#   worker SIGKILL (a replacement starts) · RabbitMQ stop_app/start_app · worker SIGKILL ·
#   PostgreSQL fast restart · worker SIGKILL · coordinator SIGKILL and restart ·
#   PostgreSQL stopped 30 s · (2 s later, while it is still down) RabbitMQ stopped 60 s ·
#   worker SIGKILLs until the batch ends.
# --mode loading (default): the workers start once the upload is in (on 2 cores they would
# otherwise load 8M rows before the first fault), and the faults start once they load;
# --mode upload: the workers run from the start, the PostgreSQL restart and the coordinator kill
# land during the upload; after it, a worker SIGKILL, then the long outages at once, with the
# RabbitMQ bounce while PostgreSQL is down (the last chunk is loaded as the upload ends, and the
# commit must still be running when they come).
#
# A fault counts as landed when the batch was still open (not committed, failed or cancelled)
# as it was applied. The verdict compares `prices` with the file per day (rows, sum of prices)
# and exits 0 only when the batch committed, nothing differs (lost=0 duplicated=0) and every kind
# of fault landed. PostgreSQL and RabbitMQ are started again whatever happens (a trap). The run
# uses its own database (ingest_chaos) and queue (ingest.chaos), recreated each time.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh

rows=8000000
mode=loading
dir=target/chaos
while [ $# -gt 0 ]; do
  case "$1" in
    --rows) rows=$2; shift 2 ;;
    --mode) mode=$2; shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    *) echo "usage: scripts/chaos.sh [--rows N] [--mode loading|upload] [--dir DIR]" >&2; exit 2 ;;
  esac
done
case "$mode" in loading|upload) ;; *) echo "chaos: --mode is loading or upload" >&2; exit 2 ;; esac

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
pg_version=$(ls /etc/postgresql | head -n1)
db=ingest_chaos
queue=ingest.chaos
port=18480
key="chaos-$(date +%s)-$$"
export DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db"
export AMQP_URL="amqp://guest:guest@127.0.0.1:5672/%2f"
export INGEST_QUEUE=$queue
export INGEST_URL="http://127.0.0.1:$port"
export INGEST_LISTEN="127.0.0.1:$port"
export RUST_LOG=info,lapin=warn
# Small chunks, one at a time per worker: 800 chunks of 10,000 rows keep deliveries in flight
# for longer than 160 of 50,000 would, so worker kills and broker bounces meet chunks in hand.
export INGEST_CHUNK_ROWS=${INGEST_CHUNK_ROWS:-10000}
export INGEST_WORKER_CONCURRENCY=${INGEST_WORKER_CONCURRENCY:-1}
bin=target/release

log() { printf '%s chaos: %s\n' "$(date +%H:%M:%S)" "$*"; }
# Empty when PostgreSQL does not answer (never fails the script).
psql_q() { psql -h 127.0.0.1 -U postgres -d "$db" -Atqc "$1" 2>/dev/null || true; }

coordinator_pid=""
worker_pids=()
submit_pid=""
workers_started=0

start_coordinator() {
  "$bin/ingest-coordinator" >>"$dir/coordinator.log" 2>&1 &
  coordinator_pid=$!
  disown
}
start_worker() {
  workers_started=$((workers_started + 1))
  INGEST_WORKER_NAME="chaos-worker-$workers_started" INGEST_WORKER_LISTEN=127.0.0.1:0 \
    "$bin/ingest-worker" \
    >>"$dir/worker-$workers_started.log" 2>&1 &
  worker_pids+=("$!")
  disown
}
# kill_now PID: SIGKILL, then waits until the process is gone.
kill_now() {
  kill -9 "$1" 2>/dev/null || true
  while kill -0 "$1" 2>/dev/null; do sleep 0.05; done
}

cleanup() {
  local pids=("${worker_pids[@]}" "$coordinator_pid" "$submit_pid")
  for pid in "${pids[@]}"; do
    [ -n "$pid" ] && kill_now "$pid"
  done
  ensure_services
}
trap cleanup EXIT

# --- The batch's state, by its Idempotency-Key ("" while PostgreSQL or the batch is not there).
batch_row() { psql_q "SELECT id || ' ' || state FROM batches WHERE idempotency_key = '$key'"; }
# "loading, 12/160 chunks loaded"
batch_progress() {
  psql_q "SELECT b.state || ', ' || count(c.seq) FILTER (WHERE c.state = 'loaded') || '/'
                 || coalesce(b.chunks_total::text, count(c.seq) || '+') || ' chunks loaded'
          FROM batches b LEFT JOIN chunks c ON c.batch_id = b.id
          WHERE b.idempotency_key = '$key' GROUP BY b.id"
}
batch_state() { batch_row | awk '{print $2}'; }
is_open() { case "$(batch_state)" in receiving|loading|committing) return 0 ;; *) return 1 ;; esac; }
# True until the batch is final (also while its state cannot be read).
not_final() { case "$(batch_state)" in committed|failed|cancelled) return 1 ;; *) return 0 ;; esac; }

# Waits (at most $1 seconds) until the command in $2... holds.
wait_for() {
  local seconds=$1; shift
  local deadline=$((SECONDS + seconds))
  until "$@"; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

landed=()
missed=()
last_progress=""
# fault NAME COMMAND...: applies a fault; it landed if the batch was open just before. While
# PostgreSQL is down the ledger cannot be read — and the batch cannot change state either (every
# transition is a write to it): the last state read stands.
fault() {
  local name=$1; shift
  local progress
  progress=$(batch_progress)
  if [ -n "$progress" ]; then
    last_progress=$progress
  elif ! pg_isready -q -h 127.0.0.1 -p 5432; then
    progress="$last_progress; PostgreSQL down"
  fi
  case "$progress" in
    receiving*|loading*|committing*) landed+=("$name (batch $progress)") ;;
    *) missed+=("$name (batch ${progress:-not found})") ;;
  esac
  log "fault: $name (batch ${progress:-?})"
  "$@"
}

kill_worker() {
  kill_now "${worker_pids[0]}"
  worker_pids=("${worker_pids[@]:1}")
  start_worker
}
bounce_rabbitmq() { rabbitmqctl -q stop_app; sleep 1; rabbitmqctl -q start_app; }
restart_postgres() { pg_ctlcluster --skip-systemctl-redirect "$pg_version" main restart -m fast; }
restart_coordinator() {
  kill_now "$coordinator_pid"
  start_coordinator
}
# The two long outages overlap: PostgreSQL goes down for 30 s, and 2 s later RabbitMQ for 60 s
# (each comes back on its own clock). So both meet the batch open, however quick the steps before
# were: nothing can finish a batch while PostgreSQL is down. `long_outages NAME COMMAND...` also
# applies that fault while PostgreSQL is down, before RabbitMQ goes.
long_outages() {
  fault "PostgreSQL stopped 30 s" pg_ctlcluster --skip-systemctl-redirect "$pg_version" main stop -m fast
  (sleep 30; pg_ctlcluster --skip-systemctl-redirect "$pg_version" main start) &
  local postgres_back=$!
  sleep 2
  if [ $# -gt 0 ]; then fault "$@"; fi
  fault "RabbitMQ stopped 60 s" rabbitmqctl -q stop_app
  (sleep 60; rabbitmqctl -q start_app) &
  local rabbitmq_back=$!
  wait "$postgres_back" "$rabbitmq_back"
}

# --- Set up.
ensure_services
log "building release binaries"
cargo build --release --locked --bins -q
file="$dir/rates-$rows.csv"
if [ ! -s "$file" ]; then
  log "generating $rows rows"
  python3 scripts/rates.py generate "$rows" 7 data/ratestask/ports.csv "$file.tmp"
  mv "$file.tmp" "$file"
fi
[ -s "$file.sum" ] || python3 scripts/rates.py checksum "$file" >"$file.sum"
log "fresh database $db and queue $queue"
psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"
rabbitmqctl -q delete_queue "$queue" >/dev/null 2>&1 || true
rabbitmqctl -q delete_queue "$queue.dead" >/dev/null 2>&1 || true
rm -rf "$dir"/*.log
"$bin/ingest-coordinator" seed --data-dir data/ratestask >/dev/null
start_coordinator
wait_for 120 curl -fsS -o /dev/null "$INGEST_URL/readyz" 2>/dev/null || { log "the coordinator did not start"; exit 1; }
start_workers() { for _ in 1 2 3; do start_worker; done; }
[ "$mode" = upload ] && start_workers

started=$SECONDS
log "submitting $(du -h "$file" | cut -f1) ($rows rows), mode $mode, Idempotency-Key $key"
"$bin/ingest" submit "$file" --idempotency-key "$key" --no-wait --retry-for 1800 \
  >"$dir/submit.log" 2>&1 &
submit_pid=$!
disown

if [ "$mode" = upload ]; then
  wait_for 300 sh -c "[ \"\$(psql -h 127.0.0.1 -U postgres -d $db -Atqc \
    \"SELECT count(*) FROM chunks c JOIN batches b ON b.id = c.batch_id
      WHERE b.idempotency_key = '$key' AND b.state = 'receiving'\" 2>/dev/null || echo 0)\" -ge 3 ]" \
    || { log "the upload did not start"; exit 1; }
  fault "PostgreSQL fast restart" restart_postgres
  sleep 2
  fault "coordinator SIGKILL and restart" restart_coordinator
fi
wait_for 1800 sh -c "case \"\$(psql -h 127.0.0.1 -U postgres -d $db -Atqc \
  \"SELECT state FROM batches WHERE idempotency_key = '$key'\" 2>/dev/null)\" in
  loading|committing|committed|failed|cancelled) exit 0;; *) exit 1;; esac" \
  || { log "the upload never completed"; exit 1; }
log "upload complete after $((SECONDS - started)) s: batch $(batch_progress)"
if [ "$mode" = loading ]; then
  start_workers
  wait_for 300 sh -c "[ \"\$(psql -h 127.0.0.1 -U postgres -d $db -Atqc \
    \"SELECT count(*) FROM chunks c JOIN batches b ON b.id = c.batch_id
      WHERE b.idempotency_key = '$key' AND c.state = 'loaded'\" 2>/dev/null || echo 0)\" -ge 1 ]" \
    || { log "the workers did not start loading"; exit 1; }
fi

if [ "$mode" = loading ]; then
  # 1 s apart: 3 workers load 8M rows in about 7 s here, and the commit takes about 10 s.
  fault "worker SIGKILL" kill_worker
  sleep 1
  fault "RabbitMQ stop_app/start_app" bounce_rabbitmq
  sleep 1
  fault "worker SIGKILL" kill_worker
  sleep 1
  fault "PostgreSQL fast restart" restart_postgres
  sleep 1
  fault "worker SIGKILL" kill_worker
  sleep 1
  fault "coordinator SIGKILL and restart" restart_coordinator
  long_outages
else
  # The workers loaded while the file came in, so the commit starts about now (since chunks go
  # straight into their parts, the last one is loaded as the upload ends). PostgreSQL goes down
  # at once, so that the outages meet the commit however quick it is, and RabbitMQ is bounced
  # while PostgreSQL is down.
  fault "worker SIGKILL" kill_worker
  long_outages "RabbitMQ stop_app/start_app" bounce_rabbitmq
fi
while is_open; do
  sleep 5
  is_open && fault "worker SIGKILL" kill_worker
done
deadline=$((SECONDS + 1800))
while not_final && ((SECONDS < deadline)); do sleep 1; done

# --- Verdict.
final=$(batch_row)
state=$(echo "$final" | awk '{print $2}')
elapsed=$((SECONDS - started))
psql_q "SELECT day, count(*), sum(price) FROM prices GROUP BY day ORDER BY day" | tr '|' ',' >"$dir/prices.sum"
verdict=$(python3 scripts/rates.py judge "$file.sum" "$dir/prices.sum" || true)
echo
echo "== chaos run ($mode mode, $rows rows): batch ${final:-?} after ${elapsed} s"
echo "faults that landed:"
printf '  %s\n' "${landed[@]}"
if [ ${#missed[@]} -gt 0 ]; then
  echo "faults that did not land (the batch was no longer open):"
  printf '  %s\n' "${missed[@]}"
fi
psql_q "SELECT 'chunks: ' || count(*) || ', deliveries beyond the first: ' || sum(attempts - 1)
        || ', refused attempts: ' || sum(failures) FROM chunks c JOIN batches b ON b.id = c.batch_id
        WHERE b.idempotency_key = '$key'"
psql_q "SELECT 'commit: ' || coalesce(round(commit_seconds::numeric, 1)::text, '?') || ' s; last outage it rode through: '
        || coalesce(outage_step || ' attempt ' || outage_attempt || ': ' || outage_reason, 'none')
        FROM batches WHERE idempotency_key = '$key'"
psql_q "SELECT 'prices: ' || count(*) || ' rows, sum ' || sum(price) FROM prices"
echo "$verdict"

kinds=("worker SIGKILL" "RabbitMQ stop_app/start_app" "PostgreSQL fast restart"
       "coordinator SIGKILL and restart" "PostgreSQL stopped 30 s" "RabbitMQ stopped 60 s")
ok=1
for kind in "${kinds[@]}"; do
  if ! printf '%s\n' "${landed[@]}" | grep -qF "$kind ("; then
    echo "FAIL: the fault \"$kind\" did not land"
    ok=0
  fi
done
[ "$state" = committed ] || { echo "FAIL: the batch is ${state:-missing}, not committed"; ok=0; }
case "$verdict" in "lost=0 duplicated=0 differing_days=0") ;; *) echo "FAIL: prices differ from the file"; ok=0 ;; esac
if [ $ok = 1 ]; then
  echo "PASS: committed, lost=0 duplicated=0, every kind of fault landed"
  exit 0
fi
echo "logs: $dir"
exit 1
