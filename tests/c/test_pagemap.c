/* PageMap: blk -> pointer hash map (zbigarray/bigfile/pagemap.c). */
#include <stdint.h>
#include <stdlib.h>

#include "task.h"
#include "virtmem_int.h"

/* Values are never NULL: encode key k as the pointer (k * 2 + 1). */
static void *val_of(blk_t k)
{
    return (void *)(uintptr_t)(k * 2 + 1);
}

/* Every live entry is found by pagemap_get, the iteration visits each exactly
 * once, and the table is a power of two loaded at most 70%. */
static void check_consistent(const PageMap *pm)
{
    size_t pos = 0, n = 0;
    blk_t key;
    void *v;

    while ((v = pagemap_next(pm, &pos, &key)) != NULL) {
        CHECK(pagemap_get(pm, key) == v);
        n++;
    }
    CHECK_EQ(n, pm->count);
    if (pm->cap != 0) {
        CHECK_EQ(pm->cap & (pm->cap - 1), 0);
        CHECK(pm->count * 10 <= pm->cap * 7);
    }
}

TEST(pagemap_empty)
{
    PageMap pm;
    size_t pos = 0;

    pagemap_init(&pm);
    CHECK(pagemap_get(&pm, 0) == NULL);
    CHECK(pagemap_get(&pm, UINT64_MAX) == NULL);
    CHECK(pagemap_del(&pm, 7) == NULL);
    CHECK(pagemap_next(&pm, &pos, NULL) == NULL);
    CHECK_EQ(pm.count, 0);
    pagemap_fini(&pm);
    pagemap_fini(&pm);          /* harmless twice */
}

TEST(pagemap_set_get_replace_del)
{
    PageMap pm;
    int a, b;

    pagemap_init(&pm);
    CHECK_OK(pagemap_set(&pm, 42, &a));
    CHECK(pagemap_get(&pm, 42) == &a);
    CHECK(pagemap_get(&pm, 43) == NULL);
    CHECK_EQ(pm.count, 1);

    CHECK_OK(pagemap_set(&pm, 42, &b));     /* replace: count unchanged */
    CHECK(pagemap_get(&pm, 42) == &b);
    CHECK_EQ(pm.count, 1);

    CHECK_OK(pagemap_set(&pm, 0, &a));
    CHECK_OK(pagemap_set(&pm, UINT64_MAX, &a));
    CHECK_EQ(pm.count, 3);
    CHECK(pagemap_get(&pm, 0) == &a);
    CHECK(pagemap_get(&pm, UINT64_MAX) == &a);

    CHECK(pagemap_del(&pm, 42) == &b);
    CHECK(pagemap_del(&pm, 42) == NULL);
    CHECK(pagemap_get(&pm, 42) == NULL);
    CHECK_EQ(pm.count, 2);
    check_consistent(&pm);
    pagemap_fini(&pm);
    CHECK_EQ(pm.count, 0);
    CHECK(pagemap_get(&pm, 0) == NULL);

    /* usable again after fini */
    CHECK_OK(pagemap_set(&pm, 5, &a));
    CHECK(pagemap_get(&pm, 5) == &a);
    pagemap_fini(&pm);
}

/* Sequential keys, as pages of a file read front to back. */
TEST(pagemap_sequential_keys)
{
    const blk_t n = 100000;
    PageMap pm;
    blk_t k;

    pagemap_init(&pm);
    for (k = 0; k < n; k++) {
        CHECK_OK(pagemap_set(&pm, k, val_of(k)));
        if ((k & (k - 1)) == 0)
            check_consistent(&pm);
    }
    CHECK_EQ(pm.count, n);
    check_consistent(&pm);
    for (k = 0; k < n; k++)
        CHECK(pagemap_get(&pm, k) == val_of(k));
    CHECK(pagemap_get(&pm, n) == NULL);

    for (k = 1; k < n; k += 2)
        CHECK(pagemap_del(&pm, k) == val_of(k));
    CHECK_EQ(pm.count, n / 2);
    for (k = 0; k < n; k++)
        CHECK(pagemap_get(&pm, k) == (k % 2 ? NULL : val_of(k)));
    check_consistent(&pm);

    for (k = 0; k < n; k += 2)
        CHECK(pagemap_del(&pm, k) == val_of(k));
    CHECK_EQ(pm.count, 0);
    check_consistent(&pm);
    pagemap_fini(&pm);
}

