//! Unix socket state that is hard to checkpoint (issue 9, "unix sockets"): sockets whose
//! names no longer lead to them (the file unlinked, its directory deleted or moved, the
//! path taken by another file), connections waiting to be accepted, seqpacket queues
//! filled to the brim, datagram queues from several senders with a sender blocked on a
//! full queue. testdata/unixsk.c sets each up and checks it itself once the stop file
//! appears; each is restored as root and as the test user, and dumped without --kill
//! (which must not consume anything).
mod common;

use common::*;
use std::path::{Path, PathBuf};

/// How a test runs `unixsk MODE DIR STOP [EXTRA]`.
#[derive(Clone, Copy, PartialEq)]
enum Run {
    /// Dumped with --kill and restored, as root.
    Root,
    /// Dumped with --kill and restored by the test user, who runs it.
    User,
    /// Dumped without --kill, as root: it goes on running.
    NoKill,
}

/// The program's own working directory (DIR) and stop file.
fn work(d: &Path) -> (PathBuf, PathBuf) {
    let w = d.join("work");
    std::fs::create_dir_all(&w).unwrap();
    (w.clone(), d.join("stop"))
}

/// Start `unixsk mode DIR STOP extra`, checkpoint it as `run` says, let it check its
/// state and expect `<mode> ok`.
fn check(mode: &str, extra: &[&str], run: Run) {
    let (d, prog, ids) = if run == Run::User {
        let (d, exe, ids) = test_user_dir("unixsk");
        (d, exe, Some(ids))
    } else {
        (tempdir(), testdata("unixsk"), None)
    };
    let (w, stop) = work(d.path());
    let ck = d.join("ckpt");
    let mut args = vec![os(mode), w.as_os_str(), stop.as_os_str()];
    args.extend(extra.iter().map(|e| os(e)));
    let mut t = match ids {
        Some(ids) => {
            chown_tree(&w, ids);
            let mut c = setpriv_test_user(&prog, ids);
            c.args(&args);
            Target::spawn(c, &prog.to_string_lossy())
        }
        None => Target::start_path(&prog, &args),
    };
    // The dgram mode forks a child: its PID must be free again before the restore.
    let child = (mode == "dgram").then(|| {
        let line = t.stdout.expect_prefix("child ");
        line.trim_start_matches("child ").parse::<i32>().unwrap()
    });
    t.stdout.expect_line("ready");
    let ok = format!("{mode} ok");
    match run {
        Run::NoKill => {
            dump(t.pid, &ck, false);
            assert_running_not_stopped(t.pid);
            touch(&stop);
            t.stdout.expect_line(&ok);
            assert!(t.wait().success(), "unixsk {mode} failed after the dump");
        }
        Run::Root => {
            t.dump_kill(&ck);
            if let Some(c) = child {
                wait_pid_free(c);
            }
            let mut r = Restored::of(&ck, &t);
            r.assert_same_pid();
            touch(&stop);
            r.stdout.expect_line(&ok);
            r.wait_success();
        }
        Run::User => {
            let ids = ids.unwrap();
            dump_kill_as(&mut t, &ck, ids);
            if let Some(c) = child {
                wait_pid_free(c);
            }
            let mut r = restore_as(&ck, ids);
            touch(&stop);
            r.stdout.expect_line(&ok);
            let status = r.wait();
            r.stderr.read_to_end();
            assert!(
                status.success(),
                "ckpt restore as {TEST_USER}: {status:?}, stderr {:?}",
                r.stderr.seen()
            );
        }
    }
}

/// Sockets bound to a path unlinked since, inside a directory deleted or renamed since,
/// at a path another file took since, by a relative name: restored with the same
/// getsockname(), their connections working, and nothing left on disk.
#[test]
fn sockets_whose_path_is_gone_come_back_with_their_names() {
    check("paths", &[], Run::Root);
}

#[test]
fn sockets_whose_path_is_gone_come_back_for_an_ordinary_user() {
    check("paths", &[], Run::User);
}

/// Three connections not yet accepted: accept() returns them, in order, after restore.
#[test]
fn connections_waiting_to_be_accepted_come_back() {
    check("pending", &["nodata"], Run::Root);
}

#[test]
fn connections_waiting_to_be_accepted_come_back_for_an_ordinary_user() {
    check("pending", &["nodata"], Run::User);
}

