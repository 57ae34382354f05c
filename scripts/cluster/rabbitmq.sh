#!/usr/bin/env bash
# A 3-node RabbitMQ cluster on its own ports, beside the machine's own broker (rabbit@localhost on
# 5672, which this never touches), for the tests and runs that need a broker node to fail.
#
#   scripts/cluster/rabbitmq.sh [--base-port BASE] start         up and joined; prints AMQP_URL
#   scripts/cluster/rabbitmq.sh [--base-port BASE] urls          prints AMQP_URL
#   scripts/cluster/rabbitmq.sh [--base-port BASE] stop-node N   stop_app on node N (1..3)
#   scripts/cluster/rabbitmq.sh [--base-port BASE] start-node N  start_app on node N, booted
#   scripts/cluster/rabbitmq.sh [--base-port BASE] leader QUEUE  the node (1..3) leading QUEUE
#   scripts/cluster/rabbitmq.sh [--base-port BASE] stop          every node ended, state removed
#
# BASE (default 5681, or INGEST_RMQ_BASE_PORT): node N is ingest-BASE-N@localhost with AMQP on
# 127.0.0.1:BASE+N-1 and Erlang distribution on BASE+20000+N-1; its state (config, mnesia, logs)
# is in /tmp/ingest-cluster/rabbitmq-BASE (INGEST_RMQ_STATE overrides). AMQP_URL is the three
# nodes' URLs, comma-separated. `start` is idempotent: a cluster already up and joined is only
# reported; one partly up (a node ended, an application stopped) is brought whole again.
# Logs go to stderr, only the values asked for to stdout; a failure exits 1 with its reason.
set -euo pipefail

RMQ_BIN=/usr/lib/rabbitmq/bin
BASE=${INGEST_RMQ_BASE_PORT:-5681}
NODES=(1 2 3)

log() { echo "rabbitmq-cluster: $*" >&2; }
die() {
  echo "rabbitmq-cluster: $*" >&2
  exit 1
}

usage() {
  sed -n '5,10p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

while (($#)); do
  case $1 in
    --base-port) BASE=${2:?--base-port needs a port}; shift 2 ;;
    --base-port=*) BASE=${1#*=}; shift ;;
    -h | --help) usage ;;
    *) break ;;
  esac
