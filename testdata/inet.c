/* inet tcp4|tcp6 STOPFILE
 * inet udp4|udp6 STOPFILE
 * inet outside STOPFILE PORT
 * inet waiting_outside STOPFILE
 * inet dual STOPFILE
 * inet filter STOPFILE
 * inet full STOPFILE
 *
 * AF_INET / AF_INET6 socket state, checked by the program itself once STOPFILE
 * exists (after a restore, or after a dump without --kill).  Each mode prints
 * "ready" once its state is set up, then "<mode> ok" (exit 0) or "FAIL: ..."
 * (exit 1).
 *
 * tcp4, tcp6: on the loopback address (127.0.0.1 or ::1):
 *   L   a listening socket (SO_REUSEADDR for tcp4, IPV6_V6ONLY for tcp6, SO_RCVBUF 65536,
 *       backlog 7, O_NONBLOCK) on an ephemeral port;
 *   c1/s1  a connection to L inside the process (s1 accepted): c1 sent 10000
 *       bytes (sequence numbers 0..2499, 4 bytes each) to s1 and shut down
 *       writing, s1 sent 7000 bytes (from 100000 on) to c1, nothing read;
 *       TCP_NODELAY on s1, SO_KEEPALIVE and TCP_KEEPIDLE 77 on c1;
 *   c3/s3  an idle connection to L inside the process, nothing queued;
 *   c2/s2  a connection to L from a forked child (prints "child PID"): the
 *       child sent 5000 bytes (from 200000 on), the parent 6000 (from 300000 on),
 *       nothing read;
 *   p1, p2 two more clients of L, connected and not accepted.
 *   Checks: every address and port as before; L's options; s1 reads exactly its
 *   10000 bytes in sequence then end of file; c1 its 7000 then nothing more, and
 *   writing on c1 fails (EPIPE) while s1 -> c1 still works; the child and the
 *   parent read exactly their bytes in sequence and ping-pong; two accept()s on L
 *   return p1's and p2's connections in that order (each carries a byte), a third
 *   finds none.
 *
 * udp4, udp6: r bound to the loopback address receives "a1" from a (bound),
 *   "b1" from b (unbound: bound by its first send), "a2" from a and "c1" from c
 *   (connected to r); r2, connected to a, receives "to r2" from a. Nothing read.
 *   SO_RCVBUF 100000 on r. Checks: r's four datagrams in order, each from its
 *   sender's address and port, then none; r2's one; c and r2 still connected to
 *   their peers; datagrams go both ways between a and r.
 *
 * outside: a TCP connection to 127.0.0.1:PORT (a peer outside the checkpoint).
 *   Checks: it still sends.
 *
 * dual: a dual-stack listening socket [::]:P (IPV6_V6ONLY off) and an IPv4 client
 *   connected to 127.0.0.1:P (its accepted end is ::ffff:127.0.0.1:P), 3000 bytes
 *   queued each way, and an IPv4 client waiting to be accepted.  Checks: the
 *   addresses as before (the accepted end still an IPv6 socket with a mapped
 *   address), every byte in sequence, the waiting one accepted.
 *
 * filter: a UDP socket on 127.0.0.1 with a classic BPF filter attached (accept all,
 *   SO_ATTACH_FILTER).  Checks: a datagram it sends itself comes back.
 *
 * waiting_outside: a listening socket on 127.0.0.1 (prints "port N") that waits
 *   until a connection (the test's, from outside) is in its accept queue.  Checks:
 *   the connection can be accepted.
 *
 * full: a connection inside the process whose receiver (SO_RCVBUF 4096) does not
 *   read while its sender (non-blocking) wrote sequence numbers until EAGAIN: bytes
 *   wait in the sender's send queue.  Checks: the receiver reads every byte sent, in
 *   sequence, and nothing more.
 *
 * fullshut: the same, the sender then shutting down writing (its FIN queued after
 *   the bytes).  Checks: every byte, then end of file.
 */
#include "common.h"
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <linux/filter.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>

static int fam;
static const char *stop;

typedef struct sockaddr_storage addr_t;

