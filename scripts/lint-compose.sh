#!/usr/bin/env bash
# Validates docker-compose.yml without a Docker engine:
#   - the Compose schema and interpolation: docker-compose's `config` works offline (installed
#     from Debian's package when missing);
#   - every service the stack needs is there, and every bind-mount source exists;
#   - it scales: `docker compose up --scale ingest-coordinator=N --scale ingest-worker=M` needs
#     services that publish no fixed host port and have no container_name (replicas would
#     collide), and no spool (INGEST_SPOOL_DIR, its volume) left over;
#   - the load balancer (ingest-lb) publishes 8080, mounts deploy/nginx/ingest-coordinator.conf,
#     which exists, and that config re-resolves the coordinators through Docker's DNS, proxies
#     to their listener port and streams uploads (no body limit, no buffering, long timeouts);
#     `nginx -t` checks its syntax (Debian's nginx, unpacked to a temporary folder, not
#     installed, when no nginx is on the PATH);
#   - the command in the header comment scales services that exist.
# What the file mounts from deploy/ for Prometheus and Grafana is checked by
# scripts/lint-deploy.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v docker-compose >/dev/null 2>&1; then
  (apt-get install -y -q docker-compose >/dev/null 2>&1 ||
    { apt-get update -q >/dev/null && apt-get install -y -q docker-compose >/dev/null; })
fi
docker-compose -f docker-compose.yml config -q
for service in postgres rabbitmq ingest-coordinator ingest-lb ingest-worker prometheus grafana; do
  grep -q "^  $service:" docker-compose.yml || { echo "docker-compose.yml: no service $service" >&2; exit 1; }
done
python3 -c 'import yaml' 2>/dev/null || pip install -q pyyaml >/dev/null

nginx_conf=deploy/nginx/ingest-coordinator.conf
# The resolved config: interpolated, with absolute bind-mount sources.
resolved=$(mktemp)
work=$(mktemp -d)
trap 'rm -rf "$resolved" "$work"' EXIT
docker-compose -f docker-compose.yml config >"$resolved"

python3 - "$resolved" "$nginx_conf" <<'PY'
import os, re, sys, yaml

resolved_path, nginx_conf = sys.argv[1:]
with open(resolved_path) as f:
    compose = yaml.safe_load(f)
services = compose["services"]
problems = []

# `config` does not look at bind-mount sources, and Docker creates a missing one as an empty
# folder (Prometheus then fails on a "prometheus.yml" that is a directory, nginx on a
# "default.conf"): every host path mounted must exist.
def binds(service):
    for volume in service.get("volumes") or []:
        if isinstance(volume, str) and volume.startswith("/"):
            source, target = volume.split(":")[:2]
            yield source, target
        elif isinstance(volume, dict) and volume.get("type") == "bind":
            yield volume["source"], volume["target"]
for name, service in services.items():
    for source, _ in binds(service):
        if not os.path.exists(source):
            problems.append(f"{name}: bind-mount source missing: {source}")

def published(service):
    """The host ports a service publishes (the resolved config may give strings or mappings)."""
    out = []
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            if port.get("published") not in (None, ""):
                out.append((str(port["published"]), int(port["target"])))
        else:
            parts = str(port).split(":")
            if len(parts) >= 2:
                out.append((parts[-2], int(parts[-1].split("/")[0])))
    return out

# The services that `--scale` multiplies: no fixed host port, no fixed container name.
for name in ("ingest-coordinator", "ingest-worker"):
    service = services.get(name, {})
    if published(service):
        problems.append(f"{name} publishes host port(s) {[p for p, _ in published(service)]}: "
                        "replicas of a --scale would collide on them (reach it through ingest-lb)")
    if "container_name" in service:
        problems.append(f"{name} has a container_name: it cannot be scaled")
    if "INGEST_SPOOL_DIR" in (service.get("environment") or {}):
        problems.append(f"{name} sets INGEST_SPOOL_DIR: there is no spool any more")
    if any("spool" in str(v) for v in service.get("volumes") or []):
        problems.append(f"{name} mounts a spool volume: there is no spool any more")
if "spool" in (compose.get("volumes") or {}):
    problems.append("a `spool` volume is declared: there is no spool any more")
coordinator = services.get("ingest-coordinator", {})
if not (coordinator.get("healthcheck") or {}).get("test"):
    problems.append("ingest-coordinator has no healthcheck (the workers and ingest-lb wait for it)")

# The load balancer: publishes 8080, runs the checked config.
lb = services.get("ingest-lb", {})
lb_ports = dict(published(lb))
if "8080" not in lb_ports:
    problems.append("ingest-lb does not publish host port 8080 (INGEST_URL=http://127.0.0.1:8080)")
mounted = {os.path.relpath(source): target for source, target in binds(lb)}
if mounted.get(nginx_conf) not in ("/etc/nginx/conf.d/default.conf", "/etc/nginx/nginx.conf"):
    problems.append(f"ingest-lb does not mount {nginx_conf} as nginx's config (mounts {mounted})")
if not str(lb.get("image", "")).startswith("nginx:"):
    problems.append(f"ingest-lb runs {lb.get('image')!r}, not nginx: {nginx_conf} is an nginx config")

# The nginx config: what makes scaled replicas found and long uploads pass.
if not os.path.isfile(nginx_conf):
    problems.append(f"{nginx_conf} does not exist")
