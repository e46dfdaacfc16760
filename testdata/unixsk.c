/* unixsk paths DIR STOPFILE
 * unixsk pending DIR STOPFILE nodata|data
 * unixsk seqpacket DIR STOPFILE
 * unixsk dgram DIR STOPFILE
 * unixsk inflight DIR STOPFILE keep|closed
 *
 * Unix socket state that is hard to checkpoint, checked by the program itself
 * once STOPFILE exists (after a restore, or after a dump without --kill).  Each
 * mode prints "ready" once its state is set up, then "<mode> ok" (exit 0), or
 * "FAIL: ..." (exit 1).
 *
 * paths: sockets whose names no longer lead to them:
 *   A  a listening stream socket DIR/gone.sock, one connection accepted, then
 *      the socket file unlinked;
 *   B  a listening stream socket DIR/sub1/l.sock, one connection accepted, then
 *      the socket file and the directory DIR/sub1 removed;
 *   C  a dgram socket DIR/sub2/d.sock with a client connected to it and one
 *      datagram queued, then DIR/sub2 renamed to DIR/sub2moved;
 *   D  a listening stream socket DIR/occ.sock, unlinked, then a regular file
 *      "occupant" created at that path;
 *   E  a dgram socket bound to the relative name "rel.sock" in DIR (the working
 *      directory), unlinked;
 *   F  a stream socket bound to DIR/sub3/deep/x.sock, then DIR/sub3 removed.
 * Checks: every getsockname() is as before; A and B still listen and their
 * connections ping-pong; C's datagram is there and the client can send more; the
 * regular file of D is untouched; nothing the restore may have created is left
 * (DIR/sub1, DIR/sub2, DIR/sub3, DIR/gone.sock, DIR/rel.sock).
 *
 * pending: a listening stream socket DIR/p.sock (backlog 8) with 3 clients
 * connected and not accepted; with "data" each client sent "client <i>" first.
 * Checks: 3 accept()s return the connections in connect order (each writes a
 * byte that its own client reads), each with its client's data if any, and a
 * fourth accept finds none (EAGAIN).
 *
 * seqpacket: three SOCK_SEQPACKET socketpairs: one filled with small records
 * (0 to 3000 bytes, cycling) until EAGAIN, one with 60000-byte records until
 * EAGAIN, one whose sender has the largest send buffer it may set (4 MiB for
 * root) with 1-byte records until EAGAIN.  Prints "records <n> <m> <k>".  Checks: every record comes back with its
 * length and bytes, then EAGAIN; the pairs ping-pong.
 *
 * dgram: an unconnected dgram socket DIR/r.sock receiving 11 datagrams (the
 * default net.unix.max_dgram_qlen is 10: its queue is full) from three
 * senders: DIR/s1.sock, the abstract @unixsk-<pid>-s2 and an unnamed socket,
 * interleaved; a forked child blocked in sendto() to it from DIR/c.sock; a dgram
 * socketpair filled until EAGAIN.  Checks: the 11 datagrams in order, each with
 * its sender's address, then the child's; the pair's datagrams in order.
 *
 * inflight: descriptors in flight (SCM_RIGHTS, sent and not yet received): a pipe's
 * write end, a regular file DIR/f (opened read-write, at offset 3) and one end of
 * a unix socketpair, in a stream socketpair (between plain data: "before", "pipe!"
 * with the pipe, "mid", "file" with the file, "after"), a seqpacket socketpair
 * (records "one", "two" with the socket, "three" with the pipe and the file), a
 * dgram socketpair ("d1" with the pipe, "d2") and an unconnected dgram socket
 * DIR/ifr.sock ("from s" with the file, sent by DIR/ifs.sock).  With "keep" the
 * process keeps its own descriptor of each; with "closed" it closes the file after
 * sending it (the descriptor then lives only in flight).  Checks: every message
 * comes back with its data and descriptors (a stream read of 64 bytes returns
 * "beforepipe!" with the pipe, "midfile" with the file, then "after": a read stops
 * after the data that came with descriptors), and each received descriptor is the
 * same open file as the kept one (the pipe carries bytes to the kept read end; the
 * file has the same inode and shares the offset; the socket reaches its peer).
 */
