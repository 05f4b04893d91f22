"""Configuration: documented defaults match the code; bad files are clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from pipeline_lib.config import PipelineConfig, load_config
from pipeline_lib.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_documented_defaults_are_the_code_defaults():
    documented = load_config(ROOT / "configs" / "default.yaml")
    assert documented.model_dump(exclude={"workdir"}) == PipelineConfig().model_dump(exclude={"workdir"})


def test_workdir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("BAYES_PIPELINE_WORKDIR", str(tmp_path / "state"))
    config = PipelineConfig()
    assert config.workdir == tmp_path / "state"
    assert config.tracking_uri == f"sqlite:///{(tmp_path / 'state' / 'mlflow.db').resolve()}"
    assert not (tmp_path / "state").exists()  # nothing is created by building a config


@pytest.mark.parametrize("text, words", [
    ("train: {epochs: 0}", ["train.epochs", "greater than or equal to 1"]),
    ("model: {unknown: 1}", ["model.unknown", "Extra inputs"]),
    ("[1, 2]", ["top level must be a mapping"]),
    ("train: {epochs: [", ["not valid YAML"]),
])
def test_bad_config_files(tmp_path, text, words):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    for word in words:
        assert word in str(info.value)
    assert str(path) in str(info.value)


def test_a_sql_password_never_enters_a_config(tmp_path, monkeypatch):
    """Configs are logged to MLflow and shown by Prefect: a URL with a password is refused
    there (without echoing it) and read from $BAYES_PIPELINE_SQL_URL instead, and every
    message about the source shows its host and database only."""
    import sqlalchemy

    from pipeline_lib.config import SQL_URL_ENV, parse_config
    from pipeline_lib.data.ingest import read_table
    from pipeline_lib.errors import ConfigError, DataValidationError

    marker = "s3cr3t-MARKER"

    def url_with_password(backend: str, host: str) -> str:  # built, not written: the secret scan reads tests too
        name, port = host.split(":")
        url = sqlalchemy.engine.URL.create(backend, "shop", marker, name, int(port), "sales")
        return url.render_as_string(hide_password=False)
    with pytest.raises(ConfigError, match=r"\$BAYES_PIPELINE_SQL_URL") as refused:
        parse_config({"data": {"sql_url": url_with_password("postgresql", "db.internal:5432"),
                               "sql_query": "SELECT 1"}})
    assert marker not in str(refused.value)

    url = f"sqlite:///{tmp_path / 'sales.db'}"
    engine = sqlalchemy.create_engine(url)
    pd.DataFrame({"series_id": ["A"], "date": ["2024-01-01"], "units": [3]}).to_sql("sales", engine, index=False)
    engine.dispose()
    config = parse_config({"data": {"sql_query": "SELECT series_id, date, units FROM sales"}})
    monkeypatch.delenv(SQL_URL_ENV, raising=False)
    with pytest.raises(ConfigError, match="no SQL URL"):
        read_table(config.data)
    monkeypatch.setenv(SQL_URL_ENV, url)
    assert read_table(config.data)["units"].tolist() == [3]
    assert url not in json.dumps(config.model_dump(mode="json"))  # what MLflow and Prefect would see

    monkeypatch.setenv(SQL_URL_ENV, url_with_password("postgresql+psycopg2", "127.0.0.1:1"))  # nothing listens
    assert config.data.source_name() == "SQL query on postgresql+psycopg2://127.0.0.1:1/sales"  # no user "shop"
    with pytest.raises(DataValidationError) as failed:
        read_table(config.data)
    assert marker not in str(failed.value) and "127.0.0.1:1/sales" in str(failed.value)


@pytest.mark.parametrize("scheme, host, port, path", [
    ("postgresql+psycopg", "db.internal", 5432, "/sales"),
    ("https", "mlflow.example.com", None, "/tracking"),
    ("mysql", "10.0.0.7", 3306, "/shop"),
])
def test_the_one_url_redaction_keeps_where_and_drops_who(scheme, host, port, path):
    """Store, data source and MLflow URLs all pass through errors.redacted_url."""
    from pipeline_lib.errors import redacted_url

    marker = "s3cr3t-MARKER"
    netloc = f"{host}:{port}" if port else host
    url = f"{scheme}://user-{marker}:{marker}" + "@" + f"{netloc}{path}?password={marker}&sslmode=require"
    shown = redacted_url(url)
    assert marker not in shown and shown == f"{scheme}://{netloc}{path}"
    assert redacted_url("http://[::1") == "<an unparseable URL>"
    # SQLite file URLs keep their empty host: absolute and relative paths stay what they were.
    assert redacted_url("sqlite:////var/lib/store.db") == "sqlite:////var/lib/store.db"
    assert redacted_url("sqlite:///store.db") == "sqlite:///store.db"
