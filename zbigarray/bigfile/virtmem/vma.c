/* VMAs and their registry.
 *
 * The registry is a sorted array of all live VMAs of the process: the fault
 * handler finds the VMA of an address by binary search, O(log n).  Insertion
 * and removal move pointers (O(n) memmove of a few bytes each), which is far
 * cheaper than the mmap/munmap they accompany. */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>
#include <sys/mman.h>

#include "virtmem_int.h"

static VMA   **vma_registry;
static size_t  vma_nreg, vma_capreg;

/* Index of the first VMA whose addr_start > addr. */
static size_t vma_upper_bound(uintptr_t addr)
{
    size_t lo = 0, hi = vma_nreg;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (vma_registry[mid]->addr_start <= addr)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

int vma__register(VMA *vma)
{
    if (vma_nreg == vma_capreg) {
        size_t cap = vma_capreg ? 2 * vma_capreg : 64;
        VMA **reg = realloc(vma_registry, cap * sizeof *reg);
        if (!reg)
            return -ENOMEM;
        vma_registry = reg;
        vma_capreg = cap;
    }
    size_t i = vma_upper_bound(vma->addr_start);
    memmove(&vma_registry[i + 1], &vma_registry[i], (vma_nreg - i) * sizeof *vma_registry);
    vma_registry[i] = vma;
    vma_nreg++;
    return 0;
}

void vma__unregister(VMA *vma)
{
    size_t i = vma_upper_bound(vma->addr_start);
    BUG_ON(i == 0 || vma_registry[i - 1] != vma);
    i--;
    memmove(&vma_registry[i], &vma_registry[i + 1], (vma_nreg - i - 1) * sizeof *vma_registry);
    vma_nreg--;
}

VMA *vma__lookup(uintptr_t addr)
{
    size_t i = vma_upper_bound(addr);
    if (i == 0)
        return NULL;
    VMA *vma = vma_registry[i - 1];
    return addr < vma->addr_stop ? vma : NULL;
}

int fileh_mmap(VMA **out, BigFileH *fileh, blk_t pgoffset, blk_t pglen)
{
    size_t blksize = fileh->file->blksize;
    int err;

    if (pglen == 0)
        return -EINVAL;
    if (pgoffset > UINT64_MAX - pglen)
        return -EOVERFLOW;
    /* The address range must fit in ptrdiff_t (and so in a buffer length). */
    if (pglen > (uint64_t)PTRDIFF_MAX / blksize)
        return -EOVERFLOW;
    size_t len = (size_t)pglen * blksize;

    err = virt_install_fault_handler();
    if (err)
        return err;

    /* Registered with the userfaultfd, empty memory (uffd.c); or, without
     * one (or when the kernel refuses this range: strict overcommit counts
     * writable private address space), an inaccessible reservation.
     * Blocks of whole page tables start on one: recycling then moves their
     * page tables whole (page.c). */
    int uffd = uffd__active();
    int aligned = blksize % VIRT_PT_SPAN == 0;
    void *addr = MAP_FAILED;
    if (uffd) {
        addr = aligned ? virt__mmap_aligned(len, PROT_READ | PROT_WRITE) :
               mmap(NULL, len, PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (addr != MAP_FAILED && uffd__register(addr, len) != 0) {
            BUG_ON(munmap(addr, len) != 0);
            addr = MAP_FAILED;
        }
        uffd = addr != MAP_FAILED;
    }
    if (addr == MAP_FAILED)
        addr = aligned ? virt__mmap_aligned(len, PROT_NONE) :
               mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (addr == MAP_FAILED)
        return -errno;

    VMA *vma = calloc(1, sizeof *vma);
    if (!vma) {
        munmap(addr, len);
        return -ENOMEM;
    }
    vma->addr_start = (uintptr_t)addr;
    vma->addr_stop  = (uintptr_t)addr + len;
    vma->pgoffset   = pgoffset;
    vma->pglen      = pglen;
    vma->fileh      = fileh;
    vma->uffd       = uffd;
    list_init(&vma->mappings);
    list_init(&vma->in_fileh);

    virt_lock();
    err = vma__register(vma);
    if (!err) {
        list_add_tail(&vma->in_fileh, &fileh->vmas);
        fileh->nvma++;
    }
    virt_unlock();

    if (err) {
        munmap(addr, len);
        free(vma);
        return err;
    }
    *out = vma;
    return 0;
}

static blk_t vma_mapping_blk(const ListHead *node)
{
    return list_entry(node, PageMapping, in_vma)->page->blk;
}

/* Merge two NULL-terminated chains (linked by ->next) sorted by block. */
static ListHead *vma_merge_chains(ListHead *a, ListHead *b)
{
    ListHead head, *tail = &head;
    while (a && b) {
        ListHead **least = vma_mapping_blk(a) <= vma_mapping_blk(b) ? &a : &b;
        tail->next = *least;
        tail = *least;
        *least = (*least)->next;
    }
    tail->next = a ? a : b;
    return head.next;
}

static ListHead *vma_sort_chain(ListHead *chain)
{
    if (!chain || !chain->next)
        return chain;
    ListHead *slow = chain, *fast = chain->next;
    while (fast && fast->next) {
        slow = slow->next;
        fast = fast->next->next;
    }
    ListHead *second = slow->next;
    slow->next = NULL;
    return vma_merge_chains(vma_sort_chain(chain), vma_sort_chain(second));
}

/* Sort @vma's mappings by block, in place: a sweep runs when the process
 * may be out of map entries, where even malloc may fail. */
static void vma_sort_mappings(VMA *vma)
{
    ListHead *h = &vma->mappings;
    if (list_empty(h))
        return;
    h->prev->next = NULL;
    ListHead *chain = vma_sort_chain(h->next);
    ListHead *prev = h;
    for (ListHead *n = chain; n; n = n->next) {
        n->prev = prev;
        prev->next = n;
        prev = n;
    }
    prev->next = h;
    h->prev = prev;
}

void vma__sweep(VMA *vma)
{
    size_t blksize = vma->fileh->file->blksize;
    if (!vma->uffd || fault__vma_has_standins(vma))
        return;     /* stand-ins are mapped too; rare: sweep another time */
    vma_sort_mappings(vma);
    blk_t from = 0;
    ListHead *pos = vma->mappings.next;
    for (;;) {
        int last = pos == &vma->mappings;
        blk_t to = last ? vma->pglen : vma_mapping_blk(pos) - vma->pgoffset;
        void *addr = (void *)(vma->addr_start + (uintptr_t)from * blksize);
        size_t len = (size_t)(to - from) * blksize;
        /* Failing (out of map entries even for the inaccessible fallback),
         * a run keeps its traps, which are correct, only many. */
        if (to > from && uffd__replace_empty(addr, len) != 0 &&
            vma__rereserve_at_limit(vma, addr, len) != 0)
            return;
        if (last)
            break;
        from = to + 1;
        pos = pos->next;
    }
    vma->nstale = 0;
}

void vma__destroy(VMA *vma)
{
    ListHead *pos, *tmp;

    fault__forget_vma(vma);
    list_for_each_safe(pos, tmp, &vma->mappings) {
        PageMapping *m = list_entry(pos, PageMapping, in_vma);
        list_del(&m->in_page);
        list_del(&m->in_vma);
        free(m);
    }
    /* The whole range goes at once: no need to re-reserve each page first.
     * munmap of a range we own only fails on a broken invariant. */
    BUG_ON(munmap((void *)vma->addr_start, vma->addr_stop - vma->addr_start) != 0);
    vma__unregister(vma);
    list_del(&vma->in_fileh);
    vma->fileh->nvma--;
    free(vma);
}

void vma_unmap(VMA *vma)
{
    virt_lock();
    vma__destroy(vma);
    virt_unlock();
}

uintptr_t vma_addr_start(const VMA *vma) { return vma->addr_start; }
uintptr_t vma_addr_stop(const VMA *vma)  { return vma->addr_stop; }
blk_t     vma_pgoffset(const VMA *vma)   { return vma->pgoffset; }
blk_t     vma_pglen(const VMA *vma)      { return vma->pglen; }
size_t    vma_pagesize(const VMA *vma)   { return vma->fileh->file->blksize; }
BigFileH *vma_fileh(const VMA *vma)      { return vma->fileh; }
