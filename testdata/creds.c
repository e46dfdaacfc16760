/* creds root STOPFILE UID GID
 * creds user STOPFILE [GID...]
 *
 * Keeps per-thread credentials across a checkpoint. Every change is made with a raw
 * system call (glibc's setresuid & co. would broadcast to every thread), so the two
 * threads end up with different credentials.
 *
 * root (run as root): a second thread starts as root; then
 *   the main thread: inheritable {NET_BIND_SERVICE, MKNOD}; MKNOD and SYS_BOOT
 *     dropped from the bounding set (MKNOD stays inheritable); groups {GID, 20001,
 *     20002}; gids real GID, effective 20001, saved 20002, fs GID; securebits
 *     NO_SETUID_FIXUP | KEEP_CAPS | NOROOT | NOROOT_LOCKED; uids real UID, effective
 *     20003, saved 20004, fs UID; ambient NET_BIND_SERVICE; NO_CAP_AMBIENT_RAISE added
 *     to the securebits; permitted = effective = {NET_BIND_SERVICE}; no_new_privs;
 *   the second thread: groups {20010}; gids 20011 20012 20011 (fs 20012); uids 0 20020
 *     0 (fs 20020: the kernel clears its effective set); permitted all but NET_ADMIN,
 *     effective {CHOWN}, inheritable {KILL}; keep-caps (PR_SET_KEEPCAPS).
 *   It checks it got exactly that and that the main thread can bind a port below 1024.
 * user (run as an ordinary user, e.g. by setpriv with groups, a smaller bounding set
 *   and securebits): a second thread keeps what the program was started with; the main
 *   thread sets keep-caps and no_new_privs. The GIDs are supplementary groups that
 *   the user namespace of an ordinary user's restore does not map: after the restore
 *   the process sees them as the overflow gid (as it sees files of unmapped owners),
 *   though the kernel (and the host) still knows them as they were.
 *
 * Each thread records its credentials (/proc/thread-self/status, getresuid,
 * getresgid, fsuid, fsgid, getgroups, capget, securebits, keep-caps, no_new_privs, the
 * ambient set), prints "ready", and waits until STOPFILE exists. Then each thread
 * reads them again and compares: "OK thread N" for each thread, then "creds ok", or
 * "FAIL: ..." naming the first difference (exit 1). In root mode the main thread also
 * binds a port below 1024 again. After "creds ok" both threads still run until
 * STOPFILE.end exists (for a look at /proc), then it exits 0.
 */
#include "common.h"
#include <arpa/inet.h>
#include <linux/capability.h>
#include <linux/securebits.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>

#define MAXG 64

struct snap {
    char status[9][512]; /* the status lines below */
    long ids[8];         /* r e s fs uid, r e s fs gid */
    int ngroups;
    gid_t groups[MAXG];
    struct __user_cap_data_struct cap[2];
    long securebits, keepcaps, nnp, ambient_nbs;
};

static const char *status_keys[9] = {"Uid:", "Gid:", "Groups:", "CapInh:", "CapPrm:",
                                     "CapEff:", "CapBnd:", "CapAmb:", "NoNewPrivs:"};

static void status_lines(struct snap *s)
{
    FILE *f = fopen("/proc/thread-self/status", "r");
    CHECK(f, "open /proc/thread-self/status: %s", strerror(errno));
    char line[512];
    memset(s->status, 0, sizeof s->status);
    while (fgets(line, sizeof line, f)) {
        for (int i = 0; i < 9; i++) {
            size_t n = strlen(status_keys[i]);
            if (!strncmp(line, status_keys[i], n)) {
                line[strcspn(line, "\n")] = 0;
                snprintf(s->status[i], sizeof s->status[i], "%s", line);
            }
        }
    }
    fclose(f);
}

static void take(struct snap *s)
{
    memset(s, 0, sizeof *s);
    status_lines(s);
    uid_t r, e, sv;
    gid_t gr, ge, gs;
    CHECK(syscall(SYS_getresuid, &r, &e, &sv) == 0, "getresuid: %s", strerror(errno));
    CHECK(syscall(SYS_getresgid, &gr, &ge, &gs) == 0, "getresgid: %s", strerror(errno));
    s->ids[0] = r, s->ids[1] = e, s->ids[2] = sv;
    s->ids[3] = syscall(SYS_setfsuid, -1); /* an invalid id: returns the current one */
    s->ids[4] = gr, s->ids[5] = ge, s->ids[6] = gs;
    s->ids[7] = syscall(SYS_setfsgid, -1);
    s->ngroups = syscall(SYS_getgroups, MAXG, s->groups);
    CHECK(s->ngroups >= 0, "getgroups: %s", strerror(errno));
    struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
    CHECK(syscall(SYS_capget, &h, s->cap) == 0, "capget: %s", strerror(errno));
    s->securebits = prctl(PR_GET_SECUREBITS, 0, 0, 0, 0);
    s->keepcaps = prctl(PR_GET_KEEPCAPS, 0, 0, 0, 0);
    s->nnp = prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0);
    s->ambient_nbs = prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_IS_SET, CAP_NET_BIND_SERVICE, 0, 0);
}

