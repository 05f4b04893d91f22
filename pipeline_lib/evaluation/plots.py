"""Pictures people would rather look at than read: fan charts and calibration curves.

Every function writes a PNG and returns its path; matplotlib runs headless (Agg).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from pipeline_lib.contract import interval_columns

_BANDS = ((0.95, 0.18), (0.8, 0.3), (0.5, 0.45))


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def fan_chart(forecasts: pd.DataFrame, history: pd.DataFrame, series_ids: list[str], path: Path,
              title: str = "Forecast intervals", history_days: int = 56) -> Path:
    """Fan chart per series: 50/80/95% bands, median, actuals.

    ``forecasts`` follows the output contract; ``history`` has ``series_id, date, target``
    (actuals, including the forecast days when known).
    """
    n = len(series_ids)
    fig, axes = plt.subplots(n, 1, figsize=(10, 2.6 * n), squeeze=False, sharex=False)
    for ax, sid in zip(axes[:, 0], series_ids, strict=True):
        f = forecasts[forecasts["series_id"] == sid].sort_values("date")
        start = f["date"].min() - pd.Timedelta(days=history_days)
        h = history[(history["series_id"] == sid) & (history["date"] >= start)].sort_values("date")
        for level, alpha in _BANDS:
            lo, hi = interval_columns(level)
            ax.fill_between(f["date"], f[lo], f[hi], color="tab:blue", alpha=alpha, lw=0,
                            label=f"{level:.0%} interval")
        ax.plot(f["date"], f["q0.5"], color="tab:blue", lw=1.5, label="median")
        ax.plot(h["date"], h["target"], color="black", lw=1, marker=".", ms=3, label="actual")
        ax.set_title(f"series {sid}", fontsize=10, loc="left")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(loc="upper left", fontsize=8, ncol=5)
    fig.suptitle(title)
    return _save(fig, path)


def calibration_plot(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path) -> Path:
    """Observed vs nominal central-interval coverage, one line per model."""
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="grey", ls="--", label="perfect calibration")
    for name, (nominal, observed) in curves.items():
        ax.plot(nominal, observed, marker="o", ms=3, label=name)
    ax.set_xlabel("nominal coverage")
    ax.set_ylabel("observed coverage")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def pit_histogram(pit: np.ndarray, path: Path, bins: int = 10) -> Path:
    """PIT histogram: flat for calibrated forecasts, U-shaped when intervals are too narrow."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.hist(pit, bins=bins, range=(0, 1), density=True, color="tab:blue", alpha=0.7, edgecolor="white")
    ax.axhline(1.0, color="grey", ls="--")
    ax.set_xlabel("PIT")
    ax.set_ylabel("density")
    ax.set_title("PIT histogram (flat = calibrated)")
    return _save(fig, path)


