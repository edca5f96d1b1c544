"""Fixtures of the command-line tests: every command runs as a child
process (``python -m zbigarray``) under a timeout, on databases built here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import transaction
from BTrees.OOBTree import OOBTree
from persistent.mapping import PersistentMapping

from tests.common import REPO
from zbigarray import ZBigArray, open_db


def zb(*args: str | Path, env: dict[str, str] | None = None,
       timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``python -m zbigarray ARGS`` from the source tree; its result."""
    return subprocess.run([sys.executable, "-m", "zbigarray", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def assert_one_line_error(r: subprocess.CompletedProcess[str], command: str, *words: str) -> None:
    """`r` failed with status 1 and one line on stderr naming the command
    and holding each of `words`."""
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"zbigarray {command}: error: "), r.stderr
    for w in words:
        assert w in lines[0], (w, r.stderr)


A_DATA = np.arange(3000 * 16, dtype=np.float64).reshape(3000, 16)
"""Array ``a``: C order, 375 KiB, one block per 128 KiB."""


@pytest.fixture
def sample_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A FileStorage holding ``a`` (C, float64, attrs), ``grp/b`` (F order,
    mostly holes), ``grp/z`` (written as ZBlk1) and ``tree/c`` (in an
    OOBTree, never written: all holes)."""
    path = tmp_path / "data.fs"
    db = open_db(path)
    try:
        root = db.open().root()
        root["a"] = A = ZBigArray(A_DATA.shape, A_DATA.dtype, blksize=128 << 10)
        A[:] = A_DATA
        A.attrs.update(units="m/s", scale=0.5)
        root["grp"] = grp = PersistentMapping()
        grp["b"] = B = ZBigArray((10, 100_000), np.int32, order="F", blksize=64 << 10)
        B[:, :50] = 7
        root["tree"] = tree = OOBTree()
        tree["c"] = ZBigArray((5,), np.uint8)
        transaction.get().note("sample arrays")
        transaction.commit()
        with monkeypatch.context() as m:
            m.setenv("ZBIGARRAY_ZBLK_FMT", "ZBlk1")
            grp["z"] = Z = ZBigArray((1000,), np.int64, blksize=4096)
            Z[:] = np.arange(1000)
            transaction.commit()
    finally:
        transaction.abort()
        db.close()
    return path
