/* The virtual-memory core through its public API (virtmem.h), driven by a C
 * backend (testfile.c): loading, sharing, dirty tracking, writeout, discard,
 * invalidate, capacity.  Crashes, error handlers and threads are in
 * test_virtmem_fault.c. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "fixture.h"

TEST(virt_blksize_check)
{
    CHECK_EQ(PS, (size_t)sysconf(_SC_PAGESIZE));
    CHECK_ERR(virt_blksize_check(0), -EINVAL);
    CHECK_ERR(virt_blksize_check(PS - 1), -EINVAL);
    CHECK_ERR(virt_blksize_check(PS + 1), -EINVAL);
    CHECK_ERR(virt_blksize_check(VIRT_BLKSIZE_MAX + PS), -EINVAL);
    CHECK_OK(virt_blksize_check(PS));
    CHECK_OK(virt_blksize_check(3 * PS));
    CHECK_OK(virt_blksize_check((size_t)8 << 20));
    CHECK_OK(virt_blksize_check(VIRT_BLKSIZE_MAX));
}

TEST(fileh_open_errors)
{
    TestFile tf;
    BigFileH *fileh = NULL;
    RAM *ram;

    CHECK_OK(ram_new(&ram, 4 * PS));
    testfile_init(&tf, PS + 8, 4);
    CHECK_ERR(fileh_open(&fileh, &tf.file, ram), -EINVAL);
    tf.file.blksize = 0;
    CHECK_ERR(fileh_open(&fileh, &tf.file, ram), -EINVAL);
    tf.file.blksize = 8 * PS;        /* bigger than the RAM */
    CHECK_ERR(fileh_open(&fileh, &tf.file, ram), -EINVAL);
    CHECK(fileh == NULL);
    CHECK_EQ(atomic_load(&tf.nrelease), 0);   /* failed opens hold nothing */

    tf.file.blksize = 4 * PS;        /* exactly the capacity is fine */
    CHECK_OK(fileh_open(&fileh, &tf.file, ram));
    CHECK(fileh_file(fileh) == &tf.file);
    CHECK(fileh_ram(fileh) == ram);
    fileh_close(fileh);
    CHECK_EQ(atomic_load(&tf.nrelease), 1);
    ram_decref(ram);
    testfile_fini(&tf);
}

TEST(fileh_open_default_ram)
{
    TestFile tf;
    BigFileH *fileh;
    RAM *def;
    VMA *vma;

    CHECK_OK(setenv("ZBIGARRAY_RAM_MAX", "1M", 1));
    testfile_init(&tf, PS, 4);
    CHECK_OK(fileh_open(&fileh, &tf.file, NULL));
    CHECK_OK(ram_default(&def));
    CHECK(fileh_ram(fileh) == def);
    CHECK_OK(fileh_mmap(&vma, fileh, 0, 4));
    testfile_check_block(&tf, (void *)vma_addr_start(vma), 0);
    fileh_close(fileh);     /* also unmaps the VMA */
    testfile_fini(&tf);
}

TEST(fileh_mmap_errors)
{
    Fixture f;
    VMA *vma = NULL;
    long r;

    fixture_open(&f, PS, 16, 16 * PS);
    CHECK_ERR(fileh_mmap(&vma, f.fileh, 0, 0), -EINVAL);
    CHECK_ERR(fileh_mmap(&vma, f.fileh, UINT64_MAX, 2), -EOVERFLOW);
    CHECK_ERR(fileh_mmap(&vma, f.fileh, 1, UINT64_MAX), -EOVERFLOW);
    CHECK_ERR(fileh_mmap(&vma, f.fileh, 0, SIZE_MAX / PS + 1), -EOVERFLOW);
    /* fits size_t, not the address space */
    r = fileh_mmap(&vma, f.fileh, 0, (blk_t)1 << 50);
    CHECK(r == -EOVERFLOW || r == -ENOMEM);
    CHECK(vma == NULL);
    CHECK_EQ(fixture_stats(&f).nvma, 0);

    /* the very last blocks blk_t can name are fine */
    CHECK_OK(fileh_mmap(&vma, f.fileh, UINT64_MAX - 2, 2));
    testfile_check_block(&f.tf, (void *)vma_addr_start(vma), UINT64_MAX - 2);
    testfile_check_block(&f.tf, (void *)(vma_addr_start(vma) + PS),
                         UINT64_MAX - 1);
    fixture_close(&f);
}

