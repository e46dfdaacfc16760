//! fanotify groups survive a checkpoint (issue 9): `testdata/fanotify` makes a group
//! with an inode mark, a directory mark for its children's opens and an ignored mask;
//! after `dump --kill` and a restore each still reports (or ignores) what it did. An
//! ordinary user's group (FAN_REPORT_FID) cannot be dumped by that user (the marks'
//! paths need open_by_handle_at): refused, naming why, and the program runs on.
mod common;

use common::*;
use std::fs;

#[test]
fn a_fanotify_group_comes_back_with_its_marks() {
    assert_root("fanotify groups (FAN_CLASS_NOTIF)");
    let d = tempdir();
    let (stop, ck, w) = (d.join("stop"), d.join("ckpt"), d.join("w"));
    fs::create_dir(&w).unwrap();
    let mut t = Target::start("fanotify", &[stop.as_os_str(), w.as_os_str()]);
    t.stdout.expect_line("ready");
    t.dump_kill(&ck);

    let mut r = Restored::of(&ck, &t);
    r.assert_same_pid();
    touch(&stop);
    r.stdout.expect_line("fanotify ok");
    r.wait_success();
}

#[test]
fn an_ordinary_users_fanotify_marks_are_refused_and_it_runs_on() {
    let (d, exe, ids) = test_user_dir("fanotify");
    let (stop, ck, w) = (d.join("stop"), d.join("ckpt"), d.join("w"));
    fs::create_dir(&w).unwrap();
    chown_tree(&w, ids);
    let mut c = setpriv_test_user(&exe, ids);
    c.arg(&stop).arg(&w).arg("fid");
    let mut t = Target::spawn(c, &exe.to_string_lossy());
    t.stdout.expect_line("ready");
    let mut c = setpriv_test_user(ckpt_bin(), ids);
    c.args(["dump", &t.pid.to_string(), "--dir"])
        .arg(&ck)
        .arg("--kill");
    let err = assert_error(&run(&mut c), "an ordinary user's dump of fanotify marks");
    assert!(
        err.contains(&format!("process {}", t.pid))
            && err.contains("fanotify mark")
            && err.contains("open_by_handle_at"),
        "the refusal names the mark and why: {err}"
    );
    assert_running_not_stopped(t.pid);
    touch(&stop);
    t.stdout.expect_line("fanotify ok");
    assert!(t.wait().success());
}
