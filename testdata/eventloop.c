/* eventloop DIR
 *
 * An event loop on one epoll instance that must keep working across a
 * checkpoint.  Before "ready" it sets up:
 *   - a timerfd ticking every 20 ms (in epoll, level-triggered);
 *   - an eventfd holding the count 42 and an EFD_SEMAPHORE eventfd holding 3,
 *     both non-blocking and NOT read before the checks;
 *   - a signalfd for SIGUSR1 (blocked), in epoll;
 *   - an inotify instance (in epoll, edge-triggered) watching DIR (wd 1) and
 *     DIR/sub (wd 3: wd 2, a watch on "/", was removed before the checkpoint);
 *   - a one-shot timerfd that expired (1 ms) and was never read, a relative
 *     one-shot timerfd 30 s away, and an absolute CLOCK_REALTIME timerfd 1 h
 *     away;
 *   - a pipe read end registered in epoll with EPOLLOUT-less EPOLLIN (never
 *     ready), used to test EPOLL_CTL_MOD/DEL after the restore.
 * Every epoll entry carries a tag in its data, checked on every event.
 * It prints "ready" after 5 ticks, and "tick <n>" every 25 ticks.
 *
 * On SIGUSR1 (through the signalfd) it prints "usr1 from <pid>" and checks:
 * the eventfd reads 42 (then EAGAIN), the semaphore eventfd reads 1 three
 * times (then EAGAIN), O_NONBLOCK is still set on both, the expired timer
 * reads at least 1 expiration, the 30 s timer has 0 < left <= 30 s, the
 * absolute timer has 3000 s < left <= 3600 s, the ticking timer still has a
 * 20 ms interval, and EPOLL_CTL_MOD then DEL then ADD again on the pipe
 * entry and MOD on the ticking timer's entry (new data, which later timer
 * events must carry) succeed.  Then it prints "checks ok".  (A second SIGUSR1 only prints "usr1 from <pid>".)
 * For every file created in DIR or DIR/sub it prints "created <name> wd <wd>".
 * When a file named "stop" is created in DIR it prints
 * "eventloop done ticks=<n>" and exits 0.  Failures print "FAIL: ..." and
 * exit 1.
 */
#include "common.h"
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/timerfd.h>

enum { TAG_TICK = 0x7101, TAG_SIG = 0x7102, TAG_INO = 0x7103, TAG_PIPE = 0x7104 };
#define TAG_TICK2 0x71015eedULL

static int ep, tick_fd, efd, semfd, sfd, ifd, expired_fd, rel_fd, abs_fd, pipe_r;
static uint64_t tick_tag = TAG_TICK;
static long ticks, ticks2;
static int checked;

static void ep_add(int fd, uint32_t events, uint64_t tag)
{
    struct epoll_event ev = { .events = events, .data.u64 = tag };
    CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) == 0, "epoll add %d: %s", fd, strerror(errno));
}

static int timer(int clock, int flags, long long value_ns, long long interval_ns)
{
    int fd = timerfd_create(clock, TFD_NONBLOCK | TFD_CLOEXEC);
    CHECK(fd >= 0, "timerfd_create: %s", strerror(errno));
    struct itimerspec its = {
        .it_value = { value_ns / 1000000000, value_ns % 1000000000 },
        .it_interval = { interval_ns / 1000000000, interval_ns % 1000000000 },
    };
    if (flags & TFD_TIMER_ABSTIME) {
        struct timespec now;
        clock_gettime(clock, &now);
        its.it_value.tv_sec += now.tv_sec;
    }
    CHECK(timerfd_settime(fd, flags, &its, NULL) == 0, "timerfd_settime: %s", strerror(errno));
    return fd;
}

static double left_s(int fd)
{
    struct itimerspec its;
    CHECK(timerfd_gettime(fd, &its) == 0, "timerfd_gettime: %s", strerror(errno));
    return (double)its.it_value.tv_sec + its.it_value.tv_nsec / 1e9;
}

static uint64_t read_u64(int fd, const char *what)
{
    uint64_t v = 0;
    ssize_t n = read(fd, &v, sizeof v);
    CHECK(n == 8, "read %s: %zd (%s)", what, n, strerror(errno));
    return v;
}

