//! Interval timers and POSIX timers, set up again from inside the restored process
//! (injected system calls in its leader, while every signal is still blocked: a timer
//! that expires at once stays pending until the process runs).
//!
//! - Interval timers: `setitimer` with the time that was left and the interval. An
//!   ITIMER_REAL with an interval but no time left had fired and its SIGALRM was pending
//!   (the kernel re-arms it when the signal is dequeued); it is set to expire after 1 µs,
//!   which queues nothing new while that SIGALRM (restored with the pending signals) is
//!   pending, and leaves the interval in place for the re-arm.
//! - POSIX timers keep their ids: with `prctl(PR_TIMER_CREATE_RESTORE_IDS)` (Linux
//!   6.16+) `timer_create` takes the id to use from `*timerid`. Without it, timers are
//!   created in id order and ids below the wanted one deleted again, relying on the
//!   kernel handing out ids of a process sequentially (CRIU's old way); a restore that
//!   would give a timer another id fails instead. `CKPT_NO_TIMER_RESTORE_IDS=1` forces
//!   that fallback (for tests). Each timer is then armed with `timer_settime` (relative)
//!   with the time left and its period.
//!
//! Not restored: overrun counts (timer_getoverrun starts again from 0), whether a timer
//! was armed with TIMER_ABSTIME (it becomes relative: a CLOCK_REALTIME timer no longer
//! follows clock changes), and the id the kernel gives the next new timer (the one after
//! the highest restored id).

use anyhow::{bail, Context, Result};
use ckpt_format::state::{PosixTimer, ProcessState};
use ckpt_tracer::freeze::FrozenThread;
use ckpt_tracer::inject::Injector;
use ckpt_tracer::timers::{parse_proc_timers, SIGEV_THREAD_ID};

const PR_TIMER_CREATE_RESTORE_IDS: u64 = 77;
const PR_TIMER_CREATE_RESTORE_IDS_OFF: u64 = 0;
const PR_TIMER_CREATE_RESTORE_IDS_ON: u64 = 1;
/// Set (to anything but "0") to restore POSIX timer ids without the prctl.
pub const NO_RESTORE_IDS_ENV: &str = "CKPT_NO_TIMER_RESTORE_IDS";
/// The fallback gives up after creating and deleting this many timers.
const MAX_SKIPPED_IDS: u64 = 1 << 16;

fn check(r: std::io::Result<i64>, what: impl FnOnce() -> String) -> Result<i64> {
    match r {
        Ok(v) if (-4095..0).contains(&v) => {
            Err(std::io::Error::from_raw_os_error(-v as i32)).with_context(what)
        }
        Ok(v) => Ok(v),
        Err(e) => Err(e).with_context(what),
    }
}

/// `struct timeval` (`sub` = 1000 ns) or `struct timespec` (`sub` = 1 ns).
fn time_pair(ns: u64, sub: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    let sec = (ns / 1_000_000_000).min(i64::MAX as u64);
    b[..8].copy_from_slice(&sec.to_le_bytes());
    b[8..].copy_from_slice(&((ns % 1_000_000_000) / sub).to_le_bytes());
    b
}

/// `struct itimerval` / `struct itimerspec`: interval, then value.
fn interval_value(interval_ns: u64, value_ns: u64, sub: u64) -> [u8; 32] {
    let mut b = [0u8; 32];
    b[..16].copy_from_slice(&time_pair(interval_ns, sub));
    b[16..].copy_from_slice(&time_pair(value_ns, sub));
    b
}

/// The kernel's `struct sigevent` (64 bytes): sigev_value u64 @0, sigev_signo i32 @8,
/// sigev_notify i32 @12, then the union whose `_tid` (SIGEV_THREAD_ID) is at @16.
pub fn sigevent(t: &PosixTimer) -> [u8; 64] {
    let mut b = [0u8; 64];
    b[0..8].copy_from_slice(&t.sigval.to_le_bytes());
    b[8..12].copy_from_slice(&t.signo.to_le_bytes());
    b[12..16].copy_from_slice(&t.notify.to_le_bytes());
    if t.notify & SIGEV_THREAD_ID != 0 {
        b[16..20].copy_from_slice(&t.tid.to_le_bytes());
    }
    b
}

