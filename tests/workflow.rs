//! The DMTCP workflow end to end (docs/CONTRACT.md §1.3, §2, §3, §6): `ckpt coordinator`,
//! `ckpt run`, `ckpt command`, the restart script.
//!
//! - the seed's interactive session, driven in tmux: coordinator in one window,
//!   `ckpt run python3 date.py` in another, keys l s c k q, the restart script;
//! - periodic checkpoints with `-i` and `--keep`;
//! - the agent SIGKILLed in the middle of a checkpoint;
//! - a checkpoint that fails because one of two jobs holds a netlink socket;
//! - the coordinator SIGKILLed and started again (the agent reconnects);
//! - the shared secret required beyond loopback;
//! - DMTCP_* environment fallbacks.
//!
//! Every test uses its own port (outside the ephemeral range) and its own
//! temporary directory; a [`Sweep`] guard kills everything that mentions that
//! directory (coordinators, agents, restorers, jobs) when the test ends, also
//! when it fails.  Timeouts are only a safety net.  Needs `tmux`.
mod common;

use common::*;
use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::thread;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------- helpers

/// Runs `ckpt ARGS...` (clean environment) to completion.
fn ck_run<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run(ck().args(args))
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// PIDs of the jobs in `ckpt command l` output ("  job N: pid P on HOST: CMD").
fn listed_pids(text: &str) -> Vec<i32> {
    text.lines()
        .filter_map(|l| {
            let rest = l.trim_start().strip_prefix("job ")?;
            let rest = &rest[rest.find(": pid ")? + 6..];
            rest.split_whitespace().next()?.parse().ok()
        })
        .collect()
}

/// Polls `ckpt command l` on `port` until it lists every one of `pids`;
/// returns the list output.
fn wait_listed(port: u16, pids: &[i32]) -> String {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let out = command_at(port, &["l"]);
        let text = stdout(&out);
        if out.status.success() {
            let listed = listed_pids(&text);
            if pids.iter().all(|p| listed.contains(p)) {
                return text;
            }
        }
        assert!(
            Instant::now() < deadline,
            "`ckpt command --coord-port {port} l` does not list the job(s) {pids:?} after {TIMEOUT:?}; last answer: {out:?}\nstdout: {text}"
        );
        thread::sleep(Duration::from_millis(200));
    }
}

/// `ckpt command --coord-port PORT c`, which must succeed; returns the
/// generation paths it prints (each checked complete).
fn checkpoint_ok(port: u16) -> Vec<PathBuf> {
    let out = command_at(port, &["c"]);
    assert!(
        out.status.success(),
        "`ckpt command --coord-port {port} c` failed: {out:?}\nstdout: {}\nstderr: {}",
        stdout(&out),
        stderr(&out)
    );
    let paths: Vec<PathBuf> = stdout(&out)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| PathBuf::from(l.trim()))
        .collect();
    assert!(
        !paths.is_empty(),
        "`ckpt command c` printed no generation path: {}",
        stdout(&out)
    );
    for p in &paths {
        assert!(
            p.join("manifest.json").is_file(),
            "`ckpt command c` printed {}, which is not a complete generation (no manifest.json)",
            p.display()
        );
    }
    paths
}

/// The job directory of job `pid`: the `<ckpt-dir>/job_<job id>` that holds its
/// generations (`ckpt_<program>_<pid>_<n>`).
fn job_dir_of(ckpt_dir: &Path, pid: i32) -> PathBuf {
    let needle = format!("_{pid}_");
    let dirs = job_dirs(ckpt_dir);
    dirs.iter()
        .find(|d| {
            fs::read_dir(d).is_ok_and(|rd| {
                rd.flatten().any(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    n.starts_with("ckpt_") && n.contains(&needle)
                })
            })
        })
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "no job directory with generations of pid {pid} in {}: {dirs:?}",
                ckpt_dir.display()
            )
        })
}

