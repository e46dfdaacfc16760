//! Bad input: every case must end with exactly one `ckpt: error:` line on
//! stderr and exit status 1.  A refused restore creates no process; a
//! refused dump leaves the target running (not stopped, making progress)
//! and publishes no generation.
mod common;

use common::*;
use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// A valid checkpoint of `counter` run from its own copy of the binary (so
/// that a leftover process is recognisable, and the binary replaceable).
struct Image {
    d: TestDir,
    exe: PathBuf,
    out: PathBuf,
    pid: i32,
    generation: PathBuf,
    /// path of the image file relative to the generation directory
    image_rel: PathBuf,
    proc_info: serde_json::Value,
}

fn make_image() -> Image {
    let d = tempdir();
    let exe = d.join("prog/counter");
    fs::create_dir_all(exe.parent().unwrap()).unwrap();
    copy_program(&testdata("counter"), &exe);
    let (out, stop, ck) = (d.join("out"), d.join("stop"), d.join("ckpt"));
    let mut t = Target::start_path(&exe, &[out.as_os_str(), stop.as_os_str(), os("20")]);
    t.stdout.expect_line("ready");
    t.dump_kill(&ck);

    let info = info_json(&ck);
    let generation =
        fs::canonicalize(info["generation"].as_str().expect("info: generation")).unwrap();
    let procs = info["processes"].as_array().expect("info: processes");
    assert_eq!(procs.len(), 1);
    let proc_info = procs[0].clone();
    let image = fs::canonicalize(proc_info["image"].as_str().expect("info: image")).unwrap();
    let image_rel = image
        .strip_prefix(&generation)
        .unwrap_or_else(|_| {
            panic!(
                "image {} is not inside generation {}",
                image.display(),
                generation.display()
            )
        })
        .to_path_buf();
    Image {
        d,
        exe,
        out,
        pid: t.pid,
        generation,
        image_rel,
        proc_info,
    }
}

impl Image {
    /// A fresh copy of the generation directory, and the path of the image
    /// file in it.
    fn copy(&self, name: &str) -> (PathBuf, PathBuf) {
        let dst = self.d.join(name).join(self.generation.file_name().unwrap());
        copy_dir(&self.generation, &dst);
        let image = dst.join(&self.image_rel);
        (dst, image)
    }

    fn field(&self, key: &str) -> u64 {
        json_u64(&self.proc_info, key)
    }

    /// `ckpt restore DIR` must fail cleanly and create no process.
    fn assert_refused(&self, dir: &Path, what: &str) -> String {
        let lines_before = file_lines(&self.out).len();
        let out = ckpt(["restore".as_ref(), dir.as_os_str()]);
        let line = assert_error(&out, what);
        assert!(
            !pid_exists(self.pid),
            "{what}: PID {} exists after the refused restore",
            self.pid
        );
        let marker = self.d.path().to_string_lossy().to_string();
        let left = pids_running(&marker);
        for &p in &left {
            kill_if_running(p, &marker);
        }
        assert!(
            left.is_empty(),
            "{what}: the refused restore left processes {left:?}"
        );
        assert_eq!(
            file_lines(&self.out).len(),
            lines_before,
            "{what}: something ran and wrote to the output file"
        );
        line
    }
}

fn flip_byte(path: &Path, offset: u64) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).unwrap();
    b[0] ^= 0x5a;
    f.write_all_at(&b, offset).unwrap();
}

#[test]
fn restore_refuses_truncated_image() {
    let img = make_image();
    let (meta_off, meta_len) = (img.field("meta_offset"), img.field("meta_len"));
    let (pages_off, pages_len) = (img.field("pages_offset"), img.field("pages_len"));
    let cases = [
        ("drop the last byte", meta_off + meta_len - 1),
        ("cut in the middle of the metadata", meta_off + meta_len / 2),
        ("cut in the middle of the pages", pages_off + pages_len / 2),
        ("cut inside the header", 100),
        ("empty file", 0),
    ];
    for (i, (what, len)) in cases.iter().enumerate() {
        let (dir, image) = img.copy(&format!("trunc{i}"));
        let size = fs::metadata(&image).unwrap().len();
        assert!(
            *len < size,
            "{what}: {len} is not shorter than the image ({size})"
        );
        OpenOptions::new()
            .write(true)
            .open(&image)
            .unwrap()
            .set_len(*len)
            .unwrap();
        img.assert_refused(
            &dir,
            &format!("truncated image ({what}, {len} of {size} bytes)"),
        );
    }
}

#[test]
fn restore_refuses_flipped_metadata_byte() {
    let img = make_image();
    let (off, len) = (img.field("meta_offset"), img.field("meta_len"));
    assert!(len > 0, "empty metadata");
    for (i, at) in [off + len / 2, off, off + len - 1].into_iter().enumerate() {
        let (dir, image) = img.copy(&format!("meta{i}"));
        flip_byte(&image, at);
        img.assert_refused(&dir, &format!("metadata byte {at} flipped"));
    }
}

#[test]
fn restore_refuses_flipped_page_byte() {
    let img = make_image();
    let (off, len) = (img.field("pages_offset"), img.field("pages_len"));
    assert!(len > 0, "no page data in the image");
    for (i, at) in [off + len / 2, off, off + len - 1].into_iter().enumerate() {
        let (dir, image) = img.copy(&format!("pages{i}"));
        flip_byte(&image, at);
        img.assert_refused(&dir, &format!("page data byte {at} flipped"));
    }
}

