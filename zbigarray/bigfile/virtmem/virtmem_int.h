/* zbigarray virtual-memory core: internal structures (not API).
 *
 * Everything here is shared between the core's .c files only; names with a
 * double underscore after the subsystem (ram__slot_alloc) are cross-file
 * internals.  Unless a comment says otherwise, every field and function here
 * requires the virtmem lock (virt_lock()).
 */
#ifndef ZBIGARRAY_VIRTMEM_INT_H
#define ZBIGARRAY_VIRTMEM_INT_H

#include <pthread.h>
#include <sys/types.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "list.h"
#include "virtmem.h"

/* Broken invariant: a bug in the core.  Not for failed syscalls. */
#define BUG_ON(cond) do {                                                   \
        if (cond) {                                                         \
            fprintf(stderr, "zbigarray: BUG at %s:%d: %s\n",                \
                    __FILE__, __LINE__, #cond);                             \
            abort();                                                        \
        }                                                                   \
    } while (0)

/* ------------------------------------------------------------------ pagemap */

/* Hash map blk -> pointer, open addressing with linear probing and
 * backward-shift deletion (no tombstones), so that lookups stay O(1) however
 * many pages come and go.  Values are never NULL. */
typedef struct PageMapSlot {
    blk_t  key;
    void  *val;     /* NULL: free slot */
} PageMapSlot;

typedef struct PageMap {
    PageMapSlot *slots;
    size_t       cap;     /* power of two, or 0 before the first insert */
    size_t       count;
} PageMap;

void  pagemap_init(PageMap *pm);
void  pagemap_fini(PageMap *pm);                 /* frees the table, not the values */
void *pagemap_get(const PageMap *pm, blk_t key); /* NULL if absent */
int   pagemap_set(PageMap *pm, blk_t key, void *val);  /* insert or replace; -ENOMEM */
void *pagemap_del(PageMap *pm, blk_t key);       /* returns the removed value or NULL */
/* Iterate: start with *pos = 0; returns the next value (and its key in *key if
 * not NULL) or NULL at the end.  The map must not change during iteration. */
void *pagemap_next(const PageMap *pm, size_t *pos, blk_t *key);

/* ---------------------------------------------------------------------- RAM */

/* Free slots of one size.  A free slot holds no memory (its range of the memfd
 * was hole-punched). */
typedef struct RAMFreeSlots {
    size_t  slotsize;
    size_t *offs;
    size_t  n, cap;
} RAMFreeSlots;

/* An address range no VMA shows, where a recycled page's page-table
 * entries wait while its block loads (page.c). */
typedef struct RAMPark {
    void   *addr;
    size_t  size;
} RAMPark;

/* Parking ranges a RAM keeps for reuse; more are unmapped when let go. */
#define RAM_MAX_PARKS 16

/* A prepared slot (ram_prep.c): fresh memory, mapped read-write and
 * populated at a parking range, for the next page that needs a slot. */
typedef struct RAMPrep {
    size_t  off;
    void   *park;
    size_t  size;
} RAMPrep;

/* Slots a RAM has ready or in preparation at most: a sixteenth of its
 * capacity, within these bounds (ram_prep.c, prep_depth). */
#define RAM_PREP_MIN 4
#define RAM_PREP_MAX 32

struct RAM {
    ListHead     in_all;       /* ram__all */
    int          refcnt;
    int          memfd;
    size_t       capacity;     /* bytes */
    size_t       used;         /* bytes in allocated slots */
    size_t       npages;       /* allocated slots */
    size_t       memfd_size;   /* bytes; the memfd is ftruncate'd to this */
    ListHead     lru;          /* clean pages (Page.lru), most recently used first */
    size_t       nclean;       /* length of lru; kept by page.c */
    size_t       nloading;     /* pages LOADING; kept by page.c */
    size_t       direct;       /* bytes of DIRECT pages; kept by page.c */
    RAMFreeSlots *free;        /* one entry per slot size ever freed */
    size_t       nfree;
    char        *window;       /* ram_window.c: RW alias of the whole memfd */
    size_t       window_size;  /* bytes of address space reserved */
    size_t       window_mapped;/* bytes of it mapped onto the memfd */
    int          window_kept;  /* a callee owns part of it: never unmap it */
    uint64_t     nreclaimed;   /* kept by page.c */
    uint64_t     nrecycled;    /* kept by page.c */
    uint64_t     nmoved;       /* kept by page.c: recycled with their page tables */
    RAMPark      parks[RAM_MAX_PARKS];  /* parking ranges free for reuse */
    size_t       nparks;
    RAMPrep      prep[RAM_PREP_MAX];    /* ram_prep.c: ready, oldest first */
    size_t       nprep;
    size_t       nprep_busy;   /* slots the preparer works on now */
    size_t       prepared;     /* bytes of slots ready or in preparation */
    size_t       prep_size;    /* slot size to prepare; 0: none */
    uint64_t     nprepared;    /* kept by page.c: pages given a prepared slot */
};

