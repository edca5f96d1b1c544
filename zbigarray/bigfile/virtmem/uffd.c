/* Page faults taken inside system calls: userfaultfd.
 *
 * The kernel reports a fault on an inaccessible (PROT_NONE) page to the
 * program as SIGSEGV only when the program's own instruction touched it; when
 * the kernel itself touches the memory -- write(fd, view), read(fd, view),
 * send, an HDF5 write -- the system call fails with EFAULT.  With a
 * userfaultfd, a VMA's pages that hold nothing are not PROT_NONE but empty
 * anonymous memory registered for "missing" faults: every first touch, by
 * the CPU in user mode or by the kernel on the program's behalf, parks the
 * touching thread in the kernel and posts an event to the userfaultfd, which
 * our server threads read.
 *
 * Who serves the fault.  A fault must be served in a thread that may call
 * loadblk, and loadblk of a Python file needs the GIL:
 *
 * - A user-mode fault comes from code that may hold the GIL (NumPy does).  It
 *   can only be served by the faulting thread itself, as the SIGSEGV path
 *   does.  So the server sends that thread a signal (UFFD_SIGNAL): a thread
 *   parked in a user-mode fault is interruptible, runs the signal handler --
 *   which serves the fault exactly as the SIGSEGV handler would -- and then
 *   re-executes the instruction, which now finds the page.
 * - A fault taken inside a system call cannot run a signal handler until the
 *   call returns: the kernel retries the access at once and posts the same
 *   event again.  A second event while our signal is undelivered is how a
 *   server tells a system call from user code.  Such a fault is served by a
 *   *proxy* thread of ours (which takes the GIL for loadblk: Python's I/O
 *   releases it around system calls), which then wakes the parked thread.
 *   Later faults of the same call (our signal is still undelivered) go to a
 *   proxy directly.
 *
 * What cannot be served turns into EFAULT, as without userfaultfd: a *fence*
 * (a PROT_NONE page) replaces the block in that VMA and the thread is woken;
 * its system call fails, or, in user mode, the retried instruction faults
 * on the fence and the SIGSEGV path serves it.  That happens when loadblk
 * fails (the proxied thread is then told so, see virt_fault_remote_error_fn),
 * and when a proxy cannot get the GIL within UFFD_GIL_TIMEOUT: the system
 * call was made by a thread that holds the GIL and waits for the page.
 *
 * Everything here is an addition: the SIGSEGV handler still serves faults on
 * fences, on VMAs that could not be registered, and write faults on
 * read-only pages (the dirty tracking), and a process whose kernel refuses
 * userfaultfd (unprivileged without access, seccomp, an old kernel, or
 * ZBIGARRAY_USERFAULTFD=0) works as before, minus system calls on untouched
 * pages. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "virtmem_int.h"

#ifndef USERFAULTFD_IOC_NEW
#define USERFAULTFD_IOC_NEW _IO(0xAA, 0x00)
#endif

/* Server threads: one per CPU the process may run on, each pinned to its CPU
 * (measured: a server on the faulting thread's CPU answers in ~10 us on a
 * 2-core VM, one woken on the other CPU in ~50 us), at most this many. */
#define UFFD_MAX_SERVERS   8
/* A server whose CPU served no fault for this long stops polling (see
 * UffdServer). */
#define UFFD_SERVER_REST   0.05
/* Proxies serving faults of system calls, created on demand. */
#define UFFD_MAX_PROXIES   8
/* Our signal: SIGRTMIN + this (Python and glibc use none of these). */
#define UFFD_SIGNAL_OFFSET 6
/* Threads with a request at a time (threads parked in a fault). */
#define UFFD_MAX_THREADS   4096
/* A signalled thread that neither ran the handler nor faulted again within
 * this time has the signal blocked: a proxy serves it. */
#define UFFD_SIGNAL_TIMEOUT 0.2
/* A proxy that could not get the GIL within this time (it says when it has
 * it: virt_fault_proxy_has_lock) is waiting for the thread it serves, which
 * holds it: that fault fails with EFAULT.  A slow load, once it has the
 * GIL, may take as long as it takes. */
#define UFFD_GIL_TIMEOUT    1.0

enum { REQ_IDLE, REQ_SIGNALLED, REQ_SELF, REQ_PROXY };

/* The fault a thread is parked in, if any.  `word` is (generation << 3 |
 * state): the server and the signal handler race for a request with a
 * compare-and-swap on it, so that exactly one of them serves it, and the
 * handler never takes a lock (it may interrupt anything, see below). */
typedef struct UffdThread {
    pid_t     tid;              /* 0: free slot */
    uint64_t  word;
    int       signal_pending;   /* our signal was sent and not yet handled */
    uintptr_t addr;             /* the request's address, written before `word` */
    int       write;
    double    since;            /* when the request was made */
    double    signalled;        /* when our signal was last sent */
    uint64_t  timed_out_gen;    /* the proxy of this request timed out */
    uint64_t  got_lock_gen;     /* its proxy got the interpreter lock once */
} UffdThread;

