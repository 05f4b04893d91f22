"""The closed-loop simulation where the answers are known: Poisson demand at fixed levels,
a model that knows them (calibrated), and a "retrain" that re-estimates them from the last
week. No network is trained: this checks the loop, the policies and the bookkeeping through
the product's forecast table; the Bayesian LSTM's numbers are in
benchmarks/simulation_bundled/simulation.md, and tests/test_replay.py checks the loop
against the real flows."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from pipeline_lib.config import PipelineConfig
from pipeline_lib.data.validate import Panel, Series
from pipeline_lib.forecasting.batch import forecast_frame
from pipeline_lib.model.forecast import SampledForecast
from pipeline_lib.monitoring.coverage import BINOMIAL, BreachRule, breach_probability, protection_covered
from pipeline_lib.monitoring.policy import ONLINE_UPDATE, RETRAIN
from pipeline_lib.monitoring.simulation import (
    SCENARIOS,
    ModelOps,
    ScenarioResult,
    SimulationSettings,
    coverage_correlation,
    run_policy,
    saved_against_never,
    write_report,
)

START = dt.date(2024, 4, 1)
N_SERIES, HISTORY, DAYS = 50, 60, 60


class LevelModel:
    """Poisson sample paths at known per-series levels, in ForecastModel.forecast's layout,
    so the product's daily forecast table (quantiles, order levels) is built from them."""

    def __init__(self, levels: np.ndarray):
        self.levels = np.asarray(levels, dtype=float)

    def forecast(self, panel, horizon, num_samples, seed=0, calibrated=True) -> SampledForecast:
        paths = np.random.default_rng(seed).poisson(self.levels[None, :, None], (num_samples, len(self.levels),
                                                                                  horizon))
        dates = [s.dates[-1] + pd.Timedelta(days=h + 1) for s in panel.series for h in range(horizon)]
        ids = [s.series_id for s in panel.series for _ in range(horizon)]
        return SampledForecast(paths.reshape(num_samples, -1).astype(float), np.array(ids), np.array(dates),
                               np.full(len(ids), np.nan))


# The daily forecast flow's table: 200 paths (the seed changes by day, as the flow's does not:
# a fixed seed would repeat the same Poisson draws for a model that never changes).
CONFIG = PipelineConfig(serving={"num_samples": 200, "horizon": 3})


def _refit_on_last_week(model, seen: Panel) -> LevelModel:
    return LevelModel([s.target[-7:].mean() for s in seen.series])


def _panel(seed: int = 0) -> tuple[Panel, np.ndarray]:
    rng = np.random.default_rng(seed)
    levels = rng.uniform(5, 60, N_SERIES)
    dates = pd.date_range(START - dt.timedelta(days=HISTORY), periods=HISTORY + DAYS, freq="D")
    series = tuple(Series(f"S{k}", dates, rng.poisson(levels[k], len(dates)).astype(float), np.zeros((len(dates), 0)))
                   for k in range(N_SERIES))
    return Panel(series, (), "synthetic"), levels


def _settings(change_day=None, rule: str = "threshold") -> SimulationSettings:
    return SimulationSettings(days=DAYS, change_day=change_day, breach=BreachRule(0.95, 0.9, rule, 0.01))


def _forecast(model, known: Panel) -> pd.DataFrame:
    day = (max(s.dates[-1] for s in known.series) - pd.Timestamp(START)).days
    return forecast_frame(CONFIG, model, known, CONFIG.serving.horizon, seed=HISTORY + day, model_version="1")


OPS = ModelOps(forecast=_forecast, retrain=_refit_on_last_week,
               update=lambda model, seen: LevelModel(0.5 * model.levels + 0.5 * _refit_on_last_week(model,
                                                                                                  seen).levels))


