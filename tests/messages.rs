//! Messages that name their true cause (issue #7, item 6), end to end:
//!
//! - a dump of a process (or of one thread of it) that strace is attached to
//!   names strace and its pid, leaves the target running and still traced,
//!   and succeeds once strace has gone;
//! - a dump of PID 1 (as an ordinary user) and of a kernel thread (as root)
//!   says what they are instead of asking for root;
//! - an ordinary user on a root-owned 0700 checkpoint directory is told
//!   "permission denied" and who owns it (`ckpt info` and `ckpt restore`,
//!   on the directory and on its `latest`), not that it does not exist; the
//!   checkpoint stays restorable by root;
//! - a token file its owner cannot read (mode 0000) is named, with the cause;
//! - a dump SIGKILLed while it writes leaves its hidden partial directory:
//!   `ckpt info` warns about it (and still describes the checkpoint), the
//!   next dump warns that it removed it and reaps the killed dump's snapshot
//!   copy (instead of checkpointing it as a zombie of the target); the target
//!   ran on throughout and the newest generation restores;
//! - a dump interrupted by SIGTERM, SIGINT or SIGHUP removes its partial
//!   directory, says so in one error line, and leaves the target running,
//!   not stopped, with no leftover child; the previous generation restores.
//!
//! These tests run as root (they create the user `ckpttest`, and use strace).
//! Timeouts are only a safety net.
mod common;

use common::*;
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::sync::Mutex;

// ---------------------------------------------------------------- helpers