static void compare(int n, const struct snap *a, const struct snap *b)
{
    for (int i = 0; i < 9; i++)
        CHECK(!strcmp(a->status[i], b->status[i]), "thread %d: status `%s` became `%s`", n,
              a->status[i], b->status[i]);
    static const char *id_names[8] = {"real uid", "effective uid", "saved uid", "fs uid",
                                      "real gid", "effective gid", "saved gid", "fs gid"};
    for (int i = 0; i < 8; i++)
        CHECK(a->ids[i] == b->ids[i], "thread %d: %s %ld became %ld", n, id_names[i],
              a->ids[i], b->ids[i]);
    CHECK(a->ngroups == b->ngroups && !memcmp(a->groups, b->groups, sizeof(gid_t) * a->ngroups),
          "thread %d: getgroups changed (%d groups, now %d)", n, a->ngroups, b->ngroups);
    for (int i = 0; i < 2; i++)
        CHECK(a->cap[i].effective == b->cap[i].effective &&
                  a->cap[i].permitted == b->cap[i].permitted &&
                  a->cap[i].inheritable == b->cap[i].inheritable,
              "thread %d: capget word %d changed: eff %#x prm %#x inh %#x, now %#x %#x %#x", n,
              i, a->cap[i].effective, a->cap[i].permitted, a->cap[i].inheritable,
              b->cap[i].effective, b->cap[i].permitted, b->cap[i].inheritable);
    CHECK(a->securebits == b->securebits, "thread %d: securebits %#lx became %#lx", n,
          a->securebits, b->securebits);
    CHECK(a->keepcaps == b->keepcaps, "thread %d: keep-caps %ld became %ld", n, a->keepcaps,
          b->keepcaps);
    CHECK(a->nnp == b->nnp, "thread %d: no_new_privs %ld became %ld", n, a->nnp, b->nnp);
    CHECK(a->ambient_nbs == b->ambient_nbs,
          "thread %d: ambient CAP_NET_BIND_SERVICE %ld became %ld", n, a->ambient_nbs,
          b->ambient_nbs);
}

#define BIT(c) (1ULL << (c))

static void set_caps(uint64_t prm, uint64_t eff, uint64_t inh, const char *what)
{
    struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct d[2];
    for (int i = 0; i < 2; i++) {
        d[i].permitted = (uint32_t)(prm >> (32 * i));
        d[i].effective = (uint32_t)(eff >> (32 * i));
        d[i].inheritable = (uint32_t)(inh >> (32 * i));
    }
    CHECK(syscall(SYS_capset, &h, d) == 0, "capset (%s): %s", what, strerror(errno));
}

static uint64_t permitted_now(void)
{
    struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct d[2];
    CHECK(syscall(SYS_capget, &h, d) == 0, "capget: %s", strerror(errno));
    return (uint64_t)d[1].permitted << 32 | d[0].permitted;
}

#define SYS(call, ...) CHECK(syscall(call, __VA_ARGS__) == 0, #call ": %s", strerror(errno))
#define PRCTL(...) CHECK(prctl(__VA_ARGS__) == 0, "prctl(" #__VA_ARGS__ "): %s", strerror(errno))

/* Binds a TCP port below 1024 on loopback (needs CAP_NET_BIND_SERVICE). */
static void bind_low_port(void)
{
    for (int port = 1023; port > 900; port--) {
        int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        CHECK(s >= 0, "socket: %s", strerror(errno));
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        int r = bind(s, (struct sockaddr *)&a, sizeof a);
        int err = errno;
        close(s);
        if (r == 0)
            return;
        CHECK(err == EADDRINUSE, "binding port %d: %s", port, strerror(err));
    }
    fail("every port from 901 to 1023 is in use");
}

static int root_mode;
static long unmapped[MAXG];
static int n_unmapped;

/* `before` as the restored process must see it: the unmapped groups as the overflow
 * gid (in getgroups and in the status line, both in the kernel's order). */
