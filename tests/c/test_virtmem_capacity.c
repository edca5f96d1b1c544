/* RAM capacity seen through file handles: reclaim of clean pages under
 * pressure, block sizes from 4 KiB to 8 MiB (and not powers of two), one RAM
 * shared by handles of different block sizes, ram_reclaim and
 * ram_set_capacity. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/mman.h>

#include "fixture.h"

/* Read a mapping many times the RAM's capacity: page memory stays bounded,
 * every byte is right. */
static void capacity_bound(size_t blksize, blk_t nblk, size_t capacity)
{
    Fixture f;
    VMA *vma;
    unsigned char *p;
    RAMStats st;
    blk_t blk;
    int pass;

    fixture_open(&f, blksize, nblk, capacity);
    p = fixture_mmap(&f, 0, nblk, &vma);
    for (pass = 0; pass < 2; pass++) {
        for (blk = 0; blk < nblk; blk++) {
            testfile_check_block(&f.tf, p + blk * blksize, blk);
            st = fixture_ram_stats(&f);
            CHECK(st.used <= capacity);
            CHECK(st.used == st.npages * blksize);
        }
    }
    st = fixture_ram_stats(&f);
    CHECK(st.nreclaimed >= 2 * nblk - capacity / blksize);
    /* memory is recycled: the memfd grows a little ahead, not with reads */
    CHECK(st.memfd_size <= 2 * capacity);
    CHECK_EQ(fixture_stats(&f).nloadblk, 2 * nblk);
    CHECK(fixture_stats(&f).npages <= capacity / blksize);
    fixture_close(&f);
}

TEST(capacity_bounds_page_memory_4k)
{
    capacity_bound(PS, 4096, 64 * PS);              /* 16 MiB via 256 KiB */
}

TEST(capacity_bounds_page_memory_2m)
{
    capacity_bound((size_t)2 << 20, 48, (size_t)6 << 20);
}

TEST(ram_reclaim_and_set_capacity)
{
    Fixture f;
    VMA *vma;
    unsigned char *p;
    RAMStats st;
    blk_t blk;

    fixture_open(&f, PS, 16, 16 * PS);
    p = fixture_mmap(&f, 0, 16, &vma);
    for (blk = 0; blk < 16; blk++)
        testfile_check_block(&f.tf, p + blk * PS, blk);
    poke(p, 0, 1);
    poke(p + PS, 0, 1);                 /* 2 dirty, 14 clean */

    CHECK_EQ(ram_reclaim(f.ram, 4), 4);
    st = fixture_ram_stats(&f);
    CHECK_EQ(st.npages, 12);
    CHECK_EQ(st.nclean, 10);
    CHECK_EQ(fixture_stats(&f).npages, 12);

    /* shrinking below use drops clean pages, never dirty ones */
    CHECK_ERR(ram_set_capacity(f.ram, PS - 1), -EINVAL);
    CHECK_OK(ram_set_capacity(f.ram, PS));
    st = fixture_ram_stats(&f);
    CHECK_EQ(st.capacity, PS);
    CHECK_EQ(st.nclean, 0);
    CHECK_EQ(st.npages, 2);
    CHECK_EQ(peek(p, 0), 1);
    CHECK_EQ(peek(p + PS, 0), 1);
    CHECK_EQ(ram_reclaim(f.ram, 100), 0);

    CHECK_OK(ram_set_capacity(f.ram, 64 * PS));
    for (blk = 2; blk < 16; blk++)
        testfile_check_block(&f.tf, p + blk * PS, blk);
    CHECK_EQ(ram_reclaim(f.ram, 100), 14);
    fixture_close(&f);
}

TEST(capacity_bounds_page_memory_odd_blksize)
{
    capacity_bound(3 * PS, 200, 10 * 3 * PS);      /* 12 KiB blocks */
}

TEST(capacity_bounds_page_memory_8m)
{
    capacity_bound((size_t)8 << 20, 8, (size_t)16 << 20);
}

/* Dirty pages are never reclaimed: they keep their data while clean pages
 * come and go around them. */
