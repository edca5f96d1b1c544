# Declarations of the C core's public API, virtmem.h, as it is: same names,
# same argument order.  Renaming for Python happens one level up, in
# _bigfile.pyx.  (These cannot live in _bigfile.pxd: a .pxd named like its
# .pyx shares the module's namespace, where the C struct BigFile would collide
# with the extension type BigFile.)

from libc.stdint cimport uint64_t, uintptr_t


cdef extern from "virtmem.h" nogil:
    ctypedef uint64_t blk_t

    # ------------------------------------------------------------- BigFile
    int VIRT_BUF_KEPT
    int VIRT_BUF_KEPT_EIO

    ctypedef struct BigFileOps:
        int  (*loadblk)(BigFile *file, blk_t blk, void *buf)
        int  (*storeblk)(BigFile *file, blk_t blk, const void *buf)
        void (*release)(BigFile *file)
        int  (*mmapblk)(BigFile *file, blk_t blk, int *fd, uint64_t *offset)
        int  (*dirtied)(BigFile *file)
        int  (*spill)(BigFile *file)

    ctypedef struct BigFile:
        const BigFileOps *ops
        size_t            blksize
        size_t            fault_around

    size_t VIRT_BLKSIZE_MAX
    int    virt_blksize_check(size_t blksize)
    size_t virt_os_pagesize()

    # ----------------------------------------------------------------- RAM
    ctypedef struct RAM:
        pass

    int    ram_new(RAM **out, size_t capacity)
    void   ram_incref(RAM *ram)
    void   ram_decref(RAM *ram)
    int    ram_default(RAM **out)
    size_t ram_default_capacity()
    int    ram_parse_size(const char *s, size_t *out)
    int    ram_set_capacity(RAM *ram, size_t capacity)

    ctypedef struct RAMStats:
        size_t   capacity
        size_t   used
        size_t   npages
        size_t   nclean
        size_t   direct
        size_t   memfd_size
        uint64_t nreclaimed
        uint64_t nrecycled
        uint64_t nmoved
        size_t   prepared
        uint64_t nprepared
    void   ram_get_stats(RAM *ram, RAMStats *st)
    size_t ram_reclaim(RAM *ram, size_t max_pages)

    # ------------------------------------------------------------ BigFileH
    ctypedef struct BigFileH:
        pass
    ctypedef struct VMA:
        pass

    int      fileh_open(BigFileH **out, BigFile *file, RAM *ram)
    void     fileh_close(BigFileH *fileh)
    BigFile *fileh_file(BigFileH *fileh)
    RAM     *fileh_ram(BigFileH *fileh)
    int      fileh_mmap(VMA **out, BigFileH *fileh, blk_t pgoffset, blk_t pglen)

    int WRITEOUT_STORE
    int WRITEOUT_MARKSTORED
    int fileh_dirty_writeout(BigFileH *fileh, int flags)
    int fileh_dirty_writeout_oldest(BigFileH *fileh, size_t npages)
    int fileh_dirty_discard(BigFileH *fileh)
    int fileh_invalidate_page(BigFileH *fileh, blk_t pgoffset)
    int fileh_isdirty(BigFileH *fileh)
    Py_ssize_t fileh_page_read(BigFileH *fileh, blk_t blk, void *dst) nogil
    int fileh_fault_failed(BigFileH *fileh)

    ctypedef struct FileHStats:
        size_t   npages
        size_t   ndirty
        size_t   nvma
        uint64_t nloadblk
        uint64_t nstoreblk
    void fileh_get_stats(BigFileH *fileh, FileHStats *st)

    # ----------------------------------------------------------------- VMA
    void      vma_unmap(VMA *vma)
    uintptr_t vma_addr_start(const VMA *vma)
    uintptr_t vma_addr_stop(const VMA *vma)
    blk_t     vma_pgoffset(const VMA *vma)
    blk_t     vma_pglen(const VMA *vma)
    size_t    vma_pagesize(const VMA *vma)
    BigFileH *vma_fileh(const VMA *vma)

    # ------------------------------------------------------ fault handling
    int virt_install_fault_handler()

    ctypedef struct VirtGilHooks:
        void *(*release)()
        void  (*retake)(void *token)
    void virt_set_gil_hooks(const VirtGilHooks *hooks)

    int VIRT_FAULT_STANDIN
    ctypedef int (*virt_fault_error_fn)(BigFile *file, blk_t blk, int err,
                                        const char *what)
    void virt_set_fault_error_handler(virt_fault_error_fn fn)
    void virt_fault_reported()
    int  virt_fault_failing()
    int  virt_fault_speculative()
    int  virt_fault_buf_zeroed()
    int  virt_loadbuf_save(void *buf)

    # -------------------------------------- faults inside system calls
    ctypedef int pid_t
    int         virt_uffd_enabled()
    const char *virt_uffd_reason()
    int         virt_uffd_signal()
    pid_t       virt_fault_proxy_tid()
    void        virt_fault_proxy_has_lock()
    ctypedef void (*virt_fault_remote_error_fn)(BigFile *file, blk_t blk, int err,
                                                const char *what, pid_t tid)
    void virt_set_fault_remote_error_handler(virt_fault_remote_error_fn fn)
