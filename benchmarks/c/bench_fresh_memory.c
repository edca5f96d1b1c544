/* What fresh page memory costs on this machine, against the baseline of
 * bench_zodb's cold-read row.
 *
 * A cold read of a ZBigArray puts every block into memory the process has
 * never had: the kernel must give the RAM's memfd 2 MiB per block.  Its
 * baseline, a storage.load() loop, copies each record into a buffer that
 * is reused.  This program measures the pieces of that difference with
 * nothing of ours in the way, µs per 2 MiB block:
 *
 *   baseline      pread of a record (odd offset in a page-cached file)
 *                 into one reused buffer: the baseline's whole work
 *   zeros         pwritev of zeros into memfd holes: how the preparer
 *                 gives a slot memory (ram_prep.c)
 *   fallocate     the same allocation without writing zeros
 *   copy          pread of the record into a zeroed slot whose page-table
 *                 entries are filled: the loading thread's copy
 *   splice        fallocate'd slot filled from the file with splice (file
 *                 -> pipe -> memfd): a load with no zeros written at all
 *   collapse      one 4 KiB write, then MADV_COLLAPSE of the slot's
 *                 mapping into a 2 MiB page (transparent huge pages, which
 *                 tmpfs here does not give by itself)
 *   anon thp      pread into fresh anonymous memory with MADV_HUGEPAGE
 *
 * Each method runs twice: right after the previous one freed its memory
 * ("hot"), and after IDLE seconds of sleep ("idle"): a VM whose balloon
 * reports free memory to its host gets pages of 2 MiB and more taken back
 * within seconds, and touching them again costs a fault in the host.
 *
 * Then the two ways to split a block's fresh memory over two CPUs, run as
 * a pipeline (wall time per block, one thread making slots ahead, the
 * other filling them; nothing else):
 *
 *   zeros | copy        the preparer's way: zeros written ahead, the record
 *                       read into the mapped slot (entries filled first)
 *   fallocate | splice  no zeros at all: slots allocated ahead, the record
 *                       spliced in; both take the memfd's inode lock
 *
 * against the cold row's budget: at 0.3x its baseline a block may take
 * baseline/0.3 of wall time, and the cold read also maps, runs Python and
 * sums within it.
 *
 * Build and run: make -C benchmarks/c fresh (build/bench_fresh_memory
 * [IDLE seconds, default 6]).  Needs ~260 MiB of disk in $TMPDIR and
 * ~520 MiB of memory; numbers are for reading, never asserted.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25
#endif

#define BLK     ((size_t)2 << 20)
#define NBLK    128                 /* 256 MiB per method */
#define RECOFF  4099                /* records are not page-aligned */
#define ZVEC    ((size_t)64 << 10)
/* bench_zodb's cold-row baseline, a storage.load() loop in Python, runs at
 * 7.9-9.2 GB/s on our VMs (benchmarks/RESULTS.md): its budget is printed
 * too, as the C baseline here is faster. */
#define ZODB_BASELINE_BPS 8e9

static int src_fd, memfd;
static char *park;                  /* NBLK blocks, 2 MiB aligned */
static char *buf;                   /* the baseline's reused buffer */

static void die(const char *what)
{
    fprintf(stderr, "bench_fresh_memory: %s: %s\n", what, strerror(errno));
    exit(1);
}

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static off_t rec_off(int b)
{
    return (off_t)b * (off_t)BLK + RECOFF;
}

static void pread_all(int fd, void *dst, size_t len, off_t off)
{
    ssize_t n = pread(fd, dst, len, off);
    if (n != (ssize_t)len)
        die("pread");
}

static char *aligned_reserve(size_t len)
{
    char *p = mmap(NULL, len + BLK, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED)
        die("mmap reserve");
    return (char *)(((uintptr_t)p + BLK - 1) & ~(uintptr_t)(BLK - 1));
}

static void map_slot(int b)
{
    if (mmap(park + (size_t)b * BLK, BLK, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED,
             memfd, (off_t)b * (off_t)BLK) == MAP_FAILED)
        die("mmap slot");
}

static void write_zeros(int b)
{
    static const char zeros[ZVEC];
    struct iovec iov[BLK / ZVEC];

    for (size_t i = 0; i < BLK / ZVEC; i++) {
        iov[i].iov_base = (void *)zeros;
        iov[i].iov_len = ZVEC;
    }
    if (pwritev(memfd, iov, (int)(BLK / ZVEC), (off_t)b * (off_t)BLK) != (ssize_t)BLK)
        die("pwritev");
}

static void alloc_slot(int b)
{
    if (fallocate(memfd, 0, (off_t)b * (off_t)BLK, (off_t)BLK) != 0)
        die("fallocate");
}

