/* stopped STOPFILE SIG MODE
 *
 * Job control across a checkpoint. SIG is STOP or TSTP.
 *
 * MODE "waited" or "unwaited": the program makes a process group of its own and
 * forks a child of two threads, each writing a byte into a pipe every 10 ms ('x'
 * the main thread, 'y' the other). Once both have written, it stops the child with
 * SIG. "waited": it collects the stop with waitpid(WUNTRACED), as a shell does;
 * "unwaited": it only waits until the child and both its threads are stopped and
 * leaves the stop report for later. A SIGCHLD handler counts the CLD_STOPPED
 * notifications it gets (one). Prints "child PID" and "ready", then waits for
 * STOPFILE (the checkpoint and restore happen meanwhile).
 *
 * Then (once the child is not traced: a restore lets it go after the parent) it
 * checks that the child and both its threads are stopped ('T' in
 * /proc/PID/stat), that no new SIGCHLD came, and what waitpid(WUNTRACED|WNOHANG)
 * reports: "waited", nothing (the stop was collected before); "unwaited", the
 * stop with signal SIG. Then SIGCONT: waitpid(WCONTINUED) reports it continued, and
 * both its threads write again. Prints "stopped ok" and exits 0 (killing the
 * child), or "FAIL: ..." and exits 1.
 *
 * MODE "self": no child; prints "ready" and then "tick N" every 20 ms until STOPFILE
 * exists, then "done" (the test stops and continues it from outside).
 */
#include "common.h"
#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>

static volatile sig_atomic_t cld_stopped, cld_continued;

static void on_chld(int sig, siginfo_t *si, void *uc)
{
    (void)sig;
    (void)uc;
    if (si->si_code == CLD_STOPPED)
        cld_stopped++;
    else if (si->si_code == CLD_CONTINUED)
        cld_continued++;
}

static int pipe_w;

static void *writer(void *arg)
{
    char c = *(const char *)arg;
    for (;;) {
        if (write(pipe_w, &c, 1) != 1 && errno != EINTR && errno != EAGAIN)
            _exit(3);
        sleep_ms(10);
    }
    return NULL;
}

/* The state letter of /proc/PID/task/TID/stat. */
static char task_state(pid_t pid, pid_t tid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/task/%d/stat", (int)pid, (int)tid);
    FILE *f = fopen(path, "r");
    if (!f)
        return '?';
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    return p && p[1] == ' ' ? p[2] : '?';
}

/* The state letters of every thread of PID, e.g. "TT". */
static void states(pid_t pid, char *out, size_t len)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
    DIR *d = opendir(path);
    size_t k = 0;
    struct dirent *e;
    while (d && k + 1 < len && (e = readdir(d)))
        if (e->d_name[0] != '.')
            out[k++] = task_state(pid, atoi(e->d_name));
    out[k] = 0;
    if (d)
        closedir(d);
}

static int all_stopped(pid_t pid)
{
    char s[16];
    states(pid, s, sizeof s);
    return strlen(s) == 2 && strcmp(s, "TT") == 0;
}

/* TracerPid of PID's status. */
static int tracer_of(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    int t = -1;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "TracerPid: %d", &t) == 1)
            break;
    if (f)
        fclose(f);
    return t;
}

/* Read bytes until both 'x' and 'y' came. */
static void wait_both(int fd)
{
    int x = 0, y = 0;
    char c;
    while (!(x && y)) {
        ssize_t n = read(fd, &c, 1);
        if (n < 0 && errno == EINTR)
            continue;
        CHECK(n == 1, "reading the child's pipe: %zd (%s)", n, strerror(errno));
        x |= c == 'x';
        y |= c == 'y';
    }
}

