/* The SIGSEGV handler and the page-fault path.
 *
 * A fault on a VMA page is served in the faulting thread, inside the signal
 * handler: find the page (allocating and loading it if absent), map it
 * read-only for a read or read-write for a write (which dirties it), return,
 * and the CPU re-executes the instruction.  loadblk runs without the virtmem
 * lock, into a separate writable mapping of the page's memory, so that no
 * other thread can see a half-filled page; after it, the lock is retaken and
 * the fault handled again from the lookup, as the world may have changed.
 *
 * The handler is installed with SA_NODEFER: loadblk may itself touch another
 * mapping (nested fault).  While the lock is held SIGSEGV is blocked, so a bug
 * touching mapped memory under the lock kills the process instead of
 * deadlocking.
 *
 * Failure policy: a fault has no caller to report to.  If it cannot be served
 * (loadblk failed, RAM full of dirty pages, the OS refused a mapping) the
 * fault error handler decides (virtmem.h, virt_fault_error_fn): fail-stop,
 * or have the failure reported to the thread later and let the faulting
 * instruction complete on a stand-in -- private zero memory that is never
 * cached as the page, shown only until the thread reports its failure.  The
 * Python layer raises an exception in the faulting thread that way. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include "virtmem_int.h"

enum { FAULT_HANDLED, FAULT_NOT_OURS };

static pthread_mutex_t   fault_install_mutex = PTHREAD_MUTEX_INITIALIZER;
static struct sigaction  fault_prev_action;     /* handler before ours */
static volatile int      fault_prev_valid;

/* Per thread: repeated faults at one address on a page that is already
 * mapped writable mean the access is not one we can serve (e.g. an
 * instruction fetch); give up rather than loop. */
static __thread uintptr_t fault_last_addr;
static __thread int       fault_repeats;
static __thread int       fault_chaining;
/* The fault being served came through the userfaultfd (uffd.c). */
static __thread int       fault_from_uffd;
/* During this thread's latest load, a fault through the userfaultfd found
 * that very load in progress once (see fault_serve). */
static __thread int       fault_selfload_seen;
/* Loads this thread has in flight (nested when loadblk touches a mapping). */
static __thread size_t    fault_nloading_mine;
/* The page this thread's last served fault mapped: the instruction being
 * retried may need it still (an access straddling two blocks). */
static __thread BigFileH *fault_last_fileh;
static __thread blk_t     fault_last_blk;

/* Per thread: a failure not yet reported (virt_fault_reported), and how many
 * failures the thread ever had: a loader compares the count before and after
 * loadblk, since a fault that failed inside loadblk means loadblk may have
 * read a stand-in. */
static __thread int       fault_failing;
static __thread uint64_t  fault_nfailed;

/* Set (non-NULL) while this thread is failing: its destructor removes the
 * stand-ins of a thread that exits before reporting. */
static pthread_key_t      fault_exit_key;
static int                fault_exit_key_ok;

static int fault_error_default(BigFile *file, blk_t blk, int err, const char *what)
{
    fprintf(stderr, "zbigarray: page fault cannot be served: %s "
            "(file %p, blk %llu): %s\n",
            what, (void *)file, (unsigned long long)blk, strerror(-err));
    abort();
}

static virt_fault_error_fn fault_error = fault_error_default;

void virt_set_fault_error_handler(virt_fault_error_fn fn)
{
    fault_error = fn ? fn : fault_error_default;
}

/* A system call failed with EFAULT: its thread learns why from the call's
 * error only, so say it. */
static void fault_remote_error_default(BigFile *file, blk_t blk, int err, const char *what,
                                       pid_t tid)
{
    fprintf(stderr, "zbigarray: a system call of thread %d failed (EFAULT): page fault "
            "not served: %s (file %p, blk %llu): %s\n", (int)tid, what, (void *)file,
            (unsigned long long)blk, strerror(-err));
}

static virt_fault_remote_error_fn fault_remote_error = fault_remote_error_default;

void virt_set_fault_remote_error_handler(virt_fault_remote_error_fn fn)
{
    fault_remote_error = fn ? fn : fault_remote_error_default;
}

/* ---------------------------------------------------------------- stand-ins */

/* Private zero memory shown at block @blk of @vma in place of a page that
 * could not be served, until thread @owner reports its failure.  Or a
 * fence: the same, inaccessible, for a fault a proxy served for a system
 * call (uffd.c), which then fails with EFAULT. */
typedef struct StandIn {
    VMA       *vma;
    blk_t      blk;
    pid_t      owner;       /* thread id (gettid) */
    int        fence;       /* a fence: PROT_NONE, for a fault in a system call */
    ListHead   in_all;      /* fault_standins */
} StandIn;

