/* shmtree tree STOPFILE
 * shmtree segment STOPFILE
 *
 * MAP_SHARED memory across a checkpoint.
 *
 * tree: a tree of processes sharing anonymous MAP_SHARED memory.
 *   The root maps region A (64 MiB, MAP_SHARED|MAP_ANONYMOUS), writes a
 *   pattern into [1 MiB, 9 MiB) and into the last page, and leaves the rest
 *   untouched (holes).  It forks a short-lived child D that writes a 2 MiB
 *   block at offset 32 MiB (pattern seeded by D's pid) and exits; the root
 *   reaps it before "ready", so after that no living process wrote those pages.
 *   Then the root forks children 1, 2, 3; child 1 maps region B (4 MiB,
 *   MAP_SHARED|MAP_ANONYMOUS, at the fixed address B_ADDR), marks it as its own
 *   and forks grandchild 4, which inherits B: B is shared by exactly 1 and 4.
 *   Child 2 maps a separate region B2 of the same size at the same address
 *   B_ADDR (in its own address space), marked as its own and shared with
 *   nobody.  Processes 1..4 each own a slot of A and increment its counter
 *   every millisecond, checking each time that the shared counter still holds
 *   exactly the value they last stored (a private copy): a lost, copied or
 *   rolled-back page shows at once.  Child 1 and child 2 also increment a
 *   counter in B / B2 and check it the same way (if B and B2 became one object
 *   the two writers would disagree, and the owner marks would be wrong);
 *   grandchild 4 increments its own counter in B, which child 1 watches.
 *   The root watches every slot of A: the counters never go backwards as seen
 *   from the root.
 *   Prints "proc <i> <pid> <ppid>" per process (i = 0..4), "dead <pid>" for D,
 *   "regions A=<addr> B=<addr>", then "ready" once every counter has moved.
 *   Stops when STOPFILE exists: the root takes a snapshot of every counter
 *   and waits (30 s at most) until each moved on by 20 as seen from the root
 *   (the memory is still shared, not copied); checks the pattern and D's block
 *   (as does child 3 from its own mapping); then sets a stop flag in A that
 *   every counter process must see (through the shared memory) and
 *   acknowledge.  Child 1 first checks (30 s at most) that grandchild 4's
 *   counter in B keeps moving as seen from child 1, then stops 4 through a
 *   flag in B and reaps it.  Prints "shm ok" and exits 0, or "FAIL: ..." (from
 *   any process) and exits 1.
 *
 * segment: a POSIX shared memory segment (/dev/shm).
 *   shm_open("/ckpt-test-<pid>", O_CREAT|O_EXCL|O_RDWR), mode 0640 (fchmod),
 *   1 MiB, mapped MAP_SHARED; the descriptor stays open.  Layout: word 0 is a
 *   counter, word 1 a "note" the program never writes (a test may change it
 *   in the file), [4096, 1 MiB) a pattern.  Every 2 ms it checks that the
 *   counter still holds the value it last stored (its private copy) and
 *   increments it.  Prints "segment /dev/shm/ckpt-test-<pid>", then "ready"
 *   after 20 increments.  Stops when STOPFILE exists: checks the pattern, that
 *   the open descriptor, the mapping and the path are one file (same inode;
 *   a pwrite through the descriptor shows in the mapping), its size and mode;
 *   prints "segment ok counter=<n> note=<note>" and exits 0 (leaving the
 *   segment for the test to look at and remove).
 */
#include "common.h"
#include <fcntl.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>

#define MIB (1024UL * 1024UL)
#define PAGE 4096UL

/* ------------------------------------------------------------------ pattern */

static uint64_t pat(uint64_t seed, uint64_t k)
{
    uint64_t x = (k + 1) * 0x9E3779B97F4A7C15ULL ^ (seed * 0xC2B2AE3D27D4EB4FULL);
    x ^= x >> 29;
    return x;
}

