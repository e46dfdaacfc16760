/* File locks, leases, descriptor owners and pipe capacity survive a checkpoint.
 *
 * usage: locks hold DIR          take every lock below, print "ready"; when DIR/check
 *                                exists check the leases are untouched ("intact"); when
 *                                DIR/go exists check everything ("locks ok")
 *        locks probe DIR [nolease]
 *                                from another process: every lock `hold` has must be
 *                                refused (EAGAIN / EWOULDBLOCK), free ranges granted
 *                                ("probe ok"); `nolease` leaves the leases alone
 *        locks grab DIR posix|flock
 *                                take the POSIX write lock on a 10-29 (or the flock on
 *                                c) that `hold` had, print "grabbed", hold it until
 *                                stdin ends
 *        locks breaking DIR      hold a write lease on DIR/d and do not give it up when
 *                                it is broken (its signal is blocked) until DIR/release
 *                                exists ("breaking ok")
 *        locks open DIR          open DIR/d for reading (blocks while a write lease is
 *                                held), print "opened"
 *        locks tree DIR          take a flock on DIR/c and an OFD write lock on bytes 0-4
 *                                of DIR/b, then fork: the child shares both descriptions
 *                                (and so both locks). Prints "ready", and "running" once
 *                                DIR/check exists (after a restore: it runs); when DIR/unlock
 *                                exists the child gives both up through its descriptors
 *                                ("unlocked"): they are one lock each, so nobody holds
 *                                them any more; when DIR/stop exists both end ("tree ok")
 *        locks try DIR flock|ofd take that lock of `tree` and exit 0, or exit 1 if
 *                                another process holds it
 *
 * What `hold` takes:
 *   DIR/a  a POSIX write lock on bytes 10-29 and a read lock from byte 100 to EOF
 *   DIR/b  an OFD write lock on bytes 0-4
 *   DIR/c  a flock LOCK_EX, and a dup of that descriptor
 *   DIR/d  a write lease, its break signal SIGRTMIN+3 (F_SETSIG)
 *   DIR/e  a read lease, its break signal SIGRTMIN+3
 *   pipe 1 O_ASYNC, owner its thread (F_OWNER_TID), signal SIGRTMIN+1, capacity 1 MiB
 *   pipe 2 owner its process group (F_OWNER_PGRP), default signal and capacity
 *   DIR/f  a FIFO, open read-write, capacity 256 KiB
 * After the restore, with DIR/go: every owner, signal and capacity is as set; a byte
 * written to pipe 1 raises SIGRTMIN+1 naming pipe 1's read end (si_fd); the probe's
 * opens broke both leases, which raised SIGRTMIN+3 naming each leased descriptor; a
 * child sees the POSIX locks (F_GETLK, with this process's pid), the OFD lock and the
 * flock; each lock can be given up (a child takes it) and taken again. */
#include "common.h"
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>

#define SIG_PIPE (SIGRTMIN + 1)
#define SIG_LEASE (SIGRTMIN + 3)
#define PIPE_SIZE (1 << 20)
#define FIFO_SIZE (1 << 18)

static char dir[3000];

static const char *at(const char *name)
{
    static char bufs[8][4096];
    static int n;
    char *b = bufs[n++ % 8];
    snprintf(b, sizeof bufs[0], "%s/%s", dir, name);
    return b;
}

static int open_or_fail(const char *name, int flags)
{
    int fd = open(at(name), flags | O_CREAT, 0644);
    CHECK(fd >= 0, "open %s: %s", name, strerror(errno));
    return fd;
}

/* fcntl lock command `cmd` of `type` on bytes start..start+len-1 (len 0: to EOF). */
static int lock(int fd, int cmd, int type, off_t start, off_t len)
{
    struct flock fl = { .l_type = type, .l_whence = SEEK_SET, .l_start = start, .l_len = len };
    return fcntl(fd, cmd, &fl);
}

static void wait_file(const char *name)
{
    wait_for_file(at(name), 20);
}

/* A signal of `set` within 30 s (a safety net, not a timing check). */
static int wait_signal(int sig, siginfo_t *si, const char *what)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, sig);
    struct timespec ts = { 30, 0 };
    int r = sigtimedwait(&set, si, &ts);
    CHECK(r == sig, "%s: no signal %d (%s)", what, sig, strerror(errno));
    return r;
}

