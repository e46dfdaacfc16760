//! Scheduling attributes survive a checkpoint (issue 9, the `sched` attribute group):
//! nice, policy and real-time priority, CPU affinity, I/O priority and timer slack of
//! every thread, and the process's oom_score_adj. `testdata/sched` sets them in two
//! threads, is checkpointed with `dump --kill`, restored, and checks each of its
//! threads from inside ("sched ok" or "FAIL: ..."): as root with a SCHED_FIFO worker,
//! and as an ordinary user (dumped and restored by that user, who restores in a new
//! user and PID namespace).
mod common;

use common::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

/// `program args` as the test user.
fn as_user(program: &Path, args: &[&std::ffi::OsStr], ids: (u32, u32)) -> Command {
    let mut c = setpriv(ids, &[], &[], program);
    c.args(args);
    c
}

#[test]
fn scheduling_comes_back_as_root() {
    assert_root("the scheduling test (its worker takes SCHED_FIFO)");
    let d = tempdir();
    let (stop, ck) = (d.join("stop"), d.join("ckpt"));
    let mut t = Target::start("sched", &[stop.as_os_str(), os("rt")]);
    t.stdout.expect_prefix("worker ");
    t.stdout.expect_line("ready");
    t.dump_kill(&ck);

    let mut r = Restored::of(&ck, &t);
    r.assert_same_pid();
    touch(&stop);
    r.stdout.expect_line("sched ok");
    r.wait_success();
}

#[test]
fn scheduling_comes_back_for_an_ordinary_user() {
    assert_root("the unprivileged scheduling test");
    let ids = ensure_test_user();
    let d = tempdir();
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let (stop, ck) = (d.join("stop"), d.join("ckpt"));
    let prog = testdata("sched");
    let mut t = Target::spawn(
        as_user(&prog, &[stop.as_os_str()], ids),
        &prog.to_string_lossy(),
    );
    t.stdout.expect_prefix("worker ");
    t.stdout.expect_line("ready");

    dump_kill_as(&mut t, &ck, ids);

    let mut r = restore_as(&ck, ids);
    touch(&stop);
    r.stdout.expect_line("sched ok");
    let status = r.wait();
    assert!(
        status.success(),
        "ckpt restore as {TEST_USER}: {status:?}, stderr {:?}",
        r.stderr.seen()
    );
}
