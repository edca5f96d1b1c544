# Extension types of zbigarray.bigfile._bigfile, for other Cython modules to
# cimport.  The C core's own declarations are in virtmem.pxd.
#
# cimport order (each module cimports only what is above it):
#   virtmem.pxd   declares virtmem.h, the C core's public API (no module)
#   _errors       -errno -> exception, argument checks      (no core calls)
#   _blkbuf       <- virtmem (VIRT_BUF_KEPT)                 (no core calls)
#   _pyfile       <- virtmem, _blkbuf                        (no core calls)
#   _bigfile      <- virtmem, _errors, _blkbuf, _pyfile; the only extension linked
#                    with the core (its state is process-wide: one copy)

from cpython.ref cimport PyObject
from libc.stdint cimport uintptr_t

from zbigarray.bigfile cimport virtmem as virt
from zbigarray.bigfile._pyfile cimport PyBigFile


cdef class BigFile:
    # The C BigFile, and in _c.errors the exceptions storeblk raised, by
    # thread id, until the dirty_writeout that called it re-raises them (held
    # there only for that moment, so not reported to the garbage collector).
    cdef PyBigFile _c
    cdef object __weakref__

    cdef object _pop_error(self)


cdef class RAM:
    cdef virt.RAM *_c          # one reference, dropped in __dealloc__
    cdef object __weakref__

    cdef virt.RAM *_ptr(self) except NULL


cdef class BigFileH:
    cdef virt.BigFileH *_c     # NULL once closed
    cdef readonly BigFile file
    cdef readonly RAM ram
    cdef object _vmas          # weakref.WeakSet of this handle's VMA objects
    cdef int _nwriteout        # dirty_writeout calls running (GIL released)
    cdef object __weakref__

    cdef virt.BigFileH *_handle(self, str what) except NULL
    cdef int _writeout_error(self, int err, str what) except -1


cdef class VMA:
    cdef virt.VMA *_c          # NULL once closed
    cdef PyObject *_fileh      # a strong reference to the BigFileH (see _bigfile.pyx)
    cdef readonly uintptr_t addr_start
    cdef readonly uintptr_t addr_stop
    cdef public object pyuser
    cdef Py_ssize_t _nexports
    cdef Py_ssize_t _shape[1]
    cdef Py_ssize_t _strides[1]
    cdef object __weakref__

    cdef bint _alive(self)
    cdef virt.VMA *_vma(self, str what) except NULL