/// The name `latest` points to, if any.
fn latest(job_dir: &Path) -> Option<String> {
    fs::read_link(job_dir.join("latest"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

/// The generation number at the end of a generation name (`ckpt_<prog>_<id>_<n>`).
fn gen_number(name: &str) -> Option<u64> {
    name.rsplit('_').next()?.parse().ok()
}

/// Checks a job directory: every visible `ckpt_*` entry is a complete
/// generation (manifest.json, no temporary name), and `latest` names one of
/// them.  Returns the generation names, sorted by number.
fn assert_generations_sound(job_dir: &Path) -> Vec<String> {
    let mut gens = Vec::new();
    let mut all = Vec::new();
    for e in fs::read_dir(job_dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        all.push(name.clone());
        if name.starts_with("ckpt_") && e.path().is_dir() {
            assert!(
                !name.contains("tmp") && gen_number(&name).is_some(),
                "{}: a temporary directory was published as a generation: {name} (entries: {all:?})",
                job_dir.display()
            );
            assert!(
                e.path().join("manifest.json").is_file(),
                "{}: generation {name} has no manifest.json",
                job_dir.display()
            );
            gens.push(name);
        }
    }
    let l = latest(job_dir).unwrap_or_else(|| {
        panic!(
            "{} has no `latest` link (entries: {all:?})",
            job_dir.display()
        )
    });
    assert!(
        gens.contains(&l) && job_dir.join(&l).join("manifest.json").is_file(),
        "{}: latest -> {l:?}, which is not a complete generation (generations: {gens:?}, entries: {all:?})",
        job_dir.display()
    );
    gens.sort_by_key(|g| gen_number(g));
    gens
}

/// Hidden unfinished generations (`.ckpt_*.tmp.*`) in a job directory.
fn pending_generations(job_dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(job_dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    n.starts_with(".ckpt_") && n.contains(".tmp")
                })
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// Children of a process (all its threads).
fn comm(pid: i32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim_end().to_string())
}

/// Reaps `pid` if it is our child (ignored otherwise) and waits until its PID
/// is free.
fn wait_gone(pid: i32) {
    wait_until(&format!("PID {pid} to be free"), || {
        // SAFETY: waitpid of a possible child; ECHILD otherwise.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
        !pid_exists(pid)
    });
}

/// Kills `pid` (if it still runs `marker`) and waits until the PID is free.
fn kill_and_wait_gone(pid: i32, marker: &str) {
    kill_if_running(pid, marker);
    wait_gone(pid);
}

/// Waits until the process and all its threads run (not stopped: state
/// neither `T` nor `t`); panics if it is gone.
fn wait_not_stopped(pid: i32) {
    wait_until(&format!("process {pid} to run, not stopped"), || {
        let st = proc_state(pid);
        assert!(
            !matches!(st, None | Some('Z' | 'X')),
            "process {pid} is gone ({st:?})"
        );
        !matches!(st, Some('T' | 't'))
            && tids(pid).iter().all(|t| {
                let s =
                    fs::read_to_string(format!("/proc/{pid}/task/{t}/stat")).unwrap_or_default();
                let state = s
                    .rfind(')')
                    .and_then(|i| s[i + 1..].trim_start().chars().next());
                !matches!(state, Some('T' | 't'))
            })
    });
}

/// Single-quotes a string for sh.
fn sq(s: impl AsRef<OsStr>) -> String {
    format!("'{}'", s.as_ref().to_string_lossy().replace('\'', r"'\''"))
}

/// Starts a coordinator (a child of the test, keys on a pipe) and waits for
/// its "listening" line.
fn start_coordinator(port: u16, ckpt_dir: &Path, extra: &[&str]) -> Target {
    let mut c = ck();
    c.arg("coordinator")
        .arg("--port")
        .arg(port.to_string())
        .arg("--ckpt-dir")
        .arg(ckpt_dir)
        .args(extra);
    let mut t = Target::spawn(c, &ckpt_dir.to_string_lossy());
    t.stdout.expect_prefix("[ckpt coordinator] listening on");
    t
}

/// Starts `ckpt run [ARGS] -- PROGRAM...` (a child of the test, the job's
/// output on its stdout pipe).
fn start_agent(args: &[&OsStr], program: &[&OsStr], marker: &str) -> Target {
    let mut c = ck();
    c.arg("run").args(args).arg("--").args(program);
    Target::spawn(c, marker)
}

/// The one child of an agent: its job (a `ckpt run` starts exactly one).
fn job_of(agent: &Target) -> i32 {
    let mut kids = Vec::new();
    wait_until(&format!("agent {} to have its job", agent.pid), || {
        kids = children(agent.pid);
        !kids.is_empty()
    });
    assert_eq!(
        kids.len(),
        1,
        "agent {} has several children: {kids:?}",
        agent.pid
    );
    kids[0]
}

/// Cleans up everything a test started that is not (or no longer) a child
/// handle: on drop it kills every process whose command line mentions the
/// test's directory (coordinators, agents, restorers, jobs started with paths
/// in it), the PIDs registered with [`Sweep::pid`] (jobs whose command line
/// does not mention it, e.g. a restored date.py), and the tmux server.
struct Sweep {
    marker: String,
    pids: Vec<(i32, String)>,
}

impl Sweep {
    fn new(dir: &TestDir) -> Sweep {
        Sweep {
            marker: dir.path().to_string_lossy().into_owned(),
            pids: Vec::new(),
        }
    }

    /// Also kill `pid` at the end if it still runs a command line with `marker`.
    fn pid(&mut self, pid: i32, marker: &str) {
        self.pids.push((pid, marker.to_string()));
    }
}

impl Drop for Sweep {
    fn drop(&mut self) {
        for _ in 0..5 {
            let mut any = false;
            for &(pid, ref m) in &self.pids {
                if cmdline(pid).is_some_and(|c| c.contains(m.as_str())) {
                    // SAFETY: kill(2) takes only integers and touches no memory of this
                    // process; `pid` was just seen running a command line with this job's
                    // marker.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    any = true;
                }
            }
            for pid in pids_running(&self.marker) {
                // SAFETY: kill(2) takes only integers and touches no memory of this
                // process; `pid` was just found running this job's marker, and a stale pid
                // only makes kill fail (ESRCH).
                unsafe { libc::kill(pid, libc::SIGKILL) };
                any = true;
            }
            if !any {
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string()
}

/// The numbers in test.time as date.py writes it ("today is", then
/// "<time>\t<n>\t<hostname>" lines), checking the format.
fn date_numbers(path: &Path) -> Vec<u64> {
    let lines = file_lines(path);
    if lines.is_empty() {
        return Vec::new();
    }
    assert_eq!(lines[0], "today is", "test.time:\n{}", lines.join("\n"));
    let host = hostname();
    lines[1..]
        .iter()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            assert!(
                f.len() == 3 && !f[0].is_empty() && f[2] == host,
                "malformed line {l:?} in test.time:\n{}",
                lines.join("\n")
            );
            f[1].parse()
                .unwrap_or_else(|_| panic!("no number in {l:?}; test.time:\n{}", lines.join("\n")))
        })
        .collect()
}

/// Waits until test.time holds at least `n` numbers; returns them.
fn wait_date_numbers(path: &Path, n: usize) -> Vec<u64> {
    let mut v = Vec::new();
    wait_until(&format!("{} to hold {n} numbers", path.display()), || {
        v = date_numbers(path);
        v.len() >= n
    });
    v
}

// ---------------------------------------------------------------- tmux

/// A tmux server of its own (socket in the test directory), killed on drop.
struct Tmux {
    sock: PathBuf,
    session: String,
}

impl Tmux {
    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.arg("-S").arg(&self.sock);
        c.env_remove("TMUX");
        clean_coord_env(&mut c);
        c
    }

    fn tmux(&self, args: &[&str]) -> String {
        let out = run(self.cmd().args(args));
        assert!(out.status.success(), "tmux {args:?} failed: {out:?}");
        stdout(&out)
    }

    /// A detached session whose first window (`name`) runs `script` with sh;
    /// panes stay after their command ends, so that their status can be read.
    fn start(dir: &Path, name: &str, script: &str) -> Tmux {
        let have = Command::new("tmux").arg("-V").output();
        assert!(
            have.is_ok_and(|o| o.status.success()),
            "tmux is not installed (CI's .ci/run installs it)"
        );
        let t = Tmux {
            sock: dir.join("tmux.sock"),
            session: "ckpt".into(),
        };
        t.tmux(&[
            "-f",
            "/dev/null",
            "new-session",
            "-d",
            "-s",
            &t.session,
            "-x",
            "250",
            "-y",
            "50",
            "-n",
            name,
            "sh",
            "-c",
            script,
            ";",
            "set-option",
            "-g",
            "remain-on-exit",
            "on",
            ";",
            "set-option",
            "-g",
            "history-limit",
            "10000",
        ]);
        t
    }

    fn target(&self, window: &str) -> String {
        format!("{}:{window}", self.session)
    }

    /// Another window running `script` with sh.
    fn window(&self, name: &str, script: &str) {
        self.tmux(&[
            "new-window",
            "-d",
            "-t",
            &format!("{}:", self.session),
            "-n",
            name,
            "sh",
            "-c",
            script,
        ]);
    }

    /// Types `keys` followed by Return in `window`.
    fn type_line(&self, window: &str, keys: &str) {
        self.tmux(&["send-keys", "-t", &self.target(window), "-l", keys]);
        self.tmux(&["send-keys", "-t", &self.target(window), "Enter"]);
    }

    /// Everything the pane shows and showed (history included), wrapped lines joined.
    fn capture(&self, window: &str) -> String {
        let out = self
            .cmd()
            .args([
                "capture-pane",
                "-p",
                "-J",
                "-S",
                "-",
                "-t",
                &self.target(window),
            ])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until the pane's text satisfies `pred`; returns the text.
    fn wait_for(&self, window: &str, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let text = self.capture(window);
            if pred(&text) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "tmux window {window}: timed out waiting for {what}; it shows:\n{}",
                text.trim_end()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The pane's process and its descendants with their states (for messages).
    fn pane_processes(&self, window: &str) -> String {
        let out = self
            .cmd()
            .args([
                "display-message",
                "-p",
                "-t",
                &self.target(window),
                "#{pane_pid}",
            ])
            .output()
            .expect("tmux display-message");
        let Ok(pid) = String::from_utf8_lossy(&out.stdout).trim().parse::<i32>() else {
            return "pane process unknown".into();
        };
        let mut todo = vec![pid];
        let mut v = Vec::new();
        while let Some(p) = todo.pop() {
            v.push(format!("{p} {:?} {:?}", proc_state(p), cmdline(p)));
            todo.extend(children(p));
        }
        format!("pane processes: {}", v.join("; "))
    }

    /// Waits until the command of a window started with [`Tmux::shell`] has
    /// ended; returns its exit status (as its shell printed it).
    ///
    /// (The status is not taken from tmux's `pane_dead_status`: tmux 3.3a
    /// sometimes misses the SIGCHLD of a pane's process and never marks the
    /// pane dead, also with a plain `sh -c 'exit 3'`.)
    fn wait_exit(&self, window: &str) -> i32 {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let text = self.capture(window);
            if let Some(st) = text
                .lines()
                .find_map(|l| l.strip_prefix(EXIT_MARK)?.strip_suffix(']')?.parse().ok())
            {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "tmux window {window}: the command did not end ({}); it shows:\n{}",
                self.pane_processes(window),
                text.trim_end()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// A window script that runs `cmd` and then prints its exit status.
    fn shell(cmd: &str) -> String {
        format!("{cmd}; echo \"{EXIT_MARK}$?]\"")
    }
}

/// What a window's shell prints when its command ends: "[exit status N]".
const EXIT_MARK: &str = "[exit status ";

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").output();
    }
}

// ---------------------------------------------------------------- 1. tmux

/// The seed's interactive workflow in two terminals: a coordinator, and
/// `ckpt run python3 date.py` in another; keys l, s, c, k in the coordinator;
/// the restart script continues date.py from the checkpoint and registers it
/// again; `ckpt command c` checkpoints the restored job; `q` ends it all.
#[test]
fn interactive_session_in_tmux() {
    const N: u64 = 60;
    let d = tempdir();
    let mut sweep = Sweep::new(&d);
    let port = test_port(0);
    let ck_dir = d.join("ckpt");
    let work = d.join("work");
    fs::create_dir_all(&work).unwrap();
    let test_time = work.join("test.time");
    let bin = ckpt_bin();
    let date_py = testdata("date.py");

    let tm = Tmux::start(
        d.path(),
        "coord",
        &Tmux::shell(&format!(
            "{} coordinator --port {port} --ckpt-dir {}",
            sq(&bin),
            sq(&ck_dir)
        )),
    );
    tm.wait_for("coord", "the coordinator to listen", |t| {
        t.contains("[ckpt coordinator] listening on")
    });
    tm.window(
        "run",
        &Tmux::shell(&format!(
            "cd {} && {} run --coord-port {port} -- python3 {} {N} 0.2",
            sq(&work),
            sq(&bin),
            sq(&date_py)
        )),
    );
    tm.wait_for("coord", "the job to join", |t| t.contains("joined: pid"));

    // l: the list shows the job
    tm.type_line("coord", "l");
    let text = tm.wait_for("coord", "the answer to l", |t| t.contains("1 job(s)"));
    let pids = listed_pids(&text);
    assert_eq!(pids.len(), 1, "key l: expected one job listed:\n{text}");
    let job = pids[0];
    sweep.pid(job, "date.py");
    assert!(
        text.lines()
            .any(|l| l.contains(&format!("pid {job} ")) && l.contains("date.py")),
        "key l: the job line does not show date.py:\n{text}"
    );
    // s: status shows 1 job
    tm.type_line("coord", "s");
    tm.wait_for("coord", "the answer to s (jobs: 1)", |t| {
        t.contains("jobs: 1")
    });

    // c: a checkpoint while date.py runs
    let before = *wait_date_numbers(&test_time, 3).last().unwrap();
    tm.type_line("coord", "c");
    let text = tm.wait_for("coord", "checkpoint 1 to complete", |t| {
        t.contains("checkpoint 1 complete") || t.contains("checkpoint 1 failed")
    });
    assert!(
        !text.contains("checkpoint 1 failed"),
        "key c: the checkpoint failed:\n{text}"
    );
    let after = *date_numbers(&test_time).last().unwrap();
    let job_dir = job_dir_of(&ck_dir, job);
    let gens = assert_generations_sound(&job_dir);
    assert_eq!(gens.len(), 1, "one checkpoint, generations: {gens:?}");
    assert!(
        text.contains(&job_dir.join(&gens[0]).display().to_string()),
        "the coordinator did not print the generation path {}:\n{text}",
        job_dir.join(&gens[0]).display()
    );
    let script = ck_dir.join("ckpt_restart_script.sh");
    let mode = fs::metadata(&script)
        .unwrap_or_else(|e| panic!("{}: {e}", script.display()))
        .permissions()
        .mode();
    assert!(
        mode & 0o100 != 0,
        "{} is not executable ({mode:o})",
        script.display()
    );

    // let date.py write two more lines (repeated after the restore), then k
    wait_date_numbers(&test_time, after as usize + 2);
    tm.type_line("coord", "k");
    let status = tm.wait_exit("run");
    assert_eq!(
        status,
        137,
        "key k: `ckpt run` should exit with 128+SIGKILL; its window shows:\n{}",
        tm.capture("run").trim_end()
    );
    tm.wait_for("coord", "the job to leave", |t| t.contains("0 left"));
    wait_gone(job);
    let killed_at = *date_numbers(&test_time).last().unwrap();

    // the restart script, in the foreground: date.py goes on from the checkpoint
    let mut restart = Target::spawn(command(&script), &d.path().to_string_lossy());
    let listed = wait_listed(port, &[job]);
    assert!(
        listed.contains("date.py"),
        "the restored job is listed without date.py:\n{listed}"
    );
    // c works again, on the restored job
    let paths = checkpoint_ok(port);
    assert_eq!(paths.len(), 1, "one job, paths: {paths:?}");
    assert!(
        paths[0].starts_with(&job_dir),
        "the restored job's generation {} is not in its job directory {}",
        paths[0].display(),
        job_dir.display()
    );
    let status = restart.wait();
    restart.stdout.read_to_end();
    assert!(
        status.success(),
        "{} exited with {status:?}; stderr:\n{}",
        script.display(),
        restart.stderr.seen().join("\n")
    );

    // test.time: 1..killed_at from the first run, then r..N from the restored one,
    // where r-1 is the count at the checkpoint
    let nums = date_numbers(&test_time);
    let k = killed_at as usize;
    assert!(
        nums.len() > k,
        "nothing written after the restore: {nums:?}"
    );
    assert_eq!(
        nums[..k],
        (1..=killed_at).collect::<Vec<_>>()[..],
        "the first run's numbers changed: {nums:?}"
    );
    let r = nums[k];
    assert!(
        (before + 1..=after + 1).contains(&r),
        "the restored date.py wrote {r} first; the checkpoint was taken when test.time held \
         {before}..{after} numbers, so {}..{} was expected: {nums:?}",
        before + 1,
        after + 1
    );
    assert_eq!(
        nums[k..],
        (r..=N).collect::<Vec<_>>()[..],
        "after the restore date.py should count {r}..{N} without gap or duplicate: {nums:?}"
    );
    // date.py prints test.time at the end: the restorer passed its output on
    let last_line = file_lines(&test_time).last().unwrap().clone();
    assert!(
        restart.stdout.seen().contains(&last_line),
        "the restored date.py's final output did not reach the restart script's stdout"
    );
    drop(restart);

    // restore the second checkpoint, then q: the job is killed and the coordinator quits
    let mut restart = Target::spawn(command(&script), &d.path().to_string_lossy());
    wait_listed(port, &[job]);
    tm.type_line("coord", "q");
    let status = restart.wait();
    assert_eq!(
        status.code(),
        Some(137),
        "key q: the restored job's restorer should exit with 128+SIGKILL, got {status:?}"
    );
    let status = tm.wait_exit("coord");
    assert_eq!(
        status,
        0,
        "key q: the coordinator should exit with status 0; it shows:\n{}",
        tm.capture("coord").trim_end()
    );
    wait_gone(job);
    let out = command_at(port, &["l"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "after q, `ckpt command l` should find no coordinator: {out:?}"
    );
}

// ---------------------------------------------------------------- 2. periodic

/// `ckpt run -i 2 --keep 2` starts its own coordinator, which checkpoints
/// every 2 s; `latest` always names a complete generation and only 2 stay.
#[test]
fn periodic_checkpoints_keep_the_newest() {
    let d = tempdir();
    let _sweep = Sweep::new(&d);
    let port = test_port(1);
    let ck_dir = d.join("ckpt");
    let (out, stop) = (d.join("out"), d.join("stop"));
    let counter = testdata("counter");
    let port_s = port.to_string();
    let mut agent = start_agent(
        &[
            os("--coord-port"),
            os(&port_s),
            os("--ckpt-dir"),
            ck_dir.as_os_str(),
            os("-i"),
            os("2"),
            os("--keep"),
            os("2"),
        ],
        &[
            counter.as_os_str(),
            out.as_os_str(),
            stop.as_os_str(),
            os("50"),
        ],
        &d.path().to_string_lossy(),
    );
    agent.stdout.expect_line("ready");
    let job = job_of(&agent);
    let status = stdout(&command_at(port, &["s"]));
    assert!(
        status.contains("jobs: 1") && status.contains("interval: 2 s"),
        "the background coordinator should have the job and a 2 s interval:\n{status}"
    );

    // watch latest move on through 4 generations; it always names a complete one
    let mut seen: Vec<String> = Vec::new();
    wait_until("4 periodic checkpoints", || {
        let Some(job_dir) = job_dirs(&ck_dir).pop() else {
            return false;
        };
        let Some(l) = latest(&job_dir) else {
            return false;
        };
        if seen.last() != Some(&l) {
            assert!(
                !l.contains("tmp") && job_dir.join(&l).join("manifest.json").is_file(),
                "latest -> {l}, which is not a complete generation"
            );
            seen.push(l.clone());
        }
        gen_number(&l).is_some_and(|n| n >= 4)
    });
    // stop the timer: no checkpoint runs once the answer is there
    let off = command_at(port, &["i", "0"]);
    assert_success(&off, "ckpt command i 0");

    let job_dir = job_dir_of(&ck_dir, job);
    let gens = assert_generations_sound(&job_dir);
    assert_eq!(
        gens.len(),
        2,
        "--keep 2: expected exactly 2 generations in {}, found {gens:?}",
        job_dir.display()
    );
    let newest = gens.last().unwrap();
    assert!(gen_number(newest).unwrap() >= 4, "generations: {gens:?}");
    assert_eq!(
        latest(&job_dir).as_ref(),
        Some(newest),
        "latest is not the newest generation"
    );
    assert!(
        pending_generations(&job_dir).is_empty(),
        "unfinished generations left behind: {:?}",
        pending_generations(&job_dir)
    );
    assert!(ck_dir.join("ckpt_restart_script.sh").is_file());
    assert!(job_dir.join("ckpt_restart_script.sh").is_file());

    // the job was not disturbed: it counts on, and exits normally
    let lines = file_lines(&out).len();
    wait_file_lines(&out, lines + 5);
    touch(&stop);
    let st = agent.wait();
    assert!(st.success(), "`ckpt run` exited with {st:?}");
    assert_counting(
        &file_lines(&out),
        &job.to_string(),
        "counter under periodic checkpoints",
    );
}

// ---------------------------------------------------------------- 2b. agent killed

/// Starts `ckpt command c` and SIGKILLs `agent` once `ready(job_dir)` holds
/// (an unfinished generation is there).  Retries if the checkpoint finished
/// first.  Returns the exit status of `ckpt command c`.
fn kill_agent_during_checkpoint(
    port: u16,
    agent: i32,
    job_dir: &Path,
    ready: impl Fn(&[PathBuf]) -> bool,
    what: &str,
) -> std::process::ExitStatus {
    for _attempt in 0..5 {
        let mut c = ck();
        c.arg("command")
            .arg("--coord-port")
            .arg(port.to_string())
            .arg("c");
        let mut cmd = Target::spawn(c, "command");
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let pending = pending_generations(job_dir);
            if !pending.is_empty() && ready(&pending) {
                send_signal(agent, libc::SIGKILL);
                eprintln!("killed agent {agent} {what}: {pending:?}");
                return cmd.wait();
            }
            if cmd.child.try_wait().unwrap().is_some() {
                break; // finished before we could catch it: again
            }
            assert!(Instant::now() < deadline, "the checkpoint did not start");
            thread::sleep(Duration::from_micros(500));
        }
        eprintln!("the checkpoint completed before the agent could be killed {what}; again");
    }
    panic!("could not catch a checkpoint in progress {what} in 5 attempts");
}

/// What must hold after the agent died in the middle of a checkpoint: the
/// job is not left stopped (or died with it), no stray process of the
/// checkpoint is left in it, and `latest` still names a complete generation.
fn check_after_agent_killed(job: i32, job_dir: &Path, marker: &str, gen_before: &str) {
    match proc_state(job) {
        None | Some('Z') | Some('X') => {
            eprintln!("the job {job} is gone with its agent");
        }
        Some(_) => {
            // the kernel detaches a dead tracer's tracees at once; no waiting
            assert_running_not_stopped(job);
            // A copy-on-write snapshot copy that existed when the agent died is killed
            // with it (it never runs) and stays a zombie the job cannot see with wait()
            // (no exit signal); the job's next checkpoint reaps it. Nothing else may be
            // left: no live process, no other zombie.
            let deadline = Instant::now() + TIMEOUT;
            loop {
                let kids: Vec<_> = children(job)
                    .into_iter()
                    .map(|k| (k, proc_state(k), comm(k)))
                    .collect();
                let settled = kids
                    .iter()
                    .all(|(_, st, c)| *st == Some('Z') && c.as_deref() == Some("ckpt-snapshot"));
                if settled {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the job {job} has children after its agent was killed mid-checkpoint: {kids:?}"
                );
                thread::sleep(Duration::from_millis(10));
            }
            if !children(job).is_empty() {
                let scratch = job_dir.with_extension("reap-check");
                let out = ck()
                    .arg("dump")
                    .arg(job.to_string())
                    .arg("--dir")
                    .arg(&scratch)
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "a checkpoint of the job after its agent died: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let _ = fs::remove_dir_all(&scratch);
                assert!(
                    children(job).is_empty(),
                    "the next checkpoint did not reap the dead snapshot copy of job {job}: {:?}",
                    children(job)
                );
            }
        }
    }
    for p in pids_running(marker) {
        let st = proc_state(p);
        assert!(
            !matches!(st, Some('T' | 't')),
            "process {p} ({:?}) of the job is left stopped ({st:?})",
            cmdline(p)
        );
        assert_eq!(
            p, job,
            "a second process runs the job's command line: {p} ({st:?})"
        );
    }
    let gens = assert_generations_sound(job_dir);
    let l = latest(job_dir).unwrap();
    assert!(
        gen_number(&l) >= gen_number(gen_before),
        "latest went back from {gen_before} to {l} ({gens:?})"
    );
}

/// The agent (`ckpt run`, then a restorer) SIGKILLed in the middle of a
/// checkpoint of a job with 512 MiB of memory, once while the job is being
/// frozen and once while its memory is written: the job is not left stopped,
/// nothing unfinished is published, and `ckpt restore` of the job directory
/// restores `latest` (the job continues and verifies its memory).
#[test]
fn agent_killed_in_the_middle_of_a_checkpoint() {
    const MIB: u64 = 512;
    let d = tempdir();
    let mut sweep = Sweep::new(&d);
    let port = test_port(2);
    let ck_dir = d.join("ckpt");
    let stop = d.join("stop");
    let bigmem = testdata("bigmem");
    let marker = format!("{} {}", bigmem.display(), stop.display());
    let port_s = port.to_string();
    let mib_s = MIB.to_string();
    let mut agent = start_agent(
        &[
            os("--coord-port"),
            os(&port_s),
            os("--ckpt-dir"),
            ck_dir.as_os_str(),
        ],
        &[bigmem.as_os_str(), stop.as_os_str(), os(&mib_s)],
        &d.path().to_string_lossy(),
    );
    agent.stdout.expect_line("ready");
    let job = job_of(&agent);
    sweep.pid(job, &marker);
    wait_listed(port, &[job]);
    let first = checkpoint_ok(port);
    let job_dir = job_dir_of(&ck_dir, job);
    assert!(first[0].starts_with(&job_dir));

    // round 1: as soon as the unfinished generation appears (the job is frozen)
    let gen_before = latest(&job_dir).unwrap();
    let st = kill_agent_during_checkpoint(port, agent.pid, &job_dir, |_| true, "while freezing");
    eprintln!("ckpt command c after the agent was killed: {st:?}");
    let ast = agent.wait();
    assert_eq!(ast.signal(), Some(libc::SIGKILL), "the agent: {ast:?}");
    check_after_agent_killed(job, &job_dir, &marker, &gen_before);
    kill_and_wait_gone(job, &marker);

    let restore = |what: &str| -> Target {
        let mut c = ck();
        c.arg("restore").arg(&job_dir);
        let mut r = Target::spawn(c, &d.path().to_string_lossy());
        let deadline = Instant::now() + TIMEOUT;
        while !cmdline(job).is_some_and(|c| c.contains(&marker)) {
            if let Some(s) = r.child.try_wait().unwrap() {
                r.stderr.read_to_end();
                panic!(
                    "ckpt restore {} ({what}) exited with {s:?}: {}",
                    job_dir.display(),
                    r.stderr.seen().join("\n")
                );
            }
            assert!(
                Instant::now() < deadline,
                "the restored job does not run ({what})"
            );
            thread::sleep(Duration::from_millis(10));
        }
        r
    };
    let mut restorer = restore("after the agent was killed while freezing");
    wait_listed(port, &[job]);

    // round 2: the restorer is the agent now; kill it while memory is written
    let gen_before = latest(&job_dir).unwrap();
    let img = format!("core-{job}.img");
    let st = kill_agent_during_checkpoint(
        port,
        restorer.pid,
        &job_dir,
        |pending| {
            // The job runs on while its copy-on-write snapshot copy is read (and each
            // page compared with the generation before: this checkpoint may store
            // little), until the image is written.
            pending.iter().any(|p| p.join(&img).is_file())
                && children(job).into_iter().any(|k| {
                    comm(k).as_deref() == Some("ckpt-snapshot")
                        && !matches!(proc_state(k), Some('Z' | 'X') | None)
                })
        },
        "while writing memory",
    );
    eprintln!("ckpt command c after the agent was killed: {st:?}");
    let rst = restorer.wait();
    assert_eq!(rst.signal(), Some(libc::SIGKILL), "the restorer: {rst:?}");
    check_after_agent_killed(job, &job_dir, &marker, &gen_before);
    kill_and_wait_gone(job, &marker);

    // restore once more: it checkpoints again, then finishes and verifies its memory
    let mut restorer = restore("after the agent was killed while writing");
    wait_listed(port, &[job]);
    checkpoint_ok(port);
    touch(&stop);
    restorer.stdout.expect_line(&format!("verify ok {MIB} MiB"));
    let st = restorer.wait();
    assert!(
        st.success(),
        "the restored bigmem's restorer exited with {st:?}"
    );
    assert_generations_sound(&job_dir);
}

// ---------------------------------------------------------------- 3. failing

/// Two jobs under one coordinator, one with a netlink socket: the checkpoint
/// fails naming that job and the reason, both jobs go on, and the good job's
/// previous generation stays `latest`.
#[test]
fn failing_checkpoint_names_the_job_and_lets_all_run() {
    let d = tempdir();
    let _sweep = Sweep::new(&d);
    let port = test_port(3);
    let ck_dir = d.join("ckpt");
    let port_s = port.to_string();
    let _coord = start_coordinator(port, &ck_dir, &[]);
    let marker = d.path().to_string_lossy().into_owned();

    let (out, stop_a, stop_b) = (d.join("out"), d.join("stop-a"), d.join("stop-b"));
    let counter = testdata("counter");
    let mut a = start_agent(
        &[os("--coord-port"), os(&port_s)],
        &[
            counter.as_os_str(),
            out.as_os_str(),
            stop_a.as_os_str(),
            os("20"),
        ],
        &marker,
    );
    a.stdout.expect_line("ready");
    let job_a = job_of(&a);
    wait_listed(port, &[job_a]);
    checkpoint_ok(port);
    let dir_a = job_dir_of(&ck_dir, job_a);
    let gens_a = assert_generations_sound(&dir_a);
    let latest_a = latest(&dir_a).unwrap();

    let holdfd = testdata("holdfd");
    let mut b = start_agent(
        &[os("--coord-port"), os(&port_s)],
        &[holdfd.as_os_str(), os("netlink"), stop_b.as_os_str()],
        &marker,
    );
    b.stdout.expect_line("ready");
    let job_b = job_of(&b);
    wait_listed(port, &[job_a, job_b]);

    let res = command_at(port, &["c"]);
    let err = assert_error(&res, "ckpt command c with a job holding a netlink socket");
    assert!(
        err.contains(&format!("pid {job_b}")) || err.contains(&job_b.to_string()),
        "the error does not name the failing job (pid {job_b}): {err}"
    );
    assert!(
        !err.contains(&format!("pid {job_a}")),
        "the error blames the good job (pid {job_a}) too: {err}"
    );
    assert!(
        err.to_lowercase().contains("netlink"),
        "the error does not say why (netlink): {err}"
    );

    // both go on (the coordinator answers once it has told the agents to let
    // their jobs go: they may still be stopped for a moment)
    wait_not_stopped(job_a);
    wait_not_stopped(job_b);
    let n = file_lines(&out).len();
    wait_file_lines(&out, n + 10);
    let last_tick = b
        .stdout
        .seen()
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("tick ")?.parse::<u64>().ok())
        .unwrap_or(0);
    b.stdout
        .expect(&format!("a tick after {}", last_tick + 10), |l| {
            l.strip_prefix("tick ")
                .and_then(|v| v.parse::<u64>().ok())
                .is_some_and(|v| v >= last_tick + 10)
        });
    assert_running_not_stopped(job_a);
    assert_running_not_stopped(job_b);

    // nothing was published, the previous generation of the good job stays latest
    assert_eq!(
        latest(&dir_a).as_ref(),
        Some(&latest_a),
        "latest of the good job moved"
    );
    assert_eq!(
        assert_generations_sound(&dir_a),
        gens_a,
        "generations of the good job changed"
    );
    for dir in job_dirs(&ck_dir) {
        if dir != dir_a {
            assert!(
                latest(&dir).is_none(),
                "the failing job got a generation: {}",
                dir.display()
            );
        }
    }

    // without the bad job, checkpoints work again
    touch(&stop_b);
    let st = b.wait();
    assert!(st.success(), "holdfd's agent exited with {st:?}");
    let deadline = Instant::now() + TIMEOUT;
    while listed_pids(&stdout(&command_at(port, &["l"]))).contains(&job_b) {
        assert!(Instant::now() < deadline, "the ended job stays listed");
        thread::sleep(Duration::from_millis(100));
    }
    checkpoint_ok(port);
    assert_ne!(
        latest(&dir_a).unwrap(),
        latest_a,
        "the good job's latest did not move on"
    );
    touch(&stop_a);
    let st = a.wait();
    assert!(st.success(), "counter's agent exited with {st:?}");
    assert_counting(&file_lines(&out), &job_a.to_string(), "counter");
}

// ---------------------------------------------------------------- 4. coordinator killed

/// The coordinator SIGKILLed: the job runs on; a new coordinator on the same
/// port gets the agent back and can checkpoint it.
#[test]
fn coordinator_killed_and_restarted_agent_reconnects() {
    let d = tempdir();
    let _sweep = Sweep::new(&d);
    let port = test_port(4);
    let ck_dir = d.join("ckpt");
    let port_s = port.to_string();
    let marker = d.path().to_string_lossy().into_owned();
    let mut coord = start_coordinator(port, &ck_dir, &[]);
    let (out, stop) = (d.join("out"), d.join("stop"));
    let counter = testdata("counter");
    let mut agent = start_agent(
        &[os("--coord-port"), os(&port_s)],
        &[
            counter.as_os_str(),
            out.as_os_str(),
            stop.as_os_str(),
            os("20"),
        ],
        &marker,
    );
    agent.stdout.expect_line("ready");
    let job = job_of(&agent);
    wait_listed(port, &[job]);

    coord.kill();
    let n = file_lines(&out).len();
    wait_file_lines(&out, n + 10);
    assert!(
        agent.child.try_wait().unwrap().is_none(),
        "`ckpt run` ended when its coordinator was killed"
    );
    assert_running_not_stopped(job);

    let _coord2 = start_coordinator(port, &ck_dir, &[]);
    wait_listed(port, &[job]);
    let paths = checkpoint_ok(port);
    assert!(paths[0].starts_with(job_dir_of(&ck_dir, job)));

    touch(&stop);
    let st = agent.wait();
    assert!(st.success(), "`ckpt run` exited with {st:?}");
    assert_counting(&file_lines(&out), &job.to_string(), "counter");
}

// ---------------------------------------------------------------- 5. token

/// Beyond loopback the coordinator needs a 0600 token file, and every
/// `ckpt command` (and agent) must present the token.
#[test]
fn token_required_beyond_loopback() {
    let d = tempdir();
    let _sweep = Sweep::new(&d);
    let port = test_port(5);
    let port_s = port.to_string();
    let ck_dir = d.join("ckpt");
    let token = d.join("token");
    fs::write(&token, "0123456789abcdef-workflow-test\n").unwrap();
    fs::set_permissions(&token, fs::Permissions::from_mode(0o600)).unwrap();
    let wrong = d.join("wrong-token");
    fs::write(&wrong, "not-the-token\n").unwrap();
    fs::set_permissions(&wrong, fs::Permissions::from_mode(0o600)).unwrap();
    let open = d.join("open-token");
    fs::write(&open, "0123456789abcdef-workflow-test\n").unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o644)).unwrap();

    // no token: refused at once
    let out = ck_run([
        os("coordinator"),
        os("--bind"),
        os("0.0.0.0"),
        os("--port"),
        os(&port_s),
        os("--ckpt-dir"),
        ck_dir.as_os_str(),
    ]);
    let err = assert_error(&out, "ckpt coordinator --bind 0.0.0.0 without --token-file");
    assert!(
        err.contains("token"),
        "the error does not say what is missing: {err}"
    );
    // a token file others can read: refused
    let out = ck_run([
        os("coordinator"),
        os("--bind"),
        os("0.0.0.0"),
        os("--port"),
        os(&port_s),
        os("--ckpt-dir"),
        ck_dir.as_os_str(),
        os("--token-file"),
        open.as_os_str(),
    ]);
    let err = assert_error(&out, "ckpt coordinator --token-file <0644 file>");
    assert!(
        err.contains(&*open.to_string_lossy()),
        "the error does not name the file: {err}"
    );

    let token_s = token.to_string_lossy().into_owned();
    let _coord = start_coordinator(
        port,
        &ck_dir,
        &["--bind", "0.0.0.0", "--token-file", &token_s],
    );
    let status_with = |extra: &[&OsStr]| -> Output {
        let mut c = ck();
        c.arg("command")
            .arg("--coord-port")
            .arg(&port_s)
            .args(extra)
            .arg("s");
        run(&mut c)
    };
    let out = status_with(&[]);
    let err = assert_error(&out, "ckpt command s without the token");
    assert!(
        err.contains("token"),
        "the refusal does not mention the token: {err}"
    );
    let out = status_with(&[os("--token-file"), wrong.as_os_str()]);
    assert_error(&out, "ckpt command s with a wrong token");
    let out = status_with(&[os("--token-file"), open.as_os_str()]);
    let err = assert_error(&out, "ckpt command s --token-file <0644 file>");
    assert!(
        err.contains(&*open.to_string_lossy()),
        "the error does not name the file: {err}"
    );
    let out = status_with(&[os("--token-file"), token.as_os_str()]);
    assert_success(&out, "ckpt command s --token-file");
    assert!(stdout(&out).contains("jobs: 0"), "status: {}", stdout(&out));
    // CKPT_TOKEN_FILE does the same
    let mut c = ck();
    c.env("CKPT_TOKEN_FILE", &token)
        .arg("command")
        .arg("--coord-port")
        .arg(&port_s)
        .arg("s");
    assert_success(&run(&mut c), "CKPT_TOKEN_FILE=... ckpt command s");

    // an agent with the token registers and can be checkpointed
    let (out_f, stop) = (d.join("out"), d.join("stop"));
    let counter = testdata("counter");
    let mut agent = start_agent(
        &[
            os("--coord-port"),
            os(&port_s),
            os("--token-file"),
            token.as_os_str(),
        ],
        &[
            counter.as_os_str(),
            out_f.as_os_str(),
            stop.as_os_str(),
            os("20"),
        ],
        &d.path().to_string_lossy(),
    );
    agent.stdout.expect_line("ready");
    let job = job_of(&agent);
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let mut c = ck();
        c.arg("command")
            .arg("--coord-port")
            .arg(&port_s)
            .arg("--token-file")
            .arg(&token)
            .arg("l");
        let out = run(&mut c);
        if listed_pids(&stdout(&out)).contains(&job) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the agent with the token is not listed: {out:?}"
        );
        thread::sleep(Duration::from_millis(200));
    }
    let mut c = ck();
    c.arg("command")
        .arg("--coord-port")
        .arg(&port_s)
        .arg("--token-file")
        .arg(&token)
        .arg("c");
    assert_success(&run(&mut c), "ckpt command c --token-file");
    touch(&stop);
    assert!(agent.wait().success());
}