/// Restore the interval timers and POSIX timers of `state` in the restored process.
pub fn restore_timers(
    inj: &Injector,
    leader: &mut FrozenThread,
    state: &ProcessState,
) -> Result<()> {
    let pid = state.pid;
    for which in 0..3i32 {
        let (mut value, interval) = state
            .itimers
            .iter()
            .find(|t| t.which == which)
            .map_or((0, 0), |t| (t.value_ns, t.interval_ns));
        if value == 0 && interval != 0 {
            value = 1000;
        }
        let it = interval_value(interval, value, 1000);
        let r = inj.syscall_with_buf(
            leader,
            libc::SYS_setitimer,
            |a| [which as u64, a, 0, 0, 0, 0],
            &it,
            &mut [],
        );
        check(r, || format!("process {pid}: setitimer({which})"))?;
    }
    if state.posix_timers.is_empty() {
        return Ok(());
    }

    let forced_fallback = std::env::var_os(NO_RESTORE_IDS_ENV).is_some_and(|v| v != "0");
    let explicit = if forced_fallback {
        false
    } else {
        let r = inj.syscall(
            leader,
            libc::SYS_prctl,
            [
                PR_TIMER_CREATE_RESTORE_IDS,
                PR_TIMER_CREATE_RESTORE_IDS_ON,
                0,
                0,
                0,
                0,
            ],
        );
        match r {
            Ok(0) => true,
            Ok(v) if v == -(libc::EINVAL as i64) => false, // before Linux 6.16
            r => {
                let v = check(r, || {
                    format!("process {pid}: prctl(PR_TIMER_CREATE_RESTORE_IDS)")
                })?;
                bail!("process {pid}: prctl(PR_TIMER_CREATE_RESTORE_IDS) returned {v}");
            }
        }
    };
    let mut timers: Vec<&PosixTimer> = state.posix_timers.iter().collect();
    timers.sort_by_key(|t| t.id);
    let created = if explicit {
        let r = timers
            .iter()
            .try_for_each(|t| create_with_id(inj, leader, pid, t));
        let off = inj.syscall(
            leader,
            libc::SYS_prctl,
            [
                PR_TIMER_CREATE_RESTORE_IDS,
                PR_TIMER_CREATE_RESTORE_IDS_OFF,
                0,
                0,
                0,
                0,
            ],
        );
        r.and(
            check(off, || {
                format!("process {pid}: turning PR_TIMER_CREATE_RESTORE_IDS off")
            })
            .map(drop),
        )
    } else {
        create_in_order(inj, leader, pid, &timers)
    };
    created?;

    for t in &timers {
        let mut value = t.value_ns;
        if value == 0 && t.interval_ns != 0 {
            value = 1; // a periodic timer is never "no time left": keep it armed
        }
        if value == 0 {
            continue;
        }
        let its = interval_value(t.interval_ns, value, 1);
        let id = t.id as u64;
        let r = inj.syscall_with_buf(
            leader,
            libc::SYS_timer_settime,
            |a| [id, 0, a, 0, 0, 0],
            &its,
            &mut [],
        );
        check(r, || format!("process {pid}: timer_settime({})", t.id))?;
    }

    // What the kernel now lists must be exactly the saved ids.
    let text = std::fs::read_to_string(format!("/proc/{pid}/timers"))
        .with_context(|| format!("process {pid}: reading /proc/{pid}/timers"))?;
    let mut now: Vec<i32> = parse_proc_timers(&text)?.iter().map(|t| t.id).collect();
    now.sort_unstable();
    let want: Vec<i32> = timers.iter().map(|t| t.id).collect();
    if now != want {
        bail!("process {pid}: POSIX timers restored with ids {now:?} instead of {want:?}");
    }
    Ok(())
}

