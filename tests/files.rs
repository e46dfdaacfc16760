//! Files and descriptor flags (issue 9): what a restore could silently change about the
//! files a process holds. `testdata/files CASE DIR` sets up one case, is checkpointed
//! with `--kill` and restored, then checks its own state from inside ("ok NAME" per
//! check, "files done 0"): deleted files keep their holes, owner, mode and times; open
//! files keep their times; deleted FIFOs and directories (as a descriptor and as the
//! working directory) come back unlinked; device nodes and O_PATH descriptors come back
//! as what they were; status flags, close-on-exec, shared and separate descriptions and
//! pipe capacity are per descriptor. As root, and as the test user where the state is
//! an ordinary user's. A deleted file larger than `ckpt dump --max-file-size` is refused,
//! naming the process, descriptor, size and option.
mod common;

use common::*;
use std::ffi::OsStr;
use std::path::Path;

/// The restored program's checks: each of `oks` passed, none failed.
fn check_restored(out: &mut Lines, dir: &Path, oks: &[&str]) {
    touch(&dir.join("check"));
    let done = out.expect_prefix("files done ");
    out.assert_no_fail();
    for ok in oks {
        let line = format!("ok {ok}");
        assert!(
            out.seen().contains(&line),
            "the restored program did not check {ok:?}: {:?}",
            out.seen()
        );
    }
    assert_eq!(done, "files done 0");
}

/// `files CASE DIR ARGS` as root: checkpointed, killed, restored, checked.
fn round_trip(case: &str, args: &[&str], oks: &[&str]) {
    let d = tempdir();
    let (dir, ck) = (d.join("files"), d.join("ckpt"));
    std::fs::create_dir(&dir).unwrap();
    let mut argv: Vec<&OsStr> = vec![os(case), dir.as_os_str()];
    argv.extend(args.iter().map(|a| os(a)));
    let mut t = Target::start("files", &argv);
    t.stdout.expect_line("ready");
    t.dump_kill(&ck);
    let mut r = Restored::of(&ck, &t);
    r.assert_same_pid();
    check_restored(&mut r.stdout, &dir, oks);
    r.wait_success();
}

/// The same as the test user, in a directory of theirs.
fn round_trip_as_user(case: &str, args: &[&str], oks: &[&str]) {
    let (d, exe, ids) = test_user_dir("files");
    let (dir, ck) = (d.join("files"), d.join("ckpt"));
    std::fs::create_dir(&dir).unwrap();
    chown_tree(&dir, ids);
    let _sweep = Sweep::new(&d);
    let mut c = setpriv_test_user(&exe, ids);
    c.arg(case).arg(&dir).args(args);
    let mut t = Target::spawn(c, &exe.to_string_lossy());
    t.stdout.expect_line("ready");
    dump_kill_as(&mut t, &ck, ids);
    let mut r = restore_as(&ck, ids);
    check_restored(&mut r.stdout, &dir, oks);
    let status = r.wait();
    assert!(
        status.success(),
        "ckpt restore as {TEST_USER}: {status:?}, stderr {:?}",
        r.stderr.seen()
    );
}

const DELETED: &[&str] = &[
    "deleted nlink",
    "deleted mode",
    "deleted owner",
    "deleted size",
    "deleted blocks",
    "deleted mtime",
    "deleted atime",
    "deleted offset",
    "deleted holes",
    "deleted content",
    "deleted write",
    "mapped nlink",
    "mapped mode",
    "mapped owner",
    "mapped blocks",
    "mapped mtime",
    "mapped atime",
    "mapped holes",
    "mapped content",
    "mapped mapping",
    "O_TMPFILE file",
];

/// A deleted sparse file owned by another user (1234:5678), mode 0640, with old
/// times: its holes (SEEK_DATA/SEEK_HOLE), blocks, owner, mode and times come back; the
/// same for one also mapped (its content comes with the mapping, densely: the holes are
/// punched again), and a file opened O_TMPFILE.
#[test]
fn deleted_file_keeps_holes_owner_mode_and_times() {
    assert_root("the deleted file test (it gives the file to another owner)");
    round_trip("deleted", &["1234", "5678"], DELETED);
}

/// As root, a deleted sparse file that only a mapping holds (its descriptor closed):
/// its holes, owner, mode and times come back too (read and checked through
/// /proc/PID/map_files, which needs root).
#[test]
fn deleted_file_held_only_by_a_mapping_keeps_holes_owner_mode_and_times() {
    assert_root("the mapping-only deleted file test (map_files)");
    let oks: Vec<String> = [
        "nlink", "mode", "owner", "size", "blocks", "mtime", "atime", "holes", "content", "mapping",
    ]
    .iter()
    .map(|c| format!("maponly {c}"))
    .collect();
    let oks: Vec<&str> = oks.iter().map(String::as_str).collect();
    round_trip("deleted", &["1234", "5678"], &oks);
}

#[test]
fn deleted_file_of_an_ordinary_user() {
    round_trip_as_user("deleted", &[], DELETED);
}

/// Files open by path keep their mtime and atime: the restore reads or writes none.
#[test]
fn open_files_keep_their_times() {
    round_trip(
        "mtime",
        &[],
        &["kept mtime", "kept atime", "kept2 mtime", "kept2 atime"],
    );
}

