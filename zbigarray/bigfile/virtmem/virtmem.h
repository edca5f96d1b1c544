/* zbigarray virtual-memory core: public C API.
 *
 * Files made of fixed-size blocks are mapped into memory; the first touch of a
 * block faults, and the core loads it through the file's loadblk into a page
 * of RAM; the first write to a page is seen (write-protection) and the page
 * becomes dirty; writeout hands dirty pages to storeblk.  See DESIGN.md, "The
 * virtual-memory core".  Nothing here knows about Python.
 *
 * Conventions: functions that can fail return 0 (or a count) on success and a
 * negative errno on failure; on failure nothing has changed unless the comment
 * says otherwise.  Every function takes the virtmem lock itself; none may be
 * called with it held (i.e. from inside loadblk/storeblk is fine, they run
 * without the lock).
 *
 * Anything not declared here is internal (virtmem_int.h) and free to change.
 */
#ifndef ZBIGARRAY_VIRTMEM_H
#define ZBIGARRAY_VIRTMEM_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Index of a block in a file, which is also the index of a page in a file
 * handle: one block is held in exactly one page. */
typedef uint64_t blk_t;

typedef struct BigFile   BigFile;
typedef struct BigFileH  BigFileH;
typedef struct VMA       VMA;
typedef struct RAM       RAM;

/* ------------------------------------------------------------------ BigFile */

/* Returned by loadblk/storeblk on success when the callee keeps the temporary
 * mapping at @buf beyond the call (someone still references it).  The callee
 * then owns those addresses and must munmap() them itself; it must first have
 * replaced them with memory of its own (MAP_FIXED anonymous), so that nothing
 * it keeps aliases page memory. */
#define VIRT_BUF_KEPT 1

/* The same, but the call failed (as with -EIO): for a callee that fails while
 * something it made still references @buf. */
#define VIRT_BUF_KEPT_EIO 2

/* For a loadblk about to return VIRT_BUF_KEPT: copy what it loaded into
 * @buf (the buffer it was given) into the page now, while @buf still holds
 * it.  0, -EINVAL if @buf is not the buffer of this thread's innermost load
 * (or was saved already), or -errno of the copy; the load then fails. */
int virt_loadbuf_save(void *buf);

typedef struct BigFileOps {
    /* Fill @buf (file->blksize bytes, writable; initial contents unspecified)
     * with block @blk.  Runs without the virtmem lock, possibly inside the
     * page-fault handler of the thread that touched the block.  Returns 0,
     * VIRT_BUF_KEPT, VIRT_BUF_KEPT_EIO or -errno.  @buf is scratch memory,
     * copied into the page when loadblk returns 0; a loadblk that keeps it
     * (VIRT_BUF_KEPT) must hand its content over first, with
     * virt_loadbuf_save(). */
    int  (*loadblk)(BigFile *file, blk_t blk, void *buf);

    /* Save block @blk from @buf (file->blksize bytes, read-only).  Runs
     * without the virtmem lock, from fileh_dirty_writeout().  Returns 0,
     * VIRT_BUF_KEPT, VIRT_BUF_KEPT_EIO or -errno. */
    int  (*storeblk)(BigFile *file, blk_t blk, const void *buf);

    /* Optional.  Called once for every successful fileh_open(), when that
     * handle is finally freed (which may be after fileh_close() returns, if a
     * load into it was in flight).  No lock held.  Lets the owner of @file
     * keep it alive exactly as long as the core refers to it. */
    void (*release)(BigFile *file);

    /* Optional: the zero-copy path.  If block @blk is stored as-is at
     * [*offset, *offset + blksize) of the file open as *fd, say so and return
     * 0: clean pages of the block are then mapped straight from the OS page
     * cache (read-only, MAP_SHARED) instead of being copied into RAM by
     * loadblk; the first write to such a page loads it into RAM (loadblk)
     * and proceeds as usual.  Return -ENODATA when the block cannot be
     * mapped so (past the end of the file, say): loadblk is used.
     * Called with the virtmem lock held, possibly inside the fault handler:
     * it must not call back into the core, take the GIL or block for long
     * (an fstat is fine).  As with mmap, such pages show later changes of
     * the OS file, and shrinking the file under them makes access SIGBUS. */
    int  (*mmapblk)(BigFile *file, blk_t blk, int *fd, uint64_t *offset);

    /* Optional.  A write is about to make the first page of a handle of
     * @file dirty (the handle had none since its last writeout or discard):
     * lets a transactional owner join the transaction before anything
     * changes.  Called unlocked, in the faulting thread, at most once per
     * such transition (more if several threads race to it).  0, or -errno:
     * the fault fails. */
    int  (*dirtied)(BigFile *file);

    /* Optional: spilling.  A fault found its RAM full of dirty pages, some
     * of them of a handle of @file, and no load in flight elsewhere that
     * would free memory.  The backend writes some of that handle's dirty
     * pages out on its own terms (fileh_dirty_writeout_oldest: into a
     * transaction, say), which makes them clean and their memory reusable.
     * Called unlocked, in the faulting thread.  0, or -errno: the fault
     * fails.  A handle whose file has no spill fails the fault at once. */
    int  (*spill)(BigFile *file);
} BigFileOps;

