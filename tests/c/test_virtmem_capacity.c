/* RAM capacity seen through file handles: reclaim of clean pages under
 * pressure, block sizes from 4 KiB to 8 MiB (and not powers of two), one RAM
 * shared by handles of different block sizes, ram_reclaim and
 * ram_set_capacity. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>

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

