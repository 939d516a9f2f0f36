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
