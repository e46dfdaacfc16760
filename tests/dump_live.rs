//! `ckpt dump` without `--kill`: the target goes on running unharmed, can be
//! dumped again, and the restore uses the newest (second) generation.
mod common;

use common::*;
use std::fs;
use std::path::{Path, PathBuf};

fn generation(dir: &Path) -> PathBuf {
    let info = info_json(dir);
    PathBuf::from(
        info["generation"]
            .as_str()
            .unwrap_or_else(|| panic!("info: no generation in {info}")),
    )
}

fn latest(dir: &Path) -> PathBuf {
    let link = dir.join("latest");
    let target = fs::read_link(&link).unwrap_or_else(|e| panic!("{}: {e}", link.display()));
    fs::canonicalize(dir.join(target)).unwrap()
}

/// counter, dumped twice while it runs; then killed by the test and
/// restored: it must continue from the second image.
#[test]
fn dump_leaves_target_running_and_restore_uses_second_generation() {
    let d = tempdir();
    let (out, stop, ck) = (d.join("out"), d.join("stop"), d.join("ckpt"));
    let mut t = Target::start("counter", &[out.as_os_str(), stop.as_os_str(), os("20")]);
    t.stdout.expect_line("ready");
    let pid = t.pid.to_string();

    dump(t.pid, &ck, false);
    assert_running_not_stopped(t.pid);
    let gen1 = generation(&ck);
    assert_eq!(
        latest(&ck),
        fs::canonicalize(&gen1).unwrap(),
        "latest after the first dump"
    );
    // every number the first image can hold is in the file by now
    let l1 = file_lines(&out).len();
    wait_file_lines(&out, l1 + 5); // it makes progress

    dump(t.pid, &ck, false);
    assert_running_not_stopped(t.pid);
    let gen2 = generation(&ck);
    assert_ne!(gen1, gen2, "the second dump wrote the same generation");
    assert_eq!(
        latest(&ck),
        fs::canonicalize(&gen2).unwrap(),
        "latest after the second dump"
    );
    assert!(
        gen1.exists(),
        "the first generation was removed (the default keeps 2)"
    );
    let l2 = file_lines(&out).len();
    wait_file_lines(&out, l2 + 5);
    assert_running_not_stopped(t.pid);

    // the original was unharmed: its own checks passed, its numbers are whole
    t.kill();
    wait_pid_free(t.pid);
    t.stdout.read_to_end();
    t.stdout.assert_no_fail();
    let killed = file_lines(&out);
    let k = assert_counting(&killed, &pid, "written by the original");

    let mut r = Restored::of(&ck, &t);
    r.assert_same_pid();
    wait_file_lines(&out, k + 3);
    touch(&stop);
    r.wait_success();

    // after the original's lines, the restored one continues from the
    // second image: numbers from there on, consecutive
    let all = file_lines(&out);
    assert_eq!(&all[..k], &killed[..]);
    let first: usize = all[k].split_whitespace().next().unwrap().parse().unwrap();
    assert!(
        first > l1 + 5 && first <= k + 1,
        "the restored counter went on with {first}: the first image held at most {l1}, the second at least {}, \
         the original stopped at {k}",
        l1 + 5
    );
    for (i, line) in all[k..].iter().enumerate() {
        assert_eq!(
            line,
            &format!("{} {pid}", first + i),
            "restored lines:\n{}",
            all[k..].join("\n")
        );
    }
}

/// threads (8 workers checking TIDs, TLS, rseq... every round), dumped twice
/// while running: the original finishes with its verdict, then the second
/// image is restored and finishes with its verdict too.
#[test]
fn dump_of_threads_leaves_them_unharmed() {
    let d = tempdir();
    let (stop, ck) = (d.join("stop"), d.join("ckpt"));
    let mut t = Target::start("threads", &[stop.as_os_str(), os("8")]);
    t.stdout.expect_line("ready");
    let before = tids(t.pid);
    for _ in 0..2 {
        dump(t.pid, &ck, false);
        assert_running_not_stopped(t.pid);
        t.stdout.expect_prefix("round ");
        t.stdout.expect_prefix("round ");
        assert_eq!(tids(t.pid), before, "threads changed");
    }
    touch(&stop);
    let status = t.wait();
    t.stdout.read_to_end();
    assert!(
        status.success(),
        "the dumped original failed ({status:?}): {:?}",
        t.stdout.seen()
    );
    assert!(
        t.stdout.seen().iter().any(|l| l.starts_with("threads ok ")),
        "{:?}",
        t.stdout.seen()
    );
    wait_pid_free(t.pid);

    fs::remove_file(&stop).unwrap();
    let mut r = Restored::of(&ck, &t);
    r.assert_same_pid();
    r.stdout.expect_prefix("round ");
    touch(&stop);
    r.wait_success();
    assert!(
        r.stdout.seen().iter().any(|l| l.starts_with("threads ok ")),
        "{:?}",
        r.stdout.seen()
    );
}
