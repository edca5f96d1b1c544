/* RAM: page memory on a memfd (zbigarray/bigfile/ram.c). */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "task.h"
#include "virtmem_int.h"

/* ------------------------------------------------------- ram_parse_size */

TEST(ram_parse_size_accepts_documented_forms)
{
    static const struct { const char *s; size_t want; } ok[] = {
        { "0", 0 },
        { "123", 123 },
        { "123B", 123 },
        { "123b", 123 },
        { "64K", (size_t)64 << 10 },
        { "64k", (size_t)64 << 10 },
        { "64KB", (size_t)64 << 10 },
        { "64KiB", (size_t)64 << 10 },
        { "64kib", (size_t)64 << 10 },
        { "64M", (size_t)64 << 20 },
        { "64MiB", (size_t)64 << 20 },
        { "2G", (size_t)2 << 30 },
        { "2gb", (size_t)2 << 30 },
        { "1T", (size_t)1 << 40 },
        { "007K", (size_t)7 << 10 },
        { "16777215T", (size_t)16777215 << 40 },
        { "18446744073709551615", SIZE_MAX },
    };
    size_t i, v;

    for (i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        v = 12345;
        CHECK_OK(ram_parse_size(ok[i].s, &v));
        CHECK_EQ(v, ok[i].want);
    }
}

