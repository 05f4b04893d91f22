#!/bin/sh
# Restore a backup of infra/backup.sh: each database's objects are dropped and recreated from
# its archive (the roles of infra/postgres/01-databases.sh must exist: a new stack's first
# start creates them), and the artifact store is unpacked over ARTIFACT_DIR.
#   usage: infra/restore.sh BACKUP_DIR ARTIFACT_DIR
# Stop mlflow, prefect-server and prefect-worker first: a server holding a table would block
# its drop. Connects as infra/backup.sh does.
set -eu
in=${1:?usage: infra/restore.sh BACKUP_DIR ARTIFACT_DIR}
artifacts=${2:?usage: infra/restore.sh BACKUP_DIR ARTIFACT_DIR}
for db in "${MLFLOW_DB:-mlflow}" "${PREFECT_DB:-prefect}" "${STORE_DB:-forecast_store}"; do
  [ -f "$in/$db.dump" ] || { echo "error: $in/$db.dump is missing" >&2; exit 1; }
done
for db in "${MLFLOW_DB:-mlflow}" "${PREFECT_DB:-prefect}" "${STORE_DB:-forecast_store}"; do
  pg_restore --clean --if-exists --exit-on-error --dbname="$db" "$in/$db.dump"
done
mkdir -p "$artifacts"
tar -C "$artifacts" -xzf "$in/mlflow-artifacts.tar.gz"
echo "restored ${MLFLOW_DB:-mlflow}, ${PREFECT_DB:-prefect}, ${STORE_DB:-forecast_store} and $artifacts from $in"
