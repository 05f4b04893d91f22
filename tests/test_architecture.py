"""The layering that docs/architecture.md promises, checked on the code itself."""

from __future__ import annotations

import ast
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pipeline_lib

ROOT = Path(__file__).resolve().parents[1]


def test_the_library_never_imports_prefect():
    """Every module of pipeline_lib imports (and so runs its imports) without Prefect."""
    modules = [m.name for m in pkgutil.walk_packages(pipeline_lib.__path__, "pipeline_lib.")]
    code = ("import importlib, sys\n"
            f"for name in {modules!r}:\n"
            "    importlib.import_module(name)\n"
            "print(sorted(m for m in sys.modules if m == 'prefect' or m.startswith(('prefect.', 'flows'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == "[]", out.stdout
    # ... nor mentions it in a function-level import that the line above would not run.
    for path in (ROOT / "pipeline_lib").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] in ("prefect", "prefect_dask", "flows") for n in names), path


def test_flow_and_task_bodies_are_wiring():
    """Each @flow / @task function body stays a few lines of wiring (the logic is in
    pipeline_lib); the longest is the training flow's."""
    for path in (ROOT / "flows").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and any(
                    getattr(getattr(d, "func", d), "id", "") in ("flow", "task") for d in node.decorator_list):
                body = node.body[1:] if ast.get_docstring(node) else node.body
                lines = body[-1].end_lineno - body[0].lineno + 1
                assert lines <= 40, f"{path.name}:{node.name} has {lines} lines"


def test_the_system_prerequisites_script_says_what_it_cannot_install(tmp_path):
    """Without a package manager (an empty PATH here) the script names what is missing in
    one line and fails, instead of letting pytest fail later on a missing binary."""
    result = subprocess.run(["/bin/sh", str(ROOT / "infra" / "test-prerequisites.sh")], capture_output=True,
                            text=True, env={"PATH": str(tmp_path)})
    assert result.returncode == 1
    assert result.stderr.startswith("error: the tests need") and "chromium" in result.stderr
    assert "no apt-get" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_long_modules_say_why_they_are_long():
    """docs/architecture.md: no module over about 300 lines without the reason in its
    docstring (the docstring names its length, e.g. "About 400 lines: ...")."""
    for path in [*(ROOT / "pipeline_lib").rglob("*.py"), *(ROOT / "flows").glob("*.py")]:
        text = path.read_text()
        if len(text.splitlines()) > 320:
            docstring = ast.get_docstring(ast.parse(text)) or ""
            assert re.search(r"\d+\s+lines", docstring), f"{path.relative_to(ROOT)} is long and does not say why"
