/* A file handle on a TestFile with a RAM of its own: the usual starting point
 * of a virtmem test. */
#ifndef ZBIGARRAY_TESTS_FIXTURE_H
#define ZBIGARRAY_TESTS_FIXTURE_H

#include <stdio.h>

#include "task.h"
#include "testfile.h"

typedef struct Fixture {
    TestFile  tf;
    RAM      *ram;
    BigFileH *fileh;
} Fixture;

/* A file of @nblk blocks of @blksize, a RAM of @capacity bytes, a handle. */
static inline void fixture_open(Fixture *f, size_t blksize, blk_t nblk,
                                size_t capacity)
{
    testfile_init(&f->tf, blksize, nblk);
    CHECK_OK(ram_new(&f->ram, capacity));
    CHECK_OK(fileh_open(&f->fileh, &f->tf.file, f->ram));
}

/* Map pages [pgoffset, pgoffset + pglen); returns the start address. */
static inline unsigned char *fixture_mmap(Fixture *f, blk_t pgoffset,
                                          blk_t pglen, VMA **vma)
{
    CHECK_OK(fileh_mmap(vma, f->fileh, pgoffset, pglen));
    return (unsigned char *)vma_addr_start(*vma);
}

/* Close the handle (and every VMA left), check the file was released exactly
 * once, and free everything. */
static inline void fixture_close(Fixture *f)
{
    fileh_close(f->fileh);
    CHECK_EQ(atomic_load(&f->tf.nrelease), 1);
    ram_decref(f->ram);
    testfile_fini(&f->tf);
}

static inline FileHStats fixture_stats(Fixture *f)
{
    FileHStats st;

    fileh_get_stats(f->fileh, &st);
    return st;
}

static inline RAMStats fixture_ram_stats(Fixture *f)
{
    RAMStats st;

    ram_get_stats(f->ram, &st);
    return st;
}

#define PS (virt_os_pagesize())

/* Memory mappings (kernel VMAs) of this process: lines of /proc/self/maps. */
static inline long count_maps(void)
{
    FILE *m = fopen("/proc/self/maps", "r");
    long n = 0;
    int c;

    CHECK(m != NULL);
    while ((c = fgetc(m)) != EOF)
        n += c == '\n';
    fclose(m);
    return n;
}

/* Write / read word @i at @addr, always through memory (so it faults). */
static inline void poke(unsigned char *addr, size_t i, uint64_t v)
{
    ((volatile uint64_t *)addr)[i] = v;
}

static inline uint64_t peek(const unsigned char *addr, size_t i)
{
    return ((const volatile uint64_t *)addr)[i];
}

#endif /* ZBIGARRAY_TESTS_FIXTURE_H */