// ---------------------------------------------------------------- 6. env

/// DMTCP_COORD_PORT / DMTCP_COORD_HOST / DMTCP_CHECKPOINT_INTERVAL are
/// honoured when the CKPT_ variables are unset; CKPT_ ones and options win.
#[test]
fn dmtcp_environment_fallbacks() {
    let d = tempdir();
    let _sweep = Sweep::new(&d);
    let port = test_port(6);
    let nobody = test_port(7); // nothing listens there
    let (p, q) = (port.to_string(), nobody.to_string());
    let ck_dir = d.join("ckpt");
    let _coord = start_coordinator(port, &ck_dir, &[]);

    let status = |env: &[(&str, &str)], args: &[&str]| -> Output {
        let mut c = ck();
        for (k, v) in env {
            c.env(k, v);
        }
        c.arg("command").args(args).arg("s");
        run(&mut c)
    };
    let out = status(&[("DMTCP_COORD_PORT", &p)], &[]);
    assert_success(&out, "DMTCP_COORD_PORT=P ckpt command s");
    assert!(stdout(&out).contains("jobs: 0"), "status: {}", stdout(&out));
    let out = status(
        &[("DMTCP_COORD_HOST", "127.0.0.1"), ("DMTCP_COORD_PORT", &p)],
        &[],
    );
    assert_success(
        &out,
        "DMTCP_COORD_HOST=127.0.0.1 DMTCP_COORD_PORT=P ckpt command s",
    );
    let out = status(&[("DMTCP_COORD_PORT", &q)], &[]);
    assert_error(&out, "DMTCP_COORD_PORT=<nothing there> ckpt command s");
    let out = status(&[("CKPT_COORD_PORT", &p), ("DMTCP_COORD_PORT", &q)], &[]);
    assert_success(&out, "CKPT_COORD_PORT wins over DMTCP_COORD_PORT");
    let out = status(&[("CKPT_COORD_PORT", &q)], &["--coord-port", &p]);
    assert_success(&out, "--coord-port wins over CKPT_COORD_PORT");

    // ckpt run: the port and the interval of the coordinator it starts
    let port2 = test_port(8);
    let p2 = port2.to_string();
    let (out_f, stop) = (d.join("out"), d.join("stop"));
    let counter = testdata("counter");
    let mut c = ck();
    c.env("DMTCP_COORD_PORT", &p2)
        .env("DMTCP_CHECKPOINT_INTERVAL", "3600")
        .arg("run")
        .arg("--ckpt-dir")
        .arg(&ck_dir)
        .arg("--")
        .arg(&counter)
        .arg(&out_f)
        .arg(&stop)
        .arg("20");
    let mut agent = Target::spawn(c, &d.path().to_string_lossy());
    agent.stdout.expect_line("ready");
    let job = job_of(&agent);
    wait_listed(port2, &[job]);
    let out = status(&[("DMTCP_COORD_PORT", &p2)], &[]);
    assert_success(&out, "ckpt command s");
    assert!(
        stdout(&out).contains("interval: 3600 s"),
        "DMTCP_CHECKPOINT_INTERVAL=3600 did not reach the coordinator `ckpt run` started:\n{}",
        stdout(&out)
    );
    touch(&stop);
    assert!(agent.wait().success());
}

