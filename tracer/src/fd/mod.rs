//! One home per descriptor kind (issue 8 item 1), as CRIU's `criu/eventfd.c`: each kind
//! module holds, side by side, its dump (fdinfo → [`FdKind`] variant), its restore (saved
//! variant + fd flags → a new descriptor with the same state) and its one-line
//! description for `ckpt info`. This module is the one dispatch they plug into: the
//! table [`KINDS`]. Adding a kind means adding one file and one line in [`KINDS`]
//! (docs/FDKINDS.md says which kinds have moved and the plan for the others).
//!
//! The dispatch is a table of [`Kind`] values (plain function pointers, like CRIU's
//! `struct fdtype_ops`) rather than a trait: the saved type is one enum, [`FdKind`],
//! owned by the format crate and versioned with its golden images, so a kind is a value
//! that recognises its variants, not a type of its own. A trait would need a unit type per
//! kind and a `dyn` registry for the same table, and generics would buy nothing: every
//! call site handles whatever kind the image holds.
//!
//! The /proc text of each kind is still parsed in [`crate::proc`] (all /proc parsing stays
//! in that one module); a kind module turns the parsed fields into its saved variant.
//! This module imports neither `files.rs` nor `fdkinds.rs`: they import it.

use crate::error::{Result, TraceError};
use crate::proc;
use crate::state::{Fd, FdKind};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

pub mod epoll;
pub mod eventfd;
pub mod inotify;
pub mod signalfd;
pub mod timerfd;

/// What one descriptor kind provides. Each function but `dump` answers `None` for a saved
/// variant that is not its own.
pub struct Kind {
    /// The name after `anon_inode:` in the descriptor's /proc link, e.g. `[eventfd]`.
    pub anon_name: &'static str,
    /// From the process's fdinfo to the saved variant (the process is frozen).
    pub dump: fn(pid: i32, fd: i32, info: &proc::FdInfo) -> Result<FdKind>,
    /// A new descriptor (close-on-exec, owned by the restorer) with the saved state and
    /// status flags of descriptor `fd` of process `pid`.
    pub restore: fn(pid: i32, fd: &Fd) -> Option<std::result::Result<OwnedFd, RestoreError>>,
    /// What can only be done once the restored process exists and every descriptor of it
    /// is in place, from inside it, while it is still stopped (epoll's entries).
    pub late: Option<LateFn>,
    /// Its one-line description for `ckpt info`.
    pub describe: fn(kind: &FdKind) -> Option<String>,
}

/// The late step of a kind: `None` for a saved variant that is not its own.
pub type LateFn = fn(
    inj: &crate::inject::Injector,
    leader: &mut crate::freeze::FrozenThread,
    pid: i32,
    fd: &Fd,
) -> Option<std::result::Result<(), RestoreError>>;

/// Every kind that has its own module. One line per kind.
pub static KINDS: &[Kind] = &[
    eventfd::KIND,
    timerfd::KIND,
    signalfd::KIND,
    inotify::KIND,
    epoll::KIND,
];

/// The kind of an `anon_inode:NAME` descriptor, if it has moved here.
pub fn by_anon_name(name: &str) -> Option<&'static Kind> {
    KINDS.iter().find(|k| k.anon_name == name)
}

/// Recreate descriptor `fd` of process `pid`; `None`: its kind has no module here yet.
pub fn restore(pid: i32, fd: &Fd) -> Option<std::result::Result<OwnedFd, RestoreError>> {
    KINDS.iter().find_map(|k| (k.restore)(pid, fd))
}

/// The late step for descriptor `fd` of the restored process `pid`, if its kind has one.
pub fn late(
    inj: &crate::inject::Injector,
    leader: &mut crate::freeze::FrozenThread,
    pid: i32,
    fd: &Fd,
) -> Option<std::result::Result<(), RestoreError>> {
    KINDS
        .iter()
        .filter_map(|k| k.late)
        .find_map(|late| late(inj, leader, pid, fd))
}

/// The one-line description of a saved kind; `None`: its kind has no module here yet.
pub fn describe(kind: &FdKind) -> Option<String> {
    KINDS.iter().find_map(|k| (k.describe)(kind))
}

