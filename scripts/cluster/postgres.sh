#!/usr/bin/env bash
# A PostgreSQL 15 primary with a streaming standby, on their own ports, from Debian's binaries
# (/usr/lib/postgresql/15/bin), beside the machine's own cluster (15 main on 5432, which this
# never touches), for the tests that need the database to fail over.
#
#   scripts/cluster/postgres.sh [--ports P1,P2] start [--sync|--async]  prints the base URL
#   scripts/cluster/postgres.sh [--ports P1,P2] failover
#   scripts/cluster/postgres.sh [--ports P1,P2] pause-replication
#   scripts/cluster/postgres.sh [--ports P1,P2] resume-replication
#   scripts/cluster/postgres.sh [--ports P1,P2] status
#   scripts/cluster/postgres.sh [--ports P1,P2] stop
#
# P1,P2 (default 5441,5442, or INGEST_PG_PORTS): the primary listens on 127.0.0.1:P1, the standby
# (application_name standby1, a physical slot of its own) on 127.0.0.1:P2; their data, sockets
# and logs are in /tmp/ingest-cluster/postgres-P1 (INGEST_PG_STATE overrides). Trust auth, user
# postgres.
# - start: a fresh pair (what an earlier pair on these ports left behind, stopped, is removed);
#   refuses (exit 1) while a server of the pair runs: stop it first. --sync (the default) makes
#   standby1 synchronous; --async leaves replication asynchronous. Returns once the primary's
#   pg_stat_replication shows standby1 streaming (and sync, with --sync). Prints
#   postgres://postgres@127.0.0.1:P1,127.0.0.1:P2 — callers append
#   /DB?target_session_attrs=read-write.
# - failover: what a failover manager does: the primary is killed (pg_ctl -m immediate), the
#   standby promoted and, once it takes writes, freed of synchronous_standby_names (else every
#   commit would wait on SyncRep for a standby that is gone). Prints nothing.
# - pause-replication: waits until the standby has replayed everything the primary wrote so far,
#   then cuts it off: ALTER SYSTEM SET primary_conninfo = '' and a reload on the standby, which
#   ends its walreceiver and starts none again. The primary goes on committing (asynchronously;
#   with --sync its commits wait, as synchronous replication does), and whatever it commits from
#   then on is not on the standby: a failover loses it. Nothing is frozen. resume-replication
#   sets the saved primary_conninfo back and waits until the standby streams again.
# - status: "primary PORT" (or "primary none"), a line per server ("PORT primary|standby|down"),
#   and the primary's pg_stat_replication ("replication NAME STATE SYNC_STATE", or
#   "replication none").
# - stop: both servers ended, whatever their state (any process of theirs a test froze with
#   SIGSTOP is thawed first), and the state folder removed.
# Logs go to stderr, only the values asked for to stdout; a failure exits 1 with its reason.
set -euo pipefail

PGBIN=/usr/lib/postgresql/15/bin
PORTS=${INGEST_PG_PORTS:-5441,5442}

log() { echo "postgres-pair: $*" >&2; }
die() {
  echo "postgres-pair: $*" >&2
  exit 1
}

usage() {
  sed -n '6,11p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

while (($#)); do
  case $1 in
    --ports) PORTS=${2:?--ports needs P1,P2}; shift 2 ;;
    --ports=*) PORTS=${1#*=}; shift ;;
    -h | --help) usage ;;
    *) break ;;
  esac
