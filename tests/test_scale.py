"""Scale-out: the forecast flow and the training flow's Monte Carlo evaluation give the same
numbers on a 2-worker Dask LocalCluster as on the default thread runner (and in-process),
and the compose file and the deployments agree."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from support import level_following_demand, rendered_compose, system_binary

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.flows
def test_dask_runner_gives_the_default_runners_forecasts_and_evaluation(tmp_path, small_config, monkeypatch):
    from prefect.testing.utilities import prefect_test_harness

    from flows.forecasting import daily_forecast_flow
    from flows.runners import task_runner
    from flows.training import mc_sample_chunks
    from pipeline_lib import stages
    from pipeline_lib.data.validate import load_panel
    from pipeline_lib.model.forecast import ModelFiles
    from pipeline_lib.store import ForecastStore

    data = tmp_path / "many.csv"
    level_following_demand(n_series=100, n_days=60).to_csv(data, index=False)
    config = small_config.updated(data={"path": data}, train={"epochs": 1}, inventory={"in_training_run": False},
                                  runtime={"chunk_series": 32})
    panel = load_panel(config.data, config.window)
    trained = stages.train(config, panel, progress=False)
    evaluation = stages.evaluate(config, trained.model, panel)
    stages.register(config, panel, trained, evaluation, [], stages.promotion_gate(config, panel, evaluation))

    # The training flow's Monte Carlo evaluation, computed in-process chunk by chunk by the
    # evaluation above (its raw samples, before any recalibration).
    chunks = panel.chunks(config.runtime.chunk_series)
    assert len(chunks) == 4
    in_process = evaluation.sampled.samples if evaluation.raw_samples is None else evaluation.raw_samples

    frames, evaluated = {}, {}
    with prefect_test_harness(server_startup_timeout=120):
        for runner in ("thread", "dask"):
            runner_config = config.updated(runtime={"task_runner": runner, "dask_workers": 2})
            monkeypatch.setenv("BAYES_PIPELINE_STORE_URL", f"sqlite:///{tmp_path / runner}.db")
            run = daily_forecast_flow(runner_config)
            assert run.series == 100 and run.rows == 100 * config.serving.horizon
            store = ForecastStore(f"sqlite:///{tmp_path / runner}.db")
            frames[runner] = store.table("forecasts")
            store.dispose()
            evaluated[runner] = mc_sample_chunks.with_options(task_runner=task_runner(runner_config))(
                runner_config, ModelFiles.of(trained.model), chunks)
    pd.testing.assert_frame_equal(frames["dask"], frames["thread"])
    for runner, sampled in evaluated.items():
        np.testing.assert_array_equal(sampled.samples, in_process, err_msg=runner)
        assert list(pd.unique(sampled.series_ids)) == [s.series_id for s in panel.series]


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


SECRETS = {"POSTGRES_PASSWORD", "MLFLOW_DB_PASSWORD", "PREFECT_DB_PASSWORD", "STORE_DB_PASSWORD",
           "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_TRACKING_PASSWORD",
           "MLFLOW_FLASK_SERVER_SECRET_KEY", "PREFECT_API_AUTH_STRING"}


def test_compose_file_is_valid(tmp_path):
    """``docker-compose config`` (Debian's docker-compose package) refuses the example
    environment as it is (its secrets are empty), then parses and validates the file against
    the compose schema once they are filled in."""
    import secrets

    compose = system_binary("docker-compose")
    refused = subprocess.run([str(compose), "--env-file", ".env.example", "config"], cwd=ROOT,
                             capture_output=True, text=True, check=False)
    assert refused.returncode != 0 and "in .env" in refused.stderr, refused.stderr
    values = {name: secrets.token_hex(8) for name in SECRETS}
    rendered = rendered_compose(values, tmp_path)
    assert set(rendered["services"]) >= {"postgres", "mlflow", "prefect-server", "prefect-worker"}
    for name, service in rendered["services"].items():
        for port in service.get("ports", []):  # "127.0.0.1:5000:5000/tcp" or the long syntax
            host_ip = port.get("host_ip") if isinstance(port, dict) else str(port).split(":")[0]
            assert host_ip == "127.0.0.1", f"{name} publishes {port} beyond loopback"
        # Long-running services come back; the one-shot user set-up only retries a failure.
        assert service.get("restart") == ("on-failure" if name == "mlflow-users" else "unless-stopped"), name
        if "image" in service:  # exact versions: an image that moves under a tag is not reproducible
            assert re.search(r":\d+\.\d+(\.\d+)?(-[\w.]+)?$", service["image"]), service["image"]
    for dockerfile in ("infra/Dockerfile", "infra/mlflow/Dockerfile"):
        base = re.search(r"^FROM (\S+)", (ROOT / dockerfile).read_text(), re.M).group(1)
        assert re.search(r":\d+\.\d+\.\d+", base), (dockerfile, base)
    # One login role per database: only postgres itself knows the superuser's password.
    for name, service in rendered["services"].items():
        if name != "postgres":
            assert values["POSTGRES_PASSWORD"] not in json.dumps(service), f"{name} logs in as the superuser"
    worker = rendered["services"]["prefect-worker"]
    # The worker logs in to MLflow as its own user, which mlflow-users creates first: no admin.
    users = rendered["services"]["mlflow-users"]
    admin = re.search(r"^admin_username = (\S+)", (ROOT / "infra/mlflow/basic_auth.ini").read_text(), re.M).group(1)
    assert worker["environment"]["MLFLOW_TRACKING_USERNAME"] != admin
    assert users["environment"]["MLFLOW_TRACKING_USERNAME"] == admin
    assert users["environment"]["MLFLOW_WORKER_USERNAME"] == worker["environment"]["MLFLOW_TRACKING_USERNAME"]
    assert users["environment"]["MLFLOW_WORKER_PASSWORD"] == worker["environment"]["MLFLOW_TRACKING_PASSWORD"]
    assert worker["depends_on"]["mlflow-users"]["condition"] == "service_completed_successfully"
    assert "healthcheck" in worker and "--with-healthcheck" in worker["command"]
    assert worker["cpus"] and worker["mem_limit"]  # training cannot starve the databases


def test_compose_and_deployments_agree():
    from pipeline_lib.config import PipelineConfig, load_config

    compose = _compose()
    deployments = yaml.safe_load((ROOT / "infra" / "prefect.yaml").read_text())["deployments"]
    worker = compose["services"]["prefect-worker"]
    pool = worker["command"][worker["command"].index("--pool") + 1]
    assert {d["work_pool"]["name"] for d in deployments} == {pool}
    assert {d["name"] for d in deployments} == {"training-pipeline", "daily-forecast", "daily-monitoring"}
    crons = {d["name"]: d["schedules"][0]["cron"] for d in deployments if d.get("schedules")}
    assert crons == {"daily-forecast": "0 6 * * *", "daily-monitoring": "0 7 * * *"}
    # `bayes-pipeline serve` serves the same deployments with the same schedules and entry points.
    from flows.serve import DEPLOYMENTS

    assert {name: cron for name, (_, cron) in DEPLOYMENTS.items() if cron} == crons
    entrypoints = {d["name"]: d["entrypoint"].split(":")[1] for d in deployments}
    assert {name: flow.fn.__name__ for name, (flow, _) in DEPLOYMENTS.items()} == entrypoints
    # Trainings are serialised, in both: a second one waits instead of racing to the alias.
    limits = {d["name"]: d.get("concurrency_limit") for d in deployments}
    assert limits == {"training-pipeline": 1, "daily-forecast": None, "daily-monitoring": None}
    from flows.serve import deployments as served

    served_limits = {d.name: d.concurrency_limit for d in served(PipelineConfig())}
    assert served_limits == limits
    # The worker gets every setting the flows read from the environment ...
    needed = {"MLFLOW_TRACKING_URI", "BAYES_PIPELINE_STORE_URL", "PREFECT_API_URL", "PREFECT_API_AUTH_STRING",
              "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "BAYES_PIPELINE_DATA_ROOTS",
              "BAYES_PIPELINE_APP_DIR", "BAYES_PIPELINE_CONFIG"}
    assert needed <= set(worker["environment"])
    # ... prefect.yaml's pull step finds the flows where the image put them ...
    dockerfile = (ROOT / "infra" / "Dockerfile").read_text()
    workdir = re.search(r"^WORKDIR (\S+)", dockerfile, re.M).group(1)
    assert worker["environment"]["BAYES_PIPELINE_APP_DIR"] == workdir
    assert f"BAYES_PIPELINE_APP_DIR={workdir}" in dockerfile
    assert "$BAYES_PIPELINE_APP_DIR" in yaml.safe_load((ROOT / "infra" / "prefect.yaml").read_text())["pull"][0][
        "prefect.deployments.steps.set_working_directory"]["directory"]
    # ... and the deployed flows' config is a file of the repository, mounted where the
    # environment says, that validates and points at the mounted data.
    mounts = dict(v.split(":")[:2][::-1] for v in worker["volumes"] if v.startswith("./"))
    config_path = worker["environment"]["BAYES_PIPELINE_CONFIG"]
    host_file = ROOT / mounts[str(Path(config_path).parent)] / Path(config_path).name
    deployed = load_config(host_file)
    assert str(deployed.data.path).startswith(worker["environment"]["BAYES_PIPELINE_DATA_ROOTS"])
    # ... and the worker writes its drift snapshots into the workspace evidently-ui serves.
    ui = compose["services"]["evidently-ui"]
    served = re.search(r"--workspace (\S+)", " ".join(ui["command"])).group(1)
    # ... whose project exists before the UI starts (the UI's watcher stops at a half-written one)
    assert "create_project('bayes-pipeline'" in " ".join(ui["command"])
    from pipeline_lib.monitoring.drift import WORKSPACE_PROJECT

    assert WORKSPACE_PROJECT == "bayes-pipeline"
    ui_volume = next(v.split(":")[0] for v in ui["volumes"] if v.split(":")[1] == served)
    worker_volume = next(v.split(":")[1] for v in worker["volumes"] if v.split(":")[0] == ui_volume)
    assert worker["environment"]["BAYES_PIPELINE_EVIDENTLY_WORKSPACE"] == worker_volume
    # ... the monitoring's default training deployment is the one prefect.yaml defines ...
    flow_name, deployment = PipelineConfig().monitoring.training_deployment.split("/")
    assert deployment == "training-pipeline" and flow_name == "training_pipeline"
    # ... and every ${VARIABLE} the compose file uses is defined in .env.example.
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", (ROOT / "docker-compose.yml").read_text()))
    defined = {line.split("=", 1)[0] for line in (ROOT / ".env.example").read_text().splitlines()
               if "=" in line and not line.startswith("#")}
    assert used <= defined, used - defined


def test_flows_started_without_a_config_read_the_deployed_one(tmp_path, monkeypatch):
    """A scheduled deployment passes no config: the flows read $BAYES_PIPELINE_CONFIG when the
    run starts (not at import), else the defaults."""
    import inspect

    from flows.forecasting import daily_forecast_flow
    from flows.monitoring import daily_monitoring_flow
    from flows.training import training_pipeline
    from pipeline_lib.config import CONFIG_ENV, PipelineConfig, deployed_config

    for flow in (training_pipeline, daily_forecast_flow, daily_monitoring_flow):
        assert inspect.signature(flow.fn).parameters["config"].default is None
        assert "deployed_config()" in inspect.getsource(flow.fn)
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    assert deployed_config() == PipelineConfig()
    path = tmp_path / "deployed.yaml"
    path.write_text("data:\n  path: /data/input/shop.csv\nserving:\n  horizon: 14\n")
    monkeypatch.setenv(CONFIG_ENV, str(path))
    config = deployed_config()
    assert str(config.data.path) == "/data/input/shop.csv" and config.serving.horizon == 14


def _training_peak_bytes(config, n_series: int) -> int:
    """Peak Python-heap bytes (NumPy's arrays included) of one training run on ``n_series``
    series of 120 days, beyond the panel it is given."""
    import tracemalloc

    from pipeline_lib import stages
    from pipeline_lib.data.validate import validate_table

    panel = validate_table(level_following_demand(n_series=n_series, n_days=120), config.data, min_days=1)
    tracemalloc.start()
    try:
        stages.train(config, panel, progress=False)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_training_memory_grows_with_the_data_not_with_its_windows(small_config):
    """Ten times the series: the training run's extra memory grows by a few bytes per added
    series-day (the compact arrays LazyWindows keeps), not by the L x F floats of a
    materialised window each (14 x 10 x 4 = 560 bytes here), and an epoch draws a fixed
    number of windows. The recalibrations sample the series a training run scores, at most
    ``evaluation.max_series``: capped at 20 here, they cost the same for both panels."""
    config = small_config.updated(train={"epochs": 1, "windows_per_epoch": 512, "validation_windows": 256},
                                  evaluation={"max_series": 20})
    _training_peak_bytes(config, 20)  # one-off allocations (graph tracing, caches) land here
    small, large = _training_peak_bytes(config, 20), _training_peak_bytes(config, 200)
    added_series_days = (200 - 20) * 120
    assert (large - small) / added_series_days < 64, (small, large)


class _CountingWindows:
    """Windows that remember which indices each batch asked for."""

    def __init__(self, windows):
        self.windows, self.asked = windows, []

    def __len__(self) -> int:
        return len(self.windows)

    def batch(self, index):
        self.asked.append(np.asarray(index))
        return self.windows.batch(index)


@pytest.mark.model
def test_an_epoch_draws_windows_per_epoch_distinct_windows_afresh():
    """With windows_per_epoch below the number of windows, each epoch visits that many
    distinct windows, a different set each epoch; without a limit, every window exactly once.
    Validation scores the same fixed sample of validation_windows every epoch."""
    from pipeline_lib.config import ModelConfig, TrainConfig
    from pipeline_lib.data.features import WindowSet
    from pipeline_lib.model.network import BayesianForecaster
    from pipeline_lib.model.training import train_model

    rng = np.random.default_rng(0)
    n = 1000
    windows = WindowSet(rng.normal(size=(n, 6, 3)).astype("float32"), rng.normal(size=n).astype("float32"),
                        np.zeros(n, int), np.arange(n), np.zeros(n, np.float32))
    model = BayesianForecaster(3, ModelConfig(head="normal", lstm_units=(4, 3))).build_for(6)
    for per_epoch, expected in ((300, 300), (None, n), (5000, n)):
        train, validation = _CountingWindows(windows), _CountingWindows(windows)
        config = TrainConfig(epochs=2, batch_size=64, kl_ramp_epochs=1, patience=5, windows_per_epoch=per_epoch,
                             validation_windows=200)
        train_model(model, train, validation, config, progress=False)
        batches_per_epoch = -(-expected // 64)
        epochs = [np.concatenate(train.asked[e * batches_per_epoch:(e + 1) * batches_per_epoch]) for e in range(2)]
        assert len(train.asked) == 2 * batches_per_epoch
        for visited in epochs:
            assert len(visited) == len(np.unique(visited)) == expected
        assert not np.array_equal(np.sort(epochs[0]), np.sort(epochs[1])) or expected == n
        scored = [np.concatenate(validation.asked[:len(validation.asked) // 2]),
                  np.concatenate(validation.asked[len(validation.asked) // 2:])]
        assert len(scored[0]) == 200 and np.array_equal(scored[0], scored[1])
