#!/usr/bin/env bash
# The README's "command 2", and what CI runs: every check and every test, on real PostgreSQL and
# RabbitMQ (started here when they do not answer). Tests make their own databases and queues.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
ensure_services
# The fault tests stop and start PostgreSQL and RabbitMQ (one at a time, each restarting what it
# stopped); should a test process be killed mid-outage, the services are started again here.
# The 3-node RabbitMQ cluster the cluster tests share (scripts/cluster/rabbitmq.sh, started by
# the first of them) is stopped here too.
trap 'scripts/cluster/rabbitmq.sh stop || true; ensure_services' EXIT

echo "== format"
cargo fmt --all -- --check
echo "== docs: every link and path named exists"
python3 scripts/check-links.py
echo "== lint"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== compose file"
scripts/lint-compose.sh
echo "== deployment files (Kubernetes + KEDA, Prometheus, Grafana, Dockerfile; offline)"
scripts/lint-deploy.sh
echo "== browser for the status page test (Debian's chromium and chromium-driver)"
if ! [ -x /usr/bin/chromium ] || ! [ -x /usr/bin/chromedriver ]; then
  apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 ||
    { apt-get update -q >/dev/null && apt-get install -y -q chromium chromium-driver >/dev/null; }
fi
echo "== tests"
# nextest runs every test in a process of its own: the tests that read a process's metrics or
# stop a shared service rely on it.
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install cargo-nextest --locked
fi
cargo nextest run --workspace --locked --no-fail-fast
echo "== API contract (schemathesis against a running coordinator)"
scripts/api-contract.sh
echo "== benchmark, once at 200,000 rows so that it keeps working (the real run: scripts/bench.sh)"
scripts/bench.sh --rows 200000 --runs 1 --out target/bench-ci
