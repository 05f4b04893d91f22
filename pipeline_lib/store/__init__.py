"""The forecast store: forecasts, actuals, daily coverage, alerts and retrain events in SQL.

SQLAlchemy Core on any URL (a SQLite file in the work directory by default, Postgres in
the compose stack). The code creates the tables and records its schema version. Every
write of a day is one transaction, and unique keys make reruns replace or ignore rows
instead of duplicating them:

- ``forecasts``: the output contract plus ``run_date`` (first forecast day) and
  ``horizon`` (days ahead, 1 = the day after the last actual). Key: run date, series, date.
- ``actuals``: one observed value per series and day. Key: series, date.
- ``coverage_daily``: PIC and MPIW of one day, per scope (``overall``, ``h01``..,
  ``segment:<name>``). Key: day, scope, level.
- ``alerts``: at most one alert per day and kind.
- ``retrain_events``: at most one retrain per breach streak (keyed by its first day). A
  monitoring run claims the streak by inserting the row *before* it retrains, so two
  runs of the same day at once cannot both retrain. A claim left ``started`` by a
  process that died while retraining goes stale after ``monitoring.retrain_claim_timeout_hours``
  and the next monitoring run retrains again.

At a catalogue's size (issue [5/6]; ``benchmarks/store_year.py``) the forecasts dominate:
30,490 series x 7 days is 213,430 rows a day. They are written in bulk (PostgreSQL ``COPY``
with psycopg2, else one batched ``executemany``), read through two indexes that serve every
query (the key ``(run_date, series_id, date)``: a rerun's replace and the retention's
delete by run date; ``ix_forecasts_date``: the monitoring's read of one target day), and
deleted by the daily monitoring once issued more than ``monitoring.forecast_retention_days``
(400) days ago.
"""

from pipeline_lib.store.repository import ForecastStore, RetrainRetry
from pipeline_lib.store.schema import SCHEMA_VERSION, TABLES

__all__ = ["SCHEMA_VERSION", "TABLES", "ForecastStore", "RetrainRetry"]
