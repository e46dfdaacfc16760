//! Helpers shared by the end-to-end tests: paths to `ckpt` and to the test
//! programs (built by `make` into `target/testdata/`), spawning targets with
//! piped standard streams, waiting for lines with a timeout, running
//! `ckpt dump/restore/info`, and cleaning up: every process a test starts is
//! killed when its handle is dropped, also when the test fails.
//!
//! Timeouts are only a safety net (60 s); no test asserts on timing.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

/// The safety-net timeout for anything a test waits for.
pub const TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------- paths

/// The `ckpt` under test: the one cargo built with these tests, or
/// `CKPT_BIN` (e.g. an installed one).
pub fn ckpt_bin() -> PathBuf {
    match std::env::var_os("CKPT_BIN") {
        Some(bin) => bin.into(),
        None => PathBuf::from(env!("CARGO_BIN_EXE_ckpt")),
    }
}

/// Where `make` puts the test programs: `<target dir>/testdata`, next to the
/// profile directory that holds `ckpt` (`CKPT_TESTDATA` overrides it).
pub fn testdata_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CKPT_TESTDATA") {
        return dir.into();
    }
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_ckpt"));
    bin.parent()
        .and_then(Path::parent)
        .expect("ckpt binary has no target directory")
        .join("testdata")
}

/// Copy a program to `dst` for a test to run, and wait until no other process still
/// has the copy open for writing: a child that another test thread forked while the
/// copy was being written holds that descriptor until it execs, and exec'ing the copy
/// meanwhile fails with ETXTBSY (runuser and ckpt cannot retry that for us).
pub fn copy_program(src: &Path, dst: &Path) {
    fs::copy(src, dst).unwrap_or_else(|e| panic!("copying {}: {e}", src.display()));
    let deadline = Instant::now() + TIMEOUT;
    while open_for_writing_elsewhere(dst) {
        assert!(
            Instant::now() < deadline,
            "{} stays open for writing",
            dst.display()
        );
        thread::sleep(Duration::from_millis(5));
    }
}

fn open_for_writing_elsewhere(path: &Path) -> bool {
    let Ok(procs) = fs::read_dir("/proc") else {
        return false;
    };
    for p in procs.flatten() {
        let Ok(fds) = fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if fs::read_link(fd.path()).is_ok_and(|t| t == path) {
                let info = p.path().join("fdinfo").join(fd.file_name());
                let flags = fs::read_to_string(info)
                    .ok()
                    .and_then(|s| {
                        s.lines()
                            .find_map(|l| l.strip_prefix("flags:"))
                            .and_then(|v| i32::from_str_radix(v.trim(), 8).ok())
                    })
                    .unwrap_or(0);
                if flags & libc::O_ACCMODE != libc::O_RDONLY {
                    return true;
                }
            }
        }
    }
    false
}

/// Path of one test program; panics with "run `make` first" if it is missing.
pub fn testdata(name: &str) -> PathBuf {
    let path = testdata_dir().join(name);
    assert!(
        path.exists(),
        "test program {} is missing: run `make` (or `make testdata`) first",
        path.display()
    );
    path
}

// ---------------------------------------------------------------- temp dirs

/// A temporary directory, removed on drop.  With `CKPT_KEEP_TEST_DIRS` set,
/// a failing test keeps it and prints where it is.
pub struct TestDir(Option<tempfile::TempDir>);

pub fn tempdir() -> TestDir {
    let dir = tempfile::Builder::new()
        .prefix("ckpt-test-")
        .tempdir()
        .expect("create temporary directory");
    TestDir(Some(dir))
}

impl TestDir {
    pub fn path(&self) -> &Path {
        self.0.as_ref().unwrap().path()
    }
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path().join(name)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if thread::panicking() && std::env::var_os("CKPT_KEEP_TEST_DIRS").is_some() {
            let path = self.0.take().unwrap().keep();
            eprintln!("kept test directory {}", path.display());
        }
    }
}

// ---------------------------------------------------------------- lines

/// Lines from a child's stdout or stderr, read by a background thread (and
/// echoed to the test's output with a prefix, which cargo shows on failure).
/// `expect*` consume lines in order; `seen` holds every line received.
///
/// A quiet one ([`Lines::new_quiet`], [`Target::spawn_quiet`]) echoes nothing: for a
/// chatty program (a coordinator's log over a minute) whose hundreds of lines would
/// push the panic message out of a truncated CI log. Its panics show only the last
/// [`TAIL`] lines; a test puts [`Lines::tail`] into its own assertions' messages.
pub struct Lines {
    name: String,
    rx: Receiver<String>,
    seen: Vec<String>,
    /// index in `seen` of the next line `next_line` returns
    pos: usize,
    eof: bool,
    quiet: bool,
}

