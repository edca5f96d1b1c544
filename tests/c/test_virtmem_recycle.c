/* Recycling with page tables moved (page.c): a reclaimed 2 MiB page's
 * page-table entries are parked while the new block loads into its slot,
 * then moved to the new page's place.  What the moved entries show must be
 * exactly the new block -- for read and write faults, with several
 * mappings of a page, when a move cannot be made (out of map entries), in a
 * process forked while entries are parked, and for system calls served
 * through the userfaultfd -- and the victim's old place must fault again.
 * Each scenario runs twice, in fresh processes: with the userfaultfd (where
 * the kernel allows it) and with ZBIGARRAY_USERFAULTFD=0 (SIGSEGV). */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fixture.h"

#define BS    ((size_t)2 << 20)
#define NBLK  16
#define NRAM  4

/* Run @fn in a fresh process on each fault path. */
static void on_both_paths(void (*fn)(void *arg))
{
    CHECK_EXITED(test_run_forked(fn, NULL), 0);
    CHECK_OK(setenv("ZBIGARRAY_USERFAULTFD", "0", 1));
    CHECK_EXITED(test_run_forked(fn, NULL), 0);
    CHECK_OK(unsetenv("ZBIGARRAY_USERFAULTFD"));
}

/* Read every block of [p, +NBLK) in order, each whole: every fault recycles
 * the LRU tail, whose place must fault and load again when read next. */
static void read_pass(Fixture *f, unsigned char *p)
{
    for (blk_t blk = 0; blk < NBLK; blk++)
        testfile_check_block(&f->tf, p + blk * BS, blk);
}

/* A handle of NBLK blocks over a RAM of NRAM pages, mapped whole: every
 * pass over it recycles. */
static unsigned char *recycle_open(Fixture *f)
{
    VMA *vma;
    fixture_open(f, BS, NBLK, NRAM * BS);
    return fixture_mmap(f, 0, NBLK, &vma);
}

static void recycle_read(void *arg)
{
    Fixture f;
    (void)arg;
    unsigned char *p = recycle_open(&f);
    CHECK_EQ((uintptr_t)p % BS, 0);     /* whole page tables move */
    for (int pass = 0; pass < 3; pass++)
        read_pass(&f, p);
    for (blk_t blk = 0; blk < NBLK; blk++)
        CHECK_EQ(testfile_nload(&f.tf, blk), 3);
    RAMStats st = fixture_ram_stats(&f);
    CHECK_EQ(st.nrecycled, 3 * NBLK - NRAM);
    CHECK_EQ(st.nmoved, st.nrecycled);
    fixture_close(&f);
}

TEST(recycle_moves_page_tables_and_shows_the_new_block)
{
    on_both_paths(recycle_read);
}

static void recycle_write(void *arg)
{
    Fixture f;
    (void)arg;
    unsigned char *p = recycle_open(&f);
    read_pass(&f, p);
    for (blk_t blk = 0; blk < NBLK; blk++) {
        unsigned char *b = p + blk * BS;
        poke(b, 7, 0xabcdef);           /* a write fault, page not mapped */
        CHECK_EQ(peek(b, 7), 0xabcdef);
        CHECK_EQ(peek(b, 6), testfile_word(blk, 0, 6));
        CHECK_EQ(peek(b, BS / 8 - 1), testfile_word(blk, 0, BS / 8 - 1));
        CHECK_OK(fileh_dirty_writeout(f.fileh, WRITEOUT_STORE | WRITEOUT_MARKSTORED));
    }
    /* What was stored is each block with its one word changed. */
    CHECK_EQ(f.tf.nstores, NBLK);
    for (size_t i = 0; i < f.tf.nstores; i++) {
        StoreRec *s = &f.tf.stores[i];
        CHECK_EQ(((uint64_t *)s->data)[7], 0xabcdef);
        ((uint64_t *)s->data)[7] = testfile_word(s->blk, 0, 7);
        CHECK(testfile_matches(s->data, BS, s->blk, 0));
    }
    CHECK(fixture_ram_stats(&f).nmoved >= NBLK - NRAM);
    read_pass(&f, p);       /* the places written, evicted since, fault again */
    fixture_close(&f);
}

TEST(recycle_moved_for_a_write_fault_is_writable_and_stored)
{
    on_both_paths(recycle_write);
}

static void recycle_two_vmas(void *arg)
{
    Fixture f;
    VMA *va, *vb;
    (void)arg;
    fixture_open(&f, BS, NBLK, NRAM * BS);
    unsigned char *a = fixture_mmap(&f, 0, NBLK, &va);
    unsigned char *b = fixture_mmap(&f, 0, NBLK, &vb);
    for (int pass = 0; pass < 3; pass++) {
        for (blk_t blk = 0; blk < NBLK; blk++) {
            /* Each page shown twice: one mapping's entries move, the
             * other is unmapped; both places must fault again. */
            testfile_check_block(&f.tf, a + blk * BS, blk);
            testfile_check_block(&f.tf, b + blk * BS, blk);
        }
    }
    CHECK(fixture_ram_stats(&f).nmoved > 0);
    vma_unmap(vb);
    read_pass(&f, a);
    fixture_close(&f);
}

