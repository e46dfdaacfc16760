//! Incremental generations (issue 11): a dump into a directory that keeps two or more
//! generations stores only the pages that changed since its newest one; dropping a
//! base merges its pages forward; every kept generation restores on its own; a base
//! that is damaged or gone is refused, never silently replaced.
//!
//! The program (testdata/rewrite.c) rewrites 5% of its 64 MiB between checkpoints and
//! checks at the end every page against the rounds it did.
mod common;

use common::*;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const MIB: &str = "64";

/// The generation directories of `ck`, oldest first.
fn generations(ck: &Path) -> Vec<PathBuf> {
    let mut gens: Vec<(u64, PathBuf)> = fs::read_dir(ck)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("ckpt_") && e.path().is_dir())
        .map(|e| {
            let n = e
                .file_name()
                .to_string_lossy()
                .rsplit('_')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            (n, e.path())
        })
        .collect();
    gens.sort();
    gens.into_iter().map(|g| g.1).collect()
}

fn manifest(gen: &Path) -> serde_json::Value {
    let v: serde_json::Value =
        serde_json::from_slice(&fs::read(gen.join("manifest.json")).unwrap()).unwrap();
    v["manifest"].clone()
}

/// The bytes of a generation's image files.
fn image_bytes(gen: &Path) -> u64 {
    fs::read_dir(gen)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".img"))
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

