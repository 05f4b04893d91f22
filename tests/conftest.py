"""Shared fixtures: tiny seeded synthetic data and a small, fast configuration."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from support import synthetic_demand

from pipeline_lib.config import PipelineConfig


@pytest.fixture
def small_config(tmp_path: Path) -> PipelineConfig:
    """A configuration that trains in seconds on ``synthetic_demand``."""
    return PipelineConfig(
        workdir=tmp_path / "work",
        window={"context_length": 14, "validation_days": 14, "test_days": 7, "min_train_days": 14},
        model={"lstm_units": (8, 4)},
        train={"epochs": 2, "batch_size": 64, "patience": 1, "kl_ramp_epochs": 1},
        evaluation={"num_samples": 20, "fan_chart_series": 2},
        serving={"num_samples": 20},
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