/// Issue 9: sqlite3 run under `ckpt run`, in the middle of a write transaction,
/// checkpointed by the coordinator, killed (key k) and brought back by the restart
/// script: it holds its lock again (a second sqlite3 finds the database locked) and
/// commits, with the row it inserted before the checkpoint.
#[test]
fn sqlite_under_ckpt_run_keeps_its_transaction_and_lock() {
    let d = tempdir();
    let _sweep = Sweep::new(&d);
    let (db, ck_dir) = (d.join("t.db"), d.join("ckpts"));
    let (ok, out) = second_sqlite(&db, "CREATE TABLE t(x); INSERT INTO t VALUES(1);");
    assert!(ok, "creating the database: {out}");
    let port = test_port(9);
    let _coord = start_coordinator(port, &ck_dir, &[]);
    let port_arg = port.to_string();
    let mut agent = start_agent(
        &[os("--coord-port"), os(&port_arg)],
        &[os("sqlite3"), db.as_os_str()],
        &db.to_string_lossy(),
    );
    let job = job_of(&agent);
    let stdin = agent.stdin.as_mut().unwrap();
    stdin
        .write_all(b"BEGIN EXCLUSIVE;\nINSERT INTO t VALUES(2);\nSELECT 'in transaction';\n")
        .unwrap();
    stdin.flush().unwrap();
    agent.stdout.expect_line("in transaction");
    let locked = |when: &str| assert_sqlite_locked(&db, when);
    locked("before the checkpoint");
    wait_listed(port, &[job]);
    checkpoint_ok(port);
    locked("after the checkpoint, with the job still running");
    let out = command_at(port, &["k"]);
    assert!(out.status.success(), "ckpt command k: {out:?}");
    agent.wait();
    wait_gone(job);

    let script = ck_dir.join("ckpt_restart_script.sh");
    let mut restart = Command::new(&script);
    clean_coord_env(&mut restart);
    let mut r = Target::spawn(restart, &ck_dir.to_string_lossy());
    let stdin = r.stdin.as_mut().unwrap();
    stdin.write_all(b"SELECT 'running';\n").unwrap();
    stdin.flush().unwrap();
    r.stdout.expect_line("running");
    locked("after the restart");
    let stdin = r.stdin.as_mut().unwrap();
    stdin
        .write_all(b"COMMIT;\nSELECT 'rows ' || count(*) FROM t;\n.quit\n")
        .unwrap();
    stdin.flush().unwrap();
    r.stdout.expect_line("rows 2");
    assert!(r.wait().success(), "the restart script");
    let (ok, out) = second_sqlite(&db, "SELECT count(*) FROM t;");
    assert!(ok && out.trim() == "2", "the committed row is there: {out}");
}