static socklen_t lo(addr_t *a, int port)
{
    memset(a, 0, sizeof *a);
    if (fam == AF_INET) {
        struct sockaddr_in *s = (struct sockaddr_in *)a;
        s->sin_family = AF_INET;
        s->sin_port = htons(port);
        s->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        return sizeof *s;
    }
    struct sockaddr_in6 *s = (struct sockaddr_in6 *)a;
    s->sin6_family = AF_INET6;
    s->sin6_port = htons(port);
    s->sin6_addr = in6addr_loopback;
    return sizeof *s;
}

static int sock(int type)
{
    int s = socket(fam, type, 0);
    CHECK(s >= 0, "socket: %s", strerror(errno));
    return s;
}

static int port_of(const addr_t *a)
{
    if (a->ss_family == AF_INET)
        return ntohs(((const struct sockaddr_in *)a)->sin_port);
    return ntohs(((const struct sockaddr_in6 *)a)->sin6_port);
}

static const char *show(const addr_t *a)
{
    static char buf[4][80];
    static int n;
    char *b = buf[n++ % 4], ip[64];
    if (a->ss_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)a)->sin_addr, ip, sizeof ip);
    else if (a->ss_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)a)->sin6_addr, ip, sizeof ip);
    else
        snprintf(ip, sizeof ip, "family %d", a->ss_family);
    snprintf(b, 80, "%s:%d", ip, port_of(a));
    return b;
}

static int same(const addr_t *a, const addr_t *b)
{
    if (a->ss_family != b->ss_family || port_of(a) != port_of(b))
        return 0;
    if (a->ss_family == AF_INET)
        return ((const struct sockaddr_in *)a)->sin_addr.s_addr ==
               ((const struct sockaddr_in *)b)->sin_addr.s_addr;
    return memcmp(&((const struct sockaddr_in6 *)a)->sin6_addr,
                  &((const struct sockaddr_in6 *)b)->sin6_addr, 16) == 0;
}

static addr_t name(int s)
{
    addr_t a;
    socklen_t l = sizeof a;
    memset(&a, 0, sizeof a);
    CHECK(getsockname(s, (struct sockaddr *)&a, &l) == 0, "getsockname: %s", strerror(errno));
    return a;
}

static addr_t peer(int s)
{
    addr_t a;
    socklen_t l = sizeof a;
    memset(&a, 0, sizeof a);
    CHECK(getpeername(s, (struct sockaddr *)&a, &l) == 0, "getpeername: %s", strerror(errno));
    return a;
}

static int getint(int s, int level, int opt)
{
    int v = 0;
    socklen_t l = sizeof v;
    CHECK(getsockopt(s, level, opt, &v, &l) == 0, "getsockopt %d/%d: %s", level, opt,
          strerror(errno));
    return v;
}

static void setint(int s, int level, int opt, int v)
{
    CHECK(setsockopt(s, level, opt, &v, sizeof v) == 0, "setsockopt %d/%d: %s", level, opt,
          strerror(errno));
}

static int inq(int s)
{
    int n = 0;
    CHECK(ioctl(s, FIONREAD, &n) == 0, "FIONREAD: %s", strerror(errno));
    return n;
}

/* Write `len` bytes of big-endian sequence numbers from `first` on. */
static void send_seq(int s, unsigned first, int len)
{
    unsigned char *b = malloc(len);
    for (int i = 0; i < len; i++)
        b[i] = (unsigned char)((first + i / 4) >> (8 * (3 - i % 4)));
    for (int done = 0; done < len;) {
        ssize_t n = send(s, b + done, len - done, MSG_NOSIGNAL);
        CHECK(n > 0, "send: %s", strerror(errno));
        done += n;
    }
    free(b);
}

/* Read exactly the `len` bytes of sequence numbers from `first` on, without waiting;
 * then `eof`: end of file; else nothing more queued. */
static void expect_seq(int s, unsigned first, int len, int eof, const char *what)
{
    unsigned char *b = malloc(len + 1);
    int got = 0;
    for (;;) {
        ssize_t n = recv(s, b + got, len + 1 - got, MSG_DONTWAIT);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN) {
            CHECK(!eof, "%s: %d bytes then no end of file", what, got);
            break;
        }
        CHECK(n >= 0, "%s: recv: %s", what, strerror(errno));
        if (n == 0) {
            CHECK(eof, "%s: end of file after %d bytes", what, got);
            break;
        }
        got += n;
        CHECK(got <= len, "%s: more than %d bytes", what, len);
    }
    CHECK(got == len, "%s: %d bytes, expected %d", what, got, len);
    for (int i = 0; i < len; i++) {
        unsigned char want = (unsigned char)((first + i / 4) >> (8 * (3 - i % 4)));
        CHECK(b[i] == want, "%s: byte %d (sequence number %u) is %u, expected %u", what, i,
              first + i / 4, b[i], want);
    }
    free(b);
}

