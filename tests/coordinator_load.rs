//! The coordinator under load and with misbehaving clients (docs/CONTRACT.md §6: periodic
//! checkpoints either complete for every job or report why not; the coordinator
//! serves every client independently).
//!
//! - 16 `ckpt run` jobs of shell loops that fork and exit constantly, under one
//!   coordinator with `-i 2 --keep 2` for 60 s: every round completes (the log and
//!   `ckpt command s` agree, no failure), `--keep 2` holds for every job, and the
//!   newest generation of a job restores and counts on;
//! - a client that connects and sends part of a line, then nothing: meanwhile
//!   `ckpt command s` answers, a job registers and a periodic checkpoint completes;
//!   with the default handshake timeout the idle connection (and one that trickles
//!   bytes without ever ending its line) is closed, and the log says so.
//!
//! Every test uses its own port and temporary directory; a [`Sweep`] guard kills
//! every process whose command line mentions that directory when the test ends.
//! Timeouts are only a safety net; no test asserts on timing.
//!
//! The coordinator's log and the agents' output are not echoed (a minute of rounds of
//! 16 jobs is hundreds of lines, which pushed the panic message out of a truncated CI
//! log): every assertion puts what matters into its own message instead (see
//! [`context`]).
mod common;

use common::*;
use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::thread;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------- helpers

