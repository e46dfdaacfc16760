//! The seed's Slurm workflow (docs/CONTRACT.md §3, shared/seed/dmtcp-workflow.txt) on a
//! one-node Slurm cluster that the test starts on localhost: `sbatch
//! examples/slurm/slurm_launch.job` runs date.py under `ckpt run` with a
//! coordinator on the node, `./ckpt_command.<jobid> c` checkpoints it, the
//! job is cancelled (the "maintenance"), and `sbatch
//! examples/slurm/slurm_restart.job` continues it from the checkpoint.
//!
//! Needs root and the Debian packages slurm-wlm and munge (`.ci/run` installs
//! them). The cluster is private to the test: its own munged (own key and
//! socket), slurmctld and slurmd on free ports, every file under a temporary
//! directory, nothing in /etc touched. Every process it starts (daemons, job
//! steps, the jobs, their coordinators, the restored job) carries a marker
//! variable in its environment, and is killed at the end, also on failure.
mod common;

use common::*;
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Whether the test can run here; explains why not. Under CI a missing
/// package is an error (.ci/run installs it), elsewhere the test is skipped.
fn slurm_available() -> bool {
    let missing: Vec<&str> = [
        "munged",
        "slurmctld",
        "slurmd",
        "sbatch",
        "squeue",
        "scancel",
        "sinfo",
    ]
    .into_iter()
    .filter(|p| {
        !["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"]
            .iter()
            .any(|d| Path::new(d).join(p).exists())
    })
    .collect();
    // SAFETY: geteuid(2) takes no argument, touches no memory and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if missing.is_empty() && root {
        return true;
    }
    let why = if !root {
        "it must run as root (it starts slurmctld and slurmd)".to_string()
    } else {
        format!(
            "{} not installed (apt-get install slurm-wlm munge)",
            missing.join(", ")
        )
    };
    if std::env::var_os("CI").is_some() {
        panic!("the Slurm test cannot run: {why}");
    }
    eprintln!("SKIPPED: the Slurm test cannot run: {why}");
    false
}

/// The PIDs of the live (non-zombie) processes whose environment holds `var`
/// (exactly, as "NAME=value").
fn procs_with_env(var: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me || matches!(proc_state(pid), None | Some('Z') | Some('X')) {
            continue;
        }
        let Ok(env) = fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if env.split(|&b| b == 0).any(|v| v == var.as_bytes()) {
            out.push(pid);
        }
    }
    out
}

