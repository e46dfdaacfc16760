//! Real servers with TCP connections on loopback, both ends inside the checkpointed
//! job (issue 10), checkpointed, killed and restored end to end:
//!
//! - redis-server and a python3 client (testdata/resp_client.py, one RESP connection
//!   held across the checkpoint, with 20 MiB of answers in flight that it does not
//!   read yet, filling its receive queue and the server's send queue, and a BLPOP)
//!   under one `ckpt run` as the unprivileged user `ckpttest`: `ckpt command c`, `k`,
//!   the restart script; the server answers a new redis-cli with every key, and the
//!   client reads every answer and its BLPOP's on its old connection, which goes on
//!   with GET and SET;
//! - the same two processes (children of a shell) checkpointed as root with
//!   `ckpt dump --kill` and brought back with `ckpt restore`;
//! - a redis master and its replica under one `ckpt run` as `ckpttest`: the
//!   replication connection goes on after the restore without a new sync, and the
//!   restored job checkpoints again;
//! - a node HTTP server (testdata/http_counter.js: epoll, eventfd, libuv's thread
//!   pool) counting requests in memory, with a keep-alive client of its own whose
//!   request is in flight at the checkpoint, under `ckpt run` as `ckpttest`: requests
//!   from outside before and after the restore, the count goes on;
//! - a python3 http.server (a thread per connection) with a forked client holding one
//!   keep-alive connection, under `ckpt run` as `ckpttest`, checkpointed and killed
//!   with `kc`;
//! - as root, redis-server with a client outside the checkpoint (the test itself):
//!   `--tcp-established` keeps that connection, which answers GET with the old keys.
//!
//! Needs redis-server, redis-cli, node and python3 (.ci/deps); a missing one fails
//! the test. Every test has its own ports and temporary directory; sweeps kill what it
//! started when it ends, also when it fails. Timeouts are only a safety net.
mod common;

use common::*;
use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::thread;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------- helpers

/// Panics unless `program` is found in PATH (the test needs it: .ci/deps installs it).
fn need(program: &str) {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()));
    assert!(
        found,
        "{program} is not installed (this test needs it; .ci/deps installs it)"
    );
}

/// Every process below `root` (not `root` itself).
fn descendants(root: i32) -> Vec<i32> {
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        found.extend(children(found[i]));
        i += 1;
    }
    found.remove(0);
    found
}

/// Waits until none of `pids` exists any more (a killed tree's orphans are reaped by
/// someone else, a little later).
fn wait_all_gone(pids: &[i32]) {
    wait_until(&format!("the processes {pids:?} to be gone"), || {
        pids.iter().all(|&p| !pid_exists(p))
    });
}

/// The socket descriptors of a process.
fn socket_fds(pid: i32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|rd| {
            rd.flatten()
                .filter(|e| {
                    fs::read_link(e.path())
                        .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"))
                })
                .count()
        })
        .unwrap_or(0)
}

/// Whether a process of the tree under `root` (or `root`) has an io_uring.
fn has_io_uring(root: i32) -> bool {
    std::iter::once(root).chain(descendants(root)).any(|p| {
        fs::read_dir(format!("/proc/{p}/fd")).is_ok_and(|rd| {
            rd.flatten().any(|e| {
                fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().contains("io_uring"))
            })
        })
    })
}

/// `GET PATH` from outside the job, on a connection of its own (closed when the answer
/// has come): the body.
fn http_get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("connecting to the HTTP server on port {port}: {e}"));
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer)
        .unwrap_or_else(|e| panic!("reading the answer to GET {path}: {e}"));
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP answer to GET {path}: {answer:?}"));
    assert!(head.starts_with("HTTP/1.1 200"), "GET {path}: {answer:?}");
    body.trim().to_string()
}

// ---------------------------------------------------------------- ckpt run as ckpttest

