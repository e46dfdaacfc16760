//! SysV IPC objects survive a checkpoint (issue 9, the `sysvipc` attribute group): a
//! message queue holding messages, a semaphore set with its values and a shared memory
//! segment attached in the process, with their keys, ids, modes and contents.
//! `testdata/sysvipc hold` makes them, is checkpointed with `--kill` and restored, then
//! checks from inside, with the ids and the address it kept, that it finds them as it
//! left them ("sysvipc ok").
//!
//! Case A: the objects are removed before the restore (as a reboot would): the restore
//! makes them again with the same ids, keys, modes and contents, and attaches the
//! segment at its old address. Case B: they still exist (SysV objects outlive the
//! killed process): the restore uses them as they are and makes nothing (their change
//! times do not move). As an ordinary user, who cannot choose the id of a new object:
//! existing objects are used; gone ones make the restore fail, saying why.
//!
//! What must fail: a restore when the saved id is taken by another object (one line
//! naming it, before any process exists); a dump of a process holding SEM_UNDO
//! adjustments, which nothing can read (refused, the process runs on).
mod common;

use common::*;
use std::ffi::OsStr;
use std::fs;
use std::path::Path;

struct Ids {
    msg: i32,
    sem: i32,
    shm: i32,
}

/// Parses "ids msg=<id> sem=<id> shm=<id> addr=<hex>".
fn ids_of(line: &str) -> Ids {
    let field = |name: &str| -> i32 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
            .parse()
            .unwrap()
    };
    Ids {
        msg: field("msg"),
        sem: field("sem"),
        shm: field("shm"),
    }
}

/// The line of /proc/sysvipc/NAME of the object `id` (column 1), if it exists.
fn sysvipc_line(name: &str, id: i32) -> Option<Vec<String>> {
    fs::read_to_string(format!("/proc/sysvipc/{name}"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().map(String::from).collect::<Vec<_>>())
        .find(|f| f.get(1).and_then(|v| v.parse::<i32>().ok()) == Some(id))
}

fn ipcrm(flag: &str, id: i32) {
    let out = run(command("ipcrm").args([flag, &id.to_string()]));
    assert_success(&out, &format!("ipcrm {flag} {id}"));
}

/// Removes what a failed test left (quietly: most are gone already).
struct RemoveOnDrop(Vec<(&'static str, i32)>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        for (flag, id) in &self.0 {
            let _ = command("ipcrm").args([*flag, &id.to_string()]).output();
        }
    }
}

fn remove_all(ids: &Ids) -> RemoveOnDrop {
    RemoveOnDrop(vec![("-q", ids.msg), ("-s", ids.sem), ("-m", ids.shm)])
}

fn start_hold(dir: &Path) -> (Target, Ids) {
    let mut t = Target::start("sysvipc", &[os("hold"), dir.as_os_str()]);
    let ids = ids_of(&t.stdout.expect_prefix("ids "));
    t.stdout.expect_line("ready");
    (t, ids)
}

fn check_restored(r: &mut Restored, dir: &Path) {
    r.assert_same_pid();
    touch(&dir.join("go"));
    r.stdout.expect_line("sysvipc ok");
    r.wait_success();
}

#[test]
fn removed_objects_come_back_with_their_ids_and_contents() {
    let d = tempdir();
    let ck = d.join("ckpt");
    let (mut t, ids) = start_hold(d.path());
    let _cleanup = remove_all(&ids);
    t.dump_kill(&ck);
    // SysV objects outlive the process; remove them, as a reboot would.
    for (name, flag, id) in [
        ("msg", "-q", ids.msg),
        ("sem", "-s", ids.sem),
        ("shm", "-m", ids.shm),
    ] {
        assert!(
            sysvipc_line(name, id).is_some(),
            "{name} {id} is gone after the kill"
        );
        ipcrm(flag, id);
    }
    let mut r = Restored::of(&ck, &t);
    check_restored(&mut r, d.path());
    for (name, id) in [("msg", ids.msg), ("sem", ids.sem), ("shm", ids.shm)] {
        assert!(
            sysvipc_line(name, id).is_none(),
            "the program did not remove {name} {id}"
        );
    }
}

/// The change time of the object, column `col` of its /proc/sysvipc line.
fn ctime(name: &str, id: i32, col: usize) -> String {
    sysvipc_line(name, id).unwrap_or_else(|| panic!("{name} {id} does not exist"))[col].clone()
}

