//! Creating the process with its original PID (clone3 with set_tid), giving it its
//! descriptors, cwd, umask, rlimits and personality, and exec'ing the loader in it.
//! Everything the child does is prepared beforehand: it only makes system calls.

use super::fds::Install;
use super::plan::layout::{Ready, READY_MAGIC};
use anyhow::{bail, Result};
use std::ffi::CString;
use std::os::fd::{AsRawFd, RawFd};

#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// What the child must do before it becomes the loader.
pub struct ChildSetup {
    pub pid: i32,
    pub installs: Vec<Install>,
    /// Descriptors the loader needs (plan, image, status, map files, exe), kept open
    /// across exec.
    pub loader_fds: Vec<RawFd>,
    pub status_fd: RawFd,
    pub loader_exe_fd: RawFd,
    pub argv: Vec<CString>,
    pub cwd: CString,
    pub umask: u32,
    pub rlimits: Vec<(i32, libc::rlimit64)>,
    pub personality: u32,
}

fn child_fail(status_fd: RawFd, what: &str) -> ! {
    let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    let mut r = Ready {
        magic: READY_MAGIC,
        error: errno.max(1) as u64,
        stage: 100,
        addr: 0,
        loader_start: 0,
        loader_end: 0,
        msg: [0; 80],
    };
    let n = what.len().min(79);
    r.msg[..n].copy_from_slice(&what.as_bytes()[..n]);
    // SAFETY: async-signal-safe calls only; the struct is plain data.
    unsafe {
        libc::write(
            status_fd,
            &r as *const Ready as *const libc::c_void,
            std::mem::size_of::<Ready>(),
        );
        libc::_exit(126)
    }
}

/// Fork the child with PID `setup.pid` and exec the loader in it. Returns in the parent.
pub fn spawn(setup: &ChildSetup) -> Result<i32> {
    let tid: i32 = setup.pid;
    let args = CloneArgs {
        exit_signal: libc::SIGCHLD as u64,
        set_tid: &tid as *const i32 as u64,
        set_tid_size: 1,
        ..Default::default()
    };
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

    // SAFETY: clone3 without CLONE_VM behaves like fork; the child below only makes
    // system calls on data prepared above, then execs or _exits.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if r < 0 {
        let e = std::io::Error::last_os_error();
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
    if r > 0 {
        return Ok(r as i32);
    }
    // ---- child ----
    unsafe {
        let sfd = setup.status_fd;
        for i in &setup.installs {
            if let Some(src) = &i.src {
                if libc::dup2(src.as_raw_fd(), i.target) < 0 {
                    child_fail(sfd, "installing a descriptor");
                }
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
        if libc::chdir(setup.cwd.as_ptr()) < 0 {
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
