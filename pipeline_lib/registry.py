"""The only module that talks to MLflow's tracking and model registry (hence its ~400
lines: an MLflow upgrade touches this file and no other).

MLflow's API moves quickly (stages gave way to aliases in 2.x; ``artifact_path`` became
``name`` in 3.x), so every call lives here and an upgrade touches one file.

The model is logged as code (``registry_model.py``, MLflow's models-from-code; no pickle)
with plain files as artifacts (weights, config, scalers, serving defaults and a manifest of
their sha256), and the pipeline loads it from those files with this package's code: the
``mlflow.keras`` flavour is Keras-3 only and TFP needs Keras 2.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from pipeline_lib.errors import ModelLoadError, RegistryUnavailableError, redacted_url

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
MODEL_ARTIFACT = "forecaster"
PIP_REQUIREMENTS = [
    "tensorflow==2.21.*", "tensorflow-probability==0.25.*", "tf-keras==2.21.*",
    "pandas>=2.2,<3", "numpy>=1.26,<3", "pydantic>=2.7,<3",
]


def _mlflow():
    # Imported lazily: importing mlflow costs seconds and nothing at import time should
    # depend on a tracking server.
    import mlflow

    return mlflow


# MLflow settings, unless the environment says otherwise. MLflow retries HTTP requests itself
# (urllib3 backoff); its defaults (7 retries, factor 2, 120 s timeout) can hang a run for many
# minutes when the server is down. Bounded here: about 1 + 2 + 4 s of backoff, then a clear
# error.
MLFLOW_ENV_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
    # Loading a version downloads a handful of small files: no progress bars in the daily logs.
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


def configure(tracking_uri: str) -> None:
    """Point the MLflow client at ``tracking_uri`` (registry on the same store)."""
    for key, value in MLFLOW_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    mlflow = _mlflow()
    # set_tracking_uri also exports MLFLOW_TRACKING_URI, which would then override the
    # work directory of every later config in this process; keep the user's value instead.
    previous = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    for key, value in previous.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def connection_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "MLflow is unreachable or failing", not "bug in our code"."""
    import requests
    import sqlalchemy
    from mlflow.exceptions import MlflowException

    return (MlflowException, requests.exceptions.RequestException, sqlalchemy.exc.OperationalError, OSError)


def check_reachable(tracking_uri: str) -> None:
    """Fail fast (before hours of training) when the tracking store does not answer."""
    configure(tracking_uri)
    try:
        client().search_experiments(max_results=1)
    except connection_errors() as exc:
        raise RegistryUnavailableError(
            f"MLflow tracking at {redacted_url(tracking_uri)} is unreachable ({describe_error(exc)}); "
            "nothing was trained or registered") from None


def record_failed_run(experiment_name: str, artifact_root: Path, run_name: str, stage: str, error: str) -> str | None:
    """A FAILED run that says where and why a pipeline run stopped (best effort: if MLflow
    itself is down, the original error is what matters, so this only logs)."""
    mlflow = _mlflow()
    try:
        experiment_id = ensure_experiment(experiment_name, artifact_root)
        run = mlflow.start_run(experiment_id=experiment_id, run_name=run_name,
                               tags={"pipeline": "training", "failure.stage": stage, "failure.error": error[:5000]})
        mlflow.end_run(status="FAILED")
        return run.info.run_id
    except connection_errors() as exc:
        log.warning("could not record the failed run in MLflow: %s", describe_error(exc))
        return None


def describe_error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {text[0] if text else ''}"


def ensure_experiment(name: str, artifact_root: Path) -> str:
    """Experiment id of ``name``, creating it with artifacts under ``artifact_root``."""
    mlflow = _mlflow()
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if not str(mlflow.get_tracking_uri()).startswith(("http://", "https://")):
        Path(artifact_root).mkdir(parents=True, exist_ok=True)
        location = Path(artifact_root).resolve().as_uri()
    return mlflow.create_experiment(name, artifact_location=location)


@dataclass
class TrackedRun:
    """An MLflow run opened by :func:`tracked_run`: its id, a link to it, and the model
    versions registered in it."""

    run_id: str
    url: str
    registered: list[ModelVersion] = field(default_factory=list)

    def register(self, model_uri: str, model_name: str, description: str = "") -> ModelVersion:
        """Register ``model_uri`` (logged in this run) as a new version of ``model_name``."""
        version = register(model_uri, model_name, self.run_id, description)
        self.registered.append(ModelVersion(model_name, version))
        return self.registered[-1]