static void wait_inq(int s, int n)
{
    while (inq(s) < n)
        sleep_ms(2);
}

static void put(int s, char c)
{
    CHECK(send(s, &c, 1, MSG_NOSIGNAL) == 1, "send: %s", strerror(errno));
}

static char get(int s)
{
    char c;
    for (;;) {
        ssize_t n = recv(s, &c, 1, 0);
        if (n < 0 && errno == EINTR)
            continue;
        CHECK(n == 1, "recv: %zd %s", n, n < 0 ? strerror(errno) : "end of file");
        return c;
    }
}

static void connect_to(int s, const addr_t *a)
{
    socklen_t l = a->ss_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
    CHECK(connect(s, (const struct sockaddr *)a, l) == 0, "connect %s: %s", show(a), strerror(errno));
}

static int accept_wait(int l)
{
    for (;;) {
        int a = accept(l, NULL, NULL);
        if (a >= 0)
            return a;
        CHECK(errno == EAGAIN || errno == EINTR, "accept: %s", strerror(errno));
        sleep_ms(2);
    }
}

static void check_ends(int s, const addr_t *n, const addr_t *p, const char *what)
{
    addr_t a = name(s), b = peer(s);
    CHECK(same(&a, n), "%s: getsockname %s, was %s", what, show(&a), show(n));
    CHECK(same(&b, p), "%s: getpeername %s, was %s", what, show(&b), show(p));
}

