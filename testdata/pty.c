/* pty DIR: a process holding pseudo-terminal pairs made inside the job (issue 9,
 * terminals).
 *
 * Pair A: the parent holds the master; its child leads a session with the slave as
 * controlling terminal (opened without O_NOCTTY), opens /dev/tty too, gives the slave
 * its own termios (every field: flags, control characters, distinct input and output
 * speeds) and window size, and makes a grandchild's process group the foreground one.
 * Data is left queued both ways: the parent writes "queued-in\npart" to the master (a
 * complete line and a partial one in the slave's input queue, canonical mode, no echo)
 * and the child writes "queued-out\n" to the slave (in the master's read queue).
 * Pair B: the parent holds only a master, with a window size, in packet mode and locked
 * again (its slave never opened): its state is read and restored without a slave.
 *
 * Prints "ready" once everything is set, then waits for DIR/go (touched after the
 * restore) and checks everything from inside, each process printing what it found;
 * the data exchanged both ways after the restore continues the queued data. Exits 0
 * after "pty ok".
 *
 * pty DIR eof: the same, but the parent also types an end-of-file (^D) that the child
 * has not read yet, which a checkpoint must refuse (then prints "eof queued"). */
#include "common.h"
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <asm/termbits.h>

/* glibc's termios and asm/termbits' cannot both be included: the ioctls take the
 * kernel's struct termios2 (speeds as numbers), declared by asm/termbits.h. */
extern int tcgetpgrp(int fd);
extern int tcsetpgrp(int fd, pid_t pgrp);
extern pid_t tcgetsid(int fd);
extern int posix_openpt(int flags);
extern int grantpt(int fd);
extern int unlockpt(int fd);
extern char *ptsname(int fd);

static const char *dir;
static int eof_mode;

static void path_in(char *buf, size_t n, const char *name)
{
    snprintf(buf, n, "%s/%s", dir, name);
}

static void wait_go(void)
{
    char p[4096];
    path_in(p, sizeof p, "go");
    wait_for_file(p, 20);
}

static struct termios2 wanted_termios(void)
{
    struct termios2 t;
    memset(&t, 0, sizeof t);
    t.c_iflag = ICRNL | IXON | IXANY | IMAXBEL | IUTF8;
    t.c_oflag = OPOST | ONLCR | TAB3;
    t.c_cflag = BOTHER | (BOTHER << IBSHIFT) | CS8 | CREAD | HUPCL | CLOCAL;
    t.c_lflag = ICANON | ISIG | IEXTEN | ECHOE | ECHOK | ECHOCTL | ECHOKE | TOSTOP;
    t.c_line = 0;
    const unsigned char cc[NCCS] = {
        [VINTR] = 0x01, [VQUIT] = 0x1c, [VERASE] = 0x08, [VKILL] = 0x0b,
        [VEOF] = 0x04, [VTIME] = 7, [VMIN] = 3, [VSTART] = 0x11, [VSTOP] = 0x13,
        [VSUSP] = 0x1a, [VEOL] = 0x0e, [VREPRINT] = 0x12, [VDISCARD] = 0x0f,
        [VWERASE] = 0x17, [VLNEXT] = 0x16, [VEOL2] = 0x10,
    };
    memcpy(t.c_cc, cc, NCCS);
    t.c_ispeed = 2400;
    t.c_ospeed = 57600;
    return t;
}

static const struct winsize wanted_ws = { .ws_row = 33, .ws_col = 111, .ws_xpixel = 7, .ws_ypixel = 9 };
static const struct winsize wanted_ws_b = { .ws_row = 12, .ws_col = 34, .ws_xpixel = 0, .ws_ypixel = 0 };

static void check_termios(int fd, const char *what)
{
    struct termios2 got, want = wanted_termios();
    CHECK(ioctl(fd, TCGETS2, &got) == 0, "TCGETS2 %s: %s", what, strerror(errno));
    CHECK(got.c_iflag == want.c_iflag, "%s c_iflag %#x, want %#x", what, got.c_iflag, want.c_iflag);
    CHECK(got.c_oflag == want.c_oflag, "%s c_oflag %#x, want %#x", what, got.c_oflag, want.c_oflag);
    CHECK(got.c_cflag == want.c_cflag, "%s c_cflag %#x, want %#x", what, got.c_cflag, want.c_cflag);
    CHECK(got.c_lflag == want.c_lflag, "%s c_lflag %#x, want %#x", what, got.c_lflag, want.c_lflag);
    CHECK(got.c_line == want.c_line, "%s c_line %d", what, got.c_line);
    for (int i = 0; i < NCCS; i++)
        CHECK(got.c_cc[i] == want.c_cc[i], "%s c_cc[%d] %#x, want %#x", what, i, got.c_cc[i], want.c_cc[i]);
    CHECK(got.c_ispeed == want.c_ispeed && got.c_ospeed == want.c_ospeed,
          "%s speeds %u/%u, want %u/%u", what, got.c_ispeed, got.c_ospeed, want.c_ispeed, want.c_ospeed);
}

