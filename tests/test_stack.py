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

import pytest
from support import synthetic_demand, system_binary

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
BIN = Path(sys.executable).parent


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
                  "POSTGRES_USER": USER, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
        subprocess.run(["sh", str(ROOT / "infra" / "postgres" / "01-databases.sh")], env=env_pg, check=True,
                       capture_output=True)
        db = f"{USER}:{PASSWORD}@127.0.0.1:{pg_port}"
        # A database of demand that a separate, read-only-ish role owns, as a shop's would be.
        subprocess.run(["psql", "-v", "ON_ERROR_STOP=1", "--username", USER, "--dbname", "postgres",
                        "-c", f"CREATE ROLE sales_reader LOGIN PASSWORD '{SOURCE_PASSWORD}'",
                        "-c", "CREATE DATABASE sales OWNER sales_reader"], env=env_pg, check=True, capture_output=True)
        import sqlalchemy as sa

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
                                  "--backend-store-uri", f"postgresql+psycopg2://{db}/mlflow",
                                  "--artifacts-destination", str(tmp / "artifacts"), "--serve-artifacts",
                                  "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1",
                                  "--allowed-hosts", f"127.0.0.1:{mlflow_port},localhost:{mlflow_port}"],
                       {**os.environ, "MLFLOW_AUTH_CONFIG_PATH": str(auth_ini),
                        "MLFLOW_AUTH_ADMIN_PASSWORD": PASSWORD,
                        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16)})
        prefect_env = {**os.environ, "PREFECT_HOME": str(tmp / "prefect-home"),
                       "PREFECT_API_DATABASE_CONNECTION_URL": f"postgresql+asyncpg://{db}/prefect",
                       "PREFECT_SERVER_API_AUTH_STRING": PREFECT_AUTH, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                       "PREFECT_UI_API_URL": f"http://127.0.0.1:{prefect_port}/api"}
        prefect = start("prefect-server", [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                                           "--port", str(prefect_port)], prefect_env)
        _wait_http(f"http://127.0.0.1:{mlflow_port}/health", 120, mlflow, tmp / "mlflow.log")
        _wait_http(f"http://127.0.0.1:{prefect_port}/api/health", 180, prefect, tmp / "prefect-server.log")

        client_env = {
            **os.environ, "PREFECT_HOME": str(tmp / "client-home"),
            "PREFECT_API_URL": f"http://127.0.0.1:{prefect_port}/api", "PREFECT_API_AUTH_STRING": PREFECT_AUTH,
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
            "MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": PASSWORD,
            "BAYES_PIPELINE_STORE_URL": f"postgresql+psycopg2://{db}/forecast_store",
            "BAYES_PIPELINE_WORKDIR": str(tmp / "work"), "BAYES_PIPELINE_APP_DIR": str(ROOT),
            "BAYES_PIPELINE_DATA_ROOTS": str(tmp / "input"),
            "BAYES_PIPELINE_SQL_URL": source_url,
        }
        prefect_cli = [str(BIN / "prefect"), "--no-prompt"]
        subprocess.run(prefect_cli + ["work-pool", "create", "local-process", "--type", "process"],
                       env=client_env, check=True, capture_output=True, cwd=ROOT)
        deployed = subprocess.run(prefect_cli + ["deploy", "--all", "--prefect-file", "infra/prefect.yaml"],
                                  env=client_env, capture_output=True, text=True, cwd=ROOT, check=False)
        assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
        start("worker", [str(BIN / "prefect"), "worker", "start", "--pool", "local-process", "--type", "process",
                         "--limit", "1"], client_env)
        yield {"tmp": tmp, "env": client_env, "mlflow_port": mlflow_port, "prefect_port": prefect_port,
               "env_pg": env_pg}
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


def test_deployments_run_on_the_stack(stack):
    """Training, forecast and monitoring deployments on the worker, reading their demand from
    PostgreSQL through $BAYES_PIPELINE_SQL_URL: the results land in MLflow and the store, and
    the source's password lands nowhere."""
    import sqlalchemy as sa

    tmp, env = stack["tmp"], stack["env"]
    (tmp / "input").mkdir()
    source = sa.create_engine(env["BAYES_PIPELINE_SQL_URL"])
    synthetic_demand(n_series=4, n_days=120).to_sql("sales", source, index=False)
    source.dispose()
    config = {
        "data": {"sql_query": "SELECT series_id, date, units, price FROM sales"},
        "window": {"context_length": 14, "validation_days": 14, "test_days": 7, "min_train_days": 14},
        "model": {"lstm_units": [8, 4]},
        "train": {"epochs": 2, "batch_size": 64, "patience": 1, "kl_ramp_epochs": 1},
        "evaluation": {"num_samples": 20, "fan_chart_series": 2},
        "registry": {"experiment_name": "stack", "model_name": "stack-model"},
    }
    assert _run_deployment(env, "training_pipeline/training-pipeline", {"config": config}) == "COMPLETED"
    forecast_day = dt.date(2023, 1, 2) + dt.timedelta(days=110)
    assert _run_deployment(env, "daily_forecast/daily-forecast",
                           {"config": config, "run_date": str(forecast_day)}) == "COMPLETED"
    assert _run_deployment(env, "daily_monitoring/daily-monitoring",
                           {"config": config, "day": str(forecast_day)}) == "COMPLETED"

    # MLflow (through the authenticated server): version 1 is the champion.
    from mlflow import MlflowClient

    os.environ.update({k: env[k] for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")})
    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"], registry_uri=env["MLFLOW_TRACKING_URI"])
    assert client.get_model_version_by_alias("stack-model", "champion").version in ("1", 1)
    # The forecast store on Postgres holds the day's forecasts and its coverage.
    engine = sa.create_engine(env["BAYES_PIPELINE_STORE_URL"])
    with engine.connect() as conn:
        forecasts = conn.execute(sa.text("SELECT count(*) FROM forecasts WHERE run_date = :d"),
                                 {"d": forecast_day}).scalar()
        coverage = conn.execute(sa.text("SELECT status, n FROM coverage_daily WHERE day = :d AND scope = 'overall'"),
                                {"d": forecast_day}).one()
    engine.dispose()
    assert forecasts == 4 * 7
    assert coverage.status == "ok" and coverage.n == 4
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


def test_the_uis_show_the_champion_and_the_schedules(stack):
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
        assert "crps_scaled" in page.inner_text("body")
        page.get_by_placeholder("Search metrics").fill("picp_9")
        page.wait_for_timeout(1000)
        page.screenshot(path=shots / "mlflow_run_metrics.png", full_page=True)

        page.goto(f"{mlflow_url}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}/artifacts")
        page.get_by_text("plots").first.click()
        page.get_by_text("fan_chart.png").first.click()
        page.locator("img").first.wait_for(timeout=60_000)
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