/// A generous safety net for what depends on many jobs on a loaded machine.
const LONG: Duration = Duration::from_secs(600);

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ckpt command ... WORDS`, which must succeed; returns its output. `ctx` says what
/// to show with a failure (see [`context`]).
fn command_ok(port: u16, words: &[&str], ctx: impl FnOnce() -> String) -> String {
    let out = command_at_quiet(port, words);
    assert!(
        out.status.success(),
        "ckpt command {} failed: {}\n{}",
        words.join(" "),
        describe(&out),
        ctx()
    );
    text(&out)
}

/// Whether a coordinator log line tells of something gone wrong.
fn tells_of_trouble(l: &str) -> bool {
    [
        "fail",
        "error",
        "warning",
        "refused",
        "closed a connection",
        "disconnected",
        "exited",
    ]
    .iter()
    .any(|w| l.contains(w))
}

/// What a failing assertion shows: the last [`TAIL`] lines of the coordinator's log,
/// every line of it that tells of trouble (the first and last 10), its stderr, and the
/// last lines each agent wrote (warnings of its checkpoints), if any.
fn context(coord: &mut Target, agents: &mut [Target]) -> String {
    let mut out = coord.stdout.tail(TAIL);
    let trouble: Vec<&String> = coord
        .stdout
        .seen()
        .iter()
        .filter(|l| tells_of_trouble(l))
        .collect();
    if !trouble.is_empty() {
        out.push_str(&format!(
            "\n--- {} line(s) of the coordinator's log that tell of trouble:",
            trouble.len()
        ));
        for (i, l) in trouble.iter().enumerate() {
            if i == 10 && trouble.len() > 20 {
                out.push_str(&format!("\n[... {} more ...]", trouble.len() - 20));
            }
            if i < 10 || i >= trouble.len().saturating_sub(10) {
                out.push_str(&format!("\n{l}"));
            }
        }
    }
    coord.stderr.take_in();
    if !coord.stderr.seen().is_empty() {
        out.push_str(&format!("\n{}", coord.stderr.tail(10)));
    }
    for a in agents {
        for lines in [&mut a.stdout, &mut a.stderr] {
            lines.take_in();
            if !lines.seen().is_empty() {
                out.push_str(&format!("\n{}", lines.tail(5)));
            }
        }
    }
    out
}

/// Starts a coordinator (a child of the test, its log on the stdout pipe) and
/// waits for its "listening" line.
fn start_coordinator(port: u16, ckpt_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Target {
    let mut c = ck();
    c.arg("coordinator")
        .arg("--port")
        .arg(port.to_string())
        .arg("--ckpt-dir")
        .arg(ckpt_dir)
        .args(extra);
    for (k, v) in env {
        c.env(k, v);
    }
    let mut t = Target::spawn_quiet(c, &ckpt_dir.to_string_lossy());
    t.stdout.expect_prefix("[ckpt coordinator] listening on");
    t
}

/// A bash loop that forks and exits constantly (`sleep`, `/bin/true`, a command
/// substitution) and writes its counter to COUNTFILE (overwritten each time).
const SHELL_LOOP: &str =
    r#"i=0; while :; do i=$((i+1)); echo $i > "$0"; sleep 0.05; /bin/true; x=$(echo $i); done"#;

/// `ckpt run --coord-port PORT -- bash -c SHELL_LOOP COUNTFILE`.
fn start_shell_job(port: u16, count: &Path) -> Target {
    let mut c = ck();
    c.arg("run")
        .arg("--coord-port")
        .arg(port.to_string())
        .arg("--")
        .args(["bash", "-c", SHELL_LOOP])
        .arg(count);
    Target::spawn_quiet(c, &count.to_string_lossy())
}

/// The counter a shell job last wrote (None before the first write, or while
/// the file is being rewritten).
fn count(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn wait_count(path: &Path) -> u64 {
    let mut v = 0;
    wait_until(&format!("a counter in {}", path.display()), || {
        count(path).map(|c| v = c).is_some()
    });
    v
}

/// The job of an agent: its one child.
fn job_of(agent: &Target) -> i32 {
    let mut kids = Vec::new();
    wait_until(&format!("agent {} to have its job", agent.pid), || {
        kids = children(agent.pid);
        !kids.is_empty()
    });
    kids[0]
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

/// Polls `ckpt command l` until it lists every one of `pids`.
fn wait_listed(port: u16, pids: &[i32]) {
    let deadline = Instant::now() + LONG;
    loop {
        let out = command_at_quiet(port, &["l"]);
        let listed = listed_pids(&text(&out));
        if out.status.success() && pids.iter().all(|p| listed.contains(p)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the coordinator does not list the jobs {pids:?}; last answer: {out:?}"
        );
        thread::sleep(Duration::from_millis(200));
    }
}

/// The value of a "NAME: VALUE" line of `ckpt command s`.
fn status_field(status: &str, name: &str) -> Option<String> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .map(str::to_string)
}

/// The job directory that holds generations of the job with root `pid`.
fn job_dir_of(ckpt_dir: &Path, pid: i32) -> PathBuf {
    let needle = format!("_{pid}_");
    job_dirs(ckpt_dir)
        .into_iter()
        .find(|d| {
            fs::read_dir(d).is_ok_and(|rd| {
                rd.flatten().any(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    n.starts_with("ckpt_") && n.contains(&needle)
                })
            })
        })
        .unwrap_or_else(|| panic!("no job directory with generations of pid {pid}"))
}

/// The complete generations (`ckpt_*` with a manifest) of a job directory; checks
/// that nothing unfinished is visible and that `latest` names one of them.
fn generations(job_dir: &Path) -> Vec<String> {
    let mut gens = Vec::new();
    for e in fs::read_dir(job_dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("ckpt_") && e.path().is_dir() {
            assert!(
                e.path().join("manifest.json").is_file(),
                "{}: generation {name} has no manifest.json",
                job_dir.display()
            );
            gens.push(name);
        }
    }
    let latest = fs::read_link(job_dir.join("latest"))
        .unwrap_or_else(|e| panic!("{}: no latest link: {e}", job_dir.display()));
    let latest = latest.to_string_lossy().into_owned();
    assert!(
        gens.contains(&latest),
        "{}: latest -> {latest}, not one of the generations {gens:?}",
        job_dir.display()
    );
    gens.sort();
    gens
}

/// Every PID (processes and zombies) recorded in a generation's manifest.
fn manifest_pids(gen: &Path) -> Vec<i32> {
    let m: serde_json::Value =
        serde_json::from_slice(&fs::read(gen.join("manifest.json")).expect("read manifest.json"))
            .expect("manifest.json is not JSON");
    let mut pids = Vec::new();
    for key in ["processes", "zombies"] {
        let list = m["manifest"][key]
            .as_array()
            .unwrap_or_else(|| panic!("no {key} list in the sealed manifest: {m}"));
        for p in list {
            pids.push(p["pid"].as_i64().expect("a pid in the manifest") as i32);
        }
    }
    pids
}

/// What the coordinator's log says about checkpoint rounds so far.
#[derive(Debug, Default, PartialEq)]
struct Rounds {
    started: usize,
    completed: usize,
    failure_lines: Vec<String>,
}

fn rounds(log: &[String]) -> Rounds {
    let mut r = Rounds::default();
    for l in log {
        let Some(rest) = l.strip_prefix("[ckpt coordinator] checkpoint ") else {
            if l.contains("fail") {
                r.failure_lines.push(l.clone());
            }
            continue;
        };
        if rest.contains(": freezing ") {
            r.started += 1;
        } else if rest.contains(" complete in ") {
            r.completed += 1;
        } else if rest.contains("fail") {
            r.failure_lines.push(l.clone());
        }
    }
    r
}

// ---------------------------------------------------------------- 1. load

/// 16 shell-loop jobs under one coordinator with `-i 2 --keep 2` for 60 s.
#[test]
fn periodic_checkpoints_of_16_forking_jobs_all_complete() {
    const JOBS: usize = 16;
    let d = tempdir();
    let _sweep = Sweep::new(&d);
    let port = test_port(10 + 1);
    let ck_dir = d.join("ckpt");
    let mut coord = start_coordinator(port, &ck_dir, &["-i", "2", "--keep", "2"], &[]);

    let counts: Vec<PathBuf> = (0..JOBS).map(|i| d.join(format!("count{i}"))).collect();
    let mut agents: Vec<Target> = counts.iter().map(|c| start_shell_job(port, c)).collect();
    // What every failing assertion below shows with its message.
    macro_rules! ctx {
        () => {
            context(&mut coord, &mut agents)
        };
    }
    let jobs: Vec<i32> = agents.iter().map(job_of).collect();
    wait_listed(port, &jobs);
    for c in &counts {
        wait_count(c);
    }

    // 60 s of periodic checkpoints (and at least a few rounds, however slow); `s`
    // answers now and then meanwhile, also while a round runs, and counts no failure.
    let t0 = Instant::now();
    let deadline = t0 + LONG;
    let mut asked = Instant::now();
    while t0.elapsed() < Duration::from_secs(60) || rounds(coord.stdout.seen()).started < 5 {
        assert!(
            Instant::now() < deadline,
            "fewer than 5 checkpoint rounds started: {:?}\n{}",
            rounds(coord.stdout.seen()),
            ctx!()
        );
        if coord.stdout.next_line(LONG).is_none() {
            panic!("the coordinator's log ended\n{}", ctx!());
        }
        if asked.elapsed() >= Duration::from_secs(5) {
            let status = command_ok(port, &["s"], || ctx!());
            assert_eq!(
                status_field(&status, "checkpoints failed").as_deref(),
                Some("0"),
                "`ckpt command s` during the periodic checkpoints:\n{status}\n{}",
                ctx!()
            );
            asked = Instant::now();
        }
    }
    let ended: Vec<String> = agents
        .iter_mut()
        .filter_map(|a| {
            Some(format!(
                "agent {}: {:?}",
                a.pid,
                a.child.try_wait().unwrap()?
            ))
        })
        .collect();
    assert!(
        ended.is_empty(),
        "agents ended under periodic checkpoints: {ended:?}\n{}",
        ctx!()
    );

    // Stop the timer, then one more checkpoint (the one restored below): once it
    // has answered, no round is running.
    command_ok(port, &["i", "0"], || ctx!());
    let before = wait_count(&counts[0]);
    let paths = command_ok(port, &["c"], || ctx!());
    let status = command_ok(port, &["s"], || ctx!());

    // The log and the status agree on the rounds, and none failed. The last round
    // is the `c` above: wait until the log shows it.
    let Some(last) = status_field(&status, "last checkpoint").and_then(|v| {
        v.strip_prefix("checkpoint ")?
            .split(':')
            .next()?
            .parse::<u64>()
            .ok()
    }) else {
        panic!(
            "`ckpt command s` names no last checkpoint:\n{status}\n{}",
            ctx!()
        )
    };
    let done = format!("[ckpt coordinator] checkpoint {last} complete in ");
    coord
        .stdout
        .expect(&format!("the log line {done:?}"), |l| l.starts_with(&done));
    let r = rounds(coord.stdout.seen());
    assert!(
        r.failure_lines.is_empty(),
        "{} of {} checkpoint rounds failed; failures in the coordinator log:\n{}\n{}",
        r.failure_lines.len(),
        r.started,
        r.failure_lines.join("\n"),
        ctx!()
    );
    let Some(completed) =
        status_field(&status, "checkpoints completed").and_then(|v| v.parse::<usize>().ok())
    else {
        panic!(
            "`ckpt command s` does not count completed checkpoints:\n{status}\n{}",
            ctx!()
        )
    };
    assert_eq!(
        (r.started, r.completed),
        (completed, completed),
        "rounds started and completed in the coordinator log vs {completed} completed in `ckpt command s`:\n{status}\n{}",
        ctx!()
    );
    assert_eq!(
        status_field(&status, "checkpoints failed").as_deref(),
        Some("0"),
        "`ckpt command s`:\n{status}\n{}",
        ctx!()
    );
    assert!(
        completed >= 6,
        "only {completed} checkpoints completed\n{}",
        ctx!()
    );

    // Every snapshot copy is gone: no job is left with a dead `ckpt-snapshot` child.
    for &job in &jobs {
        let copies: Vec<String> = children(job)
            .into_iter()
            .filter(|&k| {
                fs::read_to_string(format!("/proc/{k}/comm"))
                    .is_ok_and(|c| c.trim() == "ckpt-snapshot")
            })
            .map(|k| {
                let stat = fs::read_to_string(format!("/proc/{k}/stat")).unwrap_or_default();
                format!("{k} ({})", stat.trim())
            })
            .collect();
        assert!(
            copies.is_empty(),
            "job {job} keeps snapshot copies {copies:?}\n{}",
            ctx!()
        );
    }

    // --keep 2 for every job; each has a latest generation.
    let dirs = job_dirs(&ck_dir);
    assert_eq!(dirs.len(), JOBS, "job directories: {dirs:?}\n{}", ctx!());
    for dir in &dirs {
        let gens = generations(dir);
        assert!(
            !gens.is_empty() && gens.len() <= 2,
            "--keep 2: {} holds {gens:?}\n{}",
            dir.display(),
            ctx!()
        );
    }
    // `c` printed one generation per job, each its job's latest.
    let printed: Vec<PathBuf> = paths.lines().map(|l| PathBuf::from(l.trim())).collect();
    assert_eq!(
        printed.len(),
        JOBS,
        "`ckpt command c` printed:\n{paths}\n{}",
        ctx!()
    );
    for p in &printed {
        let dir = p.parent().unwrap();
        assert_eq!(
            fs::read_link(dir.join("latest")).ok().as_deref(),
            p.file_name().map(Path::new),
            "{} is not its job's latest\n{}",
            p.display(),
            ctx!()
        );
    }

    // Kill every job; the newest generation of the first one restores and counts on.
    command_ok(port, &["k"], || ctx!());
    for a in &mut agents {
        a.wait();
    }
    let killed_at = count(&counts[0]).unwrap_or(0);
    let dir0 = job_dir_of(&ck_dir, jobs[0]);
    let latest0 = dir0.join(fs::read_link(dir0.join("latest")).unwrap());
    for pid in manifest_pids(&latest0) {
        wait_pid_free(pid);
    }
    let mut c = ck();
    c.arg("restore").arg(&dir0);
    let mut restorer = Target::spawn(c, &d.path().to_string_lossy());
    let mut first = None;
    let deadline = Instant::now() + LONG;
    while first.is_none() {
        if let Some(st) = restorer.child.try_wait().unwrap() {
            restorer.stderr.read_to_end();
            panic!(
                "ckpt restore {} exited with {st:?}: {}\n{}",
                dir0.display(),
                restorer.stderr.seen().join("\n"),
                ctx!()
            );
        }
        assert!(
            Instant::now() < deadline,
            "the restored job writes nothing\n{}",
            ctx!()
        );
        first = count(&counts[0]).filter(|&v| v != killed_at);
        thread::sleep(Duration::from_millis(5));
    }
    let first = first.unwrap();
    assert!(
        first >= before,
        "the restored job wrote {first} first: it did not continue from the checkpoint \
         (its counter was at {before} when the checkpoint started, {killed_at} when killed)\n{}",
        ctx!()
    );
    let deadline = Instant::now() + TIMEOUT;
    while count(&counts[0]).is_none_or(|v| v < first + 5) {
        assert!(
            Instant::now() < deadline,
            "the restored job wrote {first}, then does not count on (now {:?})\n{}\n{}",
            count(&counts[0]),
            restorer.stderr.tail(10),
            ctx!()
        );
        thread::sleep(Duration::from_millis(10));
    }
    assert!(
        cmdline(jobs[0]).is_some_and(|c| c.contains(&counts[0].to_string_lossy().into_owned())),
        "the restored job does not run under its PID {}\n{}",
        jobs[0],
        ctx!()
    );
}

// ---------------------------------------------------------------- 2. idle client

/// Connects to the coordinator and sends part of a line, then nothing.
fn idle_client(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the coordinator");
    s.write_all(br#"{"type":"command","verb":"s""#).unwrap();
    s
}

/// Whether the coordinator closed (or answered on) a connection: reads without
/// blocking; "open" means nothing to read and no end of stream.
fn still_open(s: &mut TcpStream) -> Result<(), String> {
    s.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 256];
    let r = match s.read(&mut buf) {
        Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(()),
        Ok(0) => Err("closed by the coordinator".to_string()),
        Ok(n) => Err(format!(
            "the coordinator sent {:?}",
            String::from_utf8_lossy(&buf[..n])
        )),
        Err(e) => Err(format!("read error: {e}")),
    };
    s.set_nonblocking(false).unwrap();
    r
}

/// A connection that stays open with half a line: meanwhile other clients are
/// served, a job registers and a periodic checkpoint completes. (The handshake
/// timeout is set far beyond this test, so that the connection stays open
/// however slow the machine is.)
#[test]
fn idle_client_does_not_stall_the_coordinator() {
    let d = tempdir();
    let _sweep = Sweep::new(&d);
    let port = test_port(10 + 2);
    let ck_dir = d.join("ckpt");
    let mut coord = start_coordinator(
        port,
        &ck_dir,
        &["-i", "2"],
        &[("CKPT_HANDSHAKE_TIMEOUT", "3600")],
    );
    let mut idle = idle_client(port);

    // with the idle connection open: a job registers, `s` answers
    let count0 = d.join("count");
    let mut agent = [start_shell_job(port, &count0)];
    macro_rules! ctx {
        () => {
            context(&mut coord, &mut agent)
        };
    }
    let job = job_of(&agent[0]);
    wait_listed(port, &[job]);
    let status = command_ok(port, &["s"], || ctx!());
    assert!(
        status.contains("jobs: 1"),
        "`ckpt command s`:\n{status}\n{}",
        ctx!()
    );
    if let Err(e) = still_open(&mut idle) {
        panic!(
            "the idle connection, while `s` was answered: {e}\n{}",
            ctx!()
        );
    }

    // and the timer still checkpoints
    coord.stdout.expect("a completed periodic checkpoint", |l| {
        l.starts_with("[ckpt coordinator] checkpoint ") && l.contains(" complete in ")
    });
    let dir = job_dir_of(&ck_dir, job);
    assert!(
        !generations(&dir).is_empty(),
        "no generation in {}\n{}",
        dir.display(),
        ctx!()
    );
    if let Err(e) = still_open(&mut idle) {
        panic!(
            "the idle connection, while a periodic checkpoint completed: {e}\n{}",
            ctx!()
        );
    }
    let st = agent[0].child.try_wait().unwrap();
    assert!(st.is_none(), "the agent ended: {st:?}\n{}", ctx!());
    drop(idle);
}

/// With the default handshake timeout the coordinator closes a connection that
/// does not send a full first line, also one that trickles bytes, and logs it;
/// it serves other clients meanwhile.
#[test]
fn idle_connection_is_closed_and_logged() {
    let d = tempdir();
    let _sweep = Sweep::new(&d);
    let port = test_port(10 + 3);
    let ck_dir = d.join("ckpt");
    let mut coord = start_coordinator(port, &ck_dir, &[], &[]);
    let mut idle = idle_client(port);
    let trickle = thread::spawn(move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let deadline = Instant::now() + TIMEOUT;
        // one byte every 200 ms, never a newline, until the coordinator hangs up
        while Instant::now() < deadline {
            if s.write_all(b" ").is_err() {
                return true;
            }
            thread::sleep(Duration::from_millis(200));
        }
        false
    });
    let status = command_ok(port, &["s"], || context(&mut coord, &mut []));
    assert!(
        status.contains("jobs: 0"),
        "`ckpt command s`:\n{status}\n{}",
        context(&mut coord, &mut [])
    );

    idle.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut buf = [0u8; 64];
    let n = idle.read(&mut buf);
    assert!(
        matches!(n, Ok(0))
            || n.as_ref()
                .is_err_and(|e| e.kind() == ErrorKind::ConnectionReset),
        "the idle connection should have been closed by the coordinator: {n:?}\n{}",
        context(&mut coord, &mut [])
    );
    assert!(
        trickle.join().unwrap(),
        "a connection that trickles bytes without a newline stays open\n{}",
        context(&mut coord, &mut [])
    );
    let mut closed = 0;
    while closed < 2 {
        coord
            .stdout
            .expect("a log line about an idle connection", |l| {
                l.contains("connection") && l.contains("closed")
            });
        closed += 1;
    }
    command_ok(port, &["s"], || context(&mut coord, &mut []));
}

// ---------------------------------------------------------------- 3. protocol version

/// A client of another protocol version (here: ckpt 0.1's, which sent none) is refused
/// with a reply naming both versions, and logged; the coordinator serves others on.
#[test]
fn other_protocol_version_is_refused_by_name() {
    let d = tempdir();
    let _sweep = Sweep::new(&d);
    let port = test_port(10 + 4);
    let ck_dir = d.join("ckpt");
    let mut coord = start_coordinator(port, &ck_dir, &[], &[]);
    for line in [
        &br#"{"type":"command","verb":"s"}"#[..],
        &br#"{"type":"command","protocol":99,"verb":"s"}"#[..],
    ] {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(line).unwrap();
        s.write_all(b"\n").unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut reply = String::new();
        let _ = s.read_to_string(&mut reply);
        assert!(
            reply.contains("\"ok\":false") && reply.contains("protocol version"),
            "reply to {:?}: {reply:?}\n{}",
            String::from_utf8_lossy(line),
            context(&mut coord, &mut [])
        );
        coord.stdout.expect("a log line about the protocol", |l| {
            l.contains("protocol version")
        });
    }
    let status = command_ok(port, &["s"], || context(&mut coord, &mut []));
    assert!(
        status.contains("jobs: 0"),
        "`ckpt command s`:\n{status}\n{}",
        context(&mut coord, &mut [])
    );
}