TEST(ram_parse_size_rejects_garbage)
{
    static const char *const bad[] = {
        "", "-1", "+1", " 1", "1 ", "K", "1KK", "1iB", "1.5G", "1 G",
        "1P", "1X", "0x10", "64Ki", "64KiBs", "1e9", "64MB\n",
    };
    size_t i, v = 777;

    for (i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECK_ERR(ram_parse_size(bad[i], &v), -EINVAL);
    CHECK_ERR(ram_parse_size(NULL, &v), -EINVAL);
    CHECK_EQ(v, 777);   /* untouched on failure */
}

TEST(ram_parse_size_overflow)
{
    size_t v = 777;

    CHECK_ERR(ram_parse_size("18446744073709551616", &v), -ERANGE);
    CHECK_ERR(ram_parse_size("99999999999999999999999999", &v), -ERANGE);
    CHECK_ERR(ram_parse_size("16777216T", &v), -ERANGE);      /* 2^64 */
    CHECK_ERR(ram_parse_size("17179869184G", &v), -ERANGE);   /* 2^64 */
    CHECK_ERR(ram_parse_size("18446744073709551615K", &v), -ERANGE);
    CHECK_EQ(v, 777);
}

/* ---------------------------------------------------- creation, refcount */

TEST(ram_new_checks_capacity)
{
    size_t ps = virt_os_pagesize();
    RAMStats st;
    RAM *ram;

    CHECK_ERR(ram_new(&ram, 1), -EINVAL);
    CHECK_ERR(ram_new(&ram, ps - 1), -EINVAL);

    CHECK_OK(ram_new(&ram, ps));
    ram_get_stats(ram, &st);
    CHECK_EQ(st.capacity, ps);
    CHECK_EQ(st.used, 0);
    CHECK_EQ(st.npages, 0);
    CHECK_EQ(st.nclean, 0);
    CHECK_EQ(st.memfd_size, 0);
    CHECK_EQ(st.nreclaimed, 0);
    CHECK_EQ(st.nrecycled, 0);
    ram_decref(ram);

    CHECK_OK(ram_new(&ram, 0));     /* 0: the default capacity */
    ram_get_stats(ram, &st);
    CHECK_EQ(st.capacity, ram_default_capacity());
    ram_decref(ram);
}

/* A quarter of physical memory, or of this machine's cgroup limit if lower
 * (the cgroup parsing itself is tested on fake trees in test_ram_cgroup.c). */
TEST(ram_default_capacity_is_quarter_of_physical_or_cgroup_memory)
{
    uint64_t phys = (uint64_t)sysconf(_SC_PHYS_PAGES) *
                    (uint64_t)sysconf(_SC_PAGESIZE);
    uint64_t limit = ram__cgroup_limit("/proc/self/cgroup", "/sys/fs/cgroup");
    size_t cap = ram_default_capacity();

    CHECK(cap >= virt_os_pagesize());
    CHECK(cap <= phys / 4);
    CHECK_EQ(cap, (phys < limit ? phys : limit) / 4);
}

TEST(ram_refcount)
{
    RAM *ram;

    CHECK_OK(ram_new(&ram, (size_t)1 << 20));
    ram_incref(ram);
    ram_incref(ram);
    CHECK_EQ(ram->refcnt, 3);
    ram_decref(ram);
    ram_decref(ram);
    CHECK_EQ(ram->refcnt, 1);
    ram_decref(ram);    /* freed: ASan reports a leak or a use otherwise */
}

/* Each test runs in a process of its own, so the process-wide default RAM is
 * created afresh for each. */
TEST(ram_default_from_env)
{
    RAM *a, *b;
    RAMStats st;

    CHECK_OK(setenv("ZBIGARRAY_RAM_MAX", "64M", 1));
    CHECK_OK(ram_default(&a));
    CHECK_OK(ram_default(&b));
    CHECK(a == b);
    ram_get_stats(a, &st);
    CHECK_EQ(st.capacity, (size_t)64 << 20);

    /* created once: a later change of the variable does not matter */
    CHECK_OK(setenv("ZBIGARRAY_RAM_MAX", "1G", 1));
    CHECK_OK(ram_default(&b));
    CHECK(a == b);
}

TEST(ram_default_without_env)
{
    RAMStats st;
    RAM *ram;

    CHECK_OK(unsetenv("ZBIGARRAY_RAM_MAX"));
    CHECK_OK(ram_default(&ram));
    ram_get_stats(ram, &st);
    CHECK_EQ(st.capacity, ram_default_capacity());
}

TEST(ram_default_bad_env)
{
    RAM *ram = NULL;
    RAMStats st;

    CHECK_OK(setenv("ZBIGARRAY_RAM_MAX", "lots", 1));
    CHECK_ERR(ram_default(&ram), -EINVAL);
    CHECK(ram == NULL);
    CHECK_OK(setenv("ZBIGARRAY_RAM_MAX", "", 1));
    CHECK_ERR(ram_default(&ram), -EINVAL);
    /* below one page: refused rather than silently "the default" */
    CHECK_OK(setenv("ZBIGARRAY_RAM_MAX", "0", 1));
    CHECK_ERR(ram_default(&ram), -EINVAL);
    CHECK_OK(setenv("ZBIGARRAY_RAM_MAX", "100", 1));
    CHECK_ERR(ram_default(&ram), -EINVAL);
    CHECK_OK(setenv("ZBIGARRAY_RAM_MAX", "99999999999T", 1));
    CHECK_ERR(ram_default(&ram), -ERANGE);

    /* a failure leaves nothing behind: fixed, it works */
    CHECK_OK(setenv("ZBIGARRAY_RAM_MAX", "8M", 1));
    CHECK_OK(ram_default(&ram));
    ram_get_stats(ram, &st);
    CHECK_EQ(st.capacity, (size_t)8 << 20);
}

/* ---------------------------------------------------------------- slots */

/* Bytes of memory the memfd holds (tmpfs counts allocated blocks). */
static size_t memfd_allocated(const RAM *ram)
{
    struct stat stbuf;

    CHECK_OK(fstat(ram->memfd, &stbuf));
    return (size_t)stbuf.st_blocks * 512;
}

static void *map_slot(RAM *ram, size_t off, size_t size)
{
    void *p = NULL;

    CHECK_OK(ram__map_slot(ram, off, size, PROT_READ | PROT_WRITE, 0, &p));
    CHECK(p != NULL);
    return p;
}

static int all_bytes(const void *p, size_t n, unsigned char c)
{
    const unsigned char *b = p;
    size_t i;

    for (i = 0; i < n; i++) {
        if (b[i] != c)
            return 0;
    }
    return 1;
}

TEST(ram_slot_alloc_grows_memfd_and_reuses_freed_slots)
{
    size_t ps = virt_os_pagesize(), off[4], o;
    RAMStats st;
    RAM *ram;

    CHECK_OK(ram_new(&ram, 16 * ps));
    virt_lock();
    CHECK_OK(ram__slot_alloc(ram, ps, &off[0]));
    CHECK_OK(ram__slot_alloc(ram, ps, &off[1]));
    CHECK_OK(ram__slot_alloc(ram, ps, &off[2]));
    virt_unlock();
    CHECK_EQ(off[0], 0);
    CHECK_EQ(off[1], ps);
    CHECK_EQ(off[2], 2 * ps);
    ram_get_stats(ram, &st);
    CHECK_EQ(st.used, 3 * ps);
    CHECK_EQ(st.npages, 3);
    CHECK_EQ(st.memfd_size, 3 * ps);

    virt_lock();
    ram__slot_free(ram, off[1], ps);
    virt_unlock();
    ram_get_stats(ram, &st);
    CHECK_EQ(st.used, 2 * ps);
    CHECK_EQ(st.npages, 2);
    CHECK_EQ(st.memfd_size, 3 * ps);

    /* a slot of another size does not take the freed one */
    virt_lock();
    CHECK_OK(ram__slot_alloc(ram, 2 * ps, &off[3]));
    virt_unlock();
    CHECK_EQ(off[3], 3 * ps);
    ram_get_stats(ram, &st);
    CHECK_EQ(st.memfd_size, 5 * ps);
    CHECK_EQ(st.used, 4 * ps);

    /* the same size does, without growing the memfd */
    virt_lock();
    CHECK_OK(ram__slot_alloc(ram, ps, &o));
    virt_unlock();
    CHECK_EQ(o, off[1]);
    ram_get_stats(ram, &st);
    CHECK_EQ(st.memfd_size, 5 * ps);
    CHECK_EQ(st.used, 5 * ps);
    CHECK_EQ(st.npages, 4);

    virt_lock();
    ram__slot_free(ram, off[0], ps);
    ram__slot_free(ram, o, ps);
    ram__slot_free(ram, off[2], ps);
    ram__slot_free(ram, off[3], 2 * ps);
    virt_unlock();
    ram_get_stats(ram, &st);
    CHECK_EQ(st.used, 0);
    CHECK_EQ(st.npages, 0);
    ram_decref(ram);
}

/* Many slots of two sizes come and go: offsets never overlap, the memfd
 * stays bounded by the peak, free lists never lose a slot. */
TEST(ram_slot_alloc_free_many_mixed_sizes)
{
    enum { N = 2000 };
    size_t ps = virt_os_pagesize(), offs[N], sizes[N];
    size_t peak = 0, live = 0, i, j;
    RAMStats st;
    RAM *ram;

    CHECK_OK(ram_new(&ram, (size_t)1 << 30));
    srandom(7);
    for (i = 0; i < N; i++)
        sizes[i] = 0;
    virt_lock();
    for (j = 0; j < 20000; j++) {
        i = (size_t)random() % N;
        if (sizes[i] == 0) {
            sizes[i] = (random() % 2 ? 1 : 4) * ps;
            CHECK_OK(ram__slot_alloc(ram, sizes[i], &offs[i]));
            CHECK_EQ(offs[i] % ps, 0);
            live += sizes[i];
        } else {
            ram__slot_free(ram, offs[i], sizes[i]);
            live -= sizes[i];
            sizes[i] = 0;
        }
        CHECK_EQ(ram->used, live);
        if (live > peak)
            peak = live;
    }
    virt_unlock();

    /* no two live slots overlap */
    for (i = 0; i < N; i++) {
        for (j = i + 1; sizes[i] && j < N; j++) {
            if (sizes[j])
                CHECK(offs[i] + sizes[i] <= offs[j] ||
                      offs[j] + sizes[j] <= offs[i]);
        }
    }
    ram_get_stats(ram, &st);
    /* one free list per size: at worst every slot was made at both sizes */
    CHECK(st.memfd_size <= peak * 2 + 4 * ps);

    virt_lock();
    for (i = 0; i < N; i++) {
        if (sizes[i])
            ram__slot_free(ram, offs[i], sizes[i]);
    }
    virt_unlock();
    ram_get_stats(ram, &st);
    CHECK_EQ(st.used, 0);
    CHECK_EQ(st.npages, 0);
    ram_decref(ram);
}

TEST(ram_slot_free_returns_memory_and_zeroes)
{
    size_t size = (size_t)2 << 20, off;
    unsigned char *a, *b;
    RAM *ram;

    CHECK_OK(ram_new(&ram, (size_t)64 << 20));
    virt_lock();
    CHECK_OK(ram__slot_alloc(ram, size, &off));
    virt_unlock();
    CHECK_EQ(memfd_allocated(ram), 0);    /* ftruncate allocates nothing */

    a = map_slot(ram, off, size);
    b = map_slot(ram, off, size);
    memset(a, 0xab, size);
    CHECK(all_bytes(b, size, 0xab));      /* same memory at two addresses */
    CHECK(memfd_allocated(ram) >= size);

    virt_lock();
    ram__slot_free(ram, off, size);
    virt_unlock();
    CHECK_EQ(memfd_allocated(ram), 0);    /* hole punched */
    CHECK(all_bytes(a, size, 0));

    CHECK_OK(munmap(a, size));
    CHECK_OK(munmap(b, size));
    ram_decref(ram);
}

TEST(ram_has_room)
{
    size_t ps = virt_os_pagesize(), off;
    RAM *ram;

    CHECK_OK(ram_new(&ram, 4 * ps));
    virt_lock();
    CHECK(ram__has_room(ram, 4 * ps));
    CHECK(!ram__has_room(ram, 5 * ps));
    CHECK(!ram__has_room(ram, SIZE_MAX));
    CHECK_OK(ram__slot_alloc(ram, 3 * ps, &off));
    CHECK(ram__has_room(ram, ps));
    CHECK(!ram__has_room(ram, 2 * ps));
    CHECK(!ram__has_room(ram, SIZE_MAX - ps));
    /* slot_alloc does not enforce capacity: callers decide what to reclaim */
    CHECK_OK(ram__slot_alloc(ram, 3 * ps, &off));
    CHECK(!ram__has_room(ram, ps));
    CHECK(ram__has_room(ram, 0) == 0);
    ram__slot_free(ram, 0, 3 * ps);
    ram__slot_free(ram, off, 3 * ps);
    CHECK(ram__has_room(ram, 4 * ps));
    virt_unlock();
    ram_decref(ram);
}

/* ------------------------------------------------------------- mappings */

struct touch_arg { volatile unsigned char *p; };

static void touch_read(void *arg)
{
    struct touch_arg *t = arg;

    (void)t->p[0];
}

static void touch_write(void *arg)
{
    struct touch_arg *t = arg;

    t->p[0] = 1;
}

TEST(ram_map_slot_at_replaces_reservation)
{
    size_t ps = virt_os_pagesize(), size = 4 * ps, off;
    unsigned char *win, *other;
    struct touch_arg t;
    RAM *ram;

    CHECK_OK(ram_new(&ram, 64 * ps));
    virt_lock();
    CHECK_OK(ram__slot_alloc(ram, size, &off));
    virt_unlock();

    /* a reservation: address space only, touching it crashes */
    win = mmap(NULL, 3 * size, PROT_NONE,
               MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    CHECK(win != MAP_FAILED);
    t.p = win + size;
    CHECK_SIGNALED(test_run_forked(touch_read, &t), SIGSEGV);

    /* the slot mapped into its middle, read-only */
    CHECK_OK(ram__map_slot_at(ram, win + size, off, size, PROT_READ, 1));
    other = map_slot(ram, off, size);
    memset(other, 0x5a, size);
    CHECK(all_bytes(win + size, size, 0x5a));
    CHECK_SIGNALED(test_run_forked(touch_write, &t), SIGSEGV);
    t.p = win;
    CHECK_SIGNALED(test_run_forked(touch_read, &t), SIGSEGV);

    /* writable in place, MAP_FIXED over the read-only mapping */
    CHECK_OK(ram__map_slot_at(ram, win + size, off, size,
                              PROT_READ | PROT_WRITE, 0));
    win[size + 1] = 0x11;
    CHECK_EQ(other[1], 0x11);

    /* back to a reservation: inaccessible, memory untouched */
    CHECK_OK(virt__reserve_at(win + size, size));
    t.p = win + size;
    CHECK_SIGNALED(test_run_forked(touch_read, &t), SIGSEGV);
    CHECK_EQ(other[1], 0x11);

    CHECK_OK(munmap(other, size));
    CHECK_OK(munmap(win, 3 * size));
    virt_lock();
    ram__slot_free(ram, off, size);
    virt_unlock();
    ram_decref(ram);
}

TEST(ram_map_slot_populate)
{
    size_t ps = virt_os_pagesize(), size = 64 * ps, off, i;
    unsigned char *p, vec[64];
    RAM *ram;

    CHECK_OK(ram_new(&ram, (size_t)1 << 20));
    virt_lock();
    CHECK_OK(ram__slot_alloc(ram, size, &off));
    virt_unlock();

    CHECK_OK(ram__map_slot(ram, off, size, PROT_READ | PROT_WRITE, 1,
                           (void **)&p));
    CHECK_OK(mincore(p, size, vec));
    for (i = 0; i < size / ps; i++)
        CHECK(vec[i] & 1);      /* every page present without a touch */
    CHECK(all_bytes(p, size, 0));
    CHECK_OK(munmap(p, size));

    virt_lock();
    ram__slot_free(ram, off, size);
    virt_unlock();
    ram_decref(ram);
}

TEST(ram_map_errors_are_negative_errno)
{
    size_t ps = virt_os_pagesize();
    void *p = NULL;
    RAM *ram;

    CHECK_OK(ram_new(&ram, 16 * ps));
    CHECK_ERR(ram__map_slot(ram, 0, 0, PROT_READ, 0, &p), -EINVAL);
    CHECK_ERR(ram__map_slot(ram, 1, ps, PROT_READ, 0, &p), -EINVAL);
    CHECK(p == NULL);
    CHECK_ERR(ram__map_slot_at(ram, (void *)(uintptr_t)1, 0, ps, PROT_READ, 0),
              -EINVAL);
    CHECK_ERR(virt__reserve_at((void *)(uintptr_t)1, ps), -EINVAL);
    CHECK_ERR(virt__reserve_at(NULL, 0), -EINVAL);
    ram_decref(ram);
}

/* Slots and free lists are released with the RAM (LeakSanitizer checks). */
TEST(ram_free_with_free_slots)
{
    size_t ps = virt_os_pagesize(), off[3];
    RAM *ram;
    int i;

    CHECK_OK(ram_new(&ram, 16 * ps));
    virt_lock();
    for (i = 0; i < 3; i++)
        CHECK_OK(ram__slot_alloc(ram, (size_t)(i + 1) * ps, &off[i]));
    for (i = 0; i < 3; i++)
        ram__slot_free(ram, off[i], (size_t)(i + 1) * ps);
    virt_unlock();
    CHECK_EQ(ram->nfree, 3);
    ram_decref(ram);
}
