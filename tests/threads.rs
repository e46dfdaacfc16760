//! Multi-threaded processes: 8 pthreads with a mutex, a condition variable,
//! TLS and sched_getcpu keep their TIDs; threads blocked in nanosleep, read
//! and poll at dump time continue correctly after the restore.
mod common;

use common::*;
use std::collections::BTreeSet;

/// threads: 8 workers in lock-step rounds (mutex + condvar barrier), each
/// checking its TID (kernel and glibc's cached one), its __thread counter,
/// sched_getcpu, rseq registration and name every round.
#[test]
fn eight_threads_keep_tids_and_state() {
    let d = tempdir();
    let (stop, ck) = (d.join("stop"), d.join("ckpt"));
    let mut t = Target::start("threads", &[stop.as_os_str(), os("8")]);
    t.stdout.expect_line("ready");
    let worker_tids: BTreeSet<i32> = t
        .stdout
        .seen()
        .iter()
        .filter_map(|l| {
            l.strip_prefix("tid ")?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .collect();
    assert_eq!(
        worker_tids.len(),
        8,
        "expected 8 worker TIDs: {:?}",
        t.stdout.seen()
    );
    let before = tids(t.pid);
    let mut expected = worker_tids.clone();
    expected.insert(t.pid);
    assert_eq!(before, expected, "threads of the target before the dump");
    t.dump_kill(&ck);

    assert_eq!(json_u64(&info_process(&ck), "threads"), 9, "info: threads");

    let mut r = Restored::of(&ck, &t);
    r.assert_same_pid();
    // progress made by the restored threads (a line every 20 rounds)
    r.stdout.expect_prefix("round ");
    assert_eq!(tids(t.pid), before, "the restored process has other TIDs");
    r.stdout.expect_prefix("round ");
    touch(&stop);
    r.wait_success();
    assert!(
        r.stdout
            .seen()
            .iter()
            .any(|l| l.starts_with("threads ok ") && l.contains(" threads=8 ")),
        "no verdict from the restored program: {:?}",
        r.stdout.seen()
    );
}

/// blocked: one thread in nanosleep, one in read() on stdin, one in poll()
/// on stdin, the main thread in pthread_join, when the dump happens.  After
/// the restore the test writes "go" to the restored program's stdin (the
/// `ckpt restore` child's stdin): the reader gets exactly that line; then it
/// closes stdin: the poller sees POLLHUP and the reader end of file.
#[test]
fn threads_blocked_in_syscalls_continue() {
    let d = tempdir();
    let ck = d.join("ckpt");
    let mut t = Target::start("blocked", &[os("200")]);
    let line = t.stdout.expect_prefix("threads ");
    t.stdout.expect_line("ready");
    let before = tids(t.pid);
    assert_eq!(before.len(), 4, "expected 4 threads ({line}): {before:?}");
    t.dump_kill(&ck);

    let mut r = Restored::of(&ck, &t);
    r.assert_same_pid();
    wait_until(&format!("the restored threads to be {before:?}"), || {
        tids(t.pid) == before
    });
    r.write_stdin(b"go\n");
    r.stdout.expect_line("reader got go");
    r.close_stdin();
    r.wait_success();
    let seen = r.stdout.seen();
    assert!(
        seen.iter().any(|l| l == "poller hup"),
        "the poller did not see POLLHUP: {seen:?}"
    );
    assert!(
        seen.iter().any(|l| l == "reader eof"),
        "the reader did not see end of file: {seen:?}"
    );
    assert!(
        seen.iter().any(|l| l.starts_with("blocked ok ")),
        "no verdict: {seen:?}"
    );
}
