/* tree STOPFILE RECFILE [N]
 *
 * A tree of N processes (default 32, at least 8; the root included) plus one
 * zombie.  The root forks children, each child forks up to 3 grandchildren
 * (process i is a child of the root or a grandchild; see plan()):
 *   - child 1 leads its own process group (setpgid(0, 0)); its grandchildren
 *     (2, 3, 4) are members of that group;
 *   - child 5 called setsid(); its grandchildren (6, 7, ...) are in its
 *     session and group;
 *   - a zombie: a child of the root that exits with status 42 right away; the
 *     root makes sure it exited before "ready" (waitid WNOWAIT) but reaps it
 *     only at the end: waitpid must return its PID with exit status 42.
 * All N processes form a ring of pipes (process i reads from ring[i] and
 * writes to ring[i+1 mod N]) that passes a token, a counter: each process
 * checks that it receives exactly the value it expects (no token lost or
 * duplicated), then writes the record of that value to RECFILE, then passes
 * value + 1 on.  RECFILE was opened once by the root before forking, WITHOUT
 * O_APPEND: all processes write through that one shared description, and
 * each checks before writing that the shared offset is exactly where its
 * record goes (value * 40): with an offset that is not shared any more,
 * records would overwrite each other.  The root sleeps 5 ms between rounds.
 * Data in flight: before entering the ring, grandchild 2 (in child 1's group)
 * writes a known 5000-byte block into a pipe to grandchild 6 (in child 5's
 * session), which reads it only after the stop file appeared; then the
 * writer writes a second block and closes its end; the reader checks both
 * blocks and the end of file.
 * Socketpairs: every process other than the root is connected to its parent
 * by a unix socketpair, SOCK_SEQPACKET for odd indices and SOCK_STREAM for
 * even ones (the parent creates it just before forking the child; nobody
 * else keeps a copy).  Before entering the ring each side writes a first
 * batch to the other (stream: 4000 bytes; seqpacket: records of 1, 777 and
 * 3000 bytes), which stays in flight, unread, until the stop file appeared;
 * the contents depend on the pair, the direction and the record.  At the end
 * each side writes a second batch (stream: 1500 bytes; seqpacket: records of
 * 2000 and 5 bytes), shuts its end down for writing, then reads everything
 * from the other side and checks it byte for byte (record by record, with
 * the record boundaries), and then end of file.
 * Shared memory: the root maps a MAP_SHARED|MAP_ANONYMOUS region before
 * forking, with two slots per process: the last token value it handled and
 * how many tokens it handled, both updated before it passes the token on.
 * On every token a process checks, through that memory, that its ring
 * predecessor's slots moved to exactly the token it just passed (the region
 * is still shared, not a private copy); at the end every process checks that
 * it sees every other process's final values.
 * Every process records getpid(), getppid(), getpgid(0), getsid(0) before
 * "ready" and checks them on every token and at the end: unchanged (except
 * the root's parent, which is outside the tree: the restorer after a
 * restore; and a process whose group or session leader is outside the tree
 * checks instead that it is in the root's group / session).
 *
 * Prints "proc <i> <pid> <ppid> <pgid> <sid>" per process, "zombie <pid>",
 * then "ready" after 3 rounds of the ring.  Stops when STOPFILE exists: the
 * root sends a stop token around the ring; every process does its final
 * checks and reaps its children (checking their exit status 0, then that no
 * other child exists); the root reaps the zombie, its children, checks
 * RECFILE (every record exactly once, in order, written by the right
 * process) and prints "tree ok <N> rounds=<r> records=<k> pairs=<p>
 * shm=<handled>" (p: socketpairs checked, N - 1; handled: tokens each process
 * handled), exit 0; or any process prints "FAIL: ..." and the root exits 1.
 */
#include "common.h"
#include <fcntl.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>

#define MAXN 256
#define RECSZ 40
#define BLK 5000
#define STOP (-1L)
#define PGL 1    /* child: leads its own process group */
#define SSL 5    /* child: session leader */
#define WRITER 2 /* grandchild in PGL's group: writes data that stays in flight */
#define READER 6 /* grandchild in SSL's session: reads it after the stop file */