#include "common.h"
#include <fcntl.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>

static const char *dir, *stop;

static socklen_t addr_of(struct sockaddr_un *a, const char *name, int abstract)
{
    memset(a, 0, sizeof *a);
    a->sun_family = AF_UNIX;
    size_t n = strlen(name);
    if (abstract) {
        memcpy(a->sun_path + 1, name, n);
        return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + n);
    }
    memcpy(a->sun_path, name, n);
    return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
}

static int sock(int type)
{
    int s = socket(AF_UNIX, type, 0);
    CHECK(s >= 0, "socket: %s", strerror(errno));
    return s;
}

static int bound(int type, const char *name, int abstract)
{
    int s = sock(type);
    struct sockaddr_un a;
    socklen_t l = addr_of(&a, name, abstract);
    CHECK(bind(s, (struct sockaddr *)&a, l) == 0, "bind %s: %s", name, strerror(errno));
    return s;
}

static void connect_to(int s, const char *name)
{
    struct sockaddr_un a;
    socklen_t l = addr_of(&a, name, 0);
    CHECK(connect(s, (struct sockaddr *)&a, l) == 0, "connect %s: %s", name, strerror(errno));
}

static char *path(const char *rel)
{
    char *p;
    CHECK(asprintf(&p, "%s/%s", dir, rel) > 0, "asprintf");
    return p;
}

/* getsockname of s is the path (or relative name) `name`. */
static void check_name(int s, const char *name, const char *what)
{
    struct sockaddr_un a;
    socklen_t l = sizeof a;
    memset(&a, 0, sizeof a);
    CHECK(getsockname(s, (struct sockaddr *)&a, &l) == 0, "%s: getsockname: %s", what,
          strerror(errno));
    CHECK(l > offsetof(struct sockaddr_un, sun_path) && strcmp(a.sun_path, name) == 0,
          "%s: getsockname is \"%.*s\" (len %u), not \"%s\"", what,
          (int)(l > 2 ? l - 2 : 0), a.sun_path, (unsigned)l, name);
}

static void check_listening(int s, const char *what)
{
    int v = 0;
    socklen_t l = sizeof v;
    CHECK(getsockopt(s, SOL_SOCKET, SO_ACCEPTCONN, &v, &l) == 0 && v == 1,
          "%s: not listening", what);
}

static void xwrite(int s, const void *b, size_t n, const char *what)
{
    CHECK(write(s, b, n) == (ssize_t)n, "%s: write: %s", what, strerror(errno));
}

static void ping(int a, int b, const char *what)
{
    char c = 0;
    for (int i = 0; i < 5; i++) {
        char x = (char)('a' + i);
        xwrite(a, &x, 1, what);
        CHECK(read(b, &c, 1) == 1 && c == x, "%s: ping %d lost", what, i);
        xwrite(b, &x, 1, what);
        CHECK(read(a, &c, 1) == 1 && c == x, "%s: pong %d lost", what, i);
    }
}

static void gone(const char *rel)
{
    char *p = path(rel);
    struct stat st;
    CHECK(lstat(p, &st) != 0 && errno == ENOENT, "%s exists after all", p);
    free(p);
}

static void wait_stop(void)
{
    say("ready");
    wait_for_file(stop, 20);
}

static int accepted(int l, int *client, const char *name, int type)
{
    *client = sock(type);
    connect_to(*client, name);
    int a = accept(l, NULL, NULL);
    CHECK(a >= 0, "accept: %s", strerror(errno));
    return a;
}