/* @page's mapping in @vma, or NULL.  Locked. */
static PageMapping *page_mapping_in_vma(Page *page, VMA *vma)
{
    ListHead *pos;
    list_for_each_forward(pos, &page->mappings) {
        PageMapping *m = list_entry(pos, PageMapping, in_page);
        if (m->vma == vma)
            return m;
    }
    return NULL;
}

/* Every stand-in shown now: one per failed fault until reported, so few. */
static ListHead fault_standins = { &fault_standins, &fault_standins };

static void *fault_standin_addr(const StandIn *s)
{
    return (void *)(s->vma->addr_start +
                    (uintptr_t)(s->blk - s->vma->pgoffset) * s->vma->fileh->file->blksize);
}

/* Show a stand-in (or a @fence) owned by thread @owner at @blk of @vma.
 * Locked.  -errno of mmap (the block's range is then reserved again) or
 * -ENOMEM. */
static int fault_standin_map(VMA *vma, blk_t blk, pid_t owner, int fence)
{
    size_t blksize = vma->fileh->file->blksize;
    StandIn *s = malloc(sizeof *s);
    if (!s)
        return -ENOMEM;
    s->vma = vma;
    s->blk = blk;
    s->owner = owner;
    s->fence = fence;
    void *addr = fault_standin_addr(s);
    /* A stand-in is writable too: the faulting access may be a write; what
     * it writes is lost with the stand-in, which is why the handle is marked
     * failed.  A fence is not registered with the userfaultfd: the kernel's
     * access fails there. */
    int err = fence ? virt__reserve_at(addr, blksize) :
              mmap(addr, blksize, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0) == MAP_FAILED ?
              -errno : 0;
    if (err) {
        free(s);
        /* A failed MAP_FIXED may have left the range unmapped. */
        BUG_ON(vma__reserve(vma, addr, blksize) != 0);
        return err;
    }
    list_add(&s->in_all, &fault_standins);
    if (!fence)
        vma->fileh->fault_failed = 1;
    return 0;
}

/* Whether a page is mapped at @blk of @vma (over a stand-in or fence that
 * was there: a fence lets the SIGSEGV path serve the block).  Locked. */
static int fault_page_shown(VMA *vma, blk_t blk)
{
    Page *page = pagemap_get(&vma->fileh->pagemap, blk);
    return page && page_mapping_in_vma(page, vma);
}

/* A page was mapped at @blk of @vma: a fence there is gone with it.
 * Locked. */
static void fault_forget_fence(VMA *vma, blk_t blk)
{
    ListHead *pos, *tmp;
    list_for_each_safe(pos, tmp, &fault_standins) {
        StandIn *s = list_entry(pos, StandIn, in_all);
        if (s->vma == vma && s->blk == blk && s->fence) {
            list_del(&s->in_all);
            free(s);
        }
    }
}

/* Remove the stand-ins of @owner: their ranges become reservations again,
 * so that the next touch faults and loads.  Locked.  Fatal if the OS refuses
 * (at the vm.max_map_count limit): a stand-in left in place would be taken
 * for data. */
static void fault_standins_drop(pid_t owner)
{
    ListHead *pos, *tmp;
    list_for_each_safe(pos, tmp, &fault_standins) {
        StandIn *s = list_entry(pos, StandIn, in_all);
        if (s->owner != owner)
            continue;
        int err = fault_page_shown(s->vma, s->blk) ? 0 :
                  vma__reserve(s->vma, fault_standin_addr(s), s->vma->fileh->file->blksize);
        if (err) {
            fprintf(stderr, "zbigarray: cannot remove the stand-in of a failed page "
                    "fault: %s (too many mappings? see /proc/sys/vm/max_map_count)\n",
                    strerror(-err));
            abort();
        }
        list_del(&s->in_all);
        free(s);
    }
}

void fault__forget_vma(VMA *vma)
{
    ListHead *pos, *tmp;
    list_for_each_safe(pos, tmp, &fault_standins) {
        StandIn *s = list_entry(pos, StandIn, in_all);
        if (s->vma == vma) {
            list_del(&s->in_all);
            free(s);
        }
    }
}

int fault__vma_has_standins(VMA *vma)
{
    ListHead *pos;
    list_for_each_forward(pos, &fault_standins)
        if (list_entry(pos, StandIn, in_all)->vma == vma)
            return 1;
    return 0;
}

void fault__forget_all_in_child(void)
{
    ListHead *pos, *tmp;
    list_for_each_safe(pos, tmp, &fault_standins) {
        list_del(pos);
        free(list_entry(pos, StandIn, in_all));
    }
}

static void fault_on_thread_exit(void *failing)
{
    (void)failing;
    virt_lock();
    fault_standins_drop(virt__gettid());
    virt_unlock();
}