static int n;
static int parent[MAXN];
static int ring[MAXN][2]; /* ring[i] is read by process i, written by i - 1 */
static int flight[2];     /* WRITER -> READER */
static int recfd;
/* socketpair between process c and its parent: sp[c][0] is the parent's
 * end, sp[c][1] the child's; -1 where this process never had it */
static int sp[MAXN][2];
/* shared memory: shm_last[i] the last token process i handled, shm_count[i]
 * how many it handled */
static long *shm_last, *shm_count;
static long handled; /* tokens this process handled */
static const char *recpath;
static pid_t root_pid, root_pgid, root_sid;

static struct {
    int idx;
    pid_t pid, ppid, pgid, sid;
    int own_group;   /* its group leader is a process of the tree */
    int own_session; /* its session leader is a process of the tree */
} me;

static pid_t kids[MAXN];
static int kid_idx[MAXN];
static int nkids;

/* The socketpair batches: sizes of the records (one record for stream). */
#define SP_STREAM1 4000
#define SP_STREAM2 1500
static const size_t seq1[] = { 1, 777, 3000 };
static const size_t seq2[] = { 2000, 5 };

/* The root is 0; each child is followed by its (up to 3) grandchildren. */
static void plan(void)
{
    parent[0] = -1;
    int k = 1;
    while (k < n) {
        int c = k++;
        parent[c] = 0;
        for (int j = 0; j < 3 && k < n; j++)
            parent[k++] = c;
    }
}

/* The child of the root that process i is (or descends from); 0 for the root. */
static int top_of(int i)
{
    while (i > 0 && parent[i] > 0)
        i = parent[i];
    return i;
}

static unsigned char pattern(int block, size_t i)
{
    return (unsigned char)((i * 7 + 13 + (size_t)block * 101) % 251);
}

static void write_all(int fd, const void *buf, size_t len, const char *what)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t w = write(fd, p, len);
        if (w < 0 && errno == EINTR)
            continue;
        CHECK(w > 0, "process %d: write to %s: %s", me.idx, what,
              w < 0 ? strerror(errno) : "wrote nothing");
        p += w;
        len -= (size_t)w;
    }
}

/* Reads exactly LEN bytes; returns how many were read before end of file. */
static size_t read_full(int fd, void *buf, size_t len, const char *what)
{
    char *p = buf;
    size_t got = 0;
    while (got < len) {
        ssize_t r = read(fd, p + got, len - got);
        if (r < 0 && errno == EINTR)
            continue;
        CHECK(r >= 0, "process %d: read from %s: %s", me.idx, what, strerror(errno));
        if (r == 0)
            break;
        got += (size_t)r;
    }
    return got;
}

static void put_token(int fd, long t)
{
    ssize_t w;
    do
        w = write(fd, &t, sizeof t);
    while (w < 0 && errno == EINTR);
    CHECK(w == sizeof t, "process %d: passing token %ld: %zd (%s)", me.idx, t, w,
          w < 0 ? strerror(errno) : "short write");
}

static long get_token(int fd)
{
    long t;
    ssize_t r;
    do
        r = read(fd, &t, sizeof t);
    while (r < 0 && errno == EINTR);
    CHECK(r == sizeof t, "process %d: reading the ring pipe returned %zd (%s): the ring is broken",
          me.idx, r, r < 0 ? strerror(errno) : r == 0 ? "end of file" : "short read");
    return t;
}

/* ---- socketpairs between each process and its parent ---- */

/* The socketpair of process c with its parent: SOCK_SEQPACKET for odd c,
 * SOCK_STREAM for even c. */
static int sp_type(int c)
{
    return c % 2 ? SOCK_SEQPACKET : SOCK_STREAM;
}

/* Byte i of record REC sent in direction DIR (0: parent to child, 1: child
 * to parent) on the pair of process c. */
static unsigned char sp_pattern(int c, int dir, int rec, size_t i)
{
    return (unsigned char)((i * 31 + (size_t)c * 17 + (size_t)dir * 71 + (size_t)rec * 113 + 5) %
                           253);
}

/* The records of batch B (1: in flight at checkpoint time, 2: written at the end). */
static int sp_batch(int c, int b, const size_t **sizes)
{
    static const size_t s1 = SP_STREAM1, s2 = SP_STREAM2;
    if (sp_type(c) == SOCK_STREAM) {
        *sizes = b == 1 ? &s1 : &s2;
        return 1;
    }
    *sizes = b == 1 ? seq1 : seq2;
    return b == 1 ? (int)(sizeof seq1 / sizeof seq1[0]) : (int)(sizeof seq2 / sizeof seq2[0]);
}

