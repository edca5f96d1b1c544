/* The zero-copy path (BigFileOps.mmapblk): clean pages mapped straight from
 * the backend's OS file, a write loading the block into RAM first. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "task.h"
#include "virtmem.h"

#define PS (virt_os_pagesize())

/* A BigFile over an OS file: blocks inside the file map directly, the rest
 * (past the end) load as zeros. */
typedef struct OSFile {
    BigFile    file;         /* first: a BigFile * is an OSFile * */
    int        fd;           /* read-write, for loadblk/storeblk */
    int        map_fd;       /* what mmapblk names */
    atomic_int nload, nstore, nmapblk;
} OSFile;

static int osfile_loadblk(BigFile *file, blk_t blk, void *buf)
{
    OSFile *f = (OSFile *)file;
    ssize_t n = pread(f->fd, buf, file->blksize, (off_t)(blk * file->blksize));
    if (n < 0)
        return -errno;
    memset((char *)buf + n, 0, file->blksize - (size_t)n);
    atomic_fetch_add(&f->nload, 1);
    return 0;
}

static int osfile_storeblk(BigFile *file, blk_t blk, const void *buf)
{
    OSFile *f = (OSFile *)file;
    if (pwrite(f->fd, buf, file->blksize, (off_t)(blk * file->blksize)) != (ssize_t)file->blksize)
        return -EIO;
    atomic_fetch_add(&f->nstore, 1);
    return 0;
}

static int osfile_mmapblk(BigFile *file, blk_t blk, int *fd, uint64_t *offset)
{
    OSFile *f = (OSFile *)file;
    struct stat st;
    atomic_fetch_add(&f->nmapblk, 1);
    if (fstat(f->map_fd, &st) != 0)
        return -errno;
    if ((blk + 1) * file->blksize > (uint64_t)st.st_size)
        return -ENODATA;
    *fd = f->map_fd;
    *offset = blk * file->blksize;
    return 0;
}

static const BigFileOps osfile_ops = {
    .loadblk = osfile_loadblk, .storeblk = osfile_storeblk, .mmapblk = osfile_mmapblk,
};

/* Block b of the file is filled with byte (b + 1). */
static void osfile_open(OSFile *f, size_t blksize, blk_t nblk)
{
    char path[] = "/tmp/zbigarray-direct-XXXXXX";
    memset(f, 0, sizeof *f);
    f->file.ops = &osfile_ops;
    f->file.blksize = blksize;
    f->fd = mkstemp(path);
    CHECK(f->fd >= 0);
    CHECK_OK(unlink(path));
    unsigned char *blk = malloc(blksize);
    CHECK(blk != NULL);
    for (blk_t b = 0; b < nblk; b++) {
        memset(blk, (int)(b + 1), blksize);
        CHECK_EQ(pwrite(f->fd, blk, blksize, (off_t)(b * blksize)), blksize);
    }
    free(blk);
    f->map_fd = f->fd;
}

static unsigned char peek(const volatile unsigned char *p) { return *p; }

TEST(direct_reads_map_the_file_without_loadblk)
{
    OSFile f;
    RAM *ram;
    BigFileH *fh;
    VMA *vma;
    RAMStats st;

    osfile_open(&f, 2 * PS, 8);
    CHECK_OK(ram_new(&ram, 64 * PS));
    CHECK_OK(fileh_open(&fh, &f.file, ram));
    CHECK_OK(fileh_mmap(&vma, fh, 0, 10));
    unsigned char *p = (unsigned char *)vma_addr_start(vma);
    /* Backwards: a forward sequence would load blocks 8 and 9 ahead
     * (fault-around), which this test counts apart. */
    for (blk_t b = 8; b-- > 0;) {
        CHECK_EQ(peek(p + b * 2 * PS), b + 1);
        CHECK_EQ(peek(p + b * 2 * PS + 2 * PS - 1), b + 1);
    }
    CHECK_EQ(atomic_load(&f.nload), 0);
    /* Blocks 8 and 9 lie past the end of the file: loadblk, zeros. */
    CHECK_EQ(peek(p + 8 * 2 * PS), 0);
    CHECK_EQ(peek(p + 9 * 2 * PS + 5), 0);
    CHECK_EQ(atomic_load(&f.nload), 2);
    ram_get_stats(ram, &st);
    CHECK_EQ(st.direct, 8 * 2 * PS);
    CHECK_EQ(st.used, 2 * 2 * PS);
    CHECK_EQ(st.nclean, 10);
    CHECK_EQ(fileh_isdirty(fh), 0);
    fileh_close(fh);
    ram_get_stats(ram, &st);
    CHECK_EQ(st.direct, 0);
    CHECK_EQ(st.used, 0);
    ram_decref(ram);
    close(f.fd);
}

