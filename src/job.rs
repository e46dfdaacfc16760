//! Running a job, shared by the restore front end and the agent (and so importing
//! neither): a process as init of a new PID namespace, a wait status as an exit code,
//! and SIGINT/SIGTERM/SIGHUP sent to ckpt passed on to the job.
//!
//! A new PID namespace (docs/CONTRACT.md §1, §2 `--pidns`; `ckpt run --pidns`) makes
//! the original PIDs free whatever runs on the host: the front end forks an init
//! process with CLONE_NEWPID | CLONE_NEWNS (and CLONE_NEWUSER when not root, mapping
//! the user to itself, so that an ordinary user may do it and the job still sees its
//! own uid). The init mounts a /proc of the new namespace, which then agrees with the
//! original PIDs, runs what it is given there (it holds every capability of its user
//! namespace), and stays as the namespace's reaper: it exits with the job's status.

use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};

/// The kernel's `struct clone_args` (clone3), version 2.
#[repr(C)]
#[derive(Default)]
pub struct CloneArgs {
    pub flags: u64,
    pub pidfd: u64,
    pub child_tid: u64,
    pub parent_tid: u64,
    pub exit_signal: u64,
    pub stack: u64,
    pub stack_size: u64,
    pub tls: u64,
    pub set_tid: u64,
    pub set_tid_size: u64,
    pub cgroup: u64,
}

/// clone3 without CLONE_VM or a stack, which behaves like fork: the child's pid (0 in
/// the child).
///
/// # Safety
/// As fork: the caller is single-threaded, or the child makes only async-signal-safe
/// calls until it execs or exits.
pub unsafe fn fork_with(args: &CloneArgs) -> std::io::Result<i32> {
    debug_assert!(args.flags & libc::CLONE_VM as u64 == 0 && args.stack == 0);
    // SAFETY: `args` is a live, fully initialised clone_args of the size passed; without
    // CLONE_VM the child gets its own copy of memory, so neither side's stack is shared.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r as i32)
    }
}

