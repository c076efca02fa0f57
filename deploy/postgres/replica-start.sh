#!/bin/sh
# pg-b: on first start, a base backup of pg-a (streaming WAL, -R: configured as its standby);
# then a hot standby named site_b, the name pg-a's synchronous_standby_names waits for.
set -eu
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  until pg_basebackup -h pg-a -U replicator -D "$PGDATA" -R -X stream; do
    rm -rf "${PGDATA:?}"/*
    sleep 2
  done
  chmod 0700 "$PGDATA"
fi
exec postgres -c cluster_name=site_b -c hot_standby=on
