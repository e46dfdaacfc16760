//! Unix domain sockets (docs/CONTRACT.md §4 tier 2: socketpairs between processes, unix
//! sockets with queued data): stream, seqpacket and dgram socketpairs, a named
//! listening socket with a connection, abstract dgram sockets, data in flight
//! in every one of them, across a parent and its child; a socket whose peer
//! is outside the checkpoint; other socket families still refused.
mod common;

use common::*;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;

/// Kills the tree program's child when the test ends (the root is a Target).
struct KillPid(i32, String);

impl Drop for KillPid {
    fn drop(&mut self) {
        kill_if_running(self.0, &self.1);
    }
}

/// `sockets tree DIR STOP`: returns the target, its child's PID and the stop file.
fn start_tree(d: &TestDir) -> (Target, KillPid, PathBuf) {
    let stop = d.join("stop");
    let mut t = Target::start(
        "sockets",
        &[os("tree"), d.path().as_os_str(), stop.as_os_str()],
    );
    let line = t.stdout.expect_prefix("child ");
    let child: i32 = line
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("bad child line {line:?}"));
    t.stdout.expect_line("ready");
    let guard = KillPid(child, t.marker.clone());
    (t, guard, stop)
}

/// The `ckpt info --json` descriptor kinds of every process of a checkpoint.
fn fd_kinds(ck: &std::path::Path) -> Vec<String> {
    let info = info_json(ck);
    info["processes"]
        .as_array()
        .expect("info: processes array")
        .iter()
        .flat_map(|p| p["fds"].as_array().cloned().unwrap_or_default())
        .filter_map(|f| f["kind"].as_str().map(str::to_string))
        .collect()
}

/// sockets tree, dumped with --kill and restored: every byte in flight in
/// every socket (stream bytes, seqpacket records and datagrams with their
/// boundaries and sender addresses) is read back by the restored processes,
/// names, options and flags are as before, the sockets keep working (ping-pong
/// on each, a new connection to the listening socket whose stale file the
/// restore replaced), and no warning is printed: every peer was inside.
#[test]
fn socket_tree_survives_dump_kill_and_restore() {
    let d = tempdir();
    let ck = d.join("ckpt");
    let (mut t, child, stop) = start_tree(&d);
    t.dump_kill(&ck);
    wait_pid_free(child.0);
    let kinds = fd_kinds(&ck);
    let unix = kinds.iter().filter(|k| k.contains("unix")).count();
    assert!(
        unix >= 14,
        "ckpt info should list the 14 unix socket descriptors of the two processes: {kinds:?}"
    );
    let sock = d.join("listen.sock");
    assert!(
        std::fs::symlink_metadata(&sock).is_ok(),
        "the killed listener's socket file should be left behind (stale) for the restore to replace"
    );

    let mut r = Restored::of(&ck, &t);
    r.assert_same_pid();
    wait_until("the child to be restored", || {
        cmdline(child.0).is_some_and(|c| c.contains(&t.marker))
    });
    touch(&stop);
    r.wait_success();
    r.stdout.expect_line("sockets ok");
    r.stderr.read_to_end();
    let warnings: Vec<&String> = r
        .stderr
        .seen()
        .iter()
        .filter(|l| l.contains("socket"))
        .collect();
    assert!(
        warnings.is_empty(),
        "every socket's peer was in the checkpoint: no warning expected, got {warnings:?}"
    );
}

/// sockets tree, dumped without --kill: both processes run on, not stopped,
/// and read every byte that was in flight (the dump peeked, nothing was
/// consumed, SO_PEEK_OFF is as the program set it), then finish with their
/// verdict.
#[test]
fn dump_without_kill_leaves_socket_queues_intact() {
    let d = tempdir();
    let ck = d.join("ckpt");
    let (mut t, child, stop) = start_tree(&d);
    dump(t.pid, &ck, false);
    assert_running_not_stopped(t.pid);
    assert_running_not_stopped(child.0);
    touch(&stop);
    let status = t.wait();
    t.stdout.read_to_end();
    t.stdout.assert_no_fail();
    assert!(status.success(), "the dumped program failed ({status:?})");
    t.stdout.expect_line("sockets ok");
}