static const char *sp_name(int c, int dir)
{
    static char name[160];
    snprintf(name, sizeof name, "the %s socketpair from process %d to process %d",
             sp_type(c) == SOCK_STREAM ? "stream" : "seqpacket", dir ? c : parent[c],
             dir ? parent[c] : c);
    return name;
}

/* Sends batch B in direction DIR on the pair of process c. */
static void sp_send(int c, int dir, int b)
{
    int fd = sp[c][dir];
    CHECK(fd >= 0, "process %d: no descriptor for %s", me.idx, sp_name(c, dir));
    const size_t *sizes;
    int count = sp_batch(c, b, &sizes);
    static unsigned char buf[8192];
    for (int k = 0; k < count; k++) {
        for (size_t i = 0; i < sizes[k]; i++)
            buf[i] = sp_pattern(c, dir, b * 10 + k, i);
        size_t done = 0;
        while (done < sizes[k]) {
            ssize_t w = send(fd, buf + done, sizes[k] - done, MSG_NOSIGNAL);
            if (w < 0 && errno == EINTR)
                continue;
            CHECK(w > 0, "process %d: sending record %d of batch %d on %s: %s", me.idx, k, b,
                  sp_name(c, dir), w < 0 ? strerror(errno) : "sent nothing");
            CHECK(sp_type(c) == SOCK_STREAM || (size_t)w == sizes[k],
                  "process %d: record %d of batch %d on %s: sent %zd of %zu bytes", me.idx, k, b,
                  sp_name(c, dir), w, sizes[k]);
            done += (size_t)w;
        }
    }
}

static ssize_t recv_intr(int fd, void *buf, size_t len)
{
    ssize_t r;
    do
        r = recv(fd, buf, len, 0);
    while (r < 0 && errno == EINTR);
    return r;
}

/* Receives batch B sent in direction DIR on the pair of process c and checks
 * it byte for byte (record by record for seqpacket). */
static void sp_check(int c, int dir, int b)
{
    int fd = sp[c][1 - dir];
    CHECK(fd >= 0, "process %d: no descriptor for %s", me.idx, sp_name(c, dir));
    const size_t *sizes;
    int count = sp_batch(c, b, &sizes);
    static unsigned char buf[8192];
    for (int k = 0; k < count; k++) {
        size_t got;
        if (sp_type(c) == SOCK_STREAM) {
            got = read_full(fd, buf, sizes[k], sp_name(c, dir));
        } else {
            ssize_t r = recv_intr(fd, buf, sizeof buf);
            CHECK(r >= 0, "process %d: receiving from %s: %s", me.idx, sp_name(c, dir),
                  strerror(errno));
            got = (size_t)r;
        }
        CHECK(got == sizes[k],
              "process %d: record %d of batch %d on %s: %zu bytes, expected %zu (data in flight "
              "lost, or record boundaries changed)",
              me.idx, k, b, sp_name(c, dir), got, sizes[k]);
        for (size_t i = 0; i < got; i++)
            CHECK(buf[i] == sp_pattern(c, dir, b * 10 + k, i),
                  "process %d: record %d of batch %d on %s differs at byte %zu", me.idx, k, b,
                  sp_name(c, dir), i);
    }
}

/* After both batches: end of file (the peer shut its end down for writing). */
static void sp_check_eof(int c, int dir)
{
    unsigned char buf[64];
    ssize_t r = recv_intr(sp[c][1 - dir], buf, sizeof buf);
    CHECK(r == 0, "process %d: %s: %zd after the last record (%s), expected end of file",
          me.idx, sp_name(c, dir), r, r < 0 ? strerror(errno) : "more data");
}

/* This process's socketpairs: to its parent (if any) and to each child. */
static void sp_send_all(int idx, int b)
{
    if (idx > 0)
        sp_send(idx, 1, b);
    for (int k = 0; k < nkids; k++)
        sp_send(kid_idx[k], 0, b);
}

/* ---- shared memory ---- */

static long last_handled = -1;

