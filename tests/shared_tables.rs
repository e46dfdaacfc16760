//! A descriptor table (CLONE_FILES) or fs state (CLONE_FS: cwd, root, umask) shared
//! between a parent and its child stays shared after a restore (issue 9): what the
//! child changes after the restore, the parent sees.
mod common;

use common::*;
use std::ffi::OsStr;

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

fn child_of(t: &mut Target) -> i32 {
    let child = t.stdout.expect_prefix("child ")["child ".len()..]
        .parse()
        .unwrap();
    t.stdout.expect_line("ready");
    child
}

/// The descriptor numbers open in `pid`.
fn fd_numbers(pid: i32) -> Vec<i32> {
    let mut fds: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    fds.sort_unstable();
    fds
}

fn stays_shared(what: &str) {
    let d = tempdir();
    let (stop, ck) = (d.join("stop"), d.join("ckpt"));
    let mut t = Target::start("sharing", &[os(what), stop.as_os_str()]);
    let child = child_of(&mut t);
    let fds = (fd_numbers(t.pid), fd_numbers(child));
    t.dump_kill(&ck);
    wait_pid_free(child);
    let info = String::from_utf8_lossy(&ckpt([os("info"), ck.as_os_str()]).stdout).to_string();
    assert!(
        info.contains("shares with its parent"),
        "ckpt info says what the child shares: {info}"
    );

    let mut r = Restored::of(&ck, &t);
    r.assert_same_pid();
    r.stdout.expect_prefix("tick ");
    assert_eq!(
        children(t.pid),
        vec![child],
        "the child is back with its PID"
    );
    assert_eq!(
        (fd_numbers(t.pid), fd_numbers(child)),
        fds,
        "the restored processes have the descriptors they had, and no other"
    );
    touch(&stop);
    r.stdout.expect_line("sharing ok");
    r.wait_success();
}

#[test]
fn a_descriptor_table_shared_with_the_parent_stays_shared() {
    stays_shared("files");
}

#[test]
fn fs_state_shared_with_the_parent_stays_shared() {
    stays_shared("fs");
}

fn stays_shared_as_user(what: &str) {
    let (d, exe, ids) = test_user_dir("sharing");
    let (stop, ck) = (d.join("stop"), d.join("ckpt"));
    let mut c = setpriv_test_user(&exe, ids);
    c.args([os(what), stop.as_os_str()]);
    let mut t = Target::spawn(c, &exe.to_string_lossy());
    child_of(&mut t);
    dump_kill_as(&mut t, &ck, ids);

    let mut r = restore_as(&ck, ids);
    r.stdout.expect_prefix("tick ");
    touch(&stop);
    r.stdout.expect_line("sharing ok");
    let status = r.wait();
    assert!(status.success(), "restore as {TEST_USER}: {status:?}");
}

#[test]
fn a_shared_descriptor_table_comes_back_for_an_ordinary_user() {
    stays_shared_as_user("files");
}

#[test]
fn shared_fs_state_comes_back_for_an_ordinary_user() {
    stays_shared_as_user("fs");
}
