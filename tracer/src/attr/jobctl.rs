//! Job control: a process (all its threads) in a group stop — stopped by SIGSTOP,
//! SIGTSTP, SIGTTIN or SIGTTOU — at the checkpoint is stopped again after the restore,
//! by the same signal, before it runs a single instruction; SIGCONT lets it go on. Its
//! parent sees what it saw: the stop report waitpid(WUNTRACED) returns is there if,
//! and only if, the parent had not collected it yet, and no SIGCHLD comes that did not
//! come before (a SIGCHLD still pending at the checkpoint is restored with the parent's
//! pending signals).
//!
//! Dump. A seized thread of a stopped process reports its first stop as
//! PTRACE_EVENT_STOP with the stop signal (`crate::freeze` records it: `group_stop`),
//! and the kernel puts it back into the stop when we detach, so a dump that lets the
//! process run on leaves it stopped. Whether its parent has collected the stop is asked
//! in the parent, which is frozen too: for each of its children, an injected
//! waitid(WSTOPPED | WNOWAIT | WNOHANG), which reports a stop not yet collected and
//! collects nothing (a child traced by someone other than its parent still shows its
//! group stop to the parent). The parent's group saves the children whose report is
//! pending.
//!
//! Restore ([`stop_again`]), once every process of the tree is finished and still
//! traced, before any is let go: the stop is made under ptrace, so that it is complete
//! before anything runs. The stop signal is sent to one thread that does not block it
//! (the others block everything meanwhile, and it blocks everything else: pending
//! signals stay pending, as they were while the process was stopped); it is let run
//! into its signal-delivery stop, then handed the signal, which starts the group stop
//! (the kernel reports PTRACE_EVENT_STOP with that signal); every other thread is let
//! run into its part of the stop. Then the signal masks are set back. When the process
//! is detached it stays in the stop, as after a dump. The parent (in the tree, traced
//! too) has SA_NOCLDSTOP set on its SIGCHLD meanwhile, so the stop sends it no
//! SIGCHLD, and collects the new stop report with an injected waitid unless it was
//! pending at the checkpoint. (Sending the signal just before detaching instead would
//! let the stop happen after the parent runs on: a new SIGCHLD, and a report that may
//! not have been there.)
//!
//! SIGTSTP, SIGTTIN and SIGTTOU are discarded by the kernel in an orphaned process group
//! (a restored root whose parent is now in another session, say): the thread then
//! comes back with a plain PTRACE_EVENT_STOP, and the process is stopped with SIGSTOP
//! instead, with a warning (the stop is the same; WSTOPSIG says SIGSTOP).

use super::{injected, Dump, Group, Restore};
use crate::error::{Result, TraceError};
use crate::fd::RestoreError;
use crate::freeze::FrozenThread;
use crate::inject::Injector;
use crate::proc;
use crate::ptrace::{self, Stop};
use crate::state::{Attr, JobCtl, ProcessState};
use std::io;
use std::time::Duration;

pub const GROUP: Group = Group {
    name: "jobctl",
    dump,
    restore,
    describe,
};

const P_ALL: u64 = 0;
const P_PID: u64 = 1;
const SA_NOCLDSTOP: u64 = 1;
/// Each step of the stop is a thread reaching its next ptrace stop: microseconds.
const STEP_LIMIT: Duration = Duration::from_secs(10);

/// The pid a waitid wrote into its siginfo (si_pid, at offset 16); 0: nothing.
fn si_pid(info: &[u8; 128]) -> i32 {
    i32::from_le_bytes(info[16..20].try_into().unwrap())
}

