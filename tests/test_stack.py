"""The compose topology as processes on 127.0.0.1, end to end through the Prefect API.

PostgreSQL (Debian's packages, installed here if missing, run as the non-root ``postgres``
user in a temporary directory) with the three databases of ``infra/postgres``;
``mlflow server`` with the basic-auth app on Postgres; ``prefect server`` on Postgres with
an API auth string; a process worker; the deployments of ``infra/prefect.yaml``. The test
runs the training, forecast and monitoring deployments, checks the registered version and
its alias in MLflow and the rows in the Postgres forecast store, then stops everything.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from support import rendered_compose, system_binary

pytestmark = [pytest.mark.flows, pytest.mark.stack]

ROOT = Path(__file__).resolve().parents[1]
# Credentials are made up per run: nothing to leak, nothing for the secret scan to find.
USER = "pipeline"
PASSWORD = secrets.token_urlsafe(16)
PREFECT_AUTH = f"admin:{secrets.token_urlsafe(16)}"
# The demand source's password: the flows read it from $BAYES_PIPELINE_SQL_URL, and the test
# looks for it everywhere the stack writes (issue [3/6]: secrets never reach a run, an
# artifact, a parameter or a log).
SOURCE_PASSWORD = f"leakmarker{secrets.token_hex(12)}"
WORKER_USER = "pipeline-worker"  # the worker's MLflow account, no admin
WORKER_PASSWORD = secrets.token_urlsafe(16)
ROLE_PASSWORDS = {name: secrets.token_urlsafe(16) for name in ("mlflow", "prefect", "store")}
BIN = Path(sys.executable).parent
BUNDLED = ROOT / "pipeline_lib" / "data" / "bundled" / "online_retail_ii_daily_top50.csv.gz"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, seconds: float, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: process exited:\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(1)
    raise RuntimeError(f"{url} did not come up in {seconds} s:\n{log.read_text()[-3000:]}")


def _ensure_postgres() -> Path:
    """The directory of PostgreSQL's server programs (initdb, pg_ctl)."""
    return system_binary("initdb", also_in="/usr/lib/postgresql/*/bin").resolve().parent


