#!/bin/sh
# Creates the three databases of the stack on the first start of the postgres container
# (the official image runs /docker-entrypoint-initdb.d/*.sh once, on an empty volume), each
# owned by its own login role (named as the database, password from <NAME>_DB_PASSWORD) that
# no other role may connect to: a leaked store password opens the store, not the registry.
# Also used by tests/test_stack.py against a Debian PostgreSQL started as processes.
set -eu
create() {  # $1 = database and role name, $2 = the role's password
  # psql variables quote the name and password (a password may hold any character).
  psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname postgres \
       -v db="$1" -v pw="$2" <<'SQL'
CREATE ROLE :"db" LOGIN PASSWORD :'pw';
CREATE DATABASE :"db" OWNER :"db";
REVOKE CONNECT, TEMPORARY ON DATABASE :"db" FROM PUBLIC;
SQL
}
create "${MLFLOW_DB:-mlflow}" "${MLFLOW_DB_PASSWORD:?set MLFLOW_DB_PASSWORD}"
create "${PREFECT_DB:-prefect}" "${PREFECT_DB_PASSWORD:?set PREFECT_DB_PASSWORD}"
create "${STORE_DB:-forecast_store}" "${STORE_DB_PASSWORD:?set STORE_DB_PASSWORD}"
