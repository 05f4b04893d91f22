"""The retrain policy: a pure function of the daily breach history.

A *breach* is a day whose headline PIC is below the threshold. ``consecutive_days`` breach
days in a row make a streak that triggers one retrain. The streak keeps its first day as
its identity, so a rerun of any of its days, or further breach days of the same streak
(while a retrained model is still catching up), never trigger again; a new retrain
needs a new streak, i.e. at least one day back above the threshold in between.
Pending days (no actuals yet) and unevaluated days are not breaches.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping
from dataclasses import dataclass

ONE_DAY = dt.timedelta(days=1)


@dataclass(frozen=True)
class PolicyDecision:
    day: dt.date
    breach: bool
    streak_start: dt.date | None  # first day of the breach streak ending on ``day``
    streak_length: int
    retrain: bool

    def describe(self, consecutive_days: int) -> str:
        if not self.breach:
            return f"{self.day}: no breach"
        action = "retrain" if self.retrain else "no action"
        return (f"{self.day}: breach day {self.streak_length} of {consecutive_days} "
                f"(streak since {self.streak_start}) -> {action}")


def retrain_decision(breaches: Mapping[dt.date, bool | None], day: dt.date, consecutive_days: int,
                     retrained_streaks: Collection[dt.date]) -> PolicyDecision:
    """Decide for ``day`` given ``breaches`` (day -> breach flag, ``None`` = pending) and the
    first days of the streaks that already triggered a retrain."""
    if not breaches.get(day):
        return PolicyDecision(day, False, None, 0, False)
    start, length = day, 1
    while breaches.get(start - ONE_DAY):
        start -= ONE_DAY
        length += 1
    retrain = length >= consecutive_days and start not in retrained_streaks
    return PolicyDecision(day, True, start, length, retrain)
