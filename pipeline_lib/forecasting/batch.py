"""Forecast tables from a model: the rows of the output contract plus the order columns.

One function makes them for the daily forecast (chunk by chunk, ``run_date`` rows go to the
store) and for ``bayes-pipeline forecast`` (a CSV from any registered version).
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from pipeline_lib import registry
from pipeline_lib.config import PipelineConfig
from pipeline_lib.data.validate import Panel
from pipeline_lib.inventory.policy import order_columns
from pipeline_lib.model.forecast import ForecastModel


def forecast_frame(config: PipelineConfig, model: ForecastModel, panel: Panel, horizon: int, *, seed: int,
                   model_version: str, num_samples: int | None = None, orders: bool = True) -> pd.DataFrame:
    """The next ``horizon`` days after each series' last day from ``num_samples`` joint
    sample paths (default ``serving.num_samples``): one contract row per series and day.

    ``orders``: add ``order_up_to`` (the level to order up to on that day for
    ``inventory.service_level``, from each path's demand over lead time + review period) and
    ``safety_stock`` (its excess over the mean); empty where the horizon ends too soon.
    """
    sampled = model.forecast(panel, horizon, num_samples or config.serving.num_samples, seed=seed)
    frame = sampled.to_frame(model_version)
    if not orders:
        return frame
    inventory = config.inventory
    return frame.assign(**order_columns(sampled.samples, len(panel.series), horizon, inventory.service_level,
                                        inventory.protection_days))


def order_resolution(config: PipelineConfig, model: ForecastModel, num_samples: int | None = None) -> str | None:
    """A warning when ``inventory.service_level`` asks for more than the model's orders can
    resolve, else None. An order level is the ``ceil(level K)``-th smallest of ``K`` path sums
    over the protection period, so above ``(K - 1) / K`` every target reads the largest sum;
    and above the level where the recalibration of those days (one-day, and the paths' buckets
    up to lead time + review period) reads the largest raw sample, the top samples are all that
    sample, so a higher target gives the same order."""
    samples = num_samples or config.serving.num_samples
    limits = {f"{samples} sample paths": (samples - 1) / samples}
    if model.calibration is not None:
        limits["the one-day recalibration"] = model.calibration.saturation_level()
    if model.path_calibration is not None and config.inventory.protection_days > 1:
        limits["the sample paths' recalibration"] = model.path_calibration.saturation_level(
            config.inventory.protection_days)
    cause, limit = min(limits.items(), key=lambda item: item[1])
    if config.inventory.service_level <= limit:
        return None
    return (f"inventory.service_level {config.inventory.service_level:g} is above what this model's orders resolve "
            f"(about {limit:g}, set by {cause}): order-up-to levels for {limit:g} and above are the same, so the "
            f"service reached stays near {limit:g}")


def forecast_registered(config: PipelineConfig, panel: Panel, horizon: int, model_uri: str | None = None,
                        num_samples: int | None = None, orders: bool = True,
                        say: Callable[[str], None] = print) -> pd.DataFrame:
    """:func:`forecast_frame` with a registered version: ``model_uri`` (``models:/<name>@<alias>``
    or ``models:/<name>/<version>``), by default the champion; seed ``serving.seed``."""
    registry.configure(config.tracking_uri)
    version = registry.resolve(model_uri) if model_uri else registry.require_champion(config.registry.model_name)
    say(f"forecasting {len(panel.series)} series, {horizon} days, with {version.uri}")
    model = version.load()
    warning = order_resolution(config, model, num_samples) if orders else None
    if warning:
        say(f"warning: {warning}")
    return forecast_frame(config, model, panel, horizon, seed=config.serving.seed,
                          model_version=version.version, num_samples=num_samples, orders=orders)
