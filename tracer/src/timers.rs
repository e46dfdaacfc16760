//! Timers of a frozen process: the three interval timers (`getitimer`, injected) and the
//! POSIX timers (ids, clocks and notification from /proc/PID/timers; time left, period
//! and overrun from `timer_gettime` / `timer_getoverrun`, injected).
//!
//! /proc/PID/timers (fs/proc/base.c, show_timer) has one block per timer, newest first:
//!
//! ```text
//! ID: 3
//! signal: 34/00000000000a11ce        si_signo / sigev_value in hex (%px)
//! notify: signal/tid.1235            signal|none|thread, then pid.N or tid.N (SIGEV_THREAD_ID)
//! ClockID: 1
//! ```
//!
//! Timers on clocks whose meaning a restore cannot keep are refused: CPU clocks of other
//! processes or threads, the CPU clock of "the calling thread" (CLOCK_THREAD_CPUTIME_ID)
//! in a multi-threaded process (which thread created it is not visible), and
//! dynamic (fd) clocks. A SIGEV_THREAD_ID timer must signal a live thread of the process.

use crate::error::{Result, TraceError};
use crate::freeze::FrozenThread;
use crate::inject::Injector;
use crate::state::{ITimer, PosixTimer, ThreadState};
use std::io;

pub use crate::proc::{ProcTimer, SIGEV_NONE, SIGEV_SIGNAL, SIGEV_THREAD, SIGEV_THREAD_ID};

/// Parse the text of /proc/PID/timers ([`crate::proc::parse_timers`]), for callers
/// outside the tracer that want an `io::Error` (the restore's check of the ids).
pub fn parse_proc_timers(text: &str) -> io::Result<Vec<ProcTimer>> {
    crate::proc::parse_timers(text).map_err(|b| b.into_io("/proc/PID/timers"))
}

const ITIMER_NAMES: [&str; 3] = ["ITIMER_REAL", "ITIMER_VIRTUAL", "ITIMER_PROF"];

/// Why a timer on `clock` cannot be restored faithfully, if it cannot.
/// `pid`: the process; `tids`: its threads (leader first).
pub fn clock_problem(clock: i32, pid: i32, tids: &[i32]) -> Option<String> {
    if clock >= 0 {
        // CLOCK_REALTIME, MONOTONIC, BOOTTIME, REALTIME_ALARM, BOOTTIME_ALARM, TAI: the
        // only ones timer_create accepts.
        return match clock {
            0 | 1 | 7 | 8 | 9 | 11 => None,
            _ => Some(format!("clock {clock}")),
        };
    }
    let which = clock & 3; // CPUCLOCK_PROF 0, VIRT 1, SCHED 2, CLOCKFD 3
    let per_thread = clock & 4 != 0;
    let owner = !(clock >> 3);
    if which == 3 {
        return Some(format!("the dynamic clock {clock} (a clock device)"));
    }
    if per_thread {
        if owner == 0 && tids.len() > 1 {
            return Some(
                "CLOCK_THREAD_CPUTIME_ID in a multi-threaded process (the creating thread is not known)"
                    .into(),
            );
        }
        if owner != 0 && !tids.contains(&owner) {
            return Some(format!(
                "the CPU clock of thread {owner} of another process"
            ));
        }
    } else if owner != 0 && owner != pid {
        return Some(format!("the CPU clock of process {owner}"));
    }
    None
}

fn injected(pid: i32, what: &str, r: io::Result<i64>) -> Result<i64> {
    match r {
        Ok(v) if (-4095..0).contains(&v) => Err(TraceError::io(
            pid,
            what.to_string(),
            io::Error::from_raw_os_error(-v as i32),
        )),
        Ok(v) => Ok(v),
        Err(e) => Err(TraceError::io(pid, what.to_string(), e)),
    }
}

fn word(b: &[u8], i: usize) -> i64 {
    i64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap())
}

