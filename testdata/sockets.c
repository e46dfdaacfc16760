/* sockets tree DIR STOPFILE [PINGS]
 * sockets outside FD STOPFILE TEXT
 * sockets hold raw|netlink STOPFILE
 *
 * tree: a parent and a forked child connected by unix sockets of every kind,
 * with data in flight in each at checkpoint time:
 *   - a SOCK_STREAM socketpair (50000 bytes parent->child, 30000 child->parent);
 *   - a SOCK_SEQPACKET socketpair (records of 1, 1000, 5000 bytes one way, 7
 *     and 4000 the other: record boundaries must survive);
 *   - a SOCK_DGRAM socketpair (datagrams of 10, 200, 3000, 1 / 100, 1 bytes);
 *   - a named listening stream socket DIR/listen.sock (its descriptor shared
 *     by both processes) with a client in the child and the accepted socket in
 *     the parent (7000 bytes client->server, 123 server->client);
 *   - an abstract dgram socket @ckpt-sockets-<pid>-a in the parent, and one
 *     @ckpt-sockets-<pid>-b in the child connected to it (3 datagrams b->a,
 *     2 sent a->b with sendto; each side checks the sender's address);
 *   - a stream socketpair whose parent end is shut down for writing after
 *     5000 bytes: the child reads them, then EOF; the other direction works.
 * The child's end of the stream pair has SO_RCVBUF set, its seqpacket end
 * SO_PEEK_OFF 0 and its abstract dgram socket O_NONBLOCK: all are checked
 * after the stop file appears, as are the names (getsockname / getpeername).
 * Prints "child <pid>" and "ready" once all data is in flight.  When STOPFILE exists, each side reads what was in
 * flight and checks it byte for byte (message by message), then they ping-pong
 * PINGS (default 20) times on every socket, the child connects once more to
 * the listening socket and the parent accepts it; the child exits 0, the
 * parent reaps it and prints "sockets ok", exit 0.  Any failed check prints
 * "FAIL: ..." (exit 1).
 *
 * outside: FD is a connected stream socket whose peer is not ours (the test
 * holds it).  Prints "ready"; when STOPFILE exists, reads TEXT from FD (sent
 * by the peer before the checkpoint), then expects end of file and EPIPE on
 * write (after a restore, the peer is closed), prints "outside ok".
 *
 * hold: holds a socket ckpt refuses and prints "fd <n> kind <KIND>" (n: that
 * socket) and "ready", then "tick <n>" every 20 ms until STOPFILE exists; then
 * checks the socket is as it was, prints "done", exit 0.  KIND:
 *   raw        an AF_INET raw socket (IPPROTO_ICMP; needs CAP_NET_RAW)
 *   netlink    a NETLINK_ROUTE socket
 *   scm_rights a unix stream socketpair with a descriptor in flight
 *              (SCM_RIGHTS) that it closed itself; at the end it is received and checked
 *   backlog    a listening unix socket with a connection not yet accepted
 *              whose client (fd) sent a byte already;
 *              at the end it is accepted
 */
#include "common.h"
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/netlink.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>

static const char *stop;

static unsigned char pat(int id, size_t i)
{
    return (unsigned char)(i * 131 + (size_t)id * 17 + (i >> 9));
}

static void fill(unsigned char *b, size_t n, int id)
{
    for (size_t i = 0; i < n; i++)
        b[i] = pat(id, i);
}

static void check_bytes(const unsigned char *b, size_t n, int id, const char *what)
{
    for (size_t i = 0; i < n; i++)
        if (b[i] != pat(id, i))
            fail("%s: byte %zu of %zu is %u, expected %u", what, i, n, b[i], pat(id, i));
}

static void wait_readable(int fd, const char *what)
{
    struct pollfd p = { .fd = fd, .events = POLLIN };
    for (;;) {
        int r = poll(&p, 1, 10000);
        if (r > 0)
            return;
        if (r == 0)
            fail("%s: nothing to read within 10 s (data lost?)", what);
        if (errno != EINTR)
            fail("%s: poll: %s", what, strerror(errno));
    }
}

static void send_all(int fd, const void *buf, size_t n, const char *what)
{
    const char *p = buf;
    while (n > 0) {
        ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0 && errno == EAGAIN) {
            struct pollfd q = { .fd = fd, .events = POLLOUT };
            poll(&q, 1, 1000);
            continue;
        }
        CHECK(k > 0, "%s: send: %s", what, strerror(errno));
        p += k;
        n -= (size_t)k;
    }
}