/// How many of the last lines a quiet [`Lines`] shows in a panic message.
pub const TAIL: usize = 30;

impl Lines {
    pub fn new(name: &str, reader: impl Read + Send + 'static) -> Lines {
        Lines::with_echo(name, reader, true)
    }

    /// Like [`Lines::new`], without echoing the lines.
    pub fn new_quiet(name: &str, reader: impl Read + Send + 'static) -> Lines {
        Lines::with_echo(name, reader, false)
    }

    fn with_echo(name: &str, reader: impl Read + Send + 'static, echo: bool) -> Lines {
        let (tx, rx) = mpsc::channel();
        let tag = name.to_string();
        thread::spawn(move || {
            let mut reader = BufReader::new(reader);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf)
                            .trim_end_matches('\n')
                            .to_string();
                        if echo {
                            eprintln!("[{tag}] {line}");
                        }
                        if tx.send(line).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        Lines {
            name: name.to_string(),
            rx,
            seen: Vec::new(),
            pos: 0,
            eof: false,
            quiet: !echo,
        }
    }

    /// Every line received so far.
    pub fn seen(&self) -> &[String] {
        &self.seen
    }

    /// Takes in every line that has come so far, without waiting and without
    /// consuming any (they stay for `expect` and `next_line`).
    pub fn take_in(&mut self) {
        while !self.eof {
            match self.rx.try_recv() {
                Ok(line) => self.seen.push(line),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => self.eof = true,
            }
        }
    }

    /// The last `n` lines received (after [`Lines::take_in`]), for a panic message:
    /// a header naming the stream and how many lines came before them.
    pub fn tail(&mut self, n: usize) -> String {
        self.take_in();
        self.last(n)
    }

    fn last(&self, n: usize) -> String {
        let from = self.seen.len().saturating_sub(n);
        let mut out = format!(
            "--- {}: the last {} of {} lines{}:",
            self.name,
            self.seen.len() - from,
            self.seen.len(),
            if self.eof { ", then end of output" } else { "" }
        );
        for l in &self.seen[from..] {
            out.push('\n');
            out.push_str(l);
        }
        out
    }

    /// What a panic shows of the lines: all of them, or the tail of a quiet one.
    fn so_far(&self) -> String {
        if self.quiet {
            self.last(TAIL)
        } else {
            format!("lines so far:\n{}", self.seen.join("\n"))
        }
    }

    /// Receives one more line into `seen`; false at end of file.
    fn receive(&mut self, timeout: Duration) -> bool {
        if self.eof {
            return false;
        }
        match self.rx.recv_timeout(timeout) {
            Ok(line) => {
                self.seen.push(line);
                true
            }
            Err(RecvTimeoutError::Disconnected) => {
                self.eof = true;
                false
            }
            Err(RecvTimeoutError::Timeout) => panic!(
                "{}: no line within {:?}; {}",
                self.name,
                timeout,
                self.so_far()
            ),
        }
    }

    /// The next line not yet consumed, `None` at end of file; panics after
    /// `timeout`.
    pub fn next_line(&mut self, timeout: Duration) -> Option<String> {
        if self.pos == self.seen.len() && !self.receive(timeout) {
            return None;
        }
        self.pos += 1;
        Some(self.seen[self.pos - 1].clone())
    }

    /// Waits for a line that satisfies `pred` and returns it; panics on end
    /// of file or timeout, showing what was seen.  A line starting with
    /// "FAIL" (a test program's verdict) fails the test at once.
    pub fn expect(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!(
                    "{}: timed out waiting for {what}; {}",
                    self.name,
                    self.so_far()
                );
            }
            match self.next_line(left) {
                Some(line) if line.starts_with("FAIL") => {
                    panic!(
                        "{}: program reported {line:?} while waiting for {what}",
                        self.name
                    )
                }
                Some(line) if pred(&line) => return line,
                Some(_) => {}
                None => panic!(
                    "{}: end of output while waiting for {what}; {}",
                    self.name,
                    self.so_far()
                ),
            }
        }
    }

    /// Waits for a line equal to `text`.
    pub fn expect_line(&mut self, text: &str) -> String {
        self.expect(&format!("the line {text:?}"), |l| l == text)
    }

    /// Waits for a line starting with `prefix`.
    pub fn expect_prefix(&mut self, prefix: &str) -> String {
        self.expect(&format!("a line starting with {prefix:?}"), |l| {
            l.starts_with(prefix)
        })
    }

    /// Waits for a line that is a number >= `n` and returns the number.
    pub fn expect_number_at_least(&mut self, n: u64) -> u64 {
        let line = self.expect(&format!("a number >= {n}"), |l| {
            l.trim().parse::<u64>().is_ok_and(|v| v >= n)
        });
        line.trim().parse().unwrap()
    }

    /// Receives the remaining lines until end of file (60 s at most) into
    /// `seen`, without consuming them.
    pub fn read_to_end(&mut self) {
        let deadline = Instant::now() + TIMEOUT;
        while self.receive(deadline.saturating_duration_since(Instant::now())) {}
    }

    /// Whether any line received so far (consumed or not) starts with `prefix`.
    pub fn saw_prefix(&self, prefix: &str) -> bool {
        self.seen.iter().any(|l| l.starts_with(prefix))
    }

    /// Waits until a line starting with `prefix` has come, consuming nothing: the
    /// lines stay for `expect` and `next_line`.
    pub fn wait_seen(&mut self, prefix: &str) {
        let deadline = Instant::now() + TIMEOUT;
        while !self.saw_prefix(prefix) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !self.receive(left) {
                panic!(
                    "{}: no line starting with {prefix:?}; {}",
                    self.name,
                    self.so_far()
                );
            }
        }
    }

    /// Panics if any line seen so far starts with "FAIL".
    pub fn assert_no_fail(&self) {
        if let Some(l) = self.seen.iter().find(|l| l.starts_with("FAIL")) {
            panic!(
                "{}: program reported {l:?}; all lines:\n{}",
                self.name,
                self.seen.join("\n")
            );
        }
    }
}