/* Run `f(arg)` in a child; it reports by its exit status (0: as expected). */
static void in_child(const char *what, int (*f)(int), int arg)
{
    pid_t c = fork();
    CHECK(c >= 0, "fork: %s", strerror(errno));
    if (c == 0)
        _exit(f(arg));
    int st;
    CHECK(waitpid(c, &st, 0) == c, "waitpid: %s", strerror(errno));
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s (child status %#x)", what, st);
}

static pid_t holder;

static int child_sees_posix(int fa)
{
    struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 10, .l_len = 20 };
    if (fcntl(fa, F_GETLK, &fl) || fl.l_type != F_WRLCK || fl.l_pid != holder ||
        fl.l_start != 10 || fl.l_len != 20)
        return 1;
    struct flock r = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 150, .l_len = 5 };
    if (fcntl(fa, F_GETLK, &r) || r.l_type != F_RDLCK || r.l_pid != holder || r.l_start != 100 ||
        r.l_len != 0)
        return 2;
    struct flock free_ = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 40, .l_len = 50 };
    if (fcntl(fa, F_GETLK, &free_) || free_.l_type != F_UNLCK)
        return 3;
    return 0;
}

static int child_takes_posix(int fa)
{
    return lock(fa, F_SETLK, F_WRLCK, 10, 20) != 0;
}

static int child_takes_ofd(int unused)
{
    (void)unused;
    int fd = open(at("b"), O_RDWR);
    return fd < 0 || lock(fd, F_OFD_SETLK, F_WRLCK, 0, 5) != 0;
}

static int child_sees_ofd(int unused)
{
    (void)unused;
    int fd = open(at("b"), O_RDWR);
    struct flock fl = { .l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = 2, .l_len = 1 };
    return fd < 0 || fcntl(fd, F_OFD_GETLK, &fl) || fl.l_type != F_WRLCK || fl.l_start != 0 ||
           fl.l_len != 5;
}

static int child_flock(int op)
{
    int fd = open(at("c"), O_RDWR);
    if (fd < 0)
        return 2;
    int r = flock(fd, op | LOCK_NB);
    if (op == LOCK_EX)
        return r != 0;                                 /* must be granted */
    return !(r != 0 && errno == EWOULDBLOCK);          /* must be refused */
}

static void check_owner(int fd, int type, pid_t pid, int sig, const char *what)
{
    struct f_owner_ex o;
    CHECK(fcntl(fd, F_GETOWN_EX, &o) == 0, "%s: F_GETOWN_EX: %s", what, strerror(errno));
    CHECK((int)o.type == type && o.pid == pid, "%s: owner type %d pid %d, want type %d pid %d", what,
          o.type, o.pid, type, (int)pid);
    int s = fcntl(fd, F_GETSIG);
    CHECK(s == sig, "%s: F_GETSIG %d, want %d", what, s, sig);
}

