/* The backend's say in dirtying and spilling: ops->dirtied before a handle's
 * first dirty page, ops->spill when a fault finds its RAM full of dirty pages
 * (the backend then writes the oldest out, fileh_dirty_writeout_oldest), and
 * writes racing with such a writeout: none may be lost. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "fixture.h"
#include "standin_policy.h"

/* A word no block of the TestFile holds: written by thread @t into block
 * @blk in round @r. */
static uint64_t mk(unsigned t, blk_t blk, unsigned r)
{
    return 0xA000000000000000ull | ((uint64_t)t << 40) |
           ((uint64_t)blk << 20) | (uint64_t)r;
}

/* A TestFile with dirtied/spill and a disk: what storeblk is given is kept
 * and loaded back (the plain TestFile forgets it, so a spilled page that is
 * reclaimed and touched again would come back as the pattern). */
typedef struct Ctx {
    Fixture         f;
    BigFileOps      ops;
    atomic_int      ndirtied, nspill;
    atomic_int      dirtied_ret;    /* what ops->dirtied returns */
    atomic_int      spill_ret;      /* non-zero: ops->spill returns it at once */
    long            spill_n;        /* pages per spill; < 0: clean none */
    atomic_llong    stall_blk;      /* storeblk of it waits for `go` (once) */
    sem_t           stalled, go;
    pthread_mutex_t mu;             /* guards img */
    unsigned char **img;            /* [nblk] last stored, or NULL */
    size_t          nspill_stores;  /* stores made from inside a spill */
    unsigned char  *p;              /* the whole file mapped */
    VMA            *vma;
} Ctx;

static Ctx *ctx_of(BigFile *file)
{
    return ((TestFile *)file)->hook_arg;
}

static int ctx_dirtied(BigFile *file)
{
    Ctx *c = ctx_of(file);

    atomic_fetch_add(&c->ndirtied, 1);
    return atomic_load(&c->dirtied_ret);
}

static int ctx_spill(BigFile *file)
{
    Ctx *c = ctx_of(file);
    size_t before;
    int r = atomic_load(&c->spill_ret), n;

    atomic_fetch_add(&c->nspill, 1);
    if (r)
        return r;
    if (c->spill_n < 0)
        return 0;
    pthread_mutex_lock(&c->f.tf.mu);
    before = c->f.tf.nstores;
    pthread_mutex_unlock(&c->f.tf.mu);
    n = fileh_dirty_writeout_oldest(c->f.fileh, (size_t)c->spill_n);
    if (n < 0)
        return n;
    CHECK(n <= c->spill_n);
    pthread_mutex_lock(&c->f.tf.mu);
    CHECK_EQ(c->f.tf.nstores - before, (size_t)n);
    c->nspill_stores += (size_t)n;
    pthread_mutex_unlock(&c->f.tf.mu);
    return 0;
}

static int ctx_load(TestFile *tf, blk_t blk, void *buf)
{
    Ctx *c = tf->hook_arg;
    int r = TESTFILE_CONTINUE;

    pthread_mutex_lock(&c->mu);
    if (blk < tf->nblk && c->img[blk]) {
        memcpy(buf, c->img[blk], tf->file.blksize);
        r = 0;
    }
    pthread_mutex_unlock(&c->mu);
    return r;
}

static int ctx_store(TestFile *tf, blk_t blk, const void *buf)
{
    Ctx *c = tf->hook_arg;
    long long expect = (long long)blk;

    if (atomic_compare_exchange_strong(&c->stall_blk, &expect, -1)) {
        CHECK_EQ(sem_post(&c->stalled), 0);
        while (sem_wait(&c->go) != 0)
            CHECK_EQ(errno, EINTR);
    }
    if ((long long)blk == atomic_load(&tf->store_fail_blk))
        return TESTFILE_CONTINUE;               /* fails, keeps nothing */
    pthread_mutex_lock(&c->mu);
    if (!c->img[blk])
        c->img[blk] = malloc(tf->file.blksize);
    CHECK(c->img[blk] != NULL);
    memcpy(c->img[blk], buf, tf->file.blksize);
    pthread_mutex_unlock(&c->mu);
    return TESTFILE_CONTINUE;                   /* and logged */
}

/* @nblk blocks of one OS page, a RAM of @ram_pages, all mapped;
 * dirtied and spill (writing out @spill_n pages) set. */