// ---------------------------------------------------------------- targets

/// A `Command` for a test program with the standard setup: every inherited
/// descriptor above 2 is marked close-on-exec, so the target holds exactly
/// what the test gives it (the environment passes a few stray pipes down).
pub fn command(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    // SAFETY: pre_exec's closure runs in the forked child before exec, where only
    // async-signal-safe code is allowed: this one makes a single raw close_range syscall on
    // integers (no allocation, no lock) and returns Ok.
    unsafe {
        cmd.pre_exec(|| {
            // close_range(3, ~0, CLOSE_RANGE_CLOEXEC)
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 4u32);
            Ok(())
        });
    }
    cmd
}

/// A test program started by the test, with piped stdin/stdout/stderr.
pub struct Target {
    pub child: Child,
    pub pid: i32,
    /// A string that the process's command line contains (its program path),
    /// used to recognise it (and its restored self) by PID.
    pub marker: String,
    pub stdin: Option<ChildStdin>,
    pub stdout: Lines,
    pub stderr: Lines,
    reaped: bool,
}

impl Target {
    /// Spawns `cmd` (built with [`command`]); `marker` must occur in its
    /// command line.
    pub fn spawn(cmd: Command, marker: &str) -> Target {
        Target::spawn_with(cmd, marker, true)
    }

    /// Like [`Target::spawn`], but its output is not echoed (see [`Lines::new_quiet`]).
    pub fn spawn_quiet(cmd: Command, marker: &str) -> Target {
        Target::spawn_with(cmd, marker, false)
    }

    fn spawn_with(mut cmd: Command, marker: &str, echo: bool) -> Target {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // A program a test has just copied may still be open for writing in a child
        // another test thread is forking (until that child execs): ETXTBSY, retry.
        let mut tries = 0;
        let mut child = loop {
            match cmd.spawn() {
                Ok(c) => break c,
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 100 => {
                    tries += 1;
                    thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("cannot start {cmd:?}: {e}"),
            }
        };
        let pid = child.id() as i32;
        let stdin = child.stdin.take();
        let stdout = Lines::with_echo(&format!("{pid} stdout"), child.stdout.take().unwrap(), echo);
        let stderr = Lines::with_echo(&format!("{pid} stderr"), child.stderr.take().unwrap(), echo);
        Target {
            child,
            pid,
            marker: marker.to_string(),
            stdin,
            stdout,
            stderr,
            reaped: false,
        }
    }

    /// Spawns a test program from `target/testdata` with arguments.
    pub fn start(name: &str, args: &[&OsStr]) -> Target {
        Target::start_path(&testdata(name), args)
    }

    /// Spawns the program at `path` with arguments.
    pub fn start_path(path: &Path, args: &[&OsStr]) -> Target {
        let mut cmd = command(path);
        cmd.args(args);
        Target::spawn(cmd, &path.to_string_lossy())
    }

    /// Waits (60 s at most) for the process to exit and reaps it.
    pub fn wait(&mut self) -> ExitStatus {
        let status = wait_child(&mut self.child, &format!("target {}", self.pid));
        self.reaped = true;
        status
    }

    /// Kills (SIGKILL) and reaps the process.
    pub fn kill(&mut self) {
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.child.wait();
            self.reaped = true;
        }
    }

