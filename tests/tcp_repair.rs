//! TCP connections to peers outside the checkpoint (issue 10, item 3): the test itself
//! is the peer of testdata/tcp_outside.c. With `--tcp-established` (root) the
//! connection is saved the TCP_REPAIR way under the nftables network lock: the peer
//! goes on sending while the process is down, its socket sees no error (no reset), and
//! after the restore every byte arrives both ways, once and in order, on the same
//! connection (the same sockets and ports: the sequence numbers went on). Without an
//! option the dump is refused naming the connection and both options, also for an
//! ordinary user, who cannot have --tcp-established; without nft in PATH
//! --tcp-established is refused; `--tcp-close` restores a socket that reads as reset
//! by its peer, and the program connects again. Also: the job as the server of an
//! outside client (its listener rebuilt next to the connection), a dump without --kill
//! (the connection runs on, no lock left), and a coordinator with --tcp-established
//! whose `kc` and restart script keep the connection.
mod common;

use common::*;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Command, Stdio};

fn peer_byte(j: u64) -> u8 {
    ((j * 7 + 1) % 253) as u8
}

fn target_byte(i: u64) -> u8 {
    (i % 251) as u8
}

/// The peer's end: what it has sent of its stream.
struct Peer {
    sock: TcpStream,
    sent: u64,
}

impl Peer {
    /// Send up to `n` more bytes of the peer's stream without blocking.
    fn send_some(&mut self, n: u64) -> u64 {
        self.sock.set_nonblocking(true).unwrap();
        let data: Vec<u8> = (0..n).map(|i| peer_byte(self.sent + i)).collect();
        let mut done = 0;
        while done < data.len() {
            match self.sock.write(&data[done..]) {
                Ok(k) => done += k,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("the peer's send failed: {e}"),
            }
        }
        self.sent += done as u64;
        done as u64
    }

    /// Once the restored target runs on: read the target's whole stream while sending
    /// the rest of the peer's, then check what the target says it sent and received
    /// (`sent_before`: what it had sent before the checkpoint).
    fn finish(&mut self, out: &mut Lines, sent_before: u64) {
        // The peer reads the target's whole stream while it sends the rest of its own.
        let mut reader = self.sock.try_clone().unwrap();
        reader.set_nonblocking(false).unwrap();
        let got = std::thread::spawn(move || {
            let mut n = 0u64;
            let mut buf = vec![0u8; 65536];
            loop {
                let k = reader.read(&mut buf).expect("the peer's read");
                if k == 0 {
                    return n;
                }
                for (i, &b) in buf[..k].iter().enumerate() {
                    assert_eq!(
                        b,
                        target_byte(n + i as u64),
                        "byte {} of the target's stream",
                        n + i as u64
                    );
                }
                n += k as u64;
            }
        });
        self.sock.set_nonblocking(false).unwrap();
        let total = 300_000u64;
        let rest: Vec<u8> = (self.sent..total).map(peer_byte).collect();
        self.sock.write_all(&rest).unwrap();
        self.sent = total;
        self.sock.shutdown(Shutdown::Write).unwrap();
        let received = got.join().expect("the peer's reader");
        let line = out.expect_prefix("stream ok");
        assert_eq!(
            line,
            format!("stream ok sent={received} received={total}"),
            "what the target sent and received against what the peer saw"
        );
        assert_eq!(received, sent_before + 100_000);
    }

    fn assert_no_error(&self, when: &str) {
        assert!(
            matches!(self.sock.take_error(), Ok(None)),
            "the peer's socket has an error {when}: {:?}",
            self.sock.take_error()
        );
    }
}

/// Deletes the lock table `0` when the test ends, if it is still there (a test that
/// failed before its restore).
struct LockCleanup(String);

impl Drop for LockCleanup {
    fn drop(&mut self) {
        if !self.0.is_empty() && nft_tables().contains(&self.0) {
            let _ = run(Command::new("nft").args(["delete", "table", "inet", &self.0]));
        }
    }
}

