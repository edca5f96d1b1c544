"""The command line: ``python -m zbigarray --help`` and the demo."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.common import REPO


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "zbigarray", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.subprocess
def test_help_lists_demo() -> None:
    r = _run("--help")
    assert r.returncode == 0 and "demo" in r.stdout
    r = _run("demo", "--help")
    assert r.returncode == 0 and "--size" in r.stdout and "--ram" in r.stdout


@pytest.mark.subprocess
def test_demo_runs_out_of_core(tmp_path: Path) -> None:
    r = _run("demo", "--path", str(tmp_path), "--size", "64M", "--ram", "8M")
    assert r.returncode == 0, r.stderr
    assert "8.0 x RAM capacity" in r.stdout
    assert "is 0 again" in r.stdout
    assert "100%" in r.stderr
    assert (tmp_path / "demo.fs").exists()


@pytest.mark.subprocess
def test_demo_bad_size_is_a_usage_error() -> None:
    r = _run("demo", "--size", "lots")
    assert r.returncode == 2 and "not a size" in r.stderr