static int tcp(const char *mode)
{
    addr_t a;
    socklen_t al = lo(&a, 0);
    int L = sock(SOCK_STREAM);
    /* tcp6 without SO_REUSEADDR: its accepted sockets have none either, so a
     * TIME_WAIT left by the kill would keep their port from the restore. */
    int reuse = fam == AF_INET;
    if (reuse)
        setint(L, SOL_SOCKET, SO_REUSEADDR, 1);
    if (fam == AF_INET6)
        setint(L, IPPROTO_IPV6, IPV6_V6ONLY, 1);
    setint(L, SOL_SOCKET, SO_RCVBUF, 65536);
    CHECK(bind(L, (struct sockaddr *)&a, al) == 0, "bind: %s", strerror(errno));
    CHECK(listen(L, 7) == 0, "listen: %s", strerror(errno));
    fcntl(L, F_SETFL, O_NONBLOCK);
    addr_t ln = name(L);
    int lrcvbuf = getint(L, SOL_SOCKET, SO_RCVBUF);

    int c1 = sock(SOCK_STREAM);
    connect_to(c1, &ln);
    int s1 = accept_wait(L);
    setint(s1, IPPROTO_TCP, TCP_NODELAY, 1);
    setint(c1, SOL_SOCKET, SO_KEEPALIVE, 1);
    setint(c1, IPPROTO_TCP, TCP_KEEPIDLE, 77);
    send_seq(c1, 0, 10000);
    send_seq(s1, 100000, 7000);
    CHECK(shutdown(c1, SHUT_WR) == 0, "shutdown: %s", strerror(errno));
    addr_t c1n = name(c1), s1n = name(s1);
    int s1rcvbuf = getint(s1, SOL_SOCKET, SO_RCVBUF);
    /* c3/s3: an idle connection, nothing queued (closed by a kill, one end would stay
     * in TIME_WAIT). */
    int c3 = sock(SOCK_STREAM);
    connect_to(c3, &ln);
    int s3 = accept_wait(L);
    addr_t c3n = name(c3), s3n = name(s3);

    int sync[2], done[2];
    CHECK(pipe(sync) == 0 && pipe(done) == 0, "pipe");
    pid_t child = fork();
    CHECK(child >= 0, "fork: %s", strerror(errno));
    if (child == 0) {
        close(sync[0]);
        close(done[0]);
        int c2 = sock(SOCK_STREAM);
        connect_to(c2, &ln);
        send_seq(c2, 200000, 5000);
        wait_inq(c2, 6000);
        addr_t n = name(c2), p = peer(c2);
        CHECK(write(sync[1], "x", 1) == 1, "write");
        wait_for_file(stop, 10);
        check_ends(c2, &n, &p, "child's c2");
        expect_seq(c2, 300000, 6000, 0, "child's c2");
        CHECK(write(done[1], "d", 1) == 1, "write");
        CHECK(get(c2) == 'p', "child: no ping");
        put(c2, 'q');
        exit(0);
    }
    close(sync[1]);
    close(done[1]);
    int s2 = accept_wait(L);
    send_seq(s2, 300000, 6000);
    wait_inq(s2, 5000);
    char x;
    CHECK(read(sync[0], &x, 1) == 1, "child not ready");
    addr_t s2n = name(s2), s2p = peer(s2);

    int p1 = sock(SOCK_STREAM), p2 = sock(SOCK_STREAM);
    connect_to(p1, &ln);
    connect_to(p2, &ln);
    addr_t p1n = name(p1), p2n = name(p2);
    wait_inq(s1, 10000);
    wait_inq(c1, 7000);
    say("child %d", child);
    say("ready");
    wait_for_file(stop, 10);

    /* The listener. */
    addr_t l2 = name(L);
    CHECK(same(&l2, &ln), "listener: getsockname %s, was %s", show(&l2), show(&ln));
    CHECK(getint(L, SOL_SOCKET, SO_ACCEPTCONN) == 1, "listener: not listening");
    CHECK(getint(L, SOL_SOCKET, SO_REUSEADDR) == reuse, "listener: SO_REUSEADDR %d",
          getint(L, SOL_SOCKET, SO_REUSEADDR));
    CHECK(getint(s1, SOL_SOCKET, SO_REUSEADDR) == reuse, "s1: SO_REUSEADDR %d",
          getint(s1, SOL_SOCKET, SO_REUSEADDR));
    CHECK(getint(c1, SOL_SOCKET, SO_REUSEADDR) == 0, "c1: SO_REUSEADDR %d",
          getint(c1, SOL_SOCKET, SO_REUSEADDR));
    CHECK(getint(L, SOL_SOCKET, SO_RCVBUF) == lrcvbuf, "listener: SO_RCVBUF %d, was %d",
          getint(L, SOL_SOCKET, SO_RCVBUF), lrcvbuf);
    if (fam == AF_INET6)
        CHECK(getint(L, IPPROTO_IPV6, IPV6_V6ONLY) == 1, "listener: IPV6_V6ONLY lost");
    CHECK(fcntl(L, F_GETFL) & O_NONBLOCK, "listener: O_NONBLOCK lost");

    /* c1/s1 */
    check_ends(c1, &c1n, &s1n, "c1");
    check_ends(s1, &s1n, &c1n, "s1");
    CHECK(getint(s1, IPPROTO_TCP, TCP_NODELAY) == 1, "s1: TCP_NODELAY lost");
    CHECK(getint(s1, SOL_SOCKET, SO_RCVBUF) == s1rcvbuf, "s1: SO_RCVBUF %d, was %d (its listener's)",
          getint(s1, SOL_SOCKET, SO_RCVBUF), s1rcvbuf);
    CHECK(getint(c1, SOL_SOCKET, SO_KEEPALIVE) == 1, "c1: SO_KEEPALIVE lost");
    CHECK(getint(c1, IPPROTO_TCP, TCP_KEEPIDLE) == 77, "c1: TCP_KEEPIDLE %d",
          getint(c1, IPPROTO_TCP, TCP_KEEPIDLE));
    expect_seq(s1, 0, 10000, 1, "s1");
    expect_seq(c1, 100000, 7000, 0, "c1");
    CHECK(send(c1, "z", 1, MSG_NOSIGNAL) < 0 && errno == EPIPE, "c1: writing after SHUT_WR");
    put(s1, 'm');
    CHECK(get(c1) == 'm', "c1: no byte from s1");

    /* c3/s3 */
    check_ends(c3, &c3n, &s3n, "c3");
    check_ends(s3, &s3n, &c3n, "s3");
    expect_seq(s3, 0, 0, 0, "s3");
    expect_seq(c3, 0, 0, 0, "c3");
    put(c3, 'x');
    CHECK(get(s3) == 'x', "s3: no byte from c3");
    put(s3, 'y');
    CHECK(get(c3) == 'y', "c3: no byte from s3");

    /* c2/s2 with the child */
    check_ends(s2, &s2n, &s2p, "s2");
    expect_seq(s2, 200000, 5000, 0, "s2");
    CHECK(read(done[0], &x, 1) == 1, "the child failed its checks");
    put(s2, 'p');
    CHECK(get(s2) == 'q', "s2: no pong");
    int st;
    CHECK(waitpid(child, &st, 0) == child && WIFEXITED(st) && WEXITSTATUS(st) == 0,
          "child failed: %#x", st);

    /* p1, p2 waiting to be accepted */
    int *ps[2] = {&p1, &p2};
    addr_t *pn[2] = {&p1n, &p2n};
    for (int i = 0; i < 2; i++) {
        int acc = accept(L, NULL, NULL);
        CHECK(acc >= 0, "accept %d: %s", i + 1, strerror(errno));
        check_ends(acc, &ln, pn[i], "accepted pending connection");
        check_ends(*ps[i], pn[i], &ln, "pending client");
        put(acc, 'a' + i);
        CHECK(get(*ps[i]) == 'a' + i, "pending client %d: wrong byte", i + 1);
        close(acc);
    }
    CHECK(accept(L, NULL, NULL) < 0 && errno == EAGAIN, "a third connection waited");
    say("%s ok", mode);
    return 0;
}

