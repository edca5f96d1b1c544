/* Prepared slots (ram_prep.c): while pages of 2 MiB take fresh slots, a
 * preparer thread gives the next few slots memory and page-table entries
 * at a parking range, and new pages take them over.  What a prepared page
 * shows must be exactly its block, mapped read-only for a read (so that a
 * write is tracked) and writable for a write; the RAM's capacity must hold
 * with the prepared bytes counted; prepared slots must go when the RAM
 * gives memory back; a forked child must work on its own.  Each scenario
 * runs in fresh processes, on both fault paths (userfaultfd where the
 * kernel allows it, and SIGSEGV). */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "fixture.h"
#include "standin_policy.h"

#define BS    ((size_t)2 << 20)
#define NBLK  24
#define NRAM  64        /* room for every block: all slots fresh */

static void on_both_paths(void (*fn)(void *arg))
{
    CHECK_EXITED(test_run_forked(fn, NULL), 0);
    CHECK_OK(setenv("ZBIGARRAY_USERFAULTFD", "0", 1));
    CHECK_EXITED(test_run_forked(fn, NULL), 0);
    CHECK_OK(unsetenv("ZBIGARRAY_USERFAULTFD"));
}

static unsigned char *prepared_open(Fixture *f, size_t capacity)
{
    VMA *vma;
    fixture_open(f, BS, NBLK, capacity);
    unsigned char *p = fixture_mmap(f, 0, NBLK, &vma);
    CHECK_EQ((uintptr_t)p % BS, 0);     /* whole page tables move */
    return p;
}

/* Slots of BS a RAM of @capacity prepares at most (docs/virtmem.md): a
 * sixteenth of the capacity, 4 to 32 of them. */
static size_t depth_of(size_t capacity)
{
    size_t n = capacity / BS / 16;
    return n < 4 ? 4 : n > 32 ? 32 : n;
}

/* The RAM's memory stays within its capacity, prepared slots counted, and
 * never more than a few are prepared. */
static void check_bounds(Fixture *f)
{
    RAMStats st = fixture_ram_stats(f);
    CHECK(st.used + st.direct + st.prepared <= st.capacity);
    CHECK(st.prepared <= depth_of(st.capacity) * BS);
    CHECK_EQ(st.prepared % BS, 0);
}

/* The preparer works on its own: wait (at most 5 s) until the RAM has at
 * least @lo and at most @hi bytes prepared (none: a slot being prepared
 * when they were given back goes when done).  Returns its stats then. */
static RAMStats wait_prepared(Fixture *f, size_t lo, size_t hi)
{
    struct timespec nap = { 0, 1000000 };
    RAMStats st = fixture_ram_stats(f);
    for (int i = 0; i < 5000 && (st.prepared < lo || st.prepared > hi); i++) {
        nanosleep(&nap, NULL);
        st = fixture_ram_stats(f);
    }
    return st;
}

/* A handle whose first @n blocks were read, with slots prepared since. */
static unsigned char *open_scanned(Fixture *f, blk_t n)
{
    unsigned char *p = prepared_open(f, NRAM * BS);
    for (blk_t blk = 0; blk < n; blk++)
        testfile_check_block(&f->tf, p + blk * BS, blk);
    CHECK(wait_prepared(f, BS, SIZE_MAX).prepared >= BS);
    return p;
}

static void scan(void *arg)
{
    Fixture f;
    (void)arg;
    unsigned char *p = prepared_open(&f, NRAM * BS);
    for (blk_t blk = 0; blk < NBLK; blk++) {
        testfile_check_block(&f.tf, p + blk * BS, blk);
        check_bounds(&f);
    }
    RAMStats st = fixture_ram_stats(&f);
    CHECK(st.nprepared > 0);
    CHECK_EQ(st.nrecycled, 0);
    CHECK_EQ(st.nmoved, 0);             /* moves of recycled pages only */
    CHECK_EQ(st.npages, NBLK);
    for (blk_t blk = 0; blk < NBLK; blk++) {
        CHECK_EQ(testfile_nload(&f.tf, blk), 1);
        testfile_check_block(&f.tf, p + blk * BS, blk);     /* still there */
    }
    fixture_close(&f);
}

TEST(prepared_slots_show_every_block_of_a_scan)
{
    on_both_paths(scan);
}

