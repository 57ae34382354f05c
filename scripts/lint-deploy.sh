#!/usr/bin/env bash
# Offline checks of everything under deploy/ and of the Dockerfile (no cluster, no Docker engine,
# no schema downloads: every schema comes with a package or lives in the repository).
#
#   deploy/k8s          core kinds: kubernetes-validate (schemas shipped in the package, strict:
#                       an unknown key fails); KEDA kinds: check-jsonschema against
#                       deploy/k8s/schemas/*.schema.json; kustomization.yaml lists every
#                       manifest; the manifests agree with each other (names, queue, ports,
#                       selectors, grace period vs drain deadline and preStop); the coordinators
#                       are a Deployment of >= 2 stateless replicas (no persistent volume, rolling
#                       with maxUnavailable 0, anti-affinity on hostname) behind a ClusterIP
#                       Service, with a PodDisruptionBudget of exactly their pods that keeps one
#                       and lets one go; every Service and budget selects a workload; no file
#                       named in a manifest is missing; `kubectl kustomize` builds, if kubectl is
#                       there
#   spool               INGEST_SPOOL_DIR (gone: chunk copies live in PostgreSQL) is in no
#                       manifest, no compose file, no deploy/ config and not in the Dockerfile
#   deploy/prometheus   promtool check config (Debian's prometheus package), else a YAML check;
#                       coordinators and workers scraped per replica (DNS A) on their listeners
#   deploy/grafana      json.tool, check-jsonschema against deploy/grafana/dashboard.schema.json,
#                       every metric a panel queries exists in ingest-core/src/metrics.rs, PromQL
#                       syntax (promtool), provisioning matches the dashboard and docker-compose.yml
#   Dockerfile          split by BuildKit's own parser (PyPI `dockerfile`; hadolint is not in
#                       Debian), then: known instructions,
#                       COPY --from stages, every COPY source in the build context and not
#                       .dockerignored, a numeric non-root USER, a HEALTHCHECK, no VOLUME (the
#                       image keeps no state), every workspace member copied (cargo needs
#                       them all to load the workspace), every crate a binary needs copied
#
# One line per file checked; every check runs, and the script exits 1 if any failed.
set -euo pipefail
cd "$(dirname "$0")/.."

# Kubernetes version to validate against (kubernetes-validate ships 1.25 to 1.37).
K8S_VERSION=1.29.0
K8S=deploy/k8s

failures=0
ok() { printf 'ok    %-56s %s\n' "$1" "$2"; }
fail() {
  printf 'FAIL  %-56s %s\n' "$1" "$2"
  if [ -n "${3:-}" ]; then printf '%s\n' "$3" | sed 's/^/      /'; fi
  failures=$((failures + 1))
}

# --- tools (installed when missing) -----------------------------------------------------------
pip_install() {
  python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore "$@" >/dev/null ||
    echo "note: could not install $* with pip; the checks that need it will fail" >&2
}
python3 -c 'import yaml' 2>/dev/null || pip_install pyyaml
command -v kubernetes-validate >/dev/null 2>&1 || pip_install 'kubernetes-validate==1.37.0'
command -v check-jsonschema >/dev/null 2>&1 || pip_install 'check-jsonschema==0.39.0'
python3 -c 'import dockerfile' 2>/dev/null || pip_install 'dockerfile==3.4.0'
if ! command -v promtool >/dev/null 2>&1; then
  apt_install() { DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >/dev/null 2>&1; }
  apt_install prometheus || { apt-get update -q >/dev/null 2>&1 && apt_install prometheus; } || true
fi

# --- deploy/k8s: kustomization lists every manifest, one resource per file, cross-references ----
# Tells the failed cross-checks, and writes "<file> <apiVersion> <kind> <checks> <failed>", one
# line per manifest, for the schema loop below.
listed_file=$(mktemp)
trap 'rm -f "$listed_file"' EXIT
# Its exit status is the number of cross-checks that failed.
python3 - "$K8S" "$listed_file" <<'PY' || failures=$((failures + $?))
import os, re, sys, yaml

folder, listed_file = sys.argv[1:]
listing = open(listed_file, "w")
results = []  # (ok, file, what, detail)

def check(condition, file, what, detail=""):
    results.append((bool(condition), file, what, detail))
    return bool(condition)

