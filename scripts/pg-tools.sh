#!/usr/bin/env bash
# Installs what examples/postgres needs when it is missing: Debian's
# PostgreSQL (15 or newer) and psycopg 3 (PyPI) in a venv under a cache
# folder outside the repository. Progress goes to stderr; the last line on
# stdout is the venv's python. The cache folder is $LEASEHOLD_TOOLS, else
# ${XDG_CACHE_HOME:-~/.cache}/leasehold-tools.
set -euo pipefail

cache="${LEASEHOLD_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/leasehold-tools}"
say() { printf '%s\n' "$*" >&2; }

need_apt=()
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need_apt+=(postgresql)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
command -v runuser >/dev/null 2>&1 || need_apt+=(util-linux)
bash "$(dirname "$0")/apt-install.sh" "${need_apt[@]}"

if ! "$cache/pg-venv/bin/python3" -c 'import psycopg' >/dev/null 2>&1; then
  say "installing psycopg 3 (PyPI) in $cache/pg-venv"
  rm -rf "$cache/pg-venv"
  mkdir -p "$cache"
  python3 -m venv "$cache/pg-venv"
  "$cache/pg-venv/bin/pip" install --quiet --disable-pip-version-check "psycopg[binary]>=3.1" >&2
fi
echo "$cache/pg-venv/bin/python3"
