#!/usr/bin/env bash
# The chaos run: big batches through real faults, judged against the file.
#
#   scripts/chaos.sh [--rows N] [--mode loading|upload|fleet|failover] [--dir DIR] [--no-build]
#
# --mode loading and --mode upload: one coordinator and 3 workers (release binaries) on the local
# PostgreSQL and RabbitMQ; N generated rows (default 8,000,000, real port codes) submitted with
# `ingest submit` (which sends the file again with its Idempotency-Key when the coordinator
# cannot take it), and, about 1 s apart:
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
# --mode fleet: 2 coordinators (ports 18480 and 18481, each run in a working folder of its own
# under DIR; coordinator lease INGEST_COORDINATOR_LEASE_SECONDS, 5 s unless set) and 3 workers
# (worker lease INGEST_LEASE_SECONDS, 10 s unless set) on one database and queue. The file is
# split in two halves (each with the header line), submitted at the same time, one to each
# coordinator, each with its own Idempotency-Key. PostgreSQL and RabbitMQ stay up; the faults
# are the fleet's, 1–2 s apart while the batches load and commit:
#   worker SIGSTOP as soon as one is caught holding a chunk (first: at 1M rows the batches are in,
#     loaded and committed about 2 s after the first chunk), thawed once its lease ran out and a
#     coordinator ended its backend and handed the chunk out again, and at least the worker lease
#     + 5 s later (the faults go on meanwhile) · worker SIGKILL (a replacement starts) ·
#   coordinator SIGKILL, its working folder deleted, a new coordinator on its port in a new folder
#     (the one holding a commit lease, else one whose batch is still loading, else one whose upload
#     is still coming in: that upload then fails and its CLI sends it again) ·
#   worker SIGKILLs every 2 s until a commit is under way · SIGSTOP of the coordinator holding
#     that commit lease, held until a peer took the commit over and at least the coordinator
#     lease + 5 s (worker SIGKILLs every 2 s meanwhile), then SIGCONT ·
#   worker SIGKILLs every 2 s until both batches end.
# The verdict is per day against the whole file (both halves); it also needs both submissions
# ended with a committed batch, both freezes taken over (the chunk handed out again, the commit
# lease taken by a peer). A batch failed because its upload stopped (its coordinator killed or
# frozen while the file came in: its key released, the file sent again) is counted and reported;
# any other failed batch fails the run.
#
# --mode failover: the machine's own PostgreSQL and RabbitMQ are not touched. A 3-node RabbitMQ
# cluster (scripts/cluster/rabbitmq.sh --base-port 5691: AMQP on 5691–5693) and a PostgreSQL
# primary with a synchronous standby (scripts/cluster/postgres.sh --ports 5461,5462) are started
# fresh (what a run cut short left on those ports stopped first); ingest_chaos is created on the
# primary and seeded (migrated) through DATABASE_URL =
# postgres://postgres@127.0.0.1:5461,127.0.0.1:5462/ingest_chaos?target_session_attrs=read-write,
# and AMQP_URL is the three nodes' URLs (each process starts at a node picked at random). One
# coordinator and 3 workers (worker lease INGEST_LEASE_SECONDS, 20 s unless set); the file is cut
# into 2,000 chunks (rows / 2,000 a chunk, 500 to 10,000, unless INGEST_CHUNK_ROWS is set) so
# that even 1M rows load long enough for the faults. Submitted as in --mode loading (the workers
# start once the upload is in); from the first chunk loaded, on two lanes at once:
#   RabbitMQ (in the background): the node leading ingest.chaos (`rabbitmq.sh leader`) stopped
#     (stop_app), started again 5 s after (start-node, booted), then another node — the queue's
#     leader by then — the same way;
#   PostgreSQL and the workers: worker SIGKILL · failover while loading (`postgres.sh failover`:
#     the primary killed, the standby promoted) · worker SIGKILL · a new synchronous standby
#     rebuilt from the new primary · worker SIGKILLs every 2 s until the commit is under way ·
#     failover while committing · worker SIGKILLs every 5 s until the batch ends.
#   postgres.sh has no command to rebuild a standby, so the run does it itself: pg_basebackup
#   from the new primary into a new folder under the pair's state folder, which then replaces
#   the dead server's folder (postgres.sh knows its two servers by folder: `primary` for 5461,
#   `standby` for 5462, so its failover, status and stop then work on the new server), started
#   with pg_ctl on the freed port; once it streams, the primary's synchronous_standby_names is
#   set back to standby1 and the run waits until it is sync and has flushed what the primary had.
# The verdict also needs each failover to have met the batch in the state it is named after
# (loading, committing), two different RabbitMQ nodes stopped with the batch open, every node
# started again and the standby rebuilt. At the end the cluster and the pair are stopped with
# their own stop commands (which remove their state folders under /tmp/ingest-cluster).
#
# A fault counts as landed when a batch was still open (not committed, failed or cancelled)
# as it was applied. The verdict compares `prices` with the file per day (rows, sum of prices)
# and exits 0 only when the batch(es) committed, nothing differs (lost=0 duplicated=0) and every
# kind of fault landed. PostgreSQL and RabbitMQ are started again, SIGSTOPped processes thawed
# and every process the run started stopped, whatever happens (a trap). The run uses its own
# database (ingest_chaos) and queue (ingest.chaos), recreated each time (--mode failover: on its
# own cluster and pair, started fresh). --no-build uses the release binaries in target/release
# as they are instead of building them first.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh

rows=8000000
mode=loading
dir=target/chaos
build=1
while [ $# -gt 0 ]; do
  case "$1" in
    --rows) rows=$2; shift 2 ;;
    --mode) mode=$2; shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    --no-build) build=0; shift ;;
    *) echo "usage: scripts/chaos.sh [--rows N] [--mode loading|upload|fleet|failover] [--dir DIR] [--no-build]" >&2; exit 2 ;;
  esac
done
case "$mode" in loading|upload|fleet|failover) ;; *) echo "chaos: --mode is loading, upload, fleet or failover" >&2; exit 2 ;; esac

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
# --mode failover cuts the file into 2,000 chunks (rows / 2,000 a chunk, 500 to 10,000): a
# chunk costs a worker about 20 ms beyond its rows here (its claim and its COPY each commit,
# synchronously replicated), so 2,000 of them keep the batch loading for 10 s or more even at
# 1M rows — long enough for its two RabbitMQ bounces (about 8–10 s from the first stop to the
# second) and for the standby rebuilt before the commit.
if [ "$mode" = failover ] && [ -z "${INGEST_CHUNK_ROWS:-}" ]; then
  INGEST_CHUNK_ROWS=$(( rows / 2000 < 500 ? 500 : (rows / 2000 > 10000 ? 10000 : rows / 2000) ))