static int mode_paths(void)
{
    char *ga = path("gone.sock"), *s1 = path("sub1"), *lb = path("sub1/l.sock");
    char *s2 = path("sub2"), *dc = path("sub2/d.sock"), *s2m = path("sub2moved");
    char *occ = path("occ.sock"), *s3 = path("sub3"), *s3d = path("sub3/deep");
    char *fx = path("sub3/deep/x.sock");

    int la = bound(SOCK_STREAM, ga, 0), ca;
    CHECK(listen(la, 4) == 0, "listen");
    int aa = accepted(la, &ca, ga, SOCK_STREAM);
    CHECK(unlink(ga) == 0, "unlink %s", ga);

    CHECK(mkdir(s1, 0755) == 0, "mkdir %s", s1);
    int lb_ = bound(SOCK_STREAM, lb, 0), cb;
    CHECK(listen(lb_, 4) == 0, "listen");
    int ab = accepted(lb_, &cb, lb, SOCK_STREAM);
    CHECK(unlink(lb) == 0 && rmdir(s1) == 0, "removing %s", s1);

    CHECK(mkdir(s2, 0755) == 0, "mkdir %s", s2);
    int dc_ = bound(SOCK_DGRAM, dc, 0), cc = sock(SOCK_DGRAM);
    connect_to(cc, dc);
    xwrite(cc, "hello-moved", 11, "C");
    CHECK(rename(s2, s2m) == 0, "rename %s", s2);

    int ld = bound(SOCK_STREAM, occ, 0);
    CHECK(listen(ld, 4) == 0, "listen");
    CHECK(unlink(occ) == 0, "unlink %s", occ);
    int f = open(occ, O_WRONLY | O_CREAT | O_EXCL, 0644);
    CHECK(f >= 0, "creating %s", occ);
    xwrite(f, "occupant", 8, "D");
    close(f);

    CHECK(chdir(dir) == 0, "chdir %s", dir);
    int re = bound(SOCK_DGRAM, "rel.sock", 0);
    CHECK(unlink("rel.sock") == 0, "unlink rel.sock");

    CHECK(mkdir(s3, 0755) == 0 && mkdir(s3d, 0755) == 0, "mkdir %s", s3d);
    int fx_ = bound(SOCK_STREAM, fx, 0);
    CHECK(unlink(fx) == 0 && rmdir(s3d) == 0 && rmdir(s3) == 0, "removing %s", s3);

    wait_stop();

    check_name(la, ga, "A listener");
    check_name(aa, ga, "A accepted");
    check_listening(la, "A");
    ping(ca, aa, "A connection");
    check_name(lb_, lb, "B listener");
    check_name(ab, lb, "B accepted");
    check_listening(lb_, "B");
    ping(cb, ab, "B connection");
    check_name(dc_, dc, "C");
    char buf[64];
    ssize_t n = recv(dc_, buf, sizeof buf, MSG_DONTWAIT);
    CHECK(n == 11 && memcmp(buf, "hello-moved", 11) == 0, "C: queued datagram lost (%zd)", n);
    xwrite(cc, "again", 5, "C");
    n = recv(dc_, buf, sizeof buf, MSG_DONTWAIT);
    CHECK(n == 5 && memcmp(buf, "again", 5) == 0, "C: the client cannot send (%zd)", n);
    check_name(ld, occ, "D");
    check_listening(ld, "D");
    f = open(occ, O_RDONLY);
    CHECK(f >= 0, "D: %s is gone", occ);
    n = read(f, buf, sizeof buf);
    CHECK(n == 8 && memcmp(buf, "occupant", 8) == 0, "D: %s was changed", occ);
    close(f);
    struct stat st;
    CHECK(stat(occ, &st) == 0 && S_ISREG(st.st_mode), "D: %s is not a regular file", occ);
    check_name(re, "rel.sock", "E");
    check_name(fx_, fx, "F");
    gone("sub1");
    gone("sub2");
    gone("sub3");
    gone("gone.sock");
    gone("rel.sock");
    CHECK(stat(s2m, &st) == 0 && S_ISDIR(st.st_mode), "%s is gone", s2m);
    say("paths ok");
    return 0;
}

