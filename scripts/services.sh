# Sourced by the demo, the test run and CI: makes sure PostgreSQL and RabbitMQ answer on their
# local ports, starting them (as installed from Debian's packages) when they do not.

pg_answers() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
rabbit_answers() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }

# wait_until SECONDS WHAT COMMAND...: polls COMMAND until it succeeds or the deadline passes.
wait_until() {
  local seconds=$1 what=$2; shift 2
  local deadline=$((SECONDS + seconds))
  until "$@"; do
    if ((SECONDS >= deadline)); then
      echo "services: $what did not come up within ${seconds}s" >&2
      return 1
    fi
    sleep 1
  done
}

ensure_services() {
  if ! pg_answers; then
    echo "services: starting PostgreSQL" >&2
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
    wait_until 60 PostgreSQL pg_answers
  fi
  if ! rabbit_answers; then
    echo "services: starting RabbitMQ" >&2
    # The node may be up with its application stopped (rabbitmqctl stop_app, as the fault
    # tests and the chaos run do): start the application, else the whole server.
    rabbitmqctl -q start_app >/dev/null 2>&1 || rabbitmq-server -detached
    wait_until 120 RabbitMQ rabbit_answers
  fi
  # The port opens before the broker is fully booted; wait for it to take connections.
  if command -v rabbitmqctl >/dev/null 2>&1; then
    wait_until 120 "RabbitMQ boot" rabbitmqctl -q await_startup >/dev/null 2>&1 || true
  fi
}