fi
export INGEST_CHUNK_ROWS=${INGEST_CHUNK_ROWS:-10000}
export INGEST_WORKER_CONCURRENCY=${INGEST_WORKER_CONCURRENCY:-1}
bin=target/release
# --mode failover: a 3-node RabbitMQ cluster and a PostgreSQL primary + synchronous standby of
# their own (scripts/cluster/*.sh), on ports no other run uses (the tests' cluster is on 5681,
# their pairs on random ports); AMQP_URL is set once the cluster is up.
rmq_base=5691
pg_ports=5461,5462
pg_state=/tmp/ingest-cluster/postgres-${pg_ports%%,*}
pg_bin=/usr/lib/postgresql/$pg_version/bin
if [ "$mode" = failover ]; then
  export DATABASE_URL="postgres://postgres@127.0.0.1:${pg_ports%%,*},127.0.0.1:${pg_ports##*,}/$db?target_session_attrs=read-write"
  export INGEST_LEASE_SECONDS=${INGEST_LEASE_SECONDS:-20}
  export PGCONNECT_TIMEOUT=5
  unset INGEST_AMQP_IN_ORDER
fi

log() { printf '%s chaos: %s\n' "$(date +%H:%M:%S)" "$*"; }
# Empty when PostgreSQL does not answer (never fails the script). In --mode failover, it asks
# whichever of the pair takes writes (target_session_attrs=read-write).
psql_q() { psql -d "$DATABASE_URL" -Atqc "$1" 2>/dev/null || true; }
# The run's database takes queries (in --mode failover: a primary of the pair answers).
database_answers() {
  if [ "$mode" = failover ]; then
    psql -d "$DATABASE_URL" -Atqc 'SELECT 1' >/dev/null 2>&1
  else
    pg_isready -q -h 127.0.0.1 -p 5432
  fi
}

coordinator_pid=""
clusters_started=0
worker_pids=()
submit_pid=""
workers_started=0
# The fleet mode's processes: its coordinators by name (a, b), its submits, and what is
# SIGSTOPped right now (the trap thaws it).
declare -A fleet_coordinators=()
fleet_submits=()
stopped_pids=()
declare -A worker_names=()

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
  worker_names[$!]="chaos-worker-$workers_started"
  disown
}
# kill_now PID: SIGKILL, then waits until the process is gone.
kill_now() {
  kill -9 "$1" 2>/dev/null || true
  while kill -0 "$1" 2>/dev/null; do sleep 0.05; done
}

cleanup() {
  local pid
  # Thawed first: a process left stopped would stay stopped if anything below failed.
  for pid in "${stopped_pids[@]}"; do
    kill -CONT "$pid" 2>/dev/null || true
  done
  local pids=("${worker_pids[@]}" "$coordinator_pid" "$submit_pid"
              "${fleet_coordinators[@]}" "${fleet_submits[@]}")
  for pid in "${pids[@]}"; do
    [ -n "$pid" ] && kill_now "$pid"
  done
  # --mode failover: its RabbitMQ lane, if still running, is ended (with the commands it runs),
  # then the clusters it started and their state folders removed (their own stop commands; they
  # thaw whatever is frozen first).
  if [ -n "$rmq_lane_pid" ]; then kill_tree "$rmq_lane_pid"; fi
  if [ "$clusters_started" = 1 ]; then
    rmq stop || log "rabbitmq.sh stop failed"
    pgpair stop || log "postgres.sh stop failed"
  fi
  ensure_services
}
trap cleanup EXIT
# A Ctrl-C or a kill of the script runs the trap too.
trap 'exit 130' INT
trap 'exit 143' TERM

# --- The batch's state, by its Idempotency-Key ("" while PostgreSQL or the batch is not there).
batch_row() { psql_q "SELECT id || ' ' || state FROM batches WHERE idempotency_key = '$key'"; }
# "loading, 12/160 chunks loaded", "committing (index), 160/160 chunks loaded"
batch_progress() {
  psql_q "SELECT b.state || coalesce(' (' || b.commit_step || ')', '') || ', ' || count(c.seq) FILTER (WHERE c.state = 'loaded') || '/'
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
  elif ! database_answers; then
    progress="$last_progress; PostgreSQL down"
  fi
  # --mode failover runs faults on two lanes at once: its entries carry the time, for the order.
  local at=""
  [ "$mode" = failover ] && at="$(date +%H:%M:%S) "
  case "$progress" in
    receiving*|loading*|committing*) landed+=("$at$name (batch $progress)") ;;
    *) missed+=("$at$name (batch ${progress:-not found})") ;;
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

# --- The failover mode: the clusters' own scripts on this run's ports (see the header).
rmq() { scripts/cluster/rabbitmq.sh --base-port "$rmq_base" "$@"; }
pgpair() { scripts/cluster/postgres.sh --ports "$pg_ports" "$@"; }
failover_checks=()   # what the clusters showed: "ok ..." or "FAIL ..."
standby_rebuilds=0

start_clusters() {
  clusters_started=1
  # Whatever a run cut short left on these ports is ended first: the cluster and the pair are
  # fresh (their state folders removed by their stop commands).
  rmq stop
  pgpair stop
  log "starting a 3-node RabbitMQ cluster (base port $rmq_base)"
  AMQP_URL=$(rmq start)
  export AMQP_URL
  log "starting a PostgreSQL primary and synchronous standby (ports $pg_ports)"
  pgpair start --sync >/dev/null
  log "AMQP_URL=$AMQP_URL"
  log "DATABASE_URL=$DATABASE_URL"
  psql -d "postgres://postgres@127.0.0.1:${pg_ports%%,*}/postgres" -qc "CREATE DATABASE $db"
}
# "primary 5461; 5461 primary; 5462 standby; replication standby1 streaming sync"
pair_status() { pgpair status 2>/dev/null | paste -sd';' | sed 's/;/; /g'; }
pair_primary() { pgpair status 2>/dev/null | awk '$1 == "primary" { print $2 }'; }
# The node (1..3) leading the chunk queue; "" when no node says.
queue_leader() { rmq leader "$queue" 2>/dev/null || true; }

