//! A reboot between checkpoint and restart (docs/CONTRACT.md §1, use case 1): a job under
//! `ckpt run` (with the background coordinator it starts) holds a POSIX shared
//! memory segment in /dev/shm and an O_APPEND file. `ckpt command c`
//! checkpoints it; then everything that a reboot ends goes: every process of
//! the job and the coordinator are killed, the page cache is dropped, and the
//! segment's /dev/shm entry is removed (a tmpfs does not survive a reboot).
//! `ckpt_restart_script.sh` brings the job back: same PID, the segment
//! recreated with its content, the counter and the file going on from the
//! checkpoint, and the job registered with a coordinator again.
mod common;

use common::*;
use std::fs;
use std::path::Path;

/// Removes, on drop, a /dev/shm entry and kills every process whose command
/// line contains the test's directory (agent, job, coordinator, restorer,
/// restored job).
struct Cleanup {
    shm: String,
    marker: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for _ in 0..50 {
            let left = pids_running(&self.marker);
            if left.is_empty() {
                break;
            }
            for p in left {
                // SAFETY: kill(2) takes only integers and touches no memory of this
                // process; `left` are the test's leftover processes, and a stale pid only
                // makes kill fail (ESRCH).
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
            reap_orphans();
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = fs::remove_file(&self.shm);
    }
}

/// Reaps the zombies among our children without touching the ones that std's
/// `Child` handles wait for: with PR_SET_CHILD_SUBREAPER the daemonized
/// coordinator (and a job whose agent died) comes back to this process.
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

fn numbers(path: &Path) -> Vec<(u64, i32)> {
    file_lines(path)
        .iter()
        .map(|l| {
            let (n, p) = l
                .split_once(' ')
                .unwrap_or_else(|| panic!("bad line {l:?}"));
            (n.parse().unwrap(), p.parse().unwrap())
        })
        .collect()
}

fn last(path: &Path) -> u64 {
    numbers(path).last().map(|l| l.0).unwrap_or(0)
}

fn coord_command(port: u16, args: &[&str]) -> std::process::Output {
    let mut cmd = ckpt_cmd();
    cmd.args(["command", "--coord-port", &port.to_string()])
        .args(args);
    run(&mut cmd)
}

#[test]
fn job_with_dev_shm_and_append_file_survives_a_reboot() {
    // orphans (the background coordinator, a job whose agent died) become our
    // children, so that they can be reaped: no zombie keeps the job's PID
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER, 1) takes only integers and only changes how
    // this process's orphaned descendants are reparented; no memory is touched.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let d = tempdir();
    let ck = d.join("ckpt");
    let out = d.join("out");
    let stop = d.join("stop");
    let name = format!(
        "/ckpt-reboot-{}-{}",
        std::process::id(),
        d.path().file_name().unwrap().to_string_lossy()
    );
    let shm_path = format!("/dev/shm{name}");
    let _cleanup = Cleanup {
        shm: shm_path.clone(),
        marker: d.path().to_string_lossy().into_owned(),
    };
    let port = free_port();
    let job = testdata("rebootjob");

    // the job, with a background coordinator that `ckpt run` starts itself
    let mut cmd = ckpt_cmd();
    cmd.args(["run", "--coord-port", &port.to_string(), "--ckpt-dir"])
        .arg(&ck)
        .arg("--")
        .arg(&job)
        .arg(&name)
        .arg(&out)
        .arg(&stop)
        .arg("50");
    let mut agent = Target::spawn(cmd, &out.to_string_lossy());
    agent.stdout.expect_line("ready");
    let pid = numbers(&out)[0].1;
    assert!(Path::new(&shm_path).exists(), "the job made no {shm_path}");
    let coord_pids = || -> Vec<i32> {
        pids_running(&ck.to_string_lossy())
            .into_iter()
            .filter(|&p| cmdline(p).is_some_and(|c| c.contains(" coordinator ")))
            .collect()
    };
    assert_eq!(
        coord_pids().len(),
        1,
        "ckpt run should have started one background coordinator"
    );

    let before = last(&out);
    let c = coord_command(port, &["c"]);
    assert_success(&c, "ckpt command c");
    let after = last(&out);
    let script = ck.join("ckpt_restart_script.sh");
    assert!(
        script.exists(),
        "no ckpt_restart_script.sh after the checkpoint"
    );

    // the reboot: every process of the job and the coordinator die at once
    let mut victims = vec![pid, agent.pid];
    victims.extend(coord_pids());
    for &p in &victims {
        send_signal(p, libc::SIGKILL);
    }
    agent.wait();
    wait_until("the job and the coordinator to be gone", || {
        reap_orphans();
        victims.iter().all(|&p| !pid_exists(p))
    });
    let killed = numbers(&out);
    let run = |sh: &str| {
        let out = run(std::process::Command::new("sh").args(["-c", sh]));
        assert_success(&out, sh);
    };
    run("sync");
    // SAFETY: geteuid(2) takes no argument, touches no memory and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        run("echo 3 > /proc/sys/vm/drop_caches");
    } else {
        eprintln!("not root: the page cache is not dropped");
    }
    fs::remove_file(&shm_path).unwrap();

    // after the reboot: the restart script
    let mut restored = Target::spawn(command(&script), &ck.to_string_lossy());
    wait_until(&format!("PID {pid} to run the job again"), || {
        if let Some(st) = restored.child.try_wait().unwrap() {
            restored.stderr.read_to_end();
            panic!(
                "ckpt_restart_script.sh exited ({st}) before the job ran again; its stderr:\n{}",
                restored.stderr.seen().join("\n")
            );
        }
        cmdline(pid).is_some_and(|c| c.contains(&*job.to_string_lossy()))
    });
    assert!(
        Path::new(&shm_path).exists(),
        "the restore did not recreate {shm_path}"
    );
    wait_until("the restored job to write", || {
        numbers(&out).len() >= killed.len() + 3
    });
    // it registered with a coordinator (started anew at the recorded address)
    // and can be checkpointed again
    wait_until("the restored job to register", || {
        let l = coord_command(port, &["l"]);
        l.status.success() && String::from_utf8_lossy(&l.stdout).starts_with("1 job(s)")
    });
    let c = coord_command(port, &["c"]);
    assert_success(&c, "ckpt command c after the restart");

    touch(&stop);
    let st = restored.wait();
    restored.stdout.read_to_end();
    restored.stdout.assert_no_fail();
    assert!(st.success(), "the restart script exited with {st:?}");
    let lines = numbers(&out);
    let k = killed.len();
    for (i, &(n, p)) in lines.iter().enumerate() {
        assert_eq!(p, pid, "line {} written by another PID: {lines:?}", i + 1);
        if i < k {
            assert_eq!(n, i as u64 + 1, "before the reboot: {lines:?}");
        }
    }
    let resumed: Vec<u64> = lines[k..].iter().map(|l| l.0).collect();
    assert!(
        resumed[0] > before && resumed[0] <= after + 1,
        "the restored job should go on from the checkpoint (taken when it was between {before} and {after}), \
         it went on with {}: {lines:?}",
        resumed[0]
    );
    for w in resumed.windows(2) {
        assert_eq!(
            w[1],
            w[0] + 1,
            "gap or duplicate after the restore: {resumed:?}"
        );
    }
    let n = *resumed.last().unwrap();
    assert!(
        restored.stdout.saw_prefix(&format!("done {n} shm={n}")),
        "the restored job should end with `done {n} shm={n}` (the segment's counter kept)"
    );
    assert!(
        !Path::new(&shm_path).exists(),
        "the job removes its segment at the end"
    );
}