/* Embedded by the owner (e.g. a Python object); the core never allocates or
 * frees it. */
struct BigFile {
    const BigFileOps *ops;
    size_t            blksize;   /* a multiple of the OS page size */
    /* Fault-around: a read fault on the block after the one this thread
     * faulted on last (a sequential scan) also loads and maps the blocks
     * after it, up to this many bytes (and only with room in the RAM that
     * needs no recent page evicted), so that one fault serves several small
     * blocks, as the kernel's own fault-around does for file mappings.
     * Their loadblk calls are speculative (virt_fault_speculative).
     * 0: off. */
    size_t            fault_around;
};

/* 0 if @blksize can be a block size (a non-zero multiple of the OS page size,
 * at most VIRT_BLKSIZE_MAX), else -EINVAL. */
#define VIRT_BLKSIZE_MAX ((size_t)1 << 30)
int virt_blksize_check(size_t blksize);

/* The OS page size (sysconf(_SC_PAGESIZE)). */
size_t virt_os_pagesize(void);

/* ---------------------------------------------------------------------- RAM */

/* RAM: where page memory comes from.  One memfd, carved into slots of the
 * block size of the files that use it; @capacity bounds the bytes of page
 * memory in use.  RAM is reference-counted: each file handle holds one ref. */

/* Create a RAM of @capacity bytes (0: the process default capacity).
 * -EINVAL if @capacity is smaller than one OS page; -errno of memfd_create. */
int  ram_new(RAM **out, size_t capacity);
void ram_incref(RAM *ram);
void ram_decref(RAM *ram);

/* The process-wide RAM used by fileh_open(ram=NULL); created on first use with
 * capacity from $ZBIGARRAY_RAM_MAX, or ram_default_capacity().  Borrowed.
 * -EINVAL if $ZBIGARRAY_RAM_MAX does not parse. */
int  ram_default(RAM **out);

/* Default capacity when $ZBIGARRAY_RAM_MAX is unset: a quarter of physical
 * memory, or of the cgroup memory limit (v2 memory.max, v1
 * memory.limit_in_bytes, of this process's cgroup and its parents) when that
 * is lower, so that the rest of the program keeps room. */
size_t ram_default_capacity(void);

/* Parse "123", "64K", "64M", "2G", "1T" (binary units, optional trailing "B"
 * or "iB", case-insensitive) into bytes.  -EINVAL / -ERANGE. */
int  ram_parse_size(const char *s, size_t *out);