static int mode_pending(int data)
{
    char *p = path("p.sock");
    int l = bound(SOCK_STREAM, p, 0);
    CHECK(listen(l, 8) == 0, "listen");
    int c[3];
    for (int i = 0; i < 3; i++) {
        c[i] = sock(SOCK_STREAM);
        connect_to(c[i], p);
        if (data) {
            char m[16];
            int n = snprintf(m, sizeof m, "client %d", i);
            xwrite(c[i], m, (size_t)n, "client");
        }
    }
    wait_stop();
    check_listening(l, "listener");
    for (int i = 0; i < 3; i++) {
        int a = accept4(l, NULL, NULL, SOCK_NONBLOCK);
        CHECK(a >= 0, "accept %d: %s", i, strerror(errno));
        check_name(a, p, "accepted");
        char m[32];
        if (data) {
            char want[16];
            int w = snprintf(want, sizeof want, "client %d", i);
            ssize_t n = read(a, m, sizeof m);
            CHECK(n == w && memcmp(m, want, (size_t)w) == 0,
                  "accepted %d: expected \"%s\", read %zd bytes \"%.*s\"", i, want, n,
                  (int)(n > 0 ? n : 0), m);
        }
        ssize_t n = read(a, m, sizeof m);
        CHECK(n < 0 && errno == EAGAIN, "accepted %d: more data (%zd)", i, n);
        xwrite(a, "x", 1, "accepted");
        n = recv(c[i], m, sizeof m, MSG_DONTWAIT);
        CHECK(n == 1 && m[0] == 'x', "accepted %d is not client %d's connection", i, i);
        close(a);
    }
    CHECK(fcntl(l, F_SETFL, O_NONBLOCK) == 0, "O_NONBLOCK");
    int a = accept4(l, NULL, NULL, SOCK_NONBLOCK);
    CHECK(a < 0 && errno == EAGAIN, "a fourth connection was waiting");
    say("pending ok");
    return 0;
}

static unsigned char pat(int id, size_t i)
{
    return (unsigned char)(i * 131 + (size_t)id * 17 + (i >> 9));
}

static size_t small_len(int i)
{
    static const size_t lens[] = {1, 100, 3000, 0, 7, 513};
    return lens[i % 6];
}

/* Send records of len(i) bytes until EAGAIN; returns how many. */
static int fill(int s, size_t (*len)(int), unsigned char *buf, int dgram)
{
    int n = 0;
    for (;;) {
        size_t l = len(n);
        for (size_t k = 0; k < l; k++)
            buf[k] = pat(n, k);
        ssize_t r = send(s, buf, l, MSG_DONTWAIT);
        if (r < 0) {
            CHECK(errno == EAGAIN, "send %d: %s", n, strerror(errno));
            return n;
        }
        CHECK((size_t)r == l, "short send");
        n++;
        CHECK(n < 100000, "the queue never fills");
        (void)dgram;
    }
}

static void drain(int s, int count, size_t (*len)(int), unsigned char *buf, size_t cap,
                  const char *what)
{
    for (int i = 0; i < count; i++) {
        ssize_t r = recv(s, buf, cap, MSG_DONTWAIT);
        CHECK(r >= 0, "%s: record %d of %d: %s", what, i, count, strerror(errno));
        CHECK((size_t)r == len(i), "%s: record %d is %zd bytes, not %zu", what, i, r, len(i));
        for (size_t k = 0; k < (size_t)r; k++)
            CHECK(buf[k] == pat(i, k), "%s: record %d byte %zu differs", what, i, k);
    }
    ssize_t r = recv(s, buf, cap, MSG_DONTWAIT);
    CHECK(r < 0 && errno == EAGAIN, "%s: more than %d records (%zd)", what, count, r);
}

static size_t big_len(int i)
{
    (void)i;
    return 60000;
}

static size_t tiny_len(int i)
{
    (void)i;
    return 1;
}

