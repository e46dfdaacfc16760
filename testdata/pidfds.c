/* pidfds survive a checkpoint (issue 9).
 *
 * usage: pidfds STOPFILE [outside|newns]
 *
 * Holds pidfds of: a running child A (twice: one description on two descriptors, one
 * close-on-exec and one not, plus a second, O_NONBLOCK description), a zombie child Z
 * (exit status 3, not reaped), a child R that has exited and been reaped, and one of
 * its own second thread (PIDFD_THREAD); an epoll instance watches A's pidfd. Prints
 * "ready", waits for STOPFILE, then checks that each refers to what it did (fdinfo
 * Pid, flags), that Z's exit status is collected through its pidfd, that R's refuses
 * signals (ESRCH), and that killing A through its pidfd wakes the epoll and is seen by
 * waitid(P_PIDFD) ("pidfds ok" or "FAIL: ..."). With "outside" it also holds a pidfd
 * of its parent, which is outside any checkpoint of it. With "newns" (restored in a new
 * PID namespace, as an ordinary user's restore is) a signal through R's pidfd may fail
 * with EINVAL instead of ESRCH: the restore warns of it. */
#include "common.h"
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#ifndef PIDFD_THREAD
#define PIDFD_THREAD O_EXCL
#endif
#ifndef PIDFD_NONBLOCK
#define PIDFD_NONBLOCK O_NONBLOCK
#endif
#ifndef P_PIDFD
#define P_PIDFD 3
#endif

static int pidfd_open(pid_t pid, unsigned flags)
{
    return (int)syscall(SYS_pidfd_open, pid, flags);
}

static int send_signal(int fd, int sig)
{
    return (int)syscall(SYS_pidfd_send_signal, fd, sig, NULL, 0);
}

/* fdinfo's "Pid:" of descriptor fd. */
static long fdinfo_pid(int fd)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/self/fdinfo/%d", fd);
    FILE *f = fopen(path, "r");
    CHECK(f, "%s: %s", path, strerror(errno));
    long pid = -999;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "Pid: %ld", &pid) == 1)
            break;
    fclose(f);
    return pid;
}

static volatile pid_t thread_tid;

static void *thread_main(void *arg)
{
    (void)arg;
    thread_tid = (pid_t)syscall(SYS_gettid);
    for (;;)
        pause();
    return NULL;
}

static pid_t child(int status, int wait_forever)
{
    pid_t p = fork();
    CHECK(p >= 0, "fork: %s", strerror(errno));
    if (p == 0) {
        if (wait_forever)
            for (;;)
                pause();
        _exit(status);
    }
    return p;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s STOPFILE [outside]\n", argv[0]);
        return 2;
    }
    pid_t a = child(0, 1), z = child(3, 0);
    int fa = pidfd_open(a, 0);
    CHECK(fa >= 0, "pidfd_open A: %s", strerror(errno));
    int fa2 = fcntl(fa, F_DUPFD, 20); /* same description, not close-on-exec */
    CHECK(fa2 >= 0 && fcntl(fa, F_SETFD, FD_CLOEXEC) == 0, "dup A");
    int fanb = pidfd_open(a, PIDFD_NONBLOCK);
    CHECK(fanb >= 0, "pidfd_open A nonblock: %s", strerror(errno));
    /* Z has exited by the time its pidfd is opened, or will: a zombie either way. */
    int fz = pidfd_open(z, 0);
    CHECK(fz >= 0, "pidfd_open Z: %s", strerror(errno));
    pid_t r = child(5, 0);
    int fr = pidfd_open(r, 0);
    CHECK(fr >= 0, "pidfd_open R: %s", strerror(errno));
    CHECK(waitpid(r, NULL, 0) == r, "reaping R");
    pthread_t th;
    CHECK(pthread_create(&th, NULL, thread_main, NULL) == 0, "pthread_create");
    while (!thread_tid)
        sleep_ms(1);
    int ft = pidfd_open(thread_tid, PIDFD_THREAD);
    CHECK(ft >= 0, "pidfd_open thread: %s", strerror(errno));
    int ep = epoll_create1(0);
    struct epoll_event ev = { .events = EPOLLIN, .data.u64 = 0xa };
    CHECK(ep >= 0 && epoll_ctl(ep, EPOLL_CTL_ADD, fa, &ev) == 0, "epoll: %s", strerror(errno));
    if (argc > 2 && !strcmp(argv[2], "outside")) {
        int fp = pidfd_open(getppid(), 0);
        CHECK(fp >= 0, "pidfd_open parent: %s", strerror(errno));
    }
    /* Let Z become a zombie before the checkpoint. */
    struct pollfd pz = { fz, POLLIN, 0 };
    CHECK(poll(&pz, 1, 5000) == 1, "Z did not exit");
    say("ready");
    while (access(argv[1], F_OK) != 0)
        sleep_ms(10);

    CHECK(fdinfo_pid(fa) == a && fdinfo_pid(fa2) == a && fdinfo_pid(fanb) == a,
          "A's pidfds refer to %ld %ld %ld, not %d", fdinfo_pid(fa), fdinfo_pid(fa2),
          fdinfo_pid(fanb), (int)a);
    CHECK(fcntl(fa, F_GETFD) == FD_CLOEXEC && fcntl(fa2, F_GETFD) == 0, "A's close-on-exec flags");
    CHECK(!(fcntl(fa, F_GETFL) & O_NONBLOCK) && (fcntl(fanb, F_GETFL) & O_NONBLOCK),
          "A's O_NONBLOCK flags: %#x %#x", fcntl(fa, F_GETFL), fcntl(fanb, F_GETFL));
    CHECK(fdinfo_pid(fz) == z, "Z's pidfd refers to %ld, not %d", fdinfo_pid(fz), (int)z);
    CHECK(fdinfo_pid(fr) == -1, "R's pidfd refers to %ld, not an exited process", fdinfo_pid(fr));
    int newns = argc > 2 && !strcmp(argv[2], "newns");
    CHECK(send_signal(fr, 0) < 0 && (errno == ESRCH || (newns && errno == EINVAL)),
          "signal through R's pidfd: %s", strerror(errno));
    CHECK(fdinfo_pid(ft) == thread_tid && (fcntl(ft, F_GETFL) & PIDFD_THREAD),
          "the thread's pidfd refers to %ld (flags %#x), not thread %d", fdinfo_pid(ft),
          fcntl(ft, F_GETFL), (int)thread_tid);
    CHECK(send_signal(ft, 0) == 0, "signal through the thread's pidfd: %s", strerror(errno));
    siginfo_t si;
    memset(&si, 0, sizeof si);
    CHECK(waitid(P_PIDFD, fz, &si, WEXITED) == 0 && si.si_pid == z && si.si_status == 3,
          "collecting Z through its pidfd: %s (pid %d status %d)", strerror(errno), si.si_pid,
          si.si_status);
    struct epoll_event got;
    CHECK(epoll_wait(ep, &got, 1, 0) == 0, "epoll: A is running, its pidfd is not readable");
    CHECK(send_signal(fa2, SIGTERM) == 0, "SIGTERM through A's pidfd: %s", strerror(errno));
    CHECK(epoll_wait(ep, &got, 1, 5000) == 1 && got.data.u64 == 0xa, "epoll did not see A exit");
    memset(&si, 0, sizeof si);
    CHECK(waitid(P_PIDFD, fanb, &si, WEXITED) == 0 && si.si_pid == a && si.si_code == CLD_KILLED &&
              si.si_status == SIGTERM,
          "collecting A through its pidfd: %s", strerror(errno));
    say("pidfds ok");
    return 0;
}
