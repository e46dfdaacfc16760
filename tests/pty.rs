//! Terminals (issue 9): pseudo-terminals made inside the job, and the restorer's own
//! terminal.
//!
//! - `testdata/pty DIR` holds two pty pairs (see the program): both ends, the slave's
//!   termios (every field and both speeds) and window size, the data queued in both
//!   directions, a session with the slave as controlling terminal, /dev/tty, the
//!   foreground process group, and a master alone in packet mode and locked. It is
//!   checkpointed once left running (which must leave its queued data in place), then
//!   with `--kill`, restored, and checks everything from inside; the data exchanged
//!   after the restore follows the queued data. As root and as an ordinary user.
//! - A real program: `script -c bash` (util-linux) with a command sent before and after
//!   a checkpoint, the restored bash answering through the new pty.
//! - The restorer's terminal: `testdata/rawtty` in raw mode in a tmux pane, checkpointed
//!   and restored in another pane: a line typed afterwards appears once (the terminal
//!   does not echo it as well), the program finds its termios, and when it exits the
//!   restorer puts its terminal back as it was.
mod common;

use common::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

/// `pty DIR` started: the PIDs of its child and grandchild (to wait for once killed).
fn pty_started(t: &mut Target) -> [i32; 2] {
    let l = t.stdout.expect_prefix("child ");
    let w: Vec<&str> = l.split(' ').collect();
    let pids = [w[1].parse().unwrap(), w[6].parse().unwrap()];
    t.stdout.expect_prefix("parent ");
    t.stdout.expect_line("ready");
    pids
}

/// The restored `pty DIR` after DIR/go: its own checks, in order.
fn check_restored_pty(stdout: &mut Lines, dir: &Path) {
    touch(&dir.join("go"));
    // The parent's line and the child's come in either order.
    stdout.expect_line("pty ok");
    for want in ["child termios ok", "child ok", "parent termios ok"] {
        assert!(
            stdout.seen().iter().any(|l| l.starts_with(want)),
            "{want:?} in {:?}",
            stdout.seen()
        );
    }
}

#[test]
fn pty_pairs_come_back_as_root() {
    let d = tempdir();
    let ck = d.join("ckpt");
    let mut t = Target::start("pty", &[d.path().as_os_str()]);
    let kids = pty_started(&mut t);
    // A dump that leaves the job running leaves its queued data where it was.
    dump(t.pid, &ck, false);
    assert_running_not_stopped(t.pid);
    t.dump_kill(&ck);
    kids.into_iter().for_each(wait_pid_free);
    let info = ckpt([os("info"), ck.as_os_str()]);
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(
        text.contains("pty master") && text.contains("pty slave"),
        "ckpt info names both ends: {text}"
    );

    let mut r = Restored::of(&ck, &t);
    r.assert_same_pid();
    check_restored_pty(&mut r.stdout, d.path());
    r.wait_success();
}

#[test]
fn pty_pairs_come_back_for_an_ordinary_user() {
    let (d, prog, ids) = test_user_dir("pty");
    let ck = d.join("ckpt");
    let work = d.join("work");
    fs::create_dir(&work).unwrap();
    fs::set_permissions(&work, fs::Permissions::from_mode(0o777)).unwrap();
    let mut c = setpriv_test_user(&prog, ids);
    c.arg(&work);
    let mut t = Target::spawn(c, &prog.to_string_lossy());
    pty_started(&mut t);
    dump_kill_as(&mut t, &ck, ids);
    let mut r = restore_as(&ck, ids);
    check_restored_pty(&mut r.stdout, &work);
    let status = r.wait();
    assert!(
        status.success(),
        "ckpt restore as {TEST_USER}: {status:?}, stderr {:?}",
        r.stderr.seen()
    );
}

#[test]
fn an_end_of_file_queued_in_canonical_input_is_refused() {
    let d = tempdir();
    let ck = d.join("ckpt");
    let mut t = Target::start("pty", &[d.path().as_os_str(), os("eof")]);
    pty_started(&mut t);
    t.stdout.expect_line("eof queued");
    let err = dump_refused(t.pid, &ck, "a dump with an end-of-file queued on a pty");
    assert!(
        err.contains(&format!("process {}", t.pid)) && err.contains("end-of-file"),
        "the refusal names the process and what: {err}"
    );
    assert_running_not_stopped(t.pid);
    touch(&d.join("go"));
    assert!(t.wait().success());
}