# The RabbitMQ lane (--mode failover), run in the background beside the PostgreSQL faults and
# the worker kills: node FIRST (the queue's leader) stopped (stop_app), ~5 s down, started again
# (booted); then another node (the leader by then, elected while FIRST was down), the same. Its
# faults and checks go to $rmq_lane_file ("landed|…", "missed|…", "check|…"), rewritten after
# every step, for the verdict.
rmq_lane_pid=""
rmq_lane_file=""
rmq_lane_flush() {
  { [ ${#landed[@]} -eq 0 ] || printf 'landed|%s\n' "${landed[@]}"
    [ ${#missed[@]} -eq 0 ] || printf 'missed|%s\n' "${missed[@]}"
    [ ${#failover_checks[@]} -eq 0 ] || printf 'check|%s\n' "${failover_checks[@]}"
  } >"$rmq_lane_file.tmp"
  mv "$rmq_lane_file.tmp" "$rmq_lane_file"
}
# rmq_node_down N: stop_app on node N (a failure noted: the lane goes on).
rmq_node_down() {
  rmq stop-node "$1" || failover_checks+=("FAIL: stop_app on RabbitMQ node $1 failed")
}
# rmq_node_up N: start_app on node N, waiting for it to boot.
rmq_node_up() {
  local since=$SECONDS
  if rmq start-node "$1"; then
    failover_checks+=("ok: RabbitMQ node $1 started again and booted in $((SECONDS - since)) s")
  else
    failover_checks+=("FAIL: RabbitMQ node $1 did not start again")
  fi
}
rabbitmq_lane() {
  local first=$1 second leader since
  landed=() missed=() failover_checks=()
  since=$(now_ms)
  fault "RabbitMQ node $first stop_app, $(leading "$first" "$first")" rmq_node_down "$first"
  rmq_lane_flush
  # The new leader, elected while the node is down: the node stopped next.
  leader=$(queue_leader)
  log "RabbitMQ node $first is down; the leader of $queue now: node ${leader:-?}"
  sleep_until $((since + 5000))
  rmq_node_up "$first"
  rmq_lane_flush
  second=$(second_node "$first" "$leader")
  since=$(now_ms)
  fault "RabbitMQ node $second stop_app, $(leading "$second" "$leader")" rmq_node_down "$second"
  rmq_lane_flush
  sleep_until $((since + 5000))
  rmq_node_up "$second"
  rmq_lane_flush
  log "RabbitMQ lane done: the leader of $queue now: node $(queue_leader)"
}
# sleep_until MS: sleeps until the clock (now_ms) reads MS.
sleep_until() {
  local left=$(( $1 - $(now_ms) ))
  if ((left > 0)); then sleep "$((left / 1000)).$(printf '%03d' $((left % 1000)))"; fi
}
# Waits for the RabbitMQ lane to end (at most 300 s) and takes its faults and checks in.
rmq_lane_join() {
  [ -n "$rmq_lane_pid" ] || return 0
  local deadline=$((SECONDS + 300))
  while kill -0 "$rmq_lane_pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.5; done
  if kill -0 "$rmq_lane_pid" 2>/dev/null; then
    failover_checks+=("FAIL: the RabbitMQ lane had not ended after 300 s")
    kill_tree "$rmq_lane_pid"
  fi
  rmq_lane_pid=""
  local kind text
  while IFS='|' read -r kind text; do
    case "$kind" in
      landed) landed+=("$text") ;;
      missed) missed+=("$text") ;;
      check) failover_checks+=("$text") ;;
    esac
  done <"$rmq_lane_file"
}
# kill_tree PID: SIGKILL to PID and every process under it (by pid), the children first.
kill_tree() {
  local child
  for child in $(ps -o pid= --ppid "$1" 2>/dev/null); do kill_tree "$child"; done
  kill -9 "$1" 2>/dev/null || true
}
# A failover of the pair (postgres.sh: the primary killed, the standby promoted, freed of
# synchronous_standby_names). The run cannot go on without it: a failure ends it.
pg_failover() {
  local before after since=$SECONDS
  before=$(pair_primary)
  pgpair failover || { log "postgres.sh failover failed: $(pair_status)"; exit 1; }
  after=$(pair_primary)
  failover_checks+=("ok: PostgreSQL failover $before -> $after in $((SECONDS - since)) s")
  log "PostgreSQL primary now on $after ($(pair_status))"
}
# A new synchronous standby for the pair, from its primary (postgres.sh has no command for it):
# pg_basebackup into a new folder under the pair's state folder, the dead server's folder
# removed and the new one put in its place (postgres.sh knows a server by its port's folder:
# primary for the first port, standby for the second; so its failover, status and stop work on
# the new server), started with pg_ctl on the freed port; then, once it streams, the primary's
# synchronous_standby_names set back to standby1 and a wait until it is sync and has flushed
# everything the primary had written.
rebuild_standby() {
  local primary free folder new lsn since=$SECONDS
  primary=$(pair_primary)
  [ -n "$primary" ] || { failover_checks+=("FAIL: no primary to rebuild a standby from"); return 1; }
  if [ "$primary" = "${pg_ports%%,*}" ]; then free=${pg_ports##*,}; folder=$pg_state/standby
  else free=${pg_ports%%,*}; folder=$pg_state/primary; fi
  if pg_isready -q -h 127.0.0.1 -p "$free"; then
    failover_checks+=("FAIL: port $free still answers: no standby rebuilt"); return 1
  fi
  standby_rebuilds=$((standby_rebuilds + 1))
  new=$pg_state/rebuilt-$standby_rebuilds
  log "rebuilding a standby on $free from the primary on $primary (pg_basebackup into $new)"
  rm -rf "$new"
  (cd /tmp && runuser -u postgres -- "$pg_bin/pg_basebackup" -D "$new" -R -X stream \
     -C -S "rebuilt$standby_rebuilds" --no-sync --checkpoint=fast \
     -d "host=127.0.0.1 port=$primary user=postgres application_name=standby1") \
    || { failover_checks+=("FAIL: pg_basebackup from $primary failed"); return 1; }
  # The copied configuration is the primary's: the standby gets its own port.
  printf '\n# rebuilt by scripts/chaos.sh\nport = %s\n' "$free" >>"$new/postgresql.conf"
  rm -rf "$folder"
  mv "$new" "$folder"
  (cd /tmp && runuser -u postgres -- "$pg_bin/pg_ctl" -D "$folder" \
     -l "$pg_state/rebuilt-$standby_rebuilds.log" -w -t 60 start >/dev/null) \
    || { failover_checks+=("FAIL: the rebuilt standby on $free did not start"); return 1; }
  local ask="psql -X -h 127.0.0.1 -p $primary -U postgres -d postgres -Atqc"
  wait_for 60 sh -c "[ \"\$($ask \"SELECT state FROM pg_stat_replication
                                     WHERE application_name = 'standby1'\")\" = streaming ]" \
    || { failover_checks+=("FAIL: the rebuilt standby on $free did not stream"); return 1; }
  $ask "ALTER SYSTEM SET synchronous_standby_names = 'standby1'" >/dev/null
  $ask "SELECT pg_reload_conf()" >/dev/null
  lsn=$($ask "SELECT pg_current_wal_lsn()")
  wait_for 60 sh -c "[ \"\$($ask \"SELECT sync_state = 'sync' AND flush_lsn >= '$lsn'
                                     FROM pg_stat_replication WHERE application_name = 'standby1'\")\" = t ]" \
    || { failover_checks+=("FAIL: the rebuilt standby on $free did not become sync"); return 1; }
  failover_checks+=("ok: standby rebuilt on $free from $primary in $((SECONDS - since)) s, sync ($(pair_status))")
  log "standby rebuilt on $free in $((SECONDS - since)) s: $(pair_status)"
}
# Worker SIGKILLs every 2 s while the batch loads, until it is committing (true) or over (false).
until_committing() {
  local last=$SECONDS state deadline=$((SECONDS + 1800))
  while ((SECONDS < deadline)); do
    state=$(batch_state)
    case "$state" in
      committing) return 0 ;;
      committed|failed|cancelled) return 1 ;;
    esac
    if ((SECONDS - last >= 2)) && [ "$state" = loading ]; then
      fault "worker SIGKILL" kill_worker
      last=$SECONDS
    fi
    sleep 0.1
  done
  return 1
}
# second_node FIRST LEADER: the node to stop second: the leader, unless it is FIRST (or not
# known): then the next one.
second_node() {
  if [ -n "$2" ] && [ "$2" != "$1" ]; then echo "$2"; else echo $(( $1 % 3 + 1 )); fi
}
# leading NODE LEADER: how the fault names the node.
leading() {
  if [ "$1" = "$2" ]; then echo "leader of $queue"; else echo "not the leader of $queue (node ${2:-?} is)"; fi
}

# The faults of --mode failover, from the first chunk loaded (the queue's leader, FIRST, asked
# before the workers started): the RabbitMQ lane starts in the background; meanwhile a worker
# SIGKILL, the failover while loading, a worker SIGKILL, the standby rebuilt, worker SIGKILLs
# every 2 s until the commit is under way, the failover while committing.
failover_faults() {
  local first=${1:-1}
  rmq_lane_file="$dir/rabbitmq-lane.faults"
  rm -f "$rmq_lane_file"
  rabbitmq_lane "$first" &
  rmq_lane_pid=$!
  fault "worker SIGKILL" kill_worker
  fault "PostgreSQL failover while loading" pg_failover
  sleep 1
  fault "worker SIGKILL" kill_worker
  rebuild_standby || true
  if until_committing; then
    if [ ${#failover_checks[@]} -gt 0 ] && printf '%s\n' "${failover_checks[@]}" | grep -q '^ok: standby rebuilt'; then
      fault "PostgreSQL failover while committing" pg_failover
    else
      missed+=("$(date +%H:%M:%S) PostgreSQL failover while committing (no standby to fail over to)")
    fi
  else
    missed+=("$(date +%H:%M:%S) PostgreSQL failover while committing (the batch was $(batch_state) before it was committing)")
  fi
}

# --- The fleet mode: two coordinators on one database and queue, three workers, the fleet's
# faults (see the header). Everything here keeps PostgreSQL and RabbitMQ up.
root=$PWD
coordinator_lease=${INGEST_COORDINATOR_LEASE_SECONDS:-5}
worker_lease=${INGEST_LEASE_SECONDS:-10}
declare -A fleet_ports=([a]=18480 [b]=18481)
declare -A fleet_keys=([a]="$key-a" [b]="$key-b")
declare -A fleet_generation=() fleet_folders=() fleet_files=() fleet_submit_of=()
# Workers SIGSTOPped holding a chunk: since when, and what they hold.
declare -A frozen_since=() frozen_chunk=()
fleet_checks=()   # what the freezes showed: "ok ..." or "FAIL ..."

now_ms() { date +%s%3N; }
is_stopped() {
  local pid
  for pid in "${stopped_pids[@]}"; do
    if [ "$pid" = "$1" ]; then return 0; fi
  done
  return 1
}
# stop PID: SIGSTOP, noted first so that the trap thaws it whatever happens next.
stop_process() { stopped_pids+=("$1"); kill -STOP "$1" 2>/dev/null || true; }
thaw_process() {
  local pid kept=()
  kill -CONT "$1" 2>/dev/null || true
  for pid in "${stopped_pids[@]}"; do
    if [ "$pid" != "$1" ]; then kept+=("$pid"); fi
  done
  stopped_pids=("${kept[@]}")
}

# start_fleet_coordinator NAME: a new coordinator NAME on its port, in a new working folder
# (its log beside the folder, so that it outlives it).
start_fleet_coordinator() {
  local name=$1
  local generation=$(( ${fleet_generation[$name]:-0} + 1 ))
  local folder="$dir/coordinator-$name-$generation"
  fleet_generation[$name]=$generation
  fleet_folders[$name]=$folder
  mkdir -p "$folder"
  (cd "$folder" && INGEST_LISTEN="127.0.0.1:${fleet_ports[$name]}" \
    exec "$root/$bin/ingest-coordinator") >>"$dir/coordinator-$name-$generation.log" 2>&1 &
  fleet_coordinators[$name]=$!
  disown
}
coordinator_ready() { curl -fsS -o /dev/null "http://127.0.0.1:${fleet_ports[$1]}/readyz" 2>/dev/null; }
# The name (a, b) of the running coordinator with this pid, or nothing.
coordinator_named() {
  local name
  for name in "${!fleet_coordinators[@]}"; do
    if [ "${fleet_coordinators[$name]}" = "$1" ]; then echo "$name"; fi
  done
}
coordinator_label() { echo "$1-${fleet_generation[$1]} (pid ${fleet_coordinators[$1]})"; }

open_batches() { psql_q "SELECT count(*) FROM batches WHERE state IN ('receiving', 'loading', 'committing')"; }
any_open() { local n; n=$(open_batches); [ -n "$n" ] && [ "$n" -gt 0 ]; }
submits_running() {
  local pid
  for pid in "${fleet_submits[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then return 0; fi
  done
  return 1
}
# "a: batch 1 loading, 12/400 chunks loaded; b: batch 2 committing (index), 400/400 chunks loaded"
fleet_progress() {
  psql_q "SELECT coalesce(string_agg(line, '; ' ORDER BY line), 'no batch')
          FROM (SELECT CASE b.idempotency_key WHEN '${fleet_keys[a]}' THEN 'a' ELSE 'b' END
                       || ': batch ' || b.id || ' ' || b.state
                       || coalesce(' (' || b.commit_step || ')', '') || ', '
                       || count(c.seq) FILTER (WHERE c.state = 'loaded') || '/'
                       || coalesce(b.chunks_total::text, count(c.seq) || '+') || ' chunks loaded' AS line
                FROM batches b LEFT JOIN chunks c ON c.batch_id = b.id
                WHERE b.idempotency_key IN ('${fleet_keys[a]}', '${fleet_keys[b]}')
                GROUP BY b.id) s"
}
# The state of the batch that holds half NAME's key ("" while none does).
half_state() { psql_q "SELECT state FROM batches WHERE idempotency_key = '${fleet_keys[$1]}'"; }
# The half (a, b) whose batch BATCH_ID is, or nothing (its key released).
half_of_batch() {
  psql_q "SELECT CASE idempotency_key WHEN '${fleet_keys[a]}' THEN 'a' WHEN '${fleet_keys[b]}' THEN 'b' END
          FROM batches WHERE id = $1"
}

# fleet_fault NAME COMMAND...: applies a fault; it landed if a batch was open just before.
fleet_fault() {
  local name=$1; shift
  local progress open
  progress=$(fleet_progress)
  open=$(open_batches)
  if [ -n "$open" ] && [ "$open" -gt 0 ]; then
    landed+=("$name ($progress)")
  else
    missed+=("$name (${progress:-?})")
  fi
  log "fault: $name (${progress:-?})"
  "$@"
}

# Kills the oldest worker not SIGSTOPped; a replacement starts.
fleet_kill_worker() {
  local i pid
  for i in "${!worker_pids[@]}"; do
    pid=${worker_pids[$i]}
    if ! is_stopped "$pid"; then
      kill_now "$pid"
      unset 'worker_pids[i]'
      worker_pids=("${worker_pids[@]}")
      start_worker
      return 0
    fi
  done
}

# The chunk (as "BATCH SEQ") the worker named $1 holds in a batch still taking chunks, if any.
chunk_held_by() {
  psql_q "SELECT c.batch_id || ' ' || c.seq FROM chunks c JOIN batches b ON b.id = c.batch_id
          WHERE c.state = 'loading' AND c.worker = '$1' AND b.state IN ('receiving', 'loading')
          ORDER BY c.batch_id, c.seq LIMIT 1"
}
# Freezes a worker that holds a chunk: every running worker is stopped at once (loads are
# quicker than a look at the ledger), and, once anything they sent has landed, the first the
# ledger shows holding a chunk stays stopped; the others are thawed. Tried again until one is
# caught. Sets frozen_worker. False when none was caught (within 120 s, or before the batches
# ended).
freeze_worker_holding_a_chunk() {
  local deadline=$((SECONDS + 120)) pid held caught running
  while ((SECONDS < deadline)) && any_open; do
    running=()
    for pid in "${worker_pids[@]}"; do
      if ! is_stopped "$pid"; then running+=("$pid"); stop_process "$pid"; fi
    done
    sleep 0.2
    caught=""
    for pid in "${running[@]}"; do
      if [ -z "$caught" ]; then
        held=$(chunk_held_by "${worker_names[$pid]}")
        if [ -n "$held" ]; then
          caught=$pid
          frozen_since[$pid]=$SECONDS
          frozen_chunk[$pid]=$held
          frozen_worker=$pid
          continue
        fi
      fi
      thaw_process "$pid"
    done
    [ -n "$caught" ] && return 0
    sleep 0.1
  done
  return 1
}
# Thaws every frozen worker that has been stopped for at least its lease + 5 s once its chunk
# was handed out again (queued again, or claimed or loaded by another worker); or, after 120 s,
# whatever happened (noted as a failure), or at once if its batch ended (not shown: a failure).
thaw_due() {
  local pid held chunk state holder verdict me batch seq
  for pid in "${!frozen_since[@]}"; do
    held=$((SECONDS - frozen_since[$pid]))
    ((held >= worker_lease + 5)) || continue
    me=${worker_names[$pid]}
    read -r batch seq <<<"${frozen_chunk[$pid]}"
    read -r state chunk holder <<<"$(psql_q "SELECT b.state || ' ' || c.state || ' ' || coalesce(c.worker, '-')
                                     FROM chunks c JOIN batches b ON b.id = c.batch_id
                                     WHERE c.batch_id = $batch AND c.seq = $seq")"
    if ((held < 120)); then
      [ -n "$state" ] || continue
      case "$state/$chunk/$holder" in receiving/loading/"$me"|loading/loading/"$me") continue ;; esac
    fi
    case "$state/$chunk/$holder" in
      failed/*|cancelled/*|/*) verdict="FAIL" ;;
      */loading/"$me"|*/loaded/"$me") verdict="FAIL" ;;
      *) verdict="ok" ;;
    esac
    thaw_process "$pid"
    unset 'frozen_since[$pid]'
    fleet_checks+=("$verdict: $me, SIGSTOPped holding batch $batch chunk $seq, thawed after $held s (worker lease $worker_lease s); the chunk was then ${chunk:-?} (worker ${holder:-?}), its batch ${state:-?}")
    log "thawed $me (pid $pid) after $held s: batch $batch chunk $seq is ${chunk:-?} (worker ${holder:-?}), the batch ${state:-?}"
  done
}
# pause_for SECONDS, thawing what is due meanwhile.
pause_for() {
  local until=$(( $(now_ms) + $1 * 1000 ))
  thaw_due
  while (( $(now_ms) < until )); do
    sleep 0.2
    thaw_due
  done
}

# The coordinator to kill: one holding a commit lease; else one whose batch is loading (its
# upload in, chunks left); else one whose upload is still coming in, not the batch of a frozen
# worker's chunk (the upload fails, and is sent again by its CLI); else a. Sets kill_name, kill_why.
pick_coordinator_to_kill() {
  local pid name half frozen_halves=""
  kill_name="" kill_why=""
  for pid in $(psql_q "SELECT c.pid FROM batches b JOIN coordinators c ON c.id = b.commit_holder
                       WHERE b.state = 'committing' AND b.commit_lease_until > now()"); do
    name=$(coordinator_named "$pid")
    if [ -n "$name" ] && ! is_stopped "$pid"; then kill_name=$name; kill_why="picked as it held a commit lease"; return; fi
  done
  for name in a b; do
    if [ "$(half_state "$name")" = loading ]; then kill_name=$name; kill_why="picked as its batch was loading"; return; fi
  done
  for pid in "${!frozen_chunk[@]}"; do
    frozen_halves+=" $(half_of_batch "${frozen_chunk[$pid]%% *}")"
  done
  for name in a b; do
    if [ "$(half_state "$name")" = receiving ] && [[ "$frozen_halves" != *"$name"* ]]; then
      kill_name=$name; kill_why="picked as its upload was still coming in"; return
    fi
  done
  kill_name=a
  kill_why="picked by default (no commit, load or upload to pick by)"
}
# Kills coordinator NAME, deletes its working folder, starts a new one on its port in a new
# folder and waits (60 s at most) for it to be ready.
kill_fleet_coordinator() {
  local name=$1 old old_folder
  old=$(coordinator_label "$name")
  old_folder=${fleet_folders[$name]}
  kill_now "${fleet_coordinators[$name]}"
  rm -rf "$old_folder"
  start_fleet_coordinator "$name"
  local deadline=$((SECONDS + 60))
  until coordinator_ready "$name"; do
    if ((SECONDS >= deadline)); then
      fleet_checks+=("FAIL: the coordinator started on port ${fleet_ports[$name]} after $old was killed was not ready within 60 s")
      return 0
    fi
    thaw_due
    sleep 0.2
  done
  log "$old killed, $old_folder deleted; $(coordinator_label "$name") ready on port ${fleet_ports[$name]} in ${fleet_folders[$name]}"
}

# Waits for a commit under way and freezes its coordinator (a worker SIGKILL every 2 s
# meanwhile). The freeze stands once, stopped, the ledger still shows that coordinator holding
# the commit lease. Sets freeze_name, freeze_pid, freeze_batch, freeze_holder, freeze_step.
# False when no commit was caught before the batches ended.
freeze_committing_coordinator() {
  local last_kill=$SECONDS batch holder pid name step fence
  while any_open || submits_running; do
    read -r batch holder pid <<<"$(psql_q "SELECT b.id || ' ' || c.id || ' ' || c.pid
                                 FROM batches b JOIN coordinators c ON c.id = b.commit_holder
                                 WHERE b.state = 'committing' AND b.commit_lease_until > now()
                                 ORDER BY b.id LIMIT 1")"
    name=""
    [ -n "$pid" ] && name=$(coordinator_named "$pid")
    if [ -n "$name" ] && ! is_stopped "$pid"; then
      stop_process "$pid"
      sleep 0.3
      read -r fence step <<<"$(psql_q "SELECT commit_fence || ' ' || coalesce(commit_step, 'taking the lease')
                                   FROM batches WHERE id = $batch AND state = 'committing'
                                   AND commit_holder = '$holder'")"
      if [ -n "$step" ]; then
        freeze_name=$name freeze_pid=$pid freeze_batch=$batch freeze_holder=$holder
        freeze_step=$step freeze_fence=$fence
        return 0
      fi
      thaw_process "$pid"
    fi
    if ((SECONDS - last_kill >= 2)) && any_open; then
      fleet_fault "worker SIGKILL" fleet_kill_worker
      last_kill=$SECONDS
    fi
    thaw_due
    sleep 0.05
  done
  return 1
}
# Holds the frozen coordinator until a peer took its commit over (the commit lease taken again,
# by another coordinator) and at least its lease + 5 s passed (120 s at most), then thaws it.
# A worker SIGKILL every 2 s meanwhile.
hold_frozen_coordinator() {
  local since=$SECONDS held=0 state="" holder="" fence="" label last_kill=$SECONDS
  label=$(coordinator_label "$freeze_name")
  while :; do
    pause_for 1
    if ((SECONDS - last_kill >= 2)) && any_open; then
      fleet_fault "worker SIGKILL" fleet_kill_worker
      last_kill=$SECONDS
    fi
    held=$((SECONDS - since))
    read -r state holder fence <<<"$(psql_q "SELECT state || ' ' || coalesce(commit_holder, '-') || ' ' || commit_fence
                                      FROM batches WHERE id = $freeze_batch")"
    if ((held >= coordinator_lease + 5)) && [ -n "$fence" ] && [ "$fence" -gt "$freeze_fence" ]; then
      break
    fi
    case "$state" in failed|cancelled) break ;; esac
    ((held < 120)) || break
  done
  thaw_process "$freeze_pid"
  local verdict=FAIL
  if [ -n "$fence" ] && [ "$fence" -gt "$freeze_fence" ] && [ "$holder" != "$freeze_holder" ]; then
    verdict=ok
  fi
  fleet_checks+=("$verdict: $label, SIGSTOPped holding the commit lease of batch $freeze_batch (at: $freeze_step, lease taken $freeze_fence times), thawed after $held s (coordinator lease $coordinator_lease s); the batch was then ${state:-?}, its lease taken ${fence:-?} times, held by ${holder:-?}")
  log "thawed $label after $held s: batch $freeze_batch ${state:-?}, its commit lease taken ${fence:-?} times, held by ${holder:-?}"
}

run_fleet() {
  export INGEST_COORDINATOR_LEASE_SECONDS=$coordinator_lease
  export INGEST_LEASE_SECONDS=$worker_lease
  unset INGEST_URL INGEST_LISTEN
  rm -rf "$dir"/coordinator-*/
  # The two halves, each with the header line.
  local half=$(( (rows + 1) / 2 ))
  fleet_files[a]="$dir/rates-$rows-a.csv"
  fleet_files[b]="$dir/rates-$rows-b.csv"
  if [ ! -s "${fleet_files[a]}" ] || [ ! -s "${fleet_files[b]}" ]; then
    log "splitting the file in two: $half and $((rows - half)) rows"
    head -n $((half + 1)) "$file" >"${fleet_files[a]}.tmp"
    { head -n 1 "$file"; tail -n +$((half + 2)) "$file"; } >"${fleet_files[b]}.tmp"
    mv "${fleet_files[a]}.tmp" "${fleet_files[a]}"
    mv "${fleet_files[b]}.tmp" "${fleet_files[b]}"
  fi
  local name
  for name in a b; do start_fleet_coordinator "$name"; done
  for name in a b; do
    wait_for 120 coordinator_ready "$name" || { log "coordinator $name did not start"; exit 1; }
  done
  log "coordinators $(coordinator_label a) on ${fleet_ports[a]} and $(coordinator_label b) on ${fleet_ports[b]}; leases: coordinator $coordinator_lease s, worker $worker_lease s"
  for _ in 1 2 3; do start_worker; done

  started=$SECONDS
  for name in a b; do
    log "submitting half $name ($(du -h "${fleet_files[$name]}" | cut -f1)) to coordinator $name, Idempotency-Key ${fleet_keys[$name]}"
    INGEST_URL="http://127.0.0.1:${fleet_ports[$name]}" \
      "$bin/ingest" submit "${fleet_files[$name]}" --idempotency-key "${fleet_keys[$name]}" \
      --no-wait --retry-for 1800 >"$dir/submit-$name.log" 2>&1 &
    fleet_submit_of[$name]=$!
    fleet_submits+=("$!")
  done
  wait_for 300 sh -c "[ \"\$(psql -d '$DATABASE_URL' -Atqc \
    \"SELECT count(DISTINCT b.id) FROM batches b JOIN chunks c ON c.batch_id = b.id
      WHERE b.idempotency_key IN ('${fleet_keys[a]}', '${fleet_keys[b]}')\" 2>/dev/null || echo 0)\" -ge 2 ]" \
    || { log "the uploads did not start"; exit 1; }
  log "both uploads under way: $(fleet_progress)"

  # The freeze comes first: at 1M rows the batches are in, loaded and committed within about
  # 2 s of the first chunk, and the frozen worker's chunk keeps its batch open for a lease.
  if freeze_worker_holding_a_chunk; then
    read -r chunk_batch chunk_seq <<<"${frozen_chunk[$frozen_worker]}"
    fleet_fault "worker SIGSTOP past its lease: ${worker_names[$frozen_worker]} (pid $frozen_worker) holding batch $chunk_batch chunk $chunk_seq" true
  else
    missed+=("worker SIGSTOP past its lease (no worker was seen holding a chunk)")
    log "no worker was seen holding a chunk: no worker SIGSTOP"
  fi
  pause_for 1
  fleet_fault "worker SIGKILL" fleet_kill_worker
  pause_for 1
  pick_coordinator_to_kill
  fleet_fault "coordinator SIGKILL, its folder deleted, a new one on its port: $(coordinator_label "$kill_name"), $kill_why" \
    kill_fleet_coordinator "$kill_name"
  pause_for 1
  if freeze_committing_coordinator; then
    fleet_fault "coordinator SIGSTOP past its lease: $(coordinator_label "$freeze_name") holding the commit lease of batch $freeze_batch (at: $freeze_step)" \
      hold_frozen_coordinator
  else
    missed+=("coordinator SIGSTOP past its lease (no commit was caught under way)")
    log "no commit was caught under way: no coordinator SIGSTOP"
  fi
  local deadline=$((SECONDS + 1800))
  while { any_open || submits_running || [ ${#frozen_since[@]} -gt 0 ]; } && ((SECONDS < deadline)); do
    pause_for 2
    if any_open; then fleet_fault "worker SIGKILL" fleet_kill_worker; fi
  done
  # Whatever is still stopped (a deadline passed) is thawed now.
  local pid
  for pid in "${!frozen_since[@]}"; do
    fleet_checks+=("FAIL: ${worker_names[$pid]} was still frozen at the end")
    thaw_process "$pid"
  done

  # --- Verdict.
  local elapsed=$((SECONDS - started)) ok=1 rc
  declare -A submit_rc=()
  for name in a b; do
    rc=0
    if kill -0 "${fleet_submit_of[$name]}" 2>/dev/null; then
      kill_now "${fleet_submit_of[$name]}"
    fi
    wait "${fleet_submit_of[$name]}" 2>/dev/null || rc=$?
    submit_rc[$name]=$rc
  done
  fleet_submits=()
  psql_q "SELECT day, count(*), sum(price) FROM prices GROUP BY day ORDER BY day" | tr '|' ',' >"$dir/prices.sum"
  verdict=$("$bin/rates" judge "$file.sum" "$dir/prices.sum" || true)
  echo
  echo "== chaos run (fleet mode, $rows rows in two halves, 2 coordinators, 3 workers): $(fleet_progress) after ${elapsed} s"
  echo "faults that landed:"
  printf '  %s\n' "${landed[@]}"
  if [ ${#missed[@]} -gt 0 ]; then
    echo "faults that did not land (no batch was open):"
    printf '  %s\n' "${missed[@]}"
  fi
  if [ ${#fleet_checks[@]} -gt 0 ]; then
    echo "what the freezes showed:"
    printf '  %s\n' "${fleet_checks[@]}"
  fi
  # Which half each batch was: the coordinators on half a's port received only half a.
  declare -A received_by=()
  local id
  for name in a b; do
    for id in $( (cat "$dir"/coordinator-"$name"-*.log | grep "receiving a batch" | grep -o 'batch_id=[0-9]*' | cut -d= -f2 | sort -un) 2>/dev/null || true); do
      received_by[$id]=$name
    done
  done
  echo "batches:"
  local line
  while IFS='|' read -r id line; do
    [ -n "$id" ] && echo "  batch $id (half ${received_by[$id]:-?}): $line"
  done < <(psql_q "SELECT b.id, b.state || coalesce(', ' || b.rows_total || ' rows', '') || ', '
                          || count(c.seq) || ' chunks, deliveries beyond the first: '
                          || coalesce(sum(greatest(c.attempts - 1, 0)), 0)
                          || ', commit: ' || coalesce(round(b.commit_seconds::numeric, 1) || ' s', '-')
                          || ', commit leases taken: ' || b.commit_fence
                          || coalesce(', error: ' || b.error, '')
                   FROM batches b LEFT JOIN chunks c ON c.batch_id = b.id GROUP BY b.id ORDER BY b.id")
  local stopped_uploads others
  stopped_uploads=$(psql_q "SELECT count(*) FROM batches WHERE state = 'failed'
                              AND (error LIKE 'the upload stopped before the whole file was in%'
                                   OR error LIKE '%the upload broke off%')")
  others=$(psql_q "SELECT count(*) FROM batches WHERE state <> 'committed'
                     AND NOT (state = 'failed' AND (error LIKE 'the upload stopped before the whole file was in%'
                                                    OR error LIKE '%the upload broke off%'))")
  echo "uploads that stopped (their batch failed, the file sent again): ${stopped_uploads:-?};" \
       "sent again by the CLI: a $(grep -c 'sending the file again' "$dir/submit-a.log" || true)," \
       "b $(grep -c 'sending the file again' "$dir/submit-b.log" || true)"
  echo "submits: a exit ${submit_rc[a]} ($(tail -n 1 "$dir/submit-a.log")); b exit ${submit_rc[b]} ($(tail -n 1 "$dir/submit-b.log"))"
  local logs=("$dir"/coordinator-*.log)
  echo "take-overs in the coordinators' logs:" \
       "worker backends ended at their lease $(cat "${logs[@]}" | grep -c 'ended the backend of a worker whose lease expired' || true)," \
       "commit sessions ended at a lease $(cat "${logs[@]}" | grep -c 'ended a session of a commit whose lease expired' || true)," \
       "commits stopped on a lost lease $(cat "${logs[@]}" | grep -c 'lost the commit lease\|the commit lease was taken over' || true)," \
       "uploads ended: of a gone coordinator $(cat "${logs[@]}" | grep -c 'ended a batch whose coordinator is gone' || true)," \
       "at the key's return $(cat "${logs[@]}" | grep -c 'ended a broken-off upload whose key came back' || true)"
  psql_q "SELECT 'prices: ' || count(*) || ' rows, sum ' || sum(price) FROM prices"
  echo "$verdict"

  local kind
  for kind in "worker SIGKILL" "worker SIGSTOP" "coordinator SIGKILL" "coordinator SIGSTOP"; do
    if ! printf '%s\n' "${landed[@]}" | grep -q "^$kind"; then
      echo "FAIL: the fault \"$kind\" did not land"
      ok=0
    fi
  done
  for line in "${fleet_checks[@]}"; do
    case "$line" in FAIL*) echo "$line"; ok=0 ;; esac
  done
  for name in a b; do
    local state
    state=$(half_state "$name")
    if [ "$state" != committed ]; then
      echo "FAIL: half $name (key ${fleet_keys[$name]}) is ${state:-without a batch}, not committed"
      ok=0
    fi
    if [ "${submit_rc[$name]}" != 0 ]; then
      echo "FAIL: the submit of half $name exited ${submit_rc[$name]}"
      ok=0
    fi
  done
  if [ "${others:-1}" != 0 ]; then
    echo "FAIL: ${others:-?} batch(es) neither committed nor failed by an upload that stopped"
    ok=0
  fi
  case "$verdict" in "lost=0 duplicated=0 differing_days=0") ;; *) echo "FAIL: prices differ from the file"; ok=0 ;; esac
  if [ $ok = 1 ]; then
    echo "PASS: both halves committed, lost=0 duplicated=0, every kind of fault landed"
    exit 0
  fi
  echo "logs: $dir"
  exit 1
}

# --- Set up.
ensure_services
if [ $build = 1 ]; then
  log "building release binaries"
  cargo build --release --locked --bins -q
fi
# rates (ingest-testkit) generates the file and judges the table by its checksum.
for binary in ingest-coordinator ingest-worker ingest rates; do
  [ -x "$bin/$binary" ] || { log "$bin/$binary is missing (build it, or run without --no-build)"; exit 1; }
done
file="$dir/rates-$rows.csv"
if [ ! -s "$file" ]; then
  log "generating $rows rows"
  "$bin/rates" generate "$rows" 7 data/ratestask/ports.csv "$file.tmp"
  mv "$file.tmp" "$file"
fi
[ -s "$file.sum" ] || "$bin/rates" checksum "$file" >"$file.sum"
rm -rf "$dir"/*.log
if [ "$mode" = failover ]; then
  # The clusters are fresh: the database is created on the primary, the queue by the
  # coordinator. The machine's own PostgreSQL and RabbitMQ are not touched.
  start_clusters
else
  log "fresh database $db and queue $queue"
  psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"
  rabbitmqctl -q delete_queue "$queue" >/dev/null 2>&1 || true
  rabbitmqctl -q delete_queue "$queue.dead" >/dev/null 2>&1 || true
fi
"$bin/ingest-coordinator" seed --data-dir data/ratestask >/dev/null
if [ "$mode" = fleet ]; then run_fleet; fi
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
  wait_for 300 sh -c "[ \"\$(psql -d '$DATABASE_URL' -Atqc \
    \"SELECT count(*) FROM chunks c JOIN batches b ON b.id = c.batch_id
      WHERE b.idempotency_key = '$key' AND b.state = 'receiving'\" 2>/dev/null || echo 0)\" -ge 3 ]" \
    || { log "the upload did not start"; exit 1; }
  fault "PostgreSQL fast restart" restart_postgres
  sleep 2
  fault "coordinator SIGKILL and restart" restart_coordinator
fi
wait_for 1800 sh -c "case \"\$(psql -d '$DATABASE_URL' -Atqc \
  \"SELECT state FROM batches WHERE idempotency_key = '$key'\" 2>/dev/null)\" in
  loading|committing|committed|failed|cancelled) exit 0;; *) exit 1;; esac" \
  || { log "the upload never completed"; exit 1; }
log "upload complete after $((SECONDS - started)) s: batch $(batch_progress)"
if [ "$mode" = loading ] || [ "$mode" = failover ]; then
  # (--mode failover: the node leading the chunk queue is asked now, so that it is stopped as
  # soon as the workers load.)
  if [ "$mode" = failover ]; then first_leader=$(queue_leader); log "the leader of $queue: node ${first_leader:-?}"; fi
  start_workers
  wait_for 300 sh -c "[ \"\$(psql -d '$DATABASE_URL' -Atqc \
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
elif [ "$mode" = failover ]; then
  failover_faults "$first_leader"
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
if [ "$mode" = failover ]; then
  rmq_lane_join
  # The two lanes' entries, in the order they came (each starts with its time).
  mapfile -t landed < <(printf '%s\n' "${landed[@]}" | sort -s -k1,1)
  [ ${#missed[@]} -eq 0 ] || mapfile -t missed < <(printf '%s\n' "${missed[@]}" | sort -s -k1,1)
fi

# --- Verdict.
final=$(batch_row)
state=$(echo "$final" | awk '{print $2}')
elapsed=$((SECONDS - started))
psql_q "SELECT day, count(*), sum(price) FROM prices GROUP BY day ORDER BY day" | tr '|' ',' >"$dir/prices.sum"
verdict=$("$bin/rates" judge "$file.sum" "$dir/prices.sum" || true)
echo
echo "== chaos run ($mode mode, $rows rows): batch ${final:-?} after ${elapsed} s"
echo "faults that landed:"
printf '  %s\n' "${landed[@]}"
if [ ${#missed[@]} -gt 0 ]; then
  echo "faults that did not land (the batch was no longer open):"
  printf '  %s\n' "${missed[@]}"
fi
if [ "$mode" = failover ]; then
  echo "what the clusters showed:"
  printf '  %s\n' "${failover_checks[@]}"
  echo "  PostgreSQL at the end: $(pair_status)"
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
# --mode failover: each failover must meet the batch in the state it is named after, and two
# different RabbitMQ nodes must have been stopped with the batch open.
if [ "$mode" = failover ]; then
  kinds=("worker SIGKILL (batch" "PostgreSQL failover while loading (batch loading"
         "PostgreSQL failover while committing (batch committing")
fi
ok=1
for kind in "${kinds[@]}"; do
  pattern="$kind ("
  [ "$mode" = failover ] && pattern=$kind
  if ! printf '%s\n' "${landed[@]}" | grep -qF "$pattern"; then
    echo "FAIL: the fault \"$kind\" did not land"
    ok=0
  fi
done
if [ "$mode" = failover ]; then
  nodes_stopped=$(printf '%s\n' "${landed[@]}" | sed -n 's/^[0-9:]* RabbitMQ node \([123]\) stop_app.*/\1/p' | sort -u | wc -l)
  if [ "$nodes_stopped" -lt 2 ]; then
    echo "FAIL: $nodes_stopped RabbitMQ node(s) stopped with the batch open, not 2"
    ok=0
  fi
  for line in "${failover_checks[@]}"; do
    case "$line" in FAIL*) echo "$line"; ok=0 ;; esac
  done
fi
[ "$state" = committed ] || { echo "FAIL: the batch is ${state:-missing}, not committed"; ok=0; }
case "$verdict" in "lost=0 duplicated=0 differing_days=0") ;; *) echo "FAIL: prices differ from the file"; ok=0 ;; esac
if [ $ok = 1 ]; then
  echo "PASS: committed, lost=0 duplicated=0, every kind of fault landed"
  exit 0
fi
echo "logs: $dir"
exit 1
