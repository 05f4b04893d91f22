"""Shared fixtures: tiny seeded synthetic data and a small, fast configuration."""

from __future__ import annotations

import json
import os
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from pipeline_lib.config import PipelineConfig


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


@pytest.fixture
def small_config(tmp_path: Path) -> PipelineConfig:
    """A configuration that trains in seconds on ``synthetic_demand``."""
    return PipelineConfig(
        workdir=tmp_path / "work",
        window={"context_length": 14, "validation_days": 14, "test_days": 7, "min_train_days": 14},
        model={"lstm_units": (8, 4)},
        train={"epochs": 2, "batch_size": 64, "patience": 1, "kl_ramp_epochs": 1},
        evaluation={"num_samples": 20, "fan_chart_series": 2},
        registry={"experiment_name": "test-experiment", "model_name": "test-model"},
    )


@pytest.fixture(scope="module")
def prefect_harness():
    """A temporary Prefect server for the flow tests of one module."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def synthetic_csv(tmp_path: Path) -> Path:
    path = tmp_path / "demand.csv"
    synthetic_demand().to_csv(path, index=False)
    return path


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
def webhook_receiver(path: str = "/alerts"):
    """A JSON endpoint on 127.0.0.1 for alert tests: yields its URL and the received bodies."""
    received: list[dict] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
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


def run_concurrently(target, copies: int) -> None:
    """Start ``copies`` threads running ``target`` at once and wait for all of them."""
    threads = [threading.Thread(target=target) for _ in range(copies)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
