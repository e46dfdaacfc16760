//! Credentials survive a checkpoint, thread by thread (the `creds` attribute group):
//!
//! - as root, a process whose two threads have different credentials (user and group
//!   ids with distinct real/effective/saved/fs values, supplementary groups, reduced
//!   capability sets with an ambient one and a smaller bounding set, securebits,
//!   keep-caps, no_new_privs in one thread only) is dumped, killed and restored: the
//!   program finds everything as it was (`testdata/creds.c`), and /proc agrees;
//! - an ordinary user dumps and restores (in a new user + PID namespace) its own
//!   process, started with groups, a smaller bounding set and securebits, which sets
//!   keep-caps and no_new_privs in one thread; a restore by the same user with other
//!   supplementary groups, which that namespace cannot set, is refused before anything
//!   runs;
//! - an ordinary user cannot restore a checkpoint of a root process: one error line
//!   naming the process and its user ids, and nothing runs.
mod common;

use common::*;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

/// Two shared cores, and the PIDs of a killed target must come free: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const CRED_KEYS: &[&str] = &[
    "Uid",
    "Gid",
    "Groups",
    "CapInh",
    "CapPrm",
    "CapEff",
    "CapBnd",
    "CapAmb",
    "NoNewPrivs",
];

/// The credential lines of every thread of `pid`, the leader first (by TID order after
/// it), as the host sees them.
fn thread_creds(pid: i32) -> Vec<BTreeMap<String, String>> {
    let mut tids: Vec<i32> = tids(pid).into_iter().collect();
    tids.sort_by_key(|&t| (t != pid, t));
    tids.iter()
        .map(|t| {
            let p = format!("/proc/{pid}/task/{t}/status");
            let text = fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}"));
            text.lines()
                .filter_map(|l| l.split_once(':'))
                .filter(|(k, _)| CRED_KEYS.contains(k))
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        v.split_whitespace().collect::<Vec<_>>().join(" "),
                    )
                })
                .collect()
        })
        .collect()
}

/// The file that lets `creds` exit once it has checked itself.
fn end_file(stop: &Path) -> PathBuf {
    let mut p = stop.as_os_str().to_owned();
    p.push(".end");
    p.into()
}

/// A temporary directory other users may enter, with a copy of a test program in it.
fn shared_dir_with(name: &str) -> (TestDir, PathBuf) {
    let d = tempdir();
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let exe = d.join(name);
    copy_program(&testdata(name), &exe);
    fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).unwrap();
    (d, exe)
}

fn chown_tree(dir: &Path, (uid, gid): (u32, u32)) {
    std::os::unix::fs::lchown(dir, Some(uid), Some(gid)).unwrap();
    if fs::symlink_metadata(dir).unwrap().is_dir() {
        for e in fs::read_dir(dir).unwrap() {
            chown_tree(&e.unwrap().path(), (uid, gid));
        }
    }
}

/// A `ckpt restore` run as another user: killed with everything under it on drop.
struct UserRestore {
    child: Child,
    stdout: Lines,
    stderr: Lines,
    marker: String,
}

impl UserRestore {
    fn spawn(mut cmd: Command, marker: &str) -> UserRestore {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        eprintln!("$ {cmd:?} &");
        let mut child = cmd.spawn().expect("start ckpt restore");
        let stdout = Lines::new("restore stdout", child.stdout.take().unwrap());
        let stderr = Lines::new("restore stderr", child.stderr.take().unwrap());
        UserRestore {
            child,
            stdout,
            stderr,
            marker: marker.to_string(),
        }
    }
}

impl Drop for UserRestore {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for p in pids_running(&self.marker) {
            kill_if_running(p, &self.marker);
        }
    }
}

