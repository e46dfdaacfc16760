//! Memory shared between processes (docs/CONTRACT.md §4 tier 2): a python3
//! multiprocessing Pool with a Queue, MAP_SHARED anonymous memory in a tree
//! (rebuilt on one object per shared object, so it stays shared), and a
//! /dev/shm segment that is gone at restore time (as after a reboot) or still
//! there.  Each test: start, wait for ready, `ckpt dump --kill`, reap, wait
//! until every PID of the image is free, restore, check it continues.
mod common;

use common::*;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// 2 shared cores: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------- helpers

/// The PIDs in a checkpoint: (pid, ppid) of its processes (`ckpt info
/// --json`) and its zombies (from the generation's manifest).
struct ImagePids {
    procs: Vec<(i32, i32)>,
    zombies: Vec<i32>,
}

fn image_pids(ck: &Path) -> ImagePids {
    let info = info_json(ck);
    let procs = info["processes"]
        .as_array()
        .expect("info: processes array")
        .iter()
        .map(|p| (json_u64(p, "pid") as i32, json_u64(p, "ppid") as i32))
        .collect();
    let gen = PathBuf::from(info["generation"].as_str().expect("info: generation"));
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(gen.join("manifest.json")).expect("read manifest.json"))
            .expect("manifest.json is not JSON");
    let zombies = manifest["manifest"]["zombies"]
        .as_array()
        .map(|a| a.iter().map(|z| json_u64(z, "pid") as i32).collect())
        .unwrap_or_default();
    ImagePids { procs, zombies }
}

impl ImagePids {
    fn all(&self) -> Vec<i32> {
        self.procs
            .iter()
            .map(|p| p.0)
            .chain(self.zombies.iter().copied())
            .collect()
    }

    /// Waits until no process uses any PID of the image (orphans of the
    /// killed tree are reaped by PID 1, which takes its time).
    fn wait_free(&self) {
        for pid in self.all() {
            wait_pid_free(pid);
        }
    }
}

/// Kills, when the test ends, every listed process still running the
/// program (a failed restore must not leave processes behind).
struct KillTree(Vec<i32>, String);

impl Drop for KillTree {
    fn drop(&mut self) {
        for &pid in &self.0 {
            kill_if_running(pid, &self.1);
        }
    }
}

/// Removes a file when the test ends, also on failure.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// The mapping of `pid` that starts at `addr`: (perms, inode, name).
fn mapping_at(pid: i32, addr: u64) -> Option<(String, u64, String)> {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    for line in maps.lines() {
        let mut f = line.splitn(6, char::is_whitespace);
        let range = f.next()?;
        let start = u64::from_str_radix(range.split('-').next()?, 16).ok()?;
        if start != addr {
            continue;
        }
        let perms = f.next()?.to_string();
        let _offset = f.next()?;
        let _dev = f.next()?;
        let inode = f.next()?.parse().ok()?;
        let name = f.next().unwrap_or("").trim().to_string();
        return Some((perms, inode, name));
    }
    None
}

// ---------------------------------------------------------------- python

const POOL_TASKS: usize = 200;

/// Checks OUTFILE lines "<i> <i*i>" for i = 0, 1, ...: no gap, no duplicate.
fn assert_squares(lines: &[String], what: &str) -> usize {
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(
            line,
            &format!("{i} {}", i * i),
            "{what}: line {} is wrong (gap, duplicate or wrong result); all lines:\n{}",
            i + 1,
            lines.join("\n")
        );
    }
    lines.len()
}

