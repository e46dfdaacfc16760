//! System-call helpers of the restore front end, shared by `fds.rs` and the rest, so
//! that none of them imports another for them.

use anyhow::{Context, Result};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// A system call's int result: the OS error, with `what` as its context, if negative.
pub fn cvt(r: libc::c_int, what: &str) -> Result<libc::c_int> {
    if r < 0 {
        Err(std::io::Error::last_os_error()).with_context(|| what.to_string())
    } else {
        Ok(r)
    }
}

/// Move `fd` to a number >= `min`, close-on-exec, and own it.
pub fn above(fd: OwnedFd, min: RawFd) -> Result<OwnedFd> {
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) returns a new descriptor we own.
    let n = cvt(
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min) },
        "duplicating a descriptor",
    )?;
    // SAFETY: `n` was just returned by a successful fcntl(F_DUPFD_CLOEXEC) (cvt rejects
    // negative results): a new descriptor that nothing else owns. `fd` keeps its own number
    // and closes it when dropped.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}
