/* Fork safety.
 *
 * Page memory lives in memfds that a forked child shares with its parent:
 * left alone, a child would write straight into the parent's pages (its
 * read-write mappings and the RAM window are MAP_SHARED), and would go on
 * showing a slot after the parent reused it for another block — silent
 * corruption both ways.  So the child forgets everything the core held: its
 * mappings become empty reservations again, its pages are dropped without
 * touching the parent's memory, the ranges where recycled pages' page
 * tables were parked (page.c) and its prepared slots (ram_prep.c) are
 * unmapped, and each RAM gets a new, empty memfd.  The child then works as a fresh process would: its handles
 * reload blocks from their files on first touch.  It does so without
 * userfaultfd (uffd.c): the kernel unregistered its copy of our ranges, and
 * our server threads are not in it.  What it cannot see is the parent's
 * uncommitted changes (dirty pages) — they are the parent's alone.
 *
 * The virtmem lock is taken around fork() (prepare/parent/child handlers),
 * so the child never inherits structures half-changed by another thread. */
#define _GNU_SOURCE
#include <pthread.h>
#include <sys/mman.h>

#include "virtmem_int.h"

static void fork_prepare(void)
{
    virt_lock();
}

static void fork_parent(void)
{
    virt_unlock();
}

/* Drop every page of @fileh without touching its memory. */
static void fork_forget_pages(BigFileH *fileh)
{
    size_t pos = 0;
    Page *page;

    while ((page = pagemap_next(&fileh->pagemap, &pos, NULL))) {
        ListHead *p, *tmp;
        list_for_each_safe(p, tmp, &page->mappings)
            free(list_entry(p, PageMapping, in_page));
        /* Parked entries show the parent's memory; the range is ours. */
        if (page->parked)
            BUG_ON(munmap(page->parked, fileh->file->blksize) != 0);
        free(page);
    }
    pagemap_fini(&fileh->pagemap);
    pagemap_init(&fileh->pagemap);
    list_init(&fileh->dirty);
    fileh->ndirty = 0;
    fileh->dirty_notified = 0;
    fileh->nloading = 0;          /* the loading threads do not exist here */
    fileh->npinned = 0;
    fileh->writeout_running = 0;
}

static void fork_child(void)
{
    ListHead *p;

    uffd__forget_in_child();
    list_for_each_forward(p, &fileh__all) {
        BigFileH *fileh = list_entry(p, BigFileH, in_all);
        ListHead *v;
        fork_forget_pages(fileh);
        list_for_each_forward(v, &fileh->vmas) {
            VMA *vma = list_entry(v, VMA, in_fileh);
            /* One call empties the whole range; the mapping nodes were
             * freed with their pages. */
            BUG_ON(virt__reserve_at((void *)vma->addr_start,
                                    vma->addr_stop - vma->addr_start) != 0);
            vma->uffd = 0;
            vma->nmappings = vma->nstale = 0;
            list_init(&vma->mappings);
        }
    }
    list_for_each_forward(p, &ram__all) {
        RAM *ram = list_entry(p, RAM, in_all);
        list_init(&ram->lru);
        ram->nclean = 0;
        ram->nloading = 0;
        ram->direct = 0;
        /* On failure the RAM has no memfd and every load from it fails
         * loudly (fault error handler); nothing better to do in a fork
         * handler. */
        (void)ram__reset_in_child(ram);
    }
    ram__prep_reinit_in_child();
    fault__forget_all_in_child();
    virt__loads_reinit();
    virt_unlock();
}

static pthread_once_t fork_once = PTHREAD_ONCE_INIT;

static void fork_register(void)
{
    BUG_ON(pthread_atfork(fork_prepare, fork_parent, fork_child) != 0);
}

void virt__atfork_init(void)
{
    BUG_ON(pthread_once(&fork_once, fork_register) != 0);
}
