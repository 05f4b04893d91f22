"""The served MLflow model as code (MLflow's models-from-code), part of the registry's door
to MLflow (:mod:`pipeline_lib.registry` logs it).

MLflow logs this file instead of a cloudpickled object: serving a version with MLflow runs
this file and the project's package, nothing unpickled. The pipeline itself never runs it:
:func:`pipeline_lib.registry.load_forecaster` reads the version's plain files directly,
after checking them against the manifest written at registration.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd


class DemandForecasterModel(mlflow.pyfunc.PythonModel):
    """Input: long-format history (``series_id, date, target, <covariates>``).
    Params: ``horizon`` (days), ``num_samples``, ``seed``, ``model_version``; defaults from
    the ``serving`` section of the config the version was trained with.
    Output: the forecast table of docs/output-contract (one row per series and day)."""

    def load_context(self, context) -> None:
        from pipeline_lib.model.forecast import ForecastModel
        from pipeline_lib.registry import predict_defaults

        self.model = ForecastModel.load(Path(context.artifacts["model_dir"]))
        serving = context.artifacts.get("serving")
        self.defaults = predict_defaults(json.loads(Path(serving).read_text()) if serving else {})

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from pipeline_lib.data.validate import panel_from_history

        params = {**self.defaults, **(params or {})}
        panel = panel_from_history(model_input, self.model.spec.covariate_names,
                                   known_covariates=self.model.spec.known_covariates)
        sampled = self.model.forecast(panel, int(params["horizon"]), int(params["num_samples"]),
                                      int(params["seed"]))
        return sampled.to_frame(str(params["model_version"]))


mlflow.models.set_model(DemandForecasterModel())
