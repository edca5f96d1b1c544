"""BigFile over an ordinary OS file: block ``blk`` is bytes
``[blk*blksize, (blk+1)*blksize)`` of the file."""

from __future__ import annotations

import os
import weakref

from zbigarray.bigfile._bigfile import BigFile

__all__ = ["BigFile_File"]


class BigFile_File(BigFile):
    """A `BigFile` whose blocks live in an OS file.

    Holes and the part past the end of the file read as zeros; writeout
    writes the dirty blocks back with ``pwrite`` (the file grows as needed).

    By default clean pages of blocks inside the file are mapped straight from
    the OS page cache (`BigFile.mmap_fd`, the zero-copy path): reading costs
    what `numpy.memmap` costs, and such pages show later changes of the file
    by others, as `numpy.memmap` does.  A write first copies the block into
    RAM; writeout stores it back.

    Parameters
    ----------
    path_or_fd : str, bytes, os.PathLike or int
        A path: the file is opened (created if missing, mode 0o666 minus the
        umask) read-write, and owned: `close` -- or the context manager, or
        the garbage collector -- closes it.  An int: an open file descriptor,
        used as is and never closed here; the caller keeps it open while the
        file is in use.  A read-only descriptor reads fine and makes writeout
        raise the OSError of ``pwrite``.
    blksize : int
        Block size in bytes: a positive multiple of the OS page size.
    zero_copy : bool, optional
        Map clean pages from the OS page cache (default True).  False copies
        every block into RAM through `loadblk`, which isolates the handle
        from changes of the file by others until its pages are reloaded.

    Raises
    ------
    TypeError
        `path_or_fd` is neither a path nor an int, or `blksize` is not an int.
    ValueError
        `blksize` is not a valid block size.
    OSError
        Opening the path failed, or `path_or_fd` is not an open descriptor.
    """

    def __new__(cls, path_or_fd: str | bytes | os.PathLike[str] | os.PathLike[bytes] | int,
                blksize: int, *, zero_copy: bool = True) -> BigFile_File:
        # BigFile's C state is set up by its __cinit__, which takes blksize only.
        return BigFile.__new__(cls, blksize)

    def __init__(self, path_or_fd: str | bytes | os.PathLike[str] | os.PathLike[bytes] | int,
                 blksize: int, *, zero_copy: bool = True) -> None:
        if isinstance(path_or_fd, bool):
            raise TypeError("path_or_fd must be a path or an int file descriptor, got bool")
        if isinstance(path_or_fd, int):
            os.fstat(path_or_fd)    # a bad descriptor fails here, not in a page fault
            self._fd = path_or_fd
            self._close = None
        else:
            path = os.fspath(path_or_fd)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            self._fd = fd
            # Closes the descriptor when this object dies, if close() did not.
            self._close = weakref.finalize(self, os.close, fd)
        self._path = path_or_fd
        if zero_copy:
            self.mmap_fd = self._fd

    @property
    def nblk_max(self) -> int:
        """Blocks addressable through file offsets (which end at 2**63)."""
        # preadv/pwrite refuse ranges that end past the largest off_t.
        return (2**63 - 1) // self.blksize

    @property
    def fd(self) -> int:
        """The OS file descriptor, -1 once closed."""
        return self._fd

    def close(self) -> None:
        """Close the file if this object opened it (idempotent).

        Loading a block afterwards fails: a page fault that needs one raises
        `PageFaultError` (close the file handles first).
        """
        self.mmap_fd = None     # before the number can be reused
        if self._close is not None:
            self._close()
        self._fd = -1

    def __enter__(self) -> BigFile_File:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<BigFile_File {self._path!r} blksize={self.blksize}>"

    def _checked_fd(self) -> int:
        if self._fd < 0:
            raise ValueError(f"{self!r} is closed")
        return self._fd

    def loadblk(self, blk: int, buf: memoryview) -> None:
        """Read block `blk` into `buf`; what the file does not hold is zeros."""
        fd = self._checked_fd()
        size = len(buf)
        offset = blk * size
        n = os.preadv(fd, [buf], offset)
        while 0 < n < size:     # short read: a signal, or the end of the file
            got = os.preadv(fd, [buf[n:]], offset + n)
            if got == 0:
                break
            n += got
        if n < size:
            buf[n:] = bytes(size - n)

    def storeblk(self, blk: int, buf: memoryview) -> None:
        """Write `buf` as block `blk`."""
        fd = self._checked_fd()
        size = len(buf)
        offset = blk * size
        n = os.pwrite(fd, buf, offset)
        while n < size:
            n += os.pwrite(fd, buf[n:], offset + n)
