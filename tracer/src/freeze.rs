//! Freezing a process from the outside: PTRACE_SEIZE + PTRACE_INTERRUPT on every thread,
//! race-free against threads that appear while we attach, and the guarantee that the
//! process runs on unharmed when we let go (explicitly, or because of an error: `Drop`).

use crate::error::{Result, TraceError};
use crate::ptrace::{self, Stop};
use crate::state::{reg, Regs};
use std::collections::BTreeSet;
use std::io;

pub const ERESTARTSYS: i64 = 512;
pub const ERESTARTNOINTR: i64 = 513;
pub const ERESTARTNOHAND: i64 = 514;
pub const ERESTART_RESTARTBLOCK: i64 = 516;

#[derive(Debug)]
pub struct FrozenThread {
    pub tid: i32,
    /// Registers as the thread will resume (interrupted syscalls already turned into a
    /// restart or -EINTR, `orig_rax` = -1). Installed in the thread at freeze time.
    pub regs: Regs,
    /// The syscall the thread was in when it was interrupted.
    pub syscall: Option<i64>,
    /// Signals that arrived while the thread was ours; sent again after we let go.
    pub resend: Vec<i32>,
}

/// A process whose every thread is in a ptrace stop.
pub struct Frozen {
    pub pid: i32,
    pub threads: Vec<FrozenThread>,
    released: bool,
}

fn list_tasks(pid: i32) -> io::Result<BTreeSet<i32>> {
    let mut set = BTreeSet::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        if let Some(t) = e?.file_name().to_str().and_then(|s| s.parse().ok()) {
            set.insert(t);
        }
    }
    Ok(set)
}

/// The kernel's state after signal handling without a handler: restartable syscalls
/// re-execute, a restart-block syscall (nanosleep, poll with timeout...) returns -EINTR.
pub fn fixup_interrupted_syscall(regs: &mut Regs) -> Option<i64> {
    let nr = regs[reg::ORIG_RAX] as i64;
    if nr < 0 {
        return None;
    }
    let ret = regs[reg::RAX] as i64;
    match -ret {
        ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND => {
            regs[reg::RAX] = regs[reg::ORIG_RAX];
            regs[reg::RIP] -= 2;
        }
        ERESTART_RESTARTBLOCK => regs[reg::RAX] = (-libc::EINTR) as i64 as u64,
        _ => {}
    }
    regs[reg::ORIG_RAX] = u64::MAX;
    Some(nr)
}

/// Whether thread `tid` of process `pid` has ended: gone, a zombie, or being reaped.
pub(crate) fn has_ended(pid: i32, tid: i32) -> bool {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")) else {
        return true;
    };
    let state = s
        .rfind(')')
        .and_then(|i| s[i + 1..].trim_start().chars().next());
    matches!(state, None | Some('Z' | 'X' | 'x'))
}

