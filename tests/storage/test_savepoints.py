"""Savepoints with uncommitted ZBigArray changes (docs/storage.md,
"Transaction protocol", items 1, 4, 6, 7).

A state machine writes (through ``A[i:j] = v`` and through NumPy views kept
across transactions), takes savepoints (optimistic or not), rolls back to any
live one, commits and aborts, against a NumPy model, over two arrays of one
connection and a RAM of a few blocks, so that dirty pages spill into block
objects and ZODB's savepoint storage.  It runs in a child process, whose
default RAM gets its small capacity from ``ZBIGARRAY_RAM_MAX``.  Then
deterministic edge cases; single accesses straddling two blocks with the RAM
nearly full of dirty pages (livelocks the machine found); and a check that
zbigarray patches no class of transaction or ZODB.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import transaction
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant, precondition,
                                 rule, run_state_machine_as_test)
from transaction.interfaces import InvalidSavepointRollbackError

from tests.common import run_python
from tests.storage.conftest import BLKSIZE
from zbigarray.bigarray.array_zodb import ZBigArray
from zbigarray.storage import open_db

PER = BLKSIZE // 8                  # float64 per block
NBLK_A = 24                         # A: float64, 24 blocks
NBLK_B = 16                         # B: int32, 16 blocks
NA = NBLK_A * PER
NB = NBLK_B * BLKSIZE // 4
RAM_BLOCKS = 6                      # RAM of the child processes
TIMEOUT = 120


def _in_child(name: str, *args: Any, timeout: float = TIMEOUT) -> str:
    """Run module-level function `name` of this module (with `args`, a repr
    each) in a child whose default RAM holds `RAM_BLOCKS` blocks, under
    `timeout` (faulthandler dumps the stacks before); return its stdout."""
    code = (f"import faulthandler\n"
            f"faulthandler.dump_traceback_later({timeout - 5}, exit=True)\n"
            f"from zbigarray.bigfile import ram_default\n"
            f"assert ram_default().capacity == {RAM_BLOCKS * BLKSIZE}\n"
            f"from {__name__} import {name}\n"
            f"{name}(*{args!r})\n")
    r = run_python(code, env={"ZBIGARRAY_RAM_MAX": str(RAM_BLOCKS * BLKSIZE)},
                   timeout=timeout)
    assert r.returncode == 0, f"{name} failed (returncode {r.returncode}):\n" \
        f"{r.stdout}\n{r.stderr}"
    return r.stdout


# Spills, counted (the fault layer calls ZBlkBigFile.spill by name).
_SPILLS = [0]


def _count_spills() -> None:
    from zbigarray.storage._zblkfile import ZBlkBigFile
    spill = ZBlkBigFile.spill
    if getattr(spill, "_counted", False):
        return

    def counted(self: Any) -> None:
        _SPILLS[0] += 1
        spill(self)

    counted._counted = True         # type: ignore[attr-defined]
    ZBlkBigFile.spill = counted     # type: ignore[method-assign]


def _committed(db: Any, *names: str) -> list[np.ndarray]:
    """The arrays as a fresh connection sees them."""
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    try:
        return [np.array(conn.root()[name]) for name in names]
    finally:
        tm.abort()
        conn.close()


# The state machine
##############################################################################

_STATS = {"savepoints": 0, "rollbacks": 0, "rollbacks_over_spill": 0,
          "savepoints_with_spilled": 0, "commits": 0, "view_writes": 0}


class SavepointMachine(RuleBasedStateMachine):
    """One connection, arrays A (float64) and B (int32), kept views of them;
    a model of each array's current and committed content, and a stack of
    live savepoints with the model at each."""

    @initialize(fmt=st.sampled_from(["ZBlk0", "ZBlk1"]), cache=st.sampled_from([1, 1000]),
                storage=st.sampled_from(["memory", "file"]))
    def setup(self, fmt: str, cache: int, storage: str) -> None:
        self.saved_fmt = os.environ.get("ZBIGARRAY_ZBLK_FMT")
        os.environ["ZBIGARRAY_ZBLK_FMT"] = fmt
        self.tmp = None
        if storage == "file":
            self.tmp = tempfile.mkdtemp(prefix="zbigarray-sp-")
            self.db = open_db(os.path.join(self.tmp, "data.fs"), cache_size=cache)
        else:
            self.db = open_db("memory://", cache_size=cache)
        self.tm = transaction.TransactionManager()
        self.conn = self.db.open(self.tm)
        root = self.conn.root()
        root["A"] = A = ZBigArray(NA, np.float64, blksize=BLKSIZE)
        root["B"] = B = ZBigArray(NB, np.int32, blksize=BLKSIZE)
        self.conn.add(A)
        self.conn.add(B)
        self.tm.commit()
        self.arrays = [A, B]
        self.model = [np.zeros(NA), np.zeros(NB, np.int32)]
        self.committed = [m.copy() for m in self.model]
        # (array, start, stop, view): A[start:stop] kept across transactions
        self.views: list[tuple[int, int, int, np.ndarray]] = [
            (0, 0, NA, A[:]), (1, NB // 3, NB, B[NB // 3:])]
        self.stack: list[tuple[Any, list[np.ndarray], int]] = []
        self.dead: list[Any] = []
        self.counter = 0
        self.tm2 = transaction.TransactionManager()
        self.conn2 = self.db.open(self.tm2)

    def teardown(self) -> None:
        if self.saved_fmt is None:
            os.environ.pop("ZBIGARRAY_ZBLK_FMT", None)
        else:
            os.environ["ZBIGARRAY_ZBLK_FMT"] = self.saved_fmt
        if hasattr(self, "db"):
            self.views = []
            self.stack = []
            self.tm.abort()
            self.tm2.abort()
            self.db.close()
        if getattr(self, "tmp", None):
            shutil.rmtree(self.tmp, ignore_errors=True)

    def _value(self) -> int:
        self.counter += 1
        return self.counter

    @staticmethod
    def _slice(data: st.DataObject, n: int, nonempty: bool = False) -> tuple[int, int]:
        """A slice [i, j) of a range of `n` elements (unaligned starts: NumPy's
        SIMD loops then make single accesses that straddle two blocks)."""
        i = data.draw(st.integers(0, n - 1), label="start")
        j = data.draw(st.integers(i + nonempty, n), label="stop")
        return i, j

    def _end(self) -> None:
        self.dead.extend(sp for sp, _, _ in self.stack)
        del self.dead[:-4]
        self.stack = []

    @rule(k=st.integers(0, 1), data=st.data(), step=st.sampled_from([1, 1, 3, PER + 1]))
    def write(self, k: int, data: st.DataObject, step: int) -> None:
        i, j = self._slice(data, len(self.model[k]))
        v = self._value()
        self.arrays[k][i:j:step] = v
        self.model[k][i:j:step] = v

    @rule(idx=st.integers(0, 2), data=st.data())
    def write_view(self, idx: int, data: st.DataObject) -> None:
        k, lo, hi, view = self.views[idx % len(self.views)]
        i, j = self._slice(data, hi - lo)
        v = self._value()
        view[i:j] = v
        self.model[k][lo + i:lo + j] = v
        _STATS["view_writes"] += 1

    @rule(k=st.integers(0, 1), data=st.data())
    def new_view(self, k: int, data: st.DataObject) -> None:
        i, j = self._slice(data, len(self.model[k]), nonempty=True)
        self.views.append((k, i, j, self.arrays[k][i:j]))
        del self.views[:-3]

    @rule(k=st.integers(0, 1), data=st.data())
    def read(self, k: int, data: st.DataObject) -> None:
        i, j = self._slice(data, len(self.model[k]))
        np.testing.assert_array_equal(np.array(self.arrays[k][i:j]), self.model[k][i:j])

    @rule(optimistic=st.booleans())
    def savepoint(self, optimistic: bool) -> None:
        sp = self.tm.savepoint(optimistic)
        self.stack.append((sp, [m.copy() for m in self.model], _SPILLS[0]))
        _STATS["savepoints"] += 1
        if any(a._fileh.file.uncommitted.stored() for a in self.arrays):
            _STATS["savepoints_with_spilled"] += 1

    @precondition(lambda self: self.stack)
    @rule(data=st.data(), twice=st.booleans())
    def rollback(self, data: st.DataObject, twice: bool) -> None:
        n = data.draw(st.integers(0, len(self.stack) - 1), label="savepoint")
        sp, model, spills = self.stack[n]
        sp.rollback()
        if twice:
            sp.rollback()
        # transaction: the savepoint rolled back to stays valid, later ones die
        self.dead.extend(s for s, _, _ in self.stack[n + 1:])
        del self.dead[:-4]
        del self.stack[n + 1:]
        self.model = [m.copy() for m in model]
        _STATS["rollbacks"] += 1
        if _SPILLS[0] > spills:
            _STATS["rollbacks_over_spill"] += 1

    @precondition(lambda self: self.dead)
    @rule(data=st.data())
    def rollback_invalid(self, data: st.DataObject) -> None:
        sp = data.draw(st.sampled_from(self.dead), label="dead savepoint")
        with pytest.raises(InvalidSavepointRollbackError):
            sp.rollback()

    @rule(commit=st.booleans(), begin=st.booleans())
    def end(self, commit: bool, begin: bool) -> None:
        """Commit (checked through another connection) or abort; then begin
        the next transaction explicitly, or let it begin implicitly."""
        if commit:
            self.tm.commit()
            self.committed = [m.copy() for m in self.model]
            _STATS["commits"] += 1
            self.tm2.begin()
            for name, want in zip("AB", self.committed):
                np.testing.assert_array_equal(np.array(self.conn2.root()[name]), want)
            self.tm2.abort()
        else:
            self.tm.abort()
            self.model = [m.copy() for m in self.committed]
        self._end()
        if begin:
            self.tm.begin()

    @invariant()
    def arrays_and_views_equal_the_model(self) -> None:
        if not hasattr(self, "arrays"):
            return
        for a, m in zip(self.arrays, self.model):
            np.testing.assert_array_equal(np.array(a), m)
        for k, lo, hi, view in self.views:
            np.testing.assert_array_equal(np.array(view), self.model[k][lo:hi])


def _run_machine() -> None:
    _count_spills()
    run_state_machine_as_test(SavepointMachine, settings=settings(
        max_examples=100, stateful_step_count=50, deadline=None,
        suppress_health_check=[HealthCheck.too_slow]))
    print("spills", _SPILLS[0], _STATS)
    assert _SPILLS[0] > 0, "no spill happened: RAM too big?"
    assert _STATS["rollbacks_over_spill"] > 0, _STATS
    assert _STATS["savepoints_with_spilled"] > 0, _STATS


@pytest.mark.slow
@pytest.mark.subprocess
def test_savepoint_state_machine() -> None:
    _in_child("_run_machine")


# Deterministic edge cases
##############################################################################

N = 4 * PER                         # four blocks of float64


def _new(db: Any, *names: str) -> list[ZBigArray]:
    root = db.open().root()
    arrays = []
    for name in names or ("a",):
        root[name] = a = ZBigArray(N, np.float64, blksize=BLKSIZE)
        a[:] = 1.0
        arrays.append(a)
    transaction.commit()
    return arrays


def test_nested_savepoints_roll_back_to_the_older_one(db, zblk_fmt: str) -> None:
    a, = _new(db)
    a[0] = 2.0
    sp1 = transaction.savepoint()
    a[0] = 3.0
    a[PER] = 3.0
    sp2 = transaction.savepoint()
    a[0] = 4.0
    a[2 * PER] = 4.0
    sp2.rollback()
    assert (a[0], a[PER], a[2 * PER]) == (3.0, 3.0, 1.0)
    a[3 * PER] = 5.0
    sp1.rollback()
    assert (a[0], a[PER], a[2 * PER], a[3 * PER]) == (2.0, 1.0, 1.0, 1.0)
    with pytest.raises(InvalidSavepointRollbackError):
        sp2.rollback()
    assert a[0] == 2.0
    transaction.commit()
    want = np.ones(N)
    want[0] = 2.0
    np.testing.assert_array_equal(_committed(db, "a")[0], want)


def test_rollback_twice_to_the_same_savepoint(db, zblk_fmt: str) -> None:
    a, = _new(db)
    a[:PER + 1] = 2.0
    sp = transaction.savepoint()
    a[:] = 3.0
    sp.rollback()
    np.testing.assert_array_equal(a[:PER + 2], [2.0] * (PER + 1) + [1.0])
    a[PER] = 4.0
    a[3 * PER] = 4.0
    sp.rollback()
    np.testing.assert_array_equal(a[:PER + 2], [2.0] * (PER + 1) + [1.0])
    assert a[3 * PER] == 1.0
    sp.rollback()                                   # without a change between
    transaction.commit()
    want = np.ones(N)
    want[:PER + 1] = 2.0
    np.testing.assert_array_equal(_committed(db, "a")[0], want)


def test_savepoint_then_commit_stores_the_latest(db, zblk_fmt: str) -> None:
    a, = _new(db)
    a[:PER] = 2.0
    transaction.savepoint()
    a[PER // 2:2 * PER] = 3.0
    transaction.savepoint(optimistic=True)
    a[3 * PER] = 4.0
    transaction.commit()
    want = np.ones(N)
    want[:PER] = 2.0
    want[PER // 2:2 * PER] = 3.0
    want[3 * PER] = 4.0
    np.testing.assert_array_equal(_committed(db, "a")[0], want)
    np.testing.assert_array_equal(np.asarray(a), want)


def test_savepoint_then_abort(db, zblk_fmt: str) -> None:
    a, = _new(db)
    a[:PER] = 2.0
    sp = transaction.savepoint()
    a[PER:] = 3.0
    transaction.abort()
    assert (np.asarray(a) == 1.0).all()
    with pytest.raises(InvalidSavepointRollbackError):
        sp.rollback()
    # The next transaction starts clean: a savepoint and rollback there see
    # only its own changes.
    a[5] = 6.0
    sp = transaction.savepoint()
    a[6] = 7.0
    sp.rollback()
    transaction.commit()
    want = np.ones(N)
    want[5] = 6.0
    np.testing.assert_array_equal(_committed(db, "a")[0], want)


def test_savepoint_after_rollback_then_abort(db, zblk_fmt: str) -> None:
    # A rollback leaves blocks to restore from the savepoint (the overlay);
    # an abort must forget them, not restore them at the next load.
    a, = _new(db)
    a[:] = 2.0
    sp = transaction.savepoint()
    a[:] = 3.0
    sp.rollback()
    transaction.abort()
    assert (np.asarray(a) == 1.0).all()
    transaction.commit()
    assert (_committed(db, "a")[0] == 1.0).all()


def test_kept_view_in_an_implicitly_begun_transaction(db, zblk_fmt: str) -> None:
    a, = _new(db)
    v = a[:]
    v[:] = 2.0
    transaction.commit()
    # The next transaction began implicitly; nothing touches the array, only
    # the view is written.
    sp0 = transaction.savepoint()
    v[PER - 1:PER + 1] = 3.0                     # blocks 0 and 1
    sp1 = transaction.savepoint()
    v[PER:3 * PER] = 4.0
    sp1.rollback()
    np.testing.assert_array_equal(v[PER - 2:PER + 2], [2.0, 3.0, 3.0, 2.0])
    assert v[2 * PER] == 2.0
    sp0.rollback()
    assert (v == 2.0).all()
    v[7] = 5.0
    transaction.commit()
    want = np.full(N, 2.0)
    want[7] = 5.0
    np.testing.assert_array_equal(_committed(db, "a")[0], want)


def test_optimistic_savepoint(db, zblk_fmt: str) -> None:
    a, = _new(db)
    a[1] = 2.0
    sp = transaction.savepoint(optimistic=True)
    a[1] = 3.0
    a[2 * PER] = 3.0
    sp.rollback()
    assert a[1] == 2.0 and a[2 * PER] == 1.0
    transaction.commit()
    want = np.ones(N)
    want[1] = 2.0
    np.testing.assert_array_equal(_committed(db, "a")[0], want)


def test_two_arrays_in_one_connection(db, zblk_fmt: str) -> None:
    a, b = _new(db, "a", "b")
    vb = b[:]
    transaction.commit()
    a[0] = 2.0                  # b not touched before the savepoint
    sp = transaction.savepoint()
    a[0] = 3.0
    vb[0] = 3.0                 # b's handle joins after the savepoint
    sp.rollback()
    assert a[0] == 2.0 and vb[0] == 1.0 and b[0] == 1.0
    b[PER] = 4.0
    sp2 = transaction.savepoint()
    a[:] = 5.0
    b[:] = 5.0
    sp2.rollback()
    assert a[0] == 2.0 and a[1] == 1.0 and b[PER] == 4.0 and b[0] == 1.0
    transaction.commit()
    ga, gb = _committed(db, "a", "b")
    wa, wb = np.ones(N), np.ones(N)
    wa[0] = 2.0
    wb[PER] = 4.0
    np.testing.assert_array_equal(ga, wa)
    np.testing.assert_array_equal(gb, wb)


# Spilled blocks: in a child with a RAM of RAM_BLOCKS blocks
###########################################################################

NS = 4 * RAM_BLOCKS * PER           # four times the RAM


def _spilled_scenario(fmt: str) -> None:
    _count_spills()
    os.environ["ZBIGARRAY_ZBLK_FMT"] = fmt
    tmp = Path(tempfile.mkdtemp(prefix="zbigarray-sp-"))
    try:
        db = open_db(str(tmp / "data.fs"))
        root = db.open().root()
        root["a"] = a = ZBigArray(NS, np.float64, blksize=BLKSIZE)
        a[:] = 1.0
        transaction.commit()
        want = np.ones(NS)

        # Spilled before the savepoint, rewritten (spilled again) after it.
        a[:] = 2.0
        assert _SPILLS[0] > 0, "no spill"
        assert a._fileh.file.uncommitted.stored(), "nothing spilled"
        want[:] = 2.0
        sp1 = transaction.savepoint()
        spills = _SPILLS[0]
        a[::PER // 2] = 3.0
        a[PER + 1:3 * PER] = 3.0
        assert _SPILLS[0] > spills
        sp1.rollback()
        np.testing.assert_array_equal(np.asarray(a), want)

        # Few dirty pages at the savepoint, many spilled after it.
        a[5] = 4.0
        want[5] = 4.0
        sp2 = transaction.savepoint()
        spills = _SPILLS[0]
        a[:] = 5.0
        assert _SPILLS[0] > spills
        sp2.rollback()
        np.testing.assert_array_equal(np.asarray(a), want)
        sp2.rollback()
        np.testing.assert_array_equal(np.asarray(a), want)
        sp1.rollback()
        want[5] = 2.0
        np.testing.assert_array_equal(np.asarray(a), want)

        # After the rollback: more changes, spilled, then commit.
        a[-PER:] = 6.0
        a[: 2 * RAM_BLOCKS * PER: 7] = 6.0
        want[-PER:] = 6.0
        want[: 2 * RAM_BLOCKS * PER: 7] = 6.0
        transaction.commit()
        np.testing.assert_array_equal(_committed(db, "a")[0], want)
        np.testing.assert_array_equal(np.asarray(a), want)

        # Savepoint while spilled, then abort.
        a[:] = 7.0
        transaction.savepoint()
        a[3] = 8.0
        transaction.abort()
        np.testing.assert_array_equal(np.asarray(a), want)
        np.testing.assert_array_equal(_committed(db, "a")[0], want)
        db.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.subprocess
@pytest.mark.parametrize("fmt", ["ZBlk0", "ZBlk1"])
def test_savepoint_with_spilled_blocks(fmt: str) -> None:
    _in_child("_spilled_scenario", fmt, timeout=60)


# A single load or store across two blocks with the RAM nearly full of dirty
# pages
###########################################################################

STRADDLE_CASES = {
    # B holds all pages but one, A the last one, dirty: spilling A's only
    # dirty page (block 0) to load block 1 threw out the block the retried
    # access needs, forever, while B's pages were never spilled.
    "other_dirty_own_dirty": ("B", True),
    # B's dirty pages leave one page for A's two clean blocks: each load
    # reclaims the other clean page, and the RAM is never full of dirty pages,
    # so nothing spills: load, reclaim, load... forever.
    "other_dirty_own_clean": ("B", False),
    # The same with one array: its own dirty pages (blocks 2-6) leave one page.
    "own_dirty": ("A", False),
}


def _straddling_access(case: str, store: bool) -> None:
    """All but one page of the RAM (6 blocks) are dirty; then one 8-byte
    access spans A's blocks 0 and 1, as NumPy's SIMD loops (and memcpy) do on
    slices off a 16-byte boundary.  It must complete."""
    import ctypes
    others, a_dirty = STRADDLE_CASES[case]
    db = open_db("memory://")
    root = db.open().root()
    root["A"] = A = ZBigArray(8 * PER, np.float64, blksize=BLKSIZE)
    root["B"] = B = ZBigArray(8 * PER, np.float64, blksize=BLKSIZE)
    transaction.commit()
    want = np.zeros(8 * PER)
    if others == "B":
        B[:(RAM_BLOCKS - 1) * PER] = 1.0
    else:
        A[2 * PER:(RAM_BLOCKS + 1) * PER] = 1.0
        want[2 * PER:(RAM_BLOCKS + 1) * PER] = 1.0
    if a_dirty:
        A[0] = 2.0
        want[0] = 2.0
    want = want.view(np.uint8)
    v = A[:]
    word = ctypes.c_int64.from_address(v.__array_interface__["data"][0] + BLKSIZE - 4)
    if store:
        word.value = -1
        want[BLKSIZE - 4:BLKSIZE + 4] = 255
    else:
        assert word.value == 0
    np.testing.assert_array_equal(v.view(np.uint8), want)
    transaction.commit()
    np.testing.assert_array_equal(_committed(db, "A")[0].view(np.uint8), want)
    db.close()


def _straddling(case: str, access: str) -> None:
    _straddling_access(case, access == "store")


@pytest.mark.subprocess
@pytest.mark.parametrize("access", ["store", "load"])
@pytest.mark.parametrize("case", ["other_dirty_own_dirty", "other_dirty_own_clean",
                                  "own_dirty"])
def test_access_straddling_two_blocks_with_one_page_not_dirty(case: str, access: str
                                                              ) -> None:
    _in_child("_straddling", case, access, timeout=15)


# zbigarray patches no class of transaction or ZODB
###########################################################################

def _no_class_patched() -> None:
    """Using arrays (a spill, a savepoint, a rollback, commits) changes no
    class of transaction or ZODB either: a patch may come at first use."""
    import transaction._manager
    import transaction._transaction
    import ZODB.Connection
    classes = [transaction._transaction.Transaction, transaction._manager.TransactionManager,
               transaction._manager.ThreadTransactionManager, ZODB.Connection.Connection]
    before = [dict(vars(c)) for c in classes]
    import zbigarray.bigarray.array_zodb
    import zbigarray.storage
    tmp = tempfile.mkdtemp(prefix="zbigarray-sp-")
    try:
        db = zbigarray.storage.open_db(os.path.join(tmp, "data.fs"))
        root = db.open().root()
        root["a"] = a = zbigarray.bigarray.array_zodb.ZBigArray(NS, np.float64,
                                                                blksize=BLKSIZE)
        transaction.commit()
        a[:] = 1.0                                   # spills
        sp = transaction.savepoint()
        a[:] = 2.0
        sp.rollback()
        transaction.commit()
        db.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for c, d in zip(classes, before):
        now = dict(vars(c))
        assert now.keys() == d.keys(), (c, now.keys() ^ d.keys())
        changed = [k for k in d if now[k] is not d[k]]
        assert not changed, (c, changed)


@pytest.mark.subprocess
def test_importing_zbigarray_patches_no_class_of_transaction_or_zodb() -> None:
    # tests.storage.test_savepoints imports zbigarray: compare around a child
    # that has imported only transaction and ZODB.
    code = (
        "import sys\n"
        "import transaction, transaction._manager, transaction._transaction\n"
        "import ZODB.Connection\n"
        "classes = [transaction._transaction.Transaction,\n"
        "           transaction._manager.TransactionManager,\n"
        "           transaction._manager.ThreadTransactionManager,\n"
        "           ZODB.Connection.Connection]\n"
        "before = [dict(vars(c)) for c in classes]\n"
        "assert not any(m.startswith('zbigarray') for m in sys.modules)\n"
        "import zbigarray.storage, zbigarray.bigarray.array_zodb\n"
        "from tests.storage.test_savepoints import _no_class_patched\n"
        "_no_class_patched()\n"
        "for c, d in zip(classes, before):\n"
        "    now = dict(vars(c))\n"
        "    assert now.keys() == d.keys(), (c, now.keys() ^ d.keys())\n"
        "    changed = [k for k in d if now[k] is not d[k]]\n"
        "    assert not changed, (c, changed)\n"
        "print('ok')\n")
    r = run_python(code, env={"ZBIGARRAY_RAM_MAX": str(RAM_BLOCKS * BLKSIZE)})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"