/// python3 multiprocessing: a Pool(4) of forked workers and a Queue (with
/// their pipes, locks on deleted /dev/shm semaphores, handler and feeder
/// threads), dumped from the main process while tasks run: the image holds
/// the main process and its 4 workers; the restored run writes every result
/// exactly once (0..N-1, i*i) and finishes with "pool ok N".
#[test]
fn python_multiprocessing_pool_continues() {
    let _serial = serial();
    let d = tempdir();
    let (out, ck) = (d.join("out"), d.join("ckpt"));
    let script = testdata("mp_pool.py");
    let mut cmd = command("python3");
    cmd.arg(&script).arg(&out).arg(POOL_TASKS.to_string());
    let mut t = Target::spawn(cmd, &script.to_string_lossy());
    t.stdout.expect_line("ready");
    wait_file_lines(&out, 20);

    t.dump_kill(&ck);
    let before = file_lines(&out);
    let m = assert_squares(&before, "before the restore");
    assert!(
        m < POOL_TASKS,
        "mp_pool.py had finished all {POOL_TASKS} tasks before the dump: nothing left to continue"
    );
    let image = image_pids(&ck);
    let workers: Vec<i32> = image
        .procs
        .iter()
        .filter(|p| p.1 == t.pid)
        .map(|p| p.0)
        .collect();
    assert!(
        image.procs.iter().any(|p| p.0 == t.pid),
        "the image does not hold the main process {}: {:?}",
        t.pid,
        image.procs
    );
    assert_eq!(
        (image.procs.len(), workers.len()),
        (5, 4),
        "the image should hold the main process and its 4 pool workers: {:?}",
        image.procs
    );
    let _guard = KillTree(image.all(), t.marker.clone());
    image.wait_free();

    let mut r = Restored::of(&ck, &t);
    r.assert_same_pid();
    r.wait_success();
    let verdict = r.stdout.expect_prefix("pool ok ");
    assert!(
        verdict.starts_with(&format!("pool ok {POOL_TASKS} ")),
        "verdict {verdict:?}"
    );
    let after = file_lines(&out);
    let k = assert_squares(&after, "after the restore");
    assert_eq!(
        k, POOL_TASKS,
        "the output should hold exactly the results of tasks 0..{POOL_TASKS}"
    );
    assert_eq!(
        &after[..before.len()],
        &before[..],
        "lines written before the checkpoint changed"
    );
}

// ---------------------------------------------------------------- shmtree tree

/// What `shmtree tree` announced: pid and ppid by index, the exited child,
/// the addresses of regions A and B.
struct ShmTree {
    procs: BTreeMap<usize, (i32, i32)>,
    dead: i32,
    a: u64,
    b: u64,
}

fn parse_hex(s: &str) -> u64 {
    u64::from_str_radix(s.trim_start_matches("0x"), 16)
        .unwrap_or_else(|_| panic!("bad address {s:?}"))
}

fn announced(lines: &Lines) -> ShmTree {
    let mut procs = BTreeMap::new();
    let mut dead = None;
    let (mut a, mut b) = (None, None);
    for l in lines.seen() {
        if let Some(rest) = l.strip_prefix("proc ") {
            let f: Vec<i32> = rest
                .split_whitespace()
                .map(|x| x.parse().unwrap_or_else(|_| panic!("bad proc line {l:?}")))
                .collect();
            assert_eq!(f.len(), 3, "bad proc line {l:?}");
            procs.insert(f[0] as usize, (f[1], f[2]));
        } else if let Some(rest) = l.strip_prefix("dead ") {
            dead = Some(rest.parse().unwrap());
        } else if let Some(rest) = l.strip_prefix("regions ") {
            for kv in rest.split_whitespace() {
                match kv.split_once('=') {
                    Some(("A", v)) => a = Some(parse_hex(v)),
                    Some(("B", v)) => b = Some(parse_hex(v)),
                    _ => panic!("bad regions line {l:?}"),
                }
            }
        }
    }
    assert_eq!(
        procs.keys().copied().collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4],
        "shmtree should announce processes 0..4"
    );
    assert_eq!(
        procs[&4].1, procs[&1].0,
        "process 4 is a child of process 1"
    );
    for i in 1..=3 {
        assert_eq!(
            procs[&i].1, procs[&0].0,
            "process {i} is a child of the root"
        );
    }
    ShmTree {
        procs,
        dead: dead.expect("no dead line"),
        a: a.expect("no region A"),
        b: b.expect("no region B"),
    }
}

