//! epoll(7): an instance and its interest list. Dump: fdinfo's `tfd:` lines (target
//! number, events, data), each checked to still name the registered file (by inode and
//! device, and with kcmp(KCMP_EPOLL_TFD), since anonymous-inode files share one inode).
//! Restore: a new instance; its entries are added in the late step, by
//! `epoll_ctl(EPOLL_CTL_ADD)` injected into the restored process itself with the target
//! numbers, once every descriptor is in place, so the process's later EPOLL_CTL_MOD/DEL
//! on them work. Events already reported are not remembered: an edge-triggered entry
//! whose file is ready reports it once more, and a disabled EPOLLONESHOT entry comes back
//! disabled. O_NONBLOCK is in the fd flags.

use super::{owned, set_status_flags, Dump, Kind, RestoreError, RestoreResult, Shared};
use crate::error::{Result, TraceError};
use crate::freeze::FrozenThread;
use crate::inject::{injected, Injector};
use crate::proc;
use crate::state::{EpollEntry, Fd, FdKind, ProcessState};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;

pub const KIND: Kind = Kind {
    dump,
    dump_process: None,
    dump_tree: None,
    restore,
    finish: None,
    late: Some(late),
    describe,
};

fn dump(d: &mut Dump) -> Option<Result<FdKind>> {
    d.is_anon("[eventpoll]")
        .then(|| epoll_of(d.pid, d.fd, d.info))
}

fn epoll_of(pid: i32, fd: i32, info: &proc::FdInfo) -> Result<FdKind> {
    let unsupported = |kind: String| TraceError::UnsupportedFd { pid, fd, kind };
    let mut entries = Vec::new();
    for e in proc::parse_epoll(&info.text).map_err(super::bad(pid, fd))? {
        let (tfd, events, data) = (e.tfd, e.events, e.data);
        // The entry is keyed by (file, fd number): the number must still name that
        // file in this process, or the entry cannot be added back. Kernels before
        // 3.18 show no ino/sdev: then only kcmp checks it.
        let ino = e.ino;
        let sdev = e.sdev.map(proc::kdev_to_dev);
        let toff = entries.iter().filter(|e: &&EpollEntry| e.fd == tfd).count();
        match std::fs::metadata(proc::path(pid, &format!("fd/{tfd}"))) {
            Ok(md)
                if ino.is_none_or(|i| i == md.ino())
                    && sdev.is_none_or(|d| d == md.dev())
                    && same_epoll_target(pid, fd, tfd, toff) != Some(false) => {}
            Ok(_) => {
                return Err(unsupported(format!(
                    "epoll entry for fd {tfd}, which now names another file (the watched file was closed under that number, or belongs to another process)"
                )))
            }
            Err(_) => {
                return Err(unsupported(format!(
                    "epoll entry for fd {tfd}, which is not open in the process (closed while still registered, or a descriptor of another process)"
                )))
            }
        }
        entries.push(EpollEntry {
            fd: tfd,
            events,
            data,
        });
    }
    entries.sort_by_key(|e| e.fd);
    Ok(FdKind::Epoll { entries })
}

/// Whether the file registered in epoll `epfd` under number `tfd` (the `toff`-th such
/// entry) is the file open at `tfd`: kcmp(KCMP_EPOLL_TFD). Anonymous-inode files all
/// share one inode, so fdinfo's `ino` cannot tell them apart. None: kcmp is not
/// available (CONFIG_KCMP off).
fn same_epoll_target(pid: i32, epfd: i32, tfd: i32, toff: usize) -> Option<bool> {
    const KCMP_EPOLL_TFD: libc::c_long = 7;
    #[repr(C)]
    struct Slot {
        efd: u32,
        tfd: u32,
        toff: u32,
    }
    let slot = Slot {
        efd: epfd as u32,
        tfd: tfd as u32,
        toff: toff as u32,
    };
    // SAFETY: kcmp reads the slot struct, which lives across the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            pid,
            pid,
            KCMP_EPOLL_TFD,
            tfd as libc::c_long,
            &slot as *const Slot,
        )
    };
    match r {
        0 => Some(true),
        1..=3 => Some(false),
        // ENOENT: no such entry or descriptor; other errors: no kcmp here.
        _ if io::Error::last_os_error().raw_os_error() == Some(libc::ENOENT) => Some(false),
        _ => None,
    }
}

fn restore(_pid: i32, fd: &Fd, _shared: &mut Shared) -> Option<RestoreResult<OwnedFd>> {
    match fd.kind {
        FdKind::Epoll { .. } => Some((|| {
            // SAFETY: epoll_create1(2) takes only flags and returns a new descriptor or -1.
            let e = owned(
                unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) },
                "creating an epoll instance",
            )?;
            set_status_flags(&e, fd.flags)?;
            Ok(e)
        })()),
        _ => None,
    }
}

const EPOLL_CTL_ADD: u64 = 1;

/// Add the saved entries of every epoll instance of the restored process, from inside it.
fn late(inj: &Injector, leader: &mut FrozenThread, state: &ProcessState) -> RestoreResult<()> {
    for fd in &state.fds {
        if let FdKind::Epoll { entries } = &fd.kind {
            add_entries(inj, leader, state.pid, fd.fd, entries)?;
        }
    }
    Ok(())
}

/// Add `entries` to the restored instance `epfd` of process `pid`.
fn add_entries(
    inj: &Injector,
    leader: &mut FrozenThread,
    pid: i32,
    epfd: i32,
    entries: &[EpollEntry],
) -> RestoreResult<()> {
    for e in entries {
        // struct epoll_event is packed on x86-64: u32 events, u64 data.
        let mut ev = [0u8; 12];
        ev[..4].copy_from_slice(&e.events.to_le_bytes());
        ev[4..].copy_from_slice(&e.data.to_le_bytes());
        let r = injected(inj.syscall_with_buf(
            leader,
            libc::SYS_epoll_ctl,
            |a| [epfd as u64, EPOLL_CTL_ADD, e.fd as u64, a, 0, 0],
            &ev,
            &mut [],
        ));
        // EEXIST: the instance is shared with a process of the tree restored before,
        // which added this (file, number) entry already.
        match r {
            Err(err) if err.raw_os_error() == Some(libc::EEXIST) => {}
            Err(err) => {
                return Err(RestoreError::context(
                    format!(
                        "process {pid}: adding fd {} (events {:#x}) to epoll fd {epfd}",
                        e.fd, e.events
                    ),
                    err,
                ))
            }
            Ok(_) => {}
        }
    }
    Ok(())
}

fn describe(kind: &FdKind) -> Option<String> {
    match kind {
        FdKind::Epoll { entries } => Some(format!("epoll, {} entries", entries.len())),
        _ => None,
    }
}