def _as_postgres(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    return subprocess.run(prefix + args, check=True, capture_output=True, text=True, **kwargs)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    import sqlalchemy as sa

    bin_dir = _ensure_postgres()
    tmp = tmp_path_factory.mktemp("stack")
    # pytest's temporary directories are private to root; the server's own lives apart.
    pgroot = Path(tempfile.mkdtemp(prefix="bayes-pipeline-pg-"))
    if os.geteuid() == 0:
        shutil.chown(pgroot, "postgres", "postgres")
    pgdata, pwfile = pgroot / "data", pgroot / "pwfile"
    pwfile.write_text(PASSWORD)
    pwfile.chmod(0o644)
    _as_postgres([str(bin_dir / "initdb"), "-D", str(pgdata), "-U", USER, "--pwfile", str(pwfile),
                  "--auth", "scram-sha-256"])
    pg_port = _port()
    _as_postgres([str(bin_dir / "pg_ctl"), "-D", str(pgdata), "-l", str(pgroot / "postgres.log"), "-w", "start",
                  "-o", f"-p {pg_port} -k {pgroot} -c listen_addresses=127.0.0.1"])
    processes = []
    try:
        env_pg = {**os.environ, "PGHOST": "127.0.0.1", "PGPORT": str(pg_port), "PGPASSWORD": PASSWORD,
                  "POSTGRES_USER": USER, "PATH": f"{bin_dir}:{os.environ['PATH']}",
                  **{f"{name.upper()}_DB_PASSWORD": password for name, password in ROLE_PASSWORDS.items()}}
        subprocess.run(["sh", str(ROOT / "infra" / "postgres" / "01-databases.sh")], env=env_pg, check=True,
                       capture_output=True)
        def db(name: str, driver: str = "psycopg2") -> str:  # as compose: each database's own role
            role = {"store": "forecast_store"}.get(name, name)
            return sa.engine.URL.create(f"postgresql+{driver}", role, ROLE_PASSWORDS[name], "127.0.0.1", pg_port,
                                        role).render_as_string(hide_password=False)
        # A database of demand that a separate, read-only-ish role owns, as a shop's would be.
        subprocess.run(["psql", "-v", "ON_ERROR_STOP=1", "--username", USER, "--dbname", "postgres",
                        "-c", f"CREATE ROLE sales_reader LOGIN PASSWORD '{SOURCE_PASSWORD}'",
                        "-c", "CREATE DATABASE sales OWNER sales_reader"], env=env_pg, check=True, capture_output=True)
        source_url = sa.engine.URL.create("postgresql+psycopg2", "sales_reader", SOURCE_PASSWORD, "127.0.0.1",
                                          pg_port, "sales").render_as_string(hide_password=False)

        def start(name: str, args: list[str], env: dict) -> subprocess.Popen:
            log = tmp / f"{name}.log"
            process = subprocess.Popen(args, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=tmp)
            processes.append(process)
            return process

        mlflow_port, prefect_port = _port(), _port()
        auth_ini = tmp / "basic_auth.ini"
        auth_ini.write_text((ROOT / "infra" / "mlflow" / "basic_auth.ini").read_text()
                            .replace("sqlite:////mlflow/basic_auth.db", f"sqlite:///{tmp / 'auth.db'}"))
        mlflow = start("mlflow", [str(BIN / "mlflow"), "server", "--app-name", "basic-auth",
                                  "--backend-store-uri", db("mlflow"),
                                  "--artifacts-destination", str(tmp / "artifacts"), "--serve-artifacts",
                                  "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1",
                                  "--allowed-hosts", f"127.0.0.1:{mlflow_port},localhost:{mlflow_port}"],
                       {**os.environ, "MLFLOW_AUTH_CONFIG_PATH": str(auth_ini),
                        "MLFLOW_AUTH_ADMIN_PASSWORD": PASSWORD,
                        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16)})
        prefect_env = {**os.environ, "PREFECT_HOME": str(tmp / "prefect-home"),
                       "PREFECT_API_DATABASE_CONNECTION_URL": db("prefect", "asyncpg"),
                       "PREFECT_SERVER_API_AUTH_STRING": PREFECT_AUTH, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                       "PREFECT_UI_API_URL": f"http://127.0.0.1:{prefect_port}/api"}
        prefect = start("prefect-server", [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                                           "--port", str(prefect_port)], prefect_env)
        _wait_http(f"http://127.0.0.1:{mlflow_port}/health", 120, mlflow, tmp / "mlflow.log")
        _wait_http(f"http://127.0.0.1:{prefect_port}/api/health", 180, prefect, tmp / "prefect-server.log")
        # compose's mlflow-users service: the admin creates the worker's own account.
        subprocess.run([sys.executable, str(ROOT / "infra" / "mlflow" / "create_worker_user.py")], check=True,
                       capture_output=True, env={**os.environ, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
                                                 "MLFLOW_TRACKING_USERNAME": "admin",
                                                 "MLFLOW_TRACKING_PASSWORD": PASSWORD,
                                                 "MLFLOW_WORKER_USERNAME": WORKER_USER,
                                                 "MLFLOW_WORKER_PASSWORD": WORKER_PASSWORD})

        client_env = {
            **os.environ, "PREFECT_HOME": str(tmp / "client-home"),
            "PREFECT_API_URL": f"http://127.0.0.1:{prefect_port}/api", "PREFECT_API_AUTH_STRING": PREFECT_AUTH,
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
            "MLFLOW_TRACKING_USERNAME": WORKER_USER, "MLFLOW_TRACKING_PASSWORD": WORKER_PASSWORD,
            # what the test itself reads (the flows get theirs from compose's worker environment)
            "BAYES_PIPELINE_STORE_URL": db("store"), "BAYES_PIPELINE_SQL_URL": source_url,
        }
        # The worker exactly as compose starts it: the prefect-worker service's command and
        # environment, rendered by docker-compose from an operator's .env.
        services = _compose_services(
            tmp, {"POSTGRES_USER": USER, "POSTGRES_PASSWORD": PASSWORD,
                  **{f"{name.upper()}_DB_PASSWORD": pw for name, pw in ROLE_PASSWORDS.items()},
                  "MLFLOW_AUTH_ADMIN_PASSWORD": PASSWORD, "MLFLOW_TRACKING_USERNAME": WORKER_USER,
                  "MLFLOW_TRACKING_PASSWORD": WORKER_PASSWORD, "MLFLOW_FLASK_SERVER_SECRET_KEY": "unused-here",
                  "PREFECT_API_AUTH_STRING": PREFECT_AUTH, "BAYES_PIPELINE_SQL_URL": source_url},
            {"@postgres:5432/": f"@127.0.0.1:{pg_port}/", "http://mlflow:5000": f"http://127.0.0.1:{mlflow_port}",
             "http://prefect-server:4200": f"http://127.0.0.1:{prefect_port}"})
        command, worker_env = services["prefect-worker"]["command"], services["prefect-worker"]["environment"]
        # compose's evidently-ui on the workspace volume the worker writes its snapshots to;
        # started now so that it comes up while the flows are deployed and the worker starts
        shell, flag, script = services["evidently-ui"]["command"]  # sh -c "create the project && exec ui"
        evidently_port = _port()
        workspace = Path(worker_env["BAYES_PIPELINE_EVIDENTLY_WORKSPACE"])  # the same named volume
        for inside, here in (("python -c", f"{sys.executable} -c"),
                             ("exec evidently ui", f"exec {BIN / 'evidently'} ui"),
                             ("--host 0.0.0.0", "--host 127.0.0.1"), ("--port 8000", f"--port {evidently_port}"),
                             ("/workspace", str(workspace))):
            assert inside in script, inside  # compose's command changed: update this emulation
            script = script.replace(inside, here)
        evidently = start("evidently-ui", [shell, flag, script], {**os.environ})
        health_port = _port()
        in_worker = {**{k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_", "BAYES_"))},
                     **worker_env, "PREFECT_HOME": str(tmp / "worker-home"),
                     # compose's healthcheck asks port 8080; another program may hold it here
                     "PREFECT_WORKER_WEBSERVER_PORT": str(health_port)}
        # As docs/deployment.md says: `docker compose exec prefect-worker prefect deploy --all`,
        # so prefect.yaml's {{ $BAYES_PIPELINE_APP_DIR }} is filled from the worker's environment.
        prefect_cli = [str(BIN / "prefect"), "--no-prompt"]
        subprocess.run(prefect_cli + ["work-pool", "create", "local-process", "--type", "process"],
                       env=in_worker, check=True, capture_output=True, cwd=ROOT)
        deployed = subprocess.run(prefect_cli + ["deploy", "--all", "--prefect-file", "infra/prefect.yaml"],
                                  env=in_worker, capture_output=True, text=True, cwd=ROOT, check=False)
        assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
        worker = start("worker", [str(BIN / command[0]), *command[1:]], in_worker)
        _wait_http(f"http://127.0.0.1:{health_port}/health", 120, worker, tmp / "worker.log")
        _wait_http(f"http://127.0.0.1:{evidently_port}/api/projects", 120, evidently, tmp / "evidently-ui.log")
        yield {"tmp": tmp, "env": client_env, "mlflow_port": mlflow_port, "prefect_port": prefect_port,
               "env_pg": env_pg, "processes": processes, "db": db, "evidently_port": evidently_port}
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        _as_postgres([str(bin_dir / "pg_ctl"), "-D", str(pgdata), "-m", "fast", "-w", "stop"])
        shutil.rmtree(pgroot, ignore_errors=True)


def _compose_services(tmp: Path, values: dict[str, str], hosts: dict[str, str]) -> dict[str, dict]:
    """docker-compose.yml's services as local processes: ``name -> {"command", "environment"}``
    as ``docker-compose config`` renders them from ``.env.example`` filled with ``values``,
    with the services' addresses (``hosts``: compose's -> local) and the container paths of
    their volumes and of the app image (``/app``, where the image puts the repository) mapped
    to local directories (a named volume is one directory, whichever service mounts it).
    Nothing is added but what the host needs to differ."""
    rendered = rendered_compose(values, tmp)

    def local(value: str, paths: dict[str, Path]) -> str:
        for compose_address, address in hosts.items():
            value = value.replace(compose_address, address)
        for inside, outside in paths.items():
            if value == inside or value.startswith(inside + "/"):
                value = str(outside) + value[len(inside):]
        return value

    services = {}
    for name, service in rendered["services"].items():
        paths = {"/app": ROOT}
        for volume in service.get("volumes", []):  # "source:target:mode", a bind's source an absolute path
            source, target = volume.split(":")[:2]
            exists = source.startswith("/") and Path(source).exists()  # else a named volume (or a missing bind)
            paths[target] = Path(source) if exists else tmp / Path(source).name
            paths[target].mkdir(exist_ok=True)  # docker creates a volume before its containers start
        services[name] = {
            "command": [local(str(arg), paths) for arg in service.get("command") or []],
            "environment": {key: local("" if value is None else str(value), paths)
                            for key, value in (service.get("environment") or {}).items()},
        }
    return services


def _run_deployment(env: dict, name: str, parameters: dict) -> str:
    """Run a deployment through the API from a separate client process; returns its final state."""
    import json

    script = (
        "import json, sys\n"
        "from prefect.deployments import run_deployment\n"
        "run = run_deployment(sys.argv[1], parameters=json.loads(sys.argv[2]), timeout=900, poll_interval=2)\n"
        "print(run.state.type.value)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, name, json.dumps(parameters)], env=env,
                          capture_output=True, text=True, timeout=1000, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def _places_holding(marker: str, tmp: Path, env_pg: dict) -> list[str]:
    """Where ``marker`` appears: the MLflow, Prefect and forecast-store databases (dumped),
    and every file the stack's processes wrote (artifacts, logs, homes, the MLflow auth DB)."""
    found = []
    for database in ("mlflow", "prefect", "forecast_store"):
        dump = subprocess.run(["pg_dump", "--username", USER, "--dbname", database], env=env_pg, check=True,
                              capture_output=True).stdout
        assert len(dump) > 1000, database  # a real dump, not an empty answer
        if marker.encode() in dump:
            found.append(f"database {database}")
    found += [str(path) for path in tmp.rglob("*") if path.is_file() and marker.encode() in path.read_bytes()]
    return found


def test_deployments_run_on_the_stack(stack, monkeypatch):
    """Training, forecast and monitoring deployments on the worker, reading their demand from
    PostgreSQL through $BAYES_PIPELINE_SQL_URL: the results land in MLflow and the store, and
    the source's password lands nowhere."""
    import sqlalchemy as sa

    tmp, env = stack["tmp"], stack["env"]
    # The bundled data (50 Online Retail II SKUs), so the UIs show a real model; a small
    # network and two epochs keep the training under a minute.
    source = sa.create_engine(env["BAYES_PIPELINE_SQL_URL"])
    sales = pd.read_csv(BUNDLED, dtype={"series_id": str})
    sales.to_sql("sales", source, index=False)
    source.dispose()
    config = {
        "data": {"sql_query": "SELECT series_id, date, units, price FROM sales"},
        "model": {"lstm_units": [16, 8]},
        "train": {"epochs": 2, "patience": 1, "kl_ramp_epochs": 1},
        "evaluation": {"num_samples": 50, "fan_chart_series": 4},
        "registry": {"experiment_name": "stack", "model_name": "stack-model"},
    }
    assert _run_deployment(env, "training_pipeline/training-pipeline", {"config": config}) == "COMPLETED"
    forecast_day = dt.date.fromisoformat(sales["date"].max()) - dt.timedelta(days=7)
    n_series = sales["series_id"].nunique()
    assert _run_deployment(env, "daily_forecast/daily-forecast",
                           {"config": config, "run_date": str(forecast_day)}) == "COMPLETED"
    assert _run_deployment(env, "daily_monitoring/daily-monitoring",
                           {"config": config, "day": str(forecast_day)}) == "COMPLETED"

    # MLflow (through the authenticated server): version 1 is the champion.
    from mlflow import MlflowClient

    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(name, env[name])
    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"], registry_uri=env["MLFLOW_TRACKING_URI"])
    assert client.get_model_version_by_alias("stack-model", "champion").version in ("1", 1)
    # ... registered by the worker's own account, which is no admin.
    from mlflow.server.auth.client import AuthServiceClient

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    assert AuthServiceClient(env["MLFLOW_TRACKING_URI"]).get_user(WORKER_USER).is_admin is False
    assert client.get_registered_model("stack-model").name == "stack-model"
    # The forecast store on Postgres holds the day's forecasts and its coverage.
    engine = sa.create_engine(env["BAYES_PIPELINE_STORE_URL"])
    with engine.connect() as conn:
        forecasts = conn.execute(sa.text("SELECT count(*) FROM forecasts WHERE run_date = :d"),
                                 {"d": forecast_day}).scalar()
        coverage = conn.execute(sa.text("SELECT status, n FROM coverage_daily WHERE day = :d AND scope = 'overall'"),
                                {"d": forecast_day}).one()
    engine.dispose()
    assert forecasts == n_series * 7
    assert coverage.status == "ok" and coverage.n == n_series
    # One role per database: the store's role cannot even connect to the registry's database.
    intruder = sa.create_engine(sa.engine.make_url(env["BAYES_PIPELINE_STORE_URL"]).set(database="mlflow"))
    with pytest.raises(sa.exc.OperationalError, match="permission denied"):
        intruder.connect()
    intruder.dispose()
    # The monitoring's drift snapshot is served by compose's evidently-ui from the workspace
    # volume the worker writes to, in the pipeline's project.
    import json

    base = f"http://127.0.0.1:{stack['evidently_port']}/api"
    projects = json.loads(urllib.request.urlopen(f"{base}/projects", timeout=30).read())
    project = next(p for p in projects if p["name"] == "bayes-pipeline")
    snapshots = json.loads(urllib.request.urlopen(f"{base}/projects/{project['id']}/snapshots", timeout=30).read())
    assert len(snapshots) >= 1, snapshots
    # The source's password: in the worker's environment, nowhere the stack wrote.
    assert _places_holding(SOURCE_PASSWORD, tmp, stack["env_pg"]) == []
    # Without credentials the servers refuse (the auth is really on).
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"http://127.0.0.1:{stack['mlflow_port']}/api/2.0/mlflow/experiments/search?max_results=1")
    assert refused.value.code == 401
    assert shutil.which("runuser") or os.geteuid() != 0


CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _ensure_chromium() -> Path:
    return system_binary("chromium")


def test_the_uis_show_the_champion_and_the_schedules(stack, monkeypatch):
    """Debian's Chromium, headless, driven by Playwright: the MLflow UI shows the model with
    its champion alias and the run's metrics and fan chart; the Prefect UI shows the three
    deployments with their schedules. Screenshots land in the test's directory (and in docs/
    when BAYES_PIPELINE_UPDATE_SCREENSHOTS=1)."""
    from playwright.sync_api import sync_playwright

    tmp, env = stack["tmp"], stack["env"]
    shots = tmp / "screenshots"
    shots.mkdir(exist_ok=True)
    mlflow_url = f"http://127.0.0.1:{stack['mlflow_port']}"
    prefect_url = f"http://127.0.0.1:{stack['prefect_port']}"
    from mlflow import MlflowClient

    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(name, env[name])
    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"], registry_uri=env["MLFLOW_TRACKING_URI"])
    version = client.get_model_version_by_alias("stack-model", "champion")
    run = client.get_run(version.run_id)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(_ensure_chromium()), args=CHROMIUM_FLAGS)
        context = browser.new_context(viewport={"width": 1400, "height": 900},
                                      http_credentials={"username": "admin", "password": PASSWORD})
        page = context.new_page()

        page.goto(f"{mlflow_url}/#/models/stack-model")
        page.get_by_text("@ champion").first.wait_for(timeout=60_000)
        page.screenshot(path=shots / "mlflow_model.png")

        page.goto(f"{mlflow_url}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}")
        page.wait_for_function("document.body.innerText.includes('picp_95')", timeout=60_000)
        text = page.inner_text("body")
        for metric in ("picp_95", "crps_scaled"):  # the names and their logged values are on the page
            value = run.data.metrics[metric]
            shown = {str(value)[:5], f"{value:.3f}", f"{value:.4g}"}
            assert metric in text and any(v in text for v in shown), (metric, value)
        page.get_by_placeholder("Search metrics").fill("picp_9")
        page.wait_for_timeout(1000)
        page.screenshot(path=shots / "mlflow_run_metrics.png", full_page=True)

        page.goto(f"{mlflow_url}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}/artifacts")
        page.get_by_text("plots").first.click()
        page.get_by_text("fan_chart.png").first.click()
        # The chart really loaded: an image of the chart's size decoded (a broken link would
        # leave only the UI's icons, all far smaller).
        page.wait_for_function("Array.from(document.images).some(i => i.complete && i.naturalWidth >= 500)",
                               timeout=60_000)
        page.screenshot(path=shots / "mlflow_fan_chart.png")

        page.goto(f"{prefect_url}/deployments")
        password = page.locator("input[type=password]")
        password.or_(page.get_by_text("training-pipeline", exact=True)).first.wait_for(timeout=60_000)
        if password.count():  # the API auth string guards the UI too
            password.fill(PREFECT_AUTH)
            password.press("Enter")
            page.wait_for_timeout(2000)
            page.goto(f"{prefect_url}/deployments")
        for name in ("training-pipeline", "daily-forecast", "daily-monitoring"):
            page.get_by_text(name, exact=True).first.wait_for(timeout=60_000)
        page.screenshot(path=shots / "prefect_deployments.png")
        text = page.inner_text("body")
        assert "6:00" in text or "0 6 * * *" in text, "the 06:00 forecast schedule is not shown"
        assert "7:00" in text or "0 7 * * *" in text, "the 07:00 monitoring schedule is not shown"
        browser.close()

    if os.environ.get("BAYES_PIPELINE_UPDATE_SCREENSHOTS") == "1":
        for shot in shots.glob("*.png"):
            shutil.copy(shot, ROOT / "docs" / "screenshots" / shot.name)