/// DMTCP habits (issue 12): an option of ckpt's that `ckpt run` does not know is a
/// usage error and runs nothing (it used to be run as the program);
/// `--join-coordinator` without a coordinator fails at once, running nothing and
/// starting none (the job used to run unprotected); with one, `-j` and `--ckptdir` join
/// it; `--new-coordinator` refuses a port where one answers.
#[test]
fn dmtcp_run_options() {
    let d = tempdir();
    let _sweep = Sweep::new(&d);
    let mark = d.join("ran");
    let out = run(ck()
        .args(["run", "--join-the-club", "--", "touch"])
        .arg(&mark));
    assert_eq!(out.status.code(), Some(2), "a usage error: {out:?}");
    assert!(stderr(&out).contains("--join-the-club"), "{}", stderr(&out));
    assert!(!mark.exists(), "the unknown option ran the program");

    let port = test_port(10);
    let port_s = port.to_string();
    let out = run(ck()
        .args([
            "run",
            "--join-coordinator",
            "--coord-port",
            &port_s,
            "--",
            "touch",
        ])
        .arg(&mark));
    let err = assert_error(&out, "--join-coordinator without a coordinator");
    assert!(
        err.contains(&format!(":{port}")) && err.contains("--join-coordinator"),
        "the error names the address and the option: {err}"
    );
    assert!(!mark.exists(), "the job ran without its coordinator");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "--join-coordinator started a coordinator"
    );

    let ck_dir = d.join("ckpt");
    let _coord = start_coordinator(port, &ck_dir, &[]);
    let (out_file, stop) = (d.join("out"), d.join("stop"));
    let counter = testdata("counter");
    let mut agent = start_agent(
        &[
            os("-j"),
            os("--coord-port"),
            os(&port_s),
            os("--ckptdir"),
            ck_dir.as_os_str(),
        ],
        &[counter.as_os_str(), out_file.as_os_str(), stop.as_os_str()],
        &d.path().to_string_lossy(),
    );
    agent.stdout.expect_line("ready");
    let job = job_of(&agent);
    wait_listed(port, &[job]);
    let gens = checkpoint_ok(port);
    assert!(
        gens.iter().all(|g| g.starts_with(&ck_dir)),
        "the checkpoint went to --ckptdir {}: {gens:?}",
        ck_dir.display()
    );

    let out = run(ck()
        .args([
            "run",
            "--new-coordinator",
            "--coord-port",
            &port_s,
            "--",
            "touch",
        ])
        .arg(&mark));
    let err = assert_error(&out, "--new-coordinator where one runs");
    assert!(err.contains("--new-coordinator"), "{err}");
    assert!(
        !mark.exists(),
        "the job ran although its coordinator could not be made"
    );
    touch(&stop);
    assert!(agent.wait().success());
}

