#!/usr/bin/env bash
# Validates the Helm chart, the kustomize manifests and the alert rules with
# real tools, offline: helm 3 and helm 4 (lint --strict, template for every
# ci/ value set), kubernetes-validate --strict for Kubernetes 1.29 and the
# newest it knows, kubectl kustomize, promtool (check and unit-test the
# rules, and show that each rule test fails when its alert cannot fire).
#   bash scripts/check-k8s.sh
# Installs the tools when missing (scripts/k8s-tools.sh). Exits non-zero on
# the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."

bin="$(bash scripts/k8s-tools.sh)"
export PATH="$bin:$PATH"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# helm keeps its caches under the work folder, not in $HOME.
export HELM_CACHE_HOME="$work/helm/cache" HELM_CONFIG_HOME="$work/helm/config" HELM_DATA_HOME="$work/helm/data"

chart=charts/leasehold
check() { python3-yaml scripts/k8s_checks.py "$@"; }
# FILE: strict schema validation for 1.29 and the newest version known. The
# Prometheus Operator's kinds have no schema there (promtool checks the
# rules); any other kind without a schema is an error.
validate() {
  local version out
  for version in 1.29.0 newest; do
    if [ "$version" = newest ]; then
      out="$(kubernetes-validate --quiet --strict "$1" 2>&1)" || { echo "$out" >&2; return 1; }
    else
      out="$(kubernetes-validate --quiet --strict -k "$version" "$1" 2>&1)" || { echo "$out" >&2; return 1; }
    fi
    if echo "$out" | grep -v "Couldn't find schema for kind \(PodMonitor\|ServiceMonitor\|PrometheusRule\) " | grep -q .; then
      echo "$out" >&2; return 1
    fi
  done
}
crds=(--api-versions monitoring.coreos.com/v1/PodMonitor --api-versions monitoring.coreos.com/v1/ServiceMonitor
      --api-versions monitoring.coreos.com/v1/PrometheusRule)

for helm in helm helm4; do
  echo "-- $($helm version --short): lint, template, validate"
  $helm lint --strict "$chart" >/dev/null
  for values in "$chart"/ci/*-values.yaml; do
    name="$(basename "$values" -values.yaml)"
    out="$work/$helm-$name.yaml"
    $helm lint --strict "$chart" -f "$values" >/dev/null
    $helm template lh "$chart" -f "$values" --namespace databases --kube-version 1.29.0 "${crds[@]}" >"$out"
    validate "$out"
    check objects "$out"
    if grep -q '^kind: PrometheusRule' "$out"; then
      check rules-spec "$out" >"$work/rules-$helm-$name.yaml"
      promtool check rules "$work/rules-$helm-$name.yaml" >/dev/null
    fi
    echo "   $name: ok"
  done

  # What must be refused: a cluster older than 1.29, and bad values.
  if $helm template lh "$chart" --kube-version 1.28.0 >/dev/null 2>&1; then
    echo "FAIL: $helm rendered the chart for Kubernetes 1.28" >&2; exit 1
  fi
  for bad in "example.replicas=0" "backend.type=consul" "sidecar.leaseTtl=2" "sidecar.bogus=1" \
             "backend.type=etcd" "image.pullPolicy=Sometimes" "sidecar.ports.peer=70000" \
             "sidecar.peerTLS.enabled=true"; do
    if $helm template lh "$chart" --set "$bad" >/dev/null 2>&1; then
      echo "FAIL: $helm accepted --set $bad" >&2; exit 1
    fi
  done
  echo "   refused: Kubernetes 1.28 and 8 kinds of bad values"

  # A database chart that includes the sidecar through the named template.
  rm -rf examples/host-chart/charts
  $helm dependency update examples/host-chart >/dev/null
  $helm lint --strict examples/host-chart >/dev/null
  $helm template orders examples/host-chart --kube-version 1.29.0 >"$work/host.yaml"
  validate "$work/host.yaml"
  check objects "$work/host.yaml"
  grep -q 'image: ghcr.io/leasehold/leasehold:' "$work/host.yaml"
  echo "   examples/host-chart (leasehold.sidecar in another chart's StatefulSet): ok"
done

echo "-- kubectl kustomize ($(kubectl version --client 2>/dev/null | sed -n 's/^Kustomize Version: //p'))"
for dir in manifests/base manifests/overlays/example manifests/examples/inject manifests/alerts; do
  out="$work/kustomize-$(echo "$dir" | tr / -).yaml"
  kubectl kustomize "$dir" >"$out"
  validate "$out"
  check objects "$out"
  echo "   $dir: ok"
done

echo "-- alert rules (promtool $(promtool --version 2>&1 | sed -n '1s/^promtool, version \([^ ]*\).*/\1/p'))"
rules=manifests/alerts/leasehold.rules.yaml
cmp "$rules" "$chart/files/leasehold.rules.yaml"
promtool check rules "$rules" >/dev/null
promtool test rules manifests/alerts/leasehold.rules_test.yaml >/dev/null
helm template lh "$chart" --set metrics.prometheusRule.enabled=true >"$work/rule-default.yaml"
check same-rules "$rules" "$work/rule-default.yaml"
# Each unit test must bite: with one alert made unable to fire, the tests fail.
mkdir -p "$work/mutant"
cp manifests/alerts/leasehold.rules_test.yaml "$work/mutant/"
alerts=$(sed -n 's/^ *- alert: //p' "$rules")
for alert in $alerts; do
  check mutate-alert "$rules" "$alert" "$work/mutant/leasehold.rules.yaml"
  if promtool test rules "$work/mutant/leasehold.rules_test.yaml" >/dev/null 2>&1; then
    echo "FAIL: the rule tests pass even when $alert can never fire" >&2; exit 1
  fi
done
echo "   $(echo $alerts | wc -w) alerts: checked, unit-tested, and each test fails when its alert cannot fire"

echo "-- dashboard"
check dashboard-rules "$chart/files/dashboard.json" >"$work/dashboard-rules.yaml"
promtool check rules "$work/dashboard-rules.yaml" >/dev/null
echo "   every panel query parses"

echo "kubernetes checks passed"