/// waitid(idtype, id, &info, options) injected into `t`: the pid it reports, 0 for none.
fn waitid(
    inj: &Injector,
    t: &mut FrozenThread,
    idtype: u64,
    id: i32,
    options: i32,
) -> io::Result<i32> {
    let mut info = [0u8; 128];
    let r = inj.syscall_with_buf(
        t,
        libc::SYS_waitid,
        |a| [idtype, id as u64, a, options as u64, 0, 0],
        &[0u8; 128],
        &mut info,
    );
    match injected(r) {
        Ok(_) => Ok(si_pid(&info)),
        Err(e) if e.raw_os_error() == Some(libc::ECHILD) => Ok(0),
        Err(e) => Err(e),
    }
}

/// The children of the frozen process whose stop report it has not collected.
fn pending_stop_reports(d: &mut Dump) -> Result<Vec<i32>> {
    let pid = d.pid;
    let leader = &mut d.threads[0];
    let peek = libc::WSTOPPED | libc::WNOWAIT | libc::WNOHANG;
    let err = |what: String| move |e| TraceError::io(pid, what, e);
    // One question for the usual case, none pending.
    if waitid(d.inj, leader, P_ALL, 0, peek).map_err(err(
        "asking for stop reports of its children (waitid)".into(),
    ))? == 0
    {
        return Ok(Vec::new());
    }
    let kids = proc::children(pid).map_err(err("listing its children".into()))?;
    let mut out = Vec::new();
    for kid in kids {
        if waitid(d.inj, leader, P_PID, kid, peek)
            .map_err(err(format!("asking for the stop report of child {kid}")))?
            == kid
        {
            out.push(kid);
        }
    }
    Ok(out)
}

fn dump(d: &mut Dump) -> Result<Option<Attr>> {
    let stop_signal = d.group_stop.unwrap_or(0);
    let stop_reports = pending_stop_reports(d)?;
    if stop_signal == 0 && stop_reports.is_empty() {
        return Ok(None);
    }
    Ok(Some(Attr::JobCtl(JobCtl {
        stop_signal,
        stop_reports,
    })))
}

/// Nothing to do here: the stop is made by [`stop_again`], once every process is
/// finished.
fn restore(_r: &mut Restore, a: &Attr) -> Option<std::result::Result<(), RestoreError>> {
    matches!(a, Attr::JobCtl(_)).then_some(Ok(()))
}

pub fn signal_name(sig: i32) -> String {
    match sig {
        libc::SIGSTOP => "SIGSTOP".into(),
        libc::SIGTSTP => "SIGTSTP".into(),
        libc::SIGTTIN => "SIGTTIN".into(),
        libc::SIGTTOU => "SIGTTOU".into(),
        s => format!("signal {s}"),
    }
}

fn describe(a: &Attr) -> Option<Vec<String>> {
    let Attr::JobCtl(j) = a else {
        return None;
    };
    let mut v = Vec::new();
    if j.stop_signal != 0 {
        v.push(format!("stopped by {}", signal_name(j.stop_signal)));
    }
    if !j.stop_reports.is_empty() {
        let kids: Vec<String> = j.stop_reports.iter().map(i32::to_string).collect();
        v.push(format!(
            "stop of children not yet collected: {}",
            kids.join(", ")
        ));
    }
    Some(v)
}

/// The saved job control state of a process, if any.
pub fn saved(state: &ProcessState) -> Option<&JobCtl> {
    state.attrs.iter().find_map(|a| match a {
        Attr::JobCtl(j) => Some(j),
        _ => None,
    })
}

/// The restored parent of a stopped process: finished, still traced and stopped.
pub struct Parent<'a> {
    pub pid: i32,
    /// One of its threads, to inject into.
    pub thread: &'a mut FrozenThread,
    pub inj: &'a Injector,
    /// It had not collected the stop report at the checkpoint.
    pub report_pending: bool,
}

fn fail(pid: i32, what: String) -> impl FnOnce(io::Error) -> RestoreError {
    move |e| RestoreError::context(format!("process {pid}: {what}"), e)
}

