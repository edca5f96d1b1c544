/* Faults that fail under a policy that reports them later (as the Python
 * layer does, with an exception): the faulting access completes on a
 * stand-in that is never data, the thread is failing until it reports, and
 * the handle refuses writeout until discard. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

#include "fixture.h"
#include "standin_policy.h"

static int block_is_zero(const unsigned char *p, size_t blksize)
{
    for (size_t i = 0; i < blksize / 8; i++)
        if (peek(p, i) != 0)
            return 0;
    return 1;
}

TEST(failed_load_shows_a_standin_until_reported_then_loads_again)
{
    Fixture f;
    VMA *vma;
    unsigned char *p;
    size_t bs = 2 * PS;

    policy_begin();
    fixture_open(&f, bs, 8, 8 * bs);
    p = fixture_mmap(&f, 0, 8, &vma);
    atomic_store(&f.tf.load_fail_blk, 3);

    CHECK(block_is_zero(p + 3 * bs, bs));        /* the stand-in */
    CHECK_EQ(reports.n, 1);
    CHECK(reports.file == &f.tf.file);
    CHECK_EQ(reports.blk, 3);
    CHECK_EQ(reports.err, -EIO);
    CHECK(virt_fault_failing());
    CHECK(fileh_fault_failed(f.fileh));
    CHECK_EQ(fixture_stats(&f).npages, 0);       /* never cached as loaded */

    /* Failing: a fault that needs a load gets a stand-in, loadblk is not
     * called, nothing more is reported. */
    CHECK(block_is_zero(p + 5 * bs, bs));
    CHECK_EQ(testfile_nload(&f.tf, 5), 0);
    CHECK_EQ(reports.n, 1);

    /* Writes to a stand-in are lost; writeout refuses until discard. */
    poke(p + 3 * bs, 0, 77);
    CHECK_EQ(fileh_isdirty(f.fileh), 0);
    CHECK_ERR(fileh_dirty_writeout(f.fileh, WRITEOUT_STORE), -ENOTRECOVERABLE);

    /* Reported: the stand-ins are gone, the next touch loads. */
    virt_fault_reported();
    CHECK(!virt_fault_failing());
    atomic_store(&f.tf.load_fail_blk, -1);
    testfile_check_block(&f.tf, p + 3 * bs, 3);
    testfile_check_block(&f.tf, p + 5 * bs, 5);
    CHECK(fileh_fault_failed(f.fileh));          /* until discard */
    CHECK_OK(fileh_dirty_discard(f.fileh));
    CHECK(!fileh_fault_failed(f.fileh));
    CHECK_OK(fileh_dirty_writeout(f.fileh, WRITEOUT_STORE));

    fixture_close(&f);
    policy_end();
}

TEST(failed_load_fails_again_when_touched_again)
{
    Fixture f;
    VMA *vma;
    unsigned char *p;

    policy_begin();
    fixture_open(&f, PS, 4, 4 * PS);
    p = fixture_mmap(&f, 0, 4, &vma);
    atomic_store(&f.tf.load_fail_blk, 1);
    CHECK(block_is_zero(p + PS, PS));
    virt_fault_reported();
    CHECK(block_is_zero(p + PS, PS));            /* loadblk called again */
    CHECK_EQ(reports.n, 2);
    fixture_close(&f);
    policy_end();
}

TEST(ram_full_of_dirty_pages_shows_a_standin)
{
    Fixture f;
    VMA *vma;
    unsigned char *p;

    policy_begin();
    fixture_open(&f, PS, 8, 2 * PS);
    p = fixture_mmap(&f, 0, 8, &vma);
    poke(p, 0, 1);
    poke(p + PS, 0, 1);                          /* RAM full, all dirty */
    poke(p + 2 * PS, 0, 5);                      /* a write to the stand-in */
    CHECK_EQ(reports.n, 1);
    CHECK_EQ(reports.err, -ENOMEM);
    CHECK_EQ(reports.blk, 2);
    CHECK_EQ(fixture_stats(&f).ndirty, 2);
    CHECK(fileh_fault_failed(f.fileh));
    virt_fault_reported();
    CHECK_OK(fileh_dirty_discard(f.fileh));
    testfile_check_block(&f.tf, p + 2 * PS, 2);  /* the write was lost */
    fixture_close(&f);
    policy_end();
}

/* loadblk that reads another block of the same mapping, which fails. */
static int load_reading_blk3(TestFile *tf, blk_t blk, void *buf)
{
    const unsigned char *p = tf->hook_arg;

    if (blk != 0)
        return TESTFILE_CONTINUE;
    memset(buf, 0, tf->file.blksize);
    (void)peek(p + 3 * tf->file.blksize, 0);     /* fails: a stand-in */
    return 0;                                    /* "success" */
}

TEST(a_load_that_read_a_standin_is_not_cached)
{
    Fixture f;
    VMA *vma;
    unsigned char *p;

    policy_begin();
    fixture_open(&f, PS, 4, 4 * PS);
    p = fixture_mmap(&f, 0, 4, &vma);
    f.tf.on_load = load_reading_blk3;
    f.tf.hook_arg = p;
    atomic_store(&f.tf.load_fail_blk, 3);
    (void)peek(p, 0);
    CHECK_EQ(fixture_stats(&f).npages, 0);       /* block 0 not cached */
    CHECK_EQ(reports.n, 2);                      /* block 3, then block 0 */
    CHECK_EQ(reports.blk, 0);
    virt_fault_reported();
    f.tf.on_load = NULL;
    atomic_store(&f.tf.load_fail_blk, -1);
    testfile_check_block(&f.tf, p, 0);
    testfile_check_block(&f.tf, p + 3 * PS, 3);
    fixture_close(&f);
    policy_end();
}