fn nft_tables() -> String {
    let out = run(Command::new("nft").args(["list", "tables"]));
    assert_success(&out, "nft list tables");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The ckpt_lock_ tables the image's connection names (from `ckpt info`).
fn lock_of(ck: &std::path::Path) -> String {
    let out = ckpt(["info".as_ref(), ck.as_os_str()]);
    assert_success(&out, "ckpt info");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let at = text
        .find("lock inet ckpt_lock_")
        .unwrap_or_else(|| panic!("ckpt info names no network lock:\n{text}"));
    text[at + "lock inet ".len()..]
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .next()
        .unwrap()
        .to_string()
}

fn start(mode: &str, host: &str, d: &TestDir) -> (TcpListener, Target) {
    let l = TcpListener::bind((host, 0)).unwrap();
    let port = l.local_addr().unwrap().port().to_string();
    let stop = d.join("stop");
    let t = Target::start(
        "tcp_outside",
        &[os(mode), os(host), os(&port), stop.as_os_str()],
    );
    (l, t)
}

fn dump_with(pid: i32, ck: &std::path::Path, extra: &[&str]) -> std::process::Output {
    let mut c = ckpt_cmd();
    c.arg("dump")
        .arg(pid.to_string())
        .arg("--dir")
        .arg(ck)
        .args(extra);
    run(&mut c)
}

/// The connection goes on across `ckpt dump --kill --tcp-established` and `ckpt
/// restore --tcp-established`, with data queued both ways and the peer sending while
/// the process is down.
/// `serve`: the job is the server (its listener accepted the peer, which is the
/// client), and the listener is rebuilt on the port the connection holds.
fn established(host: &str, serve: bool) {
    assert_root("--tcp-established");
    let d = tempdir();
    let ck = d.join("ckpt");
    let (mut t, sock, listening) = if serve {
        let stop = d.join("stop");
        let mut t = Target::start(
            "tcp_outside",
            &[os("serve"), os(host), os("0"), stop.as_os_str()],
        );
        let line = t.stdout.expect_prefix("listening ");
        let port: u16 = line["listening ".len()..].parse().unwrap();
        (t, TcpStream::connect((host, port)).unwrap(), Some(port))
    } else {
        let (l, t) = start("stream", host, &d);
        let (sock, _) = l.accept().unwrap();
        // The listener is the test's: it may go.
        drop(l);
        (t, sock, None)
    };
    let mut peer = Peer { sock, sent: 0 };
    let local = t.stdout.expect_prefix("local ");
    // Bytes in the target's receive queue, which it does not read yet.
    let queued = peer.send_some(200_000);
    assert!(queued > 0, "the peer could send nothing");
    let ready = t.stdout.expect_prefix("ready sent ");
    let sent_before: u64 = ready["ready sent ".len()..].parse().unwrap();
    let out = dump_with(t.pid, &ck, &["--kill", "--tcp-established"]);
    assert_success(&out, "ckpt dump --kill --tcp-established");
    t.reap_killed();
    // The lock holds the connection while the process is down.
    let lock = lock_of(&ck);
    let _cleanup = LockCleanup(lock.clone());
    assert!(
        nft_tables().contains(&lock),
        "no nft table {lock} while the process is down:\n{}",
        nft_tables()
    );
    assert!(
        peer.send_some(50_000) > 0,
        "the peer could send nothing more"
    );
    // A restore without --tcp-established is refused, naming the connection; the lock
    // stays for the next one.
    let refused = run(ckpt_cmd().arg("restore").arg(&ck).stdin(Stdio::null()));
    let err = assert_error(&refused, "ckpt restore without --tcp-established");
    assert!(
        err.contains("--tcp-established")
            && err.contains(&format!(
                "process {} fd {}",
                t.pid,
                if serve { 4 } else { 3 }
            )),
        "the refusal should name the descriptor and --tcp-established: {err}"
    );
    assert!(
        nft_tables().contains(&lock),
        "a refused restore removed the lock"
    );
    peer.assert_no_error("while the process is down");
    let mut r = Restored::start_with(&ck, t.pid, &t.marker, &["--tcp-established"]);
    r.assert_same_pid();
    wait_until("the restore removes the network lock", || {
        !nft_tables().contains(&lock)
    });
    peer.assert_no_error("after the restore");
    touch(&d.join("stop"));
    peer.finish(&mut r.stdout, sent_before);
    if let Some(port) = listening {
        // The rebuilt listener takes a new client on the connection's port.
        let _again = TcpStream::connect((host, port)).unwrap();
        r.stdout.expect_line("accepted again");
    }
    r.wait_success();
    peer.assert_no_error("at the end");
    assert!(!local.is_empty());
}

#[test]
fn established_connection_goes_on_over_ipv4() {
    established("127.0.0.1", false);
}

#[test]
fn established_connection_goes_on_over_ipv6() {
    established("::1", false);
}

/// The job is a server with a client outside: the accepted connection goes on and the
/// listener on the same port is rebuilt next to it.
#[test]
fn established_connection_of_a_server_goes_on_and_its_listener_accepts() {
    established("127.0.0.1", true);
}

/// Without an option the dump is refused, naming the process, the descriptor, both
/// addresses and the two options; the process runs on.
#[test]
fn outside_peer_is_refused_naming_the_connection_and_the_options() {
    let d = tempdir();
    let ck = d.join("ckpt");
    let (l, mut t) = start("stream", "127.0.0.1", &d);
    let (_sock, _) = l.accept().unwrap();
    let local = t.stdout.expect_prefix("local ");
    t.stdout.expect_prefix("ready sent ");
    let err = dump_refused(t.pid, &ck, "a dump of a connection to an outside peer");
    let port = l.local_addr().unwrap().port();
    for want in [
        format!("process {} fd 3", t.pid),
        format!("127.0.0.1:{} → 127.0.0.1:{port}", &local["local ".len()..]),
        "--tcp-established".into(),
        "CAP_NET_ADMIN".into(),
        "--tcp-close".into(),
    ] {
        assert!(
            err.contains(&want),
            "the refusal should say {want:?}: {err}"
        );
    }
    assert_running_not_stopped(t.pid);
}

/// An ordinary user is refused too, with and without --tcp-established (which needs
/// CAP_NET_ADMIN); the process runs on.
#[test]
fn outside_peer_is_refused_for_an_ordinary_user() {
    let (d, exe, ids) = test_user_dir("tcp_outside");
    let ck = d.join("ckpt");
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port().to_string();
    let stop = d.join("stop");
    let mut c = setpriv_test_user(&exe, ids);
    c.args([os("stream"), os("127.0.0.1"), os(&port), stop.as_os_str()]);
    let mut t = Target::spawn(c, &exe.to_string_lossy());
    let (_sock, _) = l.accept().unwrap();
    t.stdout.expect_prefix("ready sent ");
    for (extra, want) in [
        (&[][..], "--tcp-close"),
        (&["--tcp-established"][..], "CAP_NET_ADMIN"),
    ] {
        let mut c = setpriv(ids, &[], &[], ckpt_bin());
        c.args(["dump", &t.pid.to_string(), "--kill", "--dir"])
            .arg(&ck)
            .args(extra)
            .stdin(Stdio::null());
        let err = assert_error(&run(&mut c), "a dump by an ordinary user");
        assert!(
            err.contains(&format!("process {} fd 3", t.pid))
                && err.contains(&format!("→ 127.0.0.1:{port}"))
                && err.contains(want),
            "the refusal ({extra:?}) should name the connection and {want:?}: {err}"
        );
        assert_running_not_stopped(t.pid);
    }
}

/// --tcp-established without nft in PATH: refused, saying what is missing; the
/// process runs on and no lock is left.
#[test]
fn tcp_established_without_nft_is_refused() {
    assert_root("--tcp-established");
    let d = tempdir();
    let ck = d.join("ckpt");
    let empty = d.join("empty-path");
    std::fs::create_dir_all(&empty).unwrap();
    let (l, mut t) = start("stream", "127.0.0.1", &d);
    let (_sock, _) = l.accept().unwrap();
    t.stdout.expect_prefix("ready sent ");
    let mut c = ckpt_cmd();
    c.args([
        "dump",
        &t.pid.to_string(),
        "--kill",
        "--tcp-established",
        "--dir",
    ])
    .arg(&ck)
    .env("PATH", &empty);
    let err = assert_error(&run(&mut c), "--tcp-established without nft");
    assert!(
        err.contains("nft")
            && err.contains("nftables")
            && err.contains(&format!("process {}", t.pid)),
        "the refusal should name nft and its package: {err}"
    );
    assert_running_not_stopped(t.pid);
}

/// `--tcp-close`: the peer sees the connection reset when the process is killed; the
/// restored program reads the bytes it had not read, then ECONNRESET, then end of file,
/// writes fail with EPIPE, and it connects again.
fn tcp_close(user: bool) {
    let (d, prog, ids) = if user {
        let (d, exe, ids) = test_user_dir("tcp_outside");
        (d, exe, Some(ids))
    } else {
        (tempdir(), testdata("tcp_outside"), None)
    };
    let ck = d.join("ckpt");
    let stop = d.join("stop");
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port().to_string();
    let args = [os("reset"), os("127.0.0.1"), os(&port), stop.as_os_str()];
    let mut t = match ids {
        Some(ids) => {
            let mut c = setpriv_test_user(&prog, ids);
            c.args(args);
            Target::spawn(c, &prog.to_string_lossy())
        }
        None => Target::start_path(&prog, &args),
    };
    let (sock, _) = l.accept().unwrap();
    let mut peer = Peer { sock, sent: 0 };
    assert_eq!(peer.send_some(1000), 1000);
    t.stdout.expect_line("ready");
    // The bytes are in the target's receive queue before the dump.
    wait_until("the target's receive queue holds the bytes", || {
        std::fs::read_to_string(format!("/proc/{}/net/tcp", t.pid))
            .unwrap_or_default()
            .lines()
            .any(|row| {
                let f: Vec<&str> = row.split_whitespace().collect();
                f.len() > 4 && f[4].ends_with(":000003E8")
            })
    });
    let mut c = match ids {
        Some(ids) => setpriv(ids, &[], &[], ckpt_bin()),
        None => ckpt_cmd(),
    };
    c.args(["dump", &t.pid.to_string(), "--kill", "--tcp-close", "--dir"])
        .arg(&ck)
        .stdin(Stdio::null());
    assert_success(&run(&mut c), "ckpt dump --kill --tcp-close");
    t.reap_killed();
    peer.sock.set_nonblocking(false).unwrap();
    let mut b = [0u8; 16];
    let e = peer
        .sock
        .read(&mut b)
        .expect_err("the peer should see the connection reset");
    assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}");
    let (mut restored, mut as_root) = match ids {
        Some(ids) => (Some(restore_as(&ck, ids)), None),
        None => {
            let mut r = Restored::of(&ck, &t);
            r.assert_same_pid();
            (None, Some(r))
        }
    };
    let out: &mut Lines = match (&mut restored, &mut as_root) {
        (Some(r), _) => &mut r.stdout,
        (_, Some(r)) => &mut r.stdout,
        _ => unreachable!(),
    };
    touch(&stop);
    out.expect_line("reset ok unread=1000");
    let (mut again, _) = l.accept().unwrap();
    let mut line = [0u8; 6];
    again.read_exact(&mut line).unwrap();
    assert_eq!(&line, b"again\n");
    again.write_all(b"welcome\n").unwrap();
    out.expect_line("reconnected");
    if let Some(mut r) = restored {
        assert!(r.wait().success(), "ckpt restore as {TEST_USER}");
    }
    if let Some(mut r) = as_root {
        r.wait_success();
    }
}