TEST(vma_accessors)
{
    Fixture f;
    VMA *a, *b;
    unsigned char *p;

    fixture_open(&f, 2 * PS, 16, 16 * PS);
    p = fixture_mmap(&f, 3, 5, &a);
    CHECK(p != NULL);
    CHECK_EQ(vma_addr_stop(a) - vma_addr_start(a), 5 * 2 * PS);
    CHECK_EQ(vma_addr_start(a) % PS, 0);
    CHECK_EQ(vma_pgoffset(a), 3);
    CHECK_EQ(vma_pglen(a), 5);
    CHECK_EQ(vma_pagesize(a), 2 * PS);
    CHECK(vma_fileh(a) == f.fileh);
    fixture_mmap(&f, 0, 1, &b);
    CHECK_EQ(fixture_stats(&f).nvma, 2);
    vma_unmap(a);
    CHECK_EQ(fixture_stats(&f).nvma, 1);
    vma_unmap(b);
    CHECK_EQ(fixture_stats(&f).nvma, 0);
    fixture_close(&f);
}

TEST(lazy_loading_loads_each_block_once)
{
    enum { N = 32 };
    Fixture f;
    VMA *vma;
    unsigned char *p;
    FileHStats st;
    blk_t order[N], i;
    int pass;

    fixture_open(&f, 2 * PS, N, N * 2 * PS);
    p = fixture_mmap(&f, 0, N, &vma);
    st = fixture_stats(&f);
    CHECK_EQ(st.npages, 0);          /* nothing before the first touch */
    CHECK_EQ(st.nloadblk, 0);

    for (i = 0; i < N; i++)
        order[i] = (i * 7) % N;      /* not in file order */
    for (pass = 0; pass < 3; pass++) {
        for (i = 0; i < N; i++) {
            blk_t blk = order[i];
            testfile_check_block(&f.tf, p + blk * 2 * PS, blk);
            CHECK_EQ(testfile_nload(&f.tf, blk), 1);
        }
    }
    st = fixture_stats(&f);
    CHECK_EQ(st.npages, N);
    CHECK_EQ(st.nloadblk, N);
    CHECK_EQ(st.ndirty, 0);
    CHECK_EQ(fixture_ram_stats(&f).npages, N);
    CHECK_EQ(fixture_ram_stats(&f).used, N * 2 * PS);
    CHECK_EQ(fixture_ram_stats(&f).nclean, N);
    CHECK(!fileh_isdirty(f.fileh));
    fixture_close(&f);
}

/* A read touching only the last OS page of a block loads the whole block. */
TEST(fault_anywhere_in_block_loads_whole_block)
{
    Fixture f;
    VMA *vma;
    unsigned char *p;
    size_t bs = 4 * PS;

    fixture_open(&f, bs, 4, 16 * bs);
    p = fixture_mmap(&f, 10, 2, &vma);          /* pages 10, 11 */
    CHECK_EQ(peek(p + bs + bs - 8, 0), testfile_word(11, 0, bs / 8 - 1));
    testfile_check_block(&f.tf, p + bs, 11);
    CHECK_EQ(fixture_stats(&f).nloadblk, 1);
    vma_unmap(vma);
    fixture_close(&f);
}

TEST(two_vmas_of_one_handle_share_pages)
{
    Fixture f;
    VMA *a, *b;
    unsigned char *pa, *pb;
    blk_t blk;

    fixture_open(&f, PS, 16, 16 * PS);
    pa = fixture_mmap(&f, 0, 8, &a);            /* [0, 8)  */
    pb = fixture_mmap(&f, 4, 8, &b);            /* [4, 12) */
    CHECK(pa != pb);

    for (blk = 4; blk < 8; blk++) {
        testfile_check_block(&f.tf, pa + blk * PS, blk);
        testfile_check_block(&f.tf, pb + (blk - 4) * PS, blk);
        CHECK_EQ(testfile_nload(&f.tf, blk), 1);
    }
    /* a write through one is seen through the other, both ways */
    poke(pa + 5 * PS, 3, 0xdeadbeef);
    CHECK_EQ(peek(pb + 1 * PS, 3), 0xdeadbeef);
    poke(pb + 2 * PS, 0, 0xfeedface);
    CHECK_EQ(peek(pa + 6 * PS, 0), 0xfeedface);
    CHECK_EQ(fixture_stats(&f).ndirty, 2);
    CHECK_EQ(fixture_stats(&f).nloadblk, 4);
    /* unmapping one keeps the pages for the other */
    vma_unmap(a);
    CHECK_EQ(peek(pb + 1 * PS, 3), 0xdeadbeef);
    CHECK_EQ(fixture_stats(&f).nloadblk, 4);
    fixture_close(&f);
}