/* Every live RAM and every file handle not yet freed (fork.c walks them). */
extern ListHead ram__all;
extern ListHead fileh__all;

/* In a forked child: give @ram a memfd of its own, empty.  Every page of it
 * must have been forgotten first.  -errno of memfd_create (the RAM then has
 * no memfd and every allocation from it fails). */
int   ram__reset_in_child(RAM *ram);

/* The cgroup memory limit of this process as given by @proc_cgroup (a file
 * laid out as /proc/self/cgroup) under the cgroup mount @root (as
 * /sys/fs/cgroup): the smallest of v2 memory.max and v1 memory.limit_in_bytes
 * of its cgroup and every ancestor.  UINT64_MAX: no limit found (missing or
 * unreadable files, "max", garbage).  Separate paths so tests can use a fake
 * tree; ram_default_capacity passes the real ones.  No lock needed. */
uint64_t ram__cgroup_limit(const char *proc_cgroup, const char *root);

/* A quarter of min(@phys, @cgroup_limit) bytes, at least one OS page: what
 * ram_default_capacity returns.  No lock needed. */
size_t ram__default_capacity_for(uint64_t phys, uint64_t cgroup_limit);

/* Register the fork handlers (fork.c); idempotent.  Called by ram_new. */
void  virt__atfork_init(void);

/* Allocate a slot of @size bytes (a multiple of the OS page size): a free slot
 * of that size if there is one, else grow the memfd.  Does not check the
 * capacity (callers decide what to reclaim first).  used += size, npages++.
 * -errno of ftruncate, or -ENOMEM. */
int   ram__slot_alloc(RAM *ram, size_t size, size_t *off);

/* Return a slot: its memory goes back to the system (fallocate PUNCH_HOLE)
 * and the slot is kept for reuse.  used -= size, npages--. */
void  ram__slot_free(RAM *ram, size_t off, size_t size);

/* Would @size more bytes stay within capacity? */
int   ram__has_room(const RAM *ram, size_t size);

/* Map slot [off, off+size) of @ram's memfd MAP_SHARED with @prot (PROT_*):
 * at a fresh address (ram__map_slot, NULL-free result in *out), or in place of
 * [addr, addr+size) (ram__map_slot_at, MAP_FIXED).  @populate: prefault all
 * page-table entries now (MAP_POPULATE) — much cheaper than one kernel fault
 * per OS page when the whole slot will be touched.  -errno of mmap. */
int   ram__map_slot(RAM *ram, size_t off, size_t size, int prot, int populate,
                    void **out);
int   ram__map_slot_at(RAM *ram, void *addr, size_t off, size_t size, int prot,
                       int populate);

/* Replace [addr, addr+len) with an inaccessible reservation (PROT_NONE,
 * MAP_FIXED, anonymous, no memory).  -errno of mmap. */
int   virt__reserve_at(void *addr, size_t len);

/* Page tables: one covers VIRT_PT_SPAN bytes (x86-64 and arm64 with 4 KiB
 * pages).  mremap moves a whole one in O(1) when both ends are aligned to
 * it; ranges of such multiples are reserved aligned (virt__mmap_aligned). */
#define VIRT_PT_SPAN ((size_t)2 << 20)

/* Anonymous mmap(NULL, @len, @prot, MAP_PRIVATE | MAP_ANONYMOUS |
 * MAP_NORESERVE) at an address aligned to VIRT_PT_SPAN when @len is a
 * multiple of it.  MAP_FAILED with errno set on failure. */
void *virt__mmap_aligned(size_t len, int prot);

