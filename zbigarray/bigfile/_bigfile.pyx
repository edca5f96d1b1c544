# cython: language_level=3
"""Python face of the virtual-memory core: BigFile, BigFileH, VMA, RAM.

The extension types mirror the C API of virtmem.h call for call; array
semantics live above, in zbigarray.bigarray.  What crosses from C back into
Python (loadblk/storeblk trampolines, GIL hooks, the failure policy of page
faults) is in _pyfile.pyx; this module installs it into the core at import.

Locking: a core function that can call back into Python or wait for another
thread (fileh_dirty_writeout) runs under ``with nogil``.  The others only take
the virtmem lock briefly -- the core never waits for the GIL while holding it,
so taking it with the GIL held cannot deadlock -- and run with the GIL held,
which makes them atomic with respect to another Python thread closing the same
handle or mapping.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.pythread cimport PyThread_get_thread_ident
from cpython.ref cimport PyObject, Py_DECREF, Py_INCREF
from libc.errno cimport EBUSY, EINVAL, ENOENT, EOVERFLOW
from libc.stdint cimport SIZE_MAX, uint64_t

from zbigarray.bigfile cimport virtmem as virt
from zbigarray.bigfile._blkbuf cimport fill_byte_view
from zbigarray.bigfile._errors cimport check as _check, u64_arg as _u64
from zbigarray.bigfile._pyfile cimport (PyBigFile, fault_error, fault_remote_error, gil_hooks,
                                        pyfile_init_ops, set_fault_state_calls)

import operator
import os
import warnings
import weakref
from typing import NamedTuple

from zbigarray.bigfile._pyfile import FAULT_ABORT_ENV, PageFaultError, PageFaultMemoryError


cdef extern from "<errno.h>":
    int ENOTRECOVERABLE     # not in Cython's libc.errno


cdef extern from "Python.h":
    # GC slots, without the exception checks cpython/object.pxd adds.
    ctypedef int (*visitproc)(PyObject *, void *) noexcept
    ctypedef int (*traverseproc)(PyObject *, visitproc, void *) noexcept
    ctypedef struct _TypeGCSlots "PyTypeObject":
        traverseproc tp_traverse


FAULT_AROUND_DEFAULT = 64 * 1024

WRITEOUT_STORE = virt.WRITEOUT_STORE
WRITEOUT_MARKSTORED = virt.WRITEOUT_MARKSTORED

cdef size_t _pagesize = virt.virt_os_pagesize()


virt.virt_set_gil_hooks(gil_hooks())
virt.virt_set_fault_error_handler(fault_error)
virt.virt_set_fault_remote_error_handler(fault_remote_error)
set_fault_state_calls(virt.virt_fault_failing, virt.virt_fault_reported,
                      virt.virt_fault_speculative, virt.virt_fault_buf_zeroed,
                      virt.virt_fault_proxy_has_lock,
                      virt.virt_loadbuf_save)


# ------------------------------------------------- faults inside system calls

USERFAULTFD_ENV = "ZBIGARRAY_USERFAULTFD"


class UserfaultfdStatus(NamedTuple):
    """Whether system calls on untouched pages are served (see
    `userfaultfd_status`)."""
    enabled: bool
    reason: str | None   # why not, when not enabled


class UserfaultfdWarning(RuntimeWarning):
    """The kernel refused userfaultfd: system calls that touch pages of a
    mapping not loaded yet (``os.write(fd, view)``, ``f.readinto(view)``,
    ``numpy.save``) fail with EFAULT.  Issued once per process."""


UserfaultfdWarning.__module__ = "zbigarray.bigfile"


def userfaultfd_status():
    """Whether page faults that the kernel takes inside system calls (writing
    from a view, reading into one) are served, through a userfaultfd.

    Decided at the first `BigFileH.mmap` of the process: on where the kernel
    allows it (root, ``vm.unprivileged_userfaultfd=1``, or access to
    ``/dev/userfaultfd``), off if it refuses, if ``$ZBIGARRAY_USERFAULTFD`` is
    ``0``, and in a forked child.  When off, such system calls fail with
    EFAULT on pages not loaded yet; `zbigarray.bigfile.prefault` loads them
    first.

    Returns
    -------
    UserfaultfdStatus
        ``(enabled, reason)``; `reason` says why not, or is None.
    """
    cdef const char *reason = virt.virt_uffd_reason()
    return UserfaultfdStatus(bool(virt.virt_uffd_enabled()),
                             None if reason == NULL else reason.decode("utf-8", "replace"))


def fault_proxy_thread():
    """Inside `BigFile.loadblk` (or ``dirtied``, ``spill``) called to serve a
    page fault taken inside a system call: the native thread id
    (`threading.get_native_id`) of the thread that made the call -- the
    callback then runs in a thread of the core, not in that one.  None
    elsewhere.  Lets a backend act on behalf of the right thread (join its
    transaction, say)."""
    cdef virt.pid_t tid = virt.virt_fault_proxy_tid()
    return None if tid == 0 else tid


cdef bint _uffd_told = False

cdef void _tell_uffd_status() except *:
    """Warn once if the kernel refused userfaultfd (not if it was turned off
    on purpose)."""
    global _uffd_told
    if _uffd_told:
        return
    _uffd_told = True
    status = userfaultfd_status()
    if not status.enabled and os.environ.get(USERFAULTFD_ENV) != "0" \
            and "forked child" not in status.reason:
        warnings.warn(
            f"zbigarray: {status.reason}; system calls that touch pages not loaded yet "
            "(os.write(fd, view), f.readinto(view), numpy.save) will fail with EFAULT: "
            "load them first with zbigarray.bigfile.prefault(view), or set "
            f"{USERFAULTFD_ENV}=0 to silence this", UserfaultfdWarning, stacklevel=3)


# ----------------------------------------------------------------------- RAM

cdef class RAM:
    """Page memory with a capacity, shared by the file handles opened on it.

    Parameters
    ----------
    capacity : int or str or None
        Bytes of page memory in use at most, as an int or a size string such
        as ``"64M"`` (see `ram_parse_size`).  None: the process default.

    Raises
    ------
    ValueError
        `capacity` is smaller than one OS page or does not parse.
    """

    def __init__(self, capacity=None):
        cdef size_t cap = 0     # 0: the core's default capacity
        cdef int err
        if self._c != NULL:
            raise TypeError("RAM object is already initialized")
        if capacity is not None:
            cap = _capacity_arg(capacity, "RAM()")
        err = virt.ram_new(&self._c, cap)
        _check(err, f"RAM(capacity={capacity!r})")

    def __dealloc__(self):
        if self._c != NULL:
            virt.ram_decref(self._c)

    cdef virt.RAM *_ptr(self) except NULL:
        if self._c == NULL:
            raise ValueError("uninitialized RAM object")
        return self._c

    @property
    def capacity(self):
        """Capacity in bytes; assigning a smaller one reclaims clean pages now."""
        return self.stats()["capacity"]

    @capacity.setter
    def capacity(self, value):
        cdef virt.RAM *c = self._ptr()
        _check(virt.ram_set_capacity(c, _capacity_arg(value, "RAM.capacity")),
               f"RAM.capacity = {value!r}")

    def stats(self):
        """Counters of this RAM (bytes and pages), as a dict."""
        cdef virt.RAMStats st
        virt.ram_get_stats(self._ptr(), &st)
        return {"capacity": st.capacity, "used": st.used, "npages": st.npages,
                "nclean": st.nclean, "direct": st.direct, "memfd_size": st.memfd_size,
                "nreclaimed": st.nreclaimed, "nrecycled": st.nrecycled,
                "nmoved": st.nmoved, "prepared": st.prepared,
                "nprepared": st.nprepared}

    def reclaim(self, max_pages=None):
        """Drop up to `max_pages` least recently used clean pages now (None:
        all of them).  Returns how many were dropped."""
        cdef size_t n = SIZE_MAX
        cdef virt.RAM *c = self._ptr()
        if max_pages is not None:
            n = <size_t>_u64(max_pages, "max_pages", "RAM.reclaim()")
        with nogil:
            n = virt.ram_reclaim(c, n)
        return n

    def __repr__(self):
        if self._c == NULL:
            return "<RAM uninitialized>"
        st = self.stats()
        return f"<RAM capacity={st['capacity']} used={st['used']}>"


cdef size_t _capacity_arg(value, str what) except? 0:
    if isinstance(value, str):
        n = ram_parse_size(value)
    else:
        n = operator.index(value)
    if n < <object>_pagesize:
        raise ValueError(f"{what}: capacity must be at least one OS page "
                         f"({_pagesize} bytes), got {value!r}")
    if n > <object>SIZE_MAX:
        raise OverflowError(f"{what}: capacity {value!r} does not fit size_t")
    return n


def ram_parse_size(s):
    """Parse a size such as ``"4096"``, ``"64K"``, ``"64M"``, ``"2G"``, ``"1T"``.

    Binary units; an optional ``B`` or ``iB`` suffix; case-insensitive.

    Raises
    ------
    ValueError
        `s` does not parse.
    OverflowError
        The size does not fit in size_t.
    """
    cdef size_t out = 0
    if not isinstance(s, str):
        raise TypeError(f"ram_parse_size: expected str, got {type(s).__name__}")
    try:
        b = s.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError(f"invalid size {s!r}") from None
    if b"\0" in b:
        raise ValueError(f"invalid size {s!r}")
    err = virt.ram_parse_size(b, &out)
    if err == -EINVAL:
        raise ValueError(f"invalid size {s!r}: expected a number with an "
                         "optional K/M/G/T suffix")
    _check(err, f"ram_parse_size({s!r})")
    return out


cdef RAM _default_ram = None

def ram_default():
    """The process-wide RAM (capacity from ``$ZBIGARRAY_RAM_MAX`` if set).

    Raises
    ------
    ValueError
        ``$ZBIGARRAY_RAM_MAX`` does not parse.
    """
    global _default_ram
    cdef virt.RAM *c = NULL
    cdef RAM ram
    if _default_ram is None:
        err = virt.ram_default(&c)
        if err == -EINVAL:
            raise ValueError("invalid ZBIGARRAY_RAM_MAX="
                             f"{os.environ.get('ZBIGARRAY_RAM_MAX')!r}: expected a "
                             "size such as 64M or 2G")
        _check(err, "ram_default()")
        ram = RAM.__new__(RAM)
        virt.ram_incref(c)      # the core's reference is borrowed: take our own
        ram._c = c
        _default_ram = ram
    return _default_ram


def ram_reclaim():
    """Drop up to 64 least recently used clean pages of the default RAM now.

    Returns
    -------
    int
        How many pages were dropped.
    """
    return ram_default().reclaim(64)


# ------------------------------------------------------------------- BigFile

cdef class BigFile:
    """A file of `blksize`-byte blocks; subclass it and give loadblk/storeblk.

    A subclass whose constructor takes other arguments creates itself with
    ``BigFile.__new__(cls, blksize)`` from its own ``__new__``.

    A subclass may also define, for transactional backends:

    ``dirtied()``
        Called, inside the page fault, when a write is about to make the
        first page of a handle of this file dirty (none since its last
        writeout or discard): a chance to join a transaction first.
    ``spill()``
        Called, inside the page fault, when a fault finds the RAM full of
        dirty pages, some of a handle of this file: write some of them out
        on your own terms (`BigFileH.dirty_writeout_oldest`), which makes
        their memory reusable.  Without it such a fault raises
        `PageFaultMemoryError`.

    What these raise reaches the faulting thread as the ``__cause__`` of a
    `PageFaultError`.

    Parameters
    ----------
    blksize : int
        Block size in bytes: a positive multiple of the OS page size.

    Raises
    ------
    TypeError
        `blksize` is not an int.
    ValueError
        `blksize` is not a positive multiple of the OS page size, or too big.
    """

    def __cinit__(self, blksize):
        n = operator.index(blksize)
        if n <= 0 or n % _pagesize or n > <object>virt.VIRT_BLKSIZE_MAX:
            raise ValueError(f"blksize must be a positive multiple of the OS page "
                             f"size ({_pagesize}) at most {virt.VIRT_BLKSIZE_MAX}, "
                             f"got {n}")
        errors = {}
        cls = type(self)
        pyfile_init_ops(&self._c, hasattr(cls, "dirtied"), hasattr(cls, "spill"))
        self._c.cfile.blksize = n
        self._c.cfile.fault_around = FAULT_AROUND_DEFAULT
        self._c.owner = <PyObject *>self
        self._c.errors = <PyObject *>errors
        self._c.mmap_fd = -1
        Py_INCREF(errors)           # dropped in __dealloc__

    def __dealloc__(self):
        if self._c.errors != NULL:
            Py_DECREF(<object>self._c.errors)

    @property
    def blksize(self):
        """Block size in bytes."""
        return self._c.cfile.blksize

    @property
    def fault_around(self):
        """Bytes loaded ahead of a sequential read (default 64 KiB; 0: off).

        A read fault on the block right after the one the same thread
        faulted on last also loads and maps the next blocks, up to this many
        bytes, when the RAM has room for them without evicting recent pages:
        one fault then serves several small blocks (a 4 KiB block's fault
        costs more than its load), as the kernel's own fault-around does for
        file mappings.  Blocks of this size or bigger are never loaded
        ahead.  A failure of such a load raises nothing: the block is loaded
        again, and the failure raised, when it is touched.
        """
        return self._c.cfile.fault_around

    @fault_around.setter
    def fault_around(self, nbytes):
        n = operator.index(nbytes)
        if n < 0:
            raise ValueError(f"fault_around must be >= 0, got {n}")
        self._c.cfile.fault_around = n

    @property
    def mmap_fd(self):
        """The zero-copy path: an OS file descriptor, or None (the default).

        Set it when block ``blk`` of this file is stored as-is at bytes
        ``[blk*blksize, (blk+1)*blksize)`` of the regular file open as this
        descriptor (readable).  Clean pages of such blocks are then mapped
        straight from the OS page cache instead of being copied into RAM by
        `loadblk` -- reading costs what `numpy.memmap` costs -- and the first
        write to a page loads it through `loadblk` as usual.  Blocks not wholly
        inside the file use `loadblk`.  As with mmap, clean pages show later
        changes of the OS file, and shrinking it under them makes access raise
        SIGBUS.  Keep the descriptor open while set; set None before closing.
        """
        return None if self._c.mmap_fd < 0 else self._c.mmap_fd

    @mmap_fd.setter
    def mmap_fd(self, fd):
        if fd is None:
            self._c.mmap_fd = -1
            return
        n = operator.index(fd)
        if n < 0:
            raise ValueError(f"mmap_fd must be an open file descriptor or None, got {n}")
        self._c.mmap_fd = n

    #: How many blocks this file can address (blocks ``0 .. nblk_max-1``), or
    #: None for no limit.  `BigFileH.mmap` refuses pages beyond it, so that a
    #: range the backend cannot serve fails where it is made, not at the
    #: first touch.
    nblk_max = None

    def loadblk(self, blk, buf):
        """Fill `buf` (a writable memoryview of `blksize` bytes) with block `blk`.

        `buf` is valid only during the call.  Runs inside the page fault of the
        thread that touched the block, which gets what this raises as the
        ``__cause__`` of a `PageFaultError` (`KeyboardInterrupt` and
        `SystemExit` as themselves) once it runs Python code again; the block
        is not cached and is loaded again when touched again.  In a thread
        with no Python thread state, or with ``$ZBIGARRAY_FAULT_ABORT`` set,
        the process aborts after printing it instead.
        """
        raise NotImplementedError(f"{type(self).__name__}.loadblk")

    def storeblk(self, blk, buf):
        """Save block `blk` from `buf` (a read-only memoryview of `blksize`
        bytes), valid only during the call.  An exception propagates out of the
        `BigFileH.dirty_writeout` that called it."""
        raise NotImplementedError(f"{type(self).__name__}.storeblk")

    def fileh_open(self, RAM ram=None):
        """Open a file handle with its own page cache.

        Parameters
        ----------
        ram : RAM, optional
            Where its pages come from; default: `ram_default()`.

        Returns
        -------
        BigFileH

        Raises
        ------
        ValueError
            `blksize` exceeds the RAM's capacity, or ``$ZBIGARRAY_RAM_MAX``
            (used by the default RAM) does not parse.
        """
        cdef virt.BigFileH *c = NULL
        cdef BigFileH fileh
        if ram is None:
            ram = ram_default()
        err = virt.fileh_open(&c, &self._c.cfile, ram._ptr())
        if err == -EINVAL:
            raise ValueError(f"fileh_open: blksize {self.blksize} exceeds the "
                             f"RAM capacity {ram.capacity}")
        _check(err, "fileh_open()")
        Py_INCREF(self)     # for the core; dropped by _pyfile_release
        fileh = BigFileH.__new__(BigFileH)
        fileh._c = c
        fileh.file = self
        fileh.ram = ram
        fileh._vmas = weakref.WeakSet()
        return fileh

    cdef object _pop_error(self):
        """The exception storeblk raised in this thread, if any (see _pyfile)."""
        return (<dict>self._c.errors).pop(PyThread_get_thread_ident(), None)


# ------------------------------------------------------------------ BigFileH

# No tp_clear: a handle keeps file, ram and its VMA set until it is freed, as
# its methods may still run (from finalizers) while a cycle is collected.
# Cycles through it are broken elsewhere: at its BigFile, at its VMAs.
@cython.no_gc_clear
cdef class BigFileH:
    """A handle on a BigFile with its own page cache (from `BigFile.fileh_open`).

    Every method raises ValueError once the handle is closed.  Usable as a
    context manager, which closes it.
    """

    def __init__(self, *args, **kw):
        raise TypeError("BigFileH objects are created by BigFile.fileh_open()")

    def __dealloc__(self):
        if self._c != NULL:
            virt.fileh_close(self._c)

    cdef virt.BigFileH *_handle(self, str what) except NULL:
        if self._c == NULL:
            raise ValueError(f"{what} on a closed file handle")
        return self._c

    def mmap(self, pgoffset, pglen):
        """Map pages ``[pgoffset, pgoffset+pglen)``; they load on first touch.

        Returns
        -------
        VMA

        Raises
        ------
        ValueError
            A negative argument, or `pglen` == 0.
        OverflowError
            The range does not fit 64 bits or the address space.
        """
        what = f"mmap(pgoffset={pgoffset!r}, pglen={pglen!r})"
        cdef virt.BigFileH *c = self._handle(what)
        cdef virt.VMA *cvma = NULL
        cdef VMA vma
        cdef uint64_t off = _u64(pgoffset, "pgoffset", what)
        cdef uint64_t n = _u64(pglen, "pglen", what)
        if n == 0:
            raise ValueError(f"{what}: pglen must be > 0")
        if <object>off + <object>n - 1 > 0xFFFF_FFFF_FFFF_FFFF:
            raise OverflowError(f"{what}: the range does not fit 64 bits")
        nblk_max = self.file.nblk_max
        if nblk_max is not None and <object>off + <object>n > nblk_max:
            raise OverflowError(f"{what}: {self.file!r} addresses blocks below "
                                f"{nblk_max} only")
        if not _uffd_told:
            _check(virt.virt_install_fault_handler(), what)   # decides on userfaultfd
            _tell_uffd_status()
        err = virt.fileh_mmap(&cvma, c, off, n)
        if err == -EOVERFLOW:
            raise OverflowError(f"{what}: the range does not fit the address space")
        _check(err, what)
        vma = VMA.__new__(VMA)
        vma._c = cvma

        Py_INCREF(self)         # dropped in VMA.__dealloc__
        vma._fileh = <PyObject *>self
        vma.addr_start = virt.vma_addr_start(cvma)
        vma.addr_stop = virt.vma_addr_stop(cvma)
        vma._shape[0] = vma.addr_stop - vma.addr_start
        vma._strides[0] = 1
        self._vmas.add(vma)
        return vma

    def dirty_writeout(self, flags):
        """Write out dirty pages: WRITEOUT_STORE calls storeblk for each, in
        ascending block order; WRITEOUT_MARKSTORED makes them clean again.

        Raises
        ------
        ValueError
            `flags` has neither bit, or unknown bits.
        RuntimeError
            A writeout of this handle is already running.
        PageFaultError
            A page fault of this handle failed since its last
            `dirty_discard` (see `fault_failed`): nothing was written.
        Exception
            Whatever storeblk raised (the pages then stay dirty).
        """
        cdef virt.BigFileH *c = self._handle("dirty_writeout()")
        cdef int cflags = _writeout_flags(flags)
        cdef int err
        self._nwriteout += 1
        try:
            with nogil:
                err = virt.fileh_dirty_writeout(c, cflags)
        finally:
            self._nwriteout -= 1
        exc = self.file._pop_error()
        if exc is not None:
            raise exc
        if err < 0:
            self._writeout_error(err, f"dirty_writeout({flags!r})")

    cdef int _writeout_error(self, int err, str what) except -1:
        if err == -EBUSY:
            raise RuntimeError(f"{what}: writeout already in progress")
        if err == -ENOTRECOVERABLE:
            raise PageFaultError(
                f"{what}: a page fault of {self!r} failed, so its dirty pages may "
                "hold values computed from a stand-in; call dirty_discard() (and "
                "redo the changes) before writing out")
        _check(err, what)
        return 0

    def dirty_writeout_oldest(self, npages):
        """Write out the `npages` pages dirtied longest ago: storeblk for
        each (ascending block order), then clean, as ``dirty_writeout(
        WRITEOUT_STORE | WRITEOUT_MARKSTORED)`` does for all; for `spill`.
        A write to one of them meanwhile waits for the store, then dirties
        it again.

        Returns
        -------
        int
            How many pages became clean.

        Raises
        ------
        As `dirty_writeout`; on a failed store every page stays dirty.
        """
        cdef virt.BigFileH *c = self._handle("dirty_writeout_oldest()")
        cdef size_t n = <size_t>_u64(npages, "npages", "dirty_writeout_oldest()")
        cdef int r
        self._nwriteout += 1
        try:
            with nogil:
                r = virt.fileh_dirty_writeout_oldest(c, n)
        finally:
            self._nwriteout -= 1
        exc = self.file._pop_error()
        if exc is not None:
            raise exc
        if r < 0:
            self._writeout_error(r, f"dirty_writeout_oldest({npages!r})")
        return r

    def dirty_discard(self):
        """Drop every dirty page; the next touch reloads it from the file.
        Clears `fault_failed`."""
        cdef virt.BigFileH *c = self._handle("dirty_discard()")
        err = virt.fileh_dirty_discard(c)
        if err == -EBUSY:
            raise RuntimeError("dirty_discard(): writeout in progress")
        _check(err, "dirty_discard()")

    @property
    def fault_failed(self):
        """Whether a page fault of this handle failed (a `PageFaultError`)
        since it was opened or last discarded; `dirty_writeout` refuses
        while it holds."""
        return bool(virt.fileh_fault_failed(self._handle("fault_failed")))

    def isdirty(self):
        """Whether any page was written since the last writeout or discard."""
        return bool(virt.fileh_isdirty(self._handle("isdirty()")))

    def page_bytes(self, pgoffset):
        """The page of block `pgoffset` as it is now (dirty or clean), its
        trailing zero bytes left out; None if the block has no page (never
        loaded, dropped, or loading).  Loads nothing and faults nothing: the
        bytes are read from the page's memory by the kernel.

        Raises
        ------
        ValueError
            The handle is closed, or `pgoffset` is negative.
        """
        what = f"page_bytes(pgoffset={pgoffset!r})"
        cdef virt.BigFileH *c = self._handle(what)
        cdef virt.blk_t blk = _u64(pgoffset, "pgoffset", what)
        cdef Py_ssize_t size = self.file.blksize
        data = PyBytes_FromStringAndSize(NULL, size)
        cdef char *dst = PyBytes_AS_STRING(data)
        cdef Py_ssize_t n
        with nogil:
            n = virt.fileh_page_read(c, blk, dst)
        if n == -ENOENT:
            return None
        _check(<int>n if n < 0 else 0, what)
        return data[:n] if n < size else data

    def invalidate_page(self, pgoffset):
        """Block `pgoffset` changed in the file: drop its page (a load in
        flight throws its result away)."""
        what = f"invalidate_page(pgoffset={pgoffset!r})"
        cdef virt.BigFileH *c = self._handle(what)
        err = virt.fileh_invalidate_page(c, _u64(pgoffset, "pgoffset", what))
        if err == -EBUSY:
            raise RuntimeError(f"{what}: the page is being stored")
        _check(err, what)

    def stats(self):
        """Counters of this handle (npages, ndirty, nvma, nloadblk,
        nstoreblk), as a dict."""
        cdef virt.FileHStats st
        virt.fileh_get_stats(self._handle("stats()"), &st)
        return {"npages": st.npages, "ndirty": st.ndirty, "nvma": st.nvma,
                "nloadblk": st.nloadblk, "nstoreblk": st.nstoreblk}

    def close(self):
        """Unmap every VMA of this handle and drop its pages, dirty ones too.

        Idempotent.  Memory of its mappings becomes inaccessible (touching it
        crashes, as after munmap).

        Raises
        ------
        RuntimeError
            Called while a dirty_writeout of this handle runs.
        """
        cdef VMA vma
        cdef virt.BigFileH *c
        if self._c == NULL:
            return
        if self._nwriteout:
            raise RuntimeError("cannot close a file handle during its dirty_writeout")
        for vma in list(self._vmas):
            vma._c = NULL       # fileh_close frees them
        c = self._c
        self._c = NULL
        virt.fileh_close(c)

    @property
    def closed(self):
        """Whether `close` was called."""
        return self._c == NULL

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close()

    def __repr__(self):
        state = "closed" if self._c == NULL else "open"
        return f"<BigFileH {state} file={self.file!r}>"


cdef int _writeout_flags(flags) except -1:
    cdef int ok = virt.WRITEOUT_STORE | virt.WRITEOUT_MARKSTORED
    try:
        f = operator.index(flags)
    except TypeError:
        f = None
    if f is None or not (f & ok) or (f & ~ok):
        raise ValueError(f"dirty_writeout: invalid flags {flags!r}: expected "
                         "WRITEOUT_STORE, WRITEOUT_MARKSTORED or both")
    return f


# ----------------------------------------------------------------------- VMA

cdef class VMA:
    """One mapping of pages of a file handle; exports a writable 1-D buffer
    of unsigned bytes (``memoryview(vma)``, ``numpy.frombuffer(vma)``).

    The mapping stays alive while any exported buffer is alive, and keeps its
    file handle alive.  `close` unmaps it even then: touching the memory
    afterwards crashes, as after munmap.
    """

    def __init__(self, *args, **kw):
        raise TypeError("VMA objects are created by BigFileH.mmap()")

    def __dealloc__(self):
        if self._alive():
            virt.vma_unmap(self._c)
        if self._fileh != NULL:
            Py_DECREF(<object>self._fileh)

    cdef bint _alive(self):
        # _c is valid only while the handle is open too: closing the handle
        # frees its VMAs.  The handle marks its VMA objects closed then, but it
        # cannot reach one whose weakref the collector already cleared (this
        # VMA in a cycle being collected).
        return self._c != NULL and (<BigFileH>self._fileh)._c != NULL

    @property
    def fileh(self):
        """The file handle this VMA maps pages of."""
        return <BigFileH>self._fileh

    cdef virt.VMA *_vma(self, str what) except NULL:
        if not self._alive():
            raise ValueError(f"{what} on a closed VMA")
        return self._c

    def __getbuffer__(self, Py_buffer *view, int flags):
        self._vma("buffer export")
        fill_byte_view(view, self, <void *>self.addr_start, self._shape, self._strides,
                       False, flags)
        self._nexports += 1

    def __releasebuffer__(self, Py_buffer *view):
        self._nexports -= 1

    def filerange(self):
        """``(pgoffset, pglen)``: the pages of the file handle mapped here."""
        cdef virt.VMA *c = self._vma("filerange()")
        return (virt.vma_pgoffset(c), virt.vma_pglen(c))

    def pagesize(self):
        """Size of one page of this mapping (the file's block size)."""
        return virt.vma_pagesize(self._vma("pagesize()"))

    def close(self):
        """Unmap.  Idempotent; touching the memory afterwards crashes."""
        cdef virt.VMA *c = self._c
        if not self._alive():
            self._c = NULL
            return
        self._c = NULL
        virt.vma_unmap(c)
        (<BigFileH>self._fileh)._vmas.discard(self)

    @property
    def closed(self):
        """Whether the mapping was closed (directly or by its file handle)."""
        return not self._alive()

    def __repr__(self):
        state = "open" if self._alive() else "closed"
        return f"<VMA {state} [{self.addr_start:#x}, {self.addr_stop:#x})>"


# ------------------------------------------------- references the GC must see
#
# Two strong references are held outside the attributes Cython knows about,
# so its generated tp_traverse does not report them; the wrappers below do.
# - An open handle owns the core's reference to its BigFile (see fileh_open).
#   Unreported, a cycle BigFile -> BigFileH -> BigFile would look referenced
#   from outside and never be collected.
# - A VMA's reference to its handle is a raw pointer so that the generated
#   tp_clear cannot drop it: the VMA must still reach the handle to unmap
#   itself in __dealloc__ (tp_clear clears pyuser, which breaks its cycles).

cdef traverseproc _bigfileh_traverse_attrs = (<_TypeGCSlots *><PyObject *>BigFileH).tp_traverse
cdef traverseproc _vma_traverse_attrs = (<_TypeGCSlots *><PyObject *>VMA).tp_traverse

cdef int _bigfileh_traverse(PyObject *o, visitproc visit, void *arg) noexcept:
    cdef int r = _bigfileh_traverse_attrs(o, visit, arg)
    cdef BigFileH fileh = <BigFileH>o
    if r == 0 and fileh._c != NULL and fileh.file is not None:
        r = visit(<PyObject *>fileh.file, arg)
    return r

cdef int _vma_traverse(PyObject *o, visitproc visit, void *arg) noexcept:
    cdef int r = _vma_traverse_attrs(o, visit, arg)
    cdef PyObject *fileh = (<VMA>o)._fileh
    if r == 0 and fileh != NULL:
        r = visit(fileh, arg)
    return r

(<_TypeGCSlots *><PyObject *>BigFileH).tp_traverse = _bigfileh_traverse
(<_TypeGCSlots *><PyObject *>VMA).tp_traverse = _vma_traverse
