//! signalfd(2): the set of signals it accepts. Dump: fdinfo's `sigmask`. Restore: a new
//! signalfd on that mask (the signals themselves are pending in the process, restored
//! with it). O_NONBLOCK is in the fd flags.

use super::{owned, set_status_flags, Dump, Kind, RestoreResult, Shared};
use crate::error::Result;
use crate::proc;
use crate::state::{Fd, FdKind};
use std::os::fd::OwnedFd;

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
    d.is_anon("[signalfd]")
        .then(|| signalfd_of(d.pid, d.fd, d.info))
}

fn signalfd_of(pid: i32, fd: i32, info: &proc::FdInfo) -> Result<FdKind> {
    Ok(FdKind::Signalfd {
        mask: proc::parse_signalfd(&info.text).map_err(super::bad(pid, fd))?,
    })
}

fn restore(_pid: i32, fd: &Fd, _shared: &mut Shared) -> Option<RestoreResult<OwnedFd>> {
    match fd.kind {
        FdKind::Signalfd { mask } => Some(signalfd(mask, fd.flags)),
        _ => None,
    }
}

fn describe(kind: &FdKind) -> Option<String> {
    match kind {
        FdKind::Signalfd { mask } => Some(format!("signalfd mask {mask:#x}")),
        _ => None,
    }
}

fn signalfd(mask: u64, flags: i32) -> RestoreResult<OwnedFd> {
    // SAFETY: signalfd4(2) reads an 8-byte kernel sigset from `&mask`, a local u64 alive
    // for the call, and writes nothing.
    let s = unsafe {
        libc::syscall(
            libc::SYS_signalfd4,
            -1,
            &mask as *const u64,
            8usize,
            libc::SFD_CLOEXEC,
        )
    };
    // A descriptor (or -1) always fits a c_int.
    let s = owned(s as libc::c_int, "creating a signalfd")?;
    set_status_flags(&s, flags)?;
    Ok(s)
}
