/* A TCP connection to a peer outside the checkpoint (tests/tcp_repair.rs, issue 10).
 *
 *   tcp_outside stream HOST PORT STOP
 *     Connects to HOST:PORT, says "local PORT", writes its stream (byte i of it is
 *     i % 251) without blocking until its send buffer is full, and says "ready sent N".
 *     Reads nothing until STOP exists. Then checks its addresses are the same, writes
 *     100000 bytes more while reading the peer's stream (byte j is (j * 7 + 1) % 253)
 *     to its end, shuts down writing, and says "stream ok sent=S received=R".
 *
 *   tcp_outside serve HOST 0 STOP
 *     The same stream on the server side: listens on HOST, says "listening PORT",
 *     accepts a client (the peer, outside), runs the stream on it, then accepts one
 *     more client on the same listener and says "accepted again".
 *
 *   tcp_outside reset HOST PORT STOP
 *     Connects, says "ready", waits for STOP, then expects the connection to read as
 *     reset by its peer: the bytes that had arrived (the peer's stream), then
 *     ECONNRESET, then end of file. Says "reset ok unread=N", connects again, writes
 *     "again\n", expects "welcome\n" and says "reconnected".
 */
#include "common.h"
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>

static unsigned char out_byte(unsigned long i) { return (unsigned char)(i % 251); }
static unsigned char in_byte(unsigned long j) { return (unsigned char)((j * 7 + 1) % 253); }

static int dial(const char *host, int port, struct sockaddr_storage *ss, socklen_t *len)
{
    memset(ss, 0, sizeof *ss);
    struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
    int family;
    if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
        family = AF_INET;
        a4->sin_family = AF_INET;
        a4->sin_port = htons(port);
        *len = sizeof *a4;
    } else if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
        family = AF_INET6;
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons(port);
        *len = sizeof *a6;
    } else {
        fail("bad address %s", host);
    }
    int s = socket(family, SOCK_STREAM, 0);
    CHECK(s >= 0, "socket: %s", strerror(errno));
    CHECK(connect(s, (struct sockaddr *)ss, *len) == 0, "connect: %s", strerror(errno));
    return s;
}

static int port_of(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET)
        return ntohs(((const struct sockaddr_in *)ss)->sin_port);
    return ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
}

static int local_port(int s)
{
    struct sockaddr_storage ss;
    socklen_t l = sizeof ss;
    CHECK(getsockname(s, (struct sockaddr *)&ss, &l) == 0, "getsockname: %s", strerror(errno));
    return port_of(&ss);
}

static int peer_port(int s)
{
    struct sockaddr_storage ss;
    socklen_t l = sizeof ss;
    CHECK(getpeername(s, (struct sockaddr *)&ss, &l) == 0, "getpeername: %s", strerror(errno));
    return port_of(&ss);
}

static void stream_on(int s, int port, const char *stop);

static void stream(const char *host, int port, const char *stop)
{
    struct sockaddr_storage ss;
    socklen_t len;
    stream_on(dial(host, port, &ss, &len), port, stop);
}

/* The server side: listen on HOST (any port), accept one client from outside and run
 * the stream on it; the listener stays open, and once the stream is done it accepts
 * one more client and says "accepted again". */
static void serve(const char *host, const char *stop)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    socklen_t len;
    struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        len = sizeof *a4;
    } else {
        CHECK(inet_pton(AF_INET6, host, &a6->sin6_addr) == 1, "bad address %s", host);
        a6->sin6_family = AF_INET6;
        len = sizeof *a6;
    }
    int l = socket(ss.ss_family, SOCK_STREAM, 0);
    CHECK(l >= 0, "socket: %s", strerror(errno));
    CHECK(bind(l, (struct sockaddr *)&ss, len) == 0, "bind: %s", strerror(errno));
    CHECK(listen(l, 4) == 0, "listen: %s", strerror(errno));
    int lport = local_port(l);
    say("listening %d", lport);
    int s = accept(l, NULL, NULL);
    CHECK(s >= 0, "accept: %s", strerror(errno));
    stream_on(s, peer_port(s), stop);
    CHECK(local_port(s) == lport, "the accepted end's port %d, the listener's %d", local_port(s), lport);
    int again = accept(l, NULL, NULL);
    CHECK(again >= 0, "accept again: %s", strerror(errno));
    say("accepted again");
}

