"""Several threads, each with its own connection to one ZBigArray."""

from __future__ import annotations

import threading
import time

import numpy as np
import transaction
from ZODB.POSException import ConflictError

from tests.storage.conftest import BLKSIZE
from zbigarray.bigarray.array_zodb import ZBigArray

NTHREAD = 4
ROWS_PER_THREAD = 2
ROW = BLKSIZE // 8           # one row of float64 per block
DURATION = 3.0               # seconds of writing


def test_threads_write_their_rows_and_commit(db) -> None:
    root = db.open().root()
    root["a"] = a = ZBigArray((NTHREAD * ROWS_PER_THREAD, ROW), np.float64, blksize=BLKSIZE)
    transaction.commit()
    counts = [0] * NTHREAD
    errors: list[BaseException] = []
    stop = time.monotonic() + DURATION

    def work(k: int) -> None:
        try:
            tm = transaction.TransactionManager()
            conn = db.open(tm)
            b = conn.root()["a"]
            rows = slice(k * ROWS_PER_THREAD, (k + 1) * ROWS_PER_THREAD)
            n = 0
            while time.monotonic() < stop:
                tm.begin()
                # every committed row must be whole: one value per row
                for r in range(NTHREAD * ROWS_PER_THREAD):
                    row = b[r]
                    assert (row == row[0]).all(), f"row {r} torn"
                assert (b[rows] == n).all()
                b[rows] = n + 1
                try:
                    tm.commit()
                except ConflictError:
                    tm.abort()
                    continue
                n += 1
            counts[k] = n
            conn.close()
        except BaseException as e:      # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(NTHREAD)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "deadlock"
    assert not errors, errors
    transaction.begin()
    got = np.asarray(a)
    for k in range(NTHREAD):
        assert counts[k] > 0
        assert (got[k * ROWS_PER_THREAD:(k + 1) * ROWS_PER_THREAD] == counts[k]).all()