static void sendto_(int s, const char *msg, const addr_t *to)
{
    socklen_t l = to ? (to->ss_family == AF_INET ? sizeof(struct sockaddr_in)
                                                 : sizeof(struct sockaddr_in6))
                     : 0;
    CHECK(sendto(s, msg, strlen(msg), 0, (const struct sockaddr *)to, l) == (ssize_t)strlen(msg),
          "sendto: %s", strerror(errno));
}

static void expect_dgram(int s, const char *msg, const addr_t *from, const char *what)
{
    char b[100];
    addr_t a;
    socklen_t l = sizeof a;
    memset(&a, 0, sizeof a);
    ssize_t n = recvfrom(s, b, sizeof b - 1, MSG_DONTWAIT, (struct sockaddr *)&a, &l);
    CHECK(n >= 0, "%s: no datagram %s: %s", what, msg, strerror(errno));
    b[n] = 0;
    CHECK(strcmp(b, msg) == 0, "%s: datagram %s, expected %s", what, b, msg);
    CHECK(same(&a, from), "%s: datagram %s from %s, expected from %s", what, msg, show(&a),
          show(from));
}

static int udp(const char *mode)
{
    addr_t a0;
    socklen_t al = lo(&a0, 0);
    int r = sock(SOCK_DGRAM), a = sock(SOCK_DGRAM), b = sock(SOCK_DGRAM), c = sock(SOCK_DGRAM),
        r2 = sock(SOCK_DGRAM);
    setint(r, SOL_SOCKET, SO_RCVBUF, 100000);
    int rbuf = getint(r, SOL_SOCKET, SO_RCVBUF);
    CHECK(bind(r, (struct sockaddr *)&a0, al) == 0, "bind r: %s", strerror(errno));
    CHECK(bind(a, (struct sockaddr *)&a0, al) == 0, "bind a: %s", strerror(errno));
    CHECK(bind(r2, (struct sockaddr *)&a0, al) == 0, "bind r2: %s", strerror(errno));
    addr_t rn = name(r), an = name(a), r2n = name(r2);
    connect_to(c, &rn);
    connect_to(r2, &an);
    sendto_(a, "a1", &rn);
    sendto_(b, "b1", &rn);
    sendto_(a, "a2", &rn);
    sendto_(c, "c1", NULL);
    sendto_(a, "to r2", &r2n);
    /* b is bound to the wildcard address; its datagrams come from loopback. */
    addr_t bn = name(b), cn = name(c), bfrom;
    lo(&bfrom, port_of(&bn));
    say("ready");
    wait_for_file(stop, 10);
    addr_t x = name(r);
    CHECK(same(&x, &rn), "r: getsockname %s, was %s", show(&x), show(&rn));
    CHECK(getint(r, SOL_SOCKET, SO_RCVBUF) == rbuf, "r: SO_RCVBUF %d, was %d",
          getint(r, SOL_SOCKET, SO_RCVBUF), rbuf);
    check_ends(c, &cn, &rn, "c");
    check_ends(r2, &r2n, &an, "r2");
    x = name(a);
    CHECK(same(&x, &an), "a: getsockname %s, was %s", show(&x), show(&an));
    x = name(b);
    CHECK(same(&x, &bn), "b: getsockname %s, was %s", show(&x), show(&bn));
    expect_dgram(r, "a1", &an, "r");
    expect_dgram(r, "b1", &bfrom, "r");
    expect_dgram(r, "a2", &an, "r");
    expect_dgram(r, "c1", &cn, "r");
    char buf[8];
    CHECK(recv(r, buf, sizeof buf, MSG_DONTWAIT) < 0 && errno == EAGAIN, "r: more datagrams");
    expect_dgram(r2, "to r2", &an, "r2");
    CHECK(recv(r2, buf, sizeof buf, MSG_DONTWAIT) < 0 && errno == EAGAIN, "r2: more datagrams");
    sendto_(a, "x", &rn);
    expect_dgram(r, "x", &an, "r");
    sendto_(r, "y", &an);
    expect_dgram(a, "y", &rn, "a");
    sendto_(c, "z", NULL);
    expect_dgram(r, "z", &cn, "r");
    say("%s ok", mode);
    return 0;
}

