"""The inventory backtest as one call: forecast every test day, simulate the rules, chart,
and (optionally) log to MLflow. Used by ``bayes-pipeline inventory-backtest`` and by the
training flow (``inventory.in_training_run``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline_lib.config import PipelineConfig
from pipeline_lib.data.validate import Panel, minimum_series_days
from pipeline_lib.errors import DataValidationError
from pipeline_lib.evaluation.plots import service_inventory_plot
from pipeline_lib.inventory.backtest import (
    InventoryBacktest,
    model_inputs,
    run_policies,
    stock_at_service,
)


@dataclass(frozen=True)
class InventoryReport:
    backtest: InventoryBacktest
    chart: Path
    table_path: Path

    def metrics(self) -> dict[str, float]:
        """Flat metrics for MLflow: ``inventory_<rule>_<measure>`` (rules a, b_textbook, b_tuned, c)."""
        keys = ("a", "b_textbook", "b_tuned", "c")
        out = {"inventory_tuned_k": self.backtest.tuned_k}
        for key, curve in zip(("a", "b", "c"), self.backtest.curves.values(), strict=True):
            out[f"inventory_{key}_stock_at_target"] = stock_at_service(curve, self.backtest.service_level)
        for key, (_, row) in zip(keys, self.backtest.table.iterrows(), strict=True):
            for measure in ("cycle_service_level", "fill_rate", "stockout_days", "units_short", "average_inventory"):
                out[f"inventory_{key}_{measure}"] = float(row[measure])
        return out

    def summary(self) -> str:
        table = self.backtest.table
        ours, tuned = table.iloc[0], table.iloc[2]
        at_target = {name: stock_at_service(curve, self.backtest.service_level)
                     for name, curve in self.backtest.curves.items()}
        return (f"(a) reaches {ours['cycle_service_level']:.1%} cycle service (target "
                f"{self.backtest.service_level:.0%}) holding {ours['average_inventory']:.1f} units on average; "
                f"the safety-factor rule tuned to the same service holds {tuned['average_inventory']:.1f} "
                f"({stock_comparison(ours['average_inventory'], tuned['average_inventory'])}). "
                f"Stock needed for exactly "
                f"{self.backtest.service_level:.0%} along each rule's sweep: "
                + ", ".join(f"{name} {value:.1f}" for name, value in at_target.items()))


def stock_comparison(ours: float, other: float) -> str:
    """``'12.3% less stock with (a)'`` or ``'8.0% more stock with (a)'``: the sign in words."""
    change = ours / other - 1.0
    if abs(change) < 5e-4:
        return "the same stock with (a)"
    return f"{abs(change):.1%} {'less' if change < 0 else 'more'} stock with (a)"


def inventory_backtest(config: PipelineConfig, model, panel: Panel, out_dir: Path,
                       progress=None) -> InventoryReport:
    """Simulate the rules over the last ``window.test_days`` of ``panel`` with ``model``
    (trained on the days before them) and write the table (CSV) and the chart (PNG)."""
    inv = config.inventory
    inputs = model_inputs(model, panel, config.window.test_days, inv.lead_time_days, inv.review_period_days,
                          config.evaluation.num_samples, config.evaluation.seed, progress)
    result = run_policies(inputs, inv.service_level, inv.lead_time_days, inv.review_period_days)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table_path = out_dir / "inventory_backtest.csv"
    result.table.to_csv(table_path, index=False)
    points = {f"({row['policy'][1]}{'*' if 'tuned' in row['policy'] else ''})":
              (row["cycle_service_level"], row["average_inventory"]) for _, row in result.table.iterrows()}
    chart = service_inventory_plot(
        result.curves, points, inv.service_level, out_dir / "inventory_service_vs_stock.png",
        title=f"Order-up-to rules, lead time {inv.lead_time_days} d, review every {inv.review_period_days} d")
    return InventoryReport(result, chart, table_path)


def ending_days_before(panel: Panel, days_before: int, config: PipelineConfig) -> Panel:
    """``panel`` up to ``days_before`` days before its last day (0: all of it), so that a
    backtest's test window, its last ``window.test_days`` days, ends there: run with 0, 28,
    56, ... for rolling test windows. Raises :class:`DataValidationError` naming the series
    the cut leaves shorter than the window needs; series that end before the cut keep all
    their days."""
    if days_before == 0:
        return panel
    last_day = panel.last_day - pd.Timedelta(days=days_before)
    cut = panel.until(last_day)
    needed = minimum_series_days(config.window)
    short = [s.series_id for s in cut.series if len(s) < needed]
    if len(cut.series) < len(panel.series) or short:
        dropped = [sid for sid in panel.series_ids if sid not in set(cut.series_ids)]
        raise DataValidationError(
            f"{panel.source}: ending the test window {days_before} days before the last day ({last_day.date()}) "
            f"leaves series {(dropped + short)[:5]} with fewer than the {needed} days each needs "
            f"(window.min_train_days + validation_days + test_days)")
    return cut


@dataclass(frozen=True)
class WindowReport:
    """One test window of :func:`train_and_simulate`: its last day, report and MLflow run."""

    last_day: date
    report: InventoryReport
    run_url: str


def train_and_simulate(config: PipelineConfig, panel: Panel, say: Callable[[str], None] = print,
                       days_before_end: int = 0, windows: int = 1) -> list[WindowReport]:
    """``bayes-pipeline inventory-backtest``: for each of ``windows`` test windows of
    ``window.test_days`` days, the first ending ``days_before_end`` days before the data's
    last day and each next one the test days earlier (:func:`ending_days_before`), train the
    model a run before the window would have served, simulate the rules through it, write
    the table and chart under ``reports/inventory`` (one folder per window's last day when
    there are several) and log them as an MLflow run of their own (no model is registered).
    Every window's cut is checked before the first trains."""
    offsets = [days_before_end + k * config.window.test_days for k in range(windows)]
    ending_days_before(panel, offsets[-1], config)  # the earliest window: the shortest history
    results = []
    for k, offset in enumerate(offsets):
        if windows > 1:
            say(f"test window {k + 1} of {windows}")
        results.append(_train_and_simulate_window(config, ending_days_before(panel, offset, config), say,
                                                  nested=windows > 1))
    return results