/* Change capacity.  Shrinking below what is in use reclaims clean pages now;
 * dirty pages stay (capacity is then exceeded until they are written out or
 * discarded).  -EINVAL if @capacity is smaller than one OS page. */
int  ram_set_capacity(RAM *ram, size_t capacity);

typedef struct RAMStats {
    size_t capacity;      /* bytes */
    size_t used;          /* bytes of page memory in use (pages holding data) */
    size_t npages;        /* pages in use */
    size_t nclean;        /* clean and reclaimable pages, incl. direct ones */
    size_t direct;        /* bytes of pages mapped from a backend's file
                           * (mmapblk); they count against capacity too, as
                           * they count in the process's RSS */
    size_t memfd_size;    /* bytes of memfd address range (used + free slots) */
    uint64_t nreclaimed;  /* pages reclaimed under capacity pressure, ever */
    uint64_t nrecycled;   /* reclaimed pages whose memory was reused directly */
    uint64_t nmoved;      /* recycled pages mapped by moving the reclaimed
                           * page's page tables (docs/virtmem.md) */
    size_t prepared;      /* bytes of fresh slots made ready ahead of need
                           * (docs/virtmem.md); they count against capacity */
    uint64_t nprepared;   /* pages that took such a slot, ever */
} RAMStats;
void ram_get_stats(RAM *ram, RAMStats *st);

/* Drop up to @max_pages least-recently-used clean pages of @ram now,
 * returning their memory to the system.  Returns how many were dropped. */
size_t ram_reclaim(RAM *ram, size_t max_pages);

/* ----------------------------------------------------------------- BigFileH */

/* Open a handle on @file with its own page cache, taking pages from @ram
 * (NULL: ram_default()).  -EINVAL if file->blksize is invalid or larger than
 * the RAM's capacity. */
int  fileh_open(BigFileH **out, BigFile *file, RAM *ram);

/* Unmap every VMA of @fileh (their memory becomes inaccessible, as after
 * munmap), drop every page (dirty pages are discarded, not written), and free
 * the handle.  If a load into the handle is in flight in another frame, the
 * memory is freed when it completes.  @fileh must not be used afterwards. */
void fileh_close(BigFileH *fileh);

BigFile *fileh_file(BigFileH *fileh);
RAM     *fileh_ram(BigFileH *fileh);

/* Reserve address space for pages [pgoffset, pgoffset+pglen) of @fileh.
 * Pages appear on first touch.  -EINVAL: pglen == 0; -EOVERFLOW: the range
 * does not fit blk_t or the address space; -ENOMEM: mmap failed. */
int  fileh_mmap(VMA **out, BigFileH *fileh, blk_t pgoffset, blk_t pglen);

#define WRITEOUT_STORE       (1 << 0)
#define WRITEOUT_MARKSTORED  (1 << 1)

/* WRITEOUT_STORE: call storeblk for each dirty page, in ascending block order,
 * stopping at the first failure (whose error is returned; every page stays
 * dirty).  WRITEOUT_MARKSTORED: dirty pages become clean and are
 * write-protected again.  Both: mark stored only if every store succeeded.
 * -EINVAL: neither or unknown bits; -EBUSY: a writeout of @fileh is already
 * running (e.g. called from storeblk); -ENOTRECOVERABLE: a fault of @fileh
 * failed (fileh_fault_failed), nothing was written. */
int  fileh_dirty_writeout(BigFileH *fileh, int flags);

/* Write out the @npages pages dirtied longest ago (STORE then MARKSTORED,
 * as fileh_dirty_writeout does for all): for spilling.  They are
 * write-protected before storeblk sees them, so that a write to one meanwhile
 * waits for the store to end and then dirties it again -- never lost.  On a
 * failed store every page stays dirty.  Returns how many pages became clean,
 * or -errno as fileh_dirty_writeout. */
int  fileh_dirty_writeout_oldest(BigFileH *fileh, size_t npages);