static void check_ws(int fd, const struct winsize *want, const char *what)
{
    struct winsize ws;
    CHECK(ioctl(fd, TIOCGWINSZ, &ws) == 0, "TIOCGWINSZ %s: %s", what, strerror(errno));
    CHECK(ws.ws_row == want->ws_row && ws.ws_col == want->ws_col && ws.ws_xpixel == want->ws_xpixel &&
              ws.ws_ypixel == want->ws_ypixel,
          "%s window %ux%u (%ux%u px), want %ux%u (%ux%u px)", what, ws.ws_row, ws.ws_col, ws.ws_xpixel,
          ws.ws_ypixel, want->ws_row, want->ws_col, want->ws_xpixel, want->ws_ypixel);
}

/* Read exactly `want` (the whole of it, in as many reads as it takes). */
static void expect_read(int fd, const char *want, const char *what)
{
    size_t n = strlen(want), got = 0;
    char buf[256];
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r < 0 && errno == EINTR)
            continue;
        CHECK(r > 0, "%s: read %zd after %zu bytes: %s", what, r, got, strerror(errno));
        got += r;
    }
    buf[got] = 0;
    CHECK(memcmp(buf, want, n) == 0, "%s: read %.*s, want %s", what, (int)got, buf, want);
}

static void write_all(int fd, const char *s)
{
    size_t n = strlen(s);
    CHECK(write(fd, s, n) == (ssize_t)n, "write %s: %s", s, strerror(errno));
}

/* The grandchild: leads the foreground process group until DIR/go. */
static void grandchild(void)
{
    CHECK(setpgid(0, 0) == 0, "setpgid: %s", strerror(errno));
    wait_go();
    _exit(0);
}

/* The session leader on pair A's slave. */
static void child(const char *slave_path, int sync_w)
{
    CHECK(setsid() == getpid(), "setsid: %s", strerror(errno));
    int s = open(slave_path, O_RDWR); /* no O_NOCTTY: becomes the controlling terminal */
    CHECK(s >= 0, "open %s: %s", slave_path, strerror(errno));
    int t = open("/dev/tty", O_RDWR);
    CHECK(t >= 0, "open /dev/tty: %s", strerror(errno));
    struct termios2 want = wanted_termios();
    CHECK(ioctl(s, TCSETS2, &want) == 0, "TCSETS2: %s", strerror(errno));
    CHECK(ioctl(s, TIOCSWINSZ, &wanted_ws) == 0, "TIOCSWINSZ: %s", strerror(errno));
    pid_t gc = fork();
    CHECK(gc >= 0, "fork: %s", strerror(errno));
    if (gc == 0)
        grandchild();
    setpgid(gc, gc);
    signal(SIGTTOU, SIG_IGN);
    CHECK(tcsetpgrp(s, gc) == 0, "tcsetpgrp: %s", strerror(errno));
    write_all(s, "queued-out\n");
    say("child %d session leader, foreground group %d", getpid(), gc);
    CHECK(write(sync_w, "x", 1) == 1, "sync");
    close(sync_w);

    wait_go();
    if (eof_mode)
        exit(0);
    /* The same terminal, still the controlling one, of this session. */
    CHECK(getsid(0) == getpid(), "getsid %d", getsid(0));
    CHECK(tcgetsid(s) == getpid(), "tcgetsid %d: %s", tcgetsid(s), strerror(errno));
    CHECK(tcgetpgrp(s) == gc, "foreground group %d, want %d", tcgetpgrp(s), gc);
    CHECK(tcgetpgrp(t) == gc, "foreground group through /dev/tty %d, want %d", tcgetpgrp(t), gc);
    struct stat st_s, st_tty;
    CHECK(fstat(s, &st_s) == 0 && fstat(t, &st_tty) == 0, "fstat");
    int again = open("/dev/tty", O_RDWR);
    CHECK(again >= 0, "open /dev/tty after the restore: %s", strerror(errno));
    struct stat st_again;
    CHECK(fstat(again, &st_again) == 0, "fstat");
    CHECK(tcgetsid(again) == getpid(), "/dev/tty is the session's terminal");
    check_termios(s, "slave");
    check_termios(t, "/dev/tty");
    check_ws(s, &wanted_ws, "slave");
    say("child termios ok");
    /* Reading needs the foreground (the grandchild's group was, until now). */
    CHECK(tcsetpgrp(s, getpid()) == 0, "tcsetpgrp back: %s", strerror(errno));
    /* The input queued before the checkpoint: a complete line, then the rest of the
     * partial one once the parent sends it. */
    char line[64];
    ssize_t r = read(s, line, sizeof line);
    CHECK(r == 10 && memcmp(line, "queued-in\n", 10) == 0, "first line %zd %.*s", r, (int)(r > 0 ? r : 0), line);
    write_all(s, "from-child\n");
    r = read(s, line, sizeof line);
    CHECK(r == 8 && memcmp(line, "partial\n", 8) == 0, "second line %zd %.*s", r, (int)(r > 0 ? r : 0), line);
    int gst;
    CHECK(waitpid(gc, &gst, 0) == gc && WIFEXITED(gst) && WEXITSTATUS(gst) == 0, "grandchild");
    say("child ok");
    exit(0);
}