static void ctx_open(Ctx *c, blk_t nblk, size_t ram_pages, long spill_n)
{
    memset(c, 0, sizeof *c);
    fixture_open(&c->f, PS, nblk, ram_pages * PS);
    c->ops = *c->f.tf.file.ops;
    c->ops.dirtied = ctx_dirtied;
    c->ops.spill = ctx_spill;
    c->f.tf.file.ops = &c->ops;
    c->f.tf.hook_arg = c;
    c->f.tf.on_load = ctx_load;
    c->f.tf.on_store = ctx_store;
    c->spill_n = spill_n;
    atomic_init(&c->stall_blk, -1);
    CHECK_EQ(sem_init(&c->stalled, 0, 0), 0);
    CHECK_EQ(sem_init(&c->go, 0, 0), 0);
    CHECK_EQ(pthread_mutex_init(&c->mu, NULL), 0);
    c->img = calloc(nblk, sizeof *c->img);
    CHECK(c->img != NULL);
    c->p = fixture_mmap(&c->f, 0, nblk, &c->vma);
}

static void ctx_close(Ctx *c)
{
    blk_t nblk = c->f.tf.nblk;

    fixture_close(&c->f);
    for (blk_t i = 0; i < nblk; i++)
        free(c->img[i]);
    free(c->img);
    sem_destroy(&c->stalled);
    sem_destroy(&c->go);
    pthread_mutex_destroy(&c->mu);
}

static unsigned char *blkp(Ctx *c, blk_t blk)
{
    return c->p + blk * PS;
}

/* What was last stored of @blk holds @want at the words listed (index,
 * value pairs ending with index -1), the pattern elsewhere. */
static void check_img(Ctx *c, blk_t blk, const long *want)
{
    const uint64_t *w = (const uint64_t *)c->img[blk];

    if (!w)
        test__fail(__FILE__, __LINE__, "block %llu never stored",
                   (unsigned long long)blk);
    for (size_t i = 0; i < PS / 8; i++) {
        uint64_t e = testfile_word(blk, 0, i);
        for (const long *k = want; *k >= 0; k += 2)
            if ((size_t)k[0] == i)
                e = (uint64_t)k[1];
        if (w[i] != e)
            test__fail(__FILE__, __LINE__, "block %llu word %zu: %#llx, "
                       "expected %#llx", (unsigned long long)blk, i,
                       (unsigned long long)w[i], (unsigned long long)e);
    }
}

/* Wait for @s at most 5 s. */
static void sem_wait5(sem_t *s)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += 5;
    while (sem_timedwait(s, &ts) != 0) {
        CHECK_EQ(errno, EINTR);
    }
}

/* -------------------------------------------------------------- dirtied */

TEST(dirtied_once_per_transaction_and_not_for_reads)
{
    static Ctx c;

    ctx_open(&c, 16, 16, 2);
    for (blk_t b = 0; b < 16; b++)
        testfile_check_block(&c.f.tf, blkp(&c, b), b);
    CHECK_EQ(atomic_load(&c.ndirtied), 0);              /* reads: never */

    for (blk_t b = 0; b < 8; b++)
        for (size_t i = 0; i < 4; i++)
            poke(blkp(&c, b), i, mk(0, b, 1));
    CHECK_EQ(atomic_load(&c.ndirtied), 1);
    CHECK_EQ(fixture_stats(&c.f).ndirty, 8);

    /* STORE alone leaves the pages dirty: still the same transaction. */
    CHECK_OK(fileh_dirty_writeout(c.f.fileh, WRITEOUT_STORE));
    poke(blkp(&c, 9), 0, 1);
    CHECK_EQ(atomic_load(&c.ndirtied), 1);

    /* Written out and marked stored: the next write is news. */
    CHECK_OK(fileh_dirty_writeout(c.f.fileh, WRITEOUT_STORE | WRITEOUT_MARKSTORED));
    CHECK_EQ(fileh_isdirty(c.f.fileh), 0);
    (void)peek(blkp(&c, 3), 0);
    CHECK_EQ(atomic_load(&c.ndirtied), 1);
    poke(blkp(&c, 3), 0, 2);
    poke(blkp(&c, 4), 0, 2);
    CHECK_EQ(atomic_load(&c.ndirtied), 2);

    /* Spilling some leaves the rest dirty: no new transaction. */
    CHECK_EQ(fileh_dirty_writeout_oldest(c.f.fileh, 1), 1);
    poke(blkp(&c, 5), 0, 2);
    poke(blkp(&c, 3), 1, 2);                            /* spilled, again dirty */
    CHECK_EQ(atomic_load(&c.ndirtied), 2);

    /* Discarded: news again. */
    CHECK_OK(fileh_dirty_discard(c.f.fileh));
    poke(blkp(&c, 6), 0, 3);
    CHECK_EQ(atomic_load(&c.ndirtied), 3);

    /* MARKSTORED alone ends the transaction too. */
    CHECK_OK(fileh_dirty_writeout(c.f.fileh, WRITEOUT_MARKSTORED));
    poke(blkp(&c, 6), 1, 3);
    CHECK_EQ(atomic_load(&c.ndirtied), 4);
    poke(blkp(&c, 7), 1, 3);
    CHECK_EQ(atomic_load(&c.ndirtied), 4);
    ctx_close(&c);
}