/// From the outside, in /proc/PID/maps: region A is one shared object mapped
/// by all 5 processes; region B is one object mapped by processes 1 and 4
/// only; process 2 maps another object (B2) at B's address; A, B and B2 are
/// three different objects.
fn assert_regions(t: &ShmTree, when: &str) {
    let pid = |i: usize| t.procs[&i].0;
    let shared = |i: usize, addr: u64, what: &str| -> u64 {
        let (perms, inode, name) = mapping_at(pid(i), addr).unwrap_or_else(|| {
            panic!(
                "{when}: process {i} (pid {}) has no mapping of {what} at {addr:#x}",
                pid(i)
            )
        });
        assert!(
            perms.starts_with("rw") && perms.ends_with('s'),
            "{when}: process {i}: {what} at {addr:#x} is mapped {perms} {name}, expected rw-s"
        );
        eprintln!(
            "{when}: process {i} (pid {}): {what} at {addr:#x}: inode {inode} {name}",
            pid(i)
        );
        inode
    };
    let a: Vec<u64> = (0..5).map(|i| shared(i, t.a, "region A")).collect();
    assert!(
        a.iter().all(|&x| x == a[0]),
        "{when}: region A should be one object in all 5 processes, inodes {a:?}"
    );
    let b1 = shared(1, t.b, "region B");
    let b4 = shared(4, t.b, "region B");
    let b2 = shared(2, t.b, "region B2");
    assert_eq!(
        b1, b4,
        "{when}: region B should be one object shared by processes 1 and 4"
    );
    assert_ne!(
        b1, b2,
        "{when}: process 2's region B2 must be another object than B (processes 1 and 4)"
    );
    assert!(
        a[0] != b1 && a[0] != b2,
        "{when}: region A (inode {}) must not be B ({b1}) or B2 ({b2})",
        a[0]
    );
    for i in [0, 3] {
        assert!(
            mapping_at(pid(i), t.b).is_none(),
            "{when}: process {i} should not map anything at B's address {:#x}",
            t.b
        );
    }
}

/// shmtree tree: 64 MiB of MAP_SHARED anonymous memory shared by a root, 3
/// children and a grandchild, holding a pattern and a block written by a
/// child that exited before the dump; a second shared region between child 1
/// and grandchild 4 only, and another one of child 2 at the same address.
/// Restored: the same sharing, seen from /proc/PID/maps, and the program's
/// own checks (counters keep moving as seen from the root, data intact, B
/// still shared by exactly its two processes) end in "shm ok".
#[test]
fn shared_anonymous_memory_stays_shared_in_a_tree() {
    let _serial = serial();
    let d = tempdir();
    let (stop, ck) = (d.join("stop"), d.join("ckpt"));
    let mut t = Target::start("shmtree", &[os("tree"), stop.as_os_str()]);
    t.stdout.expect_line("ready");
    let tree = announced(&t.stdout);
    let pids: Vec<i32> = tree.procs.values().map(|p| p.0).collect();
    let _guard = KillTree(pids.clone(), t.marker.clone());
    assert_eq!(tree.procs[&0].0, t.pid);
    assert!(
        !pid_exists(tree.dead),
        "the exited child {} should have been reaped",
        tree.dead
    );
    assert_regions(&tree, "before the dump");

    t.dump_kill(&ck);
    let image = image_pids(&ck);
    let mut in_image: Vec<i32> = image.procs.iter().map(|p| p.0).collect();
    in_image.sort();
    let mut want = pids.clone();
    want.sort();
    assert_eq!(
        in_image, want,
        "the image should hold exactly the 5 processes of the tree"
    );
    assert!(
        image.zombies.is_empty(),
        "no zombie expected: {:?}",
        image.zombies
    );
    image.wait_free();

    let mut r = Restored::of(&ck, &t);
    r.assert_same_pid();
    for &pid in &pids {
        wait_until(&format!("PID {pid} to run shmtree again"), || {
            cmdline(pid).is_some_and(|c| c.contains(&t.marker))
        });
    }
    assert_regions(&tree, "after the restore");
    touch(&stop);
    r.wait_success();
    r.stdout.expect_line("counters moved");
    r.stdout.expect_line("shm ok");
}

// ---------------------------------------------------------------- /dev/shm

const SEG_SIZE: usize = 1 << 20;

fn word(data: &[u8], i: usize) -> u64 {
    u64::from_ne_bytes(data[8 * i..8 * i + 8].try_into().unwrap())
}

fn read_word(path: &Path, i: usize) -> u64 {
    let f = fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, 8 * i as u64)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    u64::from_ne_bytes(b)
}

/// What becomes of the /dev/shm segment of `shmtree segment` between the dump and the
/// restore.
#[derive(Clone, Copy, PartialEq)]
enum Seg {
    /// Removed, as a reboot does: made again with the saved content.
    Removed,
    /// Left in place and used by a process outside the job (the test, holding it open
    /// from before the dump), which writes a note into it: the restored program sees
    /// the note (the restore uses the file as it is).
    SharedOutside,
    /// Left in place, used by no one, and changed after the dump (a note written as the
    /// job itself would have, running on after a checkpoint): it is the job's memory,
    /// and the restore gives it its content at the checkpoint back (no note).
    JobsOwn,
}

