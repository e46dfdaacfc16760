//! One coordinator, jobs on several hosts: three network namespaces made by
//! the test stand for a coordinator host and two compute hosts, joined by a
//! bridge (10.77.0.0/24: coordinator 10.77.0.1, hosts .2 and .3). The
//! coordinator listens on its host's address (not loopback), so it needs a
//! token file that agents and `ckpt command` present; a wrong or missing
//! token is refused and logged. One `ckpt command c` writes one global
//! checkpoint with both jobs; everything is killed; a new coordinator on the
//! same address, and `ckpt_restart_script.sh` run on each compute host restores
//! that host's job there (in its network namespace; it says which job it leaves
//! to the other host); they register again and are checkpointed again, and both
//! counters go on from the checkpoint. Each compute host has a UTS namespace of
//! its own with its own host name, which is how the restart script tells the
//! hosts apart (the namespaces of `ip netns` share the machine's host name).
//!
//! The second test runs an Open MPI job over the two compute hosts, its remote
//! part a job of its own, checkpointed with `--tcp-established` and restarted per
//! host (see its comment).
//!
//! Needs root and iproute2 (`ip netns`; .ci/run installs it); the second test also
//! openmpi-bin and nftables (.ci/deps). The namespaces
//! exist only inside this machine; they, and every process the test started,
//! are removed at the end, also on failure.
mod common;

use common::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const COORD_ADDR: &str = "10.77.0.1";
const HOST_ADDRS: [&str; 2] = ["10.77.0.2", "10.77.0.3"];
/// Any port: nothing else listens in the coordinator's own namespace.
const PORT: &str = "7781";

fn netns_available() -> bool {
    // SAFETY: geteuid(2) takes no argument, touches no memory and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let ip = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .iter()
        .any(|p| Path::new(p).exists());
    if root && ip {
        return true;
    }
    let why = if !root {
        "it must run as root (ip netns)"
    } else {
        "iproute2 is not installed"
    };
    if std::env::var_os("CI").is_some() {
        panic!("the multi-node test cannot run: {why}");
    }
    eprintln!("SKIPPED: the multi-node test cannot run: {why}");
    false
}

/// Runs `ip ARGS`, which must succeed.
fn ip(args: &[&str]) {
    let out = run(Command::new("ip").args(args));
    assert_success(&out, &format!("ip {}", args.join(" ")));
}

/// The three namespaces ("hosts"), deleted on drop.
struct Hosts {
    coord: String,
    nodes: [String; 2],
}

impl Hosts {
    /// `tag` tells apart the hosts of the tests of one run.
    fn create(tag: &str) -> Hosts {
        let base = format!("ckpt{}{tag}", std::process::id());
        let h = Hosts {
            coord: format!("{base}-coord"),
            nodes: [format!("{base}-node1"), format!("{base}-node2")],
        };
        // on a failure below, Drop deletes whichever of them exist
        for n in [&h.coord, &h.nodes[0], &h.nodes[1]] {
            ip(&["netns", "add", n]);
        }
        for n in [&h.coord, &h.nodes[0], &h.nodes[1]] {
            ip(&["-n", n, "link", "set", "lo", "up"]);
        }
        // the "switch": a bridge in the coordinator's namespace
        ip(&["-n", &h.coord, "link", "add", "br0", "type", "bridge"]);
        ip(&[
            "-n",
            &h.coord,
            "addr",
            "add",
            &format!("{COORD_ADDR}/24"),
            "dev",
            "br0",
        ]);
        ip(&["-n", &h.coord, "link", "set", "br0", "up"]);
        for (i, n) in h.nodes.iter().enumerate() {
            let port = format!("port{}", i + 1);
            ip(&[
                "-n", &h.coord, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                "netns", n,
            ]);
            ip(&["-n", &h.coord, "link", "set", &port, "master", "br0"]);
            ip(&["-n", &h.coord, "link", "set", &port, "up"]);
            ip(&[
                "-n",
                n,
                "addr",
                "add",
                &format!("{}/24", HOST_ADDRS[i]),
                "dev",
                "eth0",
            ]);
            ip(&["-n", n, "link", "set", "eth0", "up"]);
        }
        h
    }

    /// A command that runs `prog` on a host (in its network namespace).
    fn exec(ns: &str, prog: &Path) -> Command {
        let mut cmd = command("ip");
        cmd.args(["netns", "exec", ns]).arg(prog);
        cmd
    }

