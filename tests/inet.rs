//! AF_INET and AF_INET6 sockets (issue 10, first step): TCP listeners with connections
//! waiting to be accepted, established TCP connections with both ends in the job (in one
//! process and across processes) with data in flight both ways and a half-closed one,
//! UDP sockets with queued datagrams; as root and as an ordinary user, and dumped without
//! --kill. A connection to a peer outside the job is refused, naming it, and the
//! process runs on. testdata/inet.c sets each up and checks its own state (addresses,
//! ports, options, every byte by its sequence number, datagram sources) once the stop
//! file appears.
mod common;

use common::*;

#[derive(Clone, Copy, PartialEq)]
enum Run {
    /// Dumped with --kill and restored, as root.
    Root,
    /// Dumped with --kill and restored by the test user, who runs it.
    User,
    /// Dumped without --kill, as root: it goes on running.
    NoKill,
}

/// Start `inet MODE STOP`, checkpoint it as `run` says, let it check its state and
/// expect `<mode> ok`.
fn check(mode: &str, run: Run) {
    let (d, prog, ids) = if run == Run::User {
        let (d, exe, ids) = test_user_dir("inet");
        (d, exe, Some(ids))
    } else {
        (tempdir(), testdata("inet"), None)
    };
    let stop = d.join("stop");
    let ck = d.join("ckpt");
    let args = [os(mode), stop.as_os_str()];
    let mut t = match ids {
        Some(ids) => {
            let mut c = setpriv_test_user(&prog, ids);
            c.args(args);
            Target::spawn(c, &prog.to_string_lossy())
        }
        None => Target::start_path(&prog, &args),
    };
    // The TCP modes fork a child (the other end of one connection).
    let child = mode.starts_with("tcp").then(|| {
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
            assert!(t.wait().success(), "inet {mode} failed after the dump");
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

/// TCP over IPv4: a listener (options, backlog, O_NONBLOCK) with two connections
/// waiting to be accepted, a connection inside the process (half-closed: its client shut
/// down writing) and one with a forked child, data in flight both ways on each: every
/// byte comes back once and in order (sequence numbers checked), with the same addresses
/// and ports, and the waiting connections are accepted in order.
#[test]
fn tcp4_connections_inside_the_job_come_back() {
    check("tcp4", Run::Root);
}

#[test]
fn tcp4_connections_inside_the_job_come_back_for_an_ordinary_user() {
    check("tcp4", Run::User);
}

#[test]
fn tcp6_connections_inside_the_job_come_back() {
    check("tcp6", Run::Root);
}

#[test]
fn tcp6_connections_inside_the_job_come_back_for_an_ordinary_user() {
    check("tcp6", Run::User);
}

/// A dual-stack listener ([::], IPV6_V6ONLY off) with an IPv4 client: the accepted end
/// is an IPv6 socket with a mapped address, paired with its IPv4 client.
#[test]
fn dual_stack_connection_comes_back() {
    check("dual", Run::Root);
}

#[test]
fn dual_stack_connection_comes_back_for_an_ordinary_user() {
    check("dual", Run::User);
}

/// Peeking at the TCP queues at dump time consumes nothing.
#[test]
fn dump_without_kill_leaves_tcp_connections() {
    check("tcp4", Run::NoKill);
}

/// UDP over IPv4: bound, connected and autobound sockets, datagrams queued from three
/// senders to a bound socket and one to a connected one: each comes back once, in
/// order, from its sender's address and port.
#[test]
fn udp4_queued_datagrams_come_back() {
    check("udp4", Run::Root);
}

#[test]
fn udp4_queued_datagrams_come_back_for_an_ordinary_user() {
    check("udp4", Run::User);
}

#[test]
fn udp6_queued_datagrams_come_back() {
    check("udp6", Run::Root);
}

#[test]
fn udp6_queued_datagrams_come_back_for_an_ordinary_user() {
    check("udp6", Run::User);
}

/// Peeking at the queues at dump time consumes nothing.
#[test]
fn dump_without_kill_leaves_udp_queues() {
    check("udp4", Run::NoKill);
}

/// A TCP connection to a listener of the test (outside the job): the dump is refused
/// naming the process, the descriptor, both ends and what would save it; the process
/// runs on and its connection still works.
#[test]
fn connection_to_an_outside_peer_is_refused_and_left_alone() {
    let d = tempdir();
    let stop = d.join("stop");
    let ck = d.join("ckpt");
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let mut t = Target::start(
        "inet",
        &[os("outside"), stop.as_os_str(), os(&port.to_string())],
    );
    let (mut conn, from) = l.accept().unwrap();
    t.stdout.expect_line("ready");
    let out = ckpt([
        "dump".as_ref(),
        t.pid.to_string().as_ref(),
        "--dir".as_ref(),
        ck.as_os_str(),
        "--kill".as_ref(),
    ]);
    let line = assert_error(&out, "dump of a TCP connection to an outside peer");
    for want in [
        format!("process {}", t.pid),
        "fd 3".to_string(),
        format!("{from} → 127.0.0.1:{port}"),
        "outside the checkpoint".to_string(),
        "--tcp-established".to_string(),
        "--tcp-close".to_string(),
    ] {
        assert!(
            line.contains(&want),
            "the refusal should say {want:?}: {line}"
        );
    }
    assert_running_not_stopped(t.pid);
    touch(&stop);
    t.stdout.expect_line("outside ok");
    let mut b = [0u8; 1];
    std::io::Read::read_exact(&mut conn, &mut b).unwrap();
    assert_eq!(&b, b"b");
    assert!(t.wait().success());
}

/// `inet MODE STOP`, dumped with --kill: refused with a message holding each of `words`
/// and naming the process; the process runs on and its own checks pass (the refused
/// dump took nothing from it). `connect`: a connection from the test to the port the
/// program prints first (`port N`).
fn refused_and_left_alone(mode: &str, connect: bool, words: &[&str]) {
    let d = tempdir();
    let stop = d.join("stop");
    let ck = d.join("ckpt");
    let mut t = Target::start("inet", &[os(mode), stop.as_os_str()]);
    let mut words: Vec<String> = words.iter().map(|w| w.to_string()).collect();
    let _conn = connect.then(|| {
        let port: u16 = t
            .stdout
            .expect_prefix("port ")
            .trim_start_matches("port ")
            .parse()
            .unwrap();
        let c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        words.push(format!("{} → 127.0.0.1:{port}", c.local_addr().unwrap()));
        c
    });
    t.stdout.expect_line("ready");
    let out = ckpt([
        "dump".as_ref(),
        t.pid.to_string().as_ref(),
        "--dir".as_ref(),
        ck.as_os_str(),
        "--kill".as_ref(),
    ]);
    let line = assert_error(&out, &format!("dump of inet {mode}"));
    for want in words.into_iter().chain([format!("process {}", t.pid)]) {
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

/// A listener with a connection waiting to be accepted from a client outside the job:
/// refused naming the listener and the connection; it can still be accepted after.
#[test]
fn waiting_connection_from_outside_is_refused_and_left_alone() {
    refused_and_left_alone(
        "waiting_outside",
        true,
        &["fd 3", "waiting to be accepted", "outside the checkpoint"],
    );
}

/// An option ckpt cannot set back (here a socket filter, SO_ATTACH_FILTER): refused,
/// naming it; the socket keeps working.
#[test]
fn socket_filter_is_refused_and_left_alone() {
    refused_and_left_alone(
        "filter",
        false,
        &["fd 3", "a socket filter (SO_ATTACH_FILTER)"],
    );
}

/// Bytes still in a sender's send queue (its peer's receive buffer is full): as root,
/// read with TCP_REPAIR (the send queue peeked, sequence numbers telling which of its
/// bytes the peer has not received) and put after the receiver's own; every byte comes
/// back once and in order.
#[test]
fn bytes_in_a_send_queue_come_back_as_root() {
    assert_root("TCP_REPAIR (CAP_NET_ADMIN)");
    check("full", Run::Root);
}

#[test]
fn dump_without_kill_leaves_bytes_in_a_send_queue() {
    check("full", Run::NoKill);
}

/// Without privileges (no TCP_REPAIR) those bytes are got through the receiver: its
/// queue is read until the sender's is empty, and every byte read is sent again from
/// the sender's end before the process runs on; every byte comes back once and in
/// order.
#[test]
fn bytes_in_a_send_queue_come_back_for_an_ordinary_user() {
    check("full", Run::User);
}

/// The same dump without --kill: the process, which ran on, reads every byte, in order.
#[test]
fn dump_without_kill_leaves_bytes_in_a_send_queue_for_an_ordinary_user() {
    let (d, prog, ids) = test_user_dir("inet");
    let (stop, ck) = (d.join("stop"), d.join("ckpt"));
    let mut c = setpriv_test_user(&prog, ids);
    c.args([os("full"), stop.as_os_str()]);
    let mut t = Target::spawn(c, &prog.to_string_lossy());
    t.stdout.expect_line("ready");
    let mut c = setpriv(ids, &[], &[], ckpt_bin());
    c.args(["dump", &t.pid.to_string(), "--dir"])
        .arg(&ck)
        .stdin(std::process::Stdio::null());
    let out = run(&mut c);
    assert_success(
        &out,
        "dump of inet full as an ordinary user, without --kill",
    );
    assert_running_not_stopped(t.pid);
    touch(&stop);
    t.stdout.expect_line("full ok");
    assert!(t.wait().success());
}

/// A sender that shut down writing after bytes its receiver has no room for: without
/// TCP_REPAIR nothing could be sent again after its FIN, so the dump is refused, naming
/// the connection, TCP_REPAIR and the shutdown, before anything is read; every byte and
/// the end of file arrive after.
#[test]
fn bytes_in_a_send_queue_after_shutdown_are_refused_for_an_ordinary_user() {
    let (d, prog, ids) = test_user_dir("inet");
    let stop = d.join("stop");
    let ck = d.join("ckpt");
    let mut c = setpriv_test_user(&prog, ids);
    c.args([os("fullshut"), stop.as_os_str()]);
    let mut t = Target::spawn(c, &prog.to_string_lossy());
    t.stdout.expect_line("ready");
    let mut c = setpriv(ids, &[], &[], ckpt_bin());
    c.args(["dump", &t.pid.to_string(), "--dir"])
        .arg(&ck)
        .arg("--kill")
        .stdin(std::process::Stdio::null());
    let out = run(&mut c);
    let line = assert_error(&out, "dump of inet fullshut as an ordinary user");
    for want in [
        format!("process {}", t.pid),
        "still in its send queue".into(),
        "TCP_REPAIR".into(),
        "shut down writing".into(),
    ] {
        assert!(
            line.contains(&want),
            "the refusal should say {want:?}: {line}"
        );
    }
    assert_running_not_stopped(t.pid);
    touch(&stop);
    t.stdout.expect_line("fullshut ok");
    assert!(t.wait().success());
}

/// One HTTP/1.0 GET of / on 127.0.0.1:`port`: the whole answer.
fn http_get(port: u16) -> String {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(TIMEOUT)).unwrap();
    c.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut s = String::new();
    c.read_to_string(&mut s).unwrap();
    s
}

/// A node http server listening on 127.0.0.1 (a real program on an event loop):
/// after restore it answers on the same port, its request counter where it was.
#[test]
fn node_http_server_answers_after_restore() {
    let d = tempdir();
    let js = d.join("server.js");
    std::fs::write(
        &js,
        "let n = 0;\n\
         const s = require('http').createServer((q, r) => r.end('hello ' + (n++) + '\\n'));\n\
         s.listen(0, '127.0.0.1', () => console.log('port ' + s.address().port));\n",
    )
    .unwrap();
    let mut c = command("node");
    c.arg(&js);
    let mut t = Target::spawn(c, &js.to_string_lossy());
    let port: u16 = t
        .stdout
        .expect_prefix("port ")
        .trim_start_matches("port ")
        .parse()
        .unwrap();
    assert!(http_get(port).ends_with("hello 0\n"));
    let ck = d.join("ckpt");
    t.dump_kill(&ck);
    let mut r = Restored::of(&ck, &t);
    r.assert_same_pid();
    let a = http_get(port);
    assert!(a.ends_with("hello 1\n"), "after restore: {a:?}");
    assert!(http_get(port).ends_with("hello 2\n"));
}
