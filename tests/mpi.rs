//! MPI jobs on one node (issue 10): Open MPI's `mpirun -np 4` and MPICH's `mpiexec -n 4`
//! running testdata/mpi_allreduce.c (two Allreduce calls a round, one of 64 KiB, checked
//! by every rank; rank 0 writes a line per round with an order-sensitive hash of every
//! sum so far, at its own offset of a file it keeps open).
//!
//! Each job is checkpointed in the middle of its run, everything is killed, and the
//! restored job must end with exactly the file and the result of an uninterrupted run
//! (the hash is computed here): no round lost, none done twice, no wrong element. Both
//! ways a user checkpoints a job: `ckpt dump PID --kill` of the launcher (its whole tree:
//! the launcher, MPICH's hydra proxy, the ranks with their threads), and the coordinator
//! workflow (`ckpt run -- mpirun …`, `ckpt command c`, `ckpt command k`, the restart
//! script); as root and as an ordinary user. The launchers talk to their ranks over
//! loopback TCP and unix sockets, the ranks to each other over /dev/shm segments
//! (unlinked while open) and cross-memory attach.
mod common;

use common::*;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// Two shared cores and four ranks a job: one job at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const RANKS: u64 = 4;
const ROUNDS: u64 = 150;

#[derive(Clone, Copy, Debug)]
enum Mpi {
    Open,
    Mpich,
}

impl Mpi {
    /// The test program built for this implementation (testdata/Makefile builds it when
    /// the implementation's compiler wrapper is installed).
    fn program_name(self) -> &'static str {
        match self {
            Mpi::Open => "mpi_allreduce_ompi",
            Mpi::Mpich => "mpi_allreduce_mpich",
        }
    }

    fn package(self) -> &'static str {
        match self {
            Mpi::Open => "openmpi-bin and libopenmpi-dev",
            Mpi::Mpich => "mpich and libmpich-dev",
        }
    }

    /// The launcher and its options for RANKS ranks on this one node.
    fn launcher(self, root: bool) -> Vec<OsString> {
        let mut v: Vec<OsString> = match self {
            Mpi::Open => vec!["/usr/bin/mpirun.openmpi".into(), "--oversubscribe".into()],
            Mpi::Mpich => vec!["/usr/bin/mpiexec.mpich".into()],
        };
        if root && matches!(self, Mpi::Open) {
            v.push("--allow-run-as-root".into());
        }
        v.push(match self {
            Mpi::Open => "-np".into(),
            Mpi::Mpich => "-n".into(),
        });
        v.push(RANKS.to_string().into());
        assert!(
            Path::new(&v[0]).exists(),
            "{} is missing: install {} (.ci/deps does)",
            v[0].to_string_lossy(),
            self.package()
        );
        v
    }
}

/// Every process of the tree under `pid` (pid included).
fn tree(pid: i32) -> Vec<i32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        let kids = children(all[i]);
        all.extend(kids);
        i += 1;
    }
    all
}

/// The test's directory, the program to run (a copy the test user can run, for `user`)
/// and the user's ids.
fn setup(mpi: Mpi, user: bool) -> (TestDir, PathBuf, Option<(u32, u32)>) {
    let name = mpi.program_name();
    let built = testdata_dir().join(name);
    assert!(
        built.exists(),
        "{} was not built: install {} (.ci/deps does) and run `make testdata`",
        built.display(),
        mpi.package()
    );
    if user {
        let (d, exe, ids) = test_user_dir(name);
        (d, exe, Some(ids))
    } else {
        (tempdir(), testdata(name), None)
    }
}

/// `program` as the test user (setpriv) or as root, with HOME in the test's directory
/// (Open MPI looks there for its parameter files) and none of the coordinator variables.
fn command_as(
    ids: Option<(u32, u32)>,
    dir: &Path,
    program: impl AsRef<std::ffi::OsStr>,
) -> Command {
    let mut c = match ids {
        Some(ids) => setpriv_test_user(program, ids),
        None => command(program),
    };
    c.env("HOME", dir).current_dir(dir);
    clean_coord_env(&mut c);
    c
}

/// Waits until the job has done a few rounds (so the checkpoint falls in the middle of
/// the computation, not in MPI_Init), and that it has not finished.
fn wait_mid_run(progress: &Path) {
    wait_until("the MPI job to do 10 rounds", || {
        mpi_rounds_done(progress) >= 10
    });
    assert!(
        (mpi_rounds_done(progress) as u64) < ROUNDS,
        "the MPI job ended before the test could checkpoint it"
    );
}

/// The restored job's end: `result HASH` on its output, and the progress file exactly
/// as an uninterrupted run leaves it.
fn check_result(out: &mut Lines, progress: &Path) {
    let (text, hash) = mpi_expected_progress(RANKS, ROUNDS);
    out.expect_line(&format!("result {hash}"));
    let got = fs::read_to_string(progress).unwrap();
    assert!(
        got == text,
        "the progress file after the restored run differs from an uninterrupted run's:\n{}",
        first_difference(&got, &text)
    );
}

