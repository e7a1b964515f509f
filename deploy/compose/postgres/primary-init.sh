#!/bin/bash
# Runs once, at the primary's first start (/docker-entrypoint-initdb.d): the application role and
# database, the replication role and slot the replica streams from.
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
  -v app_password="$APP_PASSWORD" -v repl_password="$REPLICATION_PASSWORD" <<'SQL'
CREATE ROLE app LOGIN REPLICATION PASSWORD :'app_password';
CREATE ROLE replicator REPLICATION LOGIN PASSWORD :'repl_password';
CREATE DATABASE appdb OWNER app;
SELECT pg_create_physical_replication_slot('replica1');
\c appdb
CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
SQL
# The image's pg_hba.conf lets every role in with a password but not replication connections.
echo "host replication replicator all scram-sha-256" >> "$PGDATA/pg_hba.conf"