@pytest.mark.parametrize("policy", ["rule", "protection"])
def test_a_calibrated_model_without_change_is_never_retrained(policy):
    """60 days, 50 series, the true levels: the rule stays quiet. A breach day has
    probability breach_probability(...) = 3.8% (binomial, 50 series), three in a row about
    5e-5 a day; the breach days seen stay within the binomial's 99.9% bound. The same for
    the rule on the orders' coverage (a 95% order level holds at least 95% of the time)."""
    panel, levels = _panel()
    run = run_policy(policy, LevelModel(levels), panel, START, _settings(), OPS)
    summary = run.summary(_settings(), np.zeros(N_SERIES, dtype=bool))
    assert summary["retrains"] == 0 and summary["false_alarm_actions"] == 0
    assert summary["pic_before_change"] > 0.94
    p_breach = breach_probability(BreachRule(0.95, 0.9), N_SERIES)
    assert p_breach == pytest.approx(0.038, abs=0.001)
    assert summary["breach_days"] <= stats.binom.ppf(0.999, DAYS, p_breach)
    assert abs(summary["coverage_correlation"]) < 0.02  # independent series


def test_coverage_correlation_recovers_a_planted_correlation():
    rng = np.random.default_rng(1)
    p = rng.beta(0.95 * 19, 0.05 * 19, 4000)  # intra-class correlation 1 / (19 + 1) = 0.05
    covered = rng.random((4000, 50)) < p[:, None]
    assert coverage_correlation(covered) == pytest.approx(0.05, abs=0.01)
    assert coverage_correlation(rng.random((4000, 50)) < 0.95) == pytest.approx(0.0, abs=0.005)


def test_a_planted_shift_is_retrained_on_its_third_breach_day_and_saves_stockouts():
    panel, levels = _panel()
    change = START + dt.timedelta(days=10)
    planted, changed = SCENARIOS["shift"].plant(panel, change)
    assert changed.all()
    rows = {}
    for policy in ("never", "rule", "online_first", "weekly", "rule_rearmed", "protection"):
        run = run_policy(policy, LevelModel(levels), planted, START, _settings(change), OPS)
        rows[policy] = run.summary(_settings(change), changed) | {"actions": run.actions}
    rule = rows["rule"]
    # Every day from the change is a breach for the stale model: the third one retrains.
    assert rule["detection_delay_breach"] == 0
    assert rule["detection_delay_action"] == 2 and rule["actions"] == {change + dt.timedelta(days=2): RETRAIN}
    assert rule["false_alarm_actions"] == 0
    assert rows["online_first"]["actions"][change + dt.timedelta(days=2)] == ONLINE_UPDATE
    assert rows["never"]["retrains"] == 0 and rows["weekly"]["retrains"] == DAYS // 7
    # The retrained model learned from a week with 3 shifted days: better, still short, and
    # the streak it is part of never ends, so the rule does not act again.
    never = rows["never"]["emergency_replenishments"]
    assert rule["emergency_replenishments"] < never
    assert rule["pic_after_change"] > rows["never"]["pic_after_change"] + 0.1
    assert rows["weekly"]["emergency_replenishments"] < rule["emergency_replenishments"]
    # Re-armed, the rule retrains the still-breaching model again three days later.
    rearmed = sorted(rows["rule_rearmed"]["actions"])
    assert rearmed[:2] == [change + dt.timedelta(days=2), change + dt.timedelta(days=5)]
    assert rows["rule_rearmed"]["emergency_replenishments"] < rule["emergency_replenishments"]
    # The orders' coverage: the level set two days before the change already meets one shifted
    # day; the rule on it retrains within the first protection period and a half.
    protection = rows["protection"]
    assert 2 <= protection["detection_delay_action"] <= 4, protection["actions"]
    assert protection["false_alarm_actions"] == 0
    assert protection["emergency_replenishments"] < never
    # Orders held over their protection period: almost never for the stale model, more often
    # once retrained, most often when retrained again and again.
    held = {p: r["orders_held_after_change"] for p, r in rows.items()}
    assert held["never"] < 0.1 < held["rule"] < 0.5 < held["rule_rearmed"]
    saved = saved_against_never([{"policy": p, **r} for p, r in rows.items()])
    assert saved == pytest.approx((never - rule["emergency_replenishments"]) / never)


