//! Restoring inside a new PID namespace, so that the original PIDs are free whatever
//! runs on the host (docs/CONTRACT.md §1, §2 `--pidns`): the front end forks an init process with
//! CLONE_NEWPID | CLONE_NEWNS (and CLONE_NEWUSER when not root, mapping the user to
//! itself, so that an ordinary user may do it and the job still sees its own uid). The
//! init mounts a /proc of the new namespace, which then agrees with the original PIDs,
//! runs the whole restore there (it holds every capability of its user namespace), and
//! stays as the namespace's reaper: it exits with the restored root's status.

use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PidNs {
    /// In the current namespace when the PIDs are free and ckpt may choose PIDs there,
    /// else in a new one.
    Auto,
    /// Always in a new PID namespace.
    Always,
    /// Never: fail if the original PIDs cannot be had here.
    Never,
}

/// Whether this process may choose PIDs in its PID namespace (clone3 set_tid needs
/// CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN in the owning user namespace).
pub fn may_choose_pids() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_CHECKPOINT_RESTORE: u32 = 40;
    eff & (1 << CAP_SYS_ADMIN | 1 << CAP_CHECKPOINT_RESTORE) != 0
}

/// A new PID namespace needs a new user namespace too when ckpt is not privileged.
pub fn needs_user_ns() -> bool {
    // SAFETY: plain getter.
    let euid = unsafe { libc::geteuid() };
    euid != 0 || !may_choose_pids()
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut p = [0; 2];
    // SAFETY: pipe2 fills two descriptors we then own.
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        bail!("creating a pipe: {}", std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded (checked >= 0 above), so `p[0]` and `p[1]` are two fresh
    // descriptors that nothing else owns; each OwnedFd takes sole ownership of one.
    Ok(unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) })
}

fn write_file(path: &str, data: &str) -> Result<()> {
    std::fs::write(path, data).with_context(|| format!("writing {path}"))
}

