//! File locks, leases, signal-driven I/O owners and pipe capacities of a process's
//! descriptors (the group "locks").
//!
//! Why an attribute group and not the descriptor kinds: this is state of open file
//! descriptions of every kind alike (a lock on a regular file, an owner on a pipe, a
//! socket or a tty), that `Fd` has no field for and the saved descriptor types must not
//! change shape for; and all of it can only be set back by the process itself, by
//! descriptor number, once every descriptor exists: a POSIX lock belongs to the process
//! that takes it (its descriptor table), a lease's break signal names the descriptor it
//! was taken through, O_ASYNC's signal names the descriptor that set it. A group's
//! restore runs inside the restored, still stopped process with an injector, after every
//! descriptor, signal and timer is in place (`restore_all` in src/restore/finish.rs),
//! before the process runs again: if a lock cannot be had, the restore fails and the
//! whole job is killed before anything ran.
//!
//! Dump, for every descriptor:
//! - the `lock:` lines of /proc/PID/fdinfo/FD (Linux 4.x+), which show only this process's
//!   own locks on that descriptor's open file description: its POSIX locks (owned by the
//!   process, shown on every descriptor of the description they were taken through), and
//!   the OFD locks, flocks and leases of the description (shared by dups and across
//!   fork). A lock shown on several descriptors of one description (kcmp) is kept once.
//!   Each line is checked against the audit table (`audit::check_lock`): mandatory locks,
//!   leases being broken and kinds this ckpt does not know are refused. A lock held by
//!   another process on the same file is not this process's state and is not shown.
//! - the owner of its SIGIO/SIGURG (F_GETOWN_EX: a thread, a process or a process group)
//!   and its signal (F_GETSIG), injected (the ids are the process's own view, whatever
//!   PID namespace ckpt runs in); and O_ASYNC from the status flags.
//! - the capacity of a pipe or FIFO (F_GETPIPE_SZ, injected).
//!
//! Restore, in the stopped restored process, in this order: pipe capacities
//! (F_SETPIPE_SZ); leases (F_SETLEASE, which makes the process the descriptor's owner);
//! locks, never waiting (F_SETLK, F_OFD_SETLK, flock LOCK_NB: a lock another process took
//! since the checkpoint fails the restore with a message naming the process, descriptor,
//! file, lock and range); then O_ASYNC cleared and set again from inside, so that the
//! signal names the process's descriptor and not the restorer's, the signal (F_SETSIG)
//! and the owner (F_SETOWN_EX). A lock of a description shared by several processes is
//! taken by each: the same lock on the same description is granted again (the restore
//! shares the description, so it is one lock).

use super::{injected, Dump, Group, Restore};
use crate::error::{Result, TraceError};
use crate::fd::RestoreError;
use crate::freeze::FrozenThread;
use crate::inject::Injector;
use crate::proc::{self, FdTarget, LockLine};
use crate::state::{Attr, FdLocks, FdOwner, FileLock, LockKind, PipeSize};
use std::io;
use std::os::unix::fs::FileTypeExt;

pub const GROUP: Group = Group {
    name: "locks",
    dump,
    restore,
    describe,
};

// fcntl commands (asm-generic/fcntl.h) that the libc crate does not name; the getters
// are the audit table's.
use crate::audit::{F_GETOWN_EX, F_GETSIG};
const F_SETSIG: i32 = 10;
const F_SETOWN_EX: i32 = 15;
const F_OWNER_TID: i32 = 0;
const F_OWNER_PID: i32 = 1;
const F_OWNER_PGRP: i32 = 2;
const KCMP_FILE: i32 = 0;

/// `fcntl(fd, cmd, arg)` injected into thread `t`.
fn fcntl(inj: &Injector, t: &mut FrozenThread, fd: i32, cmd: i32, arg: u64) -> io::Result<i64> {
    injected(inj.syscall(t, libc::SYS_fcntl, [fd as u64, cmd as u64, arg, 0, 0, 0]))
}

/// `fcntl(fd, cmd, &buf)` injected into thread `t`, with `buf` in and out.
fn fcntl_buf(
    inj: &Injector,
    t: &mut FrozenThread,
    fd: i32,
    cmd: i32,
    buf: &mut [u8],
) -> io::Result<i64> {
    let input = buf.to_vec();
    injected(inj.syscall_with_buf(
        t,
        libc::SYS_fcntl,
        |a| [fd as u64, cmd as u64, a, 0, 0, 0],
        &input,
        buf,
    ))
}