/// Make the calling process die when its parent does, as long as it is part of an
/// unfinished restore. `parent` is the PID it must have; if the parent is already
/// gone, exit at once. Async-signal-safe (used between clone and exec).
///
/// # Safety
/// Only system calls; may be called in a child of a multi-threaded process.
pub unsafe fn die_with_parent(parent: i32) {
    libc::prctl(
        libc::PR_SET_PDEATHSIG,
        libc::SIGKILL as libc::c_ulong,
        0,
        0,
        0,
    );
    if libc::getppid() != parent {
        libc::_exit(137);
    }
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
    // SAFETY: pipe2 just returned these two descriptors, which nothing else owns.
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

/// Run `inner` as init of a new PID namespace. `inner` starts the job (restores the
/// tree, or launches a command), calls `report_ok` once it runs, and returns its exit
/// code (after waiting for it, unless detached). Returns the code for ckpt: the job's
/// status, or 0 once everything runs when `detach`.
pub fn run_in_new_pidns(detach: bool, inner: impl FnOnce(&dyn Fn()) -> Result<i32>) -> Result<i32> {
    run_in_new_pidns_then(detach, false, inner, |_| {})
}

/// [`run_in_new_pidns`], calling `running` with the init's PID (as seen here) once
/// `inner` reported that everything runs; with `new_ipc`, in a new IPC namespace too.
pub fn run_in_new_pidns_then(
    detach: bool,
    new_ipc: bool,
    inner: impl FnOnce(&dyn Fn()) -> Result<i32>,
    running: impl FnOnce(i32),
) -> Result<i32> {
    // SAFETY: plain getters.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let userns = needs_user_ns();
    let (go_r, go_w) = pipe()?;
    let (rep_r, rep_w) = pipe()?;
    let mut flags = (libc::CLONE_NEWPID | libc::CLONE_NEWNS) as u64;
    if userns {
        flags |= libc::CLONE_NEWUSER as u64;
    }
    if new_ipc {
        flags |= libc::CLONE_NEWIPC as u64;
    }
    let args = CloneArgs {
        flags,
        exit_signal: libc::SIGCHLD as u64,
        ..Default::default()
    };
    // SAFETY: the front end is single-threaded here (signal forwarding starts after).
    let r = unsafe { fork_with(&args) };
    if let Err(e) = r {
        bail!(
            "creating a new PID namespace{}: {e}",
            if userns {
                " (in a new user namespace; check that unprivileged user namespaces are enabled)"
            } else {
                ""
            }
        );
    }
    let r = r.unwrap_or(0);
    if r == 0 {
        // ---- init of the new namespace ----
        // Until the restore commits, the namespace (and so the job) dies with the
        // front end; once it runs, it stays whatever becomes of the front end.
        // (The parent is outside the namespace, so getppid() says 0 here; a front end
        // that died before the prctl shows as the end of the "go" pipe instead.)
        // SAFETY: prctl and getppid on ourselves.
        unsafe { die_with_parent(0) };
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
    let init = r;
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
        let code = wait_exit(init)?;
        bail!("the restore in a new PID namespace failed (its init exited with status {code})");
    }
    running(init);
    if detach {
        return Ok(0);
    }
    forward_signals_to(init)?;
    wait_exit(init)
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

/// A wait status as an exit code: the code, or 128 + the signal.
pub fn status_code(st: i32) -> i32 {
    if libc::WIFEXITED(st) {
        libc::WEXITSTATUS(st)
    } else if libc::WIFSIGNALED(st) {
        128 + libc::WTERMSIG(st)
    } else {
        1
    }
}

/// Wait for our child `pid` and turn its end into ckpt's exit code.
pub fn wait_exit(pid: i32) -> Result<i32> {
    let mut st = 0;
    loop {
        // SAFETY: waitpid on our own child.
        let r = unsafe { libc::waitpid(pid, &mut st, 0) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e).context("waiting for the restored process");
        }
        break;
    }
    Ok(status_code(st))
}

/// SIGINT, SIGTERM and SIGHUP sent to ckpt, to be passed on to the job as they would
/// reach the job itself without ckpt in between. The one place that forwards them: the
/// agent polls [`Signals::as_fd`] in its loop, the front end of a new PID namespace
/// forwards them to the init with [`forward_signals_to`].
pub struct Signals {
    fd: nix::sys::signalfd::SignalFd,
}

impl Signals {
    /// Block the three signals in the calling thread (threads started afterwards
    /// inherit the mask) and read them from a descriptor from now on.
    pub fn catch() -> Result<Signals> {
        use nix::sys::signal::{SigSet, Signal};
        use nix::sys::signalfd::{SfdFlags, SignalFd};
        let mut mask = SigSet::empty();
        for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
            mask.add(s);
        }
        mask.thread_block().context("blocking signals")?;
        // The init of a PID namespace never receives a signal whose action is the
        // default one: give them a handler (they stay blocked and are read from the
        // signalfd, so it never runs).
        extern "C" fn ignore(_: libc::c_int) {}
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            // SAFETY: installing a handler that does nothing.
            unsafe { libc::signal(s, ignore as *const () as libc::sighandler_t) };
        }
        let fd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)?;
        Ok(Signals { fd })
    }

    /// Readable when a signal waits.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Pass every waiting signal on to `pid`: those sent by a process; the terminal
    /// already sent its own (Ctrl-C) to the job's process group.
    pub fn forward_to(&self, pid: i32) {
        while let Ok(Some(info)) = self.fd.read_signal() {
            if info.ssi_code <= 0 {
                // SAFETY: kill(2) of the job we run (our child).
                unsafe { libc::kill(pid, info.ssi_signo as i32) };
            }
        }
    }
}

/// Forward SIGINT, SIGTERM and SIGHUP sent to us to `pid` from a thread of their own,
/// for as long as ckpt lives (while the main thread waits for `pid`).
pub fn forward_signals_to(pid: i32) -> Result<()> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let signals = Signals::catch()?;
    std::thread::spawn(move || loop {
        let mut fds = [PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => signals.forward_to(pid),
            Err(_) => break,
        }
    });
    Ok(())
}