/// A one-node Slurm cluster on localhost (node `localhost`, partition
/// `debug`), torn down on drop.
struct Cluster {
    dir: PathBuf,
    conf: PathBuf,
    /// "CKPT_SLURM_TEST=<unique>", in the environment of everything started.
    marker: String,
    daemons: Vec<(&'static str, Child)>,
}

impl Cluster {
    /// Writes the key, slurm.conf and starts munged, slurmctld and slurmd
    /// (all in the foreground, as children of the test), then waits until the
    /// node is idle. `auth_info` is added to AuthInfo, `extra` (lines) to slurm.conf.
    fn start(dir: &Path, auth_info: &str, extra: &str) -> Cluster {
        fs::create_dir_all(dir).unwrap();
        // munged wants its socket directory and every directory above it
        // searchable by everyone, the key directory private.
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
        let marker = format!("CKPT_SLURM_TEST={}", dir.display());
        let mut c = Cluster {
            dir: dir.to_path_buf(),
            conf: dir.join("slurm.conf"),
            marker,
            daemons: Vec::new(),
        };
        for (sub, mode) in [
            ("munge", 0o700),
            ("munge-socket", 0o755),
            ("state", 0o700),
            ("spool", 0o755),
            ("log", 0o755),
        ] {
            let p = dir.join(sub);
            fs::create_dir_all(&p).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        }

        // munge: a key of our own (as mungekey or dd would make it), our own socket
        let key = dir.join("munge/munge.key");
        let mut bytes = vec![0u8; 1024];
        fs::File::open("/dev/urandom")
            .unwrap()
            .read_exact(&mut bytes)
            .unwrap();
        fs::write(&key, &bytes).unwrap();
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
        let socket = dir.join("munge-socket/munge.socket");
        let mut munged = c.cmd("munged");
        munged
            .arg("--foreground")
            .arg(format!("--key-file={}", key.display()))
            .arg(format!("--socket={}", socket.display()))
            .arg(format!(
                "--pid-file={}",
                dir.join("munge/munged.pid").display()
            ))
            .arg(format!(
                "--log-file={}",
                dir.join("log/munged.log").display()
            ))
            .arg(format!(
                "--seed-file={}",
                dir.join("munge/munged.seed").display()
            ));
        c.spawn_daemon("munged", munged);
        wait_until("munged to create its socket", || socket.exists());

        let conf = format!(
            "# written by tests/slurm.rs: a one-node cluster on localhost
ClusterName=ckpttest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={socket}{auth_info}
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
# no cgroups: processes are tracked through their parents, tasks are not bound
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# no accounting, no job completion log, no mail
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MailProg=/bin/true
MpiDefault=none
ReturnToService=2
KillWait=5
SlurmctldDebug=info
SlurmdDebug=info
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
{extra}
",
            ctld_port = free_port(),
            slurmd_port = free_port(),
            socket = socket.display(),
            dir = dir.display(),
            cpus = thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            // a little below what the machine has, or the node is drained
            mem = mem_total_mib() * 9 / 10,
        );
        fs::write(&c.conf, conf).unwrap();

        let mut ctld = c.cmd("slurmctld");
        ctld.args(["-D", "-c", "-f"]).arg(&c.conf);
        c.spawn_daemon("slurmctld", ctld);
        let mut slurmd = c.cmd("slurmd");
        slurmd.args(["-D", "-N", "localhost", "-f"]).arg(&c.conf);
        c.spawn_daemon("slurmd", slurmd);

        c.wait_for("the node to be idle (sinfo)", |c| {
            quiet(c.cmd("sinfo").args(["-h", "-N", "-o", "%T"])).is_some_and(|s| s.trim() == "idle")
        });
        c
    }

    /// A command with the cluster's environment (SLURM_CONF and the marker).
    fn cmd(&self, prog: &str) -> Command {
        let mut cmd = command(prog);
        let (k, v) = self.marker.split_once('=').unwrap();
        cmd.env(k, v).env("SLURM_CONF", &self.conf);
        cmd
    }

    fn spawn_daemon(&mut self, name: &'static str, mut cmd: Command) {
        let log = fs::File::create(self.dir.join(format!("log/{name}.out"))).unwrap();
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        self.daemons.push((name, child));
    }

    /// Checks that no daemon died.
    fn check_daemons(&mut self) {
        for (name, child) in &mut self.daemons {
            if let Some(st) = child.try_wait().unwrap() {
                panic!(
                    "{name} exited ({st}); its output:\n{}",
                    fs::read_to_string(self.dir.join(format!("log/{name}.out")))
                        .unwrap_or_default()
                );
            }
        }
    }

    /// Polls `cond` (every 200 ms) with the safety-net timeout, failing at once
    /// if a daemon dies.
    fn wait_for(&mut self, what: &str, cond: impl FnMut(&mut Self) -> bool) {
        self.wait_for_within(what, TIMEOUT, cond)
    }