/* A large RAM keeps a burst's worth of slots ready: with 1 GiB, 32 of
 * 2 MiB, made while nothing faults (a commit, a computation), so that the
 * next burst of faults finds them ready.  They are taken like the first
 * few, and given back with the last page. */
static void burst(void *arg)
{
    Fixture f;
    (void)arg;
    unsigned char *p = prepared_open(&f, (size_t)1 << 30);
    testfile_check_block(&f.tf, p, 0);
    RAMStats st = wait_prepared(&f, 32 * BS, SIZE_MAX);
    CHECK_EQ(st.prepared, 32 * BS);
    struct timespec nap = { 0, 10000000 };
    nanosleep(&nap, NULL);
    check_bounds(&f);                   /* and no more */
    for (blk_t blk = 1; blk < NBLK; blk++) {
        testfile_check_block(&f.tf, p + blk * BS, blk);
        check_bounds(&f);
    }
    st = fixture_ram_stats(&f);
    CHECK(st.nprepared >= NBLK - 1);    /* every block after the first */
    CHECK_EQ(st.npages, NBLK);
    fixture_close(&f);
}

TEST(a_large_ram_keeps_a_burst_of_slots_ready)
{
    on_both_paths(burst);
}

/* Prepared entries are writable for loadblk; mapped for a read they must be
 * read-only, or a write would not fault and never be written out. */
static void read_then_write(void *arg)
{
    Fixture f;
    (void)arg;
    unsigned char *p = prepared_open(&f, NRAM * BS);
    for (blk_t blk = 0; blk < NBLK; blk++)
        testfile_check_block(&f.tf, p + blk * BS, blk);
    CHECK(fixture_ram_stats(&f).nprepared > 0);
    CHECK_EQ(fileh_isdirty(f.fileh), 0);
    for (blk_t blk = 0; blk < NBLK; blk++)
        poke(p + blk * BS, 5, 0xfeed0000 + blk);
    CHECK_EQ(fileh_isdirty(f.fileh), 1);
    CHECK_OK(fileh_dirty_writeout(f.fileh, WRITEOUT_STORE | WRITEOUT_MARKSTORED));
    CHECK_EQ(f.tf.nstores, NBLK);       /* every page, prepared ones too */
    for (size_t i = 0; i < f.tf.nstores; i++) {
        StoreRec *s = &f.tf.stores[i];
        CHECK_EQ(((uint64_t *)s->data)[5], 0xfeed0000 + s->blk);
        ((uint64_t *)s->data)[5] = testfile_word(s->blk, 0, 5);
        CHECK(testfile_matches(s->data, BS, s->blk, 0));
    }
    fixture_close(&f);
}

TEST(prepared_page_mapped_for_a_read_is_read_only)
{
    on_both_paths(read_then_write);
}

/* A write fault on a block not in RAM loads it into a prepared slot and
 * maps it writable: the write lands, the rest is the block. */
static void write_first(void *arg)
{
    Fixture f;
    (void)arg;
    unsigned char *p = prepared_open(&f, NRAM * BS);
    for (blk_t blk = 0; blk < NBLK; blk++) {
        unsigned char *b = p + blk * BS;
        poke(b, 9, 0xc0ffee);
        CHECK_EQ(peek(b, 9), 0xc0ffee);
        CHECK_EQ(peek(b, 8), testfile_word(blk, 0, 8));
        CHECK_EQ(peek(b, BS / 8 - 1), testfile_word(blk, 0, BS / 8 - 1));
    }
    CHECK(fixture_ram_stats(&f).nprepared > 0);
    CHECK_EQ(fixture_stats(&f).ndirty, NBLK);
    CHECK_OK(fileh_dirty_writeout(f.fileh, WRITEOUT_STORE | WRITEOUT_MARKSTORED));
    CHECK_EQ(f.tf.nstores, NBLK);
    for (size_t i = 0; i < f.tf.nstores; i++)
        CHECK_EQ(((uint64_t *)f.tf.stores[i].data)[9], 0xc0ffee);
    fixture_close(&f);
}

TEST(prepared_page_for_a_write_fault_is_writable_and_stored)
{
    on_both_paths(write_first);
}

/* ram_reclaim gives prepared memory back at once, and nothing is prepared
 * again until a page takes a fresh slot; so does dropping every page. */