static void drain(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    fcntl(fd, F_SETFL, fl | O_NONBLOCK);
    char buf[4096];
    while (read(fd, buf, sizeof buf) > 0)
        ;
    fcntl(fd, F_SETFL, fl);
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: %s STOPFILE STOP|TSTP waited|unwaited|self\n", argv[0]);
        return 2;
    }
    const char *stop = argv[1], *mode = argv[3];
    int sig = strcmp(argv[2], "TSTP") == 0 ? SIGTSTP : SIGSTOP;

    if (strcmp(mode, "self") == 0) {
        say("ready");
        for (long n = 1; !file_exists(stop); n++) {
            say("tick %ld", n);
            sleep_ms(20);
        }
        say("done");
        return 0;
    }
    int waited = strcmp(mode, "waited") == 0;
    CHECK(waited || strcmp(mode, "unwaited") == 0, "bad mode %s", mode);

    /* A group of our own: SIGTSTP is not discarded as in an orphaned group, since our
     * parent is in another group of the same session. */
    CHECK(getpgrp() == getpid() || setpgid(0, 0) == 0, "setpgid: %s", strerror(errno));
    struct sigaction sa = { 0 };
    sa.sa_sigaction = on_chld;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    CHECK(sigaction(SIGCHLD, &sa, NULL) == 0, "sigaction: %s", strerror(errno));

    int p[2];
    CHECK(pipe(p) == 0, "pipe: %s", strerror(errno));
    pid_t child = fork();
    CHECK(child >= 0, "fork: %s", strerror(errno));
    if (child == 0) {
        close(p[0]);
        pipe_w = p[1];
        signal(SIGCHLD, SIG_DFL);
        static const char x = 'x', y = 'y';
        pthread_t t;
        if (pthread_create(&t, NULL, writer, (void *)&y) != 0)
            _exit(4);
        writer((void *)&x);
    }
    close(p[1]);
    wait_both(p[0]);
    CHECK(kill(child, sig) == 0, "kill: %s", strerror(errno));
    if (waited) {
        int st;
        pid_t r;
        while ((r = waitpid(child, &st, WUNTRACED)) < 0 && errno == EINTR)
            ;
        CHECK(r == child && WIFSTOPPED(st) && WSTOPSIG(st) == sig,
              "waitpid before the checkpoint: %d status %#x", (int)r, st);
    }
    while (!all_stopped(child) || cld_stopped == 0)
        sleep_ms(5);
    CHECK(cld_stopped == 1, "%d CLD_STOPPED notifications before the checkpoint",
          (int)cld_stopped);
    say("child %d", (int)child);
    say("ready");
    wait_for_file(stop, 10);
    /* The restore lets the parent go before the child: wait until it let go of the
     * child too (which it does at once). */
    double deadline = now_mono() + 30;
    while (tracer_of(child) != 0) {
        CHECK(now_mono() < deadline, "the child stays traced by %d", tracer_of(child));
        sleep_ms(1);
    }

    char s[16];
    states(child, s, sizeof s);
    CHECK(strcmp(s, "TT") == 0, "after the restore the child's threads are in states \"%s\"", s);
    CHECK(cld_stopped == 1 && cld_continued == 0,
          "SIGCHLD after the restore: %d stopped, %d continued notifications",
          (int)cld_stopped, (int)cld_continued);
    int st = 0;
    pid_t r = waitpid(child, &st, WUNTRACED | WNOHANG);
    if (waited)
        CHECK(r == 0, "waitpid(WUNTRACED|WNOHANG) after the restore reported %d status %#x "
              "(the stop was collected before the checkpoint)", (int)r, st);
    else
        CHECK(r == child && WIFSTOPPED(st) && WSTOPSIG(st) == sig,
              "waitpid(WUNTRACED|WNOHANG) after the restore: %d status %#x, expected the stop "
              "by signal %d", (int)r, st, sig);
    say("still stopped");
    drain(p[0]);
    CHECK(kill(child, SIGCONT) == 0, "SIGCONT: %s", strerror(errno));
    while ((r = waitpid(child, &st, WCONTINUED)) < 0 && errno == EINTR)
        ;
    CHECK(r == child && WIFCONTINUED(st), "waitpid(WCONTINUED): %d status %#x", (int)r, st);
    wait_both(p[0]);
    say("stopped ok");
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    return 0;
}
