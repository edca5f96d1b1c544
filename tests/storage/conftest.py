"""Fixtures of the ZODB storage tests: databases, and a real ZEO server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import transaction
import ZODB

from zbigarray.storage import open_db

BLKSIZE = 16 * 1024
"""Small blocks: several per test array, four ZBlk1 chunks each."""


@pytest.fixture
def db(tmp_path: Path) -> Iterator[ZODB.DB]:
    """A FileStorage database in a temporary directory."""
    d = open_db(str(tmp_path / "data.fs"))
    yield d
    transaction.abort()
    d.close()


@pytest.fixture(params=["ZBlk0", "ZBlk1"])
def zblk_fmt(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test with each block format as the writer's format."""
    monkeypatch.setenv("ZBIGARRAY_ZBLK_FMT", request.param)
    return request.param


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def zeo_server(tmp_path: Path) -> Iterator[str]:
    """Start ``runzeo`` on a free port of 127.0.0.1; yield its ``host:port``.

    The server is its own process serving a FileStorage in `tmp_path`; it is
    stopped (SIGTERM, then SIGKILL) after the test.
    """
    yield from _run_zeo(tmp_path)


@pytest.fixture(scope="module")
def zeo_server_shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Like `zeo_server`, one server for a whole test module (tests keep
    their data under their own root keys)."""
    yield from _run_zeo(tmp_path_factory.mktemp("zeo"))


def _run_zeo(tmp_path: Path) -> Iterator[str]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ZEO.runzeo", "-a", f"127.0.0.1:{port}",
         "-f", str(tmp_path / "zeo.fs")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"})
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"runzeo exited with {proc.returncode}: "
                                   f"{proc.stderr.read().decode(errors='replace')}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("runzeo did not listen within 20 s") from None
                time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stderr.close()
