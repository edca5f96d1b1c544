# Turning the C core's -errno results and bad arguments into Python exceptions.
# Core-free: it declares nothing of virtmem.h.

from libc.stdint cimport uint64_t

cdef object errno_error(int err, str what)
cdef int check(int err, str what) except -1
cdef uint64_t u64_arg(object value, str name, str what) except? 0
