#!/usr/bin/env bash
# Install and start everything corral and its tests need on a Debian 12 machine (root, no systemd).
# Idempotent: safe to run again; it only does what is missing.
#   scripts/setup.sh          system packages, dockerd, PostgreSQL, job images, the Python venv (.venv)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
log() { printf '\033[1;34m[setup]\033[0m %s\n' "$*"; }

APT_PACKAGES=(docker.io containerd runc runsc iptables nftables bubblewrap busybox-static util-linux git ca-certificates
  postgresql docker-registry apache2-utils qemu-system-x86 e2fsprogs slirp4netns)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing system packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# dockerd: started by hand (no systemd; policy-rc.d forbids apt from starting services).
bash scripts/start-dockerd.sh

# PostgreSQL (Debian's cluster 15/main on 127.0.0.1) with the tests' role and database.
bash scripts/start-postgres.sh

# The Python environment.
if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  python3 -m venv .venv
fi
stamp=.venv/.corral-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  log "installing corral and its test dependencies into .venv"
  .venv/bin/pip install -q --disable-pip-version-check -e ".[test]"
  touch "$stamp"
fi
# Job images built locally, without any registry (corral/corral:1 is made from .venv: after it).
bash scripts/build-images.sh
# The firecracker runtime's microVM kernel and initramfs (from Debian's packages; a no-op when done).
.venv/bin/corral executor install firecracker
log "ready: $ROOT/.venv/bin/corral"