TEST(writes_make_pages_dirty)
{
    Fixture f;
    VMA *vma;
    unsigned char *p;

    fixture_open(&f, PS, 8, 8 * PS);
    p = fixture_mmap(&f, 0, 8, &vma);
    testfile_check_block(&f.tf, p + 2 * PS, 2);     /* read: clean */
    CHECK(!fileh_isdirty(f.fileh));
    CHECK_EQ(fixture_stats(&f).ndirty, 0);

    poke(p + 2 * PS, 1, 1);                         /* write after read */
    CHECK(fileh_isdirty(f.fileh));
    CHECK_EQ(fixture_stats(&f).ndirty, 1);
    poke(p + 2 * PS, 2, 2);                         /* same page again */
    CHECK_EQ(fixture_stats(&f).ndirty, 1);
    poke(p + 6 * PS, 0, 3);                         /* write first touch */
    CHECK_EQ(fixture_stats(&f).ndirty, 2);
    CHECK_EQ(testfile_nload(&f.tf, 6), 1);          /* loaded before write */
    CHECK_EQ(peek(p + 6 * PS, 1), testfile_word(6, 0, 1));
    CHECK_EQ(fixture_ram_stats(&f).nclean, 0);
    fixture_close(&f);
}

/* Check the store log: exactly @n records, blocks @blks in that order, each
 * holding the file pattern except word @i set to the marker @blk + 1000. */
static void check_stores(TestFile *tf, const blk_t *blks, size_t n, size_t i)
{
    size_t k, w;

    CHECK_EQ(tf->nstores, n);
    for (k = 0; k < n; k++) {
        const uint64_t *d = (const uint64_t *)tf->stores[k].data;
        CHECK_EQ(tf->stores[k].blk, blks[k]);
        for (w = 0; w < tf->file.blksize / 8; w++)
            CHECK_EQ(d[w], w == i ? blks[k] + 1000
                               : testfile_word(blks[k], 0, w));
    }
}

TEST(writeout_store_passes_dirty_blocks_in_order)
{
    static const blk_t dirty[] = { 1, 3, 5, 9 };
    Fixture f;
    VMA *vma;
    unsigned char *p;

    fixture_open(&f, PS, 16, 16 * PS);
    p = fixture_mmap(&f, 0, 16, &vma);
    testfile_check_block(&f.tf, p + 4 * PS, 4);     /* clean: not stored */
    poke(p + 9 * PS, 7, 1009);
    poke(p + 3 * PS, 7, 1003);
    poke(p + 5 * PS, 7, 1005);
    poke(p + 1 * PS, 7, 1001);

    CHECK_OK(fileh_dirty_writeout(f.fileh, WRITEOUT_STORE));
    check_stores(&f.tf, dirty, 4, 7);
    CHECK_EQ(fixture_stats(&f).nstoreblk, 4);
    /* STORE alone leaves them dirty */
    CHECK(fileh_isdirty(f.fileh));
    CHECK_EQ(fixture_stats(&f).ndirty, 4);

    testfile_clear_stores(&f.tf);
    CHECK_OK(fileh_dirty_writeout(f.fileh, WRITEOUT_STORE));
    check_stores(&f.tf, dirty, 4, 7);
    fixture_close(&f);
}

TEST(writeout_markstored_then_next_write_seen_again)
{
    static const blk_t one[] = { 3 };
    Fixture f;
    VMA *vma;
    unsigned char *p;

    fixture_open(&f, PS, 8, 8 * PS);
    p = fixture_mmap(&f, 0, 8, &vma);
    poke(p + 3 * PS, 2, 1003);
    poke(p + 6 * PS, 2, 1006);
    CHECK_OK(fileh_dirty_writeout(f.fileh, WRITEOUT_STORE |
                                           WRITEOUT_MARKSTORED));
    CHECK_EQ(f.tf.nstores, 2);
    CHECK(!fileh_isdirty(f.fileh));
    CHECK_EQ(fixture_stats(&f).ndirty, 0);
    CHECK_EQ(fixture_ram_stats(&f).nclean, 2);
    CHECK_EQ(peek(p + 6 * PS, 2), 1006);            /* data kept */

    /* the next write to a stored page is seen */
    poke(p + 3 * PS, 2, 1003);
    CHECK(fileh_isdirty(f.fileh));
    CHECK_EQ(fixture_stats(&f).ndirty, 1);
    testfile_clear_stores(&f.tf);
    CHECK_OK(fileh_dirty_writeout(f.fileh, WRITEOUT_STORE));
    check_stores(&f.tf, one, 1, 2);

    /* MARKSTORED alone: clean without any storeblk */
    testfile_clear_stores(&f.tf);
    CHECK_OK(fileh_dirty_writeout(f.fileh, WRITEOUT_MARKSTORED));
    CHECK_EQ(f.tf.nstores, 0);
    CHECK(!fileh_isdirty(f.fileh));
    CHECK_EQ(testfile_nload(&f.tf, 3), 1);          /* never reloaded */
    fixture_close(&f);
}