static void stream_on(int s, int port, const char *stop)
{
    int lport = local_port(s);
    say("local %d", lport);
    CHECK(fcntl(s, F_SETFL, O_NONBLOCK) == 0, "fcntl");
    static unsigned char buf[65536];
    unsigned long sent = 0, received = 0;
    for (;;) {
        for (size_t i = 0; i < sizeof buf; i++)
            buf[i] = out_byte(sent + i);
        ssize_t n = send(s, buf, sizeof buf, MSG_NOSIGNAL);
        if (n < 0) {
            CHECK(errno == EAGAIN || errno == EINTR, "send: %s", strerror(errno));
            if (errno == EAGAIN)
                break;
            continue;
        }
        sent += (unsigned long)n;
        if (sent > (64ul << 20))
            fail("the send buffer never filled");
    }
    say("ready sent %lu", sent);
    wait_for_file(stop, 10);
    CHECK(local_port(s) == lport, "local port %d, was %d", local_port(s), lport);
    CHECK(peer_port(s) == port, "peer port %d, was %d", peer_port(s), port);
    int err = 0;
    socklen_t el = sizeof err;
    CHECK(getsockopt(s, SOL_SOCKET, SO_ERROR, &err, &el) == 0 && err == 0, "SO_ERROR %d", err);
    unsigned long goal = sent + 100000;
    int wr_open = 1, rd_open = 1;
    while (wr_open || rd_open) {
        struct pollfd p = { s, (short)((rd_open ? POLLIN : 0) | (wr_open ? POLLOUT : 0)), 0 };
        int r = poll(&p, 1, -1);
        if (r < 0 && errno == EINTR)
            continue;
        CHECK(r > 0, "poll: %s", strerror(errno));
        if (wr_open && (p.revents & POLLOUT)) {
            size_t want = goal - sent < sizeof buf ? goal - sent : sizeof buf;
            for (size_t i = 0; i < want; i++)
                buf[i] = out_byte(sent + i);
            ssize_t n = send(s, buf, want, MSG_NOSIGNAL);
            if (n < 0)
                CHECK(errno == EAGAIN || errno == EINTR, "send: %s", strerror(errno));
            else
                sent += (unsigned long)n;
            if (sent == goal) {
                CHECK(shutdown(s, SHUT_WR) == 0, "shutdown: %s", strerror(errno));
                wr_open = 0;
            }
        }
        if (rd_open && (p.revents & (POLLIN | POLLHUP | POLLERR))) {
            ssize_t n = recv(s, buf, sizeof buf, 0);
            if (n < 0) {
                CHECK(errno == EAGAIN || errno == EINTR, "recv: %s", strerror(errno));
                continue;
            }
            if (n == 0) {
                rd_open = 0;
                continue;
            }
            for (ssize_t i = 0; i < n; i++)
                if (buf[i] != in_byte(received + i))
                    fail("byte %lu from the peer is %u, %u expected", received + i, buf[i],
                         in_byte(received + i));
            received += (unsigned long)n;
        }
    }
    say("stream ok sent=%lu received=%lu", sent, received);
}

static void reset(const char *host, int port, const char *stop)
{
    struct sockaddr_storage ss;
    socklen_t len;
    int s = dial(host, port, &ss, &len);
    say("ready");
    wait_for_file(stop, 10);
    static unsigned char buf[65536];
    unsigned long got = 0;
    for (;;) {
        ssize_t n = recv(s, buf, sizeof buf, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            CHECK(errno == ECONNRESET, "recv: %s, ECONNRESET expected after %lu bytes",
                  strerror(errno), got);
            break;
        }
        CHECK(n > 0, "end of file after %lu bytes, ECONNRESET expected first", got);
        for (ssize_t i = 0; i < n; i++)
            if (buf[i] != in_byte(got + i))
                fail("unread byte %lu is %u, %u expected", got + i, buf[i], in_byte(got + i));
        got += (unsigned long)n;
    }
    ssize_t n = recv(s, buf, sizeof buf, 0);
    CHECK(n == 0, "after ECONNRESET recv gave %zd (%s), end of file expected", n,
          n < 0 ? strerror(errno) : "data");
    n = send(s, "x", 1, MSG_NOSIGNAL);
    CHECK(n < 0 && errno == EPIPE, "send after the reset gave %zd (%s), EPIPE expected", n,
          n < 0 ? strerror(errno) : "sent");
    say("reset ok unread=%lu", got);
    close(s);
    s = dial(host, port, &ss, &len);
    CHECK(send(s, "again\n", 6, MSG_NOSIGNAL) == 6, "send: %s", strerror(errno));
    char line[16] = { 0 };
    size_t have = 0;
    while (have < 8) {
        n = recv(s, line + have, 8 - have, 0);
        if (n < 0 && errno == EINTR)
            continue;
        CHECK(n > 0, "recv of the welcome: %s", n < 0 ? strerror(errno) : "end of file");
        have += (size_t)n;
    }
    CHECK(memcmp(line, "welcome\n", 8) == 0, "got %.8s", line);
    say("reconnected");
}

int main(int argc, char **argv)
{
    if (argc != 5)
        fail("usage: tcp_outside stream|reset|serve HOST PORT STOP");
    signal(SIGPIPE, SIG_IGN);
    int port = (int)arg_long(argc, argv, 3, 0);
    if (strcmp(argv[1], "serve") == 0)
        serve(argv[2], argv[4]);
    else if (strcmp(argv[1], "stream") == 0)
        stream(argv[2], port, argv[4]);
    else if (strcmp(argv[1], "reset") == 0)
        reset(argv[2], port, argv[4]);
    else
        fail("unknown mode %s", argv[1]);
    return 0;
}
