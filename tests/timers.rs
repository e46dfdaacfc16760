//! Interval timers (setitimer) and POSIX timers (timer_create) survive a
//! checkpoint: after `dump --kill` and a restore they keep firing with the same
//! ids, settings and siginfo; a dump without `--kill` leaves them running in
//! the original; a timer on a clock a restore cannot keep is refused.
mod common;

use common::*;
use std::process::Stdio;

/// The timer ids `timers` prints ("ids A B C D").
fn ids_line(t: &mut Target) -> Vec<i32> {
    let line = t.stdout.expect_prefix("ids ");
    line["ids ".len()..]
        .split(' ')
        .map(|s| s.parse().expect("timer id"))
        .collect()
}

/// The counts of a "tick alrm=N prof=N a=N b=N" line.
fn tick_counts(line: &str) -> Vec<u64> {
    line.split(' ')
        .skip(1)
        .map(|kv| kv.split_once('=').expect("key=value").1.parse().unwrap())
        .collect()
}

/// The ids listed in /proc/PID/timers, sorted.
fn proc_timer_ids(pid: i32) -> Vec<i32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/timers"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/timers: {e}"));
    let mut ids: Vec<i32> = text
        .lines()
        .filter_map(|l| l.strip_prefix("ID: ")?.trim().parse().ok())
        .collect();
    ids.sort_unstable();
    ids
}

fn verdict_ids(line: &str) -> Vec<i32> {
    line.rsplit_once("ids=")
        .expect("ids= in the verdict")
        .1
        .split(',')
        .map(|s| s.parse().unwrap())
        .collect()
}

/// Runs the restored `timers` to its verdict: one tick line from the restored
/// process, the same timer ids in the kernel, then the stop file.
fn finish_restored(r_stdout: &mut Lines, pid: i32, ids: &[i32], stop: &std::path::Path) {
    r_stdout.expect_prefix("tick ");
    assert_eq!(
        proc_timer_ids(pid),
        ids,
        "POSIX timer ids after the restore"
    );
    touch(stop);
    let verdict = r_stdout.expect_prefix("timers ok ");
    assert_eq!(verdict_ids(&verdict), ids, "ids the restored program used");
}

/// itimers (REAL, PROF, VIRTUAL) and POSIX timers (SIGEV_SIGNAL with a
/// sigval, SIGEV_THREAD_ID to a worker thread, SIGEV_NONE, one disarmed, ids
/// with a gap) go on after dump --kill and restore, under the same PID: the
/// program checks settings, ids, siginfo and that every count increases.
#[test]
fn timers_keep_firing_after_restore() {
    let d = tempdir();
    let (stop, ck) = (d.join("stop"), d.join("ckpt"));
    let mut t = Target::start("timers", &[stop.as_os_str()]);
    let ids = ids_line(&mut t);
    t.stdout.expect_line("ready");
    assert_eq!(proc_timer_ids(t.pid), ids, "ids before the dump");
    t.dump_kill(&ck);

    let mut r = Restored::of(&ck, &t);
    r.assert_same_pid();
    finish_restored(&mut r.stdout, t.pid, &ids, &stop);
    r.wait_success();
}

/// The same with the fallback for kernels without PR_TIMER_CREATE_RESTORE_IDS
/// (forced with CKPT_NO_TIMER_RESTORE_IDS): ids come back by creating timers
/// in order and deleting the ones in the gap.
#[test]
fn timer_ids_restored_without_the_prctl() {
    let d = tempdir();
    let (stop, ck) = (d.join("stop"), d.join("ckpt"));
    let mut t = Target::start("timers", &[stop.as_os_str()]);
    let ids = ids_line(&mut t);
    assert!(
        ids[0] > 0,
        "the program should leave a gap before its first id"
    );
    t.stdout.expect_line("ready");
    t.dump_kill(&ck);

    let mut cmd = ckpt_cmd();
    cmd.arg("restore")
        .arg(&ck)
        .env("CKPT_NO_TIMER_RESTORE_IDS", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    eprintln!("$ {cmd:?} &");
    let mut child = cmd.spawn().expect("start ckpt restore");
    struct Cleanup(i32, String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            kill_if_running(self.0, &self.1);
        }
    }
    let _cleanup = Cleanup(t.pid, t.marker.clone());
    let mut out = Lines::new("restored stdout", child.stdout.take().unwrap());
    let mut err = Lines::new("restored stderr", child.stderr.take().unwrap());
    finish_restored(&mut out, t.pid, &ids, &stop);
    let status = wait_child(&mut child, "ckpt restore");
    err.read_to_end();
    assert!(
        status.success(),
        "ckpt restore exited with {status:?}: {:?}",
        err.seen()
    );
    out.read_to_end();
    out.assert_no_fail();
}

