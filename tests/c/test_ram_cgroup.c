/* The default RAM capacity under a cgroup memory limit (ram.c): each test
 * builds a fake /proc/self/cgroup and cgroup mount in a temporary directory
 * and reads it with ram__cgroup_limit. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "task.h"
#include "virtmem_int.h"

#define GiB ((uint64_t)1 << 30)
#define MiB ((uint64_t)1 << 20)
#define V1_UNLIMITED ((uint64_t)9223372036854771712ULL)

/* A fake tree: <dir>/cgroup stands for /proc/self/cgroup, <dir>/fs for
 * /sys/fs/cgroup. */
typedef struct {
    char dir[PATH_MAX];
    char proc[PATH_MAX];
    char root[PATH_MAX];
} Tree;

static void tree_init(Tree *t)
{
    const char *tmp = getenv("TMPDIR");

    int n;

    n = snprintf(t->dir, sizeof t->dir, "%s/zbigarray-cgroup-XXXXXX",
                 tmp && *tmp ? tmp : "/tmp");
    CHECK(n > 0 && (size_t)n < sizeof t->dir - 16);
    CHECK(mkdtemp(t->dir) != NULL);
    n = snprintf(t->proc, sizeof t->proc, "%.4000s/cgroup", t->dir);
    CHECK(n > 0 && (size_t)n < sizeof t->proc);
    n = snprintf(t->root, sizeof t->root, "%.4000s/fs", t->dir);
    CHECK(n > 0 && (size_t)n < sizeof t->root);
}

static int rm_entry(const char *path, const struct stat *st, int flag,
                    struct FTW *ftw)
{
    (void)st; (void)flag; (void)ftw;
    return remove(path);
}

static void tree_fini(Tree *t)
{
    CHECK_EQ(nftw(t->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS), 0);
}

/* mkdir -p of every directory in @path (relative to @t->dir), then, unless
 * @content is NULL, write @content to the file @path itself. */
static void tree_put(Tree *t, const char *path, const char *content)
{
    char full[PATH_MAX];
    size_t base = strlen(t->dir) + 1, i;
    FILE *f;

    CHECK((size_t)snprintf(full, sizeof full, "%s/%s", t->dir, path) <
          sizeof full);
    for (i = base; full[i] != '\0'; i++) {
        if (full[i] == '/') {
            full[i] = '\0';
            CHECK(mkdir(full, 0755) == 0 || errno == EEXIST);
            full[i] = '/';
        }
    }
    if (content == NULL) {
        CHECK_OK(mkdir(full, 0755));
        return;
    }
    f = fopen(full, "w");
    CHECK(f != NULL);
    CHECK(fputs(content, f) >= 0);
    CHECK_EQ(fclose(f), 0);
}

static uint64_t tree_limit(Tree *t)
{
    return ram__cgroup_limit(t->proc, t->root);
}

TEST(ram_cgroup_v2_nested_limits_take_the_smallest)
{
    Tree t;

    tree_init(&t);
    tree_put(&t, "cgroup", "0::/a/b/c\n");
    tree_put(&t, "fs/a/memory.max", "2147483648\n");
    tree_put(&t, "fs/a/b/memory.max", "max\n");
    tree_put(&t, "fs/a/b/c/memory.max", "4294967296\n");
    CHECK_EQ(tree_limit(&t), 2 * GiB);      /* the parent's, though higher up */

    tree_put(&t, "fs/a/b/c/memory.max", "1073741824\n");
    CHECK_EQ(tree_limit(&t), 1 * GiB);      /* the leaf's, now smaller */
    tree_fini(&t);
}

TEST(ram_cgroup_v2_max_is_no_limit)
{
    Tree t;

    tree_init(&t);
    tree_put(&t, "cgroup", "0::/a/b\n");
    tree_put(&t, "fs/a/memory.max", "max\n");
    tree_put(&t, "fs/a/b/memory.max", "max\n");
    CHECK_EQ(tree_limit(&t), UINT64_MAX);
    tree_fini(&t);
}

/* A container with a cgroup namespace sees itself as "0::/" and its limit
 * at the mount's root; a trailing slash changes nothing. */
TEST(ram_cgroup_v2_limit_at_the_root)
{
    Tree t;

    tree_init(&t);
    tree_put(&t, "cgroup", "0::/\n");
    tree_put(&t, "fs/memory.max", "536870912");     /* no newline */
    CHECK_EQ(tree_limit(&t), 512 * MiB);
    tree_put(&t, "cgroup", "0::/a/\n");
    CHECK_EQ(tree_limit(&t), 512 * MiB);
    tree_fini(&t);
}

TEST(ram_cgroup_v1_memory_controller)
{
    Tree t;

    tree_init(&t);
    tree_put(&t, "cgroup",
             "12:pids:/docker/x\n"
             "4:cpu,cpuacct:/docker/x\n"
             "3:blkio,memory:/docker/x\n"
             "1:name=systemd:/docker/x\n"
             "0::/\n");
    tree_put(&t, "fs/memory/memory.limit_in_bytes", "9223372036854771712\n");
    tree_put(&t, "fs/memory/docker/memory.limit_in_bytes",
             "9223372036854771712\n");
    tree_put(&t, "fs/memory/docker/x/memory.limit_in_bytes", "805306368\n");
    /* limits of other controllers' trees do not count */
    tree_put(&t, "fs/pids/docker/x/memory.limit_in_bytes", "4096\n");
    tree_put(&t, "fs/docker/x/memory.limit_in_bytes", "4096\n");
    CHECK_EQ(tree_limit(&t), 768 * MiB);
    tree_fini(&t);
}

