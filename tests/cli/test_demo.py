"""The command line: ``python -m zbigarray --help`` and the demo."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cli.conftest import assert_one_line_error
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


@pytest.mark.subprocess
def test_demo_bad_path_is_one_line(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("not a directory")
    for bad in (afile, afile / "sub"):
        assert_one_line_error(_run("demo", "--path", str(bad), "--size", "1M", "--ram", "4M"),
                              "demo", str(bad))
    assert afile.read_text() == "not a directory"


@pytest.mark.subprocess
def test_two_demos_in_one_folder_leave_each_other_alone(tmp_path: Path) -> None:
    first = subprocess.Popen(
        [sys.executable, "-m", "zbigarray", "demo", "--path", str(tmp_path), "--size", "256M",
         "--ram", "8M"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        fs = tmp_path / "demo.fs"
        deadline = time.monotonic() + 60
        while not (fs.exists() and fs.stat().st_size > 8 << 20):
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.01)
        second = _run("demo", "--path", str(tmp_path), "--size", "1M", "--ram", "4M")
        assert_one_line_error(second, "demo", "another demo is running")
        out, err = first.communicate(timeout=240)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0, err
    assert "is 0 again" in out and "statistics out of core" in out
    assert (tmp_path / "demo.fs.lock").exists()


@pytest.mark.subprocess
def test_demo_replaces_its_earlier_database(tmp_path: Path) -> None:
    sizes = []
    for _ in range(2):
        r = _run("demo", "--path", str(tmp_path), "--size", "2M", "--ram", "4M")
        assert r.returncode == 0, r.stderr
        sizes.append((tmp_path / "demo.fs").stat().st_size)
    # The second run started afresh, not on top of the first.
    assert sizes[1] == sizes[0]
