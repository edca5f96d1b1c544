# cython: language_level=3
"""The C -> Python boundary of the core.

- The trampolines the core calls as a Python BigFile's loadblk, storeblk and
  release.  They run with the GIL taken for the call only, catch every
  exception (nothing may end up as an "unraisable exception"), and lend the
  block through _blkbuf.
- The GIL hooks that let the core wait for a page another thread is loading.
- The failure policy of a page fault that cannot be served: the faulting
  thread gets a Python exception (PageFaultError), or the process stops.

_bigfile installs all three into the core when it is imported.
"""

from cpython.pythread cimport PyThread_get_thread_ident
from cpython.ref cimport PyObject, Py_DECREF
from libc.errno cimport EIO, ENODATA, ENOMEM
from libc.stdint cimport UINT64_MAX, uint64_t
from posix.stat cimport S_ISREG, fstat, struct_stat as stat_t
from libc.stdio cimport fflush, fprintf, stderr
from libc.stdlib cimport abort
from libc.string cimport strerror

from zbigarray.bigfile cimport virtmem as virt
from zbigarray.bigfile._blkbuf cimport _BlkBuf, blkbuf_new

import os
import sys
import threading
import traceback


cdef extern from "Python.h":
    ctypedef struct PyThreadState
    PyThreadState *PyEval_SaveThread() nogil
    void PyEval_RestoreThread(PyThreadState *tstate) nogil
    int PyGILState_Check() nogil
    PyThreadState *PyGILState_GetThisThreadState() nogil
    int PyThreadState_SetAsyncExc(unsigned long id, object exc)
    int Py_AddPendingCall(int (*func)(void *) noexcept, void *arg)
    void PyErr_SetObject(object type, object value)
    void PyErr_SetInterrupt()


# ---------------------------------------------------------------- trampolines

cdef int _pyfile_loadblk(virt.BigFile *cf, virt.blk_t blk, void *buf) noexcept with gil:
    cdef object owner = <object>(<PyBigFile *>cf).owner
    cdef _BlkBuf blkbuf
    _fault_has_gil()
    try:
        blkbuf = blkbuf_new(buf, cf.blksize, False)
        blkbuf.zeroed = _fault_buf_zeroed()
        blkbuf.lend(owner.loadblk, blk)
        if blkbuf.nexports and _loadbuf_save(buf) != 0:
            # Views of buf outlive the call and the block could not be
            # copied into the page: a failed load.
            return _failed(blkbuf)
        return blkbuf.settle()
    except BaseException as exc:
        if _fault_speculative():
            # A load ahead of use (fault-around): nothing is reported, the
            # block loads again when touched.  Ctrl-C must not be lost.
            if isinstance(exc, KeyboardInterrupt):
                PyErr_SetInterrupt()
            return _failed(blkbuf)
        # Raised in the faulting thread by the failure policy (fault_error),
        # which the core calls next.
        _callback_errors[PyThread_get_thread_ident()] = exc
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


cdef int _pyfile_dirtied(virt.BigFile *cf) noexcept with gil:
    return _call_in_fault(cf, "dirtied")


cdef int _pyfile_spill(virt.BigFile *cf) noexcept with gil:
    return _call_in_fault(cf, "spill")


cdef int _call_in_fault(virt.BigFile *cf, str method) noexcept:
    """Call the owner's @method() from inside a page fault: 0, or -EIO with
    what it raised kept for the failure policy (which the core calls next)."""
    _fault_has_gil()
    try:
        getattr(<object>(<PyBigFile *>cf).owner, method)()
        return 0
    except BaseException as exc:
        _callback_errors[PyThread_get_thread_ident()] = exc
        return -EIO


cdef void _pyfile_release(virt.BigFile *cf) noexcept with gil:
    # Drops the reference BigFile.fileh_open took for the core.
    Py_DECREF(<object>(<PyBigFile *>cf).owner)


