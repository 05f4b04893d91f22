"""Configuration: documented defaults match the code; bad files are clear errors."""

from __future__ import annotations

from pathlib import Path

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
