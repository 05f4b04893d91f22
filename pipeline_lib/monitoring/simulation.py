"""What monitoring is worth: a closed-loop simulation of forecasting, ordering and upkeep.

Every simulated day ``t`` (all series share one calendar):

1. the current model makes the daily forecast flow's table from the actuals up to ``t - 1``
   (the same function, chunks and seeds: :func:`daily_forecast_table`);
2. each series' order-up-to level is the table's ``order_up_to`` for day ``t`` (the
   ``inventory.service_level`` quantile of the sample paths' demand over lead time + review
   period); stock moves by :func:`pipeline_lib.inventory.backtest.simulate` (orders arrive
   after ``L`` days, unmet demand is lost);
3. the day's actuals arrive; its PIC is the share of series whose actual lies in the
   table's central ``evaluation.nominal_level`` interval for day ``t``, and
   :class:`~pipeline_lib.monitoring.coverage.BreachRule` says whether it is a breach;
4. the maintenance policy acts; a new model forecasts from day ``t + 1``.

Demand does not depend on stock (lost sales are not censored from the actuals the
pipeline sees), so stock can be simulated after the loop from the day-by-day levels.

**Emergency replenishment**: a series and day on which demand goes unmet because the stock
ran out before the regular order arrived; a planner would expedite stock for it (counted
once per series and day). The comparison's headline is the share of these that a policy
saves against never retraining.

Policies (:data:`POLICIES`), run on the same days and the same planted demand:
``never``; ``rule`` (the source's: ``consecutive_days`` breach days in a row -> retrain,
one per streak: :func:`~pipeline_lib.monitoring.policy.retrain_decision`, the production
function); ``online_first`` (an online update first, a retrain if the streak goes on);
``weekly`` (retrain every ``every_days`` days, whatever the coverage); ``binomial`` (the rule
with the binomial breach test); ``protection`` (the rule on the orders' coverage: a day is a
breach when fewer than ``threshold`` of the series' demand over the lead time + review period
that ended that day stayed within the order-up-to level set at its start,
:func:`~pipeline_lib.monitoring.coverage.protection_covered`); ``protection_online_first``
(that trigger with an online update on the most recent days first, a retrain if the streak
goes on: the cheapest way to weight the days after a change); ``rule_rearmed`` (the rule,
but a streak that goes on after a retrain counts afresh from the day after it, so a retrained
model that still breaches is retrained again). Every retrain has the same budget
(:func:`simulation_retrain`): by default ``warm``, ``retrain_epochs`` epochs on every day so
far from the current model's weights, keeping its scalers and recalibration; ``full``, the
training run's whole protocol on every day so far.

About 500 lines: the day loop, the policies and the report (table, headline, chart) share
the scenario and policy vocabulary, and a policy is only comparable with the others through
the same loop, so they stay together.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline_lib.config import PipelineConfig
from pipeline_lib.contract import interval_columns
from pipeline_lib.data.validate import Panel
from pipeline_lib.errors import ConfigError
from pipeline_lib.evaluation.metrics import inside_interval
from pipeline_lib.inventory.backtest import SimulationResult, simulate
from pipeline_lib.monitoring.coverage import BINOMIAL, BreachRule, breach_probability, protection_covered
from pipeline_lib.monitoring.policy import ONLINE_UPDATE, RETRAIN, retrain_decision
from pipeline_lib.monitoring.replay import planted

NEVER, RULE, ONLINE_FIRST, WEEKLY, REARMED = "never", "rule", "online_first", "weekly", "rule_rearmed"
PROTECTION, PROTECTION_ONLINE = "protection", "protection_online_first"
POLICIES = (NEVER, RULE, ONLINE_FIRST, WEEKLY, BINOMIAL, REARMED, PROTECTION, PROTECTION_ONLINE)
_ON_ORDERS = (PROTECTION, PROTECTION_ONLINE)  # policies whose breaches are the orders' coverage
WARM, FULL = "warm", "full"
RETRAIN_BUDGETS = (WARM, FULL)


@dataclass(frozen=True)
class Scenario:
    """A change planted in the demand from the change day on (integer demand stays integer).

    ``factor(days_since_change)``: the multiplier on day ``d >= 0`` after the change;
    ``share``: the share of series it applies to (a seeded choice), 1 = all.
    """

    name: str
    description: str
    factor: Callable[[np.ndarray], np.ndarray]
    share: float = 1.0

    def plant(self, panel: Panel, change_day: dt.date, seed: int = 0) -> tuple[Panel, np.ndarray]:
        """``panel`` with the change applied; also the boolean ``(N,)`` mask of changed series."""
        n = len(panel.series)
        changed = np.zeros(n, dtype=bool)
        if self.share > 0:
            chosen = np.random.default_rng(seed).choice(n, size=max(1, round(self.share * n)), replace=False)
            changed[chosen] = True
        series = tuple(
            replace(s, target=planted(s.target, (s.dates - pd.Timestamp(change_day)).days.to_numpy(), self.factor))
            if changed[k] else s
            for k, s in enumerate(panel.series))
        return replace(panel, series=series), changed


SCENARIOS: dict[str, Scenario] = {
    "none": Scenario("none", "no change", lambda d: np.ones_like(d, dtype=float), share=0.0),
    "shift": Scenario("shift", "level x1.8 in every series", lambda d: np.full(d.shape, 1.8)),
    "shift_20pct": Scenario("shift_20pct", "level x1.8 in 20% of the series", lambda d: np.full(d.shape, 1.8),
                            share=0.2),
    "trend": Scenario("trend", "demand grows 1% a day", lambda d: 1.01 ** (d + 1.0)),
    "promotion": Scenario("promotion", "a one-week x2.5 promotion, then back",
                          lambda d: np.where(d < 7, 2.5, 1.0)),
}


@dataclass(frozen=True)
class ModelOps:
    """What the loop does with a model. ``forecast(model, known) -> frame``: the daily
    forecast table (contract columns plus ``order_up_to``) from the actuals in ``known``;
    ``retrain(model, known) -> model`` and ``update(model, known) -> model`` (the online
    update), ``known`` being the panel up to the day just monitored; their time is recorded."""

    forecast: Callable
    retrain: Callable
    update: Callable


def daily_forecast_table(config: PipelineConfig) -> Callable:
    """The daily forecast flow's table, chunk by chunk with the same seeds
    (``forecasting.daily.forecast_chunk``), so the simulated orders and intervals are the
    ones the flows would store for the same model and data."""
    from pipeline_lib.forecasting.daily import forecast_chunk

    def forecast(model, known: Panel) -> pd.DataFrame:
        chunks = known.chunks(config.runtime.chunk_series)
        return pd.concat([forecast_chunk(config, model, chunk, k) for k, chunk in enumerate(chunks)],
                         ignore_index=True)

    return forecast


@dataclass(frozen=True)
class SimulationSettings:
    days: int
    change_day: dt.date | None  # None: nothing planted (scenario "none")
    breach: BreachRule
    consecutive_days: int = 3
    every_days: int = 7  # the weekly policy's period
    lead_time: int = 2
    review_period: int = 1
    service_level: float = 0.95  # what the forecast's order_up_to was computed for (the report states it)

    @property
    def protection_days(self) -> int:
        return self.lead_time + self.review_period


@dataclass
class PolicyRun:
    """One policy over the simulated days: day-by-day PIC, breaches and actions, the levels
    and demand ``(T, N)``, and what upkeep cost."""

    policy: str
    dates: list[dt.date] = field(default_factory=list)
    pic: list[float] = field(default_factory=list)
    breach: list[bool] = field(default_factory=list)
    actions: dict[dt.date, str] = field(default_factory=dict)  # day -> retrain | online_update
    upkeep_seconds: float = 0.0
    levels: list[np.ndarray] = field(default_factory=list)
    demand: list[np.ndarray] = field(default_factory=list)
    covered: list[np.ndarray] = field(default_factory=list)  # (N,) per day

    def stock(self, settings: SimulationSettings) -> SimulationResult:
        """The order-up-to policy run on the day-by-day levels against the demand."""
        return simulate(np.stack(self.levels), np.stack(self.demand), settings.lead_time, settings.review_period)

    def summary(self, settings: SimulationSettings, changed: np.ndarray) -> dict:
        """The comparison's row: stock outcomes, upkeep, alarms and how fast the change was seen."""
        stock = self.stock(settings)
        dates = np.array(self.dates)
        change = settings.change_day
        before = dates < change if change else np.ones(len(dates), dtype=bool)
        after = ~before
        retrain_days = sorted(self.actions)
        breach = np.array(self.breach)
        covered = np.stack(self.covered)
        # Row t: did the level set on day t hold over its protection period (known P - 1 days later).
        held = protection_covered(np.stack(self.levels), np.stack(self.demand), settings.protection_days)
        held_after = after[:len(held)]
        return {
            "policy": self.policy,
            "emergency_replenishments": stock.stockout_days,
            "units_short": stock.units_short,
            "fill_rate": stock.fill_rate,
            "average_stock": stock.average_inventory,
            "retrains": sum(a == RETRAIN for a in self.actions.values()),
            "online_updates": sum(a == ONLINE_UPDATE for a in self.actions.values()),
            "upkeep_seconds": self.upkeep_seconds,
            "breach_days": int(breach.sum()),
            "false_alarm_breaches": int(breach[before].sum()),
            # A scheduled retrain is no alarm.
            "false_alarm_actions": (float("nan") if self.policy == WEEKLY
                                    else sum(d < change for d in retrain_days) if change else len(retrain_days)),
            "detection_delay_breach": _delay(dates[after & breach], change),
            "detection_delay_action": _delay(np.array([d for d in retrain_days if change and d >= change]), change),
            "pic_after_change": float(np.mean(np.array(self.pic)[after])) if after.any() else float("nan"),
            "pic_after_change_changed_series": (float(covered[after][:, changed].mean())
                                                if after.any() and changed.any() else float("nan")),
            "orders_held_after_change": float(held[held_after].mean()) if held_after.any() else float("nan"),
            "pic_before_change": float(np.mean(np.array(self.pic)[before])) if before.any() else float("nan"),
            "coverage_correlation": coverage_correlation(covered[before]) if before.sum() > 2 else float("nan"),
        }


