//! Creating the process with its original PID (clone3 with set_tid), giving it its
//! descriptors, cwd, umask, rlimits and personality, and exec'ing the loader in it.
//! Everything the child does is prepared beforehand: it only makes system calls.

use super::fds::Install;
use crate::job::CloneArgs;
use anyhow::{bail, Result};
use ckpt_format::state::Zombie;
use ckpt_plan::zerocopy::IntoBytes;
use ckpt_plan::Ready;
use std::ffi::CString;
use std::os::fd::{AsRawFd, RawFd};

/// How a restored process enters its process group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pgid {
    /// Keep the group it inherits from its parent.
    Inherit,
    /// Lead a group of its own (setpgid(0, 0)).
    Lead,
    /// Join the group of this (already restored) leader.
    Join(i32),
}

/// What the child must do before it becomes the loader.
pub struct ChildSetup {
    pub pid: i32,
    /// setsid() first.
    pub session_leader: bool,
    /// A descriptor (of the restorer, open in the child until it installs its own) on
    /// the pty slave it takes as controlling terminal (TIOCSCTTY) right after setsid,
    /// before it creates its children, which inherit it; and the foreground group it
    /// gives the terminal once its children made that group.
    pub ctty: Option<(RawFd, i32)>,
    pub pgid: Pgid,
    pub installs: Vec<Install>,
    /// Descriptors the loader needs (plan, image, status, map files, exe), kept open
    /// across exec.
    pub loader_fds: Vec<RawFd>,
    pub status_fd: RawFd,
    pub loader_exe_fd: RawFd,
    pub argv: Vec<CString>,
    pub cwd: CString,
    /// A descriptor of ours on the new directory to start in instead of `cwd`, when the
    /// saved working directory had been removed (ckpt_tracer::attr::cwd).
    pub cwd_fd: Option<RawFd>,
    pub umask: u32,
    pub rlimits: Vec<(i32, libc::rlimit64)>,
    pub personality: u32,
    /// Keep CAP_CHECKPOINT_RESTORE across the exec of the loader (ambient), which needs
    /// it to create threads with their TIDs, and CAP_SETPCAP, which the credentials
    /// group needs to give the threads their saved bounding set and securebits; set in a
    /// user namespace ckpt made, where the job's uid is not 0. The front end gives the
    /// threads their saved capabilities (or drops these) before the job resumes.
    pub ambient_checkpoint_cap: bool,
}

const CAP_CHECKPOINT_RESTORE: u32 = 40;
const CAP_SETPCAP: u32 = 8;

/// Raise CAP_CHECKPOINT_RESTORE and CAP_SETPCAP into the inheritable and ambient sets.
///
/// # Safety
/// No memory precondition: capget/capset only access the local header and the
/// two-element data array, laid out as the kernel's version-3 ABI (0x2008_0522) wants.
/// Call it only in the forked child about to exec the loader: an ambient capability
/// survives exec, so raising it anywhere else would leak it into later programs.
unsafe fn raise_ambient_checkpoint_cap() -> bool {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let mut h = Header {
        version: 0x2008_0522,
        pid: 0,
    };
    let mut d = [Data::default(); 2];
    if libc::syscall(libc::SYS_capget, &mut h, d.as_mut_ptr()) < 0 {
        return false;
    }
    d[1].inheritable |= 1 << (CAP_CHECKPOINT_RESTORE - 32);
    d[0].inheritable |= 1 << CAP_SETPCAP;
    if libc::syscall(libc::SYS_capset, &h, d.as_ptr()) < 0 {
        return false;
    }
    [CAP_CHECKPOINT_RESTORE, CAP_SETPCAP].iter().all(|&c| {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_RAISE,
            c as libc::c_ulong,
            0,
            0,
        ) == 0
    })
}

fn child_fail(status_fd: RawFd, what: &str) -> ! {
    let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    let r = Ready::new(errno.max(1) as u64, 100, 0, (0, 0), what.as_bytes());
    let bytes = r.as_bytes();
    // SAFETY: async-signal-safe calls only; `bytes` is a live buffer of its length.
    unsafe {
        libc::write(status_fd, bytes.as_ptr().cast(), bytes.len());
        libc::_exit(126)
    }
}

/// Create the whole tree: process 0 as our child; every process creates its own
/// children (and zombies) before it becomes its loader, so parent links are the saved
/// ones. Returns the PID of the root. A process that fails reports it through its
/// status pipe and exits.
pub fn spawn_tree(
    setups: &[&ChildSetup],
    children: &[Vec<usize>],
    zombies: &[Zombie],
) -> Result<i32> {
    spawn(setups, children, zombies, 0)
}

