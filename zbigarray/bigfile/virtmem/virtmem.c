/* The virtmem lock, the condition variable for page loads, the GIL hooks and
 * small process-wide helpers.
 *
 * Lock order: the GIL (or any interpreter lock) may be held when taking the
 * virtmem lock, never the other way round: with the virtmem lock held the core
 * never calls a backend and never waits for the GIL.  That is what lets a
 * thread that holds the GIL fault on a page while another thread, without the
 * GIL, is in the middle of core code. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

#include "virtmem_int.h"

static pthread_mutex_t virt_mutex = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t  virt_loads_cond = PTHREAD_COND_INITIALIZER;

/* Per thread: whether this thread holds the lock (to turn a recursive lock
 * into a loud BUG, not a hang), and the signal mask to restore on unlock when
 * virt_lock() blocked SIGSEGV. */
static __thread int      virt_lock_held;
static __thread int      virt_lock_masked;
static __thread sigset_t virt_saved_sigmask;

static VirtGilHooks virt_gil_hooks;   /* zero: no-ops */

__thread unsigned virt__nwriteout_mine;

static void virt_lock_mutex(void)
{
    BUG_ON(virt_lock_held);
    BUG_ON(pthread_mutex_lock(&virt_mutex) != 0);
    virt_lock_held = 1;
}

void virt_lock(void)
{
    sigset_t segv, old;
    sigemptyset(&segv);
    sigaddset(&segv, SIGSEGV);
    BUG_ON(pthread_sigmask(SIG_BLOCK, &segv, &old) != 0);
    virt_lock_mutex();
    virt_saved_sigmask = old;
    virt_lock_masked = 1;
}

void virt__lock_in_fault(void)
{
    virt_lock_mutex();
    virt_lock_masked = 0;
}

int virt__trylock(void)
{
    BUG_ON(virt_lock_held);
    int r = pthread_mutex_trylock(&virt_mutex);
    if (r == EBUSY)
        return 0;
    BUG_ON(r != 0);
    virt_lock_held = 1;
    virt_lock_masked = 0;
    return 1;
}

int virt__lock_held(void)
{
    return virt_lock_held;
}

void virt_unlock(void)
{
    int masked = virt_lock_masked;
    sigset_t old = virt_saved_sigmask;
    BUG_ON(!virt_lock_held);
    virt_lock_held = 0;
    virt_lock_masked = 0;
    BUG_ON(pthread_mutex_unlock(&virt_mutex) != 0);
    if (masked)
        BUG_ON(pthread_sigmask(SIG_SETMASK, &old, NULL) != 0);
}

void virt_set_gil_hooks(const VirtGilHooks *hooks)
{
    virt_lock();
    if (hooks)
        virt_gil_hooks = *hooks;
    else
        memset(&virt_gil_hooks, 0, sizeof virt_gil_hooks);
    virt_unlock();
}

/* Caller holds the lock.  The GIL is released before blocking (so the loader
 * can take it to run loadblk) but retaken only after the virtmem lock is
 * dropped: waiting for the GIL with the virtmem lock held would deadlock
 * against a loader that holds the GIL and wants the virtmem lock. */
void virt__wait_loads(void)
{
    void *token = virt_gil_hooks.release ? virt_gil_hooks.release() : NULL;
    BUG_ON(pthread_cond_wait(&virt_loads_cond, &virt_mutex) != 0);
    if (token) {
        int masked = virt_lock_masked;
        virt_unlock();
        virt_gil_hooks.retake(token);
        if (masked)
            virt_lock();
        else
            virt__lock_in_fault();
    }
}

void virt__wait_cond(pthread_cond_t *cond)
{
    BUG_ON(!virt_lock_held);
    BUG_ON(pthread_cond_wait(cond, &virt_mutex) != 0);
}

void virt__loads_reinit(void)
{
    /* In a forked child: threads that waited on the condition variable in
     * the parent do not exist here; start from a clean one. */
    BUG_ON(pthread_cond_init(&virt_loads_cond, NULL) != 0);
}

void virt__loads_changed(void)
{
    BUG_ON(pthread_cond_broadcast(&virt_loads_cond) != 0);
}

void virt__release_file(BigFile *file)
{
    if (file->ops->release)
        file->ops->release(file);
}

size_t virt_os_pagesize(void)
{
    static size_t pagesize;
    if (!pagesize) {
        long v = sysconf(_SC_PAGESIZE);
        pagesize = v > 0 ? (size_t)v : 4096;
    }
    return pagesize;
}

int virt_blksize_check(size_t blksize)
{
    if (blksize == 0 || blksize % virt_os_pagesize() != 0 || blksize > VIRT_BLKSIZE_MAX)
        return -EINVAL;
    return 0;
}