/* fileh_page_read of a direct page reads the backend's file, where the
 * page's memory is. */
TEST(direct_page_read_reads_the_file)
{
    OSFile f;
    RAM *ram;
    BigFileH *fh;
    VMA *vma;

    osfile_open(&f, 2 * PS, 8);
    CHECK_OK(ram_new(&ram, 64 * PS));
    CHECK_OK(fileh_open(&fh, &f.file, ram));
    CHECK_OK(fileh_mmap(&vma, fh, 0, 8));
    unsigned char *p = (unsigned char *)vma_addr_start(vma);
    CHECK_EQ(peek(p + 3 * 2 * PS), 4);
    unsigned char *dst = malloc(2 * PS);
    CHECK(dst != NULL);
    CHECK_EQ(fileh_page_read(fh, 3, dst), (ssize_t)(2 * PS));
    for (size_t i = 0; i < 2 * PS; i++)
        CHECK_EQ(dst[i], 4);
    CHECK_EQ(atomic_load(&f.nload), 0);
    free(dst);
    fileh_close(fh);
    ram_decref(ram);
    close(f.fd);
}

TEST(direct_first_write_loads_the_block_into_ram_for_every_vma)
{
    OSFile f;
    RAM *ram;
    BigFileH *fh;
    VMA *a, *b;
    unsigned char buf[1];

    osfile_open(&f, PS, 4);
    CHECK_OK(ram_new(&ram, 16 * PS));
    CHECK_OK(fileh_open(&fh, &f.file, ram));
    CHECK_OK(fileh_mmap(&a, fh, 0, 4));
    CHECK_OK(fileh_mmap(&b, fh, 0, 4));
    unsigned char *pa = (unsigned char *)vma_addr_start(a);
    unsigned char *pb = (unsigned char *)vma_addr_start(b);
    CHECK_EQ(peek(pa + PS), 2);
    CHECK_EQ(peek(pb + PS), 2);          /* both show the file itself */
    CHECK_EQ(atomic_load(&f.nload), 0);

    pa[PS + 7] = 0xAA;                   /* first write: into RAM */
    CHECK_EQ(atomic_load(&f.nload), 1);
    CHECK_EQ(fileh_isdirty(fh), 1);
    CHECK_EQ(peek(pb + PS + 7), 0xAA);   /* the other VMA sees the change */
    CHECK_EQ(peek(pb + PS + 8), 2);
    CHECK_EQ(pread(f.fd, buf, 1, (off_t)PS + 7), 1);
    CHECK_EQ(buf[0], 2);                 /* the OS file is untouched */

    CHECK_OK(fileh_dirty_writeout(fh, WRITEOUT_STORE | WRITEOUT_MARKSTORED));
    CHECK_EQ(atomic_load(&f.nstore), 1);
    CHECK_EQ(pread(f.fd, buf, 1, (off_t)PS + 7), 1);
    CHECK_EQ(buf[0], 0xAA);
    fileh_close(fh);
    ram_decref(ram);
    close(f.fd);
}

