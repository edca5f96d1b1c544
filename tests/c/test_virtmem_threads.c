/* Several threads fault at random on one handle (two VMAs) while another
 * invalidates blocks, changes the file under them and reclaims memory; every
 * word read is verified.  Bounded in time. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdlib.h>
#include <time.h>

#include "fixture.h"

#define PS        (virt_os_pagesize())
#define NREADER   4
#define NSHARED   256     /* blocks read by all, invalidated at random */
#define NOWN      4       /* blocks written by each reader, its own */
#define NBLK      (NSHARED + NREADER * NOWN)
#define CAPACITY  (48 * PS)
#define RUN_S     1.5

typedef struct Shared {
    Fixture        f;
    unsigned char *map[2];      /* two VMAs over [0, NBLK) */
    atomic_int     stop;
    atomic_long    nread, ninval;
} Shared;

typedef struct Reader {
    Shared   *sh;
    int       id;
    unsigned  seed;
    uint32_t  seen[NSHARED];    /* highest version seen per block */
} Reader;

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* One word of a shared block: from the right block and place, of a version
 * the file has had, and never older than one this thread saw before (an
 * invalidated page must not come back). */
static void check_word(Reader *r, blk_t blk, size_t i, uint64_t w)
{
    uint32_t v = (uint32_t)((w >> 20) & 0xfffff);
    uint32_t cur = testfile_version(&r->sh->f.tf, blk) & 0xfffff;

    if ((w >> 40) != blk || (w & 0xfffff) != i || v > cur || v < r->seen[blk])
        test__fail(__FILE__, __LINE__, "reader %d: block %llu word %zu = "
                   "%#llx (version now %u, seen %u)", r->id,
                   (unsigned long long)blk, i, (unsigned long long)w, cur,
                   r->seen[blk]);
    r->seen[blk] = v;
}

static void *reader(void *arg)
{
    Reader *r = arg;
    Shared *sh = r->sh;
    size_t nw = PS / 8, i;
    uint64_t counter = 0;

    while (!atomic_load(&sh->stop)) {
        int which = rand_r(&r->seed) % 2;
        blk_t blk = (blk_t)(rand_r(&r->seed) % NSHARED);
        const volatile uint64_t *w =
            (const volatile uint64_t *)(sh->map[which] + blk * PS);

        if (rand_r(&r->seed) % 4 == 0) {
            for (i = 0; i < nw; i++)        /* the whole block */
                check_word(r, blk, i, w[i]);
        } else {
            i = (size_t)rand_r(&r->seed) % nw;
            check_word(r, blk, i, w[i]);
        }

        /* write our own block through one VMA, read it through the other */
        if (rand_r(&r->seed) % 8 == 0) {
            blk_t own = NSHARED + (blk_t)r->id * NOWN +
                        (blk_t)(rand_r(&r->seed) % NOWN);
            volatile uint64_t *a = (volatile uint64_t *)(sh->map[which] +
                                                         own * PS);
            volatile uint64_t *b = (volatile uint64_t *)(sh->map[!which] +
                                                         own * PS);
            counter++;
            a[1] = counter;
            if (b[1] != counter || b[2] != testfile_word(own, 0, 2))
                test__fail(__FILE__, __LINE__, "reader %d: own block %llu "
                           "lost a write", r->id, (unsigned long long)own);
        }
        atomic_fetch_add(&sh->nread, 1);
    }
    return NULL;
}

static void *invalidator(void *arg)
{
    Shared *sh = arg;
    unsigned seed = 12345;

    while (!atomic_load(&sh->stop)) {
        blk_t blk = (blk_t)(rand_r(&seed) % NSHARED);

        /* the file changes first, then the handle is told */
        testfile_bump(&sh->f.tf, blk);
        CHECK_OK(fileh_invalidate_page(sh->f.fileh, blk));
        if (rand_r(&seed) % 16 == 0)
            ram_reclaim(sh->f.ram, 8);
        atomic_fetch_add(&sh->ninval, 1);
        if (rand_r(&seed) % 4 == 0)
            sched_yield();
    }
    return NULL;
}

TEST(threads_fault_randomly_with_invalidations)
{
    static Shared sh;
    static Reader rd[NREADER];
    pthread_t th[NREADER + 1];
    VMA *vma[2];
    RAMStats st;
    double t0;
    int k;

    fixture_open(&sh.f, PS, NBLK, CAPACITY);
    sh.map[0] = fixture_mmap(&sh.f, 0, NBLK, &vma[0]);
    sh.map[1] = fixture_mmap(&sh.f, 0, NBLK, &vma[1]);
    for (k = 0; k < NREADER; k++) {
        rd[k].sh = &sh;
        rd[k].id = k;
        rd[k].seed = (unsigned)k + 1;
        CHECK_EQ(pthread_create(&th[k], NULL, reader, &rd[k]), 0);
    }
    CHECK_EQ(pthread_create(&th[NREADER], NULL, invalidator, &sh), 0);

    t0 = now_s();
    while (now_s() - t0 < RUN_S) {
        ram_get_stats(sh.f.ram, &st);
        /* at most the writers' dirty blocks over capacity: never here */
        CHECK(st.used <= CAPACITY);
        usleep(10000);
    }
    atomic_store(&sh.stop, 1);
    for (k = 0; k <= NREADER; k++)
        CHECK_EQ(pthread_join(th[k], NULL), 0);

    CHECK(atomic_load(&sh.nread) > 1000);
    CHECK(atomic_load(&sh.ninval) > 100);
    CHECK(fixture_stats(&sh.f).nloadblk > NSHARED);
    fixture_close(&sh.f);
}

/* A RAM of one page and several threads each wanting a different page: a
 * page one thread loaded may be reclaimed by another before the loader maps
 * it.  Every thread must still make progress (no livelock, no -ENOMEM
 * failure while pages are only loading). */