/* Drop every dirty page; the next touch reloads from the file.  Clears
 * fileh_fault_failed.  -EBUSY while a writeout of @fileh runs. */
int  fileh_dirty_discard(BigFileH *fileh);

/* The file changed at block @pgoffset: drop that page, or make the thread
 * loading it drop what it loaded.  -EBUSY if the page is being stored. */
int  fileh_invalidate_page(BigFileH *fileh, blk_t pgoffset);

int  fileh_isdirty(BigFileH *fileh);

/* Copy the page of block @blk as it is now (dirty or clean) into @dst, the
 * block's size; @dst must not be memory of a VMA of ours.  Returns how many
 * bytes of it there are before its trailing zero bytes; -ENOENT if @blk has
 * no page (never loaded, dropped, or still loading), -EBADF if @fileh is
 * closed, -errno of the read.  For a writer that wants a dirty block's
 * bytes later than its storeblk (the ZODB layer pickles them at commit). */
ssize_t fileh_page_read(BigFileH *fileh, blk_t blk, void *dst);

typedef struct FileHStats {
    size_t   npages;      /* pages held (any state) */
    size_t   ndirty;
    size_t   nvma;
    uint64_t nloadblk;    /* successful loadblk calls, ever */
    uint64_t nstoreblk;   /* successful storeblk calls, ever */
} FileHStats;
void fileh_get_stats(BigFileH *fileh, FileHStats *st);

/* ---------------------------------------------------------------------- VMA */

/* Unmap and free @vma.  Touching its memory afterwards is a crash, as after
 * munmap. */
void      vma_unmap(VMA *vma);

uintptr_t vma_addr_start(const VMA *vma);
uintptr_t vma_addr_stop(const VMA *vma);
blk_t     vma_pgoffset(const VMA *vma);
blk_t     vma_pglen(const VMA *vma);
size_t    vma_pagesize(const VMA *vma);
BigFileH *vma_fileh(const VMA *vma);

/* ------------------------------------------------------ fault handling */

/* Install the SIGSEGV handler (idempotent; fileh_mmap calls it, and installs
 * it again on top if someone replaced it since).  Faults that are not ours go
 * to the handler that was installed before, or crash as without us. */
int  virt_install_fault_handler(void);

/* How the core lets a thread that holds an interpreter lock (the Python GIL)
 * wait for another thread without deadlock.  @release is called before the
 * core blocks waiting for a page another thread is loading; it returns a token
 * (NULL: nothing was released); @retake(token) is called after.  Both may run
 * inside the fault handler.  Default: no-ops. */
typedef struct VirtGilHooks {
    void *(*release)(void);
    void  (*retake)(void *token);
} VirtGilHooks;
void virt_set_gil_hooks(const VirtGilHooks *hooks);

/* A page fault that cannot be served -- loadblk failed with @err, RAM is full
 * of dirty pages (-ENOMEM), loadblk touched the block it is loading
 * (-EDEADLK), the OS refused a mapping -- has no caller to return an error
 * to.  The policy is this function, called unlocked in the faulting thread,
 * for block @blk of @file (whose owner is alive during the call):
 *
 * - It may arrange for the failure to reach the thread some other way (a
 *   Python exception raised when it returns to the interpreter) and return
 *   VIRT_FAULT_STANDIN.  The core then maps a *stand-in* at the block's place
 *   in the faulting VMA: private zero-filled memory, readable and writable,
 *   so that the faulting instruction completes.  It is never data: the page
 *   is not cached, writes to the stand-in are lost, and the handle is marked
 *   failed (fileh_fault_failed) until fileh_dirty_discard.  Until the thread
 *   calls virt_fault_reported() it is *failing*: its faults that need a load
 *   or a new page are served with stand-ins too, without calling loadblk
 *   (what it computes is thrown away), and every handle it dirties is marked
 *   failed as well.
 * - Or it does not return (fail-stop).
 *
 * Default: print what failed to stderr and abort(), as the kernel kills a
 * program whose mmapped file cannot be read. */