TEST(direct_discard_shows_the_file_again)
{
    OSFile f;
    RAM *ram;
    BigFileH *fh;
    VMA *vma;

    osfile_open(&f, PS, 2);
    CHECK_OK(ram_new(&ram, 16 * PS));
    CHECK_OK(fileh_open(&fh, &f.file, ram));
    CHECK_OK(fileh_mmap(&vma, fh, 0, 2));
    unsigned char *p = (unsigned char *)vma_addr_start(vma);
    p[0] = 0x55;
    CHECK_EQ(peek(p), 0x55);
    CHECK_OK(fileh_dirty_discard(fh));
    CHECK_EQ(peek(p), 1);
    CHECK_EQ(peek(p + 1), 1);
    fileh_close(fh);
    ram_decref(ram);
    close(f.fd);
}

TEST(direct_pages_count_against_capacity)
{
    enum { N = 64 };
    OSFile f;
    RAM *ram;
    BigFileH *fh;
    VMA *vma;
    RAMStats st;

    osfile_open(&f, PS, N);
    CHECK_OK(ram_new(&ram, 4 * PS));
    CHECK_OK(fileh_open(&fh, &f.file, ram));
    CHECK_OK(fileh_mmap(&vma, fh, 0, N));
    unsigned char *p = (unsigned char *)vma_addr_start(vma);
    for (int pass = 0; pass < 2; pass++) {
        for (blk_t b = 0; b < N; b++) {
            CHECK_EQ(peek(p + b * PS + 100), (b + 1) & 0xff);
            ram_get_stats(ram, &st);
            CHECK(st.direct + st.used <= 4 * PS);
        }
    }
    CHECK_EQ(atomic_load(&f.nload), 0);
    ram_get_stats(ram, &st);
    CHECK(st.nreclaimed >= 2 * N - 4);
    fileh_close(fh);
    ram_decref(ram);
    close(f.fd);
}

TEST(direct_invalidate_drops_the_mapping)
{
    OSFile f;
    RAM *ram;
    BigFileH *fh;
    VMA *vma;
    RAMStats st;

    osfile_open(&f, PS, 2);
    CHECK_OK(ram_new(&ram, 16 * PS));
    CHECK_OK(fileh_open(&fh, &f.file, ram));
    CHECK_OK(fileh_mmap(&vma, fh, 0, 2));
    unsigned char *p = (unsigned char *)vma_addr_start(vma);
    CHECK_EQ(peek(p), 1);
    int before = atomic_load(&f.nmapblk);
    CHECK_OK(fileh_invalidate_page(fh, 0));
    ram_get_stats(ram, &st);
    CHECK_EQ(st.direct, 0);
    CHECK_EQ(peek(p), 1);                /* faults again: mapped anew */
    CHECK_EQ(atomic_load(&f.nmapblk), before + 1);
    fileh_close(fh);
    ram_decref(ram);
    close(f.fd);
}

TEST(direct_unmappable_fd_falls_back_to_loadblk)
{
    OSFile f;
    RAM *ram;
    BigFileH *fh;
    VMA *vma;
    char path[64];

    osfile_open(&f, PS, 3);
    /* A write-only descriptor of the same file: mmap refuses it (EACCES). */
    snprintf(path, sizeof path, "/proc/self/fd/%d", f.fd);
    f.map_fd = open(path, O_WRONLY);
    CHECK(f.map_fd >= 0);
    CHECK_OK(ram_new(&ram, 16 * PS));
    CHECK_OK(fileh_open(&fh, &f.file, ram));
    CHECK_OK(fileh_mmap(&vma, fh, 0, 3));
    unsigned char *p = (unsigned char *)vma_addr_start(vma);
    CHECK_EQ(peek(p), 1);
    CHECK_EQ(peek(p + PS), 2);
    CHECK_EQ(peek(p + 2 * PS), 3);
    CHECK_EQ(atomic_load(&f.nload), 3);
    fileh_close(fh);
    ram_decref(ram);
    close(f.map_fd);
    close(f.fd);
}
