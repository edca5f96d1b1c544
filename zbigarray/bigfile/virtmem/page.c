/* Pages: allocation under the RAM capacity with LRU reclaim, mapping into
 * VMAs, the clean/dirty transitions, and dropping.  Every function here runs
 * with the virtmem lock held.
 *
 * A page's memory is a slot of its RAM's memfd.  The same slot is mapped into
 * every VMA that shows the page (so two VMAs of one handle share memory);
 * loadblk fills it through memory no VMA shows (fault.c: a load buffer, or
 * the slot's RAM window alias).
 *
 * Reclaim takes the least-recently-used clean page.  When the new page has the
 * same size, the victim's slot is handed over as is: its memory stays
 * allocated in the kernel, because punching a hole and faulting fresh zeroed
 * memory back in costs more (~0.7 ms per 2 MiB) than the load itself.
 *
 * From 2 MiB blocks on, the victim's page-table entries go with its slot.
 * Dropping 512 entries at the victim's place and populating 512 at the new
 * page's was nearly all of a recycled fault (~200 of ~250 us on our VMs);
 * mremap moves them instead, a whole page table at a time when both places
 * are aligned to one (VMAs of such blocks are).  At eviction they are moved
 * to a *parking range* (ram.c), an address no VMA shows, so that nothing
 * reads the slot while the new block loads into it through the RAM window;
 * once loaded they are moved to the new page's place.  MREMAP_DONTUNMAP
 * leaves both places mapped, empty, so neither ever becomes a hole another
 * thread's mmap could take; a userfaultfd trap is unregistered for the move
 * (a registered one would wait for a server to read the move's event) and
 * registered again.  Any refusal falls back to dropping and populating. */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>
#include <sys/mman.h>

#include "virtmem_int.h"

/* Fatal: the OS refused to change a mapping whose state the core must control
 * (e.g. vm.max_map_count reached).  Continuing would leave a page writable
 * without tracking, or visible after it was dropped. */
static void page_map_failed(const char *what, int err)
{
    fprintf(stderr, "zbigarray: cannot %s a page: %s "
            "(too many mappings? see /proc/sys/vm/max_map_count)\n",
            what, strerror(-err));
    abort();
}

static uintptr_t page_addr_in(const Page *page, const VMA *vma)
{
    return vma->addr_start + (uintptr_t)(page->blk - vma->pgoffset) * page->fileh->file->blksize;
}

/* Put the reservation back over [addr, addr+len) when mapping it in place
 * failed for lack of map entries (vm.max_map_count): replacing a mapping in
 * place needs a spare entry, removing one frees entries.  Between the
 * munmap and the new reservation another thread could map something there;
 * MAP_FIXED_NOREPLACE then refuses to clobber it, and as the VMA's range is
 * no longer wholly ours that is fatal — a race only possible at the limit. */
int vma__rereserve_at_limit(VMA *vma, void *addr, size_t len)
{
    if (munmap(addr, len) != 0)
        return -errno;
    void *got = mmap(addr, len, vma->uffd ? PROT_READ | PROT_WRITE : PROT_NONE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0);
    if (got == MAP_FAILED)
        return -errno;
    if (got != addr) {          /* a kernel older than 4.17 ignores NOREPLACE */
        munmap(got, len);
        return -EEXIST;
    }
    /* Unregistered, empty memory would read as zeros: PROT_NONE then. */
    if (vma->uffd && uffd__register(addr, len) != 0 && mprotect(addr, len, PROT_NONE) != 0)
        return -errno;
    return 0;
}

/* Sweep @vma's evicted traps once they are many, and more than its
 * mappings (a sweep costs one move per gap between mapped pages). */
#define PAGE_SWEEP_MIN 4096

/* Forget mapping @m, whose range holds no page-table entry any more. */
static void page_mapping_forget(PageMapping *m)
{
    VMA *vma = m->vma;
    list_del(&m->in_page);
    list_del(&m->in_vma);
    vma->nmappings--;
    free(m);
    if (vma->nstale >= PAGE_SWEEP_MIN && vma->nstale > vma->nmappings)
        vma__sweep(vma);
}