static void fill(void *p, size_t len, uint64_t seed)
{
    uint64_t *w = p;
    for (size_t k = 0; k < len / 8; k++)
        w[k] = pat(seed, k);
}

/* Returns the index of the first differing word, or -1. */
static long differs(const void *p, size_t len, uint64_t seed)
{
    const uint64_t *w = p;
    for (size_t k = 0; k < len / 8; k++)
        if (w[k] != pat(seed, k))
            return (long)k;
    return -1;
}

static uint64_t ld(volatile uint64_t *p)
{
    return __atomic_load_n(p, __ATOMIC_SEQ_CST);
}

static void st(volatile uint64_t *p, uint64_t v)
{
    __atomic_store_n(p, v, __ATOMIC_SEQ_CST);
}

/* ------------------------------------------------------------------ tree */

#define A_SIZE (64 * MIB)
#define PAT_OFF (1 * MIB)
#define PAT_LEN (8 * MIB)
#define LAST_OFF (A_SIZE - PAGE)
#define DEAD_OFF (32 * MIB)
#define DEAD_LEN (2 * MIB)
#define B_SIZE (4 * MIB)
#define B_ADDR ((void *)0x200000000000UL)
#define NPROC 5 /* root + children 1, 2, 3 + grandchild 4 */
#define SEED_A 0xA11CEULL
#define SEED_LAST 0x1A57ULL

struct slot {
    uint64_t count;
    uint64_t pid;
    uint64_t acked;
    uint64_t pad[5];
};

struct hdr {
    uint64_t stop;
    uint64_t pad[7];
    struct slot slot[NPROC];
};

struct bregion {
    uint64_t mark;  /* 'B1' or 'B2' */
    uint64_t owner; /* pid of the process that mapped it */
    uint64_t count; /* written only by the owner */
    uint64_t gc;    /* written only by grandchild 4 (in B) */
    uint64_t stop4; /* set by child 1: grandchild 4 stops */
};

#define MARK_B 0x4231ULL
#define MARK_B2 0x4232ULL

static char *A;
static struct hdr *H;
static const char *stopfile;

static void check_pattern(const char *who, pid_t dead)
{
    long k = differs(A + PAT_OFF, PAT_LEN, SEED_A);
    CHECK(k < 0, "%s: the root's pattern in A differs at offset %#lx", who,
          (unsigned long)(PAT_OFF + 8 * (unsigned long)k));
    k = differs(A + LAST_OFF, PAGE, SEED_LAST);
    CHECK(k < 0, "%s: the pattern in the last page of A differs at word %ld", who, k);
    k = differs(A + DEAD_OFF, DEAD_LEN, (uint64_t)dead);
    CHECK(k < 0,
          "%s: the block written by the exited child %d differs at offset %#lx (its pages were "
          "lost: no living process wrote them last)",
          who, (int)dead, (unsigned long)(DEAD_OFF + 8 * (unsigned long)k));
}

