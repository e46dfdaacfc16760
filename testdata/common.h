/* Shared helpers for the ckpt test programs (header-only, C11 + GNU). */
#ifndef CKPT_TESTDATA_COMMON_H
#define CKPT_TESTDATA_COMMON_H

#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Print a line to stdout and flush it: the tests read stdout line by line.
 * Thread-safe: the stream lock is held for the whole line. */
__attribute__((format(printf, 1, 2))) static inline void say(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    flockfile(stdout);
    vprintf(fmt, ap);
    fputc('\n', stdout);
    fflush(stdout);
    funlockfile(stdout);
    va_end(ap);
}

/* Report a failed check on stdout ("FAIL: ...") and stderr, exit 1. */
__attribute__((format(printf, 1, 2), noreturn)) static inline void fail(const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    flockfile(stdout);
    printf("FAIL: %s\n", buf);
    fflush(stdout);
    funlockfile(stdout);
    fprintf(stderr, "FAIL: %s\n", buf);
    exit(1);
}

#define CHECK(cond, ...) do { if (!(cond)) fail(__VA_ARGS__); } while (0)

static inline double now_mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Sleep the full duration: a checkpoint may interrupt nanosleep with EINTR,
 * exactly like a signal; retry with the remaining time as real programs do.
 * Returns how many times the sleep was interrupted. */
static inline int sleep_ms(long ms)
{
    struct timespec req = { ms / 1000, (ms % 1000) * 1000000L }, rem;
    int interrupted = 0;
    while (nanosleep(&req, &rem) != 0) {
        if (errno != EINTR)
            fail("nanosleep: %s", strerror(errno));
        interrupted++;
        req = rem;
    }
    return interrupted;
}

static inline int file_exists(const char *path)
{
    return access(path, F_OK) == 0;
}

/* Block until PATH exists, polling every POLL_MS milliseconds. */
static inline void wait_for_file(const char *path, long poll_ms)
{
    while (!file_exists(path))
        sleep_ms(poll_ms);
}

static inline long arg_long(int argc, char **argv, int i, long dflt)
{
    if (argc <= i)
        return dflt;
    char *end;
    errno = 0;
    long v = strtol(argv[i], &end, 0);
    if (errno || *end || end == argv[i])
        fail("bad numeric argument %d: '%s'", i, argv[i]);
    return v;
}

#endif
