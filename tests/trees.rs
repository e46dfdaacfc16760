//! Process trees (docs/CONTRACT.md §4 tier 2): `ckpt dump PID` takes PID and all its
//! descendants; `ckpt restore` recreates them with their PIDs, parent links,
//! process groups, sessions, zombies, shared open file descriptions and the
//! pipes between them (with the data in flight).
mod common;

use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::thread;
use std::time::Duration;

/// The trees are big for 2 shared cores: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const N: usize = 32;

/// One "proc <i> <pid> <ppid> <pgid> <sid>" line of the tree program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Proc {
    idx: usize,
    pid: i32,
    ppid: i32,
    pgid: i32,
    sid: i32,
}

/// The processes the tree program announced (by index), and its zombie.
fn announced(lines: &Lines) -> (Vec<Proc>, i32) {
    let mut procs: Vec<Proc> = lines
        .seen()
        .iter()
        .filter_map(|l| l.strip_prefix("proc "))
        .map(|l| {
            let f: Vec<i64> = l
                .split_whitespace()
                .map(|x| x.parse().unwrap_or_else(|_| panic!("bad proc line {l:?}")))
                .collect();
            assert_eq!(f.len(), 5, "bad proc line {l:?}");
            Proc {
                idx: f[0] as usize,
                pid: f[1] as i32,
                ppid: f[2] as i32,
                pgid: f[3] as i32,
                sid: f[4] as i32,
            }
        })
        .collect();
    procs.sort_by_key(|p| p.idx);
    assert_eq!(
        procs.iter().map(|p| p.idx).collect::<Vec<_>>(),
        (0..N).collect::<Vec<_>>(),
        "the tree program should announce processes 0..{N}"
    );
    let zombie = lines
        .seen()
        .iter()
        .find_map(|l| l.strip_prefix("zombie "))
        .expect("no zombie line")
        .parse()
        .unwrap();
    (procs, zombie)
}

/// (state, ppid, pgrp, session) from /proc/PID/stat.
fn stat_ids(pid: i32) -> Option<(char, i32, i32, i32)> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f: Vec<&str> = s[s.rfind(')')? + 1..].split_whitespace().collect();
    Some((
        f[0].chars().next()?,
        f[1].parse().ok()?,
        f[2].parse().ok()?,
        f[3].parse().ok()?,
    ))
}

/// Checks from the outside that every announced process has its pid, parent,
/// group and session, and that the zombie is an unreaped child of the root.
/// The root's parent is outside the tree: `root_parent` (the test, or the
/// `ckpt restore` that waits for it).
fn assert_tree_ids(procs: &[Proc], zombie: i32, root_parent: i32, marker: &str, when: &str) {
    for p in procs {
        let want_ppid = if p.idx == 0 { root_parent } else { p.ppid };
        wait_until(
            &format!(
                "process {} (pid {}) to run the tree program {when}",
                p.idx, p.pid
            ),
            || cmdline(p.pid).is_some_and(|c| c.contains(marker)),
        );
        let (state, ppid, pgid, sid) = stat_ids(p.pid)
            .unwrap_or_else(|| panic!("{when}: process {} (pid {}) is gone", p.idx, p.pid));
        assert!(
            !matches!(state, 'Z' | 'X'),
            "{when}: process {} (pid {}) is in state {state}",
            p.idx,
            p.pid
        );
        assert_eq!(
            (ppid, pgid, sid),
            (want_ppid, p.pgid, p.sid),
            "{when}: process {} (pid {}): (ppid, pgid, sid) changed",
            p.idx,
            p.pid
        );
    }
    let (state, ppid, _, _) =
        stat_ids(zombie).unwrap_or_else(|| panic!("{when}: the zombie {zombie} is gone (reaped?)"));
    assert_eq!(
        state, 'Z',
        "{when}: the zombie {zombie} is in state {state}"
    );
    assert_eq!(ppid, procs[0].pid, "{when}: the zombie's parent");
}

/// The PIDs in a checkpoint: its processes (`ckpt info --json`) and its
/// zombies (not shown by `ckpt info`: from the generation's manifest).
struct ImagePids {
    procs: Vec<(i32, i32, Vec<String>)>, // pid, ppid, cmdline
    zombies: Vec<i32>,
}