def _stored_forecasts(url: str, frame, run_date: dt.date):
    """``frame`` written twice (a rerun replaces) into the store at ``url``: its rows of
    ``run_date`` and how many order levels are NULL there."""
    import sqlalchemy as sa

    from pipeline_lib.store import ForecastStore
    from pipeline_lib.store.schema import forecasts

    store = ForecastStore(url).create()
    try:
        store.replace_forecasts(run_date, frame.assign(mean=-1.0))
        assert store.replace_forecasts(run_date, frame) == len(frame)
        with store.engine.connect() as conn:
            nulls = conn.execute(sa.select(sa.func.count()).select_from(forecasts).where(
                forecasts.c.run_date == run_date, forecasts.c.order_up_to.is_(None))).scalar_one()
        rows = store.table("forecasts")
    finally:
        store.dispose()
    rows = rows[rows["run_date"] == run_date].sort_values(["series_id", "date"], ignore_index=True)
    return rows, nulls


def test_forecasts_copied_into_postgres_equal_those_inserted_into_sqlite(stack, tmp_path):
    """The store's bulk path on the stack's PostgreSQL (COPY) stores exactly what the
    executemany path stores in SQLite: every value, quoted ids, and NULL (not NaN) where an
    order level is missing."""
    import numpy as np
    from support import forecast_rows

    run_date = dt.date(1990, 1, 1)  # a day no deployment of the stack writes
    frame = forecast_rows(run_date, ["A", 'B, "quoted"'], 3, center=12.345678901234567)
    frame["order_up_to"] = [31.5, 30.25, np.nan, 28.0, np.nan, np.nan]
    frame["safety_stock"] = frame["order_up_to"] / 3
    postgres, postgres_nulls = _stored_forecasts(stack["env"]["BAYES_PIPELINE_STORE_URL"], frame, run_date)
    sqlite, sqlite_nulls = _stored_forecasts(f"sqlite:///{tmp_path / 'store.db'}", frame, run_date)
    assert postgres_nulls == sqlite_nulls == 3
    assert len(postgres) == 6 and (postgres["mean"] == 12.345678901234567).all()
    import pandas as pd

    pd.testing.assert_frame_equal(postgres, sqlite, check_dtype=False)