/* Reserve [addr, addr+len) of @vma again after mapping or moving there
 * failed, which may have left it unmapped; fatal if even that fails. */
static void page_rereserve(VMA *vma, void *addr, size_t len)
{
    int err = vma__reserve(vma, addr, len);
    if (err == -ENOMEM)
        err = vma__rereserve_at_limit(vma, addr, len);
    if (err)
        page_map_failed("re-reserve", err);
}

void page__unmap_from(PageMapping *m)
{
    size_t blksize = m->page->fileh->file->blksize;
    VMA *vma = m->vma;
    void *addr = (void *)page_addr_in(m->page, vma);
    int err;
    if (m->trap) {
        /* The mapping stays, a trap (uffd.c): writable, so that a system
         * call writing into it faults to us like anywhere empty. */
        err = madvise(addr, blksize, MADV_DONTNEED) == 0 ? 0 : -errno;
        if (!err && !m->writable && mprotect(addr, blksize, PROT_READ | PROT_WRITE) != 0)
            err = -errno;
        if (err)
            err = vma__reserve(vma, addr, blksize);
        else
            vma->nstale++;
    } else {
        err = vma__reserve(vma, addr, blksize);
        if (err == -ENOMEM)
            err = vma__rereserve_at_limit(vma, addr, blksize);
    }
    if (err)
        page_map_failed("unmap", err);
    page_mapping_forget(m);
}

/* Recycling moves page tables from the size of one on (VIRT_PT_SPAN):
 * below, the few entries cost less to drop and populate than the extra
 * system calls of a move. */
#define PAGE_MOVE_MIN VIRT_PT_SPAN

/* The kernel refused MREMAP_DONTUNMAP for our mappings (Linux before 5.13):
 * recycling drops and populates entries, as it did before moves. */
static int page_move_unsupported;

static void *page_mremap_fixed(void *from, size_t len, void *to)
{
    return mremap(from, len, len, MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP, to);
}

/* page__unmap_from for read-only mapping @m, moving its page-table entries
 * to parking range @park (of @ram) instead of dropping them.  0, or -errno
 * with @m mapped as it was (to be unmapped the usual way) and @park back in
 * the pool -- or forgotten if the failed MREMAP_FIXED may have unmapped it
 * (Linux 5.7-5.12 refuse DONTUNMAP for shared mappings only after that),
 * as another thread's mmap may own it now: at worst some address space is
 * lost, once.  Out of map entries (ENOMEM) the kernel refuses before
 * touching it (an ENOMEM after would be the kernel itself out of memory,
 * which this does not guard against). */
static int page_unmap_parking(PageMapping *m, RAM *ram, void *park)
{
    size_t size = m->page->fileh->file->blksize;
    VMA *vma = m->vma;
    void *addr = (void *)page_addr_in(m->page, vma);
    int err;

    /* A registered range would make the move wait for a server to read
     * its event (UFFD_FEATURE_EVENT_REMAP). */
    if (m->trap && (err = uffd__unregister(addr, size)) != 0) {
        ram__park_put(ram, park, size);
        return err;
    }
    /* DONTUNMAP keeps the range mapped, empty: it never becomes a hole that
     * another thread's mmap could take. */
    if (page_mremap_fixed(addr, size, park) == MAP_FAILED) {
        err = -errno;
        if (err == -ENOMEM)
            ram__park_put(ram, park, size);
        if (m->trap && uffd__register_trap(addr, size) != 0)
            m->trap = 0;        /* then replaced whole when unmapped */
        return err;
    }
    err = 0;
    if (m->trap) {
        /* Unregistered until now, the range may have been touched since
         * the move, faulting in the slot's pages (still this block's, the
         * load comes later): drop what that brought, and leave a writable
         * trap as page__unmap_from does. */
        err = uffd__register_trap(addr, size);
        if (!err && madvise(addr, size, MADV_DONTNEED) != 0)
            err = -errno;
        if (!err && mprotect(addr, size, PROT_READ | PROT_WRITE) != 0)
            err = -errno;
        if (!err)
            vma->nstale++;
    }
    /* Without a trap, the empty mapping left is replaced whole. */
    if (!m->trap || err)
        page_rereserve(vma, addr, size);
    page_mapping_forget(m);
    return 0;
}