static int mode_seqpacket(void)
{
    int a[2], b[2], c[2];
    CHECK(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, a) == 0, "socketpair");
    CHECK(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, b) == 0, "socketpair");
    CHECK(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, c) == 0, "socketpair");
    /* As large a send buffer as the user may have (root: 4 MiB). */
    int big = 4 << 20;
    CHECK(setsockopt(c[0], SOL_SOCKET, SO_SNDBUFFORCE, &big, sizeof big) == 0 ||
              setsockopt(c[0], SOL_SOCKET, SO_SNDBUF, &big, sizeof big) == 0,
          "SO_SNDBUF");
    static unsigned char buf[70000];
    int n = fill(a[0], small_len, buf, 0);
    int m = fill(b[1], big_len, buf, 0);
    int k = fill(c[0], tiny_len, buf, 0);
    say("records %d %d %d", n, m, k);
    wait_stop();
    drain(a[1], n, small_len, buf, sizeof buf, "small records");
    drain(b[0], m, big_len, buf, sizeof buf, "large records");
    drain(c[1], k, tiny_len, buf, sizeof buf, "one-byte records");
    ping(a[0], a[1], "small pair");
    ping(b[0], b[1], "large pair");
    ping(c[0], c[1], "one-byte pair");
    say("seqpacket ok");
    return 0;
}

static size_t dg_len(int i)
{
    return (size_t)(i % 5) * 300 + 20;
}

static int mode_dgram(void)
{
    char *r = path("r.sock"), *s1p = path("s1.sock"), *cp = path("c.sock");
    char s2n[64];
    snprintf(s2n, sizeof s2n, "unixsk-%d-s2", (int)getpid());
    int rs = bound(SOCK_DGRAM, r, 0);
    int s[3] = {bound(SOCK_DGRAM, s1p, 0), bound(SOCK_DGRAM, s2n, 1), sock(SOCK_DGRAM)};
    struct sockaddr_un ra;
    socklen_t rl = addr_of(&ra, r, 0);
    for (int i = 0; i < 11; i++) {
        char m[32];
        int k = snprintf(m, sizeof m, "datagram %d", i);
        CHECK(sendto(s[i % 3], m, (size_t)k, MSG_DONTWAIT, (struct sockaddr *)&ra, rl) == k,
              "sendto %d: %s", i, strerror(errno));
    }
    int p[2];
    CHECK(socketpair(AF_UNIX, SOCK_DGRAM, 0, p) == 0, "socketpair");
    static unsigned char buf[4096];
    int n = fill(p[0], dg_len, buf, 1);
    pid_t child = fork();
    CHECK(child >= 0, "fork");
    if (child == 0) {
        int c = bound(SOCK_DGRAM, cp, 0);
        /* Blocks: r.sock's queue is full. */
        if (sendto(c, "from the child", 14, 0, (struct sockaddr *)&ra, rl) != 14)
            fail("child: sendto: %s", strerror(errno));
        _exit(0);
    }
    /* Wait until the child is blocked in sendto (its socket file exists). */
    struct stat st;
    while (stat(cp, &st) != 0)
        sleep_ms(5);
    sleep_ms(100);
    say("child %d", (int)child);
    wait_stop();
    for (int i = 0; i < 12; i++) {
        char m[64];
        struct sockaddr_un from;
        socklen_t fl = sizeof from;
        memset(&from, 0, sizeof from);
        ssize_t k = recvfrom(rs, m, sizeof m - 1, 0, (struct sockaddr *)&from, &fl);
        CHECK(k >= 0, "recvfrom %d: %s", i, strerror(errno));
        m[k] = 0;
        char want[32];
        if (i == 11)
            snprintf(want, sizeof want, "from the child");
        else
            snprintf(want, sizeof want, "datagram %d", i);
        CHECK(strcmp(m, want) == 0, "datagram %d is \"%s\", not \"%s\"", i, m, want);
        size_t plen = fl > offsetof(struct sockaddr_un, sun_path)
                          ? fl - offsetof(struct sockaddr_un, sun_path)
                          : 0;
        if (i == 11) {
            CHECK(strcmp(from.sun_path, cp) == 0, "the child's datagram came from \"%s\"",
                  from.sun_path);
        } else if (i % 3 == 0) {
            CHECK(strcmp(from.sun_path, s1p) == 0, "datagram %d came from \"%s\", not %s", i,
                  from.sun_path, s1p);
        } else if (i % 3 == 1) {
            CHECK(plen == strlen(s2n) + 1 && from.sun_path[0] == 0 &&
                      memcmp(from.sun_path + 1, s2n, strlen(s2n)) == 0,
                  "datagram %d did not come from @%s", i, s2n);
        } else {
            CHECK(plen == 0, "datagram %d came from a named socket (\"%s\")", i,
                  from.sun_path);
        }
    }
    int status = 0;
    CHECK(waitpid(child, &status, 0) == child && WIFEXITED(status) &&
              WEXITSTATUS(status) == 0,
          "the child failed (%d)", status);
    drain(p[1], n, dg_len, buf, sizeof buf, "dgram pair");
    ping(p[0], p[1], "dgram pair");
    say("dgram ok");
    return 0;
}

