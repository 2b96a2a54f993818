#!/usr/bin/env bash
# Installs the given Debian packages (apt-get update first), with sudo when
# not root; progress on stderr. Nothing to do without arguments.
set -euo pipefail
[ "$#" -gt 0 ] || exit 0
printf 'installing %s (Debian packages)\n' "$*" >&2
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
  -o DPkg::Lock::Timeout=120 "$@" >&2