else:
    with open(nginx_conf) as f:
        text = re.sub(r"#.*", "", f.read())
    directives = {}
    for statement in re.findall(r"([a-z_]+)\s+([^;{}]*);", text):
        directives.setdefault(statement[0], []).append(statement[1].split())
    def value(name):
        found = directives.get(name)
        return found[-1] if found else None
    def seconds(word):
        match = re.fullmatch(r"(\d+)(ms|s|m|h)?", word or "")
        if not match:
            return None
        return int(match.group(1)) * {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600}[match.group(2)]
    resolver = value("resolver") or []
    if "127.0.0.11" not in resolver:
        problems.append(f"{nginx_conf}: no `resolver 127.0.0.11` (Docker's DNS)")
    valid = next((seconds(w[6:]) for w in resolver if w.startswith("valid=")), None)
    if valid is None or valid > 30:
        problems.append(f"{nginx_conf}: the resolver needs a short valid= (scaled replicas are found when it runs out)")
    for name, wanted in (("client_max_body_size", "0"), ("proxy_request_buffering", "off"),
                         ("proxy_buffering", "off"), ("proxy_http_version", "1.1")):
        if value(name) != [wanted]:
            problems.append(f"{nginx_conf}: {name} must be {wanted} (got {value(name)})")
    for name in ("proxy_read_timeout", "proxy_send_timeout"):
        got = seconds((value(name) or [""])[0])
        if got is None or got < 600:
            problems.append(f"{nginx_conf}: {name} must be 600s or longer: uploads take minutes (got {value(name)})")
    # proxy_pass through a variable (resolved at request time; a literal host is resolved once,
    # at start) set to the coordinators' service name, on their listener's port.
    listen = (coordinator.get("environment") or {}).get("INGEST_LISTEN", "")
    port = listen.rsplit(":", 1)[-1]
    sets = {words[0]: words[1] for words in directives.get("set", []) if len(words) == 2}
    passes = [words[0] for words in directives.get("proxy_pass", [])]
    if not passes:
        problems.append(f"{nginx_conf}: no proxy_pass")
    for target in passes:
        match = re.fullmatch(r"http://\$(\w+):(\d+)", target)
        if not match:
            problems.append(f"{nginx_conf}: proxy_pass {target} is not http://$variable:port "
                            "(a literal name is resolved once and never finds new replicas)")
        elif sets.get("$" + match.group(1)) != "ingest-coordinator" or match.group(2) != port:
            problems.append(f"{nginx_conf}: proxy_pass {target} is not the ingest-coordinator service on "
                            f"INGEST_LISTEN's port {port} (${match.group(1)} = {sets.get('$' + match.group(1))})")
    listens = [words[0].rsplit(":", 1)[-1] for words in directives.get("listen", [])]
    if str(lb_ports.get("8080")) not in listens:
        problems.append(f"{nginx_conf}: listens on {listens}, ingest-lb publishes container port {lb_ports.get('8080')}")

print("\n".join(f"docker-compose.yml: {p}" for p in problems), file=sys.stderr)
sys.exit(1 if problems else 0)
PY

# The header's command scales services that exist.
for scaled in $(grep -E '^#.*docker compose up' docker-compose.yml | grep -oE -- '--scale [a-z0-9_-]+' | cut -d' ' -f2); do
  grep -q "^  $scaled:" docker-compose.yml ||
    { echo "docker-compose.yml: the header scales $scaled, which is no service" >&2; exit 1; }
done
grep -qE '^#.*docker compose up.*--scale ingest-coordinator=' docker-compose.yml ||
  { echo "docker-compose.yml: the header does not show --scale ingest-coordinator" >&2; exit 1; }

# nginx's own parser: the config inside an `http {}` as the image's nginx.conf includes it, with
# its paths moved to a temporary folder. Debian's nginx is unpacked, not installed (installing it
# would start a server on port 80).
nginx=$(command -v nginx || true)
if [ -z "$nginx" ]; then
  if (cd "$work" && { apt-get download -q nginx >/dev/null 2>&1 ||
        { apt-get update -q >/dev/null 2>&1 && apt-get download -q nginx >/dev/null 2>&1; }; }); then
    dpkg-deb -x "$work"/nginx_*.deb "$work/root" && nginx="$work/root/usr/sbin/nginx"
  fi
fi
if [ -n "$nginx" ]; then
  mkdir -p "$work/prefix"
  cat >"$work/nginx.conf" <<EOF
pid $work/prefix/nginx.pid;
events {}
http {
    client_body_temp_path $work/prefix/body;
    proxy_temp_path $work/prefix/proxy;
    fastcgi_temp_path $work/prefix/fastcgi;
    uwsgi_temp_path $work/prefix/uwsgi;
    scgi_temp_path $work/prefix/scgi;
    access_log off;
    include $PWD/$nginx_conf;
}
EOF
  if ! out=$("$nginx" -t -q -p "$work/prefix" -c "$work/nginx.conf" -e stderr 2>&1); then
    echo "$nginx_conf: nginx -t ($("$nginx" -v 2>&1)) failed:" >&2
    echo "$out" >&2
    exit 1
  fi
  echo "$nginx_conf: nginx -t passed ($("$nginx" -v 2>&1 | sed 's/.*: //'))"
else
  echo "note: no nginx here (not on the PATH, Debian's package could not be fetched): $nginx_conf checked by its directives only" >&2
fi
echo "docker-compose.yml is valid"