/// The next stop of `tid`, within [`STEP_LIMIT`].
fn next_stop(pid: i32, tid: i32) -> std::result::Result<Stop, RestoreError> {
    let (_, stop) = ptrace::wait_for(tid, STEP_LIMIT)
        .map_err(fail(pid, format!("thread {tid}: waiting for its stop")))?;
    if let Stop::Exited(_) | Stop::Killed(_) = stop {
        return Err(RestoreError::msg(format!(
            "process {pid}: thread {tid} died while being stopped again"
        )));
    }
    Ok(stop)
}

/// The signal's bit in a mask.
fn bit(sig: i32) -> u64 {
    1u64 << (sig - 1)
}

/// Make thread `tid` start a group stop with `sig` (the other threads block every
/// signal). Ok(false): the kernel discarded the signal (an orphaned process group).
fn start_group_stop(pid: i32, tid: i32, sig: i32) -> std::result::Result<bool, RestoreError> {
    let name = signal_name(sig);
    ptrace::set_sigmask(tid, !bit(sig))
        .map_err(fail(pid, format!("thread {tid}: setting its signal mask")))?;
    // SAFETY: tgkill(2) takes integers.
    if unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, sig) } < 0 {
        return Err(fail(pid, format!("sending {name}"))(
            io::Error::last_os_error(),
        ));
    }
    ptrace::cont(tid, 0).map_err(fail(pid, format!("thread {tid}: resuming it")))?;
    // Its signal-delivery stop (after a trap left pending, if any).
    let mut traps = 0;
    loop {
        match next_stop(pid, tid)? {
            Stop::Signal(s) if s == sig => break,
            Stop::Event | Stop::Group(_) if traps < 4 => {
                traps += 1;
                ptrace::cont(tid, 0).map_err(fail(pid, format!("thread {tid}: resuming it")))?;
            }
            other => {
                return Err(RestoreError::msg(format!(
                    "process {pid}: thread {tid}: {other:?} instead of {name}"
                )))
            }
        }
    }
    // An interrupt behind the signal: if the kernel discards it, the thread traps
    // right after instead of running on.
    ptrace::interrupt(tid).map_err(fail(pid, format!("thread {tid}: interrupting it")))?;
    ptrace::cont(tid, sig).map_err(fail(pid, format!("thread {tid}: handing it {name}")))?;
    match next_stop(pid, tid)? {
        Stop::Group(_) => Ok(true),
        Stop::Event => Ok(false),
        other => Err(RestoreError::msg(format!(
            "process {pid}: thread {tid}: {other:?} instead of its group stop"
        ))),
    }
}

