/* A C backend for the core's tests: a BigFile whose block @blk at version
 * @v holds a pattern derived from (blk, v), whose loadblk counts calls per
 * block, and whose storeblk records what it was given.
 *
 * Each 8-byte word i of a block is (blk << 40) | (v << 20) | i (v and i taken
 * modulo 2^20), so that any single word read tells which block, version and
 * place it came from: a torn or misplaced page is caught word by word.
 */
#ifndef ZBIGARRAY_TESTS_TESTFILE_H
#define ZBIGARRAY_TESTS_TESTFILE_H

#include <pthread.h>
#include <stdatomic.h>
#include <limits.h>
#include <stdint.h>

#include "virtmem.h"

#define TESTFILE_CONTINUE INT_MAX

typedef struct StoreRec {
    blk_t          blk;
    int            ret;     /* what storeblk returned */
    unsigned char *data;    /* copy of the block (malloc'd) */
} StoreRec;

typedef struct TestFile TestFile;
struct TestFile {
    BigFile           file;          /* first: a BigFile * is a TestFile * */
    blk_t             nblk;          /* blocks with a version and counters */
    _Atomic uint32_t *version;       /* [nblk] current version of each block */
    _Atomic uint32_t *nload;         /* [nblk] loadblk calls per block */
    atomic_llong      load_fail_blk; /* loadblk of it returns -EIO; -1: none */
    atomic_llong      store_fail_blk;/* storeblk of it returns -EIO; -1: none */
    atomic_int        nrelease;      /* ops->release calls */

    /* Optional hooks, run first inside loadblk / storeblk.  Returning
     * TESTFILE_CONTINUE goes on as without a hook; any other value is
     * returned by the callback at once (nothing filled or recorded). */
    int             (*on_load)(TestFile *tf, blk_t blk, void *buf);
    int             (*on_store)(TestFile *tf, blk_t blk, const void *buf);
    void             *hook_arg;
    void            (*on_release)(TestFile *tf);   /* after counting */

    pthread_mutex_t   mu;            /* guards the store log */
    StoreRec         *stores;
    size_t            nstores, capstores;
};

void testfile_init(TestFile *tf, size_t blksize, blk_t nblk);
void testfile_fini(TestFile *tf);

/* The word at index @i of block @blk at version @v. */
static inline uint64_t testfile_word(blk_t blk, uint32_t v, size_t i)
{
    return ((uint64_t)blk << 40) | ((uint64_t)(v & 0xfffff) << 20) |
           (uint64_t)(i & 0xfffff);
}

/* Current version of @blk (0 past nblk). */
uint32_t testfile_version(TestFile *tf, blk_t blk);

/* Write block @blk at version @v into @buf. */
void testfile_fill(void *buf, size_t blksize, blk_t blk, uint32_t v);

/* Does @buf hold block @blk at version @v? */
int testfile_matches(const void *buf, size_t blksize, blk_t blk, uint32_t v);

/* CHECK that [addr, +blksize) holds @blk at its current version. */
void testfile_check_block(TestFile *tf, const void *addr, blk_t blk);

/* The file changed: @blk's version goes up by one. */
void testfile_bump(TestFile *tf, blk_t blk);

uint32_t testfile_nload(TestFile *tf, blk_t blk);

/* An on_load hook for a loadblk that keeps its buffer: fills it, hands the
 * content over (virt_loadbuf_save), replaces the range with memory of its
 * own, records the address in ((void **)tf->hook_arg)[blk] (for the test
 * to munmap) and returns VIRT_BUF_KEPT. */
int testfile_load_keeping(TestFile *tf, blk_t blk, void *buf);

/* Forget the store log. */
void testfile_clear_stores(TestFile *tf);

#endif /* ZBIGARRAY_TESTS_TESTFILE_H */