#[test]
fn existing_objects_are_used_as_they_are() {
    let d = tempdir();
    let ck = d.join("ckpt");
    let (mut t, ids) = start_hold(d.path());
    let _cleanup = remove_all(&ids);
    t.dump_kill(&ck);
    // msg: ... ctime is column 13; sem: column 9; shm: column 13.
    let before = [
        ctime("msg", ids.msg, 13),
        ctime("sem", ids.sem, 9),
        ctime("shm", ids.shm, 13),
    ];
    // A second apart at least, so that a change would show in the seconds.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let mut r = Restored::of(&ck, &t);
    r.assert_same_pid();
    let after = [
        ctime("msg", ids.msg, 13),
        ctime("sem", ids.sem, 9),
        ctime("shm", ids.shm, 13),
    ];
    assert_eq!(
        before, after,
        "the restore changed (or made again) the existing objects"
    );
    check_restored(&mut r, d.path());
}

#[test]
fn an_id_taken_by_another_object_fails_the_restore() {
    let d = tempdir();
    let ck = d.join("ckpt");
    let (mut t, ids) = start_hold(d.path());
    let mut cleanup = remove_all(&ids);
    t.dump_kill(&ck);
    ipcrm("-q", ids.msg);
    let out =
        run(command(testdata("sysvipc")).args(["take", "msg", &ids.msg.to_string(), "0x5bffff00"]));
    assert_success(&out, "sysvipc take");
    let took: i32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .strip_prefix("took ")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        took, ids.msg,
        "could not make another queue with the saved id"
    );
    cleanup.0.push(("-q", took));
    let err = assert_error(&ckpt(["restore".as_ref(), ck.as_os_str()]), "ckpt restore");
    assert!(
        err.contains(&format!("message queue {}", ids.msg)) && err.contains("another"),
        "the error does not name the queue and what took its id: {err}"
    );
    assert!(
        cmdline(t.pid).is_none(),
        "a process runs after the failed restore"
    );
    // The other queue is left alone.
    let line = sysvipc_line("msg", ids.msg).expect("the other queue is gone");
    assert_eq!(line[0], format!("{}", 0x5bffff00u32 as i32), "{line:?}");
}

#[test]
fn sem_undo_adjustments_refuse_the_dump() {
    let d = tempdir();
    let mut t = Target::start("sysvipc", &[os("undo"), d.path().as_os_str()]);
    let line = t.stdout.expect_prefix("ids ");
    let sem: i32 = line.trim_start_matches("ids sem=").parse().unwrap();
    let _cleanup = RemoveOnDrop(vec![("-s", sem)]);
    t.stdout.expect_line("ready");
    let err = dump_refused(t.pid, &d.join("ckpt"), "dump of a process with SEM_UNDO");
    assert!(
        err.contains(&t.pid.to_string())
            && err.contains("SEM_UNDO")
            && err.contains(&sem.to_string()),
        "the refusal does not name the process, the set and SEM_UNDO: {err}"
    );
    assert_running_not_stopped(t.pid);
    touch(&d.join("go"));
    t.stdout.expect_line("undo done");
}

#[test]
fn an_ordinary_user_uses_existing_objects_and_cannot_make_them_again() {
    let (d, exe, ids_u) = test_user_dir("sysvipc");
    let start = || {
        let mut c = setpriv_test_user(&exe, ids_u);
        c.args([OsStr::new("hold"), d.path().as_os_str()]);
        let mut t = Target::spawn(c, &exe.to_string_lossy());
        let ids = ids_of(&t.stdout.expect_prefix("ids "));
        t.stdout.expect_line("ready");
        (t, ids)
    };

    // The objects still exist: used as they are.
    let ck = d.join("ck1");
    let (mut t, ids) = start();
    let _cleanup = remove_all(&ids);
    dump_kill_as(&mut t, &ck, ids_u);
    let mut r = restore_as(&ck, ids_u);
    touch(&d.join("go"));
    r.stdout.expect_line("sysvipc ok");
    assert!(
        r.wait().success(),
        "restore as {TEST_USER}: {:?}",
        r.stderr.seen()
    );
    fs::remove_file(d.join("go")).unwrap();

    // Gone: the restore cannot give them their ids, and says so.
    let ck = d.join("ck2");
    let (mut t, ids) = start();
    let _cleanup2 = remove_all(&ids);
    dump_kill_as(&mut t, &ck, ids_u);
    ipcrm("-q", ids.msg);
    let mut r = restore_as(&ck, ids_u);
    let status = r.wait();
    r.stderr.read_to_end();
    let err = r.stderr.seen().join("\n");
    assert_eq!(status.code(), Some(1), "restore as {TEST_USER}: {err}");
    assert!(
        err.contains(&format!("message queue {}", ids.msg)) && err.contains("msg_next_id"),
        "the error does not say why the queue cannot be made again: {err}"
    );
    assert!(cmdline(t.pid).is_none_or(|c| !c.contains("sysvipc")));
}