/* One message (or a stream chunk) of exactly n bytes. */
static void send_msg(int fd, const void *buf, size_t n, const char *what)
{
    for (;;) {
        ssize_t k = send(fd, buf, n, MSG_NOSIGNAL);
        if (k < 0 && (errno == EINTR || errno == EAGAIN)) {
            sleep_ms(1);
            continue;
        }
        CHECK(k == (ssize_t)n, "%s: send: %zd of %zu (%s)", what, k, n, strerror(errno));
        return;
    }
}

static void read_exact(int fd, void *buf, size_t n, const char *what)
{
    char *p = buf;
    while (n > 0) {
        wait_readable(fd, what);
        ssize_t k = recv(fd, p, n, MSG_DONTWAIT);
        if (k < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        CHECK(k > 0, "%s: recv: %s", what, k == 0 ? "end of file" : strerror(errno));
        p += k;
        n -= (size_t)k;
    }
}

/* One message; returns its length (MSG_TRUNC: the real one).  The sender's
 * address goes to `from` (may be NULL). */
static size_t recv_msg(int fd, void *buf, size_t cap, struct sockaddr_un *from,
                       socklen_t *fromlen, const char *what)
{
    int type = 0;
    socklen_t tl = sizeof type;
    CHECK(getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) == 0, "%s: SO_TYPE", what);
    /* MSG_TRUNC gives a datagram's real length (on a stream it would discard) */
    int trunc = type == SOCK_STREAM ? 0 : MSG_TRUNC;
    for (;;) {
        wait_readable(fd, what);
        if (fromlen)
            *fromlen = sizeof *from;
        ssize_t k = recvfrom(fd, buf, cap, MSG_DONTWAIT | trunc,
                             (struct sockaddr *)from, fromlen);
        if (k < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        CHECK(k >= 0, "%s: recv: %s", what, strerror(errno));
        return (size_t)k;
    }
}

static socklen_t set_path(struct sockaddr_un *a, const char *path)
{
    memset(a, 0, sizeof *a);
    a->sun_family = AF_UNIX;
    CHECK(strlen(path) < sizeof a->sun_path, "path too long: %s", path);
    strcpy(a->sun_path, path);
    return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(path) + 1);
}

static socklen_t set_abstract(struct sockaddr_un *a, const char *name)
{
    memset(a, 0, sizeof *a);
    a->sun_family = AF_UNIX;
    size_t n = strlen(name);
    CHECK(n + 1 < sizeof a->sun_path, "name too long: %s", name);
    memcpy(a->sun_path + 1, name, n);
    return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + n);
}

static int same_addr(const struct sockaddr_un *a, socklen_t alen, const struct sockaddr_un *b,
                     socklen_t blen)
{
    return alen == blen && memcmp(a, b, alen) == 0;
}

static void check_name(int fd, int peer, const struct sockaddr_un *want, socklen_t wlen,
                       const char *what)
{
    struct sockaddr_un got;
    socklen_t glen = sizeof got;
    int r = peer ? getpeername(fd, (struct sockaddr *)&got, &glen)
                 : getsockname(fd, (struct sockaddr *)&got, &glen);
    CHECK(r == 0, "%s: %s: %s", what, peer ? "getpeername" : "getsockname", strerror(errno));
    CHECK(same_addr(&got, glen, want, wlen), "%s: %s is %s%s (length %u), expected %s%s",
          what, peer ? "peer name" : "name", got.sun_path[0] ? "" : "@",
          got.sun_path[0] ? got.sun_path : got.sun_path + 1, (unsigned)glen,
          want->sun_path[0] ? "" : "@", want->sun_path[0] ? want->sun_path : want->sun_path + 1);
}

/* In-flight message plan: sizes per direction and socket. */
static const size_t SEQ_PC[] = { 1, 1000, 5000 }, SEQ_CP[] = { 7, 4000 };
static const size_t DG_PC[] = { 10, 200, 3000, 1 }, DG_CP[] = { 100, 1 };
static const size_t AB_CP[] = { 50, 2000, 3 }, AB_PC[] = { 64, 9 };
#define N(a) (sizeof(a) / sizeof((a)[0]))
#define ST_PC 50000
#define ST_CP 30000
#define NM_CP 7000
#define NM_PC 123
#define SH_PC 5000

static unsigned char buf[1 << 16], tmp[1 << 16];

static void send_msgs(int fd, const size_t *sizes, size_t n, int id0, const char *what)
{
    for (size_t i = 0; i < n; i++) {
        fill(buf, sizes[i], id0 + (int)i);
        send_msg(fd, buf, sizes[i], what);
    }
}