/* Parking ranges of @ram (see RAMPark): ram__park_get takes one of @size
 * bytes, reused or reserved anew (-errno of mmap); ram__park_put gives back
 * one that holds no page-table entries; ram__park_release one that may
 * (dropping them first: they would count in the process's RSS). */
int   ram__park_get(RAM *ram, size_t size, void **out);
void  ram__park_put(RAM *ram, void *addr, size_t size);
void  ram__park_release(RAM *ram, void *addr, size_t size);

/* The RAM window (ram_window.c): a long-lived read-write mapping of the whole
 * memfd, through which loadblk fills and storeblk reads page memory with no
 * mmap/munmap per call.  Returns the alias of slot [off, off+size), extending
 * the mapped part as the memfd grew, or NULL if the slot lies beyond the
 * reserved window (the caller then maps the slot on its own). */
void *ram__window(RAM *ram, size_t off, size_t size);
void  ram__window_fini(RAM *ram);

/* Like ram__slot_free, but the offset is never reused: for a slot whose
 * window alias was handed over to a loadblk/storeblk that kept its buffer
 * (VIRT_BUF_KEPT).  The memory is still returned to the system. */
void  ram__slot_retire(RAM *ram, size_t off, size_t size);

/* Prepared slots (ram_prep.c), all under the lock.  ram__prep_want: a
 * page just took a fresh or prepared slot of @size; prepare more of that
 * size if there is room (sizes below VIRT_PT_SPAN are not prepared).
 * ram__prep_take: 1 and the slot's offset and park (read-write, populated)
 * if one of @size is ready; it then counts as used, as ram__slot_alloc's.
 * ram__prep_wait: wait for the slot being prepared (unlocking meanwhile;
 * 1) when a new page of @size needs it: when only it would make room, or
 * when it would be the page's (@may_take) and none is ready; else 0.
 * ram__prep_touch: fill the page-table entries of a prepared slot's park,
 * before loadblk writes there (no lock needed).
 * ram__prep_release_one: give one ready slot back (1), or 0 if none.
 * ram__prep_release_all: give them all back and prepare no more until a
 * page takes a fresh slot.
 * ram__prep_fini: unmap the ready ones, for ram__free.
 * ram__prep_forget_in_child: forget them without touching their memory;
 * ram__prep_reinit_in_child: the preparer thread is not in the child. */
void  ram__prep_want(RAM *ram, size_t size);
int   ram__prep_wait(RAM *ram, size_t size, int may_take);
int   ram__prep_take(RAM *ram, size_t size, size_t *off, void **park);
void  ram__prep_touch(void *park, size_t size);
int   ram__prep_release_one(RAM *ram);
void  ram__prep_release_all(RAM *ram);
void  ram__prep_fini(RAM *ram);
void  ram__prep_forget_in_child(RAM *ram);
void  ram__prep_reinit_in_child(void);

/* Free @ram (close memfd, free free-lists), under the lock, when the last
 * reference goes.  No pages may remain. */
void  ram__free(RAM *ram);

/* --------------------------------------------------------------------- Page */

typedef enum PageState {
    PAGE_LOADING = 1,   /* a thread runs loadblk for it; no memory mapped yet */
    PAGE_LOADED,        /* clean copy of the file; on ram->lru */
    PAGE_DIRTY,         /* written since the last writeout; on fileh->dirty */
    PAGE_DIRECT,        /* clean, mapped from the backend's own file
                         * (mmapblk): no RAM slot; on ram->lru */
} PageState;
/* (EMPTY = no Page in the pagemap.) */

typedef struct Page {
    PageState  state;
    BigFileH  *fileh;
    blk_t      blk;
    size_t     ram_off;          /* slot in fileh->ram, size fileh->file->blksize */
    int        direct_fd;        /* DIRECT: where the block is, from mmapblk */
    uint64_t   direct_off;
    ListHead   lru;              /* in ram->lru while LOADED */
    ListHead   dirty;            /* in fileh->dirty while DIRTY */
    ListHead   mappings;         /* PageMapping.in_page */
    pthread_t  loader;           /* valid while LOADING */
    unsigned   invalidated : 1;  /* dropped while LOADING: loader throws its result away */
    unsigned   storing : 1;      /* storeblk is running for it; a write fault waits */
    unsigned   window_lost : 1;  /* its window alias was kept by a callee */
    unsigned   fresh : 1;        /* LOADING into a slot with no memory yet */
    unsigned   prepared : 1;     /* took a prepared slot (ram_prep.c) */
    unsigned   parked_rw : 1;    /* its parked entries are writable */
    unsigned   load_for_write : 1; /* loading for a write fault: the parked
                                  * entries stay writable for its mapping */
    void      *parked;           /* a parking range holding read-only page-table
                                  * entries of its slot (page.c), or NULL */
} Page;

