/* prctl STOPFILE [--undumpable] [--ksm] [--mdwe-no-inherit]
 *
 * prctl state across a checkpoint. The program sets:
 *   - parent-death signals: SIGUSR1 for the main thread, SIGRTMIN+1 for a second
 *     thread (they are per thread), which waits meanwhile;
 *   - child subreaper, with a tree below it: a middle child that forks a grandchild;
 *     both wait for STOPFILE, then the middle one exits;
 *   - THP disabled (PR_SET_THP_DISABLE), and MADV_HUGEPAGE advice on a region (the
 *     thread stack has MADV_NOHUGEPAGE, as every MAP_STACK mapping);
 *   - memory-deny-write-execute (PR_MDWE_REFUSE_EXEC_GAIN, with --mdwe-no-inherit
 *     also PR_MDWE_NO_INHERIT);
 *   - coredump_filter 0x7b;
 *   - membarrier registrations: private expedited and global expedited;
 *   - with --undumpable, PR_SET_DUMPABLE 0 (only root can checkpoint that);
 *   - with --ksm, PR_SET_MEMORY_MERGE 1.
 * Prints "tree MIDDLE GRANDCHILD" (their PIDs) and "ready" and waits for STOPFILE (the checkpoint and restore happen
 * meanwhile). Then it checks every one of them, printing one line each
 * ("pdeathsig ok", ...), and that the grandchild, orphaned when the middle child
 * exits, becomes its child: "subreaper ok". Prints "prctl ok" and exits 0, or
 * "FAIL: ..." and exits 1.
 */
#include "common.h"
#include <fcntl.h>
#include <linux/membarrier.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#ifndef PR_SET_MDWE
#define PR_SET_MDWE 65
#define PR_GET_MDWE 66
#endif
#ifndef PR_MDWE_REFUSE_EXEC_GAIN
#define PR_MDWE_REFUSE_EXEC_GAIN (1UL << 0)
#endif
#ifndef PR_MDWE_NO_INHERIT
#define PR_MDWE_NO_INHERIT (1UL << 1)
#endif
#ifndef PR_SET_MEMORY_MERGE
#define PR_SET_MEMORY_MERGE 67
#define PR_GET_MEMORY_MERGE 68
#endif
#ifndef MEMBARRIER_CMD_GET_REGISTRATIONS
#define MEMBARRIER_CMD_GET_REGISTRATIONS (1 << 9)
#endif

static const char *stop;
static volatile int thread_sig = -1;

static int membarrier(int cmd, unsigned flags, int cpu)
{
    return (int)syscall(SYS_membarrier, cmd, flags, cpu);
}

static int pdeathsig(void)
{
    int s = -1;
    CHECK(prctl(PR_GET_PDEATHSIG, &s, 0, 0, 0) == 0, "PR_GET_PDEATHSIG: %s", strerror(errno));
    return s;
}

static void *second(void *arg)
{
    (void)arg;
    CHECK(prctl(PR_SET_PDEATHSIG, SIGRTMIN + 1, 0, 0, 0) == 0, "PR_SET_PDEATHSIG: %s",
          strerror(errno));
    wait_for_file(stop, 10);
    thread_sig = pdeathsig();
    return NULL;
}

static unsigned long read_filter(void)
{
    FILE *f = fopen("/proc/self/coredump_filter", "r");
    CHECK(f, "open coredump_filter: %s", strerror(errno));
    unsigned long v = 0;
    CHECK(fscanf(f, "%lx", &v) == 1, "reading coredump_filter");
    fclose(f);
    return v;
}

static pid_t ppid_of(pid_t pid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    char st;
    int ppid;
    if (!p || sscanf(p + 2, "%c %d", &st, &ppid) != 2)
        return -1;
    return ppid;
}

