/* RAM: page memory on one memfd (see DESIGN.md, "RAM").
 *
 * The memfd is carved into slots, each the block size of the file handle
 * whose page it holds.  A slot's offset names its memory, so the same
 * physical page can be mapped at several addresses at once (one per VMA,
 * plus the alias that loadblk fills, see ram_window.c).  A freed slot has its
 * memory punched out and its offset kept on a free list of its size; the
 * memfd only grows, a few slots ahead of need (see ram_grow_size).
 *
 * This file owns the slot bookkeeping and the mmap calls on the memfd.  Which
 * pages to drop under pressure (LRU, reclaim, capacity changes) is page.c's.
 * It also keeps the parking ranges page.c moves a recycled page's page
 * tables to while the page loads: a few per RAM, reused, as reserving one
 * costs three system calls (aligned to a page table's span).
 *
 * Locking: ram_new, ram_default_capacity and ram_parse_size touch nothing
 * shared.  Every other public function takes the virtmem lock; the ram__
 * internals require it held by the caller, except the mmap helpers
 * (ram__map_slot*, virt__reserve_at, virt__mmap_aligned), which only read
 * ram->memfd and may run with or without it.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE     /* memfd_create, fallocate, MAP_POPULATE */
#endif

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "virtmem_int.h"

/* The process-wide RAM (ram_default).  Created once under the virtmem lock
 * and never freed: it holds a reference of its own. */
static RAM *ram_default_ram;

ListHead ram__all = { &ram__all, &ram__all };

/* ------------------------------------------------------------ public API */

/* ram_new without the registration in ram__all (which needs the lock). */
static int ram_create(RAM **out, size_t capacity)
{
    RAM *ram;
    int fd;

    if (capacity == 0)
        capacity = ram_default_capacity();
    if (capacity < virt_os_pagesize())
        return -EINVAL;

    ram = calloc(1, sizeof(*ram));
    if (ram == NULL)
        return -ENOMEM;
    fd = memfd_create("zbigarray-ram", MFD_CLOEXEC);
    if (fd < 0) {
        int err = -errno;
        free(ram);
        return err;
    }

    ram->refcnt = 1;
    ram->memfd = fd;
    ram->capacity = capacity;
    list_init(&ram->lru);
    virt__atfork_init();
    *out = ram;
    return 0;
}

int ram_new(RAM **out, size_t capacity)
{
    int err = ram_create(out, capacity);
    if (err)
        return err;
    virt_lock();
    list_add(&(*out)->in_all, &ram__all);
    virt_unlock();
    return 0;
}

void ram_incref(RAM *ram)
{
    virt_lock();
    BUG_ON(ram->refcnt <= 0);
    ram->refcnt++;
    virt_unlock();
}

void ram_decref(RAM *ram)
{
    int last;

    virt_lock();
    BUG_ON(ram->refcnt <= 0);
    last = --ram->refcnt == 0;
    if (last)
        ram__free(ram);
    virt_unlock();
}

int ram_default(RAM **out)
{
    int err = 0;

    virt_lock();
    if (ram_default_ram == NULL) {
        const char *env = getenv("ZBIGARRAY_RAM_MAX");
        size_t capacity = 0;    /* 0: ram_new picks ram_default_capacity() */

        if (env != NULL) {
            err = ram_parse_size(env, &capacity);
            /* "0" or "12" would silently mean "the default" or fail later
             * with a puzzling error: refuse them here, naming the variable's
             * value as unusable. */
            if (err == 0 && capacity < virt_os_pagesize())
                err = -EINVAL;
        }
        if (err == 0)
            err = ram_create(&ram_default_ram, capacity);
        if (err == 0)
            list_add(&ram_default_ram->in_all, &ram__all);
    }
    if (err == 0)
        *out = ram_default_ram;
    virt_unlock();
    return err;
}

/* --------------------------------------------- default capacity, cgroups */

/* Why cgroups: in a container the memory the process may use is the cgroup's
 * limit, not the host's RAM.  A process in a 2 GiB container on a 64 GiB host
 * must not default to 16 GiB of page memory and get OOM-killed; it gets a
 * quarter of 2 GiB.  Whatever cannot be read or parsed below simply sets no
 * limit: the default capacity never fails. */

/* The limit in cgroup file @path (decimal bytes, one line), or UINT64_MAX if
 * it sets none: missing, unreadable, "max" (v2: no limit) or garbage.  v1's
 * "no limit" is a huge number (9223372036854771712) that the min with
 * physical memory discards, so it needs no case of its own. */
