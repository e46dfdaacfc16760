//! Diagnostics: `-v` and `--log-file` say what ckpt did, step by step, so that a
//! failure in the field can be diagnosed from its log; without them stderr keeps its
//! one-line contract.
mod common;

use common::*;
use std::fs;

#[test]
fn verbose_dump_and_log_file_name_every_phase() {
    let d = tempdir();
    let (out, stop, ck, log) = (
        d.join("out"),
        d.join("stop"),
        d.join("ck"),
        d.join("ckpt.log"),
    );
    let mut t = Target::start("counter", &[out.as_os_str(), stop.as_os_str(), os("20")]);
    t.stdout.expect_line("ready");
    let pid = t.pid.to_string();
    let o = run(ckpt_cmd().args([
        "-vv".as_ref(),
        "--log-file".as_ref(),
        log.as_os_str(),
        "dump".as_ref(),
        pid.as_ref(),
        "--dir".as_ref(),
        ck.as_os_str(),
    ]));
    assert_success(&o, "ckpt -vv dump");
    let stderr = String::from_utf8_lossy(&o.stderr);
    for want in [
        "INFO",
        "dump of process",
        "DEBUG",
        "dump: frozen",
        "exit status 0",
    ] {
        assert!(
            stderr.contains(want),
            "-vv stderr lacks {want:?}:\n{stderr}"
        );
    }
    let text = fs::read_to_string(&log).expect("the log file");
    for want in [
        "dump of process",
        "dump: frozen",
        "dump: snapshots removed",
        "exit status 0",
    ] {
        assert!(text.contains(want), "the log lacks {want:?}:\n{text}");
    }
    assert!(text
        .lines()
        .all(|l| l.contains("ckpt[") && l.starts_with('[')));
    touch(&stop);
    assert!(t.wait().success());
}

#[test]
fn a_failed_restore_is_in_the_log_and_stderr_keeps_one_line() {
    let d = tempdir();
    let log = d.join("ckpt.log");
    let missing = d.join("no-such-checkpoint");
    let o = run(ckpt_cmd().args([
        "restore".as_ref(),
        missing.as_os_str(),
        "--log-file".as_ref(),
        log.as_os_str(),
    ]));
    let line = assert_error(&o, "restore of a missing directory");
    assert!(line.contains("does not exist"), "{line}");
    let text = fs::read_to_string(&log).expect("the log file");
    assert!(
        text.contains("ERROR") && text.contains("does not exist"),
        "the log should hold the error:\n{text}"
    );
    // A log file that cannot be opened is an error of its own, naming the file.
    let o = run(ckpt_cmd().args([
        "--log-file".as_ref(),
        d.join("no/such/dir/log").as_os_str(),
        "info".as_ref(),
        d.path().as_os_str(),
    ]));
    let line = assert_error(&o, "an unopenable log file");
    assert!(line.contains("log file"), "{line}");
}

/// `ckpt run` says which coordinator it started (address, directory, log) and `ckpt
/// restore` what it restored; `--quiet` keeps both quiet (issue 12: they used to say
/// nothing).
#[test]
fn run_and_restore_say_what_they_started_unless_quiet() {
    let d = tempdir();
    let _sweep = Sweep::new(&d);
    for quiet in [false, true] {
        let port = free_port().to_string();
        let ck_dir = d.join(format!("ck-{quiet}"));
        let mut c = ck();
        if quiet {
            c.arg("-q");
        }
        c.args(["run", "--coord-port", &port, "--ckpt-dir"])
            .arg(&ck_dir)
            .args(["--", "true"]);
        let o = run(&mut c);
        assert_success(&o, "ckpt run -- true");
        let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
        let said = stderr.contains(&format!("ckpt: started a coordinator at localhost:{port}"))
            && stderr.contains(&*ck_dir.join("ckpt_coordinator.log").to_string_lossy());
        assert_eq!(said, !quiet, "quiet {quiet}: stderr of ckpt run:\n{stderr}");
        if quiet {
            assert!(stderr.is_empty(), "ckpt -q run said: {stderr}");
        }

        let (out, stop, ck) = (
            d.join(format!("out-{quiet}")),
            d.join(format!("stop-{quiet}")),
            d.join(format!("img-{quiet}")),
        );
        let mut t = Target::start("counter", &[out.as_os_str(), stop.as_os_str(), os("20")]);
        t.stdout.expect_line("ready");
        t.dump_kill(&ck);
        let extra: &[&str] = if quiet { &["-q"] } else { &[] };
        let mut r = Restored::start_with(&ck, t.pid, &t.marker, extra);
        r.assert_same_pid();
        touch(&stop);
        r.wait_success();
        r.stderr.read_to_end();
        let said = r.stderr.seen().iter().any(|l| {
            l == &format!(
                "ckpt: restored 1 process, root PID {}, with the original PIDs",
                t.pid
            )
        });
        assert_eq!(said, !quiet, "quiet {quiet}: {:?}", r.stderr.seen());
    }
}