#[test]
fn tcp_close_restores_a_reset_connection_and_the_program_reconnects() {
    tcp_close(false);
}

#[test]
fn tcp_close_works_for_an_ordinary_user() {
    tcp_close(true);
}

/// Under a coordinator started with `--tcp-established`: `kc` saves the job's
/// connection to an outside peer the TCP_REPAIR way and kills the job as its image is
/// written (so the connection does not run on past the image); the restart script,
/// given `--tcp-established`, rebuilds it, and the peer, which went on sending, sees
/// every byte and no reset.
#[test]
fn coordinator_kc_with_tcp_established_keeps_the_connection() {
    coordinator_kc(false);
}

/// The same with `ckpt run --tcp-established` under a plain coordinator: the agent's
/// own choice.
#[test]
fn run_with_tcp_established_keeps_the_connection_across_kc() {
    coordinator_kc(true);
}

fn coordinator_kc(by_run: bool) {
    assert_root("--tcp-established");
    let d = tempdir();
    let _sweep = Sweep::new(&d);
    let (ck_dir, port_file, stop) = (d.join("ckpts"), d.join("port"), d.join("stop"));
    let mut c = ck();
    c.args(["coordinator", "--port", "0"])
        .args((!by_run).then_some("--tcp-established"))
        .arg("--port-file")
        .arg(&port_file)
        .arg("--ckpt-dir")
        .arg(&ck_dir);
    let mut coord = Target::spawn(c, &ck_dir.to_string_lossy());
    coord
        .stdout
        .expect_prefix("[ckpt coordinator] listening on");
    let port = std::fs::read_to_string(&port_file)
        .unwrap()
        .trim()
        .to_string();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let peer_port = l.local_addr().unwrap().port().to_string();
    let prog = testdata("tcp_outside");
    let mut agent = ck();
    agent
        .args(["run", "--coord-port", &port])
        .args(by_run.then_some("--tcp-established"))
        .arg("--")
        .arg(&prog)
        .args([
            os("stream"),
            os("127.0.0.1"),
            os(&peer_port),
            stop.as_os_str(),
        ]);
    let mut agent = Target::spawn(agent, &stop.to_string_lossy());
    let (sock, _) = l.accept().unwrap();
    let mut peer = Peer { sock, sent: 0 };
    agent.stdout.expect_prefix("local ");
    assert!(peer.send_some(200_000) > 0);
    let ready = agent.stdout.expect_prefix("ready sent ");
    let sent_before: u64 = ready["ready sent ".len()..].parse().unwrap();
    let job = children(agent.pid);
    assert_eq!(job.len(), 1, "the agent's job: {job:?}");
    wait_until("the job registers", || {
        String::from_utf8_lossy(&command_at(port.parse().unwrap(), &["l"]).stdout)
            .contains(&format!("pid {}", job[0]))
    });
    let out = command_at(port.parse().unwrap(), &["kc"]);
    assert_success(&out, "ckpt command kc");
    agent.wait();
    wait_pid_free(job[0]);
    let jobs = job_dirs(&ck_dir);
    assert_eq!(jobs.len(), 1, "one job directory: {jobs:?}");
    let lock = lock_of(&jobs[0]);
    let _cleanup = LockCleanup(lock.clone());
    assert!(
        nft_tables().contains(&lock),
        "no lock {lock} while the job is down"
    );
    assert!(
        peer.send_some(50_000) > 0,
        "the peer could send nothing more"
    );
    peer.assert_no_error("while the job is down");
    let mut restart = Command::new(ck_dir.join("ckpt_restart_script.sh"));
    clean_coord_env(&mut restart);
    restart.arg("--tcp-established");
    let mut r = Target::spawn(restart, &ck_dir.to_string_lossy());
    wait_until("the restart removes the network lock", || {
        !nft_tables().contains(&lock)
    });
    touch(&stop);
    peer.finish(&mut r.stdout, sent_before);
    assert!(r.wait().success(), "the restart script");
    peer.assert_no_error("at the end");
}

