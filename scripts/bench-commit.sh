#!/usr/bin/env bash
# What durable commits cost on the local PostgreSQL (docs/database.md): pgbench
# inserts an outbox-sized JSON document per transaction, 8 clients, with
# synchronous_commit on (the default) and off (FINAPP_POSTGRES_FAST_COMMIT=1),
# alternating, in a scratch database of the cluster services.sh runs.
#   BENCH_COMMIT_SECS  seconds per run (15)   BENCH_COMMIT_ROUNDS  pairs of runs (2)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/services.sh"
secs="${BENCH_COMMIT_SECS:-15}"
bin="$(pg_bindir)"
script="$(mktemp)"
trap 'rm -f "$script"' EXIT
chmod 644 "$script"
cat >"$script" <<'SQL'
INSERT INTO bench_commit (doc) VALUES ('{"_id":"0190c1b2-7f3a-7cc4-9a1e-3b2f1c0d9e8a","event":{"type":"application_submitted","username":"bench_user","timestamp_ms":1765152000000,"message":"Application by bench_user for 15000"},"effect":{"insert_application":{"amount":15000,"purpose":"Car purchase","status":"pending"}}}');
SQL
sql() { as_pg_user "$bin/psql" -q -h 127.0.0.1 -p "$POSTGRES_PORT" -U postgres "$@"; }
sql -d postgres -c "DROP DATABASE IF EXISTS bench_commit" -c "CREATE DATABASE bench_commit" 2>/dev/null
sql -d bench_commit -c "CREATE TABLE bench_commit (id bigserial PRIMARY KEY, doc jsonb)"
for _ in $(seq "${BENCH_COMMIT_ROUNDS:-2}"); do
  for mode in on off; do
    printf 'synchronous_commit=%s: ' "$mode"
    PGOPTIONS="-c synchronous_commit=$mode" as_pg_user "$bin/pgbench" -n -h 127.0.0.1 -p "$POSTGRES_PORT" \
      -U postgres -c 8 -j 2 -T "$secs" -f "$script" bench_commit 2>&1 \
      | awk '/latency average/ {lat=$4} /^tps/ {tps=$3} END {printf "%.0f commits/s, %s ms average\n", tps, lat}'
  done
done
sql -d postgres -c "DROP DATABASE bench_commit"