/// A restore that made the objects again leaves the process their last user (sender,
/// receiver, semaphore changer, attacher): a second checkpoint of the restored process
/// saves them again, and a second restore after they are removed once more works.
#[test]
fn objects_made_again_are_saved_again_by_the_next_checkpoint() {
    let d = tempdir();
    let (ck1, ck2) = (d.join("ck1"), d.join("ck2"));
    let (mut t, ids) = start_hold(d.path());
    let _cleanup = remove_all(&ids);
    t.dump_kill(&ck1);
    let rm_all = || {
        ipcrm("-q", ids.msg);
        ipcrm("-s", ids.sem);
        ipcrm("-m", ids.shm);
    };
    rm_all();
    let mut r = Restored::of(&ck1, &t);
    r.assert_same_pid();
    for (name, col, id) in [
        ("msg", 5, ids.msg),
        ("msg", 6, ids.msg),
        ("shm", 5, ids.shm),
    ] {
        let line = sysvipc_line(name, id).unwrap_or_else(|| panic!("{name} {id} not made"));
        assert_eq!(
            line[col],
            t.pid.to_string(),
            "{name} {id} column {col}: {line:?}"
        );
    }
    dump(t.pid, &ck2, true);
    r.wait();
    wait_pid_free(t.pid);
    rm_all();
    let mut r = Restored::of(&ck2, &t);
    check_restored(&mut r, d.path());
}

/// Two processes of a tree share a queue (the child sent to it) and a segment (both
/// attached): each image holds what its process used, the restore makes each object
/// once, and both processes find one segment and one queue again.
#[test]
fn objects_shared_in_a_tree_are_made_once() {
    let d = tempdir();
    let ck = d.join("ckpt");
    let mut t = Target::start("sysvipc", &[os("pair"), d.path().as_os_str()]);
    let line = t.stdout.expect_prefix("ids ");
    let field = |name: &str| -> i32 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .unwrap()
            .parse()
            .unwrap()
    };
    let (msg, shm, child) = (field("msg"), field("shm"), field("child"));
    let _cleanup = RemoveOnDrop(vec![("-q", msg), ("-m", shm)]);
    t.stdout.expect_line("ready");
    t.dump_kill(&ck);
    wait_pid_free(child);
    // The segment both attached is stored once.
    let info = ckpt(["info".as_ref(), ck.as_os_str()]);
    assert_success(&info, "ckpt info");
    let info = String::from_utf8_lossy(&info.stdout);
    let stored = format!("sysvipc: shared memory segment {shm} (key");
    let named = format!("sysvipc: shared memory segment {shm}: stored with another process");
    assert_eq!(info.matches(&stored).count(), 1, "{info}");
    assert_eq!(info.matches(&named).count(), 1, "{info}");
    ipcrm("-q", msg);
    ipcrm("-m", shm);
    let mut r = Restored::of(&ck, &t);
    r.assert_same_pid();
    touch(&d.join("go"));
    r.stdout.expect_line("pair ok");
    r.wait_success();
}

/// IPC_PRIVATE objects, and a segment removed (IPC_RMID) while attached: gone with the
/// killed process's detach, it is made again with its id and content, attached, and
/// removed again, so that the program's last detach still makes it go.
#[test]
fn a_segment_removed_while_attached_comes_back_and_goes_with_its_last_detach() {
    let d = tempdir();
    let ck = d.join("ckpt");
    let mut t = Target::start("sysvipc", &[os("private"), d.path().as_os_str()]);
    let line = t.stdout.expect_prefix("ids ");
    let field = |name: &str| -> i32 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .unwrap()
            .parse()
            .unwrap()
    };
    let (msg, shm) = (field("msg"), field("shm"));
    let _cleanup = RemoveOnDrop(vec![("-q", msg), ("-m", shm)]);
    t.stdout.expect_line("ready");
    t.dump_kill(&ck);
    assert!(
        sysvipc_line("shm", shm).is_none(),
        "the removed segment outlived the kill"
    );
    ipcrm("-q", msg);
    let mut r = Restored::of(&ck, &t);
    r.assert_same_pid();
    touch(&d.join("go"));
    r.stdout.expect_line("private ok");
    r.wait_success();
}