static int hold(void)
{
    sigset_t block;
    sigemptyset(&block);
    sigaddset(&block, SIG_PIPE);
    sigaddset(&block, SIG_LEASE);
    sigprocmask(SIG_BLOCK, &block, NULL);
    /* Its own session and group, which a restore gives back (F_OWNER_PGRP below). */
    CHECK(setsid() > 0, "setsid: %s", strerror(errno));

    int fa = open_or_fail("a", O_RDWR);
    CHECK(lock(fa, F_SETLK, F_WRLCK, 10, 20) == 0, "POSIX write lock: %s", strerror(errno));
    CHECK(lock(fa, F_SETLK, F_RDLCK, 100, 0) == 0, "POSIX read lock: %s", strerror(errno));
    int fb = open_or_fail("b", O_RDWR);
    CHECK(lock(fb, F_OFD_SETLK, F_WRLCK, 0, 5) == 0, "OFD lock: %s", strerror(errno));
    int fc = open_or_fail("c", O_RDWR);
    CHECK(flock(fc, LOCK_EX | LOCK_NB) == 0, "flock: %s", strerror(errno));
    int fc2 = dup(fc);
    close(open_or_fail("e", O_WRONLY));
    int fd = open_or_fail("d", O_RDWR);
    CHECK(fcntl(fd, F_SETSIG, SIG_LEASE) == 0, "F_SETSIG: %s", strerror(errno));
    CHECK(fcntl(fd, F_SETLEASE, F_WRLCK) == 0, "write lease: %s", strerror(errno));
    int fe = open(at("e"), O_RDONLY);
    CHECK(fe >= 0 && fcntl(fe, F_SETSIG, SIG_LEASE) == 0, "e: %s", strerror(errno));
    CHECK(fcntl(fe, F_SETLEASE, F_RDLCK) == 0, "read lease: %s", strerror(errno));

    int p1[2], p2[2];
    CHECK(pipe(p1) == 0 && pipe(p2) == 0, "pipe: %s", strerror(errno));
    CHECK(fcntl(p1[0], F_SETFL, O_ASYNC | O_NONBLOCK) == 0, "O_ASYNC: %s", strerror(errno));
    struct f_owner_ex tid = { F_OWNER_TID, gettid() }, grp = { F_OWNER_PGRP, getpgrp() };
    CHECK(fcntl(p1[0], F_SETOWN_EX, &tid) == 0, "F_SETOWN_EX: %s", strerror(errno));
    CHECK(fcntl(p1[0], F_SETSIG, SIG_PIPE) == 0, "F_SETSIG: %s", strerror(errno));
    CHECK(fcntl(p1[1], F_SETPIPE_SZ, PIPE_SIZE) == PIPE_SIZE, "F_SETPIPE_SZ: %s",
          strerror(errno));
    CHECK(fcntl(p2[0], F_SETOWN_EX, &grp) == 0, "F_SETOWN_EX pgrp: %s", strerror(errno));
    int default_size = fcntl(p2[0], F_GETPIPE_SZ);
    CHECK(mkfifo(at("f"), 0644) == 0, "mkfifo: %s", strerror(errno));
    int ff = open(at("f"), O_RDWR);
    CHECK(ff >= 0, "open f: %s", strerror(errno));
    CHECK(fcntl(ff, F_SETPIPE_SZ, FIFO_SIZE) == FIFO_SIZE, "FIFO F_SETPIPE_SZ: %s",
          strerror(errno));
    say("fds a %d b %d c %d %d d %d e %d pipe %d %d pipe %d %d", fa, fb, fc, fc2, fd, fe, p1[0],
        p1[1], p2[0], p2[1]);
    say("ready");

    wait_file("check");
    CHECK(fcntl(fd, F_GETLEASE) == F_WRLCK, "write lease lost: F_GETLEASE %d",
          fcntl(fd, F_GETLEASE));
    CHECK(fcntl(fe, F_GETLEASE) == F_RDLCK, "read lease lost: F_GETLEASE %d",
          fcntl(fe, F_GETLEASE));
    sigset_t pending;
    sigpending(&pending);
    CHECK(!sigismember(&pending, SIG_LEASE), "a lease was broken before the probe");
    say("intact");

    wait_file("go");
    holder = getpid();
    CHECK(fcntl(p1[0], F_GETFL) & O_ASYNC, "pipe 1 lost O_ASYNC");
    check_owner(p1[0], F_OWNER_TID, gettid(), SIG_PIPE, "pipe 1");
    check_owner(p2[0], F_OWNER_PGRP, getpgrp(), 0, "pipe 2");
    check_owner(fd, F_OWNER_PID, getpid(), SIG_LEASE, "leased d");
    int sz = fcntl(p1[0], F_GETPIPE_SZ);
    CHECK(sz == PIPE_SIZE, "pipe 1 capacity %d, want %d", sz, PIPE_SIZE);
    sz = fcntl(p2[1], F_GETPIPE_SZ);
    CHECK(sz == default_size, "pipe 2 capacity %d, want %d", sz, default_size);
    sz = fcntl(ff, F_GETPIPE_SZ);
    CHECK(sz == FIFO_SIZE, "FIFO capacity %d, want %d", sz, FIFO_SIZE);
    siginfo_t si;
    CHECK(write(p1[1], "x", 1) == 1, "write: %s", strerror(errno));
    wait_signal(SIG_PIPE, &si, "input on pipe 1");
    CHECK(si.si_fd == p1[0] && si.si_code == POLL_IN, "pipe 1 signal: si_fd %d si_code %d",
          si.si_fd, si.si_code);

    /* The probe's opens broke both leases: one signal each, naming the descriptor. */
    int seen_d = 0, seen_e = 0;
    for (int i = 0; i < 2; i++) {
        wait_signal(SIG_LEASE, &si, "lease break");
        seen_d += si.si_fd == fd;
        seen_e += si.si_fd == fe;
    }
    CHECK(seen_d == 1 && seen_e == 1, "lease break signals: d %d e %d", seen_d, seen_e);
    CHECK(fcntl(fd, F_SETLEASE, F_UNLCK) == 0, "giving up the write lease: %s", strerror(errno));
    CHECK(fcntl(fe, F_SETLEASE, F_UNLCK) == 0, "giving up the read lease: %s", strerror(errno));
    CHECK(fcntl(fd, F_SETLEASE, F_WRLCK) == 0, "write lease again: %s", strerror(errno));

    in_child("a child sees the POSIX locks", child_sees_posix, fa);
    CHECK(lock(fa, F_SETLK, F_UNLCK, 10, 20) == 0, "POSIX unlock: %s", strerror(errno));
    in_child("a child takes the given-up POSIX range", child_takes_posix, fa);
    CHECK(lock(fa, F_SETLK, F_WRLCK, 10, 20) == 0, "POSIX relock: %s", strerror(errno));

    in_child("a child sees the OFD lock", child_sees_ofd, 0);
    CHECK(lock(fb, F_OFD_SETLK, F_UNLCK, 0, 5) == 0, "OFD unlock: %s", strerror(errno));
    in_child("a child takes the given-up OFD range", child_takes_ofd, 0);
    CHECK(lock(fb, F_OFD_SETLK, F_WRLCK, 0, 5) == 0, "OFD relock: %s", strerror(errno));

    in_child("a child is refused the flock", child_flock, LOCK_SH);
    CHECK(flock(fc2, LOCK_UN) == 0, "flock unlock through the dup: %s", strerror(errno));
    in_child("a child takes the given-up flock", child_flock, LOCK_EX);
    CHECK(flock(fc, LOCK_EX | LOCK_NB) == 0, "flock relock: %s", strerror(errno));
    say("locks ok");
    return 0;
}

