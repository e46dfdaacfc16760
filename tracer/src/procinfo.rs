//! Per-process facts besides /proc text (read and parsed in [`crate::proc`], re-exported
//! here): rlimits and pidfds.

use crate::state::Rlimit;
use std::io;

pub fn rlimits(pid: i32) -> io::Result<Vec<Rlimit>> {
    let mut out = Vec::new();
    for res in 0..16 {
        let mut old = libc::rlimit64 {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: prlimit64 writes one struct.
        let r = unsafe { libc::prlimit64(pid, res as _, std::ptr::null(), &mut old) };
        if r < 0 {
            let e = io::Error::last_os_error();
            // prlimit of another user's process needs CAP_SYS_RESOURCE, which root may
            // lack (it does on these machines); /proc/PID/limits, readable to whoever
            // may trace the process, shows the same integers.
            if e.raw_os_error() == Some(libc::EPERM) {
                return rlimits_from_proc(pid);
            }
            return Err(e);
        }
        out.push(Rlimit {
            resource: res,
            cur: old.rlim_cur,
            max: old.rlim_max,
        });
    }
    Ok(out)
}

fn rlimits_from_proc(pid: i32) -> io::Result<Vec<Rlimit>> {
    let limits = crate::proc::limits(pid).map_err(|e| io::Error::other(e.to_string()))?;
    Ok(limits
        .into_iter()
        .enumerate()
        .map(|(res, (cur, max))| Rlimit {
            resource: res as _,
            cur,
            max,
        })
        .collect())
}

/// A pidfd for `pid` (pidfd_open, Linux 5.3+): names that process for good, whatever
/// PID is reused later.
pub fn pidfd_open(pid: i32) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open returns a descriptor we then own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor that nothing else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// Our own descriptor on the open file description behind `fd` of process `pid`
/// (pidfd_getfd, Linux 5.6+, allowed to its tracer). No new open: a lease on the file
/// is not broken, and the description's offset, locks and flags are the process's.
pub fn pidfd_getfd(pid: i32, fd: i32) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let pidfd = pidfd_open(pid)?;
    // SAFETY: pidfd_getfd takes integers and returns a descriptor we own.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `r` was just returned by a successful pidfd_getfd(2) (checked >= 0 above): a
    // new descriptor in this process that nothing else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(r as i32) })
}