/* Fill slot @b from record @b through a pipe: no copy into user memory. */
static void splice_slot(int b, int pipefd[2])
{
    loff_t in = rec_off(b), out = (loff_t)b * (loff_t)BLK;
    size_t left = BLK;

    while (left > 0) {
        ssize_t n = splice(src_fd, &in, pipefd[1], NULL, left, 0);
        if (n <= 0)
            die("splice in");
        for (ssize_t m = n; m > 0; ) {
            ssize_t k = splice(pipefd[0], NULL, memfd, &out, (size_t)m, 0);
            if (k <= 0)
                die("splice out");
            m -= k;
        }
        left -= (size_t)n;
    }
}

static void touch(const char *p)
{
    for (size_t d = 0; d < BLK; d += ZVEC)
        (void)((volatile const char *)p)[d];
}

/* Give all the memory back, as a process that ends would: the slots'
 * mappings (if @mapped), the memfd's pages, the pipe (if any). */
static void give_back(int mapped, int pipefd[2])
{
    if (mapped && mmap(park, (size_t)NBLK * BLK, PROT_NONE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0) == MAP_FAILED)
        die("mmap unmap park");
    if (fallocate(memfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0,
                  (off_t)NBLK * (off_t)BLK) != 0)
        die("punch");
    if (pipefd[0] >= 0 && (close(pipefd[0]) != 0 || close(pipefd[1]) != 0))
        die("close pipe");
}

enum { BASELINE, ZEROS, FALLOC, COPY, SPLICE, COLLAPSE, ANON_THP, NMETHOD };
static const char *names[NMETHOD] = {
    "baseline", "zeros", "fallocate", "copy", "splice", "collapse", "anon thp",
};

/* Microseconds per block of @method, over NBLK blocks; -1 if the kernel
 * refuses it (MADV_COLLAPSE before Linux 6.1, THP denied). */
static double run(int method)
{
    static const char zero_page[4096];
    int pipefd[2] = { -1, -1 };
    double t = 0, t0;
    char *anon = NULL;
    int refused = 0;

    if (method == SPLICE) {
        if (pipe(pipefd) != 0)
            die("pipe");
        (void)fcntl(pipefd[1], F_SETPIPE_SZ, 1 << 20);    /* fewer calls if allowed */
    }
    if (method == ANON_THP) {
        anon = aligned_reserve((size_t)NBLK * BLK);
        if (mprotect(anon, (size_t)NBLK * BLK, PROT_READ | PROT_WRITE) != 0)
            die("mprotect");
        if (madvise(anon, (size_t)NBLK * BLK, MADV_HUGEPAGE) != 0)
            die("madvise MADV_HUGEPAGE");
    }
    for (int b = 0; b < NBLK; b++) {
        char *slot = park + (size_t)b * BLK;
        if (method == COPY || method == COLLAPSE)
            map_slot(b);
        if (method == COPY) {           /* as prepared: zeros, entries filled */
            write_zeros(b);
            touch(slot);
        }
        t0 = now_s();
        switch (method) {
        case BASELINE: pread_all(src_fd, buf, BLK, rec_off(b)); break;
        case ZEROS:    write_zeros(b); break;
        case FALLOC:   alloc_slot(b); break;
        case COPY:     pread_all(src_fd, slot, BLK, rec_off(b)); break;
        case SPLICE:   alloc_slot(b); splice_slot(b, pipefd); break;
        case COLLAPSE:
            /* A range of holes is not collapsed: one page first. */
            if (pwrite(memfd, zero_page, sizeof zero_page, (off_t)b * (off_t)BLK) !=
                    (ssize_t)sizeof zero_page)
                die("pwrite");
            if (madvise(slot, BLK, MADV_COLLAPSE) != 0) {
                if (errno != EINVAL)
                    die("madvise MADV_COLLAPSE");
                refused = 1;
            }
            break;
        case ANON_THP: pread_all(src_fd, anon + (size_t)b * BLK, BLK, rec_off(b)); break;
        }
        t += now_s() - t0;
        if (refused)
            break;
    }
    give_back(method == COPY || method == COLLAPSE, pipefd);
    if (anon != NULL && munmap(anon, (size_t)NBLK * BLK) != 0)
        die("munmap");
    return refused ? -1 : t / NBLK * 1e6;
}

/* ------------------------------------------------------------ pipelines */

static int pipeline_zeros;          /* 1: zeros | copy, 0: fallocate | splice */
static atomic_int ready;            /* slots the maker has made */

