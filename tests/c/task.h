/* A tiny unit-test framework for the C core (no Python, no dependencies).
 *
 *     TEST(pagemap_grows) { ... CHECK_EQ(pm.count, 3); ... }
 *
 * TEST() defines a test and registers it (from a constructor, so no central
 * list to keep in step).  The runner (runner.c) runs every test in a forked
 * child of its own: a crash, a sanitizer report or a leak fails that test
 * only, and no test sees the global state (fault handler, default RAM) that
 * an earlier one left.  A test passes when its body returns; the CHECK
 * macros end the child on the first failure, printing where and why.
 */
#ifndef ZBIGARRAY_TESTS_TASK_H
#define ZBIGARRAY_TESTS_TASK_H

#include <string.h>
#include <sys/wait.h>

typedef struct TestCase {
    const char      *name;
    void           (*fn)(void);
    const char      *file;
    int              line;
    struct TestCase *next;
} TestCase;

/* Called from TEST()'s constructor; the runner owns the list. */
void test__register(TestCase *tc);

/* Print "file:line: message" and end the test (the forked child) as failed. */
__attribute__((noreturn, format(printf, 3, 4)))
void test__fail(const char *file, int line, const char *fmt, ...);

/* Run @fn(@arg) in a forked child and return its wait status (as waitpid
 * gives it).  For behaviour whose expected result is a crash or an _exit from
 * an error handler.  The child exits 0 if @fn returns. */
int test_run_forked(void (*fn)(void *arg), void *arg);

/* Name of a signal, or of an exit status, for failure messages. */
const char *test_status_str(int status, char *buf, size_t bufsize);

#define TEST(name)                                                          \
    static void test_##name(void);                                          \
    static TestCase test__case_##name = {                                   \
        #name, test_##name, __FILE__, __LINE__, NULL };                     \
    __attribute__((constructor)) static void test__reg_##name(void)         \
    {                                                                       \
        test__register(&test__case_##name);                                 \
    }                                                                       \
    static void test_##name(void)

#define CHECK(cond) do {                                                    \
        if (!(cond))                                                        \
            test__fail(__FILE__, __LINE__, "CHECK(%s) failed", #cond);      \
    } while (0)

/* Integer equality; both sides are shown as signed and unsigned. */
#define CHECK_EQ(a, b) do {                                                 \
        unsigned long long a_ = (unsigned long long)(a);                    \
        unsigned long long b_ = (unsigned long long)(b);                    \
        if (a_ != b_)                                                       \
            test__fail(__FILE__, __LINE__,                                  \
                       "CHECK_EQ(%s, %s) failed: %lld (%#llx) != %lld (%#llx)", \
                       #a, #b, (long long)a_, a_, (long long)b_, b_);       \
    } while (0)

#define CHECK_NE(a, b) do {                                                 \
        unsigned long long a_ = (unsigned long long)(a);                    \
        unsigned long long b_ = (unsigned long long)(b);                    \
        if (a_ == b_)                                                       \
            test__fail(__FILE__, __LINE__,                                  \
                       "CHECK_NE(%s, %s) failed: both %lld", #a, #b,        \
                       (long long)a_);                                      \
    } while (0)

/* @expr returns 0 (or a non-negative count) on success, -errno on failure. */
#define CHECK_OK(expr) do {                                                 \
        long r_ = (long)(expr);                                             \
        if (r_ < 0)                                                         \
            test__fail(__FILE__, __LINE__, "%s failed: %ld (%s)", #expr,    \
                       r_, strerror((int)-r_));                             \
    } while (0)

/* @expr fails with exactly @err (a negative errno). */
#define CHECK_ERR(expr, err) do {                                           \
        long r_ = (long)(expr);                                             \
        if (r_ != (long)(err))                                              \
            test__fail(__FILE__, __LINE__, "%s: expected %s (%ld), got %ld (%s)", \
                       #expr, #err, (long)(err), r_,                        \
                       r_ < 0 ? strerror((int)-r_) : "success");            \
    } while (0)

/* @status (from test_run_forked) is death by signal @sig. */
#define CHECK_SIGNALED(status, sig) do {                                    \
        int s_ = (status);                                                  \
        char b_[64];                                                        \
        if (!(WIFSIGNALED(s_) && WTERMSIG(s_) == (sig)))                    \
            test__fail(__FILE__, __LINE__, "expected death by %s, got %s",  \
                       #sig, test_status_str(s_, b_, sizeof b_));           \
    } while (0)

/* @status (from test_run_forked) is a normal exit with @code. */
#define CHECK_EXITED(status, code) do {                                     \
        int s_ = (status);                                                  \
        char b_[64];                                                        \
        if (!(WIFEXITED(s_) && WEXITSTATUS(s_) == (code)))                  \
            test__fail(__FILE__, __LINE__, "expected exit %d, got %s",      \
                       (code), test_status_str(s_, b_, sizeof b_));         \
    } while (0)

#endif /* ZBIGARRAY_TESTS_TASK_H */
