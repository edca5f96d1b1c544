/* Faults taken by the kernel inside system calls (userfaultfd, uffd.c):
 * write() from and read() into untouched pages work, what read() writes
 * dirties the pages, a load that fails makes the call fail with EFAULT and is
 * reported to the calling thread, a load stuck behind the calling thread
 * times out the same way, only the server of the CPU faults come from is
 * woken by them, and the core falls back to SIGSEGV alone when told to or in
 * a forked child.  These tests need a kernel that allows
 * userfaultfd (root, or vm.unprivileged_userfaultfd / /dev/userfaultfd
 * access); where it does not, each checks the fallback instead. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fixture.h"

/* An OS file in memory holding @len bytes of @src (or empty if NULL). */
static int memfile(const void *src, size_t len)
{
    int fd = memfd_create("uffd-test", MFD_CLOEXEC);
    CHECK(fd >= 0);
    if (src)
        CHECK_EQ(pwrite(fd, src, len, 0), (ssize_t)len);
    return fd;
}

/* Whether this process serves system calls' faults; if not, say why once. */
static int uffd_on(void)
{
    if (virt_uffd_enabled())
        return 1;
    fprintf(stderr, "userfaultfd off here: %s\n", virt_uffd_reason());
    return 0;
}

static struct {
    int   n;
    blk_t blk;
    int   err;
    pid_t tid;
} remote;

static void remote_policy(BigFile *file, blk_t blk, int err, const char *what, pid_t tid)
{
    (void)file;
    (void)what;
    remote.n++;
    remote.blk = blk;
    remote.err = err;
    remote.tid = tid;
}

/* fixture_close, for a handle a proxy may still hold pinned for a moment
 * after the call it served returned (reporting a failure): the file is
 * released when the proxy lets go. */
static void close_after_proxies(Fixture *f)
{
    fileh_close(f->fileh);
    for (int i = 0; i < 2000 && atomic_load(&f->tf.nrelease) == 0; i++)
        usleep(1000);
    CHECK_EQ(atomic_load(&f->tf.nrelease), 1);
    ram_decref(f->ram);
    testfile_fini(&f->tf);
}

/* fixture_open and a mapping of all @nblk blocks, if this process serves
 * system calls' faults; else NULL, the fixture closed (the test has nothing
 * to check). */
static unsigned char *uffd_fixture(Fixture *f, size_t bs, blk_t nblk, size_t capacity)
{
    VMA *vma;
    fixture_open(f, bs, nblk, capacity);
    unsigned char *p = fixture_mmap(f, 0, nblk, &vma);
    if (uffd_on())
        return p;
    fixture_close(f);
    return NULL;
}

TEST(uffd_write_from_untouched_pages_sends_their_data)
{
    Fixture f;
    VMA *vma;
    size_t bs = 2 * PS;
    fixture_open(&f, bs, 16, 64 * bs);
    unsigned char *p = fixture_mmap(&f, 0, 16, &vma);
    if (!uffd_on()) {
        int fd = memfile(NULL, 0);
        CHECK_EQ(write(fd, p, 16 * bs), -1);     /* the old behaviour */
        CHECK_EQ(errno, EFAULT);
        close(fd);
        fixture_close(&f);
        return;
    }
    int fd = memfile(NULL, 0);
    CHECK_EQ(write(fd, p, 16 * bs), (ssize_t)(16 * bs));
    unsigned char *got = malloc(bs);
    for (blk_t b = 0; b < 16; b++) {
        CHECK_EQ(pread(fd, got, bs, (off_t)(b * bs)), (ssize_t)bs);
        CHECK(testfile_matches(got, bs, b, testfile_version(&f.tf, b)));
        CHECK_EQ(testfile_nload(&f.tf, b), 1);
    }
    CHECK_EQ(fileh_isdirty(f.fileh), 0);
    /* And the pages are now mapped for the CPU too. */
    testfile_check_block(&f.tf, p + 5 * bs, 5);
    CHECK_EQ(testfile_nload(&f.tf, 5), 1);
    free(got);
    close(fd);
    fixture_close(&f);
}

