/* Prepared slots: fresh page memory made ready on another CPU.
 *
 * A page that takes a slot with no memory behind it (a RAM still growing:
 * a first scan of an array) costs its faulting thread ~0.7 ms per 2 MiB
 * before loadblk's own work: the kernel allocates 512 pages, and mapping
 * them into the view populates 512 page-table entries.  A recycled page
 * costs neither: it takes over a reclaimed page's memory and entries
 * (page.c).  So while pages take fresh slots of one size, a preparer
 * thread makes the next few ready ahead, off the faulting thread: it
 * allocates a slot, gives it memory (prep_fill) and maps it read-write
 * at a parking range.  page__alloc hands a prepared slot to a new page as
 * it hands a recycled one: the thread loading it fills the range's
 * page-table entries (ram__prep_touch), loadblk writes through them, and
 * they move into the view.  (Filled by the preparer, the same entries made
 * a 512 MiB scan ~10 % slower: its faults then compete with the loading
 * thread's mprotect and mremap in the same address space, and it was the
 * slower of the two threads already.)  A fault that finds none ready
 * while one is being prepared waits for it (ram__prep_wait): the
 * preparer's ~0.8 ms per 2 MiB is less than the faulting thread would
 * spend doing the same itself, and with two threads on their CPUs at full
 * speed the preparer is the slower one.
 *
 * Bounds.  At most a few slots per RAM are ready or being prepared
 * (prep_depth: 4 to 32, a sixteenth of the capacity).
 * Their bytes count against the capacity from the moment the preparer
 * takes them (ram->prepared; ram__has_room adds it), so the RAM never holds
 * more than its capacity; the preparer only uses room there is, never
 * reclaims, and page_make_room gives back ready slots before it reclaims a
 * page.  When the RAM holds no page any more (handles closed, all reclaimed)
 * the ready slots go too.  Only sizes from VIRT_PT_SPAN on are prepared:
 * their entries move a page table at a time; smaller blocks are cheap to
 * populate where they are.
 *
 * One preparer thread per process, started on first use; it takes the
 * virtmem lock only to pick work and to hand it over, and holds a
 * reference on the RAM it works for.  It blocks every signal: it runs no
 * Python and touches no VMA of ours, so no fault handler ever runs in it.
 * A forked child has no preparer: its RAMs forget their prepared slots
 * (they show the parent's memory) and a new thread starts when needed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/uio.h>

#include "virtmem_int.h"

/* prep_fill writes zeros from PREP_NIOV vectors of one static buffer. */
#define PREP_ZEROS ((size_t)64 << 10)
#define PREP_NIOV  32
#define PREP_TOUCH_STRIDE ((size_t)64 << 10)

static pthread_cond_t prep_cond = PTHREAD_COND_INITIALIZER;
static pthread_cond_t prep_done_cond = PTHREAD_COND_INITIALIZER;
static int prep_started;
/* No thread could be started: pages take fresh slots as before. */
static int prep_unsupported;

/* How many slots of @size @ram keeps ready or in preparation: a
 * sixteenth of its capacity, from RAM_PREP_MIN to RAM_PREP_MAX slots.
 * Deep enough to cover a burst: a loop that writes 64 MiB and commits
 * faults in 32 slots in a row, the preparer makes ≈ 1 while the faulting
 * thread uses 2, and the commit leaves the other CPU idle, time to make
 * the next burst's slots ready (4 ready: a fill and commit of 512 MiB in
 * 64 MiB steps spent 0.18 s faulting; 32 ready: 0.12 s).  Small against
 * the capacity, since ready slots are memory no page uses yet. */
static size_t prep_depth(const RAM *ram, size_t size)
{
    size_t n = ram->capacity / size / 16;
    return n < RAM_PREP_MIN ? RAM_PREP_MIN : n > RAM_PREP_MAX ? RAM_PREP_MAX : n;
}

/* Prepare only with room for twice the depth more slots: a RAM close to
 * full recycles its pages instead, and its last free slots stay free for
 * whoever needs them, of any size. */
static int prep_wanted(const RAM *ram)
{
    size_t size = ram->prep_size;
    if (size == 0)
        return 0;
    size_t depth = prep_depth(ram, size);
    return ram->nprep + ram->nprep_busy < depth && size <= ram->capacity / (2 * depth) &&
           ram__has_room(ram, size * 2 * depth);
}