/// `timer_create(clock, &sigevent, &id)`; with PR_TIMER_CREATE_RESTORE_IDS on, the
/// kernel reads the id to use from `id`. Returns the id the kernel gave.
fn create(inj: &Injector, leader: &mut FrozenThread, pid: i32, t: &PosixTimer) -> Result<i32> {
    let mut buf = [0u8; 68];
    buf[..64].copy_from_slice(&sigevent(t));
    buf[64..].copy_from_slice(&t.id.to_le_bytes());
    let mut out = [0u8; 68];
    let clock = t.clock as i64 as u64;
    let r = inj.syscall_with_buf(
        leader,
        libc::SYS_timer_create,
        |a| [clock, a, a + 64, 0, 0, 0],
        &buf,
        &mut out,
    );
    check(r, || {
        format!(
            "process {pid}: timer_create for POSIX timer {} (clock {}, notify {}, signal {})",
            t.id, t.clock, t.notify, t.signo
        )
    })?;
    Ok(i32::from_le_bytes(out[64..68].try_into()?))
}

fn delete(inj: &Injector, leader: &mut FrozenThread, pid: i32, id: i32) -> Result<()> {
    let r = inj.syscall(leader, libc::SYS_timer_delete, [id as u64, 0, 0, 0, 0, 0]);
    check(r, || format!("process {pid}: timer_delete({id})")).map(drop)
}

fn create_with_id(
    inj: &Injector,
    leader: &mut FrozenThread,
    pid: i32,
    t: &PosixTimer,
) -> Result<()> {
    let got = create(inj, leader, pid, t)?;
    if got != t.id {
        bail!(
            "process {pid}: POSIX timer {} was created with id {got}",
            t.id
        );
    }
    Ok(())
}

/// The fallback without PR_TIMER_CREATE_RESTORE_IDS: ids come out in sequence, so
/// create (and delete again) timers until each wanted id comes up.
fn create_in_order(
    inj: &Injector,
    leader: &mut FrozenThread,
    pid: i32,
    timers: &[&PosixTimer],
) -> Result<()> {
    let mut skipped = 0u64;
    for t in timers {
        loop {
            let got = create(inj, leader, pid, t)?;
            if got == t.id {
                break;
            }
            if got > t.id {
                bail!(
                    "process {pid}: POSIX timer {} cannot get its id back (the kernel gave {got}; \
                     restoring timer ids reliably needs Linux 6.16 or newer)",
                    t.id
                );
            }
            delete(inj, leader, pid, got)?;
            skipped += 1;
            if skipped > MAX_SKIPPED_IDS {
                bail!(
                    "process {pid}: POSIX timer {} has an id too far from the others to \
                     recreate it by counting (needs Linux 6.16 or newer)",
                    t.id
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_layouts() {
        let t = PosixTimer {
            id: 3,
            clock: 1,
            notify: SIGEV_THREAD_ID,
            signo: 35,
            tid: 0x1234,
            sigval: 0x1122334455667788,
            value_ns: 0,
            interval_ns: 0,
            overrun: 0,
        };
        let e = sigevent(&t);
        assert_eq!(&e[0..8], &0x1122334455667788u64.to_le_bytes());
        assert_eq!(&e[8..12], &35i32.to_le_bytes());
        assert_eq!(&e[12..16], &4i32.to_le_bytes());
        assert_eq!(&e[16..20], &0x1234i32.to_le_bytes());
        assert!(e[20..].iter().all(|&b| b == 0));
        let no_tid = sigevent(&PosixTimer { notify: 0, ..t });
        assert!(no_tid[16..].iter().all(|&b| b == 0));

        let it = interval_value(2_500_000_000, 1_000_001_000, 1000);
        let w = |i: usize| u64::from_le_bytes(it[i * 8..i * 8 + 8].try_into().unwrap());
        assert_eq!((w(0), w(1), w(2), w(3)), (2, 500_000, 1, 1));
        let its = interval_value(0, 7_000_000_123, 1);
        let w = |i: usize| u64::from_le_bytes(its[i * 8..i * 8 + 8].try_into().unwrap());
        assert_eq!((w(0), w(1), w(2), w(3)), (0, 0, 7, 123));
    }
}