static int refused(int r, const char *what)
{
    if (r == 0)
        fail("%s: granted to another process (the holder lost it)", what);
    CHECK(errno == EAGAIN || errno == EACCES || errno == EWOULDBLOCK, "%s: %s", what,
          strerror(errno));
    return 0;
}

static void granted(int r, const char *what)
{
    CHECK(r == 0, "%s: refused (%s)", what, strerror(errno));
}

static int probe(int leases)
{
    int fa = open(at("a"), O_RDWR);
    CHECK(fa >= 0, "open a: %s", strerror(errno));
    refused(lock(fa, F_SETLK, F_WRLCK, 10, 20), "POSIX write lock on a 10-29");
    refused(lock(fa, F_SETLK, F_RDLCK, 29, 1), "POSIX read lock on a 29");
    refused(lock(fa, F_SETLK, F_WRLCK, 100, 0), "POSIX write lock on a 100-EOF");
    refused(lock(fa, F_SETLK, F_WRLCK, 5000, 10), "POSIX write lock on a 5000-5009");
    granted(lock(fa, F_SETLK, F_RDLCK, 120, 10), "POSIX read lock on a 120-129");
    granted(lock(fa, F_SETLK, F_WRLCK, 30, 70), "POSIX write lock on a 30-99");
    granted(lock(fa, F_SETLK, F_UNLCK, 0, 0), "POSIX unlock of a");
    int fb = open(at("b"), O_RDWR);
    CHECK(fb >= 0, "open b: %s", strerror(errno));
    refused(lock(fb, F_OFD_SETLK, F_RDLCK, 4, 1), "OFD read lock on b 4");
    refused(lock(fb, F_SETLK, F_WRLCK, 0, 1), "POSIX write lock on b 0");
    granted(lock(fb, F_OFD_SETLK, F_WRLCK, 5, 10), "OFD write lock on b 5-14");
    int fc = open(at("c"), O_RDWR);
    CHECK(fc >= 0, "open c: %s", strerror(errno));
    refused(flock(fc, LOCK_SH | LOCK_NB), "flock LOCK_SH on c");
    refused(flock(fc, LOCK_EX | LOCK_NB), "flock LOCK_EX on c");
    if (leases) {
        int d = open(at("d"), O_RDONLY | O_NONBLOCK);
        refused(d < 0 ? -1 : 0, "opening d (write lease)");
        int e = open(at("e"), O_WRONLY | O_NONBLOCK);
        refused(e < 0 ? -1 : 0, "opening e for writing (read lease)");
    }
    say("probe ok");
    return 0;
}

