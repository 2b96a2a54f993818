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
# Pinned: a new schemathesis release adds checks, and the contract test must
# change only when this file does.
want="schemathesis==4.32.5 openapi-spec-validator==0.9.0"
if [ "$(cat "$venv/pinned" 2>/dev/null)" != "$want" ]; then
  say "installing schemathesis and openapi-spec-validator (PyPI) in $venv"
  rm -rf "$venv"
  mkdir -p "$cache"
  python3 -m venv "$venv"
  # shellcheck disable=SC2086
  "$venv/bin/pip" install --quiet --disable-pip-version-check $want >&2
  echo "$want" > "$venv/pinned"
fi
echo "$venv/bin/python3"
