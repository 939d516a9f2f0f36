#!/usr/bin/env bash
# Start Debian's PostgreSQL cluster without systemd, once, listening on 127.0.0.1 and its unix socket
# only, and create the tests' role and database. Idempotent: a running server is kept; lock files of a
# killed one (pid gone, zombie or reused) are removed first.
#   env: CORRAL_PG_USER (corral), CORRAL_PG_PASSWORD (corral), CORRAL_PG_DB (corral_test)
set -euo pipefail
VER=${CORRAL_PG_VERSION:-$(ls /usr/lib/postgresql | sort -V | tail -n1)} CLUSTER=main  # 15 on Debian 12
USER_=${CORRAL_PG_USER:-corral} PASS=${CORRAL_PG_PASSWORD:-corral} DB=${CORRAL_PG_DB:-corral_test}
CONF=/etc/postgresql/$VER/$CLUSTER
[ -d "$CONF" ] || pg_createcluster "$VER" "$CLUSTER" >/dev/null  # apt creates it; recreate if dropped
PORT=$(pg_conftool -s "$VER" "$CLUSTER" show port)
DATA=$(pg_conftool -s "$VER" "$CLUSTER" show data_directory)
LOG=/var/log/postgresql/postgresql-$VER-$CLUSTER.log
install -d -o postgres -g postgres -m 2775 /var/run/postgresql  # a tmpfs after a reboot
want="listen_addresses = '127.0.0.1'"
changed=0
if [ "$(cat "$CONF/conf.d/corral.conf" 2>/dev/null)" != "$want" ]; then
  echo "$want" >"$CONF/conf.d/corral.conf" && chown postgres:postgres "$CONF/conf.d/corral.conf"
  changed=1
fi
ready() { runuser -u postgres -- pg_isready -q -h /var/run/postgresql -p "$PORT"; }
pgctl() {  # pg_ctl itself: it polls every 0.1 s, pg_ctlcluster every 0.5 s (2.5 s to start)
  runuser -u postgres -- "/usr/lib/postgresql/$VER/bin/pg_ctl" "$@" -s -D "$DATA" -l "$LOG" \
    -o "-c config_file=$CONF/postgresql.conf"
}
alive() { [ -n "$1" ] && grep -qa postgres "/proc/$1/cmdline" 2>/dev/null; }  # a zombie has none
if ready; then
  # listen_addresses needs a restart
  [ "$changed" = 0 ] || pgctl restart -m fast
elif ! alive "$(head -n1 "$DATA/postmaster.pid" 2>/dev/null)"; then
  # Lock files of a killed server (its pid gone, a zombie, or reused) make postgres refuse to start.
  SOCK=/var/run/postgresql/.s.PGSQL.$PORT
  alive "$(head -n1 "$SOCK.lock" 2>/dev/null)" || rm -f "$SOCK.lock" "$SOCK"
  rm -f "$DATA/postmaster.pid"
  echo "[setup] starting PostgreSQL $VER/$CLUSTER"
  pgctl start -w -t 30 || { tail -n 20 "$LOG" >&2; exit 1; }
fi  # else: a server is starting up (or recovering): wait for it
for _ in $(seq 300); do ready && break; sleep 0.1; done
if ! ready; then
  echo "PostgreSQL did not accept connections within 30 s; the end of $LOG:" >&2
  tail -n 20 "$LOG" >&2
  exit 1
fi
# The tests' role (may create databases: each test session makes its own) and database.
runuser -u postgres -- psql -p "$PORT" -qAtX -v ON_ERROR_STOP=1 -v u="$USER_" -v p="$PASS" -v d="$DB" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN CREATEDB', :'u')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'u')
\gexec
SELECT format('ALTER ROLE %I LOGIN CREATEDB PASSWORD %L', :'u', :'p')
\gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'d', :'u')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'d')
\gexec
SQL
echo "[setup] PostgreSQL $VER/$CLUSTER ready: postgresql+psycopg://$USER_:***@127.0.0.1:$PORT/$DB," \
  "socket /var/run/postgresql, data $DATA, log $LOG"