/// A job under `ckpt run` as `ckpttest`, with a coordinator of its own (a child of the
/// test, as that user).
struct UserJob {
    ids: (u32, u32),
    port: u16,
    ck: PathBuf,
    _coord: Target,
    agent: Target,
    /// the job (the one child of `ckpt run`)
    job: i32,
}

impl UserJob {
    /// Starts a coordinator on `port` (checkpoints in `ck`) and `ckpt run` of `program`
    /// joining it, both as the user `ids`; waits until the coordinator lists the job.
    fn start(ids: (u32, u32), port: u16, ck: &Path, program: &[&OsStr], marker: &str) -> UserJob {
        let mut c = setpriv_test_user(ckpt_bin(), ids);
        c.args(["coordinator", "--port", &port.to_string(), "--ckpt-dir"])
            .arg(ck);
        let mut coord = Target::spawn(c, &ck.to_string_lossy());
        coord
            .stdout
            .expect_prefix("[ckpt coordinator] listening on");
        let mut c = setpriv_test_user(ckpt_bin(), ids);
        c.args(["run", "--join", "--coord-port", &port.to_string(), "--"])
            .args(program);
        let agent = Target::spawn(c, marker);
        let mut job = UserJob {
            ids,
            port,
            ck: ck.to_path_buf(),
            _coord: coord,
            agent,
            job: 0,
        };
        let mut kids = Vec::new();
        wait_until("`ckpt run` to start its job", || {
            kids = children(job.agent.pid);
            !kids.is_empty()
        });
        assert_eq!(kids.len(), 1, "`ckpt run` has several children: {kids:?}");
        job.job = kids[0];
        job
    }

    /// `ckpt command --coord-port PORT WORDS...` as the user.
    fn command(&self, words: &[&str]) -> Output {
        let mut c = setpriv_test_user(ckpt_bin(), self.ids);
        c.args(["command", "--coord-port", &self.port.to_string()])
            .args(words);
        run(&mut c)
    }

    fn wait_listed(&self) {
        let needle = format!(": pid {} ", self.job);
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let out = self.command(&["l"]);
            if out.status.success() && stdout(&out).contains(&needle) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the coordinator does not list the job {}: {}",
                self.job,
                describe(&out)
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// `c` then `k` (or `kc` when `kc`): the checkpoint must succeed, and the job's
    /// whole tree is gone afterwards. Returns the restart script.
    fn checkpoint_and_kill(&mut self, kc: bool) -> PathBuf {
        self.wait_listed();
        let mut tree = descendants(self.job);
        tree.push(self.job);
        if kc {
            let out = self.command(&["kc"]);
            assert!(
                out.status.success(),
                "`ckpt command kc`: {}",
                describe(&out)
            );
        } else {
            let out = self.command(&["c"]);
            assert!(out.status.success(), "`ckpt command c`: {}", describe(&out));
            let gen = PathBuf::from(stdout(&out).trim());
            assert!(
                gen.join("manifest.json").is_file(),
                "`ckpt command c` printed {gen:?}, not a complete generation"
            );
            let out = self.command(&["k"]);
            assert!(out.status.success(), "`ckpt command k`: {}", describe(&out));
        }
        let st = self.agent.wait();
        assert_eq!(
            st.code(),
            Some(137),
            "after the kill `ckpt run` should exit with the job's 128+SIGKILL"
        );
        wait_all_gone(&tree);
        self.ck.join("ckpt_restart_script.sh")
    }

    /// The restart script, run as the user: its stdout is the restored job's.
    fn restart(&self, script: &Path) -> Target {
        let c = setpriv_test_user(script, self.ids);
        Target::spawn(c, &self.ck.to_string_lossy())
    }
}

// ---------------------------------------------------------------- redis

/// redis-cli -p PORT ARGS...: its output, trimmed.
fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = run(command("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args));
    assert!(
        out.status.success(),
        "redis-cli {args:?}: {}",
        describe(&out)
    );
    stdout(&out).trim().to_string()
}

/// Waits until a redis-server answers PING on `port`.
fn wait_redis(port: u16) {
    wait_until(&format!("redis-server to answer on port {port}"), || {
        let out =
            run(command("redis-cli").args(["-h", "127.0.0.1", "-p", &port.to_string(), "PING"]));
        out.status.success() && stdout(&out).trim() == "PONG"
    });
}

const KEYS: usize = 200;

/// The largest send queue (bytes not yet acked by the peer, /proc/net/tcp) of an
/// established IPv4 connection whose local port is `port`.
fn send_queue_from_port(port: u16) -> u64 {
    let text = fs::read_to_string("/proc/net/tcp").unwrap();
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let local_port = u16::from_str_radix(f.get(1)?.rsplit(':').next()?, 16).ok()?;
            let (tx, _) = f.get(4)?.split_once(':')?;
            (local_port == port && f.get(3) == Some(&"01"))
                .then(|| u64::from_str_radix(tx, 16).ok())?
        })
        .max()
        .unwrap_or(0)
}