    /// After `ckpt dump --kill`: reaps the original, checks that it was
    /// killed by SIGKILL, and waits until its PID is free for the restore.
    pub fn reap_killed(&mut self) {
        let status = self.wait();
        assert_eq!(
            status.signal(),
            Some(libc::SIGKILL),
            "after `ckpt dump --kill` the target should have been killed by SIGKILL, got {status:?}"
        );
        wait_pid_free(self.pid);
    }

    /// `ckpt dump PID --dir DIR --kill`, then [`Target::reap_killed`].
    pub fn dump_kill(&mut self, dir: &Path) -> Output {
        let out = dump(self.pid, dir, true);
        self.reap_killed();
        out
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits for a child with the safety-net timeout (kills it on timeout).
pub fn wait_child(child: &mut Child, what: &str) -> ExitStatus {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not exit within {TIMEOUT:?}");
        }
        thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------- ckpt

/// Runs a command to completion with the safety-net timeout, stdin null,
/// stdout and stderr captured.
pub fn run(cmd: &mut Command) -> Output {
    run_with(cmd, true)
}

/// [`run`] without echoing the command and its output (for one a test runs often:
/// polling `ckpt command l`); an assertion shows it with [`describe`].
pub fn run_quiet(cmd: &mut Command) -> Output {
    run_with(cmd, false)
}

fn run_with(cmd: &mut Command, echo: bool) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let t_out = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
        v
    });
    let t_err = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = se.read_to_end(&mut v);
        v
    });
    let status = wait_child(&mut child, &format!("{cmd:?}"));
    let out = Output {
        status,
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
    };
    if echo {
        eprintln!(
            "$ {cmd:?}\n  -> {:?}\n  stdout: {}\n  stderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim_end(),
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
    }
    out
}

pub fn ckpt_cmd() -> Command {
    command(ckpt_bin())
}

/// Runs `ckpt ARGS...` to completion.
pub fn ckpt<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run(ckpt_cmd().args(args))
}

/// An output's status, stdout and stderr, for an assertion message.
pub fn describe(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn assert_success(out: &Output, what: &str) {
    assert!(out.status.success(), "{what} failed: {}", describe(out));
}

/// `ckpt dump PID --dir DIR [--kill]`.
fn run_dump(pid: i32, dir: &Path, kill: bool) -> Output {
    let mut args: Vec<&OsStr> = vec!["dump".as_ref()];
    let pid_s = pid.to_string();
    args.push(pid_s.as_ref());
    args.push("--dir".as_ref());
    args.push(dir.as_os_str());
    if kill {
        args.push("--kill".as_ref());
    }
    ckpt(&args)
}

/// `ckpt dump PID --dir DIR [--kill]`, which must succeed.
pub fn dump(pid: i32, dir: &Path, kill: bool) -> Output {
    let out = run_dump(pid, dir, kill);
    assert_success(&out, &format!("ckpt dump {pid}"));
    out
}

/// `ckpt dump PID --dir DIR --kill`, which must fail (see [`assert_error`], `what` is
/// what the dump was of): its one-line error.
pub fn dump_refused(pid: i32, dir: &Path, what: &str) -> String {
    assert_error(&run_dump(pid, dir, true), what)
}

/// `ckpt info DIR --json`, parsed.
pub fn info_json(dir: &Path) -> serde_json::Value {
    let out = ckpt(["info".as_ref(), dir.as_os_str(), "--json".as_ref()]);
    assert_success(&out, "ckpt info --json");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "ckpt info --json printed invalid JSON ({e}): {}",
            describe(&out)
        )
    })
}

/// The one process of a checkpoint, from `ckpt info --json`.
pub fn info_process(dir: &Path) -> serde_json::Value {
    let info = info_json(dir);
    let procs = info["processes"].as_array().expect("info: processes array");
    assert_eq!(
        procs.len(),
        1,
        "expected one process in the checkpoint: {info}"
    );
    procs[0].clone()
}

pub fn json_u64(v: &serde_json::Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("info: no integer {key:?} in {v}"))
}

/// Asserts the error contract: exit status 1 and exactly one line on
/// stderr, starting with `ckpt: error:`.  Returns that line.
pub fn assert_error(out: &Output, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{what}: expected exit status 1: {}",
        describe(out)
    );
    assert!(
        lines.len() == 1 && lines[0].starts_with("ckpt: error:"),
        "{what}: expected exactly one line on stderr starting with `ckpt: error:`: {}",
        describe(out)
    );
    lines[0].to_string()
}

// ---------------------------------------------------------------- restore

