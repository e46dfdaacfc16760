//! One single-threaded process: checkpoint, kill, restore, and check that it
//! continued with its state intact (files, memory, heap, signal handlers).
mod common;

use common::*;

/// counter: an O_APPEND file written through two descriptors; the numbers
/// go on after the restore with no gap and no duplicate, under the same PID.
#[test]
fn counter_with_append_file_continues() {
    let d = tempdir();
    let (out, stop, ck) = (d.join("out"), d.join("stop"), d.join("ckpt"));
    let mut t = Target::start("counter", &[out.as_os_str(), stop.as_os_str(), os("20")]);
    t.stdout.expect_line("ready");
    t.dump_kill(&ck);

    let before = file_lines(&out);
    let m = assert_counting(&before, &t.pid.to_string(), "before restore");
    assert!(m >= 3, "the counter wrote only {m} lines before the dump");

    let p = info_process(&ck);
    assert_eq!(json_u64(&p, "pid"), t.pid as u64, "info: pid");
    assert_eq!(json_u64(&p, "threads"), 1, "info: threads");

    let mut r = Restored::of(&ck, &t);
    r.assert_same_pid();
    r.stdout.expect_number_at_least(m as u64 + 5);
    touch(&stop);
    r.wait_success();
    r.stdout.expect_prefix("done ");

    let after = file_lines(&out);
    let k = assert_counting(&after, &t.pid.to_string(), "after restore");
    assert!(k >= m + 5, "only {k} lines after the restore, {m} before");
    assert_eq!(
        &after[..m],
        &before[..],
        "the lines written before the checkpoint changed"
    );
}

/// bigmem: 1 GiB of anonymous memory with a pattern, re-verified by the
/// restored program.
#[test]
fn one_gib_of_memory_is_intact() {
    let d = tempdir();
    let (stop, ck) = (d.join("stop"), d.join("ckpt"));
    let mut t = Target::start("bigmem", &[stop.as_os_str(), os("1024")]);
    t.stdout.expect_line("ready");
    t.dump_kill(&ck);

    let p = info_process(&ck);
    let pages = json_u64(&p, "pages_len");
    assert!(
        pages >= 1 << 30,
        "the image stores {pages} bytes of pages, less than the 1 GiB the program touched"
    );

    let mut r = Restored::of(&ck, &t);
    r.assert_same_pid();
    touch(&stop);
    r.wait_success();
    assert!(
        r.stdout.seen().iter().any(|l| l == "verify ok 1024 MiB"),
        "no verdict from the restored program: {:?}",
        r.stdout.seen()
    );
}

/// heap: malloc/free churn and sbrk growth go on after the restore; at the
/// end malloc must still grow the heap with brk.
#[test]
fn malloc_and_brk_keep_working() {
    let d = tempdir();
    let (stop, ck) = (d.join("stop"), d.join("ckpt"));
    let mut t = Target::start("heap", &[stop.as_os_str()]);
    t.stdout.expect_line("ready");
    t.dump_kill(&ck);

    let mut r = Restored::of(&ck, &t);
    r.assert_same_pid();
    // two progress lines printed by the restored process: 10+ rounds of
    // churn and sbrk after the restore
    r.stdout.expect_prefix("round ");
    r.stdout.expect_prefix("round ");
    touch(&stop);
    r.wait_success();
    assert!(
        r.stdout.seen().iter().any(|l| l.starts_with("heap ok ")),
        "no verdict from the restored program: {:?}",
        r.stdout.seen()
    );
}

fn alive_after_restore(r: &mut Restored) {
    // any "alive" line on the restore's stdout was printed by the restored
    // program's own code: its handlers are in place from then on
    r.stdout.expect_prefix("alive ");
}

/// signals: handlers installed before the checkpoint run when the signals
/// are sent after the restore (and the count from before is kept).
#[test]
fn signal_handlers_run_after_restore() {
    let d = tempdir();
    let ck = d.join("ckpt");
    let me = std::process::id();
    let mut t = Target::start("signals", &[]);
    t.stdout.expect_line("ready");
    send_signal(t.pid, libc::SIGUSR1);
    t.stdout
        .expect_line(&format!("USR1 count=1 pid={me} code=0"));
    t.dump_kill(&ck);

    let mut r = Restored::of(&ck, &t);
    r.assert_same_pid();
    alive_after_restore(&mut r);
    send_signal(t.pid, libc::SIGUSR1);
    r.stdout
        .expect_line(&format!("USR1 count=2 pid={me} code=0"));
    send_signal(t.pid, libc::SIGUSR2);
    r.stdout
        .expect_line(&format!("USR2 count=1 pid={me} code=0"));
    r.stdout.expect_line("signals done usr1=2 usr2=1");
    r.wait_success();
}

/// signals --extras: an ignored signal stays ignored, the alternate signal
/// stack is kept, and a blocked queued real-time signal stays pending with
/// its value until the program unblocks it.
#[test]
fn signal_state_ignored_altstack_pending() {
    let d = tempdir();
    let ck = d.join("ckpt");
    let mut t = Target::start("signals", &[os("--extras")]);
    t.stdout.expect_line("ready");
    t.dump_kill(&ck);

    let mut r = Restored::of(&ck, &t);
    r.assert_same_pid();
    alive_after_restore(&mut r);
    send_signal(t.pid, libc::SIGHUP); // ignored: must not kill it
    send_signal(t.pid, libc::SIGUSR2);
    r.stdout.expect_prefix("USR2 count=1 ");
    r.stdout.expect_prefix("extras ok ");
    r.stdout.expect_line("signals done usr1=0 usr2=1");
    r.wait_success();
}
