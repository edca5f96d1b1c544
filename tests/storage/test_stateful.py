"""A state machine: two connections write, commit, abort and re-open; a model
(the committed array as an ndarray) says what each must see."""

from __future__ import annotations

import os

import numpy as np
import transaction
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from ZODB.POSException import ConflictError

from zbigarray.bigarray.array_zodb import ZBigArray
from zbigarray.storage import open_db

BLKSIZE = 4096
PER_BLK = BLKSIZE // 8
NBLK = 70                  # more than one LOBTree bucket (60 entries)
N = NBLK * PER_BLK


class TwoConnections(RuleBasedStateMachine):
    """Side k has a transaction manager, a connection and the array through
    it, plus the writes it made since its last boundary."""

    @initialize(cache=st.sampled_from([1, 1000]), fmt=st.sampled_from(["ZBlk0", "ZBlk1"]))
    def setup(self, cache: int, fmt: str) -> None:
        self.saved_fmt = os.environ.get("ZBIGARRAY_ZBLK_FMT")
        os.environ["ZBIGARRAY_ZBLK_FMT"] = fmt
        self.db = open_db("memory://", cache_size=cache)
        self.tms = [transaction.TransactionManager() for _ in range(2)]
        self.conns = conns = [self.db.open(tm) for tm in self.tms]
        root = conns[0].root()
        root["a"] = a = ZBigArray(N, np.float64, blksize=BLKSIZE)
        conns[0].add(a)
        self.tms[0].commit()
        self.tms[1].begin()
        self.arrays = [a, conns[1].root()["a"]]
        self.committed = np.zeros(N)
        self.snapshot = [self.committed.copy(), self.committed.copy()]
        self.pending: list[dict[int, float]] = [{}, {}]

    def teardown(self) -> None:
        if self.saved_fmt is None:
            os.environ.pop("ZBIGARRAY_ZBLK_FMT", None)
        else:
            os.environ["ZBIGARRAY_ZBLK_FMT"] = self.saved_fmt
        if hasattr(self, "db"):
            for tm in self.tms:
                tm.abort()
            self.db.close()

    def _begin(self, k: int) -> None:
        self.tms[k].begin()
        self.pending[k] = {}
        self.snapshot[k] = self.committed.copy()

    @rule(k=st.integers(0, 1), blk=st.integers(0, NBLK - 1),
          off=st.integers(0, PER_BLK - 1), value=st.sampled_from([0.0, 1.0, 2.5, -7.0]))
    def write(self, k: int, blk: int, off: int, value: float) -> None:
        i = blk * PER_BLK + off
        self.arrays[k][i] = value
        self.pending[k][i] = value

    @rule(k=st.integers(0, 1))
    def commit(self, k: int) -> None:
        try:
            self.tms[k].commit()
        except ConflictError:
            self.tms[k].abort()
        else:
            for i, v in self.pending[k].items():
                self.committed[i] = v
        self._begin(k)

    @rule(k=st.integers(0, 1))
    def abort(self, k: int) -> None:
        self.tms[k].abort()
        self._begin(k)

    @rule(k=st.integers(0, 1), new_manager=st.booleans())
    def reopen(self, k: int, new_manager: bool) -> None:
        """Close side k's connection (its changes are aborted) and open one
        again: the pooled connection, maybe with another manager."""
        self.tms[k].abort()
        self.conns[k].close()
        if new_manager:
            self.tms[k] = transaction.TransactionManager()
        self.conns[k] = self.db.open(self.tms[k])
        self._begin(k)
        self.arrays[k] = self.conns[k].root()["a"]

    @invariant()
    def each_side_sees_its_snapshot_and_own_writes(self) -> None:
        if not hasattr(self, "arrays"):
            return
        for k in range(2):
            expect = self.snapshot[k].copy()
            for i, v in self.pending[k].items():
                expect[i] = v
            np.testing.assert_array_equal(np.asarray(self.arrays[k]), expect)


TwoConnections.TestCase.settings = settings(max_examples=25, stateful_step_count=25,
                                            deadline=None)
test_two_connections = TwoConnections.TestCase