fn image_pids(ck: &Path) -> ImagePids {
    let info = info_json(ck);
    let procs = info["processes"]
        .as_array()
        .expect("info: processes array")
        .iter()
        .map(|p| {
            (
                json_u64(p, "pid") as i32,
                json_u64(p, "ppid") as i32,
                p["cmdline"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|s| s.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default(),
            )
        })
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
}

/// Waits until no process uses any of these PIDs (the killed tree's orphans
/// and zombies are reaped by PID 1, which takes its time here).
fn wait_pids_free(pids: &[i32]) {
    for &pid in pids {
        wait_pid_free(pid);
    }
}

/// The children of a process (all its threads'), empty if it is gone.
fn children(pid: i32) -> BTreeSet<i32> {
    let mut out = BTreeSet::new();
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        let path = t.path().join("children");
        if let Ok(s) = fs::read_to_string(path) {
            out.extend(s.split_whitespace().filter_map(|c| c.parse::<i32>().ok()));
        }
    }
    out
}

fn descendants(pid: i32) -> Vec<i32> {
    let mut out = vec![];
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for c in children(p) {
            out.push(c);
            todo.push(c);
        }
    }
    out
}

fn comm(pid: i32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim_end().to_string())
}

/// Kills, when the test ends, every process of a tree still running the
/// program (a failed restore must not leave 32 processes behind).
struct KillTree(Vec<i32>, String);

impl Drop for KillTree {
    fn drop(&mut self) {
        for &pid in &self.0 {
            kill_if_running(pid, &self.1);
        }
    }
}

fn start_tree(d: &TestDir) -> (Target, PathBuf, PathBuf) {
    let (stop, rec) = (d.join("stop"), d.join("records"));
    let n = N.to_string();
    let t = Target::start("tree", &[stop.as_os_str(), rec.as_os_str(), os(&n)]);
    (t, stop, rec)
}

/// The whole records written so far. A write in progress may show part of a record
/// (the size grows page by page as write(2) copies: 8192 bytes was seen under load);
/// the program checks every record itself at the end.
fn records(rec: &Path) -> usize {
    let len = fs::metadata(rec).map(|m| m.len()).unwrap_or(0) as usize;
    len / 40
}

/// tree: 32 processes (children and grandchildren, a process group leader
/// with a member, a session leader, a zombie) in a ring of pipes with a
/// token, writing records through one shared file description, data in
/// flight in a pipe; dumped with --kill and restored: same PIDs, parents,
/// groups, sessions, zombie, and the program's own checks pass.
#[test]
fn c_tree_is_restored_whole() {
    let _serial = serial();
    let d = tempdir();
    let ck = d.join("ckpt");
    let (mut t, stop, rec) = start_tree(&d);
    t.stdout.expect_line("ready");
    let (procs, zombie) = announced(&t.stdout);
    let pids: Vec<i32> = procs.iter().map(|p| p.pid).collect();
    let _guard = KillTree(pids.clone(), t.marker.clone());
    assert_eq!(procs[0].pid, t.pid);
    let me = std::process::id() as i32;
    assert_tree_ids(&procs, zombie, me, &t.marker, "before the dump");

    t.dump_kill(&ck);
    let image = image_pids(&ck);
    assert_eq!(
        image.procs.len(),
        N,
        "ckpt info: the image should hold {N} processes: {:?}",
        image.procs
    );
    for p in &procs {
        let found = image.procs.iter().find(|q| q.0 == p.pid);
        assert!(
            found.is_some_and(|q| q.1 == p.ppid),
            "ckpt info: process {} (pid {}, parent {}) is {:?}",
            p.idx,
            p.pid,
            p.ppid,
            found
        );
    }
    assert_eq!(
        image.zombies,
        vec![zombie],
        "the manifest should record the zombie {zombie}"
    );
    let dumped = fs::read(&rec).unwrap();
    let m = records(&rec);
    assert!(m >= 3 * N, "only {m} records before the dump");
    let mut all = pids.clone();
    all.push(zombie);
    wait_pids_free(&all);

    let mut r = Restored::of(&ck, &t);
    r.assert_same_pid();
    let restorer = r.child.id() as i32;
    assert_tree_ids(&procs, zombie, restorer, &t.marker, "after the restore");
    // the ring goes on turning in the restored tree
    wait_until(
        "the restored tree to write 3 more rounds of records",
        || records(&rec) >= m + 3 * N,
    );
    touch(&stop);
    r.wait_success();
    let verdict = r.stdout.expect_prefix("tree ok ");
    assert!(
        verdict.starts_with(&format!("tree ok {N} ")),
        "verdict {verdict:?}"
    );
    let after = fs::read(&rec).unwrap();
    assert!(
        after.len() > dumped.len() && after[..dumped.len()] == dumped[..],
        "the records written before the dump changed"
    );
}