/* v1's "unlimited" is a huge number: the min with physical memory drops it. */
TEST(ram_cgroup_v1_unlimited)
{
    Tree t;

    tree_init(&t);
    tree_put(&t, "cgroup", "4:memory:/user.slice\n");
    tree_put(&t, "fs/memory/user.slice/memory.limit_in_bytes",
             "9223372036854771712\n");
    CHECK_EQ(tree_limit(&t), V1_UNLIMITED);
    CHECK_EQ(ram__default_capacity_for(64 * GiB, tree_limit(&t)), 16 * GiB);
    tree_fini(&t);
}

/* A v1 container without a cgroup namespace: /proc/self/cgroup names the
 * host's path, the mount shows only the container's cgroup. */
TEST(ram_cgroup_v1_container_mount)
{
    Tree t;

    tree_init(&t);
    tree_put(&t, "cgroup", "9:memory:/docker/0123abcd\n");
    tree_put(&t, "fs/memory/memory.limit_in_bytes", "2147483648\n");
    CHECK_EQ(tree_limit(&t), 2 * GiB);
    tree_fini(&t);
}

/* Hybrid: v1 memory controller and a v2 line; the smaller limit wins. */
TEST(ram_cgroup_v1_and_v2_together)
{
    Tree t;

    tree_init(&t);
    tree_put(&t, "cgroup", "0::/s\n5:memory:/s\n");
    tree_put(&t, "fs/s/memory.max", "3221225472\n");
    tree_put(&t, "fs/memory/s/memory.limit_in_bytes", "1073741824\n");
    CHECK_EQ(tree_limit(&t), 1 * GiB);
    tree_put(&t, "fs/s/memory.max", "268435456\n");
    CHECK_EQ(tree_limit(&t), 256 * MiB);
    tree_fini(&t);
}

TEST(ram_cgroup_missing_files_mean_no_limit)
{
    Tree t;

    tree_init(&t);
    CHECK_EQ(tree_limit(&t), UINT64_MAX);   /* no /proc/self/cgroup at all */
    tree_put(&t, "cgroup", "0::/a/b\n4:memory:/a/b\n");
    CHECK_EQ(tree_limit(&t), UINT64_MAX);   /* no mount */
    tree_put(&t, "fs/a/b", NULL);
    tree_put(&t, "fs/memory/a/b", NULL);
    CHECK_EQ(tree_limit(&t), UINT64_MAX);   /* directories, no files */
    tree_put(&t, "cgroup", "");
    CHECK_EQ(tree_limit(&t), UINT64_MAX);   /* empty */
    tree_fini(&t);
}

TEST(ram_cgroup_garbage_means_no_limit)
{
    static const char *const bad[] = {
        "", "\n", "lots\n", "12abc\n", "-1\n", " 123\n", "0x1000\n",
        "99999999999999999999999\n", "max max\n", "1 2\n",
    };
    size_t i;
    Tree t;

    tree_init(&t);
    tree_put(&t, "cgroup", "0::/a\n");
    for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        tree_put(&t, "fs/a/memory.max", bad[i]);
        CHECK_EQ(tree_limit(&t), UINT64_MAX);
    }
    /* unreadable: a directory where the file should be (EISDIR) */
    tree_put(&t, "fs/memory.max", NULL);
    CHECK_EQ(tree_limit(&t), UINT64_MAX);

    /* lines that do not parse are skipped, the good one still counts */
    tree_put(&t, "fs/a/memory.max", "1073741824\n");
    tree_put(&t, "cgroup",
             "garbage\n"
             "4:memory\n"               /* no path */
             "4:memory:relative\n"      /* not absolute */
             "0::\n"
             ":::\n"
             "\n"
             "0::/a");                  /* last line, no newline */
    CHECK_EQ(tree_limit(&t), 1 * GiB);
    tree_fini(&t);
}

/* A cgroup path longer than PATH_MAX is skipped, not truncated. */
TEST(ram_cgroup_path_too_long)
{
    size_t n = PATH_MAX + 100;
    char *line = malloc(n + 8);
    Tree t;

    CHECK(line != NULL);
    memcpy(line, "0::/", 4);
    memset(line + 4, 'a', n);
    memcpy(line + 4 + n, "\n", 2);
    tree_init(&t);
    tree_put(&t, "cgroup", line);
    tree_put(&t, "fs/memory.max", "1073741824\n");
    CHECK_EQ(tree_limit(&t), UINT64_MAX);
    free(line);
    tree_fini(&t);
}

TEST(ram_default_capacity_for_takes_a_quarter_of_the_smaller)
{
    size_t ps = virt_os_pagesize();

    /* the case this is for: a 2 GiB container on a 64 GiB host */
    CHECK_EQ(ram__default_capacity_for(64 * GiB, 2 * GiB), 512 * MiB);
    CHECK_EQ(ram__default_capacity_for(64 * GiB, UINT64_MAX), 16 * GiB);
    CHECK_EQ(ram__default_capacity_for(8 * GiB, 64 * GiB), 2 * GiB);
    CHECK_EQ(ram__default_capacity_for(8 * GiB, V1_UNLIMITED), 2 * GiB);
    /* never below one page */
    CHECK_EQ(ram__default_capacity_for(64 * GiB, 4096), ps);
    CHECK_EQ(ram__default_capacity_for(64 * GiB, 0), ps);
}
