"""Helpers shared by the tests: synthetic data, a webhook receiver, concurrency, and the
forecast rows, panels and replay configuration several test modules build on.

Fixtures live in conftest.py; anything a test imports lives here.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import sys
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline_lib.config import PipelineConfig
from pipeline_lib.contract import QUANTILE_COLUMNS, QUANTILE_LEVELS
from pipeline_lib.data.validate import validate_table


def synthetic_demand(n_series: int = 4, n_days: int = 120, seed: int = 0, start: str = "2023-01-02",
                     id_col: str = "series_id", time_col: str = "date", target_col: str = "units") -> pd.DataFrame:
    """Weekly-seasonal Poisson demand with a price covariate and closed Saturdays."""
    rng = np.random.default_rng(seed)
    dates = pd.date_range(start, periods=n_days, freq="D")
    rows = []
    for k in range(n_series):
        level = 5.0 + 10.0 * k
        weekly = 1.0 + 0.5 * np.sin(2 * np.pi * np.arange(n_days) / 7)
        rate = level * weekly * (dates.dayofweek != 5)
        price = 2.0 + 0.1 * k + 0.05 * rng.standard_normal(n_days)
        rows.append(pd.DataFrame({id_col: f"S{k}", time_col: dates.strftime("%Y-%m-%d"),
                                  target_col: rng.poisson(rate), "price": price}))
    return pd.concat(rows, ignore_index=True)


def level_following_demand(n_series: int = 30, n_days: int = 160, seed: int = 0,
                           start: str = "2023-01-02") -> pd.DataFrame:
    """Poisson demand around slowly wandering levels with a weekly pattern (no covariates):
    the kind of series whose forecasts should follow a lasting level shift."""
    rng = np.random.default_rng(seed)
    dates = pd.date_range(start, periods=n_days, freq="D")
    rows = []
    for k in range(n_series):
        log_level = np.log(20 + 5 * k) + np.cumsum(rng.normal(0, 0.03, n_days))
        weekly = 1 + 0.3 * np.sin(2 * np.pi * np.arange(n_days) / 7)
        rows.append(pd.DataFrame({"series_id": f"S{k:02d}", "date": dates.strftime("%Y-%m-%d"),
                                  "units": rng.poisson(np.exp(log_level) * weekly)}))
    return pd.concat(rows, ignore_index=True)


@contextmanager
def webhook_receiver(path: str = "/alerts", failures: int = 0):
    """A JSON endpoint on 127.0.0.1 for alert tests: yields its URL and the received bodies.
    The first ``failures`` requests get a 503 (and are not counted as received)."""
    received: list[dict] = []
    refused = {"n": 0}

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if refused["n"] < failures:
                refused["n"] += 1
                self.send_response(503)
            else:
                received.append(body)
                self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}{path}", received
    finally:
        server.shutdown()


def system_binary(name: str, also_in: str | None = None):
    """A system program the tests drive (``initdb``, ``chromium``, ``docker-compose``): on
    PATH, else in the directories ``also_in`` globs; a clear failure when it is missing,
    since a skipped core path would pass silently. infra/test-prerequisites.sh installs them
    (the README's test command runs it before pytest)."""
    import glob
    import shutil
    from pathlib import Path

    found = shutil.which(name)
    if found is None and also_in:
        candidates = sorted(glob.glob(str(Path(also_in) / name)))
        found = candidates[-1] if candidates else None
    if found is None:
        import pytest

        pytest.fail(f"{name} is not installed: run infra/test-prerequisites.sh (the README's test command does)")
    return Path(found)


def run_concurrently(target, copies: int) -> None:
    """Start ``copies`` threads running ``target`` at once and wait for all of them."""
    threads = [threading.Thread(target=target) for _ in range(copies)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


# --- monitoring: forecasts written straight into the store, checked by hand ----------------
D = dt.date(2024, 3, 1)


def rendered_compose(values: dict[str, str], directory) -> dict:
    """docker-compose.yml as ``docker-compose config`` renders it from ``.env.example`` with
    the variables of ``values`` filled in (an operator's ``.env``). The filled file, the one
    place the values are written, lives in ``directory`` only while compose reads it."""
    import subprocess
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[1]
    env_file = Path(directory) / "compose.env"
    lines = (root / ".env.example").read_text().splitlines()
    env_file.write_text("".join((f"{line.split('=', 1)[0]}={values[line.split('=', 1)[0]]}"
                                 if line.split("=", 1)[0] in values else line) + "\n" for line in lines))
    try:
        done = subprocess.run([str(system_binary("docker-compose")), "--env-file", str(env_file), "config"],
                              cwd=root, capture_output=True, text=True, check=False)
    finally:
        env_file.unlink()
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


def day(k: int) -> dt.date:
    """The ``k``-th day after ``D``."""
    return D + dt.timedelta(days=k)


def forecast_rows(run_date: dt.date, series: list[str], horizon: int, center: float = 10.0,
                  half_width_95: float = 2.0, version: str = "1") -> pd.DataFrame:
    """Contract rows with Normal-shaped quantiles around ``center``: the 95% interval is
    ``center +- half_width_95``."""
    from scipy.stats import norm

    sigma = half_width_95 / norm.ppf(0.975)
    rows = []
    for sid in series:
        for h in range(horizon):
            q = center + sigma * norm.ppf(np.array(QUANTILE_LEVELS))
            rows.append({"series_id": sid, "date": pd.Timestamp(run_date + dt.timedelta(days=h)), "mean": center,
                         "std": sigma, "model_version": version, **dict(zip(QUANTILE_COLUMNS, q, strict=True))})
    return pd.DataFrame(rows)


def constant_panel(actual_days: int, series=("A", "B", "C", "D"), value: float = 10.0):
    """Every series at ``value`` every day from ``day(-20)`` to ``day(actual_days - 1)``."""
    dates = pd.date_range(day(-20), day(actual_days - 1), freq="D")
    frame = pd.DataFrame([(sid, d.strftime("%Y-%m-%d"), value) for sid in series for d in dates],
                         columns=["series_id", "date", "units"])
    return validate_table(frame, PipelineConfig().data, min_days=1)


# --- replay: the daily flows over the last days of level-following demand ------------------
START = dt.date(2023, 5, 12)  # day 131 of 160
SHIFT_DAY = dt.date(2023, 5, 16)


def replay_config(tmp_path, name: str, data) -> PipelineConfig:
    """A small model and a work directory of its own for a replay of ``data``."""
    path = tmp_path / f"{name}.csv"
    data.to_csv(path, index=False)
    return PipelineConfig(
        workdir=tmp_path / name,
        data={"path": path},
        window={"context_length": 14, "validation_days": 14, "test_days": 7, "min_train_days": 14},
        model={"lstm_units": (16, 8)},
        train={"epochs": 8, "batch_size": 64, "patience": 3, "kl_ramp_epochs": 2},
        # A 7-day holdout of 40 series is a small sample: a wider coverage tolerance.
        evaluation={"num_samples": 50, "fan_chart_series": 2, "coverage_tolerance": 0.1},
        serving={"num_samples": 50},
        registry={"experiment_name": f"replay-{name}", "model_name": f"replay-{name}"},
    )


def benchmark_module(name: str):
    """``benchmarks/<name>.py`` loaded as a module (the benchmarks are scripts, not part of
    the package), registered in ``sys.modules`` so its dataclasses can look it up."""
    directory = Path(__file__).resolve().parents[1] / "benchmarks"
    if str(directory) not in sys.path:  # benchmarks import their siblings, as when run as scripts
        sys.path.append(str(directory))
    path = directory / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