done
(($#)) || usage
COMMAND=$1
shift
[[ $PORTS =~ ^([0-9]+),([0-9]+)$ ]] || die "bad --ports '$PORTS' (P1,P2)"
P1=${BASH_REMATCH[1]}
P2=${BASH_REMATCH[2]}
((P1 > 0 && P1 < 65536 && P2 > 0 && P2 < 65536 && P1 != P2)) || die "bad ports $P1,$P2"
STATE=${INGEST_PG_STATE:-/tmp/ingest-cluster/postgres-$P1}
SOCKETS=$STATE/run
DATA1=$STATE/primary
DATA2=$STATE/standby

export PGCONNECT_TIMEOUT=5
# psql PORT SQL: one query through TCP as postgres (trust), unaligned tuples only.
psql_at() {
  local port=$1; shift
  "$PGBIN/psql" -X -h 127.0.0.1 -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 -Atq -c "$@"
}
# (The lock's descriptor is closed for them: a server started must not hold it for its life.)
as_postgres() { (cd /tmp && runuser -u postgres -- "$@" 9>&-); }
data_of() { if [[ $1 == "$P1" ]]; then echo "$DATA1"; else echo "$DATA2"; fi; }
answers() { "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$1" 2>/dev/null; }
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
postmaster_pid() { head -n1 "$1/postmaster.pid" 2>/dev/null || true; }
in_recovery() { psql_at "$1" 'SELECT pg_is_in_recovery()' 2>/dev/null; }

# wait_until SECONDS WHAT COMMAND...: polls COMMAND until it succeeds or the deadline passes.
wait_until() {
  local seconds=$1 what=$2; shift 2
  local deadline=$((SECONDS + seconds))
  until "$@"; do
    ((SECONDS < deadline)) || die "$what within ${seconds}s (logs: $STATE/*.log)"
    sleep 0.2
  done
}

# The port now primary: the one of the two that answers and is not in recovery.
primary_port() {
  local port
  for port in "$P1" "$P2"; do
    [[ $(in_recovery "$port") == f ]] && { echo "$port"; return; }
  done
  return 1
}

# A server's postmaster and all its processes, thawed (a test may have frozen some).
thaw() {
  local pid child
  pid=$(postmaster_pid "$1")
  [[ -n $pid ]] || return 0
  kill -CONT "$pid" 2>/dev/null || true
  for child in $(ps -o pid= --ppid "$pid" 2>/dev/null); do
    kill -CONT "$child" 2>/dev/null || true
  done
}

# PID is a live process (not a zombie waiting to be reaped).
alive() { [[ -n $1 ]] && ps -o stat= -p "$1" 2>/dev/null | grep -qv '^Z'; }
running() { alive "$(postmaster_pid "$1")"; }

replication_is() { # WANT: "streaming|sync" or "streaming|async"
  [[ $(psql_at "$P1" "SELECT state || '|' || sync_state FROM pg_stat_replication
                       WHERE application_name = 'standby1'" 2>/dev/null) == "$1" ]]
}

start() {
  local mode=sync
  case ${1:-} in
    "" | --sync) ;;
    --async) mode=async ;;
    *) die "start takes --sync or --async, not '$1'" ;;
  esac
  if running "$DATA1" || running "$DATA2"; then
    die "the pair on $P1,$P2 is already running ($STATE): run stop first"
  fi
  port_free "$P1" || die "port $P1 is taken"
  port_free "$P2" || die "port $P2 is taken"
  rm -rf "$STATE"
  mkdir -p "$SOCKETS"
  chown -R postgres:postgres "$STATE"
  chmod 700 "$STATE"

  log "initdb of the primary ($DATA1)"
  as_postgres "$PGBIN/initdb" -D "$DATA1" -U postgres -A trust -E UTF8 --locale=C.UTF-8 \
    --no-sync >/dev/null
  cat >"$DATA1/pg_hba.conf" <<EOF
local all         all                trust
host  all         all  127.0.0.1/32  trust
local replication all                trust
host  replication all  127.0.0.1/32  trust
EOF
  local standbys="'standby1'"
  [[ $mode == sync ]] || standbys="''"
  cat >>"$DATA1/postgresql.conf" <<EOF

# scripts/cluster/postgres.sh
port = $P1
listen_addresses = '127.0.0.1'
unix_socket_directories = '$SOCKETS'
max_connections = 200
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
hot_standby = on
wal_receiver_status_interval = 1s
synchronous_standby_names = $standbys
EOF
  chown postgres:postgres "$DATA1/pg_hba.conf" "$DATA1/postgresql.conf"
  log "starting the primary on $P1 ($mode)"
  as_postgres "$PGBIN/pg_ctl" -D "$DATA1" -l "$STATE/primary.log" -w -t 60 start >/dev/null ||
    die "the primary did not start (log: $STATE/primary.log)"

  log "base backup for the standby ($DATA2)"
  as_postgres "$PGBIN/pg_basebackup" -D "$DATA2" -R -X stream -C -S standby1 --no-sync \
    -d "host=127.0.0.1 port=$P1 user=postgres application_name=standby1" >&2 ||
    die "pg_basebackup failed"
  # The copied configuration is the primary's: the standby gets its own port.
  printf '\n# the standby\nport = %s\n' "$P2" >>"$DATA2/postgresql.conf"
  grep -q "application_name=standby1" "$DATA2/postgresql.auto.conf" ||
    die "pg_basebackup -R wrote no application_name into primary_conninfo"
  log "starting the standby on $P2"
  as_postgres "$PGBIN/pg_ctl" -D "$DATA2" -l "$STATE/standby.log" -w -t 60 start >/dev/null ||
    die "the standby did not start (log: $STATE/standby.log)"
  # Kept for resume-replication, which sets it back.
  psql_at "$P2" 'SHOW primary_conninfo' >"$STATE/primary_conninfo"
  wait_until 60 "standby1 was not streaming ($mode)" replication_is "streaming|$mode"
  log "pair up: primary $P1, standby $P2 ($mode)"
  echo "postgres://postgres@127.0.0.1:$P1,127.0.0.1:$P2"
}

failover() {
  [[ -d $STATE ]] || die "no pair on $P1,$P2 (no $STATE)"
  local old new
  # Whatever a test froze is thawed first (a frozen server answers no query).
  thaw "$DATA1"
  thaw "$DATA2"
  old=$(primary_port) || die "no primary answers on $P1 or $P2"
  if [[ $old == "$P1" ]]; then new=$P2; else new=$P1; fi
  [[ $(in_recovery "$new") == t ]] || die "no standby answers on $new"
  log "killing the primary on $old (immediate stop)"
  as_postgres "$PGBIN/pg_ctl" -D "$(data_of "$old")" -m immediate -w -t 30 stop >/dev/null ||
    die "the primary on $old did not stop"
  log "promoting the standby on $new"
  as_postgres "$PGBIN/pg_ctl" -D "$(data_of "$new")" -w -t 30 promote >/dev/null ||
    die "the standby on $new was not promoted"
  wait_until 30 "the promoted server on $new still in recovery" \
    eval '[[ $(in_recovery "$new") == f ]]'
  psql_at "$new" "ALTER SYSTEM SET synchronous_standby_names = ''" >/dev/null
  psql_at "$new" 'SELECT pg_reload_conf()' >/dev/null
  wait_until 10 "synchronous_standby_names not cleared on $new" \
    eval '[[ -z $(psql_at "$new" "SHOW synchronous_standby_names") ]]'
  log "failover done: primary $new"
}

standby_caught_up() { # LSN: the standby has replayed up to LSN
  [[ $(psql_at "$P2" "SELECT pg_last_wal_replay_lsn() >= '$1'::pg_lsn") == t ]]
}
no_walreceiver() { [[ $(psql_at "$P2" 'SELECT count(*) FROM pg_stat_wal_receiver') == 0 ]]; }

pause_replication() {
  [[ $(in_recovery "$P1") == f && $(in_recovery "$P2") == t ]] ||
    die "pause-replication needs the primary on $P1 and the standby on $P2 running"
  local lsn
  lsn=$(psql_at "$P1" 'SELECT pg_current_wal_lsn()')
  wait_until 30 "the standby did not replay up to $lsn" standby_caught_up "$lsn"
  log "cutting the standby on $P2 off (primary_conninfo = '')"
  psql_at "$P2" "ALTER SYSTEM SET primary_conninfo = ''" >/dev/null
  psql_at "$P2" 'SELECT pg_reload_conf()' >/dev/null
  wait_until 30 "the standby's walreceiver did not end" no_walreceiver
  log "replication paused at $lsn"
}

resume_replication() {
  [[ $(in_recovery "$P2") == t ]] || die "no standby answers on $P2"
  local conninfo
  conninfo=$(cat "$STATE/primary_conninfo") || die "no saved primary_conninfo"
  psql_at "$P2" "ALTER SYSTEM SET primary_conninfo = '${conninfo//\'/\'\'}'" >/dev/null
  psql_at "$P2" 'SELECT pg_reload_conf()' >/dev/null
  local want
  want="streaming|$(psql_at "$P1" "SELECT CASE WHEN current_setting('synchronous_standby_names')
                                  = '' THEN 'async' ELSE 'sync' END")"
  wait_until 60 "standby1 was not streaming again" replication_is "$want"
  log "replication resumed"
}

status() {
  local port primary=none state
  primary=$(primary_port) || primary=none
  echo "primary $primary"
  for port in "$P1" "$P2"; do
    case $(in_recovery "$port") in
      f) state=primary ;;
      t) state=standby ;;
      *) state=down ;;
    esac
    echo "$port $state"
  done
  local rows=""
  if [[ $primary != none ]]; then
    rows=$(psql_at "$primary" "SELECT 'replication ' || application_name || ' ' || state || ' '
                               || sync_state FROM pg_stat_replication ORDER BY 1")
  fi
  echo "${rows:-replication none}"
}

