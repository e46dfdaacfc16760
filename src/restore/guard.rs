//! All or nothing (docs/CONTRACT.md §6): whatever moment the restorer dies at, nothing
//! it created keeps running. Three layers cover the whole restore:
//!
//! - from creation until it is seized, every restored process has PR_SET_PDEATHSIG
//!   SIGKILL (set first thing in the child by `job::die_with_parent`, see `spawn`):
//!   when the restorer dies the root dies, then its children, and so on down the tree;
//! - from seizing until it is let go, each process is traced with PTRACE_O_EXITKILL;
//!   its death signal is reset while traced (to 0: the dump does not save a process's
//!   own parent-death signal yet, see issue 9) (see `finish`);
//! - while the processes are let go one after another, a [`Guard`]: a small process in
//!   a session of its own, holding a pidfd of every restored process, kills them all
//!   unless the restorer tells it that the last one runs ([`Guard::commit`]).
//!
//! In a new PID namespace the init is the restorer: if it dies, the kernel kills the
//! whole namespace, and the init itself dies with the front end until it commits.
//!
//! For tests, [`step`] names each point of a restore; `CKPT_FAULT_KILL_AT=<step>` makes
//! the restorer SIGKILL itself there (as CRIU's fault injection does).

use anyhow::{bail, Result};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A point of the restore: said on stderr with CKPT_TIMING; the restorer kills itself
/// there when CKPT_FAULT_KILL_AT names it.
pub fn step(what: &str) {
    log::debug!("restore step: {what}");
    if std::env::var_os("CKPT_TIMING").is_some() {
        eprintln!("ckpt: restore step: {what}");
    }
    if std::env::var_os("CKPT_FAULT_KILL_AT").is_some_and(|v| v == what) {
        // SAFETY: raise(2) / _exit(2) on ourselves. A namespace's init cannot be
        // killed from inside it; it dies as abruptly by _exit (no unwinding, no
        // destructors), and its namespace with it.
        unsafe {
            if libc::getpid() == 1 {
                libc::_exit(137);
            }
            libc::raise(libc::SIGKILL);
        }
    }
}

/// Kills every process of a restore unless committed. See the module doc.
pub struct Guard {
    pid: i32,
    commit_w: Option<OwnedFd>,
}

const SYS_PIDFD_SEND_SIGNAL: libc::c_long = 424;

impl Guard {
    /// Start the guard for `pids` (every process created by the restore, alive now).
    pub fn arm(pids: &[i32]) -> Result<Guard> {
        let mut pidfds = Vec::new();
        for &pid in pids {
            match ckpt_tracer::procinfo::pidfd_open(pid) {
                Ok(fd) => pidfds.push(fd),
                Err(e) => bail!("restored process {pid} is gone before it could run ({e})"),
            }
        }
        let mut p = [0; 2];
        // SAFETY: pipe2 fills two descriptors we then own.
        if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
            bail!(
                "creating the restore guard's pipe: {}",
                std::io::Error::last_os_error()
            );
        }
        // SAFETY: pipe2 succeeded (checked >= 0 above), so `p[0]` and `p[1]` are two fresh
        // descriptors that nothing else owns; each OwnedFd takes sole ownership of one.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };
        let raw: Vec<i32> = pidfds.iter().map(|f| f.as_raw_fd()).collect();
        let mut keep: Vec<i32> = raw.clone();
        keep.push(r.as_raw_fd());
        keep.sort_unstable();
        let name = c"ckpt-guard";
        // SAFETY: fork; the child makes only system calls on data prepared above.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            bail!(
                "starting the restore guard: {}",
                std::io::Error::last_os_error()
            );
        }
        if pid == 0 {
            // SAFETY: the forked child only makes system calls, reads data prepared before
            // the fork (`keep`, `raw`, `name`, a C string literal) and allocates nothing,
            // so it does not depend on locks another thread may have held at the fork.
            // prctl(PR_SET_NAME) reads the NUL-terminated `name`; read(2) writes one byte
            // into the local `b`; errno is read through `__errno_location`, valid for this
            // thread. close_range closes descriptors that OwnedFds in this copy of memory
            // still own (`w` among them), but the child never returns or drops them: it
            // always ends in `_exit`, which runs no destructors.
            unsafe {
                // Out of the restorer's session and group: a kill of the group that ran
                // `ckpt restore` must not take the guard with it.
                libc::setsid();
                libc::prctl(libc::PR_SET_NAME, name.as_ptr() as libc::c_ulong, 0, 0, 0);
                // Nothing of the caller's (its terminal, its pipes) stays open here.
                let mut next: u32 = 0;
                for &k in &keep {
                    if k as u32 > next {
                        libc::syscall(libc::SYS_close_range, next, k as u32 - 1, 0);
                    }
                    next = k as u32 + 1;
                }
                libc::syscall(libc::SYS_close_range, next, u32::MAX, 0);
                let mut b = 0u8;
                let n = loop {
                    let n = libc::read(r.as_raw_fd(), (&mut b as *mut u8).cast(), 1);
                    if n >= 0 || *libc::__errno_location() != libc::EINTR {
                        break n;
                    }
                };
                if n != 1 || b != b'C' {
                    for &fd in &raw {
                        libc::syscall(SYS_PIDFD_SEND_SIGNAL, fd, libc::SIGKILL, 0, 0);
                    }
                }
                libc::_exit(0);
            }
        }
        drop(r);
        Ok(Guard {
            pid,
            commit_w: Some(w),
        })
    }

    /// Every process runs: the guard lets them be and exits.
    pub fn commit(mut self) {
        if let Some(w) = self.commit_w.take() {
            // SAFETY: write one byte to our pipe.
            unsafe { libc::write(w.as_raw_fd(), b"C".as_ptr().cast(), 1) };
        }
        // Drop reaps it.
    }
}

impl Drop for Guard {
    /// Without a commit: the guard kills every process. Either way it is reaped here.
    fn drop(&mut self) {
        drop(self.commit_w.take());
        // SAFETY: reap our own child.
        unsafe { libc::waitpid(self.pid, std::ptr::null_mut(), 0) };
    }
}
