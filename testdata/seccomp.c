/* Seccomp filters survive a checkpoint, per thread and stacked.
 *
 * usage: seccomp STOPFILE
 *
 * The main thread installs filter 1 (getppid fails with EPERM), starts a worker
 * (which inherits filter 1), then installs filter 2 (sched_yield fails with
 * EACCES). Installing needs CAP_SYS_ADMIN or no_new_privs: run it as root. Prints
 * "ready", waits for STOPFILE, then checks in both threads which calls fail and
 * the Seccomp_filters count in /proc/thread-self/status ("seccomp ok" or
 * "FAIL: ..."). */
#include "common.h"
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

static const char *stopfile;

static void deny(int nr, int err)
{
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)nr, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (unsigned)err),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = { .len = 4, .filter = f };
    CHECK(syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) == 0, "seccomp: %s",
          strerror(errno));
}

static int filters(void)
{
    FILE *f = fopen("/proc/thread-self/status", "r");
    char line[256];
    int n = -1;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "Seccomp_filters: %d", &n) == 1)
            break;
    if (f)
        fclose(f);
    return n;
}

static void verify(const char *who, int yield_denied, int count)
{
    errno = 0;
    CHECK(syscall(SYS_getppid) == -1 && errno == EPERM, "%s: getppid is allowed", who);
    errno = 0;
    long r = syscall(SYS_sched_yield);
    if (yield_denied)
        CHECK(r == -1 && errno == EACCES, "%s: sched_yield is allowed", who);
    else
        CHECK(r == 0, "%s: sched_yield is denied (%s)", who, strerror(errno));
    CHECK(filters() == count, "%s: %d filters, want %d", who, filters(), count);
}

static void wait_stop(void)
{
    while (access(stopfile, F_OK) != 0)
        sleep_ms(20);
}

static void *worker(void *arg)
{
    (void)arg;
    wait_stop();
    verify("worker", 0, 1);
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s STOPFILE\n", argv[0]);
        return 2;
    }
    stopfile = argv[1];
    deny(SYS_getppid, EPERM);
    pthread_t th;
    CHECK(pthread_create(&th, NULL, worker, NULL) == 0, "pthread_create");
    deny(SYS_sched_yield, EACCES);
    verify("main before", 1, 2);
    say("ready");
    wait_stop();
    verify("main", 1, 2);
    pthread_join(th, NULL);
    say("seccomp ok");
    return 0;
}