static RAM *prep_pick(void)
{
    ListHead *p;
    list_for_each_forward(p, &ram__all) {
        RAM *ram = list_entry(p, RAM, in_all);
        if (prep_wanted(ram))
            return ram;
    }
    return NULL;
}

/* Give slot [off, off+size) memory, all zeros.  Writing zeros with
 * pwrite allocates and fills the pages in one pass and takes no fault per
 * page (a mapping's write faults, or MADV_POPULATE_WRITE, allocate a page
 * and zero it one at a time: ~1.1 ms per 2 MiB on our VMs against ~0.8),
 * and unlike MADV_POPULATE_WRITE it does not hold the mmap lock, which the
 * faulting thread's mprotect and mremap then wait for. */
static int prep_fill(RAM *ram, size_t off, size_t size)
{
    static const char zeros[PREP_ZEROS];
    struct iovec iov[PREP_NIOV];

    for (size_t i = 0; i < PREP_NIOV; i++) {
        iov[i].iov_base = (void *)zeros;
        iov[i].iov_len = sizeof zeros;
    }
    while (size > 0) {
        size_t n = size < sizeof zeros * PREP_NIOV ? size : sizeof zeros * PREP_NIOV;
        int cnt = (int)((n + sizeof zeros - 1) / sizeof zeros);
        iov[cnt - 1].iov_len = n - (size_t)(cnt - 1) * sizeof zeros;
        ssize_t w = pwritev(ram->memfd, iov, cnt, (off_t)off);
        iov[cnt - 1].iov_len = sizeof zeros;
        if (w < 0 && errno == EINTR)
            continue;   /* signals are blocked here; kept for robustness */
        if (w < 0)
            return -errno;      /* ENOSPC, ENOMEM: no memory to prepare */
        BUG_ON(w == 0);         /* tmpfs writes something or fails */
        off += (size_t)w;
        size -= (size_t)w;
    }
    return 0;
}

void ram__prep_touch(void *park, size_t size)
{
    /* A read fault maps the pages around it that are in the page cache
     * (the kernel's fault-around, 64 KiB by default), writable in a shared
     * mapping of tmpfs: one read per 64 KiB does.  An entry left out is
     * filled by the kernel when loadblk writes there. */
    for (size_t d = 0; d < size; d += PREP_TOUCH_STRIDE)
        (void)((volatile const char *)park)[d];
}

/* Give back slot @off of @size that the preparer took (not, or no longer,
 * mapped at a park). */
static void prep_slot_free(RAM *ram, size_t off, size_t size)
{
    ram->prepared -= size;
    ram->used += size;          /* ram__slot_free takes it off again */
    ram->npages++;
    ram__slot_free(ram, off, size);
}

/* Prepare one slot for @ram.  Locked; unlocks around the kernel's work. */
static void prep_one(RAM *ram)
{
    size_t size = ram->prep_size, off;
    void *park;

    if (ram__slot_alloc(ram, size, &off) != 0) {
        ram->prep_size = 0;     /* retried when a page takes a fresh slot */
        return;
    }
    ram->used -= size;          /* prepared, not a page's yet */
    ram->npages--;
    ram->prepared += size;
    if (ram__park_get(ram, size, &park) != 0) {
        prep_slot_free(ram, off, size);
        ram->prep_size = 0;
        return;
    }
    ram->refcnt++;
    ram->nprep_busy++;
    virt_unlock();

    int map_err = 0, err = prep_fill(ram, off, size);
    if (!err)
        err = map_err = ram__map_slot_at(ram, park, off, size, PROT_READ | PROT_WRITE, 0);

    virt_lock();
    ram->nprep_busy--;
    if (err == 0 && ram->refcnt > 1 && ram->prep_size == size &&
        ram->used + ram->direct + ram->prepared <= ram->capacity) {
        ram->prep[ram->nprep].off = off;
        ram->prep[ram->nprep].park = park;
        ram->prep[ram->nprep].size = size;
        ram->nprep++;
    } else {
        if (!map_err)
            ram__park_release(ram, park, size);
        /* else a failed MAP_FIXED may have unmapped the park: forget it */
        prep_slot_free(ram, off, size);
        if (err)
            ram->prep_size = 0;     /* out of memory: stop until asked again */
    }
    BUG_ON(pthread_cond_broadcast(&prep_done_cond) != 0);
    if (--ram->refcnt == 0)
        ram__free(ram);
}

