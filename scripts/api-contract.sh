#!/usr/bin/env bash
# The API contract, checked against a running coordinator: schemathesis (PyPI, installed when
# missing) reads GET /openapi.json and sends generated requests to every operation; it fails on
# any 5xx, any status code the description does not list, and any answer whose body, content
# type or headers do not match it. Uses a database and queue of its own, removed after.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
ensure_services

if ! command -v st >/dev/null 2>&1; then
  echo "api-contract: installing schemathesis" >&2
  pip install -q schemathesis >/dev/null
fi
cargo build --locked --bins -q

suffix=$(printf '%x' "$$$RANDOM")
db="ingest_contract_$suffix"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
scratch=$(mktemp -d)
export DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db"
export INGEST_QUEUE="ingest.contract.$suffix"
export INGEST_LISTEN="127.0.0.1:$port"
export INGEST_TOKEN="contract-$suffix"
export RUST_LOG=warn

coordinator=""
cleanup() {
  [ -n "$coordinator" ] && kill "$coordinator" 2>/dev/null && wait "$coordinator" 2>/dev/null
  psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  rabbitmqctl -q delete_queue "$INGEST_QUEUE" >/dev/null 2>&1 || true
  rabbitmqctl -q delete_queue "$INGEST_QUEUE.dead" >/dev/null 2>&1 || true
  rm -rf "$scratch"
}
trap cleanup EXIT

psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE $db"
target/debug/ingest-coordinator seed --data-dir data/ratestask >/dev/null
target/debug/ingest-coordinator &
coordinator=$!
wait_until 60 "the coordinator" curl -fsS -o /dev/null "http://$INGEST_LISTEN/readyz"

# From the temporary folder: schemathesis keeps a cache where it runs.
cd "$scratch"
st run "http://$INGEST_LISTEN/openapi.json" \
  -H "Authorization: Bearer $INGEST_TOKEN" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance \
  --max-examples 50 --seed 1 --no-color