fn ns(sec: i64, sub_ns: i64) -> u64 {
    (sec.max(0) as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(sub_ns.max(0) as u64)
}

/// Read the interval timers and POSIX timers of a frozen process, injecting the system
/// calls in `leader`. `threads`: the threads of the process, leader first.
pub fn read_timers(
    inj: &Injector,
    leader: &mut FrozenThread,
    pid: i32,
    threads: &[ThreadState],
) -> Result<(Vec<ITimer>, Vec<PosixTimer>)> {
    let tids: Vec<i32> = threads.iter().map(|t| t.tid).collect();
    let tids = &tids[..];
    let mut itimers = Vec::new();
    for which in 0..3i32 {
        // struct itimerval { timeval it_interval; timeval it_value; }
        let mut it = [0u8; 32];
        let r = inj.syscall_with_buf(
            leader,
            libc::SYS_getitimer,
            |a| [which as u64, a, 0, 0, 0, 0],
            &[],
            &mut it,
        );
        injected(
            pid,
            &format!("getitimer({})", ITIMER_NAMES[which as usize]),
            r,
        )?;
        let interval_ns = ns(word(&it, 0), word(&it, 1) * 1000);
        let value_ns = ns(word(&it, 2), word(&it, 3) * 1000);
        if interval_ns != 0 || value_ns != 0 {
            itimers.push(ITimer {
                which,
                value_ns,
                interval_ns,
            });
        }
    }

    // No /proc/PID/timers: a kernel without CONFIG_CHECKPOINT_RESTORE, which cannot
    // list POSIX timers (as before, none are saved).
    let listed = crate::proc::timers(pid)?.unwrap_or_default();
    let mut posix = Vec::new();
    for t in listed {
        let unsupported = |why: String| TraceError::Unsupported {
            pid,
            what: format!("POSIX timer {} on {why}", t.id),
        };
        if let Some(why) = clock_problem(t.clock, pid, tids) {
            return Err(unsupported(why));
        }
        let tid = if t.notify & SIGEV_THREAD_ID != 0 {
            if !tids.contains(&t.target) {
                return Err(TraceError::Unsupported {
                    pid,
                    what: format!(
                        "POSIX timer {} signalling thread {}, which is not a live thread of the process",
                        t.id, t.target
                    ),
                });
            }
            t.target
        } else {
            0
        };
        // struct itimerspec { timespec it_interval; timespec it_value; }
        let mut its = [0u8; 32];
        let id = t.id as u64;
        let r = inj.syscall_with_buf(
            leader,
            libc::SYS_timer_gettime,
            |a| [id, a, 0, 0, 0, 0],
            &[],
            &mut its,
        );
        injected(pid, &format!("timer_gettime({})", t.id), r)?;
        let r = inj.syscall(leader, libc::SYS_timer_getoverrun, [id, 0, 0, 0, 0, 0]);
        let overrun = injected(pid, &format!("timer_getoverrun({})", t.id), r)? as i32;
        posix.push(PosixTimer {
            id: t.id,
            clock: t.clock,
            notify: t.notify,
            signo: t.signo,
            tid,
            sigval: t.sigval,
            value_ns: ns(word(&its, 2), word(&its, 3)),
            interval_ns: ns(word(&its, 0), word(&its, 1)),
            overrun,
        });
    }
    posix.sort_by_key(|t| t.id);
    Ok((itimers, posix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clocks() {
        let pid = 27967;
        let tids = [27967, 27968];
        let process = |p: i32, which: i32| (!p << 3) | which;
        let thread = |t: i32| (!t << 3) | 4 | 2;
        assert_eq!(clock_problem(1, pid, &tids), None);
        assert!(clock_problem(4, pid, &tids).is_some()); // MONOTONIC_RAW
        assert_eq!(clock_problem(-6, pid, &tids), None); // own process, SCHED
        assert_eq!(clock_problem(process(pid, 0), pid, &tids), None);
        assert_eq!(process(pid, 2), -223742);
        assert!(clock_problem(process(1, 2), pid, &tids).is_some());
        assert_eq!(clock_problem(thread(27968), pid, &tids), None);
        assert!(clock_problem(thread(1), pid, &tids).is_some());
        assert!(clock_problem(-2, pid, &tids).is_some()); // caller's thread, 2 threads
        assert_eq!(clock_problem(-2, pid, &tids[..1]), None);
        assert!(clock_problem(process(pid, 3), pid, &tids).is_some());
    }
}