/// Waits until the server's answers to the client's GETs fill the client's receive
/// queue and wait in the server's send queue (what an ordinary user's checkpoint gets
/// through the receiver, without TCP_REPAIR).
fn wait_answers_in_flight(port: u16) {
    wait_until("redis-server's answers to wait in its send queue", || {
        send_queue_from_port(port) > 0
    });
}

/// The client's "before id=ID" line: the id of its connection.
fn client_id(out_file: &Path) -> String {
    let lines = wait_file_lines(out_file, 1);
    lines[0]
        .strip_prefix("before id=")
        .unwrap_or_else(|| panic!("{}: {lines:?}", out_file.display()))
        .to_string()
}

/// After the restore: a new redis-cli sees every key and the client's old connection;
/// the GO file lets the client read the answers in flight and the push answers its
/// BLPOP, and it goes on on that connection ("resp ok" on `job_out`); then the server
/// is shut down.
fn check_restored_redis(port: u16, out_file: &Path, go: &Path, id: &str, job_out: &mut Lines) {
    wait_redis(port);
    assert_eq!(redis_cli(port, &["DBSIZE"]), (KEYS + 2).to_string());
    assert_eq!(redis_cli(port, &["GET", "k1"]), "value-1");
    assert_eq!(
        redis_cli(port, &["GET", &format!("k{KEYS}")]),
        format!("value-{KEYS}")
    );
    assert_eq!(redis_cli(port, &["GET", "counter"]), KEYS.to_string());
    let clients = redis_cli(port, &["CLIENT", "LIST"]);
    assert!(
        clients.lines().any(|l| l.starts_with(&format!("id={id} "))),
        "the restored server lost the client's connection (id {id}): {clients}"
    );
    redis_cli(port, &["LPUSH", "go", "after the restore"]);
    touch(go);
    job_out.expect_line("resp ok");
    let lines = file_lines(out_file);
    assert_eq!(
        lines,
        vec![
            format!("before id={id}"),
            format!("after id={id} dbsize={}", 2 * KEYS + 2)
        ],
        "the client's log"
    );
    assert_eq!(redis_cli(port, &["DBSIZE"]), (2 * KEYS + 2).to_string());
    // the server's answer to SHUTDOWN is the end of the connection
    let _ = run(command("redis-cli").args([
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "SHUTDOWN",
        "NOSAVE",
    ]));
}

