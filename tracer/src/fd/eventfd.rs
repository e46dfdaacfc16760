//! eventfd(2): a 64-bit counter, and whether it counts as a semaphore (EFD_SEMAPHORE).
//! Dump: fdinfo's `eventfd-count` and `eventfd-semaphore`. Restore: a new eventfd
//! with that counter. O_NONBLOCK is in the fd flags.

use super::{owned, set_status_flags, Dump, Kind, RestoreError, RestoreResult, Shared};
use crate::error::Result;
use crate::proc;
use crate::state::{Fd, FdKind};
use std::os::fd::{AsRawFd, OwnedFd};

pub const KIND: Kind = Kind {
    dump,
    dump_process: None,
    dump_tree: None,
    restore,
    finish: None,
    late: None,
    describe,
};

fn dump(d: &mut Dump) -> Option<Result<FdKind>> {
    d.is_anon("[eventfd]")
        .then(|| eventfd_of(d.pid, d.fd, d.info))
}

fn eventfd_of(pid: i32, fd: i32, info: &proc::FdInfo) -> Result<FdKind> {
    let e = proc::parse_eventfd(&info.text).map_err(super::bad(pid, fd))?;
    Ok(FdKind::Eventfd {
        count: e.count,
        // Older kernels do not show it: taken as a plain counter.
        semaphore: e.semaphore.unwrap_or(false),
    })
}

fn restore(_pid: i32, fd: &Fd, _shared: &mut Shared) -> Option<RestoreResult<OwnedFd>> {
    match fd.kind {
        FdKind::Eventfd { count, semaphore } => Some(eventfd(count, semaphore, fd.flags)),
        _ => None,
    }
}

fn describe(kind: &FdKind) -> Option<String> {
    match kind {
        FdKind::Eventfd { count, .. } => Some(format!("eventfd count {count}")),
        _ => None,
    }
}

fn eventfd(count: u64, semaphore: bool, flags: i32) -> RestoreResult<OwnedFd> {
    let mut efd_flags = libc::EFD_CLOEXEC;
    if semaphore {
        efd_flags |= libc::EFD_SEMAPHORE;
    }
    // The count may exceed eventfd()'s unsigned int: start at 0 and add it with a write.
    // SAFETY: eventfd(2) takes two integers and touches no memory of ours.
    let e = owned(
        unsafe { libc::eventfd(0, efd_flags) },
        "creating an eventfd",
    )?;
    if count > 0 {
        let b = count.to_ne_bytes();
        // SAFETY: write(2) reads exactly 8 bytes from `b`, a local `[u8; 8]`; `e` is our own
        // open eventfd.
        if unsafe { libc::write(e.as_raw_fd(), b.as_ptr().cast(), 8) } != 8 {
            return Err(RestoreError::msg(format!(
                "setting an eventfd counter to {count}: {}",
                std::io::Error::last_os_error()
            )));
        }
    }
    set_status_flags(&e, flags)?;
    Ok(e)
}