/// A failed restore step: what was being done, and the error underneath (if any). Its
/// source chain is what an `anyhow` context chain showed before the move, so the
/// messages are unchanged.
#[derive(Debug, thiserror::Error)]
#[error("{what}")]
pub struct RestoreError {
    what: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl RestoreError {
    /// An error with its whole message in `what`.
    pub fn msg(what: impl Into<String>) -> Self {
        RestoreError {
            what: what.into(),
            source: None,
        }
    }

    /// `what` failed because of `source`.
    pub fn context(
        what: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        RestoreError {
            what: what.into(),
            source: Some(source.into()),
        }
    }
}

/// The fdinfo of descriptor `fd` did not parse.
fn bad(pid: i32, fd: i32) -> impl Fn(proc::Bad) -> TraceError {
    move |b| b.at(pid, &proc::fdinfo_path(pid, fd))
}

/// A system call's descriptor result, owned; a negative result is the OS error, with
/// `what` as its context.
fn owned(r: libc::c_int, what: &str) -> std::result::Result<OwnedFd, RestoreError> {
    if r < 0 {
        return Err(RestoreError::context(what, std::io::Error::last_os_error()));
    }
    // SAFETY: `r` is a non-negative result of a system call that returns a new descriptor
    // (every caller passes one straight from eventfd/timerfd_create/signalfd4): a fresh
    // descriptor that nothing else owns, so the OwnedFd is its only owner.
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}

/// Give `fd` the status flags of the saved `flags` that F_SETFL can set (O_NONBLOCK,
/// O_APPEND, O_ASYNC, O_DIRECT, O_NOATIME).
pub fn set_status_flags(fd: &OwnedFd, flags: i32) -> std::result::Result<(), RestoreError> {
    let keep = flags
        & (libc::O_NONBLOCK | libc::O_APPEND | libc::O_ASYNC | libc::O_DIRECT | libc::O_NOATIME);
    // SAFETY: fcntl(F_SETFL) on `fd`, an OwnedFd borrowed (so open) for the call; its
    // argument is an integer, not a pointer.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, keep) } < 0 {
        return Err(RestoreError::context(
            "setting descriptor flags",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saved(kind: FdKind, flags: i32) -> Fd {
        Fd {
            fd: 7,
            desc: 0,
            flags,
            cloexec: false,
            inherit: false,
            kind,
        }
    }

    #[test]
    fn one_entry_per_name() {
        for (i, k) in KINDS.iter().enumerate() {
            assert!(KINDS[i + 1..].iter().all(|o| o.anon_name != k.anon_name));
            assert!(std::ptr::eq(by_anon_name(k.anon_name).unwrap(), k));
        }
        assert!(by_anon_name("[io_uring]").is_none());
    }

    #[test]
    fn other_kinds_fall_through() {
        let dir = FdKind::Dir { path: "/".into() };
        assert!(restore(1, &saved(dir.clone(), 0)).is_none());
        assert!(describe(&dir).is_none());
    }

    #[test]
    fn eventfd_comes_back_with_its_count() {
        let kind = FdKind::Eventfd {
            count: 5 << 32,
            semaphore: false,
        };
        assert_eq!(
            describe(&kind).unwrap(),
            format!("eventfd count {}", 5u64 << 32)
        );
        let e = restore(1, &saved(kind, libc::O_RDWR | libc::O_NONBLOCK))
            .unwrap()
            .unwrap();
        // SAFETY: fcntl(F_GETFL) on our own open descriptor; no pointer argument.
        let fl = unsafe { libc::fcntl(e.as_raw_fd(), libc::F_GETFL) };
        assert_ne!(fl & libc::O_NONBLOCK, 0);
        let mut b = [0u8; 8];
        // SAFETY: read(2) writes at most 8 bytes into `b`, a local `[u8; 8]`.
        let n = unsafe { libc::read(e.as_raw_fd(), b.as_mut_ptr().cast(), 8) };
        assert_eq!(n, 8);
        assert_eq!(u64::from_ne_bytes(b), 5 << 32);
    }

    #[test]
    fn timerfd_error_keeps_its_context_chain() {
        let kind = FdKind::Timerfd {
            clockid: 12345,
            settime_flags: 0,
            ticks: 0,
            value_ns: 0,
            interval_ns: 0,
            deadline_ns: 0,
        };
        let e = restore(9, &saved(kind, 0)).unwrap().unwrap_err();
        assert_eq!(e.to_string(), "recreating timerfd 7 of process 9");
        let inner = std::error::Error::source(&e).unwrap();
        assert_eq!(inner.to_string(), "creating a timerfd on clock 12345");
        assert!(std::error::Error::source(inner).is_some());
    }
}
