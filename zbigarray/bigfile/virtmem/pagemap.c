/* PageMap: hash map blk -> Page* of one file handle (internal).
 *
 * Open addressing with linear probing: a lookup reads consecutive slots, which
 * is cache-friendly, and the table is one allocation.  Deletion shifts later
 * members of the same probe run back instead of leaving tombstones, so a map
 * through which millions of pages have come and gone probes as short as a
 * fresh one.  The capacity is a power of two (the hash is masked, not
 * divided) and grows when the load passes 70%, where linear probing's
 * expected probe length is still about two slots.
 *
 * Keys are block numbers and mostly sequential; the multiplicative mix below
 * spreads consecutive keys over the table so that runs of neighbours do not
 * form one long probe cluster.
 *
 * Locking: none of its own.  The owner (a BigFileH) serialises access with the
 * virtmem lock.
 */
#include <errno.h>
#include <stdlib.h>

#include "virtmem_int.h"

#define PAGEMAP_MINCAP 16

/* 64-bit finaliser (splitmix64's): every input bit affects every output bit,
 * so masking off the high bits still spreads sequential keys. */
static size_t pagemap_hash(blk_t key)
{
    uint64_t x = key;
    x ^= x >> 30;
    x *= UINT64_C(0xbf58476d1ce4e5b9);
    x ^= x >> 27;
    x *= UINT64_C(0x94d049bb133111eb);
    x ^= x >> 31;
    return (size_t)x;
}

/* Would @count entries overload a table of @cap slots?  (count > 0.7 * cap,
 * computed without floating point or overflow.) */
static int pagemap_overloaded(size_t count, size_t cap)
{
    return count > cap / 10 * 7 + (cap % 10) * 7 / 10;
}

void pagemap_init(PageMap *pm)
{
    pm->slots = NULL;
    pm->cap = 0;
    pm->count = 0;
}

void pagemap_fini(PageMap *pm)
{
    free(pm->slots);
    pagemap_init(pm);
}

/* Index of @key's slot, or of the free slot that ends its probe run. */
static size_t pagemap_find(const PageMap *pm, blk_t key)
{
    size_t mask = pm->cap - 1;
    size_t i = pagemap_hash(key) & mask;

    while (pm->slots[i].val != NULL && pm->slots[i].key != key)
        i = (i + 1) & mask;
    return i;
}

void *pagemap_get(const PageMap *pm, blk_t key)
{
    if (pm->count == 0)
        return NULL;
    return pm->slots[pagemap_find(pm, key)].val;
}

/* Rehash every entry into a new table of @newcap slots.  -ENOMEM leaves @pm
 * as it was. */
static int pagemap_resize(PageMap *pm, size_t newcap)
{
    PageMapSlot *old = pm->slots;
    size_t oldcap = pm->cap;
    size_t i;

    if (newcap > SIZE_MAX / sizeof(PageMapSlot))
        return -ENOMEM;
    PageMapSlot *slots = calloc(newcap, sizeof(PageMapSlot));
    if (slots == NULL)
        return -ENOMEM;

    pm->slots = slots;
    pm->cap = newcap;
    for (i = 0; i < oldcap; i++) {
        if (old[i].val != NULL)
            pm->slots[pagemap_find(pm, old[i].key)] = old[i];
    }
    free(old);
    return 0;
}

int pagemap_set(PageMap *pm, blk_t key, void *val)
{
    size_t i;
    int err;

    BUG_ON(val == NULL);
    if (pm->cap == 0) {
        err = pagemap_resize(pm, PAGEMAP_MINCAP);
        if (err < 0)
            return err;
    }

    i = pagemap_find(pm, key);
    if (pm->slots[i].val != NULL) {     /* replace: the count is unchanged */
        pm->slots[i].val = val;
        return 0;
    }

    if (pagemap_overloaded(pm->count + 1, pm->cap)) {
        if (pm->cap > SIZE_MAX / 2)
            return -ENOMEM;
        err = pagemap_resize(pm, pm->cap * 2);
        if (err < 0)
            return err;
        i = pagemap_find(pm, key);
    }

    pm->slots[i].key = key;
    pm->slots[i].val = val;
    pm->count++;
    return 0;
}

void *pagemap_del(PageMap *pm, blk_t key)
{
    size_t mask, i, j;
    void *val;

    if (pm->count == 0)
        return NULL;
    mask = pm->cap - 1;
    i = pagemap_find(pm, key);
    val = pm->slots[i].val;
    if (val == NULL)
        return NULL;

    /* Backward-shift: walk the rest of the probe run; an entry whose home
     * slot is not cyclically within (i, j] would become unreachable across
     * the hole at i, so it moves into the hole, and the hole moves to j. */
    j = i;
    for (;;) {
        size_t home;

        j = (j + 1) & mask;
        if (pm->slots[j].val == NULL)
            break;
        home = pagemap_hash(pm->slots[j].key) & mask;
        /* distance from home to j vs from i to j, both modulo cap */
        if (((j - home) & mask) >= ((j - i) & mask)) {
            pm->slots[i] = pm->slots[j];
            i = j;
        }
    }
    pm->slots[i].val = NULL;
    pm->slots[i].key = 0;
    pm->count--;
    return val;
}

void *pagemap_next(const PageMap *pm, size_t *pos, blk_t *key)
{
    size_t i;

    for (i = *pos; i < pm->cap; i++) {
        if (pm->slots[i].val != NULL) {
            *pos = i + 1;
            if (key != NULL)
                *key = pm->slots[i].key;
            return pm->slots[i].val;
        }
    }
    *pos = pm->cap;
    return NULL;
}
