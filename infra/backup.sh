#!/bin/sh
# Back up the stack: each of the three databases as a pg_dump archive (custom format) and
# the MLflow artifact store as a tarball, into BACKUP_DIR. Restore with infra/restore.sh.
#   usage: infra/backup.sh BACKUP_DIR ARTIFACT_DIR
# Connects with libpq's environment (PGHOST, PGPORT, PGUSER = the superuser, PGPASSWORD);
# docs/deployment.md shows the compose invocation. Safe while the stack runs (pg_dump reads
# a consistent snapshot per database); a run that finishes mid-backup may be in one part only.
set -eu
out=${1:?usage: infra/backup.sh BACKUP_DIR ARTIFACT_DIR}
artifacts=${2:?usage: infra/backup.sh BACKUP_DIR ARTIFACT_DIR}
[ -d "$artifacts" ] || { echo "error: artifact directory $artifacts does not exist" >&2; exit 1; }
mkdir -p "$out"
for db in "${MLFLOW_DB:-mlflow}" "${PREFECT_DB:-prefect}" "${STORE_DB:-forecast_store}"; do
  pg_dump --format=custom --file="$out/$db.dump" --dbname="$db"
done
tar -C "$artifacts" -czf "$out/mlflow-artifacts.tar.gz" .
echo "backed up ${MLFLOW_DB:-mlflow}, ${PREFECT_DB:-prefect}, ${STORE_DB:-forecast_store} and $artifacts to $out"