    /// A command that runs `prog` on compute host `ns` as a host of its own: in its
    /// network namespace and in a new UTS namespace whose host name is `ns`, so that
    /// its agent registers as `ns` (the namespaces of `ip netns` share the UTS name
    /// of the machine).
    fn exec_node(ns: &str, prog: &Path) -> Command {
        let mut cmd = command("ip");
        cmd.args(["netns", "exec", ns, "unshare", "--uts", "sh", "-c"])
            .arg(r#"printf %s "$0" > /proc/sys/kernel/hostname && exec "$@""#)
            .arg(ns)
            .arg(prog);
        cmd
    }

    /// The network namespace of host `ns` (device, inode), as /proc/PID/ns/net shows it.
    fn netns_id(ns: &str) -> (u64, u64) {
        use std::os::unix::fs::MetadataExt;
        let m = fs::metadata(format!("/run/netns/{ns}")).unwrap();
        (m.dev(), m.ino())
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for n in [&self.coord, &self.nodes[0], &self.nodes[1]] {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

/// Kills, on drop, every process whose command line contains a path of the
/// test (agents, jobs, coordinators, restorers, restored jobs), and every process
/// in a network namespace of the test's hosts (Open MPI's orted names no path).
struct KillAll(String, Vec<(u64, u64)>);

impl KillAll {
    fn new(dir: &TestDir, hosts: &Hosts) -> KillAll {
        let ids = [&hosts.coord, &hosts.nodes[0], &hosts.nodes[1]]
            .iter()
            .map(|n| Hosts::netns_id(n))
            .collect();
        KillAll(dir.path().to_string_lossy().into_owned(), ids)
    }

    fn left(&self) -> Vec<i32> {
        use std::os::unix::fs::MetadataExt;
        let mut left = pids_running(&self.0);
        for e in fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            if let Ok(m) = fs::metadata(format!("/proc/{pid}/ns/net")) {
                if self.1.contains(&(m.dev(), m.ino())) && !left.contains(&pid) {
                    left.push(pid);
                }
            }
        }
        left
    }
}

impl Drop for KillAll {
    fn drop(&mut self) {
        for _ in 0..50 {
            let left = self.left();
            if left.is_empty() {
                return;
            }
            for p in left {
                // SAFETY: kill(2) takes only integers and touches no memory of this
                // process; `left` are the test's leftover processes, and a stale pid only
                // makes kill fail (ESRCH).
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

/// `ckpt command ARGS` on host `ns`.
fn command_on(ns: &str, token: Option<&Path>, args: &[&str]) -> Output {
    let mut cmd = Hosts::exec(ns, &ckpt_bin());
    cmd.args(["command", "--coord-host", COORD_ADDR, "--coord-port", PORT]);
    if let Some(t) = token {
        cmd.arg("--token-file").arg(t);
    }
    cmd.args(args);
    run(&mut cmd)
}

/// `ckpt coordinator` on the coordinator host, listening on its address.
fn start_coordinator(hosts: &Hosts, token: &Path, dir: &Path) -> Target {
    start_coordinator_with(hosts, token, dir, &[])
}

fn start_coordinator_with(hosts: &Hosts, token: &Path, dir: &Path, extra: &[&str]) -> Target {
    let mut cmd = Hosts::exec(&hosts.coord, &ckpt_bin());
    cmd.args([
        "coordinator",
        "--bind",
        COORD_ADDR,
        "--port",
        PORT,
        "--token-file",
    ])
    .arg(token)
    .arg("--ckpt-dir")
    .arg(dir)
    .args(extra);
    let mut t = Target::spawn(cmd, &dir.to_string_lossy());
    t.stdout.expect_prefix("[ckpt coordinator] listening on");
    t
}

/// The numbers and PIDs of a counter's output file ("<n> <pid>" lines).
fn counter_lines(path: &Path) -> Vec<(u64, i32)> {
    file_lines(path)
        .iter()
        .map(|l| {
            let (n, p) = l
                .split_once(' ')
                .unwrap_or_else(|| panic!("bad line {l:?} in {}", path.display()));
            (n.parse().unwrap(), p.parse().unwrap())
        })
        .collect()
}

fn last_number(path: &Path) -> u64 {
    counter_lines(path).last().map(|l| l.0).unwrap_or(0)
}

fn wait_jobs_listed(ns: &str, token: &Path, n: usize) {
    let want = format!("{n} job(s)");
    wait_until(&format!("the coordinator to list {want}"), || {
        let out = command_on(ns, Some(token), &["l"]);
        out.status.success() && String::from_utf8_lossy(&out.stdout).starts_with(&want)
    });
}

fn write_token(path: &Path, secret: &str) {
    fs::write(path, secret).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
}

#[test]
fn two_hosts_one_global_checkpoint_token_and_restart() {
    if !netns_available() {
        return;
    }
    let d = tempdir();
    let hosts = Hosts::create("c");
    // dropped first: the processes die before their namespaces are deleted
    let _kill_all = KillAll::new(&d, &hosts);
    let ck = d.join("ckpt"); // the "shared file system" of the hosts
    let token = d.join("token");
    let wrong = d.join("wrong-token");
    write_token(&token, "the right secret 0123456789");
    write_token(&wrong, "a wrong secret 9876543210");
    let counter = testdata("counter");
    let outs: Vec<PathBuf> = (1..=2).map(|i| d.join(format!("out{i}"))).collect();
    let stops: Vec<PathBuf> = (1..=2).map(|i| d.join(format!("stop{i}"))).collect();

    // the coordinator host: on loopback only without a token, so not here
    let mut refuse = Hosts::exec(&hosts.coord, &ckpt_bin());
    refuse
        .args([
            "coordinator",
            "--bind",
            COORD_ADDR,
            "--port",
            PORT,
            "--ckpt-dir",
        ])
        .arg(&ck);
    let out = run(&mut refuse);
    let err = assert_error(
        &out,
        "a coordinator on a non-loopback address without a token",
    );
    assert!(
        err.contains("token"),
        "the error should say a token is needed: {err}"
    );
    let mut coord = start_coordinator(&hosts, &token, &ck);

    // one job on each compute host
    let mut agents = Vec::new();
    for i in 0..2 {
        let mut cmd = Hosts::exec_node(&hosts.nodes[i], &ckpt_bin());
        cmd.args([
            "run",
            "--coord-host",
            COORD_ADDR,
            "--coord-port",
            PORT,
            "--token-file",
        ])
        .arg(&token)
        .arg("--")
        .arg(&counter)
        .arg(&outs[i])
        .arg(&stops[i])
        .arg("100");
        agents.push(Target::spawn(cmd, &outs[i].to_string_lossy()));
    }
    for a in &mut agents {
        a.stdout.expect_line("ready");
    }
    let pids: Vec<i32> = outs.iter().map(|o| counter_lines(o)[0].1).collect();
    wait_jobs_listed(&hosts.coord, &token, 2);
    let list = command_on(&hosts.coord, Some(&token), &["l"]);
    let list = String::from_utf8_lossy(&list.stdout).into_owned();
    for (p, node) in pids.iter().zip(&hosts.nodes) {
        assert!(
            list.contains(&format!("pid {p} on {node}: ")),
            "job {p} is not listed on its host {node}:\n{list}"
        );
    }

    // a wrong token (from a compute host) and no token (from the coordinator
    // host) are refused, and the coordinator says so
    let out = command_on(&hosts.nodes[1], Some(&wrong), &["s"]);
    let err = assert_error(&out, "ckpt command with a wrong token");
    assert!(
        err.contains("token"),
        "the refusal should name the token: {err}"
    );
    coord.stdout.expect_prefix(&format!(
        "[ckpt coordinator] refused a connection from {}:",
        HOST_ADDRS[1]
    ));
    let out = command_on(&hosts.coord, None, &["c"]);
    assert_error(&out, "ckpt command without a token");
    coord.stdout.expect_prefix(&format!(
        "[ckpt coordinator] refused a connection from {COORD_ADDR}:"
    ));
    assert!(
        !ck.join("ckpt_restart_script.sh").exists(),
        "a refused command must not checkpoint"
    );

    // one global checkpoint with both jobs
    let before: Vec<u64> = outs.iter().map(|o| last_number(o)).collect();
    let c = command_on(&hosts.coord, Some(&token), &["c"]);
    assert_success(&c, "ckpt command c");
    let after: Vec<u64> = outs.iter().map(|o| last_number(o)).collect();
    let gens: Vec<String> = String::from_utf8_lossy(&c.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(gens.len(), 2, "one generation per job expected: {gens:?}");
    for p in &pids {
        assert!(
            gens.iter().any(|g| g.contains(&format!("_{p}_"))),
            "no generation for job {p}: {gens:?}"
        );
    }
    coord
        .stdout
        .expect_prefix("[ckpt coordinator] checkpoint 1 complete");
    let script = ck.join("ckpt_restart_script.sh");
    let text = fs::read_to_string(&script).expect("ckpt_restart_script.sh after the checkpoint");
    for p in &pids {
        // The job directory that holds this job's generation (ckpt_<prog>_<pid>_<n>).
        let gen = gens
            .iter()
            .find(|g| g.contains(&format!("_{p}_")))
            .expect("generation of the job");
        let job_dir = Path::new(gen).parent().unwrap().display().to_string();
        assert!(
            text.contains(&format!("'{job_dir}'")),
            "the restart script does not restore job {p} ({job_dir}):\n{text}"
        );
    }

    // everything dies: the jobs (reaped by their agents), the agents, the coordinator
    for &p in &pids {
        send_signal(p, libc::SIGKILL);
    }
    for a in &mut agents {
        let st = a.wait();
        assert!(
            !st.success(),
            "the agent should report its killed job: {st:?}"
        );
    }
    coord.kill();
    for &p in &pids {
        wait_pid_free(p);
    }
    let killed: Vec<Vec<(u64, i32)>> = outs.iter().map(|o| counter_lines(o)).collect();

    // a new coordinator at the same address; the restart script run on each
    // compute host restores that host's job there, which registers again (with the
    // token), and says that it leaves the other job to the other host
    let mut coord = start_coordinator(&hosts, &token, &ck);
    let mut restarts: Vec<Target> = hosts
        .nodes
        .iter()
        .map(|n| {
            let mut cmd = Hosts::exec_node(n, &script);
            cmd.env("CKPT_TOKEN_FILE", &token);
            Target::spawn(cmd, &ck.to_string_lossy())
        })
        .collect();
    for (i, &p) in pids.iter().enumerate() {
        let restart = &mut restarts[i];
        wait_until(&format!("job {p} to run again"), || {
            if let Some(st) = restart.child.try_wait().unwrap() {
                restart.stderr.read_to_end();
                panic!(
                    "ckpt_restart_script.sh on {} exited ({st}) before job {p} ran again; its stderr:\n{}",
                    hosts.nodes[i],
                    restart.stderr.seen().join("\n")
                );
            }
            cmdline(p).is_some_and(|c| c.contains(&*counter.to_string_lossy()))
        });
        // on its own host: in that host's network namespace
        let ns = fs::metadata(format!("/proc/{p}/ns/net")).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            (ns.dev(), ns.ino()),
            Hosts::netns_id(&hosts.nodes[i]),
            "job {p} was restored outside the network namespace of its host {}",
            hosts.nodes[i]
        );
        let other = &hosts.nodes[1 - i];
        let line = restart.stderr.expect_prefix(&format!(
            "ckpt_restart_script.sh: on host {}: leaving to other hosts: ",
            hosts.nodes[i]
        ));
        assert!(
            line.contains(&format!("(pid {}) of {other}", pids[1 - i])),
            "the restart script on {} should name the job it leaves to {other}: {line}",
            hosts.nodes[i]
        );
    }
    wait_jobs_listed(&hosts.coord, &token, 2);
    let list = command_on(&hosts.coord, Some(&token), &["l"]);
    let list = String::from_utf8_lossy(&list.stdout).into_owned();
    for (p, node) in pids.iter().zip(&hosts.nodes) {
        assert!(
            list.contains(&format!("pid {p} on {node}: ")),
            "restored job {p} is not listed on its host {node}:\n{list}"
        );
    }
    for (i, o) in outs.iter().enumerate() {
        let n = killed[i].len();
        wait_until("the restored counter to write", || {
            counter_lines(o).len() >= n + 3
        });
    }
    let c = command_on(&hosts.coord, Some(&token), &["c"]);
    assert_success(&c, "ckpt command c after the restart");
    assert_eq!(
        String::from_utf8_lossy(&c.stdout).lines().count(),
        2,
        "both restored jobs checkpointed"
    );
    coord
        .stdout
        .expect_prefix("[ckpt coordinator] checkpoint 1 complete");

    for s in &stops {
        touch(s);
    }
    for (i, restart) in restarts.iter_mut().enumerate() {
        let st = restart.wait();
        restart.stdout.read_to_end();
        assert!(
            st.success(),
            "the restart script on {} exited with {st:?}",
            hosts.nodes[i]
        );
        restart.stdout.assert_no_fail();
    }
    for i in 0..2 {
        let lines = counter_lines(&outs[i]);
        let what = format!("counter {} (pid {})", i + 1, pids[i]);
        let k = killed[i].len();
        for (j, &(n, p)) in lines.iter().enumerate() {
            assert_eq!(
                p,
                pids[i],
                "{what}: line {} written by another PID: {lines:?}",
                j + 1
            );
            if j < k {
                assert_eq!(n, j as u64 + 1, "{what}: before the kill: {lines:?}");
            }
        }
        let resumed: Vec<u64> = lines[k..].iter().map(|l| l.0).collect();
        assert!(
            resumed[0] > before[i] && resumed[0] <= after[i] + 1,
            "{what}: the restored counter should go on from the checkpoint (taken when it was between {} and {}), \
             it went on with {}: {lines:?}",
            before[i],
            after[i],
            resumed[0]
        );
        for (j, w) in resumed.windows(2).enumerate() {
            assert_eq!(
                w[1],
                w[0] + 1,
                "{what}: gap or duplicate after the restore at {j}: {resumed:?}"
            );
        }
        let last = *resumed.last().unwrap();
        assert!(
            restarts[i].stdout.saw_prefix(&format!("done {last}")),
            "{what}: the restored counter did not finish with `done {last}`"
        );
    }
}

const MPI_RANKS: u64 = 4;
const MPI_ROUNDS: u64 = 150;

/// The ranks running `prog` (the processes whose command line has `progress`),
/// each with its network namespace.
fn mpi_ranks(prog: &Path, progress: &Path) -> Vec<(i32, (u64, u64))> {
    use std::os::unix::fs::MetadataExt;
    let (prog, progress) = (prog.to_string_lossy(), progress.to_string_lossy());
    let mut ranks = Vec::new();
    for p in pids_running(&progress) {
        let Some(c) = cmdline(p) else { continue };
        // the ranks only: not mpirun (its command line has the program too), not the agent
        if !c.starts_with(&*prog) {
            continue;
        }
        if let Ok(m) = fs::metadata(format!("/proc/{p}/ns/net")) {
            ranks.push((p, (m.dev(), m.ino())));
        }
    }
    ranks.sort();
    ranks
}

/// An Open MPI job over the two compute hosts (issue 10, several nodes): `mpirun`
/// on host 1, under `ckpt run`, starts two of its four ranks on host 2 through an
/// rsh agent (testdata/rsh_netns, the "ssh" of these hosts); on host 2 its "sshd"
/// runs each remote command (orted, which starts the ranks there) as a `ckpt run`
/// job of its own registered with the same coordinator, as DMTCP's ssh plugin
/// wraps remote commands. The TCP connections between the two jobs (the rsh
/// connection, mpirun and orted, the ranks of one host and the other's) are
/// connections to peers outside each job: the coordinator runs with
/// `--tcp-established` (TCP_REPAIR and the nftables lock, root). One global
/// checkpoint that kills both jobs (`kc`), everything else killed too (the
/// coordinator, the rsh daemon), a new coordinator, and the restart script run on
/// each compute host with `--tcp-established`: each host's ranks come back on that
/// host (same PIDs, in its network namespace), the locks are gone, and the job ends
/// with exactly the progress file and the result of an uninterrupted run.
#[test]
fn open_mpi_job_over_two_hosts_restarted_per_host() {
    if !netns_available() {
        return;
    }
    let mpirun = Path::new("/usr/bin/mpirun.openmpi");
    assert!(
        mpirun.exists(),
        "{} is missing: install openmpi-bin and libopenmpi-dev (.ci/deps does)",
        mpirun.display()
    );
    assert!(
        nft_available(),
        "nft is missing: install nftables (.ci/deps does)"
    );
    let d = tempdir();
    let hosts = Hosts::create("m");
    let _kill_all = KillAll::new(&d, &hosts);
    let ck = d.join("ckpt");
    let token = d.join("token");
    write_token(&token, "the right secret 0123456789");
    let prog = testdata("mpi_allreduce_ompi");
    let rsh = testdata("rsh_netns");
    let progress = d.join("progress");
    let tcp = ["--tcp-established"];
    let coord_args = |cmd: &mut Command| {
        cmd.args([
            "--coord-host",
            COORD_ADDR,
            "--coord-port",
            PORT,
            "--token-file",
        ])
        .arg(&token);
    };

    let mut coord = start_coordinator_with(&hosts, &token, &ck, &tcp);
    // host 2's "sshd": each remote command becomes a `ckpt run` job there
    let mut rshd = Hosts::exec_node(&hosts.nodes[1], &rsh);
    rshd.args(["-s", "7790"]).arg(ckpt_bin()).arg("run");
    coord_args(&mut rshd);
    rshd.arg("--");
    let mut rshd = Target::spawn(rshd, &token.to_string_lossy());
    rshd.stdout.expect_line("listening");
    // the job on host 1: 2 ranks there, 2 on host 2 (by its address)
    let mut job = Hosts::exec_node(&hosts.nodes[0], &ckpt_bin());
    job.arg("run");
    coord_args(&mut job);
    job.arg("--")
        .arg(mpirun)
        .args(["--allow-run-as-root", "--oversubscribe", "-np"])
        .arg(MPI_RANKS.to_string())
        .arg("--host")
        .arg(format!("{}:2,{}:2", HOST_ADDRS[0], HOST_ADDRS[1]))
        .args(["--mca", "plm_rsh_agent"])
        .arg(&rsh)
        .arg(&prog)
        .arg(MPI_ROUNDS.to_string())
        .arg(&progress)
        .env("HOME", d.path())
        .current_dir(d.path());
    clean_coord_env(&mut job);
    let mut agent = Target::spawn(job, &progress.to_string_lossy());

    wait_until("the MPI job to do 10 rounds", || {
        mpi_rounds_done(&progress) >= 10
    });
    wait_jobs_listed(&hosts.coord, &token, 2);
    let list = command_on(&hosts.coord, Some(&token), &["l"]);
    let list = String::from_utf8_lossy(&list.stdout).into_owned();
    assert!(
        list.contains(&format!(" on {}: {}", hosts.nodes[0], mpirun.display())),
        "mpirun should be a job on {}:\n{list}",
        hosts.nodes[0]
    );
    assert!(
        list.contains(&format!(" on {}: /bin/sh -c ", hosts.nodes[1])) && list.contains("orted"),
        "orted should be a job of its own on {}:\n{list}",
        hosts.nodes[1]
    );
    let ranks = mpi_ranks(&prog, &progress);
    let nets: Vec<(u64, u64)> = hosts.nodes.iter().map(|n| Hosts::netns_id(n)).collect();
    for (i, n) in nets.iter().enumerate() {
        let here = ranks.iter().filter(|r| r.1 == *n).count();
        assert_eq!(
            here, 2,
            "two ranks should run on {}: {ranks:?}",
            hosts.nodes[i]
        );
    }

    // one global checkpoint that kills both jobs (their connections must not run on
    // past their images)
    let c = command_on(&hosts.coord, Some(&token), &["kc"]);
    assert_success(&c, "ckpt command kc");
    let out = String::from_utf8_lossy(&c.stdout).into_owned();
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines.len() == 3 && lines[2] == "killing 2 job(s)",
        "kc should write two generations and kill two jobs:\n{out}"
    );
    coord
        .stdout
        .expect_prefix("[ckpt coordinator] checkpoint 1 complete");
    let st = agent.wait();
    assert!(!st.success(), "the killed job's agent: {st:?}");
    for &(p, _) in &ranks {
        wait_pid_free(p);
    }
    let at_kill = mpi_rounds_done(&progress);
    assert!(
        (at_kill as u64) < MPI_ROUNDS,
        "the MPI job ended before the checkpoint ({at_kill} rounds)"
    );
    rshd.kill();
    coord.kill();
    for n in &hosts.nodes {
        let t = run(Command::new("ip").args(["netns", "exec", n, "nft", "list", "tables"]));
        assert!(
            String::from_utf8_lossy(&t.stdout).contains("ckpt_lock_"),
            "{n} should hold a network lock until the restore"
        );
    }

    // Open MPI closed some connections between the hosts in the normal way while it
    // ran (of two connected at once, one goes), leaving TIME_WAIT sockets on the
    // ports of its listeners for 60 s; such a socket (the program set no
    // SO_REUSEADDR) keeps a restored listener off its port (EADDRINUSE, even with
    // SO_REUSEADDR). A real restart comes later than that: wait them out.
    for n in &hosts.nodes {
        wait_no_time_wait(n);
    }

    // restart: a new coordinator, the script on each compute host
    let _coord = start_coordinator_with(&hosts, &token, &ck, &tcp);
    let script = ck.join("ckpt_restart_script.sh");
    let mut restarts: Vec<Target> = hosts
        .nodes
        .iter()
        .map(|n| {
            let mut cmd = Hosts::exec_node(n, &script);
            cmd.arg("--tcp-established")
                .env("CKPT_TOKEN_FILE", &token)
                .env("HOME", d.path())
                .current_dir(d.path());
            Target::spawn(cmd, &ck.to_string_lossy())
        })
        .collect();
    for &(p, net) in &ranks {
        wait_until(&format!("rank {p} to run again"), || {
            for (i, r) in restarts.iter_mut().enumerate() {
                if let Some(st) = r.child.try_wait().unwrap() {
                    r.stderr.read_to_end();
                    panic!(
                        "ckpt_restart_script.sh on {} exited ({st}) before rank {p} ran again; its stderr:\n{}",
                        hosts.nodes[i],
                        r.stderr.seen().join("\n")
                    );
                }
            }
            cmdline(p).is_some_and(|c| c.starts_with(&*prog.to_string_lossy()))
        });
        use std::os::unix::fs::MetadataExt;
        let m = fs::metadata(format!("/proc/{p}/ns/net")).unwrap();
        assert_eq!(
            (m.dev(), m.ino()),
            net,
            "rank {p} came back outside the network namespace of its host"
        );
    }
    wait_jobs_listed(&hosts.coord, &token, 2);
    let list = command_on(&hosts.coord, Some(&token), &["l"]);
    let list = String::from_utf8_lossy(&list.stdout).into_owned();
    assert!(
        list.contains(&format!(" on {}: {}", hosts.nodes[0], mpirun.display()))
            && list.contains(&format!(" on {}: /bin/sh -c ", hosts.nodes[1])),
        "each restored job should be registered from its own host:\n{list}"
    );
    let mut out = restarts.remove(0);
    let (text, hash) = mpi_expected_progress(MPI_RANKS, MPI_ROUNDS);
    out.stdout.expect_line(&format!("result {hash}"));
    for (i, r) in std::iter::once(&mut out)
        .chain(restarts.iter_mut())
        .enumerate()
    {
        let st = r.wait();
        r.stderr.read_to_end();
        assert!(
            st.success(),
            "the restart script on {} exited with {st:?}; its stderr:\n{}",
            hosts.nodes[i],
            r.stderr.seen().join("\n")
        );
    }
    let got = fs::read_to_string(&progress).unwrap();
    assert!(
        got == text,
        "the progress file after the restored run (checkpointed at about {at_kill} rounds) differs from an uninterrupted run's:\n{got}"
    );
    for n in &hosts.nodes {
        let t = run(Command::new("ip").args(["netns", "exec", n, "nft", "list", "tables"]));
        assert!(
            !String::from_utf8_lossy(&t.stdout).contains("ckpt_lock_"),
            "the restore on {n} should have removed its network lock"
        );
    }
}

fn nft_available() -> bool {
    ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"]
        .iter()
        .any(|p| Path::new(p).exists())
}

/// Waits (at most 90 s) until host `ns` has no TCP socket in TIME_WAIT.
fn wait_no_time_wait(ns: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    loop {
        let out = run(Command::new("ip").args([
            "netns",
            "exec",
            ns,
            "cat",
            "/proc/net/tcp",
            "/proc/net/tcp6",
        ]));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let waiting = text
            .lines()
            .filter(|l| l.split_whitespace().nth(3) == Some("06"))
            .count();
        if waiting == 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{ns} still has {waiting} TIME_WAIT socket(s) after 90 s:\n{text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}