static void send_fds(int s, const char *m, const int *fds, int n, const char *to)
{
    union {
        struct cmsghdr h;
        char b[CMSG_SPACE(4 * sizeof(int))];
    } u;
    memset(&u, 0, sizeof u);
    struct iovec iov = {.iov_base = (void *)m, .iov_len = strlen(m)};
    struct sockaddr_un a;
    struct msghdr h = {.msg_iov = &iov, .msg_iovlen = 1};
    if (to) {
        h.msg_name = &a;
        h.msg_namelen = addr_of(&a, to, 0);
    }
    if (n > 0) {
        h.msg_control = u.b;
        h.msg_controllen = CMSG_SPACE((size_t)n * sizeof(int));
        struct cmsghdr *c = CMSG_FIRSTHDR(&h);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN((size_t)n * sizeof(int));
        memcpy(CMSG_DATA(c), fds, (size_t)n * sizeof(int));
    }
    CHECK(sendmsg(s, &h, MSG_DONTWAIT) == (ssize_t)strlen(m), "sendmsg \"%s\": %s", m,
          strerror(errno));
}

/* Receive `want` (as one read of up to 64 bytes) with `n` descriptors, into got[]. */
static void recv_fds(int s, const char *want, int *got, int n, const char *what)
{
    char b[64];
    union {
        struct cmsghdr h;
        char b[CMSG_SPACE(8 * sizeof(int))];
    } u;
    struct iovec iov = {.iov_base = b, .iov_len = sizeof b};
    struct msghdr h = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.b,
                       .msg_controllen = sizeof u.b};
    ssize_t r = recvmsg(s, &h, MSG_DONTWAIT);
    CHECK(r == (ssize_t)strlen(want) && memcmp(b, want, (size_t)r) == 0,
          "%s: expected \"%s\", got %zd bytes \"%.*s\" (%s)", what, want, r, (int)(r > 0 ? r : 0),
          b, r < 0 ? strerror(errno) : "");
    struct cmsghdr *c = CMSG_FIRSTHDR(&h);
    int have = 0;
    if (c && c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS)
        have = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
    CHECK(have == n, "%s: \"%s\" came with %d descriptors, not %d", what, want, have, n);
    if (n > 0)
        memcpy(got, CMSG_DATA(c), (size_t)n * sizeof(int));
}

static void same_pipe(int w, int r, const char *what)
{
    xwrite(w, "P", 1, what);
    char c = 0;
    CHECK(read(r, &c, 1) == 1 && c == 'P', "%s: the pipe end in flight is not the pipe's", what);
}

static void same_file(int got, int kept, const char *path, const char *what)
{
    struct stat a, b;
    CHECK(fstat(got, &a) == 0 && stat(path, &b) == 0 && a.st_ino == b.st_ino &&
              a.st_dev == b.st_dev,
          "%s: the file in flight is not %s", what, path);
    off_t at = lseek(got, 0, SEEK_CUR);
    CHECK(at == 3, "%s: the file in flight is at offset %ld, not 3", what, (long)at);
    CHECK((fcntl(got, F_GETFL) & O_ACCMODE) == O_RDWR, "%s: the file is not read-write", what);
    if (kept >= 0) {
        CHECK(lseek(got, 5, SEEK_SET) == 5 && lseek(kept, 0, SEEK_CUR) == 5,
              "%s: the file in flight does not share its offset with the kept one", what);
        CHECK(lseek(got, 3, SEEK_SET) == 3, "lseek");
    }
}

