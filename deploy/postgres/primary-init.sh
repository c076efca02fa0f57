#!/bin/sh
# Runs once, when pg-a's data directory is created (docker-entrypoint-initdb.d): a role for the
# replica, and synchronous commit to the standby named site_b. ALTER SYSTEM takes effect when
# the image restarts the server after initialisation; set here and not on the command line,
# the initialisation's own commits do not wait for a standby that does not exist yet.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" -v pw="$REPLICATION_PASSWORD" <<'SQL'
CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD :'pw';
ALTER SYSTEM SET synchronous_standby_names = 'site_b';
SQL
echo "host replication replicator all scram-sha-256" >> "$PGDATA/pg_hba.conf"
