/* File handles: open/close, writeout, discard, invalidate.
 *
 * Costs: writeout and discard walk the handle's dirty list, invalidate looks
 * one page up in the pagemap: O(pages concerned), never O(file or cache). */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <unistd.h>

#include "virtmem_int.h"

ListHead fileh__all = { &fileh__all, &fileh__all };

int fileh_open(BigFileH **out, BigFile *file, RAM *ram)
{
    int err = virt_blksize_check(file->blksize);
    if (err)
        return err;
    if (!ram) {
        err = ram_default(&ram);
        if (err)
            return err;
    }

    BigFileH *fileh = calloc(1, sizeof *fileh);
    if (!fileh)
        return -ENOMEM;
    fileh->file = file;
    fileh->ram = ram;
    pagemap_init(&fileh->pagemap);
    list_init(&fileh->vmas);
    list_init(&fileh->dirty);

    virt_lock();
    if (file->blksize > ram->capacity) {
        virt_unlock();
        free(fileh);
        return -EINVAL;
    }
    ram->refcnt++;
    list_add(&fileh->in_all, &fileh__all);
    virt_unlock();
    *out = fileh;
    return 0;
}

BigFile *fileh_file(BigFileH *fileh) { return fileh->file; }
RAM     *fileh_ram(BigFileH *fileh)  { return fileh->ram; }

int fileh__maybe_free(BigFileH *fileh)
{
    if (!fileh->closed || fileh->nloading || fileh->npinned || fileh->writeout_running)
        return 0;
    BUG_ON(fileh->pagemap.count != 0 || fileh->nvma != 0);
    list_del(&fileh->in_all);
    pagemap_fini(&fileh->pagemap);
    if (--fileh->ram->refcnt == 0)
        ram__free(fileh->ram);
    free(fileh);
    return 1;
}

/* Drop every page of a closed handle except those another frame still works
 * on (LOADING: its loader frees it; storing: the writeout loop does). */
static void fileh_drop_idle_pages(BigFileH *fileh)
{
    size_t n = fileh->pagemap.count, k = 0, pos = 0;
    Page **pages = n ? malloc(n * sizeof *pages) : NULL;
    Page *page;

    if (n && !pages) {
        /* No memory for the snapshot: restart the scan after each drop.
         * Quadratic, but only on this path. */
        for (;;) {
            pos = 0;
            while ((page = pagemap_next(&fileh->pagemap, &pos, NULL)))
                if (page->state != PAGE_LOADING && !page->storing)
                    break;
            if (!page)
                return;
            page__drop(page);
        }
    }
    while ((page = pagemap_next(&fileh->pagemap, &pos, NULL)))
        pages[k++] = page;
    for (size_t i = 0; i < k; i++) {
        page = pages[i];
        if (page->state == PAGE_LOADING) {
            page->invalidated = 1;
            pagemap_del(&fileh->pagemap, page->blk);
        } else if (!page->storing) {
            page__drop(page);
        }
    }
    free(pages);
}

void fileh_close(BigFileH *fileh)
{
    ListHead *pos, *tmp;
    BigFile *file = fileh->file;

    virt_lock();
    BUG_ON(fileh->closed);
    fileh->closed = 1;
    list_for_each_safe(pos, tmp, &fileh->vmas)
        vma__destroy(list_entry(pos, VMA, in_fileh));
    fileh_drop_idle_pages(fileh);
    int freed = fileh__maybe_free(fileh);
    virt_unlock();
    if (freed)
        virt__release_file(file);
}

static int page_blk_cmp(const void *a, const void *b)
{
    blk_t x = (*(Page *const *)a)->blk, y = (*(Page *const *)b)->blk;
    return x < y ? -1 : x > y;
}

/* Store @pages[0..k) (marked `storing` by the caller, so that nothing frees
 * them while storeblk runs unlocked), in ascending block order, stopping at
 * the first failure; then clear `storing` and wake the writers waiting for
 * it.  Called locked; returns locked.  Pages dirtied meanwhile through a
 * writable mapping are left for the next writeout. */