static void same_socket(int got, int peer, const char *what)
{
    xwrite(got, "S", 1, what);
    char c = 0;
    CHECK(read(peer, &c, 1) == 1 && c == 'S', "%s: the socket in flight does not reach its peer",
          what);
}

static int mode_inflight(int closed)
{
    char *fp = path("f"), *rp = path("ifr.sock"), *sp = path("ifs.sock");
    int pp[2], st[2], sq[2], dg[2], us[2];
    CHECK(pipe(pp) == 0, "pipe");
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, st) == 0 &&
              socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sq) == 0 &&
              socketpair(AF_UNIX, SOCK_DGRAM, 0, dg) == 0 &&
              socketpair(AF_UNIX, SOCK_STREAM, 0, us) == 0,
          "socketpair");
    int f = open(fp, O_RDWR | O_CREAT | O_TRUNC, 0644);
    CHECK(f >= 0, "open %s", fp);
    xwrite(f, "0123456789", 10, "file");
    CHECK(lseek(f, 3, SEEK_SET) == 3, "lseek");
    int rs = bound(SOCK_DGRAM, rp, 0), ss = bound(SOCK_DGRAM, sp, 0);

    send_fds(st[0], "before", NULL, 0, NULL);
    send_fds(st[0], "pipe!", &pp[1], 1, NULL);
    send_fds(st[0], "mid", NULL, 0, NULL);
    send_fds(st[0], "file", &f, 1, NULL);
    send_fds(st[0], "after", NULL, 0, NULL);
    send_fds(sq[0], "one", NULL, 0, NULL);
    send_fds(sq[0], "two", &us[0], 1, NULL);
    int two[2] = {pp[1], f};
    send_fds(sq[0], "three", two, 2, NULL);
    send_fds(dg[0], "d1", &pp[1], 1, NULL);
    send_fds(dg[0], "d2", NULL, 0, NULL);
    send_fds(ss, "from s", &f, 1, rp);
    if (closed) {
        close(f);
        f = -1;
    }
    wait_stop();

    int g[2];
    /* A stream read stops after the data that came with descriptors. */
    recv_fds(st[1], "beforepipe!", g, 1, "stream");
    same_pipe(g[0], pp[0], "stream");
    recv_fds(st[1], "midfile", g, 1, "stream");
    same_file(g[0], f, fp, "stream");
    recv_fds(st[1], "after", g, 0, "stream");
    recv_fds(sq[1], "one", g, 0, "seqpacket");
    recv_fds(sq[1], "two", g, 1, "seqpacket");
    same_socket(g[0], us[1], "seqpacket");
    recv_fds(sq[1], "three", g, 2, "seqpacket");
    same_pipe(g[0], pp[0], "seqpacket");
    same_file(g[1], f, fp, "seqpacket");
    recv_fds(dg[1], "d1", g, 1, "dgram");
    same_pipe(g[0], pp[0], "dgram");
    recv_fds(dg[1], "d2", g, 0, "dgram");
    recv_fds(rs, "from s", g, 1, "unconnected dgram");
    same_file(g[0], f, fp, "unconnected dgram");
    say("inflight ok");
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 4)
        fail("usage: unixsk paths|pending|seqpacket|dgram DIR STOPFILE [nodata|data]");
    dir = argv[2];
    stop = argv[3];
    const char *m = argv[1];
    if (strcmp(m, "paths") == 0)
        return mode_paths();
    if (strcmp(m, "pending") == 0)
        return mode_pending(argc > 4 && strcmp(argv[4], "data") == 0);
    if (strcmp(m, "seqpacket") == 0)
        return mode_seqpacket();
    if (strcmp(m, "dgram") == 0)
        return mode_dgram();
    if (strcmp(m, "inflight") == 0)
        return mode_inflight(argc > 4 && strcmp(argv[4], "closed") == 0);
    fail("unknown mode %s", m);
}
