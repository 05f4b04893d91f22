"""Alert messages and notifications (webhooks and Apprise). No Prefect here: the flow
emits the Prefect event for each alert this module returns.

Destinations come from the environment, never from config files (they carry tokens):

- ``BAYES_PIPELINE_ALERT_WEBHOOKS``: comma-separated URLs; each receives the alert as a
  JSON POST (``{"kind", "day", "message", "model_version", "report", ...}``).
- ``BAYES_PIPELINE_APPRISE_URLS``: comma-separated Apprise URLs (``slack://...``,
  ``mailto://...``, ``msteams://...``); sent with Apprise (installed with Prefect).

A failing destination is logged and reported back, never raised: an alert that cannot be
delivered must not stop the monitoring that produced it. Alerts go through an outbox: the
monitoring records each one in the store's ``alerts`` table as ``pending``, and
:func:`deliver_pending` sends every pending alert, this run's and earlier runs' undelivered
ones, until all destinations took it (``sent``) or ``ALERT_MAX_ATTEMPTS`` runs have tried
(``undeliverable``). A retry goes only to the destinations that failed last time (recorded in
the row's ``last_error``: a webhook by its scheme, host and port, Apprise as one), so a
destination that took the alert does not get it twice.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from urllib.parse import urlparse

import pandas as pd

from pipeline_lib.errors import ConfigError

log = logging.getLogger(__name__)

WEBHOOKS_ENV = "BAYES_PIPELINE_ALERT_WEBHOOKS"
APPRISE_ENV = "BAYES_PIPELINE_APPRISE_URLS"
ALERT_MAX_ATTEMPTS = 5  # delivery attempts (one per monitoring or forecast run) before giving up


@dataclass(frozen=True)
class Alert:
    kind: str  # breach | retrain | error
    day: dt.date
    model_version: str
    message: str
    report: str | None = None
    details: dict = field(default_factory=dict)

    @property
    def title(self) -> str:
        return f"bayes-pipeline {self.kind}: {self.day}"

    def payload(self) -> dict:
        return {**asdict(self), "day": str(self.day), "title": self.title}


def breach_message(day: dt.date, picp: float, level: float, rule: str, streak: int,
                   consecutive_days: int, model_version: str, report: str | None, scope: str = "overall") -> str:
    """``rule``: what made the day a breach (``BreachRule.describe()``); ``scope``: the coverage
    that decided it (``overall``: the one-day intervals; ``protection``: the order levels)."""
    subject = (f"orders: the order-up-to levels set for {level:.0%} service held for {picp:.1%} of the series, "
               if scope == "protection" else
               f"prediction-interval coverage {picp:.1%} of the {level:.0%} interval is ")
    return (f"{day}: {subject}{rule} "
            f"(breach day {streak} of {consecutive_days} before a retrain); "
            f"model version {model_version}; report: {report or 'n/a'}")


def _split(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def destinations() -> tuple[list[str], list[str]]:
    """(webhook URLs, Apprise URLs) configured in the environment."""
    return _split(os.environ.get(WEBHOOKS_ENV)), _split(os.environ.get(APPRISE_ENV))


def check_destinations() -> None:
    """Fail at the start of a run, not at its first alert, on a webhook URL that cannot be a
    destination (the flows call this first).

    Raises:
        ConfigError: naming the variable and the position of the bad URL (never the URL
            itself: it may carry a token).
    """
    webhooks, _ = destinations()
    for position, url in enumerate(webhooks, start=1):
        parts = urlparse(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"${WEBHOOKS_ENV}: URL {position} of {len(webhooks)} is not an http(s) URL with a "
                              "host; alerts could not be delivered to it")


@dataclass(frozen=True)
class Delivery:
    """One pass over the outbox: what was sent, what will be retried, what was given up."""

    sent: tuple[Alert, ...] = ()
    retried: tuple[Alert, ...] = ()
    undeliverable: tuple[Alert, ...] = ()


def deliver_pending(store, send: Callable[[Alert, frozenset[str] | None], list[str]],
                    max_attempts: int = ALERT_MAX_ATTEMPTS) -> Delivery:
    """Send every ``pending`` alert of ``store`` with ``send(alert, only)`` (``only``: None on
    the first attempt, i.e. everywhere, else the destinations that failed last time; returns
    the destinations that failed now) and record each attempt; oldest first."""
    outcome: dict[str, list[Alert]] = {"sent": [], "pending": [], "undeliverable": []}
    for row in store.undelivered_alerts().to_dict("records"):
        alert = Alert(row["kind"], pd.Timestamp(row["day"]).date(), row["model_version"], row["message"],
                      row["report"], json.loads(row["details"] or "{}"))
        only = frozenset(row["last_error"].split(", ")) if row["attempts"] and row["last_error"] else None
        status = store.record_delivery(alert.day, alert.kind, send(alert, only), max_attempts)
        outcome[status].append(alert)
        if status == "undeliverable":
            log.error("alert %s of %s given up after %d attempts", alert.kind, alert.day, max_attempts)
    return Delivery(tuple(outcome["sent"]), tuple(outcome["pending"]), tuple(outcome["undeliverable"]))


def notify(alert: Alert, only: frozenset[str] | None = None, timeout: float = 10.0) -> list[str]:
    """Send ``alert`` everywhere configured, or only to the destinations named in ``only``
    (as this function reports them: a webhook's ``scheme://host[:port]``, ``apprise``);
    returns the destinations that failed."""
    webhooks, apprise_urls = destinations()
    if only is not None:
        webhooks = [url for url in webhooks if _host(url) in only]
        apprise_urls = apprise_urls if "apprise" in only else []
    failed = []
    body = json.dumps(alert.payload()).encode()
    for url in webhooks:
        request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"},
                                         method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                response.read()
        except (urllib.error.URLError, OSError) as exc:
            log.warning("alert webhook %s failed: %s", _host(url), exc)
            failed.append(_host(url))
    if apprise_urls:
        import apprise

        sender = apprise.Apprise()
        for url in apprise_urls:
            sender.add(url)
        if not sender.notify(title=alert.title, body=alert.message):
            log.warning("an Apprise notification failed")
            failed.append("apprise")
    return failed


def _host(url: str) -> str:
    """A URL without path and query (they may hold tokens), for logs."""
    parts = urlparse(url)
    return f"{parts.scheme}://{parts.hostname}:{parts.port}" if parts.port else f"{parts.scheme}://{parts.hostname}"