TEST(dirtied_failing_fails_the_write)
{
    static Ctx c;

    policy_begin();
    ctx_open(&c, 8, 8, 2);
    atomic_store(&c.dirtied_ret, -EROFS);

    /* A loaded page, then a write to an absent one. */
    testfile_check_block(&c.f.tf, blkp(&c, 2), 2);
    poke(blkp(&c, 2), 0, 77);
    CHECK_EQ(reports.n, 1);
    CHECK_EQ(reports.err, -EROFS);
    CHECK_EQ(reports.blk, 2);
    CHECK_EQ(atomic_load(&c.ndirtied), 1);
    CHECK(fileh_fault_failed(c.f.fileh));
    CHECK_EQ(fixture_stats(&c.f).ndirty, 0);            /* nothing changed */
    CHECK_EQ(fileh_isdirty(c.f.fileh), 0);
    CHECK_ERR(fileh_dirty_writeout(c.f.fileh, WRITEOUT_STORE), -ENOTRECOVERABLE);
    virt_fault_reported();
    testfile_check_block(&c.f.tf, blkp(&c, 2), 2);      /* the write was lost */

    poke(blkp(&c, 5), 0, 78);
    CHECK_EQ(reports.n, 2);
    CHECK_EQ(reports.err, -EROFS);
    CHECK_EQ(reports.blk, 5);
    CHECK_EQ(fixture_stats(&c.f).ndirty, 0);
    virt_fault_reported();
    testfile_check_block(&c.f.tf, blkp(&c, 5), 5);

    /* Accepted now: the write goes through, after discard clears the
     * failure. */
    atomic_store(&c.dirtied_ret, 0);
    CHECK_OK(fileh_dirty_discard(c.f.fileh));
    CHECK(!fileh_fault_failed(c.f.fileh));
    poke(blkp(&c, 2), 0, 79);
    CHECK_EQ(peek(blkp(&c, 2), 0), 79);
    CHECK_EQ(atomic_load(&c.ndirtied), 3);
    CHECK_EQ(fixture_stats(&c.f).ndirty, 1);
    CHECK_OK(fileh_dirty_writeout(c.f.fileh, WRITEOUT_STORE | WRITEOUT_MARKSTORED));
    check_img(&c, 2, (const long[]){ 0, 79, -1 });
    CHECK_EQ(reports.n, 2);
    ctx_close(&c);
    policy_end();
}

/* ------------------------------------------------ fileh_dirty_writeout_oldest */

static void check_log(TestFile *tf, size_t from, const blk_t *want, size_t n)
{
    CHECK_EQ(tf->nstores - from, n);
    for (size_t i = 0; i < n; i++)
        if (tf->stores[from + i].blk != want[i])
            test__fail(__FILE__, __LINE__, "store %zu: block %llu, expected "
                       "%llu", from + i,
                       (unsigned long long)tf->stores[from + i].blk,
                       (unsigned long long)want[i]);
}