static void expect_eagain(int fd, const char *what)
{
    uint64_t v;
    errno = 0;
    CHECK(read(fd, &v, sizeof v) < 0 && errno == EAGAIN, "%s: expected EAGAIN, got %s",
          what, strerror(errno));
}

static void checks(void)
{
    uint64_t v = read_u64(efd, "eventfd");
    CHECK(v == 42, "eventfd read %llu, expected 42", (unsigned long long)v);
    expect_eagain(efd, "eventfd after reading");
    for (int i = 0; i < 3; i++) {
        v = read_u64(semfd, "semaphore eventfd");
        CHECK(v == 1, "semaphore eventfd read %llu, expected 1", (unsigned long long)v);
    }
    expect_eagain(semfd, "semaphore eventfd after 3 reads");
    CHECK(fcntl(efd, F_GETFL) & O_NONBLOCK, "eventfd lost O_NONBLOCK");
    CHECK(fcntl(semfd, F_GETFL) & O_NONBLOCK, "semaphore eventfd lost O_NONBLOCK");

    v = read_u64(expired_fd, "expired timerfd");
    CHECK(v >= 1, "expired timerfd read %llu", (unsigned long long)v);
    double l = left_s(rel_fd);
    CHECK(l > 0 && l <= 30.0, "30 s timer has %.3f s left", l);
    l = left_s(abs_fd);
    CHECK(l > 3000 && l <= 3600, "absolute 1 h timer has %.3f s left", l);
    struct itimerspec its;
    CHECK(timerfd_gettime(tick_fd, &its) == 0, "timerfd_gettime: %s", strerror(errno));
    CHECK(its.it_interval.tv_sec == 0 && its.it_interval.tv_nsec == 20000000,
          "ticking timer interval is %ld.%09ld", (long)its.it_interval.tv_sec,
          (long)its.it_interval.tv_nsec);

    /* the restored entries are keyed by these fd numbers: MOD/DEL/ADD work */
    struct epoll_event ev = { .events = EPOLLIN | EPOLLET, .data.u64 = TAG_PIPE };
    CHECK(epoll_ctl(ep, EPOLL_CTL_MOD, pipe_r, &ev) == 0, "epoll MOD pipe: %s", strerror(errno));
    CHECK(epoll_ctl(ep, EPOLL_CTL_DEL, pipe_r, NULL) == 0, "epoll DEL pipe: %s", strerror(errno));
    errno = 0;
    CHECK(epoll_ctl(ep, EPOLL_CTL_DEL, pipe_r, NULL) < 0 && errno == ENOENT,
          "second epoll DEL: %s", strerror(errno));
    ep_add(pipe_r, EPOLLIN, TAG_PIPE);
    errno = 0;
    CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, sfd, &ev) < 0 && errno == EEXIST,
          "epoll ADD of the signalfd again: expected EEXIST, got %s", strerror(errno));
    ev.events = EPOLLIN;
    ev.data.u64 = TAG_TICK2;
    CHECK(epoll_ctl(ep, EPOLL_CTL_MOD, tick_fd, &ev) == 0, "epoll MOD timer: %s", strerror(errno));
    tick_tag = TAG_TICK2;
    say("checks ok");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }
    const char *dir = argv[1];
    char sub[4096];
    snprintf(sub, sizeof sub, "%s/sub", dir);
    mkdir(sub, 0755);

    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    CHECK(sigprocmask(SIG_BLOCK, &usr1, NULL) == 0, "sigprocmask");

    ep = epoll_create1(EPOLL_CLOEXEC);
    CHECK(ep >= 0, "epoll_create1: %s", strerror(errno));
    tick_fd = timer(CLOCK_MONOTONIC, 0, 20000000, 20000000);
    ep_add(tick_fd, EPOLLIN, TAG_TICK);
    efd = eventfd(0, EFD_NONBLOCK);
    semfd = eventfd(3, EFD_NONBLOCK | EFD_SEMAPHORE);
    CHECK(efd >= 0 && semfd >= 0, "eventfd: %s", strerror(errno));
    uint64_t v = 40;
    CHECK(write(efd, &v, 8) == 8, "eventfd write");
    v = 2;
    CHECK(write(efd, &v, 8) == 8, "eventfd write");
    sfd = signalfd(-1, &usr1, SFD_NONBLOCK);
    CHECK(sfd >= 0, "signalfd: %s", strerror(errno));
    ep_add(sfd, EPOLLIN, TAG_SIG);
    ifd = inotify_init1(IN_NONBLOCK);
    CHECK(ifd >= 0, "inotify_init1: %s", strerror(errno));
    int wd1 = inotify_add_watch(ifd, dir, IN_CREATE);
    int wd2 = inotify_add_watch(ifd, "/", IN_CREATE);
    CHECK(inotify_rm_watch(ifd, wd2) == 0, "inotify_rm_watch");
    int wd3 = inotify_add_watch(ifd, sub, IN_CREATE | IN_MOVED_TO);
    CHECK(wd1 == 1 && wd3 == 3, "unexpected watch descriptors %d %d", wd1, wd3);
    ep_add(ifd, EPOLLIN | EPOLLET, TAG_INO);
    expired_fd = timer(CLOCK_MONOTONIC, 0, 1000000, 0);
    rel_fd = timer(CLOCK_MONOTONIC, 0, 30000000000LL, 0);
    abs_fd = timer(CLOCK_REALTIME, TFD_TIMER_ABSTIME, 3600000000000LL, 0);
    int p[2];
    CHECK(pipe(p) == 0, "pipe");
    pipe_r = p[0];
    ep_add(pipe_r, EPOLLIN, TAG_PIPE);

    for (;;) {
        struct epoll_event evs[8];
        int n = epoll_wait(ep, evs, 8, 1000);
        if (n < 0 && errno == EINTR)
            continue;
        CHECK(n >= 0, "epoll_wait: %s", strerror(errno));
        for (int i = 0; i < n; i++) {
            uint64_t tag = evs[i].data.u64;
            if (tag == TAG_TICK || tag == TAG_TICK2) {
                CHECK(tag == tick_tag || checked, "timer event with tag %#llx", (unsigned long long)tag);
                uint64_t t;
                ssize_t r = read(tick_fd, &t, 8);
                if (r < 0 && errno == EAGAIN)
                    continue;
                CHECK(r == 8, "timerfd read: %s", strerror(errno));
                for (uint64_t k = 0; k < t; k++) {
                    ticks++;
                    ticks2 += tag == TAG_TICK2;
                    if (ticks == 5)
                        say("ready");
                    if (ticks % 25 == 0)
                        say("tick %ld", ticks);
                }
            } else if (tag == TAG_SIG) {
                struct signalfd_siginfo si;
                while (read(sfd, &si, sizeof si) == sizeof si) {
                    CHECK(si.ssi_signo == SIGUSR1, "signalfd gave signal %u", si.ssi_signo);
                    say("usr1 from %u", si.ssi_pid);
                    if (!checked++)
                        checks();
                }
            } else if (tag == TAG_INO) {
                char buf[4096] __attribute__((aligned(8)));
                ssize_t r;
                while ((r = read(ifd, buf, sizeof buf)) > 0) {
                    for (char *q = buf; q < buf + r;) {
                        struct inotify_event *e = (struct inotify_event *)q;
                        q += sizeof *e + e->len;
                        if (e->mask & IN_IGNORED) /* of the removed watch 2 */
                            continue;
                        CHECK(e->wd == 1 || e->wd == 3, "inotify event on wd %d", e->wd);
                        if (e->len) {
                            say("created %s wd %d", e->name, e->wd);
                            if (e->wd == 1 && !strcmp(e->name, "stop")) {
                                CHECK(!checked || ticks2 > 0,
                                      "no timer event with the data set by EPOLL_CTL_MOD");
                                say("eventloop done ticks=%ld", ticks);
                                return 0;
                            }
                        }
                    }
                }
            } else {
                fail("epoll event with unknown data %#llx (events %#x)",
                     (unsigned long long)tag, evs[i].events);
            }
        }
    }
}