typedef struct UffdJob {
    UffdThread *t;
    uint64_t    gen;
    pid_t       tid;
    uintptr_t   addr;
    int         write;
} UffdJob;

/* A server, and whether it polls the userfaultfd.
 *
 * Every thread polling the descriptor is woken by every event, so a server
 * per CPU all polling costs each fault a wake-up of the other CPUs -- an
 * interrupt each -- and, as those servers then run in our address space,
 * an interrupt more each when the fault's handler evicts a page (the TLB
 * shoot-down).  Measured on a 2-core VM: one of each per fault, most of the
 * userfaultfd path's extra cost at 2 MiB blocks.  So only servers of CPUs
 * that faults come from poll: the signal handler notes its CPU, waking that
 * CPU's server if it rests, and a server whose CPU served nothing for
 * UFFD_SERVER_REST goes back to rest -- never the last one polling, which
 * serves faults from everywhere else (system calls, the first fault on a
 * CPU). */
typedef struct UffdServer {
    int            cpu;         /* pinned to (-1: not pinned) */
    int            polling;     /* futex word: 1 polls, 0 rests */
    unsigned long  served;      /* faults handled on its CPU (by signal handlers) */
    unsigned long  served_seen; /* `served` when last looked at */
    double         looked;      /* when that was */
} UffdServer;

static UffdServer  uffd_servers[UFFD_MAX_SERVERS];
static int         uffd_npolling;   /* never more than really poll; at least 1 */
static signed char uffd_server_of_cpu[CPU_SETSIZE];

static pthread_mutex_t uffd_mutex = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t  uffd_jobs_cond = PTHREAD_COND_INITIALIZER;

static int    uffd_fd = -1;
static int    uffd_state;          /* 0 not tried, 1 on, -1 off */
static char   uffd_reason[192];
static int    uffd_signo;
static pid_t  uffd_pid;

static UffdThread uffd_threads[UFFD_MAX_THREADS];
static size_t     uffd_nthreads_hw;     /* slots [0, hw) may be in use */
static size_t     uffd_noutstanding;    /* requests SIGNALLED or PROXY */

static UffdJob    uffd_jobs[UFFD_MAX_THREADS];
static size_t     uffd_jobs_head, uffd_jobs_len;
static int        uffd_nproxies, uffd_nidle;

/* In a proxy: the thread whose fault it serves (0 elsewhere), and its
 * request. */
static __thread pid_t       uffd_proxy_for;
static __thread UffdThread *uffd_proxy_job;
static __thread uint64_t    uffd_proxy_gen;
static __thread pid_t uffd_my_tid;

static pid_t uffd_gettid(void)
{
    if (!uffd_my_tid)
        uffd_my_tid = (pid_t)syscall(SYS_gettid);
    return uffd_my_tid;
}

static double uffd_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t req_word(uint64_t gen, int state) { return gen << 3 | (uint64_t)state; }
static int      req_state(uint64_t word) { return (int)(word & 7); }
static uint64_t req_gen(uint64_t word)   { return word >> 3; }

int virt_uffd_signal(void)
{
    return uffd_state == 1 ? uffd_signo : 0;
}

int virt_uffd_enabled(void)
{
    return uffd_state == 1;
}

const char *virt_uffd_reason(void)
{
    return uffd_state == 1 ? NULL : uffd_state == 0 ? "not started yet" : uffd_reason;
}

pid_t virt_fault_proxy_tid(void)
{
    return uffd_proxy_for;
}

void virt_fault_proxy_has_lock(void)
{
    if (uffd_proxy_job)
        __atomic_store_n(&uffd_proxy_job->got_lock_gen, uffd_proxy_gen, __ATOMIC_RELEASE);
}

pid_t virt__gettid(void)
{
    return uffd_gettid();
}

/* -------------------------------------------------------------- reservations */

/* Where nothing is mapped, a VMA shows one of two kinds of trap:
 *
 * - empty anonymous memory registered for missing faults: what fileh_mmap
 *   makes, and what uffd__replace_empty puts back;
 * - the RAM page that was mapped there, its page-table entries dropped
 *   (MADV_DONTNEED) when the page went: its memfd mapping was registered for
 *   missing *and* minor faults when it was made, so a touch faults to us
 *   whether the slot behind it is a hole or holds another block by now.
 *   Evicting a page is then one system call, and never leaves a moment in
 *   which the range is not a trap.  (Except when recycling moves the page's
 *   entries to the page that takes its slot (page.c): the range is then
 *   unregistered for the move and registered again, meanwhile showing the
 *   page it showed, read-only -- still right, as nothing has changed the
 *   slot yet -- and what a touch faulted in then is dropped after.)
 *
 * Replacing a mapping in place (mmap MAP_FIXED) would make a new,
 * unregistered one: touched before it is registered, it would be filled
 * with zeros -- wrong data -- or, made inaccessible first, fail a system
 * call with EFAULT.  So replacements are done whole: an empty registered
 * range is made elsewhere and moved over the old one with mremap, which
 * keeps the registration (UFFD_FEATURE_EVENT_REMAP) -- at the price of
 * waiting for a server to read the move's event.  That is for the rarer
 * cases: the pages of an OS file (zero-copy), whose mappings cannot be
 * registered; stand-ins and fences going away; and sweeping up the
 * mappings evicted pages leave, which do not merge and would otherwise use
 * up the process's map entries (vm.max_map_count). */

