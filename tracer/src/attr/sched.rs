//! Scheduling of every thread (policy and priority, nice, SCHED_DEADLINE parameters,
//! utilization clamps, CPU affinity, I/O priority, timer slack) and the process's OOM
//! score adjustment. Read from the outside (`sched_getattr`, `getpriority`,
//! `sched_getaffinity`, `ioprio_get`, /proc/PID/oom_score_adj) except the timer slack,
//! which only the thread itself can read (PR_GET_TIMERSLACK, injected). Restored the
//! same way, changing only what differs from what the restored thread inherited, so
//! that an ordinary user's restore never asks for a privilege it does not need: raising
//! a priority or lowering oom_score_adj below the inherited value fails as it would for
//! the program itself, and the restore names the attribute.

use super::{injected, Dump, Group, Restore};
use crate::error::{Result, TraceError};
use crate::fd::RestoreError;
use crate::prctl_nr::*;
use crate::proc;
use crate::state::{Attr, Sched, ThreadSched};
use std::io;

pub const GROUP: Group = Group {
    name: "sched",
    dump,
    restore,
    describe,
};

const IOPRIO_WHO_PROCESS: i64 = 1;
/// SCHED_ATTR_SIZE_VER1: with the utilization clamps.
const ATTR_SIZE: usize = 56;
const SCHED_FLAG_RESET_ON_FORK: u64 = 0x01;
const SCHED_FLAG_UTIL_CLAMP: u64 = 0x20 | 0x40;
const SCHED_DEADLINE: u32 = 6;

fn last_err() -> io::Error {
    io::Error::last_os_error()
}

/// sched_getattr of thread `tid`, with its nice value from getpriority (sched_getattr
/// shows nice only for the fair policies, yet a real-time thread keeps one).
fn get(tid: i32) -> io::Result<ThreadSched> {
    let mut b = [0u8; ATTR_SIZE];
    // SAFETY: sched_getattr writes at most ATTR_SIZE bytes into `b`, a local buffer of
    // that size.
    let r = unsafe {
        libc::syscall(
            libc::SYS_sched_getattr,
            tid,
            b.as_mut_ptr(),
            ATTR_SIZE as u32,
            0u32,
        )
    };
    if r < 0 {
        return Err(last_err());
    }
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
    // getpriority may return -1 as a value: errno tells.
    // SAFETY: plain getters of the thread's nice value and of errno.
    let nice = unsafe {
        *libc::__errno_location() = 0;
        let n = libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t);
        if n == -1 && *libc::__errno_location() != 0 {
            return Err(last_err());
        }
        n
    };
    let mut mask = vec![0u8; 1024];
    // SAFETY: sched_getaffinity writes at most `mask.len()` bytes into `mask`.
    let n = unsafe {
        libc::syscall(
            libc::SYS_sched_getaffinity,
            tid,
            mask.len(),
            mask.as_mut_ptr(),
        )
    };
    if n < 0 {
        return Err(last_err());
    }
    mask.truncate(n as usize);
    let mut affinity: Vec<u64> = mask
        .chunks(8)
        .map(|c| {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            u64::from_le_bytes(w)
        })
        .collect();
    while affinity.last() == Some(&0) {
        affinity.pop();
    }
    // SAFETY: ioprio_get takes two integers.
    let ioprio = unsafe { libc::syscall(libc::SYS_ioprio_get, IOPRIO_WHO_PROCESS, tid) };
    if ioprio < 0 {
        return Err(last_err());
    }
    Ok(ThreadSched {
        tid,
        policy: u32_at(4),
        flags: u64_at(8) & SCHED_FLAG_RESET_ON_FORK,
        nice,
        priority: u32_at(20),
        runtime: u64_at(24),
        deadline: u64_at(32),
        period: u64_at(40),
        util_min: u32_at(48),
        util_max: u32_at(52),
        affinity,
        ioprio: ioprio as i32,
        timerslack_ns: 0,
    })
}

