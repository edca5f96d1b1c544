/* Load buffers: the private scratch memory loadblk fills, copied into the
 * page's memfd slot with pwrite() when it returns.
 *
 * Why not let loadblk write the slot through a shared mapping (the RAM
 * window)?  Every OS page of a slot written that way takes a kernel fault,
 * and a slot without memory (fresh, or punched) is zeroed by the kernel
 * first: about 1 ms of faulting and zeroing per 2 MiB block, several times
 * the copy itself.  A pwrite() into tmpfs allocates the slot's memory
 * without zeroing what it overwrites whole and takes no fault; the load
 * buffer it copies from is reused, so its page-table entries are already
 * there.  The price is one more copy, from cache-warm memory.
 *
 * Buffers are kept for reuse in a small pool (at most LOADBUF_POOL_BYTES,
 * oldest first out), one per thread loading at a time; the pool has its own
 * lock, so this module may be used with or without the virtmem lock held. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "virtmem_int.h"

/* Enough for a few concurrent 2 MiB loads; bigger blocks get a buffer of
 * their own per load (their load costs far more than an mmap). */
#define LOADBUF_POOL_BYTES ((size_t)8 << 20)
#define LOADBUF_POOL_MAX   8

typedef struct LoadBuf {
    void   *addr;
    size_t  size;
} LoadBuf;

static pthread_mutex_t loadbuf_lock = PTHREAD_MUTEX_INITIALIZER;
static LoadBuf loadbuf_pool[LOADBUF_POOL_MAX];
static size_t  loadbuf_npool;
static size_t  loadbuf_pool_bytes;

/* The innermost load this thread runs loadblk for (loads nest when a
 * loadblk touches another block): where its buffer goes. */
static __thread LoadDest *loadbuf_current;

int virt__loadbuf_get(size_t size, void **out)
{
    pthread_mutex_lock(&loadbuf_lock);
    for (size_t i = loadbuf_npool; i-- > 0;) {
        if (loadbuf_pool[i].size == size) {
            *out = loadbuf_pool[i].addr;
            loadbuf_npool--;
            memmove(&loadbuf_pool[i], &loadbuf_pool[i + 1],
                    (loadbuf_npool - i) * sizeof loadbuf_pool[0]);
            loadbuf_pool_bytes -= size;
            pthread_mutex_unlock(&loadbuf_lock);
            return 0;
        }
    }
    pthread_mutex_unlock(&loadbuf_lock);

    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return -errno;
    *out = p;
    return 0;
}

void virt__loadbuf_put(void *buf, size_t size)
{
    LoadBuf dropped[LOADBUF_POOL_MAX];
    size_t ndropped = 0;

    if (size > LOADBUF_POOL_BYTES) {
        BUG_ON(munmap(buf, size) != 0);
        return;
    }
    /* Keep the newest: the oldest buffers go (their size is likely one no
     * longer loaded), so a load size in use keeps its buffer. */
    pthread_mutex_lock(&loadbuf_lock);
    while (loadbuf_npool == LOADBUF_POOL_MAX || loadbuf_pool_bytes + size > LOADBUF_POOL_BYTES) {
        dropped[ndropped++] = loadbuf_pool[0];
        loadbuf_pool_bytes -= loadbuf_pool[0].size;
        loadbuf_npool--;
        memmove(&loadbuf_pool[0], &loadbuf_pool[1], loadbuf_npool * sizeof loadbuf_pool[0]);
    }
    loadbuf_pool[loadbuf_npool].addr = buf;
    loadbuf_pool[loadbuf_npool].size = size;
    loadbuf_npool++;
    loadbuf_pool_bytes += size;
    pthread_mutex_unlock(&loadbuf_lock);
    while (ndropped > 0) {
        ndropped--;
        BUG_ON(munmap(dropped[ndropped].addr, dropped[ndropped].size) != 0);
    }
}

void virt__loadbuf_begin(LoadDest *dest, void *buf, size_t size, int memfd, size_t off)
{
    dest->buf = buf;
    dest->size = size;
    dest->memfd = memfd;
    dest->off = (off_t)off;
    dest->saved = 0;
    dest->outer = loadbuf_current;
    loadbuf_current = dest;
}

static int loadbuf_write(const LoadDest *dest)
{
    const char *p = dest->buf;
    size_t left = dest->size;
    off_t off = dest->off;

    while (left > 0) {
        ssize_t n = pwrite(dest->memfd, p, left, off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;      /* ENOSPC, ENOMEM: no memory for the page */
        }
        BUG_ON(n == 0);         /* tmpfs writes something or fails */
        p += n;
        off += n;
        left -= (size_t)n;
    }
    return 0;
}

int virt_loadbuf_save(void *buf)
{
    LoadDest *dest = loadbuf_current;
    if (!dest || dest->buf != buf || dest->saved)
        return -EINVAL;
    int err = dest->memfd < 0 ? 0 : loadbuf_write(dest);
    dest->saved = err == 0;
    return err;
}

int virt__loadbuf_end(LoadDest *dest, int r)
{
    int err = 0;
    BUG_ON(loadbuf_current != dest);
    loadbuf_current = dest->outer;
    if (dest->memfd < 0)
        ;                       /* loaded in place: nothing to copy */
    else if (r == 0)
        err = loadbuf_write(dest);
    else if (r == VIRT_BUF_KEPT && !dest->saved)
        err = -EIO;             /* kept without virt_loadbuf_save: not loaded */
    return err;
}