TEST(writeout_rejects_bad_flags)
{
    Fixture f;
    VMA *vma;
    unsigned char *p;

    fixture_open(&f, PS, 4, 4 * PS);
    p = fixture_mmap(&f, 0, 4, &vma);
    poke(p, 0, 1);
    CHECK_ERR(fileh_dirty_writeout(f.fileh, 0), -EINVAL);
    CHECK_ERR(fileh_dirty_writeout(f.fileh, 4), -EINVAL);
    CHECK_ERR(fileh_dirty_writeout(f.fileh, WRITEOUT_STORE | 8), -EINVAL);
    CHECK_EQ(f.tf.nstores, 0);
    CHECK(fileh_isdirty(f.fileh));
    /* nothing dirty: a writeout is a no-op */
    CHECK_OK(fileh_dirty_discard(f.fileh));
    CHECK_OK(fileh_dirty_writeout(f.fileh, WRITEOUT_STORE |
                                           WRITEOUT_MARKSTORED));
    CHECK_EQ(f.tf.nstores, 0);
    fixture_close(&f);
}

TEST(storeblk_failure_keeps_pages_dirty)
{
    static const blk_t tried[] = { 1, 3 };
    static const blk_t all[] = { 1, 3, 5 };
    Fixture f;
    VMA *vma;
    unsigned char *p;

    fixture_open(&f, PS, 8, 8 * PS);
    p = fixture_mmap(&f, 0, 8, &vma);
    poke(p + 5 * PS, 0, 1005);
    poke(p + 1 * PS, 0, 1001);
    poke(p + 3 * PS, 0, 1003);

    atomic_store(&f.tf.store_fail_blk, 3);
    CHECK_ERR(fileh_dirty_writeout(f.fileh, WRITEOUT_STORE |
                                            WRITEOUT_MARKSTORED), -EIO);
    check_stores(&f.tf, tried, 2, 0);      /* stopped at the failure */
    CHECK_EQ(f.tf.stores[1].ret, -EIO);
    CHECK_EQ(fixture_stats(&f).ndirty, 3); /* nothing marked stored */
    CHECK_EQ(fixture_stats(&f).nstoreblk, 1);
    CHECK_EQ(peek(p + 1 * PS, 0), 1001);   /* data intact */
    CHECK_EQ(peek(p + 3 * PS, 0), 1003);
    CHECK_EQ(peek(p + 5 * PS, 0), 1005);

    /* pages still write-tracked as dirty: writing again adds nothing */
    poke(p + 5 * PS, 1, testfile_word(5, 0, 1));
    CHECK_EQ(fixture_stats(&f).ndirty, 3);

    atomic_store(&f.tf.store_fail_blk, -1);
    testfile_clear_stores(&f.tf);
    CHECK_OK(fileh_dirty_writeout(f.fileh, WRITEOUT_STORE |
                                           WRITEOUT_MARKSTORED));
    check_stores(&f.tf, all, 3, 0);
    CHECK(!fileh_isdirty(f.fileh));
    fixture_close(&f);
}

/* storeblk calls back into the core on its own handle. */
struct reentry { BigFileH *fileh; int wr, disc, inval_self, inval_other; };

static int store_reenter(TestFile *tf, blk_t blk, const void *buf)
{
    struct reentry *r = tf->hook_arg;

    (void)buf;
    r->wr = fileh_dirty_writeout(r->fileh, WRITEOUT_STORE);
    r->disc = fileh_dirty_discard(r->fileh);
    r->inval_self = fileh_invalidate_page(r->fileh, blk);
    r->inval_other = fileh_invalidate_page(r->fileh, blk + 1);
    return TESTFILE_CONTINUE;
}