void virt_fault_reported(void)
{
    /* Not only when failing: the fences of a system call's failed faults
     * (served by a proxy) are this thread's too. */
    virt_lock();
    fault_standins_drop(virt__gettid());
    virt_unlock();
    fault_failing = 0;
    if (fault_exit_key_ok)
        (void)pthread_setspecific(fault_exit_key, NULL);
}

int virt_fault_failing(void)
{
    return fault_failing;
}

/* ------------------------------------------------------------------ failures */

/* Run the failure policy for block @blk of @file (unlocked).  Returns only
 * if it chose a stand-in: this thread is then failing. */
static void fault_report(BigFile *file, blk_t blk, int err, const char *what)
{
    pid_t proxied = virt_fault_proxy_tid();
    if (proxied)
        fault_remote_error(file, blk, err, what, proxied);    /* and a fence: EFAULT */
    else if (fault_error(file, blk, err, what) != VIRT_FAULT_STANDIN)
        fault_error_default(file, blk, err, what);   /* a handler that returned otherwise */
    fault_nfailed++;
    if (!fault_failing) {
        fault_failing = 1;
        /* Without the key (pthread_key_create failed) a thread exiting while
         * failing leaves its stand-ins until their VMA goes. */
        if (fault_exit_key_ok)
            (void)pthread_setspecific(fault_exit_key, (void *)1);
    }
}

/* The fault on block @blk of @fileh failed with @err.  Called locked with
 * @fileh pinned (npinned, so that a concurrent close cannot free it and let
 * its file go while the policy looks at it); returns locked, still pinned,
 * only if the policy chose a stand-in. */
static void fault_fail_pinned(BigFileH *fileh, blk_t blk, int err, const char *what)
{
    BigFile *file = fileh->file;
    fileh->fault_failed = 1;
    virt_unlock();
    fault_report(file, blk, err, what);
    virt__lock_in_fault();
}

static void fault_unpin(BigFileH *fileh)
{
    BigFile *file = fileh->file;
    fileh->npinned--;
    if (fileh__maybe_free(fileh)) {
        virt_unlock();
        virt__release_file(file);
        virt__lock_in_fault();
    }
}

static void fault_fail(BigFileH *fileh, blk_t blk, int err, const char *what)
{
    fileh->npinned++;
    fault_fail_pinned(fileh, blk, err, what);
    fault_unpin(fileh);
}

/* RAM full of pages that cannot be reclaimed.  Locked. */
static void fault_fail_nomem(BigFileH *fileh, blk_t blk, int err)
{
    RAM *ram = fileh->ram;
    char what[224];
    snprintf(what, sizeof what,
             "no RAM for a new page: capacity %zu bytes, %zu in use by "
             "dirty or loading pages (write out, or raise ZBIGARRAY_RAM_MAX)",
             ram->capacity, ram->used + ram->direct);
    fault_fail(fileh, blk, err, what);
}

/* The handle whose dirty pages to spill when @fileh's RAM is full of them:
 * the one of that RAM with the most dirty pages whose file can spill (@fileh
 * on a tie).  Not simply @fileh: with few dirty pages of its own, spilling
 * them could take the very page the faulting instruction also needs (one
 * that straddles two blocks), and the two would evict each other forever.
 * NULL if none; then *@busy tells whether one is being spilled or written
 * out by another thread already (whose end will make room, or make it
 * spillable again).  Locked. */
static BigFileH *fault_spill_victim(BigFileH *fileh, int *busy)
{
    BigFileH *best = NULL;
    ListHead *pos;

    *busy = 0;
    list_for_each_forward(pos, &fileh__all) {
        BigFileH *h = list_entry(pos, BigFileH, in_all);
        if (h->ram != fileh->ram || !h->file->ops->spill || h->closed)
            continue;
        if (h->spilling || h->writeout_running) {
            *busy = 1;
            continue;
        }
        if (h->ndirty == 0)
            continue;
        if (!best || h->ndirty > best->ndirty || (h->ndirty == best->ndirty && h == fileh))
            best = h;
    }
    return best;
}

/* Ask @victim's backend to spill some of its dirty pages.  Called locked,
 * returns locked (the world may have changed).  -errno of the backend, or
 * -ENOMEM if it made no page clean (which would loop).  Other threads may
 * take the room made before this one retries: it then spills again. */
static int fault_spill(BigFileH *victim)
{
    BigFile *file = victim->file;
    uint64_t nspilled = victim->nspilled;
    uint64_t nfailed = fault_nfailed;

    /* One spill of a handle at a time: other threads short of room wait
     * for it (fault_spill_victim reports it busy). */
    victim->spilling = 1;
    victim->npinned++;
    virt_unlock();
    virt__nwriteout_mine++;
    int err = file->ops->spill(file);
    virt__nwriteout_mine--;
    virt__lock_in_fault();
    victim->spilling = 0;
    virt__loads_changed();
    if (!err && fault_nfailed != nfailed)
        err = -EIO;         /* it touched a page that failed: not to be trusted */
    if (!err && victim->nspilled == nspilled)
        err = -ENOMEM;
    fault_unpin(victim);
    return err;
}