/* @victim gives its slot to a new page of the same size: park the
 * page-table entries of one of its mappings (read-only, as a clean page's
 * are) for that page too, or hand over those parked already.  Returns the
 * parking range, or NULL: the new page is then populated afresh.  Other
 * mappings are unmapped as usual. */
static void *page_park(Page *victim)
{
    RAM *ram = victim->fileh->ram;
    size_t size = victim->fileh->file->blksize;
    void *park = victim->parked;

    victim->parked = NULL;
    if (park && victim->parked_rw) {
        /* Loaded for a write that never mapped it: not worth an mprotect
         * on a path this rare. */
        ram__park_release(ram, park, size);
        park = NULL;
    }
    if (park || size < PAGE_MOVE_MIN || page_move_unsupported || list_empty(&victim->mappings))
        return park;
    PageMapping *m = list_entry(victim->mappings.next, PageMapping, in_page);
    if (m->writable || ram__park_get(ram, size, &park) != 0)
        return NULL;
    int err = page_unmap_parking(m, ram, park);
    if (err == -EINVAL)
        page_move_unsupported = 1;
    return err ? NULL : park;
}

/* Map @page at @addr of @vma by moving its parked entries there (made
 * writable if @writable).  0, or -errno with the entries given up and the
 * range reserved again (the caller then maps the slot as usual). */
static int page_unpark(Page *page, VMA *vma, void *addr, int writable)
{
    RAM *ram = page->fileh->ram;
    size_t size = page->fileh->file->blksize;
    void *park = page->parked;
    int err;

    page->parked = NULL;
    /* Entries as the mapping needs them before the move, not after:
     * writable entries must never reach a read-only mapping (writes would
     * not be tracked); and a system call writing there retries its fault
     * while a proxy serves it (uffd.c), so a retry that found the moved
     * entries read-only would fail the call with EFAULT. */
    if (writable != page->parked_rw &&
        mprotect(park, size, PROT_READ | (writable ? PROT_WRITE : 0)) != 0) {
        err = -errno;
        page->parked_rw = 0;
        ram__park_release(ram, park, size);
        return err;
    }
    page->parked_rw = 0;
    if (page_mremap_fixed(park, size, addr) == MAP_FAILED) {
        err = -errno;
        ram__park_release(ram, park, size);     /* a failed move puts them back */
        page_rereserve(vma, addr, size);
        return err;
    }
    ram__park_put(ram, park, size);
    if (!page->prepared)
        ram->nmoved++;
    return 0;
}

static PageMapping *page_mapping_in(Page *page, VMA *vma)
{
    ListHead *pos, *tmp;
    list_for_each_safe(pos, tmp, &page->mappings) {
        PageMapping *m = list_entry(pos, PageMapping, in_page);
        if (m->vma == vma)
            return m;
    }
    return NULL;
}

int page__map_into(Page *page, VMA *vma, int writable)
{
    size_t blksize = page->fileh->file->blksize;
    void *addr = (void *)page_addr_in(page, vma);
    int prot = PROT_READ | (writable ? PROT_WRITE : 0);
    PageMapping *m = page_mapping_in(page, vma);

    if (m) {
        if (m->writable == writable)
            return 0;
        if (mprotect(addr, blksize, prot) != 0)
            return -errno;
        m->writable = writable;
        return 0;
    }

    m = malloc(sizeof *m);
    if (!m)
        return -ENOMEM;
    /* Populate: the kernel fills all page-table entries now, several times
     * cheaper than one minor fault per OS page as the CPU walks the block. */
    int err;
    if (page->state == PAGE_DIRECT) {
        BUG_ON(writable);
        void *got = mmap(addr, blksize, PROT_READ, MAP_SHARED | MAP_FIXED | MAP_POPULATE,
                         page->direct_fd, (off_t)page->direct_off);
        err = got == MAP_FAILED ? -errno : 0;
        /* A failed MAP_FIXED may have left the range unmapped: restore the
         * reservation so the address stays ours. */
        if (err && vma__reserve(vma, addr, blksize) != 0)
            page_map_failed("re-reserve", -errno);
    } else {
        err = page->parked ? page_unpark(page, vma, addr, writable) : -ENOENT;
        if (err)
            err = ram__map_slot_at(page->fileh->ram, addr, page->ram_off, blksize, prot, 1);
    }
    if (err) {
        free(m);
        return err;
    }
    m->page = page;
    m->vma = vma;
    m->writable = writable;
    /* Until registered the mapping shows this page's own memory: right. */
    m->trap = vma->uffd && page->state != PAGE_DIRECT &&
              uffd__register_trap(addr, blksize) == 0;
    list_add(&m->in_page, &page->mappings);
    list_add(&m->in_vma, &vma->mappings);
    vma->nmappings++;
    return 0;
}

