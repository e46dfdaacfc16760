//! `ckpt restore --pidns auto|always|never`: restoring under the original
//! PIDs and TIDs inside a new PID namespace when they are taken on the host,
//! when asked to, or when the user may not choose PIDs (not root).
//!
//! A process restored in a new namespace is found from the host as a
//! descendant of the `ckpt restore` process whose `NSpid` line in
//! `/proc/<host pid>/status` ends with its original PID; its PID namespace
//! (`/proc/<host pid>/ns/pid`) must differ from the test's, its threads'
//! `NSpid` must end with their original TIDs, and its parent must be the
//! namespace's init (PID 1 there), made by ckpt.
mod common;

use common::*;
use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------- /proc

fn status_text(pid: i32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/status")).ok()
}

fn status_ints(text: &str, key: &str) -> Vec<i32> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .map(|v| {
            v.split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn ppid(pid: i32) -> Option<i32> {
    status_ints(&status_text(pid)?, "PPid").first().copied()
}

/// The `NSpid` line of a process: its PID in every namespace from the one
/// of our /proc down to its own (host PID first, PID in its namespace last).
fn nspid(pid: i32) -> Vec<i32> {
    status_text(pid)
        .map(|t| status_ints(&t, "NSpid"))
        .unwrap_or_default()
}

fn ns_link(pid: &str, ns: &str) -> String {
    fs::read_link(format!("/proc/{pid}/ns/{ns}"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/ns/{ns}: {e}"))
        .to_string_lossy()
        .into_owned()
}

fn all_pids() -> Vec<i32> {
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// Every process below `root` (not `root` itself), by PPid.
fn descendants(root: i32) -> Vec<i32> {
    let parent: HashMap<i32, i32> = all_pids()
        .into_iter()
        .filter_map(|p| Some((p, ppid(p)?)))
        .collect();
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let p = found[i];
        found.extend(parent.iter().filter(|&(_, &pp)| pp == p).map(|(&c, _)| c));
        i += 1;
    }
    found.remove(0);
    found
}

/// The TIDs of a process as its own namespace sees them (last NSpid entry of
/// each `/proc/<pid>/task/<tid>/status`).
fn ns_tids(host_pid: i32) -> BTreeSet<i32> {
    let Ok(dir) = fs::read_dir(format!("/proc/{host_pid}/task")) else {
        return BTreeSet::new();
    };
    dir.filter_map(|e| {
        let tid = e.ok()?.file_name().to_str()?.to_string();
        let text = fs::read_to_string(format!("/proc/{host_pid}/task/{tid}/status")).ok()?;
        status_ints(&text, "NSpid").last().copied()
    })
    .collect()
}

// ---------------------------------------------------------------- users

const USER: &str = TEST_USER;

fn is_root() -> bool {
    // SAFETY: geteuid(2) takes no argument, touches no memory and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `runuser -u ckpttest -- PROGRAM`.
fn as_user(program: &Path) -> Command {
    let mut cmd = command("runuser");
    cmd.args(["-u", USER, "--"]).arg(program);
    cmd
}

/// Copies a test program into `dir` (its path is then the marker of its
/// processes, and other users may run it).
fn own_copy(name: &str, dir: &Path) -> PathBuf {
    fs::create_dir_all(dir).unwrap();
    let exe = dir.join(name);
    copy_program(&testdata(name), &exe);
    fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).unwrap();
    exe
}

// ---------------------------------------------------------------- taking a PID

/// A `sleep` that holds one particular PID; killed on drop.
struct PidHolder(Child);

impl Drop for PidHolder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Makes a `sleep` take PID `pid` (free now): writes `pid - 1` into
/// /proc/sys/kernel/ns_last_pid and forks at once, retrying while other
/// processes race for it.  Root only.
fn take_pid(pid: i32) -> PidHolder {
    for _ in 0..200 {
        wait_pid_free(pid);
        fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string())
            .expect("write /proc/sys/kernel/ns_last_pid");
        let mut child = command("sleep")
            .arg("600")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start sleep");
        if child.id() as i32 == pid {
            return PidHolder(child);
        }
        let _ = child.kill();
        let _ = child.wait();
        thread::sleep(Duration::from_millis(5));
    }
    panic!("could not make a sleeper take PID {pid} in 200 attempts");
}

// ---------------------------------------------------------------- restore

/// A running `ckpt restore` (possibly under runuser) with piped standard
/// streams.  On drop, everything below it (the namespace's init and the
/// restored processes) is killed, then ckpt itself.
struct NsRestore {
    child: Child,
    /// held open: the restored program's stdin stays a live pipe
    _stdin: Option<ChildStdin>,
    stdout: Lines,
    stderr: Lines,
    /// host PIDs found so far, with a marker their command line contains
    known: Vec<(i32, String)>,
    done: bool,
}

impl NsRestore {
    fn spawn(mut cmd: Command) -> NsRestore {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        eprintln!("$ {cmd:?} &");
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let stdin = child.stdin.take();
        let stdout = Lines::new("restore stdout", child.stdout.take().unwrap());
        let stderr = Lines::new("restore stderr", child.stderr.take().unwrap());
        NsRestore {
            child,
            _stdin: stdin,
            stdout,
            stderr,
            known: Vec::new(),
            done: false,
        }
    }

    /// `ckpt restore DIR EXTRA...` as the test's own user.
    fn ckpt(dir: &Path, extra: &[&str]) -> NsRestore {
        let mut cmd = ckpt_cmd();
        cmd.arg("restore").arg(dir).args(extra);
        NsRestore::spawn(cmd)
    }

    /// Waits until a descendant of `ckpt restore` runs `marker` with PID
    /// `orig` in its own PID namespace; returns its host PID.
    fn find_restored(&mut self, orig: i32, marker: &str) -> i32 {
        let me = self.child.id() as i32;
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let found: Vec<i32> = descendants(me)
                .into_iter()
                .filter(|&p| {
                    nspid(p).last() == Some(&orig) && cmdline(p).is_some_and(|c| c.contains(marker))
                })
                .collect();
            if let Some(&p) = found.first() {
                assert_eq!(found.len(), 1, "several restored processes {found:?}");
                self.known.push((p, marker.to_string()));
                return p;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                self.done = true;
                self.stderr.read_to_end();
                panic!(
                    "ckpt restore exited ({status:?}) before PID {orig} ran {marker}; stderr:\n{}",
                    self.stderr.seen().join("\n")
                );
            }
            assert!(
                Instant::now() < deadline,
                "no descendant of ckpt restore ({me}) runs {marker} as PID {orig} \
                 {TIMEOUT:?} after the restore started; descendants: {:?}",
                descendants(me)
                    .iter()
                    .map(|&p| (p, nspid(p), cmdline(p)))
                    .collect::<Vec<_>>()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn wait(&mut self) -> ExitStatus {
        let status = wait_child(&mut self.child, "ckpt restore");
        self.done = true;
        status
    }

    /// Waits for `ckpt restore`: exit status 0, no FAIL line.
    fn wait_success(&mut self) {
        let status = self.wait();
        self.stdout.read_to_end();
        self.stderr.read_to_end();
        assert!(
            status.success(),
            "ckpt restore exited with {status:?}; stdout:\n{}\nstderr:\n{}",
            self.stdout.seen().join("\n"),
            self.stderr.seen().join("\n")
        );
        self.stdout.assert_no_fail();
    }
}

impl Drop for NsRestore {
    fn drop(&mut self) {
        if !self.done {
            for p in descendants(self.child.id() as i32) {
                // SAFETY: kill(2) takes only integers and touches no memory of this
                // process; the pids are descendants of the test's own child, and a stale
                // pid only makes kill fail (ESRCH).
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
            let _ = self.child.kill();
        }
        for (p, marker) in &self.known {
            kill_if_running(*p, marker);
        }
        let _ = self.child.wait();
    }
}

/// Checks, from the host, that the restored process `host` (original PID
/// `orig`) lives in another PID namespace than the test, under its original
/// PID, with its original TIDs, as the child of that namespace's init, and
/// that this init descends from the `ckpt restore` process.  Returns the
/// init's host PID.
fn assert_in_new_pidns(r: &NsRestore, host: i32, orig: i32, want_tids: &BTreeSet<i32>) -> i32 {
    let ns = nspid(host);
    assert!(
        ns.len() >= 2 && ns.last() == Some(&orig),
        "NSpid of the restored process {host}: {ns:?}, expected [host pid, .., {orig}]"
    );
    let mine = ns_link("self", "pid");
    let theirs = ns_link(&host.to_string(), "pid");
    assert_ne!(
        theirs, mine,
        "the restored process {host} (PID {orig} inside) is in the test's PID namespace"
    );
    wait_until(
        &format!("the restored threads of {host} to be {want_tids:?} in its namespace"),
        || &ns_tids(host) == want_tids,
    );

    let init = ppid(host).expect("the restored process has no parent");
    let init_ns = nspid(init);
    assert_eq!(
        init_ns.last(),
        Some(&1),
        "the parent {init} of the restored process should be the namespace's init (NSpid {init_ns:?})"
    );
    assert_eq!(
        ns_link(&init.to_string(), "pid"),
        theirs,
        "the init {init} is in another PID namespace than the restored process"
    );
    assert!(
        descendants(r.child.id() as i32).contains(&init),
        "the namespace's init {init} does not descend from ckpt restore"
    );
    init
}

/// The worker TIDs printed as "tid <i> <tid>" by `threads`.
fn threads_worker_tids(lines: &[String]) -> BTreeSet<i32> {
    lines
        .iter()
        .filter_map(|l| {
            l.strip_prefix("tid ")?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .collect()
}

/// "ids <pid> <tid>..." from `pidcheck`.
fn parse_ids(line: &str) -> (i32, BTreeSet<i32>) {
    let v: Vec<i32> = line
        .strip_prefix("ids ")
        .unwrap_or_else(|| panic!("not an ids line: {line:?}"))
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    (v[0], v[1..].iter().copied().collect())
}

/// `threads` with 8 workers, checkpointed and killed; returns the target
/// (reaped), its marker, stop file, checkpoint directory and its TIDs.
struct ThreadsImage {
    /// removed last
    _d: TestDir,
    pid: i32,
    marker: String,
    stop: PathBuf,
    ck: PathBuf,
    tids: BTreeSet<i32>,
}

fn threads_image() -> ThreadsImage {
    let d = tempdir();
    let exe = own_copy("threads", &d.join("prog"));
    let (stop, ck) = (d.join("stop"), d.join("ckpt"));
    let mut t = Target::start_path(&exe, &[stop.as_os_str(), os("8")]);
    t.stdout.expect_line("ready");
    let workers = threads_worker_tids(t.stdout.seen());
    assert_eq!(
        workers.len(),
        8,
        "expected 8 worker TIDs: {:?}",
        t.stdout.seen()
    );
    let tids = tids(t.pid);
    let mut expected = workers;
    expected.insert(t.pid);
    assert_eq!(tids, expected, "threads of the target before the dump");
    t.dump_kill(&ck);
    ThreadsImage {
        pid: t.pid,
        marker: exe.to_string_lossy().into_owned(),
        stop,
        ck,
        tids,
        _d: d,
    }
}

/// The restored `threads` goes on (two progress lines from the restored
/// threads), stops on the stop file with its verdict, and ckpt restore
/// exits 0.
fn threads_continue(r: &mut NsRestore, img: &ThreadsImage) {
    r.stdout.expect_prefix("round ");
    r.stdout.expect_prefix("round ");
    touch(&img.stop);
    r.wait_success();
    assert!(
        r.stdout
            .seen()
            .iter()
            .any(|l| l.starts_with("threads ok ") && l.contains(" threads=8 ")),
        "no verdict from the restored program: {:?}",
        r.stdout.seen()
    );
}

// ---------------------------------------------------------------- tests

/// Root, the original PID taken by another process: `--pidns never` fails
/// with one line naming the PID and creates nothing; the default (auto)
/// restores in a new PID namespace where `threads` has its PID and TIDs.
#[test]
fn root_pid_taken_never_fails_auto_uses_new_namespace() {
    if !is_root() {
        eprintln!("skipped: taking a given PID needs root");
        return;
    }
    let img = threads_image();
    let holder = take_pid(img.pid);
    assert!(
        cmdline(img.pid).is_some_and(|c| c.starts_with("sleep")),
        "PID {} should be the sleeper: {:?}",
        img.pid,
        cmdline(img.pid)
    );

    let out = ckpt([
        "restore".as_ref(),
        img.ck.as_os_str(),
        "--pidns".as_ref(),
        "never".as_ref(),
    ]);
    let line = assert_error(&out, "restore --pidns never with the PID taken");
    assert!(
        line.split(|c: char| !c.is_ascii_digit())
            .any(|w| w == img.pid.to_string()),
        "the error should name PID {}: {line}",
        img.pid
    );
    let left = pids_running(&img.marker);
    for &p in &left {
        kill_if_running(p, &img.marker);
    }
    assert!(
        left.is_empty(),
        "the refused restore left processes {left:?}"
    );
    assert!(
        cmdline(img.pid).is_some_and(|c| c.starts_with("sleep")),
        "PID {} is no longer the sleeper after the refused restore",
        img.pid
    );

    let mut r = NsRestore::ckpt(&img.ck, &[]);
    let host = r.find_restored(img.pid, &img.marker);
    assert_ne!(
        host, img.pid,
        "the host PID of the restored process is the sleeper's"
    );
    // It says so, why, and which PIDs the processes have out here (issue 12).
    let said = r
        .stderr
        .expect_prefix("ckpt: restored in a new PID namespace");
    assert!(
        said.contains(&format!("{host} (PID {} inside)", img.pid))
            && said.contains(&format!("PID {} is in use", img.pid)),
        "the message names the taken PID and the outer PID {host}: {said}"
    );
    assert_in_new_pidns(&r, host, img.pid, &img.tids);
    threads_continue(&mut r, &img);
    assert!(
        cmdline(img.pid).is_some_and(|c| c.starts_with("sleep")),
        "the sleeper lost PID {}",
        img.pid
    );
    drop(holder);
}

/// Root, PIDs free, `--pidns always`: `threads` is restored in a new PID
/// namespace all the same, with its PID and TIDs, and continues.
#[test]
fn root_pidns_always_uses_new_namespace() {
    if !is_root() {
        eprintln!("skipped: runs as root");
        return;
    }
    let img = threads_image();
    let mut r = NsRestore::ckpt(&img.ck, &["--pidns", "always"]);
    let host = r.find_restored(img.pid, &img.marker);
    assert_in_new_pidns(&r, host, img.pid, &img.tids);
    threads_continue(&mut r, &img);
}

/// Root, PIDs free, `--pidns always`, with `pidcheck`: the counter goes on
/// with no gap and no duplicate, and inside the namespace getpid(),
/// gettid(), /proc/self and /proc/thread-self agree with the original PID
/// and TIDs (the namespace has its own /proc).
#[test]
fn root_pidns_always_proc_agrees() {
    if !is_root() {
        eprintln!("skipped: runs as root");
        return;
    }
    let d = tempdir();
    let exe = own_copy("pidcheck", &d.join("prog"));
    let marker = exe.to_string_lossy().into_owned();
    let (out, stop, ck) = (d.join("out"), d.join("stop"), d.join("ckpt"));
    let mut t = Target::start_path(&exe, &[out.as_os_str(), stop.as_os_str(), os("4")]);
    let (pid, tids_before) = parse_ids(&t.stdout.expect_prefix("ids "));
    assert_eq!(pid, t.pid, "pidcheck's getpid()");
    t.stdout.expect_line("ready");
    let mut all = tids_before.clone();
    all.insert(pid);
    assert_eq!(tids(pid), all, "threads of pidcheck before the dump");
    t.dump_kill(&ck);
    let before = file_lines(&out);
    let m = assert_counting(&before, &pid.to_string(), "before restore");
    assert!(m >= 3, "pidcheck wrote only {m} lines before the dump");

    let mut r = NsRestore::ckpt(&ck, &["--pidns", "always"]);
    let host = r.find_restored(pid, &marker);
    assert_in_new_pidns(&r, host, pid, &all);
    r.stdout.expect_number_at_least(m as u64 + 5);
    touch(&stop);
    r.wait_success();
    let ids_after = r.stdout.expect_prefix("ids ");
    assert_eq!(
        parse_ids(&ids_after),
        (pid, tids_before),
        "getpid()/gettid() inside the new namespace"
    );
    r.stdout.expect_prefix("pidcheck ok ");
    let after = file_lines(&out);
    let k = assert_counting(&after, &pid.to_string(), "after restore");
    assert!(k >= m + 5, "only {k} lines after the restore, {m} before");
    assert_eq!(
        &after[..m],
        &before[..],
        "the lines written before the checkpoint changed"
    );
}

/// An unprivileged user (ckpttest, via runuser) dumps its own `pidcheck`,
/// kills it and restores it: `--pidns never` fails with one line naming
/// CAP_CHECKPOINT_RESTORE or --pidns; the default restores it in a new user
/// and PID namespace, still running as that user, where it has its
/// original PID and TIDs (its own getpid/gettid and /proc agree) and goes
/// on counting with no gap and no duplicate.
#[test]
fn unprivileged_restore_in_new_namespaces() {
    if !is_root() {
        eprintln!("skipped: needs root to run commands as the user {USER}");
        return;
    }
    let (uid, _) = ensure_test_user();
    let d = tempdir();
    let shared = d.join("shared");
    open_up(d.path(), &shared);
    let exe = own_copy("pidcheck", &shared.join("prog"));
    let marker = exe.to_string_lossy().into_owned();
    let (out, stop, ck) = (shared.join("out"), shared.join("stop"), shared.join("ckpt"));
    let ckpt_path = ckpt_bin();

    // runuser forks: the program is its child
    let mut cmd = as_user(&exe);
    cmd.args([out.as_os_str(), stop.as_os_str(), os("2")]);
    let mut t = Target::spawn(cmd, &marker);
    let (pid, worker_tids) = parse_ids(&t.stdout.expect_prefix("ids "));
    t.stdout.expect_line("ready");
    assert!(
        descendants(t.pid).contains(&pid) && cmdline(pid).is_some_and(|c| c.contains(&marker)),
        "pidcheck (PID {pid}) is not the child of runuser {}",
        t.pid
    );
    assert_eq!(
        status_ints(&status_text(pid).unwrap(), "Uid").first(),
        Some(&(uid as i32)),
        "pidcheck does not run as {USER}"
    );
    let mut all = worker_tids.clone();
    all.insert(pid);
    assert_eq!(tids(pid), all, "threads of pidcheck before the dump");

    let mut dump = as_user(&ckpt_path);
    dump.args(["dump", &pid.to_string(), "--dir"])
        .arg(&ck)
        .arg("--kill");
    let o = run(&mut dump);
    assert_success(&o, "ckpt dump --kill as the user");
    let status = t.wait();
    assert_eq!(
        status.code(),
        Some(128 + libc::SIGKILL),
        "runuser should report its child killed by SIGKILL, got {status:?} (signal {:?})",
        status.signal()
    );
    wait_pid_free(pid);
    let before = file_lines(&out);
    let m = assert_counting(&before, &pid.to_string(), "before restore");
    assert!(m >= 3, "pidcheck wrote only {m} lines before the dump");

    // --pidns never: the user may not choose PIDs
    let mut never = as_user(&ckpt_path);
    never.arg("restore").arg(&ck).args(["--pidns", "never"]);
    let o = run(&mut never);
    let line = assert_error(&o, "restore --pidns never as an unprivileged user");
    assert!(
        line.contains("CAP_CHECKPOINT_RESTORE") || line.contains("--pidns"),
        "the error should name CAP_CHECKPOINT_RESTORE or --pidns: {line}"
    );
    let left = pids_running(&marker);
    for &p in &left {
        kill_if_running(p, &marker);
    }
    assert!(
        left.is_empty(),
        "the refused restore left processes {left:?}"
    );
    assert_eq!(
        file_lines(&out).len(),
        m,
        "something ran and wrote to the output file after the refused restore"
    );

    // default (auto): new user + PID namespace
    let mut cmd = as_user(&ckpt_path);
    cmd.arg("restore").arg(&ck);
    let mut r = NsRestore::spawn(cmd);
    let host = r.find_restored(pid, &marker);
    assert_in_new_pidns(&r, host, pid, &all);
    assert_ne!(
        ns_link(&host.to_string(), "user"),
        ns_link("self", "user"),
        "an unprivileged restore into a new PID namespace needs a new user namespace"
    );
    assert_eq!(
        status_ints(&status_text(host).unwrap(), "Uid"),
        vec![uid as i32; 4],
        "the restored process should run as {USER} (uid {uid}), seen from the host"
    );
    r.stdout.expect_number_at_least(m as u64 + 5);
    touch(&stop);
    r.wait_success();
    let ids_after = r.stdout.expect_prefix("ids ");
    assert_eq!(
        parse_ids(&ids_after),
        (pid, worker_tids),
        "getpid()/gettid() inside the new namespace"
    );
    r.stdout.expect_prefix("pidcheck ok ");
    let after = file_lines(&out);
    let k = assert_counting(&after, &pid.to_string(), "after restore");
    assert!(k >= m + 5, "only {k} lines after the restore, {m} before");
    assert_eq!(
        &after[..m],
        &before[..],
        "the lines written before the checkpoint changed"
    );
}