@contextmanager
def tracked_run(experiment_name: str, artifact_root: Path, run_name: str,
                tags: dict[str, str] | None = None) -> Iterator[TrackedRun]:
    """One MLflow run, all or nothing: if the block raises, the run is marked FAILED
    (MLflow's context manager) and every version registered in it is deleted again, so no
    half-described version is left behind. Aliases are the caller's to move last."""
    mlflow = _mlflow()
    experiment_id = ensure_experiment(experiment_name, artifact_root)
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags) as run:
        tracked = TrackedRun(run.info.run_id, run_url(run))
        try:
            yield tracked
        except BaseException:
            for created in tracked.registered:
                _delete_quietly(created)
            raise


def _delete_quietly(version: ModelVersion) -> None:
    try:
        client().delete_model_version(version.name, version.version)
        log.warning("deleted model version %s of %s after a failure while registering it", version.version,
                    version.name)
    except connection_errors() as exc:
        log.error("could not delete the half-registered version %s of %s: %s", version.version, version.name,
                  describe_error(exc))


def log_params(params: dict) -> None:
    mlflow = _mlflow()
    flat = {k: (json.dumps(v) if isinstance(v, (list, tuple, dict)) else v) for k, v in params.items()}
    # MLflow caps a batch at 100 params.
    items = list(flat.items())
    for start in range(0, len(items), 100):
        mlflow.log_params(dict(items[start:start + 100]))


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    _mlflow().log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


def log_artifact(path: Path, folder: str | None = None) -> str:
    """Log a file to the active run; returns its artifact URI (a link or a local path)."""
    mlflow = _mlflow()
    mlflow.log_artifact(str(path), artifact_path=folder)
    name = Path(path).name
    return mlflow.get_artifact_uri(f"{folder}/{name}" if folder else name)


def set_tags(tags: dict[str, str]) -> None:
    _mlflow().set_tags(tags)


def log_dict(payload: dict, file_name: str) -> None:
    _mlflow().log_dict(payload, file_name)


def log_dataset(sample: pd.DataFrame, num_rows: int, digest: str, name: str, source: str, context: str) -> None:
    """Record a dataset the active run used (MLflow dataset tracking: name, digest, schema,
    profile and ``source``, shown on the run's page); ``context``: training or evaluation.

    Only a summary is logged: the schema is inferred from ``sample`` (a few rows with the
    data's columns and dtypes), the profile is ``num_rows`` and the digest is the caller's
    (:func:`pipeline_lib.stages.data_fingerprint`'s sha256 of every value). MLflow's own
    ``from_pandas`` inspects every value of every text column in Python to infer a schema
    (minutes at a retailer's catalogue size) and digests only the first 10,000 rows.
    """
    import warnings

    mlflow = _mlflow()
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    class SummaryDataset(MetaDataset):
        def to_dict(self) -> dict[str, str]:
            return {**super().to_dict(), "profile": json.dumps({"num_rows": num_rows,
                                                                "num_elements": num_rows * sample.shape[1]})}

    with warnings.catch_warnings():  # "source can be interpreted in multiple ways": it is a location
        warnings.simplefilter("ignore", UserWarning)
        resolved = resolve_dataset_source(source)
        schema = mlflow.data.from_pandas(sample, source=resolved, targets="target").schema
    mlflow.log_input(SummaryDataset(resolved, name=name, digest=digest[:8], schema=schema), context=context)


def run_url(run) -> str:
    """A link (server) or local path (SQLite) a person can follow to the run."""
    uri = _mlflow().get_tracking_uri()
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    return (f"{uri} (experiment {run.info.experiment_id}, run {run.info.run_id}; "
            f"open with `mlflow ui --backend-store-uri {uri}`)")


def predict_defaults(serving: dict) -> dict:
    """The served model's default prediction parameters from a ``serving`` config section
    (``ServingConfig.model_dump()``); versions saved without one get ``ServingConfig()``'s."""
    from pipeline_lib.config import ServingConfig

    serving = ServingConfig.model_validate(serving)
    return {"horizon": serving.horizon, "num_samples": serving.num_samples, "seed": serving.seed,
            "model_version": "unknown"}