/// `ckpt dump PID --dir CK EXTRA...`, which must succeed.
fn dump_with(pid: i32, ck: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "dump".to_string(),
        pid.to_string(),
        "--dir".into(),
        ck.to_string_lossy().into_owned(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let out = ckpt(&args);
    assert_success(&out, &format!("ckpt {}", args.join(" ")));
    out
}

/// `rewrite DIR 64`, waiting for "ready".
fn start(d: &TestDir) -> Target {
    let mut t = Target::start("rewrite", &[d.path().as_os_str(), os(MIB)]);
    t.stdout.expect_line("ready");
    t
}

/// Round `r` of `t`: 5% of its pages change.
fn round(d: &TestDir, t: &mut Target, r: u64) {
    touch(&d.join(format!("go{r}")));
    t.stdout.expect_line(&format!("round {r}"));
}

/// Restores `gen` with the stop file present: the program checks every page against
/// the rounds its image had done and exits.
fn restore_and_verify(d: &TestDir, gen: &Path, pid: i32, rounds: u64) {
    touch(&d.join("stop"));
    let mut r = Restored::start(gen, pid, "rewrite");
    r.wait_success();
    let out = r.stdout.seen().join("\n");
    assert!(
        out.contains(&format!("verify ok {rounds} rounds {MIB} MiB")),
        "restored from {}: expected {rounds} rounds verified, got:\n{out}\nstderr:\n{}",
        gen.display(),
        r.stderr.seen().join("\n")
    );
    wait_pid_free(pid);
    fs::remove_file(d.join("stop")).unwrap();
}

#[test]
fn newest_of_four_incremental_generations_restores_after_the_bases_were_merged() {
    let d = tempdir();
    let ck = d.join("ckpt");
    let mut t = start(&d);
    let mut sizes = Vec::new();
    for r in 1..=4u64 {
        let out = dump(t.pid, &ck, false);
        let gens = generations(&ck);
        let newest = gens.last().unwrap();
        sizes.push(image_bytes(newest));
        let m = manifest(newest);
        if r == 1 {
            assert!(
                m.get("parent").is_none(),
                "the first generation follows nothing: {m}"
            );
        } else {
            // It follows the one before, and says so.
            let before = gens[gens.len() - 2]
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            assert_eq!(m["parent"].as_str(), Some(before.as_str()), "{m}");
            assert!(
                describe(&out).contains("unchanged left in the generation before"),
                "{}",
                describe(&out)
            );
        }
        // --keep 2 (the default): the older kept generation holds all its pages.
        assert!(gens.len() <= 2, "{gens:?}");
        if gens.len() == 2 && r > 2 {
            assert!(
                manifest(&gens[0]).get("parent").is_none(),
                "{} was not merged",
                gens[0].display()
            );
        }
        round(&d, &mut t, r);
    }
    // 5% of 64 MiB changed between dumps: each incremental image is a small part of a
    // whole one (bytes, not time).
    for (i, s) in sizes.iter().enumerate().skip(1) {
        assert!(
            *s * 10 < sizes[0],
            "generation {} wrote {s} bytes, the whole one {}",
            i + 1,
            sizes[0]
        );
    }
    let pid = t.pid;
    t.kill();
    wait_pid_free(pid);
    // The newest of the four: round 4 was done after it, so 3 rounds are in it; it
    // goes on with round 4 after the restore.
    let gens = generations(&ck);
    let mut r = Restored::start(&ck, pid, "rewrite");
    r.assert_same_pid();
    touch(&d.join("go4"));
    r.stdout.expect_line("round 4");
    touch(&d.join("stop"));
    r.wait_success();
    assert!(
        r.stdout.saw_prefix("verify ok 4 rounds"),
        "{:?}",
        r.stdout.seen()
    );
    // `ckpt info` says which generation it builds on.
    let info = ckpt(["info".as_ref(), gens[1].as_os_str()]);
    assert_success(&info, "ckpt info");
    let text = String::from_utf8_lossy(&info.stdout);
    let base = gens[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(text.contains(&format!("builds on {base}")), "{text}");
}

#[test]
fn every_kept_generation_restores_on_its_own() {
    let d = tempdir();
    let ck = d.join("ckpt");
    let mut t = start(&d);
    for r in 1..=5u64 {
        dump_with(t.pid, &ck, &["--keep", "4"]);
        round(&d, &mut t, r);
    }
    let pid = t.pid;
    t.kill();
    wait_pid_free(pid);
    // Five dumps, four kept: the first was dropped and the second made whole; the
    // others still build on the one before.
    let gens = generations(&ck);
    assert_eq!(gens.len(), 4, "{gens:?}");
    assert!(manifest(&gens[0]).get("parent").is_none());
    for w in gens.windows(2) {
        assert_eq!(
            manifest(&w[1])["parent"].as_str(),
            Some(&*w[0].file_name().unwrap().to_string_lossy())
        );
    }
    // Generation n (n = 2..5) was dumped after n-1 rounds.
    for (i, gen) in gens.iter().enumerate() {
        restore_and_verify(&d, gen, pid, i as u64 + 1);
    }
}

#[test]
fn full_dump_stores_every_page() {
    let d = tempdir();
    let ck = d.join("ckpt");
    let mut t = start(&d);
    dump(t.pid, &ck, false);
    round(&d, &mut t, 1);
    dump_with(t.pid, &ck, &["--full"]);
    let gens = generations(&ck);
    assert!(manifest(&gens[1]).get("parent").is_none());
    assert!(image_bytes(&gens[1]) * 10 > image_bytes(&gens[0]) * 9);
    let pid = t.pid;
    t.kill();
    wait_pid_free(pid);
    restore_and_verify(&d, &gens[1], pid, 1);
}

/// Two incremental generations on a base; the test then damages or removes the base.
fn base_and_two(d: &TestDir) -> (i32, Vec<PathBuf>) {
    let ck = d.join("ckpt");
    let mut t = start(d);
    for r in 1..=3u64 {
        dump_with(t.pid, &ck, &["--keep", "3"]);
        round(d, &mut t, r);
    }
    let pid = t.pid;
    t.kill();
    wait_pid_free(pid);
    (pid, generations(&ck))
}

#[test]
fn a_damaged_base_is_refused_by_name() {
    let d = tempdir();
    let (pid, gens) = base_and_two(&d);
    // One byte of page data in the base (its pages start after the 4096-byte header).
    let img = fs::read_dir(&gens[0])
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with(".img"))
        .unwrap()
        .path();
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&img)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, 1 << 20).unwrap();
    b[0] ^= 0x5a;
    f.write_all_at(&b, 1 << 20).unwrap();
    drop(f);
    let out = ckpt(["restore".as_ref(), gens[2].as_os_str()]);
    let line = assert_error(&out, "restore of a generation whose base is damaged");
    assert!(line.contains("corrupted"), "{line}");
    assert!(!pid_exists(pid) || !cmdline(pid).unwrap_or_default().contains("rewrite"));
}

#[test]
fn a_missing_base_is_refused_by_name() {
    let d = tempdir();
    let (pid, gens) = base_and_two(&d);
    fs::remove_dir_all(&gens[1]).unwrap();
    let base = gens[1].file_name().unwrap().to_string_lossy().into_owned();
    let out = ckpt(["restore".as_ref(), gens[2].as_os_str()]);
    let line = assert_error(&out, "restore of a generation whose base is gone");
    assert!(line.contains(&base) && line.contains("gone"), "{line}");
    // The one that holds all its pages still restores.
    restore_and_verify(&d, &gens[0], pid, 0);
}