fn same_description(pid: i32, fd1: i32, fd2: i32) -> bool {
    // SAFETY: kcmp(2) takes integers and only compares kernel objects.
    unsafe { libc::syscall(libc::SYS_kcmp, pid, pid, KCMP_FILE, fd1, fd2) == 0 }
}

/// The saved lock of a `lock:` line of descriptor `fd` (already checked by the audit).
fn saved_lock(pid: i32, fd: i32, l: &LockLine) -> Result<FileLock> {
    let refuse = |what: String| TraceError::UnsupportedFd {
        pid,
        fd,
        kind: what,
    };
    let kind = match l.class.as_str() {
        "POSIX" => LockKind::Posix,
        "OFDLCK" => LockKind::Ofd,
        "FLOCK" => LockKind::Flock,
        "LEASE" => LockKind::Lease,
        c => return Err(refuse(format!("a lock of class {c}"))),
    };
    let write = match l.access.as_str() {
        "WRITE" => true,
        "READ" => false,
        a => return Err(refuse(format!("a {} lock of access {a}", l.class))),
    };
    let Some((dev, ino)) = l.file else {
        return Err(refuse(format!("a {} lock on no file", l.class)));
    };
    // POSIX locks belong to the descriptor table: shown here, taken by another process
    // only if it shares this one's table (CLONE_FILES), which a restore does not rebuild.
    if kind == LockKind::Posix && l.pid != pid {
        return Err(refuse(format!(
            "a POSIX lock of process {} on a descriptor table it shares with this process (CLONE_FILES)",
            l.pid
        )));
    }
    Ok(FileLock {
        fd,
        kind,
        write,
        start: l.start,
        end: l.end,
        dev,
        ino,
    })
}

fn dump(d: &mut Dump) -> Result<Option<Attr>> {
    let pid = d.pid;
    let io_err = |what: String| move |e| TraceError::io(pid, what, e);
    let mut out = FdLocks::default();
    let nums = proc::fd_numbers(pid).map_err(io_err("listing descriptors".into()))?;
    let leader = &mut d.threads[0];
    for fd in nums {
        let Some(target) = proc::fd_target(pid, fd)? else {
            continue; // closed meanwhile
        };
        let info = proc::fdinfo(pid, fd)?;
        let lines =
            proc::parse_fd_locks(&info.text).map_err(|b| b.at(pid, &proc::fdinfo_path(pid, fd)))?;
        let mut leased = false;
        for l in &lines {
            crate::audit::check_lock(pid, fd, l)?;
            let lock = saved_lock(pid, fd, l)?;
            leased |= lock.kind == LockKind::Lease;
            let known = out
                .locks
                .iter()
                .any(|o| FileLock { fd, ..o.clone() } == lock && same_description(pid, o.fd, fd));
            if !known {
                out.locks.push(lock);
            }
        }

        if info.flags & libc::O_PATH != 0 {
            continue; // no owner, signal or lock: fcntl refuses them on O_PATH
        }
        let mut own = [0u8; 8];
        fcntl_buf(d.inj, leader, fd, F_GETOWN_EX, &mut own)
            .map_err(io_err(format!("fd {fd}: reading its owner (F_GETOWN_EX)")))?;
        let sig = fcntl(d.inj, leader, fd, F_GETSIG, 0)
            .map_err(io_err(format!("fd {fd}: reading its signal (F_GETSIG)")))?;
        let owner = FdOwner {
            fd,
            owner_type: i32::from_ne_bytes(own[0..4].try_into().unwrap()),
            owner: i32::from_ne_bytes(own[4..8].try_into().unwrap()),
            sig: sig as i32,
            async_io: info.flags & libc::O_ASYNC != 0,
        };
        if owner.owner != 0 || owner.sig != 0 || owner.async_io || leased {
            out.owners.push(owner);
        }

        let pipe = match &target {
            FdTarget::Pipe(_) => true,
            FdTarget::Other(p) if p.starts_with('/') => {
                std::fs::metadata(proc::path(pid, &format!("fd/{fd}")))
                    .is_ok_and(|m| m.file_type().is_fifo())
            }
            _ => false,
        };
        if pipe {
            let size = fcntl(d.inj, leader, fd, libc::F_GETPIPE_SZ, 0).map_err(io_err(format!(
                "fd {fd}: reading its pipe capacity (F_GETPIPE_SZ)"
            )))?;
            out.pipe_sizes.push(PipeSize {
                fd,
                size: size as u32,
            });
        }
    }
    Ok((out != FdLocks::default()).then_some(Attr::Locks(out)))
}

