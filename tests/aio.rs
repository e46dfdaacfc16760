//! Linux native aio contexts (io_setup) across a checkpoint (issue 9): the program
//! finds its ring at the same address (the context id), with the same size, head and
//! tail, and goes on submitting and reaping reads through it.
mod common;

use common::*;

fn ring_line(t: &mut Target) -> String {
    let ring = t.stdout.expect_prefix("ring ");
    t.stdout.expect_line("ready");
    ring
}

#[test]
fn an_aio_context_comes_back_with_its_ring() {
    let d = tempdir();
    let (stop, ck, file) = (d.join("stop"), d.join("ckpt"), d.join("data"));
    let mut t = Target::start("aioring", &[file.as_os_str(), stop.as_os_str()]);
    let ring = ring_line(&mut t);
    let addr = ring
        .split(' ')
        .nth(1)
        .unwrap()
        .trim_start_matches("0x")
        .to_string();
    t.dump_kill(&ck);

    let mut r = Restored::of(&ck, &t);
    r.assert_same_pid();
    r.stdout.expect_prefix("tick ");
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", t.pid)).unwrap();
    assert!(
        maps.lines()
            .any(|l| l.starts_with(&addr) && l.contains("[aio]")),
        "the ring is mapped at {addr} again: {maps}"
    );
    touch(&stop);
    r.stdout.expect_line("aio ok");
    r.wait_success();
}

#[test]
fn an_aio_context_comes_back_for_an_ordinary_user() {
    let (d, exe, ids) = test_user_dir("aioring");
    let (stop, ck, file) = (d.join("stop"), d.join("ckpt"), d.join("data"));
    let mut c = setpriv_test_user(&exe, ids);
    c.args([file.as_os_str(), stop.as_os_str()]);
    let mut t = Target::spawn(c, &exe.to_string_lossy());
    ring_line(&mut t);
    dump_kill_as(&mut t, &ck, ids);

    let mut r = restore_as(&ck, ids);
    r.stdout.expect_prefix("tick ");
    touch(&stop);
    r.stdout.expect_line("aio ok");
    let status = r.wait();
    assert!(status.success(), "restore as {TEST_USER}: {status:?}");
}
