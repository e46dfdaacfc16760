/* pidcheck OUTFILE STOPFILE [NTHREADS] [INTERVAL_MS]
 *
 * A counter that watches its own PID and TIDs, for restores into a new PID
 * namespace.  NTHREADS (default 2) worker threads each record their TID.
 * Prints "ids <pid> <tid0> <tid1> ..." (getpid() and each worker's gettid())
 * at start.  The main thread then counts 1, 2, 3, ... like `counter`:
 * appends "<n> <pid>\n" to OUTFILE (opened once with O_APPEND), prints "<n>"
 * on stdout, and "ready" after the third; every INTERVAL_MS (default 50) ms.
 * On every iteration it checks that getpid() and gettid() of the main thread
 * still equal the PID it started with, that /proc/self/stat and the
 * /proc/self link name that same PID (so the /proc the process sees belongs
 * to its own PID namespace), and that /proc/self/task holds each worker's
 * TID; each worker checks in the same way, every 20 ms, that gettid() is
 * unchanged and that /proc/thread-self/stat names it.
 * When STOPFILE exists the workers stop and report the TID gettid() returns
 * then, and the program prints "ids <pid> <tid0> ..." again (fresh values),
 * then "pidcheck ok n=<last> pid=<pid> threads=<NTHREADS>" and exits 0; on a
 * failed check "FAIL: ..." and exit 1.
 */
#include "common.h"
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/stat.h>
#include <sys/syscall.h>

#define MAXT 16

static int nthreads;
static atomic_int stopping;
static int start_tid[MAXT];
static int end_tid[MAXT];

static int sys_gettid(void)
{
    return (int)syscall(SYS_gettid);
}

/* The first field of a /proc/.../stat file, or -1. */
static long stat_pid(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    char buf[64];
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = 0;
    return strtol(buf, NULL, 10);
}

static void check_self(pid_t pid, int tasks)
{
    CHECK(getpid() == pid, "getpid() is %d, was %d", (int)getpid(), (int)pid);
    CHECK(sys_gettid() == pid, "main thread: gettid() is %d, pid %d", sys_gettid(),
          (int)pid);
    long sp = stat_pid("/proc/self/stat");
    CHECK(sp == pid, "/proc/self/stat says pid %ld, getpid() is %d", sp, (int)pid);
    char link[32];
    ssize_t len = readlink("/proc/self", link, sizeof link - 1);
    CHECK(len > 0, "readlink /proc/self: %s", strerror(errno));
    link[len] = 0;
    CHECK(strtol(link, NULL, 10) == pid, "/proc/self links to %s, getpid() is %d", link,
          (int)pid);
    for (int i = 0; tasks && i < nthreads; i++) {
        char path[64];
        snprintf(path, sizeof path, "/proc/self/task/%d", start_tid[i]);
        CHECK(file_exists(path), "%s does not exist (worker %d)", path, i);
    }
}

static void *worker(void *arg)
{
    int id = (int)(long)arg;
    int tid = start_tid[id];
    while (!atomic_load(&stopping)) {
        int now = sys_gettid();
        CHECK(now == tid, "worker %d: gettid() is %d, was %d", id, now, tid);
        long sp = stat_pid("/proc/thread-self/stat");
        CHECK(sp == tid, "worker %d: /proc/thread-self/stat says %ld, gettid() is %d", id,
              sp, tid);
        sleep_ms(20);
    }
    end_tid[id] = sys_gettid();
    return NULL;
}

static atomic_int started;

static void *worker_start(void *arg)
{
    int id = (int)(long)arg;
    start_tid[id] = sys_gettid();
    atomic_fetch_add(&started, 1);
    return worker(arg);
}

static void print_ids(pid_t pid, const int *tids)
{
    char line[32 + 12 * MAXT];
    int len = snprintf(line, sizeof line, "ids %d", (int)pid);
    for (int i = 0; i < nthreads; i++)
        len += snprintf(line + len, sizeof line - (size_t)len, " %d", tids[i]);
    say("%s", line);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s OUTFILE STOPFILE [NTHREADS] [INTERVAL_MS]\n", argv[0]);
        return 2;
    }
    const char *out = argv[1], *stop = argv[2];
    nthreads = (int)arg_long(argc, argv, 3, 2);
    long interval = arg_long(argc, argv, 4, 50);
    CHECK(nthreads >= 0 && nthreads <= MAXT, "0..%d threads", MAXT);

    int fd = open(out, O_WRONLY | O_CREAT | O_APPEND, 0644);
    CHECK(fd >= 0, "open %s: %s", out, strerror(errno));
    const pid_t pid = getpid();

    pthread_t th[MAXT];
    for (int i = 0; i < nthreads; i++)
        CHECK(pthread_create(&th[i], NULL, worker_start, (void *)(long)i) == 0,
              "pthread_create");
    while (atomic_load(&started) < nthreads)
        sleep_ms(1);
    print_ids(pid, start_tid);

    long n;
    for (n = 1;; n++) {
        check_self(pid, 1);
        char line[64];
        int len = snprintf(line, sizeof line, "%ld %d\n", n, (int)pid);
        ssize_t w = write(fd, line, (size_t)len);
        CHECK(w == len, "write: %zd (%s)", w, strerror(errno));
        say("%ld", n);
        if (n == 3)
            say("ready");
        if (file_exists(stop))
            break;
        sleep_ms(interval);
    }

    atomic_store(&stopping, 1);
    for (int i = 0; i < nthreads; i++)
        CHECK(pthread_join(th[i], NULL) == 0, "pthread_join");
    check_self(pid, 0);
    print_ids(getpid(), end_tid);
    for (int i = 0; i < nthreads; i++)
        CHECK(end_tid[i] == start_tid[i], "worker %d ended with TID %d, started with %d", i,
              end_tid[i], start_tid[i]);
    say("pidcheck ok n=%ld pid=%d threads=%d", n, (int)pid, nthreads);
    return 0;
}
