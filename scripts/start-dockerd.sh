#!/usr/bin/env bash
# Start dockerd without systemd, once. Waits until the API answers; fixes stale pid files.
# Idempotent, also when dockerd already runs. When gVisor (/usr/bin/runsc) is installed, its two
# runtime entries are merged into /etc/docker/daemon.json (other keys and runtimes are kept); a
# running dockerd is sent SIGHUP after a change, and GET /info must then list both runtimes.
#   runsc          --platform=ptrace --network=none   for containers with network "none"
#   runsc-hostnet  --platform=ptrace --network=host   for containers with a network namespace of
#                                                     their own (a bridge, a job's egress namespace)
# Debian's runsc (0.0~20221219) takes every netns for the root one and refuses its own netstack
# there, and its kvm platform hangs on this machine kind (machine notes §3).
set -euo pipefail
SOCK=/var/run/docker.sock
DAEMON_JSON=/etc/docker/daemon.json
RUNSC=/usr/bin/runsc
RUNTIMES=(runsc runsc-hostnet)
ping() { curl -fsS --max-time 2 --unix-socket "$SOCK" http://localhost/_ping >/dev/null 2>&1; }
info_runtimes() {
  curl -fsS --max-time 5 --unix-socket "$SOCK" http://localhost/info 2>/dev/null |
    python3 -c 'import json, sys; print(" ".join(sorted((json.load(sys.stdin).get("Runtimes") or {}))))'
}

# Merge gVisor's runtimes into daemon.json (scripts/docker-runtimes.py): prints "changed" when the
# file was rewritten; an entry of the same name that differs is the operator's and is kept (a warning).
merge_runtimes() { python3 "$(dirname "$0")/docker-runtimes.py" "$DAEMON_JSON" "$RUNSC"; }

changed=""
if [ -x "$RUNSC" ]; then
  changed=$(merge_runtimes)
elif [ ! -f "$DAEMON_JSON" ]; then
  mkdir -p "$(dirname "$DAEMON_JSON")"
  echo '{}' >"$DAEMON_JSON"
fi

# Wait (bounded) until GET /info lists every gVisor runtime; SIGHUP reloads them asynchronously.
check_runtimes() {
  [ -x "$RUNSC" ] || return 0
  local have=""
  for _ in $(seq 50); do
    have=$(info_runtimes || true)
    local missing=0
    for r in "${RUNTIMES[@]}"; do [[ " $have " == *" $r "* ]] || missing=1; done
    [ "$missing" -eq 0 ] && return 0
    sleep 0.1
  done
  echo "dockerd does not list the runtimes ${RUNTIMES[*]} (it has: ${have:-none}); see $DAEMON_JSON" >&2
  return 1
}

dockerd_pid() {
  local pid
  pid=$(cat /var/run/docker.pid 2>/dev/null || true)
  if [ -n "$pid" ] && [ -d "/proc/$pid" ] && grep -q dockerd "/proc/$pid/cmdline" 2>/dev/null; then
    echo "$pid"
  fi
}

if ping; then
  if [ -n "$changed" ]; then
    pid=$(dockerd_pid)
    if [ -z "$pid" ]; then
      echo "dockerd answers but /var/run/docker.pid names no dockerd: send it SIGHUP by hand" >&2
      exit 1
    fi
    echo "[setup] registered gVisor runtimes in $DAEMON_JSON; reloading dockerd (SIGHUP $pid)"
    kill -HUP "$pid"
  fi
  check_runtimes
  exit 0
fi
if [ -f /var/run/docker.pid ]; then
  if [ -n "$(dockerd_pid)" ]; then  # starting up: wait for it
    for _ in $(seq 100); do
      if ping; then
        [ -z "$changed" ] || kill -HUP "$(dockerd_pid)"
        check_runtimes
        exit 0
      fi
      sleep 0.1
    done
  fi
  rm -f /var/run/docker.pid
fi
echo "[setup] starting dockerd"
# setsid: its own session, so ending the shell or process group that ran setup never stops it
setsid nohup /usr/sbin/dockerd --host unix://$SOCK --config-file "$DAEMON_JSON" --storage-driver overlay2 \
  --exec-opt native.cgroupdriver=cgroupfs --log-level warn >>/var/log/corral-dockerd.log 2>&1 &
for _ in $(seq 300); do
  if ping; then
    check_runtimes
    exit 0
  fi
  sleep 0.1
done
echo "dockerd did not answer within 30 s; see /var/log/corral-dockerd.log" >&2
tail -n 20 /var/log/corral-dockerd.log >&2 || true
exit 1