fn mount_proc() -> Result<()> {
    let none = c"none";
    let root = c"/";
    let proc_ = c"proc";
    let target = c"/proc";
    // SAFETY: mount(2) with valid C strings, inside our own mount namespace.
    unsafe {
        if libc::mount(
            none.as_ptr(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) < 0
        {
            bail!("making / private: {}", std::io::Error::last_os_error());
        }
        if libc::mount(
            proc_.as_ptr(),
            target.as_ptr(),
            proc_.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        ) < 0
        {
            bail!("mounting /proc: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// What the init reports to the front end: a line "ok" once every process runs, or
/// "error: ..." when the restore failed.
const OK: &str = "ok\n";

/// Run `inner` as init of a new PID namespace. `inner` restores the tree and returns
/// the root's exit code (after waiting for it, unless detached). Returns the code for
/// ckpt: the root's status, or 0 once everything runs when `detach`.
pub fn run_in_new_pidns(detach: bool, inner: impl FnOnce(&dyn Fn()) -> Result<i32>) -> Result<i32> {
    // SAFETY: plain getters.
    let (uid, gid, euid) = unsafe { (libc::getuid(), libc::getgid(), libc::geteuid()) };
    let _ = euid;
    let userns = needs_user_ns();
    let (go_r, go_w) = pipe()?;
    let (rep_r, rep_w) = pipe()?;
    let mut flags = (libc::CLONE_NEWPID | libc::CLONE_NEWNS) as u64;
    if userns {
        flags |= libc::CLONE_NEWUSER as u64;
    }
    let args = super::spawn::CloneArgs {
        flags,
        exit_signal: libc::SIGCHLD as u64,
        ..Default::default()
    };
    // SAFETY: clone3 without CLONE_VM behaves like fork; the front end is single-threaded.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const super::spawn::CloneArgs,
            std::mem::size_of::<super::spawn::CloneArgs>(),
        )
    };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        bail!(
            "creating a new PID namespace{}: {e}",
            if userns {
                " (in a new user namespace; check that unprivileged user namespaces are enabled)"
            } else {
                ""
            }
        );
    }
    if r == 0 {
        // ---- init of the new namespace ----
        // Until the restore commits, the namespace (and so the job) dies with the
        // front end; once it runs, it stays whatever becomes of the front end.
        // (The parent is outside the namespace, so getppid() says 0 here; a front end
        // that died before the prctl shows as the end of the "go" pipe instead.)
        // SAFETY: prctl and getppid on ourselves.
        unsafe { super::guard::die_with_parent(0) };
        drop(go_w);
        drop(rep_r);
        let rep = std::cell::RefCell::new(Some(std::fs::File::from(rep_w)));
        let mut b = [0u8; 1];
        if std::fs::File::from(go_r).read(&mut b).ok() != Some(1) {
            std::process::exit(137);
        }
        let report_ok = || {
            // SAFETY: prctl on ourselves.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, 0, 0, 0, 0) };
            if let Some(mut f) = rep.borrow_mut().take() {
                let _ = f.write_all(OK.as_bytes());
            }
            if detach {
                // The init stays as the namespace's reaper: it must not keep the
                // caller's terminal or pipes open (`ckpt restore --detach | cat`).
                detach_stdio();
            }
        };
        let code = match mount_proc().and_then(|_| inner(&report_ok)) {
            Ok(code) => code,
            Err(e) => {
                if let Some(mut f) = rep.borrow_mut().take() {
                    let _ = writeln!(f, "error: {}", format!("{e:#}").replace('\n', " "));
                }
                1
            }
        };
        std::process::exit(code);
    }
    let init = r as i32;
    // Everything prepared for the restore (the job's pipes and sockets among them) is
    // the init's now: a copy kept here would hold them open, and a reader in the job
    // would never see the end of a pipe.
    drop(inner);
    drop(go_r);
    drop(rep_w);
    if userns {
        let setup = (|| -> Result<()> {
            write_file(&format!("/proc/{init}/setgroups"), "deny")?;
            write_file(&format!("/proc/{init}/uid_map"), &format!("{uid} {uid} 1"))?;
            write_file(&format!("/proc/{init}/gid_map"), &format!("{gid} {gid} 1"))
        })();
        if let Err(e) = setup {
            // SAFETY: kill and reap our own child.
            unsafe {
                libc::kill(init, libc::SIGKILL);
                libc::waitpid(init, std::ptr::null_mut(), 0);
            }
            return Err(e.context("mapping the user into the new user namespace"));
        }
    }
    std::fs::File::from(go_w)
        .write_all(b"g")
        .context("starting the namespace init")?;
    let mut line = String::new();
    let mut rep = std::fs::File::from(rep_r);
    let mut b = [0u8; 1];
    while rep.read(&mut b).unwrap_or(0) == 1 {
        line.push(b[0] as char);
        if b[0] == b'\n' {
            break;
        }
    }
    if let Some(msg) = line.strip_prefix("error: ") {
        // SAFETY: reap our own child.
        unsafe { libc::waitpid(init, std::ptr::null_mut(), 0) };
        bail!("{}", msg.trim_end());
    }
    if line != OK {
        let code = super::wait_exit(init)?;
        bail!("the restore in a new PID namespace failed (its init exited with status {code})");
    }
    if detach {
        let _ = rep.as_raw_fd();
        return Ok(0);
    }
    forward_signals_to(init)?;
    super::wait_exit(init)
}

/// Point standard input, output and error at /dev/null.
pub fn detach_stdio() {
    let null = c"/dev/null";
    // SAFETY: open, dup2 and close on descriptors we own.
    unsafe {
        let fd = libc::open(null.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        if fd >= 0 {
            for target in 0..3 {
                libc::dup2(fd, target);
            }
            libc::close(fd);
        }
    }
}

/// SIGINT, SIGTERM and SIGHUP sent to us go to the namespace's init (which passes them
/// on to the job), as they would to the job itself without a namespace.
fn forward_signals_to(init: i32) -> Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    let mut mask = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        mask.add(s);
    }
    mask.thread_block().context("blocking signals")?;
    std::thread::spawn(move || loop {
        // SAFETY: sigwaitinfo on a set blocked in every thread; info is plain data.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: sigwaitinfo(2) reads the sigset `mask` (a nix SigSet, i.e. a valid libc
        // sigset_t, moved into this thread) and writes one siginfo_t into `info`, a local
        // of exactly that type; the set is blocked in every thread (blocked above, before
        // this thread was spawned, so it inherits the mask).
        let sig = unsafe { libc::sigwaitinfo(mask.as_ref(), &mut info) };
        // Signals from a process, not the terminal's (those reach the job's group).
        if sig > 0 && info.si_code <= 0 {
            // SAFETY: kill(2) of our own child.
            unsafe { libc::kill(init, sig) };
        }
    });
    Ok(())
}
