//! pidfds survive a checkpoint (issue 9): `testdata/pidfds` holds pidfds of a running
//! child (one description on two descriptors with different close-on-exec flags, and a
//! second O_NONBLOCK one, watched by an epoll instance), of a zombie child, of a child
//! already reaped and of its own thread (PIDFD_THREAD). After `dump --kill` and a
//! restore each refers to what it did: the zombie's status is collected through its
//! pidfd, the reaped one refuses signals, and the running child is killed and collected
//! through its pidfds, waking the epoll. As root and as an ordinary user. A pidfd of a
//! process outside the checkpoint is refused, naming it, and the program runs on.
mod common;

use common::*;

fn pidfds_come_back(as_user: bool) {
    let d;
    let (prog, ids) = if as_user {
        let (dir, exe, ids) = test_user_dir("pidfds");
        d = dir;
        (exe, Some(ids))
    } else {
        d = tempdir();
        (testdata("pidfds"), None)
    };
    let (stop, ck) = (d.join("stop"), d.join("ckpt"));
    let mut c = match ids {
        Some(ids) => setpriv_test_user(&prog, ids),
        None => command(&prog),
    };
    c.arg(&stop);
    if as_user {
        c.arg("newns");
    }
    let mut t = Target::spawn(c, &prog.to_string_lossy());
    t.stdout.expect_line("ready");
    // Its children die with it; the restore needs their PIDs free too.
    let kids = children(t.pid);
    assert_eq!(kids.len(), 2, "a running and a zombie child: {kids:?}");
    let mut r = match ids {
        Some(ids) => {
            dump_kill_as(&mut t, &ck, ids);
            kids.iter().for_each(|&k| wait_pid_free(k));
            restore_as(&ck, ids)
        }
        None => {
            t.dump_kill(&ck);
            kids.iter().for_each(|&k| wait_pid_free(k));
            let mut r = Restored::of(&ck, &t);
            r.assert_same_pid();
            touch(&stop);
            r.stdout.expect_line("pidfds ok");
            r.wait_success();
            return;
        }
    };
    touch(&stop);
    r.stdout.expect_line("pidfds ok");
    r.stderr
        .expect("the warning about the exited process's pidfd", |l| {
            l.contains("the pidfd of an exited process comes from the restorer's PID namespace")
        });
    assert!(r.wait().success(), "restore as {TEST_USER}");
}

#[test]
fn pidfds_come_back_as_root() {
    pidfds_come_back(false);
}

#[test]
fn pidfds_come_back_for_an_ordinary_user() {
    pidfds_come_back(true);
}

#[test]
fn a_pidfd_of_a_process_outside_is_refused() {
    let d = tempdir();
    let (stop, ck) = (d.join("stop"), d.join("ckpt"));
    let mut t = Target::start("pidfds", &[stop.as_os_str(), os("outside")]);
    t.stdout.expect_line("ready");
    let err = dump_refused(t.pid, &ck, "a pidfd of a process outside");
    let me = std::process::id();
    assert!(
        err.contains(&format!("process {}", t.pid))
            && err.contains(&format!("pidfd of process {me}")),
        "the refusal names the holder and the process its pidfd refers to: {err}"
    );
    assert_running_not_stopped(t.pid);
    touch(&stop);
    t.stdout.expect_line("pidfds ok");
    assert!(t.wait().success());
}
