#!/usr/bin/env bash
# Build the job images corral's demo and tests use, from Debian's busybox-static: no registry needed.
#   corral/busybox:1   a shell and the usual tools (sed, awk, grep, ...)
#   corral/tools:1     the same plus `corral-fmt`, the small formatter the demo's batch change runs
set -euo pipefail
cd "$(dirname "$0")/.."
have() { docker image inspect "$1" >/dev/null 2>&1; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

if ! have corral/busybox:1; then
  echo "[setup] building image corral/busybox:1"
  r=$tmp/bb; mkdir -p "$r/bin" "$r/tmp" "$r/etc" "$r/data"
  cp /bin/busybox "$r/bin/busybox"
  for a in $(/bin/busybox --list); do
    [ "$a" = busybox ] || ln -sf busybox "$r/bin/$a"   # linking busybox itself would make a loop
  done
  chmod 1777 "$r/tmp"
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\njob:x:1000:1000:job:/tmp:/bin/sh\n' > "$r/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\njob:x:1000:\n' > "$r/etc/group"
  tar -C "$r" -c . | docker import -c 'CMD ["/bin/sh"]' -c 'ENV PATH=/bin' - corral/busybox:1 >/dev/null
fi
if ! have corral/tools:1; then
  echo "[setup] building image corral/tools:1"
  mkdir -p "$tmp/tools"
  cp images/corral-fmt "$tmp/tools/corral-fmt"
  printf 'FROM corral/busybox:1\nCOPY corral-fmt /bin/corral-fmt\n' > "$tmp/tools/Dockerfile"
  DOCKER_BUILDKIT=0 docker build -q -t corral/tools:1 "$tmp/tools" >/dev/null
fi
# corral/corral:1, the kubernetes runtime's setup and main containers (podside): python3.11, corral and
# its runtime dependencies, git, busybox, all copied from this machine (scripts/corral-image.py). It
# needs the project's .venv, so setup.sh runs this script after making it. Rebuilt when what it is
# made of changes (the label dev.corral.image.inputs holds corral-image.py's digest of it).
# images/corral.Dockerfile builds the same image for users from the public base image.
if [ -x .venv/bin/python ]; then
  inputs=$(.venv/bin/python scripts/corral-image.py digest)
  built=$(docker image inspect -f '{{index .Config.Labels "dev.corral.image.inputs"}}' corral/corral:1 2>/dev/null || true)
  if [ "$inputs" != "$built" ]; then
    echo "[setup] building image corral/corral:1"
    r=$tmp/corral; mkdir -p "$r"
    .venv/bin/python scripts/corral-image.py rootfs "$r"
    tar -C "$r" -c . | docker import \
      -c 'ENV PATH=/usr/local/bin:/usr/bin:/bin' -c 'ENV PYTHONPATH=/opt/corral/lib' \
      -c 'ENV PYTHONDONTWRITEBYTECODE=1' -c 'ENV PYTHONUNBUFFERED=1' -c 'ENV LANG=C.UTF-8' \
      -c 'USER 1000:1000' -c 'WORKDIR /data' -c 'CMD ["corral", "version"]' \
      -c "LABEL dev.corral.image.inputs=$inputs" - corral/corral:1 >/dev/null
    rm -rf "$r"
  fi
else
  echo "[setup] not building corral/corral:1 yet: it needs .venv (scripts/setup.sh makes it first)"
fi
