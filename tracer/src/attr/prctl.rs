//! prctl state and its neighbours: the parent-death signal of every thread, the child
//! subreaper flag, THP disabled (PR_SET_THP_DISABLE; the THP advice of regions is the
//! `memory` group's), the dumpable flag, memory-deny-write-execute,
//! KSM merging of the whole process, /proc/PID/coredump_filter and the membarrier
//! registrations.
//!
//! Read with getters injected into the frozen process (most are per process: mm or
//! signal struct; PR_GET_PDEATHSIG is per thread), the advice from smaps and the filter
//! from /proc. Calling conventions differ: PR_GET_PDEATHSIG and PR_GET_CHILD_SUBREAPER
//! write an int through arg2, the others return the value.
//!
//! Restored with the setters injected into the restored process, changing only what
//! differs from what it inherited from the restorer, in this order:
//! - coredump_filter, written from the outside while the process is still dumpable
//!   (the /proc files of a non-dumpable process belong to root);
//! - PR_SET_THP_DISABLE;
//! - KSM (PR_SET_MEMORY_MERGE), membarrier registrations (each saved
//!   MEMBARRIER_CMD_REGISTER_* issued again: an exec, the loader's, cleared them),
//!   child subreaper (the kernel marks every existing descendant, so orphans made
//!   after the restore come to it);
//! - MDWE: the loader is done with the memory by now (it needs writable-then-executable
//!   mappings), and MDWE cannot be unset or changed once set, so a restored process
//!   that somehow has another value is an error;
//! - parent-death signals (after `finish.rs` reset the one the restore itself used on
//!   the leader: the saved value wins) and the dumpable flag last.
//!
//! A change of credentials (commit_creds with another euid, egid, fsuid or fsgid)
//! clears the parent-death signal and resets the dumpable flag: this group runs after
//! the credentials (see [`super::GROUPS`]); nothing in it needs a privilege, except
//! that some kernels want CAP_SYS_RESOURCE for PR_SET_MEMORY_MERGE (the error says so).
//! A dumpable value of 2 (set by the kernel after a set-user-ID exec with
//! fs.suid_dumpable = 2) cannot be set by prctl: the dump refuses it.

use super::{injected, Dump, Group, Restore};
use crate::error::{Result, TraceError};
use crate::fd::RestoreError;
use crate::freeze::FrozenThread;
use crate::inject::Injector;
use crate::prctl_nr::*;
use crate::proc;
use crate::state::{Attr, Prctl};
use std::io;

pub const GROUP: Group = Group {
    name: "prctl",
    dump,
    restore,
    describe,
};

/// PR_SET_THP_DISABLE's flag (arg3) and PR_GET_THP_DISABLE's bit 1 (Linux 6.18).
const PR_THP_DISABLE_EXCEPT_ADVISED: u32 = 1 << 1;
const PR_MDWE_REFUSE_EXEC_GAIN: u32 = 1;
const PR_MDWE_NO_INHERIT: u32 = 2;
const MEMBARRIER_CMD_GET_REGISTRATIONS: u64 = 1 << 9;
/// The registrations GET_REGISTRATIONS reports, with their names.
const MEMBARRIER_REGISTRATIONS: &[(u32, &str)] = &[
    (1 << 2, "global expedited"),
    (1 << 4, "private expedited"),
    (1 << 6, "private expedited sync-core"),
    (1 << 8, "private expedited rseq"),
];

/// A getter that returns its value; EINVAL (a kernel without the option) reads as 0.
fn get_ret(inj: &Injector, t: &mut FrozenThread, op: u64) -> io::Result<i64> {
    match injected(inj.syscall(t, libc::SYS_prctl, [op, 0, 0, 0, 0, 0])) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(0),
        r => r,
    }
}

/// A getter that writes an int through arg2.
fn get_out(inj: &Injector, t: &mut FrozenThread, op: u64) -> io::Result<i32> {
    let mut buf = [0u8; 4];
    let r = inj.syscall_with_buf(t, libc::SYS_prctl, |a| [op, a, 0, 0, 0, 0], &[], &mut buf);
    injected(r)?;
    Ok(i32::from_le_bytes(buf))
}