void page__protect_all(Page *page)
{
    size_t blksize = page->fileh->file->blksize;
    ListHead *pos, *tmp;
    list_for_each_safe(pos, tmp, &page->mappings) {
        PageMapping *m = list_entry(pos, PageMapping, in_page);
        if (!m->writable)
            continue;
        if (mprotect((void *)page_addr_in(page, m->vma), blksize, PROT_READ) != 0)
            page_map_failed("write-protect", -errno);
        m->writable = 0;
    }
}

void page__mark_dirty(Page *page)
{
    BUG_ON(page->state != PAGE_LOADED);
    RAM *ram = page->fileh->ram;
    list_del(&page->lru);
    ram->nclean--;
    page->state = PAGE_DIRTY;
    list_add_tail(&page->dirty, &page->fileh->dirty);
    page->fileh->ndirty++;
}

void page__mark_clean(Page *page)
{
    BUG_ON(page->state != PAGE_DIRTY);
    RAM *ram = page->fileh->ram;
    list_del(&page->dirty);
    if (--page->fileh->ndirty == 0)
        page->fileh->dirty_notified = 0;     /* the next dirtying is news again */
    page->state = PAGE_LOADED;
    list_add(&page->lru, &ram->lru);
    ram->nclean++;
}

void page__touch(Page *page)
{
    if (page->state == PAGE_LOADED || page->state == PAGE_DIRECT)
        list_move(&page->lru, &page->fileh->ram->lru);
}

/* Take @page out of every structure and free it, handing back its slot
 * offset; the slot itself stays allocated (the caller frees or reuses it). */
static size_t page_evict(Page *page)
{
    BigFileH *fileh = page->fileh;
    ListHead *pos, *tmp;

    BUG_ON(page->state == PAGE_LOADING || page->storing);
    if (page->parked)
        ram__park_release(fileh->ram, page->parked, fileh->file->blksize);
    list_for_each_safe(pos, tmp, &page->mappings)
        page__unmap_from(list_entry(pos, PageMapping, in_page));
    if (pagemap_get(&fileh->pagemap, page->blk) == page)
        pagemap_del(&fileh->pagemap, page->blk);
    if (page->state == PAGE_LOADED || page->state == PAGE_DIRECT) {
        list_del(&page->lru);
        fileh->ram->nclean--;
        if (page->state == PAGE_DIRECT)
            fileh->ram->direct -= fileh->file->blksize;
    } else {
        list_del(&page->dirty);
        if (--fileh->ndirty == 0)
            fileh->dirty_notified = 0;
    }
    size_t off = page->ram_off;
    free(page);
    return off;
}

void page__drop(Page *page)
{
    RAM *ram = page->fileh->ram;
    size_t size = page->fileh->file->blksize;
    int lost = page->window_lost, direct = page->state == PAGE_DIRECT;
    size_t off = page_evict(page);
    if (direct)
        return;     /* no slot: its memory is the OS page cache's */
    if (lost)
        ram__slot_retire(ram, off, size);
    else
        ram__slot_free(ram, off, size);
    if (ram->npages == 0)
        ram__prep_release_all(ram);     /* nothing left to prepare for */
}

size_t page__reclaim(RAM *ram, size_t n)
{
    return page__reclaim_except(ram, n, NULL);
}

size_t page__reclaim_except(RAM *ram, size_t n, Page *keep)
{
    size_t done = 0;
    while (done < n && !list_empty(&ram->lru)) {
        Page *victim = list_entry(ram->lru.prev, Page, lru);
        if (victim == keep)
            break;
        page__drop(victim);
        done++;
    }
    return done;
}