cdef void pyfile_init_ops(PyBigFile *pf, bint dirtied, bint spill) noexcept:
    """Point @pf's core file at its own ops: the trampolines, with dirtied and
    spill only if its class gives them (the core calls neither otherwise)."""
    pf.ops.loadblk = _pyfile_loadblk
    pf.ops.storeblk = _pyfile_storeblk
    pf.ops.release = _pyfile_release
    pf.ops.mmapblk = _pyfile_mmapblk
    pf.ops.dirtied = NULL
    pf.ops.spill = NULL
    if dirtied:
        pf.ops.dirtied = _pyfile_dirtied
    if spill:
        pf.ops.spill = _pyfile_spill
    pf.cfile.ops = &pf.ops


# --------------------------------------------------- failure policy of faults
#
# A page fault that cannot be served has no Python caller to raise into: it
# happens inside whatever machine code touched the memory.  The policy: the
# core completes the access on a stand-in (zero memory that is never taken
# for the page, see virtmem.h) and the faulting thread gets the exception the
# way CPython delivers asynchronous events (signals): at the interpreter's
# next check in that thread, which comes right after the C call that touched
# the memory returns, or at the next call, loop iteration or function entry.
# - The main thread: a pending call (Py_AddPendingCall), which the
#   interpreter runs in the main thread only and which raises the prepared
#   exception as it is.
# - Other threads: the asynchronous-exception slot of the thread
#   (PyThreadState_SetAsyncExc).  It takes a class, which the interpreter
#   instantiates with no arguments: the class's __new__ returns the prepared
#   exception.
# Either way, raising it tells the core that the failure is reported, which
# removes the thread's stand-ins.  Until then the thread is "failing": the core
# serves its faults that need a load with stand-ins without calling loadblk,
# so no Python code runs that could receive the exception early.
#
# A thread with no Python thread state (a C or BLAS worker) has nothing to
# raise into; there, and everywhere when $ZBIGARRAY_FAULT_ABORT is set, the
# failure stops the process with a report, as the kernel stops a program
# whose mmapped file cannot be read.

FAULT_ABORT_ENV = "ZBIGARRAY_FAULT_ABORT"

cdef bint _fail_stop_always = os.environ.get(FAULT_ABORT_ENV, "") not in ("", "0")

# thread ident -> what loadblk (or dirtied, spill) raised inside a page
# fault, until fault_error takes it
cdef dict _callback_errors = {}
# thread ident -> (the exception to raise in that thread, until it arrives;
# whether it is for a system call's fault, served by a proxy thread)
cdef dict _pending = {}


class PageFaultError(RuntimeError):
    """A page fault could not be served.

    Raised in the thread that touched the memory, as soon as it runs Python
    code again, when loading a block failed (``__cause__`` is what `loadblk`
    raised; the message names the file and the block) or no page memory
    could be had.  Until then the machine code that touched the memory saw
    zeros, which never reach the file: the page was not cached, writes to it
    were dropped, and the file handle refuses `BigFileH.dirty_writeout`
    (a transactional handle's transaction cannot commit) until its dirty
    pages are discarded.  Touching the page again retries the load.
    """

    def __new__(cls, *args, **kwargs):
        if not args and not kwargs:
            # Instantiated with no arguments by the interpreter, to raise the
            # exception a failed fault of this thread prepared.
            arrived = _arrival()
            if arrived is not None:
                return arrived
        return super().__new__(cls, *args, **kwargs)

    def __init__(self, *args):
        if args:        # not for an arrived exception: keep its message
            super().__init__(*args)


class PageFaultMemoryError(PageFaultError, MemoryError):
    """A page fault found the RAM full of pages it cannot reclaim (dirty, or
    being loaded by this thread); the message names the capacity."""


# Shown where users meet them (tracebacks, reprs).
PageFaultError.__module__ = PageFaultMemoryError.__module__ = "zbigarray.bigfile"


