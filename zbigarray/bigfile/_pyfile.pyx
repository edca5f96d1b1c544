# cython: language_level=3
"""The C -> Python boundary of the core.

- The trampolines the core calls as a Python BigFile's loadblk, storeblk and
  release.  They run with the GIL taken for the call only, catch every
  exception (nothing may end up as an "unraisable exception"), and lend the
  block through _blkbuf.
- The GIL hooks that let the core wait for a page another thread is loading.
- The failure policy of a page fault that cannot be served.

_bigfile installs all three into the core when it is imported.
"""

from cpython.pythread cimport PyThread_get_thread_ident
from cpython.ref cimport PyObject, Py_DECREF
from libc.errno cimport EIO, ENODATA
from libc.stdint cimport UINT64_MAX, uint64_t
from posix.stat cimport S_ISREG, fstat, struct_stat as stat_t
from libc.stdio cimport fflush, fprintf, stderr
from libc.stdlib cimport abort
from libc.string cimport strerror

from zbigarray.bigfile cimport virtmem as virt
from zbigarray.bigfile._blkbuf cimport _BlkBuf, blkbuf_new

import sys
import traceback


cdef extern from "Python.h":
    ctypedef struct PyThreadState
    PyThreadState *PyEval_SaveThread() nogil
    void PyEval_RestoreThread(PyThreadState *tstate) nogil
    int PyGILState_Check() nogil


# ---------------------------------------------------------------- trampolines

cdef int _pyfile_loadblk(virt.BigFile *cf, virt.blk_t blk, void *buf) noexcept with gil:
    cdef object owner = <object>(<PyBigFile *>cf).owner
    cdef _BlkBuf blkbuf
    try:
        blkbuf = blkbuf_new(buf, cf.blksize, False)
        blkbuf.lend(owner.loadblk, blk)
        return blkbuf.settle()
    except BaseException as exc:
        _report_loadblk_failure(owner, blk, exc)
        return _failed(blkbuf)


cdef int _pyfile_storeblk(virt.BigFile *cf, virt.blk_t blk, const void *buf) noexcept with gil:
    cdef object owner = <object>(<PyBigFile *>cf).owner
    cdef _BlkBuf blkbuf = None
    try:
        blkbuf = blkbuf_new(<void *>buf, cf.blksize, True)
        blkbuf.lend(owner.storeblk, blk)
        return blkbuf.settle()
    except BaseException as exc:
        _stash_error(cf, exc)
        return _failed(blkbuf)


cdef int _failed(_BlkBuf blkbuf) noexcept:
    """The result of a loadblk/storeblk that raised: -EIO, or VIRT_BUF_KEPT_EIO
    when views of buf outlive the call (kept in the traceback's frames, or
    stored away): they get a private copy, as after a successful call, so
    that they never alias page memory the core reuses."""
    if blkbuf is not None and blkbuf.nexports and blkbuf.orphan() == virt.VIRT_BUF_KEPT:
        return virt.VIRT_BUF_KEPT_EIO
    return -EIO


cdef void _stash_error(virt.BigFile *cf, BaseException exc) noexcept:
    """Park @exc for the BigFileH.dirty_writeout of this thread to raise."""
    try:
        (<dict>(<PyBigFile *>cf).errors)[PyThread_get_thread_ident()] = exc
    except BaseException:
        pass    # out of memory: dirty_writeout still fails, with OSError(EIO)


cdef int _pyfile_mmapblk(virt.BigFile *cf, virt.blk_t blk, int *fd,
                         uint64_t *offset) noexcept nogil:
    # The zero-copy path (BigFile.mmap_fd): block blk is bytes
    # [blk*blksize, (blk+1)*blksize) of the file.  Pure C, no GIL: it runs in
    # the fault handler under the virtmem lock.  Only whole blocks inside the
    # file are mapped: past its end a mapping would raise SIGBUS.
    cdef int mfd = (<PyBigFile *>cf).mmap_fd
    cdef stat_t st
    cdef uint64_t size = cf.blksize
    if mfd < 0:
        return -ENODATA
    if blk > (UINT64_MAX - size) // size:
        return -ENODATA
    if fstat(mfd, &st) != 0 or not S_ISREG(st.st_mode):
        return -ENODATA
    if (blk + 1) * size > <uint64_t>st.st_size:
        return -ENODATA
    fd[0] = mfd
    offset[0] = blk * size
    return 0


cdef void _pyfile_release(virt.BigFile *cf) noexcept with gil:
    # Drops the reference BigFile.fileh_open took for the core.
    Py_DECREF(<object>(<PyBigFile *>cf).owner)


cdef virt.BigFileOps _pyfile_ops
_pyfile_ops.loadblk = _pyfile_loadblk
_pyfile_ops.storeblk = _pyfile_storeblk
_pyfile_ops.release = _pyfile_release
_pyfile_ops.mmapblk = _pyfile_mmapblk

cdef const virt.BigFileOps *pyfile_ops():
    """The ops of every Python BigFile (a static table)."""
    return &_pyfile_ops


# --------------------------------------------------- failure policy of faults
#
# A failed loadblk runs inside a page fault: there is no Python caller to raise
# into.  The policy (issue 2) is the one the kernel applies to an unreadable
# mmapped file: a fatal error.  _report_loadblk_failure prints what failed and
# the Python traceback; the core then calls fault_error, which aborts.  Turning
# this into a Python exception later means changing these two functions (and
# keeping views the failed loadblk kept from aliasing the dropped page, as
# _pyfile_storeblk does).

cdef void _report_loadblk_failure(owner, virt.blk_t blk, BaseException exc) noexcept:
    try:
        sys.stderr.write(f"zbigarray: loadblk(blk={blk}) of {_safe_repr(owner)} failed:\n")
        traceback.print_exception(exc)
        sys.stderr.flush()
    except BaseException:
        pass    # stderr unusable; fault_error still prints through C stdio


cdef str _safe_repr(obj):
    try:
        return repr(obj)
    except BaseException:
        return f"<{type(obj).__name__} object at {id(obj):#x}>"


cdef void fault_error(virt.BigFile *cf, virt.blk_t blk, int err, const char *what) noexcept with gil:
    """The core's virt_fault_error_fn: say what failed, then abort()."""
    cdef bytes where = b""
    try:
        if cf != NULL:
            where = f"file {_safe_repr(<object>(<PyBigFile *>cf).owner)}, ".encode(
                "utf-8", "replace")
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
    except BaseException:
        pass
    fprintf(stderr, "zbigarray: page fault cannot be served: %s (%sblk %llu): %s\n",
            what, <char *>where, <unsigned long long>blk, strerror(-err))
    fflush(stderr)
    abort()


# ------------------------------------------------------------------ GIL hooks

cdef void *_gil_release() noexcept nogil:
    return PyEval_SaveThread() if PyGILState_Check() else NULL

cdef void _gil_retake(void *token) noexcept nogil:
    if token != NULL:
        PyEval_RestoreThread(<PyThreadState *>token)

cdef virt.VirtGilHooks _gil_hooks
_gil_hooks.release = _gil_release
_gil_hooks.retake = _gil_retake

cdef const virt.VirtGilHooks *gil_hooks():
    """Release the GIL if this thread holds it; retake it after the wait."""
    return &_gil_hooks
