//! Private mappings of memfds and tmpfs files keep every page (issue 9, memory):
//! `testdata/filemaps` maps memfds and tmpfs files (named, deleted) MAP_PRIVATE, with
//! pages written (private copies), read, untouched, and rewritten in the file after the
//! mapping was made, plus a mapping at an offset, a shared one, and one whose memfd
//! descriptor is closed; and it runs a memfd with fexecve. After `dump --kill` and a
//! restore every page is as it was and the memfd still runs (before the fix: "Text
//! file busy", the restored descriptor was a second, writing, open of the memfd).
mod common;

use common::*;
use std::ffi::OsStr;

#[test]
fn private_file_mappings_and_an_executable_memfd_come_back() {
    let d = tempdir();
    let (stop, ck) = (d.join("stop"), d.join("ckpt"));
    let shm = tempfile::tempdir_in("/dev/shm").unwrap();
    let mut t = Target::start(
        "filemaps",
        &[stop.as_os_str(), shm.path().as_os_str(), os("orphan")],
    );
    t.stdout.expect_line("ready");
    t.dump_kill(&ck);

    let mut r = Restored::of(&ck, &t);
    r.assert_same_pid();
    touch(&stop);
    r.stdout.expect_line("filemaps ok");
    r.wait_success();
}

#[test]
fn private_file_mappings_come_back_for_an_ordinary_user() {
    let (d, exe, ids) = test_user_dir("filemaps");
    let (stop, ck) = (d.join("stop"), d.join("ckpt"));
    let shm = tempfile::tempdir_in("/dev/shm").unwrap();
    chown_tree(shm.path(), ids);
    let args: [&OsStr; 2] = [stop.as_os_str(), shm.path().as_os_str()];
    let mut c = setpriv_test_user(&exe, ids);
    c.args(args);
    let mut t = Target::spawn(c, &exe.to_string_lossy());
    t.stdout.expect_line("ready");
    dump_kill_as(&mut t, &ck, ids);

    let mut r = restore_as(&ck, ids);
    touch(&stop);
    r.stdout.expect_line("filemaps ok");
    let status = r.wait();
    assert!(status.success(), "restore as {TEST_USER}: {status:?}");
}

/// Without privileges a memfd that is only mapped (its descriptor closed) cannot be
/// opened (/proc/PID/map_files needs them): its content is read through the mapping
/// (/proc/PID/mem), and every page of every mapping comes back (it used to be refused).
#[test]
fn a_mapping_only_memfd_comes_back_for_an_ordinary_user() {
    let (d, exe, ids) = test_user_dir("filemaps");
    let (stop, ck) = (d.join("stop"), d.join("ckpt"));
    let shm = tempfile::tempdir_in("/dev/shm").unwrap();
    chown_tree(shm.path(), ids);
    let mut c = setpriv_test_user(&exe, ids);
    c.args([stop.as_os_str(), shm.path().as_os_str(), os("orphan")]);
    let mut t = Target::spawn(c, &exe.to_string_lossy());
    t.stdout.expect_line("ready");
    dump_kill_as(&mut t, &ck, ids);

    let mut r = restore_as(&ck, ids);
    touch(&stop);
    r.stdout.expect_line("filemaps ok");
    let status = r.wait();
    assert!(status.success(), "restore as {TEST_USER}: {status:?}");
}
