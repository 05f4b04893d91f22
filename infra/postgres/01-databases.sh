#!/bin/sh
# Creates the three databases of the stack on the first start of the postgres container
# (the official image runs /docker-entrypoint-initdb.d/*.sh once, on an empty volume).
# Also used by tests/test_stack.py against a Debian PostgreSQL started as processes.
set -eu
for db in "${MLFLOW_DB:-mlflow}" "${PREFECT_DB:-prefect}" "${STORE_DB:-forecast_store}"; do
  psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname postgres \
       -c "CREATE DATABASE \"$db\" OWNER \"${POSTGRES_USER:-postgres}\""
done