/* Whether the only room left in @fileh's RAM is the page this thread's
 * previous fault mapped.  Reclaiming it for this one would make the retried
 * instruction fault on it again (an access straddling two blocks), which
 * would reclaim this one, forever -- and nothing spills while a clean page
 * remains.  Locked. */
static int fault_room_is_only_mine(BigFileH *fileh)
{
    RAM *ram = fileh->ram;
    /* Ready prepared slots are room too: page_make_room gives them back. */
    if (ram->nclean != 1 || ram->nprep > 0 || ram__has_room(ram, fileh->file->blksize))
        return 0;
    Page *only = list_entry(ram->lru.prev, Page, lru);
    return only->fileh == fault_last_fileh && only->blk == fault_last_blk;
}

/* Serve the fault at @blk of @vma with a stand-in.  Locked; returns
 * unlocked. */
static int fault_serve_standin(VMA *vma, blk_t blk)
{
    BigFile *file = vma->fileh->file;
    pid_t proxied = virt_fault_proxy_tid();
    int err = fault_standin_map(vma, blk, proxied ? proxied : virt__gettid(), proxied != 0);
    virt_unlock();
    if (err)
        fault_error_default(file, blk, err, "cannot map a stand-in for a failed page");
    return FAULT_HANDLED;
}

/* Out of map entries (vm.max_map_count: each page mapped apart from its
 * neighbours is one): unmap clean pages of @ram but @keep, which lets the
 * kernel merge their ranges back, and sweep the traps that leaves in VMAs
 * with a userfaultfd (uffd.c), which do not merge by themselves.  Returns
 * how many pages or VMAs were dealt with (0: nothing to free).  Locked. */
static size_t fault_free_map_entries(RAM *ram, Page *keep)
{
    size_t n = page__reclaim_except(ram, 256, keep);
    ListHead *f, *v;
    list_for_each_forward(f, &fileh__all) {
        BigFileH *h = list_entry(f, BigFileH, in_all);
        list_for_each_forward(v, &h->vmas) {
            VMA *vma = list_entry(v, VMA, in_fileh);
            if (vma->nstale) {
                vma__sweep(vma);
                n++;
            }
        }
    }
    return n;
}

/* page__map_into, making room when the kernel refuses a mapping for lack of
 * map entries (vm.max_map_count: each page mapped apart from its neighbours
 * is one): clean pages of the same RAM are unmapped, which lets the kernel
 * merge their ranges back, and the mapping is tried again.  @page must be at
 * the LRU head (page__touch), so that it is not reclaimed itself. */
static int fault_map(Page *page, VMA *vma, int writable)
{
    int err = page__map_into(page, vma, writable);
    for (int tries = 0; err == -ENOMEM && tries < 8; tries++) {
        if (fault_free_map_entries(page->fileh->ram, page) == 0)
            break;
        err = page__map_into(page, vma, writable);
    }
    return err;
}

/* --------------------------------------------------------- fault-around */

/* Blocks read in sequence get the next ones loaded and mapped ahead, up to
 * file->fault_around bytes (virtmem.h). */

/* Per thread: the VMA and block a sequential read would fault on next. */
static __thread VMA   *fault_seq_vma;
static __thread blk_t  fault_seq_next;
/* Set while loadblk runs for a block nobody touched yet (virtmem.h). */
static __thread int    fault_speculative;

int virt_fault_speculative(void)
{
    return fault_speculative;
}

/* Set while loadblk runs into a prepared slot, all zeros (virtmem.h). */
static __thread int    fault_buf_zeroed;

int virt_fault_buf_zeroed(void)
{
    return fault_buf_zeroed;
}

/* Run loadblk for LOADING @page, unlocked, into memory no VMA shows (nobody
 * can see the page half-filled): a page whose slot has no memory yet loads
 * into a load buffer copied into the slot afterwards (loadbuf.c: the kernel
 * then allocates without zeroing or faulting); a page reusing a reclaimed
 * page's memory loads through its RAM window alias, which costs nothing
 * for the memory loadblk does not write (ram_window.c).
 * @speculative: a load ahead of use.  Locked; unlocks around the load (the
 * page, LOADING, stays ours); returns locked, with 0 or -errno and *what
 * naming the step that failed. */
