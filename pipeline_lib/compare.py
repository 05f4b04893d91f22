"""One backtest for every technique of the toolbox: ``bayes-pipeline compare``.

Every variant trains on the same split of the same panel (``window`` of the config) and is
scored on the same test days, one day ahead, by :func:`stages.evaluate` (recalibrated
when ``evaluation.recalibrate`` is on, as served). Variants are config overrides of the
base configuration, plus two that are derived from the trained base model:

- ``distilled``: a ``tf_keras`` LSTM student of the base model (:mod:`model.distill`);
- ``mcmc_output_layer``: HMC over the base model's output layer (:mod:`model.mcmc`).

Times are wall-clock seconds on this machine: ``train_seconds`` (for the derived variants:
the distillation / the sampling, not the base model's training) and ``predict_seconds``
(Monte Carlo samples of every test window).
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline_lib import stages
from pipeline_lib.config import PipelineConfig
from pipeline_lib.data.features import actuals_for, build_windows, part_days
from pipeline_lib.data.validate import Panel
from pipeline_lib.errors import ConfigError
from pipeline_lib.model.forecast import SampledForecast
from pipeline_lib.model.heads import HEADS

BASE = "bayes_normal"
# Each variant changes one thing against the Normal-head base (which the distilled student
# and the MCMC output layer need: both work in model space), whatever ``head: auto`` picks.
CONFIG_VARIANTS: dict[str, dict] = {
    BASE: {"model": {"head": "normal"}},
    "head_student_t": {"model": {"head": "student_t"}},
    "head_count": {"model": {"head": "count"}},
    "head_count_mixture": {"model": {"head": "count_mixture"}},
    "head_quantile": {"model": {"head": "quantile"}},
    "prior_student_t": {"model": {"head": "normal", "prior": "student_t"}},
    "prior_scale_mixture": {"model": {"head": "normal", "prior": "scale_mixture"}},
    "attention": {"model": {"head": "normal", "attention_units": 16}},
}
DERIVED_VARIANTS = ("distilled", "mcmc_output_layer")
ALL_VARIANTS = (*CONFIG_VARIANTS, *DERIVED_VARIANTS)
COLUMNS = ("variant", "picp_80", "picp_90", "picp_95", "mpiw_95", "crps", "crps_scaled", "mase", "mae",
           "train_seconds", "predict_seconds", "note")
_METRICS = COLUMNS[1:9]


def check_variants(names: list[str]) -> list[str]:
    unknown = [n for n in names if n not in ALL_VARIANTS]
    if unknown:
        raise ConfigError(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(ALL_VARIANTS)}")
    if not names:
        raise ConfigError("no variants to compare")
    return names


@dataclass
class _Scored:
    metrics: dict[str, float]
    train_seconds: float
    predict_seconds: float
    note: str = ""


def _score(config: PipelineConfig, model, panel: Panel, train_seconds: float, note: str = "") -> _Scored:
    started = time.perf_counter()
    raw = SampledForecast.concat([stages.sample_test_chunk(config, model, chunk, k)
                                  for k, chunk in enumerate(panel.chunks(config.runtime.chunk_series))])
    predict_seconds = time.perf_counter() - started
    evaluation = stages.evaluate(config, model, panel, raw, by_horizon=False)
    return _Scored(evaluation.metrics, train_seconds, predict_seconds, note)


def compare(config: PipelineConfig, panel: Panel, variants: list[str],
            say: Callable[[str], None] = print, progress: bool = True) -> pd.DataFrame:
    """Backtest ``variants`` on ``panel``; one row per variant (see ``COLUMNS``)."""
    check_variants(variants)
    heads = {v: CONFIG_VARIANTS.get(v, {}).get("model", {}).get("head") for v in variants}
    counting = [v for v, head in heads.items() if head in HEADS and HEADS[head].needs_counts]
    if counting and not all(np.array_equal(s.target, np.round(s.target)) for s in panel.series):
        say(f"skipping {', '.join(counting)}: the targets are not whole numbers (a count head needs counts)")
        variants = [v for v in variants if v not in counting]
    needs_base = any(v in DERIVED_VARIANTS for v in variants)
    ordered = ([BASE] if needs_base and BASE not in variants else []) + list(variants)
    # Every variant's configuration is validated before anything trains (e.g. the count head
    # on data with negative targets fails here, not after an hour of other variants).
    configs = {name: config.updated(**CONFIG_VARIANTS[name]) for name in ordered if name in CONFIG_VARIANTS}
    rows, base = [], None
    for k, name in enumerate(ordered):
        say(f"[{k + 1}/{len(ordered)}] {name}")
        if name in CONFIG_VARIANTS:
            variant_config = configs[name]
            started = time.perf_counter()
            trained = stages.train(variant_config, panel, progress=progress)
            scored = _score(variant_config, trained.model, panel, time.perf_counter() - started,
                            f"{trained.training.epochs_run} epochs")
            if name == BASE:
                base = trained.model
            if name not in variants:
                continue
        elif name == "distilled":
            scored = _distilled(config, panel, base)
        else:
            scored = _mcmc(config, panel, base)
        row = {"variant": name, **{c: scored.metrics.get(c) for c in _METRICS},
               "train_seconds": scored.train_seconds, "predict_seconds": scored.predict_seconds, "note": scored.note}
        rows.append(row)
        say(f"    PICP95 {row['picp_95']:.3f}  CRPS(scaled) {row['crps_scaled']:.3f}  MASE {row['mase']:.3f}  "
            f"train {row['train_seconds']:.0f} s  predict {row['predict_seconds']:.1f} s")
    return pd.DataFrame(rows, columns=list(COLUMNS))


def _windows(config: PipelineConfig, panel: Panel, model, part: str):
    return build_windows(panel, model.scalers, model.spec, config.window, part)


def _distilled(config: PipelineConfig, panel: Panel, teacher) -> _Scored:
    from pipeline_lib.model.distill import distill

    started = time.perf_counter()
    student = distill(teacher, _windows(config, panel, teacher, "train"),
                      _windows(config, panel, teacher, "validation"),
                      seed=config.train.seed, progress=False)
    if config.evaluation.recalibrate:
        student.calibration = stages.fit_recalibration(config, student, panel)
    seconds = time.perf_counter() - started
    # How close the point forecasts are: the student's median against the teacher's, both raw.
    days = part_days(panel, config.window, "test")
    teacher_point = np.median(teacher.one_step(panel, days, config.evaluation.num_samples,
                                               seed=config.evaluation.seed, calibrated=False).samples, axis=0)
    student_point = np.median(student.one_step(panel, days, config.evaluation.num_samples,
                                               seed=config.evaluation.seed, calibrated=False).samples, axis=0)
    actuals, _ = actuals_for(panel, days)
    gap = float(np.mean(np.abs(student_point - teacher_point)))
    teacher_mae = float(np.mean(np.abs(teacher_point - actuals)))
    return _score(config, student, panel, seconds,
                  f"student of {BASE}, {len(student.history.get('loss', []))} epochs; median differs from the "
                  f"teacher's by {gap:.2f} units on average ({gap / max(teacher_mae, 1e-12):.0%} of the teacher's MAE)")


def _mcmc(config: PipelineConfig, panel: Panel, base) -> _Scored:
    from pipeline_lib.model.mcmc import OutputLayerHmc, spread_ratio

    started = time.perf_counter()
    train = _windows(config, panel, base, "train")
    hmc = OutputLayerHmc.fit(base, train, seed=config.train.seed)
    if config.evaluation.recalibrate:
        hmc.calibration = stages.fit_recalibration(config, hmc, panel)
    ratio = spread_ratio(base, hmc, _windows(config, panel, base, "test"))
    return _score(config, hmc, panel, time.perf_counter() - started,
                  f"HMC on {BASE}'s output layer, acceptance {hmc.result.acceptance:.2f}, "
                  f"epistemic spread HMC/VI {ratio:.2f}")


def machine_description() -> str:
    return f"{platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"


def compare_to_files(config: PipelineConfig, panel: Panel, variants: list[str],
                     say: Callable[[str], None] = print) -> tuple[Path, Path]:
    """``bayes-pipeline compare``: :func:`compare`, then :func:`write_table` under
    ``<workdir>/compare``."""
    return write_table(compare(config, panel, variants, say=say), config.workdir / "compare",
                       config.data.source_name())


def write_table(frame: pd.DataFrame, directory: Path, source: str) -> tuple[Path, Path]:
    """``comparison.csv`` and ``comparison.md`` (with date, machine and data source)."""
    directory.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = directory / "comparison.csv", directory / "comparison.md"
    frame.to_csv(csv_path, index=False)
    shown = frame.copy()
    for column in _METRICS:
        shown[column] = shown[column].map(lambda v: f"{v:.3f}")
    for column in ("train_seconds", "predict_seconds"):
        shown[column] = shown[column].map(lambda v: f"{v:.1f}")
    header = "| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS) + "\n"
    body = "".join("| " + " | ".join(str(r[c]) for c in COLUMNS) + " |\n" for _, r in shown.iterrows())
    md_path.write_text(
        f"# Model comparison\n\n- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n- machine: {machine_description()}\n"
        f"- data: {source}\n- one-day-ahead forecasts of every test day; PICP / MPIW of central intervals, "
        "CRPS and MAE (of the median) in units, CRPS and MASE scaled by each series' seasonal-naive error\n\n"
        + header + body)
    return csv_path, md_path
