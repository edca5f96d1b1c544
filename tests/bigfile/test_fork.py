"""A forked child process neither sees nor changes the parent's page memory.

Page memory lives in a memfd that fork() shares: without care a child would
write into the parent's pages and see slots the parent reuses.  The core makes
the child start with an empty cache that reloads from the file.
"""

from __future__ import annotations

import multiprocessing
import os

import numpy as np
import pytest

from tests.common import MemFile, run_in_child
from zbigarray.bigfile import RAM, WRITEOUT_MARKSTORED, WRITEOUT_STORE

PAGESIZE = os.sysconf("SC_PAGESIZE")


def _block(blk: int) -> bytes:
    return bytes([blk + 1]) * PAGESIZE


def _fork_scenario() -> None:
    f = MemFile(PAGESIZE)
    for blk in range(16):
        f.blocks[blk] = _block(blk)
    with f.fileh_open(ram=RAM(8 * PAGESIZE)) as fileh:
        a = np.frombuffer(fileh.mmap(0, 16), np.uint8)
        assert a[0] == 1
        a[PAGESIZE] = 0xAB                      # block 1 dirty in the parent
        pid = os.fork()
        if pid == 0:                            # the child
            code = 1
            try:
                assert fileh.stats()["npages"] == 0
                assert a[0] == 1 and a[PAGESIZE] == 2   # the file, not the parent's write
                a[0] = 0xCD                     # stays in the child
                a[PAGESIZE] = 0xCD
                for blk in range(2, 16):        # pressure: recycles its own memory
                    assert a[blk * PAGESIZE] == blk + 1
                fileh.dirty_writeout(WRITEOUT_STORE | WRITEOUT_MARKSTORED)
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert a[0] == 1                        # the child's writes never reached us
        assert a[PAGESIZE] == 0xAB              # our dirty page is intact
        assert fileh.stats()["ndirty"] == 1
        for blk in range(2, 16):
            assert a[blk * PAGESIZE] == blk + 1
        fileh.dirty_writeout(WRITEOUT_STORE | WRITEOUT_MARKSTORED)
        assert f.blocks[1][0] == 0xAB and f.blocks[0][0] == 1
        del a


@pytest.mark.subprocess
def test_fork_child_starts_empty_and_leaves_the_parent_alone() -> None:
    run_in_child(_fork_scenario)


_inherited: np.ndarray | None = None     # a view the pool's workers inherit by fork


def _pool_sum(blk: int) -> int:
    assert _inherited is not None
    return int(_inherited[blk * PAGESIZE:(blk + 1) * PAGESIZE].sum(dtype=np.uint64))


def _pool_scenario() -> None:
    global _inherited
    f = MemFile(PAGESIZE)
    for blk in range(8):
        f.blocks[blk] = _block(blk)
    with f.fileh_open(ram=RAM(4 * PAGESIZE)) as fileh:
        _inherited = np.frombuffer(fileh.mmap(0, 8), np.uint8)
        assert _inherited[:].sum() > 0          # pages cached in the parent
        _inherited[0] = 0                       # and one dirty
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(2) as pool:
            sums = pool.map(_pool_sum, range(8))
        # Workers read the file (block 0 too: the parent's write is its own).
        assert sums == [(blk + 1) * PAGESIZE for blk in range(8)]
        assert _inherited[0] == 0
        _inherited = None


@pytest.mark.subprocess
def test_fork_based_multiprocessing_pool_reads_right_data() -> None:
    run_in_child(_pool_scenario)