/* Records in the shared memory that this process handled token T. */
static void shm_handled(int idx, long t)
{
    handled++;
    last_handled = t;
    __atomic_store_n(&shm_count[idx], handled, __ATOMIC_SEQ_CST);
    __atomic_store_n(&shm_last[idx], t, __ATOMIC_SEQ_CST);
}

/* Token T just came from the ring predecessor, which handled T - 1 (and as
 * many tokens as this process will have handled with T): its slots must show
 * exactly that, through the shared memory. */
static void shm_check_pred(int idx, long t)
{
    int pred = (idx + n - 1) % n;
    long last = __atomic_load_n(&shm_last[pred], __ATOMIC_SEQ_CST);
    long cnt = __atomic_load_n(&shm_count[pred], __ATOMIC_SEQ_CST);
    long want = idx == 0 ? handled : handled + 1;
    CHECK(last == t - 1 && cnt == want,
          "process %d (pid %d): in the shared memory process %d handled token %ld (%ld tokens); "
          "it passed token %ld, its %ld-th (the memory is not shared any more?)",
          idx, (int)me.pid, pred, last, cnt, t - 1, want);
}

/* After the stop token: every process handled as many tokens as this one,
 * the last one being the root's last + its index. */
static void shm_check_final(int idx)
{
    long base = last_handled - idx;
    for (int j = 0; j < n; j++) {
        long last = __atomic_load_n(&shm_last[j], __ATOMIC_SEQ_CST);
        long cnt = __atomic_load_n(&shm_count[j], __ATOMIC_SEQ_CST);
        CHECK(last == base + j && cnt == handled,
              "process %d (pid %d): at the end the shared memory shows process %d at token %ld "
              "(%ld tokens), expected token %ld (%ld tokens): not shared any more?",
              idx, (int)me.pid, j, last, cnt, base + j, handled);
    }
}

static void check_ids(const char *when)
{
    pid_t pid = getpid(), ppid = getppid(), g = getpgid(0), s = getsid(0);
    CHECK(pid == me.pid, "process %d: getpid() %d, was %d (%s)", me.idx, (int)pid, (int)me.pid, when);
    /* the root's parent is outside the tree: the restorer after a restore */
    CHECK(me.idx == 0 || ppid == me.ppid, "process %d (pid %d): getppid() %d, was %d (%s)", me.idx,
          (int)pid, (int)ppid, (int)me.ppid, when);
    if (me.own_group)
        CHECK(g == me.pgid, "process %d (pid %d): getpgid() %d, was %d (%s)", me.idx, (int)pid,
              (int)g, (int)me.pgid, when);
    else
        CHECK(g == getpgid(root_pid), "process %d (pid %d): group %d, not the root's %d (%s)",
              me.idx, (int)pid, (int)g, (int)getpgid(root_pid), when);
    if (me.own_session)
        CHECK(s == me.sid, "process %d (pid %d): getsid() %d, was %d (%s)", me.idx, (int)pid,
              (int)s, (int)me.sid, when);
    else
        CHECK(s == getsid(root_pid), "process %d (pid %d): session %d, not the root's %d (%s)",
              me.idx, (int)pid, (int)s, (int)getsid(root_pid), when);
}

/* Records who this process is and checks that it is where it should be. */
static void setup_ids(int idx)
{
    me.idx = idx;
    me.pid = getpid();
    me.ppid = getppid();
    me.pgid = getpgid(0);
    me.sid = getsid(0);
    int top = top_of(idx);
    if (top == PGL) {
        pid_t leader = idx == PGL ? me.pid : me.ppid;
        CHECK(me.pgid == leader && me.sid == root_sid,
              "process %d: group %d session %d, expected group %d session %d", idx,
              (int)me.pgid, (int)me.sid, (int)leader, (int)root_sid);
        me.own_group = 1;
        me.own_session = root_sid == root_pid;
    } else if (top == SSL) {
        pid_t leader = idx == SSL ? me.pid : me.ppid;
        CHECK(me.pgid == leader && me.sid == leader,
              "process %d: group %d session %d, expected both %d", idx, (int)me.pgid,
              (int)me.sid, (int)leader);
        me.own_group = me.own_session = 1;
    } else {
        CHECK(me.pgid == root_pgid && me.sid == root_sid,
              "process %d: group %d session %d, expected the root's %d %d", idx, (int)me.pgid,
              (int)me.sid, (int)root_pgid, (int)root_sid);
        me.own_group = root_pgid == root_pid;
        me.own_session = root_sid == root_pid;
    }
}

