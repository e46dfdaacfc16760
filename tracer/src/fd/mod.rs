//! One home per descriptor kind (issue 8 item 1), as CRIU's `criu/eventfd.c`: each kind
//! module holds, side by side, its dump (the frozen process's descriptor → [`FdKind`]
//! variant), its restore (saved variant + fd flags → a new descriptor with the same state)
//! and its one-line description for `ckpt info`. This module is the one dispatch they plug
//! into: the table [`KINDS`]. Adding a kind means adding one file and one line in
//! [`KINDS`] (docs/FDKINDS.md).
//!
//! The dispatch is a table of [`Kind`] values (plain function pointers, like CRIU's
//! `struct fdtype_ops`) rather than a trait: the saved type is one enum, [`FdKind`],
//! owned by the format crate and versioned with its golden images, so a kind is a value
//! that recognises its variants, not a type of its own. A trait would need a unit type per
//! kind and a `dyn` registry for the same table, and generics would buy nothing: every
//! call site handles whatever kind the image holds. Each function of a kind answers `None`
//! for a descriptor or saved variant that is not its own; the dispatch asks the kinds in
//! table order, and each descriptor is claimed by exactly one.
//!
//! What spans descriptors is handed to the kinds too: on dump, passes over every
//! descriptor of a process ([`Kind::dump_process`]: a pipe's two ends) and of the tree
//! ([`Kind::dump_tree`]: socket peers); on restore, a part of [`Shared`] of the kind's
//! own type (one new pipe per saved pipe, one memfd per deleted file) and a step once
//! every process is prepared ([`Kind::finish`]: unix sockets connected across the tree).
//!
//! The /proc text of each kind is still parsed in [`crate::proc`] (all /proc parsing stays
//! in that one module); a kind module turns the parsed fields into its saved variant.
//! This module imports neither `files.rs` nor `tree.rs`: they import it.

use crate::error::{Result, TraceError};
use crate::identity::IdentityCache;
use crate::proc;
use crate::state::{Fd, FdKind, ProcessState};
use std::any::Any;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Return a [`RestoreError`] with a formatted message (as `anyhow::bail!` did).
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::fd::RestoreError::msg(format!($($arg)*)))
    };
}

pub mod epoll;
pub mod eventfd;
pub mod fanotify;
pub mod fifo;
pub mod file;
pub mod ghost;
pub mod inet;
pub mod inotify;
pub mod memfd;
pub mod pidfd;
pub mod pipe;
pub mod pty;
pub mod signalfd;
pub mod tcp_repair;
pub mod timerfd;
pub mod tty;
pub mod unix;

/// What one descriptor kind provides.
pub struct Kind {
    /// From the frozen process's descriptor to its saved variant; `None`: the descriptor
    /// is not of this kind.
    pub dump: fn(d: &mut Dump) -> Option<Result<FdKind>>,
    /// Once every descriptor of a process is read: what spans them (a pipe's two ends, a
    /// FIFO's data in flight, standard streams that are the restorer's own).
    pub dump_process: Option<ProcessPass>,
    /// Once every process of the tree is read (after the open file descriptions are
    /// linked): what spans processes (the peers of pipes and sockets in the tree).
    pub dump_tree: Option<TreePass>,
    /// A new descriptor (close-on-exec, owned by the restorer) with the saved state and
    /// status flags of descriptor `fd` of process `pid`; what the kind shares between
    /// descriptors and processes is its own part of `shared`.
    pub restore: fn(pid: i32, fd: &Fd, shared: &mut Shared) -> Option<RestoreResult<OwnedFd>>,
    /// Once every process of the tree is prepared: what spans processes and could not be
    /// built descriptor by descriptor (unix sockets, in place of their stand-ins).
    pub finish: Option<FinishFn>,
    /// What can only be done once the restored process exists and every descriptor of it
    /// is in place, from inside it or through it, while it is still stopped (epoll's
    /// entries, memfd seals).
    pub late: Option<LateFn>,
    /// Its one-line description for `ckpt info`.
    pub describe: fn(kind: &FdKind) -> Option<String>,
}