kust_path = os.path.join(folder, "kustomization.yaml")
with open(kust_path) as f:
    kust = yaml.safe_load(f)
listed = kust.get("resources") or []
present = sorted(name for name in os.listdir(folder)
                 if name.endswith((".yaml", ".yml")) and name != "kustomization.yaml")
unlisted = sorted(set(present) - set(listed))
missing = sorted(set(listed) - set(present))
doubled = sorted({name for name in listed if listed.count(name) > 1})
check(not (unlisted or missing or doubled), kust_path,
      f"lists all {len(present)} manifests",
      "; ".join(filter(None, [unlisted and f"not listed: {', '.join(unlisted)}",
                               missing and f"listed but missing: {', '.join(missing)}",
                               doubled and f"listed twice: {', '.join(doubled)}"])))

# Load every listed manifest: one resource per file (check-jsonschema reads one document).
docs = {}
for name in listed:
    path = os.path.join(folder, name)
    if not os.path.exists(path):
        continue
    try:
        with open(path) as f:
            loaded = [d for d in yaml.safe_load_all(f) if d is not None]
    except yaml.YAMLError as error:
        check(False, path, "YAML parses", str(error).replace("\n", " "))
        continue
    if check(len(loaded) == 1 and isinstance(loaded[0], dict), path, "one resource",
             f"{len(loaded)} documents in the file"):
        docs[path] = loaded[0]

namespace = kust.get("namespace")
for path, doc in docs.items():
    if doc.get("kind") == "Namespace":
        check(doc["metadata"]["name"] == namespace, path, f"is namespace {namespace}")
    else:
        ns = (doc.get("metadata") or {}).get("namespace")
        check(ns == namespace, path, f"in namespace {namespace}", f"metadata.namespace is {ns!r}")

def one(kind, name=None):
    found = [(p, d) for p, d in docs.items() if d.get("kind") == kind
             and (name is None or d.get("metadata", {}).get("name") == name)]
    return found[0] if len(found) == 1 else (None, None)

def port_of(address):
    return int(str(address).rsplit(":", 1)[1])