fn clone_with_pid(pid: i32) -> std::io::Result<i32> {
    let tid: i32 = pid;
    let args = CloneArgs {
        exit_signal: libc::SIGCHLD as u64,
        set_tid: &tid as *const i32 as u64,
        set_tid_size: 1,
        ..Default::default()
    };
    // SAFETY: the front end is single-threaded here, so the child may run ordinary code
    // until it execs.
    unsafe { crate::job::fork_with(&args) }
}

/// A zombie: a child that exits at once with the saved wait status, and that its
/// restored parent will reap.
fn spawn_zombie(z: &Zombie) -> Result<()> {
    match clone_with_pid(z.pid) {
        // SAFETY: this is the child of clone_with_pid (a fork); it only makes
        // async-signal-safe calls and allocates nothing: setsid/setpgid/getpgid take
        // integers, setrlimit64 reads the local `nocore`,
        // sigemptyset and sigprocmask use the local `set` (an all-zero sigset_t is a valid
        // value, and sigemptyset initialises it anyway) with a null old-set,
        // signal/kill/getpid take integers, and it always ends in `_exit` (or dies of the
        // signal), running no destructors.
        Ok(0) => unsafe {
            // Its saved group and session (checked with everything else before the
            // tree resumes, see checks::groups_as_saved): a leader leads again; a
            // member of another group than its parent's joins it if it exists.
            if z.sid == z.pid {
                libc::setsid();
            } else if z.pgid == z.pid {
                libc::setpgid(0, 0);
            } else if z.pgid != libc::getpgid(0) {
                libc::setpgid(0, z.pgid);
            }
            let st = z.wait_status;
            if libc::WIFSIGNALED(st) {
                let sig = libc::WTERMSIG(st);
                let nocore = libc::rlimit64 {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                libc::setrlimit64(libc::RLIMIT_CORE, &nocore);
                libc::signal(sig, libc::SIG_DFL);
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
                libc::kill(libc::getpid(), sig);
            }
            libc::_exit(libc::WEXITSTATUS(st))
        },
        Ok(child) => {
            // Wait until it has exited, not reaping it (WNOWAIT: it stays the zombie its
            // restored parent reaps): its group and session are checked later
            // (checks::groups_as_saved), and a child that has not run its setsid yet —
            // seen on a loaded machine — shows its parent's.
            loop {
                // SAFETY: siginfo_t is plain data; all-zero bytes are a valid value.
                let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
                // SAFETY: waitid(2) on our own child, writing into the local `info`.
                let r = unsafe {
                    libc::waitid(
                        libc::P_PID,
                        child as libc::id_t,
                        &mut info,
                        libc::WEXITED | libc::WNOWAIT,
                    )
                };
                if r == 0 {
                    break;
                }
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EINTR) {
                    bail!("waiting for zombie process {} to exit: {e}", z.pid);
                }
            }
            Ok(())
        }
        Err(e) => bail!("creating zombie process {}: {e}", z.pid),
    }
}