TEST(dirty_pages_survive_memory_pressure)
{
    Fixture f;
    VMA *vma;
    unsigned char *p;
    RAMStats st;
    blk_t blk;

    fixture_open(&f, PS, 200, 8 * PS);
    p = fixture_mmap(&f, 0, 200, &vma);
    for (blk = 0; blk < 4; blk++)
        poke(p + blk * PS, 0, 1000 + blk);
    for (blk = 4; blk < 200; blk++)
        testfile_check_block(&f.tf, p + blk * PS, blk);
    st = fixture_ram_stats(&f);
    CHECK(st.used <= 8 * PS);
    CHECK(st.nreclaimed >= 200 - 8);
    CHECK_EQ(fixture_stats(&f).ndirty, 4);
    for (blk = 0; blk < 4; blk++) {
        CHECK_EQ(peek(p + blk * PS, 0), 1000 + blk);
        CHECK_EQ(peek(p + blk * PS, 1), testfile_word(blk, 0, 1));
        CHECK_EQ(testfile_nload(&f.tf, blk), 1);
    }
    CHECK_OK(fileh_dirty_writeout(f.fileh, WRITEOUT_STORE |
                                           WRITEOUT_MARKSTORED));
    CHECK_EQ(f.tf.nstores, 4);
    for (blk = 0; blk < 4; blk++)
        CHECK_EQ(((uint64_t *)f.tf.stores[blk].data)[0], 1000 + blk);
    /* once stored, they are clean and reclaimable like any other */
    for (blk = 100; blk < 200; blk++)
        testfile_check_block(&f.tf, p + blk * PS, blk);
    CHECK(fixture_stats(&f).npages <= 8);
    fixture_close(&f);
}

/* Handles with 4 KiB and 2 MiB blocks take pages from one small RAM: each
 * reclaims the other's clean pages, slots of both sizes are reused. */
TEST(one_ram_shared_by_two_block_sizes)
{
    const size_t big = (size_t)2 << 20, cap = (size_t)6 << 20;
    TestFile ts, tb;
    BigFileH *hs, *hb;
    VMA *vs, *vb;
    unsigned char *ps, *pb;
    RAMStats st;
    RAM *ram;
    blk_t i;
    int pass;

    testfile_init(&ts, PS, 2048);
    testfile_init(&tb, big, 16);
    CHECK_OK(ram_new(&ram, cap));
    CHECK_OK(fileh_open(&hs, &ts.file, ram));
    CHECK_OK(fileh_open(&hb, &tb.file, ram));
    CHECK_OK(fileh_mmap(&vs, hs, 0, 2048));
    CHECK_OK(fileh_mmap(&vb, hb, 0, 16));
    ps = (unsigned char *)vma_addr_start(vs);
    pb = (unsigned char *)vma_addr_start(vb);

    for (pass = 0; pass < 2; pass++) {
        for (i = 0; i < 2048; i++) {
            testfile_check_block(&ts, ps + i * PS, i);
            if (i % 128 == 0)
                testfile_check_block(&tb, pb + (i / 128) * big, i / 128);
            ram_get_stats(ram, &st);
            CHECK(st.used <= cap);
        }
    }
    ram_get_stats(ram, &st);
    CHECK(st.nreclaimed > 0);
    /* slots are reused: the memfd stays near the capacity, well below the
     * 2 x (8 + 32) MiB read */
    CHECK(st.memfd_size <= 3 * cap);

    fileh_close(hs);
    fileh_close(hb);
    ram_get_stats(ram, &st);
    CHECK_EQ(st.used, 0);
    CHECK_EQ(st.npages, 0);
    ram_decref(ram);
    testfile_fini(&ts);
    testfile_fini(&tb);
}

/* In a child: use up all but a few of the process's map entries
 * (vm.max_map_count), then read pages mapped apart from each other, each
 * needing entries of its own.  The fault path must make room by unmapping
 * clean pages (letting the kernel merge their ranges back), not fail. */
static void map_count_exhausted(void *arg)
{
    enum { N = 64, SPARE = 12 };
    Fixture f;
    VMA *vma;
    unsigned char *p;
    long max = 0, fill;
    FILE *mc = fopen("/proc/sys/vm/max_map_count", "r");

    (void)arg;
    CHECK(mc != NULL);
    CHECK(fscanf(mc, "%ld", &max) == 1);
    fclose(mc);

    fixture_open(&f, PS, 2 * N, 2 * N * PS);
    p = fixture_mmap(&f, 0, 2 * N, &vma);
    testfile_check_block(&f.tf, p, 0);   /* handler, window: entries taken now */

    /* One region, every other page made readable: one entry per page. */
    fill = max - count_maps() - SPARE;
    CHECK(fill > 0);
    unsigned char *filler = mmap(NULL, (size_t)fill * PS, PROT_NONE,
                                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    CHECK(filler != MAP_FAILED);
    for (long i = 1; i < fill; i += 2)
        CHECK_OK(mprotect(filler + i * PS, PS, PROT_READ) == 0 ? 0 : -errno);
    CHECK(count_maps() >= max - SPARE - 2);

    for (int pass = 0; pass < 2; pass++)
        for (blk_t blk = 0; blk < 2 * N; blk += 2)   /* never adjacent */
            testfile_check_block(&f.tf, p + blk * PS, blk);
    CHECK(fixture_ram_stats(&f).npages < N);    /* some were unmapped to make room */
    fixture_close(&f);
}

TEST(fault_makes_room_when_map_entries_run_out)
{
    CHECK_EXITED(test_run_forked(map_count_exhausted, NULL), 0);
}
