//! Descriptor kinds of one process (docs/CONTRACT.md §4 tier 1): eventfd, timerfd,
//! signalfd, inotify and epoll with its interest list keep working after a
//! restore; memfds, deleted files and FIFOs come back with their content,
//! offsets, seals and data in flight.
mod common;

use common::*;
use std::fs;

/// Drives a running eventloop (original or restored) through its checks:
/// SIGUSR1 through the signalfd (eventfd counts, timers, epoll MOD/DEL/ADD),
/// files created in both watched directories, ticks with the new epoll data,
/// then the stop file. `out` is the program's stdout.
fn drive_eventloop(pid: i32, dir: &std::path::Path, out: &mut Lines) {
    out.expect_prefix("tick ");
    let me = std::process::id();
    send_signal(pid, libc::SIGUSR1);
    out.expect_line(&format!("usr1 from {me}"));
    out.expect_line("checks ok");
    // two tick lines after the checks: the timer goes on under its new epoll data
    out.expect_prefix("tick ");
    out.expect_prefix("tick ");
    touch(&dir.join("hello"));
    out.expect_line("created hello wd 1");
    touch(&dir.join("sub").join("x"));
    out.expect_line("created x wd 3");
    touch(&dir.join("stop"));
    out.expect_line("created stop wd 1");
    out.expect_prefix("eventloop done ");
}

/// eventloop: timerfd ticking through epoll, eventfd counts (plain and
/// semaphore), a signalfd receiving SIGUSR1 sent after the restore, inotify
/// watches (wd 1 and 3, wd 2 removed before) seeing files created after the
/// restore, timers that expired unread / run relative / run absolute, and
/// EPOLL_CTL_MOD/DEL/ADD on restored epoll entries.
#[test]
fn event_loop_keeps_working() {
    let d = tempdir();
    let (dir, ck) = (d.join("watched"), d.join("ckpt"));
    fs::create_dir(&dir).unwrap();
    let mut t = Target::start("eventloop", &[dir.as_os_str()]);
    t.stdout.expect_line("ready");
    t.dump_kill(&ck);

    let p = info_process(&ck);
    let kinds: Vec<String> = p["fds"]
        .as_array()
        .expect("info: fds")
        .iter()
        .map(|f| f["kind"].as_str().unwrap_or("").to_string())
        .collect();
    for k in [
        "epoll, 4 entries",
        "eventfd count 42",
        "eventfd count 3",
        "signalfd",
        "inotify, 2 watch(es)",
    ] {
        assert!(
            kinds.iter().any(|x| x.starts_with(k)),
            "info: no descriptor {k:?} in {kinds:?}"
        );
    }

    let mut r = Restored::of(&ck, &t);
    r.assert_same_pid();
    drive_eventloop(t.pid, &dir, &mut r.stdout);
    r.wait_success();
}

/// fdkinds: memfds (shared + private mappings, mapping-only, sealed against
/// writes), a deleted file with content, offset, an O_APPEND fd and a
/// mapping, and a FIFO with data in flight; the restored program verifies
/// them all.
#[test]
fn memfd_deleted_file_and_fifo_are_restored() {
    let d = tempdir();
    let (dir, ck) = (d.join("files"), d.join("ckpt"));
    fs::create_dir(&dir).unwrap();
    let mut t = Target::start("fdkinds", &[dir.as_os_str()]);
    t.stdout.expect_line("ready");
    t.dump_kill(&ck);

    let p = info_process(&ck);
    let kinds: Vec<String> = p["fds"]
        .as_array()
        .expect("info: fds")
        .iter()
        .map(|f| f["kind"].as_str().unwrap_or("").to_string())
        .collect();
    for k in [
        "memfd ckpt-memfd-A",
        "memfd ckpt-memfd-C",
        "deleted file ",
        "FIFO ",
    ] {
        assert!(
            kinds.iter().any(|x| x.starts_with(k)),
            "info: no descriptor {k:?} in {kinds:?}"
        );
    }

    let mut r = Restored::of(&ck, &t);
    r.assert_same_pid();
    r.write_stdin(b"check\n");
    r.stdout.expect_line("fdkinds ok");
    r.wait_success();
}