def sharpness_calibration_scatter(points: dict[str, tuple[float, float]], path: Path, nominal: float = 0.9) -> Path:
    """One dot per model: observed coverage of the nominal interval (x) vs its scaled width (y).

    The best models sit on the vertical line at the nominal level and as low as possible.
    """
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.axvline(nominal, color="grey", ls="--", label=f"nominal {nominal:.0%}")
    for name, (coverage, width) in points.items():
        ax.scatter([coverage], [width], s=50)
        ax.annotate(name, (coverage, width), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xlabel(f"observed coverage of the {nominal:.0%} interval (calibration)")
    ax.set_ylabel("interval width / mean |actual| (sharpness)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def coverage_by_horizon_plot(coverage: dict[str, dict[int, float]], path: Path, nominal: float = 0.95) -> Path:
    """Observed coverage of the nominal interval by days ahead, one line per model."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.axhline(nominal, color="grey", ls="--", label=f"nominal {nominal:.0%}")
    for name, by_horizon in coverage.items():
        horizons = sorted(by_horizon)
        ax.plot(horizons, [by_horizon[h] for h in horizons], marker="o", ms=3, label=name)
    ax.set_xlabel("days ahead")
    ax.set_ylabel("observed coverage")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def coverage_timeline_plot(timeline: pd.DataFrame, threshold: float, nominal_level: float, path: Path,
                           shift_day=None, title: str = "Daily prediction-interval coverage") -> Path:
    """Daily PIC against the threshold: breach days in red, alerts and retrains marked.

    ``timeline``: ``day, pic, breach, alerts, retrain`` (see monitoring.replay.timeline).
    """
    frame = timeline.assign(day=pd.to_datetime(timeline["day"]), pic=pd.to_numeric(timeline["pic"]))
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.plot(frame["day"], frame["pic"], color="tab:blue", marker="o", lw=1.5, label="daily PIC")
    breach = frame[frame["breach"]]
    ax.scatter(breach["day"], breach["pic"], color="tab:red", zorder=3, s=60, label="breach day")
    ax.axhline(threshold, color="tab:red", ls="--", lw=1, label=f"threshold {threshold:.0%}")
    ax.axhline(nominal_level, color="grey", ls=":", lw=1, label=f"nominal {nominal_level:.0%}")
    alerted = frame[frame["alerts"].str.len() > 0]
    ax.scatter(alerted["day"], np.full(len(alerted), 0.04), marker="^", color="tab:orange", s=50,
               label="alert sent", transform=ax.get_xaxis_transform())
    for k, (_, row) in enumerate(frame[frame["retrain"].str.len() > 0].iterrows()):
        ax.axvline(row["day"], color="tab:green", lw=2, alpha=0.7, label="retrain" if k == 0 else None)
        ax.annotate(f"retrain -> {row['retrain']}", (row["day"], 0.06), xycoords=("data", "axes fraction"),
                    rotation=90, fontsize=8, color="tab:green", ha="right")
    if shift_day is not None:
        ax.axvline(pd.Timestamp(shift_day), color="tab:purple", ls="-.", lw=1, label="planted demand shift")
    ax.set_ylim(0, 1.02)
    ax.set_ylabel(f"share of series inside the {nominal_level:.0%} interval")
    ax.set_title(title)
    ax.legend(loc="lower left", fontsize=8, ncol=3)
    fig.autofmt_xdate()
    return _save(fig, path)


def simulation_plot(pic: dict[str, pd.Series], stockouts: dict[str, pd.Series], actions: dict[str, list],
                    threshold: float, path: Path, change_day=None, title: str = "Closed-loop simulation") -> Path:
    """Per maintenance policy: daily PIC (top) and cumulative emergency replenishments
    (bottom), retrains and online updates marked on the PIC line. Each argument is keyed by
    policy; ``pic`` and ``stockouts`` are Series indexed by day, ``actions`` lists the days."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True, height_ratios=(3, 2))
    for k, (policy, series) in enumerate(pic.items()):
        color = f"C{k}"
        days = pd.to_datetime(series.index)
        top.plot(days, series.to_numpy(), color=color, lw=1.2, label=policy)
        acted = [pd.Timestamp(d) for d in actions.get(policy, [])]
        top.scatter(acted, series.reindex(actions.get(policy, [])).to_numpy(), color=color, marker="v", s=40,
                    zorder=3)
        bottom.plot(pd.to_datetime(stockouts[policy].index), stockouts[policy].cumsum().to_numpy(), color=color,
                    lw=1.5, label=policy)
    top.axhline(threshold, color="tab:red", ls="--", lw=1, label=f"threshold {threshold:.0%}")
    for ax in (top, bottom):
        if change_day is not None:
            ax.axvline(pd.Timestamp(change_day), color="tab:purple", ls="-.", lw=1)
    top.set_ylim(0, 1.02)
    top.set_ylabel("daily PIC (v = retrain/update)")
    top.set_title(title + ("" if change_day is None else f" (change planted {change_day})"))
    top.legend(loc="lower left", fontsize=8, ncol=3)
    bottom.set_ylabel("emergency replenishments\n(cumulative)")
    fig.autofmt_xdate()
    return _save(fig, path)


def service_inventory_plot(curves: dict[str, pd.DataFrame], points: dict[str, tuple[float, float]],
                           target: float, path: Path, title: str = "Service level vs inventory") -> Path:
    """Achieved cycle service level against average stock for each ordering rule.

    ``curves``: rule -> ``cycle_service_level, average_inventory`` over a sweep of targets;
    ``points``: label -> (service level, inventory) of the rules at the configured target.
    The better rule is the curve further up and to the left.
    """
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, curve in curves.items():
        ax.plot(curve["average_inventory"], curve["cycle_service_level"], marker=".", label=name)
    for k, (label, (service, stock)) in enumerate(points.items()):
        ax.scatter([stock], [service], s=70, zorder=3, color="black", marker="x")
        # Staggered labels: the rules' points often sit close together.
        ax.annotate(label, (stock, service), textcoords="offset points", xytext=(8, 10 - 12 * k), fontsize=8,
                    arrowprops={"arrowstyle": "-", "lw": 0.5})
    ax.axhline(target, color="grey", ls=":", lw=1, label=f"target {target:.0%}")
    ax.set_xlabel("average units on hand per series and day")
    ax.set_ylabel("achieved cycle service level")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)