TEST(writeout_oldest_stores_the_oldest_and_leaves_the_newest_dirty)
{
    static Ctx c;
    const blk_t order[] = { 5, 2, 9, 0, 7 };

    ctx_open(&c, 16, 16, 2);
    CHECK_EQ(fileh_dirty_writeout_oldest(c.f.fileh, 3), 0);    /* none dirty */
    for (size_t k = 0; k < 5; k++)
        poke(blkp(&c, order[k]), 1, mk(0, order[k], 1));
    (void)peek(blkp(&c, 11), 0);                                /* clean */

    CHECK_EQ(fileh_dirty_writeout_oldest(c.f.fileh, 3), 3);
    check_log(&c.f.tf, 0, (const blk_t[]){ 2, 5, 9 }, 3);      /* ascending */
    CHECK_EQ(fixture_stats(&c.f).ndirty, 2);
    CHECK_EQ(fixture_stats(&c.f).nstoreblk, 3);
    CHECK(fileh_isdirty(c.f.fileh));
    check_img(&c, 5, (const long[]){ 1, (long)mk(0, 5, 1), -1 });

    /* A stored page is write-protected again: writing dirties it anew, as
     * the newest. */
    poke(blkp(&c, 2), 2, mk(0, 2, 2));
    CHECK_EQ(fixture_stats(&c.f).ndirty, 3);                    /* 0 7 2 */
    CHECK_EQ(fileh_dirty_writeout_oldest(c.f.fileh, 1), 1);
    check_log(&c.f.tf, 3, (const blk_t[]){ 0 }, 1);
    CHECK_EQ(fileh_dirty_writeout_oldest(c.f.fileh, 100), 2);
    check_log(&c.f.tf, 4, (const blk_t[]){ 2, 7 }, 2);
    CHECK_EQ(fileh_isdirty(c.f.fileh), 0);
    check_img(&c, 2, (const long[]){ 1, (long)mk(0, 2, 1), 2, (long)mk(0, 2, 2), -1 });
    CHECK_EQ(fileh_dirty_writeout_oldest(c.f.fileh, 100), 0);
    CHECK_OK(fileh_dirty_writeout(c.f.fileh, WRITEOUT_STORE));
    CHECK_EQ(c.f.tf.nstores, 6);                                /* nothing more */
    CHECK_EQ(atomic_load(&c.nspill), 0);
    ctx_close(&c);
}

TEST(writeout_oldest_failing_store_keeps_every_page_dirty)
{
    static Ctx c;

    ctx_open(&c, 8, 8, 2);
    for (blk_t b = 0; b < 4; b++)
        poke(blkp(&c, b), 1, mk(0, b, 1));
    atomic_store(&c.f.tf.store_fail_blk, 1);
    CHECK_ERR(fileh_dirty_writeout_oldest(c.f.fileh, 3), -EIO);
    check_log(&c.f.tf, 0, (const blk_t[]){ 0, 1 }, 2);         /* stops at 1 */
    CHECK_EQ(fixture_stats(&c.f).ndirty, 4);
    poke(blkp(&c, 0), 2, mk(0, 0, 2));                          /* still works */
    CHECK_EQ(fixture_stats(&c.f).ndirty, 4);
    atomic_store(&c.f.tf.store_fail_blk, -1);
    CHECK_EQ(fileh_dirty_writeout_oldest(c.f.fileh, 3), 3);
    check_img(&c, 0, (const long[]){ 1, (long)mk(0, 0, 1), 2, (long)mk(0, 0, 2), -1 });
    CHECK_EQ(fixture_stats(&c.f).ndirty, 1);
    ctx_close(&c);
}

/* ---------------------------------------------------------------- spilling */