TEST(writeout_reentry_from_storeblk_is_busy)
{
    struct reentry r;
    Fixture f;
    VMA *vma;
    unsigned char *p;

    fixture_open(&f, PS, 4, 4 * PS);
    p = fixture_mmap(&f, 0, 4, &vma);
    testfile_check_block(&f.tf, p + PS, 1);   /* clean page 1 */
    poke(p, 0, 1000);
    r.fileh = f.fileh;
    f.tf.on_store = store_reenter;
    f.tf.hook_arg = &r;
    CHECK_OK(fileh_dirty_writeout(f.fileh, WRITEOUT_STORE |
                                           WRITEOUT_MARKSTORED));
    CHECK_EQ(r.wr, -EBUSY);
    CHECK_EQ(r.disc, -EBUSY);
    CHECK_EQ(r.inval_self, -EBUSY);   /* block 0 is being stored */
    CHECK_OK(r.inval_other);          /* a clean page may go */
    CHECK(!fileh_isdirty(f.fileh));
    CHECK_EQ(peek(p, 0), 1000);
    f.tf.on_store = NULL;
    fixture_close(&f);
}

/* MARKSTORED write-protects the page in every VMA: a write through any of
 * them is seen again. */
TEST(markstored_protects_every_mapping)
{
    Fixture f;
    VMA *a, *b;
    unsigned char *pa, *pb;

    fixture_open(&f, PS, 4, 4 * PS);
    pa = fixture_mmap(&f, 0, 4, &a);
    pb = fixture_mmap(&f, 0, 4, &b);
    poke(pa + PS, 0, 1);                 /* writable in a */
    poke(pb + PS, 1, 2);                 /* writable in b */
    CHECK_EQ(fixture_stats(&f).ndirty, 1);
    CHECK_OK(fileh_dirty_writeout(f.fileh, WRITEOUT_MARKSTORED));
    CHECK_EQ(fixture_stats(&f).ndirty, 0);

    poke(pb + PS, 2, 3);
    CHECK_EQ(fixture_stats(&f).ndirty, 1);
    CHECK_OK(fileh_dirty_writeout(f.fileh, WRITEOUT_MARKSTORED));
    poke(pa + PS, 3, 4);
    CHECK_EQ(fixture_stats(&f).ndirty, 1);
    CHECK_EQ(peek(pb + PS, 0), 1);
    CHECK_EQ(peek(pa + PS, 1), 2);
    CHECK_EQ(peek(pa + PS, 2), 3);
    CHECK_EQ(peek(pb + PS, 3), 4);
    CHECK_EQ(testfile_nload(&f.tf, 1), 1);
    fixture_close(&f);
}

/* Each handle has its own page cache: one file opened twice. */
TEST(two_handles_of_one_file_are_independent)
{
    TestFile tf;
    BigFileH *h1, *h2;
    VMA *v1, *v2;
    unsigned char *p1, *p2;
    RAM *ram;

    testfile_init(&tf, PS, 4);
    CHECK_OK(ram_new(&ram, 16 * PS));
    CHECK_OK(fileh_open(&h1, &tf.file, ram));
    CHECK_OK(fileh_open(&h2, &tf.file, ram));
    CHECK_OK(fileh_mmap(&v1, h1, 0, 4));
    CHECK_OK(fileh_mmap(&v2, h2, 0, 4));
    p1 = (unsigned char *)vma_addr_start(v1);
    p2 = (unsigned char *)vma_addr_start(v2);

    poke(p1 + 2 * PS, 0, 99);
    CHECK_EQ(peek(p2 + 2 * PS, 0), testfile_word(2, 0, 0));
    CHECK(fileh_isdirty(h1));
    CHECK(!fileh_isdirty(h2));
    CHECK_EQ(testfile_nload(&tf, 2), 2);
    CHECK_OK(fileh_dirty_discard(h1));
    CHECK_EQ(peek(p1 + 2 * PS, 0), testfile_word(2, 0, 0));

    fileh_close(h1);
    CHECK_EQ(atomic_load(&tf.nrelease), 1);
    testfile_check_block(&tf, p2 + 3 * PS, 3);     /* h2 unaffected */
    fileh_close(h2);
    CHECK_EQ(atomic_load(&tf.nrelease), 2);
    ram_decref(ram);
    testfile_fini(&tf);
}

