"""A failed load of a ZBigArray block raises in the faulting thread and
dooms the transaction: nothing of it is stored, abort makes it usable again.

Each scenario runs in a child interpreter under a timeout (an abort or a hang
fails one test); the child prints what it observed.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests.common import run_python

pytestmark = pytest.mark.subprocess

# An array of 8 blocks of 16 KiB, block k holding k; `Broken.blk` makes the
# load of that block raise, as a storage that lost its server would.
SETUP = textwrap.dedent("""
    import numpy as np, transaction
    from ZODB.POSException import ConnectionStateError
    from transaction.interfaces import DoomedTransaction
    from zbigarray import ZBigArray, open_db
    from zbigarray.bigfile import PageFaultError
    from zbigarray.storage.file_zodb import ZBlk0

    BLK = 16 * 1024
    db = open_db(PATH)
    conn = db.open()
    conn.root()["A"] = A = ZBigArray((8 * BLK,), np.uint8, blksize=BLK)
    A[:] = np.repeat(np.arange(8, dtype=np.uint8), BLK)
    transaction.commit()
    db.close()
    db = open_db(PATH)           # no page cached: every touch loads
    conn = db.open()
    root = conn.root()
    A = root["A"]

    class Broken:
        blk = None
    real_loadblkdata = ZBlk0.loadblkdata
    def loadblkdata(self, buf, deps):
        if Broken.blk is not None and self.data[:1] == bytes([Broken.blk]):
            raise OSError("storage unreachable")
        return real_loadblkdata(self, buf, deps)
    ZBlk0.loadblkdata = loadblkdata

    def reopened_sum():
        c = db.open(transaction.TransactionManager())
        s = int(c.root()["A"][:].sum(dtype=np.int64))
        c.close()
        return s

    GOOD = sum(k * BLK for k in range(8))
    print("ready", reopened_sum() == GOOD, flush=True)
""")


def run(tmp_path: Path, code: str) -> list[str]:
    path = str(tmp_path / "data.fs")
    r = run_python(f"PATH = {path!r}\n" + SETUP + textwrap.dedent(code), timeout=90)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "ready True"
    return lines[1:]


def test_failed_load_dooms_the_transaction_and_abort_recovers(tmp_path: Path) -> None:
    lines = run(tmp_path, """
        a = A[:]
        Broken.blk = 5
        try:
            np.add(a, 1, out=a)          # blocks 0-4 change, block 5 fails
        except PageFaultError as e:
            print("raised", "block 5" in str(e), type(e.__cause__).__name__)
        try:
            transaction.commit()
        except DoomedTransaction as e:
            print("commit refused", "abort" in str(e))
        print("stored nothing", reopened_sum() == GOOD)
        transaction.abort()
        Broken.blk = None
        print("after abort", int(a.sum(dtype=np.int64)) == GOOD)
        np.add(a, 1, out=a)
        transaction.commit()
        print("committed", reopened_sum() == GOOD + 8 * BLK)
    """)
    assert lines == ["raised True OSError", "commit refused True", "stored nothing True",
                     "after abort True", "committed True"]


def test_failed_load_while_only_reading_dooms_too(tmp_path: Path) -> None:
    """The handle has no dirty page: a commit must still refuse, since the
    reader may have computed values it then stores elsewhere."""
    lines = run(tmp_path, """
        root["other"] = 0
        transaction.commit()
        Broken.blk = 2
        try:
            s = A[:].sum()
        except PageFaultError:
            print("raised")
        root["other"] = 1        # e.g. a result computed from the read
        try:
            transaction.commit()
        except DoomedTransaction:
            print("commit refused")
        transaction.abort()
        Broken.blk = None
        print("other", db.open(transaction.TransactionManager()).root()["other"])
    """)
    assert lines == ["raised", "commit refused", "other 0"]


def test_view_read_after_its_connection_closed_raises(tmp_path: Path) -> None:
    lines = run(tmp_path, """
        a = A[:]
        print("first", int(a[0]))
        transaction.abort()
        conn.close()
        try:
            a.sum()
        except PageFaultError as e:
            print("raised", type(e.__cause__).__name__)
        try:
            A[:]
        except ConnectionStateError:
            print("new views refused")
        print("alive")
    """)
    assert lines == ["first 0", "raised ConnectionStateError", "new views refused", "alive"]
