# The block memory lent to a backend's loadblk/storeblk.  Core-free: it only
# needs VIRT_BUF_KEPT, a constant of virtmem.h.

cdef class _BlkBuf:
    cdef char *buf
    cdef Py_ssize_t size
    cdef bint readonly
    cdef bint owns_mem          # buf is our private copy: munmap it at the end
    cdef bint zeroed            # all zeros as the call begins (loadblk_buf_zeroed)
    cdef Py_ssize_t nexports
    cdef Py_ssize_t _shape[1]
    cdef Py_ssize_t _strides[1]

    cdef lend(self, method, unsigned long long blk)
    cdef int settle(self) noexcept
    cdef int orphan(self) noexcept

cdef _BlkBuf blkbuf_new(void *buf, size_t size, bint readonly)

# The one description of a 1-D byte buffer, shared with VMA's export.
cdef void fill_byte_view(Py_buffer *view, object obj, void *buf, Py_ssize_t *shape,
                         Py_ssize_t *strides, bint readonly, int flags) noexcept
