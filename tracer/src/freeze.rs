//! Freezing a process from the outside: PTRACE_SEIZE + PTRACE_INTERRUPT on every thread,
//! race-free against threads that appear while we attach, and the guarantee that the
//! process runs on unharmed when we let go (explicitly, or because of an error: `Drop`).

use crate::error::{Result, TraceError};
use crate::proc;
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
    pub resend: Vec<Held>,
}

/// A signal that arrived while a thread ran code of ours (an injected system call),
/// with the siginfo the kernel had for it.
#[derive(Clone, Debug)]
pub struct Held {
    pub sig: i32,
    pub info: Option<[u8; 128]>,
}

const SI_TKILL: i32 = -6;

impl Held {
    /// Take the signal `tid` is in a signal-delivery-stop for, with its siginfo.
    pub fn take(tid: i32, sig: i32) -> Held {
        let mut info = [0u8; 128];
        // SAFETY: PTRACE_GETSIGINFO writes one siginfo_t (128 bytes) into `info`.
        let r = unsafe {
            libc::ptrace(
                libc::PTRACE_GETSIGINFO,
                tid,
                std::ptr::null_mut::<libc::c_void>(),
                info.as_mut_ptr(),
            )
        };
        Held {
            sig,
            info: (r == 0).then_some(info),
        }
    }

    /// Send the signal again to thread `tid` of `pid`: with its own siginfo where the
    /// kernel lets another process queue it (timers, sigqueue, mq: si_code < 0 but not
    /// tkill), so that si_code, si_value and the rest arrive as they were; otherwise
    /// as a tgkill (kernel-made siginfo cannot be forged from outside).
    pub fn hand_back(&self, pid: i32, tid: i32) {
        if let Some(info) = &self.info {
            let code = i32::from_le_bytes(info[8..12].try_into().unwrap_or_default());
            if code < 0 && code != SI_TKILL {
                // SAFETY: rt_tgsigqueueinfo reads one siginfo_t from `info`.
                let r = unsafe {
                    libc::syscall(
                        libc::SYS_rt_tgsigqueueinfo,
                        pid,
                        tid,
                        self.sig,
                        info.as_ptr(),
                    )
                };
                if r == 0 {
                    return;
                }
            }
        }
        // SAFETY: plain tgkill(2).
        unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, self.sig) };
    }
}

/// A process whose every thread is in a ptrace stop.
pub struct Frozen {
    pub pid: i32,
    pub threads: Vec<FrozenThread>,
    /// The process was in a group stop (SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU) when it was
    /// seized: its signal. A seized thread of a stopped process reports its first stop
    /// as PTRACE_EVENT_STOP with that signal (`Stop::Group`), not SIGTRAP; so does one
    /// whose group stop began while it was being seized. It stays stopped after we let
    /// go (the kernel puts it back into the stop when the tracer detaches).
    pub group_stop: Option<i32>,
    /// Every thread's `regs` were read (and are what it must resume with). Until
    /// then, letting go must leave the registers alone: a thread seized before an
    /// error holds only a placeholder, which would crash it.
    regs_read: bool,
    released: bool,
}

fn list_tasks(pid: i32) -> io::Result<BTreeSet<i32>> {
    proc::tasks(pid)
}