fn set(inj: &Injector, t: &mut FrozenThread, op: u64, args: [u64; 4]) -> io::Result<()> {
    let [a, b, c, d] = args;
    injected(inj.syscall(t, libc::SYS_prctl, [op, a, b, c, d, 0])).map(drop)
}

fn membarrier_registrations(inj: &Injector, t: &mut FrozenThread) -> io::Result<u32> {
    match injected(inj.syscall(
        t,
        libc::SYS_membarrier,
        [MEMBARRIER_CMD_GET_REGISTRATIONS, 0, 0, 0, 0, 0],
    )) {
        // Before Linux 6.3 (or without CONFIG_MEMBARRIER): nothing to read.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) => Ok(0),
        r => r.map(|v| v as u32),
    }
}

/// /proc/PID/coredump_filter; None: a kernel without it.
fn coredump_filter(pid: i32) -> Result<Option<u64>> {
    let p = proc::path(pid, "coredump_filter");
    let text = match std::fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(TraceError::io(pid, format!("reading {p}"), e)),
    };
    u64::from_str_radix(text.trim(), 16).map(Some).map_err(|_| {
        proc::Bad {
            field: "coredump_filter".into(),
            why: format!("cannot be parsed: {:?}", text.trim()),
        }
        .at(pid, &p)
    })
}

fn dump(d: &mut Dump) -> Result<Option<Attr>> {
    let pid = d.pid;
    let err = |what: String| move |e| TraceError::io(pid, what, e);
    let mut pdeathsig = Vec::new();
    for t in d.threads.iter_mut() {
        let tid = t.tid;
        let sig = get_out(d.inj, t, PR_GET_PDEATHSIG).map_err(err(format!(
            "thread {tid}: reading its parent-death signal (PR_GET_PDEATHSIG)"
        )))?;
        if sig != 0 {
            pdeathsig.push((tid, sig));
        }
    }
    let leader = &mut d.threads[0];
    let subreaper = get_out(d.inj, leader, PR_GET_CHILD_SUBREAPER)
        .map_err(err("reading its child subreaper flag".into()))?;
    let thp_disable = get_ret(d.inj, leader, PR_GET_THP_DISABLE)
        .map_err(err("reading PR_GET_THP_DISABLE".into()))?;
    let dumpable =
        get_ret(d.inj, leader, PR_GET_DUMPABLE).map_err(err("reading its dumpable flag".into()))?;
    if !(0..=1).contains(&dumpable) {
        return Err(TraceError::Unsupported {
            pid,
            what: format!(
                "the dumpable flag {dumpable} (the kernel's, after a set-user-ID exec with \
                 fs.suid_dumpable = 2; prctl can restore only 0 or 1)"
            ),
        });
    }
    let mdwe = get_ret(d.inj, leader, PR_GET_MDWE)
        .map_err(err("reading memory-deny-write-execute (PR_GET_MDWE)".into()))?;
    let memory_merge = get_ret(d.inj, leader, PR_GET_MEMORY_MERGE)
        .map_err(err("reading KSM merging (PR_GET_MEMORY_MERGE)".into()))?;
    let membarrier = membarrier_registrations(d.inj, leader)
        .map_err(err("reading membarrier registrations".into()))?;
    Ok(Some(Attr::Prctl(Prctl {
        pdeathsig,
        child_subreaper: subreaper != 0,
        thp_disable: thp_disable as u32,
        dumpable: dumpable as u32,
        mdwe: mdwe as u32,
        memory_merge: memory_merge != 0,
        // A kernel without the file: nothing to restore (u64::MAX is no filter's value).
        coredump_filter: coredump_filter(pid)?.unwrap_or(u64::MAX),
        membarrier,
    })))
}

fn restore(r: &mut Restore, a: &Attr) -> Option<std::result::Result<(), RestoreError>> {
    let Attr::Prctl(saved) = a else {
        return None;
    };
    Some(restore_saved(r, saved))
}