def test_a_shift_in_a_fifth_of_the_series_is_planted_only_there():
    panel, _ = _panel()
    change = START + dt.timedelta(days=5)
    planted, changed = SCENARIOS["shift_20pct"].plant(panel, change, seed=3)
    assert changed.sum() == N_SERIES // 5
    day = HISTORY + 5
    for k, (before, after) in enumerate(zip(panel.series, planted.series, strict=True)):
        factor = 1.8 if changed[k] else 1.0
        np.testing.assert_array_equal(after.target[day:], np.round(before.target[day:] * factor))
        np.testing.assert_array_equal(after.target[:day], before.target[:day])


class AntiCorrelatedModel(LevelModel):
    """Each day's samples are right (the true Poisson), but a path pairs a low day with a high
    one (the k-th smallest draw, then the k-th largest, ...), so a two-day sum hardly varies:
    one-day intervals cover, the order levels fall short."""

    def forecast(self, panel, horizon, num_samples, seed=0, calibrated=True) -> SampledForecast:
        flat = super().forecast(panel, horizon, num_samples, seed)
        paths = flat.samples.reshape(num_samples, len(self.levels), horizon)
        ranked = np.sort(paths[:, :, 0], axis=0)
        paths = np.stack([ranked if h % 2 == 0 else ranked[::-1] for h in range(horizon)], axis=2)
        return SampledForecast(paths.reshape(num_samples, -1), flat.series_ids, flat.dates, flat.epistemic_share)


def test_the_rule_on_the_orders_sees_what_the_one_day_coverage_cannot():
    panel, levels = _panel()
    settings = replace(_settings(), lead_time=1)  # two-day protection periods
    config = CONFIG.updated(inventory={"lead_time_days": 1})

    def forecast(model, known: Panel) -> pd.DataFrame:
        day = (max(s.dates[-1] for s in known.series) - pd.Timestamp(START)).days
        return forecast_frame(config, model, known, config.serving.horizon, seed=HISTORY + day, model_version="1")

    ops = ModelOps(forecast, retrain=lambda model, seen: LevelModel(levels), update=OPS.update)  # finds the truth
    runs = {policy: run_policy(policy, AntiCorrelatedModel(levels), panel, START, settings, ops)
            for policy in ("rule", "protection", "protection_online_first")}
    rows = {policy: run.summary(settings, np.zeros(N_SERIES, dtype=bool)) for policy, run in runs.items()}
    assert rows["rule"]["pic_before_change"] > 0.94 and rows["rule"]["retrains"] == 0
    # Periods end from day 1: breaches on days 1, 2, 3 retrain on day 3, and the true model holds.
    assert runs["protection"].actions == {START + dt.timedelta(days=3): "retrain"}
    assert rows["protection"]["emergency_replenishments"] < 0.7 * rows["rule"]["emergency_replenishments"]
    # The same trigger with an online update first: the update on day 3, a retrain only if
    # the orders keep breaching for three more days.
    online = runs["protection_online_first"].actions
    assert sorted(online.items())[0] == (START + dt.timedelta(days=3), "online_update")
    assert all(action == "online_update" or day >= START + dt.timedelta(days=6) for day, action in online.items())


def test_protection_coverage_matches_a_loop_over_the_periods():
    rng = np.random.default_rng(4)
    demand = rng.poisson(5.0, (30, 7)).astype(float)
    levels = rng.uniform(10, 25, (30, 7))
    levels[3, 2] = demand[3:6, 2].sum()  # a level equal to its period's demand holds
    held = protection_covered(levels, demand, 3)
    expected = np.array([[demand[t:t + 3, k].sum() <= levels[t, k] for k in range(7)] for t in range(28)])
    assert held.shape == (28, 7) and held[3, 2]
    np.testing.assert_array_equal(held, expected)
    assert protection_covered(levels[:2], demand[:2], 3).shape == (0, 7)
    with pytest.raises(ValueError, match="must both be"):
        protection_covered(levels, demand[:, :3], 3)


