#!/usr/bin/env bash
# Validates docker-compose.yml against the Compose schema without a Docker engine
# (docker-compose's `config` works offline; installed from Debian's package when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v docker-compose >/dev/null 2>&1; then
  (apt-get install -y -q docker-compose >/dev/null 2>&1 ||
    { apt-get update -q >/dev/null && apt-get install -y -q docker-compose >/dev/null; })
fi
docker-compose -f docker-compose.yml config -q
grep -q 'ingest-worker:' docker-compose.yml
echo "docker-compose.yml is valid"