/// A running `ckpt restore DIR` (foreground) with piped standard streams:
/// the restored program's stdout/stdin are this child's.
pub struct Restored {
    pub child: Child,
    /// The PID the restored process must have (the original's).
    pub pid: i32,
    marker: String,
    pub stdin: Option<ChildStdin>,
    pub stdout: Lines,
    pub stderr: Lines,
    done: bool,
    /// Started with -q/--quiet: no "ckpt: restored ..." line to wait for.
    quiet: bool,
    /// Its "ckpt: restored ..." line was seen.
    announced: bool,
}

impl Restored {
    /// Starts `ckpt restore DIR` for the process `pid` whose command line
    /// contains `marker` (both used for cleanup and for [`Restored::assert_same_pid`]).
    pub fn start(dir: &Path, pid: i32, marker: &str) -> Restored {
        Restored::start_with(dir, pid, marker, &[])
    }

    pub fn start_with(dir: &Path, pid: i32, marker: &str, extra: &[&str]) -> Restored {
        let mut cmd = ckpt_cmd();
        cmd.arg("restore").arg(dir).args(extra);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        eprintln!("$ {cmd:?} &");
        let mut child = cmd.spawn().expect("start ckpt restore");
        let stdin = child.stdin.take();
        let stdout = Lines::new(
            &format!("restored {pid} stdout"),
            child.stdout.take().unwrap(),
        );
        let stderr = Lines::new(
            &format!("restored {pid} stderr"),
            child.stderr.take().unwrap(),
        );
        Restored {
            child,
            pid,
            marker: marker.to_string(),
            stdin,
            stdout,
            stderr,
            done: false,
            quiet: extra.iter().any(|a| *a == "-q" || *a == "--quiet"),
            announced: false,
        }
    }

    /// Restores the checkpoint of `target` (same PID, same marker).
    pub fn of(dir: &Path, target: &Target) -> Restored {
        Restored::start(dir, target.pid, &target.marker)
    }

