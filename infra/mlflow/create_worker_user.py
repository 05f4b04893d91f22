"""Create (or re-password) the MLflow account the Prefect worker logs in with.

Run once by compose's ``mlflow-users`` service with the admin's credentials
(``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD``); a second run only resets the
password. The account is no admin: it creates the experiment and the registered model it
writes to (and so may manage those), and reads the rest at the server's default permission
(``READ`` in basic_auth.ini). Users, permissions and other people's experiments stay the
admin's.
"""

from __future__ import annotations

import os
import sys

from mlflow.exceptions import MlflowException
from mlflow.server.auth.client import AuthServiceClient


def main() -> int:
    uri, username = os.environ["MLFLOW_TRACKING_URI"], os.environ["MLFLOW_WORKER_USERNAME"]
    password = os.environ["MLFLOW_WORKER_PASSWORD"]
    admin = os.environ.get("MLFLOW_TRACKING_USERNAME")
    if username == admin:
        print(f"error: the worker's MLflow user must not be the admin {admin!r}", file=sys.stderr)
        return 1
    client = AuthServiceClient(uri)
    try:
        client.create_user(username, password)
        print(f"created MLflow user {username!r}")
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        client.update_user_password(username, password)
        print(f"MLflow user {username!r} exists; password updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
