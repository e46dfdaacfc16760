//! Seccomp filters survive a checkpoint (issue 9, the `seccomp` attribute group):
//! `testdata/seccomp` stacks two filters in its main thread and one in a worker; after
//! `dump --kill` and a restore each thread's calls are judged as before and it has as
//! many filters. An ordinary user cannot read filters (the kernel wants CAP_SYS_ADMIN):
//! that dump is refused with a message saying so, and the process runs on.
mod common;

use common::*;

#[test]
fn seccomp_filters_come_back_per_thread() {
    assert_root("the seccomp test (installing a filter without no_new_privs)");
    let d = tempdir();
    let (stop, ck) = (d.join("stop"), d.join("ckpt"));
    let mut t = Target::start("seccomp", &[stop.as_os_str()]);
    t.stdout.expect_line("ready");
    t.dump_kill(&ck);

    let mut r = Restored::of(&ck, &t);
    r.assert_same_pid();
    touch(&stop);
    r.stdout.expect_line("seccomp ok");
    r.wait_success();
}

#[test]
fn an_ordinary_user_cannot_read_filters_and_is_told() {
    assert_root("the unprivileged seccomp test");
    let (uid, gid) = ensure_test_user();
    let d = tempdir();
    let stop = d.join("stop");
    let ck = d.join("ckpt");
    // no_new_privs lets the user install the filters.
    let mut cmd = setpriv((uid, gid), &[], &["--no-new-privs"], testdata("seccomp"));
    cmd.arg(&stop);
    let mut t = Target::spawn(cmd, &testdata("seccomp").to_string_lossy());
    t.stdout.expect_line("ready");
    std::fs::create_dir_all(&ck).unwrap();
    std::os::unix::fs::chown(&ck, Some(uid), Some(gid)).unwrap();
    let mut dump = setpriv((uid, gid), &[], &[], ckpt_bin());
    dump.args(["dump", &t.pid.to_string(), "--kill", "--dir"])
        .arg(&ck);
    let out = run(&mut dump);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the dump must fail: {err}");
    assert!(
        err.contains("seccomp") && err.contains("CAP_SYS_ADMIN"),
        "the error says why: {err}"
    );
    assert_running_not_stopped(t.pid);
    touch(&stop);
    t.stdout.expect_line("seccomp ok");
}