    /// Waits until the restored process runs under its original PID (its
    /// command line, read from its restored memory, contains the marker).
    pub fn assert_same_pid(&mut self) {
        let pid = self.pid;
        let marker = self.marker.clone();
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if cmdline(pid).is_some_and(|c| c.contains(&marker)) {
                // Its memory is back; the rest (descriptors' last steps, attributes,
                // the resume) is done once the restorer says so: a test that reads
                // kernel state next must not race with it.
                if !self.quiet && !self.announced {
                    self.stderr.wait_seen("ckpt: restored ");
                    self.announced = true;
                }
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                self.done = true;
                self.stderr.read_to_end();
                panic!(
                    "ckpt restore exited ({status:?}) before PID {pid} ran {marker}; stderr:\n{}",
                    self.stderr.seen().join("\n")
                );
            }
            assert!(
                Instant::now() < deadline,
                "PID {pid} is not running {marker} {TIMEOUT:?} after the restore started (cmdline {:?})",
                cmdline(pid)
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Writes to the restored program's stdin.
    pub fn write_stdin(&mut self, data: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin already closed");
        stdin
            .write_all(data)
            .expect("write to ckpt restore's stdin");
        stdin.flush().unwrap();
    }

    /// Closes the restored program's stdin (the test's end of the pipe).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits for `ckpt restore` to exit (it exits with the restored program's
    /// status) and returns its status.
    pub fn wait(&mut self) -> ExitStatus {
        let status = wait_child(&mut self.child, &format!("ckpt restore of {}", self.pid));
        self.done = true;
        status
    }

    /// Waits for `ckpt restore` and asserts exit status 0.
    pub fn wait_success(&mut self) {
        let status = self.wait();
        // let the reader catch up: everything shows on failure, and the
        // lines stay available to `expect`
        self.stdout.read_to_end();
        assert!(
            status.success(),
            "ckpt restore (restored PID {}) exited with {status:?}; stdout:\n{}\nstderr:\n{}",
            self.pid,
            self.stdout.seen().join("\n"),
            self.stderr.seen().join("\n")
        );
        self.stdout.assert_no_fail();
    }
}

impl Drop for Restored {
    fn drop(&mut self) {
        // the restored process first (it may not be our child), then ckpt
        kill_if_running(self.pid, &self.marker);
        if !self.done {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------- /proc

/// The command line of a process, arguments joined with spaces.
pub fn cmdline(pid: i32) -> Option<String> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        String::from_utf8_lossy(&raw)
            .replace('\0', " ")
            .trim_end()
            .to_string(),
    )
}

/// Kills `pid` if it is running a command line that contains `marker`.
pub fn kill_if_running(pid: i32, marker: &str) {
    if cmdline(pid).is_some_and(|c| c.contains(marker)) {
        // SAFETY: kill(2) takes only integers and touches no memory of this process; `pid`
        // was just seen running a command line with the test's marker, so it is one of the
        // test's processes.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

pub fn pid_exists(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Waits (60 s at most) until no process or thread has this PID.
pub fn wait_pid_free(pid: i32) {
    wait_until(&format!("PID {pid} to be free"), || !pid_exists(pid));
}

/// The state letter of a process or thread (`R`, `S`, `D`, `T`, `t`, `Z`, ...).
pub fn proc_state(pid: i32) -> Option<char> {
    stat_state(&format!("/proc/{pid}/stat"))
}

fn stat_state(path: &str) -> Option<char> {
    let stat = fs::read_to_string(path).ok()?;
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

/// The TIDs of a process's threads.
pub fn tids(pid: i32) -> BTreeSet<i32> {
    fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/task: {e}"))
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// Asserts that the process and every thread of it exist and are not
/// stopped (state neither `T` nor `t`, and not a zombie).
pub fn assert_running_not_stopped(pid: i32) {
    let state = proc_state(pid).unwrap_or_else(|| panic!("process {pid} is gone"));
    assert!(
        !matches!(state, 'T' | 't' | 'Z' | 'X'),
        "process {pid} is in state {state:?}"
    );
    for tid in tids(pid) {
        if let Some(s) = stat_state(&format!("/proc/{pid}/task/{tid}/stat")) {
            assert!(
                !matches!(s, 'T' | 't'),
                "thread {tid} of {pid} is in state {s:?}"
            );
        }
    }
}

/// PIDs of all processes whose command line contains `marker`.
pub fn pids_running(marker: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&p| p != me && cmdline(p).is_some_and(|c| c.contains(marker)))
        .collect()
}

// ---------------------------------------------------------------- misc

/// Polls `cond` every 10 ms until it holds; panics after the safety net.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

pub fn touch(path: &Path) {
    fs::write(path, b"").unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
}

/// The lines of a text file (empty if it does not exist).
pub fn file_lines(path: &Path) -> Vec<String> {
    match fs::read_to_string(path) {
        Ok(s) => s.lines().map(str::to_string).collect(),
        Err(_) => Vec::new(),
    }
}

/// Waits until a file has at least `n` lines, returns them.
pub fn wait_file_lines(path: &Path, n: usize) -> Vec<String> {
    let mut lines = Vec::new();
    wait_until(&format!("{} to have {n} lines", path.display()), || {
        lines = file_lines(path);
        lines.len() >= n
    });
    lines
}

/// Checks that `lines` are "1 <rest>", "2 <rest>", ... "N <rest>" where each
/// `<rest>` equals `rest`: consecutive numbers from 1, no gap, no duplicate.
/// Returns N.
pub fn assert_counting(lines: &[String], rest: &str, what: &str) -> usize {
    for (i, line) in lines.iter().enumerate() {
        let want = if rest.is_empty() {
            format!("{}", i + 1)
        } else {
            format!("{} {rest}", i + 1)
        };
        assert_eq!(
            line,
            &want,
            "{what}: line {} is wrong (gap, duplicate or other PID); all lines:\n{}",
            i + 1,
            lines.join("\n")
        );
    }
    lines.len()
}

/// Makes `dir` (and its ancestors up to and including `root`) accessible to
/// other users: for commands run as another user.
pub fn open_up(root: &Path, dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    let mut p = dir.to_path_buf();
    loop {
        let mode = if p == dir { 0o777 } else { 0o711 };
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        if p == root || !p.pop() {
            break;
        }
    }
}

/// Sends a signal.
pub fn send_signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) takes only integers and touches no memory of this process; its result
    // is checked by the assertion below.
    let r = unsafe { libc::kill(pid, sig) };
    assert_eq!(
        r,
        0,
        "kill({pid}, {sig}): {}",
        std::io::Error::last_os_error()
    );
}

pub fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// Copies a directory tree (regular files, directories and symlinks).
pub fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let src = entry.path();
        let dst = to.join(entry.file_name());
        let ft = entry.file_type().unwrap();
        if ft.is_dir() {
            copy_dir(&src, &dst);
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&src).unwrap(), &dst).unwrap();
        } else {
            fs::copy(&src, &dst).unwrap();
        }
    }
}

// ---------------------------------------------------------------- users

/// The unprivileged user that tests run commands as (created by the test,
/// which runs as root).
pub const TEST_USER: &str = "ckpttest";

/// Panics unless the test runs as root: it creates and switches to
/// [`TEST_USER`].
pub fn assert_root(what: &str) {
    assert_eq!(
        // SAFETY: geteuid(2) takes no argument, touches no memory and cannot fail.
        unsafe { libc::geteuid() },
        0,
        "{what} runs commands as the user {TEST_USER}: run it as root"
    );
}

/// `setpriv` to the user `(uid, gid)` with these supplementary groups (none: cleared)
/// and `extra` options, then `program`: setpriv execs, so the child is the program
/// itself (the process a test kills is the one it means). No coordinator variables of
/// the test's environment.
pub fn setpriv(
    (uid, gid): (u32, u32),
    groups: &[u32],
    extra: &[&str],
    program: impl AsRef<OsStr>,
) -> Command {
    let mut c = command("setpriv");
    c.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"));
    if groups.is_empty() {
        c.arg("--clear-groups");
    } else {
        let g: Vec<String> = groups.iter().map(u32::to_string).collect();
        c.arg(format!("--groups={}", g.join(",")));
    }
    c.args(extra).arg("--").arg(program);
    clean_coord_env(&mut c);
    c
}

/// Creates the unprivileged user [`TEST_USER`] if needed; returns (uid, gid).
pub fn ensure_test_user() -> (u32, u32) {
    if run(command("id").args(["-u", TEST_USER])).status.code() != Some(0) {
        let out = run(command("useradd").args([
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            TEST_USER,
        ]));
        // 9: created meanwhile by a concurrent run
        assert!(
            matches!(out.status.code(), Some(0) | Some(9)),
            "useradd {TEST_USER} failed: {out:?}"
        );
    }
    let id = |flag: &str| -> u32 {
        let out = run(command("id").args([flag, TEST_USER]));
        assert_success(&out, &format!("id {flag} {TEST_USER}"));
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    (id("-u"), id("-g"))
}

/// `runuser -u ckpttest -- PROGRAM` (runuser forks: PROGRAM is its child),
/// without the variables that would point ckpt at another coordinator,
/// directory or token file.
pub fn as_test_user(program: impl AsRef<OsStr>) -> Command {
    let mut c = command("runuser");
    c.args(["-u", TEST_USER, "--"]).arg(program);
    clean_coord_env(&mut c);
    c
}

// ---------------------------------------------------------------- coordinator

/// Variables of the test's environment that would point ckpt at another
/// coordinator, directory or token file, or change its timeouts.
pub const COORD_ENV_VARS: &[&str] = &[
    "CKPT_COORD_HOST",
    "CKPT_COORD_PORT",
    "CKPT_DIR",
    "CKPT_INTERVAL",
    "CKPT_TOKEN_FILE",
    "CKPT_HANDSHAKE_TIMEOUT",
    "DMTCP_COORD_HOST",
    "DMTCP_COORD_PORT",
    "DMTCP_CHECKPOINT_INTERVAL",
];

/// Remove [`COORD_ENV_VARS`] from `c`'s environment.
pub fn clean_coord_env(c: &mut Command) -> &mut Command {
    for v in COORD_ENV_VARS {
        c.env_remove(v);
    }
    c
}

/// `ckpt` with none of [`COORD_ENV_VARS`].
pub fn ck() -> Command {
    let mut c = ckpt_cmd();
    clean_coord_env(&mut c);
    c
}

/// `ckpt command --coord-port PORT WORDS...` (clean environment), run to its end.
pub fn command_at(port: u16, words: &[&str]) -> Output {
    run(&mut command_cmd(port, words))
}

/// [`command_at`] without echoing it (see [`run_quiet`]).
pub fn command_at_quiet(port: u16, words: &[&str]) -> Output {
    run_quiet(&mut command_cmd(port, words))
}

fn command_cmd(port: u16, words: &[&str]) -> Command {
    let mut c = ck();
    c.arg("command")
        .arg("--coord-port")
        .arg(port.to_string())
        .args(words);
    c
}

/// An output's stdout as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A port for test number `n` of a test file: below the ephemeral range (so no
/// outgoing connection holds it), different for each test of the file and, through the
/// PID, for concurrent runs of the suite; checked free on every address.
pub fn test_port(n: u16) -> u16 {
    let base = (std::process::id() % 500) * 20;
    for k in 0..10u32 {
        let p = (20000 + (base + n as u32 + k * 997) % 12000) as u16;
        // one after the other: each listener is closed before the next bind
        let any = std::net::TcpListener::bind(("0.0.0.0", p)).is_ok();
        let lo = std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
        if any && lo {
            return p;
        }
    }
    panic!("no free port found for test {n}");
}

/// What an uninterrupted run of testdata/mpi_allreduce.c with `ranks` ranks and
/// `rounds` rounds writes to its progress file (one line per round with the program's
/// FNV-style hash of every sum so far, then the result), and the result.
pub fn mpi_expected_progress(ranks: u64, rounds: u64) -> (String, u64) {
    let mut hash: u64 = 1469598103934665603;
    let mut text = String::new();
    for i in 0..rounds {
        let sum = ranks * (ranks + 1) / 2 * (i + 1);
        hash = (hash ^ sum).wrapping_mul(1099511628211);
        text.push_str(&format!("{i:06} {hash:020}\n"));
    }
    text.push_str(&format!("result {hash}\n"));
    (text, hash)
}

/// The rounds an mpi_allreduce progress file shows so far.
pub fn mpi_rounds_done(progress: &Path) -> usize {
    fs::read_to_string(progress)
        .map(|t| t.lines().filter(|l| !l.starts_with("result")).count())
        .unwrap_or(0)
}

/// A free TCP port on loopback (the kernel's choice; free again once the probe socket is
/// closed), for a test's own coordinator or server.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .unwrap()
        .port()
}

/// The job directories (`job_<job id>`) in a checkpoint directory, sorted.
pub fn job_dirs(ckpt_dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(ckpt_dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("job_"))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The children of a process, of all its threads (none if it is gone).
pub fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    if let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(s) = fs::read_to_string(t.path().join("children")) {
                out.extend(s.split_whitespace().filter_map(|c| c.parse::<i32>().ok()));
            }
        }
    }
    out
}

