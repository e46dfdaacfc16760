//! `ckpt check` and `ckpt check DIR` (issue 12): the report of the kernel features and
//! privileges ckpt relies on, for root and for an ordinary user; whether a checkpoint
//! can be restored here and now, restoring nothing; and a restore while the original
//! still runs, which is refused (it used to start a second copy in a new PID namespace
//! without a word) unless asked for with `--pidns always`.
mod common;

use common::*;
use std::fs;
use std::io::Write;

const FEATURES: &[&str] = &[
    "ptrace",
    "kcmp",
    "pidfd_getfd",
    "clone3 set_tid",
    "user namespaces",
    "map_files",
    "PAGEMAP_SCAN",
    "userfaultfd",
    "TCP_REPAIR",
];

/// The status word `ckpt check` printed for `feature`.
fn status_of<'a>(report: &'a str, feature: &str) -> &'a str {
    report
        .lines()
        .find_map(|l| {
            let mut w = l.split_whitespace();
            let status = w.next()?;
            let rest = l.trim_start()[status.len()..].trim_start();
            rest.starts_with(feature).then_some(status)
        })
        .unwrap_or_else(|| panic!("`ckpt check` has no line for {feature}:\n{report}"))
}

#[test]
fn check_reports_every_feature_as_root() {
    let out = ckpt(["check"]);
    assert_success(&out, "ckpt check");
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    for f in FEATURES {
        let s = status_of(&report, f);
        assert!(
            ["ok", "limited", "missing"].contains(&s),
            "{f}: status {s}\n{report}"
        );
    }
    // This machine (CI's too) is root with CONFIG_CHECKPOINT_RESTORE.
    for f in [
        "ptrace",
        "kcmp",
        "pidfd_getfd",
        "clone3 set_tid",
        "map_files",
        "TCP_REPAIR",
    ] {
        assert_eq!(status_of(&report, f), "ok", "{f} as root:\n{report}");
    }
}

/// An ordinary user lacks CAP_CHECKPOINT_RESTORE and CAP_NET_ADMIN: the report says what
/// follows from each.
#[test]
fn check_says_what_an_ordinary_user_cannot_do() {
    ensure_test_user();
    let out = run(as_test_user(ckpt_bin()).arg("check"));
    assert_success(&out, "ckpt check as the test user");
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(report.contains(&format!("as {TEST_USER}")), "{report}");
    for f in ["clone3 set_tid", "map_files", "TCP_REPAIR"] {
        assert_eq!(status_of(&report, f), "limited", "{f}:\n{report}");
    }
    let line = report
        .lines()
        .find(|l| l.contains("clone3 set_tid"))
        .unwrap();
    assert!(line.contains("new PID namespace"), "{line}");
    let line = report.lines().find(|l| l.contains("TCP_REPAIR")).unwrap();
    assert!(line.contains("CAP_NET_ADMIN"), "{line}");
}

/// A counter dumped with --kill: `ckpt check DIR` says it can be restored (with its
/// original PIDs) and starts nothing; the restore then works.
#[test]
fn check_dir_says_restorable_and_restores_nothing() {
    let d = tempdir();
    let (out, stop, ck) = (d.join("out"), d.join("stop"), d.join("ckpt"));
    let mut t = Target::start("counter", &[out.as_os_str(), stop.as_os_str(), os("20")]);
    t.stdout.expect_line("ready");
    t.dump_kill(&ck);
    let c = ckpt([os("check"), ck.as_os_str()]);
    assert_success(&c, "ckpt check DIR");
    let text = String::from_utf8_lossy(&c.stdout).into_owned();
    assert!(text.contains("can be restored here"), "{text}");
    assert!(text.contains("every original PID is free"), "{text}");
    assert!(text.contains(&format!("root PID {}", t.pid)), "{text}");
    assert!(!pid_exists(t.pid), "ckpt check started process {}", t.pid);
    let mut r = Restored::of(&ck, &t);
    r.assert_same_pid();
    touch(&stop);
    r.wait_success();
}