static int fault_load(Page *page, int speculative, const char **what)
{
    BigFileH *fileh = page->fileh;
    BigFile  *file = fileh->file;
    size_t    size = file->blksize;
    int       staged = page->fresh;
    int       was_speculative = fault_speculative;
    int       was_zeroed = fault_buf_zeroed;
    void     *buf = NULL;
    int       own = 0, r, err;
    LoadDest  dest;

    for (int tries = 0; ; tries++) {
        err = staged ? virt__loadbuf_get(size, &buf) : page__buf_get(page, 1, &buf, &own);
        /* Out of map entries (see fault_map)?  A LOADING page is not on
         * the LRU, so it is not reclaimed itself.  Not for a load ahead. */
        if (err != -ENOMEM || speculative || tries == 8 ||
            fault_free_map_entries(fileh->ram, NULL) == 0)
            break;
    }
    if (err) {
        *what = "cannot map memory to load into";
        return err;
    }
    int prepared = own == PAGE_BUF_PARKED && page->prepared;
    virt_unlock();
    if (prepared)
        ram__prep_touch(buf, size);     /* off the lock: ~32 kernel faults */
    virt__loadbuf_begin(&dest, buf, size, staged ? fileh->ram->memfd : -1, page->ram_off);
    fault_nloading_mine++;
    if (speculative)
        fault_speculative = 1;
    fault_buf_zeroed = prepared;
    fault_selfload_seen = 0;
    r = file->ops->loadblk(file, page->blk, buf);
    fault_speculative = was_speculative;
    fault_buf_zeroed = was_zeroed;
    fault_nloading_mine--;
    err = virt__loadbuf_end(&dest, r);
    if (staged && r != VIRT_BUF_KEPT && r != VIRT_BUF_KEPT_EIO)
        virt__loadbuf_put(buf, size);       /* else it is the callee's now */
    virt__lock_in_fault();
    if (!staged)
        err = page__buf_put(page, buf, own, r);
    else if (r < 0 || r == VIRT_BUF_KEPT_EIO)
        err = r < 0 ? r : -EIO;
    if (err)
        *what = r != 0 && r != VIRT_BUF_KEPT ? "loadblk failed"
                                              : "cannot copy the loaded block into page memory";
    return err;
}

/* Load block @blk of @vma's handle ahead of use and map it read-only into
 * @vma.  Locked; returns locked, 1 if the block is mapped now, 0 to stop
 * (no room but by evicting recent pages, a load in flight or failed, the
 * VMA gone).  Nothing is reported: a block that cannot be loaded now loads
 * (and fails) when it is touched. */
static int fault_around_one(VMA *vma, blk_t blk, size_t nahead)
{
    BigFileH *fileh = vma->fileh;
    BigFile  *file = fileh->file;
    uintptr_t addr = vma->addr_start + (uintptr_t)(blk - vma->pgoffset) * file->blksize;
    Page *page = pagemap_get(&fileh->pagemap, blk);
    int err;

    if (!page) {
        RAM *ram = fileh->ram;
        /* Room without evicting the pages just touched (at the LRU head):
         * free memory, or clean pages well beyond those. */
        if (!ram__has_room(ram, file->blksize) && ram->nclean <= 2 * nahead + 1)
            return 0;
        int fd = -1;
        uint64_t foff = 0;
        int direct = !fileh->no_direct && file->ops->mmapblk &&
                     file->ops->mmapblk(file, blk, &fd, &foff) == 0;
        err = direct ? page__alloc_direct(fileh, blk, fd, foff, &page)
                     : page__alloc(fileh, blk, &page);
        if (err)
            return 0;
        if (page->state == PAGE_LOADING) {
            uint64_t nfailed = fault_nfailed;
            const char *what;
            err = fault_load(page, 1, &what);
            if (err || fault_nfailed != nfailed || page->invalidated || fileh->closed) {
                fileh->npinned++;
                page__abandon_load(page);
                virt__loads_changed();
                fault_unpin(fileh);
                return 0;
            }
            page__finish_load(page);
            virt__loads_changed();
            /* The VMA may have gone while we were unlocked. */
            if (vma__lookup(addr) != vma)
                return 0;
        }
    }
    if (page->state == PAGE_LOADING)
        return 0;                       /* someone else's load: not ahead */
    if (page_mapping_in_vma(page, vma))
        return 1;
    page__touch(page);
    return fault_map(page, vma, 0) == 0;
}

/* The fault at @blk of @vma was served (@write: mapped writable).  Locked;
 * unlocks.  A read continuing a sequence loads and maps the blocks after it
 * first. */
