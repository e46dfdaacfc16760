//! Per-process facts /proc shows directly: ids, names, mm fields, auxv, cwd, umask,
//! rlimits, personality, pending signals.

use crate::error::{Result, TraceError};
use crate::state::{MmFields, Rlimit};
use std::io;

pub struct Stat {
    pub ppid: i32,
    pub pgrp: i32,
    pub session: i32,
    pub mm: MmFields,
}

/// /proc/PID/stat, fields after the command name.
pub fn read_stat(pid: i32) -> io::Result<Stat> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = &s[s.rfind(')').map(|i| i + 2).unwrap_or(0)..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state); field n is f[n - 3].
    let num = |n: usize| -> u64 { f.get(n - 3).and_then(|v| v.parse().ok()).unwrap_or(0) };
    Ok(Stat {
        ppid: num(4) as i32,
        pgrp: num(5) as i32,
        session: num(6) as i32,
        mm: MmFields {
            start_code: num(26),
            end_code: num(27),
            start_stack: num(28),
            start_data: num(45),
            end_data: num(46),
            start_brk: num(47),
            brk: 0,
            arg_start: num(48),
            arg_end: num(49),
            env_start: num(50),
            env_end: num(51),
        },
    })
}

pub fn status_field(pid: i32, key: &str) -> io::Result<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    Ok(s.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
        .unwrap_or("")
        .trim()
        .to_string())
}

pub fn auxv(pid: i32) -> io::Result<Vec<u64>> {
    let b = std::fs::read(format!("/proc/{pid}/auxv"))?;
    Ok(b.chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .collect())
}

pub fn cmdline(pid: i32) -> io::Result<Vec<String>> {
    let b = std::fs::read(format!("/proc/{pid}/cmdline"))?;
    Ok(b.split(|&c| c == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect())
}

pub fn comm(pid: i32, tid: i32) -> io::Result<String> {
    Ok(
        std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))?
            .trim_end_matches('\n')
            .to_string(),
    )
}

pub fn personality(pid: i32) -> io::Result<u32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/personality"))?;
    u32::from_str_radix(s.trim(), 16).map_err(io::Error::other)
}

pub fn rlimits(pid: i32) -> io::Result<Vec<Rlimit>> {
    let mut out = Vec::new();
    for res in 0..16 {
        let mut old = libc::rlimit64 {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: prlimit64 writes one struct.
        let r = unsafe { libc::prlimit64(pid, res as _, std::ptr::null(), &mut old) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        out.push(Rlimit {
            resource: res,
            cur: old.rlim_cur,
            max: old.rlim_max,
        });
    }
    Ok(out)
}

/// Refuse state that this version cannot carry over yet (issue #3 adds it).
pub fn check_unsupported(pid: i32) -> Result<()> {
    let err = |what: String| TraceError::Unsupported { pid, what };
    let io = |e| TraceError::io(pid, "reading /proc", e);
    let seccomp = status_field(pid, "Seccomp").map_err(io)?;
    if seccomp != "0" && !seccomp.is_empty() {
        return Err(err("seccomp filters".into()));
    }
    Ok(())
}

/// A pidfd for `pid` (pidfd_open, Linux 5.3+): names that process for good, whatever
/// PID is reused later.
pub fn pidfd_open(pid: i32) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open returns a descriptor we then own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}