/* Closes every pipe end this process does not use. */
static void keep_fds(int idx)
{
    for (int i = 0; i < n; i++) {
        if (i != idx)
            close(ring[i][0]);
        if (i != (idx + 1) % n)
            close(ring[i][1]);
    }
    if (idx != WRITER)
        close(flight[1]);
    if (idx != READER)
        close(flight[0]);
    for (int i = 1; i < n; i++) {
        if (sp[i][0] >= 0 && parent[i] != idx) {
            close(sp[i][0]);
            sp[i][0] = -1;
        }
        if (sp[i][1] >= 0 && i != idx) {
            close(sp[i][1]);
            sp[i][1] = -1;
        }
    }
}

/* Writes the record of token value T at the shared offset, which must be T * RECSZ. */
static void put_record(long t)
{
    off_t pos = lseek(recfd, 0, SEEK_CUR);
    CHECK(pos == (off_t)t * RECSZ,
          "process %d (pid %d): the shared offset of %s is %lld before record %ld, expected %lld "
          "(is the open file description still shared?)",
          me.idx, (int)me.pid, recpath, (long long)pos, t, (long long)t * RECSZ);
    char rec[RECSZ + 1];
    int len = snprintf(rec, sizeof rec, "%012ld %04d %010d", t, me.idx, (int)me.pid);
    CHECK(len > 0 && len < RECSZ, "record too long");
    memset(rec + len, ' ', (size_t)(RECSZ - 1 - len));
    rec[RECSZ - 1] = '\n';
    ssize_t w = write(recfd, rec, RECSZ);
    CHECK(w == RECSZ, "process %d: writing record %ld: %zd (%s)", me.idx, t, w,
          w < 0 ? strerror(errno) : "short write");
}

static void process(int idx) __attribute__((noreturn));

static void spawn_children(int idx)
{
    for (int c = 1; c < n; c++) {
        if (parent[c] != idx)
            continue;
        CHECK(socketpair(AF_UNIX, sp_type(c), 0, sp[c]) == 0, "process %d: socketpair: %s", idx,
              strerror(errno));
        fflush(stdout);
        pid_t p = fork();
        CHECK(p >= 0, "process %d: fork: %s", idx, strerror(errno));
        if (p == 0) {
            nkids = 0;
            process(c);
        }
        kids[nkids] = p;
        kid_idx[nkids++] = c;
    }
}

/* The ring, for a process other than the root; returns on the stop token. */
static void ring_member(int idx)
{
    int rfd = ring[idx][0], wfd = ring[(idx + 1) % n][1];
    long expect = idx;
    for (;;) {
        long t = get_token(rfd);
        if (t == STOP) {
            put_token(wfd, STOP);
            return;
        }
        CHECK(t == expect, "process %d (pid %d): token %ld, expected %ld (lost or duplicated)",
              idx, (int)me.pid, t, expect);
        shm_check_pred(idx, t);
        check_ids("in the ring");
        put_record(t);
        shm_handled(idx, t);
        put_token(wfd, t + 1);
        expect += n;
    }
}

