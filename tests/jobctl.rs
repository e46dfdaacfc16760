//! Job control survives a checkpoint (issue 9, the attribute group "jobctl"): a
//! process stopped by SIGSTOP or SIGTSTP at the checkpoint is stopped again after the
//! restore, every thread of it, by the same signal; its parent sees the stop report
//! waitpid(WUNTRACED) gives if it had not collected it, none if it had, and no new
//! SIGCHLD; SIGCONT lets it go on. testdata/stopped checks this from the parent's side;
//! a process stopped from outside (`kill -STOP`) is checked from the test. As root and
//! as an ordinary user. A dump that lets the tree run on leaves it as it was.
mod common;

use common::*;
use std::path::PathBuf;
use std::process::{Command, Stdio};

fn ckpt_as(ids: Option<(u32, u32)>) -> Command {
    match ids {
        Some(ids) => setpriv_test_user(ckpt_bin(), ids),
        None => ckpt_cmd(),
    }
}

/// A test directory with a copy of testdata/stopped in it, owned by the test user
/// with `user`.
fn setup(user: bool) -> (TestDir, PathBuf, Option<(u32, u32)>, Sweep) {
    let (d, exe, ids) = if user {
        let (d, exe, ids) = test_user_dir("stopped");
        (d, exe, Some(ids))
    } else {
        let d = tempdir();
        let exe = d.join("stopped");
        copy_program(&testdata("stopped"), &exe);
        (d, exe, None)
    };
    let sweep = Sweep::new(&d);
    (d, exe, ids, sweep)
}

fn start(exe: &PathBuf, ids: Option<(u32, u32)>, args: &[&std::ffi::OsStr]) -> Target {
    let mut cmd = match ids {
        Some(ids) => setpriv_test_user(exe, ids),
        None => command(exe),
    };
    cmd.args(args);
    Target::spawn(cmd, &exe.to_string_lossy())
}

fn dump(t: &Target, ids: Option<(u32, u32)>, ck: &std::path::Path, kill: bool) {
    let mut c = ckpt_as(ids);
    c.arg("dump").arg(t.pid.to_string()).arg("--dir").arg(ck);
    if kill {
        c.arg("--kill");
    }
    assert_success(&run(&mut c), "ckpt dump");
}

/// `ckpt restore` of `ck` (as the test user with `ids`; as root with the original
/// PIDs), its stdout.
fn restore(ck: &std::path::Path, ids: Option<(u32, u32)>) -> (std::process::Child, Lines, Lines) {
    let mut c = ckpt_as(ids);
    c.arg("restore").arg(ck);
    if ids.is_none() {
        c.args(["--pidns", "never"]);
    }
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // In a group of its own, as a job-control shell starts a job: the restored tree
    // joins the restorer's group, whose parent (this test) is in another group of the
    // same session, so the group is not orphaned and SIGTSTP stops as it did before the
    // checkpoint, however the test runner grouped this test's own processes.
    std::os::unix::process::CommandExt::process_group(&mut c, 0);
    eprintln!("$ {c:?} &");
    let mut child = c.spawn().expect("start ckpt restore");
    let out = Lines::new("restored stdout", child.stdout.take().unwrap());
    let err = Lines::new("restored stderr", child.stderr.take().unwrap());
    (child, out, err)
}

/// testdata/stopped in MODE (waited, unwaited) with SIG, checkpointed with
/// `dump --kill` and restored: the program checks the stop from the parent's side.
fn parent_sees_the_stop(sig: &str, mode: &str, user: bool) {
    let (d, exe, ids, _sweep) = setup(user);
    let (stop, ck) = (d.join("stop"), d.join("ckpt"));
    let mut t = start(&exe, ids, &[stop.as_os_str(), os(sig), os(mode)]);
    let child: i32 = t.stdout.expect_prefix("child ")["child ".len()..]
        .parse()
        .unwrap();
    t.stdout.expect_line("ready");
    assert_eq!(proc_state(child), Some('T'), "the child before the dump");
    dump(&t, ids, &ck, true);
    t.reap_killed();
    wait_pid_free(child);

    let (mut r, mut out, mut err) = restore(&ck, ids);
    if ids.is_none() {
        wait_until("the restored parent under its PID", || {
            cmdline(t.pid).is_some_and(|c| c.contains(&t.marker))
        });
        // Traced ('t') while it is restored, then let go into its stop ('T').
        wait_until("the restored child in its stop", || {
            proc_state(child) == Some('T')
        });
    }
    touch(&stop);
    out.expect_line("still stopped");
    out.expect_line("stopped ok");
    let status = wait_child(&mut r, "ckpt restore");
    err.read_to_end();
    assert!(status.success(), "ckpt restore: {status:?}");
    if sig == "TSTP" {
        assert!(
            !err.saw_prefix("ckpt: warning"),
            "the stop needed no fallback: {:?}",
            err.seen()
        );
    }
}

#[test]
fn a_stopped_child_whose_stop_was_collected() {
    parent_sees_the_stop("STOP", "waited", false);
}

