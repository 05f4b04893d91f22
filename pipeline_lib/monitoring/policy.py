"""The retrain policy: a pure function of the daily breach history.

A *breach* is a day whose headline PIC is below the threshold. ``consecutive_days`` breach
days in a row make a streak that triggers one retrain (or, with
``monitoring.first_response: online_update``, an online update first and a retrain only
if the streak goes on). The streak keeps its first day as
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


ONLINE_UPDATE = "online_update"
RETRAIN = "retrain"


@dataclass(frozen=True)
class PolicyDecision:
    day: dt.date
    breach: bool
    streak_start: dt.date | None  # first day of the breach streak ending on ``day``
    streak_length: int
    response: str | None = None  # ONLINE_UPDATE | RETRAIN | None
    claim_key: dt.date | None = None  # identity of the response in the store (see retrain_decision)

    @property
    def retrain(self) -> bool:
        """True when ``day`` triggers a response (a full retrain or an online update)."""
        return self.response is not None

    def describe(self, consecutive_days: int) -> str:
        if not self.breach:
            return f"{self.day}: no breach"
        action = {ONLINE_UPDATE: "online update", RETRAIN: "retrain"}.get(self.response, "no action")
        return (f"{self.day}: breach day {self.streak_length} of {consecutive_days} "
                f"(streak since {self.streak_start}) -> {action}")


def retrain_decision(breaches: Mapping[dt.date, bool | None], day: dt.date, consecutive_days: int,
                     retrained_streaks: Collection[dt.date], online_update_first: bool = False) -> PolicyDecision:
    """Decide for ``day`` given ``breaches`` (day -> breach flag, ``None`` = pending) and the
    keys of the responses already claimed (``retrained_streaks``).

    Default: the ``consecutive_days``-th breach day of a streak triggers one retrain, keyed by
    the streak's first day. With ``online_update_first`` that day triggers a cheap online
    update instead (same key), and if the streak goes on for another ``consecutive_days``
    breach days, i.e. the updated model breaches as often, the ``2 * consecutive_days``-th
    day escalates to one full retrain, keyed by ``start + consecutive_days``.
    """
    if not breaches.get(day):
        return PolicyDecision(day, False, None, 0)
    start, length = day, 1
    while breaches.get(start - ONE_DAY):
        start -= ONE_DAY
        length += 1
    if not online_update_first:
        if length >= consecutive_days and start not in retrained_streaks:
            return PolicyDecision(day, True, start, length, RETRAIN, start)
        return PolicyDecision(day, True, start, length)
    escalation = start + consecutive_days * ONE_DAY
    if length >= consecutive_days and start not in retrained_streaks:
        return PolicyDecision(day, True, start, length, ONLINE_UPDATE, start)
    if length >= 2 * consecutive_days and escalation not in retrained_streaks:
        return PolicyDecision(day, True, start, length, RETRAIN, escalation)
    return PolicyDecision(day, True, start, length)
