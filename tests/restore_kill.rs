//! A restore is all or nothing (docs/CONTRACT.md §6), even when the restorer itself is killed at
//! any moment: SIGKILLed at each named step (`CKPT_FAULT_KILL_AT`) and at 24 moments
//! spread over a restore, `ckpt restore` leaves nothing of the job running (no
//! restored process, no loader parked in it, no guard, no namespace init), or, killed
//! after it committed, the whole job; and a new restore of the same checkpoint then
//! works. Both in the host PID namespace (original PIDs, root) and in a new one.
//! Also: `ckpt restore --detach | cat` returns, in both.
mod common;

use common::*;
use std::fs;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

/// The tests here reap orphans (this process is a subreaper): one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const N: &str = "8";

struct Job {
    d: TestDir,
    ck: PathBuf,
    stop: PathBuf,
    /// The tree's record file, and its content at the checkpoint.
    rec: PathBuf,
    rec_at_dump: Vec<u8>,
    marker: String,
    /// Every process and zombie of the checkpoint.
    pids: Vec<i32>,
    root: i32,
    /// The job and its restores run as this unprivileged user (uid, gid).
    user: Option<(u32, u32)>,
}

/// `setpriv` to the test user: it execs, so the restorer is the child we kill.
fn as_user(cmd: &mut std::process::Command, ids: (u32, u32)) -> std::process::Command {
    let mut c = setpriv(ids, &[], &[], cmd.get_program());
    c.args(cmd.get_args());
    c
}

/// Give the whole tree under `dir` to the test user.
fn chown_tree(dir: &std::path::Path, (uid, gid): (u32, u32)) {
    std::os::unix::fs::lchown(dir, Some(uid), Some(gid)).unwrap();
    if fs::symlink_metadata(dir).unwrap().is_dir() {
        for e in fs::read_dir(dir).unwrap() {
            chown_tree(&e.unwrap().path(), (uid, gid));
        }
    }
}

fn checkpointed_tree(unprivileged: bool) -> Job {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) on ourselves takes no pointer; killed
    // restores' orphans come to us to be reaped.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let d = tempdir();
    let exe = d.join("prog/tree");
    fs::create_dir_all(exe.parent().unwrap()).unwrap();
    copy_program(&testdata("tree"), &exe);
    let (stop, rec, ck) = (d.join("stop"), d.join("records"), d.join("ckpt"));
    let user = unprivileged.then(|| {
        assert_root("the unprivileged restore-kill test");
        let ids = ensure_test_user();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).unwrap();
        chown_tree(d.path(), ids);
        ids
    });
    let mut t = match user {
        Some(ids) => {
            let mut cmd = command(&exe);
            cmd.current_dir(d.path())
                .args([stop.as_os_str(), rec.as_os_str(), os(N)]);
            // The records file is the job's: created by it, as the user.
            Target::spawn(as_user(&mut cmd, ids), &exe.to_string_lossy())
        }
        None => Target::start_path(&exe, &[stop.as_os_str(), rec.as_os_str(), os(N)]),
    };
    t.stdout.expect_line("ready");
    let mut pids: Vec<i32> = t
        .stdout
        .seen()
        .iter()
        .filter_map(|l| l.strip_prefix("proc "))
        .map(|l| l.split_whitespace().nth(1).unwrap().parse().unwrap())
        .collect();
    let zombie: i32 = t
        .stdout
        .seen()
        .iter()
        .find_map(|l| l.strip_prefix("zombie "))
        .expect("zombie line")
        .parse()
        .unwrap();
    assert_eq!(pids.len(), 8, "the tree announces its processes");
    let marker = exe.to_string_lossy().to_string();
    let root = t.pid;
    t.dump_kill(&ck);
    pids.push(zombie);
    if let Some(ids) = user {
        // Dumped by root; restored by the user, who owns the job.
        chown_tree(&ck, ids);
    }
    let rec_at_dump = fs::read(&rec).unwrap();
    let job = Job {
        d,
        ck,
        stop,
        rec,
        rec_at_dump,
        marker,
        pids,
        root,
        user,
    };
    job.settle();
    job
}