class _KeyboardInterruptArrival(KeyboardInterrupt):
    # Delivers a KeyboardInterrupt raised inside loadblk (Ctrl-C while a
    # block loads) as itself.
    def __new__(cls, *args):
        arrived = _arrival()
        return arrived if arrived is not None else KeyboardInterrupt()


class _SystemExitArrival(SystemExit):
    def __new__(cls, *args):
        arrived = _arrival()
        return arrived if arrived is not None else SystemExit()


# The core's virt_fault_failing and virt_fault_reported, given by _bigfile:
# this module must not link the core itself, or a second copy of its state
# would be loaded (see setup.py).
cdef int  (*_fault_failing)() noexcept nogil
cdef void (*_fault_reported)() noexcept nogil
cdef int  (*_fault_speculative)() noexcept nogil
cdef int  (*_fault_buf_zeroed)() noexcept nogil
# Tells the core a proxy serving a system call's fault got the GIL.
cdef void (*_fault_has_gil)() noexcept nogil
# The core's virt_loadbuf_save: a loadblk whose buffer outlives the call
# hands its content over with it before the buffer becomes the views' own.
cdef int  (*_loadbuf_save)(void *buf) noexcept nogil

cdef void set_fault_state_calls(int (*failing)() noexcept nogil,
                                void (*reported)() noexcept nogil,
                                int (*speculative)() noexcept nogil,
                                int (*buf_zeroed)() noexcept nogil,
                                void (*has_gil)() noexcept nogil,
                                int (*loadbuf_save)(void *) noexcept nogil) noexcept:
    global _fault_failing, _fault_reported, _fault_speculative, _fault_buf_zeroed
    global _fault_has_gil, _loadbuf_save
    _fault_failing = failing
    _fault_reported = reported
    _fault_speculative = speculative
    _fault_buf_zeroed = buf_zeroed
    _fault_has_gil = has_gil
    _loadbuf_save = loadbuf_save


cdef object _arrival():
    """The exception prepared for this thread, which is raising it now; the
    core removes the thread's stand-ins.  None if there is none."""
    ident = PyThread_get_thread_ident()
    exc, remote = _pending.pop(ident, (None, False))
    if exc is None or not (remote or _fault_failing()):
        return None         # none, or a stale entry (its thread exited): not ours
    _fault_reported()
    return exc


cdef object _fault_exception(owner, virt.blk_t blk, int err, str what, cause):
    """The exception a failed fault on block @blk of @owner raises."""
    where = f"block {blk} of {_safe_repr(owner)}"
    if isinstance(cause, (KeyboardInterrupt, SystemExit)):
        if hasattr(cause, "add_note"):
            cause.add_note(f"(raised by loadblk of {where}, inside a page fault)")
        return cause
    if cause is not None:
        exc = PageFaultError(f"page fault on {where}: {what}: "
                             f"{type(cause).__name__}: {cause}")
        exc.__cause__ = cause
    elif err == -ENOMEM:
        exc = PageFaultMemoryError(f"page fault on {where}: {what}")
    else:
        exc = PageFaultError(f"page fault on {where}: {what}: {os.strerror(-err)}")
    return exc


cdef int _raise_in_main_thread(void *arg) noexcept with gil:
    # The pending call: runs in the main thread at the interpreter's check.
    exc = _arrival()
    if exc is None:
        return 0
    PyErr_SetObject(type(exc), exc)
    return -1


cdef object _arrival_class(exc):
    if isinstance(exc, KeyboardInterrupt):
        return _KeyboardInterruptArrival
    if isinstance(exc, SystemExit):
        return _SystemExitArrival
    return PageFaultError