static int grab(const char *what)
{
    int r;
    if (strcmp(what, "posix") == 0) {
        int fa = open(at("a"), O_RDWR);
        r = fa < 0 ? -1 : lock(fa, F_SETLK, F_WRLCK, 10, 20);
    } else {
        int fc = open(at("c"), O_RDWR);
        r = fc < 0 ? -1 : flock(fc, LOCK_EX | LOCK_NB);
    }
    CHECK(r == 0, "grabbing the %s lock: %s", what, strerror(errno));
    say("grabbed");
    char buf[64];
    while (read(0, buf, sizeof buf) > 0)
        ;
    return 0;
}

static int breaking(void)
{
    sigset_t block;
    sigemptyset(&block);
    sigaddset(&block, SIG_LEASE);
    sigprocmask(SIG_BLOCK, &block, NULL);
    int fd = open_or_fail("d", O_RDWR);
    CHECK(fcntl(fd, F_SETSIG, SIG_LEASE) == 0, "F_SETSIG: %s", strerror(errno));
    CHECK(fcntl(fd, F_SETLEASE, F_WRLCK) == 0, "write lease: %s", strerror(errno));
    say("ready");
    wait_file("release");
    siginfo_t si;
    wait_signal(SIG_LEASE, &si, "lease break");
    CHECK(si.si_fd == fd, "lease break names fd %d, not %d", si.si_fd, fd);
    int l = fcntl(fd, F_GETLEASE);
    CHECK(l == F_RDLCK, "the lease being broken: F_GETLEASE %d, want F_RDLCK", l);
    CHECK(fcntl(fd, F_SETLEASE, F_UNLCK) == 0, "giving up the lease: %s", strerror(errno));
    say("breaking ok");
    return 0;
}

static int tree(void)
{
    int fc = open_or_fail("c", O_RDWR), fb = open_or_fail("b", O_RDWR);
    CHECK(flock(fc, LOCK_EX | LOCK_NB) == 0, "flock: %s", strerror(errno));
    CHECK(lock(fb, F_OFD_SETLK, F_WRLCK, 0, 5) == 0, "OFD lock: %s", strerror(errno));
    pid_t c = fork();
    CHECK(c >= 0, "fork: %s", strerror(errno));
    if (c == 0) {
        wait_file("unlock");
        CHECK(flock(fc, LOCK_UN) == 0, "child: flock LOCK_UN: %s", strerror(errno));
        CHECK(lock(fb, F_OFD_SETLK, F_UNLCK, 0, 5) == 0, "child: OFD unlock: %s",
              strerror(errno));
        say("unlocked");
        wait_file("stop");
        _exit(0);
    }
    say("child %d", (int)c);
    say("ready");
    wait_file("check");
    say("running");
    int st;
    CHECK(waitpid(c, &st, 0) == c, "waitpid: %s", strerror(errno));
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child status %#x", st);
    say("tree ok");
    return 0;
}

static int try_lock(const char *what)
{
    int r;
    if (strcmp(what, "flock") == 0) {
        int fc = open(at("c"), O_RDWR);
        CHECK(fc >= 0, "open c: %s", strerror(errno));
        r = flock(fc, LOCK_EX | LOCK_NB);
    } else {
        int fb = open(at("b"), O_RDWR);
        CHECK(fb >= 0, "open b: %s", strerror(errno));
        r = lock(fb, F_OFD_SETLK, F_WRLCK, 0, 5);
    }
    if (r == 0)
        return 0;
    CHECK(errno == EAGAIN || errno == EWOULDBLOCK, "%s: %s", what, strerror(errno));
    return 1;
}

int main(int argc, char **argv)
{
    if (argc < 3)
        fail("usage: locks hold|probe|grab|breaking|open|tree|try DIR [...]");
    snprintf(dir, sizeof dir, "%s", argv[2]);
    const char *mode = argv[1];
    if (strcmp(mode, "hold") == 0)
        return hold();
    if (strcmp(mode, "probe") == 0)
        return probe(!(argc > 3 && strcmp(argv[3], "nolease") == 0));
    if (strcmp(mode, "grab") == 0 && argc > 3)
        return grab(argv[3]);
    if (strcmp(mode, "breaking") == 0)
        return breaking();
    if (strcmp(mode, "tree") == 0)
        return tree();
    if (strcmp(mode, "try") == 0 && argc > 3)
        return try_lock(argv[3]);
    if (strcmp(mode, "open") == 0) {
        int fd = open(at("d"), O_RDONLY);
        CHECK(fd >= 0, "open d: %s", strerror(errno));
        say("opened");
        return 0;
    }
    fail("unknown mode %s", mode);
}