fn shm_segment_case(seg: Seg) {
    let remove = seg == Seg::Removed;
    use std::os::unix::fs::MetadataExt;
    let _serial = serial();
    let d = tempdir();
    let (stop, ck) = (d.join("stop"), d.join("ckpt"));
    let mut t = Target::start("shmtree", &[os("segment"), stop.as_os_str()]);
    let path = PathBuf::from(format!("/dev/shm/ckpt-test-{}", t.pid));
    let _seg = RemoveOnDrop(path.clone());
    t.stdout.expect_line(&format!("segment {}", path.display()));
    t.stdout.expect_line("ready");
    let md = fs::metadata(&path).unwrap();
    assert_eq!(
        md.permissions().mode() & 0o7777,
        0o640,
        "mode before the dump"
    );
    let ino_before = md.ino();
    let outside_user = (seg == Seg::SharedOutside).then(|| fs::File::open(&path).unwrap());

    t.dump_kill(&ck);
    let saved = fs::read(&path).unwrap();
    assert_eq!(saved.len(), SEG_SIZE, "segment size at the dump");
    let c0 = word(&saved, 0);
    assert!(c0 >= 20, "counter {c0} at the dump");
    assert_eq!(word(&saved, 1), 0, "the note is 0 at the dump");
    let image = image_pids(&ck);
    image.wait_free();

    let note: u64 = if remove {
        fs::remove_file(&path).unwrap();
        0
    } else {
        let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&0xfeedu64.to_ne_bytes(), 8).unwrap();
        if seg == Seg::SharedOutside {
            0xfeed
        } else {
            0
        }
    };

    let mut r = Restored::of(&ck, &t);
    r.assert_same_pid();
    let md = fs::metadata(&path)
        .unwrap_or_else(|e| panic!("{} should exist after the restore ({e})", path.display()));
    assert_eq!(
        md.permissions().mode() & 0o7777,
        0o640,
        "mode of {} after the restore",
        path.display()
    );
    assert_eq!(md.len() as usize, SEG_SIZE, "size after the restore");
    if !remove {
        assert_eq!(
            md.ino(),
            ino_before,
            "the segment was still there: the restore must use it, not replace it"
        );
    }
    // the restored process updates the file at the path (its mapping is that
    // file), and continues from the saved counter
    let c1 = read_word(&path, 0);
    assert!(
        c1 >= c0,
        "the counter in {} is {c1} after the restore, it was {c0} at the dump",
        path.display()
    );
    wait_until(
        &format!("the counter in {} to move on from {c0}", path.display()),
        || read_word(&path, 0) >= c0 + 20,
    );
    let now = fs::read(&path).unwrap();
    assert_eq!(word(&now, 1), note, "the note in {}", path.display());
    assert!(
        now[24..] == saved[24..],
        "the content of {} (pattern) differs from the one at the dump",
        path.display()
    );

    touch(&stop);
    r.wait_success();
    let verdict = r.stdout.expect_prefix("segment ok ");
    let fields: BTreeMap<&str, u64> = verdict["segment ok ".len()..]
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k, v.parse().unwrap()))
        .collect();
    assert!(
        fields["counter"] >= c0 + 20,
        "verdict {verdict:?}: the counter should have continued from {c0}"
    );
    assert_eq!(fields["note"], note, "verdict {verdict:?}: the note");
    assert!(path.exists(), "{} is gone at the end", path.display());
    drop(outside_user);
}

/// /dev/shm segment removed between checkpoint and restore: recreated at its
/// path with the saved content and mode; the program continues on it.
#[test]
fn shm_segment_removed_is_recreated() {
    shm_segment_case(Seg::Removed);
}

/// /dev/shm segment still there at restore and open in a process outside the job: used
/// as it is (same inode, a change made after the dump is seen by the restored program).
#[test]
fn shm_segment_shared_outside_is_used_as_is() {
    shm_segment_case(Seg::SharedOutside);
}

/// /dev/shm segment still there at restore, used by no one, changed after the dump: the
/// same inode, with its content at the checkpoint again.
#[test]
fn shm_segment_of_the_job_alone_gets_its_checkpoint_content_back() {
    shm_segment_case(Seg::JobsOwn);
}
