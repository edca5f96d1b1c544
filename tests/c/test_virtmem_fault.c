/* The fault path's edges: errors with no caller (the fault error handler),
 * faults that are not ours, memory after unmap/close, waiting for another
 * thread's load (GIL hooks), and a multi-threaded stress test.  Anything
 * whose expected end is a crash or an _exit runs in a forked child. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "fixture.h"



static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ------------------------------------------------- fault error handler */

/* What the error handler expects; it exits 42 on a match, 43 otherwise. */
static struct { BigFile *file; blk_t blk; int err; } want;

/* The default policy prints what failed: expected, so not shown. */
static void quiet_stderr(void)
{
    int fd = open("/dev/null", O_WRONLY);

    CHECK(fd >= 0);
    CHECK(dup2(fd, 2) == 2);
    close(fd);
}

static int exit_on_fault_error(BigFile *file, blk_t blk, int err,
                                const char *what)
{
    (void)what;
    _exit(file == want.file && blk == want.blk && err == want.err ? 42 : 43);
}

static void dirty_ram_then_fault(void *arg)
{
    Fixture f;
    VMA *vma;
    unsigned char *p;

    if (arg != NULL)
        virt_set_fault_error_handler(exit_on_fault_error);
    else
        quiet_stderr();
    fixture_open(&f, PS, 8, 2 * PS);
    p = fixture_mmap(&f, 0, 8, &vma);
    ((volatile unsigned char *)p)[0] = 1;
    ((volatile unsigned char *)p)[PS] = 1;        /* RAM full, all dirty */
    want.file = &f.tf.file;
    want.blk = 2;
    want.err = -ENOMEM;
    (void)((volatile unsigned char *)p)[2 * PS];  /* no page to be had */
    _exit(0);                                     /* not reached */
}

TEST(ram_full_of_dirty_pages_calls_fault_error_handler)
{
    CHECK_EXITED(test_run_forked(dirty_ram_then_fault, "custom"), 42);
    /* the default policy: a message and abort() */
    CHECK_SIGNALED(test_run_forked(dirty_ram_then_fault, NULL), SIGABRT);
}

static void failing_load(void *arg)
{
    Fixture f;
    VMA *vma;
    unsigned char *p;

    if (arg != NULL)
        virt_set_fault_error_handler(exit_on_fault_error);
    else
        quiet_stderr();
    fixture_open(&f, 2 * PS, 8, 8 * 2 * PS);
    p = fixture_mmap(&f, 0, 8, &vma);
    testfile_check_block(&f.tf, p, 0);
    atomic_store(&f.tf.load_fail_blk, 3);
    want.file = &f.tf.file;
    want.blk = 3;
    want.err = -EIO;
    (void)((volatile unsigned char *)p)[3 * 2 * PS + 5];
    _exit(0);
}

TEST(loadblk_failure_calls_fault_error_handler)
{
    CHECK_EXITED(test_run_forked(failing_load, "custom"), 42);
    CHECK_SIGNALED(test_run_forked(failing_load, NULL), SIGABRT);
}

/* loadblk touching the very block it loads can never finish. */
static int load_self(TestFile *tf, blk_t blk, void *buf)
{
    const unsigned char *p = tf->hook_arg;

    (void)buf;
    return (int)((volatile const unsigned char *)p)[blk * tf->file.blksize];
}

static void self_touching_load(void *arg)
{
    Fixture f;
    VMA *vma;
    unsigned char *p;

    (void)arg;
    virt_set_fault_error_handler(exit_on_fault_error);
    fixture_open(&f, PS, 4, 4 * PS);
    p = fixture_mmap(&f, 0, 4, &vma);
    f.tf.on_load = load_self;
    f.tf.hook_arg = p;
    want.file = &f.tf.file;
    want.blk = 1;
    want.err = -EDEADLK;
    (void)((volatile unsigned char *)p)[PS];
    _exit(0);
}