static struct snap seen_after_restore(const struct snap *before)
{
    struct snap w = *before;
    if (!n_unmapped)
        return w;
    long overflow = 65534;
    FILE *f = fopen("/proc/sys/kernel/overflowgid", "r");
    if (f) {
        CHECK(fscanf(f, "%ld", &overflow) == 1, "reading overflowgid");
        fclose(f);
    }
    char line[512] = "Groups:\t";
    for (int i = 0; i < w.ngroups; i++) {
        for (int j = 0; j < n_unmapped; j++)
            if ((long)w.groups[i] == unmapped[j])
                w.groups[i] = (gid_t)overflow;
        snprintf(line + strlen(line), sizeof line - strlen(line), "%ld ", (long)w.groups[i]);
    }
    snprintf(w.status[2], sizeof w.status[2], "%s", line);
    return w;
}

static long uid_, gid_;
static struct snap before[2], after[2];
static volatile int phase; /* 1: thread 2 set up; 2: check now; 3: thread 2 checked */

static void thread2_setup(void)
{
    if (root_mode) {
        gid_t g[1] = {20010};
        SYS(SYS_setgroups, 1, g);
        SYS(SYS_setresgid, 20011, 20012, 20011);
        SYS(SYS_setresuid, 0, 20020, 0);
        uint64_t prm = permitted_now() & ~BIT(CAP_NET_ADMIN);
        set_caps(prm, BIT(CAP_CHOWN), BIT(CAP_KILL), "thread 2");
        PRCTL(PR_SET_KEEPCAPS, 1, 0, 0, 0);
    }
}

static void *thread2(void *arg)
{
    (void)arg;
    thread2_setup();
    take(&before[1]);
    phase = 1;
    while (phase < 2)
        sleep_ms(10);
    take(&after[1]);
    phase = 3;
    while (phase < 4)
        sleep_ms(10);
    return NULL;
}