static int fault_served(VMA *vma, blk_t blk, int write)
{
    BigFile *file = vma->fileh->file;
    size_t nahead = file->fault_around / file->blksize;
    int sequential = vma == fault_seq_vma && blk == fault_seq_next;

    fault_last_fileh = vma->fileh;
    fault_last_blk = blk;
    fault_forget_fence(vma, blk);
    fault_seq_vma = vma;
    fault_seq_next = blk + 1;
    if (sequential && !write && nahead > 0 && !fault_failing) {
        blk_t end = vma->pgoffset + vma->pglen;
        blk_t next = blk + 1;
        while (next < end && next <= blk + nahead && fault_around_one(vma, next, nahead))
            next++;
        fault_seq_next = next;
    }
    virt_unlock();
    return FAULT_HANDLED;
}

/* Serve a fault at @addr.  @write: 1 write, 0 read, -1 unknown (then the
 * first fault maps read-only and a second one on the same page is the
 * write).  Runs unlocked; takes the lock itself. */
static int fault_serve(uintptr_t addr, int write)
{
    int standin = 0;        /* failed with the page there: a stand-in instead */
    int spilled = 0;        /* a spill made no room: do not ask again */

    virt__lock_in_fault();
    for (;;) {
        VMA *vma = vma__lookup(addr);
        if (!vma) {
            virt_unlock();
            return FAULT_NOT_OURS;
        }
        BigFileH *fileh = vma->fileh;
        BigFile  *file = fileh->file;
        size_t    blksize = file->blksize;
        blk_t     blk = vma->pgoffset + (addr - vma->addr_start) / blksize;
        Page     *page = pagemap_get(&fileh->pagemap, blk);
        int       err, just_made = 0;   /* page allocated by this iteration */

        if (fault_failing && (standin || !page || page->state == PAGE_LOADING)) {
            /* What this thread computes now is thrown away when its failure
             * is reported: no load, no wait, for it.  A page already shown
             * read-only here gives way to the stand-in. */
            PageMapping *m = standin && page ? page_mapping_in_vma(page, vma) : NULL;
            if (m)
                page__unmap_from(m);
            return fault_serve_standin(vma, blk);
        }

        if (!page && !spilled && fault_room_is_only_mine(fileh)) {
            int busy;
            BigFileH *victim = fault_spill_victim(fileh, &busy);
            if (victim) {
                err = fault_spill(victim);
                if (!err)
                    continue;
                spilled = 1;    /* made no room: not again in this fault */
                if (err != -ENOMEM) {
                    fault_fail(fileh, blk, err, "spilling dirty pages to make room failed");
                    continue;
                }
            }
        }

        if (!page) {
            /* Zero-copy when the backend can name the block's place in an OS
             * file: a clean page then shows that file itself. */
            int fd = -1;
            uint64_t foff = 0;
            int direct = write != 1 && !fileh->no_direct && file->ops->mmapblk &&
                         file->ops->mmapblk(file, blk, &fd, &foff) == 0;
            /* Cheaper than a fresh slot, and maybe the only room there is. */
            if (ram__prep_wait(fileh->ram, blksize, !direct))
                continue;
            err = direct ? page__alloc_direct(fileh, blk, fd, foff, &page)
                         : page__alloc(fileh, blk, &page);
            if (err == -ENOMEM && fileh->ram->nloading > fault_nloading_mine) {
                /* Pages being loaded by other threads will be clean and
                 * reclaimable soon (waiting for our own would deadlock). */
                virt__wait_loads();
                continue;
            }
            if (err == -ENOMEM) {
                /* Full of dirty pages: have some written out (into their
                 * transaction), which makes them reclaimable. */
                int busy;
                BigFileH *victim = fault_spill_victim(fileh, &busy);
                if (!victim && busy && virt__nwriteout_mine == 0) {
                    virt__wait_loads();
                    continue;
                }
                if (victim && !spilled) {
                    err = fault_spill(victim);
                    if (!err)
                        continue;
                    if (err != -ENOMEM) {
                        fault_fail(fileh, blk, err, "no RAM for a new page, and "
                                   "spilling dirty pages to make room failed");
                        continue;
                    }
                }
            }
            if (err) {
                fault_fail_nomem(fileh, blk, err);
                continue;       /* failing now: a stand-in */
            }
            just_made = 1;
            /* Mapped by this very fault once loaded (the lock is held from
             * the load's end to the mapping): writable if a write. */
            page->load_for_write = write == 1;
        }

        if (page->state == PAGE_LOADING && just_made) {
            const char *what;
            uint64_t nfailed = fault_nfailed;
            err = fault_load(page, 0, &what);
            /* A fault of this thread failed during loadblk: loadblk may
             * have read a stand-in, so what it loaded is not data. */
            int nested = fault_nfailed != nfailed;

            if (err || nested || page->invalidated || fileh->closed) {
                fileh->npinned++;
                page__abandon_load(page);
                virt__loads_changed();
                if (err || nested)
                    fault_fail_pinned(fileh, blk, err ? err : -EIO,
                                      err ? what : "loadblk read memory whose page fault failed");
                fault_unpin(fileh);
                continue;      /* a stand-in if failing; else load again (or not ours now) */
            }
            page__finish_load(page);
            virt__loads_changed();
            continue;          /* handle the fault again: VMA may be gone */
        }

        if (page->state == PAGE_LOADING) {
            if (pthread_equal(page->loader, pthread_self())) {
                if (fault_from_uffd && !fault_selfload_seen) {
                    /* Maybe a stale copy of the fault being served: a
                     * wake-up for another thread let this one retry its
                     * access, and fault again, before our signal reached
                     * it (uffd.c cannot tell).  Do nothing: a real touch of
                     * the block loadblk is loading faults again at once. */
                    fault_selfload_seen = 1;
                    virt_unlock();
                    return FAULT_HANDLED;
                }
                fault_fail(fileh, blk, -EDEADLK, "loadblk touched the block it is loading");
                continue;      /* failing now: a stand-in */
            }
            virt__wait_loads();
            continue;
        }

        /* LOADED or DIRTY. */
        PageMapping *m = page_mapping_in_vma(page, vma);
        if (m && fault_from_uffd && !standin) {
            /* Mapped, yet the touch reached the userfaultfd: the kernel
             * dropped the page-table entries of our mapping (swapping the
             * page out, say), and the trap it is registered as caught the
             * touch.  Map it afresh. */
            int was_writable = m->writable;
            page__unmap_from(m);
            page__touch(page);
            if (fault_map(page, vma, was_writable) == 0)
                return fault_served(vma, blk, was_writable);
            continue;
        }
        if (m && m->writable) {
            /* Another thread mapped it between our fault and our lock; or the
             * access is of a kind we do not serve.  Retry a few times, then
             * let the previous handler (or the default crash) have it. */
            int again = (fault_last_addr == addr) ? ++fault_repeats : (fault_repeats = 0);
            fault_last_addr = addr;
            virt_unlock();
            return again > 2 ? FAULT_NOT_OURS : FAULT_HANDLED;
        }
        fault_repeats = 0;
        if (write < 0)
            write = (m != NULL);   /* faulted on a read-only mapping: a write */

        if (write && page->storing) {
            /* Being written out with its mappings write-protected (a spill):
             * write once the store ends, which leaves the page dirty. */
            virt__wait_loads();
            continue;
        }
        if (write && page->state == PAGE_LOADED && fileh->ndirty == 0 &&
            !fileh->dirty_notified && file->ops->dirtied && !fault_failing) {
            /* The handle's first dirty page: tell its owner first. */
            fileh->npinned++;
            virt_unlock();
            err = file->ops->dirtied(file);
            virt__lock_in_fault();
            if (err) {
                fault_fail_pinned(fileh, blk, err, "the file's dirtied() failed");
                standin = 1;    /* the write must not reach the page */
            } else {
                fileh->dirty_notified = 1;
            }
            fault_unpin(fileh);
            continue;
        }

        if (page->state == PAGE_DIRECT) {
            int fd;
            uint64_t foff;
            if (!write && !just_made &&
                (file->ops->mmapblk(file, blk, &fd, &foff) != 0 ||
                 fd != page->direct_fd || foff != page->direct_off)) {
                /* The backend no longer names the same place (its fd was
                 * unset, or closed and its number reused): forget it. */
                page__drop(page);
                continue;
            }
            if (write) {
                /* The first write: drop the view of the backend's file from
                 * every VMA and load the block into RAM like any other. */
                page__drop(page);
                write = 1;
                continue;
            }
            page__touch(page);
            err = fault_map(page, vma, 0);
            if (err) {
                /* The fd cannot be mapped (opened write-only, say): fall
                 * back to loadblk for this handle from now on. */
                page__drop(page);
                fileh->no_direct = 1;
                continue;
            }
            return fault_served(vma, blk, 0);
        }

        if (write && page->state == PAGE_LOADED)
            page__mark_dirty(page);
        if (write && fault_failing) {
            /* A computation to be thrown away writes here: its values may
             * come from a stand-in. */
            fileh->fault_failed = 1;
        }
        page__touch(page);
        err = fault_map(page, vma, write);
        if (err) {
            fault_fail(fileh, blk, err, "cannot map the page (mmap failed; "
                       "too many mappings? see /proc/sys/vm/max_map_count)");
            standin = 1;
            continue;          /* failing now: a stand-in */
        }
        return fault_served(vma, blk, write);
    }
}

