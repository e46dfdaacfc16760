//! File locks, leases and descriptor owners survive a checkpoint (issue 9, the `locks`
//! attribute group): POSIX record locks with their ranges and types, an OFD lock, a
//! flock held through two descriptors, a write and a read lease, the SIGIO owner and
//! signal of a pipe with O_ASYNC, and a pipe's capacity. `testdata/locks hold` takes
//! them, is checkpointed (once left running, then with `--kill`) and restored; another
//! process (`locks probe`) must then be refused every lock, and the restored program
//! checks the rest from inside ("locks ok"). As root and as an ordinary user.
//!
//! What must fail: a restore when another process took one of the locks meanwhile (a
//! one-line error naming the process, fd, lock and range; nothing left running), and a
//! dump while a lease of the target is being broken (refused at once, the target runs
//! on with its lease). And a real program: sqlite3 holding an open write transaction
//! keeps its lock across the restore and commits afterwards.
mod common;

use common::*;
use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

/// Kills process `pid` (if it still runs `locks`) when dropped: a restored process the
/// test does not hold a handle of (a restored child, a restore that should have failed)
/// must not outlive a failed test.
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        kill_if_running(self.0, "locks");
    }
}

fn locks(mode: &str, dir: &Path, extra: &[&str]) -> Command {
    let mut c = command(testdata("locks"));
    c.arg(mode).arg(dir).args(extra);
    c
}