static int fileh_store_pages(BigFileH *fileh, Page **pages, size_t k)
{
    BigFile *file = fileh->file;
    size_t i;
    int err = 0;

    qsort(pages, k, sizeof *pages, page_blk_cmp);
    fileh->writeout_running = 1;
    for (i = 0; i < k && !err; i++) {
        Page *page = pages[i];
        void *buf;
        if (fileh->closed) {
            err = -EBADF;
            break;
        }
        blk_t blk = page->blk;
        int own, r = 0;
        err = page__buf_get(page, 0, &buf, &own);
        virt_unlock();
        if (!err) {
            virt__nwriteout_mine++;
            r = file->ops->storeblk(file, blk, buf);
            virt__nwriteout_mine--;
        }
        virt_lock();
        if (!err)
            err = page__buf_put(page, buf, own, r);
        if (!err)
            fileh->nstoreblk++;
    }
    /* Only now: while the loop runs, close and invalidate must leave every
     * page of the snapshot alone, stored or not, for the loop owns them. */
    for (i = 0; i < k; i++)
        pages[i]->storing = 0;
    fileh->writeout_running = 0;
    virt__loads_changed();
    if (fileh->closed) {
        for (i = 0; i < k; i++)
            page__drop(pages[i]);
    }
    return err;
}

/* The first @n pages of @fileh's dirty list (dirtied longest ago first),
 * marked `storing`, in a new array (*out, length returned); write-protected
 * too if @protect.  -ENOMEM. */
static ssize_t fileh_take_dirty(BigFileH *fileh, size_t n, int protect, Page ***out)
{
    ListHead *pos, *tmp;
    size_t k = 0;

    if (n > fileh->ndirty)
        n = fileh->ndirty;
    Page **pages = malloc((n ? n : 1) * sizeof *pages);
    if (!pages)
        return -ENOMEM;
    list_for_each_safe(pos, tmp, &fileh->dirty) {
        if (k == n)
            break;
        Page *page = list_entry(pos, Page, dirty);
        if (protect)
            page__protect_all(page);
        page->storing = 1;
        pages[k++] = page;
    }
    *out = pages;
    return (ssize_t)k;
}

/* 0, or why @fileh cannot be written out now. */
static int fileh_writeout_refused(BigFileH *fileh)
{
    if (fileh->closed)
        return -EBADF;
    if (fileh->writeout_running)
        return -EBUSY;
    if (fileh->fault_failed)
        return -ENOTRECOVERABLE;
    return 0;
}

int fileh_dirty_writeout(BigFileH *fileh, int flags)
{
    ListHead *pos, *tmp;
    int err = 0, freed;
    BigFile *file = fileh->file;

    if (!(flags & (WRITEOUT_STORE | WRITEOUT_MARKSTORED)) ||
        (flags & ~(WRITEOUT_STORE | WRITEOUT_MARKSTORED)))
        return -EINVAL;

    virt_lock();
    err = fileh_writeout_refused(fileh);
    if (err) {
        virt_unlock();
        return err;
    }
    if ((flags & WRITEOUT_STORE) && fileh->ndirty) {
        Page **pages;
        ssize_t k = fileh_take_dirty(fileh, fileh->ndirty, 0, &pages);
        err = k < 0 ? (int)k : fileh_store_pages(fileh, pages, (size_t)k);
        if (k >= 0)
            free(pages);
    }
    if (!err && (flags & WRITEOUT_MARKSTORED) && !fileh->closed) {
        list_for_each_safe(pos, tmp, &fileh->dirty) {
            Page *page = list_entry(pos, Page, dirty);
            /* Write-protect first: from here on, a write is seen again. */
            page__protect_all(page);
            page__mark_clean(page);
        }
    }
    freed = fileh__maybe_free(fileh);
    virt_unlock();
    if (freed)
        virt__release_file(file);
    return err;
}