int main(int argc, char **argv)
{
    CHECK(argc == 2 || argc == 3, "usage: pty DIR [eof]");
    dir = argv[1];
    eof_mode = argc == 3;
    int m = posix_openpt(O_RDWR | O_NOCTTY);
    CHECK(m >= 0 && grantpt(m) == 0 && unlockpt(m) == 0, "posix_openpt: %s", strerror(errno));
    char slave_path[64];
    snprintf(slave_path, sizeof slave_path, "%s", ptsname(m));
    int sync[2];
    CHECK(pipe(sync) == 0, "pipe");
    pid_t c = fork();
    CHECK(c >= 0, "fork");
    if (c == 0) {
        close(m);
        close(sync[0]);
        child(slave_path, sync[1]);
    }
    close(sync[1]);
    char x;
    CHECK(read(sync[0], &x, 1) == 1, "the child did not get ready");
    close(sync[0]);
    write_all(m, "queued-in\npart");
    if (argc == 3)
        write_all(m, "\x04");

    int b = posix_openpt(O_RDWR | O_NOCTTY | O_NONBLOCK);
    CHECK(b >= 0 && grantpt(b) == 0 && unlockpt(b) == 0, "posix_openpt B: %s", strerror(errno));
    int one = 1;
    CHECK(ioctl(b, TIOCSWINSZ, &wanted_ws_b) == 0, "TIOCSWINSZ B");
    CHECK(ioctl(b, TIOCPKT, &one) == 0, "TIOCPKT: %s", strerror(errno));
    CHECK(ioctl(b, TIOCSPTLCK, &one) == 0, "TIOCSPTLCK: %s", strerror(errno));
    say("parent %d master A %s, master B %s", getpid(), slave_path, ptsname(b));
    say("ready");
    if (argc == 3) {
        say("eof queued");
        wait_go();
        return 0;
    }

    wait_go();
    /* The slave's output queued before the checkpoint (ONLCR made its newline \r\n). */
    expect_read(m, "queued-out\r\n", "master A");
    expect_read(m, "from-child\r\n", "master A");
    write_all(m, "ial\n");
    /* Pair A's slave is where the master says it is (its index may have changed). */
    char *now = ptsname(m);
    struct stat st;
    CHECK(now && stat(now, &st) == 0 && S_ISCHR(st.st_mode), "ptsname %s", now ? now : "(none)");
    int pkt = -1, lck = -1;
    CHECK(ioctl(b, TIOCGPKT, &pkt) == 0 && pkt == 1, "packet mode of B %d: %s", pkt, strerror(errno));
    CHECK(ioctl(b, TIOCGPTLCK, &lck) == 0 && lck == 1, "lock of B %d: %s", lck, strerror(errno));
    check_ws(b, &wanted_ws_b, "master B");
    CHECK(fcntl(b, F_GETFL) & O_NONBLOCK, "O_NONBLOCK of master B");
    say("parent termios ok (slave A now %s)", now);
    int st_c;
    CHECK(waitpid(c, &st_c, 0) == c, "waitpid: %s", strerror(errno));
    CHECK(WIFEXITED(st_c) && WEXITSTATUS(st_c) == 0, "child status %#x", st_c);
    say("pty ok");
    return 0;
}