/// `TracerPid:` of one thread (0: not traced).
fn tracer_of(pid: i32, tid: i32) -> i32 {
    let s = fs::read_to_string(format!("/proc/{pid}/task/{tid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/task/{tid}/status: {e}"));
    s.lines()
        .find_map(|l| l.strip_prefix("TracerPid:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("TracerPid in status")
}

/// `strace -p TID` writing its trace nowhere.
fn strace(tid: i32) -> Child {
    command("strace")
        .args(["-q", "-o", "/dev/null", "-p", &tid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start strace (apt-get install strace; .ci/deps installs it)")
}

/// Ends strace with SIGTERM (it detaches first) and waits until `tid` is
/// no longer traced.
fn end_strace(mut s: Child, pid: i32, tid: i32) {
    send_signal(s.id() as i32, libc::SIGTERM);
    wait_child(&mut s, "strace");
    wait_until("strace to detach", || tracer_of(pid, tid) == 0);
}

fn dump_args(pid: i32, dir: &Path) -> Vec<std::ffi::OsString> {
    vec![
        "dump".into(),
        pid.to_string().into(),
        "--dir".into(),
        dir.into(),
    ]
}

/// Hidden unfinished generations in a checkpoint directory:
/// `.ckpt_*.tmp.<pid of the writer>`.
fn partial_dirs(ckpt_dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = fs::read_dir(ckpt_dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with(".ckpt_") && n.contains(".tmp.")
        })
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}

// ---------------------------------------------------------------- 1. another tracer

/// A process strace is attached to: the dump names strace, not privileges;
/// the target runs on, still traced; without strace the dump works.
#[test]
fn dump_of_a_process_traced_by_strace_names_the_tracer() {
    let d = tempdir();
    let (out, stop, ck) = (d.join("out"), d.join("stop"), d.join("ckpt"));
    let mut t = Target::start("counter", &[out.as_os_str(), stop.as_os_str(), os("20")]);
    t.stdout.expect_line("ready");
    let s = strace(t.pid);
    let spid = s.id() as i32;
    wait_until("strace to attach", || tracer_of(t.pid, t.pid) == spid);

    let res = ckpt(dump_args(t.pid, &ck));
    let line = assert_error(&res, "dump of a process strace is attached to");
    let want = format!(
        "process {} is already traced by process {spid} (strace); ckpt cannot attach while another tracer is attached",
        t.pid
    );
    assert!(line.contains(&want), "expected {want:?} in: {line}");
    assert!(
        !line.contains("CAP_SYS_PTRACE") && !line.contains("root"),
        "the cause is the other tracer, not privileges: {line}"
    );
    // nothing lost: still running, still strace's, making progress, no generation.
    // (Under strace it is in a tracing stop, 't', at every system call: only a
    // group stop, 'T', or its end would be harm.)
    assert_eq!(tracer_of(t.pid, t.pid), spid, "strace lost its tracee");
    let state = proc_state(t.pid);
    assert!(
        !matches!(state, Some('T' | 'Z' | 'X') | None),
        "process {} is in state {state:?}",
        t.pid
    );
    for _ in 0..3 {
        t.stdout.expect("a line of progress", |_| true);
    }
    assert!(!ck.join("latest").exists(), "a generation was published");
    assert!(
        partial_dirs(&ck).is_empty(),
        "a partial generation was left"
    );

    end_strace(s, t.pid, t.pid);
    dump(t.pid, &ck, false);
    assert_running_not_stopped(t.pid);
    touch(&stop);
    t.stdout.expect_prefix("done ");
    assert!(t.wait().success());
}

/// strace attached to one worker thread only: the leader can be seized, the
/// thread cannot; the message names the thread and strace, and the leader
/// is let go again.
#[test]
fn dump_of_a_process_with_one_thread_traced_names_the_thread_and_tracer() {
    let d = tempdir();
    let stop = d.join("stop");
    let mut t = Target::start("threads", &[stop.as_os_str(), os("4")]);
    let tid_line = t.stdout.expect_prefix("tid ");
    let tid: i32 = tid_line.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert_ne!(tid, t.pid);
    t.stdout.expect_line("ready");
    let s = strace(tid);
    let spid = s.id() as i32;
    wait_until("strace to attach", || tracer_of(t.pid, tid) == spid);

    let ck = d.join("ckpt");
    let res = ckpt(dump_args(t.pid, &ck));
    let line = assert_error(&res, "dump of a process one thread of which strace traces");
    let want = format!(
        "thread {tid} of process {} is already traced by process {spid} (strace); ckpt cannot attach while another tracer is attached",
        t.pid
    );
    assert!(line.contains(&want), "expected {want:?} in: {line}");
    assert!(
        !line.contains("CAP_SYS_PTRACE"),
        "the cause is the other tracer, not privileges: {line}"
    );
    assert_eq!(tracer_of(t.pid, tid), spid, "strace lost its tracee");
    for other in tids(t.pid) {
        if other != tid {
            assert_eq!(tracer_of(t.pid, other), 0, "thread {other} is still traced");
        }
    }
    // The threads ckpt seized are let go (the one under strace stops at each of its
    // system calls, 't': that one is strace's).
    for other in tids(t.pid) {
        let state = fs::read_to_string(format!("/proc/{}/task/{other}/stat", t.pid))
            .ok()
            .and_then(|st| st.rsplit(") ").next()?.chars().next());
        assert!(
            !matches!(state, Some('T' | 'Z' | 'X')) && (other == tid || state != Some('t')),
            "thread {other} is in state {state:?}"
        );
    }
    t.stdout.expect_prefix("round ");
    assert!(!ck.join("latest").exists(), "a generation was published");

    end_strace(s, t.pid, tid);
    dump(t.pid, &ck, false);
    touch(&stop);
    t.stdout.expect_prefix("threads ok");
    assert!(t.wait().success());
}

// ---------------------------------------------------------------- 1b. init, kernel threads

/// A kernel thread (PF_KTHREAD in the flags, field 9 of /proc/PID/stat).
fn a_kernel_thread() -> i32 {
    const PF_KTHREAD: u64 = 0x0020_0000;
    let mut pids: Vec<i32> = fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort();
    pids.into_iter()
        .find(|p| {
            fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    let rest = s[s.rfind(')')? + 2..].to_string();
                    rest.split_whitespace().nth(6)?.parse::<u64>().ok()
                })
                .is_some_and(|flags| flags & PF_KTHREAD != 0)
        })
        .expect("no kernel thread visible in /proc")
}

/// PID 1 (tried by an ordinary user) and a kernel thread (tried by root):
/// the refusal says what they are, not that another user's process needs root.
#[test]
fn dump_of_init_or_a_kernel_thread_says_what_it_is() {
    assert_root("dump_of_init_or_a_kernel_thread_says_what_it_is");
    ensure_test_user();
    let d = tempdir();
    open_up(d.path(), &d.join("shared"));
    let ck = d.join("shared/ckpt");

    let mut cmd = as_test_user(ckpt_bin());
    cmd.args(dump_args(1, &ck));
    let res = run(&mut cmd);
    let line = assert_error(&res, "dump of PID 1 by an ordinary user");
    assert!(
        line.contains("process 1 ") && line.contains("init process"),
        "the refusal should say that PID 1 is init: {line}"
    );
    assert!(
        !line.contains("another user"),
        "the cause is not the owner: {line}"
    );

    let kt = a_kernel_thread();
    let res = ckpt(dump_args(kt, &ck));
    let line = assert_error(&res, "dump of a kernel thread");
    assert!(
        line.contains(&format!("process {kt} ")) && line.contains("is a kernel thread"),
        "the refusal should say that {kt} is a kernel thread: {line}"
    );
    assert!(
        !line.contains("CAP_SYS_PTRACE"),
        "root has the privileges; the cause is the kind of process: {line}"
    );
    assert!(!ck.join("latest").exists(), "a generation was published");
    assert!(pid_exists(1) && pid_exists(kt));
}

// ---------------------------------------------------------------- 2. unreadable directory

/// Root's checkpoint (a 0700 directory) seen by an ordinary user: permission
/// denied, naming the owner, for info and restore, on the directory and on
/// its `latest`; nothing is created, and root can still restore it.
#[test]
fn unreadable_checkpoint_directory_says_permission_denied() {
    assert_root("unreadable_checkpoint_directory_says_permission_denied");
    ensure_test_user();
    let d = tempdir();
    open_up(d.path(), &d.join("shared"));
    let exe = d.join("shared/counter");
    copy_program(&testdata("counter"), &exe);
    let (out, stop, ck) = (
        d.join("shared/out"),
        d.join("shared/stop"),
        d.join("shared/ckpt"),
    );
    let mut t = Target::start_path(&exe, &[out.as_os_str(), stop.as_os_str(), os("20")]);
    t.stdout.expect_line("ready");
    t.dump_kill(&ck);
    let mode = fs::metadata(&ck).unwrap().permissions().mode() & 0o7777;
    assert_eq!(
        mode, 0o700,
        "ckpt should create the checkpoint directory 0700"
    );

    for verb in ["info", "restore"] {
        for dir in [ck.clone(), ck.join("latest")] {
            let mut cmd = as_test_user(ckpt_bin());
            cmd.arg(verb).arg(&dir);
            let res = run(&mut cmd);
            let what = format!("ckpt {verb} {} as {TEST_USER}", dir.display());
            let line = assert_error(&res, &what);
            assert!(
                line.contains(&format!(
                    "cannot read checkpoint directory {}",
                    dir.display()
                )) && line.contains("permission denied"),
                "{what}: should say permission denied on the directory: {line}"
            );
            assert!(
                line.contains("belongs to user root"),
                "{what}: should name the owner: {line}"
            );
            assert!(
                !line.contains("does not exist"),
                "{what}: it does exist: {line}"
            );
        }
    }
    assert!(
        pids_running(&exe.to_string_lossy()).is_empty(),
        "a refused restore started a process"
    );

    // nothing lost: root restores it, and it counts on
    let mut r = Restored::start(&ck, t.pid, &t.marker);
    r.assert_same_pid();
    touch(&stop);
    r.stdout.expect_prefix("done ");
    r.wait_success();
}

// ---------------------------------------------------------------- 3. unreadable token

/// A token file its owner cannot read (0000): the error names the file and
/// says why, for --token-file and for CKPT_TOKEN_FILE.
#[test]
fn unreadable_token_file_is_named() {
    assert_root("unreadable_token_file_is_named");
    let (uid, gid) = ensure_test_user();
    let d = tempdir();
    open_up(d.path(), &d.join("shared"));
    let token = d.join("shared/token");
    fs::write(&token, "0123456789abcdef-messages-test\n").unwrap();
    std::os::unix::fs::chown(&token, Some(uid), Some(gid)).unwrap();
    fs::set_permissions(&token, fs::Permissions::from_mode(0o000)).unwrap();

    let with_option = {
        let mut c = as_test_user(ckpt_bin());
        c.args(["command", "--coord-port", "9", "--token-file"])
            .arg(&token)
            .arg("s");
        c
    };
    let with_env = {
        let mut c = as_test_user(ckpt_bin());
        c.args(["command", "--coord-port", "9", "s"])
            .env("CKPT_TOKEN_FILE", &token);
        c
    };
    for (what, mut cmd) in [("--token-file", with_option), ("CKPT_TOKEN_FILE", with_env)] {
        let res = run(&mut cmd);
        let line = assert_error(&res, &format!("ckpt command with an unreadable {what}"));
        assert!(
            line.contains(&format!("cannot read token file {}", token.display()))
                && line.contains("permission denied"),
            "{what}: should name the token file and say permission denied: {line}"
        );
        assert!(
            line.contains("mode 0000"),
            "{what}: should say what is wrong with the file: {line}"
        );
    }
    // nothing changed
    let md = fs::metadata(&token).unwrap();
    assert_eq!(md.permissions().mode() & 0o7777, 0);
    assert_eq!(
        fs::read_to_string(&token).unwrap(),
        "0123456789abcdef-messages-test\n"
    );
}

// ---------------------------------------------------------------- 4. interrupted dumps

/// The two big-memory tests one at a time (two shared cores).
static BIG: Mutex<()> = Mutex::new(());

fn big() -> std::sync::MutexGuard<'static, ()> {
    BIG.lock().unwrap_or_else(|e| e.into_inner())
}

