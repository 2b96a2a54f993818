#!/usr/bin/env bash
# Installs what the API contract tests need when it is missing:
#   openapi-spec-validator and schemathesis (PyPI) in a venv under a cache
#   folder outside the repository, to validate docs/openapi.yaml and test
#   live sidecars against it;
#   Go with golang.org/x/sys, a JDK and Jackson (Debian packages), to build
#   and run the check-then-write loops of docs/api.md.
# Progress goes to stderr; the last line on stdout is the venv's python. The
# cache folder is $LEASEHOLD_TOOLS, else ${XDG_CACHE_HOME:-~/.cache}/leasehold-tools.
set -euo pipefail

cache="${LEASEHOLD_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/leasehold-tools}"
say() { printf '%s\n' "$*" >&2; }

need_apt=()
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
command -v go >/dev/null 2>&1 || need_apt+=(golang-go)
command -v javac >/dev/null 2>&1 || need_apt+=(default-jdk-headless)
[ -e /usr/share/java/jackson-databind.jar ] || need_apt+=(libjackson2-databind-java)
[ -d /usr/share/gocode/src/golang.org/x/sys/unix ] || need_apt+=(golang-golang-x-sys-dev)
bash "$(dirname "$0")/apt-install.sh" "${need_apt[@]}"

venv="$cache/api-venv"
if ! "$venv/bin/python3" -c 'import schemathesis, openapi_spec_validator' >/dev/null 2>&1; then
  say "installing schemathesis and openapi-spec-validator (PyPI) in $venv"
  rm -rf "$venv"
  mkdir -p "$cache"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    "schemathesis>=4,<5" "openapi-spec-validator>=0.7" >&2
fi
echo "$venv/bin/python3"