/* Page @page is mapped into @vma (at vma->addr_start + (blk - pgoffset) *
 * blksize), read-only or read-write. */
typedef struct PageMapping {
    Page     *page;
    VMA      *vma;
    int       writable;
    int       trap;      /* registered as a trap (uffd.c): unmapped by dropping
                          * its page-table entries, the mapping stays */
    ListHead  in_page;   /* Page.mappings */
    ListHead  in_vma;    /* VMA.mappings */
} PageMapping;

/* ---------------------------------------------------------------------- VMA */

struct VMA {
    uintptr_t  addr_start, addr_stop;
    int        uffd;        /* its empty pages are registered with the userfaultfd */
    size_t     nmappings;   /* PageMappings in it */
    size_t     nstale;      /* traps left by evicted pages since the last sweep */
    blk_t      pgoffset, pglen;
    BigFileH  *fileh;
    ListHead   mappings;    /* PageMapping.in_vma */
    ListHead   in_fileh;    /* BigFileH.vmas */
};

/* The registry of all VMAs, sorted by address: O(log n) lookup from the fault
 * handler.  vma__register: -ENOMEM. */
int   vma__register(VMA *vma);
void  vma__unregister(VMA *vma);
VMA  *vma__lookup(uintptr_t addr);

/* vma__reserve for when the process is out of map entries: unmap first
 * (which frees entries), then reserve; the range is briefly unmapped.
 * -errno of munmap/mmap, -EEXIST if another thread mapped there meanwhile. */
int   vma__rereserve_at_limit(VMA *vma, void *addr, size_t len);

/* Replace the traps evicted pages left in @vma (uffd.c) by empty memory,
 * which merges into few mappings again.  Locked. */
void  vma__sweep(VMA *vma);

/* Unmap every page of @vma, release its address range and free it.  Does
 * not touch fileh->nvma bookkeeping beyond unlinking. */
void  vma__destroy(VMA *vma);

/* ----------------------------------------------------------------- BigFileH */

struct BigFileH {
    ListHead   in_all;              /* fileh__all */
    BigFile   *file;
    RAM       *ram;                 /* holds a reference */
    PageMap    pagemap;             /* blk -> Page* */
    ListHead   vmas;                /* VMA.in_fileh */
    size_t     nvma;
    ListHead   dirty;               /* Page.dirty, unordered */
    size_t     ndirty;
    size_t     nloading;            /* pages LOADING */
    size_t     npinned;             /* failed faults reporting, unlocked (fault.c) */
    unsigned   writeout_running : 1;
    unsigned   closed : 1;          /* fileh_close ran; freed when nloading, npinned == 0 */
    unsigned   no_direct : 1;       /* mapping mmapblk's fd failed: use loadblk */
    unsigned   fault_failed : 1;    /* a fault of it failed (fileh_fault_failed) */
    unsigned   dirty_notified : 1;  /* ops->dirtied ran since ndirty was last 0 */
    unsigned   spilling : 1;        /* ops->spill is running for it (fault.c) */
    uint64_t   nloadblk, nstoreblk;
    uint64_t   nspilled;            /* pages made clean by dirty_writeout_oldest */
};

/* Free a closed handle once nothing refers to it.  Returns 1 if freed (the
 * caller must then call file->ops->release after unlocking), else 0. */
int   fileh__maybe_free(BigFileH *fileh);

/* ------------------------------------------------------------- page.c */

/* Allocate a page for (@fileh, @blk) in state LOADING, inserted in the
 * pagemap, reclaiming clean LRU pages if @fileh->ram is at capacity (reusing a
 * reclaimed page's memory directly when the size matches).  -ENOMEM when
 * every page is dirty or loading. */
int   page__alloc(BigFileH *fileh, blk_t blk, Page **out);