/// The partial directory written by the ckpt process `writer`, if it exists.
fn partial_dir_of(ckpt_dir: &Path, writer: i32) -> Option<PathBuf> {
    let suffix = format!(".tmp.{writer}");
    partial_dirs(ckpt_dir)
        .into_iter()
        .find(|p| p.to_string_lossy().ends_with(&suffix))
}

/// Bytes written so far into the image files of a partial directory.
fn bytes_in(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// `ckpt dump PID --dir DIR` started in the background.
/// With `--full`: every page is written, also when an earlier generation holds it
/// (the tests kill or interrupt the dump while it writes).
fn spawn_dump(pid: i32, dir: &Path) -> Child {
    let mut cmd = ckpt_cmd();
    cmd.args(dump_args(pid, dir))
        .arg("--full")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    eprintln!("$ {cmd:?} &");
    cmd.spawn().expect("start ckpt dump")
}

/// Waits for a background ckpt and collects what it printed.
fn finish(mut child: Child, what: &str) -> Output {
    let status = wait_child(&mut child, what);
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_end(&mut stderr)
        .unwrap();
    eprintln!(
        "{what} -> {status:?}\n  stderr: {}",
        String::from_utf8_lossy(&stderr).trim_end()
    );
    Output {
        status,
        stdout,
        stderr,
    }
}

fn stderr_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Children of a process (all its threads).
fn children_of(pid: i32) -> Vec<i32> {
    let mut v = Vec::new();
    for tid in tids(pid) {
        if let Ok(s) = fs::read_to_string(format!("/proc/{pid}/task/{tid}/children")) {
            v.extend(s.split_whitespace().filter_map(|c| c.parse::<i32>().ok()));
        }
    }
    v
}

/// The generation `latest` names, and how many complete ones there are.
fn generations(ckpt_dir: &Path) -> (PathBuf, usize) {
    let info = info_json(ckpt_dir);
    let gen = PathBuf::from(info["generation"].as_str().expect("info: generation"));
    let n = info["generations"]
        .as_array()
        .expect("info: generations")
        .len();
    (fs::canonicalize(gen).unwrap(), n)
}

/// A dump SIGKILLed while it writes leaves its partial directory; `ckpt
/// info` warns about it, the next dump warns that it removed it; the target
/// ran on, and the newest generation restores.
#[test]
fn dump_killed_midway_is_reported_by_info_and_removed_by_the_next_dump() {
    let _g = big();
    let d = tempdir();
    let (stop, ck) = (d.join("stop"), d.join("ckpt"));
    let mut t = Target::start("bigmem", &[stop.as_os_str(), os("1024")]);
    t.stdout.expect_line("ready");
    dump(t.pid, &ck, false);
    let (gen1, _) = generations(&ck);

    let child = spawn_dump(t.pid, &ck);
    let writer = child.id() as i32;
    // Killed while it writes memory (not while it injects a system call into the
    // target, which no tracer can survive unharmed).
    let mut partial = None;
    wait_until(
        "the dump to write 64 MiB into its partial directory",
        || {
            partial = partial_dir_of(&ck, writer);
            partial.as_deref().is_some_and(|p| bytes_in(p) >= 64 << 20)
        },
    );
    let partial = partial.unwrap();
    send_signal(writer, libc::SIGKILL);
    let res = finish(child, "the SIGKILLed dump");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&res.status),
        Some(libc::SIGKILL)
    );
    assert!(
        partial.is_dir(),
        "the killed dump's partial directory is gone"
    );
    assert_running_not_stopped(t.pid);

    // ckpt info: a warning, and the checkpoint described as before
    let res = ckpt(["info".as_ref(), ck.as_os_str()]);
    assert_success(
        &res,
        "ckpt info with an unfinished checkpoint in the directory",
    );
    let lines = stderr_lines(&res);
    let want = format!(
        "ckpt: warning: unfinished checkpoint left by an interrupted dump (pid {writer}): {}",
        partial.display()
    );
    assert!(
        lines.iter().any(|l| l.starts_with(&want)),
        "ckpt info should warn {want:?}; stderr: {lines:?}"
    );
    assert!(
        String::from_utf8_lossy(&res.stdout).contains(&format!("generation  {}", gen1.display())),
        "ckpt info should still describe the complete generation"
    );
    assert!(partial.is_dir(), "ckpt info removed the partial directory");

    // the next dump removes it, and says so
    let res = ckpt(dump_args(t.pid, &ck));
    assert_success(&res, "the next dump");
    let lines = stderr_lines(&res);
    let want = format!(
        "ckpt: warning: removed an unfinished checkpoint left by an interrupted dump (pid {writer}): {}",
        partial.display()
    );
    assert!(
        lines.iter().any(|l| l == &want),
        "the next dump should warn {want:?}; stderr: {lines:?}"
    );
    assert!(!partial.exists(), "the partial directory is still there");
    assert!(partial_dirs(&ck).is_empty(), "{:?}", partial_dirs(&ck));
    let (gen2, n) = generations(&ck);
    assert_ne!(gen2, gen1);
    assert_eq!(n, 2);
    assert_running_not_stopped(t.pid);
    assert!(
        children_of(t.pid).is_empty(),
        "the killed dump's snapshot copy was not reaped: {:?}",
        children_of(t.pid)
    );
    let zombies = info_json(&ck)["zombies"].clone();
    assert_eq!(
        zombies,
        serde_json::json!([]),
        "the killed dump's snapshot copy was checkpointed as a zombie of the target"
    );

    // nothing lost: the target's memory is intact, and the newest generation restores
    touch(&stop);
    t.stdout.expect_line("verify ok 1024 MiB");
    assert!(t.wait().success());
    wait_pid_free(t.pid);
    let mut r = Restored::of(&ck, &t);
    r.stdout.expect_line("verify ok 1024 MiB");
    r.wait_success();
}

