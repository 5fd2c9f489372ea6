#!/usr/bin/env bash
# deploy/kubernetes/ validated offline (no cluster here): every built-in kind against
# the Kubernetes 1.37 OpenAPI schemas that the PyPI package kubernetes-validate ships
# (strict: unknown fields are errors). The ServiceMonitor is a Prometheus Operator CRD,
# whose schema that package does not have: its fields are checked against the subset of
# the CRD this file uses (below). The config inside the ConfigMap is checked by
# `cargo test --test integration kubernetes::` (mqgate check, hot reload through a
# ConfigMap-style symlink swap).
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! command -v kubernetes-validate >/dev/null 2>&1; then
  echo "== installing kubernetes-validate 1.37.0 (PyPI)"
  python3 -m pip install -q kubernetes-validate==1.37.0 2>/dev/null ||
    python3 -m pip install -q --break-system-packages kubernetes-validate==1.37.0
fi
files=()
for f in deploy/kubernetes/*.yaml; do
  case "$f" in
    */kustomization.yaml | */servicemonitor.yaml) ;;
    *) files+=("$f") ;;
  esac
done
kubernetes-validate --strict --quiet -k 1.37.0 "${files[@]}"
python3 - <<'PY'
import sys, yaml, jsonschema
# monitoring.coreos.com/v1 ServiceMonitor, the fields used here (prometheus-operator CRD).
endpoint = {"type": "object", "additionalProperties": False, "properties": {
    "port": {"type": "string"}, "path": {"type": "string"},
    "interval": {"type": "string", "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
    "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]}}}
schema = {"type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "properties": {
    "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "ServiceMonitor"},
    "spec": {"type": "object", "required": ["selector", "endpoints"], "additionalProperties": False, "properties": {
        "selector": {"type": "object", "properties": {"matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}}},
        "endpoints": {"type": "array", "minItems": 1, "items": endpoint}}}}}
doc = yaml.safe_load(open("deploy/kubernetes/servicemonitor.yaml"))
jsonschema.validate(doc, schema)
# The selector must match the admin Service's labels, and its port name.
svcs = [d for d in yaml.safe_load_all(open("deploy/kubernetes/services.yaml")) if d]
want = doc["spec"]["selector"]["matchLabels"]
admin = [s for s in svcs if all(s["metadata"].get("labels", {}).get(k) == v for k, v in want.items())]
assert len(admin) == 1, f"ServiceMonitor selects {len(admin)} services"
ports = {p["name"] for p in admin[0]["spec"]["ports"]}
assert all(e["port"] in ports for e in doc["spec"]["endpoints"]), ports
print("deploy/kubernetes/servicemonitor.yaml: fields and selector OK (CRD subset)")
PY
echo "deploy/kubernetes: valid against the Kubernetes 1.37 schemas"
