/* Cost of the virtual-memory core alone, with a C backend that does nothing:
 * what a page fault and a writeout cost before any real I/O.
 *
 *   read fault, fresh     first touch of each block, RAM big enough: every
 *                         page takes new memfd memory (the kernel allocates
 *                         and zeroes it)
 *   read fault, recycled  a mapping 8x the RAM capacity read end to end:
 *                         pages are reclaimed and their memory reused
 *   write fault           first write to each block already loaded (clean ->
 *                         dirty: the write-protection fault)
 *   writeout              fileh_dirty_writeout(STORE | MARKSTORED) of N dirty
 *                         pages with a no-op storeblk, per page
 *
 * One touch (one byte) per block; best of REPS runs; microseconds per block.
 * Build and run: make -C benchmarks/c bench (build/bench_fault [KiB ...] for
 * other block sizes).  Timings are for reading, never asserted.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "virtmem.h"

#define REPS 3

static int noop_loadblk(BigFile *file, blk_t blk, void *buf)
{
    (void)file;
    (void)blk;
    (void)buf;
    return 0;
}

static int noop_storeblk(BigFile *file, blk_t blk, const void *buf)
{
    (void)file;
    (void)blk;
    (void)buf;
    return 0;
}

static const BigFileOps noop_ops = {
    .loadblk = noop_loadblk,
    .storeblk = noop_storeblk,
};

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void die(const char *what, int err)
{
    fprintf(stderr, "bench_fault: %s: %s\n", what, strerror(-err));
    exit(1);
}

/* One run over @nblk blocks of @blksize with a RAM of @capacity bytes.
 * Returns microseconds per block for each phase (0 where not measured). */
typedef struct Times { double read, write, writeout; } Times;

static Times run(size_t blksize, blk_t nblk, size_t capacity, int write)
{
    BigFile file = { .ops = &noop_ops, .blksize = blksize };
    volatile unsigned char *p;
    Times t = { 0, 0, 0 };
    BigFileH *fileh;
    RAM *ram;
    VMA *vma;
    double t0;
    blk_t b;
    int err;

    if ((err = ram_new(&ram, capacity)) < 0)
        die("ram_new", err);
    if ((err = fileh_open(&fileh, &file, ram)) < 0)
        die("fileh_open", err);
    if ((err = fileh_mmap(&vma, fileh, 0, nblk)) < 0)
        die("fileh_mmap", err);
    p = (volatile unsigned char *)vma_addr_start(vma);

    t0 = now_s();
    for (b = 0; b < nblk; b++)
        (void)p[b * blksize];
    t.read = (now_s() - t0) * 1e6 / (double)nblk;

    if (write) {
        t0 = now_s();
        for (b = 0; b < nblk; b++)
            p[b * blksize] = 1;
        t.write = (now_s() - t0) * 1e6 / (double)nblk;

        t0 = now_s();
        err = fileh_dirty_writeout(fileh, WRITEOUT_STORE | WRITEOUT_MARKSTORED);
        if (err < 0)
            die("fileh_dirty_writeout", err);
        t.writeout = (now_s() - t0) * 1e6 / (double)nblk;
    }

    fileh_close(fileh);
    ram_decref(ram);
    return t;
}

static Times best_of(size_t blksize, blk_t nblk, size_t capacity, int write)
{
    Times best = { 1e30, 1e30, 1e30 };
    int i;

    for (i = 0; i < REPS; i++) {
        Times t = run(blksize, nblk, capacity, write);
        if (t.read < best.read)
            best.read = t.read;
        if (t.write < best.write)
            best.write = t.write;
        if (t.writeout < best.writeout)
            best.writeout = t.writeout;
    }
    return best;
}

static void row(const char *what, size_t blksize, blk_t n, double us)
{
    printf("%-22s %8zu KiB %8llu %12.2f\n", what, blksize >> 10,
           (unsigned long long)n, us);
}

int main(int argc, char **argv)
{
    size_t blksizes[16] = { 4096, (size_t)2 << 20 };
    size_t i, nbs = 2;

    /* Optional arguments: the block sizes to time, in KiB. */
    if (argc > 1) {
        for (nbs = 0; nbs + 1 < (size_t)argc && nbs < 16; nbs++) {
            blksizes[nbs] = (size_t)strtoul(argv[nbs + 1], NULL, 10) << 10;
            if (virt_blksize_check(blksizes[nbs]) < 0) {
                fprintf(stderr, "bench_fault: bad block size %s KiB\n",
                        argv[nbs + 1]);
                return 2;
            }
        }
    }

    printf("C core, no-op loadblk/storeblk, best of %d; page size %zu\n",
           REPS, virt_os_pagesize());
    printf("%-22s %12s %8s %12s\n", "operation", "block", "blocks",
           "us/block");
    for (i = 0; i < nbs; i++) {
        size_t bs = blksizes[i];
        /* 256 MiB mapped for 2 MiB blocks, 64 MiB (16384 faults) for 4 KiB */
        size_t total = bs >= ((size_t)1 << 20) ? (size_t)256 << 20
                                               : (size_t)64 << 20;
        blk_t n = (blk_t)(total / bs);
        Times fresh = best_of(bs, n, total, 1);
        Times recycled = best_of(bs, n, total / 8, 0);

        row("read fault, fresh", bs, n, fresh.read);
        row("read fault, recycled", bs, n, recycled.read);
        row("write fault (clean)", bs, n, fresh.write);
        row("writeout STORE|MARK", bs, n, fresh.writeout);
    }
    return 0;
}