/* ------------------------------------------------------ userfaultfd (uffd.c) */

void fault__serve_signalled(uintptr_t addr, int write)
{
    /* Not ours (the VMA went meanwhile): the instruction runs again and
     * faults as it would without us. */
    fault_from_uffd = 1;
    (void)fault_serve(addr, write);
    fault_from_uffd = 0;
}

void fault__serve_proxied(uintptr_t addr, int write)
{
    fault_from_uffd = 1;
    (void)fault_serve(addr, write);
    fault_from_uffd = 0;
    /* A failure was a fence and a report for the proxied thread; the proxy
     * itself computes nothing from it. */
    fault_failing = 0;
    if (fault_exit_key_ok)
        (void)pthread_setspecific(fault_exit_key, NULL);
}

void fault__fence(uintptr_t addr, pid_t owner)
{
    VMA *vma = vma__lookup(addr);
    if (!vma || !vma->uffd)
        return;
    blk_t blk = vma->pgoffset + (addr - vma->addr_start) / vma->fileh->file->blksize;
    if (fault_page_shown(vma, blk))
        return;     /* served meanwhile: the retry finds it */
    int err = fault_standin_map(vma, blk, owner, 1);
    if (err) {
        fprintf(stderr, "zbigarray: cannot fence a page whose fault failed: %s\n",
                strerror(-err));
        abort();
    }
}

