//! pidfds (pidfd_open(2), clone with CLONE_PIDFD): a descriptor that refers to one
//! process, or with PIDFD_THREAD (O_EXCL in its flags) one thread.
//!
//! Dump: fdinfo's `Pid` is the process in the dumper's PID namespace, the one the image's
//! PIDs are in. A pidfd of a process or thread of the checkpoint (a zombie child of one
//! included) is saved with that PID; one whose process has exited and been reaped
//! (`Pid: -1`) as such; a pidfd of a process outside the checkpoint, or outside the
//! dumper's namespace, is refused: after a restore that PID may be another process.
//!
//! Restore: a stand-in descriptor first; once every process of the tree exists (the
//! `late` step), pidfd_open(PID, flags) is injected into the restored process (its PID
//! namespace is the one the saved PIDs are in, also when the restore made a new one) and
//! the result moved onto every descriptor of that open file description (dup3). A pidfd
//! of a reaped process is made in the restorer: of a child that exits at once and is
//! reaped, so that it reports what the saved one did (readable, ESRCH to signals).
//! From a process restored in a new PID namespace (as an ordinary user's restore is),
//! a signal through that one fails with EINVAL instead of ESRCH: the restore warns.
//! Each process gets its own open file description: two processes that shared one
//! (inherited across fork) no longer share its O_NONBLOCK flag.

use super::{owned, Dump, Kind, RestoreError, RestoreResult, Shared};
use crate::error::{Result, TraceError};
use crate::freeze::FrozenThread;
use crate::inject::{injected, Injector};
use crate::proc;
use crate::state::{Fd, FdKind, ProcessState};
use std::collections::HashSet;
use std::os::fd::OwnedFd;

pub const KIND: Kind = Kind {
    dump,
    dump_process: None,
    dump_tree: Some(dump_tree),
    restore,
    finish: None,
    late: Some(late),
    describe,
};

/// PIDFD_THREAD: the flag pidfd_open takes and the file's O_EXCL.
const PIDFD_THREAD: i32 = libc::O_EXCL;

fn dump(d: &mut Dump) -> Option<Result<FdKind>> {
    d.is_anon("[pidfd]").then(|| {
        let pid = proc::parse_pidfd(&d.info.text).map_err(super::bad(d.pid, d.fd))?;
        if pid == 0 {
            return Err(TraceError::UnsupportedFd {
                pid: d.pid,
                fd: d.fd,
                kind: "pidfd of a process in another PID namespace".into(),
            });
        }
        Ok(FdKind::Pidfd { pid })
    })
}

/// Every pidfd refers to a process or thread of the tree (or a zombie child of one).
fn dump_tree(procs: &mut [ProcessState]) -> Result<()> {
    let mut known: HashSet<i32> = HashSet::new();
    for p in procs.iter() {
        known.insert(p.pid);
        known.extend(p.threads.iter().map(|t| t.tid));
    }
    let parents: HashSet<i32> = procs.iter().map(|p| p.pid).collect();
    for p in procs.iter() {
        for fd in &p.fds {
            let FdKind::Pidfd { pid } = fd.kind else {
                continue;
            };
            if pid == -1 || known.contains(&pid) {
                continue;
            }
            // A zombie child of the tree is restored too (as a zombie).
            let zombie_of_tree = proc::stat_if_exists(pid)
                .ok()
                .flatten()
                .is_some_and(|st| st.state == 'Z' && parents.contains(&st.ppid));
            if zombie_of_tree {
                continue;
            }
            let name = std::fs::read_to_string(proc::path(pid, "comm"))
                .map(|c| format!(" ({})", c.trim()))
                .unwrap_or_default();
            return Err(TraceError::UnsupportedFd {
                pid: p.pid,
                fd: fd.fd,
                kind: format!("pidfd of process {pid}{name} outside the checkpoint"),
            });
        }
    }
    Ok(())
}

fn restore(_pid: i32, fd: &Fd, _shared: &mut Shared) -> Option<RestoreResult<OwnedFd>> {
    let FdKind::Pidfd { pid } = fd.kind else {
        return None;
    };
    Some(if pid == -1 {
        reaped(fd.flags)
    } else {
        // The stand-in until `late` puts the real one in its place.
        // SAFETY: eventfd(2) takes two integers.
        owned(
            unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) },
            "creating a stand-in for a pidfd",
        )
    })
}