static void give_back(void *arg)
{
    Fixture f;
    (void)arg;
    unsigned char *p = open_scanned(&f, NBLK / 2);
    CHECK_EQ(ram_reclaim(f.ram, 0), 0);
    RAMStats st = wait_prepared(&f, 0, 0);
    CHECK_EQ(st.prepared, 0);
    CHECK_EQ(st.npages, NBLK / 2);

    for (blk_t blk = NBLK / 2; blk < NBLK; blk++)
        testfile_check_block(&f.tf, p + blk * BS, blk);
    CHECK(wait_prepared(&f, BS, SIZE_MAX).prepared >= BS);
    for (blk_t blk = 0; blk < NBLK; blk++)
        CHECK_OK(fileh_invalidate_page(f.fileh, blk));      /* drops every page */
    st = wait_prepared(&f, 0, 0);
    CHECK_EQ(st.npages, 0);
    CHECK_EQ(st.prepared, 0);
    CHECK_EQ(st.used, 0);
    for (blk_t blk = 0; blk < NBLK; blk++)
        testfile_check_block(&f.tf, p + blk * BS, blk);
    fixture_close(&f);
}

TEST(prepared_slots_go_when_the_ram_gives_memory_back)
{
    on_both_paths(give_back);
}

/* A RAM that cannot hold the headroom never prepares; one that just can
 * gets every page it has room for, all dirty, with slots being prepared at
 * the same time: none may stand in the way. */
static void tight(void *arg)
{
    Fixture f;
    (void)arg;
    unsigned char *p = prepared_open(&f, 4 * BS);
    for (blk_t blk = 0; blk < 4; blk++)
        poke(p + blk * BS, 0, blk);
    CHECK_EQ(fixture_ram_stats(&f).nprepared, 0);
    CHECK_EQ(fixture_ram_stats(&f).prepared, 0);
    fixture_close(&f);

    p = prepared_open(&f, 12 * BS);
    for (blk_t blk = 0; blk < 12; blk++) {
        poke(p + blk * BS, 0, 0x100 + blk);
        check_bounds(&f);
    }
    CHECK_EQ(fixture_stats(&f).ndirty, 12);
    for (blk_t blk = 0; blk < 12; blk++)
        CHECK_EQ(peek(p + blk * BS, 0), 0x100 + blk);
    fixture_close(&f);
}

TEST(prepared_slots_never_take_the_room_of_a_page)
{
    on_both_paths(tight);
}

/* Shrinking the capacity gives prepared slots back before any page. */
static void shrink(void *arg)
{
    Fixture f;
    (void)arg;
    unsigned char *p = open_scanned(&f, 8);
    CHECK_OK(ram_set_capacity(f.ram, 8 * BS));
    RAMStats st = fixture_ram_stats(&f);
    CHECK_EQ(st.npages, 8);             /* no page went for them */
    st = wait_prepared(&f, 0, 0);
    CHECK_EQ(st.prepared, 0);
    CHECK_EQ(st.npages, 8);
    for (blk_t blk = 0; blk < 8; blk++) {
        testfile_check_block(&f.tf, p + blk * BS, blk);
        CHECK_EQ(testfile_nload(&f.tf, blk), 1);    /* never dropped */
    }
    fixture_close(&f);
}

TEST(prepared_slots_go_first_when_the_capacity_shrinks)
{
    on_both_paths(shrink);
}

/* A process forks while slots are prepared (and maybe one is being
 * prepared): the child has no preparer of the parent's, forgets the
 * parent's slots, and loads every block right, preparing its own. */
static void forked(void *arg)
{
    Fixture f;
    (void)arg;
    unsigned char *p = open_scanned(&f, NBLK / 2);
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        CHECK_EQ(fixture_ram_stats(&f).prepared, 0);
        for (blk_t blk = 0; blk < NBLK; blk++)
            testfile_check_block(&f.tf, p + blk * BS, blk);
        CHECK(fixture_ram_stats(&f).nprepared > 0);
        check_bounds(&f);
        _exit(0);
    }
    int status;
    CHECK_EQ(waitpid(pid, &status, 0), pid);
    CHECK_EXITED(status, 0);
    for (blk_t blk = 0; blk < NBLK; blk++)
        testfile_check_block(&f.tf, p + blk * BS, blk);
    fixture_close(&f);
}

TEST(prepared_slots_are_the_parents_alone_after_fork)
{
    on_both_paths(forked);
}