/// A `ckpt run` whose program cannot start (not found, not executable) fails with the
/// cause and leaves nothing running: it used to leave its background coordinator
/// behind for good (issue 12).
#[test]
fn a_failed_run_leaves_nothing_running() {
    let d = tempdir();
    let _sweep = Sweep::new(&d);
    let port = test_port(11);
    let port_s = port.to_string();
    let not_exec = d.join("not-executable");
    fs::write(&not_exec, "#!/bin/sh\n").unwrap();
    fs::set_permissions(&not_exec, fs::Permissions::from_mode(0o644)).unwrap();
    let missing = d.join("missing");
    for (program, why) in [
        (&missing, "No such file or directory"),
        (&not_exec, "Permission denied"),
    ] {
        let out = run(ck()
            .args(["run", "--coord-port", &port_s, "--ckpt-dir"])
            .arg(d.path())
            .arg("--")
            .arg(program));
        let err = assert_error(&out, "ckpt run of a program that cannot start");
        assert!(
            err.contains(&program.display().to_string()) && err.contains(why),
            "the error names the program and why: {err}"
        );
        thread::sleep(Duration::from_millis(200));
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "a coordinator was left running on port {port}"
        );
    }
}

/// TCP connections inside a job, through the coordinator: `ckpt command c`, `k`, the
/// restart script. The program (testdata/inet.c tcp6: a listener without SO_REUSEADDR,
/// connections in one process and with a child, an idle one, data in flight both ways,
/// connections not yet accepted) checks every byte and address after the restart: the
/// coordinator's kill closes the connections with a reset, so no TIME_WAIT holds their
/// ports.
#[test]
fn tcp_connections_of_a_job_survive_the_coordinator_workflow() {
    let d = tempdir();
    let _sweep = Sweep::new(&d);
    let (stop, ck_dir) = (d.join("stop"), d.join("ckpts"));
    let port = test_port(14);
    let _coord = start_coordinator(port, &ck_dir, &[]);
    let port_arg = port.to_string();
    let prog = testdata("inet");
    let mut agent = start_agent(
        &[os("--coord-port"), os(&port_arg)],
        &[prog.as_os_str(), os("tcp6"), stop.as_os_str()],
        &stop.to_string_lossy(),
    );
    let job = job_of(&agent);
    let child: i32 = agent
        .stdout
        .expect_prefix("child ")
        .trim_start_matches("child ")
        .parse()
        .unwrap();
    agent.stdout.expect_line("ready");
    wait_listed(port, &[job]);
    checkpoint_ok(port);
    let out = command_at(port, &["k"]);
    assert!(out.status.success(), "ckpt command k: {out:?}");
    agent.wait();
    wait_gone(job);
    wait_gone(child);

    let script = ck_dir.join("ckpt_restart_script.sh");
    let mut restart = Command::new(&script);
    clean_coord_env(&mut restart);
    let mut r = Target::spawn(restart, &ck_dir.to_string_lossy());
    touch(&stop);
    r.stdout.expect_line("tcp6 ok");
    assert!(r.wait().success(), "the restart script");
}