/// dump without --kill: the original's timers keep firing (its counts go on
/// and it ends with its verdict); the image then restores too.
#[test]
fn dump_without_kill_leaves_timers_running() {
    let d = tempdir();
    let (stop, ck) = (d.join("stop"), d.join("ckpt"));
    let mut t = Target::start("timers", &[stop.as_os_str()]);
    let ids = ids_line(&mut t);
    t.stdout.expect_line("ready");
    let before = tick_counts(&t.stdout.expect_prefix("tick "));

    dump(t.pid, &ck, false);
    assert_running_not_stopped(t.pid);
    assert_eq!(proc_timer_ids(t.pid), ids, "ids after the dump");
    // two ticks later, every count has moved on
    t.stdout.expect_prefix("tick ");
    let after = tick_counts(&t.stdout.expect_prefix("tick "));
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        assert!(
            a > b,
            "count {i} did not increase after the dump: {before:?} -> {after:?}"
        );
    }
    touch(&stop);
    let verdict = t.stdout.expect_prefix("timers ok ");
    assert_eq!(verdict_ids(&verdict), ids);
    assert!(t.wait().success(), "the original failed after the dump");
    t.stdout.read_to_end();
    t.stdout.assert_no_fail();
    wait_pid_free(t.pid);

    // the stop file exists: the restored program checks at once
    let mut r = Restored::of(&ck, &t);
    let verdict = r.stdout.expect_prefix("timers ok ");
    assert_eq!(verdict_ids(&verdict), ids, "ids in the restored program");
    r.wait_success();
}

/// A POSIX timer on another process's CPU clock cannot be restored: the
/// dump fails naming the timer, and the target goes on unharmed.
#[test]
fn timer_on_a_foreign_cpu_clock_is_refused() {
    let d = tempdir();
    let (stop, ck) = (d.join("stop"), d.join("ckpt"));
    let mut t = Target::start("timers", &[stop.as_os_str(), os("--foreign-clock")]);
    t.stdout.expect_line("ready");
    let out = ckpt([
        os("dump"),
        os(&t.pid.to_string()),
        os("--dir"),
        ck.as_os_str(),
    ]);
    let line = assert_error(&out, "dump of a timer on a foreign CPU clock");
    let me = std::process::id();
    assert!(
        line.contains(&format!("process {}", t.pid))
            && line.contains("POSIX timer 0")
            && line.contains(&format!("CPU clock of process {me}")),
        "the error should name the process, the timer and the clock: {line}"
    );
    assert_running_not_stopped(t.pid);
    touch(&stop);
    t.stdout.expect_line("done");
    assert!(t.wait().success());
}

/// An ITIMER_REAL whose SIGALRM is pending (blocked) is not running: the
/// kernel re-arms it with its interval when the signal is dequeued. After the
/// restore the interval must still be there, so it goes on firing once the
/// program unblocks SIGALRM.
#[test]
fn itimer_real_with_pending_sigalrm_rearms_after_restore() {
    let d = tempdir();
    let (stop, ck) = (d.join("stop"), d.join("ckpt"));
    let mut t = Target::start("timers", &[stop.as_os_str(), os("--pending-alarm")]);
    t.stdout.expect_line("ready");
    t.dump_kill(&ck);

    let mut r = Restored::of(&ck, &t);
    r.assert_same_pid();
    touch(&stop);
    r.stdout.expect_prefix("pending alarm ok ");
    r.wait_success();
}

/// Timer signals that arrive while a live dump runs code in the process (injected
/// system calls) are handed back with their own siginfo (si_code SI_TIMER, si_value,
/// the timer id), not as a plain tgkill: twenty live dumps in a row, then the
/// program's own check of every siginfo it received.
#[test]
fn live_dumps_hand_back_timer_signals_with_their_siginfo() {
    let d = tempdir();
    let (stop, ck) = (d.join("stop"), d.join("ckpt"));
    let mut t = Target::start("timers", &[stop.as_os_str()]);
    let ids = ids_line(&mut t);
    t.stdout.expect_line("ready");
    for _ in 0..20 {
        dump(t.pid, &ck, false);
        assert_running_not_stopped(t.pid);
    }
    t.stdout.expect_prefix("tick ");
    touch(&stop);
    let verdict = t.stdout.expect_prefix("timers ok ");
    assert_eq!(verdict_ids(&verdict), ids);
    assert!(t.wait().success(), "the original failed after the dumps");
    t.stdout.read_to_end();
    t.stdout.assert_no_fail();
}
