#!/usr/bin/env bash
# Checks the Helm chart: `helm lint --strict` and `helm template` over each values set
# (the defaults, deploy/helm/pake/ci/*-values.yaml), every rendered manifest validated
# against the Kubernetes schemas of each version in KUBERNETES_VERSIONS (strictly: an
# unknown field fails), and the PrometheusRule's rules read by promtool; then that the
# operator's kinds follow what the cluster serves, and that the values schema refuses
# wrong values.
#
# usage: deploy/check_chart.sh HELM KUBERNETES_VALIDATE
set -euo pipefail
helm=$1
validate=$2
versions=${KUBERNETES_VERSIONS:-"1.30.0 1.33.0"}
chart=deploy/helm/pake
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

sets=(default)
for file in "$chart"/ci/*-values.yaml; do sets+=("$file"); done
for set in "${sets[@]}"; do
  args=()
  name=default
  if [ "$set" != default ]; then
    args=(-f "$set")
    name=$(basename "$set" -values.yaml)
  fi
  # The chart's files/ links to deploy/prometheus and deploy/grafana; helm says so on
  # every load, which is expected here.
  "$helm" lint --strict "$chart" "${args[@]}" 2> >(grep -v 'found symbolic link in path' >&2)
  "$helm" template pake "$chart" --namespace pake "${args[@]}" > "$out/$name.yaml" \
    2> >(grep -v 'found symbolic link in path' >&2)
  kinds=$(grep -c '^kind:' "$out/$name.yaml")
  for version in $versions; do
    # Custom resources (ServiceMonitor, PrometheusRule) have no schema here: warned, and
    # the PrometheusRule's rules are checked by promtool below.
    if ! report=$("$validate" --strict --quiet -k "$version" "$out/$name.yaml" 2>&1); then
      printf '%s\n' "$report" >&2
      echo "values set $name: manifests invalid for Kubernetes $version" >&2
      exit 1
    fi
    printf '%s\n' "$report" | { grep -v "Couldn't find schema for kind \(PrometheusRule\|ServiceMonitor\) \|^$" || true; }
  done
  if grep -q '^kind: PrometheusRule' "$out/$name.yaml"; then
    python3 - "$out/$name.yaml" "$out/$name-rules.yaml" <<'PY'
import sys
# The rendered PrometheusRule's spec, in the rule-file format promtool reads; without a
# YAML library: the spec is re-read by promtool itself, so a plain cut is enough.
text = open(sys.argv[1]).read()
doc = next(d for d in text.split("\n---\n") if "\nkind: PrometheusRule\n" in "\n" + d)
spec = doc.split("\nspec:\n", 1)[1]
lines = [line[2:] if line.startswith("  ") else line for line in spec.splitlines()]
open(sys.argv[2], "w").write("\n".join(lines) + "\n")
PY
    promtool check rules "$out/$name-rules.yaml" >/dev/null
    cmp -s <(promtool check rules "$out/$name-rules.yaml" 2>&1 | tail -1) \
      <(promtool check rules deploy/prometheus/rules.yaml 2>&1 | tail -1) \
      || { echo "the chart's PrometheusRule does not hold the rules of deploy/prometheus/rules.yaml" >&2; exit 1; }
  fi
  echo "values set $name: lint clean, $kinds manifests valid for Kubernetes $versions"
done

# With the default values, the Prometheus operator's kinds appear when the cluster serves
# them (a ServiceMonitor per service and the PrometheusRule), and not otherwise.
operator_kinds() {
  "$helm" template pake "$chart" "$@" 2>/dev/null | grep -c '^kind: \(ServiceMonitor\|PrometheusRule\)$' || true
}
detected=$(operator_kinds --api-versions monitoring.coreos.com/v1/ServiceMonitor \
  --api-versions monitoring.coreos.com/v1/PrometheusRule)
absent=$(operator_kinds)
if [ "$detected" != 5 ] || [ "$absent" != 0 ]; then
  echo "operator detection: $detected operator manifests with the CRDs served (want 5), $absent without (want 0)" >&2
  exit 1
fi
echo "operator detection: 4 ServiceMonitors and a PrometheusRule when the cluster serves their kinds, none otherwise"

# values.schema.json turns wrong values away before anything is rendered.
for wrong in services.gateway.port=0 config.logFormat=xml services.gatway.replicas=2 \
  extraEnv.HOME=/ services.registry.resources.requests.cpu=lots podDisruptionBudget.enabled=yes; do
  if answer=$("$helm" template pake "$chart" --set "$wrong" 2>&1); then
    echo "the schema let --set $wrong through" >&2
    exit 1
  fi
  grep -q "values don't meet the specifications of the schema" <<<"$answer" \
    || { echo "--set $wrong failed, but not on the schema: $answer" >&2; exit 1; }
done
echo "values schema: 6 wrong values refused"