/* Final checks of every process: pipe data, ids, children. */
static void finish(int idx)
{
    close(ring[idx][0]);
    close(ring[(idx + 1) % n][1]);
    if (idx == READER) {
        int avail = -1;
        CHECK(ioctl(flight[0], FIONREAD, &avail) == 0, "FIONREAD: %s", strerror(errno));
        CHECK(avail >= BLK, "process %d: only %d bytes in the pipe from process %d, it wrote %d "
              "(data in flight lost)", idx, avail, WRITER, BLK);
        static unsigned char buf[BLK];
        for (int b = 1; b <= 2; b++) {
            size_t got = read_full(flight[0], buf, BLK, "the pipe from the writer");
            CHECK(got == BLK, "process %d: block %d from process %d: %zu bytes, expected %d", idx,
                  b, WRITER, got, BLK);
            for (size_t i = 0; i < BLK; i++)
                CHECK(buf[i] == pattern(b, i), "process %d: block %d from process %d differs at byte %zu",
                      idx, b, WRITER, i);
        }
        CHECK(read_full(flight[0], buf, 1, "the pipe from the writer") == 0,
              "process %d: more data than the two blocks in the pipe from process %d", idx, WRITER);
        close(flight[0]);
    }
    if (idx == WRITER) {
        static unsigned char buf[BLK];
        for (size_t i = 0; i < BLK; i++)
            buf[i] = pattern(2, i);
        write_all(flight[1], buf, BLK, "the pipe to the reader");
        close(flight[1]);
    }
    /* socketpairs: the second batch and a shutdown each way first (never
     * blocks: the queues have room), then read and check all of it */
    sp_send_all(idx, 2);
    if (idx > 0)
        CHECK(shutdown(sp[idx][1], SHUT_WR) == 0, "process %d: shutdown: %s", idx, strerror(errno));
    for (int k = 0; k < nkids; k++)
        CHECK(shutdown(sp[kid_idx[k]][0], SHUT_WR) == 0, "process %d: shutdown: %s", idx,
              strerror(errno));
    if (idx > 0) {
        sp_check(idx, 0, 1);
        sp_check(idx, 0, 2);
        sp_check_eof(idx, 0);
        close(sp[idx][1]);
    }
    for (int k = 0; k < nkids; k++) {
        int c = kid_idx[k];
        sp_check(c, 1, 1);
        sp_check(c, 1, 2);
        sp_check_eof(c, 1);
        close(sp[c][0]);
    }
    shm_check_final(idx);
    check_ids("at the end");

    char bad[256] = "";
    for (int k = 0; k < nkids; k++) {
        int st;
        pid_t r;
        do
            r = waitpid(kids[k], &st, 0);
        while (r < 0 && errno == EINTR);
        CHECK(r == kids[k], "process %d: waitpid(%d) for process %d: %d (%s)", idx, (int)kids[k],
              kid_idx[k], (int)r, strerror(errno));
        if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0) && !bad[0])
            snprintf(bad, sizeof bad, "process %d (pid %d) %s %d", kid_idx[k], (int)kids[k],
                     WIFEXITED(st) ? "exited with status" : "was killed by signal",
                     WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
    }
    CHECK(!bad[0], "process %d: its child %s", idx, bad);
    int st;
    pid_t r = waitpid(-1, &st, WNOHANG | __WALL);
    CHECK(r < 0 && errno == ECHILD, "process %d (pid %d): an unexpected child: waitpid(-1) = %d",
          idx, (int)me.pid, (int)r);
}

static void process(int idx)
{
    if (idx == PGL)
        CHECK(setpgid(0, 0) == 0, "setpgid: %s", strerror(errno));
    if (idx == SSL)
        CHECK(setsid() > 0, "setsid: %s", strerror(errno));
    spawn_children(idx);
    keep_fds(idx);
    setup_ids(idx);
    say("proc %d %d %d %d %d", idx, (int)me.pid, (int)me.ppid, (int)me.pgid, (int)me.sid);
    sp_send_all(idx, 1);
    if (idx == WRITER) {
        static unsigned char buf[BLK];
        for (size_t i = 0; i < BLK; i++)
            buf[i] = pattern(1, i);
        write_all(flight[1], buf, BLK, "the pipe to the reader");
    }
    ring_member(idx);
    finish(idx);
    exit(0);
}