MODEL_CODE = Path(__file__).with_name("registry_model.py")  # the pyfunc, logged as code
MANIFEST_FILE = "manifest.json"  # sha256 of every file of a logged model, written at registration


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def log_forecaster(forecast_model, input_example: pd.DataFrame, serving: dict) -> str:
    """Log the model to the active run, as code (:mod:`pipeline_lib.registry_model`) plus
    plain files: the model's files, ``serving`` (``ServingConfig.model_dump()``, its default
    prediction parameters) and a manifest of their sha256; returns its model URI."""
    mlflow = _mlflow()
    from mlflow.models import infer_signature

    from pipeline_lib.registry_model import DemandForecasterModel

    defaults = predict_defaults(serving)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp)
        model_dir = forecast_model.save(bundle / "model")
        serving_file = bundle / "serving.json"
        serving_file.write_text(json.dumps(serving))
        manifest = {path.relative_to(bundle).as_posix(): _sha256(path)
                    for path in sorted(bundle.rglob("*")) if path.is_file()}
        manifest[MODEL_CODE.name] = _sha256(MODEL_CODE)
        manifest_file = bundle / MANIFEST_FILE
        manifest_file.write_text(json.dumps(manifest, indent=1))
        python_model = DemandForecasterModel()
        python_model.model, python_model.defaults = forecast_model, defaults
        example_output = python_model.predict(None, input_example, {"horizon": 2, "num_samples": 20})
        signature = infer_signature(input_example, example_output, params=defaults)
        info = mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT,
            python_model=str(MODEL_CODE),
            artifacts={"model_dir": str(model_dir), "serving": str(serving_file), "manifest": str(manifest_file)},
            signature=signature,
            input_example=input_example,
            pip_requirements=PIP_REQUIREMENTS,
        )
    return info.model_uri


def register(model_uri: str, model_name: str, run_id: str, description: str = "") -> str:
    """Register ``model_uri`` as a new version of ``model_name``; returns the version."""
    mlflow = _mlflow()
    version = mlflow.register_model(model_uri, model_name, tags={"run_id": run_id})
    if description:
        client().update_model_version(model_name, version.version, description=description)
    return str(version.version)


def client():
    return _mlflow().MlflowClient()