const GHOSTS: &[&str] = &[
    "fifo is an unlinked FIFO",
    "fifo mode",
    "fifo ends are one FIFO",
    "fifo flags",
    "fifo data in flight",
    "fifo works",
    "fifo empty",
    "dir fd is an unlinked directory",
    "dir fd cannot hold new files",
    "dir fd mode",
    "cwd opens",
    "cwd is an unlinked directory",
    "cwd cannot hold new files",
    "cwd mode",
    "getcwd fails",
];

/// A deleted FIFO with data in flight, a deleted directory held as a descriptor and
/// one as the working directory: they come back unlinked, as they were.
#[test]
fn deleted_fifo_and_directories_come_back_unlinked() {
    round_trip("ghosts", &[], GHOSTS);
}

#[test]
fn deleted_fifo_and_directories_of_an_ordinary_user() {
    round_trip_as_user("ghosts", &[], GHOSTS);
}

/// /dev/null, /dev/zero, /dev/urandom and a node made with mknod in a directory of the
/// test's: the same devices at the same paths.
#[test]
fn device_nodes_come_back() {
    assert_root("the device test (mknod)");
    round_trip(
        "devices",
        &["mknod"],
        &[
            "device /dev/null",
            "device path /dev/null",
            "device /dev/zero",
            "device /dev/urandom",
            "null writes",
            "zero reads",
            "urandom reads",
            "urandom nonblock",
            "mynull works",
        ],
    );
}

/// O_PATH descriptors of a file, a directory and a symlink (O_NOFOLLOW): O_PATH again,
/// on the same inodes.
#[test]
fn o_path_descriptors_come_back() {
    round_trip(
        "opath",
        &[],
        &[
            "opath file is O_PATH",
            "opath file same file",
            "opath dir is O_PATH",
            "opath dir same file",
            "opath symlink is O_PATH",
            "opath symlink same file",
            "opath symlink target",
            "opath dir openat",
            "opath file not readable",
        ],
    );
}

/// An O_PATH descriptor's file replaced after the checkpoint: the restore refuses before
/// any process exists, naming the file.
#[test]
fn o_path_on_a_replaced_file_is_refused() {
    let d = tempdir();
    let (dir, ck) = (d.join("files"), d.join("ckpt"));
    std::fs::create_dir(&dir).unwrap();
    let mut t = Target::start("files", &[os("opath"), dir.as_os_str()]);
    t.stdout.expect_line("ready");
    t.dump_kill(&ck);
    let f = dir.join("f");
    std::fs::remove_file(&f).unwrap();
    std::fs::write(&f, b"another file").unwrap();
    let out = ckpt([os("restore"), ck.as_os_str()]);
    let line = assert_error(
        &out,
        "a restore of an O_PATH descriptor whose file was replaced",
    );
    assert!(
        line.contains(&format!("{} is no longer the file", f.display())),
        "{line}"
    );
    assert!(
        !pid_exists(t.pid),
        "a process of the failed restore is left"
    );
}

const FLAGS: &[&str] = &[
    "pipe1 read end nonblocking",
    "pipe1 write end blocking",
    "pipe2 read end blocking, async",
    "pipe2 write end nonblocking",
    "pipe1 read end reopened blocking",
    "pipe2 owner",
    "pipe1 capacity",
    "pipe2 capacity",
    "twice first open",
    "twice second open",
    "twice dup",
    "direct",
    "close-on-exec per descriptor",
    "offsets",
    "dup shares the description",
    "dup shares the offset",
    "second open is its own description",
    "reopened pipe end is its own description",
    "pipe1 works",
];

/// Status flags per descriptor and per end of a pipe, close-on-exec per descriptor,
/// dups sharing their description and separate opens not, pipe capacity.
#[test]
fn status_flags_are_per_descriptor() {
    round_trip("flags", &[], FLAGS);
}

#[test]
fn status_flags_of_an_ordinary_user() {
    round_trip_as_user("flags", &[], FLAGS);
}

/// A deleted file of 2 MiB with `--max-file-size 1M`: refused, naming the process,
/// descriptor, size and option, and the target runs on; with the default limit it is
/// checkpointed and restored.
#[test]
fn deleted_file_over_the_limit_is_refused() {
    let d = tempdir();
    let (dir, ck) = (d.join("files"), d.join("ckpt"));
    std::fs::create_dir(&dir).unwrap();
    let size = (2 << 20).to_string();
    let mut t = Target::start("files", &[os("big"), dir.as_os_str(), os(&size)]);
    let fd_line = t.stdout.expect_prefix("fd ");
    let fd = fd_line.split_whitespace().nth(1).unwrap().to_string();
    t.stdout.expect_line("ready");
    let pid = t.pid.to_string();
    let out = ckpt([
        os("dump"),
        os(&pid),
        os("--dir"),
        ck.as_os_str(),
        os("--kill"),
        os("--max-file-size"),
        os("1M"),
    ]);
    let line = assert_error(&out, "dump of a deleted file over --max-file-size");
    for w in [
        format!("process {pid} fd {fd}"),
        format!("{size} bytes"),
        "--max-file-size".to_string(),
    ] {
        assert!(line.contains(&w), "the error should say {w:?}: {line}");
    }
    assert!(!ck.join("latest").exists(), "a generation was published");
    assert_running_not_stopped(t.pid);
    t.dump_kill(&ck);
    let mut r = Restored::of(&ck, &t);
    r.assert_same_pid();
    check_restored(&mut r.stdout, &dir, &["big content"]);
    r.wait_success();
}
