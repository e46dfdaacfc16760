/* blocked [SLEEP_MS]
 *
 * Three threads that spend their time blocked in system calls:
 *   sleeper: nanosleep(SLEEP_MS, default 200) in a loop; each sleep is retried
 *            with the remaining time on EINTR and must last at least
 *            SLEEP_MS in total; it stops when the other two are done.
 *   reader:  read() on stdin until it has received the line "go", prints
 *            "reader got go", then reads on until end of file.
 *   poller:  poll() on stdin until POLLHUP (every writer closed); POLLIN alone
 *            (the "go" line, which belongs to the reader) just polls again.
 * The main thread waits until /proc/self/task/TID/syscall shows each thread
 * inside its system call, prints "ready", and joins them (blocked in futex).
 * Protocol for the test: after "ready" (and after the restore) write "go\n" to
 * stdin, wait for "reader got go", then close stdin.  Verdict: "blocked ok ..."
 * and exit 0, or "FAIL: ..." and exit 1.
 */
#include "common.h"
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/syscall.h>

static long sleep_ms_each;
static atomic_int stop_sleeper;
static atomic_int tids[3];
static long sleeps, interrupts;
static int poll_wakeups;

static void *sleeper(void *arg)
{
    (void)arg;
    atomic_store(&tids[0], (int)syscall(SYS_gettid));
    while (!atomic_load(&stop_sleeper)) {
        double t0 = now_mono();
        interrupts += sleep_ms(sleep_ms_each);
        double dt = now_mono() - t0;
        /* nanosleep never returns early; 1 ms slack for clock rounding */
        CHECK(dt >= sleep_ms_each / 1000.0 - 0.001,
              "sleep of %ld ms ended after %.3f s", sleep_ms_each, dt);
        sleeps++;
    }
    return NULL;
}

static void *reader(void *arg)
{
    (void)arg;
    atomic_store(&tids[1], (int)syscall(SYS_gettid));
    char buf[256];
    size_t have = 0;
    int got_go = 0;
    for (;;) {
        if (have == sizeof buf)
            fail("reader: no newline in %zu bytes", have);
        ssize_t r = read(0, buf + have, sizeof buf - have);
        if (r < 0 && errno == EINTR)
            continue;
        CHECK(r >= 0, "reader: read: %s", strerror(errno));
        if (r == 0)
            break;
        have += (size_t)r;
        if (!got_go && memchr(buf, '\n', have)) {
            CHECK(have == 3 && !memcmp(buf, "go\n", 3),
                  "reader: expected \"go\\n\", got %zu bytes \"%.*s\"", have, (int)have, buf);
            got_go = 1;
            say("reader got go");
            have = 0;
        }
    }
    CHECK(got_go, "reader: end of file before \"go\"");
    CHECK(have == 0, "reader: %zu unexpected bytes after \"go\"", have);
    say("reader eof");
    return NULL;
}

static void *poller(void *arg)
{
    (void)arg;
    atomic_store(&tids[2], (int)syscall(SYS_gettid));
    for (;;) {
        struct pollfd p = { .fd = 0, .events = POLLIN };
        int r = poll(&p, 1, -1);
        if (r < 0 && errno == EINTR)
            continue;
        CHECK(r == 1, "poller: poll returned %d (%s)", r, strerror(errno));
        CHECK(!(p.revents & (POLLERR | POLLNVAL)), "poller: revents %#x", p.revents);
        poll_wakeups++;
        if (p.revents & POLLHUP)
            break;
        sleep_ms(1); /* the data is the reader's: let it take it */
    }
    say("poller hup");
    return NULL;
}

/* Is thread TID inside one of the given system calls right now? */
static int in_syscall(int tid, const int *nrs, int n)
{
    char path[64], buf[256];
    snprintf(path, sizeof path, "/proc/self/task/%d/syscall", tid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    int nr = -1;
    if (fgets(buf, sizeof buf, f))
        nr = atoi(buf);
    fclose(f);
    for (int i = 0; i < n; i++)
        if (nr == nrs[i])
            return 1;
    return 0;
}

int main(int argc, char **argv)
{
    sleep_ms_each = arg_long(argc, argv, 1, 200);
    pthread_t th[3];
    void *(*fn[3])(void *) = { sleeper, reader, poller };
    for (int i = 0; i < 3; i++)
        CHECK(pthread_create(&th[i], NULL, fn[i], NULL) == 0, "pthread_create");

    /* nanosleep is clock_nanosleep (230) in current glibc; poll may be ppoll */
    static const int nr_sleep[] = { 35, 230 }, nr_read[] = { 0 }, nr_poll[] = { 7, 271 };
    const int *nrs[3] = { nr_sleep, nr_read, nr_poll };
    const int nn[3] = { 2, 1, 2 };
    for (int i = 0; i < 3; i++) {
        while (!atomic_load(&tids[i]) || !in_syscall(atomic_load(&tids[i]), nrs[i], nn[i]))
            sleep_ms(1);
    }
    say("threads sleeper=%d reader=%d poller=%d", tids[0], tids[1], tids[2]);
    say("ready");

    CHECK(pthread_join(th[1], NULL) == 0, "join reader");
    CHECK(pthread_join(th[2], NULL) == 0, "join poller");
    atomic_store(&stop_sleeper, 1);
    CHECK(pthread_join(th[0], NULL) == 0, "join sleeper");
    say("blocked ok sleeps=%ld interrupted=%ld poll_wakeups=%d", sleeps, interrupts, poll_wakeups);
    return 0;
}