static void main_setup(void)
{
    if (root_mode) {
        uint64_t all = permitted_now();
        set_caps(all, all, BIT(CAP_NET_BIND_SERVICE) | BIT(CAP_MKNOD), "inheritable");
        PRCTL(PR_CAPBSET_DROP, CAP_MKNOD, 0, 0, 0);
        PRCTL(PR_CAPBSET_DROP, CAP_SYS_BOOT, 0, 0, 0);
        gid_t g[3] = {(gid_t)gid_, 20001, 20002};
        SYS(SYS_setgroups, 3, g);
        SYS(SYS_setresgid, gid_, 20001, 20002);
        syscall(SYS_setfsgid, gid_);
        PRCTL(PR_SET_SECUREBITS,
              SECBIT_NO_SETUID_FIXUP | SECBIT_KEEP_CAPS | SECBIT_NOROOT | SECBIT_NOROOT_LOCKED,
              0, 0, 0);
        SYS(SYS_setresuid, uid_, 20003, 20004);
        syscall(SYS_setfsuid, uid_);
        PRCTL(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_NET_BIND_SERVICE, 0, 0);
        PRCTL(PR_SET_SECUREBITS,
              SECBIT_NO_SETUID_FIXUP | SECBIT_KEEP_CAPS | SECBIT_NOROOT | SECBIT_NOROOT_LOCKED |
                  SECBIT_NO_CAP_AMBIENT_RAISE,
              0, 0, 0);
        set_caps(BIT(CAP_NET_BIND_SERVICE), BIT(CAP_NET_BIND_SERVICE),
                 BIT(CAP_NET_BIND_SERVICE) | BIT(CAP_MKNOD), "reduced");
    } else {
        PRCTL(PR_SET_KEEPCAPS, 1, 0, 0, 0);
    }
    PRCTL(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
}

/* The root mode's setup did what it should (a check of this program, not of ckpt). */
static void check_root_setup(void)
{
    const struct snap *a = &before[0], *b = &before[1];
    CHECK(a->ids[0] == uid_ && a->ids[1] == 20003 && a->ids[2] == 20004 && a->ids[3] == uid_,
          "main thread uids %ld %ld %ld %ld", a->ids[0], a->ids[1], a->ids[2], a->ids[3]);
    CHECK(a->ids[4] == gid_ && a->ids[5] == 20001 && a->ids[6] == 20002 && a->ids[7] == gid_,
          "main thread gids %ld %ld %ld %ld", a->ids[4], a->ids[5], a->ids[6], a->ids[7]);
    CHECK(a->ngroups == 3, "main thread has %d groups", a->ngroups);
    CHECK(a->cap[0].permitted == BIT(CAP_NET_BIND_SERVICE) &&
              a->cap[0].effective == BIT(CAP_NET_BIND_SERVICE) &&
              a->cap[0].inheritable == (BIT(CAP_NET_BIND_SERVICE) | BIT(CAP_MKNOD)),
          "main thread caps prm %#x eff %#x inh %#x", a->cap[0].permitted, a->cap[0].effective,
          a->cap[0].inheritable);
    CHECK(a->ambient_nbs == 1 && a->nnp == 1 && a->keepcaps == 1 && a->securebits == 0x57,
          "main thread ambient %ld nnp %ld keepcaps %ld securebits %#lx", a->ambient_nbs, a->nnp,
          a->keepcaps, a->securebits);
    CHECK(prctl(PR_CAPBSET_READ, CAP_MKNOD, 0, 0, 0) == 0 &&
              prctl(PR_CAPBSET_READ, CAP_SYS_BOOT, 0, 0, 0) == 0 &&
              prctl(PR_CAPBSET_READ, CAP_KILL, 0, 0, 0) == 1,
          "main thread bounding set");
    CHECK(b->ids[0] == 0 && b->ids[1] == 20020 && b->ids[2] == 0 && b->ids[3] == 20020,
          "thread 2 uids %ld %ld %ld %ld", b->ids[0], b->ids[1], b->ids[2], b->ids[3]);
    CHECK(b->ids[4] == 20011 && b->ids[5] == 20012 && b->ids[6] == 20011 && b->ids[7] == 20012,
          "thread 2 gids");
    CHECK(b->ngroups == 1 && b->groups[0] == 20010, "thread 2 groups");
    CHECK(b->cap[0].effective == BIT(CAP_CHOWN) && b->cap[0].inheritable == BIT(CAP_KILL) &&
              !(b->cap[0].permitted & BIT(CAP_NET_ADMIN)) &&
              (b->cap[0].permitted & BIT(CAP_SETUID)),
          "thread 2 caps prm %#x eff %#x inh %#x", b->cap[0].permitted, b->cap[0].effective,
          b->cap[0].inheritable);
    CHECK(b->nnp == 0 && b->keepcaps == 1 && b->securebits == SECBIT_KEEP_CAPS,
          "thread 2 nnp %ld keepcaps %ld securebits %#lx", b->nnp, b->keepcaps, b->securebits);
}

int main(int argc, char **argv)
{
    if (argc < 3 || (strcmp(argv[1], "root") && strcmp(argv[1], "user")) ||
        (!strcmp(argv[1], "root") && argc != 5)) {
        fprintf(stderr, "usage: creds root STOPFILE UID GID | creds user STOPFILE\n");
        return 2;
    }
    root_mode = !strcmp(argv[1], "root");
    const char *stop = argv[2];
    for (int i = 3; !root_mode && i < argc && n_unmapped < MAXG; i++)
        unmapped[n_unmapped++] = atol(argv[i]);
    if (root_mode) {
        uid_ = atol(argv[3]);
        gid_ = atol(argv[4]);
        CHECK(geteuid() == 0, "root mode needs root");
    }
    /* A stack of our own: glibc marks the stacks it allocates MADV_NOHUGEPAGE here,
     * which is another attribute group's business. */
    pthread_t t;
    pthread_attr_t attr;
    size_t stack_size = 1 << 20;
    void *stack = mmap(NULL, stack_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(stack != MAP_FAILED, "mmap: %s", strerror(errno));
    CHECK(pthread_attr_init(&attr) == 0 && pthread_attr_setstack(&attr, stack, stack_size) == 0,
          "pthread_attr_setstack");
    CHECK(pthread_create(&t, &attr, thread2, NULL) == 0, "pthread_create");
    while (phase < 1)
        sleep_ms(10);
    main_setup();
    /* A change of credentials makes the process non-dumpable; it was dumpable. */
    PRCTL(PR_SET_DUMPABLE, 1, 0, 0, 0);
    take(&before[0]);
    if (root_mode) {
        check_root_setup();
        bind_low_port();
    } else {
        CHECK(before[0].nnp == 1 && before[0].keepcaps == 1 && before[1].nnp == 0 &&
                  before[1].keepcaps == 0,
              "user mode: nnp %ld/%ld keepcaps %ld/%ld", before[0].nnp, before[1].nnp,
              before[0].keepcaps, before[1].keepcaps);
    }
    for (int i = 0; i < 2; i++)
        say("thread %d: %s %s %s securebits %#lx", i + 1, before[i].status[0],
            before[i].status[4], before[i].status[8], before[i].securebits);
    say("ready");
    while (access(stop, F_OK) != 0)
        sleep_ms(20);
    take(&after[0]);
    phase = 2;
    while (phase < 3)
        sleep_ms(10);
    CHECK(prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) == 1, "the process is no longer dumpable");
    for (int i = 0; i < 2; i++) {
        struct snap want = seen_after_restore(&before[i]);
        compare(i + 1, &want, &after[i]);
        say("OK thread %d", i + 1);
    }
    if (root_mode)
        bind_low_port();
    say("creds ok");
    char end[4096];
    snprintf(end, sizeof end, "%s.end", stop);
    while (access(end, F_OK) != 0)
        sleep_ms(20);
    phase = 4;
    CHECK(pthread_join(t, NULL) == 0, "pthread_join");
    return 0;
}