static int outside(const char *port)
{
    addr_t a;
    lo(&a, atoi(port));
    int s = sock(SOCK_STREAM);
    connect_to(s, &a);
    say("ready");
    wait_for_file(stop, 10);
    put(s, 'b');
    say("outside ok");
    return 0;
}

static int dual(void)
{
    fam = AF_INET6;
    addr_t a;
    memset(&a, 0, sizeof a);
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&a;
    a6->sin6_family = AF_INET6;
    a6->sin6_addr = in6addr_any;
    int L = sock(SOCK_STREAM);
    setint(L, IPPROTO_IPV6, IPV6_V6ONLY, 0);
    CHECK(bind(L, (struct sockaddr *)&a, sizeof *a6) == 0 && listen(L, 4) == 0, "listen: %s",
          strerror(errno));
    addr_t ln = name(L);
    fam = AF_INET;
    addr_t to;
    lo(&to, port_of(&ln));
    int c = sock(SOCK_STREAM);
    connect_to(c, &to);
    int s = accept_wait(L);
    send_seq(c, 0, 3000);
    send_seq(s, 50000, 3000);
    int p = sock(SOCK_STREAM);
    connect_to(p, &to);
    addr_t cn = name(c), sn = name(s), pn = name(p);
    wait_inq(s, 3000);
    wait_inq(c, 3000);
    say("ready");
    wait_for_file(stop, 10);
    addr_t x = name(L);
    CHECK(same(&x, &ln), "listener: getsockname %s, was %s", show(&x), show(&ln));
    CHECK(getint(L, IPPROTO_IPV6, IPV6_V6ONLY) == 0, "listener: IPV6_V6ONLY set");
    check_ends(c, &cn, &to, "c");
    addr_t sp = peer(s), sx = name(s);
    CHECK(same(&sx, &sn) && sp.ss_family == AF_INET6 && port_of(&sp) == port_of(&cn),
          "s: %s → %s, was %s", show(&sx), show(&sp), show(&sn));
    expect_seq(s, 0, 3000, 0, "s");
    expect_seq(c, 50000, 3000, 0, "c");
    int acc = accept(L, NULL, NULL);
    CHECK(acc >= 0, "accept: %s", strerror(errno));
    addr_t ap = peer(acc);
    CHECK(port_of(&ap) == port_of(&pn), "accepted %s, expected the client %s", show(&ap),
          show(&pn));
    put(acc, 'k');
    CHECK(get(p) == 'k', "waiting client: no byte");
    say("dual ok");
    return 0;
}

