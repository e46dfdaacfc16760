//! madvise state and memory locks survive a checkpoint (issue 9, the `memory`
//! attribute group): `testdata/madvise` maps regions with MADV_DONTFORK,
//! MADV_WIPEONFORK, MADV_DONTDUMP, MADV_HUGEPAGE, MADV_NOHUGEPAGE, MADV_RANDOM,
//! MADV_SEQUENTIAL, mlock and mlock2(MLOCK_ONFAULT); after `dump --kill` and a
//! restore it finds each flag in its own smaps, its content intact, and a forked child
//! sees the fork advice at work.
mod common;

use common::*;

#[test]
fn madvise_state_and_locks_come_back() {
    let d = tempdir();
    let (stop, ck) = (d.join("stop"), d.join("ckpt"));
    let mut t = Target::start("madvise", &[stop.as_os_str()]);
    t.stdout.expect_line("ready");
    t.dump_kill(&ck);

    let mut r = Restored::of(&ck, &t);
    r.assert_same_pid();
    touch(&stop);
    r.stdout.expect_line("madvise ok");
    r.wait_success();
}