TEST(recycle_of_a_page_mapped_twice_moves_one_mapping)
{
    on_both_paths(recycle_two_vmas);
}

/* Out of map entries, moves fail (mremap needs spare ones): recycling
 * falls back to unmapping and populating, with the same data. */
static void recycle_at_map_limit(void *arg)
{
    enum { SPARE = 6 };
    Fixture f;
    VMA *vma;
    long max = 0;
    FILE *mc = fopen("/proc/sys/vm/max_map_count", "r");
    (void)arg;
    CHECK(mc != NULL);
    CHECK(fscanf(mc, "%ld", &max) == 1);
    fclose(mc);

    fixture_open(&f, BS, NBLK, NRAM * BS);
    unsigned char *p = fixture_mmap(&f, 0, NBLK, &vma);
    read_pass(&f, p);                   /* parking ranges, window: made now */
    long fill = max - count_maps() - SPARE;
    CHECK(fill > 0);
    unsigned char *filler = mmap(NULL, (size_t)fill * PS, PROT_NONE,
                                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    CHECK(filler != MAP_FAILED);
    for (long i = 1; i < fill; i += 2)
        CHECK_OK(mprotect(filler + i * PS, PS, PROT_READ) == 0 ? 0 : -errno);

    RAMStats before = fixture_ram_stats(&f);
    for (int pass = 0; pass < 2; pass++)
        read_pass(&f, p);
    RAMStats st = fixture_ram_stats(&f);
    CHECK_EQ(st.nrecycled - before.nrecycled, 2 * NBLK);
    CHECK(st.nmoved - before.nmoved < 2 * NBLK);        /* some fell back */
    fixture_close(&f);
}

TEST(recycle_out_of_map_entries_falls_back_with_the_same_data)
{
    on_both_paths(recycle_at_map_limit);
}

/* Another thread forks while loadblk runs for a page holding parked
 * entries of the parent's memory: the child must not keep them, and works
 * on its own. */
static Fixture *fork_fixture;
static unsigned char *fork_p;
static int fork_done;

static void *fork_and_check(void *arg)
{
    (void)arg;
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        /* The child: every block loads afresh, recycling as it goes. */
        for (int pass = 0; pass < 2; pass++)
            read_pass(fork_fixture, fork_p);
        CHECK(fixture_ram_stats(fork_fixture).nmoved > 0);
        _exit(0);
    }
    int status;
    CHECK_EQ(waitpid(pid, &status, 0), pid);
    CHECK_EXITED(status, 0);
    return NULL;
}

static int fork_in_load(TestFile *tf, blk_t blk, void *buf)
{
    (void)tf;
    (void)buf;
    if (blk != NBLK - 1 || fork_done)
        return TESTFILE_CONTINUE;
    fork_done = 1;
    pthread_t t;
    CHECK_OK(-pthread_create(&t, NULL, fork_and_check, NULL));
    CHECK_OK(-pthread_join(t, NULL));
    return TESTFILE_CONTINUE;
}

static void recycle_fork(void *arg)
{
    Fixture f;
    VMA *vma;
    (void)arg;
    fixture_open(&f, BS, NBLK, NRAM * BS);
    fork_fixture = &f;
    fork_p = fixture_mmap(&f, 0, NBLK, &vma);
    read_pass(&f, fork_p);              /* fills RAM */
    f.tf.on_load = fork_in_load;
    read_pass(&f, fork_p);              /* forks while block NBLK-1 is parked */
    CHECK(fork_done);
    read_pass(&f, fork_p);
    CHECK_EQ(testfile_nload(&f.tf, NBLK - 1), 3);
    fixture_close(&f);
}

TEST(recycle_forked_while_entries_are_parked)
{
    on_both_paths(recycle_fork);
}

/* The kernel reads untouched recycled pages inside write(): served by a
 * proxy, mapped by a move, sent right. */
static void recycle_syscall(void *arg)
{
    Fixture f;
    (void)arg;
    unsigned char *p = recycle_open(&f);
    read_pass(&f, p);
    int fd = memfd_create("recycle-test", MFD_CLOEXEC);
    CHECK(fd >= 0);
    ssize_t n = write(fd, p, NBLK * BS);
    if (!virt_uffd_enabled()) {
        CHECK_EQ(n, -1);                /* EFAULT on the SIGSEGV path */
        CHECK_EQ(errno, EFAULT);
    } else {
        CHECK_EQ(n, (ssize_t)(NBLK * BS));
        unsigned char *got = mmap(NULL, NBLK * BS, PROT_READ, MAP_SHARED, fd, 0);
        CHECK(got != MAP_FAILED);
        for (blk_t blk = 0; blk < NBLK; blk++)
            CHECK(testfile_matches(got + blk * BS, BS, blk, 0));
        CHECK_OK(munmap(got, NBLK * BS) == 0 ? 0 : -errno);
        CHECK(fixture_ram_stats(&f).nmoved > 0);
    }
    close(fd);
    read_pass(&f, p);
    fixture_close(&f);
}