/// A dump pass of a kind over every descriptor of process `pid`.
pub type ProcessPass = fn(pid: i32, fds: &mut [Fd]) -> Result<()>;

/// A dump pass of a kind over every process of the tree.
pub type TreePass = fn(procs: &mut [ProcessState]) -> Result<()>;

/// The finish step of a kind, with the parts of `shared` it built up.
pub type FinishFn = fn(shared: &mut Shared) -> RestoreResult<()>;

/// The late step of a kind, over the descriptors (and mappings) of its kind in `state`.
pub type LateFn = fn(
    inj: &crate::inject::Injector,
    leader: &mut crate::freeze::FrozenThread,
    state: &ProcessState,
) -> RestoreResult<()>;

/// Every descriptor kind. One line per kind.
pub static KINDS: &[Kind] = &[
    eventfd::KIND,
    timerfd::KIND,
    signalfd::KIND,
    inotify::KIND,
    fanotify::KIND,
    pidfd::KIND,
    epoll::KIND,
    ghost::KIND,
    fifo::KIND,
    memfd::KIND,
    file::KIND,
    pty::KIND,
    tty::KIND,
    pipe::KIND,
    inet::KIND,
    tcp_repair::KIND,
    unix::KIND,
];

/// What the /proc link of a descriptor names, as `files.rs` classifies it.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// `anon_inode:NAME`: NAME, e.g. `[eventfd]`.
    Anon(&'a str),
    /// `pipe:[INO]`.
    Pipe(u64),
    /// `socket:[INO]`.
    Socket(u64),
    /// A memfd (`/memfd:NAME (deleted)`) or a file deleted since it was opened
    /// (`PATH (deleted)`): the whole link.
    Deleted(&'a str),
    /// Any other path, with the metadata of the open file (stat through the link).
    Path(&'a str, &'a std::fs::Metadata),
}

/// One descriptor of a frozen process, as a kind's dump sees it.
pub struct Dump<'a> {
    pub pid: i32,
    pub fd: i32,
    pub target: Target<'a>,
    pub info: &'a proc::FdInfo,
    /// File identities read in this dump, and which unlinked files are stored already.
    pub ids: &'a mut IdentityCache,
}

impl Dump<'_> {
    /// Whether the descriptor is `anon_inode:NAME`.
    pub fn is_anon(&self, name: &str) -> bool {
        matches!(self.target, Target::Anon(n) if n == name)
    }
}

/// The saved variant of a descriptor; `None`: no kind claims it.
pub fn dump(d: &mut Dump) -> Option<Result<FdKind>> {
    KINDS.iter().find_map(|k| (k.dump)(d))
}

/// The passes of every kind over the descriptors of process `pid`, once all are read.
pub fn dump_process(pid: i32, fds: &mut [Fd]) -> Result<()> {
    for pass in KINDS.iter().filter_map(|k| k.dump_process) {
        pass(pid, fds)?;
    }
    Ok(())
}

/// The passes of every kind over the whole tree, once every process is read.
pub fn dump_tree(procs: &mut [ProcessState]) -> Result<()> {
    for pass in KINDS.iter().filter_map(|k| k.dump_tree) {
        pass(procs)?;
    }
    Ok(())
}

/// Just before `ckpt dump --kill` kills the tree: what must be done so that the kill
/// leaves nothing behind that a restore would trip on (TCP connections closed with a
/// reset, not left in TIME_WAIT on the ports the restore binds again).
pub fn before_kill(pids: &[i32]) {
    tcp_repair::before_kill(pids);
    inet::abort_on_kill(pids);
    tcp_repair::after_kill();
}

/// Recreate descriptor `fd` of process `pid`; `None`: no kind restores it.
pub fn restore(pid: i32, fd: &Fd, shared: &mut Shared) -> Option<RestoreResult<OwnedFd>> {
    KINDS.iter().find_map(|k| (k.restore)(pid, fd, shared))
}