#[test]
fn a_stopped_child_whose_stop_was_not_collected() {
    parent_sees_the_stop("STOP", "unwaited", false);
}

#[test]
fn a_child_stopped_by_sigtstp() {
    parent_sees_the_stop("TSTP", "unwaited", false);
}

#[test]
fn a_stopped_child_as_an_ordinary_user() {
    parent_sees_the_stop("STOP", "waited", true);
    parent_sees_the_stop("TSTP", "unwaited", true);
}

/// A dump that lets the tree run on leaves the stop as it was: still stopped, the
/// report collected or not, no new SIGCHLD.
#[test]
fn a_dump_leaves_the_stop_as_it_was() {
    for mode in ["waited", "unwaited"] {
        let (d, exe, ids, _sweep) = setup(false);
        let (stop, ck) = (d.join("stop"), d.join("ckpt"));
        let mut t = start(&exe, ids, &[stop.as_os_str(), os("STOP"), os(mode)]);
        t.stdout.expect_line("ready");
        dump(&t, ids, &ck, false);
        dump(&t, ids, &ck, false);
        touch(&stop);
        t.stdout.expect_line("stopped ok");
        assert!(t.wait().success());
    }
}

/// The state letter of every thread of `pid`.
fn thread_states(pid: i32) -> Vec<char> {
    tids(pid)
        .into_iter()
        .filter_map(|tid| {
            let s = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
            s[s.rfind(')')? + 1..].trim_start().chars().next()
        })
        .collect()
}

/// `kill -STOP` from outside on the process being checkpointed: restored stopped
/// (seen in /proc), and SIGCONT lets it go on.
#[test]
fn a_process_stopped_from_outside() {
    let (d, exe, ids, _sweep) = setup(false);
    let (stop, ck) = (d.join("stop"), d.join("ckpt"));
    let mut t = start(&exe, ids, &[stop.as_os_str(), os("STOP"), os("self")]);
    t.stdout.expect_line("ready");
    t.stdout.expect_prefix("tick ");
    send_signal(t.pid, libc::SIGSTOP);
    wait_until("the target stopped", || proc_state(t.pid) == Some('T'));
    dump(&t, ids, &ck, true);
    t.reap_killed();

    let (mut r, mut out, _err) = restore(&ck, ids);
    wait_until("the restored process under its PID", || {
        cmdline(t.pid).is_some_and(|c| c.contains(&t.marker))
    });
    // Every restored process is let go before `ckpt restore` reports anything: the
    // state is final once it is the program's again (not traced).
    wait_until("the restored process let go", || {
        std::fs::read_to_string(format!("/proc/{}/status", t.pid))
            .is_ok_and(|s| s.contains("TracerPid:\t0"))
    });
    assert_eq!(
        thread_states(t.pid),
        vec!['T'],
        "the restored process is stopped"
    );
    touch(&stop);
    send_signal(t.pid, libc::SIGCONT);
    out.expect_line("done");
    let status = wait_child(&mut r, "ckpt restore");
    assert!(status.success(), "ckpt restore: {status:?}");
}

/// A `ckpt run` job whose member is stopped: checkpointed by the coordinator (`c`),
/// killed (`k`), restored by the restart script: the member is stopped again and its
/// parent (the job) sees what it saw.
#[test]
fn a_ckpt_run_job_with_a_stopped_member() {
    let (d, exe, _, _sweep) = setup(false);
    let port = free_port();
    let port_s = port.to_string();
    let (stop, ckdir) = (d.join("stop"), d.join("ckpt"));
    let mut c = ck();
    c.args(["run", "--coord-port", &port_s, "--ckpt-dir"])
        .arg(&ckdir)
        .arg("--")
        .arg(&exe)
        .args([stop.as_os_str(), os("STOP"), os("waited")]);
    let mut agent = Target::spawn(c, &d.path().to_string_lossy());
    let child: i32 = agent.stdout.expect_prefix("child ")["child ".len()..]
        .parse()
        .unwrap();
    agent.stdout.expect_line("ready");
    let job = children(agent.pid)[0];
    wait_until("the job registered", || {
        let out = command_at(port, &["l"]);
        out.status.success()
            && String::from_utf8_lossy(&out.stdout).contains(&format!("pid {job} "))
    });
    assert_success(&command_at(port, &["c"]), "ckpt command c");
    assert_eq!(
        proc_state(child),
        Some('T'),
        "the member after the checkpoint"
    );
    assert_success(&command_at(port, &["k"]), "ckpt command k");
    agent.wait();
    wait_pid_free(job);
    wait_pid_free(child);
    wait_until("the coordinator to exit or to have no job", || {
        let out = command_at(port, &["s"]);
        !out.status.success() || String::from_utf8_lossy(&out.stdout).contains("jobs: 0")
    });

    let mut restart = Target::spawn(
        command(ckdir.join("ckpt_restart_script.sh")),
        &d.path().to_string_lossy(),
    );
    touch(&stop);
    restart.stdout.expect_line("still stopped");
    restart.stdout.expect_line("stopped ok");
    let st = restart.wait();
    assert!(st.success(), "the restart script: {st:?}");
}
