// An HTTP server keeping a counter in memory, with a keep-alive client of its own in
// the same process (tests/servers.rs). Usage: node http_counter.js PORT GO
//
// Every request gets "count C conn K" (C: requests so far, K: the number of the
// connection it came on). The inner client (an http.Agent with one keep-alive socket)
// asks /first, then /wait, which the server answers only once the file GO exists: the
// checkpoint finds a request in flight on that connection. Once answered, the inner
// client asks /again on the same socket; it prints "inner ok <count> conn <K>" when
// both answers came on the connection of /first, closes everything and exits.
// Each request also appends a line to GO.log with fs.appendFile (libuv's thread pool).
"use strict";
const http = require("http");
const fs = require("fs");
const port = +process.argv[2];
const go = process.argv[3];

let count = 0;
let conns = 0;
const server = http.createServer((req, res) => {
  if (!req.socket.connNo) req.socket.connNo = ++conns;
  count++;
  const body = `count ${count} conn ${req.socket.connNo}\n`;
  fs.appendFile(go + ".log", req.url + " " + body, (err) => {
    if (err) throw err;
  });
  if (req.url !== "/wait") return res.end(body);
  console.log("ready"); // /wait arrived: it is in flight until GO exists
  const poll = setInterval(() => {
    if (fs.existsSync(go)) {
      clearInterval(poll);
      res.end(body);
    }
  }, 20);
});
server.keepAliveTimeout = 0; // idle keep-alive connections stay open
server.requestTimeout = 0; // and /wait may wait as long as the test takes

const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });

function get(path, then) {
  http
    .get({ host: "127.0.0.1", port, path, agent }, (res) => {
      let data = "";
      res.setEncoding("utf8");
      res.on("data", (d) => (data += d));
      res.on("end", () => then(data.trim()));
    })
    .on("error", (e) => {
      console.log("FAIL " + path + ": " + e.message);
      process.exit(1);
    });
}

server.listen(port, "127.0.0.1", () => {
  get("/first", (first) => {
    console.log("inner first " + first);
    const conn = first.split(" ")[3];
    get("/wait", (waited) => {
      console.log("inner wait " + waited);
      get("/again", (again) => {
        console.log("inner again " + again);
        const same = waited.split(" ")[3] === conn && again.split(" ")[3] === conn;
        console.log((same ? "inner ok " : "FAIL not the same connection: ") + again);
        agent.destroy();
        server.close();
      });
    });
  });
});