TEST(discard_restores_file_content)
{
    Fixture f;
    VMA *vma;
    unsigned char *p;

    fixture_open(&f, 2 * PS, 8, 8 * 2 * PS);
    p = fixture_mmap(&f, 0, 8, &vma);
    testfile_check_block(&f.tf, p + 0 * 2 * PS, 0);
    poke(p + 2 * 2 * PS, 5, 77);
    poke(p + 7 * 2 * PS, 5, 77);
    CHECK_EQ(fixture_stats(&f).ndirty, 2);

    CHECK_OK(fileh_dirty_discard(f.fileh));
    CHECK(!fileh_isdirty(f.fileh));
    CHECK_EQ(fixture_stats(&f).ndirty, 0);
    CHECK_EQ(fixture_stats(&f).npages, 1);    /* the clean page stays */
    testfile_check_block(&f.tf, p + 2 * 2 * PS, 2);
    testfile_check_block(&f.tf, p + 7 * 2 * PS, 7);
    CHECK_EQ(testfile_nload(&f.tf, 2), 2);    /* reloaded */
    CHECK_EQ(testfile_nload(&f.tf, 0), 1);    /* kept */
    CHECK_EQ(f.tf.nstores, 0);
    /* and write-tracked again */
    poke(p + 2 * 2 * PS, 5, 78);
    CHECK_EQ(fixture_stats(&f).ndirty, 1);
    fixture_close(&f);
}

TEST(invalidate_reloads)
{
    Fixture f;
    VMA *a, *b;
    unsigned char *pa, *pb;

    fixture_open(&f, PS, 8, 8 * PS);
    pa = fixture_mmap(&f, 0, 8, &a);
    pb = fixture_mmap(&f, 0, 8, &b);
    testfile_check_block(&f.tf, pa + 3 * PS, 3);
    testfile_check_block(&f.tf, pb + 3 * PS, 3);
    testfile_check_block(&f.tf, pa + 4 * PS, 4);

    testfile_bump(&f.tf, 3);
    CHECK_OK(fileh_invalidate_page(f.fileh, 3));
    testfile_check_block(&f.tf, pb + 3 * PS, 3);     /* new version */
    testfile_check_block(&f.tf, pa + 3 * PS, 3);
    CHECK_EQ(testfile_nload(&f.tf, 3), 2);
    CHECK_EQ(testfile_nload(&f.tf, 4), 1);            /* others untouched */

    /* a page not held: nothing to do */
    CHECK_OK(fileh_invalidate_page(f.fileh, 6));
    CHECK_OK(fileh_invalidate_page(f.fileh, UINT64_MAX));
    CHECK_EQ(testfile_nload(&f.tf, 6), 0);
    fixture_close(&f);
}

/* Bytes of @b[0..n) before its trailing zero bytes. */
static size_t nonzero_len(const unsigned char *b, size_t n)
{
    while (n > 0 && b[n - 1] == 0)
        n--;
    return n;
}

/* fileh_page_read copies a page as it is now, dirty or clean, without
 * loading or faulting anything, and tells its length without trailing
 * zeros; a block without a page is -ENOENT. */
TEST(page_read_copies_a_page_as_it_is)
{
    Fixture f;
    VMA *vma;
    unsigned char *p, *dst = malloc(PS), *want = malloc(PS), *odd = malloc(PS + 1);

    CHECK(dst != NULL && want != NULL && odd != NULL);
    fixture_open(&f, PS, 8, 8 * PS);
    p = fixture_mmap(&f, 0, 8, &vma);
    CHECK_ERR(fileh_page_read(f.fileh, 2, dst), -ENOENT);     /* never loaded */
    CHECK_EQ(testfile_nload(&f.tf, 2), 0);
    testfile_check_block(&f.tf, p + 2 * PS, 2);
    testfile_fill(want, PS, 2, 0);
    CHECK_EQ(fileh_page_read(f.fileh, 2, dst), (ssize_t)nonzero_len(want, PS));
    CHECK(memcmp(dst, want, PS) == 0);                         /* clean */
    poke(p + 2 * PS, 5, 0xabcdef);                             /* dirty */
    memset(p + 2 * PS + PS / 2, 0, PS / 2);                    /* zeros after */
    CHECK_EQ(fileh_page_read(f.fileh, 2, dst), (ssize_t)nonzero_len(p + 2 * PS, PS));
    CHECK(memcmp(dst, p + 2 * PS, PS) == 0);
    CHECK_EQ(peek(dst, 5), 0xabcdef);
    memset(p + 2 * PS, 0, PS);
    p[2 * PS + 3] = 1;
    CHECK_EQ(fileh_page_read(f.fileh, 2, dst), 4);            /* byte-exact */
    p[2 * PS + PS - 9] = 7;
    CHECK_EQ(fileh_page_read(f.fileh, 2, odd + 1), PS - 8);   /* any alignment */
    CHECK(memcmp(odd + 1, p + 2 * PS, PS) == 0);
    memset(p + 2 * PS, 0, PS);
    CHECK_EQ(fileh_page_read(f.fileh, 2, dst), 0);            /* all zeros */
    CHECK_EQ(testfile_nload(&f.tf, 2), 1);                     /* loaded nothing */
    CHECK_OK(fileh_invalidate_page(f.fileh, 2));
    CHECK_ERR(fileh_page_read(f.fileh, 2, dst), -ENOENT);     /* dropped */
    fixture_close(&f);
    free(dst);
    free(want);
    free(odd);
}