def rolling_summary(results: list[WindowReport]) -> str:
    """Each rule's stock for exactly the target service over the windows, mean +- sd, and in
    how many windows each rule needed the least."""
    level = results[0].report.backtest.service_level
    stocks = np.array([[stock_at_service(curve, level) for curve in r.report.backtest.curves.values()]
                       for r in results])  # (windows, rules)
    names = list(results[0].report.backtest.curves)
    # A rule whose sweep never reaches the target has no stock for it (NaN): it is never the least.
    reached = np.isfinite(stocks).any(axis=1)
    least = np.bincount(np.argmin(np.where(np.isnan(stocks), np.inf, stocks)[reached], axis=1), minlength=len(names))
    spread = ", ".join(f"{name} {np.mean(stocks[:, j]):.1f} +- {np.std(stocks[:, j], ddof=1):.1f}"
                       for j, name in enumerate(names))
    counts = ", ".join(f"{name} in {n} of {len(results)}" for name, n in zip(names, least, strict=True))
    return (f"over {len(results)} test windows, stock for exactly {level:.0%} (mean +- sd): {spread}; "
            f"least stock: {counts}")


def _train_and_simulate_window(config: PipelineConfig, panel: Panel, say: Callable[[str], None],
                               nested: bool) -> WindowReport:
    from pipeline_lib.stages import backtest_model, log_inventory_run

    inv = config.inventory
    last_day = panel.last_day.date()
    say(f"training on {len(panel.series)} series before the {config.window.test_days} test days up to {last_day}"
        + (" (evaluation fit, then the served refit on every day before them)" if config.train.refit else ""))
    trained = backtest_model(config, panel)
    from pipeline_lib.forecasting.batch import order_resolution

    warning = order_resolution(config, trained.model, config.evaluation.num_samples)
    if warning:
        say(f"warning: {warning}")
    say(f"simulating {config.window.test_days} days of ordering (lead time {inv.lead_time_days} d, "
        f"review every {inv.review_period_days} d, target {inv.service_level:.0%})")
    out_dir = config.reports_dir / "inventory" / (str(last_day) if nested else "")
    report = inventory_backtest(config, trained.model, panel, out_dir)
    return WindowReport(last_day, report, log_inventory_run(config, panel, report))