/// Root restores a process of two threads with different, reduced credentials: both
/// threads find every credential as it was, and /proc shows the same lines as before.
#[test]
fn root_restores_per_thread_credentials() {
    assert_root("the credentials test");
    let _s = serial();
    let (uid, gid) = ensure_test_user();
    let d = tempdir();
    let (stop, ck) = (d.join("stop"), d.join("ckpt"));
    let mut t = Target::start(
        "creds",
        &[
            os("root"),
            stop.as_os_str(),
            os(&uid.to_string()),
            os(&gid.to_string()),
        ],
    );
    t.stdout.expect_line("ready");
    let before = thread_creds(t.pid);
    assert_eq!(before.len(), 2, "two threads");
    assert_ne!(before[0], before[1], "the threads' credentials differ");
    t.dump_kill(&ck);

    let mut r = Restored::of(&ck, &t);
    r.assert_same_pid();
    touch(&stop);
    r.stdout.expect_line("OK thread 1");
    r.stdout.expect_line("OK thread 2");
    r.stdout.expect_line("creds ok");
    assert_eq!(
        thread_creds(t.pid),
        before,
        "credentials of the restored threads, seen from /proc"
    );
    touch(&end_file(&stop));
    r.wait_success();
}

/// An ordinary user's process started with supplementary groups, a smaller bounding set
/// and securebits (by setpriv), which sets keep-caps and no_new_privs in its main
/// thread only: the user dumps it and restores it (in a new user and PID namespace);
/// everything is as it was. The same restore with other supplementary groups is
/// refused first, naming the process and the groups, and nothing runs.
#[test]
fn user_restores_own_credentials() {
    assert_root("the credentials test");
    let _s = serial();
    let ids = ensure_test_user();
    let groups = [ids.1, 20001];
    let (d, exe) = shared_dir_with("creds");
    let marker = exe.to_string_lossy().into_owned();
    let (stop, ck) = (d.join("stop"), d.join("ckpt"));
    fs::create_dir(&ck).unwrap();
    chown_tree(&ck, ids);
    let start = [
        "--bounding-set=-sys_boot,-mknod",
        "--securebits=+noroot,+noroot_locked",
    ];
    let mut cmd = setpriv(ids, &groups, &start, &exe);
    // 20001 is not mapped in the restore's user namespace: the restored process sees it
    // as the overflow gid, the host as it was.
    cmd.arg("user").arg(&stop).arg("20001");
    let mut t = Target::spawn(cmd, &marker);
    t.stdout.expect_line("ready");
    let before = thread_creds(t.pid);
    assert_eq!(before.len(), 2, "two threads");
    assert_eq!(before[0]["NoNewPrivs"], "1");
    assert_eq!(before[1]["NoNewPrivs"], "0");

    let mut dump = setpriv(ids, &groups, &[], ckpt_bin());
    dump.args(["dump", &t.pid.to_string(), "--dir"])
        .arg(&ck)
        .arg("--kill");
    assert_success(&run(&mut dump), "ckpt dump --kill as the user");
    t.reap_killed();

    // Other groups: the user namespace of the restore cannot set them.
    let mut other = setpriv(ids, &[ids.1], &[], ckpt_bin());
    other.arg("restore").arg(&ck);
    let o = run(&mut other);
    let line = assert_error(&o, "a restore by the user with other groups");
    assert!(
        line.contains(&format!("process {}", t.pid)) && line.contains("groups"),
        "the error should name the process and its groups: {line}"
    );
    let left = pids_running(&marker);
    for &p in &left {
        kill_if_running(p, &marker);
    }
    assert!(left.is_empty(), "the refused restore left {left:?} running");

    let mut restore = setpriv(ids, &groups, &[], ckpt_bin());
    restore.arg("restore").arg(&ck);
    let mut r = UserRestore::spawn(restore, &marker);
    touch(&stop);
    r.stdout.expect_line("OK thread 1");
    r.stdout.expect_line("OK thread 2");
    r.stdout.expect_line("creds ok");
    let host = pids_running(&marker);
    assert_eq!(host.len(), 1, "one restored process: {host:?}");
    assert_eq!(
        thread_creds(host[0]),
        before,
        "credentials of the restored threads, seen from the host"
    );
    touch(&end_file(&stop));
    let status = wait_child(&mut r.child, "ckpt restore");
    r.stderr.read_to_end();
    assert!(status.success(), "ckpt restore as the user: {status:?}");
}