fn cmdline_of(pid: i32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

fn comm_of(pid: i32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

impl Job {
    /// Live processes of this job or of its restore: the job's program, a loader
    /// (`ckpt-restore`), a guard, or the restorer / namespace init of this checkpoint.
    fn leftovers(&self) -> Vec<(i32, String)> {
        let me = std::process::id() as i32;
        let ck = self.ck.to_string_lossy().to_string();
        fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|&p| p != me && !matches!(proc_state(p), Some('Z' | 'X') | None))
            .filter_map(|p| {
                let c = cmdline_of(p);
                let ours = c.contains(&self.marker)
                    || c.starts_with("ckpt-restore")
                    || comm_of(p) == "ckpt-guard"
                    || (c.contains(" restore ") && c.contains(&ck));
                ours.then(|| (p, format!("{} ({c})", comm_of(p))))
            })
            .collect()
    }

    /// Reap what came back to us, and wait until the job's PIDs are free again.
    fn settle(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            // SAFETY: reap any exited child; none of ours is waited for elsewhere now.
            while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG | libc::__WALL) }
                > 0
            {}
            if self.pids.iter().all(|&p| !pid_exists(p)) && self.leftovers().is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the job's PIDs are still busy: {:?}",
                self.leftovers()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// `ckpt restore --detach`, its stderr going to a file (the restored job gets
    /// the restorer's stdio, so a pipe would stay open as long as the job runs).
    fn restore_cmd(&self, pidns: &str) -> std::process::Command {
        let mut cmd = ckpt_cmd();
        let err = fs::File::create(self.d.join("restore.err")).unwrap();
        cmd.arg("restore")
            .arg(&self.ck)
            .args(["--detach", "--pidns", pidns])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err);
        match self.user {
            Some(ids) => {
                let mut c = as_user(&mut cmd, ids);
                let err = fs::File::create(self.d.join("restore.err")).unwrap();
                c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(err);
                for (k, v) in cmd.get_envs() {
                    if let Some(v) = v {
                        c.env(k, v);
                    }
                }
                c
            }
            None => cmd,
        }
    }

    /// Run a restore to its end; its status and what it said.
    fn run_restore(&self, cmd: &mut std::process::Command) -> (std::process::ExitStatus, String) {
        let status = wait_child(&mut cmd.spawn().unwrap(), "ckpt restore");
        let said = fs::read_to_string(self.d.join("restore.err")).unwrap_or_default();
        (status, said)
    }

    /// Whether every process of the job runs (restored completely).
    fn all_running(&self, pidns: &str) -> bool {
        if pidns == "never" {
            return self.pids[..8].iter().all(|&p| {
                cmdline_of(p).contains(&self.marker) && !matches!(proc_state(p), Some('Z'))
            });
        }
        pids_running(&self.marker).len() == 8
    }

    /// After a killed restore: nothing runs, or (killed after committing) everything.
    /// Cleans up either way. Returns whether the job had been restored completely.
    fn assert_all_or_nothing(&self, pidns: &str, case: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        let complete = loop {
            let left = self.leftovers();
            if left.is_empty() {
                break false;
            }
            if self.all_running(pidns) {
                thread::sleep(Duration::from_millis(200));
                if self.all_running(pidns) {
                    break true;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{case}: a half-restored job is left: {left:?}"
            );
            thread::sleep(Duration::from_millis(10));
        };
        if complete {
            for (p, _) in self.leftovers() {
                // SAFETY: kill(2) of the job's own processes.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
        }
        self.settle();
        complete
    }

    /// Restore normally and let the tree finish: the checkpoint is intact.
    fn restore_and_finish(&self, pidns: &str) {
        // The record file is the job's output, outside the checkpoint: the complete
        // restores above wrote on in it. Put back what it held at the checkpoint.
        fs::write(&self.rec, &self.rec_at_dump).unwrap();
        if let Some(ids) = self.user {
            let mut cmd = ckpt_cmd();
            cmd.arg("restore").arg(&self.ck).args(["--pidns", pidns]);
            let mut c = as_user(&mut cmd, ids);
            c.stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let mut child = c.spawn().unwrap();
            let mut out = Lines::new("user restore", child.stdout.take().unwrap());
            wait_until("the restored tree runs", || {
                pids_running(&self.marker).len() == 8
            });
            thread::sleep(Duration::from_millis(300));
            touch(&self.stop);
            let verdict = out.expect_prefix("tree ok ");
            assert!(verdict.starts_with("tree ok 8 "), "verdict {verdict:?}");
            let status = wait_child(&mut child, "the user's restore");
            assert!(status.success(), "the user's restore: {status:?}");
            fs::remove_file(&self.stop).unwrap();
            self.settle();
            return;
        }
        let mut r = Restored::start_with(&self.ck, self.root, &self.marker, &["--pidns", pidns]);
        if pidns == "never" {
            r.assert_same_pid();
        } else {
            wait_until("the restored tree runs", || {
                pids_running(&self.marker).len() == 8
            });
        }
        thread::sleep(Duration::from_millis(300));
        touch(&self.stop);
        r.wait_success();
        let verdict = r.stdout.expect_prefix("tree ok ");
        assert!(verdict.starts_with("tree ok 8 "), "verdict {verdict:?}");
        drop(r);
        fs::remove_file(&self.stop).unwrap();
        self.settle();
    }
}

fn kill_at_steps_and_moments(pidns: &str, unprivileged: bool) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let job = checkpointed_tree(unprivileged);
    // A restore that is not killed works, and tells how long one takes.
    let t0 = Instant::now();
    let (status, said) = job.run_restore(&mut job.restore_cmd(pidns));
    assert!(status.success(), "a detached restore: {status:?}: {said}");
    let took = t0.elapsed();
    assert!(
        job.assert_all_or_nothing(pidns, "an uninterrupted restore"),
        "an uninterrupted restore did not restore the whole job"
    );

    let mut steps: Vec<String> = ["checked", "spawned"].map(String::from).to_vec();
    for n in [1, 2, 8] {
        steps.push(format!("ready#{n}"));
        steps.push(format!("finished#{n}"));
    }
    for n in [1, 4, 7] {
        steps.push(format!("resumed#{n}"));
    }
    for step in &steps {
        let mut cmd = job.restore_cmd(pidns);
        cmd.env("CKPT_FAULT_KILL_AT", step);
        let (status, said) = job.run_restore(&mut cmd);
        use std::os::unix::process::ExitStatusExt;
        // In a new namespace the init is the one that dies; the front end reports it.
        if pidns == "never" {
            assert_eq!(
                status.signal(),
                Some(libc::SIGKILL),
                "killed at {step}: {status:?}: {said}"
            );
        } else {
            assert!(!status.success(), "killed at {step}: {status:?}: {said}");
        }
        let complete = job.assert_all_or_nothing(pidns, &format!("killed at step {step}"));
        assert!(
            !complete,
            "killed at {step}, before the commit: the job runs"
        );
    }
    // Killed from outside at moments spread over a whole restore.
    let mut outcomes = (0, 0);
    for i in 0..24u32 {
        let delay = took.mul_f64(f64::from(i) / 20.0);
        let mut child = job.restore_cmd(pidns).spawn().unwrap();
        thread::sleep(delay);
        let _ = child.kill();
        let _ = child.wait();
        if job.assert_all_or_nothing(pidns, &format!("killed after {delay:?}")) {
            outcomes.0 += 1;
        } else {
            outcomes.1 += 1;
        }
    }
    eprintln!("{pidns}: killed restores: {outcomes:?} (complete, nothing)");
    assert!(outcomes.1 > 0, "no kill landed inside the restore");
    job.restore_and_finish(pidns);
    drop(job.d);
}