TEST(uffd_read_into_untouched_pages_dirties_them_for_writeout)
{
    Fixture f;
    size_t bs = PS;
    unsigned char *p = uffd_fixture(&f, bs, 8, 64 * bs);
    if (!p)
        return;
    unsigned char *src = malloc(3 * bs);
    memset(src, 0xab, 3 * bs);
    int fd = memfile(src, 3 * bs);
    /* Blocks 2..4 are read into: written by the kernel, never touched. */
    CHECK_EQ(pread(fd, p + 2 * bs, 3 * bs, 0), (ssize_t)(3 * bs));
    CHECK(memcmp(p + 2 * bs, src, 3 * bs) == 0);
    CHECK(fileh_isdirty(f.fileh));
    CHECK_OK(fileh_dirty_writeout(f.fileh, WRITEOUT_STORE | WRITEOUT_MARKSTORED));
    CHECK_EQ(f.tf.nstores, 3);
    for (size_t i = 0; i < f.tf.nstores; i++) {
        CHECK_EQ(f.tf.stores[i].blk, 2 + i);
        CHECK(memcmp(f.tf.stores[i].data, src, bs) == 0);
    }
    free(src);
    close(fd);
    fixture_close(&f);
}

TEST(uffd_failed_load_in_a_system_call_is_efault_reported_to_its_thread)
{
    Fixture f;
    size_t bs = PS;
    unsigned char *p = uffd_fixture(&f, bs, 8, 64 * bs);
    if (!p)
        return;
    memset(&remote, 0, sizeof remote);
    virt_set_fault_remote_error_handler(remote_policy);
    atomic_store(&f.tf.load_fail_blk, 2);
    int fd = memfile(NULL, 0);
    /* The call stops at the block that cannot be loaded: a short write, as
     * at any bad address. */
    CHECK_EQ(write(fd, p, 8 * bs), (ssize_t)(2 * bs));
    CHECK_EQ(write(fd, p + 2 * bs, bs), -1);
    CHECK_EQ(errno, EFAULT);
    CHECK(remote.n >= 1);
    CHECK_EQ(remote.blk, 2);
    CHECK_EQ(remote.err, -EIO);
    CHECK_EQ(remote.tid, gettid());
    CHECK(!virt_fault_failing());    /* no stand-in: nothing wrong was computed */

    /* Reported: the fence goes; the backend works again, so does the call. */
    atomic_store(&f.tf.load_fail_blk, -1);
    virt_fault_reported();
    CHECK_EQ(pwrite(fd, p + 2 * bs, bs, 0), (ssize_t)bs);
    testfile_check_block(&f.tf, p + 2 * bs, 2);
    virt_set_fault_remote_error_handler(NULL);
    close(fd);
    close_after_proxies(&f);
}

/* A loadblk that cannot proceed until the thread whose system call it
 * serves returns (as a Python loadblk waits for a GIL that thread holds). */
static volatile int stuck_release;
static int load_waits_for_caller(TestFile *tf, blk_t blk, void *buf)
{
    (void)tf;
    (void)buf;
    if (blk == 1)
        while (!__atomic_load_n(&stuck_release, __ATOMIC_ACQUIRE))
            usleep(1000);
    return TESTFILE_CONTINUE;
}

TEST(uffd_load_waiting_for_the_caller_times_out_with_efault)
{
    Fixture f;
    size_t bs = PS;
    unsigned char *p = uffd_fixture(&f, bs, 4, 64 * bs);
    if (!p)
        return;
    memset(&remote, 0, sizeof remote);
    virt_set_fault_remote_error_handler(remote_policy);
    f.tf.on_load = load_waits_for_caller;
    int fd = memfile(NULL, 0);
    CHECK_EQ(write(fd, p + bs, bs), -1);          /* after the timeout, not a hang */
    CHECK_EQ(errno, EFAULT);
    __atomic_store_n(&stuck_release, 1, __ATOMIC_RELEASE);
    for (int i = 0; i < 2000 && __atomic_load_n(&remote.n, __ATOMIC_ACQUIRE) == 0; i++)
        usleep(1000);
    CHECK_EQ(remote.n, 1);
    CHECK_EQ(remote.blk, 1);
    CHECK_EQ(remote.err, -EDEADLK);
    /* The late load mapped the page: the next call finds it. */
    CHECK_EQ(write(fd, p + bs, bs), (ssize_t)bs);
    virt_fault_reported();
    virt_set_fault_remote_error_handler(NULL);
    close(fd);
    close_after_proxies(&f);
}