/// The finish steps of every kind, once every process of the tree is prepared.
pub fn finish(shared: &mut Shared) -> RestoreResult<()> {
    for step in KINDS.iter().filter_map(|k| k.finish) {
        step(shared)?;
    }
    Ok(())
}

/// The late steps of every kind for the restored process `state.pid`.
pub fn late(
    inj: &crate::inject::Injector,
    leader: &mut crate::freeze::FrozenThread,
    state: &ProcessState,
) -> RestoreResult<()> {
    for step in KINDS.iter().filter_map(|k| k.late) {
        step(inj, leader, state)?;
    }
    Ok(())
}

/// The one-line description of a saved kind; `None`: no kind describes it.
pub fn describe(kind: &FdKind) -> Option<String> {
    KINDS.iter().find_map(|k| (k.describe)(kind))
}

/// What the restore of a tree's descriptors shares between descriptors and processes:
/// one part per kind that needs one, of a type its module defines (one new pipe per
/// saved pipe, one new file per memfd or deleted file, the unix sockets of the tree),
/// created empty when the kind first asks for it. Created per restore and dropped once
/// every process is prepared and [`finish`] ran, which closes what nobody uses (a pipe
/// end whose peer is outside the checkpoint then sees it closed).
#[derive(Default)]
pub struct Shared {
    parts: Vec<Box<dyn Any>>,
}

impl Shared {
    /// The part of type `T` (a kind's own), created empty the first time.
    pub fn part<T: Default + 'static>(&mut self) -> &mut T {
        let i = match self.parts.iter().position(|p| (**p).is::<T>()) {
            Some(i) => i,
            None => {
                self.parts.push(Box::new(T::default()));
                self.parts.len() - 1
            }
        };
        self.parts[i]
            .downcast_mut()
            .expect("a part holds a value of the type it was found by")
    }
}

/// The result of a restore step.
pub type RestoreResult<T> = std::result::Result<T, RestoreError>;

/// A failed restore step: what was being done, and the error underneath (if any). Its
/// source chain is what an `anyhow` context chain showed before the move, so the
/// messages are unchanged; like `anyhow::Error`, `{:#}` shows the whole chain.
#[derive(Debug)]
pub struct RestoreError {
    /// `None`: the error is `source` itself (converted with `?`, as `anyhow` does).
    what: Option<String>,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl RestoreError {
    /// An error with its whole message in `what`.
    pub fn msg(what: impl Into<String>) -> Self {
        RestoreError {
            what: Some(what.into()),
            source: None,
        }
    }

    /// `what` failed because of `source`.
    pub fn context(
        what: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        RestoreError {
            what: Some(what.into()),
            source: Some(source.into()),
        }
    }

    /// `source` itself.
    fn transparent(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        RestoreError {
            what: None,
            source: Some(source.into()),
        }
    }
}

impl std::fmt::Display for RestoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.what, &self.source) {
            (Some(what), _) => f.write_str(what)?,
            (None, Some(s)) => write!(f, "{s}")?,
            (None, None) => {}
        }
        if f.alternate() {
            let mut cause = std::error::Error::source(self);
            while let Some(c) = cause {
                write!(f, ": {c}")?;
                cause = c.source();
            }
        }
        Ok(())
    }
}

impl std::error::Error for RestoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        let s = self.source.as_deref()?;
        if self.what.is_some() {
            Some(s)
        } else {
            s.source()
        }
    }
}

impl From<std::io::Error> for RestoreError {
    fn from(e: std::io::Error) -> Self {
        RestoreError::transparent(e)
    }
}

impl From<std::ffi::NulError> for RestoreError {
    fn from(e: std::ffi::NulError) -> Self {
        RestoreError::transparent(e)
    }
}

