//! timerfd(2): a timer on a clock, with its interval, time left and unread expirations.
//! Dump: fdinfo's `clockid`, `ticks`, `settime flags`, `it_value`, `it_interval`, and
//! for an absolute timer its deadline on its clock. Restore: a new timerfd armed as the
//! saved one was (see [`timerfd`]). O_NONBLOCK is in the fd flags.

use super::{owned, set_status_flags, Dump, Kind, RestoreError, RestoreResult, Shared};
use crate::error::Result;
use crate::proc;
use crate::state::{Fd, FdKind};
use std::os::fd::{AsRawFd, OwnedFd};

pub const KIND: Kind = Kind {
    dump,
    dump_process: None,
    dump_tree: None,
    restore,
    finish: None,
    late: None,
    describe,
};

const TFD_TIMER_ABSTIME: i32 = 1;
/// _IOW('T', 0, u64): set the expirations a reader sees (CONFIG_CHECKPOINT_RESTORE).
const TFD_IOC_SET_TICKS: libc::c_ulong = 0x4008_5400;

fn dump(d: &mut Dump) -> Option<Result<FdKind>> {
    d.is_anon("[timerfd]")
        .then(|| timerfd_of(d.pid, d.fd, d.info))
}

fn timerfd_of(pid: i32, fd: i32, info: &proc::FdInfo) -> Result<FdKind> {
    let t = proc::parse_timerfd(&info.text).map_err(super::bad(pid, fd))?;
    let deadline_ns = if t.settime_flags & TFD_TIMER_ABSTIME != 0 {
        clock_now_ns(t.clockid) + t.value_ns
    } else {
        0
    };
    Ok(FdKind::Timerfd {
        clockid: t.clockid,
        settime_flags: t.settime_flags,
        ticks: t.ticks,
        value_ns: t.value_ns,
        interval_ns: t.interval_ns,
        deadline_ns,
    })
}

fn restore(pid: i32, fd: &Fd, _shared: &mut Shared) -> Option<RestoreResult<OwnedFd>> {
    match fd.kind {
        FdKind::Timerfd {
            clockid,
            settime_flags,
            ticks,
            value_ns,
            interval_ns,
            deadline_ns,
        } => Some(
            timerfd(
                clockid,
                settime_flags,
                ticks,
                value_ns,
                interval_ns,
                deadline_ns,
                fd.flags,
            )
            .map_err(|e| {
                RestoreError::context(format!("recreating timerfd {} of process {pid}", fd.fd), e)
            }),
        ),
        _ => None,
    }
}

fn describe(kind: &FdKind) -> Option<String> {
    match kind {
        FdKind::Timerfd { clockid, .. } => Some(format!("timerfd clock {clockid}")),
        _ => None,
    }
}

fn clock_now_ns(clockid: i32) -> u64 {
    // The alarm clocks read like the clocks they are based on.
    let c = match clockid {
        libc::CLOCK_REALTIME_ALARM => libc::CLOCK_REALTIME,
        libc::CLOCK_BOOTTIME_ALARM => libc::CLOCK_BOOTTIME,
        c => c,
    };
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime into a local.
    unsafe { libc::clock_gettime(c, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn timespec(ns: u64) -> libc::timespec {
    libc::timespec {
        tv_sec: (ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (ns % 1_000_000_000) as libc::c_long,
    }
}

/// A timerfd armed as the saved one was:
/// - relative timers with the time that was left (the time between checkpoint and
///   restore does not count, as for a stopped process);
/// - TFD_TIMER_ABSTIME timers at their absolute deadline on their clock (if it passed
///   meanwhile, the timer fires at once and counts the missed periods);
/// - expirations that had happened but were not read (`ticks`): set again with
///   TFD_IOC_SET_TICKS so that the reader sees exactly that count (the next expiry one
///   interval later); without that ioctl, armed to expire at once so that the reader
///   sees at least one.
fn timerfd(
    clockid: i32,
    settime_flags: i32,
    ticks: u64,
    value_ns: u64,
    interval_ns: u64,
    deadline_ns: u64,
    flags: i32,
) -> RestoreResult<OwnedFd> {
    // SAFETY: timerfd_create(2) takes two integers and touches no memory of ours.
    let t = owned(
        unsafe { libc::timerfd_create(clockid, libc::TFD_CLOEXEC) },
        &format!("creating a timerfd on clock {clockid}"),
    )?;
    let settime = |flags: i32, value: u64, interval: u64| -> RestoreResult<()> {
        let its = libc::itimerspec {
            it_interval: timespec(interval),
            it_value: timespec(value),
        };
        // SAFETY: timerfd_settime(2) reads one itimerspec from `&its`, a local alive for
        // the call; the old-value pointer is null, so nothing is written; `t` is our own
        // open timerfd.
        if unsafe { libc::timerfd_settime(t.as_raw_fd(), flags, &its, std::ptr::null_mut()) } < 0 {
            return Err(RestoreError::context(
                "arming a timerfd",
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    };
    if settime_flags & TFD_TIMER_ABSTIME != 0 {
        if value_ns > 0 || ticks > 0 {
            settime(settime_flags, deadline_ns.max(1), interval_ns)?;
        }
    } else if ticks > 0 {
        let next = if value_ns > 0 { value_ns } else { interval_ns };
        if next > 0 {
            settime(settime_flags, next, interval_ns)?;
        }
        // SAFETY: ioctl(TFD_IOC_SET_TICKS) reads one u64 from `&ticks`, a local alive for
        // the call; `t` is our own open timerfd.
        let r = unsafe { libc::ioctl(t.as_raw_fd(), TFD_IOC_SET_TICKS, &ticks as *const u64) };
        if r < 0 {
            settime(settime_flags, 1, interval_ns)?;
        }
    } else if value_ns > 0 {
        settime(settime_flags, value_ns, interval_ns)?;
    }
    set_status_flags(&t, flags)?;
    Ok(t)
}