TEST(spill_lets_a_small_ram_take_many_dirty_pages)
{
    static Ctx c;
    blk_t want[64];
    size_t nlog, nsp;

    ctx_open(&c, 64, 4, 2);
    for (blk_t b = 0; b < 64; b++)
        poke(blkp(&c, b), 1, mk(0, b, 1));
    CHECK(atomic_load(&c.nspill) > 0);
    CHECK(fixture_ram_stats(&c.f).used <= 4 * PS);
    CHECK_EQ(atomic_load(&c.ndirtied), 1);                      /* never all clean */
    /* Dirtied in block order: every spill took the lowest. */
    CHECK_EQ(c.nspill_stores, 2 * (size_t)atomic_load(&c.nspill));
    CHECK_EQ(c.f.tf.nstores, c.nspill_stores);
    CHECK_OK(fileh_dirty_writeout(c.f.fileh, WRITEOUT_STORE | WRITEOUT_MARKSTORED));
    for (blk_t b = 0; b < 64; b++)
        want[b] = b;
    check_log(&c.f.tf, 0, want, 64);                            /* each once */
    for (blk_t b = 0; b < 64; b++)
        check_img(&c, b, (const long[]){ 1, (long)mk(0, b, 1), -1 });

    /* Reads through the small RAM bring back what was stored; writes in
     * reverse order spill the highest blocks first, two at a time. */
    for (blk_t b = 0; b < 64; b++)
        CHECK_EQ(peek(blkp(&c, b), 1), mk(0, b, 1));
    testfile_clear_stores(&c.f.tf);
    c.nspill_stores = 0;
    atomic_store(&c.nspill, 0);
    for (blk_t b = 64; b-- > 0; )
        poke(blkp(&c, b), 2, mk(0, b, 2));
    CHECK_EQ(atomic_load(&c.ndirtied), 2);
    nsp = c.nspill_stores;
    CHECK(nsp > 0 && nsp % 2 == 0);
    CHECK_OK(fileh_dirty_writeout(c.f.fileh, WRITEOUT_STORE | WRITEOUT_MARKSTORED));
    nlog = 0;
    for (size_t k = 0; k < nsp; k += 2) {                      /* 62 63 60 61 ... */
        want[nlog++] = 62 - k;
        want[nlog++] = 63 - k;
    }
    for (blk_t b = 0; b < 64 - nsp; b++)                        /* then the rest */
        want[nlog++] = b;
    check_log(&c.f.tf, 0, want, 64);
    for (blk_t b = 0; b < 64; b++)
        check_img(&c, b, (const long[]){ 1, (long)mk(0, b, 1), 2, (long)mk(0, b, 2), -1 });
    ctx_close(&c);
}

TEST(spill_failing_fails_the_fault)
{
    static Ctx c;

    policy_begin();
    ctx_open(&c, 8, 4, 2);
    for (blk_t b = 0; b < 4; b++)
        poke(blkp(&c, b), 1, mk(0, b, 1));
    atomic_store(&c.spill_ret, -EIO);
    poke(blkp(&c, 4), 1, 5);                                    /* to a stand-in */
    CHECK_EQ(atomic_load(&c.nspill), 1);
    CHECK_EQ(reports.n, 1);
    CHECK_EQ(reports.err, -EIO);
    CHECK_EQ(reports.blk, 4);
    CHECK(fileh_fault_failed(c.f.fileh));
    CHECK_EQ(fixture_stats(&c.f).ndirty, 4);
    CHECK_EQ(c.f.tf.nstores, 0);
    virt_fault_reported();

    /* Spilling works again: the next fault succeeds (after discard). */
    atomic_store(&c.spill_ret, 0);
    CHECK_OK(fileh_dirty_discard(c.f.fileh));
    for (blk_t b = 0; b < 8; b++)
        poke(blkp(&c, b), 1, mk(0, b, 2));
    CHECK_EQ(reports.n, 1);
    CHECK_OK(fileh_dirty_writeout(c.f.fileh, WRITEOUT_STORE | WRITEOUT_MARKSTORED));
    for (blk_t b = 0; b < 8; b++)
        check_img(&c, b, (const long[]){ 1, (long)mk(0, b, 2), -1 });
    ctx_close(&c);
    policy_end();
}

/* A spill that returns 0 having cleaned nothing must not be asked forever:
 * run in a child with an alarm, so that a loop is a failure, not a hang. */
static void spill_cleaning_nothing(void *arg)
{
    static Ctx c;
    long n = (long)(intptr_t)arg;

    alarm(5);
    policy_begin();
    ctx_open(&c, 8, 4, n);
    for (blk_t b = 0; b < 4; b++)
        poke(blkp(&c, b), 1, mk(0, b, 1));
    poke(blkp(&c, 4), 1, 5);
    CHECK_EQ(atomic_load(&c.nspill), 1);
    CHECK_EQ(reports.n, 1);
    CHECK_EQ(reports.err, -ENOMEM);
    CHECK_EQ(reports.blk, 4);
    CHECK_EQ(fixture_stats(&c.f).ndirty, 4);
    CHECK_EQ(c.f.tf.nstores, 0);
    virt_fault_reported();
    CHECK_OK(fileh_dirty_discard(c.f.fileh));
    ctx_close(&c);
    policy_end();
}