int fileh_dirty_writeout_oldest(BigFileH *fileh, size_t npages)
{
    BigFile *file = fileh->file;
    Page **pages;
    int err, freed;
    ssize_t k;

    virt_lock();
    err = fileh_writeout_refused(fileh);
    if (err) {
        virt_unlock();
        return err;
    }
    /* Write-protected while stored: a write meanwhile faults and waits for
     * `storing` to end (fault.c), so the page is clean only if what was
     * stored is what it holds. */
    k = fileh_take_dirty(fileh, npages > INT_MAX ? INT_MAX : npages, 1, &pages);
    if (k < 0) {
        virt_unlock();
        return (int)k;
    }
    err = fileh_store_pages(fileh, pages, (size_t)k);
    if (!err && !fileh->closed) {
        for (ssize_t i = 0; i < k; i++) {
            if (pages[i]->state == PAGE_DIRTY) {
                page__mark_clean(pages[i]);
                fileh->nspilled++;
            }
        }
    }
    free(pages);
    freed = fileh__maybe_free(fileh);
    virt_unlock();
    if (freed)
        virt__release_file(file);
    return err ? err : (int)k;
}

int fileh_dirty_discard(BigFileH *fileh)
{
    ListHead *pos, *tmp;

    virt_lock();
    if (fileh->writeout_running) {
        virt_unlock();
        return -EBUSY;
    }
    list_for_each_safe(pos, tmp, &fileh->dirty)
        page__drop(list_entry(pos, Page, dirty));
    /* Whatever a failed fault's stand-in fed into dirty pages is gone now. */
    fileh->fault_failed = 0;
    virt_unlock();
    return 0;
}

int fileh_invalidate_page(BigFileH *fileh, blk_t pgoffset)
{
    int err = 0;

    virt_lock();
    Page *page = pagemap_get(&fileh->pagemap, pgoffset);
    if (!page) {
        /* nothing cached */
    } else if (page->storing) {
        err = -EBUSY;
    } else if (page->state == PAGE_LOADING) {
        /* Its loader throws the result away; the next touch loads anew. */
        page->invalidated = 1;
        pagemap_del(&fileh->pagemap, pgoffset);
    } else {
        page__drop(page);
    }
    virt_unlock();
    return err;
}

ssize_t fileh_page_read(BigFileH *fileh, blk_t blk, void *dst)
{
    size_t size = fileh->file->blksize, done = 0;
    ssize_t r = 0;

    /* Read with the lock held: nothing drops or reuses the page meanwhile,
     * and a write to it through a mapping cannot tear what is read only if
     * the writer is the caller's own thread (others race as with any
     * reader of shared memory).  From the memfd (or the backend's file):
     * no mapping, no fault. */
    virt_lock();
    Page *page = fileh->closed ? NULL : pagemap_get(&fileh->pagemap, blk);
    if (fileh->closed) {
        r = -EBADF;
    } else if (!page || page->state == PAGE_LOADING) {
        r = -ENOENT;
    } else {
        int fd = page->state == PAGE_DIRECT ? page->direct_fd : fileh->ram->memfd;
        uint64_t off = page->state == PAGE_DIRECT ? page->direct_off : page->ram_off;
        while (done < size) {
            ssize_t n = pread(fd, (char *)dst + done, size - done, (off_t)(off + done));
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0) {
                r = n < 0 ? -errno : -EIO;
                break;
            }
            done += (size_t)n;
        }
    }
    virt_unlock();
    if (r < 0)
        return r;
    /* Trailing zeros, a word at a time (size is a multiple of the page
     * size; @dst need not be aligned, hence memcpy, a plain load where
     * the CPU allows). */
    const unsigned char *b = dst;
    size_t n = size;
    for (uint64_t w; n >= sizeof w; n -= sizeof w) {
        memcpy(&w, b + n - sizeof w, sizeof w);
        if (w != 0)
            break;
    }
    while (n > 0 && b[n - 1] == 0)
        n--;
    return (ssize_t)n;
}

int fileh_fault_failed(BigFileH *fileh)
{
    virt_lock();
    int failed = fileh->fault_failed;
    virt_unlock();
    return failed;
}

int fileh_isdirty(BigFileH *fileh)
{
    virt_lock();
    int dirty = fileh->ndirty != 0;
    virt_unlock();
    return dirty;
}

void fileh_get_stats(BigFileH *fileh, FileHStats *st)
{
    virt_lock();
    st->npages    = fileh->pagemap.count;
    st->ndirty    = fileh->ndirty;
    st->nvma      = fileh->nvma;
    st->nloadblk  = fileh->nloadblk;
    st->nstoreblk = fileh->nstoreblk;
    virt_unlock();
}