/// A dump without --kill leaves the waiting connections where they were.
#[test]
fn dump_without_kill_leaves_waiting_connections() {
    check("pending", &["nodata"], Run::NoKill);
}

/// A connection waiting to be accepted that holds data its client sent: that data can
/// only be read by accepting it, which would take it from the process. The dump is
/// refused naming the process, the first client's descriptor and why; the process
/// goes on and accepts its three connections with their data.
#[test]
fn waiting_connection_holding_data_is_refused_and_left_alone() {
    refused_and_left_alone(
        "pending",
        "data",
        &["fd 4", "waiting to be accepted", "bytes it sent"],
    );
}

/// `unixsk mode DIR STOP extra`, dumped with --kill: refused with a message naming its
/// PID and each of `words` (`{file}`: DIR/f); the process goes on and its own checks
/// pass (the refused dump, which peeked at the queues, took nothing).
fn refused_and_left_alone(mode: &str, extra: &str, words: &[&str]) {
    let d = tempdir();
    let (w, stop) = work(d.path());
    let ck = d.join("ckpt");
    let mut t = Target::start(
        "unixsk",
        &[os(mode), w.as_os_str(), stop.as_os_str(), os(extra)],
    );
    t.stdout.expect_line("ready");
    let out = ckpt([
        "dump".as_ref(),
        t.pid.to_string().as_ref(),
        "--dir".as_ref(),
        ck.as_os_str(),
        "--kill".as_ref(),
    ]);
    let line = assert_error(&out, &format!("dump of unixsk {mode} {extra}"));
    let file = w.join("f").to_string_lossy().into_owned();
    let pid = t.pid.to_string();
    for want in words
        .iter()
        .map(|w| w.replace("{file}", &file))
        .chain([pid])
    {
        assert!(
            line.contains(&want),
            "the refusal should say {want:?}: {line}"
        );
    }
    assert_running_not_stopped(t.pid);
    touch(&stop);
    t.stdout.expect_line(&format!("{mode} ok"));
    assert!(t.wait().success());
}

/// Seqpacket queues filled until EAGAIN (hundreds of small records, and 60000-byte ones):
/// every record comes back.
#[test]
fn full_seqpacket_queues_come_back() {
    check("seqpacket", &[], Run::Root);
}

#[test]
fn full_seqpacket_queues_come_back_for_an_ordinary_user() {
    check("seqpacket", &[], Run::User);
}

#[test]
fn dump_without_kill_leaves_full_seqpacket_queues() {
    check("seqpacket", &[], Run::NoKill);
}

/// A full datagram queue from three senders (a path, an abstract name, unnamed) and a
/// child blocked in sendto() on it, and a full datagram socketpair: nothing hangs, every
/// datagram comes back with its sender's address.
#[test]
fn full_datagram_queues_from_several_senders_come_back() {
    check("dgram", &[], Run::Root);
}

#[test]
fn full_datagram_queues_come_back_for_an_ordinary_user() {
    check("dgram", &[], Run::User);
}

#[test]
fn dump_without_kill_leaves_full_datagram_queues() {
    check("dgram", &[], Run::NoKill);
}

/// Descriptors in flight (SCM_RIGHTS) in stream, seqpacket and dgram sockets (a pipe
/// end, a regular file, a unix socket): after restore every message comes with its
/// descriptors, each the same open file as the one the process kept.
#[test]
fn descriptors_in_flight_come_back() {
    check("inflight", &["keep"], Run::Root);
}

#[test]
fn descriptors_in_flight_come_back_for_an_ordinary_user() {
    check("inflight", &["keep"], Run::User);
}

/// Reading the queues with their descriptors at dump time consumes nothing.
#[test]
fn dump_without_kill_leaves_descriptors_in_flight() {
    check("inflight", &["keep"], Run::NoKill);
}

/// A descriptor that lives only in flight (its sender closed it): refused, naming the
/// process, the socket's descriptor and the file; the process goes on and receives
/// every message with its descriptors.
#[test]
fn descriptor_only_in_flight_is_refused_and_left_alone() {
    refused_and_left_alone(
        "inflight",
        "closed",
        &[
            "SCM_RIGHTS",
            "no process of the checkpoint has open",
            "{file}",
        ],
    );
}