/* Invalidating a dirty page drops it with its changes (the file changed
 * under it: the newer file content wins), and it is no longer dirty. */
TEST(invalidate_drops_a_dirty_page)
{
    Fixture f;
    VMA *vma;
    unsigned char *p;

    fixture_open(&f, PS, 4, 4 * PS);
    p = fixture_mmap(&f, 0, 4, &vma);
    poke(p + PS, 0, 1);
    poke(p + 2 * PS, 0, 2);
    CHECK_EQ(fixture_stats(&f).ndirty, 2);
    testfile_bump(&f.tf, 1);
    CHECK_OK(fileh_invalidate_page(f.fileh, 1));
    CHECK_EQ(fixture_stats(&f).ndirty, 1);
    testfile_check_block(&f.tf, p + PS, 1);
    CHECK_OK(fileh_dirty_writeout(f.fileh, WRITEOUT_STORE));
    CHECK_EQ(f.tf.nstores, 1);
    CHECK_EQ(f.tf.stores[0].blk, 2);
    fixture_close(&f);
}

/* loadblk reads another handle's mapping: a fault inside a fault, with
 * the source's pages dirty (so they are not the source file's content). */
static int load_via_other(TestFile *tf, blk_t blk, void *buf)
{
    const unsigned char *src = tf->hook_arg;

    memcpy(buf, src + blk * tf->file.blksize, tf->file.blksize);
    return 0;
}

TEST(loadblk_may_touch_another_mapping)
{
    Fixture src, dst;
    VMA *vs, *vd;
    unsigned char *ps, *pd;
    blk_t blk;

    fixture_open(&src, PS, 8, 8 * PS);
    fixture_open(&dst, PS, 8, 8 * PS);
    ps = fixture_mmap(&src, 0, 8, &vs);
    pd = fixture_mmap(&dst, 0, 8, &vd);
    for (blk = 0; blk < 8; blk += 2)
        poke(ps + blk * PS, 1, 500 + blk);
    dst.tf.on_load = load_via_other;
    dst.tf.hook_arg = ps;
    for (blk = 0; blk < 8; blk++) {
        CHECK_EQ(peek(pd + blk * PS, 1),
                 blk % 2 ? testfile_word(blk, 0, 1) : 500 + blk);
        CHECK_EQ(peek(pd + blk * PS, 2), testfile_word(blk, 0, 2));
    }
    CHECK_EQ(fixture_stats(&src).nloadblk, 8);
    CHECK_EQ(fixture_stats(&dst).nloadblk, 8);
    fixture_close(&dst);
    fixture_close(&src);
}

/* loadblk keeps its buffer (VIRT_BUF_KEPT): it hands the content over
 * first, then replaces the range with memory of its own, so what it keeps
 * is its own. */