/* loadblk keeps the buffer of a prepared page (the parked entries): those
 * addresses are the loader's then, and the page shows the block. */
static void keeps(void *arg)
{
    void *kept[NBLK] = { NULL };
    Fixture f;
    (void)arg;
    unsigned char *p = prepared_open(&f, NRAM * BS);
    f.tf.on_load = testfile_load_keeping;
    f.tf.hook_arg = kept;
    for (blk_t blk = 0; blk < NBLK; blk++)
        testfile_check_block(&f.tf, p + blk * BS, blk);
    CHECK(fixture_ram_stats(&f).nprepared > 0);
    for (blk_t blk = 0; blk < NBLK; blk++) {
        CHECK(kept[blk] != NULL);
        memset(kept[blk], 0x55, BS);    /* the loader's, not the page's */
    }
    for (blk_t blk = 0; blk < NBLK; blk++) {
        testfile_check_block(&f.tf, p + blk * BS, blk);
        CHECK_OK(munmap(kept[blk], BS));
    }
    fixture_close(&f);
}

TEST(prepared_page_loadblk_may_keep_its_buffer)
{
    on_both_paths(keeps);
}

/* A failed load gives its prepared slot back; the block loads on the next
 * touch. */
static void failing(void *arg)
{
    Fixture f;
    (void)arg;
    unsigned char *p = open_scanned(&f, 8);
    RAMStats before = fixture_ram_stats(&f);
    policy_begin();
    atomic_store(&f.tf.load_fail_blk, 8);
    (void)peek(p + 8 * BS, 0);          /* fails: a stand-in */
    CHECK_EQ(reports.n, 1);
    CHECK_EQ(reports.err, -EIO);
    RAMStats st = fixture_ram_stats(&f);
    CHECK_EQ(st.npages, 8);
    CHECK_EQ(st.used, 8 * BS);
    CHECK(st.nprepared > before.nprepared);     /* the failed load took one */
    check_bounds(&f);
    virt_fault_reported();
    atomic_store(&f.tf.load_fail_blk, -1);
    for (blk_t blk = 8; blk < NBLK; blk++)
        testfile_check_block(&f.tf, p + blk * BS, blk);
    CHECK_OK(fileh_dirty_discard(f.fileh));
    fixture_close(&f);
    policy_end();
}

TEST(prepared_slot_of_a_failed_load_is_given_back)
{
    on_both_paths(failing);
}

/* The kernel writes into untouched pages inside read(): each fault is
 * served by a proxy while the call retries it, so a page must never be
 * seen mapped read-only on its way to being writable (the call would fail
 * with EFAULT).  A race: many blocks, several rounds. */
static void syscall_writes(void *arg)
{
    enum { N = 64, ROUNDS = 6 };
    (void)arg;
    int src = memfd_create("prepared-src", MFD_CLOEXEC);
    CHECK(src >= 0);
    unsigned char *want = malloc(N * BS);
    CHECK(want != NULL);
    for (blk_t blk = 0; blk < N; blk++)
        testfile_fill(want + blk * BS, BS, blk + 1000, 3);
    CHECK_EQ(pwrite(src, want, N * BS, 0), (ssize_t)(N * BS));
    for (int round = 0; round < ROUNDS; round++) {
        Fixture f;
        VMA *vma;
        fixture_open(&f, BS, N, 2 * N * BS);
        unsigned char *p = fixture_mmap(&f, 0, N, &vma);
        if (!virt_uffd_enabled()) {
            /* Without the userfaultfd the kernel cannot fault our pages in:
             * the call fails, as documented (docs/virtmem.md). */
            CHECK_EQ(pread(src, p, N * BS, 0), -1);
            CHECK_EQ(errno, EFAULT);
            fixture_close(&f);
            break;
        }
        size_t done = 0;
        while (done < N * BS) {
            ssize_t n = pread(src, p + done, N * BS - done, (off_t)done);
            CHECK(n > 0);               /* EFAULT: a page seen read-only */
            done += (size_t)n;
        }
        CHECK(memcmp(p, want, N * BS) == 0);
        CHECK(fixture_ram_stats(&f).nprepared > 0);
        fixture_close(&f);
    }
    free(want);
    close(src);
}

TEST(prepared_pages_written_by_a_system_call)
{
    on_both_paths(syscall_writes);
}