fn restore_saved(r: &mut Restore, s: &Prctl) -> std::result::Result<(), RestoreError> {
    let pid = r.pid;
    let inj = r.inj;
    let ctx = |what: String| {
        move |e: io::Error| RestoreError::context(format!("process {pid}: {what}"), e)
    };
    let terr = |e: TraceError| RestoreError::msg(e.to_string());

    if s.coredump_filter != u64::MAX {
        let now = coredump_filter(pid).map_err(terr)?;
        if now.is_some_and(|n| n != s.coredump_filter) {
            std::fs::write(
                proc::path(pid, "coredump_filter"),
                format!("{:#x}", s.coredump_filter),
            )
            .map_err(ctx(format!(
                "setting coredump_filter {:#x}",
                s.coredump_filter
            )))?;
        }
    }

    let Some(leader) = r.threads.iter_mut().find(|t| t.tid == pid) else {
        return Err(RestoreError::msg(format!(
            "process {pid}: its main thread was not restored"
        )));
    };
    let thp = get_ret(inj, leader, PR_GET_THP_DISABLE)
        .map_err(ctx("reading PR_GET_THP_DISABLE".into()))?;
    if thp as u32 != s.thp_disable {
        let flags = (s.thp_disable & PR_THP_DISABLE_EXCEPT_ADVISED) as u64;
        set(
            inj,
            leader,
            PR_SET_THP_DISABLE,
            [(s.thp_disable & 1) as u64, flags, 0, 0],
        )
        .map_err(ctx(format!("setting PR_SET_THP_DISABLE {}", s.thp_disable)))?;
    }

    let merge = get_ret(inj, leader, PR_GET_MEMORY_MERGE)
        .map_err(ctx("reading KSM merging (PR_GET_MEMORY_MERGE)".into()))?;
    if (merge != 0) != s.memory_merge {
        set(
            inj,
            leader,
            PR_SET_MEMORY_MERGE,
            [s.memory_merge as u64, 0, 0, 0],
        )
        .map_err(|e| {
            let why = match e.raw_os_error() {
                Some(libc::EPERM) => " (this kernel wants CAP_SYS_RESOURCE for it)",
                Some(libc::EINVAL) => " (this kernel has no KSM)",
                _ => "",
            };
            RestoreError::context(
                format!(
                    "process {pid}: setting KSM merging of the whole process \
                     (PR_SET_MEMORY_MERGE {}){why}",
                    s.memory_merge as u8
                ),
                e,
            )
        })?;
    }

    if s.membarrier != 0 {
        let now = membarrier_registrations(inj, leader)
            .map_err(ctx("reading membarrier registrations".into()))?;
        for &(cmd, name) in MEMBARRIER_REGISTRATIONS {
            if s.membarrier & cmd != 0 && now & cmd == 0 {
                injected(inj.syscall(leader, libc::SYS_membarrier, [cmd as u64, 0, 0, 0, 0, 0]))
                    .map_err(ctx(format!("registering membarrier {name}")))?;
            }
        }
        let unknown = s.membarrier & !MEMBARRIER_REGISTRATIONS.iter().map(|r| r.0).sum::<u32>();
        if unknown != 0 {
            return Err(RestoreError::msg(format!(
                "process {pid}: membarrier registrations {unknown:#x} this ckpt does not know"
            )));
        }
    }

    let sub = get_out(inj, leader, PR_GET_CHILD_SUBREAPER)
        .map_err(ctx("reading its child subreaper flag".into()))?;
    if (sub != 0) != s.child_subreaper {
        set(
            inj,
            leader,
            PR_SET_CHILD_SUBREAPER,
            [s.child_subreaper as u64, 0, 0, 0],
        )
        .map_err(ctx("setting the child subreaper flag".into()))?;
    }

    let mdwe = get_ret(inj, leader, PR_GET_MDWE)
        .map_err(ctx("reading memory-deny-write-execute".into()))? as u32;
    if mdwe != s.mdwe {
        if mdwe != 0 {
            return Err(RestoreError::msg(format!(
                "process {pid}: memory-deny-write-execute is {} in the restored process and \
                 cannot be changed to the saved {}",
                mdwe_name(mdwe),
                mdwe_name(s.mdwe)
            )));
        }
        set(inj, leader, PR_SET_MDWE, [s.mdwe as u64, 0, 0, 0]).map_err(ctx(format!(
            "setting memory-deny-write-execute ({})",
            mdwe_name(s.mdwe)
        )))?;
    }

    // Every thread's parent-death signal: threads without a saved one have none (a new
    // thread starts without, and finish.rs reset the leader's).
    for t in r.threads.iter_mut() {
        let tid = t.tid;
        let want = s
            .pdeathsig
            .iter()
            .find(|&&(x, _)| x == tid)
            .map_or(0, |&(_, sig)| sig);
        let now = get_out(inj, t, PR_GET_PDEATHSIG).map_err(|e| {
            RestoreError::context(
                format!("process {pid} thread {tid}: reading its parent-death signal"),
                e,
            )
        })?;
        if now != want {
            set(inj, t, PR_SET_PDEATHSIG, [want as u64, 0, 0, 0]).map_err(|e| {
                RestoreError::context(
                    format!("process {pid} thread {tid}: setting its parent-death signal {want}"),
                    e,
                )
            })?;
        }
    }
    let Some(leader) = r.threads.iter_mut().find(|t| t.tid == pid) else {
        unreachable!("found above");
    };
    let dumpable =
        get_ret(inj, leader, PR_GET_DUMPABLE).map_err(ctx("reading its dumpable flag".into()))?;
    if dumpable as u32 != s.dumpable {
        set(inj, leader, PR_SET_DUMPABLE, [s.dumpable as u64, 0, 0, 0])
            .map_err(ctx(format!("setting its dumpable flag {}", s.dumpable)))?;
    }
    Ok(())
}