TEST(recycle_for_a_system_call_sends_the_new_block)
{
    on_both_paths(recycle_syscall);
}

/* A recycled page loads through the entries it took over, made writable
 * for loadblk: mapped for a read, they must be read-only again, or a write
 * to the page would not fault and the page would never be written out. */
static void recycle_read_then_write(void *arg)
{
    Fixture f;
    (void)arg;
    unsigned char *p = recycle_open(&f);
    read_pass(&f, p);
    read_pass(&f, p);                   /* the last NRAM blocks: recycled */
    CHECK(fixture_ram_stats(&f).nmoved > 0);
    CHECK_EQ(fileh_isdirty(f.fileh), 0);
    unsigned char *b = p + (NBLK - 1) * BS;
    poke(b, 3, 0x5eed);
    CHECK_EQ(fileh_isdirty(f.fileh), 1);
    CHECK_OK(fileh_dirty_writeout(f.fileh, WRITEOUT_STORE | WRITEOUT_MARKSTORED));
    CHECK_EQ(f.tf.nstores, 1);
    CHECK_EQ(f.tf.stores[0].blk, NBLK - 1);
    CHECK_EQ(((uint64_t *)f.tf.stores[0].data)[3], 0x5eed);
    fixture_close(&f);
}

TEST(recycle_mapped_for_a_read_is_read_only)
{
    on_both_paths(recycle_read_then_write);
}

/* loadblk keeps the buffer it was given for a recycled page (the entries
 * the page took over): those addresses are then the loader's, the page is
 * mapped afresh, and shows the block. */
static void recycle_loadblk_keeps(void *arg)
{
    void *kept[NBLK] = { NULL };
    Fixture f;
    (void)arg;
    unsigned char *p = recycle_open(&f);
    read_pass(&f, p);
    f.tf.on_load = testfile_load_keeping;
    f.tf.hook_arg = kept;
    read_pass(&f, p);                   /* recycled, every buffer kept */
    for (blk_t blk = 0; blk < NBLK; blk++) {
        CHECK(kept[blk] != NULL);
        memset(kept[blk], 0x66, BS);    /* the loader's, not the page's */
    }
    for (blk_t blk = NBLK - NRAM; blk < NBLK; blk++)
        testfile_check_block(&f.tf, p + blk * BS, blk);
    for (blk_t blk = 0; blk < NBLK; blk++)
        CHECK_OK(munmap(kept[blk], BS));
    fixture_close(&f);
}

TEST(recycle_loadblk_may_keep_its_buffer)
{
    on_both_paths(recycle_loadblk_keeps);
}

/* The kernel writes into recycled pages inside read(), a few blocks a call
 * (written out after each, so that pages stay recyclable): served by a
 * proxy while the call retries its fault, the moved entries must be
 * writable when they arrive, or a retry sees them read-only and the call
 * fails with EFAULT (a race: several passes). */
static void recycle_syscall_writes(void *arg)
{
    enum { PASSES = 24, PER_CALL = NRAM - 1 };
    Fixture f;
    (void)arg;
    unsigned char *p = recycle_open(&f);
    read_pass(&f, p);
    int src = memfd_create("recycle-src", MFD_CLOEXEC);
    CHECK(src >= 0);
    unsigned char *want = malloc(PER_CALL * BS);
    CHECK(want != NULL);
    for (blk_t blk = 0; blk < PER_CALL; blk++)
        testfile_fill(want + blk * BS, BS, 4242 + blk, 1);
    CHECK_EQ(pwrite(src, want, PER_CALL * BS, 0), (ssize_t)(PER_CALL * BS));
    for (int pass = 0; pass < PASSES; pass++) {
        for (blk_t blk = 0; blk + PER_CALL <= NBLK; blk += PER_CALL) {
            unsigned char *at = p + blk * BS;
            if (!virt_uffd_enabled()) {
                CHECK_EQ(pread(src, at, PER_CALL * BS, 0), -1);
                CHECK_EQ(errno, EFAULT);        /* on the SIGSEGV path */
                continue;
            }
            size_t done = 0;
            while (done < PER_CALL * BS) {
                ssize_t n = pread(src, at + done, PER_CALL * BS - done, (off_t)done);
                CHECK(n > 0);                   /* not EFAULT */
                done += (size_t)n;
            }
            CHECK(memcmp(at, want, PER_CALL * BS) == 0);
            CHECK_OK(fileh_dirty_writeout(f.fileh, WRITEOUT_STORE | WRITEOUT_MARKSTORED));
        }
    }
    if (virt_uffd_enabled())
        CHECK(fixture_ram_stats(&f).nmoved > 0);
    free(want);
    close(src);
    fixture_close(&f);
}

TEST(recycle_written_by_a_system_call_is_writable_at_once)
{
    on_both_paths(recycle_syscall_writes);
}