/// A checkpoint of a root process, restored by an ordinary user: one error line naming
/// the process and its user ids, exit status 1, nothing runs.
#[test]
fn user_cannot_restore_root_credentials() {
    assert_root("the credentials test");
    let _s = serial();
    let ids = ensure_test_user();
    let (d, exe) = shared_dir_with("counter");
    let marker = exe.to_string_lossy().into_owned();
    let (out, stop, ck) = (d.join("out"), d.join("stop"), d.join("ckpt"));
    let mut t = Target::start_path(&exe, &[out.as_os_str(), stop.as_os_str()]);
    t.stdout.expect_line("ready");
    t.dump_kill(&ck);
    chown_tree(&ck, ids);
    chown_tree(&out, ids);

    let mut restore = setpriv(ids, &[], &[], ckpt_bin());
    restore.arg("restore").arg(&ck);
    let o = run(&mut restore);
    let line = assert_error(&o, "a restore of root's process by an ordinary user");
    assert!(
        line.contains(&format!("process {}", t.pid)) && line.contains("user ids"),
        "the error should name the process and its user ids: {line}"
    );
    let left = pids_running(&marker);
    for &p in &left {
        kill_if_running(p, &marker);
    }
    assert!(left.is_empty(), "the refused restore left {left:?} running");
}

/// /proc/PID/loginuid or sessionid of `pid`.
fn audit_id(pid: i32, name: &str) -> String {
    fs::read_to_string(format!("/proc/{pid}/{name}"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/{name}: {e}"))
        .trim()
        .to_string()
}

/// The audit login uid and session id (the `loginuid` group). A counter whose shell
/// set its login uid (so it has a session id of its own) is dumped and killed. A
/// restore from the test, whose login uid is unset, would give it other ones: refused
/// with one line naming both and the option, nothing left running. With
/// `--new-audit-session` (root) its login uid is set back, the session id is a new one,
/// and the restore says so.
#[test]
fn audit_login_uid_is_kept_or_the_restore_refuses() {
    assert_root("setting an audit login uid");
    let _s = serial();
    let d = tempdir();
    let (out, stop, ck) = (d.join("out"), d.join("stop"), d.join("ckpt"));
    let mut c = command("bash");
    c.arg("-c")
        .arg("echo 4321 > /proc/self/loginuid && exec \"$@\"")
        .arg("bash")
        .arg(testdata("counter"))
        .arg(&out)
        .arg(&stop);
    let mut t = Target::spawn(c, &out.to_string_lossy());
    t.stdout.expect_line("ready");
    assert_eq!(audit_id(t.pid, "loginuid"), "4321");
    let session = audit_id(t.pid, "sessionid");
    let mine = audit_id(std::process::id() as i32, "sessionid");
    assert_ne!(session, mine, "the target has a session of its own");
    t.dump_kill(&ck);

    let refused = ckpt([os("restore"), ck.as_os_str()]);
    let err = assert_error(&refused, "a restore from another audit session");
    for part in [
        format!("process {}", t.pid),
        "audit login uid 4321".to_string(),
        format!("session id {session}"),
        "--new-audit-session".to_string(),
    ] {
        assert!(err.contains(&part), "the refusal names {part:?}: {err}");
    }
    assert!(!pid_exists(t.pid), "nothing of the refused restore runs");

    let mut r = Restored::start_with(&ck, t.pid, &out.to_string_lossy(), &["--new-audit-session"]);
    r.assert_same_pid();
    let n = r.stdout.expect_number_at_least(4);
    assert!(n >= 4);
    assert_eq!(
        audit_id(t.pid, "loginuid"),
        "4321",
        "the login uid is set back"
    );
    touch(&stop);
    r.stdout.expect_prefix("done ");
    let warned = format!("audit session id {session} is now");
    r.stderr
        .expect("the warning of a new session id", |l| l.contains(&warned));
    r.wait_success();
}
