"""Two processes sharing one array through a real database server: ZEO, and
RelStorage on PostgreSQL."""

from __future__ import annotations

import time

import numpy as np
import pytest
import transaction

from tests.common import run_python
from tests.storage.conftest import BLKSIZE, empty_relstorage
from zbigarray.bigarray.array_zodb import ZBigArray
from zbigarray.storage import open_db

PER_BLK = BLKSIZE // 8

CHILD = """
import numpy as np, transaction
from zbigarray.storage import open_db
db = open_db("{uri}", cache_size=1)
a = db.open().root()["a"]
assert a[5] == 1.0 and a[2 * {per} + 1] == 0.0, (a[5], a[2 * {per} + 1])
a[5] = 2.0                      # a changed block
a[2 * {per} + 1] = 3.0          # a hole
a.append(np.full({per}, 4.0))   # a new block
transaction.commit()
print("ok", db.lastTransaction().hex())
db.close()
"""


@pytest.fixture(params=[pytest.param("zeo", marks=pytest.mark.zeo),
                        pytest.param("postgres", marks=pytest.mark.relstorage)])
def server_uri(request: pytest.FixtureRequest) -> str:
    """URI of an empty database on a real server: ZEO, or RelStorage."""
    if request.param == "zeo":
        return f"zeo://{request.getfixturevalue('zeo_server')}"
    return empty_relstorage(request.getfixturevalue("postgres_server"))


@pytest.mark.subprocess
@pytest.mark.parametrize("fmt", ["ZBlk0", "ZBlk1"])
def test_other_process_changes_are_seen_at_next_boundary(server_uri: str, fmt: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZBIGARRAY_ZBLK_FMT", fmt)
    db = open_db(server_uri, cache_size=1)
    try:
        tm = transaction.TransactionManager()
        root = db.open(tm).root()
        root["a"] = a = ZBigArray(4 * PER_BLK, np.float64, blksize=BLKSIZE)
        root._p_jar.add(a)
        a[:PER_BLK] = 1.0
        tm.commit()
        tm.begin()
        before = np.array(a)                 # every page cached
        r = run_python(CHILD.format(uri=server_uri, per=PER_BLK),
                       env={"ZBIGARRAY_ZBLK_FMT": fmt})
        assert r.returncode == 0 and "ok" in r.stdout, r.stderr
        np.testing.assert_array_equal(np.asarray(a), before)    # same transaction
        # A ZEO client hears of others' commits asynchronously: wait for the
        # child's, then take the next boundary.  (RelStorage asks the
        # database: no wait.)
        tid = bytes.fromhex(r.stdout.split()[-1])
        deadline = time.monotonic() + 10
        while db.lastTransaction() < tid:
            assert time.monotonic() < deadline, "the child's commit did not arrive"
            time.sleep(0.005)
        tm.begin()
        assert a.shape == (5 * PER_BLK,)
        assert a[5] == 2.0 and a[2 * PER_BLK + 1] == 3.0 and a[4] == 1.0
        assert (np.asarray(a)[4 * PER_BLK:] == 4.0).all()
        tm.abort()
    finally:
        transaction.abort()
        db.close()
