//! Seccomp filters of every thread (the group "seccomp"): read with
//! PTRACE_SECCOMP_GET_FILTER and PTRACE_SECCOMP_GET_METADATA (which need CAP_SYS_ADMIN:
//! an ordinary user's dump of a filtered process is refused, saying so), and installed
//! again, oldest first, in each thread with an injected seccomp(SECCOMP_SET_MODE_FILTER)
//! as the very last step of a restore: after it, the filter judges every system call
//! the restorer would inject, so this group comes after every other, credentials
//! included. Strict mode (SECCOMP_MODE_STRICT) and filters with a user-notification
//! listener (whose descriptor another process holds) are refused.
//!
//! Filters that threads share (inherited at clone, or synced with TSYNC) come back as a
//! copy per thread: each judges the same calls the same way.
//!
//! The program is written into a private writable region of the restored process
//! (its bytes saved and put back: /proc/PID/mem writes are not system calls, so the
//! filter cannot stop that), since it may be larger than the injector's scratch area.

use super::{injected, Dump, Group, Restore};
use crate::error::{Result, TraceError};
use crate::fd::RestoreError;
use crate::proc;
use crate::ptrace;
use crate::state::{Attr, SeccompFilter, ThreadSeccomp};
use std::os::unix::fs::FileExt;

pub const GROUP: Group = Group {
    name: "seccomp",
    dump,
    restore,
    describe,
};

const SECCOMP_SET_MODE_FILTER: u64 = 1;
const SECCOMP_FILTER_FLAG_LOG: u64 = 1 << 1;
const SECCOMP_FILTER_FLAG_SPEC_ALLOW: u64 = 1 << 2;
const SECCOMP_FILTER_FLAG_NEW_LISTENER: u64 = 1 << 3;
/// Flags that describe the filter itself (the others act once, at install time).
const KEPT_FLAGS: u64 = SECCOMP_FILTER_FLAG_LOG | SECCOMP_FILTER_FLAG_SPEC_ALLOW;

fn dump(d: &mut Dump) -> Result<Option<Attr>> {
    let pid = d.pid;
    let mut out = Vec::new();
    for t in d.threads.iter() {
        let tid = t.tid;
        let mode = proc::task_status_if_exists(pid, tid)?
            .and_then(|s| s.seccomp)
            .unwrap_or(0);
        let refuse = |what: String| TraceError::Unsupported { pid, what };
        match mode {
            0 => continue,
            2 => {}
            _ => return Err(refuse(format!("thread {tid}: seccomp strict mode"))),
        }
        let mut filters = Vec::new();
        for index in 0.. {
            let insns = match ptrace::seccomp_filter(tid, index) {
                Ok(Some(i)) => i,
                Ok(None) => break,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EACCES | libc::EPERM)) => {
                    return Err(refuse(format!(
                        "thread {tid}: seccomp filters (reading them needs CAP_SYS_ADMIN: dump as root)"
                    )))
                }
                Err(e) => {
                    return Err(TraceError::io(
                        pid,
                        format!("thread {tid}: reading seccomp filter {index}"),
                        e,
                    ))
                }
            };
            let flags = ptrace::seccomp_flags(tid, index).map_err(|e| {
                TraceError::io(
                    pid,
                    format!("thread {tid}: reading seccomp filter {index}'s flags"),
                    e,
                )
            })?;
            if flags & SECCOMP_FILTER_FLAG_NEW_LISTENER != 0 {
                return Err(refuse(format!(
                    "thread {tid}: a seccomp filter with a user-notification listener"
                )));
            }
            filters.push(SeccompFilter {
                flags: flags & KEPT_FLAGS,
                insns,
            });
        }
        filters.reverse();
        out.push(ThreadSeccomp { tid, filters });
    }
    Ok((!out.is_empty()).then_some(Attr::Seccomp(out)))
}

fn restore(r: &mut Restore, a: &Attr) -> Option<std::result::Result<(), RestoreError>> {
    let Attr::Seccomp(threads) = a else {
        return None;
    };
    let pid = r.pid;
    let mut run = || -> std::result::Result<(), RestoreError> {
        let longest = threads
            .iter()
            .flat_map(|t| &t.filters)
            .map(|f| f.insns.len() as u64 * 8)
            .max()
            .unwrap_or(0);
        // struct sock_fprog { u16 len; (pad) ; u64 filter } then the program.
        let need = 16 + longest;
        let area = proc::writable_region(pid, need)
            .map_err(|e| RestoreError::msg(e.to_string()))?
            .ok_or_else(|| {
                RestoreError::msg(format!(
                    "process {pid}: no writable region of {need} bytes to pass its seccomp filters through"
                ))
            })?;
        let addr = area.0;
        let mem = r.inj.mem();
        let mut saved = vec![0u8; need as usize];
        mem.read_exact_at(&mut saved, addr)
            .map_err(|e| RestoreError::context(format!("process {pid}: reading {addr:#x}"), e))?;
        let mut install = || -> std::result::Result<(), RestoreError> {
            for ts in threads {
                let tid = ts.tid;
                let Some(t) = r.threads.iter_mut().find(|t| t.tid == tid) else {
                    return Err(RestoreError::msg(format!(
                        "process {pid}: thread {tid} of the image was not restored"
                    )));
                };
                for (i, f) in ts.filters.iter().enumerate() {
                    let mut b = Vec::with_capacity(16 + f.insns.len() * 8);
                    b.extend_from_slice(&(f.insns.len() as u64).to_le_bytes()); // len + pad
                    b.extend_from_slice(&(addr + 16).to_le_bytes());
                    for insn in &f.insns {
                        b.extend_from_slice(&insn.to_le_bytes());
                    }
                    mem.write_all_at(&b, addr).map_err(|e| {
                        RestoreError::context(format!("process {pid}: writing a seccomp filter"), e)
                    })?;
                    injected(r.inj.syscall(
                        t,
                        libc::SYS_seccomp,
                        [SECCOMP_SET_MODE_FILTER, f.flags, addr, 0, 0, 0],
                    ))
                    .map_err(|e| {
                        let why = if e.raw_os_error() == Some(libc::EACCES) {
                            " (the thread has neither no_new_privs nor CAP_SYS_ADMIN)"
                        } else {
                            ""
                        };
                        RestoreError::context(
                            format!(
                                "process {pid} thread {tid}: installing seccomp filter {} of {}{why}",
                                i + 1,
                                ts.filters.len()
                            ),
                            e,
                        )
                    })?;
                }
            }
            Ok(())
        };
        let result = install();
        let put_back = mem
            .write_all_at(&saved, addr)
            .map_err(|e| RestoreError::context(format!("process {pid}: restoring {addr:#x}"), e));
        result.and(put_back)
    };
    Some(run())
}

fn describe(a: &Attr) -> Option<Vec<String>> {
    let Attr::Seccomp(threads) = a else {
        return None;
    };
    Some(
        threads
            .iter()
            .map(|t| {
                let sizes: Vec<String> = t
                    .filters
                    .iter()
                    .map(|f| f.insns.len().to_string())
                    .collect();
                format!(
                    "thread {}: {} filter(s) of {} instructions",
                    t.tid,
                    t.filters.len(),
                    sizes.join(", ")
                )
            })
            .collect(),
    )
}