int ram__prep_wait(RAM *ram, size_t size, int may_take)
{
    if (ram->nprep_busy == 0)
        return 0;
    if (ram__has_room(ram, size)) {
        if (!may_take || ram->prep_size != size)
            return 0;
        for (size_t i = 0; i < ram->nprep; i++) {
            if (ram->prep[i].size == size)
                return 0;
        }
    }
    /* else the room is (also) in the slot being prepared: once ready, it
     * can be given back or taken */
    virt__wait_cond(&prep_done_cond);
    return 1;
}

static void *prep_main(void *arg)
{
    sigset_t all;

    (void)arg;
    sigfillset(&all);
    BUG_ON(pthread_sigmask(SIG_BLOCK, &all, NULL) != 0);
    virt_lock();
    for (;;) {
        RAM *ram = prep_unsupported ? NULL : prep_pick();
        if (ram)
            prep_one(ram);
        else
            virt__wait_cond(&prep_cond);
    }
    return NULL;
}

void ram__prep_want(RAM *ram, size_t size)
{
    if (size < VIRT_PT_SPAN || prep_unsupported)
        return;
    ram->prep_size = size;
    if (!prep_wanted(ram))
        return;
    if (!prep_started) {
        pthread_attr_t attr;
        pthread_t thread;
        int err = pthread_attr_init(&attr);
        if (!err)
            err = pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        if (!err)
            err = pthread_create(&thread, &attr, prep_main, NULL);
        (void)pthread_attr_destroy(&attr);
        if (err) {
            prep_unsupported = 1;
            return;
        }
        (void)pthread_setname_np(thread, "zbigarray-prep");     /* cosmetic */
        prep_started = 1;
    }
    BUG_ON(pthread_cond_signal(&prep_cond) != 0);
}

int ram__prep_take(RAM *ram, size_t size, size_t *off, void **park)
{
    for (size_t i = 0; i < ram->nprep; i++) {
        if (ram->prep[i].size != size)
            continue;
        *off = ram->prep[i].off;
        *park = ram->prep[i].park;
        /* Oldest first: keep them in the order they were prepared. */
        for (size_t j = i + 1; j < ram->nprep; j++)
            ram->prep[j - 1] = ram->prep[j];
        ram->nprep--;
        ram->prepared -= size;
        ram->used += size;
        ram->npages++;
        return 1;
    }
    return 0;
}

int ram__prep_release_one(RAM *ram)
{
    if (ram->nprep == 0)
        return 0;
    RAMPrep *p = &ram->prep[--ram->nprep];
    ram__park_release(ram, p->park, p->size);
    prep_slot_free(ram, p->off, p->size);
    return 1;
}

void ram__prep_release_all(RAM *ram)
{
    /* Until a page takes a fresh slot again; one being prepared now is
     * given back when done. */
    ram->prep_size = 0;
    while (ram__prep_release_one(ram))
        ;
}

void ram__prep_fini(RAM *ram)
{
    /* The memfd goes next: unmapping is all the memory needs. */
    for (size_t i = 0; i < ram->nprep; i++)
        BUG_ON(munmap(ram->prep[i].park, ram->prep[i].size) != 0);
    ram->nprep = 0;
    ram->prepared = 0;
    ram->prep_size = 0;
}

void ram__prep_forget_in_child(RAM *ram)
{
    /* A preparer at work in the parent holds a reference no thread here
     * will give back.  The range it was mapping stays mapped here, unknown
     * (at most one): it shows the parent's memory, which nothing here
     * touches, and is gone with the child. */
    ram->refcnt -= (int)ram->nprep_busy;
    ram->nprep_busy = 0;
    ram__prep_fini(ram);
}

void ram__prep_reinit_in_child(void)
{
    prep_started = 0;
    BUG_ON(pthread_cond_init(&prep_cond, NULL) != 0);
    BUG_ON(pthread_cond_init(&prep_done_cond, NULL) != 0);
}
