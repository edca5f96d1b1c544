/* A forked child shares the parent's memfds: it must neither write into the
 * parent's pages nor see slots the parent reuses.  The child starts with an
 * empty cache and reloads from the file; the parent is untouched. */
#define _GNU_SOURCE
#include <stdint.h>

#include "fixture.h"

typedef struct ForkCase {
    Fixture       *f;
    unsigned char *p;
} ForkCase;

static void child_reads_and_writes(void *arg)
{
    ForkCase *c = arg;
    Fixture *f = c->f;

    /* Nothing is cached here: both blocks reload from the file, and the
     * parent's uncommitted write to block 1 is not visible. */
    CHECK_EQ(fixture_stats(f).npages, 0);
    uint32_t before = testfile_nload(&f->tf, 0);
    testfile_check_block(&f->tf, c->p, 0);
    testfile_check_block(&f->tf, c->p + PS, 1);
    CHECK_EQ(testfile_nload(&f->tf, 0), before + 1);
    /* Writes stay in the child. */
    poke(c->p, 0, 0xC0FFEE);
    poke(c->p + PS, 0, 0xC0FFEE);
    CHECK_EQ(peek(c->p, 0), 0xC0FFEE);
    /* Pressure in the child: its RAM recycles its own memory only. */
    for (blk_t blk = 2; blk < 16; blk++)
        testfile_check_block(&f->tf, c->p + blk * PS, blk);
    CHECK_OK(fileh_dirty_writeout(f->fileh, WRITEOUT_STORE | WRITEOUT_MARKSTORED));
}

TEST(fork_child_starts_with_an_empty_cache_and_leaves_the_parent_alone)
{
    Fixture f;
    VMA *vma;
    ForkCase c;

    fixture_open(&f, PS, 16, 8 * PS);
    c.f = &f;
    c.p = fixture_mmap(&f, 0, 16, &vma);
    testfile_check_block(&f.tf, c.p, 0);
    poke(c.p + PS, 3, 0xABCD);                 /* block 1 dirty in the parent */

    CHECK_EXITED(test_run_forked(child_reads_and_writes, &c), 0);

    testfile_check_block(&f.tf, c.p, 0);        /* the child's writes did not reach us */
    CHECK_EQ(peek(c.p + PS, 3), 0xABCD);        /* nor did it clobber our dirty page */
    CHECK_EQ(peek(c.p + PS, 0), testfile_word(1, testfile_version(&f.tf, 1), 0));
    CHECK_EQ(fixture_stats(&f).ndirty, 1);
    /* The parent's RAM still works: pressure, recycling, writeout. */
    for (blk_t blk = 2; blk < 16; blk++)
        testfile_check_block(&f.tf, c.p + blk * PS, blk);
    CHECK_OK(fileh_dirty_writeout(f.fileh, WRITEOUT_STORE));
    fixture_close(&f);
}