static uint64_t cgroup_read_limit(const char *path)
{
    char buf[32];
    size_t len = 0;
    uint64_t v = 0;
    ssize_t n = 0;
    size_t i;
    int fd;

    do
        fd = open(path, O_RDONLY | O_CLOEXEC);
    while (fd < 0 && errno == EINTR);
    if (fd < 0)
        return UINT64_MAX;
    while (len < sizeof buf - 1) {
        n = read(fd, buf + len, sizeof buf - 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        len += (size_t)n;
    }
    /* Read-only: a failed close loses nothing. */
    (void)close(fd);
    if (n < 0 || len == sizeof buf - 1)
        return UINT64_MAX;      /* read error, or too long to be a limit */

    if (len > 0 && buf[len - 1] == '\n')
        len--;
    if (len == 0)
        return UINT64_MAX;
    for (i = 0; i < len; i++) {
        unsigned d = (unsigned)(buf[i] - '0');

        if (d > 9 || v > (UINT64_MAX - d) / 10)
            return UINT64_MAX;  /* "max", garbage, or beyond 64 bits */
        v = v * 10 + d;
    }
    return v;
}

/* The smallest @file limit of cgroup @cgpath (as in /proc/self/cgroup,
 * starting with '/') under @dir and of each of its ancestors: a parent's
 * limit bounds its children too.  Walking up also covers a container that
 * sees its own cgroup mounted as @dir while /proc/self/cgroup names it by the
 * host's path (v1 without a cgroup namespace): the host path is missing under
 * @dir, and the walk ends at @dir itself, the container's limit. */
static uint64_t cgroup_walk_limit(const char *dir, const char *cgpath,
                                  const char *file)
{
    char path[PATH_MAX], cg[PATH_MAX];
    uint64_t min = UINT64_MAX, v;
    size_t len = strlen(cgpath);
    int n;

    if (cgpath[0] != '/' || len >= sizeof cg)
        return UINT64_MAX;
    memcpy(cg, cgpath, len + 1);
    for (;;) {
        while (len > 0 && cg[len - 1] == '/')
            cg[--len] = '\0';  /* "/" is the root: "" here */
        n = snprintf(path, sizeof path, "%s%s/%s", dir, cg, file);
        if (n > 0 && (size_t)n < sizeof path) {
            v = cgroup_read_limit(path);
            if (v < min)
                min = v;
        }
        if (len == 0)
            return min;
        while (len > 0 && cg[len - 1] != '/')
            len--;
        cg[len] = '\0';
    }
}

/* Does comma-separated @list name @name? */
static int list_has(const char *list, size_t listlen, const char *name)
{
    size_t namelen = strlen(name), i = 0, j;

    while (i < listlen) {
        for (j = i; j < listlen && list[j] != ','; j++)
            ;
        if (j - i == namelen && memcmp(list + i, name, namelen) == 0)
            return 1;
        i = j + 1;
    }
    return 0;
}

uint64_t ram__cgroup_limit(const char *proc_cgroup, const char *root)
{
    char dir[PATH_MAX];
    uint64_t min = UINT64_MAX, v;
    char *line = NULL, *c1, *c2;
    size_t cap = 0;
    ssize_t len;
    FILE *f;

    f = fopen(proc_cgroup, "re");
    if (f == NULL)
        return UINT64_MAX;
    /* Lines "id:controllers:path".  A read error ends the loop like EOF: the
     * limits found so far are still real limits. */
    while ((len = getline(&line, &cap, f)) > 0) {
        if (line[len - 1] == '\n')
            line[--len] = '\0';
        c1 = strchr(line, ':');
        c2 = c1 ? strchr(c1 + 1, ':') : NULL;
        if (c2 == NULL)
            continue;
        v = UINT64_MAX;
        if (c1 - line == 1 && line[0] == '0' && c2 == c1 + 1) {
            /* v2 (unified): "0::/path", limits in <root>/<path> */
            v = cgroup_walk_limit(root, c2 + 1, "memory.max");
        } else if (list_has(c1 + 1, (size_t)(c2 - c1 - 1), "memory")) {
            /* v1: the memory controller's own hierarchy */
            int n = snprintf(dir, sizeof dir, "%s/memory", root);
            if (n > 0 && (size_t)n < sizeof dir)
                v = cgroup_walk_limit(dir, c2 + 1, "memory.limit_in_bytes");
        }
        if (v < min)
            min = v;
    }
    free(line);
    (void)fclose(f);    /* read-only: nothing to lose */
    return min;
}

size_t ram__default_capacity_for(uint64_t phys, uint64_t cgroup_limit)
{
    uint64_t pagesize = virt_os_pagesize();
    uint64_t total = phys < cgroup_limit ? phys : cgroup_limit;

    total /= 4;
    if (total > SIZE_MAX)
        return SIZE_MAX;
    if (total < pagesize)
        return (size_t)pagesize;
    return (size_t)total;
}

size_t ram_default_capacity(void)
{
    long npages = sysconf(_SC_PHYS_PAGES);
    long pagesize = sysconf(_SC_PAGESIZE);
    /* sysconf cannot fail for these on Linux; should it, take 4 GiB (a
     * 1 GiB default), a safe guess for any machine this runs on. */
    uint64_t phys = npages > 0 && pagesize > 0 ?
                    (uint64_t)npages * (uint64_t)pagesize : (uint64_t)4 << 30;

    return ram__default_capacity_for(
        phys, ram__cgroup_limit("/proc/self/cgroup", "/sys/fs/cgroup"));
}

/* Case-insensitive: does @s equal @lit (lowercase)? */
static int str_eq_nocase(const char *s, const char *lit)
{
    for (; *s != '\0' && *lit != '\0'; s++, lit++) {
        if (tolower((unsigned char)*s) != *lit)
            return 0;
    }
    return *s == '\0' && *lit == '\0';
}

int ram_parse_size(const char *s, size_t *out)
{
    uint64_t n = 0;
    unsigned shift = 0;
    const char *p = s;

    if (s == NULL || !isdigit((unsigned char)*p))
        return -EINVAL;     /* empty, sign, space, garbage */
    for (; isdigit((unsigned char)*p); p++) {
        unsigned d = (unsigned)(*p - '0');
        if (n > (UINT64_MAX - d) / 10)
            return -ERANGE;
        n = n * 10 + d;
    }

    switch (tolower((unsigned char)*p)) {
    case 'k': shift = 10; p++; break;
    case 'm': shift = 20; p++; break;
    case 'g': shift = 30; p++; break;
    case 't': shift = 40; p++; break;
    default:  break;
    }
    /* What may follow: nothing, "B", or (after a unit) "iB". */
    if (!(*p == '\0' || str_eq_nocase(p, "b") ||
          (shift != 0 && str_eq_nocase(p, "ib"))))
        return -EINVAL;

    if (n > (UINT64_MAX >> shift) || (n << shift) > SIZE_MAX)
        return -ERANGE;
    *out = (size_t)(n << shift);
    return 0;
}

void ram_get_stats(RAM *ram, RAMStats *st)
{
    virt_lock();
    st->capacity = ram->capacity;
    st->used = ram->used;
    st->npages = ram->npages;
    st->nclean = ram->nclean;
    st->direct = ram->direct;
    st->memfd_size = ram->memfd_size;
    st->nreclaimed = ram->nreclaimed;
    st->nrecycled = ram->nrecycled;
    st->nmoved = ram->nmoved;
    st->prepared = ram->prepared;
    st->nprepared = ram->nprepared;
    virt_unlock();
}

/* ------------------------------------------------------------- internals */

/* The free list of slots of @size; created empty if @create.  NULL if there
 * is none (or no memory to create it). */
static RAMFreeSlots *ram_freelist(RAM *ram, size_t size, int create)
{
    RAMFreeSlots *arr, *fl;
    size_t i;

    /* One entry per block size in use: a handful at most, a scan is best. */
    for (i = 0; i < ram->nfree; i++) {
        if (ram->free[i].slotsize == size)
            return &ram->free[i];
    }
    if (!create)
        return NULL;
    arr = realloc(ram->free, (ram->nfree + 1) * sizeof(*ram->free));
    if (arr == NULL)
        return NULL;
    ram->free = arr;
    fl = &ram->free[ram->nfree++];
    memset(fl, 0, sizeof(*fl));
    fl->slotsize = size;
    return fl;
}

/* Room for at least @need offsets in @fl, growing geometrically (amortised
 * O(1) per slot).  -ENOMEM leaves @fl as it was. */
static int ram_freelist_reserve(RAMFreeSlots *fl, size_t need)
{
    size_t newcap, *offs;

    if (fl->cap >= need)
        return 0;
    newcap = fl->cap < 16 ? 16 : fl->cap;
    while (newcap < need) {
        if (newcap > SIZE_MAX / 2 / sizeof(*offs))
            return -ENOMEM;
        newcap *= 2;
    }
    offs = realloc(fl->offs, newcap * sizeof(*offs));
    if (offs == NULL)
        return -ENOMEM;
    fl->offs = offs;
    fl->cap = newcap;
    return 0;
}

/* How much to grow the memfd by for a slot of @size: a quarter of what it
 * holds, at most 16 MiB, whole slots, at least one.  ftruncate costs about
 * as much as a tenth of a 4 KiB fault and the new range holds no memory
 * until used, so growing ahead saves one syscall per fresh slot. */
static size_t ram_grow_size(const RAM *ram, size_t size)
{
    size_t grow = ram->memfd_size / 4;

    if (grow > ((size_t)16 << 20))
        grow = (size_t)16 << 20;
    grow -= grow % size;
    return grow < size ? size : grow;
}

int ram__slot_alloc(RAM *ram, size_t size, size_t *off)
{
    RAMFreeSlots *fl;
    size_t grow, newsize, o;
    int err;

    BUG_ON(size == 0 || size % virt_os_pagesize() != 0);

    fl = ram_freelist(ram, size, 1);
    if (fl == NULL)
        return -ENOMEM;
    if (fl->n == 0) {
        grow = ram_grow_size(ram, size);
        if (grow > (size_t)INT64_MAX - ram->memfd_size)
            grow = size;
        if (grow > (size_t)INT64_MAX - ram->memfd_size)
            return -EFBIG;
        newsize = ram->memfd_size + grow;
        err = ram_freelist_reserve(fl, grow / size);
        if (err < 0)
            return err;
        if (ftruncate(ram->memfd, (off_t)newsize) < 0)
            return -errno;
        /* The new range becomes free slots (holding no memory, like punched
         * ones), pushed so that the lowest offset is taken first. */
        for (o = newsize - size; ; o -= size) {
            fl->offs[fl->n++] = o;
            if (o == ram->memfd_size)
                break;
        }
        ram->memfd_size = newsize;
    }
    *off = fl->offs[--fl->n];
    ram->used += size;
    ram->npages++;
    return 0;
}

void ram__slot_free(RAM *ram, size_t off, size_t size)
{
    RAMFreeSlots *fl;
    int r;

    BUG_ON(ram->used < size || ram->npages == 0);
    BUG_ON(off % virt_os_pagesize() != 0 || off + size > ram->memfd_size);

    do {
        r = fallocate(ram->memfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                      (off_t)off, (off_t)size);
    } while (r < 0 && errno == EINTR);
    /* tmpfs (a memfd) supports hole punching, so this does not fail; were it
     * to, the slot stays correct and reusable, only its memory is not given
     * back until the slot is reused.  Nothing better to do in a void path. */

    /* Keep the offset for reuse.  With no memory to grow the list, the
     * offset is abandoned instead: that loses a range of the memfd's size,
     * which costs no memory (the hole is punched), never a page of RAM. */
    fl = ram_freelist(ram, size, 1);
    if (fl != NULL && ram_freelist_reserve(fl, fl->n + 1) == 0)
        fl->offs[fl->n++] = off;
    ram->used -= size;
    ram->npages--;
}

int ram__has_room(const RAM *ram, size_t size)
{
    size_t inuse = ram->used + ram->direct + ram->prepared;
    return size <= ram->capacity && inuse <= ram->capacity - size;
}

int ram__map_slot(RAM *ram, size_t off, size_t size, int prot, int populate,
                  void **out)
{
    void *addr = mmap(NULL, size, prot,
                      MAP_SHARED | (populate ? MAP_POPULATE : 0),
                      ram->memfd, (off_t)off);

    if (addr == MAP_FAILED)
        return -errno;
    *out = addr;
    return 0;
}

int ram__map_slot_at(RAM *ram, void *addr, size_t off, size_t size, int prot,
                     int populate)
{
    void *got = mmap(addr, size, prot,
                     MAP_SHARED | MAP_FIXED | (populate ? MAP_POPULATE : 0),
                     ram->memfd, (off_t)off);

    if (got == MAP_FAILED)
        return -errno;
    BUG_ON(got != addr);    /* MAP_FIXED maps exactly there or fails */
    return 0;
}

int virt__reserve_at(void *addr, size_t len)
{
    void *got = mmap(addr, len, PROT_NONE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED,
                     -1, 0);

    if (got == MAP_FAILED)
        return -errno;
    BUG_ON(got != addr);
    return 0;
}

void *virt__mmap_aligned(size_t len, int prot)
{
    int flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE;
    if (len % VIRT_PT_SPAN != 0)
        return mmap(NULL, len, prot, flags, -1, 0);
    char *got = mmap(NULL, len + VIRT_PT_SPAN, prot, flags, -1, 0);
    if (got == MAP_FAILED)
        return MAP_FAILED;
    char *at = (char *)(((uintptr_t)got + VIRT_PT_SPAN - 1) & ~(uintptr_t)(VIRT_PT_SPAN - 1));
    size_t head = (size_t)(at - got), tail = VIRT_PT_SPAN - head;
    /* Trimming splits the mapping, which the kernel may refuse at the
     * map-entry limit: then an unaligned range, which only moves slower.
     * What is unmapped whole is wholly ours (a trimmed head may be someone
     * else's already). */
    if (head && munmap(got, head) != 0) {
        BUG_ON(munmap(got, len + VIRT_PT_SPAN) != 0);
        return mmap(NULL, len, prot, flags, -1, 0);
    }
    if (munmap(at + len, tail) != 0) {
        BUG_ON(munmap(at, len + tail) != 0);
        return mmap(NULL, len, prot, flags, -1, 0);
    }
    return at;
}

int ram__park_get(RAM *ram, size_t size, void **out)
{
    for (size_t i = ram->nparks; i-- > 0; ) {
        if (ram->parks[i].size == size) {
            *out = ram->parks[i].addr;
            ram->parks[i] = ram->parks[--ram->nparks];
            return 0;
        }
    }
    void *addr = virt__mmap_aligned(size, PROT_NONE);
    if (addr == MAP_FAILED)
        return -errno;
    *out = addr;
    return 0;
}

void ram__park_put(RAM *ram, void *addr, size_t size)
{
    if (ram->nparks == RAM_MAX_PARKS) {
        /* Full (more pages were parked at once than ever before): keep the
         * newest few; a range wholly ours unmaps. */
        BUG_ON(munmap(ram->parks[0].addr, ram->parks[0].size) != 0);
        ram->parks[0] = ram->parks[--ram->nparks];
    }
    ram->parks[ram->nparks].addr = addr;
    ram->parks[ram->nparks].size = size;
    ram->nparks++;
}

void ram__park_release(RAM *ram, void *addr, size_t size)
{
    if (madvise(addr, size, MADV_DONTNEED) != 0) {
        BUG_ON(munmap(addr, size) != 0);    /* then not reused at all */
        return;
    }
    ram__park_put(ram, addr, size);
}

/* Unmap the parking ranges (@ram is going, or is a forked child's, whose
 * ranges show its parent's memfd). */
static void ram_parks_fini(RAM *ram)
{
    for (size_t i = 0; i < ram->nparks; i++)
        BUG_ON(munmap(ram->parks[i].addr, ram->parks[i].size) != 0);
    ram->nparks = 0;
}

/* With or without the virtmem lock: nothing else refers to @ram any more. */
void ram__free(RAM *ram)
{
    size_t i;

    BUG_ON(ram->npages != 0 || ram->refcnt != 0);
    list_del(&ram->in_all);
    ram__prep_fini(ram);
    ram_parks_fini(ram);
    ram__window_fini(ram);      /* before the memfd it maps goes */
    /* close() of a memfd has no data to flush; an error here (EINTR, EIO)
     * still releases the descriptor on Linux, so there is nothing to retry. */
    (void)close(ram->memfd);
    ram->memfd = -1;
    for (i = 0; i < ram->nfree; i++)
        free(ram->free[i].offs);
    free(ram->free);
    ram->free = NULL;
    ram->nfree = 0;
    free(ram);
}

int ram__reset_in_child(RAM *ram)
{
    size_t i;

    /* The window and the memfd are the parent's memory: let go of both
     * without punching anything (that would destroy the parent's pages). */
    if (ram->window && !ram->window_kept)
        (void)munmap(ram->window, ram->window_size);
    ram->window = NULL;
    ram->window_size = ram->window_mapped = 0;
    ram->window_kept = 0;
    ram__prep_forget_in_child(ram);
    ram_parks_fini(ram);
    (void)close(ram->memfd);
    ram->memfd = memfd_create("zbigarray-ram", MFD_CLOEXEC);
    ram->memfd_size = 0;
    ram->used = 0;
    ram->npages = 0;
    for (i = 0; i < ram->nfree; i++)
        ram->free[i].n = 0;
    return ram->memfd < 0 ? -errno : 0;
}