typedef struct Writer {
    Fixture       *f;
    unsigned char *p;
    size_t         bs;
    blk_t          nblk;
    int            seed;
} Writer;

/* Writes random ranges of the mapping to a file and checks each byte, while
 * others do the same and touch pages in user mode; the RAM holds fewer
 * pages than the threads use at once, so pages are evicted while system
 * calls copy them: the call must fault again and get them back, never fail
 * (an evicted page's mapping is a trap at every moment, uffd.c). */
static void *writer_main(void *arg)
{
    Writer *w = arg;
    unsigned seed = (unsigned)w->seed;
    int fd = memfile(NULL, 0);
    unsigned char *got = malloc(4 * w->bs);
    for (int round = 0; round < 200; round++) {
        blk_t b = (blk_t)(rand_r(&seed) % (unsigned)(w->nblk - 4));
        if (round % 2) {
            testfile_check_block(&w->f->tf, w->p + (b + 1) * w->bs, b + 1);
            continue;
        }
        CHECK_EQ(pwrite(fd, w->p + b * w->bs, 4 * w->bs, 0), (ssize_t)(4 * w->bs));
        CHECK_EQ(pread(fd, got, 4 * w->bs, 0), (ssize_t)(4 * w->bs));
        for (blk_t i = 0; i < 4; i++)
            CHECK(testfile_matches(got + i * w->bs, w->bs, b + i, 0));
    }
    free(got);
    close(fd);
    return NULL;
}

TEST(uffd_threads_mixing_system_calls_and_touches_see_right_data)
{
    Fixture f;
    size_t bs = PS;
    blk_t nblk = 64;
    unsigned char *p = uffd_fixture(&f, bs, nblk, 12 * bs);
    if (!p)
        return;
    pthread_t th[4];
    Writer w[4];
    for (int i = 0; i < 4; i++) {
        w[i] = (Writer){ &f, p, bs, nblk, i + 1 };
        CHECK_EQ(pthread_create(&th[i], NULL, writer_main, &w[i]), 0);
    }
    for (int i = 0; i < 4; i++)
        CHECK_EQ(pthread_join(th[i], NULL), 0);
    fixture_close(&f);
}

/* Our server threads (named zbigarray-uffd), each with the one CPU it is
 * pinned to and its voluntary context switches (one per wake-up), ordered
 * by CPU; how many. */
typedef struct ServerInfo {
    int  cpu;
    long nvcsw;
} ServerInfo;

static int servers_now(ServerInfo *out, int max)
{
    DIR *dir = opendir("/proc/self/task");
    CHECK(dir != NULL);
    int n = 0;
    struct dirent *de;
    while ((de = readdir(dir)) != NULL) {
        if (de->d_name[0] == '.')
            continue;
        char path[300], line[128];
        snprintf(path, sizeof path, "/proc/self/task/%s/comm", de->d_name);
        FILE *fp = fopen(path, "r");
        if (!fp)
            continue;           /* a thread that just ended */
        int ours = fgets(line, sizeof line, fp) && strcmp(line, "zbigarray-uffd\n") == 0;
        fclose(fp);
        if (!ours)
            continue;
        cpu_set_t set;
        CHECK_OK(sched_getaffinity(atoi(de->d_name), sizeof set, &set));
        CHECK_EQ(CPU_COUNT(&set), 1);
        CHECK(n < max);
        for (int c = 0; c < CPU_SETSIZE; c++)
            if (CPU_ISSET(c, &set))
                out[n].cpu = c;
        out[n].nvcsw = -1;
        snprintf(path, sizeof path, "/proc/self/task/%s/status", de->d_name);
        fp = fopen(path, "r");
        CHECK(fp != NULL);
        while (fgets(line, sizeof line, fp))
            if (sscanf(line, "voluntary_ctxt_switches: %ld", &out[n].nvcsw) == 1)
                break;
        fclose(fp);
        CHECK(out[n].nvcsw >= 0);
        n++;
    }
    closedir(dir);
    for (int i = 1; i < n; i++)             /* by CPU */
        for (int j = i; j > 0 && out[j - 1].cpu > out[j].cpu; j--) {
            ServerInfo tmp = out[j];
            out[j] = out[j - 1];
            out[j - 1] = tmp;
        }
    return n;
}