#[test]
fn restorer_killed_anywhere_leaves_nothing_host_pids() {
    kill_at_steps_and_moments("never", false);
}

#[test]
fn restorer_killed_anywhere_leaves_nothing_new_pidns() {
    kill_at_steps_and_moments("always", false);
}

/// The same as an ordinary user: the restore goes into new user, PID and mount
/// namespaces, and the user's own restorer is what gets killed.
#[test]
fn restorer_killed_anywhere_leaves_nothing_unprivileged() {
    kill_at_steps_and_moments("always", true);
}

/// `ckpt restore --detach | cat` ends: nothing of ckpt that stays behind holds the
/// caller's standard output or error. (The job's own stdio was /dev/null.)
fn detached_restore_returns(pidns: &str) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let d = tempdir();
    let exe = d.join("prog/counter");
    fs::create_dir_all(exe.parent().unwrap()).unwrap();
    copy_program(&testdata("counter"), &exe);
    let (out, stop, ck) = (d.join("out"), d.join("stop"), d.join("ckpt"));
    let mut orig = command(&exe)
        .args([out.as_os_str(), stop.as_os_str(), os("20")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = orig.id() as i32;
    wait_until("the counter counts", || file_lines(&out).len() >= 3);
    dump(pid, &ck, true);
    let _ = orig.wait();
    wait_pid_free(pid);
    let script = format!(
        "'{}' restore '{}' --detach --pidns {pidns} 2>&1 </dev/null | cat; echo piped-restore-ended",
        ckpt_bin().display(),
        ck.display()
    );
    let mut child = std::process::Command::new("bash")
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = Lines::new("piped restore", child.stdout.take().unwrap());
    lines.expect_line("piped-restore-ended");
    let _ = child.wait();
    // ...and the job did come back and counts on.
    let marker = exe.to_string_lossy().to_string();
    wait_until("the detached counter runs", || {
        pids_running(&marker).len() == 1
    });
    let n = file_lines(&out).len();
    wait_until("the detached counter counts on", || {
        file_lines(&out).len() > n + 2
    });
    touch(&stop);
    wait_until("the detached counter ends", || {
        pids_running(&marker).is_empty()
    });
    // SAFETY: reap what came back to us.
    while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG | libc::__WALL) } > 0 {}
}

#[test]
fn detached_restore_into_a_pipe_returns_host_pids() {
    detached_restore_returns("never");
}

#[test]
fn detached_restore_into_a_pipe_returns_new_pidns() {
    detached_restore_returns("always");
}
