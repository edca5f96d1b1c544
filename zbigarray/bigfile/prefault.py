"""Load the pages under a buffer ahead of system calls that will touch them."""

from __future__ import annotations

import ctypes
import mmap
from typing import Any

import numpy as np

__all__ = ["prefault"]


def prefault(buf: object, *, write: bool = False) -> None:
    """Touch every OS page under `buf` from the CPU, so that its pages are
    loaded (and, with `write`, made writable and dirty) before a system call
    touches them.

    Without userfaultfd (`userfaultfd_status`), a system call that reads or
    writes pages of a mapping not loaded yet fails with EFAULT: call this
    first, e.g. ``prefault(view); f.write(view)``, or with ``write=True``
    before ``f.readinto(view)``.  With userfaultfd it is needed only before
    a system call writes into pages the CPU has read (they are mapped
    read-only to see the first write, which the kernel cannot report).  The
    pages stay loaded only while the RAM has room: prefault at most what the
    RAM holds, just before the call.

    `buf` is any object exporting a buffer (an ndarray view of a BigArray, a
    `VMA`, a memoryview); every page between its lowest and highest byte is
    touched, strides or not.  With `write`, each page's first byte is read
    and written back: the values do not change, but a write by another thread
    to that very byte at the same moment could be undone.

    Raises
    ------
    TypeError
        `buf` exports no buffer.
    ValueError
        `write` on a read-only buffer.
    """
    with memoryview(buf):       # type: ignore[arg-type]  # TypeError for what is not a buffer
        pass
    a = np.asarray(buf)
    if a.size == 0:
        return
    if write and not a.flags.writeable:
        raise ValueError("prefault(write=True) of a read-only buffer")
    low, high = _byte_bounds(a)
    page = mmap.PAGESIZE
    start = low - low % page
    # Any: NumPy's stubs omit ctypes arrays from what frombuffer takes.
    span: Any = (ctypes.c_uint8 * (high - start)).from_address(start)
    firsts = np.frombuffer(span, np.uint8)[::page]
    if write:
        # A copy first: assigning an array to itself is skipped by NumPy.
        firsts[...] = firsts.copy()
    else:
        firsts.sum()


def _byte_bounds(a: np.ndarray) -> tuple[int, int]:
    """Addresses of the lowest byte of `a` and one past its highest."""
    low = high = a.__array_interface__["data"][0]
    for n, stride in zip(a.shape, a.strides):
        if stride < 0:
            low += (n - 1) * stride
        else:
            high += (n - 1) * stride
    return low, high + a.itemsize
