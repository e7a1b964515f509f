#!/bin/bash
# The streaming replica: on its first start, a base backup of the primary (pg_basebackup -R writes
# primary_conninfo and standby.signal), then postgres in hot standby; extra arguments go to
# postgres. Runs as the postgres user. tests/integration/test_deploy.py runs it outside Docker.
set -euo pipefail
primary=${PRIMARY_HOST:-primary}
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  until pg_isready -h "$primary" -U replicator -q; do sleep 1; done
  export PGPASSWORD="$REPLICATION_PASSWORD"
  pg_basebackup -h "$primary" -U replicator -D "$PGDATA" -R -X stream -S replica1 -c fast
  unset PGPASSWORD
  chmod 0700 "$PGDATA"
fi
exec postgres -c hot_standby=on -c shared_preload_libraries=pg_stat_statements "$@"