fn first_difference(got: &str, want: &str) -> String {
    for (n, (g, w)) in got.lines().zip(want.lines()).enumerate() {
        if g != w {
            return format!("line {}: got {g:?}, want {w:?}", n + 1);
        }
    }
    format!(
        "got {} lines, want {}",
        got.lines().count(),
        want.lines().count()
    )
}

/// `ckpt dump LAUNCHER --kill`, then `ckpt restore` (as the user who ran the job).
fn dump_and_restore(mpi: Mpi, user: bool) {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (d, prog, ids) = setup(mpi, user);
    let _sweep = Sweep::new(&d);
    let (progress, ck) = (d.join("progress"), d.join("ckpt"));
    let launcher = mpi.launcher(!user);
    let mut c = command_as(ids, d.path(), &launcher[0]);
    c.args(&launcher[1..])
        .arg(&prog)
        .arg(ROUNDS.to_string())
        .arg(&progress);
    let mut t = Target::spawn(c, &d.path().to_string_lossy());
    wait_mid_run(&progress);
    let pids = tree(t.pid);
    assert!(
        pids.len() > RANKS as usize,
        "the launcher {} should have its {RANKS} ranks below it: {pids:?}",
        t.pid
    );
    match ids {
        Some(ids) => dump_kill_as(&mut t, &ck, ids),
        None => {
            t.dump_kill(&ck);
        }
    }
    for p in &pids {
        wait_pid_free(*p);
    }
    let done = mpi_rounds_done(&progress);
    let mut r = match ids {
        Some(ids) => restore_as(&ck, ids),
        None => {
            let mut c = ckpt_cmd();
            c.arg("restore").arg(&ck);
            Target::spawn(c, &d.path().to_string_lossy())
        }
    };
    check_result(&mut r.stdout, &progress);
    let status = r.wait();
    assert!(
        status.success(),
        "ckpt restore of the {mpi:?} job (checkpointed after {done} rounds): {status:?}"
    );
}

/// `ckpt run -- LAUNCHER …` with its own coordinator, `ckpt command c` in the middle of
/// the run, the job runs on a little, `ckpt command k`, then the restart script; all as
/// the user who runs the job.
fn coordinator_workflow(mpi: Mpi, user: bool) {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (d, prog, ids) = setup(mpi, user);
    let _sweep = Sweep::new(&d);
    let progress = d.join("progress");
    let ck_dir = d.join("ckpts");
    fs::create_dir_all(&ck_dir).unwrap();
    if let Some(ids) = ids {
        chown_tree(&ck_dir, ids);
    }
    let port = free_port().to_string();
    let mut c = command_as(ids, d.path(), ckpt_bin());
    c.args(["run", "--coord-port", &port, "--ckpt-dir"])
        .arg(&ck_dir)
        .arg("--")
        .args(mpi.launcher(!user))
        .arg(&prog)
        .arg(ROUNDS.to_string())
        .arg(&progress);
    let mut agent = Target::spawn(c, &d.path().to_string_lossy());
    wait_mid_run(&progress);
    let job = children(agent.pid);
    assert_eq!(job.len(), 1, "ckpt run {} has one job: {job:?}", agent.pid);
    let pids = tree(job[0]);
    let command = |word: &str| {
        let mut c = command_as(ids, d.path(), ckpt_bin());
        c.args(["command", "--coord-port", &port, word]);
        run(&mut c)
    };
    let out = command("c");
    assert_success(&out, "ckpt command c");
    let at = mpi_rounds_done(&progress);
    wait_until("the job to run on after the checkpoint", || {
        mpi_rounds_done(&progress) >= at + 3
    });
    let out = command("k");
    assert_success(&out, "ckpt command k");
    agent.wait();
    for p in &pids {
        wait_pid_free(*p);
    }
    let script = ck_dir.join("ckpt_restart_script.sh");
    assert!(script.exists(), "no restart script in {}", ck_dir.display());
    let mut r = Target::spawn(
        command_as(ids, d.path(), &script),
        &d.path().to_string_lossy(),
    );
    check_result(&mut r.stdout, &progress);
    let status = r.wait();
    assert!(
        status.success(),
        "the restart script of the {mpi:?} job: {status:?}"
    );
}

#[test]
fn open_mpi_job_dumped_and_restored() {
    dump_and_restore(Mpi::Open, false);
}

#[test]
fn open_mpi_job_dumped_and_restored_by_an_ordinary_user() {
    dump_and_restore(Mpi::Open, true);
}

#[test]
fn mpich_job_dumped_and_restored() {
    dump_and_restore(Mpi::Mpich, false);
}

#[test]
fn mpich_job_dumped_and_restored_by_an_ordinary_user() {
    dump_and_restore(Mpi::Mpich, true);
}

#[test]
fn open_mpi_job_through_the_coordinator() {
    coordinator_workflow(Mpi::Open, false);
}

#[test]
fn open_mpi_job_through_the_coordinator_as_an_ordinary_user() {
    coordinator_workflow(Mpi::Open, true);
}

#[test]
fn mpich_job_through_the_coordinator() {
    coordinator_workflow(Mpi::Mpich, false);
}

#[test]
fn mpich_job_through_the_coordinator_as_an_ordinary_user() {
    coordinator_workflow(Mpi::Mpich, true);
}
