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
//! Needs root and iproute2 (`ip netns`; .ci/run installs it). The namespaces
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
    fn create() -> Hosts {
        let base = format!("ckpt{}", std::process::id());
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
/// test (agents, jobs, coordinators, restorers, restored jobs).
struct KillAll(String);

impl Drop for KillAll {
    fn drop(&mut self) {
        for _ in 0..50 {
            let left = pids_running(&self.0);
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
    .arg(dir);
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
    let hosts = Hosts::create();
    // dropped first: the processes die before their namespaces are deleted
    let _kill_all = KillAll(d.path().to_string_lossy().into_owned());
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
