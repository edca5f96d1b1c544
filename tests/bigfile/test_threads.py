"""Page faults from threads, with and without the GIL; no deadlocks.

The failure mode of everything here is a deadlock, which would freeze the
test run: each scenario is a plain function run in a child interpreter under
a timeout (:func:`tests.common.run_in_child`), with assertions inside it.
"""

from __future__ import annotations

import gc
import random
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from tests.common import PAGESIZE, MemFile, fill_pattern, pattern, run_in_child
from zbigarray.bigfile import RAM, WRITEOUT_MARKSTORED, WRITEOUT_STORE, BigFileH

pytestmark = pytest.mark.subprocess

JOIN_TIMEOUT = 30


def _run_threads(targets: list[Callable[[], None]]) -> None:
    """Run each target in its own thread; re-raise the first failure."""
    errors: list[BaseException] = []

    def guard(target: Callable[[], None]) -> None:
        try:
            target()
        except BaseException as e:  # reported to the main thread below
            errors.append(e)

    threads = [threading.Thread(target=guard, args=(t,), daemon=True) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(JOIN_TIMEOUT)
        assert not t.is_alive(), "thread hung"
    if errors:
        raise errors[0]


def _pattern_sum(blks: range, blksize: int) -> int:
    """Sum of the uint64 words of :func:`pattern` over `blks`, modulo 2**64."""
    words = blksize // 8
    total = sum((blk << 32) * words + words * (words - 1) // 2 for blk in blks)
    return total % 2**64


# ------------------------------------------------------------- scenarios


def scenario_threads_with_gil() -> None:
    """Threads read with plain Python (GIL held during the fault)."""
    f = MemFile(PAGESIZE, fill=fill_pattern)
    with f.fileh_open() as fileh:
        m = memoryview(fileh.mmap(0, 64))

        def reader(k: int) -> Callable[[], None]:
            def run() -> None:
                for blk in range(k, 64, 4):
                    got = bytes(m[blk * PAGESIZE:(blk + 1) * PAGESIZE])
                    assert got == pattern(blk, PAGESIZE).tobytes(), blk
            return run

        _run_threads([reader(k) for k in range(4)])
        assert f.loads == {blk: 1 for blk in range(64)}


def scenario_threads_without_gil() -> None:
    """NumPy reductions (which release the GIL) fault in several threads."""
    blksize = 16 * PAGESIZE
    f = MemFile(blksize, fill=fill_pattern)
    with f.fileh_open() as fileh:
        a = np.frombuffer(fileh.mmap(0, 128), np.uint64)
        words = blksize // 8
        results: dict[str, int] = {}

        def summer(name: str, blks: range) -> Callable[[], None]:
            def run() -> None:
                results[name] = int(a[blks.start * words:blks.stop * words].sum())
            return run

        # Disjoint ranges, then all threads over the same pages at once.
        _run_threads([summer(f"part{k}", range(32 * k, 32 * (k + 1))) for k in range(4)])
        for k in range(4):
            assert results[f"part{k}"] == _pattern_sum(range(32 * k, 32 * (k + 1)), blksize)
        for blk in range(128):
            fileh.invalidate_page(blk)
        _run_threads([summer(f"all{k}", range(128)) for k in range(4)])
        for k in range(4):
            assert results[f"all{k}"] == _pattern_sum(range(128), blksize)
        assert int(a.sum()) == _pattern_sum(range(128), blksize)   # main thread


class SlowFile(MemFile):
    """A MemFile whose loadblk of `slow_blk` sleeps, announcing it is inside."""

    def __init__(self, blksize: int, slow_blk: int, delay: float) -> None:
        super().__init__(blksize, fill=fill_pattern)
        self.slow_blk = slow_blk
        self.delay = delay
        self.loading = threading.Event()
        self.loaded_slow = threading.Event()

    def loadblk(self, blk: int, buf: memoryview) -> None:
        if blk == self.slow_blk:
            self.loading.set()
            time.sleep(self.delay)
        super().loadblk(blk, buf)
        if blk == self.slow_blk:
            self.loaded_slow.set()


def scenario_same_page_from_many_threads() -> None:
    """Threads faulting on a page being loaded wait for it; loadblk runs once."""
    f = SlowFile(PAGESIZE, slow_blk=5, delay=0.5)
    with f.fileh_open() as fileh:
        vma = fileh.mmap(0, 8)
        m = memoryview(vma)
        a = np.frombuffer(vma, np.uint64)
        want = pattern(5, PAGESIZE)
        first = 5 * PAGESIZE // 8               # word 0 of block 5; the writer changes word 1
        barrier = threading.Barrier(6)

        def with_gil() -> None:
            barrier.wait()
            assert bytes(m[5 * PAGESIZE:5 * PAGESIZE + 8]) == want[:1].tobytes()
            assert bytes(m[5 * PAGESIZE + 16:6 * PAGESIZE]) == want[2:].tobytes()

        def without_gil() -> None:
            barrier.wait()
            assert int(a[first + 2:first + PAGESIZE // 8].sum()) == int(want[2:].sum())
            assert a[first] == want[0]

        def writer() -> None:
            barrier.wait()
            a[first + 1] = 7

        _run_threads([with_gil, with_gil, without_gil, without_gil, without_gil, writer])
        assert f.loads[5] == 1
        assert a[first + 1] == 7


def scenario_other_pages_load_while_one_is_slow() -> None:
    """loadblk runs without the core's lock: other blocks load meanwhile."""
    f = SlowFile(PAGESIZE, slow_blk=0, delay=2.0)
    with f.fileh_open() as fileh:
        m = memoryview(fileh.mmap(0, 8))
        slow = threading.Thread(target=lambda: m[0], daemon=True)
        slow.start()
        assert f.loading.wait(JOIN_TIMEOUT)
        for blk in range(1, 8):                  # other pages of the same handle
            first_word = bytes(m[blk * PAGESIZE:blk * PAGESIZE + 8])
            assert first_word == pattern(blk, PAGESIZE)[:1].tobytes()
        with MemFile(PAGESIZE, fill=fill_pattern).fileh_open() as other:
            assert memoryview(other.mmap(3, 1))[0] == pattern(3, PAGESIZE)[0] & 0xFF
        assert not f.loaded_slow.is_set()
        slow.join(JOIN_TIMEOUT)
        assert not slow.is_alive()


def scenario_invalidate_while_loading() -> None:
    """A page invalidated while its loadblk runs is loaded again: no stale data."""

    class Racy(MemFile):
        def __init__(self, blksize: int) -> None:
            super().__init__(blksize, {0: b"\x01" * blksize})
            self.loading = threading.Event()

        def loadblk(self, blk: int, buf: memoryview) -> None:
            data = self.blocks[blk]                 # read the file, then be slow
            self.loads[blk] += 1
            if self.loads[blk] == 1:
                self.loading.set()
                time.sleep(1.0)
            buf[:] = data

    f = Racy(PAGESIZE)
    with f.fileh_open() as fileh:
        m = memoryview(fileh.mmap(0, 1))
        got: list[int] = []
        reader = threading.Thread(target=lambda: got.append(m[100]), daemon=True)
        reader.start()
        assert f.loading.wait(JOIN_TIMEOUT)
        f.blocks[0] = b"\x02" * PAGESIZE             # the file changes meanwhile
        fileh.invalidate_page(0)
        reader.join(JOIN_TIMEOUT)
        assert not reader.is_alive()
        assert got == [2]
        assert m[0] == 2
        assert f.loads[0] == 2


def scenario_loadblk_collects_garbage_mappings() -> None:
    """gc.collect() inside loadblk frees mappings and handles without deadlock."""

    class Collecting(MemFile):
        def loadblk(self, blk: int, buf: memoryview) -> None:
            gc.collect()
            super().loadblk(blk, buf)

    def make_garbage(fileh: BigFileH, other: BigFileH) -> None:
        """Cycles holding a mapping of `fileh`, of `other`, and a dirty handle."""
        for h in (fileh, other):
            cycle: list[object] = [h.mmap(0, 4)]
            cycle.append(cycle)
            memoryview(cycle[0])[PAGESIZE] = 1           # a page loaded, dirty
        doomed = MemFile(PAGESIZE).fileh_open()
        cycle2: list[object] = [doomed, doomed.mmap(0, 2)]
        cycle2.append(cycle2)
        memoryview(cycle2[1])[0] = 1

    gc.disable()            # collections happen only inside loadblk
    try:
        f = Collecting(PAGESIZE, fill=fill_pattern)
        other_file = MemFile(PAGESIZE, fill=fill_pattern)
        with f.fileh_open() as fileh, other_file.fileh_open() as other:
            m = memoryview(fileh.mmap(8, 8))
            for blk in range(8, 16):
                make_garbage(fileh, other)
                assert bytes(m[(blk - 8) * PAGESIZE:(blk - 7) * PAGESIZE]) \
                    == pattern(blk, PAGESIZE).tobytes()
            gc.collect()
            assert fileh.stats()["nvma"] == 1
            assert other.stats()["nvma"] == 0
    finally:
        gc.enable()


def scenario_loadblk_reads_another_mapping() -> None:
    """loadblk copying from another handle's mapping (a fault inside a fault)."""
    blksize = 2 * PAGESIZE
    source = MemFile(blksize, fill=fill_pattern)
    ram = RAM(8 * blksize)                 # shared and small: reclaim while nested
    with source.fileh_open(ram=ram) as src_fileh:
        src = memoryview(src_fileh.mmap(0, 32))

        class Copy(MemFile):
            def loadblk(self, blk: int, buf: memoryview) -> None:
                super().loadblk(blk, buf)
                buf[:] = src[blk * blksize:(blk + 1) * blksize]

        copy = Copy(blksize)
        with copy.fileh_open(ram=ram) as fileh:
            a = np.frombuffer(fileh.mmap(0, 32), np.uint64)
            for blk in list(range(32)) + [3, 30, 0]:
                np.testing.assert_array_equal(a[blk * blksize // 8:(blk + 1) * blksize // 8],
                                              pattern(blk, blksize))
            # And from threads without the GIL.
            for blk in range(32):
                fileh.invalidate_page(blk)
            total: list[int] = []
            _run_threads([lambda: total.append(int(a.sum())) for _ in range(3)])
            assert total == [_pattern_sum(range(32), blksize)] * 3


def scenario_stress(duration: float) -> None:
    """Random reads and writes from several threads, with invalidations.

    Readers check every byte they read against the file's pattern; writers
    own disjoint blocks and check them against a model; an invalidator keeps
    dropping clean pages, and the RAM is small enough that reclaim runs all
    the time.  At the end, writeout must store exactly the writers' model.
    """
    blksize = 2 * PAGESIZE
    words = blksize // 8
    nread, nwriters, per_writer = 96, 2, 8
    nblk = nread + nwriters * per_writer
    f = MemFile(blksize, fill=fill_pattern)
    ram = RAM(40 * blksize)
    patterns = [pattern(blk, blksize) for blk in range(nblk)]
    deadline = time.monotonic() + duration
    counts = {"reads": 0, "writes": 0, "invalidations": 0}

    with f.fileh_open(ram=ram) as fileh:
        vma = fileh.mmap(0, nblk)
        a = np.frombuffer(vma, np.uint64)
        m = memoryview(vma)
        b = np.frombuffer(fileh.mmap(nread // 2, nread // 2), np.uint64)   # aliases a

        def reader(seed: int) -> None:
            rng = random.Random(seed)
            while time.monotonic() < deadline:
                blk = rng.randrange(nread)
                lo = rng.randrange(words)
                hi = rng.randrange(lo, words) + 1
                way = rng.randrange(3)
                if way == 0:                   # GIL held during the fault
                    got = bytes(m[blk * blksize + lo * 8:blk * blksize + hi * 8])
                    assert got == patterns[blk][lo:hi].tobytes(), (blk, lo, hi)
                elif way == 1:                 # NumPy loop, GIL released
                    assert np.array_equal(a[blk * words + lo:blk * words + hi],
                                          patterns[blk][lo:hi]), (blk, lo, hi)
                elif blk >= nread // 2:        # through the second mapping
                    off = (blk - nread // 2) * words
                    assert np.array_equal(b[off + lo:off + hi], patterns[blk][lo:hi])
                counts["reads"] += 1

        def writer(k: int) -> None:
            rng = random.Random(100 + k)
            first = nread + k * per_writer
            model = np.concatenate(patterns[first:first + per_writer])
            region = a[first * words:(first + per_writer) * words]
            while time.monotonic() < deadline:
                lo = rng.randrange(model.size)
                hi = min(model.size, lo + rng.randrange(1, 2 * words))
                value = np.uint64(rng.getrandbits(64))
                region[lo:hi] = value
                model[lo:hi] = value
                counts["writes"] += 1
                if rng.random() < 0.1:
                    assert np.array_equal(region, model)
            assert np.array_equal(region, model)
            models[k] = model

        def invalidator() -> None:
            rng = random.Random(7)
            while time.monotonic() < deadline:
                fileh.invalidate_page(rng.randrange(nread))
                counts["invalidations"] += 1
                time.sleep(0.0002)

        models: dict[int, np.ndarray] = {}
        _run_threads([lambda s=s: reader(s) for s in range(3)]
                     + [lambda k=k: writer(k) for k in range(nwriters)]
                     + [invalidator])
        assert min(counts.values()) > 0, counts
        assert ram.stats()["nreclaimed"] > 0
        fileh.dirty_writeout(WRITEOUT_STORE | WRITEOUT_MARKSTORED)

    for k in range(nwriters):
        first = nread + k * per_writer
        stored = b"".join(f.content(blk) for blk in range(first, first + per_writer))
        assert stored == models[k].tobytes()
    assert all(blk >= nread for blk, _ in f.stored)
    print(counts)


# ------------------------------------------------------------------ tests


def test_faults_from_threads_holding_the_gil() -> None:
    run_in_child(scenario_threads_with_gil)


def test_faults_from_threads_without_the_gil() -> None:
    run_in_child(scenario_threads_without_gil)


def test_many_threads_on_one_loading_page_load_it_once() -> None:
    run_in_child(scenario_same_page_from_many_threads)


def test_other_pages_load_while_one_load_is_slow() -> None:
    run_in_child(scenario_other_pages_load_while_one_is_slow)


def test_invalidate_page_while_it_is_loading() -> None:
    run_in_child(scenario_invalidate_while_loading)


def test_gc_inside_loadblk_collecting_mappings_and_handles() -> None:
    run_in_child(scenario_loadblk_collects_garbage_mappings)


def test_loadblk_reading_another_mapping() -> None:
    run_in_child(scenario_loadblk_reads_another_mapping)


def test_stress_random_faults_writes_and_invalidations() -> None:
    run_in_child(scenario_stress, 3.0)
