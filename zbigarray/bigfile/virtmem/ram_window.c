/* The RAM window: one read-write MAP_SHARED mapping of a RAM's whole memfd,
 * reserved once and extended as the memfd grows.
 *
 * Why: storeblk reads a page, and loadblk fills a page whose slot reuses a
 * reclaimed page's memory, through an alias that no VMA shows (DESIGN.md:
 * never load in place); a slot without memory loads through a load buffer
 * instead (loadbuf.c).  Mapping and unmapping an alias per call costs two mm
 * syscalls plus a TLB shootdown, about half of a 4 KiB fault; through the
 * window the alias already exists.
 *
 * The window reserves address space only (PROT_NONE, no memory) beyond what
 * the memfd holds.  A slot past the reserved size falls back to a one-off
 * mapping (ram__map_slot), so the window is an optimisation, never a limit.
 * Runs under the virtmem lock. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>

#include "virtmem_int.h"

/* Address space to reserve: room for the memfd to outgrow the capacity
 * (slots of several sizes, retired slots) several times over.  Reserving
 * costs nothing but address space, of which x86-64 has 128 TiB. */
static size_t ram_window_reserve_size(const RAM *ram)
{
    size_t want = 4 * ram->capacity + ((size_t)1 << 30);
    size_t max = (size_t)1 << 42;   /* 4 TiB */
    if (ram->capacity > max / 4 || want > max)
        want = max;
    return want;
}

void *ram__window(RAM *ram, size_t off, size_t size)
{
    if (!ram->window) {
        size_t len = ram_window_reserve_size(ram);
        void *addr = mmap(NULL, len, PROT_NONE,
                          MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (addr == MAP_FAILED)
            return NULL;
        ram->window = addr;
        ram->window_size = len;
        ram->window_mapped = 0;
    }
    if (off + size > ram->window_size)
        return NULL;
    if (off + size > ram->window_mapped) {
        /* Map everything the memfd holds now, not just this slot: one call
         * per growth spurt rather than per slot. */
        size_t upto = ram->memfd_size < ram->window_size ? ram->memfd_size : ram->window_size;
        void *at = ram->window + ram->window_mapped;
        void *got = mmap(at, upto - ram->window_mapped, PROT_READ | PROT_WRITE,
                         MAP_SHARED | MAP_FIXED, ram->memfd, (off_t)ram->window_mapped);
        if (got == MAP_FAILED)
            return NULL;
        ram->window_mapped = upto;
    }
    return ram->window + off;
}

void ram__window_fini(RAM *ram)
{
    /* With part of the range owned by a callee (VIRT_BUF_KEPT), unmapping
     * the whole window would pull memory from under its buffer: leave the
     * reservation (address space only; the memfd's pages are all punched by
     * now). */
    if (ram->window && !ram->window_kept)
        BUG_ON(munmap(ram->window, ram->window_size) != 0);
    ram->window = NULL;
    ram->window_size = ram->window_mapped = 0;
}

void ram__slot_retire(RAM *ram, size_t off, size_t size)
{
    int r;
    BUG_ON(ram->used < size || ram->npages == 0);
    do {
        r = fallocate(ram->memfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                      (off_t)off, (off_t)size);
    } while (r < 0 && errno == EINTR);
    /* A failed punch only delays giving the memory back (memfd close). */
    ram->window_kept = 1;
    ram->used -= size;
    ram->npages--;
}