/// `POSIX write lock on bytes 10-29`, `flock LOCK_EX`, `read lease`.
pub fn lock_name(l: &FileLock) -> String {
    let rw = if l.write { "write" } else { "read" };
    let range = || match l.end {
        Some(e) => format!("bytes {}-{e}", l.start),
        None => format!("bytes {}-EOF", l.start),
    };
    match l.kind {
        LockKind::Posix => format!("POSIX {rw} lock on {}", range()),
        LockKind::Ofd => format!("OFD {rw} lock on {}", range()),
        LockKind::Flock => format!("flock {}", if l.write { "LOCK_EX" } else { "LOCK_SH" }),
        LockKind::Lease => format!("{rw} lease"),
    }
}

fn owner_name(o: &FdOwner) -> String {
    match o.owner_type {
        _ if o.owner == 0 => "no owner".into(),
        F_OWNER_TID => format!("owner thread {}", o.owner),
        F_OWNER_PID => format!("owner process {}", o.owner),
        F_OWNER_PGRP => format!("owner process group {}", o.owner),
        t => format!("owner {} of type {t}", o.owner),
    }
}

/// `struct flock` (x86-64): l_type, l_whence, l_start, l_len, l_pid.
fn flock_struct(l: &FileLock) -> [u8; 32] {
    let mut b = [0u8; 32];
    let ty = if l.write {
        libc::F_WRLCK
    } else {
        libc::F_RDLCK
    } as i16;
    b[0..2].copy_from_slice(&ty.to_ne_bytes());
    b[2..4].copy_from_slice(&(libc::SEEK_SET as i16).to_ne_bytes());
    let len = l.end.map_or(0, |e| e - l.start + 1);
    b[8..16].copy_from_slice(&(l.start as i64).to_ne_bytes());
    b[16..24].copy_from_slice(&(len as i64).to_ne_bytes());
    b
}

/// Take lock `l` back inside the restored process, never waiting.
fn take(inj: &Injector, t: &mut FrozenThread, l: &FileLock) -> io::Result<i64> {
    match l.kind {
        LockKind::Posix | LockKind::Ofd => {
            let cmd = if l.kind == LockKind::Posix {
                libc::F_SETLK
            } else {
                libc::F_OFD_SETLK
            };
            fcntl_buf(inj, t, l.fd, cmd, &mut flock_struct(l))
        }
        LockKind::Flock => {
            let op = if l.write {
                libc::LOCK_EX
            } else {
                libc::LOCK_SH
            } | libc::LOCK_NB;
            injected(inj.syscall(t, libc::SYS_flock, [l.fd as u64, op as u64, 0, 0, 0, 0]))
        }
        LockKind::Lease => {
            let ty = if l.write {
                libc::F_WRLCK
            } else {
                libc::F_RDLCK
            };
            fcntl(inj, t, l.fd, libc::F_SETLEASE, ty as u64)
        }
    }
}