/* The VmFlags of the region that starts at ADDR, e.g. " rd wr mr mw me ac hg". */
static void vmflags(void *addr, char *out, size_t len)
{
    FILE *f = fopen("/proc/self/smaps", "r");
    CHECK(f, "open smaps: %s", strerror(errno));
    char line[512];
    int in = 0;
    out[0] = 0;
    while (fgets(line, sizeof line, f)) {
        unsigned long a, b;
        if (sscanf(line, "%lx-%lx ", &a, &b) == 2)
            in = a == (unsigned long)addr;
        else if (in && strncmp(line, "VmFlags:", 8) == 0) {
            snprintf(out, len, "%.200s", line + 8);
            out[strcspn(out, "\n")] = 0;
            break;
        }
    }
    fclose(f);
}

static int has_flag(const char *flags, const char *f)
{
    char pat[8];
    snprintf(pat, sizeof pat, " %s", f);
    const char *p = strstr(flags, pat);
    return p && (p[3] == 0 || p[3] == ' ');
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s STOPFILE [--undumpable] [--ksm] [--mdwe-no-inherit]\n",
                argv[0]);
        return 2;
    }
    stop = argv[1];
    int undumpable = 0, ksm = 0, no_inherit = 0;
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--undumpable") == 0)
            undumpable = 1;
        else if (strcmp(argv[i], "--ksm") == 0)
            ksm = 1;
        else if (strcmp(argv[i], "--mdwe-no-inherit") == 0)
            no_inherit = 1;
        else
            fail("bad option %s", argv[i]);
    }

    /* The tree below the subreaper: middle -> grandchild. */
    CHECK(prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0, "PR_SET_CHILD_SUBREAPER: %s",
          strerror(errno));
    int gp[2];
    CHECK(pipe(gp) == 0, "pipe: %s", strerror(errno));
    pid_t middle = fork();
    CHECK(middle >= 0, "fork: %s", strerror(errno));
    if (middle == 0) {
        pid_t g = fork();
        if (g < 0)
            _exit(3);
        if (g == 0) {
            close(gp[0]);
            /* The grandchild waits to be killed by the top. */
            for (;;)
                pause();
        }
        CHECK(write(gp[1], &g, sizeof g) == sizeof g, "write: %s", strerror(errno));
        wait_for_file(stop, 10);
        _exit(0); /* orphans the grandchild */
    }
    close(gp[1]);
    pid_t grandchild;
    CHECK(read(gp[0], &grandchild, sizeof grandchild) == sizeof grandchild, "read: %s",
          strerror(errno));

    CHECK(prctl(PR_SET_PDEATHSIG, SIGUSR1, 0, 0, 0) == 0, "PR_SET_PDEATHSIG: %s",
          strerror(errno));
    pthread_t t;
    CHECK(pthread_create(&t, NULL, second, NULL) == 0, "pthread_create");

    CHECK(prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) == 0, "PR_SET_THP_DISABLE: %s",
          strerror(errno));
    size_t huge_len = 4 << 20;
    char *huge = mmap(NULL, huge_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(huge != MAP_FAILED, "mmap: %s", strerror(errno));
    CHECK(madvise(huge, huge_len, MADV_HUGEPAGE) == 0, "madvise: %s", strerror(errno));
    huge[0] = 1;

    FILE *f = fopen("/proc/self/coredump_filter", "w");
    CHECK(f && fprintf(f, "0x7b\n") > 0 && fclose(f) == 0, "writing coredump_filter");
    CHECK(read_filter() == 0x7b, "coredump_filter reads %#lx", read_filter());

    CHECK(membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0,
          "MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED: %s", strerror(errno));
    CHECK(membarrier(MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED, 0, 0) == 0,
          "MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED: %s", strerror(errno));
    int regs = membarrier(MEMBARRIER_CMD_GET_REGISTRATIONS, 0, 0);
    const int want_regs =
        MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED | MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED;
    CHECK(regs == want_regs, "membarrier registrations %#x", regs);

    unsigned long mdwe = PR_MDWE_REFUSE_EXEC_GAIN | (no_inherit ? PR_MDWE_NO_INHERIT : 0);
    CHECK(prctl(PR_SET_MDWE, mdwe, 0, 0, 0) == 0, "PR_SET_MDWE: %s", strerror(errno));

    if (ksm)
        CHECK(prctl(PR_SET_MEMORY_MERGE, 1, 0, 0, 0) == 0, "PR_SET_MEMORY_MERGE: %s",
              strerror(errno));
    if (undumpable)
        CHECK(prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == 0, "PR_SET_DUMPABLE: %s", strerror(errno));

    say("tree %d %d", (int)middle, (int)grandchild);
    say("ready");
    wait_for_file(stop, 10);

    /* Parent-death signals, per thread. */
    CHECK(pdeathsig() == SIGUSR1, "main thread: parent-death signal %d", pdeathsig());
    pthread_join(t, NULL);
    CHECK(thread_sig == SIGRTMIN + 1, "second thread: parent-death signal %d", thread_sig);
    say("pdeathsig ok");

    int thp = prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0);
    CHECK(thp == 1, "PR_GET_THP_DISABLE %d", thp);
    char flags[256];
    vmflags(huge, flags, sizeof flags);
    CHECK(has_flag(flags, "hg") && !has_flag(flags, "nh"), "the huge-page region has flags%s",
          flags);
    say("thp ok");

    long got_mdwe = prctl(PR_GET_MDWE, 0, 0, 0, 0);
    CHECK(got_mdwe == (long)mdwe, "PR_GET_MDWE %ld, expected %lu", got_mdwe, mdwe);
    void *wx = mmap(NULL, 4096, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS,
                    -1, 0);
    CHECK(wx == MAP_FAILED && errno == EACCES, "a writable and executable mapping: %p (%s)", wx,
          strerror(errno));
    CHECK(prctl(PR_SET_MDWE, 0, 0, 0, 0) != 0, "MDWE could be cleared");
    say("mdwe ok");

    CHECK(read_filter() == 0x7b, "coredump_filter %#lx", read_filter());
    say("coredump_filter ok");

    regs = membarrier(MEMBARRIER_CMD_GET_REGISTRATIONS, 0, 0);
    CHECK(regs == want_regs, "membarrier registrations %#x, expected %#x", regs, want_regs);
    CHECK(membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) == 0,
          "MEMBARRIER_CMD_PRIVATE_EXPEDITED: %s", strerror(errno));
    say("membarrier ok");

    int d = prctl(PR_GET_DUMPABLE, 0, 0, 0, 0);
    CHECK(d == (undumpable ? 0 : 1), "PR_GET_DUMPABLE %d", d);
    say("dumpable ok");

    int merge = prctl(PR_GET_MEMORY_MERGE, 0, 0, 0, 0);
    CHECK(merge == ksm || (!ksm && merge < 0), "PR_GET_MEMORY_MERGE %d", merge);
    say("ksm ok");

    /* The subreaper: the middle child exits, its orphan comes to us. */
    int sub = -1;
    CHECK(prctl(PR_GET_CHILD_SUBREAPER, &sub, 0, 0, 0) == 0 && sub == 1,
          "PR_GET_CHILD_SUBREAPER %d", sub);
    int st;
    pid_t r;
    while ((r = waitpid(middle, &st, 0)) < 0 && errno == EINTR)
        ;
    CHECK(r == middle && WIFEXITED(st) && WEXITSTATUS(st) == 0, "middle child: %d status %#x",
          (int)r, st);
    double deadline = now_mono() + 30;
    while (ppid_of(grandchild) != getpid()) {
        CHECK(now_mono() < deadline, "the grandchild %d has parent %d, not us (%d)",
              (int)grandchild, (int)ppid_of(grandchild), (int)getpid());
        sleep_ms(5);
    }
    kill(grandchild, SIGKILL);
    while ((r = waitpid(grandchild, &st, 0)) < 0 && errno == EINTR)
        ;
    CHECK(r == grandchild && WIFSIGNALED(st), "reaping the grandchild: %d status %#x", (int)r,
          st);
    say("subreaper ok");
    say("prctl ok");
    return 0;
}
