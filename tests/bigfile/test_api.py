"""zbigarray.bigfile objects: construction, attributes, argument checking, close."""

from __future__ import annotations

import gc

import numpy as np
import pytest

from tests.common import PAGESIZE, MemFile
from zbigarray.bigfile import (RAM, WRITEOUT_MARKSTORED, WRITEOUT_STORE, VMA,
                               BigFile, BigFileH)


# ---------------------------------------------------------------- BigFile


@pytest.mark.parametrize("blksize", [PAGESIZE, 3 * PAGESIZE, 2 * 1024 * 1024,
                                     8 * 1024 * 1024])
def test_bigfile_accepts_multiples_of_the_page_size(blksize: int) -> None:
    assert BigFile(blksize).blksize == blksize


@pytest.mark.parametrize("blksize", [0, 1, PAGESIZE - 1, PAGESIZE + 1,
                                     PAGESIZE * 3 // 2])
def test_bigfile_rejects_bad_block_size(blksize: int) -> None:
    with pytest.raises(ValueError, match="blksize|block size"):
        BigFile(blksize)


@pytest.mark.parametrize("blksize", ["4096", 4096.0, None])
def test_bigfile_block_size_must_be_an_int(blksize: object) -> None:
    with pytest.raises(TypeError):
        BigFile(blksize)  # type: ignore[arg-type]


def test_bigfile_blksize_is_read_only() -> None:
    f = BigFile(PAGESIZE)
    with pytest.raises(AttributeError):
        f.blksize = 2 * PAGESIZE  # type: ignore[misc]
    assert f.blksize == PAGESIZE


def test_bigfile_subclass_with_its_own_constructor() -> None:
    """A subclass taking other arguments creates itself via BigFile.__new__."""

    class Named(BigFile):
        def __new__(cls, name: str, npages: int) -> Named:
            return BigFile.__new__(cls, npages * PAGESIZE)

        def __init__(self, name: str, npages: int) -> None:
            self.name = name

        def loadblk(self, blk: int, buf: memoryview) -> None:
            buf[:] = self.name.encode().ljust(len(buf), b".")

    f = Named("hello", 2)
    assert isinstance(f, BigFile)
    assert f.blksize == 2 * PAGESIZE
    assert f.name == "hello"
    with f.fileh_open() as fileh:
        assert bytes(memoryview(fileh.mmap(7, 1))[:7]) == b"hello.."


def test_loadblk_and_storeblk_buffers() -> None:
    """loadblk gets a writable, storeblk a read-only byte buffer of blksize bytes."""
    seen: dict[str, tuple[int, bool, int]] = {}

    class Probe(MemFile):
        def loadblk(self, blk: int, buf: memoryview) -> None:
            seen["load"] = (len(buf), buf.readonly, buf.itemsize)
            super().loadblk(blk, buf)

        def storeblk(self, blk: int, buf: memoryview) -> None:
            seen["store"] = (buf.nbytes, buf.readonly, buf.itemsize)
            with pytest.raises(TypeError):
                buf[0] = 1
            super().storeblk(blk, buf)

    f = Probe(2 * PAGESIZE)
    with f.fileh_open() as fileh:
        memoryview(fileh.mmap(0, 1))[0] = 1
        fileh.dirty_writeout(WRITEOUT_STORE)
    assert seen == {"load": (2 * PAGESIZE, False, 1),
                    "store": (2 * PAGESIZE, True, 1)}


# ---------------------------------------------------------------- BigFileH


def test_fileh_open_returns_a_handle() -> None:
    f = MemFile(PAGESIZE)
    fileh = f.fileh_open()
    assert isinstance(fileh, BigFileH)
    assert not fileh.isdirty()
    stats = fileh.stats()
    assert {k: stats[k] for k in ("npages", "ndirty", "nvma", "nloadblk", "nstoreblk")} \
        == {"npages": 0, "ndirty": 0, "nvma": 0, "nloadblk": 0, "nstoreblk": 0}
    fileh.close()


def test_fileh_open_rejects_block_bigger_than_ram() -> None:
    f = MemFile(8 * PAGESIZE)
    with pytest.raises(ValueError):
        f.fileh_open(ram=RAM(4 * PAGESIZE))


def test_fileh_open_rejects_non_ram() -> None:
    with pytest.raises(TypeError):
        MemFile(PAGESIZE).fileh_open(ram="64M")  # type: ignore[arg-type]


@pytest.mark.parametrize("pgoffset, pglen", [(-1, 1), (0, -1), (-5, -5)])
def test_mmap_rejects_negative(pgoffset: int, pglen: int) -> None:
    with MemFile(PAGESIZE).fileh_open() as fileh:
        with pytest.raises(ValueError):
            fileh.mmap(pgoffset, pglen)


def test_mmap_rejects_empty() -> None:
    with MemFile(PAGESIZE).fileh_open() as fileh:
        with pytest.raises(ValueError, match="pglen"):
            fileh.mmap(0, 0)


@pytest.mark.parametrize("pgoffset, pglen", [
    (0, 2**62),             # more bytes than the address space
    (0, 2**64),             # does not fit blk_t
    (2**64, 1),             # does not fit blk_t
    (2**64 - 1, 2),         # pgoffset + pglen wraps blk_t
])
def test_mmap_rejects_overflow(pgoffset: int, pglen: int) -> None:
    with MemFile(PAGESIZE).fileh_open() as fileh:
        with pytest.raises(OverflowError):
            fileh.mmap(pgoffset, pglen)
        assert fileh.stats()["nvma"] == 0


@pytest.mark.parametrize("flags", [0, 4, WRITEOUT_STORE | 4,
                                   (WRITEOUT_STORE | WRITEOUT_MARKSTORED) | 1 << 20])
def test_dirty_writeout_rejects_bad_flags(flags: int) -> None:
    f = MemFile(PAGESIZE)
    with f.fileh_open() as fileh:
        memoryview(fileh.mmap(0, 1))[0] = 1
        with pytest.raises(ValueError, match="flags"):
            fileh.dirty_writeout(flags)
        assert fileh.isdirty()
        assert f.stored == []


def test_writeout_flags_are_distinct_bits() -> None:
    assert WRITEOUT_STORE & WRITEOUT_MARKSTORED == 0
    assert WRITEOUT_STORE and WRITEOUT_MARKSTORED


def test_fileh_close_is_idempotent_and_methods_then_raise() -> None:
    f = MemFile(PAGESIZE)
    fileh = f.fileh_open()
    memoryview(fileh.mmap(0, 1))[0] = 1
    fileh.close()
    fileh.close()
    assert f.stored == []      # close discards, never writes
    calls = [lambda: fileh.mmap(0, 1),
             lambda: fileh.dirty_writeout(WRITEOUT_STORE),
             fileh.dirty_discard,
             fileh.isdirty,
             lambda: fileh.invalidate_page(0)]
    for call in calls:
        with pytest.raises(ValueError, match="closed"):
            call()


def test_fileh_context_manager_closes() -> None:
    with MemFile(PAGESIZE).fileh_open() as fileh:
        assert isinstance(fileh, BigFileH)
        fileh.mmap(0, 1)
    with pytest.raises(ValueError):
        fileh.mmap(0, 1)


def test_fileh_close_with_live_views_does_not_crash() -> None:
    """Views outliving their closed handle are freed without trouble."""
    fileh = MemFile(PAGESIZE).fileh_open()
    a = np.frombuffer(fileh.mmap(0, 4), np.uint8)
    m = memoryview(fileh.mmap(2, 2))
    assert a[0] == 0 and m[0] == 0
    fileh.close()
    del a, m
    gc.collect()


def test_file_outlives_its_python_reference_while_a_handle_is_open() -> None:
    """The handle keeps its BigFile alive: loadblk still has a file to run on."""
    fileh = MemFile(PAGESIZE, {3: b"x" * PAGESIZE}).fileh_open()
    gc.collect()
    with fileh:
        assert bytes(memoryview(fileh.mmap(3, 1))[:2]) == b"xx"


# ---------------------------------------------------------------- VMA


def test_vma_attributes() -> None:
    blksize = 2 * PAGESIZE
    with MemFile(blksize).fileh_open() as fileh:
        vma = fileh.mmap(5, 3)
        assert isinstance(vma, VMA)
        assert vma.filerange() == (5, 3)
        assert vma.pagesize() == blksize
        assert vma.addr_stop - vma.addr_start == 3 * blksize
        assert vma.addr_start % PAGESIZE == 0
        assert vma.fileh is fileh
        assert vma.pyuser is None
        vma.pyuser = owner = object()
        assert vma.pyuser is owner
        assert not vma.closed
        m = memoryview(vma)
        assert (m.nbytes, m.ndim, m.itemsize, m.readonly) == (3 * blksize, 1, 1, False)
        assert np.frombuffer(vma, np.float64).size == 3 * blksize // 8
        addr = np.frombuffer(vma, np.uint8).__array_interface__["data"][0]
        assert addr == vma.addr_start
        assert fileh.stats()["nvma"] == 1


def test_vma_close_is_idempotent_and_unmaps() -> None:
    with MemFile(PAGESIZE).fileh_open() as fileh:
        vma = fileh.mmap(0, 2)
        vma.close()
        vma.close()
        assert vma.closed
        assert fileh.stats()["nvma"] == 0
        with pytest.raises(ValueError):
            memoryview(vma)


def test_ndarray_keeps_mapping_alive() -> None:
    """A view made from a VMA keeps the mapping after the VMA object is gone."""
    f = MemFile(PAGESIZE, {1: b"\x07" * PAGESIZE})
    with f.fileh_open() as fileh:
        a = np.frombuffer(fileh.mmap(0, 2), np.uint8)
        m = memoryview(fileh.mmap(1, 1))
        gc.collect()
        assert fileh.stats()["nvma"] == 2
        assert a[PAGESIZE] == 7 and m[-1] == 7
        a[0] = 9
        assert a[0] == 9
        del a, m
        gc.collect()
        assert fileh.stats()["nvma"] == 0
        assert fileh.isdirty()


def test_vma_collected_in_a_cycle_is_unmapped() -> None:
    """The garbage collector freeing a VMA (or its views) unmaps it."""
    with MemFile(PAGESIZE).fileh_open() as fileh:
        cycle: list[object] = [fileh.mmap(0, 4)]
        cycle.append(cycle)
        views: list[object] = [np.frombuffer(fileh.mmap(4, 4), np.uint8)]
        views.append(views)
        memoryview(cycle[0])[0] = 1
        assert fileh.stats()["nvma"] == 2
        del cycle, views
        gc.collect()
        assert fileh.stats()["nvma"] == 0
        assert fileh.isdirty()


def test_handle_collected_in_a_cycle_is_closed() -> None:
    """A handle freed by the garbage collector releases its pages and RAM."""
    ram = RAM(16 * PAGESIZE)
    f = MemFile(PAGESIZE)
    fileh = f.fileh_open(ram=ram)
    vma = fileh.mmap(0, 4)
    memoryview(vma)[0] = 1
    vma.pyuser = (fileh, vma)               # fileh -> vma -> fileh
    assert ram.stats()["npages"] == 1
    del fileh, vma
    gc.collect()
    assert ram.stats()["npages"] == 0
    assert f.stored == []