/// The kernel's state after signal handling without a handler: restartable syscalls
/// re-execute, a restart-block syscall (nanosleep, poll with timeout...) returns -EINTR,
/// but poll without a timeout re-executes.
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
        // poll without a timeout has nothing in its restart block but its arguments,
        // which are still in the registers: it is called again, as the kernel's restart
        // would. A program that blocks every signal (script(1), with a signalfd) takes
        // an -EINTR from poll for an error.
        ERESTART_RESTARTBLOCK if nr == libc::SYS_poll && (regs[reg::RDX] as i32) < 0 => {
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
/// A stat that cannot be read or parsed counts as not ended: the caller goes on as with
/// a live thread, and the next read of it fails with the reason.
pub(crate) fn has_ended(pid: i32, tid: i32) -> bool {
    match proc::task_stat_if_exists(pid, tid) {
        Ok(None) => true,
        Ok(Some(s)) => matches!(s.state, 'Z' | 'X' | 'x'),
        Err(_) => false,
    }
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

/// The process of thread `tid`. None: no such thread; a status that does not parse is
/// an error.
fn tgid_of(tid: i32) -> Result<Option<i32>> {
    Ok(proc::status_if_exists(tid)?.map(|s| s.tgid))
}

/// PF_KTHREAD in the flags of /proc/PID/stat (field 9).
const PF_KTHREAD: u64 = 0x0020_0000;

/// Gone meanwhile: not a kernel thread (the attach then finds it gone).
fn is_kernel_thread(pid: i32) -> Result<bool> {
    Ok(proc::stat_if_exists(pid)?.is_some_and(|s| s.flags as u64 & PF_KTHREAD != 0))
}

/// The name of a process, for messages only ("?" once it is gone).
fn comm_of(pid: i32) -> String {
    proc::comm(pid, pid).unwrap_or_else(|_| "?".into())
}

/// Init and kernel threads are refused before anything is attached: the kernel
/// refuses kernel threads even to root, and init is the ancestor of everything here,
/// ckpt included (root could freeze it, and with it the whole system).
fn refuse_untraceable(pid: i32) -> Result<()> {
    let what = if is_kernel_thread(pid)? {
        "is a kernel thread; only user-space processes can be checkpointed"
    } else if pid == 1 {
        "is the init process of this PID namespace, an ancestor of every process here \
         (ckpt included); checkpoint the process tree of the program instead"
    } else {
        return Ok(());
    };
    Err(TraceError::Untraceable {
        pid,
        comm: comm_of(pid),
        what: what.into(),
    })
}

/// Why the kernel refused to let us seize thread `tid` of `pid` (EPERM): another
/// tracer on it or on another thread (the usual case, strace or gdb), or else
/// privileges.
fn why_not_allowed(pid: i32, tid: i32, e: &io::Error) -> TraceError {
    let me = std::process::id() as i32;
    let mut threads = vec![tid];
    threads.extend(
        list_tasks(pid)
            .unwrap_or_default()
            .into_iter()
            .filter(|&t| t != tid),
    );
    // Only to explain an EPERM already in hand: a thread gone or a status that cannot be
    // read tells nothing, and the explanation falls back to privileges.
    let status = |t: i32| proc::task_status_if_exists(pid, t).ok().flatten();
    for t in threads {
        let tracer = status(t).map_or(0, |s| s.tracer_pid);
        if tracer != 0 && tracer != me {
            return TraceError::AlreadyTraced {
                pid,
                who: if t == pid {
                    format!("process {pid}")
                } else {
                    format!("thread {t} of process {pid}")
                },
                tracer,
                comm: comm_of(tracer),
            };
        }
    }
    // The kernel lets a user trace a process whose real, effective and saved ids are
    // all its own; anything else needs CAP_SYS_PTRACE.
    // SAFETY: geteuid cannot fail.
    let my_uid = unsafe { libc::geteuid() };
    let uids: Vec<u32> = status(pid).map(|s| s.uids.to_vec()).unwrap_or_default();
    let why = match uids.iter().find(|&&u| u != my_uid) {
        Some(&owner) if my_uid != 0 => format!(
            "it belongs to user {} (uid {owner}), and tracing another user's process needs \
             root or CAP_SYS_PTRACE",
            user_name(owner)
        ),
        _ => match proc::yama_ptrace_scope() {
            Some(1) => "kernel.yama.ptrace_scope is 1: a process can be traced only by its \
                        ancestors (start it with `ckpt run`), or by root or with CAP_SYS_PTRACE"
                .into(),
            Some(n) if n >= 2 => format!(
                "kernel.yama.ptrace_scope is {n}: tracing needs {}",
                if n == 2 {
                    "root or CAP_SYS_PTRACE"
                } else {
                    "a reboot with a lower setting"
                }
            ),
            _ => format!(
                "{e} (it may be set-user-ID or have made itself non-dumpable, or a security \
                 module forbids it; tracing it needs root or CAP_SYS_PTRACE)"
            ),
        },
    };
    TraceError::PermissionDenied { pid, why }
}

fn user_name(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(u)) => u.name,
        _ => format!("#{uid}"),
    }
}

