//! The dump-time audit (issue 9, tracer/src/audit.rs): a process with an attribute
//! that ckpt neither saves nor finds at its default is refused with a one-line error
//! that names the process and the attribute, even with `--kill`, and keeps running
//! with the attribute intact. `testdata/unsaved` sets one such attribute: the TSC
//! access mode (prctl PR_SET_TSC), an LDT entry (modify_ldt), a NUMA memory policy.
mod common;

use common::*;

fn refused_and_running(what: &str, named: &str) {
    let d = tempdir();
    let (stop, ck) = (d.join("stop"), d.join("ckpt"));
    let mut t = Target::start("unsaved", &[os(what), stop.as_os_str()]);
    t.stdout.expect_line("ready");
    let pid = t.pid.to_string();
    let out = run(ckpt_cmd().args(["dump", &pid, "--kill", "--dir"]).arg(&ck));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success(),
        "the dump of a process with {what} must fail"
    );
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line of error: {err}");
    assert!(
        lines[0].contains(&format!("process {pid}")) && lines[0].contains(named),
        "the error names process {pid} and {named}: {err}"
    );
    // It runs on, unharmed: not stopped, ticking, and still has the attribute.
    assert_running_not_stopped(t.pid);
    let n: u64 = t.stdout.expect_prefix("tick ")["tick ".len()..]
        .parse()
        .unwrap();
    let later = loop {
        let m: u64 = t.stdout.expect_prefix("tick ")["tick ".len()..]
            .parse()
            .unwrap();
        if m > n + 2 {
            break m;
        }
    };
    assert!(later > n);
    touch(&stop);
    t.stdout.expect_line("unsaved ok");
    assert!(t.wait().success());
    assert!(
        !ck.join("latest").exists(),
        "a refused dump leaves no generation"
    );
}

#[test]
fn tsc_mode_is_refused() {
    refused_and_running("tsc", "PR_SET_TSC");
}

#[test]
fn ldt_is_refused() {
    refused_and_running("ldt", "modify_ldt");
}

#[test]
fn memory_policy_is_refused() {
    refused_and_running("mempolicy", "set_mempolicy");
}

#[test]
fn a_partial_sysv_attachment_is_refused() {
    refused_and_running("shmpart", "part of the SysV shared memory segment");
}

#[test]
fn an_aio_ring_holding_unreaped_events_is_refused() {
    refused_and_running("aio", "completed events not yet reaped");
}

/// Two processes sharing what a restore would give each its own copy of.
fn shared_refused(what: &str, named: &str) {
    let d = tempdir();
    let (stop, ck) = (d.join("stop"), d.join("ckpt"));
    let mut t = Target::start("sharing", &[os(what), stop.as_os_str()]);
    let child: i32 = t.stdout.expect_prefix("child ")["child ".len()..]
        .parse()
        .unwrap();
    t.stdout.expect_line("ready");
    let pid = t.pid.to_string();
    let out = run(ckpt_cmd().args(["dump", &pid, "--kill", "--dir"]).arg(&ck));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success(),
        "the dump of a tree sharing {what} must fail"
    );
    assert_eq!(err.lines().count(), 1, "one line of error: {err}");
    assert!(
        err.contains(&pid) && err.contains(&child.to_string()) && err.contains(named),
        "the error names both processes ({pid}, {child}) and {named}: {err}"
    );
    assert_running_not_stopped(t.pid);
    assert_running_not_stopped(child);
    t.stdout.expect_prefix("tick ");
    touch(&stop);
    t.stdout.expect_line("sharing ok");
    assert!(t.wait().success());
}

#[test]
fn a_shared_address_space_is_refused() {
    shared_refused("sighand", "CLONE_VM");
}