/// Whether process `pid` has ended: every one of its threads has (a main thread that
/// called pthread_exit is a zombie while the others run on). A process whose main
/// thread has ended is given a moment for the others to follow (an exit_group).
pub(crate) fn process_ended(pid: i32) -> bool {
    let ended = || match list_tasks(pid) {
        Ok(tasks) => tasks.into_iter().all(|t| has_ended(pid, t)),
        Err(_) => true,
    };
    if !has_ended(pid, pid) {
        return false;
    }
    for _ in 0..20 {
        if ended() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    false
}

/// Let a seized task go whatever state it is in: detach it from a ptrace stop, or,
/// if it is running or dead, stop it first or collect its end (a task that died
/// while traced stays hidden from its parent until its tracer has waited for it).
pub(crate) fn let_go(tid: i32) {
    if ptrace::detach(tid, 0).is_ok() {
        return;
    }
    let _ = ptrace::interrupt(tid);
    loop {
        match ptrace::wait(tid) {
            Ok((_, Stop::Exited(_) | Stop::Killed(_))) | Err(_) => return,
            Ok((_, Stop::Signal(sig))) => {
                if ptrace::detach(tid, sig).is_ok() {
                    return;
                }
            }
            Ok(_) => {
                if ptrace::detach(tid, 0).is_ok() {
                    return;
                }
            }
        }
    }
}

fn tgid_of(tid: i32) -> Option<i32> {
    let s = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
}

impl Frozen {
    /// Seize and stop every thread of `pid`.
    pub fn freeze(pid: i32) -> Result<Frozen> {
        if pid <= 0 || !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            return Err(TraceError::NoSuchProcess(pid));
        }
        if tgid_of(pid) != Some(pid) {
            return Err(TraceError::NoSuchProcess(pid));
        }
        if pid == std::process::id() as i32 {
            return Err(TraceError::Unsupported {
                pid,
                what: "checkpointing ckpt itself".into(),
            });
        }
        // PIDs are recorded as this process sees them: a process of another PID
        // namespace would be restored under the wrong ones.
        let ns = |p: &str| std::fs::metadata(p).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
        if let (Ok(mine), Ok(theirs)) =
            (ns("/proc/self/ns/pid"), ns(&format!("/proc/{pid}/ns/pid")))
        {
            if mine != theirs {
                return Err(TraceError::Unsupported {
                    pid,
                    what: "a process in another PID namespace (checkpoint it from inside: a job \
                           started with `ckpt run --pidns` or restored in a new namespace is \
                           checkpointed by its coordinator)"
                        .into(),
                });
            }
        }
        let mut f = Frozen {
            pid,
            threads: Vec::new(),
            released: false,
        };
        let mut seized: BTreeSet<i32> = BTreeSet::new();
        // Seize until a pass over /proc/PID/task finds nobody new; TRACECLONE catches
        // threads created after their parent was seized.
        loop {
            let tasks = list_tasks(pid).map_err(|e| {
                if e.kind() == io::ErrorKind::NotFound || process_ended(pid) {
                    TraceError::NoSuchProcess(pid)
                } else {
                    TraceError::io(pid, "listing threads", e)
                }
            })?;
            let new: Vec<i32> = tasks.difference(&seized).copied().collect();
            if new.is_empty() {
                break;
            }
            for tid in new {
                match ptrace::seize(tid, ptrace::FREEZE_OPTIONS) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {
                        if tid == pid {
                            return Err(TraceError::NoSuchProcess(pid));
                        }
                        continue;
                    }
                    // A task that has ended (a zombie, or one being reaped) cannot be
                    // seized either: that is no lack of permission.
                    Err(e)
                        if e.raw_os_error() == Some(libc::EPERM)
                            && tid == pid
                            && process_ended(pid) =>
                    {
                        return Err(TraceError::Exited { pid });
                    }
                    Err(e)
                        if e.raw_os_error() == Some(libc::EPERM)
                            && tid != pid
                            && has_ended(pid, tid) =>
                    {
                        continue;
                    }
                    Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                        return Err(TraceError::PermissionDenied {
                            pid,
                            why: e.to_string(),
                        })
                    }
                    Err(e) => return Err(TraceError::io(pid, format!("seizing thread {tid}"), e)),
                }
                seized.insert(tid);
                f.threads.push(FrozenThread {
                    tid,
                    regs: [0; 27],
                    syscall: None,
                    resend: Vec::new(),
                });
                let _ = ptrace::interrupt(tid);
                f.wait_stopped(tid, &mut seized)?;
            }
        }
        // Keep the leader first.
        f.threads.sort_by_key(|t| (t.tid != pid, t.tid));
        for t in &mut f.threads {
            let mut regs = ptrace::get_regs(t.tid)
                .map_err(|e| TraceError::io(pid, format!("reading registers of {}", t.tid), e))?;
            t.syscall = fixup_interrupted_syscall(&mut regs);
            ptrace::set_regs(t.tid, &regs)
                .map_err(|e| TraceError::io(pid, format!("writing registers of {}", t.tid), e))?;
            t.regs = regs;
        }
        Ok(f)
    }

    /// Wait until `tid` sits in its interrupt stop, passing real signals on and adopting
    /// threads cloned meanwhile.
    fn wait_stopped(&mut self, tid: i32, seized: &mut BTreeSet<i32>) -> Result<()> {
        loop {
            let (_, stop) = ptrace::wait(tid)
                .map_err(|e| TraceError::io(self.pid, format!("waiting for thread {tid}"), e))?;
            match stop {
                Stop::Event | Stop::Group(_) => return Ok(()),
                Stop::Signal(sig) => {
                    // Deliver it now; the pending interrupt stops the thread right after.
                    let _ = ptrace::cont(tid, sig);
                }
                Stop::NewTask(child) => {
                    if tgid_of(child) == Some(self.pid) && seized.insert(child) {
                        self.threads.push(FrozenThread {
                            tid: child,
                            regs: [0; 27],
                            syscall: None,
                            resend: Vec::new(),
                        });
                        // A seized clone starts in an event stop.
                        self.wait_stopped(child, seized)?;
                    } else if !seized.contains(&child) {
                        // Another process (clone without CLONE_THREAD): let it go.
                        let _ = ptrace::wait(child);
                        let _ = ptrace::detach(child, 0);
                    }
                    let _ = ptrace::cont(tid, 0);
                }
                Stop::Syscall | Stop::OtherEvent(_) => {
                    let _ = ptrace::cont(tid, 0);
                }
                Stop::Exited(_) | Stop::Killed(_) => {
                    self.threads.retain(|t| t.tid != tid);
                    if tid == self.pid {
                        return Err(TraceError::Exited { pid: self.pid });
                    }
                    return Ok(());
                }
            }
        }
    }

    pub fn thread(&self, tid: i32) -> &FrozenThread {
        self.threads
            .iter()
            .find(|t| t.tid == tid)
            .expect("frozen thread")
    }

    /// Let every thread run on, exactly where it was (interrupted syscalls restart).
    pub fn release(mut self) {
        self.release_all();
    }

    /// Kill the process (SIGKILL) while we still hold it, then let go.
    pub fn kill(mut self) {
        // SAFETY: plain kill(2).
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        self.released = true;
        for t in &self.threads {
            let _ = ptrace::detach(t.tid, 0);
        }
    }

    fn release_all(&mut self) {
        if self.released {
            return;
        }
        self.released = true;
        for t in &self.threads {
            let _ = ptrace::set_regs(t.tid, &t.regs);
            if ptrace::detach(t.tid, 0).is_err() {
                let_go(t.tid);
            }
        }
        for t in &self.threads {
            for &sig in &t.resend {
                // SAFETY: plain tgkill(2).
                unsafe { libc::syscall(libc::SYS_tgkill, self.pid, t.tid, sig) };
            }
        }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        self.release_all();
    }
}