fn restore(r: &mut Restore, a: &Attr) -> Option<std::result::Result<(), RestoreError>> {
    let Attr::Locks(saved) = a else {
        return None;
    };
    let pid = r.pid;
    let inj = r.inj;
    let leader = &mut r.threads[0];
    // Standard streams that are the restorer's own now (a pipe or terminal that led
    // outside the checkpoint) keep the restorer's settings, as their status flags do:
    // what is lost is said. A lock there is refused: it would lock the restorer's file.
    let inherited = |fd: i32| r.state.fds.iter().any(|f| f.fd == fd && f.inherit);
    let lost = |fd: i32, what: String| {
        eprintln!(
            "ckpt: warning: process {pid} fd {fd} is the restorer's own standard stream now; its {what} is not set on it"
        );
    };
    for p in saved
        .pipe_sizes
        .iter()
        .filter(|p| inherited(p.fd) && p.size != 65536)
    {
        lost(p.fd, format!("pipe capacity of {} bytes", p.size));
    }
    for o in saved.owners.iter().filter(|o| inherited(o.fd)) {
        lost(
            o.fd,
            "signal-driven I/O (SIGIO owner, signal, O_ASYNC)".into(),
        );
    }
    if let Some(l) = saved.locks.iter().find(|l| inherited(l.fd)) {
        return Some(Err(RestoreError::msg(format!(
            "process {pid} fd {}: its {} was on a standard stream that led outside the checkpoint; the restore gives it the restorer's own, which it does not lock",
            l.fd,
            lock_name(l)
        ))));
    }
    let saved_pgid = r.state.pgid;
    let path = |fd: i32| {
        proc::link(pid, &format!("fd/{fd}"))
            .map(|p| format!(" ({p})"))
            .unwrap_or_default()
    };
    let ctx = |fd: i32, what: String| {
        let p = path(fd);
        move |e: io::Error| RestoreError::context(format!("process {pid} fd {fd}{p}: {what}"), e)
    };
    let mut run = || -> std::result::Result<(), RestoreError> {
        for p in saved.pipe_sizes.iter().filter(|p| !inherited(p.fd)) {
            let now = fcntl(inj, leader, p.fd, libc::F_GETPIPE_SZ, 0)
                .map_err(ctx(p.fd, "reading its pipe capacity".into()))?;
            if now != p.size as i64 {
                fcntl(inj, leader, p.fd, libc::F_SETPIPE_SZ, p.size as u64).map_err(ctx(
                    p.fd,
                    format!(
                        "setting its pipe capacity to {} bytes (F_SETPIPE_SZ; above /proc/sys/fs/pipe-max-size it needs CAP_SYS_RESOURCE)",
                        p.size
                    ),
                ))?;
            }
        }
        // Leases first: taking one makes the process the descriptor's owner, which the
        // owners below set back.
        let leases_first = saved
            .locks
            .iter()
            .filter(|l| l.kind == LockKind::Lease)
            .chain(saved.locks.iter().filter(|l| l.kind != LockKind::Lease));
        for l in leases_first {
            take(inj, leader, l).map_err(|e| {
                let errno = e.raw_os_error();
                let why = match l.kind {
                    LockKind::Lease if errno == Some(libc::EAGAIN) && l.write => {
                        ": the file is open elsewhere now (a write lease needs it open nowhere else)"
                    }
                    LockKind::Lease if errno == Some(libc::EAGAIN) => {
                        ": the file is open for writing elsewhere now (a read lease needs it open for writing nowhere)"
                    }
                    LockKind::Lease if errno == Some(libc::EACCES) => {
                        " (a lease needs the file's owner or CAP_LEASE)"
                    }
                    LockKind::Lease => "",
                    _ if matches!(errno, Some(libc::EAGAIN) | Some(libc::EACCES)) => {
                        ": another process holds a conflicting lock now (taken since the checkpoint)"
                    }
                    _ => "",
                };
                ctx(l.fd, format!("taking back its {}{why}", lock_name(l)))(e)
            })?;
        }
        // A restored root joins the restorer's process group unless it led a session:
        // SIGIO for its old group would go to a group it is no longer in (or to the
        // restorer's, had it followed).
        let pgid = injected(inj.syscall(leader, libc::SYS_getpgid, [0; 6]))
            .map_err(|e| RestoreError::context(format!("process {pid}: getpgid"), e))?
            as i32;
        for o in saved.owners.iter().filter(|o| !inherited(o.fd)) {
            if o.owner_type == F_OWNER_PGRP && o.owner == saved_pgid && pgid != saved_pgid {
                return Err(RestoreError::msg(format!(
                    "process {pid} fd {}{}: its SIGIO owner was its own process group {saved_pgid}, which it is no longer in after the restore (a restored root joins the restorer's group unless it led a session)",
                    o.fd,
                    path(o.fd)
                )));
            }
            if o.async_io {
                let fl = fcntl(inj, leader, o.fd, libc::F_GETFL, 0)
                    .map_err(ctx(o.fd, "reading its status flags".into()))?;
                for flags in [fl & !(libc::O_ASYNC as i64), fl | libc::O_ASYNC as i64] {
                    fcntl(inj, leader, o.fd, libc::F_SETFL, flags as u64)
                        .map_err(ctx(o.fd, "setting O_ASYNC from inside".into()))?;
                }
            }
            if o.sig != 0 {
                fcntl(inj, leader, o.fd, F_SETSIG, o.sig as u64).map_err(ctx(
                    o.fd,
                    format!("setting its signal {} (F_SETSIG)", o.sig),
                ))?;
            }
            let mut own = [0u8; 8];
            own[0..4].copy_from_slice(&o.owner_type.to_ne_bytes());
            own[4..8].copy_from_slice(&o.owner.to_ne_bytes());
            fcntl_buf(inj, leader, o.fd, F_SETOWN_EX, &mut own).map_err(ctx(
                o.fd,
                format!("setting its SIGIO {} (F_SETOWN_EX)", owner_name(o)),
            ))?;
        }
        Ok(())
    };
    Some(run())
}