/* Make (@fileh, @blk) a DIRECT page of block [off, off+blksize) of @fd,
 * reclaiming clean LRU pages first if @fileh->ram is at capacity.  -ENOMEM
 * when every page is dirty or loading. */
int   page__alloc_direct(BigFileH *fileh, blk_t blk, int fd, uint64_t off, Page **out);

/* Map @page into @vma at its place, @writable or read-only; records the
 * PageMapping (or updates it).  -errno of mmap/mprotect or -ENOMEM. */
int   page__map_into(Page *page, VMA *vma, int writable);

/* Remove @page's mapping from @vma (PROT_NONE reservation in its place). */
void  page__unmap_from(PageMapping *m);

/* Write-protect @page in every VMA mapping it (after it becomes clean). */
void  page__protect_all(Page *page);

/* LOADED -> DIRTY / DIRTY -> LOADED, moving between lru and dirty lists. */
void  page__mark_dirty(Page *page);
void  page__mark_clean(Page *page);

/* Move @page to the head of its RAM's LRU (it was just used). */
void  page__touch(Page *page);

/* Unmap @page everywhere, remove it from the pagemap and lists, return its
 * memory (hole punched) and free it.  Not for LOADING pages. */
void  page__drop(Page *page);

/* The loader's end of LOADING, after retaking the lock: success makes the
 * page LOADED and most recently used; abandon (load failed, page invalidated
 * or handle closed meanwhile) frees it and its slot. */
void  page__finish_load(Page *page);
void  page__abandon_load(Page *page);

/* The buffer through which loadblk (@writable) or storeblk sees @page's
 * memory: the reclaimed page's entries it took over (*own =
 * PAGE_BUF_PARKED, for loadblk), its RAM window alias (*own = 0), or a
 * one-off mapping (*own = 1).
 * Called locked, the buffer then used unlocked while the page is LOADING or
 * storing (which keeps the page and its slot alive).  page__buf_put (locked)
 * ends the use, given the callee's result @r: on VIRT_BUF_KEPT(_EIO) the
 * callee owns the addresses from now on; it returns the call's error (0 or
 * -errno).  page__buf_get: -errno of mmap. */
int   page__buf_get(Page *page, int writable, void **buf, int *own);
#define PAGE_BUF_PARKED 2
int   page__buf_put(Page *page, void *buf, int own, int r);

/* ------------------------------------------------------- load buffers */

/* loadbuf.c: the private memory loadblk fills, copied into the page's slot
 * with pwrite() afterwards.  No lock needed for any of these. */

/* Where the block a thread is loading goes; on the loader's stack. */
typedef struct LoadDest {
    void   *buf;
    size_t  size;
    int     memfd;
    off_t   off;
    int     saved;              /* virt_loadbuf_save() copied it already */
    struct LoadDest *outer;     /* the load this one runs inside, if any */
} LoadDest;

/* A load buffer of @size bytes: a reused one, or a new mapping.  -errno of
 * mmap.  virt__loadbuf_put gives it back (kept for reuse, or unmapped). */
int   virt__loadbuf_get(size_t size, void **out);
void  virt__loadbuf_put(void *buf, size_t size);

/* Around the loadblk call that fills @buf: begin says where it goes (slot
 * [@off, @off+@size) of @memfd; -1: @buf is the page's memory itself, nothing
 * to copy); end, given loadblk's result @r, copies it there if @r is 0 and
 * returns 0 or -errno of the copy (-EIO for a buffer kept without
 * virt_loadbuf_save). */
void  virt__loadbuf_begin(LoadDest *dest, void *buf, size_t size, int memfd, size_t off);
int   virt__loadbuf_end(LoadDest *dest, int r);


/* Reclaim up to @n clean LRU pages of @ram, punching their memory; the
 * _except form stops at @keep (which the caller put at the LRU head). */
size_t page__reclaim(RAM *ram, size_t n);
size_t page__reclaim_except(RAM *ram, size_t n, Page *keep);

/* ------------------------------------------------------------ locking */

/* The virtmem lock.  virt_lock() blocks SIGSEGV for the calling thread first,
 * so that touching a mapped page while holding the lock kills the process
 * (the kernel forces a blocked SIGSEGV to its default action) instead of
 * deadlocking in our own handler.  Not recursive. */
void  virt_lock(void);
void  virt_unlock(void);

