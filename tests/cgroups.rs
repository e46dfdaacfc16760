//! cgroups survive a checkpoint (issue 9, the `cgroup` attribute group): a process in
//! a cgroup v2 group of its own is back in it after `dump --kill` and a restore; when
//! that group is gone by then, the restore warns, naming it, and the process runs in
//! the restorer's cgroup.
mod common;

use common::*;
use std::fs;
use std::path::PathBuf;

/// Where cgroup v2 is mounted (/sys/fs/cgroup, or /sys/fs/cgroup/unified on a hybrid
/// system).
fn cgroup2_root() -> PathBuf {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap();
    text.lines()
        .find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            (post.split_whitespace().next() == Some("cgroup2"))
                .then(|| PathBuf::from(pre.split_whitespace().nth(4).unwrap()))
        })
        .expect("cgroup v2 is not mounted on this machine: this test needs it")
}

fn v2_path(pid: i32) -> String {
    fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_string))
        .expect("a cgroup v2 line")
}

/// A cgroup of its own, removed (with whatever is left in it) at the end.
struct Cgroup(PathBuf, String);

impl Cgroup {
    fn new(tag: &str) -> Cgroup {
        let name = format!("ckpt-test-{tag}-{}", std::process::id());
        let dir = cgroup2_root().join(&name);
        fs::create_dir_all(&dir).unwrap();
        Cgroup(dir, format!("/{name}"))
    }
    fn enter(&self, pid: i32) {
        fs::write(self.0.join("cgroup.procs"), pid.to_string()).unwrap();
    }
    fn remove(&self) {
        let _ = fs::remove_dir(&self.0);
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        self.remove();
    }
}

fn checkpointed_counter(d: &TestDir, cg: &Cgroup) -> (Target, PathBuf) {
    let (out, stop, ck) = (d.join("out"), d.join("stop"), d.join("ckpt"));
    let mut t = Target::start("counter", &[out.as_os_str(), stop.as_os_str(), os("20")]);
    cg.enter(t.pid);
    assert_eq!(v2_path(t.pid), cg.1);
    t.dump_kill(&ck);
    (t, ck)
}

#[test]
fn a_process_goes_back_into_its_cgroup() {
    assert_root("the cgroup test (it makes a cgroup)");
    let d = tempdir();
    let cg = Cgroup::new("back");
    let (t, ck) = checkpointed_counter(&d, &cg);
    let mut r = Restored::of(&ck, &t);
    r.assert_same_pid();
    // A line from the restored process: it runs, so its restore is complete.
    r.stdout.expect_number_at_least(0);
    assert_eq!(v2_path(t.pid), cg.1, "the restored process's cgroup");
    kill_if_running(t.pid, &t.marker);
}

#[test]
fn a_cgroup_that_is_gone_is_a_warning() {
    assert_root("the cgroup test (it makes a cgroup)");
    let d = tempdir();
    let cg = Cgroup::new("gone");
    let (t, ck) = checkpointed_counter(&d, &cg);
    cg.remove();
    let mut r = Restored::of(&ck, &t);
    r.assert_same_pid();
    r.stdout.expect_number_at_least(0);
    assert_eq!(v2_path(t.pid), v2_path(std::process::id() as i32));
    kill_if_running(t.pid, &t.marker);
    r.stderr.read_to_end();
    let warned = r
        .stderr
        .seen()
        .iter()
        .any(|l| l.contains("warning") && l.contains(&cg.1) && l.contains(&t.pid.to_string()));
    assert!(warned, "a warning names the cgroup: {:?}", r.stderr.seen());
}