/* loadblk touching the very block it loads. */
static int load_self(TestFile *tf, blk_t blk, void *buf)
{
    const unsigned char *p = tf->hook_arg;

    (void)buf;
    (void)peek(p + blk * tf->file.blksize, 0);
    return 0;
}

TEST(loadblk_touching_its_own_block_gets_a_standin)
{
    Fixture f;
    VMA *vma;
    unsigned char *p;

    policy_begin();
    fixture_open(&f, PS, 4, 4 * PS);
    p = fixture_mmap(&f, 0, 4, &vma);
    f.tf.on_load = load_self;
    f.tf.hook_arg = p;
    CHECK(block_is_zero(p + PS, PS));
    CHECK_EQ(reports.blk, 1);
    CHECK_EQ(fixture_stats(&f).npages, 0);
    virt_fault_reported();
    f.tf.on_load = NULL;
    testfile_check_block(&f.tf, p + PS, 1);
    fixture_close(&f);
    policy_end();
}

TEST(writes_of_a_failing_thread_mark_the_handle_failed)
{
    Fixture a, b;
    VMA *va, *vb;
    unsigned char *pa, *pb;

    policy_begin();
    fixture_open(&a, PS, 4, 4 * PS);
    fixture_open(&b, PS, 4, 4 * PS);
    pa = fixture_mmap(&a, 0, 4, &va);
    pb = fixture_mmap(&b, 0, 4, &vb);
    testfile_check_block(&b.tf, pb, 0);          /* loaded, clean */
    atomic_store(&a.tf.load_fail_blk, 0);
    (void)peek(pa, 0);                           /* fails */
    CHECK(!fileh_fault_failed(b.fileh));
    poke(pb, 0, peek(pa, 0) + 1);                /* b computed from a stand-in */
    CHECK(fileh_fault_failed(b.fileh));
    CHECK_ERR(fileh_dirty_writeout(b.fileh, WRITEOUT_STORE), -ENOTRECOVERABLE);
    virt_fault_reported();
    CHECK_OK(fileh_dirty_discard(b.fileh));
    fixture_close(&a);
    fixture_close(&b);
    policy_end();
}

/* A thread that fails and exits without reporting. */
static void *fail_and_exit(void *arg)
{
    (void)peek(arg, 0);
    return NULL;
}

TEST(a_thread_exiting_while_failing_takes_its_standins_along)
{
    Fixture f;
    VMA *vma;
    unsigned char *p;
    pthread_t t;

    policy_begin();
    fixture_open(&f, PS, 4, 4 * PS);
    p = fixture_mmap(&f, 0, 4, &vma);
    atomic_store(&f.tf.load_fail_blk, 2);
    CHECK_OK(-pthread_create(&t, NULL, fail_and_exit, p + 2 * PS));
    CHECK_OK(-pthread_join(t, NULL));
    CHECK_EQ(reports.n, 1);
    CHECK(!virt_fault_failing());                /* that was another thread */
    atomic_store(&f.tf.load_fail_blk, -1);
    testfile_check_block(&f.tf, p + 2 * PS, 2);  /* no stand-in left */
    fixture_close(&f);
    policy_end();
}

TEST(unmapping_a_vma_forgets_its_standins)
{
    Fixture f;
    VMA *vma;
    unsigned char *p;

    policy_begin();
    fixture_open(&f, PS, 4, 4 * PS);
    p = fixture_mmap(&f, 0, 4, &vma);
    atomic_store(&f.tf.load_fail_blk, 1);
    CHECK(block_is_zero(p + PS, PS));
    vma_unmap(vma);
    virt_fault_reported();                       /* nothing left to remove */
    CHECK(!virt_fault_failing());
    fixture_close(&f);
    policy_end();
}

/* loadblk keeps its buffer (VIRT_BUF_KEPT) without handing the content over
 * (virt_loadbuf_save): nothing was loaded, so the fault fails, and the kept
 * memory is the loader's. */
static int keep_without_saving(TestFile *tf, blk_t blk, void *buf)
{
    void **kept = tf->hook_arg;
    size_t bs = tf->file.blksize;

    testfile_fill(buf, bs, blk, testfile_version(tf, blk));
    CHECK(mmap(buf, bs, PROT_READ | PROT_WRITE,
               MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == buf);
    *kept = buf;
    return VIRT_BUF_KEPT;
}

TEST(loadblk_keeping_its_buffer_unsaved_fails_the_fault)
{
    void *kept = NULL;
    Fixture f;
    VMA *vma;
    unsigned char *p;
    size_t bs = 2 * PS;

    policy_begin();
    fixture_open(&f, bs, 4, 4 * bs);
    p = fixture_mmap(&f, 0, 4, &vma);
    f.tf.on_load = keep_without_saving;
    f.tf.hook_arg = &kept;
    CHECK(block_is_zero(p + bs, bs));           /* a stand-in, not the block */
    CHECK_EQ(reports.n, 1);
    CHECK_EQ(reports.err, -EIO);
    CHECK(kept != NULL);
    CHECK_OK(munmap(kept, bs));
    CHECK_EQ(fixture_stats(&f).npages, 0);
    virt_fault_reported();
    f.tf.on_load = NULL;
    testfile_check_block(&f.tf, p + bs, 1);      /* loads normally again */
    fixture_close(&f);
    policy_end();
}