static int load_and_keep(TestFile *tf, blk_t blk, void *buf)
{
    void **kept = tf->hook_arg;
    size_t bs = tf->file.blksize;

    testfile_fill(buf, bs, blk, testfile_version(tf, blk));
    CHECK_OK(virt_loadbuf_save(buf));
    CHECK(virt_loadbuf_save(buf) == -EINVAL);           /* once */
    CHECK(mmap(buf, bs, PROT_READ | PROT_WRITE,
               MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == buf);
    kept[blk] = buf;
    return VIRT_BUF_KEPT;
}

TEST(loadblk_may_keep_its_buffer)
{
    void *kept[4] = { NULL, NULL, NULL, NULL };
    Fixture f;
    VMA *vma;
    unsigned char *p;
    blk_t blk;

    fixture_open(&f, 2 * PS, 4, 8 * PS);
    p = fixture_mmap(&f, 0, 4, &vma);
    f.tf.on_load = load_and_keep;
    f.tf.hook_arg = kept;
    for (blk = 0; blk < 4; blk++) {
        testfile_check_block(&f.tf, p + blk * 2 * PS, blk);
        CHECK(kept[blk] != NULL);
        memset(kept[blk], 0x66, 2 * PS);        /* ours now */
    }
    for (blk = 0; blk < 4; blk++) {
        testfile_check_block(&f.tf, p + blk * 2 * PS, blk);
        CHECK_OK(munmap(kept[blk], 2 * PS));
    }
    CHECK_EQ(fixture_stats(&f).nloadblk, 4);
    fixture_close(&f);
}

static void open_use_close(void)
{
    Fixture f;
    VMA *a, *b;
    unsigned char *p;
    blk_t blk;

    fixture_open(&f, 2 * PS, 16, 8 * 2 * PS);
    p = fixture_mmap(&f, 0, 16, &a);
    fixture_mmap(&f, 4, 4, &b);
    for (blk = 0; blk < 16; blk++)
        testfile_check_block(&f.tf, p + blk * 2 * PS, blk);
    poke(p, 0, 1);
    CHECK_OK(fileh_dirty_writeout(f.fileh, WRITEOUT_STORE |
                                           WRITEOUT_MARKSTORED));
    poke(p + 2 * PS, 0, 1);
    vma_unmap(b);
    fixture_close(&f);
}

/* Closing a handle and dropping its RAM gives back every mapping it made
 * (VMAs, load windows, page aliases). */
TEST(close_leaves_no_mappings_behind)
{
    long before;

    open_use_close();             /* warm up the allocators */
    before = count_maps();
    open_use_close();
    open_use_close();
    CHECK_EQ(count_maps(), before);
}

/* Many VMAs created and unmapped in a scrambled order: every fault still
 * finds its own VMA (the registry stays sorted). */
TEST(many_vmas_in_any_order)
{
    enum { N = 600 };
    static VMA *vma[N];
    Fixture f;
    int i, k;

    fixture_open(&f, PS, N, 64 * PS);
    for (i = 0; i < N; i++)
        CHECK_OK(fileh_mmap(&vma[i], f.fileh, (blk_t)i, 1));
    for (k = 0; k < 3; k++) {
        for (i = 0; i < N; i++) {
            int j = (i * 37 + k * 11) % N;

            if (vma[j] == NULL) {
                CHECK_OK(fileh_mmap(&vma[j], f.fileh, (blk_t)j, 1));
            } else if ((i + k) % 3 == 0) {
                vma_unmap(vma[j]);
                vma[j] = NULL;
                continue;
            }
            testfile_check_block(&f.tf, (void *)vma_addr_start(vma[j]),
                                 (blk_t)j);
        }
    }
    k = 0;
    for (i = 0; i < N; i++)
        k += vma[i] != NULL;
    CHECK_EQ(fixture_stats(&f).nvma, k);
    for (i = 0; i < N; i += 2) {
        if (vma[i] != NULL)
            vma_unmap(vma[i]);
    }
    fixture_close(&f);                 /* the odd ones */
}

/* A block whose tail is zeros, loaded into a slot that held another block
 * before (its memory punched when that page went): the tail reads as zeros
 * although the load buffer, reused, held the other block's bytes, because
 * only the non-zero head is copied into a slot that has no memory. */
static int load_head_only(TestFile *tf, blk_t blk, void *buf)
{
    size_t bs = tf->file.blksize;
    memset(buf, 0, bs);
    memset(buf, 0x40 + (int)blk, PS / 2);
    return 0;
}

TEST(zero_tail_of_a_block_reads_as_zeros_in_a_reused_slot)
{
    Fixture f;
    VMA *vma;
    unsigned char *p;
    size_t bs = 4 * PS;

    fixture_open(&f, bs, 4, bs);                /* room for one page */
    p = fixture_mmap(&f, 0, 4, &vma);
    testfile_check_block(&f.tf, p, 0);          /* the whole slot written */
    CHECK_OK(fileh_invalidate_page(f.fileh, 0));        /* slot punched */
    f.tf.on_load = load_head_only;
    for (blk_t blk = 1; blk < 4; blk++) {
        const unsigned char *b = p + blk * bs;
        for (size_t i = 0; i < bs; i++)
            CHECK_EQ(b[i], i < PS / 2 ? 0x40 + blk : 0);
        CHECK_OK(fileh_invalidate_page(f.fileh, blk));
    }
    f.tf.on_load = NULL;
    fixture_close(&f);
}