static void recv_msgs(int fd, const size_t *sizes, size_t n, int id0, const struct sockaddr_un *from,
                      socklen_t fromlen, const char *what)
{
    for (size_t i = 0; i < n; i++) {
        struct sockaddr_un got;
        socklen_t glen = sizeof got;
        size_t k = recv_msg(fd, tmp, sizeof tmp, &got, &glen, what);
        CHECK(k == sizes[i], "%s: message %zu has %zu bytes, expected %zu (boundaries lost?)", what,
              i, k, sizes[i]);
        check_bytes(tmp, k, id0 + (int)i, what);
        if (from)
            CHECK(same_addr(&got, glen, from, fromlen), "%s: message %zu: wrong sender address",
                  what, i);
    }
}

static void recv_stream(int fd, size_t n, int id, const char *what)
{
    unsigned char *b = malloc(n);
    CHECK(b != NULL, "malloc");
    read_exact(fd, b, n, what);
    check_bytes(b, n, id, what);
    free(b);
}

static void ping(int fd, const char *word, int i, const char *what)
{
    char m[64];
    int n = snprintf(m, sizeof m, "%s %d", word, i);
    send_msg(fd, m, (size_t)n, what);
}

static void pong(int fd, const char *word, int i, const char *what)
{
    char want[64], got[64];
    int n = snprintf(want, sizeof want, "%s %d", word, i);
    size_t k = recv_msg(fd, got, sizeof got - 1, NULL, NULL, what);
    got[k < sizeof got ? k : sizeof got - 1] = 0;
    CHECK(k == (size_t)n && memcmp(got, want, (size_t)n) == 0, "%s: got '%s', expected '%s'",
          what, got, want);
}