TEST(uffd_faults_wake_only_the_server_of_their_cpu)
{
    /* Every server polling would wake every CPU for each fault (and make
     * each eviction interrupt them too): only the faulting CPU's may. */
    cpu_set_t cpus, one;
    CHECK_OK(sched_getaffinity(0, sizeof cpus, &cpus));
    if (CPU_COUNT(&cpus) < 2) {
        fprintf(stderr, "one CPU here: one server, nothing to check\n");
        return;
    }
    Fixture f;
    size_t bs = PS;
    blk_t nblk = 64;
    unsigned char *p = uffd_fixture(&f, bs, nblk, 8 * bs);
    if (!p)
        return;
    /* Moved to the last CPU (the servers, started with the first mapping,
     * are pinned one per CPU), a first fault there wakes its server, and
     * the others rest once they see their CPUs serve nothing for a while. */
    int cpu = CPU_SETSIZE - 1;
    while (!CPU_ISSET(cpu, &cpus))
        cpu--;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    CHECK_OK(sched_setaffinity(0, sizeof one, &one));
    testfile_check_block(&f.tf, p + (nblk - 1) * bs, nblk - 1);
    usleep(100 * 1000);
    testfile_check_block(&f.tf, p + (nblk - 2) * bs, nblk - 2);
    ServerInfo before[64], after[64];
    int n = servers_now(before, 64);
    CHECK(n >= 2);
    int nfaults = 0;
    for (int round = 0; round < 5; round++)
        for (blk_t b = 0; b < nblk; b++, nfaults++)
            testfile_check_block(&f.tf, p + b * bs, b);      /* 8 pages of RAM: all fault */
    CHECK_EQ(servers_now(after, 64), n);
    for (int i = 0; i < n; i++) {
        CHECK_EQ(after[i].cpu, before[i].cpu);
        long woken = after[i].nvcsw - before[i].nvcsw;
        if (after[i].cpu == cpu)
            CHECK(woken >= nfaults / 2);    /* it served them */
        else
            CHECK(woken <= 3);
    }
    fixture_close(&f);
}

TEST(uffd_off_when_told_system_calls_fail_as_before)
{
    /* A fresh process: the environment is read at the first mmap. */
    CHECK_OK(setenv("ZBIGARRAY_USERFAULTFD", "0", 1));
    Fixture f;
    VMA *vma;
    size_t bs = PS;
    fixture_open(&f, bs, 4, 64 * bs);
    unsigned char *p = fixture_mmap(&f, 0, 4, &vma);
    CHECK(!virt_uffd_enabled());
    CHECK_EQ(virt_uffd_signal(), 0);
    CHECK(strstr(virt_uffd_reason(), "ZBIGARRAY_USERFAULTFD=0") != NULL);
    int fd = memfile(NULL, 0);
    CHECK_EQ(write(fd, p, bs), -1);
    CHECK_EQ(errno, EFAULT);
    testfile_check_block(&f.tf, p, 0);            /* the CPU's faults still work */
    CHECK_EQ(write(fd, p, bs), (ssize_t)bs);      /* and then the call does */
    close(fd);
    fixture_close(&f);
}

TEST(uffd_forked_child_works_without_it)
{
    Fixture f;
    VMA *vma;
    size_t bs = PS;
    fixture_open(&f, bs, 4, 64 * bs);
    unsigned char *p = fixture_mmap(&f, 0, 4, &vma);
    int on = uffd_on();
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        if (virt_uffd_enabled())
            _exit(2);
        /* Its empty pages are inaccessible reservations again, served by
         * SIGSEGV: right data, never the zeros of unregistered memory. */
        if (!testfile_matches(p + 2 * bs, bs, 2, 0))
            _exit(3);
        _exit(0);
    }
    int status;
    CHECK_EQ(waitpid(pid, &status, 0), pid);
    CHECK_EXITED(status, 0);
    if (on) {
        int fd = memfile(NULL, 0);
        CHECK_EQ(write(fd, p, 4 * bs), (ssize_t)(4 * bs));   /* the parent still serves */
        close(fd);
    }
    fixture_close(&f);
}
