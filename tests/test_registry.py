"""The registry's vocabulary on a throwaway SQLite MLflow: champion lookup, URIs, and
registration that is all or nothing."""

from __future__ import annotations

import mlflow
import pandas as pd
import pytest

from pipeline_lib import registry
from pipeline_lib.config import ServingConfig
from pipeline_lib.errors import ModelLoadError


class _Constant(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        return model_input  # typed as the served model is (an untyped predict makes MLflow warn)


@pytest.fixture
def tracking(tmp_path):
    registry.configure(f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path / "artifacts"


def _log_model() -> str:
    return mlflow.pyfunc.log_model(name="m", python_model=_Constant()).model_uri


def test_champion_lookup_and_uris(tracking):
    assert registry.champion("demand") is None
    with pytest.raises(ModelLoadError, match="no version of model 'demand' has alias 'champion'"):
        registry.require_champion("demand")
    with registry.tracked_run("exp", tracking, "run") as run:
        version = run.register(_log_model(), "demand", "first")
        registry.tag_version("demand", version.version, {"data.last_date": "2024-03-01"})
        registry.set_alias("demand", registry.CHAMPION, version.version)
    champion = registry.require_champion("demand")
    assert champion == registry.champion("demand") == registry.ModelVersion("demand", "1")
    assert champion.uri == "models:/demand/1" and str(champion.last_data_day()) == "2024-03-01"
    assert registry.resolve("models:/demand@champion") == registry.resolve("models:/demand/1") == champion
    with pytest.raises(ModelLoadError, match="only models:/"):
        registry.resolve("/tmp/model.pkl")


def test_a_failure_inside_a_tracked_run_leaves_no_version_and_marks_the_run_failed(tracking):
    with pytest.raises(RuntimeError, match="tagging failed"), registry.tracked_run("exp", tracking, "run") as run:
        run.register(_log_model(), "demand")
        assert registry.client().get_model_version("demand", "1")  # it existed ...
        raise RuntimeError("tagging failed")
    assert registry.client().search_model_versions("name='demand'") == []  # ... and is gone
    failed = registry.client().get_run(run.run_id)
    assert failed.info.status == "FAILED"


def test_served_model_defaults_come_from_the_serving_section():
    assert registry.predict_defaults({}) == {"horizon": 7, "num_samples": 100, "seed": 11, "model_version": "unknown"}
    defaults = registry.predict_defaults(ServingConfig(num_samples=40, horizon=3).model_dump())
    assert (defaults["num_samples"], defaults["horizon"]) == (40, 3)