/// `anyhow::Context` for restore steps: what failed, on top of the error underneath.
pub trait Context<T> {
    fn context(self, what: impl Into<String>) -> RestoreResult<T>;
    fn with_context<S: Into<String>>(self, what: impl FnOnce() -> S) -> RestoreResult<T>;
}

impl<T, E: Into<Box<dyn std::error::Error + Send + Sync>>> Context<T>
    for std::result::Result<T, E>
{
    fn context(self, what: impl Into<String>) -> RestoreResult<T> {
        self.map_err(|e| RestoreError::context(what, e))
    }
    fn with_context<S: Into<String>>(self, what: impl FnOnce() -> S) -> RestoreResult<T> {
        self.map_err(|e| RestoreError::context(what(), e))
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, what: impl Into<String>) -> RestoreResult<T> {
        self.ok_or_else(|| RestoreError::msg(what))
    }
    fn with_context<S: Into<String>>(self, what: impl FnOnce() -> S) -> RestoreResult<T> {
        self.ok_or_else(|| RestoreError::msg(what()))
    }
}

/// The fdinfo of descriptor `fd` did not parse.
fn bad(pid: i32, fd: i32) -> impl Fn(proc::Bad) -> TraceError {
    move |b| b.at(pid, &proc::fdinfo_path(pid, fd))
}

/// A system call's descriptor result, owned; a negative result is the OS error, with
/// `what` as its context.
fn owned(r: libc::c_int, what: &str) -> RestoreResult<OwnedFd> {
    let r = cvt(r, what)?;
    // SAFETY: `r` is a non-negative result of a system call that returns a new descriptor
    // (every caller passes one straight from a call such as eventfd, memfd_create, socket
    // or accept4): a fresh descriptor that nothing else owns, so the OwnedFd is its only
    // owner.
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}

/// A system call's int result: the OS error, with `what` as its context, if negative.
fn cvt(r: libc::c_int, what: &str) -> RestoreResult<libc::c_int> {
    if r < 0 {
        return Err(RestoreError::context(what, std::io::Error::last_os_error()));
    }
    Ok(r)
}

/// Reopen `path` with the saved `flags` (without O_CREAT, O_TRUNC, O_EXCL and
/// O_TMPFILE — a file opened O_TMPFILE is reopened, not made again —, and
/// close-on-exec), for `what` (e.g. `fd 3`).
///
/// Through a /proc/self/fd link (a file that has no name any more: deleted, a memfd,
/// a pipe) O_NOFOLLOW is left out: the link is one, and following it is the point.
/// The flag only ever acts on the open itself; afterwards it is seen in F_GETFL and
/// fdinfo alone, where the reopened description lacks it (shm_open(3) sets it on
/// every /dev/shm segment, which Open MPI unlinks while it holds them open).
pub fn open(path: &str, flags: i32, what: &str) -> RestoreResult<OwnedFd> {
    let c = CString::new(path)?;
    let tmpfile = libc::O_TMPFILE & !libc::O_DIRECTORY;
    let flags = if flags & tmpfile != 0 {
        flags & !libc::O_TMPFILE
    } else {
        flags
    };
    let flags = if path.starts_with("/proc/self/fd/") {
        flags & !libc::O_NOFOLLOW
    } else {
        flags
    };
    let flags = flags & !(libc::O_CREAT | libc::O_TRUNC | libc::O_EXCL) | libc::O_CLOEXEC;
    // SAFETY: open(2) with `c`, a NUL-terminated CString alive for the call; it only
    // reads the name.
    let fd = unsafe { libc::open(c.as_ptr(), flags) };
    owned(fd, &format!("reopening {path} for {what}"))
}