def container_port(container, port):
    """A probe's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int):
        return port
    return next((p["containerPort"] for p in container.get("ports", []) if p.get("name") == port), None)

def env_sources(pod_spec):
    for container in pod_spec.get("initContainers", []) + pod_spec.get("containers", []):
        for source in container.get("envFrom", []):
            for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                if key in source:
                    yield kind, source[key]["name"]

config_path, config = one("ConfigMap")
settings = (config or {}).get("data", {})

def selects(selector, labels):
    """Whether a LabelSelector (matchLabels and matchExpressions) selects these labels."""
    if not selector:
        return False  # an empty or missing selector: never what these manifests mean
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, op, values = expression["key"], expression["operator"], expression.get("values") or []
        if (op == "In" and labels.get(key) not in values) or (op == "NotIn" and labels.get(key) in values) \
                or (op == "Exists" and key not in labels) or (op == "DoesNotExist" and key in labels):
            return False
    return True

# Workloads, and which listener setting each one's component uses.
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet")
listen_keys = {"coordinator": "INGEST_LISTEN", "worker": "INGEST_WORKER_LISTEN"}
workloads = [(p, d) for p, d in docs.items() if d.get("kind") in WORKLOAD_KINDS]
def pod_labels(doc):
    return doc["spec"]["template"]["metadata"].get("labels") or {}
def component(doc):
    return pod_labels(doc).get("app.kubernetes.io/component")

# Workloads: their env sources exist; probes hit the ports the settings listen on; the selector
# selects the pods' own labels.
probe_paths = {"livenessProbe": "/healthz", "readinessProbe": "/readyz"}
for path, doc in workloads:
    pod = doc["spec"]["template"]["spec"]
    check(selects(doc["spec"].get("selector"), pod_labels(doc)), path,
          "spec.selector selects the pod template's labels")
    for source_kind, source_name in sorted(set(env_sources(pod))):
        check(one(source_kind, source_name)[1] is not None, path,
              f"envFrom {source_kind} {source_name} exists")
    listen_key = listen_keys.get(component(doc))
    if not check(listen_key, path, "app.kubernetes.io/component is coordinator or worker",
                 f"component {component(doc)!r}"):
        continue
    container = pod["containers"][0]
    listen = settings.get(listen_key)
    for probe, wanted in probe_paths.items():
        got = container.get(probe, {}).get("httpGet", {})
        port = container_port(container, got.get("port"))
        check(listen and got.get("path") == wanted and port == port_of(listen), path,
              f"{probe} {wanted} on {listen_key}'s port",
              f"probe {got.get('path')} on {port}, {listen_key}={listen}")
    annotations = doc["spec"]["template"]["metadata"].get("annotations", {})
    check(listen and annotations.get("prometheus.io/port") == str(port_of(listen)), path,
          "prometheus.io/port is the listener's",
          f"annotation {annotations.get('prometheus.io/port')}, {listen_key}={listen}")
    # Nothing of ingest keeps state on a node or a volume (the chunk copies are in PostgreSQL):
    # scratch space only, so that any replica may be replaced by one on any node.
    kept = [v["name"] for v in pod.get("volumes", []) if set(v) - {"name", "emptyDir", "configMap", "secret", "projected"}]
    check(not kept and not doc["spec"].get("volumeClaimTemplates"), path,
          "no persistent volume (emptyDir, configMap, secret only)",
          f"volumes {kept}, volumeClaimTemplates {[t['metadata']['name'] for t in doc['spec'].get('volumeClaimTemplates', [])]}")

# The coordinators: a Deployment of interchangeable replicas (no StatefulSet: no spool, no stable
# name), at least 2, rolled one at a time without going below them, spread over nodes.
coordinators = [(p, d) for p, d in workloads if component(d) == "coordinator"]
check(len(coordinators) == 1, kust_path, "one coordinator workload",
      f"found {[(p, d['kind']) for p, d in coordinators]}")
coordinator_path, coordinator = coordinators[0] if len(coordinators) == 1 else (None, None)
if coordinator:
    path, spec = coordinator_path, coordinator["spec"]
    labels = pod_labels(coordinator)
    pod = spec["template"]["spec"]
    check(coordinator["kind"] == "Deployment" and coordinator["metadata"]["name"] == "ingest-coordinator",
          path, "the coordinator is the Deployment ingest-coordinator",
          f"{coordinator['kind']} {coordinator['metadata']['name']}")
    replicas = spec.get("replicas", 1)
    check(isinstance(replicas, int) and replicas >= 2, path, "replicas >= 2", f"replicas {replicas}")
    rolling = (spec.get("strategy") or {}).get("rollingUpdate") or {}
    check((spec.get("strategy") or {}).get("type", "RollingUpdate") == "RollingUpdate"
          and rolling.get("maxUnavailable") == 0 and rolling.get("maxSurge", "25%") not in (0, "0%"),
          path, "rolling update maxUnavailable 0, maxSurge >= 1", f"strategy {spec.get('strategy')}")
    preferred = ((pod.get("affinity") or {}).get("podAntiAffinity") or {}).get(
        "preferredDuringSchedulingIgnoredDuringExecution", [])
    check(any(term["podAffinityTerm"].get("topologyKey") == "kubernetes.io/hostname"
              and selects(term["podAffinityTerm"].get("labelSelector"), labels) for term in preferred),
          path, "preferred pod anti-affinity on kubernetes.io/hostname selects its pods")
    required = ((pod.get("affinity") or {}).get("podAntiAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution", [])
    check(not required, path, "no required anti-affinity (a rollout's surge pod must fit)",
          "requiredDuringScheduling would leave the surge pod pending on a cluster of `replicas` nodes")
    for spread in pod.get("topologySpreadConstraints", []):
        check(selects(spread.get("labelSelector"), labels), path,
              f"topologySpread on {spread.get('topologyKey')} selects its pods")
    # SIGTERM comes after preStop; both within the grace period, which must leave room for the
    # uploads in flight to finish.
    grace = pod.get("terminationGracePeriodSeconds", 30)
    pre_stop = (pod["containers"][0].get("lifecycle") or {}).get("preStop") or {}
    command = (pre_stop.get("exec") or {}).get("command") or []
    pause = int(command[1]) if len(command) == 2 and command[0] == "sleep" and command[1].isdigit() \
        else int((pre_stop.get("sleep") or {}).get("seconds", 0))
    check(grace >= 60 + pause, path, "terminationGracePeriodSeconds >= 60 s after preStop",
          f"grace {grace} s, preStop {pause} s")
    lease = settings.get("INGEST_COORDINATOR_LEASE_SECONDS", "30")
    try:
        lease_ok = float(lease) > 0
    except ValueError:
        lease_ok = False
    check(lease_ok, config_path or kust_path, "INGEST_COORDINATOR_LEASE_SECONDS is a positive number", f"{lease!r}")

    # The one address: a ClusterIP Service over the coordinator pods on their listener.
    service_path, service = one("Service", "ingest-coordinator")
    if check(service is not None, path, "Service ingest-coordinator exists"):
        check(service["spec"].get("type", "ClusterIP") == "ClusterIP"
              and service["spec"].get("clusterIP") != "None", service_path,
              "is a ClusterIP Service (not headless)")
    # A PodDisruptionBudget selects exactly the coordinators, and lets one of them go at a time
    # while one stays.
    budgets = [(p, d) for p, d in docs.items() if d.get("kind") == "PodDisruptionBudget"
               and selects(d["spec"].get("selector"), labels)]
    if check(len(budgets) == 1, path, "one PodDisruptionBudget selects its pods",
             f"found {[p for p, _ in budgets]}"):
        budget_path, budget = budgets[0]
        others = [p for p, d in workloads if d is not coordinator and selects(budget["spec"]["selector"], pod_labels(d))]
        check(not others, budget_path, "selects no other workload's pods", f"also selects {others}")
        def count(value):
            if isinstance(value, str) and value.endswith("%"):
                return -(-int(value[:-1]) * replicas // 100)  # Kubernetes rounds up
            return value
        if "minAvailable" in budget["spec"]:
            kept = count(budget["spec"]["minAvailable"])
            allowed = replicas - kept
        else:
            allowed = count(budget["spec"].get("maxUnavailable"))
            kept = replicas - allowed if isinstance(allowed, int) else None
        check(isinstance(kept, int) and kept >= 1 and isinstance(allowed, int) and allowed >= 1,
              budget_path, "keeps >= 1 coordinator and lets >= 1 go (else drains block)",
              f"replicas {replicas}: keeps {kept}, lets {allowed} go")

# Services route to a workload's pods, on a port those pods have; no Service or budget selects
# nothing (what a StatefulSet's leftover headless Service, say, would do once it is gone).
for path, doc in docs.items():
    if doc.get("kind") == "Service":
        # A headless Service is for a StatefulSet's stable pod names (its serviceName); the
        # coordinators are a Deployment reached through the ClusterIP Service.
        if doc["spec"].get("clusterIP") == "None":
            name = doc["metadata"]["name"]
            check(any(d["kind"] == "StatefulSet" and d["spec"].get("serviceName") == name for _, d in workloads),
                  path, "headless: the serviceName of a StatefulSet", "no StatefulSet names it: remove it")
        # A Service's selector is a plain map of labels, not a LabelSelector.
        selector = {"matchLabels": doc["spec"]["selector"]} if doc["spec"].get("selector") else None
        targets = [(p, d) for p, d in workloads if selects(selector, pod_labels(d))]
        if check(len(targets) == 1, path, "selects the pods of one workload", f"selects {[p for p, _ in targets]}"):
            container = targets[0][1]["spec"]["template"]["spec"]["containers"][0]
            for port in doc["spec"].get("ports", []):
                target = port.get("targetPort", port.get("port"))
                check(container_port(container, target) is not None, path,
                      f"targetPort {target} is a port of {targets[0][0]}")
    elif doc.get("kind") == "PodDisruptionBudget":
        check(any(selects(doc["spec"].get("selector"), pod_labels(d)) for _, d in workloads), path,
              "selects some workload's pods")

# Workers: the grace period outlasts the drain deadline.
path, worker = one("Deployment", "ingest-worker")
if check(worker is not None, kust_path, "Deployment ingest-worker exists"):
    grace = worker["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
    drain = int(settings.get("INGEST_DRAIN_SECONDS", 30))
    check(grace > drain, path, "terminationGracePeriodSeconds > INGEST_DRAIN_SECONDS",
          f"grace {grace} s, drain {drain} s")
    check(worker["spec"]["strategy"]["rollingUpdate"].get("maxUnavailable") == 0, path,
          "rolling update maxUnavailable 0")

# KEDA: target, authentication, secret key and queue all resolve.
path, scaled = one("ScaledObject")
if scaled:
    target = scaled["spec"]["scaleTargetRef"]["name"]
    _, target_doc = one("Deployment", target)
    check(target_doc is not None, path, f"scaleTargetRef {target} is a Deployment")
    # KEDA scales to zero: never the coordinators, whose count is fixed (and the API's address).
    check(target_doc is None or component(target_doc) == "worker", path,
          f"scaleTargetRef {target} is the workers")
    for trigger in scaled["spec"]["triggers"]:
        auth_name = trigger.get("authenticationRef", {}).get("name")
        auth_path, auth = one("TriggerAuthentication", auth_name)
        check(auth is not None, path, f"authenticationRef {auth_name} exists")
        queue = trigger["metadata"].get("queueName")
        check(queue == settings.get("INGEST_QUEUE"), path, "queueName is INGEST_QUEUE",
              f"queueName {queue}, INGEST_QUEUE {settings.get('INGEST_QUEUE')}")
        for ref in (auth or {}).get("spec", {}).get("secretTargetRef", []):
            _, secret = one("Secret", ref["name"])
            keys = set((secret or {}).get("stringData", {})) | set((secret or {}).get("data", {}))
            check(ref["key"] in keys, auth_path, f"secretTargetRef {ref['name']}/{ref['key']} exists")

# Settings the programs no longer read: the spool is gone (chunk copies live in PostgreSQL).
for path, doc in docs.items():
    with open(path) as f:
        text = f.read()
    check("INGEST_SPOOL_DIR" not in text, path, "does not mention INGEST_SPOOL_DIR")
    # A file another one names (in a comment, say) exists: no pointer to a removed manifest.
    for named in sorted(set(re.findall(r"[\w./-]*[\w-]+\.ya?ml\b", text))):
        check(os.path.exists(named) or os.path.exists(os.path.join(folder, named)), path,
              f"names {named}, which exists")

# One line per manifest comes from the schema loop below, with these counts; failures are told
# here, with what was found.
for good, file, what, detail in results:
    if not good:
        print(f"FAIL  {file:<56} {what}" + (f"\n      {detail}" if detail else ""))
    elif file == kust_path:
        print(f"ok    {file:<56} {what}")
for path, doc in docs.items():
    mine = [good for good, file, _, _ in results if file == path]
    print(path, doc.get("apiVersion"), doc.get("kind"), mine.count(True), mine.count(False), file=listing)
listing.close()
sys.exit(min(100, [r[0] for r in results].count(False)))
PY

# --- deploy/k8s: schemas --------------------------------------------------------------------
while read -r -u 3 file api kind crossed crossed_failed; do
  [ -n "$file" ] || continue
  if [[ "$api" == keda.sh/* ]]; then
    # KEDA's CRDs are not in kubernetes-validate: our own schema for the fields we use.
    schema="$K8S/schemas/$(tr '[:upper:]' '[:lower:]' <<<"$kind").schema.json"
    what="check-jsonschema ($(basename "$schema"))"
    if [ ! -f "$schema" ]; then
      out="no schema $schema for $api $kind"; false
    else
      out=$(check-jsonschema --schemafile "$schema" "$file" 2>&1)
    fi
  else
    what="kubernetes-validate ($kind, $K8S_VERSION, strict)"
    out=$(kubernetes-validate --strict --quiet --kubernetes-version "$K8S_VERSION" "$file" 2>&1)
  fi && valid=yes || valid=no
  what="$what, $crossed cross-checks"
  # The Python program above told which cross-checks failed (and counted them).
  [ "$crossed_failed" = 0 ] || what="$what ($crossed_failed failed, above)"
  if [ "$valid" = yes ] && [ "$crossed_failed" = 0 ]; then
    ok "$file" "$what"
  elif [ "$valid" = yes ]; then
    printf 'FAIL  %-56s %s\n' "$file" "$what"
  else
    fail "$file" "$what" "$out"
  fi
done 3<"$listed_file"

# --- deploy/k8s: the kustomization builds ---------------------------------------------------
if command -v kubectl >/dev/null 2>&1; then
  if out=$(kubectl kustomize "$K8S" 2>&1); then
    count=$(grep -c '^kind:' <<<"$out" || true)
    ok "$K8S/kustomization.yaml" "kubectl kustomize builds ($count resources)"
  else
    fail "$K8S/kustomization.yaml" "kubectl kustomize" "$out"
  fi
else
  ok "$K8S/kustomization.yaml" "kubectl kustomize skipped (no kubectl here)"
fi

# --- the spool is gone ---------------------------------------------------------------------
# The coordinator keeps its chunk copies in PostgreSQL and reads no INGEST_SPOOL_DIR: a setting,
# volume or folder for it anywhere in what deploys the programs is a leftover. (The manifests
# are also checked one by one above.)
spool_files=()
for file in docker-compose.yml docker-compose.*.yml compose.yml compose.*.yml Dockerfile deploy; do
  [ -e "$file" ] && spool_files+=("$file")
done
if out=$(grep -rn -e INGEST_SPOOL_DIR -- "${spool_files[@]}"); then
  fail "INGEST_SPOOL_DIR" "mentioned in compose, Dockerfile or deploy/" "$out"
else
  ok "INGEST_SPOOL_DIR" "in no compose file, Dockerfile or deploy/ file"
fi

# --- deploy/prometheus ----------------------------------------------------------------------
prom=deploy/prometheus/prometheus.yml
if command -v promtool >/dev/null 2>&1; then
  if out=$(promtool check config "$prom" 2>&1); then
    ok "$prom" "promtool check config"
  else
    fail "$prom" "promtool check config" "$out"
  fi
else
  echo "note: promtool unavailable (Debian's prometheus package did not install): YAML structure check only"
fi
# The scrape targets are compose services on the ports their listeners use (and, without
# promtool, at least the shape Prometheus needs).
if out=$(python3 - "$prom" 2>&1 <<'PY'
import sys, yaml
with open(sys.argv[1]) as f:
    config = yaml.safe_load(f)
problems = []
jobs = {job.get("job_name"): job for job in config.get("scrape_configs") or []}
if len(jobs) != len(config.get("scrape_configs") or []) or None in jobs:
    problems.append("every scrape config needs a unique job_name")
targets = [t for job in jobs.values() for sc in job.get("static_configs", []) for t in sc.get("targets", [])]
dns = [(n, sd.get("type"), sd.get("port")) for job in jobs.values() for sd in job.get("dns_sd_configs", []) for n in sd.get("names", [])]
# Every replica on its own: Docker's DNS answers the service name with one address per replica
# (`--scale`). A static target by that name, or through ingest-lb, would reach a different
# replica at each scrape and mix their counters into one series.
for service, port in (("ingest-coordinator", 8080), ("ingest-worker", 9091)):
    if (service, "A", port) not in dns:
        problems.append(f"no dns_sd_config of type A on {service} port {port}")
    if any(t.split(":")[0] == service for t in targets):
        problems.append(f"a static target on {service}: one replica per scrape, not each")
if any(t.split(":")[0] == "ingest-lb" for t in targets):
    problems.append("a static target on ingest-lb: scrape the coordinators themselves")
# The names are services of docker-compose.yml.
with open("docker-compose.yml") as f:
    services = set((yaml.safe_load(f) or {}).get("services") or {})
hosts = {n for n, _, _ in dns} | {t.rsplit(":", 1)[0] for t in targets}
for host in sorted(hosts - services - {"localhost"}):
    problems.append(f"{host} is not a service of docker-compose.yml")
print("\n".join(problems))
sys.exit(1 if problems else 0)
PY
); then
  ok "$prom" "scrapes each ingest-coordinator :8080 and ingest-worker :9091 (DNS A)"
else
  fail "$prom" "scrape targets" "$out"
fi

# --- deploy/grafana -------------------------------------------------------------------------
dash=deploy/grafana/dashboards/ingest.json
if out=$(python3 -m json.tool "$dash" 2>&1 >/dev/null); then
  ok "$dash" "python3 -m json.tool"
else
  fail "$dash" "python3 -m json.tool" "$out"
fi
if out=$(check-jsonschema --schemafile deploy/grafana/dashboard.schema.json "$dash" 2>&1); then
  ok "$dash" "check-jsonschema (dashboard.schema.json)"
else
  fail "$dash" "check-jsonschema (dashboard.schema.json)" "$out"
fi
# Every ingest_* metric a panel queries is one ingest-core exports (a renamed metric leaves an
# empty panel, which no schema sees); the PromQL parses (promtool check rules on the queries).
rules=$(mktemp --suffix=.yml)
trap 'rm -f "$listed_file" "$rules"' EXIT
if out=$(python3 - "$dash" ingest-core/src/metrics.rs "$rules" 2>&1 <<'PY'
import json, re, sys, yaml
dash_path, metrics_path, rules_path = sys.argv[1:]
with open(metrics_path) as f:
    source = f.read()
exported = set(re.findall(r'pub const \w+: &str = "(ingest_\w+)";', source))
histograms = set(re.findall(r'describe_histogram!\(\s*(\w+)', source))
consts = dict(re.findall(r'pub const (\w+): &str = "(ingest_\w+)";', source))
series = set(exported)
for const in histograms:
    series |= {consts[const] + suffix for suffix in ("_bucket", "_sum", "_count")}
try:
    with open(dash_path) as f:
        dash = json.load(f)
except ValueError:
    sys.exit(0)  # json.tool above reported it
unknown, exprs = [], []
for panel in dash.get("panels", []):
    for target in panel.get("targets", []):
        expr = target.get("expr", "")
        if expr:  # a target without one is the schema's to report
            exprs.append(expr)
        for name in re.findall(r"\bingest_\w+", expr):
            if name not in series:
                unknown.append(f'panel "{panel.get("title")}": {name} is not exported (ingest-core/src/metrics.rs)')
rules = {"groups": [{"name": "dashboard-queries", "rules": [
    {"record": f"dashboard:query_{i}", "expr": expr} for i, expr in enumerate(exprs)]}]}
with open(rules_path, "w") as f:
    yaml.safe_dump(rules, f)
print("\n".join(unknown))
sys.exit(1 if unknown else 0)
PY
); then
  ok "$dash" "every queried metric is in ingest-core/src/metrics.rs"
else
  fail "$dash" "queried metrics" "$out"
fi
if command -v promtool >/dev/null 2>&1; then
  if out=$(promtool check rules "$rules" 2>&1); then
    ok "$dash" "PromQL of every panel parses (promtool)"
  else
    fail "$dash" "PromQL of every panel (promtool check rules)" "$out"
  fi
fi
rm -f "$rules"
for file in deploy/grafana/provisioning/datasources/*.yml deploy/grafana/provisioning/dashboards/*.yml; do
  if out=$(python3 - "$file" "$dash" docker-compose.yml 2>&1 <<'PY'
import json, re, sys, yaml
path, dash_path, compose_path = sys.argv[1:]
with open(path) as f:
    config = yaml.safe_load(f)
problems = []
if config.get("apiVersion") != 1:
    problems.append("apiVersion must be 1")
if "datasources" in config:
    with open(dash_path) as f:
        dash = json.load(f)
    used = {t["datasource"]["uid"] for p in dash["panels"] for t in [p, *p["targets"]] if "datasource" in t}
    provided = {d.get("uid") for d in config["datasources"]}
    if not used <= provided:
        problems.append(f"the dashboard uses datasource uid(s) {sorted(used - provided)}, provisioned: {sorted(provided)}")
    if not all(d.get("url", "").startswith("http://prometheus:9090") for d in config["datasources"]):
        problems.append("the datasource is not the compose service prometheus:9090")
elif "providers" in config:
    with open(compose_path) as f:
        compose = f.read()
    mounted = re.search(r"\./deploy/grafana/dashboards:([^:\s]+)", compose)
    for provider in config["providers"]:
        where = provider.get("options", {}).get("path")
        if not mounted or where != mounted.group(1):
            problems.append(f"provider path {where} is not where docker-compose.yml mounts deploy/grafana/dashboards")
else:
    problems.append("neither datasources nor providers")
print("\n".join(problems))
sys.exit(1 if problems else 0)
PY
  ); then
    ok "$file" "Grafana provisioning matches the dashboard and compose"
  else
    fail "$file" "Grafana provisioning" "$out"
  fi
done

# --- Dockerfile -----------------------------------------------------------------------------
if out=$(python3 - 2>&1 <<'PY'
import fnmatch, json, os, re, subprocess, sys
import dockerfile

problems = []
try:
    commands = dockerfile.parse_file("Dockerfile")  # BuildKit's parser: a syntax error raises
except dockerfile.GoParseError as error:
    print(f"does not parse: {error}")
    sys.exit(1)
# The parser is lenient (it splits lines into instructions): the rest is checked here.
known = {"FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME",
         "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL"}
stages = set()
for command in commands:
    if command.cmd not in known:
        problems.append(f"line {command.start_line}: unknown instruction {command.cmd}")
    if command.cmd == "FROM" and len(command.value) == 3 and command.value[1].upper() == "AS":
        stages.add(command.value[2])
    for flag in command.flags:
        if command.cmd == "COPY" and flag.startswith("--from=") and flag[7:] not in stages:
            problems.append(f"line {command.start_line}: COPY {flag}: no earlier stage of that name")
users = [c.value[0] for c in commands if c.cmd == "USER"]
if not users or users[-1].split(":")[0] in ("0", "root") or not users[-1].split(":")[0].isdigit():
    problems.append("the image must end as a numeric non-root USER (Kubernetes runAsNonRoot checks it)")
if not any(c.cmd == "HEALTHCHECK" for c in commands):
    problems.append("no HEALTHCHECK")
# Nothing of the image keeps state (the chunk copies are in PostgreSQL); a VOLUME would give
# every container, every scaled replica, an anonymous volume of its own.
for command in commands:
    if command.cmd == "VOLUME":
        problems.append(f"line {command.start_line}: VOLUME {' '.join(command.value)}: the image keeps no state")
with open(".dockerignore") as f:
    ignored = [line.strip().rstrip("/") for line in f if line.strip() and not line.startswith("#")]
for needed in ("target", ".git"):
    if needed not in ignored:
        problems.append(f".dockerignore does not exclude {needed}")

copies = []  # sources copied from the build context
for command in commands:
    if command.cmd == "COPY" and not any(flag.startswith("--from") for flag in command.flags):
        copies.extend(command.value[:-1])
for source in copies:
    if not os.path.exists(source):
        problems.append(f"COPY {source}: not in the build context")
    elif any(fnmatch.fnmatch(source, pattern) or source.startswith(pattern + "/") for pattern in ignored):
        problems.append(f"COPY {source}: excluded by .dockerignore")

# The workspace: every member in the dependency layer; the sources of every crate a binary needs.
metadata = json.loads(subprocess.run(
    ["cargo", "metadata", "--no-deps", "--format-version", "1", "--offline"],
    check=True, capture_output=True, text=True).stdout)
root = metadata["workspace_root"]
members = {p["name"]: os.path.relpath(os.path.dirname(p["manifest_path"]), root) for p in metadata["packages"]}
normal_deps = {p["name"]: {d["name"] for d in p["dependencies"] if d["kind"] is None and d["name"] in members}
               for p in metadata["packages"]}
needed = {p["name"] for p in metadata["packages"] if any("bin" in t["kind"] for t in p["targets"])}
while True:
    more = set().union(*(normal_deps[n] for n in needed)) - needed
    if not more:
        break
    needed |= more
def copied(path):
    """Whether a COPY from the build context takes `path`, itself or a folder holding it."""
    path = os.path.normpath(path)
    return any(source in (".", "./") or path == os.path.normpath(source)
               or path.startswith(os.path.normpath(source) + "/") for source in copies)
for name, folder in sorted(members.items()):
    if not copied(f"{folder}/Cargo.toml"):
        problems.append(f"workspace member {name}: {folder}/Cargo.toml is not copied")
    if name in needed and not copied(f"{folder}/src"):
        problems.append(f"{name} (a binary needs it): {folder}/src is not copied")
# Files the crates embed at compile time from outside their src/.
for name in needed:
    for rs in subprocess.run(["grep", "-rhoE", r'embed_migrations!\("[^"]+"\)', os.path.join(members[name], "src")],
                             capture_output=True, text=True).stdout.split():
        embedded = os.path.normpath(os.path.join(members[name], re.search(r'"([^"]+)"', rs).group(1)))
        if not copied(embedded):
            problems.append(f"{name} embeds {embedded}/, which is not copied")
print("\n".join(problems))
sys.exit(1 if problems else 0)
PY
); then
  ok "Dockerfile" "instructions, stages, COPY sources, non-root USER, no VOLUME; every crate copied"
else
  fail "Dockerfile" "Dockerfile checks" "$out"
fi

if [ "$failures" -gt 0 ]; then
  echo "lint-deploy: $failures check(s) failed" >&2
  exit 1
fi
echo "lint-deploy: every check passed"
