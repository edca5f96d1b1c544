"""A file handle against a model, under random sequences of operations.

The model knows what the file stores, which pages the handle holds and with
what content, and which are dirty.  Rules write, read, write out (either
flag or both), discard, invalidate, reclaim, and change the file behind the
handle's back; after each step the handle's counters must agree with the
model.  The RAM is large enough that nothing is reclaimed unless a rule asks.
"""

from __future__ import annotations

import hypothesis.strategies as st
import numpy as np
from hypothesis import settings
from hypothesis.stateful import (RuleBasedStateMachine, invariant, precondition, rule,
                                 run_state_machine_as_test)

from tests.common import PAGESIZE, MemFile
from zbigarray.bigfile import RAM, WRITEOUT_MARKSTORED, WRITEOUT_STORE

NBLK = 6
BLKSIZE = PAGESIZE

blks = st.integers(0, NBLK - 1)
offsets = st.integers(0, BLKSIZE - 1)
values = st.integers(0, 255)
views = st.sampled_from(["whole", "tail"])


class FileHandleModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.file = MemFile(BLKSIZE)
        self.file.fault_around = 0   # the model loads what is touched, nothing ahead
        self.ram = RAM(4 * NBLK * BLKSIZE)
        self.fileh = self.file.fileh_open(ram=self.ram)
        # Two mappings sharing blocks 2..NBLK-1: they must agree everywhere.
        self.whole = np.frombuffer(self.fileh.mmap(0, NBLK), np.uint8)
        self.tail = np.frombuffer(self.fileh.mmap(2, NBLK - 2), np.uint8)
        self.stored: dict[int, bytearray] = {}      # the file: blk -> content
        self.pages: dict[int, bytearray] = {}       # pages held: blk -> content
        self.dirty: set[int] = set()

    def teardown(self) -> None:
        del self.whole, self.tail
        self.fileh.close()

    # --------------------------------------------------------------- helpers

    def _file_block(self, blk: int) -> bytearray:
        return self.stored.get(blk, bytearray(BLKSIZE))

    def _page(self, blk: int) -> bytearray:
        """The model's page for `blk`, loading it as the handle would."""
        if blk not in self.pages:
            self.pages[blk] = bytearray(self._file_block(blk))
        return self.pages[blk]

    def _addr(self, view: str, blk: int, off: int) -> tuple[np.ndarray, int]:
        if view == "tail" and blk >= 2:
            return self.tail, (blk - 2) * BLKSIZE + off
        return self.whole, blk * BLKSIZE + off

    # ----------------------------------------------------------------- rules

    @rule(view=views, blk=blks, off=offsets, value=values)
    def write(self, view: str, blk: int, off: int, value: int) -> None:
        a, i = self._addr(view, blk, off)
        a[i] = value
        self._page(blk)[off] = value
        self.dirty.add(blk)

    @rule(view=views, blk=blks, off=offsets)
    def read_byte(self, view: str, blk: int, off: int) -> None:
        a, i = self._addr(view, blk, off)
        assert a[i] == self._page(blk)[off]

    @rule(blk=blks)
    def read_block(self, blk: int) -> None:
        got = self.whole[blk * BLKSIZE:(blk + 1) * BLKSIZE].tobytes()
        assert got == bytes(self._page(blk))

    @rule(flags=st.sampled_from([WRITEOUT_STORE, WRITEOUT_MARKSTORED,
                                 WRITEOUT_STORE | WRITEOUT_MARKSTORED]))
    def writeout(self, flags: int) -> None:
        nstored = len(self.file.stored)
        self.fileh.dirty_writeout(flags)
        stored_now = [blk for blk, _ in self.file.stored[nstored:]]
        if flags & WRITEOUT_STORE:
            assert stored_now == sorted(self.dirty)
            for blk in self.dirty:
                self.stored[blk] = bytearray(self.pages[blk])
        else:
            assert stored_now == []
        if flags & WRITEOUT_MARKSTORED:
            self.dirty.clear()

    @rule()
    def discard(self) -> None:
        self.fileh.dirty_discard()
        for blk in self.dirty:
            del self.pages[blk]
        self.dirty.clear()

    @precondition(lambda self: any(blk not in self.dirty for blk in range(NBLK)))
    @rule(data=st.data())
    def invalidate_clean(self, data: st.DataObject) -> None:
        blk = data.draw(st.sampled_from([b for b in range(NBLK) if b not in self.dirty]))
        self.fileh.invalidate_page(blk)
        self.pages.pop(blk, None)

    @rule()
    def reclaim(self) -> None:
        n = self.ram.reclaim()
        clean = [blk for blk in self.pages if blk not in self.dirty]
        assert n == len(clean)
        for blk in clean:
            del self.pages[blk]

    @rule(blk=blks, value=values)
    def change_file(self, blk: int, value: int) -> None:
        """Another writer changes the file; the handle keeps its page until dropped."""
        data = bytearray([value]) * BLKSIZE
        self.file.blocks[blk] = bytes(data)
        self.stored[blk] = data

    # ------------------------------------------------------------ invariants

    @invariant()
    def counters_agree(self) -> None:
        st_ = self.fileh.stats()
        assert st_["npages"] == len(self.pages)
        assert st_["ndirty"] == len(self.dirty)
        assert self.fileh.isdirty() == bool(self.dirty)
        assert self.ram.stats()["npages"] == len(self.pages)


def test_file_handle_against_model() -> None:
    run_state_machine_as_test(FileHandleModel, settings=settings(
        max_examples=60, stateful_step_count=40, deadline=None,
        database=None))
