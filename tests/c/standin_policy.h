/* A fault error policy for tests: count and remember the failures reported,
 * and let the core show a stand-in (as the Python layer's policy does when
 * it raises in the faulting thread).  policy_begin() installs it with the
 * counters reset; policy_end() reports this thread's failure and restores
 * the default policy. */
#ifndef ZBIGARRAY_TESTS_STANDIN_POLICY_H
#define ZBIGARRAY_TESTS_STANDIN_POLICY_H

#include <string.h>

#include "virtmem.h"

static struct {
    int      n;
    BigFile *file;
    blk_t    blk;
    int      err;
    int      first_err;
} reports;

static int standin_policy(BigFile *file, blk_t blk, int err, const char *what)
{
    (void)what;
    if (reports.n++ == 0)
        reports.first_err = err;
    reports.file = file;
    reports.blk = blk;
    reports.err = err;
    return VIRT_FAULT_STANDIN;
}

static inline void policy_begin(void)
{
    memset(&reports, 0, sizeof reports);
    virt_set_fault_error_handler(standin_policy);
}

static inline void policy_end(void)
{
    virt_fault_reported();
    virt_set_fault_error_handler(NULL);
}

#endif /* ZBIGARRAY_TESTS_STANDIN_POLICY_H */