/// The PID namespace the pidfds of exited processes were made in (the restorer's, as it
/// prepared the descriptors: the tree may be created in a new one after).
static MADE_IN: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();

fn pid_ns(pid: &str) -> Option<std::path::PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok()
}

/// A pidfd of a process that has exited and been reaped.
fn reaped(flags: i32) -> RestoreResult<OwnedFd> {
    MADE_IN.get_or_init(|| pid_ns("self"));
    // SAFETY: the child only calls _exit; the parent reaps it below.
    let child = unsafe { libc::fork() };
    if child == 0 {
        // SAFETY: async-signal-safe, ends the child at once.
        unsafe { libc::_exit(0) };
    }
    if child < 0 {
        return Err(RestoreError::msg(format!(
            "forking the process a pidfd of an exited one refers to: {}",
            std::io::Error::last_os_error()
        )));
    }
    let open_flags = (flags & libc::O_NONBLOCK) as libc::c_long;
    // SAFETY: pidfd_open takes integers; the result is a new descriptor or -1.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, child, open_flags) } as i32;
    let mut status = 0;
    // SAFETY: waitpid on our own child, writing the local `status`.
    unsafe { libc::waitpid(child, &mut status, 0) };
    let f = owned(r, "opening a pidfd of an exited process")?;
    // pidfd_open sets O_CLOEXEC already; nothing else to give it.
    Ok(f)
}

/// Put the real pidfds in place of their stand-ins, from inside the restored process.
fn late(inj: &Injector, leader: &mut FrozenThread, state: &ProcessState) -> RestoreResult<()> {
    let call = |leader: &mut FrozenThread, nr: i64, args: [u64; 6], what: &str| {
        injected(inj.syscall(leader, nr, args))
            .map_err(|e| RestoreError::context(format!("process {}: {what}", state.pid), e))
    };
    let mut done = HashSet::new();
    for fd in &state.fds {
        let FdKind::Pidfd { pid } = fd.kind else {
            continue;
        };
        if pid == -1 {
            warn_if_other_namespace(state.pid, fd.fd);
            continue;
        }
        if !done.insert(fd.desc) {
            continue;
        }
        let flags = (fd.flags & (libc::O_NONBLOCK | PIDFD_THREAD)) as u64;
        let what = format!("opening a pidfd of {pid} for fd {}", fd.fd);
        let new = call(
            leader,
            libc::SYS_pidfd_open,
            [pid as u64, flags, 0, 0, 0, 0],
            &what,
        )?;
        for same in state.fds.iter().filter(|f| f.desc == fd.desc) {
            let cloexec = if same.cloexec { libc::O_CLOEXEC } else { 0 } as u64;
            call(
                leader,
                libc::SYS_dup3,
                [new as u64, same.fd as u64, cloexec, 0, 0, 0],
                &format!("putting the pidfd of {pid} on fd {}", same.fd),
            )?;
        }
        call(
            leader,
            libc::SYS_close,
            [new as u64, 0, 0, 0, 0, 0],
            "closing a pidfd's first number",
        )?;
    }
    Ok(())
}

/// The pidfd of an exited process was made in the restorer's PID namespace: from a
/// process restored in a new one, a signal through it fails with EINVAL, not ESRCH.
fn warn_if_other_namespace(pid: i32, fd: i32) {
    let made_in = MADE_IN.get().cloned().flatten();
    if made_in != pid_ns(&pid.to_string()) {
        eprintln!(
            "ckpt: warning: process {pid} fd {fd}: the pidfd of an exited process comes from the restorer's PID namespace: pidfd_send_signal through it fails with EINVAL instead of ESRCH"
        );
    }
}

fn describe(kind: &FdKind) -> Option<String> {
    match kind {
        FdKind::Pidfd { pid: -1 } => Some("pidfd of an exited process".into()),
        FdKind::Pidfd { pid } => Some(format!("pidfd of {pid}")),
        _ => None,
    }
}