static int tree(int argc, char **argv)
{
    const char *dir = argv[2];
    stop = argv[3];
    int pings = (int)arg_long(argc, argv, 4, 20);
    char path[200], aname[64], bname[64];
    snprintf(path, sizeof path, "%s/listen.sock", dir);
    snprintf(aname, sizeof aname, "ckpt-sockets-%d-a", (int)getpid());
    snprintf(bname, sizeof bname, "ckpt-sockets-%d-b", (int)getpid());
    struct sockaddr_un pa, aa, ba;
    socklen_t palen = set_path(&pa, path), aalen = set_abstract(&aa, aname),
              balen = set_abstract(&ba, bname);

    int st[2], sq[2], dg[2], sh[2], syncp[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, st) == 0, "socketpair: %s", strerror(errno));
    CHECK(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sq) == 0, "socketpair: %s", strerror(errno));
    CHECK(socketpair(AF_UNIX, SOCK_DGRAM, 0, dg) == 0, "socketpair: %s", strerror(errno));
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sh) == 0, "socketpair: %s", strerror(errno));
    CHECK(pipe(syncp) == 0, "pipe: %s", strerror(errno));
    int lis = socket(AF_UNIX, SOCK_STREAM, 0);
    CHECK(lis >= 0 && bind(lis, (struct sockaddr *)&pa, palen) == 0 && listen(lis, 4) == 0,
          "listening socket %s: %s", path, strerror(errno));
    int a = socket(AF_UNIX, SOCK_DGRAM, 0);
    CHECK(a >= 0 && bind(a, (struct sockaddr *)&aa, aalen) == 0, "bind @%s: %s", aname,
          strerror(errno));

    pid_t kid = fork();
    CHECK(kid >= 0, "fork: %s", strerror(errno));
    if (kid == 0) {
        close(st[0]);
        close(sq[0]);
        close(dg[0]);
        close(sh[0]);
        close(a);
        close(syncp[0]);
        /* lis stays open here too: one description shared by two processes */
        int cl = socket(AF_UNIX, SOCK_STREAM, 0);
        CHECK(cl >= 0 && connect(cl, (struct sockaddr *)&pa, palen) == 0, "connect %s: %s", path,
              strerror(errno));
        int b = socket(AF_UNIX, SOCK_DGRAM, 0);
        CHECK(b >= 0 && bind(b, (struct sockaddr *)&ba, balen) == 0 &&
                  connect(b, (struct sockaddr *)&aa, aalen) == 0,
              "dgram @%s -> @%s: %s", bname, aname, strerror(errno));
        int rcvbuf = 65536;
        CHECK(setsockopt(st[1], SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf) == 0,
              "SO_RCVBUF: %s", strerror(errno));
        socklen_t ol = sizeof rcvbuf;
        CHECK(getsockopt(st[1], SOL_SOCKET, SO_RCVBUF, &rcvbuf, &ol) == 0, "SO_RCVBUF");
        CHECK(fcntl(b, F_SETFL, O_NONBLOCK) == 0, "O_NONBLOCK: %s", strerror(errno));
        int peek_off = 0;
        CHECK(setsockopt(sq[1], SOL_SOCKET, SO_PEEK_OFF, &peek_off, sizeof peek_off) == 0,
              "SO_PEEK_OFF: %s", strerror(errno));

        unsigned char *big = malloc(ST_CP);
        fill(big, ST_CP, 1);
        send_all(st[1], big, ST_CP, "stream child->parent");
        free(big);
        send_msgs(sq[1], SEQ_CP, N(SEQ_CP), 11, "seqpacket child->parent");
        send_msgs(dg[1], DG_CP, N(DG_CP), 21, "dgram child->parent");
        fill(buf, NM_CP, 31);
        send_all(cl, buf, NM_CP, "named client->server");
        send_msgs(b, AB_CP, N(AB_CP), 41, "abstract b->a");
        CHECK(write(syncp[1], "c", 1) == 1, "sync: %s", strerror(errno));
        close(syncp[1]);

        wait_for_file(stop, 10);

        ol = sizeof peek_off;
        CHECK(getsockopt(sq[1], SOL_SOCKET, SO_PEEK_OFF, &peek_off, &ol) == 0 && peek_off == 0,
              "SO_PEEK_OFF is %d, was 0", peek_off);
        recv_stream(st[1], ST_PC, 2, "stream parent->child");
        recv_msgs(sq[1], SEQ_PC, N(SEQ_PC), 13, NULL, 0, "seqpacket parent->child");
        recv_msgs(dg[1], DG_PC, N(DG_PC), 23, NULL, 0, "dgram parent->child");
        recv_stream(cl, NM_PC, 32, "named server->client");
        recv_msgs(b, AB_PC, N(AB_PC), 44, &aa, aalen, "abstract a->b");
        recv_stream(sh[1], SH_PC, 51, "shut-down stream parent->child");
        wait_readable(sh[1], "shut-down stream end of file");
        CHECK(recv(sh[1], tmp, 1, MSG_DONTWAIT) == 0, "shut-down stream: no end of file");

        check_name(cl, 1, &pa, palen, "named client");
        check_name(b, 0, &ba, balen, "abstract b");
        check_name(b, 1, &aa, aalen, "abstract b");
        int now = 0;
        ol = sizeof now;
        CHECK(getsockopt(st[1], SOL_SOCKET, SO_RCVBUF, &now, &ol) == 0 && now == rcvbuf,
              "SO_RCVBUF is %d, was %d", now, rcvbuf);
        CHECK(fcntl(b, F_GETFL) & O_NONBLOCK, "O_NONBLOCK was lost");

        for (int i = 0; i < pings; i++) {
            pong(st[1], "ping", i, "stream ping");
            ping(st[1], "pong", i, "stream pong");
            pong(sq[1], "ping", i, "seqpacket ping");
            ping(sq[1], "pong", i, "seqpacket pong");
            pong(dg[1], "ping", i, "dgram ping");
            ping(dg[1], "pong", i, "dgram pong");
            pong(cl, "ping", i, "named ping");
            ping(cl, "pong", i, "named pong");
            pong(b, "ping", i, "abstract ping");
            ping(b, "pong", i, "abstract pong");
            ping(sh[1], "pong", i, "shut-down stream pong");
        }
        int c2 = socket(AF_UNIX, SOCK_STREAM, 0);
        CHECK(c2 >= 0 && connect(c2, (struct sockaddr *)&pa, palen) == 0,
              "new connection to %s: %s", path, strerror(errno));
        ping(c2, "new", 1, "new connection");
        pong(c2, "ok", 1, "new connection");
        close(c2);
        return 0;
    }

    close(st[1]);
    close(sq[1]);
    close(dg[1]);
    close(sh[1]);
    close(syncp[1]);
    int acc = accept(lis, NULL, NULL);
    CHECK(acc >= 0, "accept: %s", strerror(errno));
    char c;
    CHECK(read(syncp[0], &c, 1) == 1, "the child did not get ready");
    close(syncp[0]);

    unsigned char *big = malloc(ST_PC);
    fill(big, ST_PC, 2);
    send_all(st[0], big, ST_PC, "stream parent->child");
    free(big);
    send_msgs(sq[0], SEQ_PC, N(SEQ_PC), 13, "seqpacket parent->child");
    send_msgs(dg[0], DG_PC, N(DG_PC), 23, "dgram parent->child");
    fill(buf, NM_PC, 32);
    send_all(acc, buf, NM_PC, "named server->client");
    for (size_t i = 0; i < N(AB_PC); i++) {
        fill(buf, AB_PC[i], 44 + (int)i);
        CHECK(sendto(a, buf, AB_PC[i], 0, (struct sockaddr *)&ba, balen) == (ssize_t)AB_PC[i],
              "sendto @%s: %s", bname, strerror(errno));
    }
    fill(buf, SH_PC, 51);
    send_all(sh[0], buf, SH_PC, "shut-down stream parent->child");
    CHECK(shutdown(sh[0], SHUT_WR) == 0, "shutdown: %s", strerror(errno));
    say("child %d", (int)kid);
    say("ready");

    wait_for_file(stop, 10);

    recv_stream(st[0], ST_CP, 1, "stream child->parent");
    recv_msgs(sq[0], SEQ_CP, N(SEQ_CP), 11, NULL, 0, "seqpacket child->parent");
    recv_msgs(dg[0], DG_CP, N(DG_CP), 21, NULL, 0, "dgram child->parent");
    recv_stream(acc, NM_CP, 31, "named client->server");
    recv_msgs(a, AB_CP, N(AB_CP), 41, &ba, balen, "abstract b->a");
    check_name(acc, 0, &pa, palen, "accepted socket");
    check_name(lis, 0, &pa, palen, "listening socket");
    check_name(a, 0, &aa, aalen, "abstract a");

    for (int i = 0; i < pings; i++) {
        ping(st[0], "ping", i, "stream ping");
        pong(st[0], "pong", i, "stream pong");
        ping(sq[0], "ping", i, "seqpacket ping");
        pong(sq[0], "pong", i, "seqpacket pong");
        ping(dg[0], "ping", i, "dgram ping");
        pong(dg[0], "pong", i, "dgram pong");
        ping(acc, "ping", i, "named ping");
        pong(acc, "pong", i, "named pong");
        char m[64];
        int n = snprintf(m, sizeof m, "ping %d", i);
        CHECK(sendto(a, m, (size_t)n, 0, (struct sockaddr *)&ba, balen) == n,
              "abstract ping: %s", strerror(errno));
        struct sockaddr_un from;
        socklen_t fl = sizeof from;
        char got[64];
        size_t k = recv_msg(a, got, sizeof got - 1, &from, &fl, "abstract pong");
        got[k] = 0;
        snprintf(m, sizeof m, "pong %d", i);
        CHECK(strcmp(got, m) == 0 && same_addr(&from, fl, &ba, balen),
              "abstract pong: got '%s' (expected '%s' from @%s)", got, m, bname);
        pong(sh[0], "pong", i, "shut-down stream pong");
    }
    int c2 = accept(lis, NULL, NULL);
    CHECK(c2 >= 0, "accept of a new connection: %s", strerror(errno));
    pong(c2, "new", 1, "new connection");
    ping(c2, "ok", 1, "new connection");
    close(c2);

    int status;
    CHECK(waitpid(kid, &status, 0) == kid, "waitpid: %s", strerror(errno));
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the child failed (status %#x)", status);
    unlink(path);
    say("sockets ok");
    return 0;
}