/// DMTCP's Slurm restart line, `./ckpt_restart_script.sh -h HOST -p PORT`, restores the
/// job and registers it with the coordinator at HOST:PORT (it used to print the help of
/// `ckpt restore`, exit 0 and restore nothing); `-p` for a checkpoint taken without a
/// coordinator is an error that restores nothing (issue 12).
#[test]
fn restart_script_takes_dmtcp_host_and_port() {
    let d = tempdir();
    let _sweep = Sweep::new(&d);
    let (ck_dir, out_file, stop) = (d.join("ckpts"), d.join("out"), d.join("stop"));
    let (old_port, new_port) = (test_port(12), test_port(13));
    let mut old = start_coordinator(old_port, &ck_dir, &[]);
    let counter = testdata("counter");
    let old_s = old_port.to_string();
    let mut agent = start_agent(
        &[os("--coord-port"), os(&old_s)],
        &[counter.as_os_str(), out_file.as_os_str(), stop.as_os_str()],
        &d.path().to_string_lossy(),
    );
    agent.stdout.expect_line("ready");
    let job = job_of(&agent);
    wait_listed(old_port, &[job]);
    checkpoint_ok(old_port);
    assert!(command_at(old_port, &["k"]).status.success());
    agent.wait();
    wait_gone(job);
    old.kill();

    let _new = start_coordinator(new_port, &ck_dir, &[]);
    let script = ck_dir.join("ckpt_restart_script.sh");
    let mut restart = Command::new(&script);
    clean_coord_env(&mut restart);
    restart.args(["-h", "localhost", "-p", &new_port.to_string()]);
    let mut r = Target::spawn(restart, &ck_dir.to_string_lossy());
    wait_listed(new_port, &[job]);
    touch(&stop);
    assert!(r.wait().success(), "the restart script");

    // A plain dump has no coordinator to change.
    fs::remove_file(&stop).unwrap();
    let mut t = Target::start("counter", &[out_file.as_os_str(), stop.as_os_str()]);
    t.stdout.expect_line("ready");
    let plain = d.join("plain");
    t.dump_kill(&plain);
    let out = run(ck()
        .arg("restore")
        .arg(&plain)
        .args(["-p", &new_port.to_string()]));
    let err = assert_error(
        &out,
        "restore -p of a checkpoint taken without a coordinator",
    );
    assert!(
        err.contains("not checkpointed under a coordinator"),
        "{err}"
    );
    assert!(!pid_exists(t.pid), "nothing was restored");
}

