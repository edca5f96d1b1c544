/* The test backend (see testfile.h). */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "task.h"
#include "testfile.h"

void testfile_fill(void *buf, size_t blksize, blk_t blk, uint32_t v)
{
    uint64_t *w = buf;
    size_t i;

    for (i = 0; i < blksize / 8; i++)
        w[i] = testfile_word(blk, v, i);
}

int testfile_matches(const void *buf, size_t blksize, blk_t blk, uint32_t v)
{
    const uint64_t *w = buf;
    size_t i;

    for (i = 0; i < blksize / 8; i++) {
        if (w[i] != testfile_word(blk, v, i))
            return 0;
    }
    return 1;
}

uint32_t testfile_version(TestFile *tf, blk_t blk)
{
    return blk < tf->nblk ? atomic_load(&tf->version[blk]) : 0;
}

uint32_t testfile_nload(TestFile *tf, blk_t blk)
{
    return blk < tf->nblk ? atomic_load(&tf->nload[blk]) : 0;
}

void testfile_bump(TestFile *tf, blk_t blk)
{
    CHECK(blk < tf->nblk);
    atomic_fetch_add(&tf->version[blk], 1);
}

void testfile_check_block(TestFile *tf, const void *addr, blk_t blk)
{
    uint32_t v;

    /* Fault the block in first: the version to expect is the one after any
     * load this touch causes. */
    (void)*(const volatile uint64_t *)addr;
    v = testfile_version(tf, blk);

    if (!testfile_matches(addr, tf->file.blksize, blk, v))
        test__fail(__FILE__, __LINE__, "block %llu at %p does not hold "
                   "version %u (first word %#llx)", (unsigned long long)blk,
                   addr, v, (unsigned long long)*(const uint64_t *)addr);
}

static int testfile_loadblk(BigFile *file, blk_t blk, void *buf)
{
    TestFile *tf = (TestFile *)file;
    int r;

    if (tf->on_load != NULL) {
        r = tf->on_load(tf, blk, buf);
        if (r != TESTFILE_CONTINUE)
            return r;
    }
    if ((long long)blk == atomic_load(&tf->load_fail_blk))
        return -EIO;
    if (blk < tf->nblk)
        atomic_fetch_add(&tf->nload[blk], 1);
    testfile_fill(buf, file->blksize, blk, testfile_version(tf, blk));
    return 0;
}

static int testfile_storeblk(BigFile *file, blk_t blk, const void *buf)
{
    TestFile *tf = (TestFile *)file;
    StoreRec *rec;
    int r = 0;

    if (tf->on_store != NULL) {
        r = tf->on_store(tf, blk, buf);
        if (r != TESTFILE_CONTINUE)
            return r;
        r = 0;
    }
    if ((long long)blk == atomic_load(&tf->store_fail_blk))
        r = -EIO;

    CHECK(pthread_mutex_lock(&tf->mu) == 0);
    if (tf->nstores == tf->capstores) {
        tf->capstores = tf->capstores ? 2 * tf->capstores : 16;
        tf->stores = realloc(tf->stores, tf->capstores * sizeof(*tf->stores));
        CHECK(tf->stores != NULL);
    }
    rec = &tf->stores[tf->nstores++];
    rec->blk = blk;
    rec->ret = r;
    rec->data = malloc(file->blksize);
    CHECK(rec->data != NULL);
    memcpy(rec->data, buf, file->blksize);
    CHECK(pthread_mutex_unlock(&tf->mu) == 0);
    return r;
}

static void testfile_release(BigFile *file)
{
    TestFile *tf = (TestFile *)file;

    atomic_fetch_add(&tf->nrelease, 1);
    if (tf->on_release != NULL)
        tf->on_release(tf);
}

static const BigFileOps testfile_ops = {
    .loadblk  = testfile_loadblk,
    .storeblk = testfile_storeblk,
    .release  = testfile_release,
};

void testfile_init(TestFile *tf, size_t blksize, blk_t nblk)
{
    blk_t i;

    memset(tf, 0, sizeof(*tf));
    tf->file.ops = &testfile_ops;
    tf->file.blksize = blksize;
    tf->nblk = nblk;
    tf->version = calloc(nblk ? nblk : 1, sizeof(*tf->version));
    tf->nload = calloc(nblk ? nblk : 1, sizeof(*tf->nload));
    CHECK(tf->version != NULL && tf->nload != NULL);
    for (i = 0; i < nblk; i++) {
        atomic_init(&tf->version[i], 0);
        atomic_init(&tf->nload[i], 0);
    }
    atomic_init(&tf->load_fail_blk, -1);
    atomic_init(&tf->store_fail_blk, -1);
    atomic_init(&tf->nrelease, 0);
    CHECK(pthread_mutex_init(&tf->mu, NULL) == 0);
}

int testfile_load_keeping(TestFile *tf, blk_t blk, void *buf)
{
    void **kept = tf->hook_arg;
    size_t bs = tf->file.blksize;

    testfile_fill(buf, bs, blk, testfile_version(tf, blk));
    CHECK_OK(virt_loadbuf_save(buf));
    CHECK(mmap(buf, bs, PROT_READ | PROT_WRITE,
               MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == buf);
    kept[blk] = buf;
    return VIRT_BUF_KEPT;
}

void testfile_clear_stores(TestFile *tf)
{
    size_t i;

    CHECK(pthread_mutex_lock(&tf->mu) == 0);
    for (i = 0; i < tf->nstores; i++)
        free(tf->stores[i].data);
    tf->nstores = 0;
    CHECK(pthread_mutex_unlock(&tf->mu) == 0);
}

void testfile_fini(TestFile *tf)
{
    testfile_clear_stores(tf);
    free(tf->stores);
    free(tf->version);
    free(tf->nload);
    CHECK(pthread_mutex_destroy(&tf->mu) == 0);
}