/// `ckpt dump --tcp-established` without --kill: the connection is read under the lock
/// for a moment, then the process runs on with it as before (repair mode left, no
/// lock left behind), and every byte still arrives both ways.
#[test]
fn dump_without_kill_leaves_the_connection_working() {
    assert_root("--tcp-established");
    let d = tempdir();
    let ck = d.join("ckpt");
    let (l, mut t) = start("stream", "127.0.0.1", &d);
    let (sock, _) = l.accept().unwrap();
    let mut peer = Peer { sock, sent: 0 };
    t.stdout.expect_prefix("local ");
    assert!(peer.send_some(200_000) > 0);
    let ready = t.stdout.expect_prefix("ready sent ");
    let sent_before: u64 = ready["ready sent ".len()..].parse().unwrap();
    let out = dump_with(t.pid, &ck, &["--tcp-established"]);
    assert_success(&out, "ckpt dump --tcp-established");
    assert_running_not_stopped(t.pid);
    let lock = lock_of(&ck);
    assert!(
        !nft_tables().contains(&lock),
        "a dump without --kill left its lock {lock}"
    );
    assert!(
        peer.send_some(50_000) > 0,
        "the peer could send nothing more"
    );
    peer.assert_no_error("after the dump");
    touch(&d.join("stop"));
    peer.finish(&mut t.stdout, sent_before);
    assert!(t.wait().success());
    peer.assert_no_error("at the end");
}

