"""No credentials in the repository; models only from the registry; files only from the
allowed data directories; the registry filter never takes free text."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from pipeline_lib import registry
from pipeline_lib.config import bundled_dataset_path
from pipeline_lib.data.ingest import DATA_ROOTS_ENV, read_file
from pipeline_lib.errors import DataValidationError, ModelLoadError

ROOT = Path(__file__).resolve().parents[1]

SECRET_PATTERNS = {
    "AWS access key": re.compile(r"AKIA[0-9A-Z]{16}"),
    "private key": re.compile(r"-----BEGIN (RSA |EC |OPENSSH |DSA )?PRIVATE KEY-----"),
    "GitHub token": re.compile(r"gh[pousr]_[A-Za-z0-9]{36}"),
    "Slack token": re.compile(r"xox[baprs]-[A-Za-z0-9-]{10,}"),
    "password in a URL": re.compile(r"[a-z+]+://[^/\s:@]+:(?!\$\{|<|\*\*\*)[^@\s/]{4,}@"),
    "assigned password": re.compile(r"(?i)(password|secret|api_key|token)\s*[:=]\s*['\"][^'\"\s$<{]{8,}['\"]"),
}


def _tracked_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=False)
    if listed.returncode != 0:  # not a git checkout (e.g. an sdist): scan the source folders
        return [p for d in ("pipeline_lib", "flows", "tests", "infra", "configs") for p in (ROOT / d).rglob("*")
                if p.is_file()]
    return [ROOT / name for name in listed.stdout.splitlines()]


def test_no_credentials_in_the_repository():
    found = []
    for path in _tracked_files():
        if path.suffix in (".png", ".gz", ".parquet", ".npz") or not path.is_file():
            continue
        text = path.read_text(errors="ignore")
        for name, pattern in SECRET_PATTERNS.items():
            for match in pattern.finditer(text):
                if path.name == "test_security.py":
                    continue  # the patterns themselves
                found.append(f"{path.relative_to(ROOT)}: {name}: {match.group(0)[:40]}")
    assert not found, "possible credentials committed:\n" + "\n".join(found)


def test_the_scanner_would_catch_a_credential(tmp_path):
    planted = "MLFLOW_TRACKING_URI=postgresql://mlflow:hunter2secret@db:5432/mlflow\napi_key = 'sk_live_abcdefgh123'"
    hits = [name for name, pattern in SECRET_PATTERNS.items() if pattern.search(planted)]
    assert hits == ["password in a URL", "assigned password"]


@pytest.mark.parametrize("uri", ["/tmp/model", "file:///tmp/model", "https://example.com/model.pkl",
                                 "s3://bucket/model"])
def test_models_are_only_loaded_from_the_registry(uri):
    with pytest.raises(ModelLoadError, match="only models:/"):
        registry.load_forecaster(uri)


def test_data_files_outside_the_allowed_roots_are_refused(tmp_path, monkeypatch):
    allowed = tmp_path / "landing"
    allowed.mkdir()
    inside = allowed / "sales.csv"
    inside.write_text("series_id,date,units\nA,2024-01-01,3\n")
    outside = tmp_path / "elsewhere.csv"
    outside.write_text(inside.read_text())
    monkeypatch.setenv(DATA_ROOTS_ENV, str(allowed))
    assert len(read_file(inside, "series_id")) == 1
    with pytest.raises(DataValidationError, match="outside the allowed data directories"):
        read_file(outside, "series_id")
    with pytest.raises(DataValidationError, match="outside"):
        read_file(allowed / ".." / "elsewhere.csv", "series_id")  # no escaping with ..
    assert len(read_file(bundled_dataset_path(), "series_id")) > 0  # the bundled data always works
