"""The forecast store's tables (SQLAlchemy Core) and the migrations between schema versions.

See :mod:`pipeline_lib.store` for what each table holds and which key makes a rerun safe.
"""

from __future__ import annotations

import sqlalchemy as sa

from pipeline_lib.contract import QUANTILE_COLUMNS

SCHEMA_VERSION = 5

# Columns (table, column, SQL type) that take a store from version ``v - 1`` to ``v``.
# Each is added only if missing: SQLite commits DDL as it goes, so a migration that died
# half-way is simply finished by the next run.
MIGRATIONS = {
    2: (("forecasts", "order_up_to", "FLOAT"), ("forecasts", "safety_stock", "FLOAT")),
    3: (("retrain_events", "claimed_at", "TIMESTAMP"),),
    4: (("alerts", "details", "TEXT"), ("alerts", "status", "VARCHAR(20)"), ("alerts", "attempts", "INTEGER"),
        ("alerts", "last_error", "TEXT")),
    5: (("retrain_events", "attempts", "INTEGER"), ("retrain_events", "claimed_by", "VARCHAR(100)"),
        ("retrain_events", "dispatched_run", "VARCHAR(64)")),
}

metadata = sa.MetaData()

schema_info = sa.Table(
    "schema_info", metadata,
    sa.Column("version", sa.Integer, primary_key=True),
)

forecasts = sa.Table(
    "forecasts", metadata,
    sa.Column("run_date", sa.Date, primary_key=True),
    sa.Column("series_id", sa.String(200), primary_key=True),
    sa.Column("date", sa.Date, primary_key=True),
    sa.Column("horizon", sa.Integer, nullable=False),
    sa.Column("model_version", sa.String(50), nullable=False),
    sa.Column("mean", sa.Float, nullable=False),
    sa.Column("std", sa.Float, nullable=False),
    *(sa.Column(name, sa.Float, nullable=False) for name in QUANTILE_COLUMNS),
    # Order-up-to level and safety stock for an order placed that day (schema version 2).
    sa.Column("order_up_to", sa.Float),
    sa.Column("safety_stock", sa.Float),
    sa.Index("ix_forecasts_date", "date"),
)

actuals = sa.Table(
    "actuals", metadata,
    sa.Column("series_id", sa.String(200), primary_key=True),
    sa.Column("date", sa.Date, primary_key=True),
    sa.Column("actual", sa.Float, nullable=False),
)

coverage_daily = sa.Table(
    "coverage_daily", metadata,
    sa.Column("day", sa.Date, primary_key=True),
    sa.Column("scope", sa.String(100), primary_key=True),
    sa.Column("level", sa.Float, primary_key=True),
    sa.Column("model_version", sa.String(200), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),  # ok | partial | pending
    sa.Column("picp", sa.Float),  # NULL while pending
    sa.Column("mpiw", sa.Float),
    sa.Column("n", sa.Integer, nullable=False),  # forecasts with an actual
    sa.Column("expected", sa.Integer, nullable=False),  # forecasts that targeted the day
    sa.Column("breach", sa.Boolean),
)

alerts = sa.Table(
    "alerts", metadata,
    sa.Column("day", sa.Date, primary_key=True),
    sa.Column("kind", sa.String(30), primary_key=True),  # breach | retrain | error
    sa.Column("model_version", sa.String(50), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("report", sa.Text),
    # The outbox (schema version 4): pending until every destination took it, resent by
    # each later run until then, at most ALERT_MAX_ATTEMPTS times (then undeliverable).
    # NULL: an alert recorded before version 4 (it was sent then, or never will be).
    sa.Column("details", sa.Text),  # JSON of Alert.details
    sa.Column("status", sa.String(20)),  # pending | sent | undeliverable
    sa.Column("attempts", sa.Integer),
    sa.Column("last_error", sa.Text),
)

retrain_events = sa.Table(
    "retrain_events", metadata,
    sa.Column("streak_start", sa.Date, primary_key=True),
    sa.Column("triggered_on", sa.Date, nullable=False),
    sa.Column("mode", sa.String(20), nullable=False),
    sa.Column("champion_before", sa.String(50), nullable=False),
    # started (retraining in the claiming process) | dispatched (to the training deployment)
    # | completed | failed
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("new_version", sa.String(50)),
    sa.Column("promoted", sa.Boolean),
    sa.Column("detail", sa.Text),
    sa.Column("claimed_at", sa.DateTime),  # UTC wall clock; NULL on claims made before schema 3
    # Schema version 5: the attempt count (NULL: 1) of a streak's retrain, failed ones being
    # retried; the run that holds the claim (a Prefect flow run id: a retried task of the
    # same run keeps its claim); the training deployment's flow run a dispatched retrain started.
    sa.Column("attempts", sa.Integer),
    sa.Column("claimed_by", sa.String(100)),
    sa.Column("dispatched_run", sa.String(64)),
)

TABLES = ("forecasts", "actuals", "coverage_daily", "alerts", "retrain_events")