/// redis-server and a client holding one connection to it, under one `ckpt run` as
/// `ckpttest`: c, k, the restart script; the server has every key, the client's
/// connection (blocked in BLPOP at the checkpoint) answers on.
#[test]
fn redis_and_client_under_ckpt_run_as_user() {
    need("redis-server");
    need("redis-cli");
    need("python3");
    // An ordinary user's restore sends the server's answers in flight (about 3 MB) again
    // from a new socket whose SO_SNDBUF stops at net.core.wmem_max (docs/FDKINDS.md).
    let wmem_max: u64 = fs::read_to_string("/proc/sys/net/core/wmem_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        wmem_max >= 4 << 20,
        "net.core.wmem_max is {wmem_max}: an ordinary user's restore cannot send 3 MB in \
         flight again from one socket (set it to 4194304 or more)"
    );
    let (d, launcher, ids) = test_user_dir("redis_job.sh");
    let client = launcher.with_file_name("resp_client.py");
    copy_program(&testdata("resp_client.py"), &client);
    let (ck, out_file, data, go) = (d.join("ck"), d.join("out"), d.join("redis"), d.join("go"));
    fs::create_dir_all(&data).unwrap();
    chown_tree(d.path(), ids);
    let (coord_port, port) = (test_port(20), test_port(21));
    let _sweep = Sweep::new(&d);
    let _redis_sweep = Sweep(format!("redis-server 127.0.0.1:{port}"));
    let keys = KEYS.to_string();
    let mut job = UserJob::start(
        ids,
        coord_port,
        &ck,
        &[
            launcher.as_os_str(),
            os(&port.to_string()),
            data.as_os_str(),
            out_file.as_os_str(),
            os(&keys),
            go.as_os_str(),
        ],
        &launcher.to_string_lossy(),
    );
    job.agent.stdout.expect_line("ready");
    let id = client_id(&out_file);
    wait_answers_in_flight(port);
    let script = job.checkpoint_and_kill(false);

    let mut r = job.restart(&script);
    check_restored_redis(port, &out_file, &go, &id, &mut r.stdout);
    let st = r.wait();
    assert!(
        st.success(),
        "the restored job (its client's status) after SHUTDOWN: {st:?}; stderr:\n{}",
        r.stderr.seen().join("\n")
    );
    r.stdout.assert_no_fail();
}

/// The same pair as children of a shell, checkpointed by root with `ckpt dump --kill`
/// and restored with `ckpt restore`.
#[test]
fn redis_tree_dump_kill_restore() {
    need("redis-server");
    need("redis-cli");
    need("python3");
    assert_root("a dump of a redis-server tree");
    let d = tempdir();
    let _sweep = Sweep::new(&d);
    let port = test_port(22);
    let _redis_sweep = Sweep(format!("redis-server 127.0.0.1:{port}"));
    let (ck, out_file, data, go) = (d.join("ck"), d.join("out"), d.join("redis"), d.join("go"));
    fs::create_dir_all(&data).unwrap();
    let launcher = testdata("redis_job.sh");
    let mut c = command(&launcher);
    c.arg(port.to_string())
        .arg(&data)
        .arg(&out_file)
        .arg(KEYS.to_string())
        .arg(&go);
    let mut t = Target::spawn(c, &launcher.to_string_lossy());
    t.stdout.expect_line("ready");
    let id = client_id(&out_file);
    wait_answers_in_flight(port);
    let tree = descendants(t.pid);
    assert_eq!(
        tree.len(),
        2,
        "the shell should have two children: {tree:?}"
    );
    t.dump_kill(&ck);
    wait_all_gone(&tree);

    let mut r = Restored::of(&ck, &t);
    r.assert_same_pid();
    check_restored_redis(port, &out_file, &go, &id, &mut r.stdout);
    r.wait_success();
}

/// `INFO` field `key` of the redis-server on `port`.
fn redis_info(port: u16, key: &str) -> String {
    let info = redis_cli(port, &["INFO"]);
    info.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {key} in INFO of port {port}:\n{info}"))
        .trim()
        .to_string()
}

/// The process of the job's tree under `root` that is the redis-server on `port`.
fn redis_pid(root: i32, port: u16) -> i32 {
    let title = format!("redis-server 127.0.0.1:{port}");
    let found: Vec<i32> = descendants(root)
        .into_iter()
        .filter(|&p| cmdline(p).is_some_and(|c| c == title))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "redis-server on port {port} below {root}: {found:?}"
    );
    found[0]
}