#[test]
fn restore_refuses_future_format_version() {
    let img = make_image();
    let (dir, image) = img.copy("version");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&image)
        .unwrap();
    let mut head = [0u8; 12];
    f.read_exact_at(&mut head, 0).unwrap();
    assert_eq!(&head[..8], b"CKPTIMG\0", "image magic");
    assert_eq!(
        u32::from_le_bytes(head[8..12].try_into().unwrap()),
        3,
        "image format version"
    );
    f.write_all_at(&999u32.to_le_bytes(), 8).unwrap();
    drop(f);
    let line = img.assert_refused(&dir, "format version 999");
    assert!(
        line.to_lowercase().contains("version"),
        "the error should name the format version: {line}"
    );
}

#[test]
fn restore_refuses_replaced_executable() {
    let img = make_image();
    // a different program at the same path (new inode, size, content)
    fs::remove_file(&img.exe).unwrap();
    copy_program(&testdata("signals"), &img.exe);
    let line = img.assert_refused(&img.generation, "executable replaced since the checkpoint");
    assert!(
        line.contains("counter"),
        "the error should name the executable {}: {line}",
        img.exe.display()
    );
}

// ---------------------------------------------------------------- dump

/// A running target that a dump was refused for: it must go on running.
fn assert_unharmed(t: &mut Target, dir: &Path, what: &str) {
    assert_running_not_stopped(t.pid);
    assert!(
        !dir.join("latest").exists(),
        "{what}: a generation was published"
    );
    // progress: three more lines after the refused dump
    for _ in 0..3 {
        t.stdout.expect("a line of progress", |_| true);
    }
    assert_running_not_stopped(t.pid);
}

#[test]
fn dump_refuses_missing_pid() {
    let d = tempdir();
    let mut child = command("true").spawn().unwrap();
    let pid = child.id() as i32;
    child.wait().unwrap();
    wait_pid_free(pid);
    let dir = d.join("ckpt");
    let out = ckpt([
        "dump".as_ref(),
        pid.to_string().as_ref(),
        "--dir".as_ref(),
        dir.as_os_str(),
    ]);
    let line = assert_error(&out, "dump of a PID that does not exist");
    assert!(
        line.contains(&pid.to_string()),
        "the error should name PID {pid}: {line}"
    );
    assert!(!dir.join("latest").exists(), "a generation was published");
}

/// An unprivileged user may not dump a root process.  As root, the test
/// creates a user `ckpttest` and runs `runuser -u ckpttest -- ckpt dump` on
/// its own (root) target; as another user, it tries PID 1.
#[test]
fn dump_refuses_untraceable_process() {
    let d = tempdir();
    let dir = d.join("shared/ckpt");
    open_up(d.path(), &d.join("shared"));
    // SAFETY: geteuid(2) takes no argument, touches no memory and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        let out = ckpt([
            "dump".as_ref(),
            "1".as_ref(),
            "--dir".as_ref(),
            dir.as_os_str(),
        ]);
        assert_error(&out, "unprivileged dump of PID 1");
        assert!(!dir.join("latest").exists(), "a generation was published");
        return;
    }

    const USER: &str = TEST_USER;
    ensure_test_user();
    let stop = d.join("stop");
    let mut t = Target::start(
        "counter",
        &[d.join("out").as_os_str(), stop.as_os_str(), os("20")],
    );
    t.stdout.expect_line("ready");

    let mut cmd = command("runuser");
    cmd.args(["-u", USER, "--"])
        .arg(ckpt_bin())
        .args(["dump", &t.pid.to_string(), "--dir"])
        .arg(&dir);
    let out = run(&mut cmd);
    assert_error(&out, "dump of a root process by an unprivileged user");
    assert_unharmed(&mut t, &dir, "untraceable");
    touch(&stop);
    t.stdout.expect_prefix("done ");
    assert!(t.wait().success());
}

/// A process holding a descriptor ckpt does not support: the dump (even
/// with --kill) is refused naming the PID and the descriptor, and the
/// target goes on running.
fn dump_refuses_descriptor(kind: &str, kind_words: &[&str]) {
    let d = tempdir();
    let (stop, dir) = (d.join("stop"), d.join("ckpt"));
    let mut t = Target::start("holdfd", &[os(kind), stop.as_os_str()]);
    let fd_line = t.stdout.expect_prefix("fd ");
    let fd = fd_line.split_whitespace().nth(1).unwrap().to_string();
    t.stdout.expect_line("ready");

    let out = ckpt([
        "dump".as_ref(),
        t.pid.to_string().as_ref(),
        "--dir".as_ref(),
        dir.as_os_str(),
        "--kill".as_ref(),
    ]);
    let line = assert_error(&out, &format!("dump of a process holding {kind}"));
    assert!(
        line.contains(&t.pid.to_string()),
        "the error should name the PID {}: {line}",
        t.pid
    );
    assert!(
        line.contains(&fd),
        "the error should name descriptor {fd}: {line}"
    );
    let lower = line.to_lowercase();
    assert!(
        kind_words.iter().any(|w| lower.contains(w)),
        "the error should name the kind ({}): {line}",
        kind_words.join(" or ")
    );
    assert_unharmed(&mut t, &dir, kind);
    touch(&stop);
    t.stdout.expect_line("done");
    assert!(t.wait().success());
}

#[test]
fn dump_refuses_netlink_socket() {
    dump_refuses_descriptor("netlink", &["netlink", "socket"]);
}

#[test]
fn dump_refuses_io_uring() {
    dump_refuses_descriptor("io_uring", &["io_uring", "io-uring", "uring"]);
}