def coverage_correlation(covered: np.ndarray) -> float:
    """Intra-day correlation of the series' coverage indicators, from days ``(T, N)`` of
    them: the over-dispersion of the daily covered count, ``Var = n p (1 - p) (1 + (n - 1) rho)``
    (the method-of-moments estimate; 0 for independent series). Feeds ``breach_probability``."""
    counts = covered.sum(axis=1).astype(float)
    n = covered.shape[1]
    p = counts.mean() / n
    if n < 2 or p in (0.0, 1.0):
        return float("nan")
    return float((counts.var(ddof=1) / (n * p * (1 - p)) - 1) / (n - 1))


def _delay(days: np.ndarray, change: dt.date | None) -> float:
    """Days from the change to the first of ``days`` (NaN if none or nothing planted)."""
    if change is None or len(days) == 0:
        return float("nan")
    return float((min(days) - change).days)


def run_policy(policy: str, model, panel: Panel, start: dt.date, settings: SimulationSettings, ops: ModelOps,
               progress: Callable[[str], None] | None = None) -> PolicyRun:
    """Simulate ``settings.days`` days from ``start`` with ``policy``, starting from ``model``.

    ``panel``: the demand with any planted change; every series must have data from before
    ``start`` through ``start + days - 1`` (series are on contiguous daily calendars).
    ``progress`` gets a line on every action and every 20th day.
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown maintenance policy {policy!r}; choose from {', '.join(POLICIES)}")
    origins = [int((start - pd.Timestamp(s.dates[0]).date()).days) for s in panel.series]
    if min(origins) < 1 or any(len(s) < o + settings.days for s, o in zip(panel.series, origins, strict=True)):
        raise ValueError(f"the simulated days {start} + {settings.days} must lie inside every series, after "
                         "some history")
    breach_rule = replace(settings.breach, rule=BINOMIAL) if policy == BINOMIAL else settings.breach
    lower, upper = interval_columns(settings.breach.level)
    orders_rule = replace(settings.breach, level=settings.service_level)
    period = settings.protection_days
    run = PolicyRun(policy)
    breaches: dict[dt.date, bool] = {}
    claimed: set[dt.date] = set()
    for t in range(settings.days):
        day = start + dt.timedelta(days=t)
        known = panel.truncate([o + t for o in origins])
        frame = ops.forecast(model, known)
        today = frame[frame["date"] == pd.Timestamp(day)].set_index("series_id").reindex(panel.series_ids)
        if today["order_up_to"].isna().any():
            raise ValueError(f"no order level for {day}: serving.horizon must cover lead time + review period")
        actual = np.array([s.target[o + t] for s, o in zip(panel.series, origins, strict=True)], dtype=float)
        covered = inside_interval(actual, today[lower].to_numpy(), today[upper].to_numpy())
        run.dates.append(day)
        run.pic.append(float(covered.mean()))
        run.covered.append(covered)
        run.levels.append(today["order_up_to"].to_numpy(dtype=float))
        run.demand.append(actual)
        if policy not in _ON_ORDERS:
            breaches[day] = breach_rule(int(covered.sum()), len(covered))
        elif t + 1 >= period:  # the level set `period - 1` days ago has met all its demand today
            held = protection_covered(np.stack(run.levels[-period:]), np.stack(run.demand[-period:]), period)[0]
            breaches[day] = orders_rule(int(held.sum()), len(held))
        else:
            breaches[day] = False
        run.breach.append(breaches[day])

        action = _action(policy, t, day, breaches, claimed, settings, max(run.actions, default=None))
        if action is not None:
            seen = panel.truncate([o + t + 1 for o in origins])
            started = time.perf_counter()
            model = ops.update(model, seen) if action == ONLINE_UPDATE else ops.retrain(model, seen)
            run.upkeep_seconds += time.perf_counter() - started
            run.actions[day] = action
        if progress and (action or (t + 1) % 20 == 0):
            progress(f"  {policy}, day {t + 1}/{settings.days} ({day}): PIC {covered.mean():.0%}"
                     + (" breach" if breaches[day] else "") + (f" -> {action}" if action else ""))
    return run


def run_from_store(store, panel: Panel, start: dt.date, days: int, policy: str,
                   breach: BreachRule) -> PolicyRun:
    """The same record, read from what the real flows stored (a ``bayes-pipeline replay`` of
    ``panel``'s days): each day's order levels from the one-day-ahead forecasts, the
    monitoring's PIC and breach flag, and its retrains. ``upkeep_seconds`` stays 0: the
    flows' retrains ran in the training flow."""
    coverage = store.coverage().set_index("day")
    events = store.table("retrain_events")
    lower, upper = interval_columns(breach.level)
    run = PolicyRun(policy)
    origins = [int((start - pd.Timestamp(s.dates[0]).date()).days) for s in panel.series]
    for t in range(days):
        day = start + dt.timedelta(days=t)
        rows = store.forecasts_for(day)
        today = rows[rows["horizon"] == 1].set_index("series_id").reindex(panel.series_ids)
        actual = np.array([s.target[o + t] for s, o in zip(panel.series, origins, strict=True)], dtype=float)
        run.dates.append(day)
        run.pic.append(float(coverage.loc[day, "picp"]))
        run.breach.append(bool(coverage.loc[day, "breach"]))
        run.covered.append(inside_interval(actual, today[lower].to_numpy(), today[upper].to_numpy()))
        run.levels.append(today["order_up_to"].to_numpy(dtype=float))
        run.demand.append(actual)
    for _, event in events.iterrows():
        if start <= event["triggered_on"] < start + dt.timedelta(days=days):
            run.actions[event["triggered_on"]] = ONLINE_UPDATE if event["mode"] == ONLINE_UPDATE else RETRAIN
    return run


def _action(policy: str, t: int, day: dt.date, breaches: dict, claimed: set, settings: SimulationSettings,
            last_action: dt.date | None):
    if policy == NEVER:
        return None
    if policy == WEEKLY:
        return RETRAIN if (t + 1) % settings.every_days == 0 else None
    if policy == REARMED and last_action is not None:
        # Only the new model's own breaches count: a streak that goes on after a retrain
        # is judged afresh, and retrains again after consecutive_days more breach days.
        breaches = {d: b for d, b in breaches.items() if d > last_action}
    decision = retrain_decision(breaches, day, settings.consecutive_days, claimed,
                                online_update_first=policy in (ONLINE_FIRST, PROTECTION_ONLINE))
    if decision.response is None:
        return None
    claimed.add(decision.claim_key)
    return decision.response


def comparison_table(rows: list[dict]) -> str:
    """Markdown table of :meth:`PolicyRun.summary` rows (one scenario)."""
    columns = [("policy", "policy", "{}"), ("emergency_replenishments", "emergency repl.", "{:d}"),
               ("units_short", "units short", "{:.0f}"), ("fill_rate", "fill rate", "{:.3f}"),
               ("average_stock", "avg stock", "{:.1f}"), ("retrains", "retrains", "{:d}"),
               ("online_updates", "online upd.", "{:d}"), ("upkeep_seconds", "upkeep s", "{:.0f}"),
               ("false_alarm_actions", "false alarms (actions)", "{:d}"),
               ("false_alarm_breaches", "false breach days", "{:d}"),
               ("detection_delay_breach", "delay to breach (d)", "{:.0f}"),
               ("detection_delay_action", "delay to action (d)", "{:.0f}"),
               ("pic_after_change", "PIC after", "{:.3f}"),
               ("pic_after_change_changed_series", "PIC after, changed series", "{:.3f}"),
               ("orders_held_after_change", "orders held after", "{:.3f}")]
    lines = ["| " + " | ".join(title for _, title, _ in columns) + " |",
             "|" + "---|" * len(columns)]
    for row in rows:
        cells = []
        for key, _, fmt in columns:
            value = row[key]
            cells.append("-" if isinstance(value, float) and np.isnan(value) else fmt.format(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def saved_against_never(rows: list[dict], policy: str = RULE) -> float | None:
    """Share of the never-retrain policy's emergency replenishments that ``policy`` saved
    (negative: it caused more); None without both rows or with none to save."""
    by = {r["policy"]: r for r in rows}
    if NEVER not in by or policy not in by or by[NEVER]["emergency_replenishments"] == 0:
        return None
    never = by[NEVER]["emergency_replenishments"]
    return (never - by[policy]["emergency_replenishments"]) / never


@dataclass(frozen=True)
class ScenarioResult:
    scenario: Scenario
    change_day: dt.date | None
    rows: list[dict]
    chart: Path


def run_matrix(config: PipelineConfig, panel: Panel, start: dt.date, days: int, change_after: int,
               scenarios: list[str], policies: list[str], retrain_epochs: int, out_dir: Path,
               say: Callable[[str], None] = print, retrain_budget: str = WARM) -> list[ScenarioResult]:
    """Every scenario x policy on the same days, all starting from one model: the served
    model a training run on ``start - 1`` would make (``stages.fit_served``). Changes are
    planted ``change_after`` days after ``start``; every retrain has ``retrain_budget``
    (:func:`simulation_retrain`). Writes a chart per scenario and ``simulation.md`` /
    ``simulation.json`` to ``out_dir``; nothing touches MLflow or the store.
    """
    from pipeline_lib import stages
    from pipeline_lib.evaluation.plots import simulation_plot
    from pipeline_lib.model.online import online_update, update_windows

    retrain = simulation_retrain(config, retrain_budget, retrain_epochs)  # refuses an unknown budget first
    unknown = [s for s in scenarios if s not in SCENARIOS] + [p for p in policies if p not in POLICIES]
    if unknown:
        raise ConfigError(f"unknown scenario or policy {', '.join(map(repr, unknown))}; scenarios: "
                          f"{', '.join(SCENARIOS)}; policies: {', '.join(POLICIES)}")
    if not 0 <= change_after < days:
        raise ConfigError(f"--change-after must lie in 0 .. {days - 1}, got {change_after}")
    mon = config.monitoring
    settings = SimulationSettings(
        days=days, change_day=None, breach=BreachRule.of(config), consecutive_days=mon.consecutive_days,
        lead_time=config.inventory.lead_time_days, review_period=config.inventory.review_period_days,
        service_level=config.inventory.service_level)
    say(f"training the starting model on the days before {start}")
    started = time.perf_counter()
    initial = stages.fit_served(config, panel.until(start - dt.timedelta(days=1)), progress=False).model
    say(f"  trained in {time.perf_counter() - started:.0f} s")

    def update(model, seen: Panel):
        last = max(pd.Timestamp(s.dates[-1]).date() for s in seen.series)
        windows = update_windows(model, seen, stages.recent_days(seen, last, mon.online_update_days))
        return online_update(model, windows, seed=mon.seed)

    ops = ModelOps(daily_forecast_table(config), retrain, update)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for name in scenarios:
        scenario = SCENARIOS[name]
        change_day = None if scenario.share == 0 else start + dt.timedelta(days=change_after)
        planted, changed = (scenario.plant(panel, change_day, seed=config.monitoring.seed) if change_day
                            else (panel, np.zeros(len(panel.series), dtype=bool)))
        scenario_settings = replace(settings, change_day=change_day)
        rows, runs = [], {}
        for policy in policies:
            clock = time.perf_counter()
            run = run_policy(policy, initial, planted, start, scenario_settings, ops, progress=say)
            runs[policy] = run
            rows.append({"scenario": name, **run.summary(scenario_settings, changed),
                         "seconds": time.perf_counter() - clock})
            row = rows[-1]
            say(f"{name} / {policy}: {row['emergency_replenishments']} emergency replenishments, "
                f"{row['retrains']} retrains, {row['online_updates']} online updates "
                f"({row['seconds']:.0f} s)")
        chart = simulation_plot(
            {p: pd.Series(r.pic, index=r.dates) for p, r in runs.items()},
            {p: pd.Series((r.stock(scenario_settings).short > 1e-9).sum(axis=1), index=r.dates)
             for p, r in runs.items()},
            {p: sorted(r.actions) for p, r in runs.items()}, settings.breach.threshold,
            out_dir / f"simulation-{name}.png", change_day, title=f"{scenario.description}")
        results.append(ScenarioResult(scenario, change_day, rows, chart))
    write_report(results, out_dir, start, days, retrain_epochs, len(panel.series), settings, retrain_budget,
                 seconds=time.perf_counter() - started)
    return results


def simulation_retrain(config: PipelineConfig, budget: str, epochs: int) -> Callable:
    """``retrain(model, seen) -> model``, the same for every policy. ``warm``:
    :func:`~pipeline_lib.stages.warm_refit`, ``epochs`` epochs on every day of ``seen`` from
    ``model``'s weights, its scalers and recalibration kept (seconds per retrain). ``full``: what
    a training run on the day would serve (:func:`~pipeline_lib.stages.fit_served`: an
    evaluation fit with early stopping, the refit on every day with scalers refitted, the
    recalibration fitted on the evaluation fit's holdout), about ten times the warm cost;
    ``model`` is not read and ``epochs`` does not apply."""
    from pipeline_lib import stages

    if budget == WARM:
        return lambda model, seen: stages.warm_refit(config, seen, model, epochs)
    if budget == FULL:
        return lambda model, seen: stages.fit_served(config, seen, progress=False).model
    raise ConfigError(f"unknown retrain budget {budget!r}; budgets: {', '.join(RETRAIN_BUDGETS)}")


def _false_alarm_note(rows: list[dict], n_series: int, settings: SimulationSettings) -> list[str]:
    """Measured against expected breach days of the unchanged scenario (the never policy:
    the starting model throughout)."""
    row = next((r for r in rows if r["policy"] == NEVER), None)
    if row is None or np.isnan(row["coverage_correlation"]):
        return []
    rho = max(row["coverage_correlation"], 0.0)
    independent = breach_probability(settings.breach, n_series)
    correlated = breach_probability(settings.breach, n_series, rho)
    return [f"False alarms: the unchanged model breached on {row['breach_days']} of {settings.days} days "
            f"({row['breach_days'] / settings.days:.1%}); a calibrated model would on {independent:.1%} of days "
            f"with independent series, {correlated:.1%} with the measured intra-day coverage correlation "
            f"{rho:.3f} (mean PIC {row['pic_before_change']:.3f}).", ""]


def write_report(results: list[ScenarioResult], out_dir: Path, start: dt.date, days: int, retrain_epochs: int,
                 n_series: int, settings: SimulationSettings, retrain_budget: str = WARM,
                 seconds: float | None = None) -> Path:
    """``simulation.md`` (a table per scenario, the headline) and ``simulation.json``;
    ``seconds``: the whole run's time, stated with the date and the machine."""
    budget = (f"warm start from the current model (its scalers and recalibration kept), {retrain_epochs} epochs "
              "on every day so far" if retrain_budget == WARM else
              "a full training run on every day so far (evaluation fit with early stopping, refit on every day, "
              "recalibration on the evaluation fit's holdout)")
    lines = [f"# Closed-loop simulation, {start} + {days} days, {n_series} series",
             "",
             f"Run on {dt.date.today()}, {platform.machine()}, {os.cpu_count()} cores"
             + (f", in {seconds / 60:.1f} minutes (starting model included)." if seconds is not None else "."),
             "",
             f"Retrain budget (every policy): {budget}. Orders: cycle service {settings.service_level:.0%}, "
             f"lead time {settings.lead_time} d, review every {settings.review_period} d. "
             f"Breach: {settings.breach.describe()}, {settings.consecutive_days} days in a row -> action.",
             ""]
    for result in results:
        lines += [f"## {result.scenario.name}: {result.scenario.description}"
                  + (f" from {result.change_day}" if result.change_day else ""), "",
                  comparison_table(result.rows), ""]
        saved = saved_against_never(result.rows)
        if saved is not None:
            lines += [f"The rule (PIC < {settings.breach.threshold:.0%} for {settings.consecutive_days} days -> "
                      f"retrain) had {abs(saved):.0%} {'fewer' if saved >= 0 else 'more'} emergency "
                      "replenishments than never retraining.", ""]
        if result.change_day is None:
            lines += _false_alarm_note(result.rows, n_series, settings)
        lines += [f"![{result.scenario.name}]({result.chart.name})", ""]
    path = out_dir / "simulation.md"
    path.write_text("\n".join(lines))
    (out_dir / "simulation.json").write_text(json.dumps(
        [{"scenario": r.scenario.name, "change_day": str(r.change_day), "rows": r.rows} for r in results],
        indent=1, default=float))
    return path
