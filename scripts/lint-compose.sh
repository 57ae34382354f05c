#!/usr/bin/env bash
# Validates docker-compose.yml against the Compose schema without a Docker engine
# (docker-compose's `config` works offline; installed from Debian's package when missing).
# What the file mounts from deploy/ (Prometheus config, Grafana provisioning and dashboard) is
# checked by scripts/lint-deploy.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v docker-compose >/dev/null 2>&1; then
  (apt-get install -y -q docker-compose >/dev/null 2>&1 ||
    { apt-get update -q >/dev/null && apt-get install -y -q docker-compose >/dev/null; })
fi
docker-compose -f docker-compose.yml config -q
for service in postgres rabbitmq ingest-coordinator ingest-worker prometheus grafana; do
  grep -q "^  $service:" docker-compose.yml || { echo "docker-compose.yml: no service $service" >&2; exit 1; }
done
# `config` does not look at bind-mount sources, and Docker creates a missing one as an empty
# folder (Prometheus then fails on a "prometheus.yml" that is a directory): every host path
# mounted must exist. The resolved config names them with absolute paths.
python3 -c 'import yaml' 2>/dev/null || pip install -q pyyaml >/dev/null
docker-compose -f docker-compose.yml config | python3 -c '
import sys, os, yaml
services = yaml.safe_load(sys.stdin)["services"]
sources = [(name, volume.split(":")[0])
           for name, service in services.items()
           for volume in service.get("volumes") or []
           if isinstance(volume, str) and volume.startswith("/")]
missing = [f"{name}: {source}" for name, source in sources if not os.path.exists(source)]
for line in missing:
    print(f"docker-compose.yml: bind-mount source missing: {line}", file=sys.stderr)
sys.exit(1 if missing else 0)
'
echo "docker-compose.yml is valid"
