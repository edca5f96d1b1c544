# The C -> Python boundary: how the core calls a Python BigFile, waits
# without the GIL, and fails a page fault.  Core-free (nothing here calls into
# the core); _bigfile installs these into it.

from cpython.ref cimport PyObject

from zbigarray.bigfile cimport virtmem as virt


# The C BigFile handed to the core, followed by pointers back to the Python
# object that embeds it: the trampolines get a virt.BigFile* and cast it
# to this struct to find their owner (cfile must stay the first member).
cdef struct PyBigFile:
    virt.BigFile  cfile
    virt.BigFileOps ops     # cfile.ops points here: the callbacks its class gives
    PyObject     *owner     # the BigFile object (borrowed)
    PyObject     *errors    # dict thread id -> exception raised by storeblk (a reference)
    int           mmap_fd   # BigFile.mmap_fd: the zero-copy path's file, or -1

cdef void pyfile_init_ops(PyBigFile *pf, bint dirtied, bint spill) noexcept
cdef const virt.VirtGilHooks *gil_hooks()
cdef int fault_error(virt.BigFile *cf, virt.blk_t blk, int err, const char *what) noexcept nogil
cdef void fault_remote_error(virt.BigFile *cf, virt.blk_t blk, int err, const char *what,
                             virt.pid_t tid) noexcept with gil
cdef void set_fault_state_calls(int (*failing)() noexcept nogil,
                                void (*reported)() noexcept nogil,
                                int (*speculative)() noexcept nogil,
                                int (*buf_zeroed)() noexcept nogil,
                                void (*has_gil)() noexcept nogil,
                                int (*loadbuf_save)(void *) noexcept nogil) noexcept