/// Fork the child with PID `setup.pid` and exec the loader in it. Returns in the parent.
fn spawn(
    setups: &[&ChildSetup],
    children: &[Vec<usize>],
    zombies: &[Zombie],
    idx: usize,
) -> Result<i32> {
    let setup = setups[idx];
    let tid: i32 = setup.pid;
    let mut keep: Vec<RawFd> = setup
        .installs
        .iter()
        .map(|i| i.target)
        .chain(setup.loader_fds.iter().copied())
        .chain(std::iter::once(setup.loader_exe_fd))
        .collect();
    keep.sort_unstable();
    keep.dedup();
    let argv_ptrs: Vec<*const libc::c_char> = setup
        .argv
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    let empty = c"";

    // SAFETY: plain getter.
    let parent = unsafe { libc::getpid() };
    let r = clone_with_pid(tid);
    if let Err(e) = r {
        match e.raw_os_error() {
            Some(libc::EEXIST) => bail!(
                "PID {tid} is in use by another process; restore needs the original PID free"
            ),
            Some(libc::EPERM) => bail!(
                "creating a process with its original PID {tid} needs CAP_CHECKPOINT_RESTORE (run as root; PID namespaces for ordinary users come later)"
            ),
            _ => bail!("creating a process with PID {tid}: {e}"),
        }
    }
    let r = r.unwrap_or(0);
    if r > 0 {
        return Ok(r);
    }
    // ---- child ----
    // SAFETY: this is the child of clone_with_pid (a fork without CLONE_VM). Every pointer
    // passed below points into data built before the fork and still alive in this copy
    // (`setup`'s C strings and rlimits, `argv_ptrs` and `envp` NULL-terminated, `empty`),
    // and the block never returns: it ends in execveat or in child_fail's `_exit`, so the
    // OwnedFds that close_range closes here are never dropped. Unlike a forked child of a
    // multi-threaded process, it also allocates (format!, and the Vecs of the recursive
    // `spawn` of its own children), which is sound only because the front end is
    // single-threaded while it builds the tree (see clone_with_pid): no other thread can hold the
    // allocator's lock.
    unsafe {
        // Until the restore commits, this process dies with its parent (see guard).
        crate::job::die_with_parent(parent);
        let sfd = setup.status_fd;
        if setup.session_leader && libc::setsid() < 0 {
            child_fail(sfd, "creating the saved session (setsid)");
        }
        if let Some((t, _)) = setup.ctty {
            if libc::ioctl(t, libc::TIOCSCTTY, 0) < 0 {
                child_fail(sfd, "taking the saved controlling terminal (TIOCSCTTY)");
            }
        }
        let pg = match setup.pgid {
            Pgid::Inherit => 0,
            Pgid::Lead => libc::setpgid(0, 0),
            Pgid::Join(g) => libc::setpgid(0, g),
        };
        if pg < 0 && !setup.session_leader {
            child_fail(sfd, "joining the saved process group (setpgid)");
        }
        for &c in &children[idx] {
            if let Err(e) = spawn(setups, children, zombies, c) {
                let msg = format!("{e:#}");
                child_fail(sfd, &msg);
            }
        }
        for z in zombies.iter().filter(|z| z.ppid == setup.pid) {
            if let Err(e) = spawn_zombie(z) {
                let msg = format!("{e:#}");
                child_fail(sfd, &msg);
            }
        }
        if let Some((t, fg)) = setup.ctty {
            if fg != 0 && fg != setup.pid {
                // Its leader (a descendant, created above) makes the group in its own
                // time: wait for it, a bounded while.
                let mut tries = 0;
                while libc::kill(-fg, 0) < 0 && tries < 5000 {
                    let ms = libc::timespec {
                        tv_sec: 0,
                        tv_nsec: 1_000_000,
                    };
                    libc::nanosleep(&ms, std::ptr::null_mut());
                    tries += 1;
                }
            }
            if fg != 0 && libc::ioctl(t, libc::TIOCSPGRP, &fg) < 0 {
                child_fail(sfd, "making the saved foreground group (TIOCSPGRP)");
            }
        }
        for i in &setup.installs {
            if let Some(src) = &i.src {
                if libc::dup2(src.as_raw_fd(), i.target) < 0 {
                    child_fail(sfd, "installing a descriptor");
                }
            }
        }
        if let Some(fd) = setup.cwd_fd {
            if libc::fchdir(fd) < 0 {
                child_fail(sfd, "changing to the new working directory");
            }
        }
        // Close everything else (the restorer's own descriptors).
        let mut next: u32 = 0;
        for &k in &keep {
            if (k as u32) > next {
                libc::syscall(libc::SYS_close_range, next, k as u32 - 1, 0);
            }
            next = k as u32 + 1;
        }
        libc::syscall(libc::SYS_close_range, next, u32::MAX, 0);
        for &fd in &setup.loader_fds {
            if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                child_fail(sfd, "keeping a loader descriptor open");
            }
        }
        if setup.cwd_fd.is_none() && libc::chdir(setup.cwd.as_ptr()) < 0 {
            child_fail(sfd, "changing to the saved working directory");
        }
        libc::umask(setup.umask as libc::mode_t);
        for (res, lim) in &setup.rlimits {
            if libc::prlimit64(0, *res as _, lim, std::ptr::null_mut()) < 0 {
                child_fail(sfd, "setting a resource limit");
            }
        }
        if libc::personality(setup.personality as libc::c_ulong) < 0 {
            child_fail(sfd, "setting the personality");
        }
        if setup.ambient_checkpoint_cap && !raise_ambient_checkpoint_cap() {
            child_fail(
                sfd,
                "keeping CAP_CHECKPOINT_RESTORE and CAP_SETPCAP for the loader",
            );
        }
        libc::syscall(
            libc::SYS_execveat,
            setup.loader_exe_fd,
            empty.as_ptr(),
            argv_ptrs.as_ptr(),
            envp.as_ptr(),
            libc::AT_EMPTY_PATH,
        );
        child_fail(sfd, "executing the loader");
    }
}