fn dump(d: &mut Dump) -> Result<Option<Attr>> {
    let pid = d.pid;
    let mut threads = Vec::new();
    for t in d.threads.iter_mut() {
        let tid = t.tid;
        let err = |what: &str| {
            let what = format!("thread {tid}: reading its {what}");
            move |e| TraceError::io(pid, what, e)
        };
        let mut s = get(tid).map_err(err("scheduling attributes"))?;
        let slack = injected(
            d.inj
                .syscall(t, libc::SYS_prctl, [PR_GET_TIMERSLACK, 0, 0, 0, 0, 0]),
        )
        .map_err(err("timer slack (PR_GET_TIMERSLACK)"))?;
        s.timerslack_ns = slack as u64;
        threads.push(s);
    }
    let oom_score_adj = proc::oom_score_adj(pid)?;
    Ok(Some(Attr::Sched(Sched {
        threads,
        oom_score_adj,
    })))
}

/// Set thread `tid`'s scheduling to `s` where it differs from `now`.
fn set(
    tid: i32,
    s: &ThreadSched,
    now: &ThreadSched,
) -> std::result::Result<(), (String, io::Error)> {
    let fail = |what: String| move |e| (what, e);
    if s.nice != now.nice {
        // SAFETY: setpriority takes integers.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, s.nice) } < 0 {
            return Err((format!("setting its nice value {}", s.nice), last_err()));
        }
    }
    let params = |x: &ThreadSched| {
        (
            x.policy, x.flags, x.priority, x.runtime, x.deadline, x.period, x.util_min, x.util_max,
        )
    };
    if params(s) != params(now) {
        let mut b = [0u8; ATTR_SIZE];
        let clamp = if (s.util_min, s.util_max) != (now.util_min, now.util_max) {
            SCHED_FLAG_UTIL_CLAMP
        } else {
            0
        };
        b[0..4].copy_from_slice(&(ATTR_SIZE as u32).to_le_bytes());
        b[4..8].copy_from_slice(&s.policy.to_le_bytes());
        b[8..16].copy_from_slice(&(s.flags | clamp).to_le_bytes());
        b[16..20].copy_from_slice(&s.nice.to_le_bytes());
        b[20..24].copy_from_slice(&s.priority.to_le_bytes());
        b[24..32].copy_from_slice(&s.runtime.to_le_bytes());
        b[32..40].copy_from_slice(&s.deadline.to_le_bytes());
        b[40..48].copy_from_slice(&s.period.to_le_bytes());
        b[48..52].copy_from_slice(&s.util_min.to_le_bytes());
        b[52..56].copy_from_slice(&s.util_max.to_le_bytes());
        // SAFETY: sched_setattr reads ATTR_SIZE bytes from `b`, a local buffer of that size.
        if unsafe { libc::syscall(libc::SYS_sched_setattr, tid, b.as_ptr(), 0u32) } < 0 {
            return Err((
                format!(
                    "setting its scheduling policy {}",
                    policy_name(s.policy, s.priority)
                ),
                last_err(),
            ));
        }
    }
    if s.affinity != now.affinity {
        let bytes: Vec<u8> = s.affinity.iter().flat_map(|w| w.to_le_bytes()).collect();
        // SAFETY: sched_setaffinity reads `bytes.len()` bytes from `bytes`.
        if unsafe {
            libc::syscall(
                libc::SYS_sched_setaffinity,
                tid,
                bytes.len(),
                bytes.as_ptr(),
            )
        } < 0
        {
            return Err((
                format!("setting its CPU affinity (CPUs {})", cpu_list(&s.affinity)),
                last_err(),
            ))
            .map_err(|(w, e): (String, io::Error)| {
                if e.raw_os_error() == Some(libc::EINVAL) {
                    (format!("{w}: none of these CPUs is online here"), e)
                } else {
                    (w, e)
                }
            });
        }
    }
    if s.ioprio != now.ioprio {
        // SAFETY: ioprio_set takes integers.
        if unsafe { libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, tid, s.ioprio) } < 0 {
            return Err(fail(format!("setting its I/O priority {:#x}", s.ioprio))(
                last_err(),
            ));
        }
    }
    Ok(())
}