TEST(spill_that_cleans_nothing_fails_with_enomem)
{
    /* returns 0 without writing; writes out 0 pages */
    CHECK_EXITED(test_run_forked(spill_cleaning_nothing, (void *)(intptr_t)-1), 0);
    CHECK_EXITED(test_run_forked(spill_cleaning_nothing, (void *)(intptr_t)0), 0);
}

TEST(spill_absent_ram_full_of_dirty_pages_fails_with_enomem)
{
    static Ctx c;

    policy_begin();
    ctx_open(&c, 8, 4, 2);
    c.ops.spill = NULL;
    for (blk_t b = 0; b < 4; b++)
        poke(blkp(&c, b), 1, mk(0, b, 1));
    poke(blkp(&c, 4), 1, 5);
    CHECK_EQ(reports.n, 1);
    CHECK_EQ(reports.err, -ENOMEM);
    CHECK_EQ(reports.blk, 4);
    CHECK_EQ(atomic_load(&c.nspill), 0);
    CHECK_EQ(fixture_stats(&c.f).ndirty, 4);
    virt_fault_reported();
    CHECK_OK(fileh_dirty_discard(c.f.fileh));
    ctx_close(&c);
    policy_end();
}

/* The RAM is shared: a handle that cannot spill gets room from one that
 * can. */
TEST(spill_of_another_handle_makes_room)
{
    static Ctx c;
    TestFile other;
    BigFileH *h;
    VMA *vma;
    unsigned char *q;

    ctx_open(&c, 8, 4, 2);
    testfile_init(&other, PS, 8);
    CHECK_OK(fileh_open(&h, &other.file, c.f.ram));
    CHECK_OK(fileh_mmap(&vma, h, 0, 8));
    q = (unsigned char *)vma_addr_start(vma);
    for (blk_t b = 0; b < 3; b++)
        poke(blkp(&c, b), 1, mk(0, b, 1));
    poke(q, 1, 11);
    poke(q + PS, 1, 12);                                        /* RAM was full */
    CHECK_EQ(atomic_load(&c.nspill), 1);
    check_log(&c.f.tf, 0, (const blk_t[]){ 0, 1 }, 2);
    CHECK_EQ(fixture_stats(&c.f).ndirty, 1);
    CHECK_EQ(peek(q, 1), 11);
    CHECK_EQ(peek(q + PS, 1), 12);
    fileh_close(h);
    CHECK_EQ(atomic_load(&other.nrelease), 1);
    testfile_fini(&other);
    ctx_close(&c);
}

/* --------------------------------------------------------- with threads */

typedef struct Poker {
    unsigned char *addr;
    size_t         i;
    uint64_t       v;
    atomic_int     done;
} Poker;

static void *poker(void *arg)
{
    Poker *k = arg;

    poke(k->addr, k->i, k->v);
    atomic_store(&k->done, 1);
    return NULL;
}

/* The spiller: dirties blocks 0..3 (RAM full) then writes block 4. */
static void *spiller(void *arg)
{
    Ctx *c = arg;

    for (blk_t b = 0; b < 5; b++)
        poke(blkp(c, b), 1, mk(0, b, 1));
    return NULL;
}

TEST(spill_write_during_the_store_waits_and_is_kept)
{
    static Ctx c;
    static Poker k;
    pthread_t ts, tw;
    StoreRec *r;

    ctx_open(&c, 8, 4, 1);
    atomic_store(&c.stall_blk, 0);
    CHECK_EQ(pthread_create(&ts, NULL, spiller, &c), 0);
    sem_wait5(&c.stalled);                  /* storeblk(0) of the spill runs */

    k.addr = blkp(&c, 0);
    k.i = 2;
    k.v = mk(1, 0, 1);
    CHECK_EQ(pthread_create(&tw, NULL, poker, &k), 0);
    usleep(200 * 1000);
    CHECK_EQ(atomic_load(&k.done), 0);       /* waits for the store */
    CHECK_EQ(peek(blkp(&c, 0), 2), testfile_word(0, 0, 2));
    CHECK_EQ(sem_post(&c.go), 0);
    CHECK_EQ(pthread_join(tw, NULL), 0);
    CHECK_EQ(pthread_join(ts, NULL), 0);

    /* The spill stored the old block 0; the new write is dirty, not lost. */
    r = &c.f.tf.stores[0];
    CHECK_EQ(r->blk, 0);
    CHECK_EQ(((uint64_t *)r->data)[1], mk(0, 0, 1));
    CHECK_EQ(((uint64_t *)r->data)[2], testfile_word(0, 0, 2));
    CHECK(fileh_isdirty(c.f.fileh));
    CHECK_EQ(peek(blkp(&c, 0), 2), mk(1, 0, 1));
    CHECK_OK(fileh_dirty_writeout(c.f.fileh, WRITEOUT_STORE | WRITEOUT_MARKSTORED));
    check_img(&c, 0, (const long[]){ 1, (long)mk(0, 0, 1), 2, (long)mk(1, 0, 1), -1 });
    for (blk_t b = 1; b < 5; b++)
        check_img(&c, b, (const long[]){ 1, (long)mk(0, b, 1), -1 });
    ctx_close(&c);
}