/// `ckpt coordinator --port 0 --port-file F` listens where the kernel chose, says that
/// port (it used to log `:0`) and writes it to F, as dmtcp_coordinator does (issue 12).
#[test]
fn coordinator_on_port_0_says_and_writes_its_port() {
    let d = tempdir();
    let _sweep = Sweep::new(&d);
    let (ck_dir, port_file) = (d.join("ckpt"), d.join("port"));
    let mut c = ck();
    c.args(["coordinator", "--port", "0", "--port-file"])
        .arg(&port_file)
        .arg("--ckpt-dir")
        .arg(&ck_dir);
    let mut t = Target::spawn(c, &ck_dir.to_string_lossy());
    let line = t.stdout.expect_prefix("[ckpt coordinator] listening on");
    let port: u16 = fs::read_to_string(&port_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_ne!(port, 0, "the port file holds the chosen port");
    assert!(
        line.contains(&format!(":{port},")),
        "the coordinator says the port it listens on ({port}): {line}"
    );
    let out = command_at(port, &["s"]);
    assert!(
        out.status.success(),
        "ckpt command on the written port: {}",
        stderr(&out)
    );
}

/// The coordinator's `kc` (checkpoint, then kill every job) and DMTCP's `bc` alias of
/// `c` (issue 12): after `kc` the job is gone and its checkpoint restores. The job
/// does nothing between its checkpoint and its end (it stays frozen while the image
/// is written): the restored counter, which writes a number every millisecond,
/// writes none twice.
#[test]
fn kc_checkpoints_then_kills() {
    let d = tempdir();
    let _sweep = Sweep::new(&d);
    let port = test_port(15);
    let port_s = port.to_string();
    let (ck_dir, out_file, stop) = (d.join("ckpts"), d.join("out"), d.join("stop"));
    let _coord = start_coordinator(port, &ck_dir, &[]);
    let counter = testdata("counter");
    let mut agent = start_agent(
        &[os("--coord-port"), os(&port_s)],
        &[
            counter.as_os_str(),
            out_file.as_os_str(),
            stop.as_os_str(),
            os("1"),
        ],
        &d.path().to_string_lossy(),
    );
    agent.stdout.expect_line("ready");
    let job = job_of(&agent);
    wait_listed(port, &[job]);
    let out = command_at(port, &["bc"]);
    assert!(out.status.success(), "ckpt command bc: {}", stderr(&out));
    assert!(pid_exists(job), "bc kills nothing");
    let out = command_at(port, &["kc"]);
    assert!(out.status.success(), "ckpt command kc: {}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.lines().any(|l| l.contains("ckpt_counter_"))
            && text.lines().any(|l| l.starts_with("killing 1 job")),
        "kc says where the checkpoint went and that it kills the job: {text}"
    );
    agent.wait();
    wait_gone(job);
    let script = ck_dir.join("ckpt_restart_script.sh");
    let mut restart = Command::new(&script);
    clean_coord_env(&mut restart);
    let mut r = Target::spawn(restart, &ck_dir.to_string_lossy());
    wait_listed(port, &[job]);
    let killed_at = counted(&out_file).len();
    wait_until("the restored counter to count on", || {
        counted(&out_file).len() > killed_at + 10
    });
    touch(&stop);
    assert!(r.wait().success(), "the restart script after kc");
    let nums = counted(&out_file);
    for (i, n) in nums.iter().enumerate() {
        assert_eq!(
            *n,
            i as u64 + 1,
            "after kc and the restore, number {} in the counter's file is {n}: a number written \
             after the checkpoint was written again (killed at {killed_at}); all: {nums:?}",
            i + 1
        );
    }
}

/// The numbers of the complete lines "<n> <pid>" a counter wrote to `path`.
fn counted(path: &Path) -> Vec<u64> {
    let text = fs::read_to_string(path).unwrap_or_default();
    let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    complete
        .lines()
        .map(|l| l.split(' ').next().unwrap().parse().unwrap())
        .collect()
}

/// `ckpt run --restart-if-checkpoint` (issue 12, the Slurm requeue job): with no
/// checkpoint in the checkpoint directory it runs the program; with one job's
/// checkpoint there it restores that instead (the program given is not run) and the
/// job registers with the coordinator; with two jobs' checkpoints it refuses, running
/// nothing.
#[test]
fn run_restart_if_checkpoint() {
    let d = tempdir();
    let _sweep = Sweep::new(&d);
    let port = test_port(19);
    let port_s = port.to_string();
    let ck_dir = d.join("ckpts");
    let (out_file, stop) = (d.join("out"), d.join("stop"));
    let _coord = start_coordinator(port, &ck_dir, &[]);
    let counter = testdata("counter");
    let run_args = [
        os("--coord-port"),
        os(&port_s),
        os("--ckpt-dir"),
        ck_dir.as_os_str(),
        os("--restart-if-checkpoint"),
    ];

    // no checkpoint yet: the program runs
    let mut agent = start_agent(
        &run_args,
        &[counter.as_os_str(), out_file.as_os_str(), stop.as_os_str()],
        &d.path().to_string_lossy(),
    );
    agent.stdout.expect_line("ready");
    let job = job_of(&agent);
    wait_listed(port, &[job]);
    let out = command_at(port, &["kc"]);
    assert!(out.status.success(), "ckpt command kc: {}", stderr(&out));
    agent.wait();
    wait_gone(job);
    let killed_at = counted(&out_file).len();

    // a checkpoint: it is restored, and the program given is not run
    let other = d.join("other");
    let mut agent = start_agent(
        &run_args,
        &[counter.as_os_str(), other.as_os_str(), stop.as_os_str()],
        &d.path().to_string_lossy(),
    );
    agent
        .stderr
        .expect("ckpt: restoring ... (--restart-if-checkpoint)", |l| {
            l.starts_with("ckpt: restoring ") && l.contains("(--restart-if-checkpoint)")
        });
    wait_listed(port, &[job]);
    wait_until("the restored counter to count on", || {
        counted(&out_file).len() > killed_at + 3
    });
    touch(&stop);
    assert!(agent.wait().success(), "the restored counter's exit");
    assert!(
        !other.exists(),
        "--restart-if-checkpoint ran the program although a checkpoint was there"
    );

    // checkpoints of two jobs: which one is meant cannot be told
    let job_dirs: Vec<PathBuf> = fs::read_dir(&ck_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("job_"))
        .collect();
    assert_eq!(job_dirs.len(), 1, "one job directory: {job_dirs:?}");
    let copy = ck_dir.join("job_copy");
    let st = Command::new("cp")
        .arg("-a")
        .arg(&job_dirs[0])
        .arg(&copy)
        .status()
        .unwrap();
    assert!(st.success());
    let out = ck_run(
        [os("run")]
            .into_iter()
            .chain(run_args.iter().copied())
            .chain([
                os("--"),
                counter.as_os_str(),
                other.as_os_str(),
                stop.as_os_str(),
            ]),
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("2 jobs have checkpoints"),
        "the refusal names the cause: {}",
        stderr(&out)
    );
    assert!(!other.exists(), "the refused run started the program");
}

/// Something that is not a coordinator listens at the port (a silent server, and one
/// that sends a banner, as sshd does): `ckpt run` used to run the job unprotected without
/// a word, and `ckpt command c` waited for ever. Now both fail with one line naming the
/// address, and the job's program never starts (issue 12).
#[test]
fn a_port_that_is_not_a_coordinator_is_an_error() {
    let d = tempdir();
    let _sweep = Sweep::new(&d);
    for banner in [None, Some("SSH-2.0-OpenSSH_9.2\r\n")] {
        let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = listener.local_addr().unwrap().port().to_string();
        let server = thread::spawn(move || {
            let mut held = Vec::new();
            for c in listener.incoming().take(2) {
                let mut c = c.unwrap();
                if let Some(b) = banner {
                    let _ = c.write_all(b.as_bytes());
                }
                held.push(c);
            }
            thread::sleep(Duration::from_secs(3));
        });
        let ran = d.join("ran");
        let mut c = ck();
        c.env("CKPT_HANDSHAKE_TIMEOUT", "2")
            .args(["run", "--coord-port", &port, "--ckpt-dir"])
            .arg(d.join("ck"))
            .args(["--", "touch"])
            .arg(&ran);
        let out = run(&mut c);
        let err = assert_error(&out, "ckpt run against a port that is not a coordinator");
        assert!(
            err.contains(&format!(":{port}")) && err.contains("not as a ckpt coordinator"),
            "{err}"
        );
        assert!(
            !ran.exists(),
            "the job ran although no coordinator answered"
        );
        let mut c = ck();
        c.env("CKPT_HANDSHAKE_TIMEOUT", "2")
            .args(["command", "--coord-port", &port, "c"]);
        let out = run(&mut c);
        let err = assert_error(
            &out,
            "ckpt command c against a port that is not a coordinator",
        );
        assert!(err.contains("not as a ckpt coordinator"), "{err}");
        server.join().unwrap();
    }
}

/// `ckpt run -i N` and `--ckpt-dir D` set up the coordinator it starts; joining one that
/// runs with another interval or directory, they used to be ignored without a word (the
/// checkpoints went elsewhere). Now that is an error naming the coordinator's own, and
/// the job does not start; the same values, or none, join as before (issue 12).
#[test]
fn run_options_a_running_coordinator_cannot_take_are_errors() {
    let d = tempdir();
    let _sweep = Sweep::new(&d);
    let port = test_port(16);
    let port_s = port.to_string();
    let ck_dir = d.join("ckpt");
    let _coord = start_coordinator(port, &ck_dir, &[]);
    let ran = d.join("ran");
    let attempt = |extra: &[&OsStr]| {
        let mut c = ck();
        c.args(["run", "--coord-port", &port_s])
            .args(extra)
            .args(["--", "touch"])
            .arg(&ran);
        run(&mut c)
    };
    let other = d.join("elsewhere");
    let out = attempt(&[os("--ckpt-dir"), other.as_os_str()]);
    let err = assert_error(&out, "ckpt run --ckpt-dir other than the coordinator's");
    assert!(
        err.contains(&*ck_dir.to_string_lossy()) && err.contains("--ckpt-dir"),
        "{err}"
    );
    let out = attempt(&[os("-i"), os("7")]);
    let err = assert_error(&out, "ckpt run -i other than the coordinator's");
    assert!(err.contains("-i 7") && err.contains("every 0 s"), "{err}");
    assert!(
        !ran.exists(),
        "the job ran with options that could not take effect"
    );
    let out = attempt(&[os("--ckpt-dir"), ck_dir.as_os_str(), os("-i"), os("0")]);
    assert_success(
        &out,
        "ckpt run with the coordinator's own directory and interval",
    );
    assert!(ran.exists(), "the job did not run");
}

/// The coordinator says how each job's checkpoint goes, as it goes: frozen, all frozen,
/// written with its size and generation, with times (it used to print nothing between
/// "freezing" and "complete", for seconds on a large job; issue 12).
#[test]
fn coordinator_prints_each_jobs_progress() {
    let d = tempdir();
    let _sweep = Sweep::new(&d);
    let (stop, ck_dir) = (d.join("stop"), d.join("ckpts"));
    let port = test_port(17);
    let mut coord = start_coordinator(port, &ck_dir, &[]);
    let port_s = port.to_string();
    let out = d.join("out");
    let counter = testdata("counter");
    let mut agent = start_agent(
        &[os("--coord-port"), os(&port_s)],
        &[counter.as_os_str(), out.as_os_str(), stop.as_os_str()],
        &d.path().to_string_lossy(),
    );
    agent.stdout.expect_line("ready");
    let job = job_of(&agent);
    wait_listed(port, &[job]);
    let gens = checkpoint_ok(port);
    let p = "[ckpt coordinator] checkpoint 1:";
    let frozen = coord
        .stdout
        .expect_prefix(&format!("{p} job 1 (pid {job}) frozen ("));
    assert!(frozen.ends_with(" ms)"), "{frozen}");
    coord
        .stdout
        .expect_prefix(&format!("{p} every job frozen in "));
    let written = coord
        .stdout
        .expect_prefix(&format!("{p} job 1 (pid {job}) written, "));
    assert!(
        written.contains(" MiB: ") && written.contains(&*gens[0].to_string_lossy()),
        "{written}"
    );
    coord
        .stdout
        .expect_prefix("[ckpt coordinator] checkpoint 1 complete in ");
    touch(&stop);
    assert!(agent.wait().success());
}
