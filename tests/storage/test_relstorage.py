"""ZBigArray under transactions on RelStorage, against a real PostgreSQL server.

The transaction tests of :mod:`tests.storage.test_transactions` (round trip,
abort, failed commit, conflicts, transaction managers) run again here with
`db` a RelStorage database, in both of its schema kinds: history-preserving
(RelStorage's default) and history-free.  Invalidation between two clients
and between two processes runs in test_invalidation.py and test_zeo.py, whose
fixtures include RelStorage.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import transaction
import ZODB

from tests.common import run_python
from tests.storage.conftest import PG_DATABASES, PG_USER, empty_relstorage
from tests.storage.test_transactions import (  # noqa: F401  (collected here again)
    test_abort_discards,
    test_commit_stores_exactly_the_dirty_blocks,
    test_different_blocks_both_commit,
    test_explicit_transaction_managers,
    test_failed_commit_discards_and_stores_nothing,
    test_new_array_usable_before_first_commit,
    test_same_block_conflicts,
)
from zbigarray.storage import open_db

pytestmark = pytest.mark.relstorage


@pytest.fixture(params=[True, False], ids=["history", "history-free"])
def db(request: pytest.FixtureRequest, postgres_server: str) -> Iterator[ZODB.DB]:
    """An empty RelStorage database, opened through its zodburi URI."""
    d = open_db(empty_relstorage(postgres_server, keep_history=request.param))
    yield d
    transaction.abort()
    d.close()


@pytest.mark.subprocess
def test_lost_database_connection_raises_then_a_new_transaction_reads(
        postgres_server: str) -> None:
    """PostgreSQL drops the reader's sessions mid-scan (as on a server
    restart).  RelStorage cannot go on at the transaction's snapshot (it
    lived in that session), so the load is not retried: the reader gets a
    PageFaultError, not an abort, and after abort() reads everything right."""
    uri = empty_relstorage(postgres_server)
    host, port = postgres_server.split(":")
    r = run_python(f"""
        import numpy as np, psycopg2, transaction
        from zbigarray import ZBigArray, open_db
        from zbigarray.bigfile import PageFaultError

        BLK, NBLK = 16 * 1024, 16
        db = open_db({uri!r})
        conn = db.open()
        conn.root()["A"] = A = ZBigArray((NBLK * BLK // 8,), np.float64, blksize=BLK)
        A[:] = np.arange(A.shape[0], dtype=np.float64)
        transaction.commit()
        GOOD = float(np.arange(A.shape[0], dtype=np.float64).sum())
        db.close()

        db = open_db({uri!r})          # nothing cached: every block loads
        conn = db.open()
        A = conn.root()["A"]
        a = A[:]
        half = a.shape[0] // 2
        print("first half", a[:half].sum() == np.arange(half, dtype=np.float64).sum())
        admin = psycopg2.connect(host={host!r}, port={port}, user="{PG_USER}",
                                 dbname="postgres")
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = %s AND pid <> pg_backend_pid()",
                        ("{PG_DATABASES[True]}",))
        try:
            a.sum()
            print("no exception")
        except PageFaultError as e:
            print("raised")
        transaction.abort()
        print("after abort", A[:].sum() == GOOD)
    """, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["first half True", "raised", "after abort True"]