@pytest.mark.parametrize("correlation", [0.0, 0.05])
def test_breach_probability_matches_simulated_days(correlation):
    """The expected breach rate of a calibrated model against 200,000 simulated days of 50
    series (beta-binomial when the series' coverage is correlated within a day)."""
    rng = np.random.default_rng(0)
    n, level = 50, 0.95
    if correlation:
        concentration = 1 / correlation - 1
        p = rng.beta(level * concentration, (1 - level) * concentration, 200_000)
    else:
        p = np.full(200_000, level)
    covered = rng.binomial(n, p)
    for rule in (BreachRule(level, 0.9), BreachRule(level, 0.9, BINOMIAL, 0.01)):
        simulated = np.mean([rule(int(c), n) for c in covered[:20_000]])
        expected = breach_probability(rule, n, correlation)
        assert expected == pytest.approx(simulated, abs=4 * np.sqrt(expected * (1 - expected) / 20_000) + 1e-4)


def test_the_binomial_rule_scales_with_the_number_of_series():
    """PIC 0.88: chance with 50 series (the threshold rule breaches, the binomial does not);
    PIC 0.93 with 5,000 series: no breach by threshold, a significant one by the test."""
    threshold, binomial = BreachRule(0.95, 0.9), BreachRule(0.95, 0.9, BINOMIAL, 0.01)
    assert threshold(44, 50) and not binomial(44, 50)
    assert stats.binom.cdf(44, 50, 0.95) > 0.01
    assert binomial(40, 50)
    assert not threshold(4650, 5000) and binomial(4650, 5000)


def test_the_report_states_the_expected_and_measured_false_alarms(tmp_path):
    panel, levels = _panel()
    run = run_policy("never", LevelModel(levels), panel, START, _settings(), OPS)
    row = {"scenario": "none", **run.summary(_settings(), np.zeros(N_SERIES, dtype=bool))}
    result = ScenarioResult(SCENARIOS["none"], None, [row], tmp_path / "simulation-none.png")
    text = write_report([result], tmp_path, START, DAYS, 3, N_SERIES, _settings()).read_text()
    assert "| never | " in text and "would on 3.8% of days with independent series" in text
    assert f"breached on {row['breach_days']} of {DAYS} days" in text
    assert json.loads((tmp_path / "simulation.json").read_text())[0]["rows"][0]["policy"] == "never"


def test_the_replay_and_the_simulation_plant_a_shift_alike():
    """One definition of a planted change: the replay's shift on the raw table and the
    simulation's scenario on the validated panel give the same demand."""
    from pipeline_lib.data.validate import validate_table
    from pipeline_lib.monitoring.replay import plant_shift

    panel, _ = _panel()
    raw = panel.to_frame().rename(columns={"target": "units"})
    raw["date"] = raw["date"].dt.strftime("%Y-%m-%d")
    change = START + dt.timedelta(days=4)
    data = PipelineConfig().data
    from_raw = validate_table(plant_shift(raw, data, change, 1.8), data, min_days=1)
    from_panel, _ = SCENARIOS["shift"].plant(panel, change)
    by_id = {s.series_id: s.target for s in from_raw.series}
    assert len(by_id) == N_SERIES
    for s in from_panel.series:
        np.testing.assert_array_equal(by_id[s.series_id], s.target)
    assert from_panel.series[0].target[HISTORY + 4] == np.round(panel.series[0].target[HISTORY + 4] * 1.8)



def test_a_planted_change_starts_on_its_day_and_keeps_whole_numbers_whole():
    from pipeline_lib.monitoring.replay import planted

    since = np.array([-2, -1, 0, 1, 2])
    trend = SCENARIOS["trend"].factor
    np.testing.assert_allclose(planted(np.full(5, 1.5), since, trend), 1.5 * np.r_[1, 1, 1.01, 1.01 ** 2, 1.01 ** 3])
    np.testing.assert_array_equal(planted(np.array([10.0, 10, 10, np.nan, 10]), since, trend),
                                  [10, 10, 10, np.nan, 10])  # 10.1, 10.2 and 10.3 round back
    np.testing.assert_array_equal(planted(np.full(5, 10.0), since, SCENARIOS["promotion"].factor),
                                  [10, 10, 25, 25, 25])