/* The fault handler's way to take the lock: without touching the signal mask
 * (two syscalls per lock, a large part of a fault's cost).  A fault while the
 * lock is held still dies loudly: the handler sees virt__lock_held() and
 * hands the signal on (default action: crash), and a recursive lock is a BUG.
 * virt_unlock() releases either kind. */
void  virt__lock_in_fault(void);
int   virt__lock_held(void);

/* Take the lock if it is free (1), else 0 at once; as virt__lock_in_fault,
 * for threads that must never wait for it (uffd.c's servers). */
int   virt__trylock(void);

/* Wait, under the lock, for some page load to finish (condition variable
 * broadcast by virt__loads_changed()).  Releases the GIL through the hooks
 * while waiting; returns with the lock held, the world possibly changed. */
void  virt__wait_loads(void);
void  virt__loads_changed(void);

/* Wait on @cond with the virtmem lock (held; held again on return), for a
 * C thread of the core's own that holds no interpreter lock. */
void  virt__wait_cond(pthread_cond_t *cond);
void  virt__loads_reinit(void);     /* fork.c, in the child */

/* Reserve [addr, addr+len) of @vma again, as it is when nothing is mapped
 * there: registered with the userfaultfd if @vma is, else PROT_NONE.
 * -errno of mmap. */
int   vma__reserve(VMA *vma, void *addr, size_t len);

/* ------------------------------------------------------------ uffd.c */

/* Start serving faults through a userfaultfd, once (virt_install_fault_handler
 * calls it); on any refusal the process goes on without (virt_uffd_reason). */
void  uffd__start(void);
int   uffd__active(void);

/* Register [addr, addr+len) for missing faults (empty anonymous memory),
 * or, as a trap, for missing and minor faults (a RAM page's memfd mapping:
 * once its page-table entries are dropped, any touch faults to us).
 * -errno of the ioctl. */
int   uffd__register(void *addr, size_t len);
int   uffd__register_trap(void *addr, size_t len);

/* Undo either registration of [addr, addr+len): the range becomes ordinary
 * memory again (page.c, moving a trap's page-table entries away: mremap of
 * a registered range would wait for a server to read the move's event).
 * -errno of the ioctl. */
int   uffd__unregister(void *addr, size_t len);

/* Replace [addr, addr+len) with empty registered memory, atomically (see
 * uffd.c, "reservations"); waits for a server to read the move's event, so
 * never call it from a server.  Falls back to a PROT_NONE reservation.
 * -errno of mmap. */
int   uffd__replace_empty(void *addr, size_t len);

/* In a forked child: no userfaultfd (its server threads are not there). */
void  uffd__forget_in_child(void);

/* This thread's kernel thread id (cached). */
pid_t virt__gettid(void);

/* ------------------------------------------------------------ fault.c */

/* Serve a fault for uffd.c: in the faulting thread from the signal handler,
 * or in a proxy for a thread parked in a system call (a failure then fences
 * the block and is reported to that thread).  Unlocked. */
void  fault__serve_signalled(uintptr_t addr, int write);
void  fault__serve_proxied(uintptr_t addr, int write);

/* Whether a stand-in or fence is shown in @vma.  Locked. */
int   fault__vma_has_standins(VMA *vma);

/* Fence the block at @addr for thread @owner, unless a page is mapped
 * there: its access fails as without userfaultfd.  Locked. */
void  fault__fence(uintptr_t addr, pid_t owner);

/* Tell thread @tid its system call's fault at @addr failed for want of the
 * GIL.  Unlocked. */
void  fault__report_gil_timeout(uintptr_t addr, pid_t tid);


/* Forget the stand-ins shown in @vma, whose range is being unmapped. */
void  fault__forget_vma(VMA *vma);

/* In a forked child, whose VMAs were emptied: forget every stand-in. */
void  fault__forget_all_in_child(void);

/* Writeouts (storeblk loops) and spills this thread has in flight: a fault
 * inside one must not wait for handles busy with them -- it would wait for
 * itself.  Unlocked (thread-local). */
extern __thread unsigned virt__nwriteout_mine;

/* Call file->ops->release for a handle freed under the lock (call unlocked). */
void  virt__release_file(BigFile *file);

#endif /* ZBIGARRAY_VIRTMEM_INT_H */