cdef int fault_error(virt.BigFile *cf, virt.blk_t blk, int err, const char *what) noexcept nogil:
    """The core's virt_fault_error_fn: have the exception raised in this
    thread and return VIRT_FAULT_STANDIN, or stop the process."""
    if _fail_stop_always or PyGILState_GetThisThreadState() == NULL:
        _fail_stop(cf, blk, err, what)
    return _prepare_exception(cf, blk, err, what)


cdef int _prepare_exception(virt.BigFile *cf, virt.blk_t blk, int err,
                            const char *what) noexcept with gil:
    ident = PyThread_get_thread_ident()
    try:
        cause = _callback_errors.pop(ident, None)
        if _fault_failing():
            # A failure that follows from the one still to be raised (e.g.
            # loadblk read a stand-in): that one tells what went wrong.
            return virt.VIRT_FAULT_STANDIN
        owner = <object>(<PyBigFile *>cf).owner
        exc = _fault_exception(owner, blk, err, what.decode("utf-8", "replace"), cause)
        _deliver(ident, exc, False)
        return virt.VIRT_FAULT_STANDIN
    except BaseException:
        pass
    _fail_stop(cf, blk, err, what)
    return 0    # not reached


cdef void _deliver(ident, exc, bint remote) except *:
    """Have thread @ident raise @exc at the interpreter's next check."""
    _pending[ident] = (exc, remote)
    if ident == threading.main_thread().ident:
        if Py_AddPendingCall(_raise_in_main_thread, NULL) == 0:
            return
    if PyThreadState_SetAsyncExc(ident, _arrival_class(exc)) != 1:
        del _pending[ident]
        raise RuntimeError("cannot deliver the exception to the faulting thread")


cdef void fault_remote_error(virt.BigFile *cf, virt.blk_t blk, int err, const char *what,
                             virt.pid_t tid) noexcept with gil:
    """The core's virt_fault_remote_error_fn, run in the proxy thread that
    served a fault of thread @tid inside a system call: the call failed with
    EFAULT, which does not say why; that thread raises a PageFaultError
    saying it as soon as it runs Python code again (usually while handling
    the call's OSError).  A thread without Python gets the message on
    stderr."""
    cdef str text = what.decode("utf-8", "replace")
    try:
        cause = _callback_errors.pop(PyThread_get_thread_ident(), None)
        owner = <object>(<PyBigFile *>cf).owner
        exc = _fault_exception(owner, blk, err, text + " (inside a system call, which "
                               "failed with EFAULT)", cause)
        for thread in threading.enumerate():
            if thread.native_id == tid:
                _deliver(thread.ident, exc, True)
                return
        sys.stderr.write(f"zbigarray: a system call of thread {tid} failed (EFAULT): {exc}\n")
    except BaseException:
        fprintf(stderr, "zbigarray: a system call of thread %d failed (EFAULT): page fault "
                "on block %llu not served: %s\n", <int>tid, <unsigned long long>blk, what)


cdef void _fail_stop(virt.BigFile *cf, virt.blk_t blk, int err, const char *what) noexcept with gil:
    """Say what failed (with loadblk's traceback), then abort()."""
    cdef bytes where = b""
    try:
        cause = _callback_errors.pop(PyThread_get_thread_ident(), None)
        owner = <object>(<PyBigFile *>cf).owner
        where = f"file {_safe_repr(owner)}, ".encode("utf-8", "replace")
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
        if cause is not None:
            sys.stderr.write(f"zbigarray: loadblk(blk={blk}) of {_safe_repr(owner)} failed:\n")
            traceback.print_exception(cause)
            sys.stderr.flush()
    except BaseException:
        pass    # stderr unusable; the C message below still goes out
    fprintf(stderr, "zbigarray: page fault cannot be served: %s (%sblk %llu): %s\n",
            what, <char *>where, <unsigned long long>blk, strerror(-err))
    fflush(stderr)
    abort()


cdef str _safe_repr(obj):
    try:
        return repr(obj)
    except BaseException:
        return f"<{type(obj).__name__} object at {id(obj):#x}>"


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
