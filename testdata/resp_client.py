#!/usr/bin/env python3
# A redis client that keeps ONE connection across a checkpoint (tests/servers.rs).
# Usage: resp_client.py PORT OUT N GO
# Connects to 127.0.0.1:PORT (retrying until the server listens), asks CLIENT ID,
# SETs k1..kN, INCRs "counter" N times and SETs "big" (1 MiB), writes "before id=ID"
# to OUT, then sends 20 GET big and BLPOP go 0 in one go and prints "ready", reading
# nothing until the file GO exists: the checkpoint finds the server's answers in
# flight, filling the client's receive queue and the server's send queue, and the
# BLPOP waiting until someone (the test, after the restore) pushes onto the list
# "go". Then it reads the 20 answers and the BLPOP's and, on the same socket, asks
# CLIENT ID again, GETs k1..kN and "counter", SETs m1..mN, GETs them back and asks
# DBSIZE; writes "after id=ID dbsize=D" to OUT and prints "resp ok" (or "FAIL ..." and
# exits 1).
import os
import socket
import sys
import time

port, out_path, n, go_file = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
BIG = "0123456789abcdef" * 65536
GETS = 20


def log(line):
    with open(out_path, "a") as f:
        f.write(line + "\n")


def fail(why):
    log("FAIL " + why)
    print("FAIL " + why, flush=True)
    sys.exit(1)


deadline = time.monotonic() + 60
while True:
    try:
        sock = socket.create_connection(("127.0.0.1", port))
        break
    except OSError:
        if time.monotonic() > deadline:
            fail("no redis on port %d" % port)
        time.sleep(0.05)
rfile = sock.makefile("rb")


def command(*words):
    msg = b"*%d\r\n" % len(words)
    for w in words:
        w = w.encode() if isinstance(w, str) else w
        msg += b"$%d\r\n%s\r\n" % (len(w), w)
    sock.sendall(msg)
    return reply()


def reply():
    line = rfile.readline()
    if not line:
        fail("the server closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        fail("error reply " + rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"*":
        return [reply() for _ in range(int(rest))]
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        data = rfile.read(size + 2)
        return data[:-2].decode()
    fail("unexpected reply %r" % line)


def expect(got, want, what):
    if got != want:
        fail("%s: got %r, expected %r" % (what, got, want))


# the server may still load: PING until it answers
while True:
    sock.sendall(b"PING\r\n")
    line = rfile.readline()
    if line == b"+PONG\r\n":
        break
    if not line.startswith(b"-LOADING") or time.monotonic() > deadline:
        fail("PING: %r" % line)
    time.sleep(0.05)

id_before = command("CLIENT", "ID")
for i in range(1, n + 1):
    expect(command("SET", "k%d" % i, "value-%d" % i), "OK", "SET k%d" % i)
    expect(command("INCR", "counter"), i, "INCR")
expect(command("SET", "big", BIG), "OK", "SET big")
log("before id=%d" % id_before)
sock.sendall(b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n" * GETS)
sock.sendall(b"*3\r\n$5\r\nBLPOP\r\n$2\r\ngo\r\n$1\r\n0\r\n")
print("ready", flush=True)
while not os.path.exists(go_file):
    time.sleep(0.05)
for i in range(GETS):
    if reply() != BIG:
        fail("answer %d to GET big is not the 1 MiB value" % (i + 1))
go = reply()
expect(go, ["go", "after the restore"], "BLPOP go 0")

id_after = command("CLIENT", "ID")
expect(id_after, id_before, "CLIENT ID on the same connection")
for i in range(1, n + 1):
    expect(command("GET", "k%d" % i), "value-%d" % i, "GET k%d" % i)
expect(command("GET", "counter"), str(n), "GET counter")
for i in range(1, n + 1):
    expect(command("SET", "m%d" % i, "more-%d" % i), "OK", "SET m%d" % i)
for i in range(1, n + 1):
    expect(command("GET", "m%d" % i), "more-%d" % i, "GET m%d" % i)
expect(command("INCR", "counter"), n + 1, "INCR after")
dbsize = command("DBSIZE")
expect(dbsize, 2 * n + 2, "DBSIZE")  # k*, m*, counter, big; "go" is empty again
log("after id=%d dbsize=%d" % (id_after, dbsize))
print("resp ok", flush=True)