#define VIRT_FAULT_STANDIN 1
typedef int (*virt_fault_error_fn)(BigFile *file, blk_t blk, int err,
                                   const char *what);
void virt_set_fault_error_handler(virt_fault_error_fn fn);

/* The failing thread calling it has reported its failure (the exception was
 * raised): its stand-ins are unmapped -- touching those addresses faults
 * again and loads afresh -- and its faults are served normally again.  A
 * no-op in a thread that is not failing.  A thread that exits while failing
 * is cleaned up the same way. */
void virt_fault_reported(void);

/* Inside loadblk: whether the block is loaded ahead of use (fault-around:
 * blocks read in sequence get the next ones loaded with them) rather than
 * touched.  A failure of such a load is dropped quietly -- the block is
 * loaded again, and fails for real, when touched -- so a loadblk that wants
 * a failure seen (Ctrl-C arriving during it) must make it seen itself. */
int  virt_fault_speculative(void);

/* Inside loadblk: whether its buffer holds only zeros as the call begins
 * (memory the kernel allocated for this page and nothing wrote yet).  A
 * loadblk may then leave alone what it would fill with zeros: a hole, the
 * tail after a short record -- a memset of the whole block saved. */
int  virt_fault_buf_zeroed(void);

/* Whether this thread is failing (see virt_fault_error_fn). */
int  virt_fault_failing(void);

/* Whether a fault of @fileh failed since its last fileh_dirty_discard (or
 * since it was opened): its dirty pages may hold values computed from a
 * stand-in, and fileh_dirty_writeout refuses (-ENOTRECOVERABLE). */
int  fileh_fault_failed(BigFileH *fileh);

/* -------------------------------------------- faults inside system calls */

/* With a userfaultfd (Linux), the kernel's own accesses to a VMA's untouched
 * pages -- write(fd, view), read(fd, view) and the like -- are served too,
 * instead of failing with EFAULT (see uffd.c).  Started with the first
 * fileh_mmap; off when the kernel refuses it or $ZBIGARRAY_USERFAULTFD is
 * "0", and in forked children.  virt_uffd_enabled: whether it is on;
 * virt_uffd_reason: why not (NULL when on); virt_uffd_signal: the signal the
 * core uses for it (a real-time one; 0 when off) -- a program must leave it
 * alone. */
int         virt_uffd_enabled(void);
const char *virt_uffd_reason(void);
int         virt_uffd_signal(void);

/* Inside loadblk/dirtied/spill called for a fault taken in a system call:
 * the faulting thread's kernel thread id (the callback then runs in a proxy
 * thread of the core, not in that thread).  0 otherwise. */
pid_t       virt_fault_proxy_tid(void);

/* Called by a callback run in a proxy once it holds the interpreter lock
 * its thread needed (the Python GIL): the proxy is then not waiting for the
 * thread it serves, and its load may take as long as it takes -- without
 * that call, a proxy not done within a second counts as waiting for a lock
 * the parked thread holds, and that access fails (EFAULT).  A no-op
 * elsewhere. */
void        virt_fault_proxy_has_lock(void);

/* A fault taken in a system call of thread @tid could not be served: the call
 * fails with EFAULT (the block is fenced, inaccessible, until @tid calls
 * virt_fault_reported(), or a page gets mapped there by a fault served in user
 * mode).  This tells @tid why; called unlocked, in a proxy thread, with
 * @file's owner alive.  Default: a line on stderr. */
typedef void (*virt_fault_remote_error_fn)(BigFile *file, blk_t blk, int err,
                                           const char *what, pid_t tid);
void virt_set_fault_remote_error_handler(virt_fault_remote_error_fn fn);

#ifdef __cplusplus
}
#endif

#endif /* ZBIGARRAY_VIRTMEM_H */