fn mdwe_name(v: u32) -> String {
    let mut parts = Vec::new();
    if v & PR_MDWE_REFUSE_EXEC_GAIN != 0 {
        parts.push("refuse exec gain");
    }
    if v & PR_MDWE_NO_INHERIT != 0 {
        parts.push("not inherited");
    }
    if v & !(PR_MDWE_REFUSE_EXEC_GAIN | PR_MDWE_NO_INHERIT) != 0 || parts.is_empty() {
        return format!("{v:#x}");
    }
    parts.join(", ")
}

fn describe(a: &Attr) -> Option<Vec<String>> {
    let Attr::Prctl(s) = a else {
        return None;
    };
    let mut v = Vec::new();
    for (tid, sig) in &s.pdeathsig {
        v.push(format!("thread {tid}: parent-death signal {sig}"));
    }
    if s.child_subreaper {
        v.push("child subreaper".into());
    }
    match s.thp_disable {
        0 => {}
        1 => v.push("transparent huge pages disabled".into()),
        n => v.push(format!("transparent huge pages disabled ({n:#x})")),
    }
    if s.dumpable == 0 {
        v.push("not dumpable".into());
    }
    if s.mdwe != 0 {
        v.push(format!("memory-deny-write-execute: {}", mdwe_name(s.mdwe)));
    }
    if s.memory_merge {
        v.push("KSM merging of the whole process".into());
    }
    if s.coredump_filter != u64::MAX {
        v.push(format!("coredump_filter {:#x}", s.coredump_filter));
    }
    let regs: Vec<&str> = MEMBARRIER_REGISTRATIONS
        .iter()
        .filter(|(b, _)| s.membarrier & b != 0)
        .map(|(_, n)| *n)
        .collect();
    if !regs.is_empty() {
        v.push(format!("membarrier registered: {}", regs.join(", ")));
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mdwe_names() {
        assert_eq!(mdwe_name(1), "refuse exec gain");
        assert_eq!(mdwe_name(3), "refuse exec gain, not inherited");
        assert_eq!(mdwe_name(0), "0x0");
        assert_eq!(mdwe_name(5), "0x5");
    }

    #[test]
    fn our_own_coredump_filter_reads() {
        // SAFETY: getpid cannot fail.
        let pid = unsafe { libc::getpid() };
        assert!(coredump_filter(pid).unwrap().is_some());
    }
}