/// The newest generation number in `job_dir` (0: none yet).
fn newest_number(job_dir: &Path) -> u64 {
    generations(job_dir)
        .last()
        .and_then(|g| g.to_string_lossy().rsplit('_').next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn periodic_checkpoints_of_a_coordinated_job_are_incremental_and_restore() {
    let d = tempdir();
    let _sweep = Sweep::new(&d);
    let port = test_port(1).to_string();
    let ckdir = d.join("ckpt");
    let prog = testdata("rewrite");
    let mut c = ck();
    c.args(["run", "--coord-port", &port, "--ckpt-dir"])
        .arg(&ckdir)
        .args(["-i", "1", "--keep", "2", "--"])
        .arg(&prog)
        .arg(d.path())
        .arg(MIB)
        .env("CKPT_TIMING", "1");
    let mut agent = Target::spawn(c, &prog.to_string_lossy());
    agent.stdout.expect_line("ready");
    let kids = children(agent.pid);
    assert_eq!(kids.len(), 1, "the agent's children: {kids:?}");
    let job = kids[0];
    // A round after each periodic checkpoint.
    for r in 1..=3u64 {
        let mut before = 0;
        wait_until("a periodic checkpoint", || {
            let Some(dir) = job_dirs(&ckdir).pop() else {
                return false;
            };
            let n = newest_number(&dir);
            if before == 0 {
                before = n.max(1);
            }
            n > before
        });
        round(&d, &mut agent, r);
    }
    assert_success(
        &command_at(port.parse().unwrap(), &["i", "0"]),
        "ckpt command i 0",
    );
    assert_success(
        &command_at(port.parse().unwrap(), &["kc"]),
        "ckpt command kc",
    );
    agent.wait();
    wait_pid_free(job);
    let job_dir = job_dirs(&ckdir).pop().unwrap();
    let gens = generations(&job_dir);
    assert_eq!(gens.len(), 2, "--keep 2: {gens:?}");
    let newest = manifest(gens.last().unwrap());
    assert_eq!(
        newest["parent"].as_str(),
        Some(&*gens[0].file_name().unwrap().to_string_lossy()),
        "the last checkpoint builds on the periodic one before: {newest}"
    );
    assert!(
        manifest(&gens[0]).get("parent").is_none(),
        "{} was not merged",
        gens[0].display()
    );
    touch(&d.join("stop"));
    let mut r = Restored::start(&job_dir, job, "rewrite");
    r.wait_success();
    assert!(
        r.stdout.saw_prefix("verify ok 3 rounds"),
        "{:?}\n{:?}",
        r.stdout.seen(),
        r.stderr.seen()
    );
}

/// An ordinary user's dumps are incremental too, and restore.
#[test]
fn incremental_generations_of_an_ordinary_user_restore() {
    let (d, exe, ids) = test_user_dir("rewrite");
    let ck = d.join("ckpt");
    let mut t = Target::spawn(
        {
            let mut c = setpriv_test_user(&exe, ids);
            c.arg(d.path()).arg(MIB);
            c
        },
        &exe.to_string_lossy(),
    );
    t.stdout.expect_line("ready");
    for r in 1..=2u64 {
        let out = run(setpriv_test_user(ckpt_bin(), ids)
            .args(["dump", &t.pid.to_string(), "--dir"])
            .arg(&ck)
            .stdin(std::process::Stdio::null()));
        assert_success(&out, "ckpt dump as the test user");
        round(&d, &mut t, r);
    }
    let gens = generations(&ck);
    assert!(manifest(&gens[1])["parent"].is_string(), "{gens:?}");
    let pid = t.pid;
    t.kill();
    wait_pid_free(pid);
    touch(&d.join("stop"));
    let mut r = Target::spawn(
        {
            let mut c = setpriv_test_user(ckpt_bin(), ids);
            c.arg("restore").arg(&ck);
            c
        },
        &exe.to_string_lossy(),
    );
    let st = r.wait();
    r.stdout.read_to_end();
    assert!(st.success(), "{:?} {:?}", r.stdout.seen(), r.stderr.seen());
    assert!(
        r.stdout.saw_prefix("verify ok 1 rounds"),
        "{:?}",
        r.stdout.seen()
    );
}
