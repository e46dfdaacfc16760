/* Two processes that share a kernel object a restore would split: the dump must
 * refuse, naming both and the object, and both run on.
 *
 * usage: sharing files|fs|sighand STOPFILE
 *
 * The parent makes a child with clone(CLONE_FILES), clone(CLONE_FS) or
 * clone(CLONE_SIGHAND | CLONE_VM) (the kernel wants CLONE_VM with CLONE_SIGHAND),
 * prints "child PID" and "ready", ticks ("tick N") until STOPFILE exists, checks the
 * sharing still holds (a descriptor the child opens is the parent's, or the cwd the
 * child changes is the parent's), reaps the child and prints "sharing ok". */
#include "common.h"
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/wait.h>

static const char *stopfile;
static int child_fd = -1;

static int child(void *arg)
{
    int flags = *(int *)arg;
    if (flags & CLONE_FILES)
        child_fd = open("/dev/null", O_RDONLY); /* in the shared table */
    if (flags & CLONE_FS)
        if (chdir("/tmp") != 0)
            return 3;
    while (access(stopfile, F_OK) != 0)
        usleep(20000);
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
        CHECK(fcntl(3, F_GETFD) >= 0 || fcntl(child_fd, F_GETFD) >= 0, "the shared descriptor");
    if (flags & CLONE_FS) {
        char cwd[64];
        CHECK(getcwd(cwd, sizeof cwd) && strcmp(cwd, "/tmp") == 0, "the shared cwd");
    }
    say("sharing ok");
    return 0;
}