/// `locks probe DIR [nolease]`, which must report "probe ok".
fn probe(dir: &Path, extra: &[&str]) {
    let out = run(&mut locks("probe", dir, extra));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("probe ok"),
        "another process took a lock the restored program holds: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The restored `locks hold`: its leases untouched, every lock refused to another
/// process, then its own checks.
fn check_restored(stdout: &mut Lines, dir: &Path) {
    touch(&dir.join("check"));
    stdout.expect_line("intact");
    probe(dir, &[]);
    touch(&dir.join("go"));
    stdout.expect_line("locks ok");
}

#[test]
fn locks_come_back_as_root() {
    assert_root("the lock test (it also runs the probe against a test user's files)");
    let d = tempdir();
    let ck = d.join("ckpt");
    let mut t = Target::spawn(locks("hold", d.path(), &[]), "locks");
    t.stdout.expect_prefix("fds ");
    t.stdout.expect_line("ready");
    probe(d.path(), &["nolease"]);
    // A dump that leaves the process running leaves its leases alone too ("intact"
    // after the restore checks that no lease break was ever signalled).
    dump(t.pid, &ck, false);
    assert_running_not_stopped(t.pid);
    t.dump_kill(&ck);

    let mut r = Restored::of(&ck, &t);
    r.assert_same_pid();
    check_restored(&mut r.stdout, d.path());
    r.wait_success();
}

/// `program args` as the test user.
fn as_user(program: &Path, args: &[&OsStr], ids: (u32, u32)) -> Command {
    let mut c = setpriv(ids, &[], &[], program);
    c.args(args);
    c
}

#[test]
fn locks_come_back_for_an_ordinary_user() {
    assert_root("the unprivileged lock test");
    let ids = ensure_test_user();
    let d = tempdir();
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let ck = d.join("ckpt");
    let prog = testdata("locks");
    let mut t = Target::spawn(
        as_user(&prog, &[os("hold"), d.path().as_os_str()], ids),
        &prog.to_string_lossy(),
    );
    t.stdout.expect_prefix("fds ");
    t.stdout.expect_line("ready");
    probe(d.path(), &["nolease"]);

    dump_kill_as(&mut t, &ck, ids);

    let mut r = restore_as(&ck, ids);
    check_restored(&mut r.stdout, d.path());
    let status = r.wait();
    assert!(
        status.success(),
        "ckpt restore as {TEST_USER}: {status:?}, stderr {:?}",
        r.stderr.seen()
    );
}

/// `ckpt restore` while `locks grab DIR what` holds one of the locks: refused, naming
/// each of `named`, with nothing left running.
fn restore_refused_while_grabbed(d: &Path, ck: &Path, pid: i32, what: &str, named: &[&str]) {
    let mut g = Target::spawn(locks("grab", d, &[what]), "locks");
    g.stdout.expect_line("grabbed");
    let _restored = KillOnDrop(pid);
    let out = ckpt([os("restore"), ck.as_os_str()]);
    let err = assert_error(
        &out,
        &format!("a restore while another process holds the {what} lock"),
    );
    for n in named {
        assert!(err.contains(n), "the error names {n:?}: {err}");
    }
    wait_until(
        &format!("process {pid} of the failed restore to be gone"),
        || !pid_exists(pid),
    );
    g.stdin = None;
    assert!(g.wait().success());
}

#[test]
fn a_lock_taken_meanwhile_fails_the_restore() {
    let d = tempdir();
    let ck = d.join("ckpt");
    let mut t = Target::spawn(locks("hold", d.path(), &[]), "locks");
    let fds = t.stdout.expect_prefix("fds ");
    t.stdout.expect_line("ready");
    let fd_of = |name: &str| -> String {
        let w: Vec<&str> = fds.split(' ').collect();
        let i = w.iter().position(|x| *x == name).unwrap();
        w[i + 1].to_string()
    };
    let (fa, fc) = (fd_of("a"), fd_of("c"));
    t.dump_kill(&ck);
    let pid = t.pid;
    let who = format!("process {pid}");
    restore_refused_while_grabbed(
        d.path(),
        &ck,
        pid,
        "posix",
        &[&who, &format!("fd {fa}"), "POSIX write lock", "bytes 10-29"],
    );
    restore_refused_while_grabbed(
        d.path(),
        &ck,
        pid,
        "flock",
        &[&who, &format!("fd {fc}"), "flock LOCK_EX"],
    );
    // With nobody in the way, it comes back with every lock.
    let mut r = Restored::of(&ck, &t);
    r.assert_same_pid();
    check_restored(&mut r.stdout, d.path());
    r.wait_success();
}

#[test]
fn a_lease_being_broken_is_refused_at_once_and_left_alone() {
    let d = tempdir();
    let ck = d.join("ckpt");
    let mut t = Target::spawn(locks("breaking", d.path(), &[]), "locks");
    t.stdout.expect_line("ready");
    let ino = fs::metadata(d.join("d")).unwrap().ino();
    // An opener waits for the lease to be given up: the lease is being broken.
    let mut opener = Target::spawn(locks("open", d.path(), &[]), "locks");
    wait_until("the lease to be breaking", || {
        fs::read_to_string("/proc/locks").unwrap().lines().any(|l| {
            l.contains("LEASE") && l.contains("BREAKING") && l.contains(&format!(":{ino} "))
        })
    });
    let err = dump_refused(
        t.pid,
        &ck,
        "a dump of a process whose lease is being broken",
    );
    assert!(
        err.contains(&format!("process {}", t.pid))
            && err.contains("lease")
            && err.contains("being broken"),
        "the error names the process and the lease being broken: {err}"
    );
    assert_running_not_stopped(t.pid);
    assert!(
        !ck.join("latest").exists(),
        "a refused dump leaves no generation"
    );
    // The lease is still the target's to give up: then the opener gets its file.
    touch(&d.join("release"));
    t.stdout.expect_line("breaking ok");
    assert!(t.wait().success());
    opener.stdout.expect_line("opened");
    assert!(opener.wait().success());
}

#[test]
fn sqlite_keeps_its_write_transaction_and_lock() {
    let d = tempdir();
    let (db, ck) = (d.join("t.db"), d.join("ckpt"));
    let (ok, out) = second_sqlite(&db, "CREATE TABLE t(x); INSERT INTO t VALUES(1);");
    assert!(ok, "creating the database: {out}");
    let mut cmd = command("sqlite3");
    cmd.arg(&db);
    let mut t = Target::spawn(cmd, &db.to_string_lossy());
    let stdin = t.stdin.as_mut().unwrap();
    stdin
        .write_all(b"BEGIN EXCLUSIVE;\nINSERT INTO t VALUES(2);\nSELECT 'in transaction';\n")
        .unwrap();
    stdin.flush().unwrap();
    t.stdout.expect_line("in transaction");
    let locked = |when: &str| assert_sqlite_locked(&db, when);
    locked("before the checkpoint");
    t.dump_kill(&ck);

    let mut r = Restored::of(&ck, &t);
    r.assert_same_pid();
    // It answers: it runs, so its lock was taken back (before it resumed). A second
    // sqlite3 any earlier would find the journal hot and roll the transaction back.
    r.write_stdin(b"SELECT 'running';\n");
    r.stdout.expect_line("running");
    locked("after the restore");
    r.write_stdin(b"COMMIT;\nSELECT 'rows ' || count(*) FROM t;\n.quit\n");
    r.stdout.expect_line("rows 2");
    r.wait_success();
    let (ok, out) = second_sqlite(&db, "SELECT count(*) FROM t;");
    assert!(ok && out.trim() == "2", "the committed row is there: {out}");
}

/// `locks try DIR what`: whether another process could take that lock of `locks tree`.
fn can_take(dir: &Path, what: &str) -> bool {
    let out = run(&mut locks("try", dir, &[what]));
    match out.status.code() {
        Some(0) => true,
        Some(1) => false,
        _ => panic!("locks try {what}: {out:?}"),
    }
}

#[test]
fn a_lock_shared_across_fork_comes_back_as_one() {
    let d = tempdir();
    let ck = d.join("ckpt");
    let mut t = Target::spawn(locks("tree", d.path(), &[]), "locks");
    let child: i32 = t.stdout.expect_prefix("child ")["child ".len()..]
        .parse()
        .unwrap();
    t.stdout.expect_line("ready");
    t.dump_kill(&ck);
    wait_pid_free(child);
    let _child = KillOnDrop(child);

    let mut r = Restored::of(&ck, &t);
    r.assert_same_pid();
    // Running: every process of the tree was finished, locks taken, before any resumed.
    touch(&d.join("check"));
    r.stdout.expect_line("running");
    assert!(pid_exists(child), "the child {child} was restored");
    assert!(!can_take(d.path(), "flock"), "the flock came back");
    assert!(!can_take(d.path(), "ofd"), "the OFD lock came back");
    // The child gives each up through its own descriptor: one lock each, shared by the
    // parent and the child, so nobody holds them any more.
    touch(&d.join("unlock"));
    r.stdout.expect_line("unlocked");
    assert!(
        can_take(d.path(), "flock"),
        "the flock was one, now given up"
    );
    assert!(
        can_take(d.path(), "ofd"),
        "the OFD lock was one, now given up"
    );
    touch(&d.join("stop"));
    r.stdout.expect_line("tree ok");
    r.wait_success();
}
