"""Load the pages under a buffer ahead of system calls that will touch them."""

from __future__ import annotations

import ctypes
import mmap

import numpy as np

__all__ = ["prefault"]


def prefault(buf: object, *, write: bool = False) -> None:
    """Touch every OS page under `buf` from the CPU, so that its pages are
    loaded (and, with `write`, dirtied) before a system call touches them.

    Without userfaultfd (`userfaultfd_status`), a system call that reads or
    writes pages of a mapping not loaded yet fails with EFAULT: call this
    first, e.g. ``prefault(view); f.write(view)``, or with ``write=True``
    before ``f.readinto(view)`` (pages loaded read-only earlier need it even
    with userfaultfd: the kernel cannot write-enable them).  The pages stay
    loaded only while the RAM has room: prefault at most what the RAM holds,
    just before the call.

    `buf` is any object exporting a buffer (an ndarray view of a BigArray,
    a `VMA`, a memoryview); every page between its lowest and highest byte
    is touched, strides or not.  With `write`, each page's first byte is
    read and written back: the values do not change, but a write by another
    thread to that very byte at the same moment could be undone.
    """
    a = np.asarray(memoryview(buf).cast("B") if isinstance(buf, memoryview) and
                   buf.contiguous else buf)
    if a.size == 0:
        return
    low, high = np.byte_bounds(a)
    if write and not a.flags.writeable:
        raise ValueError("prefault(write=True) of a read-only buffer")
    page = mmap.PAGESIZE
    start = low - low % page
    span = (ctypes.c_uint8 * (high - start)).from_address(start)
    pages = np.frombuffer(span, np.uint8)[::page]
    if write:
        pages[...] = pages      # read, then write the same byte back
    else:
        pages.sum()