static int outside(int argc, char **argv)
{
    CHECK(argc >= 5, "usage: sockets outside FD STOPFILE TEXT");
    int fd = (int)arg_long(argc, argv, 2, -1);
    stop = argv[3];
    const char *text = argv[4];
    int type = 0;
    socklen_t tl = sizeof type;
    CHECK(getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) == 0 && type == SOCK_STREAM,
          "fd %d is not a stream socket", fd);
    say("ready");
    wait_for_file(stop, 10);
    size_t n = strlen(text);
    char *got = calloc(1, n + 1);
    read_exact(fd, got, n, "data from outside");
    CHECK(memcmp(got, text, n) == 0, "data from outside: got '%s', expected '%s'", got, text);
    wait_readable(fd, "end of file from outside");
    ssize_t k = recv(fd, got, 1, MSG_DONTWAIT);
    CHECK(k == 0, "expected end of file after the data, got %zd (%s)", k, strerror(errno));
    k = send(fd, "x", 1, MSG_NOSIGNAL);
    CHECK(k < 0 && errno == EPIPE, "a write to the closed peer gave %zd (%s), expected EPIPE", k,
          strerror(errno));
    say("outside ok");
    return 0;
}

static int hold(int argc, char **argv)
{
    CHECK(argc >= 4, "usage: sockets hold raw|netlink|scm_rights|backlog STOPFILE");
    const char *kind = argv[2];
    stop = argv[3];
    int fd, other = -1;
    if (!strcmp(kind, "raw")) {
        fd = socket(AF_INET, SOCK_RAW, IPPROTO_ICMP);
        CHECK(fd >= 0, "raw socket: %s", strerror(errno));
    } else if (!strcmp(kind, "netlink")) {
        fd = socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE);
        CHECK(fd >= 0, "netlink socket: %s", strerror(errno));
    } else if (!strcmp(kind, "scm_rights")) {
        int sp[2];
        CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sp) == 0, "socketpair: %s", strerror(errno));
        other = open("/dev/null", O_RDONLY);
        CHECK(other >= 0, "open: %s", strerror(errno));
        union {
            struct cmsghdr h;
            char b[CMSG_SPACE(sizeof(int))];
        } u;
        memset(&u, 0, sizeof u);
        struct iovec iov = { .iov_base = "F", .iov_len = 1 };
        struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.b,
                            .msg_controllen = sizeof u.b };
        struct cmsghdr *c = CMSG_FIRSTHDR(&m);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &other, sizeof(int));
        CHECK(sendmsg(sp[0], &m, 0) == 1, "sendmsg: %s", strerror(errno));
        close(other); /* the descriptor lives only in flight */
        fd = sp[1];
    } else if (!strcmp(kind, "backlog")) {
        struct sockaddr_un a;
        char name[64];
        snprintf(name, sizeof name, "ckpt-sockets-%d-backlog", (int)getpid());
        socklen_t al = set_abstract(&a, name);
        other = socket(AF_UNIX, SOCK_STREAM, 0);
        CHECK(other >= 0 && bind(other, (struct sockaddr *)&a, al) == 0 && listen(other, 4) == 0,
              "listen: %s", strerror(errno));
        fd = socket(AF_UNIX, SOCK_STREAM, 0);
        CHECK(fd >= 0 && connect(fd, (struct sockaddr *)&a, al) == 0, "connect: %s",
              strerror(errno));
        CHECK(write(fd, "B", 1) == 1, "write: %s", strerror(errno));
    } else {
        fail("unknown kind '%s'", kind);
    }
    say("fd %d kind %s", fd, kind);
    say("ready");
    for (long n = 1; !file_exists(stop); n++) {
        say("tick %ld", n);
        sleep_ms(20);
    }
    if (!strcmp(kind, "scm_rights")) {
        /* the refused dump peeked at it: the message and its descriptor are still there */
        char b[1];
        union {
            struct cmsghdr h;
            char b[CMSG_SPACE(sizeof(int))];
        } u;
        struct iovec iov = { .iov_base = b, .iov_len = 1 };
        struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.b,
                            .msg_controllen = sizeof u.b };
        CHECK(recvmsg(fd, &m, MSG_DONTWAIT) == 1 && b[0] == 'F', "the queued message is gone");
        struct cmsghdr *c = CMSG_FIRSTHDR(&m);
        CHECK(c && c->cmsg_type == SCM_RIGHTS, "the queued descriptor is gone");
        int got;
        memcpy(&got, CMSG_DATA(c), sizeof got);
        CHECK(fcntl(got, F_GETFD) >= 0, "the received descriptor is not valid");
    } else if (!strcmp(kind, "backlog")) {
        int c = accept(other, NULL, NULL);
        char b;
        CHECK(c >= 0, "the pending connection is gone: %s", strerror(errno));
        CHECK(read(c, &b, 1) == 1 && b == 'B', "the pending connection's data is gone");
    }
    say("done");
    return 0;
}

int main(int argc, char **argv)
{
    if (argc >= 4 && !strcmp(argv[1], "tree"))
        return tree(argc, argv);
    if (argc >= 5 && !strcmp(argv[1], "outside"))
        return outside(argc, argv);
    if (argc >= 4 && !strcmp(argv[1], "hold"))
        return hold(argc, argv);
    fprintf(stderr, "usage: %s tree DIR STOPFILE [PINGS] | outside FD STOPFILE TEXT | "
                    "hold raw|netlink|scm_rights|backlog STOPFILE\n",
            argv[0]);
    return 2;
}