/* Reclaim LRU pages until @size more bytes fit in @ram.  With @off (the
 * caller wants a slot), a victim whose slot fits is handed over whole: *off
 * is set, *parked to its parking range or NULL (page_park), and 1
 * returned.  0: room made, no slot taken.  -ENOMEM: every page is dirty or
 * loading. */
static int page_make_room(RAM *ram, size_t size, size_t *off, void **parked)
{
    while (!ram__has_room(ram, size)) {
        /* Prepared slots go before any page (one of this size would have
         * been taken already, page__alloc). */
        if (ram__prep_release_one(ram))
            continue;
        if (list_empty(&ram->lru))
            return -ENOMEM;
        Page *victim = list_entry(ram->lru.prev, Page, lru);
        ram->nreclaimed++;
        if (off && victim->state == PAGE_LOADED && !victim->window_lost &&
            victim->fileh->file->blksize == size) {
            *parked = page_park(victim);
            *off = page_evict(victim);
            ram->nrecycled++;
            return 1;
        }
        page__drop(victim);
    }
    return 0;
}

static Page *page_new(BigFileH *fileh, blk_t blk, PageState state)
{
    Page *page = calloc(1, sizeof *page);
    if (!page)
        return NULL;
    page->state = state;
    page->fileh = fileh;
    page->blk   = blk;
    page->direct_fd = -1;
    list_init(&page->lru);
    list_init(&page->dirty);
    list_init(&page->mappings);
    return page;
}

int page__alloc_direct(BigFileH *fileh, blk_t blk, int fd, uint64_t off, Page **out)
{
    RAM *ram = fileh->ram;
    size_t size = fileh->file->blksize;
    int err = page_make_room(ram, size, NULL, NULL);
    if (err)
        return err;
    Page *page = page_new(fileh, blk, PAGE_DIRECT);
    if (!page)
        return -ENOMEM;
    page->direct_fd = fd;
    page->direct_off = off;
    err = pagemap_set(&fileh->pagemap, blk, page);
    if (err) {
        free(page);
        return err;
    }
    list_add(&page->lru, &ram->lru);
    ram->nclean++;
    ram->direct += size;
    *out = page;
    return 0;
}

int page__alloc(BigFileH *fileh, blk_t blk, Page **out)
{
    RAM *ram = fileh->ram;
    size_t size = fileh->file->blksize;
    size_t off = 0;
    void *parked = NULL;
    int err;

    Page *page = page_new(fileh, blk, PAGE_LOADING);
    if (!page)
        return -ENOMEM;
    /* A prepared slot is room already taken: first. */
    int prepared = ram__prep_take(ram, size, &off, &parked);
    int have_slot = prepared ? 1 : page_make_room(ram, size, &off, &parked);
    if (have_slot < 0) {
        free(page);
        return have_slot;
    }
    if (!have_slot) {
        err = ram__slot_alloc(ram, size, &off);
        if (err) {
            free(page);
            return err;
        }
    }

    page->ram_off   = off;
    page->fresh     = !have_slot;
    page->prepared  = prepared;
    page->parked_rw = prepared;
    page->parked    = parked;
    page->loader    = pthread_self();
    if (prepared)
        ram->nprepared++;
    if ((prepared || !have_slot) && !page_move_unsupported)
        ram__prep_want(ram, size);

    err = pagemap_set(&fileh->pagemap, blk, page);
    if (err) {
        if (parked)
            ram__park_release(ram, parked, size);
        ram__slot_free(ram, off, size);
        free(page);
        return err;
    }
    fileh->nloading++;
    ram->nloading++;
    *out = page;
    return 0;
}

/* Drop a page that was LOADING (load failed, or invalidated / handle closed
 * meanwhile).  The loader calls this after retaking the lock. */
