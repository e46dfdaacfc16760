//! `ckpt run` jobs in PID namespaces and as an ordinary user (docs/CONTRACT.md §1, §2):
//!
//! - `ckpt run --pidns` as root: the job sees namespace PIDs (the agent is
//!   the namespace's init, the job a small PID such as 2); `ckpt command c`,
//!   `k`, the coordinator's restart script (which restores it in a new PID
//!   namespace, PID 2 being taken on the host), the counter goes on from the
//!   checkpoint, the job is listed again, `q` ends it;
//! - an unprivileged user (`ckpttest`, via runuser) in a directory of its own:
//!   `ckpt run` (host PIDs) and `ckpt run --pidns`, `ckpt command c` and `k`
//!   as that user, the restart script as that user (restores in a new user +
//!   PID namespace, since the user cannot choose PIDs), the counter goes on,
//!   the job is listed again and can be checkpointed again;
//! - SIGTERM sent to `ckpt run` reaches the job, and `ckpt run` exits with the
//!   job's status (also with `--pidns`).
//!
//! Every test uses its own coordinator port (a free one found by binding port
//! 0) and temporary directory; a [`Sweep`] kills everything it started
//! (agents, the background coordinators, which are daemons, restorers,
//! namespace inits, jobs) when it ends, also when it fails.  Timeouts are
//! only a safety net.
mod common;

use common::*;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

/// Two shared cores: one job at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------- environment

const USER: &str = TEST_USER;