stop() {
  local data pid deadline
  for data in "$DATA1" "$DATA2"; do
    running "$data" || continue
    pid=$(postmaster_pid "$data")
    thaw "$data"
    log "stopping the server in $data"
    as_postgres "$PGBIN/pg_ctl" -D "$data" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
    deadline=$((SECONDS + 5))
    while alive "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
    if alive "$pid"; then
      log "postmaster $pid did not stop: killing it and its processes"
      kill -KILL $(ps -o pid= --ppid "$pid" 2>/dev/null) "$pid" 2>/dev/null || true
    fi
  done
  if [[ -d $STATE ]]; then
    rm -rf "$STATE"
    log "pair on $P1,$P2 stopped, $STATE removed"
  fi
  # Pairs come on random ports: their lock files go too (held until this command exits).
  rm -f "$STATE.lock"
}

# Nothing to stop (no state folder): done, whoever asks (the exit trap of scripts/test.sh).
[[ $COMMAND == stop && ! -d $STATE ]] && exit 0
[[ $(id -u) == 0 ]] || die "must run as root (it runs the servers as postgres with runuser)"
mkdir -p "$(dirname "$STATE")"
exec 9>"$STATE.lock"
flock -w 120 9 || die "another command holds $STATE.lock"

case $COMMAND in
  start) start "$@" ;;
  failover) failover ;;
  pause-replication) pause_replication ;;
  resume-replication) resume_replication ;;
  status) status ;;
  stop) stop ;;
  *)
    echo "${0##*/}: unknown command '$COMMAND'" >&2
    usage
    ;;
esac