/// `script -q -c bash /dev/null` with its input and output piped, as the user `ids`
/// (None: as the test).
fn script_bash(ids: Option<(u32, u32)>) -> Command {
    let mut c = match ids {
        Some(ids) => setpriv_test_user("script", ids),
        None => command("script"),
    };
    c.args(["-q", "-c", "bash --norc --noprofile -i", "/dev/null"])
        .env("PS1", "$ ")
        .env("TERM", "dumb")
        .env("HOME", "/")
        .env_remove("PROMPT_COMMAND");
    c
}

/// What the restored bash under script answers, through the new pty.
fn script_after(stdin: &mut std::process::ChildStdin, stdout: &mut Lines) {
    stdin.write_all(b"echo after-$((6*7)) $(tty)\n").unwrap();
    let l = stdout.expect("bash's answer after the restore", |l| {
        l.contains("after-42")
    });
    assert!(l.contains("/dev/pts/"), "bash runs on a pty: {l}");
    stdin.write_all(b"exit\n").unwrap();
}

/// `script -c bash` answers a command, is checkpointed (as `ids`), and answers through
/// the new pty after the restore.
fn script_continues(ids: Option<(u32, u32)>) {
    let mut t = Target::spawn(script_bash(ids), "script");
    t.stdin
        .as_mut()
        .unwrap()
        .write_all(b"echo before-$((6*7))\n")
        .unwrap();
    t.stdout
        .expect("bash's answer before", |l| l.contains("before-42"));
    let d = tempdir();
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let ck = d.join("ckpt");
    let shells = children(t.pid);
    assert_eq!(shells.len(), 1, "script runs bash: {shells:?}");
    match ids {
        Some(ids) => {
            dump_kill_as(&mut t, &ck, ids);
            wait_pid_free(shells[0]);
            let mut r = restore_as(&ck, ids);
            script_after(r.stdin.as_mut().unwrap(), &mut r.stdout);
            assert!(r.wait().success(), "ckpt restore as {TEST_USER}");
        }
        None => {
            t.dump_kill(&ck);
            wait_pid_free(shells[0]);
            let mut r = Restored::of(&ck, &t);
            r.assert_same_pid();
            script_after(r.stdin.as_mut().unwrap(), &mut r.stdout);
            r.wait_success();
        }
    }
}

#[test]
fn script_running_bash_continues() {
    script_continues(None);
}

#[test]
fn script_running_bash_continues_for_an_ordinary_user() {
    assert_root("the unprivileged script test");
    script_continues(Some(ensure_test_user()));
}

use std::io::Write;

/// A tmux server of the test's own (socket in `dir`).
struct Tmux {
    sock: String,
}

impl Tmux {
    fn new(dir: &Path) -> Tmux {
        let t = Tmux {
            sock: dir.join("tmux.sock").to_string_lossy().into_owned(),
        };
        t.run(&[
            "new-session",
            "-d",
            "-s",
            "t",
            "-x",
            "100",
            "-y",
            "30",
            "sleep 600",
        ]);
        t
    }