fn restore(r: &mut Restore, a: &Attr) -> Option<std::result::Result<(), RestoreError>> {
    let Attr::Sched(saved) = a else {
        return None;
    };
    let pid = r.pid;
    let mut run = || -> std::result::Result<(), RestoreError> {
        for s in &saved.threads {
            let tid = s.tid;
            let ctx = |what: String, e: io::Error| {
                RestoreError::context(format!("process {pid} thread {tid}: {what}"), e)
            };
            let now = get(tid).map_err(|e| ctx("reading its scheduling".into(), e))?;
            set(tid, s, &now).map_err(|(w, e)| ctx(w, e))?;
            let Some(t) = r.threads.iter_mut().find(|t| t.tid == tid) else {
                return Err(RestoreError::msg(format!(
                    "process {pid}: thread {tid} of the image was not restored"
                )));
            };
            let cur = injected(r.inj.syscall(
                t,
                libc::SYS_prctl,
                [PR_GET_TIMERSLACK, 0, 0, 0, 0, 0],
            ))
            .map_err(|e| ctx("reading its timer slack".into(), e))?;
            if cur as u64 != s.timerslack_ns && s.timerslack_ns != 0 {
                injected(r.inj.syscall(
                    t,
                    libc::SYS_prctl,
                    [PR_SET_TIMERSLACK, s.timerslack_ns, 0, 0, 0, 0],
                ))
                .map_err(|e| ctx(format!("setting its timer slack {} ns", s.timerslack_ns), e))?;
            }
        }
        let now = proc::oom_score_adj(pid).map_err(|e| RestoreError::msg(e.to_string()))?;
        if now != saved.oom_score_adj {
            std::fs::write(
                proc::path(pid, "oom_score_adj"),
                saved.oom_score_adj.to_string(),
            )
            .map_err(|e| {
                let why = if e.raw_os_error() == Some(libc::EACCES) {
                    " (lowering it needs CAP_SYS_RESOURCE)"
                } else {
                    ""
                };
                RestoreError::context(
                    format!(
                        "process {pid}: setting oom_score_adj {} (was {now}){why}",
                        saved.oom_score_adj
                    ),
                    e,
                )
            })?;
        }
        Ok(())
    };
    Some(run())
}

fn policy_name(policy: u32, prio: u32) -> String {
    match policy {
        0 => "SCHED_OTHER".into(),
        1 => format!("SCHED_FIFO priority {prio}"),
        2 => format!("SCHED_RR priority {prio}"),
        3 => "SCHED_BATCH".into(),
        5 => "SCHED_IDLE".into(),
        SCHED_DEADLINE => "SCHED_DEADLINE".into(),
        p => format!("policy {p}"),
    }
}

/// `0-3,8` for a mask.
pub fn cpu_list(mask: &[u64]) -> String {
    let cpus: Vec<usize> = (0..mask.len() * 64)
        .filter(|&c| mask[c / 64] & (1 << (c % 64)) != 0)
        .collect();
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            cpus[i].to_string()
        } else {
            format!("{}-{}", cpus[i], cpus[j])
        });
        i = j + 1;
    }
    out.join(",")
}

fn describe(a: &Attr) -> Option<Vec<String>> {
    let Attr::Sched(s) = a else {
        return None;
    };
    let mut v: Vec<String> = s
        .threads
        .iter()
        .map(|t| {
            format!(
                "thread {}: {}{}, nice {}, CPUs {}, ioprio {:#x}, timer slack {} ns",
                t.tid,
                policy_name(t.policy, t.priority),
                if t.flags & SCHED_FLAG_RESET_ON_FORK != 0 {
                    " (reset on fork)"
                } else {
                    ""
                },
                t.nice,
                cpu_list(&t.affinity),
                t.ioprio,
                t.timerslack_ns
            )
        })
        .collect();
    v.push(format!("oom_score_adj {}", s.oom_score_adj));
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(cpu_list(&[0b1111]), "0-3");
        assert_eq!(cpu_list(&[0b1_0000_0101]), "0,2,8");
        assert_eq!(cpu_list(&[0, 1]), "64");
        assert_eq!(cpu_list(&[]), "");
    }

    #[test]
    fn our_own_scheduling_reads_back() {
        // SAFETY: plain getter.
        let tid = unsafe { libc::gettid() };
        let s = get(tid).unwrap();
        assert!(!s.affinity.is_empty());
        set(tid, &s, &s).unwrap();
    }
}
