#!/usr/bin/env bash
# Start dockerd without systemd, once. Waits until the API answers; fixes stale pid files.
set -euo pipefail
SOCK=/var/run/docker.sock
ping() { curl -fsS --max-time 2 --unix-socket "$SOCK" http://localhost/_ping >/dev/null 2>&1; }
if ping; then exit 0; fi
if [ -f /var/run/docker.pid ]; then
  old=$(cat /var/run/docker.pid || true)
  if [ -n "$old" ] && [ -d "/proc/$old" ] && grep -q dockerd "/proc/$old/cmdline" 2>/dev/null; then
    for _ in $(seq 100); do ping && exit 0; sleep 0.1; done
  fi
  rm -f /var/run/docker.pid
fi
mkdir -p /etc/docker
if [ ! -f /etc/docker/daemon.json ]; then
  # gVisor is registered when installed (ptrace platform; see machine notes for the network flags).
  if [ -x /usr/bin/runsc ]; then
    cat > /etc/docker/daemon.json <<'JSON'
{ "runtimes": {
    "runsc": { "path": "/usr/bin/runsc", "runtimeArgs": ["--platform=ptrace", "--network=none"] },
    "runsc-hostnet": { "path": "/usr/bin/runsc", "runtimeArgs": ["--platform=ptrace", "--network=host"] } } }
JSON
  else
    echo '{}' > /etc/docker/daemon.json
  fi
fi
echo "[setup] starting dockerd"
# setsid: its own session, so ending the shell or process group that ran setup never stops it
setsid nohup /usr/sbin/dockerd --host unix://$SOCK --storage-driver overlay2 \
  --exec-opt native.cgroupdriver=cgroupfs --log-level warn >>/var/log/corral-dockerd.log 2>&1 &
for _ in $(seq 300); do ping && exit 0; sleep 0.1; done
echo "dockerd did not answer within 30 s; see /var/log/corral-dockerd.log" >&2
tail -n 20 /var/log/corral-dockerd.log >&2 || true
exit 1