/// SIGTERM, SIGINT and SIGHUP in the middle of a dump: it removes its
/// partial directory, says so in one error line, and lets the target go
/// (running, not stopped, no leftover child); the previous generation stays
/// the newest, and restores.
#[test]
fn dump_interrupted_by_a_signal_removes_its_partial_dir() {
    let _g = big();
    let d = tempdir();
    let (stop, ck) = (d.join("stop"), d.join("ckpt"));
    let mut t = Target::start("bigmem", &[stop.as_os_str(), os("1024")]);
    t.stdout.expect_line("ready");
    dump(t.pid, &ck, false);
    let (gen1, _) = generations(&ck);

    for (sig, name) in [
        (libc::SIGTERM, "SIGTERM"),
        (libc::SIGINT, "SIGINT"),
        (libc::SIGHUP, "SIGHUP"),
    ] {
        let child = spawn_dump(t.pid, &ck);
        let writer = child.id() as i32;
        wait_until("the dump's partial directory", || {
            partial_dir_of(&ck, writer).is_some()
        });
        send_signal(writer, sig);
        let res = finish(child, &format!("the dump sent {name}"));
        let line = assert_error(&res, &format!("a dump interrupted by {name}"));
        assert!(
            line.contains(&format!("interrupted by {name}"))
                && line.contains(&format!("process {}", t.pid))
                && line.contains("unfinished checkpoint was removed"),
            "the error should say that {name} interrupted the dump of {} and that its unfinished checkpoint was removed: {line}",
            t.pid
        );
        assert!(
            partial_dirs(&ck).is_empty(),
            "{name}: a partial directory was left: {:?}",
            partial_dirs(&ck)
        );
        assert_running_not_stopped(t.pid);
        assert_eq!(
            tracer_of(t.pid, t.pid),
            0,
            "{name}: the target is still traced"
        );
        assert!(
            children_of(t.pid).is_empty(),
            "{name}: the target has a leftover child (snapshot copy): {:?}",
            children_of(t.pid)
        );
        assert_eq!(
            generations(&ck),
            (gen1.clone(), 1),
            "{name}: generations changed"
        );
    }

    touch(&stop);
    t.stdout.expect_line("verify ok 1024 MiB");
    assert!(t.wait().success());
    wait_pid_free(t.pid);
    let mut r = Restored::of(&ck, &t);
    r.stdout.expect_line("verify ok 1024 MiB");
    r.wait_success();
}