/// Give `fd` the status flags of the saved `flags` that F_SETFL can set (O_NONBLOCK,
/// O_APPEND, O_ASYNC, O_DIRECT, O_NOATIME).
pub fn set_status_flags(fd: &OwnedFd, flags: i32) -> RestoreResult<()> {
    let keep = flags
        & (libc::O_NONBLOCK | libc::O_APPEND | libc::O_ASYNC | libc::O_DIRECT | libc::O_NOATIME);
    cvt(
        // SAFETY: fcntl(F_SETFL) on `fd`, an OwnedFd borrowed (so open) for the call; its
        // argument is an integer, not a pointer.
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, keep) },
        "setting descriptor flags",
    )?;
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

    /// The kinds that claim a descriptor with link `target` (their dump answers, with a
    /// result or an error, for a descriptor that does not exist).
    fn claimants(target: Target) -> usize {
        let info = proc::FdInfo {
            pos: 0,
            flags: 0,
            text: String::new(),
        };
        let mut ids = IdentityCache::default();
        let mut d = Dump {
            pid: i32::MAX,
            fd: i32::MAX,
            target,
            info: &info,
            ids: &mut ids,
        };
        KINDS.iter().filter(|k| (k.dump)(&mut d).is_some()).count()
    }

    #[test]
    fn one_kind_per_anon_name() {
        for name in [
            "[eventfd]",
            "[timerfd]",
            "[signalfd]",
            "inotify",
            "[eventpoll]",
        ] {
            assert_eq!(claimants(Target::Anon(name)), 1, "{name}");
        }
        assert_eq!(claimants(Target::Anon("[io_uring]")), 0);
    }

    #[test]
    fn a_directory_comes_back_by_path() {
        let dir = FdKind::Dir { path: "/".into() };
        assert_eq!(describe(&dir).unwrap(), "directory /");
        let mut shared = Shared::default();
        let d = restore(1, &saved(dir, libc::O_RDONLY), &mut shared)
            .unwrap()
            .unwrap();
        assert!(std::fs::File::from(d).metadata().unwrap().is_dir());
        let gone = FdKind::Dir {
            path: "/nonexistent-ckpt-dir".into(),
        };
        let e = restore(1, &saved(gone, libc::O_RDONLY), &mut shared)
            .unwrap()
            .unwrap_err();
        assert!(format!("{e:#}").starts_with("reopening /nonexistent-ckpt-dir for fd 7: "));
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
        let mut shared = Shared::default();
        let e = restore(
            1,
            &saved(kind, libc::O_RDWR | libc::O_NONBLOCK),
            &mut shared,
        )
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
        let mut shared = Shared::default();
        let e = restore(9, &saved(kind, 0), &mut shared)
            .unwrap()
            .unwrap_err();
        assert_eq!(e.to_string(), "recreating timerfd 7 of process 9");
        let inner = std::error::Error::source(&e).unwrap();
        assert_eq!(inner.to_string(), "creating a timerfd on clock 12345");
        assert!(std::error::Error::source(inner).is_some());
    }

    #[test]
    fn errors_chain_as_anyhow_did() {
        let io = || std::io::Error::from_raw_os_error(libc::ENOENT);
        let e: RestoreResult<()> = Err(io()).context("opening x");
        let e = e.context("outer").unwrap_err();
        let enoent = io().to_string();
        assert_eq!(e.to_string(), "outer");
        assert_eq!(format!("{e:#}"), format!("outer: opening x: {enoent}"));
        // `?` on an io::Error: the error itself, no message of its own.
        let t = RestoreError::from(io());
        assert_eq!(t.to_string(), enoent);
        assert!(std::error::Error::source(&t).is_none());
        assert_eq!(
            format!("{:#}", RestoreError::context("a", t)),
            format!("a: {enoent}")
        );
        let none: Option<()> = None;
        assert_eq!(none.context("missing").unwrap_err().to_string(), "missing");
    }

    #[test]
    fn parts_are_per_type() {
        let mut shared = Shared::default();
        shared.part::<Vec<u8>>().push(1);
        *shared.part::<u32>() += 2;
        shared.part::<Vec<u8>>().push(3);
        assert_eq!(shared.part::<Vec<u8>>(), &vec![1, 3]);
        assert_eq!(*shared.part::<u32>(), 2);
    }
}