/// A redis master and its replica under one `ckpt run` as `ckpttest`: c, k, the restart
/// script; the replication connection (both ends inside the job) goes on without a new
/// synchronisation (the master counts no new full or partial sync), a key set on the
/// master after the restore reaches the replica, and the restored job checkpoints again.
#[test]
fn redis_replication_under_ckpt_run_as_user() {
    need("redis-server");
    need("redis-cli");
    let (d, launcher, ids) = test_user_dir("redis_replica.sh");
    let (ck, data) = (d.join("ck"), d.join("redis"));
    fs::create_dir_all(&data).unwrap();
    chown_tree(d.path(), ids);
    let (coord_port, master, replica) = (test_port(27), test_port(28), test_port(29));
    let _sweep = Sweep::new(&d);
    let _master_sweep = Sweep(format!("redis-server 127.0.0.1:{master}"));
    let _replica_sweep = Sweep(format!("redis-server 127.0.0.1:{replica}"));
    let mut job = UserJob::start(
        ids,
        coord_port,
        &ck,
        &[
            launcher.as_os_str(),
            os(&master.to_string()),
            os(&replica.to_string()),
            data.as_os_str(),
        ],
        &launcher.to_string_lossy(),
    );
    job.agent.stdout.expect_line("started");
    wait_redis(master);
    wait_redis(replica);
    let mut mset = vec!["MSET".to_string()];
    for i in 1..=KEYS {
        mset.push(format!("k{i}"));
        mset.push(format!("value-{i}"));
    }
    let mset: Vec<&str> = mset.iter().map(String::as_str).collect();
    assert_eq!(redis_cli(master, &mset), "OK");
    wait_until("the replica to have every key", || {
        redis_info(replica, "master_link_status") == "up"
            && redis_cli(replica, &["DBSIZE"]) == KEYS.to_string()
    });
    let full = redis_info(master, "sync_full");
    let partial = redis_info(master, "sync_partial_ok");
    // the connections of redis-cli are closed, the master's fork for the sync is gone:
    // each server holds its listener and the replication connection
    let (m, r) = (redis_pid(job.job, master), redis_pid(job.job, replica));
    wait_until(
        "the servers to hold only their listener and the replication connection",
        || socket_fds(m) == 2 && socket_fds(r) == 2 && children(m).is_empty(),
    );
    let script = job.checkpoint_and_kill(false);

    let mut rs = job.restart(&script);
    wait_redis(master);
    wait_redis(replica);
    assert_eq!(redis_cli(replica, &["DBSIZE"]), KEYS.to_string());
    assert_eq!(redis_cli(replica, &["GET", "k7"]), "value-7");
    let set_and_see = |key: &str| {
        assert_eq!(redis_cli(master, &["SET", key, "on the master"]), "OK");
        wait_until(&format!("{key} to reach the replica"), || {
            redis_cli(replica, &["GET", key]) == "on the master"
        });
    };
    set_and_see("after-the-restore");
    assert_eq!(redis_info(replica, "master_link_status"), "up");
    assert_eq!(
        (
            redis_info(master, "sync_full"),
            redis_info(master, "sync_partial_ok")
        ),
        (full.clone(), partial.clone()),
        "the replica synchronised again after the restore (full, partial syncs)"
    );
    // the restored job checkpoints again and goes on
    job.wait_listed();
    let out = job.command(&["c"]);
    assert!(
        out.status.success(),
        "`ckpt command c` of the restored job: {}",
        describe(&out)
    );
    set_and_see("after-the-second-checkpoint");
    assert_eq!(
        (
            redis_info(master, "sync_full"),
            redis_info(master, "sync_partial_ok")
        ),
        (full, partial),
        "the replica synchronised again after the second checkpoint"
    );
    for port in [replica, master] {
        let _ = run(command("redis-cli").args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "SHUTDOWN",
            "NOSAVE",
        ]));
    }
    let st = rs.wait();
    assert!(st.success(), "the restored job after SHUTDOWN: {st:?}");
}