/// A bash pipeline (`while ... sleep 0.1 ... | cat >> FILE`): the top bash,
/// its subshell, cat and a short-lived sleep, dumped from the top with
/// --kill and restored: FILE ends with exactly 1..60.
#[test]
fn bash_pipeline_is_restored() {
    let _serial = serial();
    let d = tempdir();
    let (file, ck, script) = (d.join("numbers"), d.join("ckpt"), d.join("pipeline.sh"));
    fs::write(
        &script,
        format!(
            "i=0; while [ $i -lt 60 ]; do i=$((i+1)); echo $i; sleep 0.1; done | cat >> '{}'\n",
            file.display()
        ),
    )
    .unwrap();
    let mut cmd = command("bash");
    cmd.arg(&script);
    let mut t = Target::spawn(cmd, &script.to_string_lossy());
    wait_file_lines(&file, 5);

    // dump just after a new sleep started: it is a child in the image
    let sleeps = |pid| -> BTreeSet<i32> {
        descendants(pid)
            .into_iter()
            .filter(|&p| comm(p).as_deref() == Some("sleep"))
            .collect()
    };
    let old = sleeps(t.pid);
    let mut fresh = None;
    wait_until("a new sleep in the pipeline", || {
        fresh = sleeps(t.pid).difference(&old).next().copied();
        if fresh.is_none() {
            thread::sleep(Duration::from_millis(1));
        }
        fresh.is_some()
    });
    let tree_before = descendants(t.pid);
    t.dump_kill(&ck);

    let before = file_lines(&file);
    let m = assert_counting(&before, "", "before the restore");
    assert!(m < 60, "the pipeline had finished before the dump");
    let image = image_pids(&ck);
    eprintln!(
        "image: {:?}, zombies {:?}; descendants before the dump {tree_before:?}",
        image.procs, image.zombies
    );
    assert!(
        image.procs.len() >= 3,
        "the image should hold bash, its subshell and cat (and sleep): {:?}",
        image.procs
    );
    let sleep = fresh.unwrap();
    assert!(
        image.procs.iter().any(|p| p.0 == sleep) || image.zombies.contains(&sleep),
        "the sleep {sleep} (started just before the dump) is not in the image: {:?}, zombies {:?}",
        image.procs,
        image.zombies
    );
    wait_pids_free(&image.all());

    let mut r = Restored::of(&ck, &t);
    r.assert_same_pid();
    r.wait_success();
    let after = file_lines(&file);
    let k = assert_counting(&after, "", "after the restore");
    assert_eq!(k, 60, "the pipeline should have written 1..60");
}

/// tree, dumped without --kill: nothing is left stopped, no process gains
/// a child or a zombie (the copy-on-write snapshots are gone), the zombie
/// stays unreaped, and the tree finishes with its verdict.
#[test]
fn dump_without_kill_leaves_tree_unharmed() {
    let _serial = serial();
    let d = tempdir();
    let ck = d.join("ckpt");
    let (mut t, stop, rec) = start_tree(&d);
    t.stdout.expect_line("ready");
    let (procs, zombie) = announced(&t.stdout);
    let pids: Vec<i32> = procs.iter().map(|p| p.pid).collect();
    let _guard = KillTree(pids.clone(), t.marker.clone());
    let kids =
        || -> BTreeMap<i32, BTreeSet<i32>> { pids.iter().map(|&p| (p, children(p))).collect() };
    let before = kids();
    assert!(before[&t.pid].contains(&zombie));

    dump(t.pid, &ck, false);
    for &pid in &pids {
        assert_running_not_stopped(pid);
    }
    assert_eq!(
        kids(),
        before,
        "children of the tree's processes right after the dump"
    );
    assert_tree_ids(
        &procs,
        zombie,
        std::process::id() as i32,
        &t.marker,
        "after the dump",
    );
    let image = image_pids(&ck);
    assert_eq!(
        image.procs.len(),
        N,
        "ckpt info: processes {:?}",
        image.procs
    );
    assert_eq!(image.zombies, vec![zombie], "zombies in the manifest");

    // it goes on: three more rounds of the ring
    let m = records(&rec);
    wait_until("the tree to write 3 more rounds of records", || {
        records(&rec) >= m + 3 * N
    });
    for &pid in &pids {
        assert_running_not_stopped(pid);
    }
    assert_eq!(
        kids(),
        before,
        "children of the tree's processes after the dump"
    );

    touch(&stop);
    let status = t.wait();
    t.stdout.read_to_end();
    t.stdout.assert_no_fail();
    assert!(status.success(), "the dumped tree failed ({status:?})");
    let verdict = t.stdout.expect_prefix("tree ok ");
    assert!(
        verdict.starts_with(&format!("tree ok {N} ")),
        "verdict {verdict:?}"
    );
}