typedef struct Oldest {
    Ctx *c;
    size_t n;
    int ret;
} Oldest;

static void *writeout_oldest(void *arg)
{
    Oldest *o = arg;

    o->ret = fileh_dirty_writeout_oldest(o->c->f.fileh, o->n);
    return NULL;
}

/* A page of the batch not yet handed to storeblk is write-protected
 * already: a write to it waits for the whole writeout, so that what is
 * stored is what the page held when marked clean.  Pages outside the batch
 * are written freely meanwhile. */
TEST(writeout_oldest_write_to_a_page_of_the_batch_waits)
{
    static Ctx c;
    static Poker k3, k5;
    static Oldest o;
    pthread_t to, t3, t5;

    ctx_open(&c, 8, 8, 2);
    poke(blkp(&c, 3), 1, mk(0, 3, 1));
    poke(blkp(&c, 1), 1, mk(0, 1, 1));
    poke(blkp(&c, 5), 1, mk(0, 5, 1));
    atomic_store(&c.stall_blk, 1);          /* batch {3, 1}: 1 goes first */
    o.c = &c;
    o.n = 2;
    CHECK_EQ(pthread_create(&to, NULL, writeout_oldest, &o), 0);
    sem_wait5(&c.stalled);

    k5 = (Poker){ blkp(&c, 5), 2, mk(1, 5, 1), 0 };
    CHECK_EQ(pthread_create(&t5, NULL, poker, &k5), 0);
    CHECK_EQ(pthread_join(t5, NULL), 0);     /* not in the batch: at once */
    k3 = (Poker){ blkp(&c, 3), 2, mk(1, 3, 1), 0 };
    CHECK_EQ(pthread_create(&t3, NULL, poker, &k3), 0);
    usleep(200 * 1000);
    CHECK_EQ(atomic_load(&k3.done), 0);
    CHECK_EQ(sem_post(&c.go), 0);
    CHECK_EQ(pthread_join(t3, NULL), 0);
    CHECK_EQ(pthread_join(to, NULL), 0);

    CHECK_EQ(o.ret, 2);
    check_log(&c.f.tf, 0, (const blk_t[]){ 1, 3 }, 2);
    check_img(&c, 3, (const long[]){ 1, (long)mk(0, 3, 1), -1 });
    CHECK_EQ(fixture_stats(&c.f).ndirty, 2);                    /* 5, 3 */
    CHECK_OK(fileh_dirty_writeout(c.f.fileh, WRITEOUT_STORE | WRITEOUT_MARKSTORED));
    check_log(&c.f.tf, 2, (const blk_t[]){ 3, 5 }, 2);
    check_img(&c, 3, (const long[]){ 1, (long)mk(0, 3, 1), 2, (long)mk(1, 3, 1), -1 });
    check_img(&c, 5, (const long[]){ 1, (long)mk(0, 5, 1), 2, (long)mk(1, 5, 1), -1 });
    ctx_close(&c);
}

/* Threads write their own word of every block, round after round, through a
 * RAM much smaller than the file: spills all the time, and every word must
 * survive them. */
#define ST_NTHREAD 4
#define ST_NBLK    64
#define ST_ROUNDS  40

typedef struct StressArg {
    Ctx      *c;
    unsigned  t;
} StressArg;

