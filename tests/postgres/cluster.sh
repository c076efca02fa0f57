#!/usr/bin/env bash
# A throw-away PostgreSQL cluster for the tests, on loopback only.
#   eval "$(tests/postgres/cluster.sh start)"   # exports KMS_TEST_POSTGRES and KMS_TEST_POSTGRES_DIR
#   tests/postgres/cluster.sh stop "$KMS_TEST_POSTGRES_DIR"
#   tests/postgres/cluster.sh halt DIR | resume DIR   # crash it (immediate stop) and start it again, same port
# initdb refuses to run as root, so the cluster belongs to the postgres user (runuser).
# Authentication is trust, on 127.0.0.1 and a private socket directory: the cluster lives
# in a fresh temporary directory for one test run and is deleted after it.
set -euo pipefail

bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -n "$bin" ] && [ -x "$bin/initdb" ] || { echo "postgres/cluster.sh: PostgreSQL is not installed (apt-get install postgresql)" >&2; exit 1; }

as_postgres() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

case "${1:-}" in
  start)
    dir=$(mktemp -d /tmp/kms-pg.XXXXXX)
    chmod 755 "$dir"
    [ "$(id -u)" -eq 0 ] && chown postgres: "$dir"
    as_postgres "$bin/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --no-instructions >"$dir/initdb.log" 2>&1 \
      || { cat "$dir/initdb.log" >&2; exit 1; }
    # A port below the kernel's ephemeral range (ip_local_port_range, 32768 and up by default),
    # which the tests' own servers (port 0) and client sockets take theirs from: a port drawn
    # from inside it was sometimes taken by one of them between the draw and the bind. Another
    # throw-away cluster may still draw the same one: then another port, a few times.
    low=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
    low=$(( low > 12000 ? low : 32768 ))
    for attempt in 1 2 3 4 5 6 7 8; do
      port=$(( 10000 + RANDOM % (low - 10000) ))
      echo "-c listen_addresses=127.0.0.1 -p $port -k $dir -c max_connections=300 -c fsync=on -c synchronous_commit=on" >"$dir/options"
      rm -f "$dir/server.log"
      if as_postgres "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start -o "$(cat "$dir/options")" >/dev/null 2>&1; then
        break
      fi
      if [ "$attempt" -eq 8 ] || ! grep -q "Address already in use" "$dir/server.log"; then
        cat "$dir/server.log" >&2; exit 1
      fi
    done
    echo "export KMS_TEST_POSTGRES='Host=127.0.0.1;Port=$port;Username=postgres;Database=postgres'"
    echo "export KMS_TEST_POSTGRES_DIR='$dir'"
    ;;
  stop)
    dir=${2:?usage: cluster.sh stop DIR}
    [ -d "$dir/data" ] && as_postgres "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$dir"
    ;;
  halt)
    dir=${2:?usage: cluster.sh halt DIR}
    as_postgres "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null
    ;;
  resume)
    dir=${2:?usage: cluster.sh resume DIR}
    as_postgres "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start -o "$(cat "$dir/options")" >/dev/null \
      || { cat "$dir/server.log" >&2; exit 1; }
    ;;
  *) echo "usage: cluster.sh start | stop DIR | halt DIR | resume DIR" >&2; exit 2 ;;
esac