    fn run(&self, args: &[&str]) -> String {
        let mut c = command("tmux");
        c.args(["-S", &self.sock]).args(args).env("TERM", "xterm");
        let out = run(&mut c);
        assert_success(&out, &format!("tmux {args:?}"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn window(&self, name: &str, cmd: &str) {
        self.run(&["new-window", "-t", "t:", "-n", name, cmd]);
    }

    fn screen(&self, name: &str) -> String {
        self.run(&["capture-pane", "-p", "-t", &format!("t:{name}")])
    }

    fn wait_screen(&self, name: &str, text: &str) -> String {
        let mut s = String::new();
        wait_until(&format!("{text:?} in tmux window {name}"), || {
            s = self.screen(name);
            s.contains(text)
        });
        s
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = command("tmux")
            .args(["-S", &self.sock, "kill-server"])
            .output();
    }
}

/// Whether `pid` runs untraced (the restorer let it go).
fn untraced(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .is_ok_and(|s| s.lines().any(|l| l == "TracerPid:\t0"))
}

/// Whether the loader is gone from `pid` (its zone, 0x3ff000000000.., is unmapped by
/// the restorer once it has seized the process): before that, a loader whose memory is
/// in place shows the restored command line, untraced, for a moment.
fn loader_gone(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/maps")).is_ok_and(|m| {
        !m.lines()
            .any(|l| l.starts_with("3ff0") || l.starts_with("3ff1"))
    })
}

/// `ckpt restore CK` in a new tmux window `restored`, between two `stty -g` of its
/// terminal (into DIR/before and DIR/after); returns once the restored process, whose
/// command line has `marker`, runs on its own. tmux does not always reap a pane's
/// process killed by `ckpt dump --kill` (it saw the pane close while the process was
/// still ckpt's tracee): the restore may then take a new PID namespace, and the
/// restored process another host PID.
fn restore_in_window(tmux: &Tmux, d: &Path, ck: &Path, marker: &str) {
    tmux.window(
        "restored",
        &format!(
            "sh -c 'stty -g > {b}; {ckpt} restore {ck}; echo restore-exit-$?; stty -g > {a}; sleep 600'",
            b = d.join("before").display(),
            a = d.join("after").display(),
            ckpt = ckpt_bin().display(),
            ck = ck.display()
        ),
    );
    // Its command line (restored memory) while no longer traced (let go) and without
    // the loader: a process with the PID that has not become the restored program yet
    // (the loader, which shows the restored command line untraced between mapping its
    // memory and being seized) does not count, nor does the unreaped original.
    wait_until("the restored process to run on its own", || {
        pids_running(marker)
            .into_iter()
            .any(|p| !matches!(proc_state(p), Some('Z') | None) && loader_gone(p) && untraced(p))
    });
}

/// Once the restored job exited: its terminal is as it was before the restore.
fn assert_terminal_put_back(tmux: &Tmux, d: &Path) {
    tmux.wait_screen("restored", "restore-exit-0");
    let after = d.join("after");
    wait_until("stty -g after the restore", || {
        file_lines(&after).len() == 1
    });
    assert_eq!(
        file_lines(&d.join("before")),
        file_lines(&after),
        "the restorer puts its terminal back when the job exits"
    );
}

#[test]
fn the_restorers_terminal_gets_the_jobs_termios() {
    let d = tempdir();
    let _sweep = Sweep::new(&d);
    let tmux = Tmux::new(d.path());
    let rawtty = testdata("rawtty");
    let pidfile = d.join("pid");
    tmux.window(
        "orig",
        &format!("{} {}", rawtty.display(), pidfile.display()),
    );
    let pid: i32 = wait_file_lines(&pidfile, 1)[0].parse().unwrap();
    tmux.wait_screen("orig", "raw");
    let ck = d.join("ckpt");
    let out = dump(pid, &ck, true);
    assert_success(&out, "ckpt dump --kill of rawtty");

    restore_in_window(&tmux, d.path(), &ck, &rawtty.to_string_lossy());
    tmux.run(&["send-keys", "-t", "t:restored", "abc", "Enter"]);
    let screen = tmux.wait_screen("restored", "got ABC");
    assert!(
        !screen.contains("abc"),
        "the line typed was echoed by the terminal too (cooked mode):\n{screen}"
    );
    assert!(
        screen.contains("got ABC termios same"),
        "the restored program finds its termios:\n{screen}"
    );
    tmux.run(&["send-keys", "-t", "t:restored", "q", "Enter"]);
    assert_terminal_put_back(&tmux, d.path());
}

/// The case: bash (readline puts the terminal in raw mode while it reads a
/// line) in a tmux pane, restored in another: the first line typed shows once.
#[test]
fn bash_restored_in_tmux_echoes_a_line_once() {
    let d = tempdir();
    let _sweep = Sweep::new(&d);
    let tmux = Tmux::new(d.path());
    let rc = d.join("bashrc");
    fs::write(&rc, "PS1='B> '\n").unwrap();
    let marker = format!("--rcfile {}", rc.display());
    tmux.window(
        "orig",
        &format!("env -i TERM=xterm HOME=/ bash --noprofile {marker} -i"),
    );
    tmux.wait_screen("orig", "B>");
    let pid: i32 = tmux
        .run(&["list-panes", "-t", "t:orig", "-F", "#{pane_pid}"])
        .trim()
        .parse()
        .unwrap();
    assert!(
        cmdline(pid).is_some_and(|c| c.contains(&marker)),
        "the pane runs bash itself: {:?}",
        cmdline(pid)
    );
    let ck = d.join("ckpt");
    let out = dump(pid, &ck, true);
    assert_success(&out, "ckpt dump --kill of bash");

    restore_in_window(&tmux, d.path(), &ck, &marker);
    tmux.run(&[
        "send-keys",
        "-t",
        "t:restored",
        "echo two-$((6*7))",
        "Enter",
    ]);
    let screen = tmux.wait_screen("restored", "two-42");
    assert_eq!(
        screen.matches("echo two-").count(),
        1,
        "the line typed shows once, not echoed by the terminal as well:\n{screen}"
    );
    tmux.run(&["send-keys", "-t", "t:restored", "exit", "Enter"]);
    assert_terminal_put_back(&tmux, d.path());
}