    /// `wait_for` with another safety-net timeout.
    fn wait_for_within(
        &mut self,
        what: &str,
        timeout: Duration,
        mut cond: impl FnMut(&mut Self) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_daemons();
            if cond(self) {
                return;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Runs a command to completion; its stdout (the command must succeed).
    fn output(&self, cmd: &mut Command) -> String {
        let out = run(cmd);
        assert_success(&out, &format!("{cmd:?}"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `sbatch SCRIPT` from `submit_dir` with extra environment; the job id.
    fn sbatch(&self, script: &Path, submit_dir: &Path, env: &[(&str, &str)]) -> String {
        self.sbatch_with(&[], script, submit_dir, env)
    }

    /// `sbatch ARGS SCRIPT` from `submit_dir` with extra environment; the job id.
    fn sbatch_with(
        &self,
        args: &[&str],
        script: &Path,
        submit_dir: &Path,
        env: &[(&str, &str)],
    ) -> String {
        let mut cmd = self.cmd("sbatch");
        cmd.arg("--parsable")
            .args(args)
            .arg(script)
            .current_dir(submit_dir);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = self.output(&mut cmd);
        let id = out.trim().split(';').next().unwrap().to_string();
        assert!(
            id.parse::<u64>().is_ok(),
            "sbatch printed {out:?}, not a job id"
        );
        id
    }

    /// The state of a job as squeue shows it (RUNNING, PENDING, ...), None
    /// once it has left the queue.
    fn job_state(&self, id: &str) -> Option<String> {
        quiet(self.cmd("squeue").args(["-h", "-j", id, "-o", "%T"]))
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    }

    /// Panics, showing the job's output, if job `id` has left the queue.
    fn assert_in_queue(&self, id: &str, submit: &Path) {
        if self.job_state(id).is_none() {
            panic!(
                "job {id} has ended; slurm-{id}.out:\n{}",
                fs::read_to_string(submit.join(format!("slurm-{id}.out"))).unwrap_or_default()
            );
        }
    }

    /// The processes of jobs: everything with the marker but the daemons.
    fn job_processes(&self) -> Vec<i32> {
        let daemons: Vec<i32> = self.daemons.iter().map(|(_, c)| c.id() as i32).collect();
        procs_with_env(&self.marker)
            .into_iter()
            .filter(|p| !daemons.contains(p))
            .filter(|&p| {
                // slurmctld's helper, a child of slurmctld
                !cmdline(p).is_some_and(|c| c.contains("slurmscriptd"))
            })
            .collect()
    }

    /// `scancel ID`, then waits until the job has left the queue and every
    /// process of it is dead.
    fn cancel_and_wait(&mut self, id: &str) {
        self.output(self.cmd("scancel").arg(id));
        self.wait_for(&format!("job {id} to leave the queue"), |c| {
            c.job_state(id).is_none()
        });
        self.wait_for(&format!("the processes of job {id} to end"), |c| {
            c.job_processes().is_empty()
        });
    }

    fn dump_logs(&self) {
        for e in fs::read_dir(self.dir.join("log"))
            .into_iter()
            .flatten()
            .flatten()
        {
            eprintln!(
                "---- {}:\n{}",
                e.path().display(),
                fs::read_to_string(e.path()).unwrap_or_default()
            );
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if thread::panicking() {
            self.dump_logs();
        }
        // cancel what is left, while slurmctld still runs
        let ids = quiet(self.cmd("squeue").args(["-h", "-o", "%i"])).unwrap_or_default();
        for id in ids.split_whitespace() {
            let _ = quiet(self.cmd("scancel").arg(id));
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            match quiet(self.cmd("squeue").args(["-h", "-o", "%i"])) {
                Some(q) if !q.trim().is_empty() => thread::sleep(Duration::from_millis(200)),
                _ => break,
            }
        }
        for (_, child) in &mut self.daemons {
            let _ = child.kill();
            let _ = child.wait();
        }
        // anything else with the marker: job steps, jobs, coordinators, restored jobs
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = procs_with_env(&self.marker);
            if left.is_empty() || Instant::now() > deadline {
                if !left.is_empty() {
                    eprintln!("processes left over by the Slurm test: {left:?}");
                }
                break;
            }
            for p in left {
                // SAFETY: kill(2) takes only integers and touches no memory of this
                // process; `left` are the test's leftover processes, and a stale pid only
                // makes kill fail (ESRCH).
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
            reap_orphans();
            thread::sleep(Duration::from_millis(100));
        }
        reap_orphans();
    }
}

/// Reaps our zombie children that no `Child` handle waits for: with
/// PR_SET_CHILD_SUBREAPER the daemonized coordinators, slurmstepd and
/// slurmctld's helper come back to this process when their parents die.
fn reap_orphans() {
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if proc_state(pid) != Some('Z') {
            continue;
        }
        let ppid = fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s[s.rfind(')')? + 1..]
                    .split_whitespace()
                    .nth(1)?
                    .parse::<u32>()
                    .ok()
            });
        if ppid == Some(std::process::id()) {
            // SAFETY: waitpid(2) with a null status pointer writes nothing, and WNOHANG
            // keeps it from blocking; `pid` is a child of ours (its ppid was just checked),
            // so at worst it reaps nothing.
            unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
        }
    }
}

/// Runs a polling command (sinfo, squeue) without echoing it: its stdout if
/// it succeeded.
fn quiet(cmd: &mut Command) -> Option<String> {
    let out = cmd.stdin(Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn mem_total_mib() -> u64 {
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap();
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("MemTotal in /proc/meminfo");
    kib / 1024
}

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// The numbers of test.time as date.py writes it ("today is", then
/// "<time>\t<n>\t<host>" lines); a line being written may be incomplete.
fn test_time_numbers(path: &Path) -> Vec<u64> {
    let text = fs::read_to_string(path).unwrap_or_default();
    let complete = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    let mut lines = complete.lines();
    if let Some(first) = lines.next() {
        assert_eq!(first, "today is", "test.time:\n{text}");
    }
    lines
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            assert_eq!(f.len(), 3, "bad line {l:?} in test.time:\n{text}");
            f[1].parse()
                .unwrap_or_else(|_| panic!("bad number in {l:?}; test.time:\n{text}"))
        })
        .collect()
}

fn assert_consecutive_from(nums: &[u64], first: u64, what: &str, all: &[u64]) {
    for (i, &n) in nums.iter().enumerate() {
        assert_eq!(
            n,
            first + i as u64,
            "{what}: number {} is {n}, expected {} (a reset, gap or duplicate); all numbers: {all:?}",
            i + 1,
            first + i as u64
        );
    }
}

/// Runs `./ckpt_command.<id> ARGS` in the submit directory; its output.
fn ckpt_command(submit: &Path, job: &str, args: &[&str]) -> std::process::Output {
    let mut cmd = command(submit.join(format!("ckpt_command.{job}")));
    cmd.args(args).current_dir(submit);
    run(&mut cmd)
}

#[test]
fn slurm_launch_checkpoint_cancel_restart() {
    if !slurm_available() {
        return;
    }
    // orphans (the jobs' daemonized coordinators, slurmstepd) become our
    // children, so that the cleanup can reap them
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER, 1) takes only integers and only changes how
    // this process's orphaned descendants are reparented; no memory is touched.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let d = tempdir();
    let submit = d.join("submit");
    fs::create_dir_all(&submit).unwrap();
    fs::copy(testdata("date.py"), submit.join("date.py")).unwrap();
    let mut cluster = Cluster::start(&d.join("slurm"), "", "");

    let ckpt = ckpt_bin();
    let ckpt = ckpt.to_str().unwrap();
    let env = [
        ("CKPT", ckpt),
        // the seed's program, faster (no job runs out of iterations here)
        ("CKPT_PROGRAM", "python3 date.py 100000 0.2"),
        // periodic checkpoints off in effect: this test checkpoints on demand
        ("CKPT_INTERVAL", "3600"),
    ];
    let test_time = submit.join("test.time");

    // ---- the launch job
    let launch = cluster.sbatch(&repo_file("examples/slurm/slurm_launch.job"), &submit, &env);
    let cmd_file = submit.join(format!("ckpt_command.{launch}"));
    cluster.wait_for("date.py to write 5 numbers", |c| {
        c.assert_in_queue(&launch, &submit);
        test_time_numbers(&test_time).len() >= 5
    });
    assert!(
        cmd_file.exists(),
        "the launch job wrote no {}",
        cmd_file.display()
    );
    let mode = fs::metadata(&cmd_file).unwrap().permissions().mode();
    assert!(
        mode & 0o100 != 0,
        "{} is not executable ({mode:o})",
        cmd_file.display()
    );
    let token = submit.join(format!(".ckpt_token.{launch}"));
    let mode = fs::metadata(&token).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{} must be private", token.display());

    let list = ckpt_command(&submit, &launch, &["l"]);
    assert_success(&list, "ckpt_command l");
    assert!(
        String::from_utf8_lossy(&list.stdout).starts_with("1 job(s)"),
        "the launch job's coordinator should list exactly the job"
    );

    // ---- checkpoint on demand
    let before = *test_time_numbers(&test_time).last().unwrap();
    let c = ckpt_command(&submit, &launch, &["c"]);
    assert_success(&c, &format!("./ckpt_command.{launch} c"));
    let after = *test_time_numbers(&test_time).last().unwrap();
    let generation = String::from_utf8_lossy(&c.stdout).trim().to_string();
    assert!(
        Path::new(&generation).starts_with(&submit) && Path::new(&generation).is_dir(),
        "ckpt_command c should print the generation it wrote, in the submit directory: {generation:?}"
    );
    let restart_script = submit.join("ckpt_restart_script.sh");
    assert!(
        restart_script.exists(),
        "no ckpt_restart_script.sh in the submit directory"
    );
    // let it run on past the checkpoint, as a job would until the maintenance
    cluster.wait_for("date.py to go on after the checkpoint", |_| {
        test_time_numbers(&test_time).len() as u64 >= after + 3
    });

    // ---- the maintenance: the job is cancelled
    cluster.cancel_and_wait(&launch);
    let cancelled = test_time_numbers(&test_time);
    assert_consecutive_from(&cancelled, 1, "test.time of the launch job", &cancelled);
    let k = cancelled.len();

    // ---- the restart job
    let restart = cluster.sbatch(
        &repo_file("examples/slurm/slurm_restart.job"),
        &submit,
        &env,
    );
    cluster.wait_for("the restored date.py to write 5 numbers", |c| {
        c.assert_in_queue(&restart, &submit);
        test_time_numbers(&test_time).len() >= k + 5
    });
    let all = test_time_numbers(&test_time);
    assert_consecutive_from(&all[..k], 1, "test.time up to the cancel", &all);
    let resumed = &all[k..];
    assert!(
        resumed[0] > before && resumed[0] <= after + 1,
        "the restored date.py should go on from the checkpoint (taken when test.time ended between {before} and {after}), \
         but its first number is {}; all numbers: {all:?}",
        resumed[0]
    );
    assert_consecutive_from(resumed, resumed[0], "numbers after the restart", &all);

    // the restored job is registered with the restart job's coordinator
    // (not the launch job's, which is gone) and can be checkpointed again
    assert!(
        submit.join(format!("ckpt_command.{restart}")).exists(),
        "the restart job wrote no ckpt_command.{restart}"
    );
    let list = ckpt_command(&submit, &restart, &["l"]);
    assert_success(&list, "ckpt_command l after the restart");
    assert!(
        String::from_utf8_lossy(&list.stdout).starts_with("1 job(s)"),
        "the restored job did not register with the restart job's coordinator"
    );
    let c = ckpt_command(&submit, &restart, &["c"]);
    assert_success(
        &c,
        &format!("./ckpt_command.{restart} c (after the restart)"),
    );
    let n = test_time_numbers(&test_time).len();
    cluster.wait_for("the restored date.py to go on after its checkpoint", |_| {
        test_time_numbers(&test_time).len() >= n + 2
    });
    let all = test_time_numbers(&test_time);
    assert_consecutive_from(&all[k..], all[k], "numbers after the restart", &all);

    cluster.cancel_and_wait(&restart);
}

/// `scontrol show job ID` as its KEY=VALUE fields.
fn job_fields(cluster: &Cluster, id: &str) -> Vec<(String, String)> {
    let out = cluster.output(cluster.cmd("scontrol").args(["-o", "show", "job", id]));
    out.split_whitespace()
        .filter_map(|f| f.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn field<'a>(fields: &'a [(String, String)], key: &str) -> &'a str {
    fields
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("scontrol show job has no {key}: {fields:?}"))
}

/// Issue 12, item 1: a job with a 1-minute time limit runs a computation of about 3
/// minutes (date.py, 900 steps of 0.2 s, each numbered in test.time) to its end.
/// Before each time limit Slurm sends the batch script SIGUSR1
/// (`--signal=B:USR1@N`), examples/slurm/slurm_requeue.job checkpoints and kills
/// the program (`ckpt command kc`) and requeues the job; each new run of the same
/// script restores the checkpoint (`ckpt run --restart-if-checkpoint`). The end
/// result is that of an uninterrupted run: one fresh start, the numbers 1 to 900
/// once each, in order, and date.py's final print of the file.
#[test]
fn slurm_time_limit_checkpoint_requeue() {
    if !slurm_available() {
        return;
    }
    // SAFETY: as in slurm_launch_checkpoint_cancel_restart.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let d = tempdir();
    let submit = d.join("submit");
    fs::create_dir_all(&submit).unwrap();
    fs::copy(testdata("date.py"), submit.join("date.py")).unwrap();
    // cred_expire: a requeued job waits that long before it starts again (default
    // 120 s); sched_interval: how often pending jobs are looked at (default 60 s).
    let mut cluster = Cluster::start(
        &d.join("slurm"),
        ",cred_expire=10",
        "SchedulerParameters=sched_interval=2\nMinJobAge=3600",
    );

    let ckpt = ckpt_bin();
    let env = [
        ("CKPT", ckpt.to_str().unwrap()),
        ("CKPT_PROGRAM", "python3 date.py 900 0.2"),
    ];
    let t0 = Instant::now();
    let id = cluster.sbatch_with(
        &["--time=1", "--signal=B:USR1@15"],
        &repo_file("examples/slurm/slurm_requeue.job"),
        &submit,
        &env,
    );
    let out_file = submit.join(format!("slurm-{id}.out"));
    cluster.wait_for_within(
        "the time-limited job to finish its 900 steps across requeues",
        Duration::from_secs(1200),
        |c| c.job_state(&id).is_none(),
    );
    let output = fs::read_to_string(&out_file).unwrap_or_default();
    eprintln!(
        "job {id} ended after {:.0} s; slurm-{id}.out:\n{output}",
        t0.elapsed().as_secs_f64()
    );

    let fields = job_fields(&cluster, &id);
    assert_eq!(
        field(&fields, "JobState"),
        "COMPLETED",
        "job {id} did not complete: {fields:?}; slurm-{id}.out:\n{output}"
    );
    assert_eq!(field(&fields, "ExitCode"), "0:0", "{fields:?}");
    // 180 s of steps do not fit in one minute: the job was requeued at least twice
    let restarts: u32 = field(&fields, "Restarts").parse().unwrap();
    assert!(
        restarts >= 2,
        "job {id} was requeued {restarts} time(s), expected at least 2; slurm-{id}.out:\n{output}"
    );
    let restores = output.matches("(--restart-if-checkpoint)").count();
    assert_eq!(
        restores as u32, restarts,
        "every run after the first should restore the checkpoint; slurm-{id}.out:\n{output}"
    );

    // the result of an uninterrupted run
    let test_time = submit.join("test.time");
    let text = fs::read_to_string(&test_time).unwrap();
    let nums = test_time_numbers(&test_time);
    assert_eq!(nums.len(), 900, "test.time:\n{text}");
    assert_consecutive_from(&nums, 1, "test.time", &nums);
    assert!(
        output.contains(&text),
        "date.py's final print of test.time is not in slurm-{id}.out"
    );
}