/* Keys spread over the whole 64-bit range, including the extremes. */
TEST(pagemap_sparse_keys)
{
    PageMap pm;
    blk_t k;
    int i;

    pagemap_init(&pm);
    for (i = 0; i < 64; i++) {
        k = (blk_t)1 << i;
        CHECK_OK(pagemap_set(&pm, k, val_of(i)));
        CHECK_OK(pagemap_set(&pm, ~k, val_of(i + 64)));
    }
    CHECK_EQ(pm.count, 128);
    for (i = 0; i < 64; i++) {
        CHECK(pagemap_get(&pm, (blk_t)1 << i) == val_of(i));
        CHECK(pagemap_get(&pm, ~((blk_t)1 << i)) == val_of(i + 64));
    }
    check_consistent(&pm);
    pagemap_fini(&pm);
}

/* Random inserts, replaces and deletes against a plain array as the model.
 * A small key range at high load makes long probe runs that wrap around the
 * end of the table, which is where backward-shift deletion goes wrong if it
 * does. */
static void random_ops(unsigned seed, blk_t nkeys, long nops, blk_t stride)
{
    void **model = calloc(nkeys, sizeof(*model));
    size_t live = 0;
    PageMap pm;
    long op;
    blk_t i, k;

    CHECK(model != NULL);
    srandom(seed);
    pagemap_init(&pm);
    for (op = 0; op < nops; op++) {
        int r = (int)(random() % 3);

        i = (blk_t)random() % nkeys;
        k = i * stride;
        if (r < 2) {
            void *v = val_of(k + (blk_t)op);
            CHECK_OK(pagemap_set(&pm, k, v));
            live += model[i] == NULL;
            model[i] = v;
        } else {
            CHECK(pagemap_del(&pm, k) == model[i]);
            live -= model[i] != NULL;
            model[i] = NULL;
        }
        CHECK_EQ(pm.count, live);
        if (op % 997 == 0) {
            for (i = 0; i < nkeys; i++)
                CHECK(pagemap_get(&pm, i * stride) == model[i]);
            check_consistent(&pm);
        }
    }
    for (i = 0; i < nkeys; i++)
        CHECK(pagemap_get(&pm, i * stride) == model[i]);
    check_consistent(&pm);
    pagemap_fini(&pm);
    free(model);
}

TEST(pagemap_random_ops_small_table)
{
    /* about 11 live keys: stays in a 16- or 32-slot table */
    random_ops(1, 16, 200000, 1);
}

TEST(pagemap_random_ops_larger)
{
    random_ops(2, 5000, 300000, 1);
    random_ops(3, 5000, 300000, (blk_t)1 << 32);  /* low bits all equal */
    random_ops(4, 3000, 200000, 512);             /* 2 MiB / 4 KiB strides */
}

TEST(pagemap_iteration_visits_each_once)
{
    const blk_t n = 1000;
    unsigned char *seen = calloc(n, 1);
    PageMap pm;
    size_t pos = 0, count = 0;
    blk_t k;
    void *v;

    CHECK(seen != NULL);
    pagemap_init(&pm);
    for (k = 0; k < n; k++)
        CHECK_OK(pagemap_set(&pm, k * 7, val_of(k)));
    while ((v = pagemap_next(&pm, &pos, &k)) != NULL) {
        CHECK_EQ(k % 7, 0);
        CHECK(v == val_of(k / 7));
        CHECK_EQ(seen[k / 7], 0);
        seen[k / 7] = 1;
        count++;
    }
    CHECK_EQ(count, n);
    /* the end stays the end */
    CHECK(pagemap_next(&pm, &pos, &k) == NULL);

    /* without a key pointer */
    pos = 0;
    count = 0;
    while (pagemap_next(&pm, &pos, NULL) != NULL)
        count++;
    CHECK_EQ(count, n);
    pagemap_fini(&pm);
    free(seen);
}