static void *slot_maker(void *arg)
{
    (void)arg;
    for (int b = 0; b < NBLK; b++) {
        if (pipeline_zeros)
            write_zeros(b);
        else
            alloc_slot(b);
        atomic_store_explicit(&ready, b + 1, memory_order_release);
    }
    return NULL;
}

/* Wall microseconds per block of the pipeline, slots mapped beforehand. */
static double pipeline(int zeros)
{
    int pipefd[2];
    pthread_t maker;

    if (pipe(pipefd) != 0)
        die("pipe");
    (void)fcntl(pipefd[1], F_SETPIPE_SZ, 1 << 20);
    for (int b = 0; b < NBLK; b++)
        map_slot(b);
    pipeline_zeros = zeros;
    atomic_store(&ready, 0);
    double t0 = now_s();
    if (pthread_create(&maker, NULL, slot_maker, NULL) != 0)
        die("pthread_create");
    for (int b = 0; b < NBLK; b++) {
        char *slot = park + (size_t)b * BLK;
        while (atomic_load_explicit(&ready, memory_order_acquire) <= b)
            ;                       /* the maker is the slower side: spin */
        if (zeros) {
            touch(slot);
            pread_all(src_fd, slot, BLK, rec_off(b));
        } else {
            splice_slot(b, pipefd);
            touch(slot);
        }
    }
    double t = now_s() - t0;
    if (pthread_join(maker, NULL) != 0)
        die("pthread_join");
    give_back(1, pipefd);
    return t / NBLK * 1e6;
}

int main(int argc, char **argv)
{
    unsigned idle = argc > 1 ? (unsigned)atoi(argv[1]) : 6;
    const char *tmpdir = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    char path[4096];
    double hot[NMETHOD], cold[NMETHOD];

    /* The source: NBLK records and a tail, in the OS page cache. */
    snprintf(path, sizeof path, "%s/bench_fresh_memory.XXXXXX", tmpdir);
    src_fd = mkstemp(path);
    if (src_fd < 0)
        die("mkstemp");
    if (unlink(path) != 0)
        die("unlink");
    /* Page-aligned, as a copy into a malloc'd buffer can run several times
     * slower on some CPUs (an unaligned destination for `rep movsb`): the
     * baseline's best case, which bench_zodb's Python loop gets close to. */
    buf = mmap(NULL, BLK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (buf == MAP_FAILED)
        die("mmap buffer");
    memset(buf, 0x5a, BLK);
    for (int b = 0; b <= NBLK; b++)
        if (pwrite(src_fd, buf, BLK, (off_t)b * (off_t)BLK) != (ssize_t)BLK)
            die("pwrite source");
    for (int b = 0; b < NBLK; b++)
        pread_all(src_fd, buf, BLK, rec_off(b));
    memset(buf, 0, BLK);

    memfd = memfd_create("bench_fresh_memory", 0);
    if (memfd < 0)
        die("memfd_create");
    if (ftruncate(memfd, (off_t)NBLK * (off_t)BLK) != 0)
        die("ftruncate");
    park = aligned_reserve((size_t)NBLK * BLK);

    /* Not measured: the first reads of the source, and a first use of
     * fresh memory, so that "hot" means memory another method just freed. */
    (void)run(BASELINE);
    (void)run(ZEROS);
    for (int m = 0; m < NMETHOD; m++)
        hot[m] = run(m);
    for (int m = 0; m < NMETHOD; m++) {
        sleep(idle);
        cold[m] = run(m);
    }

    printf("fresh memory, µs per 2 MiB block (%d blocks; idle = after %u s asleep)\n\n",
           NBLK, idle);
    printf("| %-10s | %8s | %8s | %10s | %10s |\n", "method", "hot", "idle",
           "hot / base", "idle / base");
    printf("|------------|----------|----------|------------|-------------|\n");
    for (int m = 0; m < NMETHOD; m++) {
        if (hot[m] < 0 || cold[m] < 0) {
            printf("| %-10s | refused by the kernel |\n", names[m]);
            continue;
        }
        printf("| %-10s | %8.0f | %8.0f | %9.2fx | %10.2fx |\n", names[m], hot[m], cold[m],
               hot[m] / hot[BASELINE], cold[m] / cold[BASELINE]);
    }
    double pz = pipeline(1), pf = pipeline(0);
    double budget = hot[BASELINE] / 0.3;
    printf("\ntwo CPUs, wall µs per block: zeros | copy %.0f, fallocate | splice %.0f\n", pz, pf);
    printf("cold-read budget at 0.3x: %.0f µs per block against this baseline, "
           "%.0f against bench_zodb's (%.0f GB/s)\n",
           budget, (double)BLK / (0.3 * ZODB_BASELINE_BPS) * 1e6, ZODB_BASELINE_BPS / 1e9);
    return 0;
}
