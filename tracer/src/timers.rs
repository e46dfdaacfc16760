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

pub const SIGEV_SIGNAL: i32 = 0;
pub const SIGEV_NONE: i32 = 1;
pub const SIGEV_THREAD: i32 = 2;
pub const SIGEV_THREAD_ID: i32 = 4;

const ITIMER_NAMES: [&str; 3] = ["ITIMER_REAL", "ITIMER_VIRTUAL", "ITIMER_PROF"];

/// One block of /proc/PID/timers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcTimer {
    pub id: i32,
    pub signo: i32,
    pub sigval: u64,
    /// sigev_notify as the kernel keeps it (SIGEV_THREAD_ID included).
    pub notify: i32,
    /// The pid (or, with SIGEV_THREAD_ID, the tid) that is signalled.
    pub target: i32,
    pub clock: i32,
}

fn bad(line: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("unexpected line in /proc/PID/timers: {line:?}"),
    )
}

/// Parse the text of /proc/PID/timers.
pub fn parse_proc_timers(text: &str) -> io::Result<Vec<ProcTimer>> {
    let mut out: Vec<ProcTimer> = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (key, val) = line.split_once(':').ok_or_else(|| bad(line))?;
        let val = val.trim();
        if key == "ID" {
            out.push(ProcTimer {
                id: val.parse().map_err(|_| bad(line))?,
                signo: 0,
                sigval: 0,
                notify: SIGEV_SIGNAL,
                target: 0,
                clock: 0,
            });
            continue;
        }
        let t = out.last_mut().ok_or_else(|| bad(line))?;
        match key {
            "signal" => {
                let (sig, value) = val.split_once('/').ok_or_else(|| bad(line))?;
                t.signo = sig.parse().map_err(|_| bad(line))?;
                // %px prints 16 hex digits; old kernels printed "(null)" for NULL.
                t.sigval = match value {
                    "(null)" => 0,
                    v => u64::from_str_radix(v.trim_start_matches("0x"), 16)
                        .map_err(|_| bad(line))?,
                };
            }
            "notify" => {
                let (kind, who) = val.split_once('/').ok_or_else(|| bad(line))?;
                let base = match kind {
                    "signal" => SIGEV_SIGNAL,
                    "none" => SIGEV_NONE,
                    "thread" => SIGEV_THREAD,
                    _ => return Err(bad(line)),
                };
                let (pt, n) = who.split_once('.').ok_or_else(|| bad(line))?;
                t.notify = match pt {
                    "pid" => base,
                    "tid" => base | SIGEV_THREAD_ID,
                    _ => return Err(bad(line)),
                };
                t.target = n.parse().map_err(|_| bad(line))?;
            }
            "ClockID" => t.clock = val.parse().map_err(|_| bad(line))?,
            _ => {} // a field added by a newer kernel
        }
    }
    Ok(out)
}

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

    let text = match std::fs::read_to_string(format!("/proc/{pid}/timers")) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(), // !CONFIG_CHECKPOINT_RESTORE
        Err(e) => return Err(TraceError::io(pid, "reading /proc/PID/timers", e)),
    };
    let listed =
        parse_proc_timers(&text).map_err(|e| TraceError::io(pid, "reading /proc/PID/timers", e))?;
    if listed.is_empty() && !text.trim().is_empty() {
        return Err(TraceError::Unsupported {
            pid,
            what: "POSIX timers in an unknown /proc/PID/timers format".into(),
        });
    }
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

    const SAMPLE: &str =
        "ID: 5\nsignal: 10/000000001234abcd\nnotify: signal/pid.27967\nClockID: -223738\n\
ID: 2\nsignal: 34/0000000000000000\nnotify: signal/tid.27968\nClockID: -6\n\
ID: 1\nsignal: 14/(null)\nnotify: none/pid.27967\nClockID: 0\n\
ID: 0\nsignal: 12/00007ffd00000001\nnotify: thread/pid.27967\nClockID: 1\n";

    #[test]
    fn parses_every_notify_kind() {
        let t = parse_proc_timers(SAMPLE).unwrap();
        assert_eq!(t.len(), 4);
        assert_eq!(
            t[0],
            ProcTimer {
                id: 5,
                signo: 10,
                sigval: 0x1234abcd,
                notify: SIGEV_SIGNAL,
                target: 27967,
                clock: -223738
            }
        );
        assert_eq!((t[1].notify, t[1].target), (SIGEV_THREAD_ID, 27968));
        assert_eq!((t[2].notify, t[2].sigval, t[2].signo), (SIGEV_NONE, 0, 14));
        assert_eq!((t[3].notify, t[3].sigval), (SIGEV_THREAD, 0x7ffd00000001));
        assert!(parse_proc_timers("").unwrap().is_empty());
        assert!(parse_proc_timers("signal: 1/0\n").is_err());
    }

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