TEST(loadblk_touching_its_own_block_is_an_error_not_a_hang)
{
    CHECK_EXITED(test_run_forked(self_touching_load, NULL), 42);
}

/* ------------------------------------------------ faults that are not ours */

static void segv_outside_mappings(void *arg)
{
    Fixture f;
    VMA *vma;
    unsigned char *p, *foreign;

    (void)arg;
    fixture_open(&f, PS, 4, 4 * PS);
    p = fixture_mmap(&f, 0, 4, &vma);             /* handler installed */
    testfile_check_block(&f.tf, p, 0);
    foreign = mmap(NULL, PS, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(foreign != MAP_FAILED);
    ((volatile unsigned char *)foreign)[0] = 1;
    _exit(0);
}

TEST(segfault_outside_our_mappings_still_kills)
{
    CHECK_SIGNALED(test_run_forked(segv_outside_mappings, NULL), SIGSEGV);
}

/* A handler installed before ours gets the faults that are not ours. */
static void exit_44(int sig, siginfo_t *si, void *uctx)
{
    (void)sig;
    (void)si;
    (void)uctx;
    _exit(44);
}

static void chain_to_previous_handler(void *arg)
{
    struct sigaction sa;
    Fixture f;
    VMA *vma;
    unsigned char *p, *foreign;

    (void)arg;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = exit_44;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    CHECK_OK(sigaction(SIGSEGV, &sa, NULL));

    fixture_open(&f, PS, 4, 4 * PS);
    p = fixture_mmap(&f, 0, 4, &vma);
    testfile_check_block(&f.tf, p + PS, 1);       /* ours: served */
    foreign = mmap(NULL, PS, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(foreign != MAP_FAILED);
    (void)((volatile unsigned char *)foreign)[0];
    _exit(0);
}

TEST(faults_not_ours_go_to_previous_handler)
{
    CHECK_EXITED(test_run_forked(chain_to_previous_handler, NULL), 44);
}

static void touch_after_unmap(void *arg)
{
    Fixture f;
    VMA *vma;
    unsigned char *p;

    fixture_open(&f, PS, 4, 4 * PS);
    p = fixture_mmap(&f, 0, 4, &vma);
    testfile_check_block(&f.tf, p, 0);
    if (arg != NULL)
        fileh_close(f.fileh);
    else
        vma_unmap(vma);
    (void)((volatile unsigned char *)p)[0];       /* mapped page, gone */
    _exit(0);
}

TEST(memory_is_gone_after_vma_unmap_and_fileh_close)
{
    CHECK_SIGNALED(test_run_forked(touch_after_unmap, NULL), SIGSEGV);
    CHECK_SIGNALED(test_run_forked(touch_after_unmap, "close"), SIGSEGV);
}

TEST(close_drops_dirty_pages_without_storing)
{
    Fixture f;
    VMA *a, *b;
    unsigned char *p;
    RAMStats st;

    fixture_open(&f, PS, 8, 8 * PS);
    p = fixture_mmap(&f, 0, 8, &a);
    fixture_mmap(&f, 2, 2, &b);
    p[0] = 1;
    p[3 * PS] = 1;
    testfile_check_block(&f.tf, p + PS, 1);
    fileh_close(f.fileh);                  /* unmaps both VMAs */
    CHECK_EQ(f.tf.nstores, 0);
    CHECK_EQ(atomic_load(&f.tf.nrelease), 1);
    ram_get_stats(f.ram, &st);
    CHECK_EQ(st.npages, 0);
    CHECK_EQ(st.used, 0);
    CHECK_EQ(st.nclean, 0);
    ram_decref(f.ram);
    testfile_fini(&f.tf);
}

/* ------------------------------------------- waiting for another's load */

static atomic_int gil_released, gil_retaken, loader_entered;
static void *const gil_token = (void *)&gil_token;

static void *gil_release(void)
{
    atomic_fetch_add(&gil_released, 1);
    return gil_token;
}

static void gil_retake(void *token)
{
    CHECK(token == gil_token);
    atomic_fetch_add(&gil_retaken, 1);
}

/* Block the load until the other thread waits for it (and so released its
 * "GIL"): proves that a waiter calls the release hook. */
static int load_until_waited_for(TestFile *tf, blk_t blk, void *buf)
{
    double t0 = now_s();

    (void)tf;
    (void)blk;
    (void)buf;
    atomic_store(&loader_entered, 1);
    while (atomic_load(&gil_released) == 0) {
        if (now_s() - t0 > 10)
            test__fail(__FILE__, __LINE__, "nobody waited for the load");
        usleep(1000);
    }
    return TESTFILE_CONTINUE;
}

static void *read_block0(void *arg)
{
    Fixture *f = arg;
    VMA *vma;
    unsigned char *p = fixture_mmap(f, 0, 1, &vma);

    testfile_check_block(&f->tf, p, 0);
    return NULL;
}

TEST(waiting_for_another_threads_load_releases_the_gil)
{
    static const VirtGilHooks hooks = { gil_release, gil_retake };
    Fixture f;
    VMA *vma;
    unsigned char *p;
    pthread_t th;

    virt_set_gil_hooks(&hooks);
    fixture_open(&f, PS, 4, 4 * PS);
    p = fixture_mmap(&f, 0, 4, &vma);
    f.tf.on_load = load_until_waited_for;
    CHECK_EQ(pthread_create(&th, NULL, read_block0, &f), 0);
    while (!atomic_load(&loader_entered))
        usleep(1000);
    testfile_check_block(&f.tf, p, 0);            /* waits for the loader */
    CHECK_EQ(pthread_join(th, NULL), 0);
    CHECK(atomic_load(&gil_released) >= 1);
    CHECK_EQ(atomic_load(&gil_retaken), atomic_load(&gil_released));
    CHECK_EQ(testfile_nload(&f.tf, 0), 1);        /* loaded once */
    virt_set_gil_hooks(NULL);
    fixture_close(&f);
}

/* ------------------------------------------- invalidate during a load */

static atomic_int inval_phase;    /* 1: loader started; 2: invalidated */

/* The first load of block 0 reads the file, then waits while the file
 * changes and the page is invalidated: what it loaded is stale. */
static int load_stale(TestFile *tf, blk_t blk, void *buf)
{
    uint32_t v = testfile_version(tf, blk);
    double t0 = now_s();

    if (atomic_load(&inval_phase) != 0)
        return TESTFILE_CONTINUE;       /* the reload: plain */
    atomic_store(&inval_phase, 1);
    while (atomic_load(&inval_phase) != 2) {
        if (now_s() - t0 > 10)
            test__fail(__FILE__, __LINE__, "invalidation never came");
        usleep(1000);
    }
    testfile_fill(buf, tf->file.blksize, blk, v);
    return 0;
}

TEST(invalidate_during_load_makes_the_loader_drop_its_result)
{
    Fixture f;
    VMA *vma;
    unsigned char *p;
    pthread_t th;

    fixture_open(&f, PS, 4, 4 * PS);
    p = fixture_mmap(&f, 0, 4, &vma);
    f.tf.on_load = load_stale;
    CHECK_EQ(pthread_create(&th, NULL, read_block0, &f), 0);
    while (atomic_load(&inval_phase) != 1)
        usleep(1000);
    testfile_bump(&f.tf, 0);
    CHECK_OK(fileh_invalidate_page(f.fileh, 0));
    atomic_store(&inval_phase, 2);
    CHECK_EQ(pthread_join(th, NULL), 0);  /* read_block0 checked version 1 */
    CHECK_EQ(testfile_version(&f.tf, 0), 1);
    testfile_check_block(&f.tf, p, 0);
    CHECK_EQ(testfile_nload(&f.tf, 0), 1);    /* reloaded after the stale one */
    fixture_close(&f);
}

/* ------------------------------------------- close during a writeout */

static int store_then_close(TestFile *tf, blk_t blk, const void *buf)
{
    (void)buf;
    if (blk == 2)
        fileh_close(tf->hook_arg);
    return TESTFILE_CONTINUE;
}

/* The handle is closed (here from storeblk; as well from another thread)
 * while its dirty pages are being stored: the writeout stops with an error,
 * nothing is freed twice, the file is released once, when all is over. */
TEST(close_during_writeout)
{
    Fixture f;
    VMA *vma;
    unsigned char *p;
    RAMStats st;
    long r;

    fixture_open(&f, PS, 4, 4 * PS);
    p = fixture_mmap(&f, 0, 4, &vma);
    poke(p + 1 * PS, 0, 1);
    poke(p + 2 * PS, 0, 2);
    poke(p + 3 * PS, 0, 3);
    f.tf.on_store = store_then_close;
    f.tf.hook_arg = f.fileh;
    r = fileh_dirty_writeout(f.fileh, WRITEOUT_STORE | WRITEOUT_MARKSTORED);
    CHECK(r < 0);
    CHECK_EQ(f.tf.nstores, 2);            /* blocks 1 and 2, then stop */
    CHECK_EQ(atomic_load(&f.tf.nrelease), 1);
    ram_get_stats(f.ram, &st);
    CHECK_EQ(st.npages, 0);
    CHECK_EQ(st.used, 0);
    ram_decref(f.ram);
    testfile_fini(&f.tf);
}

/* ------------------------------------------- close during a load */

static int release_pipe[2];
static atomic_int closed_flag;

static void release_to_pipe(TestFile *tf)
{
    (void)tf;
    CHECK(write(release_pipe[1], "R", 1) == 1);
}

static int load_until_closed(TestFile *tf, blk_t blk, void *buf)
{
    double t0 = now_s();

    (void)tf;
    (void)blk;
    (void)buf;
    atomic_store(&loader_entered, 1);
    while (!atomic_load(&closed_flag)) {
        if (now_s() - t0 > 10)
            test__fail(__FILE__, __LINE__, "the handle was never closed");
        usleep(1000);
    }
    return TESTFILE_CONTINUE;
}

static void *read_block0_forever(void *arg)
{
    Fixture *f = arg;
    VMA *vma;
    unsigned char *p = fixture_mmap(f, 0, 1, &vma);

    (void)peek(p, 0);       /* the handle closes meanwhile: a crash */
    _exit(3);
}

static void close_while_loading(void *arg)
{
    static Fixture f;
    pthread_t th;

    (void)arg;
    fixture_open(&f, PS, 4, 4 * PS);
    f.tf.on_load = load_until_closed;
    f.tf.on_release = release_to_pipe;
    CHECK_EQ(pthread_create(&th, NULL, read_block0_forever, &f), 0);
    while (!atomic_load(&loader_entered))
        usleep(1000);
    fileh_close(f.fileh);
    /* the load in flight still refers to the file: not released yet */
    CHECK_EQ(atomic_load(&f.tf.nrelease), 0);
    atomic_store(&closed_flag, 1);
    CHECK_EQ(pthread_join(th, NULL), 0);
    _exit(4);
}

/* The loader finishes into a closed handle: it frees the handle and releases
 * the file (once), then its access, to memory that is gone, is a crash like
 * any access after munmap. */
TEST(close_during_load_frees_when_the_load_ends)
{
    char buf[8];
    int status;

    CHECK_OK(pipe(release_pipe));
    status = test_run_forked(close_while_loading, NULL);
    CHECK_SIGNALED(status, SIGSEGV);
    close(release_pipe[1]);
    CHECK_EQ(read(release_pipe[0], buf, sizeof buf), 1);   /* released once */
    close(release_pipe[0]);
}
