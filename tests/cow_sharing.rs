//! Memory shared copy-on-write between a parent and its forked children (issue 9): a
//! restore keeps the pages shared, so the tree's memory (the sum of its processes'
//! proportional set sizes, Pss) does not grow, and every process still sees exactly its
//! own memory (the pages it wrote after the fork are its own, the others the parent's).
mod common;

use common::*;
use std::ffi::OsStr;
use std::fs;

/// Pss and Rss (kB, from smaps_rollup) summed over `root` and its descendants whose
/// command is `comm`.
fn tree_memory(root: i32, comm: &str) -> (u64, u64, usize) {
    let mut todo = vec![root];
    let (mut pss, mut rss, mut n) = (0, 0, 0);
    while let Some(pid) = todo.pop() {
        todo.extend(children(pid));
        let name = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if name.trim() != comm {
            continue;
        }
        let rollup = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
        let field = |key: &str| -> u64 {
            rollup
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        pss += field("Pss:");
        rss += field("Rss:");
        n += 1;
    }
    (pss, rss, n)
}

/// The descriptor numbers of `pid` with what they are (pipe:[...] numbers aside).
fn fd_names(pid: i32) -> Vec<String> {
    let mut fds: Vec<String> = fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let target = fs::read_link(e.path()).ok()?;
            let kind = target.to_string_lossy().split(':').next()?.to_string();
            Some(format!("{} {kind}", e.file_name().to_string_lossy()))
        })
        .collect();
    fds.sort();
    fds
}

fn assert_same_memory(before: (u64, u64, usize), after: (u64, u64, usize)) {
    eprintln!(
        "tree memory before: Pss {} kB, Rss {} kB ({} processes); after restore: Pss {} kB, Rss {} kB ({} processes)",
        before.0, before.1, before.2, after.0, after.1, after.2
    );
    assert_eq!(before.2, 5, "the tree had a parent and 4 children");
    assert_eq!(after.2, 5, "the restored tree has a parent and 4 children");
    let (b, a) = (before.0 as f64, after.0 as f64);
    assert!(
        (a - b).abs() <= 0.05 * b,
        "the tree's memory (total Pss) changed by more than 5%: {} kB before, {} kB after restore: pages shared copy-on-write were copied",
        before.0,
        after.0
    );
}

/// Whether every process named `comm` below `root` runs on its own: the restorer has
/// let it go (no tracer any more), so the restore is over.
fn all_let_go(root: i32, comm: &str) -> bool {
    let mut todo = vec![root];
    while let Some(pid) = todo.pop() {
        todo.extend(children(pid));
        let name = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if name.trim() != comm {
            continue;
        }
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        if !status
            .lines()
            .any(|l| l.split_whitespace().eq(["TracerPid:", "0"]))
        {
            return false;
        }
    }
    true
}

/// The memory of the restored tree below `root`, once all five processes run with
/// their memory back (the loaders are gone) and the restorer has let them go.
fn restored_memory(root: i32, before: (u64, u64, usize)) -> (u64, u64, usize) {
    let mut after = (0, 0, 0);
    wait_until("the restored tree runs with its memory", || {
        after = tree_memory(root, "cowtree");
        after.2 == 5 && after.1 >= before.1 * 9 / 10 && all_let_go(root, "cowtree")
    });
    after
}

fn ready(lines: &mut Lines) {
    for _ in 0..5 {
        lines.expect_prefix("ready ");
    }
}

fn finished(lines: &mut Lines) {
    for _ in 0..5 {
        lines.expect_prefix("ok ");
    }
    lines.expect_line("cowtree ok");
}

#[test]
fn a_parent_and_four_children_sharing_1_gib_keep_sharing_it() {
    let d = tempdir();
    let (stop, ck) = (d.join("stop"), d.join("ckpt"));
    let mut t = Target::start("cowtree", &[OsStr::new("1024"), stop.as_os_str()]);
    ready(&mut t.stdout);
    let before = tree_memory(t.pid, "cowtree");
    let kids = children(t.pid);
    let fds: Vec<Vec<String>> = std::iter::once(t.pid)
        .chain(kids.iter().copied())
        .map(fd_names)
        .collect();
    t.dump_kill(&ck);
    for &k in &kids {
        wait_pid_free(k);
    }

    let mut r = Restored::of(&ck, &t);
    r.assert_same_pid();
    let after = restored_memory(t.pid, before);
    let fds_after: Vec<Vec<String>> = std::iter::once(t.pid)
        .chain(kids.iter().copied())
        .map(fd_names)
        .collect();
    assert_eq!(
        fds_after, fds,
        "every process has the descriptors it had, and no other"
    );
    touch(&stop);
    finished(&mut r.stdout);
    r.wait_success();
    assert_same_memory(before, after);
}

#[test]
fn copy_on_write_sharing_comes_back_for_an_ordinary_user() {
    let (d, exe, ids) = test_user_dir("cowtree");
    let (stop, ck) = (d.join("stop"), d.join("ckpt"));
    let mut c = setpriv_test_user(&exe, ids);
    c.args([OsStr::new("256"), stop.as_os_str()]);
    let mut t = Target::spawn(c, &exe.to_string_lossy());
    ready(&mut t.stdout);
    let before = tree_memory(t.pid, "cowtree");
    dump_kill_as(&mut t, &ck, ids);

    let mut r = restore_as(&ck, ids);
    // The restorer runs the tree in new namespaces: it is found below the restorer.
    let after = restored_memory(r.pid, before);
    touch(&stop);
    finished(&mut r.stdout);
    let status = r.wait();
    assert!(status.success(), "restore as {TEST_USER}: {status:?}");
    assert_same_memory(before, after);
}