fn describe(a: &Attr) -> Option<Vec<String>> {
    let Attr::Locks(s) = a else {
        return None;
    };
    let locks = s
        .locks
        .iter()
        .map(|l| format!("fd {}: {}", l.fd, lock_name(l)));
    let owners = s.owners.iter().map(|o| {
        format!(
            "fd {}: SIGIO {}, signal {}{}",
            o.fd,
            owner_name(o),
            if o.sig == 0 {
                "SIGIO".to_string()
            } else {
                o.sig.to_string()
            },
            if o.async_io { ", O_ASYNC" } else { "" }
        )
    });
    let pipes = s
        .pipe_sizes
        .iter()
        .map(|p| format!("fd {}: pipe capacity {} bytes", p.fd, p.size));
    Some(locks.chain(owners).chain(pipes).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock(kind: LockKind, write: bool, start: u64, end: Option<u64>) -> FileLock {
        FileLock {
            fd: 3,
            kind,
            write,
            start,
            end,
            dev: 1,
            ino: 2,
        }
    }

    #[test]
    fn names() {
        assert_eq!(
            lock_name(&lock(LockKind::Posix, true, 10, Some(29))),
            "POSIX write lock on bytes 10-29"
        );
        assert_eq!(
            lock_name(&lock(LockKind::Ofd, false, 100, None)),
            "OFD read lock on bytes 100-EOF"
        );
        assert_eq!(
            lock_name(&lock(LockKind::Flock, true, 0, None)),
            "flock LOCK_EX"
        );
        assert_eq!(
            lock_name(&lock(LockKind::Lease, false, 0, None)),
            "read lease"
        );
    }

    #[test]
    fn flock_structs() {
        let b = flock_struct(&lock(LockKind::Posix, true, 10, Some(29)));
        assert_eq!(i16::from_ne_bytes([b[0], b[1]]), libc::F_WRLCK as i16);
        assert_eq!(i64::from_ne_bytes(b[8..16].try_into().unwrap()), 10);
        assert_eq!(i64::from_ne_bytes(b[16..24].try_into().unwrap()), 20);
        let b = flock_struct(&lock(LockKind::Ofd, false, 100, None));
        assert_eq!(i16::from_ne_bytes([b[0], b[1]]), libc::F_RDLCK as i16);
        assert_eq!(i64::from_ne_bytes(b[16..24].try_into().unwrap()), 0);
        assert_eq!(std::mem::size_of::<libc::flock>(), 32);
    }

    #[test]
    fn lines_become_locks() {
        let l = proc::parse_lock_line("1: POSIX  ADVISORY  WRITE 7 fe:00:12 10 29").unwrap();
        let s = saved_lock(7, 3, &l).unwrap();
        assert_eq!(
            (s.kind, s.write, s.start, s.end),
            (LockKind::Posix, true, 10, Some(29))
        );
        assert_eq!((s.dev, s.ino), (libc::makedev(0xfe, 0), 12));
        // Another process's POSIX lock on this descriptor table.
        assert!(saved_lock(8, 3, &l).is_err());
        let f = proc::parse_lock_line("2: FLOCK  ADVISORY  READ 1 fe:00:12 0 EOF").unwrap();
        assert_eq!(saved_lock(7, 4, &f).unwrap().kind, LockKind::Flock);
    }
}