static int uffd_register_mode(void *addr, size_t len, uint64_t mode)
{
    struct uffdio_register reg;
    memset(&reg, 0, sizeof reg);
    reg.range.start = (uintptr_t)addr;
    reg.range.len = len;
    reg.mode = mode;
    if (ioctl(uffd_fd, UFFDIO_REGISTER, &reg) != 0)
        return -errno;
    return 0;
}

int uffd__register(void *addr, size_t len)
{
    return uffd_register_mode(addr, len, UFFDIO_REGISTER_MODE_MISSING);
}

int uffd__register_trap(void *addr, size_t len)
{
    return uffd_register_mode(addr, len,
                              UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_MINOR);
}

int uffd__unregister(void *addr, size_t len)
{
    struct uffdio_range range = { .start = (uintptr_t)addr, .len = len };
    return ioctl(uffd_fd, UFFDIO_UNREGISTER, &range) == 0 ? 0 : -errno;
}

int uffd__replace_empty(void *addr, size_t len)
{
    void *spare = mmap(NULL, len, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (spare == MAP_FAILED)
        return virt__reserve_at(addr, len);
    if (uffd__register(spare, len) == 0) {
        void *got = mremap(spare, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, addr);
        if (got != MAP_FAILED) {
            BUG_ON(got != addr);
            return 0;
        }
    }
    BUG_ON(munmap(spare, len) != 0);
    /* Out of map entries, say: an inaccessible reservation instead, which
     * the SIGSEGV path serves (a system call touching it fails). */
    return virt__reserve_at(addr, len);
}

int vma__reserve(VMA *vma, void *addr, size_t len)
{
    return vma->uffd ? uffd__replace_empty(addr, len) : virt__reserve_at(addr, len);
}

int uffd__active(void)
{
    return uffd_state == 1;
}

/* ----------------------------------------------------------- thread records */

/* The slot of @tid, or NULL.  Lock-free: a slot's tid changes only while no
 * signal of ours is outstanding for it. */
static UffdThread *uffd_thread_find(pid_t tid)
{
    size_t hw = __atomic_load_n(&uffd_nthreads_hw, __ATOMIC_ACQUIRE);
    for (size_t i = 0; i < hw; i++)
        if (__atomic_load_n(&uffd_threads[i].tid, __ATOMIC_ACQUIRE) == tid)
            return &uffd_threads[i];
    return NULL;
}

/* The slot of @tid, made if needed (reusing one with nothing outstanding).
 * uffd_mutex held.  NULL if the table is full. */
static UffdThread *uffd_thread_get(pid_t tid)
{
    UffdThread *t = uffd_thread_find(tid), *reuse = NULL;
    if (t)
        return t;
    for (size_t i = 0; i < uffd_nthreads_hw && !reuse; i++) {
        UffdThread *s = &uffd_threads[i];
        if (s->tid == 0 || (!__atomic_load_n(&s->signal_pending, __ATOMIC_ACQUIRE) &&
                            req_state(__atomic_load_n(&s->word, __ATOMIC_ACQUIRE)) == REQ_IDLE))
            reuse = s;
    }
    if (!reuse && uffd_nthreads_hw == UFFD_MAX_THREADS) {
        /* Full: take the slot of a thread that ended with our signal
         * undelivered (the kernel drops it with the thread). */
        for (size_t i = 0; i < uffd_nthreads_hw && !reuse; i++) {
            UffdThread *s = &uffd_threads[i];
            if (req_state(__atomic_load_n(&s->word, __ATOMIC_ACQUIRE)) == REQ_IDLE &&
                syscall(SYS_tgkill, uffd_pid, s->tid, 0) != 0 && errno == ESRCH)
                reuse = s;
        }
        if (!reuse)
            return NULL;
    }
    if (!reuse) {
        reuse = &uffd_threads[uffd_nthreads_hw];
        __atomic_store_n(&uffd_nthreads_hw, uffd_nthreads_hw + 1, __ATOMIC_RELEASE);
    }
    reuse->signal_pending = 0;
    reuse->timed_out_gen = 0;
    __atomic_store_n(&reuse->tid, tid, __ATOMIC_RELEASE);
    return reuse;
}

/* ------------------------------------------------------------------ proxies */

static void uffd_wake(uintptr_t addr)
{
    struct uffdio_range range;
    size_t ps = virt_os_pagesize();
    range.start = addr & ~(uintptr_t)(ps - 1);
    range.len = ps;
    /* Fails only for a range that is not ours: nothing waits there then. */
    (void)ioctl(uffd_fd, UFFDIO_WAKE, &range);
}

/* Fences owed, made by a server when the virtmem lock is free: a server
 * never waits for that lock, as its holder may be waiting for a server (a
 * move's event, see reservations).  uffd_mutex. */
typedef struct UffdFence {
    uintptr_t addr;
    pid_t     tid;
} UffdFence;
static UffdFence uffd_fences[UFFD_MAX_THREADS];
static size_t    uffd_nfences;

/* Have the access of @tid at @addr fail as without userfaultfd: a fence,
 * then a wake-up.  uffd_mutex held. */
static void uffd_fence_later(uintptr_t addr, pid_t tid)
{
    for (size_t i = 0; i < uffd_nfences; i++)
        if (uffd_fences[i].addr == addr && uffd_fences[i].tid == tid)
            return;
    /* One per thread at most, and threads beyond the table's size are
     * fenced at once below, so this holds. */
    BUG_ON(uffd_nfences == UFFD_MAX_THREADS);
    uffd_fences[uffd_nfences].addr = addr;
    uffd_fences[uffd_nfences].tid = tid;
    __atomic_store_n(&uffd_nfences, uffd_nfences + 1, __ATOMIC_RELEASE);
}

/* Make the fences owed if the virtmem lock is free.  uffd_mutex held. */
static void uffd_make_fences(void)
{
    if (uffd_nfences == 0 || !virt__trylock())
        return;
    for (size_t i = 0; i < uffd_nfences; i++)
        fault__fence(uffd_fences[i].addr, uffd_fences[i].tid);
    virt_unlock();
    for (size_t i = 0; i < uffd_nfences; i++)
        uffd_wake(uffd_fences[i].addr);
    __atomic_store_n(&uffd_nfences, 0, __ATOMIC_RELEASE);
}

static void *uffd_proxy_main(void *arg);

/* Queue a fault for a proxy.  uffd_mutex held. */
static void uffd_proxy(UffdThread *t, uint64_t gen, uintptr_t addr, int write)
{
    BUG_ON(uffd_jobs_len == UFFD_MAX_THREADS);     /* one per thread slot at most */
    UffdJob *job = &uffd_jobs[(uffd_jobs_head + uffd_jobs_len++) % UFFD_MAX_THREADS];
    job->t = t;
    job->gen = gen;
    job->tid = t->tid;
    job->addr = addr;
    job->write = write;
    t->since = uffd_now();
    if (uffd_nidle > 0 || uffd_nproxies >= UFFD_MAX_PROXIES) {
        BUG_ON(pthread_cond_signal(&uffd_jobs_cond) != 0);
        return;
    }
    pthread_t th;
    pthread_attr_t attr;
    sigset_t all, old;
    BUG_ON(pthread_attr_init(&attr) != 0);
    BUG_ON(pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED) != 0);
    /* Proxies take no process signals (SIGINT and the like are for the
     * program's threads); our own fault signal they do take, as they may
     * fault in user mode themselves inside loadblk. */
    sigfillset(&all);
    sigdelset(&all, uffd_signo);
    sigdelset(&all, SIGSEGV);
    BUG_ON(pthread_sigmask(SIG_SETMASK, &all, &old) != 0);
    if (pthread_create(&th, &attr, uffd_proxy_main, NULL) == 0) {
        uffd_nproxies++;
        (void)pthread_setname_np(th, "zbigarray-proxy");   /* cosmetic */
    }
    BUG_ON(pthread_sigmask(SIG_SETMASK, &old, NULL) != 0);
    BUG_ON(pthread_attr_destroy(&attr) != 0);
    if (uffd_nproxies == 0) {
        /* No proxy at all (out of threads): the fault fails as without us. */
        uffd_jobs_len--;
        __atomic_store_n(&t->word, req_word(gen, REQ_IDLE), __ATOMIC_RELEASE);
        __atomic_fetch_sub(&uffd_noutstanding, 1, __ATOMIC_ACQ_REL);
        uffd_fence_later(addr, t->tid);
    }
}