static int filter(void)
{
    addr_t a;
    socklen_t al = lo(&a, 0);
    int u = sock(SOCK_DGRAM);
    CHECK(bind(u, (struct sockaddr *)&a, al) == 0, "bind: %s", strerror(errno));
    struct sock_filter all = BPF_STMT(BPF_RET | BPF_K, 0xffffffff);
    struct sock_fprog prog = {.len = 1, .filter = &all};
    CHECK(setsockopt(u, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof prog) == 0,
          "SO_ATTACH_FILTER: %s", strerror(errno));
    addr_t n = name(u);
    say("ready");
    wait_for_file(stop, 10);
    sendto_(u, "self", &n);
    expect_dgram(u, "self", &n, "u");
    say("filter ok");
    return 0;
}

static int waiting_outside(void)
{
    addr_t a;
    socklen_t al = lo(&a, 0);
    int L = sock(SOCK_STREAM);
    CHECK(bind(L, (struct sockaddr *)&a, al) == 0 && listen(L, 4) == 0, "listen: %s",
          strerror(errno));
    addr_t n = name(L);
    say("port %d", port_of(&n));
    struct pollfd p = {.fd = L, .events = POLLIN};
    while (poll(&p, 1, -1) != 1)
        ;
    say("ready");
    wait_for_file(stop, 10);
    int c = accept(L, NULL, NULL);
    CHECK(c >= 0, "accept: %s", strerror(errno));
    say("waiting_outside ok");
    return 0;
}

static int full(int shut)
{
    addr_t a;
    socklen_t al = lo(&a, 0);
    int L = sock(SOCK_STREAM);
    setint(L, SOL_SOCKET, SO_RCVBUF, 4096);
    CHECK(bind(L, (struct sockaddr *)&a, al) == 0 && listen(L, 4) == 0, "listen: %s",
          strerror(errno));
    addr_t ln = name(L);
    int c = sock(SOCK_STREAM);
    setint(c, SOL_SOCKET, SO_SNDBUF, 65536);
    connect_to(c, &ln);
    int s = accept_wait(L);
    fcntl(c, F_SETFL, O_NONBLOCK);
    unsigned char b[4];
    int sent = 0;
    for (;;) {
        for (int i = 0; i < 4; i++)
            b[i] = (unsigned char)((unsigned)(sent / 4) >> (8 * (3 - i)));
        ssize_t k = send(c, b, 4, MSG_NOSIGNAL);
        if (k < 0 && errno == EAGAIN)
            break;
        CHECK(k == 4, "send: %zd %s", k, strerror(errno));
        sent += 4;
    }
    if (shut)
        CHECK(shutdown(c, SHUT_WR) == 0, "shutdown: %s", strerror(errno));
    say("sent %d", sent);
    say("ready");
    wait_for_file(stop, 10);
    unsigned char *all = malloc(sent);
    for (int got = 0; got < sent;) {
        ssize_t k = recv(s, all + got, sent - got, 0);
        CHECK(k > 0, "recv: %s", k < 0 ? strerror(errno) : "end of file");
        got += k;
    }
    for (int i = 0; i < sent; i++)
        CHECK(all[i] == (unsigned char)((unsigned)(i / 4) >> (8 * (3 - i % 4))),
              "byte %d is wrong", i);
    char more;
    if (shut) {
        CHECK(recv(s, &more, 1, 0) == 0, "no end of file after %d bytes", sent);
        say("fullshut ok");
        return 0;
    }
    CHECK(recv(s, &more, 1, MSG_DONTWAIT) < 0 && errno == EAGAIN, "more than %d bytes", sent);
    say("full ok");
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 3)
        fail("usage: inet tcp4|tcp6|udp4|udp6|outside STOPFILE [PORT]");
    const char *mode = argv[1];
    stop = argv[2];
    fam = strchr(mode, '6') ? AF_INET6 : AF_INET;
    if (!strncmp(mode, "tcp", 3))
        return tcp(mode);
    if (!strncmp(mode, "udp", 3))
        return udp(mode);
    if (!strcmp(mode, "outside") && argc > 3)
        return outside(argv[3]);
    if (!strcmp(mode, "filter"))
        return filter();
    if (!strcmp(mode, "dual"))
        return dual();
    if (!strcmp(mode, "waiting_outside"))
        return waiting_outside();
    if (!strcmp(mode, "full"))
        return full(0);
    if (!strcmp(mode, "fullshut"))
        return full(1);
    fail("unknown mode %s", mode);
}
