/* Test runner: runs every registered TEST() (or those whose name contains one
 * of the arguments), each in a forked child with a time limit, and ends with
 * the line "N passed, M failed" that CI reads.  Exit status 0 iff all passed.
 */
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "task.h"

/* No test may run longer: a hang is a failure, not a stuck CI run. */
#define TEST_TIMEOUT_S 60

/* Sanitizer defaults for running the binary by hand; the environment
 * (ASAN_OPTIONS, UBSAN_OPTIONS, set by the Makefile) overrides them.  ASan
 * must not claim SIGSEGV: the core's fault handler serves page faults, and a
 * fault that is not ours must die by SIGSEGV as it would without us. */
const char *__asan_default_options(void);
const char *__asan_default_options(void)
{
    return "handle_segv=0:halt_on_error=1:detect_leaks=1";
}

const char *__ubsan_default_options(void);
const char *__ubsan_default_options(void)
{
    return "halt_on_error=1:print_stacktrace=1";
}

static TestCase *test_list;

void test__register(TestCase *tc)
{
    tc->next = test_list;
    test_list = tc;
}

void test__fail(const char *file, int line, const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "%s:%d: ", file, line);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    fflush(stderr);
    /* _exit: no atexit handlers (LeakSanitizer would add noise about what
     * the failed test left allocated). */
    _exit(1);
}

static int test_wait(pid_t pid)
{
    int status;

    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) {
            perror("waitpid");
            exit(2);
        }
    }
    return status;
}

int test_run_forked(void (*fn)(void *arg), void *arg)
{
    pid_t pid;

    fflush(stdout);
    fflush(stderr);
    pid = fork();
    if (pid < 0) {
        perror("fork");
        exit(2);
    }
    if (pid == 0) {
        fn(arg);
        fflush(stdout);
        _exit(0);
    }
    return test_wait(pid);
}

const char *test_status_str(int status, char *buf, size_t bufsize)
{
    if (WIFEXITED(status))
        snprintf(buf, bufsize, "exit status %d", WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        snprintf(buf, bufsize, "signal %d (%s)%s", WTERMSIG(status),
                 strsignal(WTERMSIG(status)),
                 WTERMSIG(status) == SIGALRM ? ": timed out" : "");
    else
        snprintf(buf, bufsize, "wait status %#x", status);
    return buf;
}

/* Source order: by file, then line. */
static int test_cmp(const void *a, const void *b)
{
    const TestCase *x = *(TestCase *const *)a, *y = *(TestCase *const *)b;
    int c = strcmp(x->file, y->file);

    return c != 0 ? c : (x->line > y->line) - (x->line < y->line);
}

static int test_selected(const TestCase *tc, int argc, char **argv)
{
    int i;

    if (argc <= 1)
        return 1;
    for (i = 1; i < argc; i++) {
        if (strstr(tc->name, argv[i]) != NULL)
            return 1;
    }
    return 0;
}

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
    TestCase **tests, *tc;
    size_t n = 0, i;
    int npassed = 0, nfailed = 0;

    for (tc = test_list; tc != NULL; tc = tc->next)
        n++;
    tests = calloc(n ? n : 1, sizeof(*tests));
    if (tests == NULL) {
        perror("calloc");
        return 2;
    }
    for (i = 0, tc = test_list; tc != NULL; tc = tc->next)
        tests[i++] = tc;
    qsort(tests, n, sizeof(*tests), test_cmp);

    /* Unbuffered-ish output, so that a child's messages and ours interleave
     * in order. */
    setvbuf(stdout, NULL, _IOLBF, 0);

    for (i = 0; i < n; i++) {
        double t0;
        pid_t pid;
        int status;
        char why[96];

        tc = tests[i];
        if (!test_selected(tc, argc, argv))
            continue;
        t0 = now_s();
        fflush(stdout);
        fflush(stderr);
        pid = fork();
        if (pid < 0) {
            perror("fork");
            return 2;
        }
        if (pid == 0) {
            alarm(TEST_TIMEOUT_S);
            tc->fn();
            fflush(stdout);
            exit(0);    /* exit, not _exit: LeakSanitizer runs at exit */
        }
        status = test_wait(pid);
        if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
            npassed++;
            printf("PASS  %-48s %7.3f s\n", tc->name, now_s() - t0);
        } else {
            nfailed++;
            printf("FAIL  %-48s %7.3f s  (%s)\n", tc->name, now_s() - t0,
                   test_status_str(status, why, sizeof why));
        }
    }
    free(tests);

    printf("%d passed, %d failed\n", npassed, nfailed);
    return nfailed == 0 && npassed > 0 ? 0 : 1;
}
