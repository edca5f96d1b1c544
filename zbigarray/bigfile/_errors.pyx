# cython: language_level=3
"""One mapping from the C core's ``-errno`` results to Python exceptions.

Every fallible core call in _bigfile.pyx goes through `check`; messages name
the operation and its arguments (@what) and the system's error text.
"""

from libc.errno cimport EBUSY, EINVAL, ENOMEM, EOVERFLOW, ERANGE
from libc.stdint cimport uint64_t

import operator
import os

cdef object _U64_MAX = 2**64 - 1


cdef object errno_error(int err, str what):
    """The exception for core result @err (a negative errno) of @what."""
    cdef int e = -err
    msg = f"{what}: {os.strerror(e)}"
    if e == EINVAL:
        return ValueError(msg)
    if e == EOVERFLOW or e == ERANGE:
        return OverflowError(msg)
    if e == ENOMEM:
        return MemoryError(msg)
    if e == EBUSY:
        return RuntimeError(msg)
    return OSError(e, msg)      # OSError picks the subclass for e


cdef int check(int err, str what) except -1:
    """Raise errno_error(err, what) if @err < 0."""
    if err < 0:
        raise errno_error(err, what)
    return 0


cdef uint64_t u64_arg(object value, str name, str what) except? 0:
    """Argument @name of @what as a blk_t: an int (TypeError), >= 0
    (ValueError), < 2**64 (OverflowError)."""
    v = operator.index(value)
    if v < 0:
        raise ValueError(f"{what}: {name} must be >= 0, got {v}")
    if v > _U64_MAX:
        raise OverflowError(f"{what}: {name}={v} does not fit 64 bits")
    return v