/// A file the checkpoint depends on changed since: `ckpt check DIR` fails naming it, as
/// the restore would.
#[test]
fn check_dir_names_a_changed_executable() {
    let d = tempdir();
    let exe = d.join("counter");
    copy_program(&testdata("counter"), &exe);
    let (out, stop, ck) = (d.join("out"), d.join("stop"), d.join("ckpt"));
    let mut t = Target::start_path(&exe, &[out.as_os_str(), stop.as_os_str(), os("20")]);
    t.stdout.expect_line("ready");
    t.dump_kill(&ck);
    fs::OpenOptions::new()
        .append(true)
        .open(&exe)
        .unwrap()
        .write_all(b"\0")
        .unwrap();
    let c = ckpt([os("check"), ck.as_os_str()]);
    let err = assert_error(&c, "ckpt check DIR with a changed executable");
    assert!(
        err.contains("cannot be restored here") && err.contains(&*exe.to_string_lossy()),
        "{err}"
    );
}

/// Restoring while the original runs is refused, naming it, and leaves it alone;
/// `--pidns always` restores a second copy beside it on purpose.
#[test]
fn restore_while_the_original_runs_is_refused() {
    let d = tempdir();
    let (out, stop, ck) = (d.join("out"), d.join("stop"), d.join("ckpt"));
    let mut t = Target::start("counter", &[out.as_os_str(), stop.as_os_str(), os("20")]);
    t.stdout.expect_line("ready");
    dump(t.pid, &ck, false);
    for verb in ["restore", "check"] {
        let c = ckpt([os(verb), ck.as_os_str()]);
        let err = assert_error(&c, &format!("ckpt {verb} while the original runs"));
        assert!(
            err.contains(&format!("process {}", t.pid)) && err.contains("still runs"),
            "{err}"
        );
        assert!(err.contains("--pidns always"), "{err}");
    }
    assert_running_not_stopped(t.pid);
    let mut second = Restored::start_with(&ck, t.pid, &t.marker, &["--pidns", "always"]);
    second
        .stderr
        .expect_prefix("ckpt: restored in a new PID namespace");
    touch(&stop);
    second.wait_success();
    assert!(t.wait().success(), "the original after the second copy");
}

/// `ckpt info`: readable times, every generation with its size, memory totals per kind
/// of region, and the files the restore depends on with whether each still matches;
/// `--json` with the same and structured descriptors (issue 12).
#[test]
fn info_tells_generations_memory_and_files() {
    let d = tempdir();
    let exe = d.join("counter");
    copy_program(&testdata("counter"), &exe);
    let (out, stop, ck) = (d.join("out"), d.join("stop"), d.join("ckpt"));
    let mut t = Target::start_path(&exe, &[out.as_os_str(), stop.as_os_str(), os("20")]);
    t.stdout.expect_line("ready");
    dump(t.pid, &ck, false);
    t.dump_kill(&ck);
    let o = ckpt([os("info"), ck.as_os_str()]);
    assert_success(&o, "ckpt info");
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    for want in [
        "generations 2 in",
        &format!("ckpt_counter_{}_1 ", t.pid),
        &format!("ckpt_counter_{}_2 (this one)", t.pid),
        " UTC (",
        "anon ",
        "file(s) the restore depends on, all as at the checkpoint",
        &format!("ok       {} (executable)", exe.display()),
    ] {
        assert!(text.contains(want), "ckpt info lacks {want:?}:\n{text}");
    }
    fs::OpenOptions::new()
        .append(true)
        .open(&exe)
        .unwrap()
        .write_all(b"\0")
        .unwrap();
    let v = info_json(&ck);
    let p = &v["processes"][0];
    let file = p["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == *exe.to_string_lossy())
        .expect("the executable among the files");
    assert_eq!(file["matches"], false, "{file}");
    assert!(
        file["problem"].as_str().unwrap().contains("changed"),
        "{file}"
    );
    assert!(
        p["memory"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["kind"] == "anon" && m["stored_bytes"].as_u64().unwrap() > 0),
        "{}",
        p["memory"]
    );
    assert!(
        p["fds"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["type"] == "File" && f["fd"] == 3),
        "{}",
        p["fds"]
    );
    assert_eq!(v["generation_list"].as_array().unwrap().len(), 2);
    assert!(v["created"].as_str().unwrap().contains(" UTC ("));
    let o = ckpt([os("info"), ck.as_os_str()]);
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        text.contains("1 changed") && text.contains("CHANGED"),
        "{text}"
    );
}