done
(($#)) || usage
COMMAND=$1
shift
[[ $BASE =~ ^[0-9]+$ ]] && ((BASE > 0 && BASE + 20002 < 65536)) || die "bad base port '$BASE'"
STATE=${INGEST_RMQ_STATE:-/tmp/ingest-cluster/rabbitmq-$BASE}

node_name() { echo "ingest-$BASE-$1@localhost"; }
amqp_port() { echo $((BASE + $1 - 1)); }
dist_port() { echo $((BASE + 20000 + $1 - 1)); }
node_dir() { echo "$STATE/node$1"; }
pid_of() { cat "$(node_dir "$1")/rabbitmq.pid" 2>/dev/null || true; }
# PID is a live process (not a zombie waiting to be reaped).
alive() { [[ -n $1 ]] && ps -o stat= -p "$1" 2>/dev/null | grep -qv '^Z'; }

urls() {
  local n out=()
  for n in "${NODES[@]}"; do
    out+=("amqp://guest:guest@127.0.0.1:$(amqp_port "$n")/%2f")
  done
  (IFS=,; echo "${out[*]}")
}

# rabbitmqctl as the rabbitmq user (its Erlang cookie), bounded in time: ctl SECONDS NODE ARGS...
# (Without the lock's descriptor: an epmd it may start must not hold the lock.)
ctl() {
  local seconds=$1 n=$2; shift 2
  (cd /var/lib/rabbitmq && timeout "$seconds" runuser -u rabbitmq -- \
    env HOME=/var/lib/rabbitmq "$RMQ_BIN/rabbitmqctl" -n "$(node_name "$n")" "$@" 9>&-)
}

node_up() { ctl 15 "$1" -q ping >/dev/null 2>&1; }            # the Erlang node answers
app_running() { ctl 15 "$1" -q eval 'rabbit:is_running().' 2>/dev/null | grep -qx true; }

# The nodes node N sees running in its cluster, one a line.
running_nodes() {
  ctl 15 "$1" -q eval \
    '[io:format("~s~n", [N]) || N <- rabbit_nodes:all_running()], ok.' 2>/dev/null |
    grep -E '^ingest-' || true
}
# The nodes node N knows as members (running or not), one a line.
member_nodes() {
  ctl 15 "$1" -q eval \
    '[io:format("~s~n", [N]) || N <- rabbit_mnesia:cluster_nodes(all)], ok.' 2>/dev/null |
    grep -E '^ingest-' || true
}

whole() {
  local running n
  running=$(running_nodes 1)
  for n in "${NODES[@]}"; do
    grep -qx "$(node_name "$n")" <<<"$running" || return 1
  done
}

# wait_until SECONDS WHAT COMMAND...: polls COMMAND until it succeeds or the deadline passes.
wait_until() {
  local seconds=$1 what=$2; shift 2
  local deadline=$((SECONDS + seconds))
  until "$@"; do
    ((SECONDS < deadline)) || die "$what within ${seconds}s (logs: $STATE/node*/log)"
    sleep 0.5
  done
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

write_node_files() {
  local n=$1 dir
  dir=$(node_dir "$n")
  mkdir -p "$dir/mnesia" "$dir/log"
  cat >"$dir/rabbitmq.conf" <<EOF
listeners.tcp.local = 127.0.0.1:$(amqp_port "$n")
loopback_users = none
EOF
  echo '[].' >"$dir/enabled_plugins"
}

# Starts node N's Erlang node (detached) as the rabbitmq user, with every setting of its own.
launch() {
  local n=$1 dir
  dir=$(node_dir "$n")
  port_free "$(amqp_port "$n")" || die "port $(amqp_port "$n") is taken (node $n)"
  port_free "$(dist_port "$n")" || die "port $(dist_port "$n") is taken (node $n)"
  log "starting $(node_name "$n") (AMQP $(amqp_port "$n"), distribution $(dist_port "$n"))"
  # The lock's descriptor is closed for the node: it must not hold the lock for its life.
  (cd "$dir" && runuser -u rabbitmq -- env HOME=/var/lib/rabbitmq \
    RABBITMQ_NODENAME="$(node_name "$n")" \
    RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
    RABBITMQ_NODE_PORT="$(amqp_port "$n")" \
    RABBITMQ_DIST_PORT="$(dist_port "$n")" \
    RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" \
    RABBITMQ_MNESIA_BASE="$dir/mnesia" \
    RABBITMQ_LOG_BASE="$dir/log" \
    RABBITMQ_PID_FILE="$dir/rabbitmq.pid" \
    "$RMQ_BIN/rabbitmq-server" -detached 9>&-) >&2
}

booted() { ctl 130 "$1" -q await_startup -t 120 >/dev/null 2>&1; }

start() {
  if [[ -d $STATE ]] && whole; then
    log "cluster $BASE already up and joined"
    urls
    return
  fi
  mkdir -p "$STATE"
  local n
  for n in "${NODES[@]}"; do
    write_node_files "$n"
  done
  chown -R rabbitmq:rabbitmq "$STATE"
  for n in "${NODES[@]}"; do
    if ! node_up "$n"; then
      launch "$n"
    fi
  done
  for n in "${NODES[@]}"; do
    wait_until 60 "$(node_name "$n") did not answer" node_up "$n"
  done
  # A node of an earlier start whose application was stopped (stop-node) is started again.
  for n in "${NODES[@]}"; do
    if ! app_running "$n"; then
      ctl 60 "$n" -q start_app >&2 || true
    fi
  done
  wait_until 130 "$(node_name 1) did not boot" booted 1
  local members
  for n in "${NODES[@]:1}"; do
    wait_until 130 "$(node_name "$n") did not boot" booted "$n"
    members=$(member_nodes 1)
    if ! grep -qx "$(node_name "$n")" <<<"$members"; then
      log "joining $(node_name "$n") to $(node_name 1)"
      ctl 60 "$n" -q stop_app >&2
      ctl 60 "$n" -q join_cluster "$(node_name 1)" >&2 || die "$(node_name "$n") did not join"
      ctl 60 "$n" -q start_app >&2
      wait_until 130 "$(node_name "$n") did not boot after joining" booted "$n"
    fi
  done
  wait_until 60 "the three nodes were not all running in one cluster" whole
  log "cluster $BASE up: $(running_nodes 1 | paste -sd' ')"
  urls
}

node_arg() {
  [[ ${1:-} =~ ^[123]$ ]] || die "a node number 1..3 is needed, not '${1:-}'"
  [[ -d $STATE ]] || die "no cluster $BASE (no $STATE): run start first"
}

stop_node() {
  node_arg "${1:-}"
  log "stopping the application of $(node_name "$1")"
  ctl 60 "$1" -q stop_app >&2 || die "stop_app on $(node_name "$1") failed"
}

start_node() {
  node_arg "${1:-}"
  node_up "$1" || launch "$1"
  wait_until 60 "$(node_name "$1") did not answer" node_up "$1"
  log "starting the application of $(node_name "$1")"
  ctl 60 "$1" -q start_app >&2 || die "start_app on $(node_name "$1") failed"
  wait_until 130 "$(node_name "$1") did not boot" booted "$1"
}

leader() {
  local queue=${1:-} n out name leader
  [[ -n $queue ]] || die "leader needs a queue name"
  # Asked of the first node whose application runs (the others may be stopped).
  for n in "${NODES[@]}"; do
    out=$(ctl 30 "$n" -q list_queues -p / --no-table-headers name leader 2>/dev/null) || continue
    while IFS=$'\t' read -r name leader; do
      if [[ $name == "$queue" ]]; then
        [[ $leader =~ ^ingest-$BASE-([123])@ ]] || die "queue $queue has no leader ('$leader')"
        echo "${BASH_REMATCH[1]}"
        return
      fi
    done <<<"$out"
    die "no queue $queue on vhost / of cluster $BASE"
  done
  die "no node of cluster $BASE answered"
}

stop() {
  local n pid deadline
  for n in "${NODES[@]}"; do
    pid=$(pid_of "$n")
    # A node a test froze (SIGSTOP) is thawed first, so that it can stop.
    [[ -n $pid ]] && kill -CONT "$pid" 2>/dev/null || true
    if node_up "$n"; then
      log "stopping $(node_name "$n")"
      ctl 60 "$n" -q stop >&2 || true
    fi
  done
  for n in "${NODES[@]}"; do
    pid=$(pid_of "$n")
    [[ -n $pid ]] || continue
    deadline=$((SECONDS + 30))
    while alive "$pid" && ((SECONDS < deadline)); do sleep 0.2; done
    if alive "$pid"; then
      log "$(node_name "$n") (pid $pid) did not stop: killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  if [[ -d $STATE ]]; then
    rm -rf "$STATE"
    log "cluster $BASE stopped, $STATE removed"
  fi
}

# Nothing to stop (no state folder): done, whoever asks (the exit trap of scripts/test.sh).
[[ $COMMAND == stop && ! -d $STATE ]] && exit 0
[[ $(id -u) == 0 ]] || die "must run as root (it runs the nodes as the rabbitmq user with runuser)"
mkdir -p "$(dirname "$STATE")"
# One command at a time per cluster (two test processes starting it at once, say).
exec 9>"$STATE.lock"
flock -w 300 9 || die "another command holds $STATE.lock"

case $COMMAND in
  start) start ;;
  urls) urls ;;
  stop-node) stop_node "$@" ;;
  start-node) start_node "$@" ;;
  leader) leader "$@" ;;
  stop) stop ;;
  *)
    echo "${0##*/}: unknown command '$COMMAND'" >&2
    usage
    ;;
esac