impl Frozen {
    /// Seize and stop every thread of `pid`.
    pub fn freeze(pid: i32) -> Result<Frozen> {
        if pid <= 0 || !std::path::Path::new(&proc::path(pid, "")).exists() {
            return Err(TraceError::NoSuchProcess(pid));
        }
        if tgid_of(pid)? != Some(pid) {
            return Err(TraceError::NoSuchProcess(pid));
        }
        refuse_untraceable(pid)?;
        if pid == std::process::id() as i32 {
            return Err(TraceError::Unsupported {
                pid,
                what: "checkpointing ckpt itself".into(),
            });
        }
        // PIDs are recorded as this process sees them: a process of another PID
        // namespace would be restored under the wrong ones.
        let ns = |p: &str| std::fs::metadata(p).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
        if let (Ok(mine), Ok(theirs)) = (ns("/proc/self/ns/pid"), ns(&proc::path(pid, "ns/pid"))) {
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
            group_stop: None,
            regs_read: false,
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
                        return Err(why_not_allowed(pid, tid, &e))
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
        f.regs_read = true;
        Ok(f)
    }

    /// Wait until `tid` sits in its interrupt stop, passing real signals on and adopting
    /// threads cloned meanwhile. Within [`ptrace::WAIT_LIMIT`] in all: a thread that
    /// keeps taking other stops (signals, forks) without ever reaching its interrupt
    /// stop fails the freeze with what it took instead of holding it for ever.
    fn wait_stopped(&mut self, tid: i32, seized: &mut BTreeSet<i32>) -> Result<()> {
        let deadline = std::time::Instant::now() + ptrace::WAIT_LIMIT;
        let mut other_stops = 0u64;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(TraceError::io(
                    self.pid,
                    format!("waiting for thread {tid}"),
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "it took {other_stops} other ptrace stops but not its interrupt stop within {} s",
                            ptrace::WAIT_LIMIT.as_secs()
                        ),
                    ),
                ));
            }
            let (_, stop) = ptrace::wait_for(tid, left)
                .map_err(|e| TraceError::io(self.pid, format!("waiting for thread {tid}"), e))?;
            other_stops += 1;
            match stop {
                Stop::Event => return Ok(()),
                Stop::Group(sig) => {
                    self.group_stop = Some(sig);
                    return Ok(());
                }
                Stop::Signal(sig) => {
                    // Deliver it now; the interrupt, asked for again (this stop answered
                    // the first), stops the thread right after.
                    let _ = ptrace::cont_to_interrupt(tid, sig);
                }
                Stop::NewTask(child) => {
                    if tgid_of(child)? == Some(self.pid) && seized.insert(child) {
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
                    let _ = ptrace::cont_to_interrupt(tid, 0);
                }
                Stop::Syscall | Stop::OtherEvent(_) => {
                    let _ = ptrace::cont_to_interrupt(tid, 0);
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

    /// Kill the process (SIGKILL) while we still hold it, then let go. Returns the
    /// threads that could not be let go (they were dying already): they stay traced
    /// by us until we collect them (see `FrozenTree::kill`).
    pub fn kill(mut self) -> Vec<i32> {
        // SAFETY: plain kill(2).
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        self.released = true;
        self.threads
            .iter()
            .filter(|t| ptrace::detach(t.tid, 0).is_err())
            .map(|t| t.tid)
            .collect()
    }

    fn release_all(&mut self) {
        if self.released {
            return;
        }
        self.released = true;
        for t in &self.threads {
            if self.regs_read {
                let _ = ptrace::set_regs(t.tid, &t.regs);
            }
            if ptrace::detach(t.tid, 0).is_err() {
                let_go(t.tid);
            }
        }
        for t in &self.threads {
            for held in &t.resend {
                held.hand_back(self.pid, t.tid);
            }
        }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        self.release_all();
    }
}