/// `setpriv` to [`TEST_USER`] (uid, gid) in front of `program`: setpriv execs, so the
/// process started is the program itself (a target's PID is the program's).
pub fn setpriv_test_user(program: impl AsRef<OsStr>, ids: (u32, u32)) -> Command {
    setpriv(ids, &[], &[], program)
}

/// `ckpt dump PID --dir CK --kill` run as the user `ids` (who owns the target), then
/// the original reaped: the usual first half of an ordinary user's checkpoint test.
pub fn dump_kill_as(t: &mut Target, ck: &Path, ids: (u32, u32)) {
    let mut c = setpriv(ids, &[], &[], ckpt_bin());
    c.args(["dump", &t.pid.to_string(), "--dir"])
        .arg(ck)
        .arg("--kill")
        .stdin(Stdio::null());
    let out = run(&mut c);
    assert!(
        out.status.success(),
        "ckpt dump as {TEST_USER}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    t.reap_killed();
}

/// `ckpt restore CK` started as the user `ids` (it restores in a new user and PID
/// namespace): its stdout is the restored program's.
pub fn restore_as(ck: &Path, ids: (u32, u32)) -> Target {
    let mut c = setpriv(ids, &[], &[], ckpt_bin());
    c.arg("restore").arg(ck).stdin(Stdio::null());
    Target::spawn(c, &ckpt_bin().to_string_lossy())
}

/// Kills everything whose command line mentions the test's directory (the program's
/// copy in it, coordinators, agents, jobs, restorers) when the test ends, also when it
/// fails.
pub struct Sweep(pub String);

impl Sweep {
    pub fn new(dir: &TestDir) -> Sweep {
        Sweep(dir.path().to_string_lossy().into_owned())
    }
}

impl Drop for Sweep {
    fn drop(&mut self) {
        for _ in 0..20 {
            let pids = pids_running(&self.0);
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                // SAFETY: kill(2) takes only integers and touches no memory of this
                // process; `pids` are the test's leftover processes, and a stale pid only
                // makes kill fail (ESRCH).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Give the whole tree under `dir` to (uid, gid).
pub fn chown_tree(dir: &Path, (uid, gid): (u32, u32)) {
    std::os::unix::fs::lchown(dir, Some(uid), Some(gid)).unwrap();
    if fs::symlink_metadata(dir).unwrap().is_dir() {
        for e in fs::read_dir(dir).unwrap() {
            chown_tree(&e.unwrap().path(), (uid, gid));
        }
    }
}

/// A temporary directory that belongs to [`TEST_USER`] (created if needed), with a copy
/// of the test program `name` in it (at `prog/NAME`, returned): for a target run as that
/// user. Its (uid, gid) too.
pub fn test_user_dir(name: &str) -> (TestDir, PathBuf, (u32, u32)) {
    assert_root("a test that runs a program as an ordinary user");
    let ids = ensure_test_user();
    let d = tempdir();
    let exe = d.join("prog").join(name);
    fs::create_dir_all(exe.parent().unwrap()).unwrap();
    copy_program(&testdata(name), &exe);
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).unwrap();
    chown_tree(d.path(), ids);
    (d, exe, ids)
}

/// A second sqlite3 on `db` running `sql`: whether it succeeded, and what it printed
/// (stdout, then stderr).
pub fn second_sqlite(db: &Path, sql: &str) -> (bool, String) {
    let out = run(command("sqlite3").arg(db).arg(sql));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A second sqlite3 finds `db` locked (`when`: at which point of the test).
pub fn assert_sqlite_locked(db: &Path, when: &str) {
    let (ok, out) = second_sqlite(db, "SELECT count(*) FROM t;");
    assert!(
        !ok && out.contains("database is locked"),
        "{when}, a second sqlite3 must find the database locked: {out}"
    );
}