fn is_root() -> bool {
    // SAFETY: geteuid(2) takes no argument, touches no memory and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A command run as the test's user, or as `ckpttest` through
/// `runuser -u ckpttest -- PROGRAM` (runuser forks: PROGRAM is its child);
/// none of the coordinator variables of the test's environment.
fn cmd_as(user: bool, program: impl AsRef<OsStr>) -> Command {
    let mut c = if user {
        let mut c = command("runuser");
        c.args(["-u", USER, "--"]).arg(program);
        c
    } else {
        command(program)
    };
    clean_coord_env(&mut c);
    c
}

// ---------------------------------------------------------------- /proc

fn status_text(pid: i32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/status")).ok()
}

fn status_ints(text: &str, key: &str) -> Vec<i64> {
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
    status_ints(&status_text(pid)?, "PPid")
        .first()
        .map(|&p| p as i32)
}

/// The `NSpid` line: host PID first, PID in its own namespace last.
fn nspid(pid: i32) -> Vec<i32> {
    status_text(pid)
        .map(|t| status_ints(&t, "NSpid").iter().map(|&p| p as i32).collect())
        .unwrap_or_default()
}

fn uids(pid: i32) -> Vec<i64> {
    status_text(pid)
        .map(|t| status_ints(&t, "Uid"))
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

/// The arguments of a process.
fn argv(pid: i32) -> Vec<String> {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|&b| b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The coordinators listening on `port` (`ckpt coordinator ... --port PORT`),
/// found by their command line: a background one is a daemon, not our child.
fn coordinator_pids(port: u16) -> Vec<i32> {
    let p = port.to_string();
    all_pids()
        .into_iter()
        .filter(|&pid| {
            let a = argv(pid);
            a.iter().any(|x| x == "coordinator")
                && a.windows(2).any(|w| w[0] == "--port" && w[1] == p)
        })
        .collect()
}

// ---------------------------------------------------------------- cleanup

/// Kills, when the test ends, every process whose command line mentions the
/// test's directory (agents, runuser, restorers, namespace inits, jobs:
/// every path they get is in it) and every coordinator on the test's port.
struct Sweep {
    marker: String,
    port: u16,
}

impl Sweep {
    fn new(dir: &TestDir, port: u16) -> Sweep {
        Sweep {
            marker: dir.path().to_string_lossy().into_owned(),
            port,
        }
    }
}

impl Drop for Sweep {
    fn drop(&mut self) {
        for _ in 0..20 {
            let mut left = pids_running(&self.marker);
            left.extend(coordinator_pids(self.port));
            if left.is_empty() {
                break;
            }
            for pid in left {
                // SAFETY: kill(2) takes only integers and touches no memory of this
                // process; `left` are the test's leftover processes, and a stale pid only
                // makes kill fail (ESRCH).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

// ---------------------------------------------------------------- coordinator

/// `ckpt command --coord-port PORT WORDS...` (as `ckpttest` if `user`).
fn command_at(user: bool, port: u16, words: &[&str]) -> Output {
    let mut c = cmd_as(user, ckpt_bin());
    c.arg("command")
        .arg("--coord-port")
        .arg(port.to_string())
        .args(words);
    run(&mut c)
}

/// The jobs in `ckpt command l` output ("  job N: pid P on HOST: CMD"):
/// (pid, the line).
fn listed(text: &str) -> Vec<(i32, String)> {
    text.lines()
        .filter_map(|l| {
            let rest = l.trim_start().strip_prefix("job ")?;
            let rest = &rest[rest.find(": pid ")? + 6..];
            Some((rest.split_whitespace().next()?.parse().ok()?, l.to_string()))
        })
        .collect()
}

/// Polls `ckpt command l` until it lists exactly one job (with PID `want`
/// if given) whose line shows `program`; returns its PID.
fn wait_listed_one(user: bool, port: u16, want: Option<i32>, program: &str) -> i32 {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let out = command_at(user, port, &["l"]);
        if out.status.success() {
            let jobs = listed(&stdout(&out));
            if let [(pid, line)] = jobs.as_slice() {
                if want.is_none_or(|w| w == *pid) {
                    assert!(
                        line.contains(program),
                        "`ckpt command l` lists the job without its program {program}: {line}"
                    );
                    return *pid;
                }
            }
            assert!(
                jobs.len() <= 1,
                "`ckpt command l` lists several jobs: {}",
                describe(&out)
            );
        }
        assert!(
            Instant::now() < deadline,
            "`ckpt command --coord-port {port} l` does not list the job {want:?} after {TIMEOUT:?}; \
             last answer: {}",
            describe(&out)
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// `ckpt command c`, which must succeed; returns the generation path it
/// prints (one job), checked complete and inside `ckpt_dir`.
fn checkpoint_ok(user: bool, port: u16, ckpt_dir: &Path) -> PathBuf {
    let out = command_at(user, port, &["c"]);
    assert!(
        out.status.success(),
        "`ckpt command --coord-port {port} c`{} failed: {}",
        if user { " as the user" } else { "" },
        describe(&out)
    );
    let paths: Vec<PathBuf> = stdout(&out)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| PathBuf::from(l.trim()))
        .collect();
    assert_eq!(
        paths.len(),
        1,
        "`ckpt command c` with one job should print one generation path: {}",
        describe(&out)
    );
    let gen = paths[0].clone();
    assert!(
        gen.join("manifest.json").is_file() && gen.starts_with(ckpt_dir),
        "`ckpt command c` printed {}, which is not a complete generation in {}",
        gen.display(),
        ckpt_dir.display()
    );
    gen
}

/// After the last job of a background coordinator (`--exit-on-last`) was
/// killed: waits until that coordinator has either gone or answers with no
/// job, so that a restore does not race with its exit.
fn wait_old_coordinator_settled(user: bool, port: u16, pids: &[i32]) {
    wait_until("the coordinator to exit or to have no job", || {
        if pids
            .iter()
            .all(|&p| !pid_exists(p) || proc_state(p) == Some('Z'))
        {
            return true;
        }
        let out = command_at(user, port, &["s"]);
        out.status.success() && stdout(&out).contains("jobs: 0")
    });
}

// ---------------------------------------------------------------- the counter

/// The numbers of counter's output file ("<n> <pid>" lines), checking that
/// every line has the PID `pid` (the one the counter sees for itself).
fn numbers(path: &Path, pid: i32) -> Vec<u64> {
    let lines = file_lines(path);
    lines
        .iter()
        .map(|l| {
            let (n, p) = l.split_once(' ').unwrap_or_else(|| {
                panic!(
                    "malformed line {l:?} in {}:\n{}",
                    path.display(),
                    lines.join("\n")
                )
            });
            assert_eq!(
                p,
                pid.to_string(),
                "line {l:?} of {} was written with another PID than {pid}:\n{}",
                path.display(),
                lines.join("\n")
            );
            n.parse().unwrap_or_else(|_| {
                panic!(
                    "malformed line {l:?} in {}:\n{}",
                    path.display(),
                    lines.join("\n")
                )
            })
        })
        .collect()
}

/// The PID counter wrote with its first line.
fn counter_pid(path: &Path) -> i32 {
    let lines = wait_file_lines(path, 1);
    lines[0]
        .split_once(' ')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("no PID in the first line of {}: {lines:?}", path.display()))
}

/// Checks counter's output after checkpoint → kill → restore: 1..=`killed`
/// from the first run, then r, r+1, ... from the restored one, where r - 1 is
/// the count at the checkpoint: between `before` (lines when `c` was sent)
/// and `after` (lines when it answered).  Returns r.
fn assert_continues(nums: &[u64], killed: usize, before: usize, after: usize) -> u64 {
    assert!(
        nums.len() > killed,
        "nothing was written after the restore: {nums:?}"
    );
    assert_eq!(
        nums[..killed],
        (1..=killed as u64).collect::<Vec<_>>()[..],
        "the first run's numbers are not 1..={killed}: {nums:?}"
    );
    let r = nums[killed];
    assert!(
        (before as u64 + 1..=after as u64 + 1).contains(&r),
        "the restored counter wrote {r} first; the checkpoint was taken while the file held \
         {before}..{after} lines, so {}..{} was expected: {nums:?}",
        before + 1,
        after + 1
    );
    let rest = &nums[killed..];
    assert_eq!(
        rest,
        &(r..r + rest.len() as u64).collect::<Vec<_>>()[..],
        "after the restore the counter should count on from {r} without gap or duplicate: {nums:?}"
    );
    r
}

/// The numbers the restored counter printed on the restorer's stdout (its
/// stdout was a pipe outside the job: reattached to the restorer's): they
/// are consecutive and start at r (or r - 1 if the checkpoint fell between
/// writing a line to the file and printing it).
fn assert_stdout_continues(lines: &[String], r: u64) {
    let printed: Vec<u64> = lines
        .iter()
        .filter_map(|l| l.trim().parse::<u64>().ok())
        .collect();
    assert!(
        !printed.is_empty(),
        "the restored counter printed nothing on the restorer's stdout: {lines:?}"
    );
    let first = printed[0];
    assert!(
        first == r || first + 1 == r,
        "the restored counter printed {first} first on stdout, expected {r} (or {}): {lines:?}",
        r - 1
    );
    assert_eq!(
        printed,
        (first..first + printed.len() as u64).collect::<Vec<_>>(),
        "the restored counter's stdout is not consecutive: {lines:?}"
    );
}

/// Finds, below `ancestor`, the process that runs `marker` with PID `pid` in
/// its own PID namespace (the last NSpid entry), and with a host PID other
/// than `pid` when `nested`; returns its host PID.
fn find_job(ancestor: i32, pid: i32, marker: &str, nested: bool) -> i32 {
    let mut found = Vec::new();
    wait_until(
        &format!("a process below {ancestor} to run {marker} as PID {pid}"),
        || {
            found = descendants(ancestor)
                .into_iter()
                .filter(|&p| {
                    let ns = nspid(p);
                    ns.last() == Some(&pid)
                        && (ns.len() >= 2) == nested
                        && cmdline(p).is_some_and(|c| c.contains(marker))
                })
                .collect();
            !found.is_empty()
        },
    );
    assert_eq!(found.len(), 1, "several processes run the job: {found:?}");
    found[0]
}

/// Checks that host process `host` (the job, PID `pid` inside) lives in a PID
/// namespace other than the test's, as a child of that namespace's init
/// (PID 1 there), which descends from `ancestor`.  With `user_ns`, also in a
/// user namespace other than the test's.
fn assert_in_new_pidns(host: i32, pid: i32, ancestor: i32, user_ns: bool, what: &str) {
    let ns = nspid(host);
    assert!(
        ns.len() >= 2 && ns.last() == Some(&pid),
        "{what}: NSpid of the job {host}: {ns:?}, expected [host pid, .., {pid}]"
    );
    let theirs = ns_link(&host.to_string(), "pid");
    assert_ne!(
        theirs,
        ns_link("self", "pid"),
        "{what}: the job {host} (PID {pid}) is in the test's PID namespace"
    );
    let init = ppid(host).expect("the job has no parent");
    assert_eq!(
        nspid(init).last(),
        Some(&1),
        "{what}: the parent {init} of the job should be its namespace's init (NSpid {:?})",
        nspid(init)
    );
    assert_eq!(
        ns_link(&init.to_string(), "pid"),
        theirs,
        "{what}: the init {init} is in another PID namespace than the job"
    );
    assert!(
        descendants(ancestor).contains(&init),
        "{what}: the namespace's init {init} does not descend from {ancestor}"
    );
    if user_ns {
        assert_ne!(
            ns_link(&host.to_string(), "user"),
            ns_link("self", "user"),
            "{what}: an unprivileged job in a new PID namespace needs a new user namespace"
        );
    }
}

/// Copies counter into `dir` (other users may run it; its path is the marker
/// of its processes).
fn own_counter(dir: &Path, owner: Option<(u32, u32)>) -> PathBuf {
    let exe = dir.join("counter");
    copy_program(&testdata("counter"), &exe);
    fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).unwrap();
    if let Some((u, g)) = owner {
        std::os::unix::fs::chown(&exe, Some(u), Some(g)).unwrap();
    }
    exe
}

// ---------------------------------------------------------------- the cycle

/// One whole cycle: `ckpt run [--pidns]` of counter (as `ckpttest` when
/// `user`), l, c, k, the restart script, l, and then either c + the stop
/// file (`user`) or q.
fn cycle(user: bool, pidns: bool) {
    let _serial = serial();
    let ids = if user { Some(ensure_test_user()) } else { None };
    let d = tempdir();
    let port = free_port();
    let _sweep = Sweep::new(&d, port);
    // the job's directory: owned by ckpttest when it runs as that user
    let home = d.join("home");
    fs::create_dir_all(&home).unwrap();
    if let Some((u, g)) = ids {
        fs::set_permissions(d.path(), fs::Permissions::from_mode(0o711)).unwrap();
        std::os::unix::fs::chown(&home, Some(u), Some(g)).unwrap();
        fs::set_permissions(&home, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let exe = own_counter(&home, ids);
    let marker = exe.to_string_lossy().into_owned();
    let (ck, out, stop) = (home.join("ck"), home.join("out"), home.join("stop"));
    let port_s = port.to_string();
    let who = format!(
        "{}ckpt run{}",
        if user { "ckpttest: " } else { "" },
        if pidns { " --pidns" } else { "" }
    );

    // ---- ckpt run
    let mut c = cmd_as(user, ckpt_bin());
    c.current_dir(&home).arg("run");
    if pidns {
        c.arg("--pidns");
    }
    c.args([os("--coord-port"), os(&port_s), os("--ckpt-dir")])
        .arg(&ck)
        .arg("--")
        .arg(&exe)
        .args([out.as_os_str(), stop.as_os_str(), os("20")]);
    let mut agent = Target::spawn(c, &d.path().to_string_lossy());
    agent.stdout.expect_line("ready");
    let job = wait_listed_one(user, port, None, &marker);
    assert_eq!(
        counter_pid(&out),
        job,
        "{who}: `ckpt command l` shows another PID than the one the job sees for itself"
    );
    let host = find_job(agent.pid, job, &marker, pidns);
    if pidns {
        assert!(
            (2..=10).contains(&job),
            "{who}: the job should have a small PID of its namespace (its agent is PID 1), not {job}"
        );
        assert_in_new_pidns(host, job, agent.pid, user, &who);
    } else {
        assert_eq!(host, job, "{who}: the job should have its host PID");
    }
    if let Some((uid, _)) = ids {
        assert_eq!(
            uids(host),
            vec![uid as i64; 4],
            "{who}: the job does not run as {USER}"
        );
    }
    let coordinators = coordinator_pids(port);
    assert_eq!(
        coordinators.len(),
        1,
        "{who} should have started one background coordinator on port {port}: {coordinators:?}"
    );

    // ---- c
    wait_file_lines(&out, 3);
    let before = file_lines(&out).len();
    let gen1 = checkpoint_ok(user, port, &ck);
    let after = file_lines(&out).len();
    if let Some((uid, _)) = ids {
        let owner = fs::metadata(&gen1).unwrap().uid();
        assert_eq!(
            owner,
            uid,
            "{who}: the generation {} should belong to {USER}",
            gen1.display()
        );
    }
    let script = ck.join("ckpt_restart_script.sh");
    let mode = fs::metadata(&script)
        .unwrap_or_else(|e| panic!("{}: {e}", script.display()))
        .permissions()
        .mode();
    assert!(
        mode & 0o100 != 0,
        "{} is not executable ({mode:o})",
        script.display()
    );

    // ---- k: two more lines first (the restored counter repeats them)
    wait_file_lines(&out, after + 2);
    let o = command_at(user, port, &["k"]);
    assert!(o.status.success(), "`ckpt command k`: {}", describe(&o));
    let st = agent.wait();
    assert_eq!(
        st.code(),
        Some(137),
        "{who}: after `ckpt command k` it should exit with the job's status 128+SIGKILL, got {st:?}"
    );
    wait_until(&format!("the killed job {host} to be gone"), || {
        !pid_exists(host)
    });
    let killed = numbers(&out, job).len();
    assert_counting(&file_lines(&out), &job.to_string(), "before the restore");
    wait_old_coordinator_settled(user, port, &coordinators);

    // ---- the restart script
    let mut c = cmd_as(user, &script);
    c.current_dir(&home);
    let mut restart = Target::spawn(c, &d.path().to_string_lossy());
    let listed_again = wait_listed_one(user, port, Some(job), &marker);
    assert_eq!(listed_again, job);
    let host2 = find_job(restart.pid, job, &marker, true);
    assert_in_new_pidns(
        host2,
        job,
        restart.pid,
        user,
        &format!("{who}, restored by the restart script"),
    );
    if let Some((uid, _)) = ids {
        assert_eq!(
            uids(host2),
            vec![uid as i64; 4],
            "the restored job should run as {USER} (uid {uid}), seen from the host"
        );
    }
    wait_file_lines(&out, killed + 5);

    if user {
        // c works again, on the restored job, in the same job directory
        let gen2 = checkpoint_ok(user, port, &ck);
        assert_eq!(
            gen2.parent(),
            gen1.parent(),
            "the restored job's generation {} is not in its job directory",
            gen2.display()
        );
        assert_ne!(
            gen2, gen1,
            "the second checkpoint did not make a new generation"
        );
        let n = file_lines(&out).len();
        wait_file_lines(&out, n + 3);
        touch(&stop);
        let st = restart.wait();
        assert!(
            st.success(),
            "{}: the restored counter should end with status 0 after the stop file, got {st:?}; stderr:\n{}",
            script.display(),
            restart.stderr.seen().join("\n")
        );
        let done = restart.stdout.expect_prefix("done ");
        let nums = numbers(&out, job);
        let r = assert_continues(&nums, killed, before, after);
        assert_eq!(
            done,
            format!("done {}", nums.last().unwrap()),
            "the restored counter's last words"
        );
        assert_stdout_continues(restart.stdout.seen(), r);
        restart.stdout.assert_no_fail();
    } else {
        // q: the job is killed and the coordinator quits
        let o = command_at(user, port, &["q"]);
        assert!(o.status.success(), "`ckpt command q`: {}", describe(&o));
        let st = restart.wait();
        assert_eq!(
            st.code(),
            Some(137),
            "after q the restorer should exit with the job's status 128+SIGKILL, got {st:?}"
        );
        wait_until(&format!("the restored job {host2} to be gone"), || {
            !pid_exists(host2)
        });
        restart.stdout.read_to_end();
        let o = command_at(user, port, &["l"]);
        assert_eq!(
            o.status.code(),
            Some(1),
            "after q, `ckpt command l` should find no coordinator: {}",
            describe(&o)
        );
        let nums = numbers(&out, job);
        let r = assert_continues(&nums, killed, before, after);
        restart.stdout.assert_no_fail();
        assert_stdout_continues(restart.stdout.seen(), r);
    }
}

// ---------------------------------------------------------------- tests

/// Root, `ckpt run --pidns`: the counter is a small PID of its own
/// namespace, listed as such; c, k, the restart script (a new PID
/// namespace), it counts on from the checkpoint, is listed again; q ends it.
#[test]
fn root_run_pidns_checkpoint_kill_restart() {
    if !is_root() {
        eprintln!("skipped: runs as root");
        return;
    }
    cycle(false, true);
}

/// ckpttest, `ckpt run` (host PIDs): c and k as the user; the restart script
/// as the user restores it in a new user + PID namespace under its original
/// PID; it counts on, is listed again, c works again, it ends normally.
#[test]
fn unprivileged_run_checkpoint_kill_restart() {
    if !is_root() {
        eprintln!("skipped: needs root to run commands as the user {USER}");
        return;
    }
    cycle(true, false);
}

/// ckpttest, `ckpt run --pidns`: the same, the job being a namespace PID.
#[test]
fn unprivileged_run_pidns_checkpoint_kill_restart() {
    if !is_root() {
        eprintln!("skipped: needs root to run commands as the user {USER}");
        return;
    }
    cycle(true, true);
}

/// `ckpt run [--pidns] -- python3 term.py STATUS`, SIGTERM to `ckpt run`:
/// the job's handler prints its line and exits STATUS, which `ckpt run`
/// exits with; nothing of the job is left.
fn sigterm_forwarded(pidns: bool, status: i32) {
    let _serial = serial();
    let d = tempdir();
    let port = free_port();
    let _sweep = Sweep::new(&d, port);
    let script = d.join("term.py");
    fs::write(
        &script,
        "import signal, sys, time\n\
         def on_term(sig, frame):\n\
         \x20   print('got SIGTERM', flush=True)\n\
         \x20   sys.exit(int(sys.argv[1]))\n\
         signal.signal(signal.SIGTERM, on_term)\n\
         print('ready', flush=True)\n\
         while True:\n\
         \x20   time.sleep(0.05)\n",
    )
    .unwrap();
    let port_s = port.to_string();
    let status_s = status.to_string();
    let mut c = cmd_as(false, ckpt_bin());
    c.arg("run");
    if pidns {
        c.arg("--pidns");
    }
    c.args([os("--coord-port"), os(&port_s), os("--ckpt-dir")])
        .arg(d.join("ck"))
        .args([os("--"), os("python3")])
        .arg(&script)
        .arg(&status_s);
    let mut agent = Target::spawn(c, &d.path().to_string_lossy());
    agent.stdout.expect_line("ready");
    send_signal(agent.pid, libc::SIGTERM);
    let st = agent.wait();
    assert_eq!(
        st.code(),
        Some(status),
        "`ckpt run{}` should exit with the job's status {status} after SIGTERM, got {st:?}; \
         the job printed {:?}",
        if pidns { " --pidns" } else { "" },
        agent.stdout.seen()
    );
    agent.stdout.expect_line("got SIGTERM");
    let script_s = script.to_string_lossy().into_owned();
    wait_until("the job to be gone", || pids_running(&script_s).is_empty());
}

/// SIGTERM to `ckpt run` reaches the job (exit 0, and exit 3 to tell the
/// job's status from ckpt's own).
#[test]
fn sigterm_is_forwarded_to_the_job() {
    sigterm_forwarded(false, 0);
    sigterm_forwarded(false, 3);
}

/// The same with `ckpt run --pidns` (the job under an init of its own).
#[test]
fn sigterm_is_forwarded_to_the_job_in_its_pidns() {
    sigterm_forwarded(true, 0);
}

/// A local coordinator answers only its own user (and root): an ordinary user can
/// neither command nor join a root coordinator's jobs (docs/CONTRACT.md §6), and the refusal is
/// logged; root may command an ordinary user's coordinator.
#[test]
fn coordinator_refuses_other_users() {
    let _g = serial();
    if !is_root() {
        panic!("this test creates the user {USER}: run it as root");
    }
    ensure_test_user();
    let d = tempdir();
    let port = free_port();
    let _sweep = Sweep::new(&d, port);
    let log = d.join("coord.log");
    let mut c = cmd_as(false, ckpt_bin());
    c.arg("coordinator")
        .arg("--daemon")
        .arg("--port")
        .arg(port.to_string())
        .arg("--ckpt-dir")
        .arg(d.join("ckpt"))
        .arg("--log-file")
        .arg(&log);
    assert_success(&run(&mut c), "starting a root coordinator");
    let deadline = Instant::now() + TIMEOUT;
    while !command_at(false, port, &["s"]).status.success() {
        assert!(Instant::now() < deadline, "the coordinator does not answer");
        thread::sleep(Duration::from_millis(20));
    }
    for words in [&["s"][..], &["k"][..], &["c"][..]] {
        let out = command_at(true, port, words);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{words:?} as {USER}: {}",
            describe(&out)
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.lines().count() == 1
                && err.starts_with("ckpt: error:")
                && err.contains("another user"),
            "{words:?} as {USER}: {}",
            describe(&out)
        );
    }
    let text = fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains("refused a local connection") && text.contains("not the coordinator's user"),
        "the refusals are not logged:\n{text}"
    );
    // The owner is still served.
    assert_success(&command_at(false, port, &["q"]), "q as the owner");
}
