/* Two processes that share a kernel object: a descriptor table or fs state (cwd,
 * umask), which a restore keeps shared, or a signal handler table, which the dump
 * must refuse (naming both and the object) while both run on.
 *
 * usage: sharing files|fs|sighand STOPFILE
 *
 * The parent makes a child with clone(CLONE_FILES), clone(CLONE_FS) or
 * clone(CLONE_SIGHAND | CLONE_VM) (the kernel wants CLONE_VM with CLONE_SIGHAND),
 * prints "child PID" and "ready", ticks ("tick N") until STOPFILE exists. Then the
 * child, and only it, opens /dev/null as descriptor 42 and changes its cwd to /tmp
 * and its umask to 027, and exits; the parent reaps it and checks the sharing held
 * (files: descriptor 42 is open in the parent too; fs: the parent's cwd is /tmp and
 * its umask 027), then prints "sharing ok". */
#include "common.h"
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>

static const char *stopfile;

static int child(void *arg)
{
    (void)arg;
    while (access(stopfile, F_OK) != 0)
        usleep(20000);
    int fd = open("/dev/null", O_RDONLY);
    if (fd < 0 || dup2(fd, 42) != 42)
        return 3;
    if (chdir("/tmp") != 0)
        return 4;
    umask(027);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s files|fs|sighand STOPFILE\n", argv[0]);
        return 2;
    }
    stopfile = argv[2];
    int flags = strcmp(argv[1], "files") == 0 ? CLONE_FILES
              : strcmp(argv[1], "fs") == 0    ? CLONE_FS
                                              : CLONE_SIGHAND | CLONE_VM;
    CHECK(chdir("/") == 0, "chdir");
    size_t len = 1 << 20;
    char *stack = malloc(len);
    CHECK(stack, "malloc");
    pid_t c = clone(child, stack + len, flags | SIGCHLD, &flags);
    CHECK(c > 0, "clone: %s", strerror(errno));
    say("child %d", (int)c);
    sleep_ms(100);
    say("ready");
    for (int n = 0; access(stopfile, F_OK) != 0; n++) {
        say("tick %d", n);
        sleep_ms(20);
    }
    int st;
    CHECK(waitpid(c, &st, 0) == c && WIFEXITED(st) && WEXITSTATUS(st) == 0, "child status %#x", st);
    if (flags & CLONE_FILES)
        CHECK(fcntl(42, F_GETFD) >= 0, "the child's descriptor 42 is not in the shared table");
    else
        CHECK(fcntl(42, F_GETFD) < 0, "the child's descriptor 42 is in the parent's table");
    char cwd[64];
    mode_t mask = umask(0);
    if (flags & CLONE_FS) {
        CHECK(getcwd(cwd, sizeof cwd) && strcmp(cwd, "/tmp") == 0, "the shared cwd is %s", cwd);
        CHECK(mask == 027, "the shared umask is %03o", mask);
    } else {
        CHECK(getcwd(cwd, sizeof cwd) && strcmp(cwd, "/") == 0, "the parent's cwd moved");
    }
    say("sharing ok");
    return 0;
}