static struct bregion *map_b(uint64_t mark)
{
    void *p = mmap(B_ADDR, B_SIZE, PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    CHECK(p != MAP_FAILED, "mmap B: %s", strerror(errno));
    CHECK(p == B_ADDR, "mmap B at %p returned %p", B_ADDR, p);
    struct bregion *b = p;
    b->mark = mark;
    b->owner = (uint64_t)getpid();
    fill((char *)p + PAGE, B_SIZE - PAGE, mark);
    return b;
}

static void check_b(struct bregion *b, uint64_t mark, int idx, uint64_t count)
{
    CHECK(ld(&b->mark) == mark && ld(&b->owner) == (uint64_t)getpid(),
          "process %d (pid %d): region B at %p holds mark %#llx owner %llu, expected its own "
          "%#llx %d (another process's region?)",
          idx, (int)getpid(), (void *)b, (unsigned long long)b->mark,
          (unsigned long long)b->owner, (unsigned long long)mark, (int)getpid());
    CHECK(ld(&b->count) == count,
          "process %d (pid %d): its counter in region B holds %llu, it stored %llu (written by "
          "another process or rolled back)",
          idx, (int)getpid(), (unsigned long long)ld(&b->count), (unsigned long long)count);
    long k = differs((char *)b + PAGE, B_SIZE - PAGE, mark);
    CHECK(k < 0, "process %d: the pattern in region B differs at word %ld", idx, k);
}

/* One step of a counter: the shared value must be what we stored last. */
static void bump(volatile uint64_t *shared, uint64_t *mine, int idx, const char *what)
{
    uint64_t v = ld(shared);
    CHECK(v == *mine,
          "process %d (pid %d): its counter in %s holds %llu, it stored %llu (lost, copied or "
          "rolled back)",
          idx, (int)getpid(), what, (unsigned long long)v, (unsigned long long)*mine);
    (*mine)++;
    st(shared, *mine);
}

/* Processes 1..4. */
static void counter_process(int idx, pid_t dead) __attribute__((noreturn));
static void counter_process(int idx, pid_t dead)
{
    struct slot *s = &H->slot[idx];
    struct bregion *b = NULL;
    pid_t gc = 0;
    uint64_t mine = 0, bmine = 0;
    if (idx == 1) {
        b = map_b(MARK_B);
        fflush(stdout);
        gc = fork();
        CHECK(gc >= 0, "fork: %s", strerror(errno));
        if (gc == 0) {
            /* grandchild 4: shares B with child 1 */
            idx = 4;
            s = &H->slot[4];
            st(&s->pid, (uint64_t)getpid());
            say("proc 4 %d %d", (int)getpid(), (int)getppid());
            uint64_t gmine = 0;
            while (!ld(&b->stop4)) {
                bump(&s->count, &mine, 4, "A");
                bump(&b->gc, &gmine, 4, "B");
                sleep_ms(1);
            }
            CHECK(ld(&b->mark) == MARK_B && ld(&b->owner) == (uint64_t)getppid(),
                  "grandchild 4: region B holds mark %#llx owner %llu, expected child 1's (%d)",
                  (unsigned long long)b->mark, (unsigned long long)b->owner, (int)getppid());
            st(&s->acked, 1);
            exit(0);
        }
    } else if (idx == 2) {
        b = map_b(MARK_B2);
    }
    st(&s->pid, (uint64_t)getpid());
    say("proc %d %d %d", idx, (int)getpid(), (int)getppid());
    while (!ld(&H->stop)) {
        bump(&s->count, &mine, idx, "A");
        if (b)
            bump(&b->count, &bmine, idx, idx == 1 ? "B" : "B2");
        sleep_ms(1);
    }
    /* the root set the stop flag in A: final checks */
    CHECK(ld(&s->count) == mine, "process %d: its counter in A holds %llu, it stored %llu", idx,
          (unsigned long long)ld(&s->count), (unsigned long long)mine);
    if (b)
        check_b(b, idx == 1 ? MARK_B : MARK_B2, idx, bmine);
    if (idx == 3)
        check_pattern("child 3", dead);
    if (idx == 1) {
        /* grandchild 4's counter in B still moves as seen from here */
        uint64_t g0 = ld(&b->gc);
        double t0 = now_mono();
        while (ld(&b->gc) < g0 + 20) {
            CHECK(now_mono() - t0 < 30,
                  "child 1: grandchild 4's counter in region B stays at %llu (was %llu): is B "
                  "still shared between them?",
                  (unsigned long long)ld(&b->gc), (unsigned long long)g0);
            sleep_ms(1);
        }
        st(&b->stop4, 1);
        int ws;
        pid_t r;
        do
            r = waitpid(gc, &ws, 0);
        while (r < 0 && errno == EINTR);
        CHECK(r == gc, "child 1: waitpid(%d): %s", (int)gc, strerror(errno));
        CHECK(WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "child 1: grandchild 4 (pid %d) ended with %#x",
              (int)gc, ws);
    }
    st(&s->acked, 1);
    exit(0);
}

static int tree_main(void)
{
    A = mmap(NULL, A_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    CHECK(A != MAP_FAILED, "mmap A: %s", strerror(errno));
    H = (struct hdr *)A;
    fill(A + PAT_OFF, PAT_LEN, SEED_A);
    fill(A + LAST_OFF, PAGE, SEED_LAST);
    say("proc 0 %d %d", (int)getpid(), (int)getppid());
    say("regions A=%p B=%p", (void *)A, B_ADDR);

    /* D: writes its block and exits */
    fflush(stdout);
    pid_t dead = fork();
    CHECK(dead >= 0, "fork: %s", strerror(errno));
    if (dead == 0) {
        fill(A + DEAD_OFF, DEAD_LEN, (uint64_t)getpid());
        _exit(0);
    }
    int ws;
    pid_t r;
    do
        r = waitpid(dead, &ws, 0);
    while (r < 0 && errno == EINTR);
    CHECK(r == dead && WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "the short-lived child %d: %d %#x",
          (int)dead, (int)r, ws);
    say("dead %d", (int)dead);
    check_pattern("root before ready", dead);

    pid_t kids[4] = { 0 };
    for (int i = 1; i <= 3; i++) {
        fflush(stdout);
        kids[i] = fork();
        CHECK(kids[i] >= 0, "fork: %s", strerror(errno));
        if (kids[i] == 0)
            counter_process(i, dead);
    }

    /* the root watches every counter: it never goes backwards */
    uint64_t last[NPROC] = { 0 };
    int ready = 0;
    for (;;) {
        int moved = 1;
        for (int i = 1; i < NPROC; i++) {
            uint64_t v = ld(&H->slot[i].count);
            CHECK(v >= last[i],
                  "root: the counter of process %d went back from %llu to %llu as seen from the "
                  "root",
                  i, (unsigned long long)last[i], (unsigned long long)v);
            last[i] = v;
            if (v < 20)
                moved = 0;
        }
        if (!ready && moved) {
            say("ready");
            ready = 1;
        } else if (ready && file_exists(stopfile)) {
            break;
        }
        sleep_ms(5);
    }

    /* every counter moves on, as seen from the root */
    uint64_t snap[NPROC];
    for (int i = 1; i < NPROC; i++)
        snap[i] = ld(&H->slot[i].count);
    double t0 = now_mono();
    for (int i = 1; i < NPROC; i++) {
        while (ld(&H->slot[i].count) < snap[i] + 20) {
            CHECK(now_mono() - t0 < 30,
                  "root: the counter of process %d (pid %llu) stays at %llu (was %llu) as seen "
                  "from the root: is A still shared with it?",
                  i, (unsigned long long)ld(&H->slot[i].pid),
                  (unsigned long long)ld(&H->slot[i].count), (unsigned long long)snap[i]);
            sleep_ms(1);
        }
    }
    say("counters moved");
    check_pattern("root after stop", dead);

    /* stop everyone through A; each must see it and acknowledge */
    st(&H->stop, 1);
    t0 = now_mono();
    for (int i = 1; i < NPROC; i++) {
        while (!ld(&H->slot[i].acked)) {
            CHECK(now_mono() - t0 < 30,
                  "root: process %d (pid %llu) never acknowledged the stop flag written in A by "
                  "the root",
                  i, (unsigned long long)ld(&H->slot[i].pid));
            sleep_ms(1);
        }
    }
    char bad[256] = "";
    for (int i = 1; i <= 3; i++) {
        do
            r = waitpid(kids[i], &ws, 0);
        while (r < 0 && errno == EINTR);
        CHECK(r == kids[i], "root: waitpid(%d): %s", (int)kids[i], strerror(errno));
        if (!(WIFEXITED(ws) && WEXITSTATUS(ws) == 0) && !bad[0])
            snprintf(bad, sizeof bad, "child %d (pid %d) ended with wait status %#x", i,
                     (int)kids[i], ws);
    }
    CHECK(!bad[0], "root: %s", bad);
    r = waitpid(-1, &ws, WNOHANG);
    CHECK(r < 0 && errno == ECHILD, "root: an unexpected child: waitpid(-1) = %d", (int)r);
    say("shm ok");
    return 0;
}

/* ------------------------------------------------------------------ segment */

#define SEG_SIZE (1 * MIB)
#define SEG_MODE 0640
#define SEG_SEED 0x5E6ULL

static int segment_main(void)
{
    char name[64], path[96];
    snprintf(name, sizeof name, "/ckpt-test-%d", (int)getpid());
    snprintf(path, sizeof path, "/dev/shm%s", name);
    int fd = shm_open(name, O_CREAT | O_EXCL | O_RDWR, SEG_MODE);
    CHECK(fd >= 0, "shm_open %s: %s", name, strerror(errno));
    CHECK(fchmod(fd, SEG_MODE) == 0, "fchmod: %s", strerror(errno));
    CHECK(ftruncate(fd, SEG_SIZE) == 0, "ftruncate: %s", strerror(errno));
    char *m = mmap(NULL, SEG_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    CHECK(m != MAP_FAILED, "mmap %s: %s", path, strerror(errno));
    volatile uint64_t *w = (volatile uint64_t *)m;
    fill(m + PAGE, SEG_SIZE - PAGE, SEG_SEED);
    say("segment %s", path);

    uint64_t mine = 0;
    int ready = 0;
    for (;;) {
        bump(&w[0], &mine, 0, path);
        if (!ready && mine >= 20) {
            say("ready");
            ready = 1;
        } else if (ready && file_exists(stopfile)) {
            break;
        }
        sleep_ms(2);
    }

    long k = differs(m + PAGE, SEG_SIZE - PAGE, SEG_SEED);
    CHECK(k < 0, "the pattern in %s differs at offset %#lx", path,
          (unsigned long)(PAGE + 8 * (unsigned long)k));
    struct stat fs, ps;
    CHECK(fstat(fd, &fs) == 0, "fstat: %s", strerror(errno));
    CHECK(stat(path, &ps) == 0, "%s is gone: %s", path, strerror(errno));
    CHECK(fs.st_ino == ps.st_ino && fs.st_dev == ps.st_dev,
          "the open descriptor is inode %lu, %s is inode %lu: not the same file",
          (unsigned long)fs.st_ino, path, (unsigned long)ps.st_ino);
    CHECK(fs.st_size == (off_t)SEG_SIZE, "%s has %lld bytes, expected %lu", path,
          (long long)fs.st_size, SEG_SIZE);
    CHECK((fs.st_mode & 07777) == SEG_MODE, "%s has mode %o, expected %o", path,
          (unsigned)(fs.st_mode & 07777), SEG_MODE);
    uint64_t probe = 0x50B3ULL ^ mine;
    CHECK(pwrite(fd, &probe, 8, 16) == 8, "pwrite: %s", strerror(errno));
    CHECK(ld(&w[2]) == probe,
          "a pwrite through the descriptor does not show in the mapping of %s: they are not "
          "the same file",
          path);
    CHECK(ld(&w[0]) == mine, "the counter holds %llu, expected %llu",
          (unsigned long long)ld(&w[0]), (unsigned long long)mine);
    say("segment ok counter=%llu note=%llu", (unsigned long long)mine,
        (unsigned long long)ld(&w[1]));
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 3 || (strcmp(argv[1], "tree") && strcmp(argv[1], "segment"))) {
        fprintf(stderr, "usage: %s tree|segment STOPFILE\n", argv[0]);
        return 2;
    }
    stopfile = argv[2];
    return strcmp(argv[1], "tree") == 0 ? tree_main() : segment_main();
}