def test_a_backup_restores_the_registry_the_runs_the_store_and_the_artifacts(stack):
    """infra/backup.sh, then the damage an operator fears (the champion alias, the store's
    forecasts and the artifact files gone), then infra/restore.sh with the servers stopped, as
    its header says: everything is back as it was. Runs last: it stops the stack."""
    import hashlib

    import sqlalchemy as sa

    tmp, env_pg = stack["tmp"], {**stack["env_pg"], "PGUSER": USER}  # libpq's variables, as the scripts say
    artifacts, backup = tmp / "artifacts", tmp / "backup"
    engines = {name: sa.create_engine(stack["db"](name)) for name in ("mlflow", "prefect", "store")}
    counts = {"aliases": "SELECT count(*) FROM registered_model_aliases", "forecasts": "SELECT count(*) FROM forecasts",
              "flow_runs": "SELECT count(*) FROM flow_run"}
    where = {"aliases": "mlflow", "forecasts": "store", "flow_runs": "prefect"}

    def state() -> tuple[dict, dict]:
        rows = {}
        for key, query in counts.items():
            with engines[where[key]].connect() as conn:
                rows[key] = conn.execute(sa.text(query)).scalar()
        files = {str(p.relative_to(artifacts)): hashlib.sha256(p.read_bytes()).hexdigest()
                 for p in artifacts.rglob("*") if p.is_file()}
        return rows, files

    for process in stack["processes"]:  # the servers and the worker, as before a restore
        process.terminate()
    for process in stack["processes"]:
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:  # a busy worker can take longer over SIGTERM
            process.kill()
            process.wait(timeout=60)
    before = state()
    assert before[0]["aliases"] >= 1 and before[0]["forecasts"] > 0 and before[0]["flow_runs"] >= 3
    assert any(name.endswith("MLmodel") for name in before[1])
    subprocess.run(["sh", str(ROOT / "infra" / "backup.sh"), str(backup), str(artifacts)], env=env_pg, check=True,
                   capture_output=True)
    with engines["mlflow"].begin() as conn:
        conn.execute(sa.text("DELETE FROM registered_model_aliases"))
    with engines["store"].begin() as conn:
        conn.execute(sa.text("DELETE FROM forecasts"))
    shutil.rmtree(artifacts)
    assert state()[0]["aliases"] == state()[0]["forecasts"] == 0
    restored = subprocess.run(["sh", str(ROOT / "infra" / "restore.sh"), str(backup), str(artifacts)], env=env_pg,
                              capture_output=True, text=True, check=False)
    assert restored.returncode == 0, restored.stderr[-3000:]
    assert state() == before
    for engine in engines.values():
        engine.dispose()