/// Stop the restored process again if it was stopped at the checkpoint (see the
/// module's comment). `threads` are its finished threads, still traced; `parent` its
/// parent, if restored with it.
pub fn stop_again(
    state: &ProcessState,
    threads: &mut [FrozenThread],
    parent: Option<Parent>,
) -> std::result::Result<(), RestoreError> {
    let pid = state.pid;
    let Some(saved) = saved(state).filter(|j| j.stop_signal != 0) else {
        return Ok(());
    };
    let mask = |tid: i32| {
        state
            .threads
            .iter()
            .find(|t| t.tid == tid)
            .map_or(0, |t| t.sigmask)
    };
    let default_action = |sig: i32| {
        state
            .sigactions
            .iter()
            .find(|a| a.signo == sig)
            .is_none_or(|a| a.handler == 0)
    };
    let mut sig = saved.stop_signal;
    // A stop signal with a handler or ignored, or blocked everywhere, cannot stop it:
    // SIGSTOP can.
    let pick = |sig: i32| threads.iter().position(|t| mask(t.tid) & bit(sig) == 0);
    let mut first = pick(sig).filter(|_| default_action(sig));
    if first.is_none() {
        sig = libc::SIGSTOP;
        first = Some(0);
    }
    let first = first.unwrap_or(0);

    // The parent gets no SIGCHLD for the stop it already had.
    let mut parent = parent;
    let mut old_action = None;
    if let Some(p) = parent.as_mut() {
        let mut sa = [0u8; 32];
        let r = p.inj.syscall_with_buf(
            p.thread,
            libc::SYS_rt_sigaction,
            |a| [libc::SIGCHLD as u64, 0, a, 8, 0, 0],
            &[],
            &mut sa,
        );
        injected(r).map_err(fail(p.pid, "reading its SIGCHLD action".into()))?;
        let handler = u64::from_le_bytes(sa[0..8].try_into().unwrap());
        let flags = u64::from_le_bytes(sa[8..16].try_into().unwrap());
        if handler != 1 /* SIG_IGN */ && flags & SA_NOCLDSTOP == 0 {
            let mut quiet = sa;
            quiet[8..16].copy_from_slice(&(flags | SA_NOCLDSTOP).to_le_bytes());
            let r = p.inj.syscall_with_buf(
                p.thread,
                libc::SYS_rt_sigaction,
                |a| [libc::SIGCHLD as u64, a, 0, 8, 0, 0],
                &quiet,
                &mut [],
            );
            injected(r).map_err(fail(p.pid, "setting SA_NOCLDSTOP on its SIGCHLD".into()))?;
            old_action = Some(sa);
        }
    }

    let mut run = || -> std::result::Result<(), RestoreError> {
        for (i, t) in threads.iter().enumerate() {
            if i != first {
                ptrace::set_sigmask(t.tid, u64::MAX).map_err(fail(
                    pid,
                    format!("thread {}: setting its signal mask", t.tid),
                ))?;
            }
        }
        let lead = threads[first].tid;
        if !start_group_stop(pid, lead, sig)? {
            eprintln!(
                "ckpt: warning: process {pid}: {} is discarded in its process group here \
                 (orphaned): stopped with SIGSTOP instead",
                signal_name(sig)
            );
            sig = libc::SIGSTOP;
            if !start_group_stop(pid, lead, sig)? {
                return Err(RestoreError::msg(format!(
                    "process {pid}: SIGSTOP did not stop it"
                )));
            }
        }
        for t in threads.iter().filter(|t| t.tid != lead) {
            ptrace::cont(t.tid, 0).map_err(fail(pid, format!("thread {}: resuming it", t.tid)))?;
            match next_stop(pid, t.tid)? {
                Stop::Group(_) => {}
                other => {
                    return Err(RestoreError::msg(format!(
                        "process {pid}: thread {}: {other:?} instead of its group stop",
                        t.tid
                    )))
                }
            }
        }
        for t in threads.iter() {
            ptrace::set_sigmask(t.tid, mask(t.tid)).map_err(fail(
                pid,
                format!("thread {}: setting its signal mask", t.tid),
            ))?;
        }
        Ok(())
    };
    let result = run();

    if let Some(p) = parent {
        if let Some(sa) = old_action {
            let r = p.inj.syscall_with_buf(
                p.thread,
                libc::SYS_rt_sigaction,
                |a| [libc::SIGCHLD as u64, a, 0, 8, 0, 0],
                &sa,
                &mut [],
            );
            injected(r).map_err(fail(p.pid, "setting its SIGCHLD action back".into()))?;
        }
        if result.is_ok() && !p.report_pending {
            let got = waitid(p.inj, p.thread, P_PID, pid, libc::WSTOPPED | libc::WNOHANG).map_err(
                fail(p.pid, format!("collecting the stop report of child {pid}")),
            )?;
            if got != pid {
                return Err(RestoreError::msg(format!(
                    "process {}: no stop report of its child {pid} to collect",
                    p.pid
                )));
            }
        }
        for held in std::mem::take(&mut p.thread.resend) {
            held.hand_back(p.pid, p.thread.tid);
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(signal_name(libc::SIGTSTP), "SIGTSTP");
        assert_eq!(bit(1), 1);
        assert_eq!(bit(libc::SIGSTOP), 1 << 18);
    }
}