static void *uffd_proxy_main(void *arg)
{
    (void)arg;
    BUG_ON(pthread_mutex_lock(&uffd_mutex) != 0);
    for (;;) {
        while (uffd_jobs_len == 0) {
            uffd_nidle++;
            BUG_ON(pthread_cond_wait(&uffd_jobs_cond, &uffd_mutex) != 0);
            uffd_nidle--;
        }
        UffdJob job = uffd_jobs[uffd_jobs_head];
        uffd_jobs_head = (uffd_jobs_head + 1) % UFFD_MAX_THREADS;
        uffd_jobs_len--;
        BUG_ON(pthread_mutex_unlock(&uffd_mutex) != 0);

        uffd_proxy_for = job.tid;
        uffd_proxy_job = job.t;
        uffd_proxy_gen = job.gen;
        fault__serve_proxied(job.addr, job.write);
        uffd_proxy_for = 0;
        uffd_proxy_job = NULL;

        BUG_ON(pthread_mutex_lock(&uffd_mutex) != 0);
        int timed_out = job.t->timed_out_gen == job.gen;
        uint64_t w = req_word(job.gen, REQ_PROXY);
        if (__atomic_compare_exchange_n(&job.t->word, &w, req_word(job.gen, REQ_IDLE), 0,
                                        __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
            __atomic_fetch_sub(&uffd_noutstanding, 1, __ATOMIC_ACQ_REL);
        BUG_ON(pthread_mutex_unlock(&uffd_mutex) != 0);
        uffd_wake(job.addr);
        if (timed_out)
            fault__report_gil_timeout(job.addr, job.tid);
        BUG_ON(pthread_mutex_lock(&uffd_mutex) != 0);
    }
    return NULL;
}

/* ------------------------------------------------------------------ servers */

/* A fault event from thread @tid at @addr.  uffd_mutex held. */
static void uffd_on_fault(pid_t tid, uintptr_t addr, int write)
{
    UffdThread *t = uffd_thread_get(tid);
    if (!t) {
        /* More threads parked in faults than we track: that one gets the
         * fault as without userfaultfd. */
        uffd_fence_later(addr, tid);
        return;
    }
    uint64_t w = __atomic_load_n(&t->word, __ATOMIC_ACQUIRE);
    uint64_t gen = req_gen(w) + 1;
    int pending = __atomic_load_n(&t->signal_pending, __ATOMIC_ACQUIRE);
    double now = uffd_now();
    if (pending && now - t->signalled > UFFD_SIGNAL_TIMEOUT && req_state(w) == REQ_IDLE) {
        /* Our signal went out long ago and was never handled: a long system
         * call, or a thread that ended and whose id is now another's.  Ask
         * again (a system call then shows itself as before). */
        pending = 0;
    }

    /* A thread waits in one fault at a time: the latest event says which.
     * An earlier request of the thread may be stale -- another thread's
     * wake-up of the same page let it go on -- and is then superseded. */
    addr &= ~(uintptr_t)(virt_os_pagesize() - 1);
    switch (req_state(w)) {
    case REQ_SIGNALLED:
        if (!pending)
            break;      /* the handler gave it up (it ran under our lock): anew */
        /* Faulted again without running the handler: the thread is inside
         * a system call (the kernel retries at once while a signal waits). */
        if (__atomic_compare_exchange_n(&t->word, &w, req_word(req_gen(w), REQ_PROXY), 0,
                                        __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
            t->addr = addr;
            t->write = write;
            uffd_proxy(t, req_gen(w), addr, write);
        }
        return;
    case REQ_PROXY:
        if (t->addr == addr)
            return;     /* posted again: the proxy's wake-up will answer it */
        break;
    default:
        break;
    }
    t->addr = addr;
    t->write = write;
    t->since = now;
    /* A request being served by the handler (SELF) is superseded by this
     * one, a fault inside that handler: it stays counted once. */
    if (req_state(w) == REQ_IDLE)
        __atomic_fetch_add(&uffd_noutstanding, 1, __ATOMIC_ACQ_REL);
    if (pending) {
        /* A signal of an earlier fault is still undelivered: a system call
         * again (its earlier pages were proxied too). */
        __atomic_store_n(&t->word, req_word(gen, REQ_PROXY), __ATOMIC_RELEASE);
        uffd_proxy(t, gen, addr, write);
        return;
    }
    __atomic_store_n(&t->word, req_word(gen, REQ_SIGNALLED), __ATOMIC_RELEASE);
    __atomic_store_n(&t->signal_pending, 1, __ATOMIC_RELEASE);
    t->signalled = now;
    if (syscall(SYS_tgkill, uffd_pid, tid, uffd_signo) != 0) {
        /* The thread is gone: nothing waits for the page. */
        __atomic_store_n(&t->signal_pending, 0, __ATOMIC_RELEASE);
        __atomic_store_n(&t->word, req_word(gen, REQ_IDLE), __ATOMIC_RELEASE);
        __atomic_fetch_sub(&uffd_noutstanding, 1, __ATOMIC_ACQ_REL);
    }
}

/* Requests that waited too long.  uffd_mutex held. */
static void uffd_check_timeouts(void)
{
    double now = uffd_now();
    for (size_t i = 0; i < uffd_nthreads_hw; i++) {
        UffdThread *t = &uffd_threads[i];
        uint64_t w = __atomic_load_n(&t->word, __ATOMIC_ACQUIRE);
        if (req_state(w) == REQ_SIGNALLED && now - t->since > UFFD_SIGNAL_TIMEOUT) {
            /* The signal is blocked in that thread: proxy it. */
            if (__atomic_compare_exchange_n(&t->word, &w, req_word(req_gen(w), REQ_PROXY), 0,
                                            __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
                uffd_proxy(t, req_gen(w), t->addr, t->write);
        } else if (req_state(w) == REQ_PROXY && t->timed_out_gen != req_gen(w) &&
                   __atomic_load_n(&t->got_lock_gen, __ATOMIC_ACQUIRE) != req_gen(w) &&
                   now - t->since > UFFD_GIL_TIMEOUT) {
            /* The proxy waits for the GIL, which the parked thread holds
             * (a system call made without releasing it): fail that access
             * as without userfaultfd.  The proxy finishes when it can and
             * reports the failure then. */
            t->timed_out_gen = req_gen(w);
            uffd_fence_later(t->addr, t->tid);
        }
    }
}

static int uffd_next_timeout_ms(void)
{
    if (__atomic_load_n(&uffd_nfences, __ATOMIC_ACQUIRE))
        return 1;           /* the virtmem lock was busy: try again soon */
    return __atomic_load_n(&uffd_noutstanding, __ATOMIC_ACQUIRE) ? 50 : -1;
}

static long uffd_futex(int *word, int op, int val)
{
    return syscall(SYS_futex, word, op, val, NULL, NULL, 0);
}

/* In a signal handler: a fault is being served on this CPU; make sure its
 * server polls.  Lock-free (it may interrupt anything). */
static void uffd_server_note_cpu(void)
{
    int cpu = sched_getcpu();
    if (cpu < 0 || cpu >= CPU_SETSIZE || uffd_server_of_cpu[cpu] < 0)
        return;
    UffdServer *srv = &uffd_servers[uffd_server_of_cpu[cpu]];
    __atomic_fetch_add(&srv->served, 1, __ATOMIC_RELAXED);
    int resting = 0;
    if (!__atomic_load_n(&srv->polling, __ATOMIC_ACQUIRE) &&
        __atomic_compare_exchange_n(&srv->polling, &resting, 1, 0,
                                    __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
        /* Counted after it polls: the count may lag, never lead. */
        __atomic_fetch_add(&uffd_npolling, 1, __ATOMIC_ACQ_REL);
        (void)uffd_futex(&srv->polling, FUTEX_WAKE_PRIVATE, 1);
    }
}

/* Whether @srv, polling, should rest now: its CPU served no fault for
 * UFFD_SERVER_REST, and another server polls.  Then it no longer counts as
 * polling when this returns 1. */
static int uffd_server_may_rest(UffdServer *srv)
{
    double now = uffd_now();
    if (now - srv->looked < UFFD_SERVER_REST)
        return 0;
    unsigned long served = __atomic_load_n(&srv->served, __ATOMIC_RELAXED);
    int idle = served == srv->served_seen;
    srv->served_seen = served;
    srv->looked = now;
    if (!idle)
        return 0;
    int n = __atomic_load_n(&uffd_npolling, __ATOMIC_ACQUIRE);
    while (n > 1)
        if (__atomic_compare_exchange_n(&uffd_npolling, &n, n - 1, 0,
                                        __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
            return 1;
    return 0;
}

static void *uffd_server_main(void *arg)
{
    UffdServer *srv = arg;
    for (;;) {
        if (uffd_server_may_rest(srv)) {
            /* A handler on this CPU may have set it again meanwhile: the
             * wait below then returns at once. */
            __atomic_store_n(&srv->polling, 0, __ATOMIC_RELEASE);
        }
        while (!__atomic_load_n(&srv->polling, __ATOMIC_ACQUIRE))
            (void)uffd_futex(&srv->polling, FUTEX_WAIT_PRIVATE, 0);
        int timeout = uffd_next_timeout_ms();
        struct pollfd pfd = { .fd = uffd_fd, .events = POLLIN };
        int n = poll(&pfd, 1, timeout);
        if (n < 0 && errno != EINTR) {
            fprintf(stderr, "zbigarray: userfaultfd poll failed: %s\n", strerror(errno));
            abort();
        }
        struct uffd_msg msgs[16];
        ssize_t got = n > 0 ? read(uffd_fd, msgs, sizeof msgs) : 0;
        if (got < 0 && errno != EAGAIN && errno != EINTR) {
            fprintf(stderr, "zbigarray: userfaultfd read failed: %s\n", strerror(errno));
            abort();
        }
        /* Every polling server wakes for each event and all but one find
         * nothing: those leave the mutex alone, unless there is
         * time-keeping to do. */
        if (got <= 0 && n != 0 && !__atomic_load_n(&uffd_nfences, __ATOMIC_ACQUIRE))
            continue;
        BUG_ON(pthread_mutex_lock(&uffd_mutex) != 0);
        for (ssize_t i = 0; got > 0 && i < got / (ssize_t)sizeof msgs[0]; i++) {
            if (msgs[i].event != UFFD_EVENT_PAGEFAULT)
                continue;
            uffd_on_fault((pid_t)msgs[i].arg.pagefault.feat.ptid,
                          (uintptr_t)msgs[i].arg.pagefault.address,
                          (msgs[i].arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WRITE) != 0);
        }
        if (__atomic_load_n(&uffd_noutstanding, __ATOMIC_ACQUIRE))
            uffd_check_timeouts();
        uffd_make_fences();
        BUG_ON(pthread_mutex_unlock(&uffd_mutex) != 0);
    }
    return NULL;
}

/* ------------------------------------------------------------ the signal */

/* Runs in a thread our server signalled: if it is parked in the fault we were
 * told of (user mode), serve it here, as the SIGSEGV handler would.  The
 * signal can also arrive late -- after a system call whose faults proxies
 * served, or after another thread's wake let this one go on -- at any point
 * of the program: then the request is no longer SIGNALLED, or the page is
 * there already, and nothing is done.  No locks are taken before that is
 * known. */
static void uffd_on_signal(int sig, siginfo_t *si, void *uctx)
{
    (void)sig;
    (void)si;
    (void)uctx;
    int saved_errno = errno;
    UffdThread *t = uffd_thread_find(uffd_gettid());
    if (t) {
        uint64_t w = __atomic_load_n(&t->word, __ATOMIC_ACQUIRE);
        uintptr_t addr = t->addr;
        int write = t->write;
        if (req_state(w) == REQ_SIGNALLED && !virt__lock_held() &&
            __atomic_compare_exchange_n(&t->word, &w, req_word(req_gen(w), REQ_SELF), 0,
                                        __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
            /* Cleared before serving: a fault inside loadblk gets a signal
             * of its own (nested, SA_NODEFER). */
            __atomic_store_n(&t->signal_pending, 0, __ATOMIC_RELEASE);
            uffd_server_note_cpu();
            fault__serve_signalled(addr, write);
            uint64_t self = req_word(req_gen(w), REQ_SELF);
            if (__atomic_compare_exchange_n(&t->word, &self, req_word(req_gen(w), REQ_IDLE), 0,
                                            __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
                __atomic_fetch_sub(&uffd_noutstanding, 1, __ATOMIC_ACQ_REL);
        } else {
            __atomic_store_n(&t->signal_pending, 0, __ATOMIC_RELEASE);
        }
    }
    errno = saved_errno;
}

/* ---------------------------------------------------------------- start-up */

static void uffd_off(const char *why, int err)
{
    if (err)
        snprintf(uffd_reason, sizeof uffd_reason, "%s: %s", why, strerror(-err));
    else
        snprintf(uffd_reason, sizeof uffd_reason, "%s", why);
    if (uffd_fd >= 0)
        close(uffd_fd);
    uffd_fd = -1;
    uffd_state = -1;
}

static int uffd_open(void)
{
    int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (fd >= 0)
        return fd;
    int err = -errno;
    /* Unprivileged, the system call only gives user-mode-only descriptors
     * (useless here); /dev/userfaultfd gives full ones to whoever may open
     * it. */
    int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
    if (dev < 0)
        return err;
    fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        fd = -errno;
    close(dev);
    return fd < 0 ? err : fd;
}

/* Whether a registered empty page is served through us: register one, and
 * check the kernel offers the wake-up we use. */
static int uffd_probe(void)
{
    size_t ps = virt_os_pagesize();
    void *p = mmap(NULL, ps, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED)
        return -errno;
    struct uffdio_register reg;
    memset(&reg, 0, sizeof reg);
    reg.range.start = (uintptr_t)p;
    reg.range.len = ps;
    reg.mode = UFFDIO_REGISTER_MODE_MISSING;
    int err = ioctl(uffd_fd, UFFDIO_REGISTER, &reg) == 0 ? 0 : -errno;
    if (!err && !(reg.ioctls & ((uint64_t)1 << _UFFDIO_WAKE)))
        err = -ENOTSUP;
    BUG_ON(munmap(p, ps) != 0);
    return err;
}

static int uffd_start_threads(void)
{
    cpu_set_t cpus;
    int n = 0;
    memset(uffd_server_of_cpu, -1, sizeof uffd_server_of_cpu);
    if (sched_getaffinity(0, sizeof cpus, &cpus) == 0) {
        for (int c = 0; c < CPU_SETSIZE && n < UFFD_MAX_SERVERS; c++)
            if (CPU_ISSET(c, &cpus)) {
                uffd_server_of_cpu[c] = (signed char)n;
                uffd_servers[n++].cpu = c;
            }
    }
    if (n <= 1) {
        /* One CPU, or unknown ones: one server, unpinned. */
        memset(uffd_server_of_cpu, -1, sizeof uffd_server_of_cpu);
        n = 1;
        uffd_servers[0].cpu = -1;
    }
    double now = uffd_now();
    for (int i = 0; i < n; i++) {
        uffd_servers[i].polling = 0;
        uffd_servers[i].looked = now;
    }

    sigset_t all, old;
    sigfillset(&all);
    /* Servers never touch page memory and take no signals. */
    BUG_ON(pthread_sigmask(SIG_SETMASK, &all, &old) != 0);
    int started = 0, err = 0;
    for (int i = 0; i < n; i++) {
        pthread_t th;
        pthread_attr_t attr;
        BUG_ON(pthread_attr_init(&attr) != 0);
        BUG_ON(pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED) != 0);
        if (uffd_servers[i].cpu >= 0) {
            cpu_set_t set;
            CPU_ZERO(&set);
            CPU_SET(uffd_servers[i].cpu, &set);
            BUG_ON(pthread_attr_setaffinity_np(&attr, sizeof set, &set) != 0);
        }
        err = -pthread_create(&th, &attr, uffd_server_main, &uffd_servers[i]);
        if (err == -EINVAL && uffd_servers[i].cpu >= 0) {
            /* The CPU went offline meanwhile: unpinned, the server still
             * serves, only slower. */
            uffd_server_of_cpu[uffd_servers[i].cpu] = -1;
            uffd_servers[i].cpu = -1;
            BUG_ON(pthread_attr_destroy(&attr) != 0);
            BUG_ON(pthread_attr_init(&attr) != 0);
            BUG_ON(pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED) != 0);
            err = -pthread_create(&th, &attr, uffd_server_main, &uffd_servers[i]);
        }
        BUG_ON(pthread_attr_destroy(&attr) != 0);
        if (err)
            break;
        /* Named for top, gdb and our tests; a name is cosmetic. */
        (void)pthread_setname_np(th, "zbigarray-uffd");
        started++;
    }
    BUG_ON(pthread_sigmask(SIG_SETMASK, &old, NULL) != 0);
    if (!started)
        return err;
    /* Servers that could not start are no CPU's. */
    for (int i = started; i < n; i++)
        if (uffd_servers[i].cpu >= 0)
            uffd_server_of_cpu[uffd_servers[i].cpu] = -1;
    /* The server of the starting thread's CPU polls first. */
    int cpu = sched_getcpu();
    int first = cpu >= 0 && cpu < CPU_SETSIZE && uffd_server_of_cpu[cpu] >= 0 ?
                uffd_server_of_cpu[cpu] : 0;
    uffd_npolling = 1;
    __atomic_store_n(&uffd_servers[first].polling, 1, __ATOMIC_RELEASE);
    (void)uffd_futex(&uffd_servers[first].polling, FUTEX_WAKE_PRIVATE, 1);
    return 0;
}

/* Called once, under the fault-handler install mutex, before the first VMA. */
void uffd__start(void)
{
    if (uffd_state != 0)
        return;
    const char *env = getenv("ZBIGARRAY_USERFAULTFD");
    if (env && strcmp(env, "0") == 0) {
        uffd_off("disabled by ZBIGARRAY_USERFAULTFD=0", 0);
        return;
    }
    int fd = uffd_open();
    if (fd < 0) {
        uffd_off("the kernel refuses a userfaultfd (see vm.unprivileged_userfaultfd "
                 "and /dev/userfaultfd)", fd);
        return;
    }
    uffd_fd = fd;
    struct uffdio_api api;
    memset(&api, 0, sizeof api);
    api.api = UFFD_API;
    /* Thread ids: whom to signal.  Minor faults on shmem: evicted pages'
     * mappings stay traps.  Move events: a registered range keeps its
     * registration when moved into place. */
    api.features = UFFD_FEATURE_THREAD_ID | UFFD_FEATURE_MINOR_SHMEM | UFFD_FEATURE_EVENT_REMAP;
    if (ioctl(uffd_fd, UFFDIO_API, &api) != 0) {
        uffd_off("the kernel's userfaultfd lacks thread ids, minor faults on shared "
                 "memory or move events (Linux 5.14+)", -errno);
        return;
    }
    int err = uffd_probe();
    if (err) {
        uffd_off("registering memory with userfaultfd failed", err);
        return;
    }
    uffd_pid = getpid();
    uffd_signo = SIGRTMIN + UFFD_SIGNAL_OFFSET;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = uffd_on_signal;
    /* SA_RESTART: a late signal must not make an unrelated system call fail
     * with EINTR.  SA_NODEFER: a fault inside the handler's loadblk is
     * signalled too. */
    sa.sa_flags = SA_SIGINFO | SA_RESTART | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    if (sigaction(uffd_signo, &sa, NULL) != 0) {
        uffd_off("installing the fault signal's handler failed", -errno);
        return;
    }
    err = uffd_start_threads();
    if (err) {
        uffd_off("starting the userfaultfd server threads failed", err);
        return;
    }
    uffd_state = 1;
}

void uffd__forget_in_child(void)
{
    /* Threads do not survive fork, and the child's VMAs were unregistered by
     * the kernel: the child works without userfaultfd. */
    if (uffd_state == 1) {
        close(uffd_fd);
        uffd_fd = -1;
        uffd_state = -1;
        snprintf(uffd_reason, sizeof uffd_reason,
                 "a forked child: its pages are served by SIGSEGV only");
    }
    uffd_nthreads_hw = 0;
    uffd_noutstanding = 0;
    uffd_jobs_len = 0;
    uffd_nproxies = uffd_nidle = 0;
    uffd_nfences = 0;
    uffd_my_tid = 0;
    memset(uffd_threads, 0, sizeof uffd_threads);
    BUG_ON(pthread_mutex_init(&uffd_mutex, NULL) != 0);
    BUG_ON(pthread_cond_init(&uffd_jobs_cond, NULL) != 0);
}
