#!/usr/bin/env python3
# A python3 http.server (ThreadingHTTPServer, HTTP/1.1: a thread per connection,
# connections kept alive) counting requests in memory, and a forked child that keeps
# ONE http.client connection to it (tests/servers.rs). Usage: http_pair.py PORT GO
#
# Every answer is "count C port P" (C: requests so far, P: the client's port as the
# server sees it). The child asks /first, prints "ready" and waits until the file GO
# exists; then it asks /again on the same connection and prints "pair ok count C"
# when the server saw it come from the same port; then it asks /quit, which stops
# the server, and the parent exits once the child has.
import http.client
import http.server
import os
import sys
import threading
import time

port, go = int(sys.argv[1]), sys.argv[2]
count = 0
lock = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        global count
        with lock:
            count += 1
            body = ("count %d port %d\n" % (count, self.client_address[1])).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        if self.path == "/quit":
            threading.Thread(target=server.shutdown).start()

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
pid = os.fork()
if pid == 0:
    server.socket.close()
    conn = http.client.HTTPConnection("127.0.0.1", port)

    def get(path):
        conn.request("GET", path)
        return conn.getresponse().read().decode().split()

    first = get("/first")
    my_port = conn.sock.getsockname()[1]
    if first[3] != str(my_port):
        print("FAIL the server saw port %s, not %d" % (first[3], my_port), flush=True)
        os._exit(1)
    print("ready", flush=True)
    while not os.path.exists(go):
        time.sleep(0.05)
    again = get("/again")
    if again[3] != str(my_port) or conn.sock.getsockname()[1] != my_port:
        print("FAIL /again came from port %s, not %d" % (again[3], my_port), flush=True)
        os._exit(1)
    print("pair ok count %s" % again[1], flush=True)
    get("/quit")
    os._exit(0)

server.serve_forever()
server.server_close()
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
