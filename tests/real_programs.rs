//! Real programs: the seed's date.py under python3, a bash loop, a perl
//! loop and a JVM with several threads, each checkpointed, killed, restored,
//! and checked to continue with the next number under the same PID.
mod common;

use common::*;

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string()
}

/// Checks test.time as written by date.py: "today is", then
/// "<time>\t<n>\t<hostname>" for n = 1, 2, ... Returns the count.
fn check_test_time(lines: &[String], what: &str) -> usize {
    assert_eq!(
        lines.first().map(String::as_str),
        Some("today is"),
        "{what}: test.time:\n{}",
        lines.join("\n")
    );
    let host = hostname();
    for (i, line) in lines[1..].iter().enumerate() {
        let fields: Vec<&str> = line.split('\t').collect();
        assert!(
            fields.len() == 3 && !fields[0].is_empty() && fields[1] == (i + 1).to_string() && fields[2] == host,
            "{what}: line {} of test.time is {line:?}, expected \"<time>\\t{}\\t{host}\" (a reset, gap or duplicate?); \
             whole file:\n{}",
            i + 2,
            i + 1,
            lines.join("\n")
        );
    }
    lines.len() - 1
}

/// date.py (a faithful Python 3 port of the seed's program): the restored
/// interpreter goes on with the next number, no reset, no duplicate.
#[test]
fn python_date_py_continues() {
    const ITERATIONS: usize = 60;
    let d = tempdir();
    let ck = d.join("ckpt");
    let test_time = d.join("test.time");
    let script = testdata("date.py");
    let mut cmd = command("python3");
    cmd.arg(&script)
        .args([ITERATIONS.to_string(), "0.1".to_string()])
        .current_dir(d.path());
    cmd.env("PYTHONUNBUFFERED", "1"); // the port prints like the original; unbuffered so the test sees it
    let mut t = Target::spawn(cmd, &script.to_string_lossy());
    for _ in 0..3 {
        t.stdout.expect("a line from date.py", |_| true);
    }
    t.dump_kill(&ck);

    let before = file_lines(&test_time);
    let m = check_test_time(&before, "before restore");
    assert!(
        m < ITERATIONS,
        "date.py had finished all {ITERATIONS} iterations before the dump: nothing left to continue"
    );

    let mut r = Restored::of(&ck, &t);
    r.assert_same_pid();
    r.wait_success();

    let after = file_lines(&test_time);
    let k = check_test_time(&after, "after restore");
    assert_eq!(
        k, ITERATIONS,
        "date.py should have written {ITERATIONS} numbers in all"
    );
    assert_eq!(
        &after[..before.len()],
        &before[..],
        "lines written before the checkpoint changed"
    );
    // at the end date.py prints the whole file: the restored one did
    let out = r.stdout.seen();
    assert!(
        out.len() >= after.len() && out[out.len() - after.len()..] == after[..],
        "the restored date.py did not print test.time at the end; its stdout:\n{}",
        out.join("\n")
    );
}

/// Runs a loop script (bash or perl) that writes "<n> <cached pid> <real pid>"
/// lines to a file opened once in append mode, until a stop file exists.
fn loop_script_continues(interpreter: &str, script: &str) {
    let d = tempdir();
    let (out, stop, ck) = (d.join("out"), d.join("stop"), d.join("ckpt"));
    let path = testdata(script);
    let mut cmd = command(interpreter);
    cmd.arg(&path).arg(&out).arg(&stop).arg("0.05");
    // stdin stays an open pipe that nobody writes to (bash sleeps with read -t on it)
    let mut t = Target::spawn(cmd, &path.to_string_lossy());
    t.stdout.expect_line("ready");
    t.dump_kill(&ck);

    let pids = format!("{0} {0}", t.pid);
    let before = file_lines(&out);
    let m = assert_counting(&before, &pids, "before restore");

    let mut r = Restored::of(&ck, &t);
    r.assert_same_pid();
    wait_file_lines(&out, m + 10);
    touch(&stop);
    r.wait_success();
    r.stdout.expect_prefix("done ");

    let after = file_lines(&out);
    let k = assert_counting(&after, &pids, "after restore");
    assert!(k >= m + 10, "only {k} lines after the restore, {m} before");
}

#[test]
fn bash_loop_continues() {
    loop_script_continues("bash", "loop.sh");
}

#[test]
fn perl_loop_continues() {
    loop_script_continues("perl", "loop.pl");
}

/// A JVM (its own GC and compiler threads plus 4 workers) goes on ticking.
#[test]
fn java_threads_continue() {
    let d = tempdir();
    let (out, stop, ck) = (d.join("out"), d.join("stop"), d.join("ckpt"));
    testdata("JavaThreads.class");
    let mut cmd = command("java");
    cmd.arg("-Xmx256m")
        .arg("-cp")
        .arg(testdata_dir())
        .arg("JavaThreads")
        .arg(&out)
        .arg(&stop)
        .arg("4");
    let mut t = Target::spawn(cmd, "JavaThreads");
    t.stdout.expect_line("ready");
    let nthreads = tids(t.pid).len();
    assert!(nthreads > 5, "the JVM has only {nthreads} threads");
    t.dump_kill(&ck);

    let ticks = |lines: Vec<String>| -> Vec<String> {
        lines
            .into_iter()
            .map(|l| l.strip_prefix("tick ").map(str::to_string).unwrap_or(l))
            .collect()
    };
    let before = ticks(file_lines(&out));
    let m = assert_counting(&before, "", "ticks before restore");
    // (the JVM starts and stops compiler threads on its own: no exact count)
    let stored = json_u64(&info_process(&ck), "threads");
    assert!(
        stored > 5,
        "info: the checkpoint of the JVM has only {stored} threads"
    );

    let mut r = Restored::of(&ck, &t);
    r.assert_same_pid();
    r.stdout.expect_number_at_least(m as u64 + 10);
    touch(&stop);
    r.wait_success();
    assert!(
        r.stdout.seen().iter().any(|l| l.starts_with("java ok ")),
        "no verdict from the restored JVM: {:?}",
        r.stdout.seen()
    );
    let after = ticks(file_lines(&out));
    let k = assert_counting(&after, "", "ticks after restore");
    assert!(k >= m + 10, "only {k} ticks after the restore, {m} before");
}