void fault__report_gil_timeout(uintptr_t addr, pid_t tid)
{
    virt_lock();
    VMA *vma = vma__lookup(addr);
    if (!vma) {
        virt_unlock();
        return;
    }
    BigFileH *fileh = vma->fileh;
    BigFile *file = fileh->file;
    blk_t blk = vma->pgoffset + (addr - vma->addr_start) / file->blksize;
    fileh->npinned++;
    virt_unlock();
    fault_remote_error(file, blk, -EDEADLK,
                       "a system call touched the page while its thread held the Python "
                       "GIL, which loading the page needs (touch the pages first: "
                       "zbigarray.bigfile.prefault)", tid);
    virt__lock_in_fault();
    fault_unpin(fileh);
    virt_unlock();
}

/* Hand a signal that is not ours to whoever would have had it. */
static void fault_chain(int sig, siginfo_t *si, void *uctx)
{
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);

    if (!fault_chaining && fault_prev_valid) {
        struct sigaction *prev = &fault_prev_action;
        fault_chaining = 1;
        if (prev->sa_flags & SA_SIGINFO) {
            if (prev->sa_sigaction)
                prev->sa_sigaction(sig, si, uctx);
        } else if (prev->sa_handler != SIG_DFL && prev->sa_handler != SIG_IGN) {
            prev->sa_handler(sig);
        }
        fault_chaining = 0;
    }
    /* The previous handler returned (or there was none): die as the program
     * would have without us.  For a real fault, returning re-executes the
     * instruction, which now gets the default action (core dump); a signal
     * sent by kill/raise is re-raised. */
    sigaction(SIGSEGV, &dfl, NULL);
    if (si->si_code <= 0)
        raise(sig);
}

static void fault_on_sigsegv(int sig, siginfo_t *si, void *uctx)
{
    int saved_errno = errno;
    int write = -1;

    /* si_code <= 0: sent by a process (kill, raise), not a memory access.
     * A fault while this thread holds the virtmem lock is a bug (ours, or
     * memory touched from a backend called under it): never serve it. */
    if (si->si_code <= 0 || fault_chaining || virt__lock_held()) {
        fault_chain(sig, si, uctx);
        errno = saved_errno;
        return;
    }
#if defined(__x86_64__)
    /* Bit 1 of the page-fault error code: the access was a write.  Saves the
     * second fault that the portable read-then-write scheme costs. */
    write = (((ucontext_t *)uctx)->uc_mcontext.gregs[REG_ERR] & 2) != 0;
#endif
    if (fault_serve((uintptr_t)si->si_addr, write) == FAULT_NOT_OURS)
        fault_chain(sig, si, uctx);
    errno = saved_errno;
}

int virt_install_fault_handler(void)
{
    struct sigaction cur, sa;
    int err = 0;

    BUG_ON(pthread_mutex_lock(&fault_install_mutex) != 0);
    uffd__start();
    if (!fault_exit_key_ok)
        fault_exit_key_ok = pthread_key_create(&fault_exit_key, fault_on_thread_exit) == 0;
    if (sigaction(SIGSEGV, NULL, &cur) != 0) {
        err = -errno;
    } else if (!((cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == fault_on_sigsegv)) {
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = fault_on_sigsegv;
        sa.sa_flags = SA_SIGINFO | SA_NODEFER;
        sigemptyset(&sa.sa_mask);
        /* Whatever is installed now (maybe someone installed theirs on top of
         * ours since) becomes the handler we chain to. */
        fault_prev_valid = 0;
        fault_prev_action = cur;
        fault_prev_valid = 1;
        if (sigaction(SIGSEGV, &sa, NULL) != 0)
            err = -errno;
    }
    BUG_ON(pthread_mutex_unlock(&fault_install_mutex) != 0);
    return err;
}