def alias_version(model_name: str, alias: str) -> str | None:
    """Version carrying ``alias``, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client().get_model_version_by_alias(model_name, alias).version)
    except MlflowException:
        return None


def set_alias(model_name: str, alias: str, version: str) -> None:
    client().set_registered_model_alias(model_name, alias, version)


def promote_if_unchanged(model_name: str, version: str, expected: str | None) -> str | None:
    """Move ``champion`` to ``version`` only if it still points at ``expected`` (the version
    the promotion gate compared against; None: there was no champion). Returns None when it
    moved, else the version that holds the alias now (a promotion or rollback in the MLflow
    UI, or another training run, happened meanwhile: it wins).

    MLflow has no compare-and-set on aliases: the champion is re-read immediately before
    the move, so the window left is one registry round trip (milliseconds) instead of a
    training run (minutes). Training runs are also serialised (the training deployment's
    ``concurrency_limit: 1``).
    """
    current = alias_version(model_name, CHAMPION)
    if current != expected:
        return current
    set_alias(model_name, CHAMPION, version)
    return None


def tag_version(model_name: str, version: str, tags: dict[str, str]) -> None:
    c = client()
    for key, value in tags.items():
        c.set_model_version_tag(model_name, version, key, str(value))


@dataclass(frozen=True)
class ModelVersion:
    """One registered version of a model: what the pipeline holds instead of MLflow objects."""

    name: str
    version: str

    @property
    def uri(self) -> str:
        """``models:/<name>/<version>``, pinned: a promotion meanwhile cannot change what it loads."""
        return f"models:/{self.name}/{self.version}"

    def load(self):
        """The version as a :class:`~pipeline_lib.model.forecast.ForecastModel` (see :func:`load_forecaster`)."""
        return load_forecaster(self.uri)

    def tags(self) -> dict[str, str]:
        return dict(client().get_model_version(self.name, self.version).tags)

    def last_data_day(self) -> dt.date | None:
        """Last day of the data the version was trained on (tag ``data.last_date``): the drift
        reference ends there, and a replay only reuses a champion trained before its days."""
        last = self.tags().get("data.last_date")
        return dt.date.fromisoformat(last) if last else None


def champion(model_name: str) -> ModelVersion | None:
    """The version with the ``champion`` alias, or None before the first training run."""
    version = alias_version(model_name, CHAMPION)
    return None if version is None else ModelVersion(model_name, version)


def require_champion(model_name: str) -> ModelVersion:
    """The champion; a clear :class:`ModelLoadError` when there is none."""
    return resolve(f"models:/{model_name}@{CHAMPION}")


def resolve(model_uri: str) -> ModelVersion:
    """The version behind ``models:/<name>@<alias>`` or ``models:/<name>/<version>``."""
    ref = model_uri[len("models:/"):] if model_uri.startswith("models:/") else ""
    if "@" in ref:
        name, alias = ref.split("@", 1)
        version = alias_version(name, alias)
        if version is None:
            raise ModelLoadError(f"no version of model {name!r} has alias {alias!r}; run `bayes-pipeline train` "
                                 "first or move the alias in the MLflow UI")
        return ModelVersion(name, version)
    if "/" in ref:
        name, version = ref.split("/", 1)
        return ModelVersion(name, version)
    raise ModelLoadError(f"{model_uri}: only models:/<name>@<alias> or models:/<name>/<version> URIs of the "
                         "configured MLflow registry are loaded")


def load_forecaster(model_uri: str):
    """Load a registered model as a :class:`ForecastModel`, from its plain files and this
    package's code: nothing of the artifact is executed or unpickled.

    Only ``models:/`` and ``runs:/`` URIs are accepted: models come from the configured
    tracking server and registry, never from arbitrary paths or URLs. Every file is checked
    against the manifest written at registration first.

    Raises:
        ModelLoadError: the version cannot be downloaded, or a file is missing, changed
            since registration or unreadable (naming the file).
    """
    if not model_uri.startswith(("models:/", "runs:/")):
        raise ModelLoadError(f"{model_uri}: only models:/<name>@<alias>, models:/<name>/<version> or runs:/ URIs "
                             "of the configured MLflow registry are loaded")
    mlflow = _mlflow()
    from mlflow.exceptions import MlflowException

    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri))
    except (MlflowException, OSError) as exc:
        raise ModelLoadError(f"cannot load model {model_uri}: {str(exc).splitlines()[0]}") from None
    return load_model_files(local, model_uri)


def load_model_files(local: Path, label: str):
    """The :class:`ForecastModel` of a downloaded model directory (see :func:`load_forecaster`)."""
    from pipeline_lib.model.forecast import ForecastModel

    artifacts = Path(local) / "artifacts"
    try:
        manifest = json.loads((artifacts / MANIFEST_FILE).read_text())
    except FileNotFoundError:
        raise ModelLoadError(f"{label}: model file {MANIFEST_FILE} is missing (or the version was registered before "
                             "manifests, 2026-11-29: retrain it); its files cannot be verified") from None
    except (OSError, ValueError):
        raise ModelLoadError(f"{label}: model file {MANIFEST_FILE} is corrupt; the files cannot be verified") from None
    for name, digest in manifest.items():
        path = Path(local) / name if name == MODEL_CODE.name else artifacts / name
        if not path.is_file() or _sha256(path) != digest:
            raise ModelLoadError(f"{label}: model file {name} is missing or changed since the version was "
                                 "registered; move the champion alias to a healthy version")
    return ForecastModel.load(artifacts / "model")


def log_monitoring_day(experiment_name: str, artifact_root: Path, day: str, metrics: dict[str, float],
                       files: list[Path]) -> str:
    """Log one monitored day as a run of ``<experiment>-monitoring`` (a rerun of the day
    reuses its run, so metrics are overwritten rather than duplicated); returns its link."""
    import datetime as dt

    dt.date.fromisoformat(day)  # the filter below takes only a date, never free text
    mlflow = _mlflow()
    experiment_id = ensure_experiment(f"{experiment_name}-monitoring", artifact_root)
    found = client().search_runs([experiment_id], filter_string=f"tags.monitoring_day = '{day}'", max_results=1)
    run_id = found[0].info.run_id if found else None
    with mlflow.start_run(run_id=run_id, experiment_id=experiment_id, run_name=f"monitor-{day}",
                          tags=None if run_id else {"monitoring_day": day, "pipeline": "monitoring"}) as run:
        log_metrics({k: v for k, v in metrics.items() if v is not None})
        for path in files:
            log_artifact(path, "reports")
        return run_url(run)
