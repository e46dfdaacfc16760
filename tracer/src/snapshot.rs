//! Copy-on-write snapshot of a frozen process, so that it is stopped only for a few
//! milliseconds whatever its size: a `clone` with no exit signal is injected into the
//! frozen leader; the new child is a frozen copy of the memory, read while the original
//! runs on. The child never runs a single instruction of its own: it starts in a
//! ptrace stop, is killed, and its zombie is reaped by an injected wait4(__WALL), so the
//! process never sees a SIGCHLD or a child it did not make.
//!
//! What fork does not copy is read from the original before it resumes: regions marked
//! MADV_DONTFORK (`dc`) or MADV_WIPEONFORK (`wf`), and shared memory (which the running
//! original could change under the reader).

use crate::freeze::{Frozen, FrozenThread};
use crate::inject::Injector;
use crate::ptrace::{self, Stop};
use std::io;

/// A frozen copy of a process's memory.
pub struct Snapshot {
    pub pid: i32,
    child: i32,
    reaped: bool,
}

const CLONE_SYSCALL: i64 = 56;

/// The name (comm) of a snapshot copy.
pub const SNAPSHOT_COMM: &str = "ckpt-snapshot";

/// An injector for the copy, using the same `syscall` instruction as the original's.
fn inj_for(child: i32, parent: &Injector) -> io::Result<Injector> {
    Injector::with_syscall_insn(child, parent.syscall_insn())
}

impl Snapshot {
    /// Make the copy. `inj` must be an injector for `f.pid`.
    pub fn take(f: &mut Frozen, inj: &Injector) -> io::Result<Snapshot> {
        let pid = f.pid;
        let leader = &mut f.threads[0];
        // clone(flags = 0): a fork whose exit raises no signal in the parent. TRACECLONE
        // (set at freeze) attaches the child to us, stopped.
        let r = inj.syscall(leader, CLONE_SYSCALL, [0, 0, 0, 0, 0, 0])?;
        if r < 0 {
            return Err(io::Error::from_raw_os_error(-r as i32));
        }
        let child = r as i32;
        let snap = Snapshot {
            pid,
            child,
            reaped: false,
        };
        loop {
            match ptrace::wait(child)?.1 {
                Stop::Event | Stop::Group(_) => break,
                Stop::Exited(_) | Stop::Killed(_) => {
                    return Err(io::Error::other("the snapshot process died"))
                }
                // Its attach stop is a pending trap like an interrupt's.
                _ => ptrace::cont_to_interrupt(child, 0)?,
            }
        }
        // If ckpt dies now, the copy must not run a single instruction: the kernel kills
        // it with us (EXITKILL). Its name marks the zombie it then leaves in the process,
        // which the next checkpoint reaps (see `tree::reap_stale_snapshots`).
        ptrace::set_options(
            child,
            (libc::PTRACE_O_TRACESYSGOOD | libc::PTRACE_O_EXITKILL) as libc::c_long,
        )?;
        let mut t = FrozenThread {
            tid: child,
            regs: ptrace::get_regs(child)?,
            syscall: None,
            resend: Vec::new(),
        };
        // The copy resumes from the injected clone: a finished syscall, nothing to fix.
        let name = inj_for(child, inj)?;
        let mut buf = [0u8; 16];
        buf[..SNAPSHOT_COMM.len()].copy_from_slice(SNAPSHOT_COMM.as_bytes());
        let r = name.syscall_with_buf(
            &mut t,
            libc::SYS_prctl,
            |a| [libc::PR_SET_NAME as u64, a, 0, 0, 0, 0],
            &buf,
            &mut [],
        )?;
        if r < 0 {
            return Err(io::Error::from_raw_os_error(-r as i32));
        }
        Ok(snap)
    }

    /// The process whose memory to read.
    pub fn memory_pid(&self) -> i32 {
        self.child
    }

    /// Kill the copy and make its parent reap it (a short second stop of one thread).
    pub fn discard(mut self) -> io::Result<()> {
        self.reap()
    }

    fn reap(&mut self) -> io::Result<()> {
        if self.reaped {
            return Ok(());
        }
        self.reaped = true;
        // SAFETY: kill(2) of the copy we made.
        unsafe { libc::kill(self.child, libc::SIGKILL) };
        loop {
            match ptrace::wait(self.child) {
                Ok((_, Stop::Exited(_) | Stop::Killed(_))) => break,
                Ok(_) => continue,
                Err(e) if e.raw_os_error() == Some(libc::ECHILD) => break,
                Err(e) => return Err(e),
            }
        }
        // The process runs on meanwhile: a short-lived one may have exited (its state
        // is from the freeze, so the checkpoint holds). Then the copy went to the
        // reaper of its orphans, which collects it like any other.
        if !self.parent_must_reap() {
            return Ok(());
        }
        match self.reap_in_parent() {
            Err(_) if !self.parent_must_reap() => Ok(()),
            r => r,
        }
    }

    /// Whether the dead copy is still the process's zombie child, which only the
    /// process itself can reap (no exit signal: its parent never learns of it).
    fn parent_must_reap(&self) -> bool {
        // Gone: reaped already. Unreadable or unparsable: nothing to do about it here,
        // the copy is dead either way.
        let Ok(Some(copy)) = crate::proc::stat_if_exists(self.child) else {
            return false;
        };
        copy.ppid == self.pid && !crate::freeze::process_ended(self.pid)
    }

    /// Seize the process again and reap the copy from inside, with an injected
    /// wait4(__WALL).
    fn reap_in_parent(&self) -> io::Result<()> {
        ptrace::seize(self.pid, libc::PTRACE_O_TRACESYSGOOD as libc::c_long)?;
        let mut t = FrozenThread {
            tid: self.pid,
            regs: [0; 27],
            syscall: None,
            resend: Vec::new(),
        };
        let mut stopped = false;
        let result = (|| -> io::Result<()> {
            ptrace::interrupt(self.pid)?;
            loop {
                match ptrace::wait(self.pid)?.1 {
                    Stop::Event | Stop::Group(_) => break,
                    // The process runs on meanwhile (SIGCHLD comes often to a shell):
                    // every other stop answers the interrupt, which is asked for again.
                    Stop::Signal(sig) => ptrace::cont_to_interrupt(self.pid, sig)?,
                    Stop::Exited(_) | Stop::Killed(_) => return Ok(()),
                    _ => ptrace::cont_to_interrupt(self.pid, 0)?,
                }
            }
            stopped = true;
            let mut regs = ptrace::get_regs(self.pid)?;
            t.syscall = crate::freeze::fixup_interrupted_syscall(&mut regs);
            ptrace::set_regs(self.pid, &regs)?;
            t.regs = regs;
            let ranges = crate::read::exec_ranges(self.pid).map_err(io::Error::other)?;
            let inj = Injector::new(self.pid, &ranges)?;
            let r = inj.syscall(
                &mut t,
                libc::SYS_wait4,
                [
                    self.child as u64,
                    0,
                    (libc::__WALL | libc::WNOHANG) as u64,
                    0,
                    0,
                    0,
                ],
            )?;
            if r != self.child as i64 {
                return Err(io::Error::other(format!(
                    "reaping the snapshot process {} returned {r}",
                    self.child
                )));
            }
            Ok(())
        })();
        if !(stopped && ptrace::detach(self.pid, 0).is_ok()) {
            // Not in a stop we know of (it died, or an error came first): never leave
            // it traced, or its end would stay hidden from its parent.
            crate::freeze::let_go(self.pid);
        }
        for held in &t.resend {
            held.hand_back(self.pid, self.pid);
        }
        result
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        let _ = self.reap();
    }
}