static void *stress_writer(void *arg)
{
    StressArg *a = arg;
    Ctx *c = a->c;

    for (unsigned r = 0; r < ST_ROUNDS; r++) {
        for (blk_t j = 0; j < ST_NBLK; j++) {
            /* apart on even rounds, all on the same block on odd ones */
            blk_t b = (j + (r % 2 ? 0 : a->t * 16)) % ST_NBLK;
            unsigned char *p = blkp(c, b);

            if (r > 0 && peek(p, 1 + a->t) != mk(a->t, b, r - 1))
                test__fail(__FILE__, __LINE__, "thread %u block %llu round "
                           "%u: %#llx", a->t, (unsigned long long)b, r,
                           (unsigned long long)peek(p, 1 + a->t));
            poke(p, 1 + a->t, mk(a->t, b, r));
        }
    }
    return NULL;
}

TEST(spill_threads_writing_through_a_small_ram_lose_nothing)
{
    static Ctx c;
    static StressArg a[ST_NTHREAD];
    pthread_t th[ST_NTHREAD];
    long want[2 * ST_NTHREAD + 1];

    ctx_open(&c, ST_NBLK, 8, 3);
    for (unsigned t = 0; t < ST_NTHREAD; t++) {
        a[t] = (StressArg){ &c, t };
        CHECK_EQ(pthread_create(&th[t], NULL, stress_writer, &a[t]), 0);
    }
    for (unsigned t = 0; t < ST_NTHREAD; t++)
        CHECK_EQ(pthread_join(th[t], NULL), 0);
    CHECK(atomic_load(&c.nspill) > 0);
    CHECK(atomic_load(&c.ndirtied) >= 1);
    CHECK(fixture_ram_stats(&c.f).used <= 8 * PS);
    CHECK_OK(fileh_dirty_writeout(c.f.fileh, WRITEOUT_STORE | WRITEOUT_MARKSTORED));
    for (blk_t b = 0; b < ST_NBLK; b++) {
        for (unsigned t = 0; t < ST_NTHREAD; t++) {
            want[2 * t] = 1 + (long)t;
            want[2 * t + 1] = (long)mk(t, b, ST_ROUNDS - 1);
        }
        want[2 * ST_NTHREAD] = -1;
        check_img(&c, b, want);
    }
    ctx_close(&c);
}

/* storeblk (of a spill, or of a writeout) touching an absent page while
 * the RAM is full of dirty pages: no room can be made -- the only pages
 * that could be spilled are those of the writeout in this very thread --
 * so that fault must fail (-ENOMEM), not wait for itself forever.  In a
 * child with an alarm: a hang is a failure. */
static unsigned char *store_touches;

static int store_touching(TestFile *tf, blk_t blk, const void *buf)
{
    (void)tf;
    (void)blk;
    (void)buf;
    (void)peek(store_touches, 0);
    return TESTFILE_CONTINUE;
}

static void store_faulting_while_full(void *arg)
{
    static Ctx c;
    TestFile other;
    BigFileH *h;
    VMA *vma;

    alarm(3);
    policy_begin();
    ctx_open(&c, 8, 4, 1);
    testfile_init(&other, PS, 8);
    CHECK_OK(fileh_open(&h, &other.file, c.f.ram));
    CHECK_OK(fileh_mmap(&vma, h, 0, 8));
    store_touches = (unsigned char *)vma_addr_start(vma);
    for (blk_t b = 0; b < 4; b++)
        poke(blkp(&c, b), 1, mk(0, b, 1));
    c.f.tf.on_store = store_touching;
    if (arg)
        (void)fileh_dirty_writeout(c.f.fileh, WRITEOUT_STORE);
    else
        poke(blkp(&c, 4), 1, 5);            /* spills */
    CHECK(reports.n >= 1);
    CHECK_EQ(reports.first_err, -ENOMEM);    /* then -EIO for the spill */
    virt_fault_reported();
    fileh_close(h);
    testfile_fini(&other);
    CHECK_OK(fileh_dirty_discard(c.f.fileh));
    ctx_close(&c);
    policy_end();
}

TEST(spill_storeblk_faulting_while_ram_full_does_not_wait_for_itself)
{
    CHECK_EXITED(test_run_forked(store_faulting_while_full, NULL), 0);
    CHECK_EXITED(test_run_forked(store_faulting_while_full, (void *)1), 0);
}
