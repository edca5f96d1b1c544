"""The examples of README.md and docs/usage.md run as written (docs stay true to the code)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


@pytest.mark.subprocess
def test_readme_python_example_runs(tmp_path: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "README has no python example"
    code = blocks[0] + (
        "\nassert A.shape == (10**9 + 10, 16)"
        "\nassert (A[1000:2000] == 0).all() and (A[-10:] == 1).all()\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "data" / "arrays.fs").stat().st_size < 10 << 20   # holes cost nothing


USAGE = ROOT / "docs" / "usage.md"


@pytest.mark.subprocess
@pytest.mark.parametrize("n", range(9))
def test_usage_guide_python_examples_run(tmp_path: Path, n: int) -> None:
    blocks = re.findall(r"```python\n(.*?)```", USAGE.read_text(), re.S)
    assert len(blocks) == 9, "docs/usage.md's python examples changed: update this test"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    (tmp_path / "data").mkdir()
    r = subprocess.run([sys.executable, "-c", blocks[n]], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