/// A stream socket whose peer is held by the test (outside the tree), with
/// data the peer sent in flight: the dump succeeds; the restore gives the
/// socket that data, then end of file and EPIPE (its peer is closed), and
/// says so in a warning naming the process and descriptor.
#[test]
fn socket_leading_outside_is_restored_with_its_peer_closed() {
    const TEXT: &str = "in flight from outside the tree";
    let d = tempdir();
    let (stop, ck) = (d.join("stop"), d.join("ckpt"));
    let (mut ours, theirs) = UnixStream::pair().expect("socketpair");
    let program = testdata("sockets");
    let mut cmd = command(&program);
    cmd.args([os("outside"), os("3"), stop.as_os_str(), os(TEXT)]);
    let raw = theirs.as_raw_fd();
    // SAFETY: pre_exec's closure runs in the forked child before exec: it only makes the
    // async-signal-safe dup2 and fcntl calls on integers and reads errno
    // (io::Error::last_os_error allocates nothing). `raw` is the descriptor of `theirs`,
    // which stays open until after Target::spawn, so it is still valid in the child.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(raw, 3) < 0 || libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut t = Target::spawn(cmd, &program.to_string_lossy());
    drop(theirs);
    ours.write_all(TEXT.as_bytes()).unwrap();
    t.stdout.expect_line("ready");

    t.dump_kill(&ck);
    let mut r = Restored::of(&ck, &t);
    r.assert_same_pid();
    touch(&stop);
    r.wait_success();
    r.stdout.expect_line("outside ok");
    r.stderr.read_to_end();
    let pid = t.pid.to_string();
    assert!(
        r.stderr.seen().iter().any(|l| l.contains("warning")
            && l.contains(&pid)
            && l.contains("fd 3")
            && l.contains("peer closed")),
        "the restore should warn that process {pid} fd 3 led outside; stderr: {:?}",
        r.stderr.seen()
    );
    drop(ours);
}

/// A process holding a socket ckpt does not support: the dump (with --kill)
/// is refused naming the PID, the descriptor and the kind, and the target
/// goes on running (and, after the stop file, finds its socket intact).
fn refused(kind: &str, words: &[&str]) {
    let d = tempdir();
    let (stop, dir) = (d.join("stop"), d.join("ckpt"));
    let mut t = Target::start("sockets", &[os("hold"), os(kind), stop.as_os_str()]);
    let fd_line = t.stdout.expect_prefix("fd ");
    let fd = fd_line.split_whitespace().nth(1).unwrap().to_string();
    t.stdout.expect_line("ready");
    let out = ckpt([
        "dump".as_ref(),
        t.pid.to_string().as_ref(),
        "--dir".as_ref(),
        dir.as_os_str(),
        "--kill".as_ref(),
    ]);
    let line = assert_error(&out, &format!("dump of a process holding a {kind} socket"));
    assert!(
        line.contains(&t.pid.to_string()) && line.contains(&format!("fd {fd}")),
        "the error should name PID {} and fd {fd}: {line}",
        t.pid
    );
    let lower = line.to_lowercase();
    assert!(
        lower.contains("socket") && words.iter().all(|w| lower.contains(w)),
        "the error should name the kind (socket, {}): {line}",
        words.join(", ")
    );
    assert_running_not_stopped(t.pid);
    let n: u64 = t
        .stdout
        .expect_prefix("tick ")
        .trim_start_matches("tick ")
        .parse()
        .unwrap();
    t.stdout.expect_line(&format!("tick {}", n + 3));
    touch(&stop);
    t.stdout.expect_line("done");
    assert!(t.wait().success());
}

/// TCP and UDP are restored (tests/inet.rs); a raw IPv4 socket is not.
#[test]
fn raw_inet_socket_is_refused() {
    assert_root("a raw socket (CAP_NET_RAW)");
    refused("raw", &["af_inet", "raw"]);
}

#[test]
fn netlink_socket_is_refused() {
    refused("netlink", &["af_netlink"]);
}

/// A descriptor queued with SCM_RIGHTS that no process has open any more (its sender
/// closed it) cannot be restored: refused, and the refused dump (which peeked at the
/// queue) left the message and its descriptor there (tests/unixsk.rs: descriptors in
/// flight that are open in the tree are restored).
#[test]
fn queued_descriptor_is_refused() {
    refused(
        "scm_rights",
        &[
            "unix",
            "scm_rights",
            "no process of the checkpoint has open",
        ],
    );
}

/// A connection not yet accepted whose client sent data already (only accepting it
/// could read that data): refused, naming the client, and the connection can still
/// be accepted afterwards, with its data (tests/unixsk.rs: without data, restored).
#[test]
fn pending_connection_with_data_is_refused() {
    refused("backlog", &["waiting to be accepted", "bytes it sent"]);
}