void page__abandon_load(Page *page)
{
    BigFileH *fileh = page->fileh;
    BUG_ON(page->state != PAGE_LOADING);
    if (pagemap_get(&fileh->pagemap, page->blk) == page)
        pagemap_del(&fileh->pagemap, page->blk);
    if (page->parked)
        ram__park_release(fileh->ram, page->parked, fileh->file->blksize);
    if (page->window_lost)
        ram__slot_retire(fileh->ram, page->ram_off, fileh->file->blksize);
    else
        ram__slot_free(fileh->ram, page->ram_off, fileh->file->blksize);
    if (fileh->ram->npages == 0)
        ram__prep_release_all(fileh->ram);
    fileh->nloading--;
    fileh->ram->nloading--;
    free(page);
}

/* The load succeeded: LOADING -> LOADED, most recently used. */
void page__finish_load(Page *page)
{
    BigFileH *fileh = page->fileh;
    BUG_ON(page->state != PAGE_LOADING);
    page->state = PAGE_LOADED;
    list_add(&page->lru, &fileh->ram->lru);
    fileh->ram->nclean++;
    fileh->nloading--;
    fileh->ram->nloading--;
    fileh->nloadblk++;
}

int page__buf_get(Page *page, int writable, void **buf, int *own)
{
    RAM *ram = page->fileh->ram;
    size_t size = page->fileh->file->blksize;

    /* A page that took over a reclaimed page's entries (parked) loads
     * through them: they map its slot already, so loadblk's writes fault
     * nothing, where the window's entries were dropped after their last
     * use.  Made what the mapping needs before they move into a VMA
     * (page__buf_put, page_unpark). */
    if (writable && page->parked &&
        (page->parked_rw || mprotect(page->parked, size, PROT_READ | PROT_WRITE) == 0)) {
        page->parked_rw = 1;
        *buf = page->parked;
        *own = PAGE_BUF_PARKED;
        return 0;
    }
    void *p = page->window_lost ? NULL : ram__window(ram, page->ram_off, size);
    if (p) {
        *buf = p;
        *own = 0;
        return 0;
    }
    *own = 1;
    return ram__map_slot(ram, page->ram_off, size,
                         PROT_READ | (writable ? PROT_WRITE : 0), 1, buf);
}

int page__buf_put(Page *page, void *buf, int own, int r)
{
    size_t size = page->fileh->file->blksize;
    if (own == PAGE_BUF_PARKED) {
        if (r == VIRT_BUF_KEPT || r == VIRT_BUF_KEPT_EIO) {
            page->parked = NULL;        /* the callee's addresses now */
            page->parked_rw = 0;
        } else if (!page->load_for_write) {
            /* Read-only for a read fault's mapping, now: page_unpark
             * would have to otherwise. */
            if (mprotect(buf, size, PROT_READ) != 0) {
                page->parked = NULL;
                ram__park_release(page->fileh->ram, buf, size);
            }
            page->parked_rw = 0;
        }
        /* else writable still, for the write fault's mapping: two
         * mprotect calls of 512 entries saved per write-faulted block */
    } else if (r == VIRT_BUF_KEPT || r == VIRT_BUF_KEPT_EIO) {
        if (!own)
            page->window_lost = 1;
    } else if (own) {
        BUG_ON(munmap(buf, size) != 0);
    } else {
        /* Drop the window's page-table entries (not the memory): a page
         * mapped twice would count twice in the process's RSS, which users
         * and the OOM killer read as our memory use. */
        (void)madvise(buf, size, MADV_DONTNEED);
    }
    if (r == VIRT_BUF_KEPT_EIO)
        return -EIO;
    return r < 0 ? r : 0;
}

/* ------------------------------------------------- RAM, page-aware parts */

size_t ram_reclaim(RAM *ram, size_t max_pages)
{
    virt_lock();
    ram__prep_release_all(ram);
    size_t n = page__reclaim(ram, max_pages);
    virt_unlock();
    return n;
}

int ram_set_capacity(RAM *ram, size_t capacity)
{
    if (capacity < virt_os_pagesize())
        return -EINVAL;
    virt_lock();
    ram->capacity = capacity;
    while (ram->used + ram->direct + ram->prepared > ram->capacity && ram__prep_release_one(ram))
        ;
    while (ram->used + ram->direct > ram->capacity && !list_empty(&ram->lru))
        page__drop(list_entry(ram->lru.prev, Page, lru));
    virt_unlock();
    return 0;
}
