# cython: language_level=3
"""The block memory lent to loadblk/storeblk for the duration of one call.

The core passes the backend a temporary mapping of the page's memory and
unmaps it when the call returns.  A backend may keep a view past the call
(``np.frombuffer(buf)`` or ``buf[1:]`` stored somewhere); that view must then
neither alias page memory nor point at unmapped addresses.  _BlkBuf exports the
memory and counts its exports; if one outlives the call, `orphan` replaces
the range with a private copy, tells the core it keeps the range
(VIRT_BUF_KEPT), and unmaps the copy when this object dies, i.e. once the
last kept view is gone.
"""

from cpython.buffer cimport PyBUF_FORMAT, PyBUF_ND, PyBUF_STRIDES, PyBUF_WRITABLE
from libc.errno cimport ENOMEM
from libc.string cimport memcpy

from zbigarray.bigfile cimport virtmem as virt


cdef extern from "<sys/mman.h>" nogil:
    # Python.h defines _GNU_SOURCE, which mremap/MREMAP_FIXED need.
    void *MAP_FAILED
    int PROT_NONE, PROT_READ, PROT_WRITE
    int MAP_PRIVATE, MAP_ANONYMOUS, MAP_FIXED, MAP_NORESERVE
    int MREMAP_MAYMOVE, MREMAP_FIXED
    void *mmap(void *addr, size_t length, int prot, int flags, int fd, long offset)
    int munmap(void *addr, size_t length)
    int mprotect(void *addr, size_t length, int prot)
    void *mremap(void *old_address, size_t old_size, size_t new_size, int flags, ...)


cdef _BlkBuf blkbuf_new(void *buf, size_t size, bint readonly):
    """Lend [buf, buf+size), writable unless @readonly."""
    cdef _BlkBuf self = _BlkBuf.__new__(_BlkBuf)
    self.buf = <char *>buf
    self.size = size
    self.readonly = readonly
    self._shape[0] = size
    self._strides[0] = 1
    return self


cdef void fill_byte_view(Py_buffer *view, object obj, void *buf, Py_ssize_t *shape,
                         Py_ssize_t *strides, bint readonly, int flags) noexcept:
    """Describe [buf, buf+shape[0]) as a 1-D unsigned-byte buffer exported by
    @obj (which the view then references); @shape/@strides live in @obj."""
    view.buf = buf
    view.len = shape[0]
    view.itemsize = 1
    view.readonly = readonly
    view.ndim = 1
    view.format = NULL
    if flags & PyBUF_FORMAT:
        view.format = b"B"
    view.shape = shape if flags & PyBUF_ND else NULL
    view.strides = strides if flags & PyBUF_STRIDES else NULL
    view.suboffsets = NULL
    view.internal = NULL
    view.obj = obj


cdef class _BlkBuf:
    """Exporter of a lent block (see the module docstring)."""

    def __getbuffer__(self, Py_buffer *view, int flags):
        if self.readonly and (flags & PyBUF_WRITABLE):
            raise BufferError("the buffer passed to storeblk is read-only")
        fill_byte_view(view, self, self.buf, self._shape, self._strides, self.readonly, flags)
        self.nexports += 1

    def __releasebuffer__(self, Py_buffer *view):
        self.nexports -= 1

    def __dealloc__(self):
        if self.owns_mem:
            munmap(self.buf, self.size)

    cdef lend(self, method, unsigned long long blk):
        """Call method(blk, memoryview of the block), then release the
        memoryview, so that using the view after the call raises."""
        mv = memoryview(self)
        try:
            method(blk, mv)
        finally:
            self.zeroed = False     # whatever the call wrote, for views kept
            try:
                mv.release()
            except BufferError:
                pass    # something made from mv is alive: settle() sees it

    cdef int settle(self) noexcept:
        """After lend(): 0 if nothing kept the memory, else orphan()."""
        return self.orphan() if self.nexports else 0

    cdef int orphan(self) noexcept:
        """Give the kept views a private copy of the block.  Returns
        VIRT_BUF_KEPT (the range is ours now), or -ENOMEM if that failed."""
        cdef void *copy = mmap(NULL, self.size, PROT_READ | PROT_WRITE,
                               MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        if copy != MAP_FAILED:
            memcpy(copy, self.buf, self.size)
            if self.readonly:
                mprotect(copy, self.size, PROT_READ)
            # Moves the copy over the range in one step: at no moment is the
            # range unmapped, free for someone else's mmap.
            if mremap(copy, self.size, self.size, MREMAP_MAYMOVE | MREMAP_FIXED,
                      self.buf) != MAP_FAILED:
                self.owns_mem = True
                return virt.VIRT_BUF_KEPT
            munmap(copy, self.size)
        # No memory for a copy: make the kept views inaccessible (touching
        # them crashes) rather than let them alias page memory.
        if mmap(self.buf, self.size, PROT_NONE,
                MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE,
                -1, 0) != MAP_FAILED:
            self.owns_mem = True
            return virt.VIRT_BUF_KEPT
        return -ENOMEM


def loadblk_buf_zeroed(buf) -> bool:
    """Whether `buf`, the memoryview a running ``loadblk`` was given (or one
    made from it), held only zeros as the call began.

    Then ``loadblk`` may leave alone what it would fill with zeros (a hole,
    the tail after a short record): the core gives a page memory the kernel
    allocated and nothing wrote yet, ahead of the fault (docs/virtmem.md,
    "RAM, capacity, recycling").  False whenever that is not known, and for
    any other buffer.
    """
    obj = buf
    if isinstance(buf, memoryview):
        try:
            obj = buf.obj
        except ValueError:      # released: the call is over
            return False
    return isinstance(obj, _BlkBuf) and (<_BlkBuf>obj).zeroed