// ---------------------------------------------------------------- node

/// A node HTTP server counting requests, with a keep-alive client of its own whose
/// request is in flight at the checkpoint, under `ckpt run` as `ckpttest`: requests
/// from outside before and after the restore, the count goes on; the inner client's
/// connection is the same one after the restore.
#[test]
fn node_http_server_under_ckpt_run_as_user() {
    need("node");
    let (d, script_js, ids) = test_user_dir("http_counter.js");
    let (ck, go) = (d.join("ck"), d.join("go"));
    let (coord_port, port) = (test_port(23), test_port(24));
    let _sweep = Sweep::new(&d);
    let mut job = UserJob::start(
        ids,
        coord_port,
        &ck,
        &[
            os("node"),
            script_js.as_os_str(),
            os(&port.to_string()),
            go.as_os_str(),
        ],
        &script_js.to_string_lossy(),
    );
    job.agent.stdout.expect_line("inner first count 1 conn 1");
    job.agent.stdout.expect_line("ready");
    for (count, conn) in [(3, 2), (4, 3), (5, 4)] {
        assert_eq!(http_get(port, "/"), format!("count {count} conn {conn}"));
    }
    assert!(
        !has_io_uring(job.job),
        "node uses an io_uring (set UV_USE_IO_URING=0?)"
    );
    // the server's ends of the connections from outside are closed (only the
    // listener and the inner client's connection, both ends, are left)
    let node = job.job;
    wait_until("node to close the connections from outside", || {
        socket_fds(node) == 3
    });
    let script = job.checkpoint_and_kill(false);

    let mut r = job.restart(&script);
    // the listener is back: the count goes on
    let deadline = Instant::now() + TIMEOUT;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nothing listens on port {port} after the restore"
        );
        thread::sleep(Duration::from_millis(20));
    }
    for (count, conn) in [(6, 5), (7, 6), (8, 7)] {
        assert_eq!(http_get(port, "/"), format!("count {count} conn {conn}"));
    }
    touch(&go);
    r.stdout.expect_line("inner wait count 2 conn 1");
    r.stdout.expect_line("inner again count 9 conn 1");
    r.stdout.expect_line("inner ok count 9 conn 1");
    let st = r.wait();
    assert!(
        st.success(),
        "the restored node: {st:?}; stderr:\n{}",
        r.stderr.seen().join("\n")
    );
    // every request was logged through the thread pool, before and after
    let mut log = file_lines(&d.join("go.log"));
    log.sort();
    let mut want: Vec<String> = [
        "/first count 1 conn 1",
        "/wait count 2 conn 1",
        "/ count 3 conn 2",
        "/ count 4 conn 3",
        "/ count 5 conn 4",
        "/ count 6 conn 5",
        "/ count 7 conn 6",
        "/ count 8 conn 7",
        "/again count 9 conn 1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    want.sort();
    assert_eq!(log, want, "go.log");
}

// ---------------------------------------------------------------- python3 http.server

/// A python3 ThreadingHTTPServer and a forked client holding one keep-alive
/// connection, under `ckpt run` as `ckpttest`, checkpointed and killed with `kc`: a
/// request from outside after the restore and the client's next request on its old
/// connection both see the count go on.
#[test]
fn python_http_server_under_ckpt_run_as_user() {
    need("python3");
    let (d, prog, ids) = test_user_dir("http_pair.py");
    let (ck, go) = (d.join("ck"), d.join("go"));
    let (coord_port, port) = (test_port(25), test_port(26));
    let _sweep = Sweep::new(&d);
    let mut job = UserJob::start(
        ids,
        coord_port,
        &ck,
        &[prog.as_os_str(), os(&port.to_string()), go.as_os_str()],
        &prog.to_string_lossy(),
    );
    job.agent.stdout.expect_line("ready");
    let script = job.checkpoint_and_kill(true);

    let mut r = job.restart(&script);
    let deadline = Instant::now() + TIMEOUT;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nothing listens on port {port} after the restore"
        );
        thread::sleep(Duration::from_millis(20));
    }
    let body = http_get(port, "/outside");
    assert!(body.starts_with("count 2 port "), "GET /outside: {body}");
    touch(&go);
    r.stdout.expect_line("pair ok count 3");
    let st = r.wait();
    assert!(
        st.success(),
        "the restored server and client: {st:?}; stderr:\n{}",
        r.stderr.seen().join("\n")
    );
    r.stdout.assert_no_fail();
}