/// A half-closed connection (the peer shut down writing: CLOSE_WAIT) is refused by
/// --tcp-established, naming its state and --tcp-close; the process runs on.
#[test]
fn half_closed_connection_is_refused_by_tcp_established() {
    assert_root("--tcp-established");
    let d = tempdir();
    let ck = d.join("ckpt");
    let (l, mut t) = start("stream", "127.0.0.1", &d);
    let (sock, _) = l.accept().unwrap();
    t.stdout.expect_prefix("ready sent ");
    sock.shutdown(Shutdown::Write).unwrap();
    wait_until("the target's end is in CLOSE_WAIT", || {
        std::fs::read_to_string(format!("/proc/{}/net/tcp", t.pid))
            .unwrap_or_default()
            .lines()
            .any(|row| row.split_whitespace().nth(3) == Some("08"))
    });
    let out = dump_with(t.pid, &ck, &["--kill", "--tcp-established"]);
    let err = assert_error(&out, "--tcp-established of a half-closed connection");
    assert!(
        err.contains(&format!("process {} fd 3", t.pid))
            && err.contains("CLOSE_WAIT")
            && err.contains("--tcp-close"),
        "the refusal should name the connection, its state and --tcp-close: {err}"
    );
    assert_running_not_stopped(t.pid);
}