/// eventloop dumped without --kill: the original keeps running unharmed
/// (the dump consumed no eventfd count, signal, timer expiry or inotify
/// event, and left its epoll entries alone) and passes its checks; then the
/// image is restored and passes them too.
#[test]
fn live_dump_leaves_event_loop_unharmed() {
    let d = tempdir();
    let (dir, ck) = (d.join("watched"), d.join("ckpt"));
    fs::create_dir(&dir).unwrap();
    let mut t = Target::start("eventloop", &[dir.as_os_str()]);
    t.stdout.expect_line("ready");
    dump(t.pid, &ck, false);
    assert_running_not_stopped(t.pid);
    drive_eventloop(t.pid, &dir, &mut t.stdout);
    let status = t.wait();
    t.stdout.read_to_end();
    t.stdout.assert_no_fail();
    assert!(status.success(), "the dumped original failed: {status:?}");
    wait_pid_free(t.pid);

    for f in ["hello", "stop", "sub/x"] {
        fs::remove_file(dir.join(f)).unwrap();
    }
    let mut r = Restored::of(&ck, &t);
    r.assert_same_pid();
    drive_eventloop(t.pid, &dir, &mut r.stdout);
    r.wait_success();
}

/// holdfd KIND: a dump with --kill is refused with one error line naming the
/// PID, the descriptor and `words`; the target goes on running.
fn dump_refused(kind: &str, words: &[&str]) {
    let d = tempdir();
    let (stop, dir) = (d.join("stop"), d.join("ckpt"));
    let mut t = Target::start("holdfd", &[os(kind), stop.as_os_str()]);
    let fd_line = t.stdout.expect_prefix("fd ");
    let fd = fd_line.split_whitespace().nth(1).unwrap().to_string();
    t.stdout.expect_line("ready");
    let out = ckpt([
        "dump".as_ref(),
        t.pid.to_string().as_ref(),
        "--dir".as_ref(),
        dir.as_os_str(),
        "--kill".as_ref(),
    ]);
    let line = assert_error(&out, &format!("dump of a process holding {kind}"));
    assert!(
        line.contains(&format!("process {} fd {fd}", t.pid)),
        "{line}"
    );
    for w in words {
        assert!(line.contains(w), "the error should say {w:?}: {line}");
    }
    assert!(!dir.join("latest").exists(), "a generation was published");
    for _ in 0..3 {
        t.stdout.expect_prefix("tick ");
    }
    assert_running_not_stopped(t.pid);
    touch(&stop);
    t.stdout.expect_line("done");
    assert!(t.wait().success());
}

/// An epoll entry registered under a descriptor number that was closed since
/// (the file lives on under another number) cannot be added back: refused.
#[test]
fn dump_refuses_stale_epoll_entry() {
    dump_refused(
        "epoll-stale",
        &["epoll entry for fd", "not open in the process"],
    );
}

/// The same, with the closed number reused by another eventfd: all eventfds
/// share one inode, the dump must still see that it is another file.
#[test]
fn dump_refuses_epoll_entry_under_reused_number() {
    dump_refused(
        "epoll-reused",
        &["epoll entry for fd", "names another file"],
    );
}

/// inotify events queued and not read cannot be put back into a new instance (nothing
/// writes to one): refused, rather than lost.
#[test]
fn dump_refuses_inotify_with_events_queued() {
    dump_refused("inotify-queued", &["inotify", "bytes of events queued"]);
}

/// A memfd larger than the 256 MiB ckpt stores per file: refused.
#[test]
fn dump_refuses_memfd_over_256_mib() {
    dump_refused("big-memfd", &["memfd big", "256 MiB"]);
}