/// One RESP command on `s`, its reply read whole (a simple string, an integer, or a
/// bulk string), within the stream's read timeout.
fn resp(s: &mut TcpStream, args: &[&str]) -> String {
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes()).unwrap();
    resp_reply(s)
}

fn resp_reply(s: &mut TcpStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        let n = s
            .read(&mut b)
            .unwrap_or_else(|e| panic!("reading a redis reply: {e}"));
        assert!(n == 1, "redis closed the connection");
        line.push(b[0]);
    }
    let text = String::from_utf8_lossy(&line[..line.len() - 2]).into_owned();
    if let Some(len) = text.strip_prefix('$') {
        let len: i64 = len.parse().unwrap();
        if len < 0 {
            return "(nil)".into();
        }
        let mut body = vec![0u8; len as usize + 2];
        s.read_exact(&mut body).unwrap();
        return String::from_utf8_lossy(&body[..len as usize]).into_owned();
    }
    text
}

/// redis-server with a client outside the checkpoint (this test, over one TCP
/// connection), as root: `ckpt dump --kill --tcp-established` while the client has
/// keys set, a GET sent while the server is down (the network lock keeps the
/// connection from being reset), `ckpt restore --tcp-established`: the same
/// connection answers that GET and every other with the old values (issue 10).
#[test]
fn redis_with_an_outside_client_as_root_keeps_its_connection() {
    need("redis-server");
    need("redis-cli");
    assert_root("TCP_REPAIR (--tcp-established)");
    let d = tempdir();
    let _sweep = Sweep::new(&d);
    let port = test_port(30);
    let title = format!("redis-server 127.0.0.1:{port}");
    let _redis_sweep = Sweep(title.clone());
    let ck = d.join("ck");
    let mut c = command("redis-server");
    c.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .arg("--dir")
        .arg(d.path());
    let mut t = Target::spawn(c, &title);
    wait_redis(port);
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    for i in 0..50 {
        assert_eq!(
            resp(&mut client, &["SET", &format!("k{i}"), &format!("v{i}")]),
            "+OK"
        );
    }
    let id = resp(&mut client, &["CLIENT", "ID"]);
    let out = run(ckpt_cmd()
        .args(["dump", &t.pid.to_string(), "--dir"])
        .arg(&ck)
        .args(["--kill", "--tcp-established"]));
    assert_success(&out, "ckpt dump --kill --tcp-established of redis-server");
    t.reap_killed();
    // Sent while the server is down: held back by the lock, retransmitted after.
    client
        .write_all(b"*2\r\n$3\r\nGET\r\n$2\r\nk7\r\n")
        .unwrap();
    let mut r = Restored::start_with(&ck, t.pid, &title, &["--tcp-established"]);
    r.assert_same_pid();
    assert_eq!(
        resp_reply(&mut client),
        "v7",
        "the GET sent while it was down"
    );
    for i in 0..50 {
        assert_eq!(
            resp(&mut client, &["GET", &format!("k{i}")]),
            format!("v{i}")
        );
    }
    assert_eq!(
        resp(&mut client, &["CLIENT", "ID"]),
        id,
        "the same connection"
    );
    assert_eq!(redis_cli(port, &["DBSIZE"]), "50");
    assert_eq!(resp(&mut client, &["SET", "after", "1"]), "+OK");
    drop(client);
    redis_cli(port, &["SHUTDOWN", "NOSAVE"]);
    r.wait();
}
