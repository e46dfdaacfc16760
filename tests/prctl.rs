//! prctl state survives a checkpoint (issue 9, the attribute group "prctl"):
//! parent-death signals of every thread, the child subreaper (after the restore an
//! orphan of the job comes to it), THP disabled and THP advice of regions,
//! memory-deny-write-execute (still in force, still impossible to clear), the core
//! dump filter, membarrier registrations, and, as root, the dumpable flag cleared and
//! KSM merging of the whole process. testdata/prctl sets them, is checkpointed
//! (`dump --kill`) and restored, then checks each and says so. As root (original PIDs)
//! and as an ordinary user (a new user + PID namespace).
mod common;

use common::*;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// What the program prints after the restore, in order.
const VERDICTS: &[&str] = &[
    "pdeathsig ok",
    "thp ok",
    "mdwe ok",
    "coredump_filter ok",
    "membarrier ok",
    "dumpable ok",
    "ksm ok",
    "subreaper ok",
    "prctl ok",
];

fn ckpt_as(ids: Option<(u32, u32)>) -> Command {
    match ids {
        Some(ids) => setpriv_test_user(ckpt_bin(), ids),
        None => ckpt_cmd(),
    }
}

/// Run testdata/prctl with `opts` (as the test user with `user`), checkpoint it with
/// `dump --kill`, restore it and wait for every verdict.
fn round_trip(opts: &[&str], user: bool) {
    let (d, exe, ids): (TestDir, PathBuf, Option<(u32, u32)>) = if user {
        let (d, exe, ids) = test_user_dir("prctl");
        (d, exe, Some(ids))
    } else {
        let d = tempdir();
        let exe = d.join("prctl");
        copy_program(&testdata("prctl"), &exe);
        (d, exe, None)
    };
    let _sweep = Sweep::new(&d);
    let (stop, ck) = (d.join("stop"), d.join("ckpt"));
    let mut cmd = match ids {
        Some(ids) => setpriv_test_user(&exe, ids),
        None => command(&exe),
    };
    cmd.arg(&stop).args(opts);
    let mut t = Target::spawn(cmd, &exe.to_string_lossy());
    t.stdout.expect_line("ready");
    let mut dump = ckpt_as(ids);
    dump.arg("dump")
        .arg(t.pid.to_string())
        .arg("--dir")
        .arg(&ck)
        .arg("--kill");
    assert_success(&run(&mut dump), "ckpt dump --kill");
    t.reap_killed();
    // The whole tree's PIDs, for a restore under the same ones.
    let tree = t
        .stdout
        .seen()
        .iter()
        .find_map(|l| l.strip_prefix("tree "))
        .expect("the tree line")
        .to_string();
    for p in tree.split(' ') {
        wait_pid_free(p.parse().unwrap());
    }

    let mut restore = ckpt_as(ids);
    restore.arg("restore").arg(&ck);
    if ids.is_none() {
        restore.args(["--pidns", "never"]);
    }
    restore
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    eprintln!("$ {restore:?} &");
    let mut child = restore.spawn().expect("start ckpt restore");
    let mut out = Lines::new("restored stdout", child.stdout.take().unwrap());
    let _err = Lines::new("restored stderr", child.stderr.take().unwrap());
    if ids.is_none() {
        let marker = exe.to_string_lossy().into_owned();
        wait_until("the restored process under its PID", || {
            cmdline(t.pid).is_some_and(|c| c.contains(&marker))
        });
    }
    touch(&stop);
    for v in VERDICTS {
        out.expect_line(v);
    }
    let status = wait_child(&mut child, "ckpt restore");
    assert!(status.success(), "ckpt restore: {status:?}");
}

/// As root: every attribute an ordinary user can set, with MDWE's no-inherit flag.
#[test]
fn prctl_state_survives_a_checkpoint() {
    round_trip(&["--mdwe-no-inherit"], false);
}

/// As root: also a cleared dumpable flag (which only root can checkpoint) and KSM
/// merging of the whole process.
#[test]
fn undumpable_and_ksm_survive_a_checkpoint() {
    round_trip(&["--undumpable", "--ksm"], false);
}

/// The same state, checkpointed and restored by an ordinary user.
#[test]
fn prctl_state_survives_as_an_ordinary_user() {
    round_trip(&["--ksm"], true);
}