typedef struct Tiny {
    Shared  *sh;
    unsigned seed;
    int      nread;
} Tiny;

static void *tiny_reader(void *arg)
{
    Tiny *t = arg;
    int k;

    for (k = 0; k < t->nread; k++) {
        blk_t blk = (blk_t)(rand_r(&t->seed) % NSHARED);
        const volatile uint64_t *w =
            (const volatile uint64_t *)(t->sh->map[0] + blk * PS);
        size_t i = (size_t)rand_r(&t->seed) % (PS / 8);

        if (w[i] != testfile_word(blk, 0, i))
            test__fail(__FILE__, __LINE__, "block %llu word %zu = %#llx",
                       (unsigned long long)blk, i, (unsigned long long)w[i]);
    }
    return NULL;
}

TEST(threads_share_a_one_page_ram)
{
    static Shared sh;
    static Tiny tiny[3];
    pthread_t th[3];
    VMA *vma;
    int k;

    fixture_open(&sh.f, PS, NSHARED, PS);
    sh.map[0] = fixture_mmap(&sh.f, 0, NSHARED, &vma);
    for (k = 0; k < 3; k++) {
        tiny[k].sh = &sh;
        tiny[k].seed = (unsigned)k + 100;
        tiny[k].nread = 2000;
        CHECK_EQ(pthread_create(&th[k], NULL, tiny_reader, &tiny[k]), 0);
    }
    for (k = 0; k < 3; k++)
        CHECK_EQ(pthread_join(th[k], NULL), 0);
    CHECK(fixture_ram_stats(&sh.f).used <= PS);
    fixture_close(&sh.f);
}

/* Writers keep changing their own blocks while the main thread writes out
 * (STORE, then MARKSTORED, as a commit does) and a reader keeps the RAM
 * under pressure.  Each stored block must be one the writer really wrote:
 * its counter no newer than the writer's, never older than what was stored
 * for it before, the rest of the block intact. */
#define NWRITER 2

typedef struct Writer {
    Shared         *sh;
    int             id;
    _Atomic uint64_t counter;
} Writer;

static void *writer(void *arg)
{
    Writer *w = arg;
    unsigned seed = (unsigned)w->id + 7;

    while (!atomic_load(&w->sh->stop)) {
        blk_t own = NSHARED + (blk_t)w->id * NOWN +
                    (blk_t)(rand_r(&seed) % NOWN);
        uint64_t c = atomic_fetch_add(&w->counter, 1) + 1;

        ((volatile uint64_t *)(w->sh->map[0] + own * PS))[1] = c;
    }
    return NULL;
}

static void *pressure_reader(void *arg)
{
    Shared *sh = arg;
    unsigned seed = 99;

    while (!atomic_load(&sh->stop)) {
        blk_t blk = (blk_t)(rand_r(&seed) % NSHARED);
        uint64_t v = ((const volatile uint64_t *)(sh->map[1] + blk * PS))[3];

        if (v != testfile_word(blk, 0, 3))
            test__fail(__FILE__, __LINE__, "block %llu: %#llx",
                       (unsigned long long)blk, (unsigned long long)v);
    }
    return NULL;
}

TEST(writeout_while_threads_write)
{
    static Shared sh;
    static Writer wr[NWRITER];
    uint64_t last[NBLK] = { 0 };
    pthread_t th[NWRITER + 1];
    VMA *vma[2];
    double t0;
    size_t k, nstored = 0;
    int i;

    fixture_open(&sh.f, PS, NBLK, CAPACITY);
    sh.map[0] = fixture_mmap(&sh.f, 0, NBLK, &vma[0]);
    sh.map[1] = fixture_mmap(&sh.f, 0, NBLK, &vma[1]);
    for (i = 0; i < NWRITER; i++) {
        wr[i].sh = &sh;
        wr[i].id = i;
        CHECK_EQ(pthread_create(&th[i], NULL, writer, &wr[i]), 0);
    }
    CHECK_EQ(pthread_create(&th[NWRITER], NULL, pressure_reader, &sh), 0);

    t0 = now_s();
    while (now_s() - t0 < 1.0) {
        CHECK_OK(fileh_dirty_writeout(sh.f.fileh, WRITEOUT_STORE));
        CHECK_OK(fileh_dirty_writeout(sh.f.fileh, WRITEOUT_MARKSTORED));
        for (k = 0; k < sh.f.tf.nstores; k++) {
            StoreRec *r = &sh.f.tf.stores[k];
            const uint64_t *d = (const uint64_t *)r->data;
            int id = (int)((r->blk - NSHARED) / NOWN);

            CHECK(r->blk >= NSHARED && r->blk < NBLK);
            /* Dirtied by the write fault, stored before the write itself
             * ran: still the file's word.  (The file does not keep what is
             * stored: a clean page reclaimed and reloaded starts over.) */
            if (d[1] != testfile_word(r->blk, 0, 1)) {
                CHECK(d[1] <= atomic_load(&wr[id].counter));
                CHECK(d[1] >= last[r->blk]);
                last[r->blk] = d[1];
            }
            CHECK_EQ(d[0], testfile_word(r->blk, 0, 0));
            CHECK_EQ(d[2], testfile_word(r->blk, 0, 2));
        }
        nstored += sh.f.tf.nstores;
        testfile_clear_stores(&sh.f.tf);
        usleep(2000);
    }
    atomic_store(&sh.stop, 1);
    for (i = 0; i <= NWRITER; i++)
        CHECK_EQ(pthread_join(th[i], NULL), 0);
    CHECK(nstored > 10);
    CHECK(fixture_ram_stats(&sh.f).nreclaimed > 0);
    fixture_close(&sh.f);
}
