//! Zombies keep their process groups and sessions (issue 9, process tree): a zombie
//! that led a group of its own, one that led a session, and one in its parent's group
//! are zombies in the same group and session after `dump --kill` and a restore, and
//! their parent reaps them with their exit codes.
mod common;

use common::*;

#[test]
fn zombies_keep_their_groups_and_sessions() {
    let d = tempdir();
    let (stop, ck) = (d.join("stop"), d.join("ckpt"));
    let mut t = Target::start("zombies", &[stop.as_os_str()]);
    let zombies: Vec<i32> = t.stdout.expect_prefix("zombies ")["zombies ".len()..]
        .split(' ')
        .map(|p| p.parse().unwrap())
        .collect();
    t.stdout.expect_line("ready");
    t.dump_kill(&ck);
    // The killed parent's zombies go to init, which reaps them: then their PIDs are
    // free for the restore in this namespace.
    for &z in &zombies {
        wait_pid_free(z);
    }

    let mut r = Restored::of(&ck, &t);
    r.assert_same_pid();
    touch(&stop);
    r.stdout.expect_line("zombies ok");
    r.wait_success();
}