/* Every record exactly once, in order, each from the process whose turn it was. */
static void check_records(long total)
{
    struct stat sb;
    CHECK(fstat(recfd, &sb) == 0, "fstat: %s", strerror(errno));
    CHECK(sb.st_size == (off_t)total * RECSZ, "%s has %lld bytes, expected %ld records of %d",
          recpath, (long long)sb.st_size, total, RECSZ);
    off_t pos = lseek(recfd, 0, SEEK_CUR);
    CHECK(pos == sb.st_size, "the root's offset in %s is %lld, the file has %lld bytes", recpath,
          (long long)pos, (long long)sb.st_size);
    int fd = open(recpath, O_RDONLY);
    CHECK(fd >= 0, "open %s: %s", recpath, strerror(errno));
    pid_t pids[MAXN] = { 0 };
    pids[0] = root_pid;
    for (int k = 0; k < nkids; k++)
        pids[kid_idx[k]] = kids[k];
    char rec[RECSZ + 1];
    for (long k = 0; k < total; k++) {
        CHECK(read_full(fd, rec, RECSZ, recpath) == RECSZ, "%s: short record %ld", recpath, k);
        rec[RECSZ] = 0;
        long t;
        int i, p;
        CHECK(rec[RECSZ - 1] == '\n' && sscanf(rec, "%ld %d %d", &t, &i, &p) == 3,
              "%s: record %ld is garbled: '%.*s'", recpath, k, RECSZ - 1, rec);
        CHECK(t == k, "%s: record %ld holds value %ld (overwritten, lost or duplicated)", recpath,
              k, t);
        CHECK(i == k % n, "%s: record %ld was written by process %d, not %ld", recpath, k, i,
              k % n);
        if (!pids[i])
            pids[i] = p;
        CHECK(p == pids[i], "%s: record %ld of process %d has pid %d, expected %d", recpath, k,
              i, p, (int)pids[i]);
    }
    close(fd);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s STOPFILE RECFILE [N]\n", argv[0]);
        return 2;
    }
    const char *stopfile = argv[1];
    recpath = argv[2];
    n = (int)arg_long(argc, argv, 3, 32);
    CHECK(n >= 8 && n <= MAXN, "N must be 8..%d", MAXN);
    plan();

    root_pid = getpid();
    root_pgid = getpgid(0);
    root_sid = getsid(0);
    recfd = open(recpath, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    CHECK(recfd >= 0, "open %s: %s", recpath, strerror(errno));
    for (int i = 0; i < n; i++)
        CHECK(pipe(ring[i]) == 0, "pipe: %s", strerror(errno));
    CHECK(pipe(flight) == 0, "pipe: %s", strerror(errno));
    for (int i = 0; i < MAXN; i++)
        sp[i][0] = sp[i][1] = -1;
    long *shm = mmap(NULL, 2 * MAXN * sizeof(long), PROT_READ | PROT_WRITE,
                     MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    CHECK(shm != MAP_FAILED, "mmap MAP_SHARED|MAP_ANONYMOUS: %s", strerror(errno));
    shm_last = shm;
    shm_count = shm + MAXN;
    for (int i = 0; i < MAXN; i++)
        shm_last[i] = -1;

    me.idx = 0;
    spawn_children(0);
    keep_fds(0);
    fflush(stdout);
    pid_t zpid = fork();
    CHECK(zpid >= 0, "fork: %s", strerror(errno));
    if (zpid == 0)
        _exit(42);
    setup_ids(0);
    say("proc 0 %d %d %d %d", (int)me.pid, (int)me.ppid, (int)me.pgid, (int)me.sid);
    sp_send_all(0, 1);

    int rfd = ring[0][0], wfd = ring[1][1];
    long t = 0, rounds = 0;
    for (;;) {
        check_ids("in the ring");
        put_record(t);
        shm_handled(0, t);
        put_token(wfd, t + 1);
        long back = get_token(rfd);
        CHECK(back == t + n, "root: token %ld came back, expected %ld (lost or duplicated)", back,
              t + n);
        shm_check_pred(0, back);
        t = back;
        rounds++;
        if (rounds == 3) {
            siginfo_t si = { 0 };
            CHECK(waitid(P_PID, (id_t)zpid, &si, WEXITED | WNOWAIT) == 0, "waitid(%d): %s",
                  (int)zpid, strerror(errno));
            CHECK(si.si_pid == zpid && si.si_code == CLD_EXITED && si.si_status == 42,
                  "the zombie %d: code %d status %d", (int)zpid, si.si_code, si.si_status);
            say("zombie %d", (int)zpid);
            say("ready");
        } else if (rounds > 3 && file_exists(stopfile)) {
            break;
        }
        sleep_ms(5);
    }
    put_token(wfd, STOP);
    CHECK(get_token(rfd) == STOP, "root: the stop token did not come back");

    int st;
    pid_t r;
    do
        r = waitpid(zpid, &st, 0);
    while (r < 0 && errno == EINTR);
    CHECK(r == zpid, "waitpid(%d) for the zombie: %d (%s)", (int)zpid, (int)r, strerror(errno));
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 42, "the zombie %d: wait status %#x, expected exit 42",
          (int)zpid, st);
    finish(0);
    check_records(t);
    say("tree ok %d rounds=%ld records=%ld pairs=%d shm=%ld", n, rounds, t, n - 1, handled);
    return 0;
}
