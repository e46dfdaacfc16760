//! Running a system call inside a frozen thread, for the state /proc does not show
//! (signal handlers, sigaltstack, clear_child_tid, brk, itimers) and for the last steps
//! of a restore (unmapping the loader, setting the exe link).
//!
//! The thread's registers are pointed at a `syscall` instruction already present in the
//! process (its vdso), run to syscall exit with PTRACE_SYSCALL, and put back. Results
//! larger than a register go to a scratch area below the thread's stack red zone, whose
//! bytes are saved and written back.

use crate::freeze::FrozenThread;
use crate::ptrace::{self, Stop};
use crate::state::{reg, Regs};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

pub struct Injector {
    mem: File,
    syscall_insn: u64,
}

/// Bytes kept free below the stack pointer: the 128-byte red zone and some margin.
const SCRATCH_GAP: u64 = 1024;
pub const SCRATCH_LEN: usize = 512;

impl Injector {
    /// `exec_ranges`: executable regions to search for a `syscall` instruction (the vdso
    /// first).
    pub fn new(pid: i32, exec_ranges: &[(u64, u64)]) -> io::Result<Injector> {
        let mem = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/proc/{pid}/mem"))?;
        for &(start, end) in exec_ranges {
            let mut buf = vec![0u8; (end - start).min(1 << 20) as usize];
            if mem.read_exact_at(&mut buf, start).is_err() {
                continue;
            }
            if let Some(i) = buf.windows(2).position(|w| w == [0x0f, 0x05]) {
                return Ok(Injector {
                    mem,
                    syscall_insn: start + i as u64,
                });
            }
        }
        Err(io::Error::other(
            "no syscall instruction found to inject system calls",
        ))
    }

    pub fn with_syscall_insn(pid: i32, addr: u64) -> io::Result<Injector> {
        let mem = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/proc/{pid}/mem"))?;
        Ok(Injector {
            mem,
            syscall_insn: addr,
        })
    }

    pub fn mem(&self) -> &File {
        &self.mem
    }

    /// Address of the `syscall` instruction used.
    pub fn syscall_insn(&self) -> u64 {
        self.syscall_insn
    }

    /// Run `nr(args...)` in the stopped thread and return the raw result (-errno on error).
    /// The thread's registers are `t.regs` again afterwards.
    pub fn syscall(&self, t: &mut FrozenThread, nr: i64, args: [u64; 6]) -> io::Result<i64> {
        let mut r: Regs = t.regs;
        r[reg::RAX] = nr as u64;
        r[reg::ORIG_RAX] = u64::MAX;
        r[reg::RDI] = args[0];
        r[reg::RSI] = args[1];
        r[reg::RDX] = args[2];
        r[reg::R10] = args[3];
        r[reg::R8] = args[4];
        r[reg::R9] = args[5];
        r[reg::RIP] = self.syscall_insn;
        ptrace::set_regs(t.tid, &r)?;
        let result = self.run_to_exit(t);
        let put_back = ptrace::set_regs(t.tid, &t.regs);
        let v = result?;
        put_back?;
        Ok(v)
    }

    fn run_to_exit(&self, t: &mut FrozenThread) -> io::Result<i64> {
        let mut seen_enter = false;
        ptrace::syscall(t.tid, 0)?;
        loop {
            let (_, stop) = ptrace::wait(t.tid)?;
            match stop {
                Stop::Syscall if !seen_enter => seen_enter = true,
                Stop::Syscall => {
                    return Ok(ptrace::get_regs(t.tid)?[reg::RAX] as i64);
                }
                Stop::Signal(sig) => t.resend.push(crate::freeze::Held::take(t.tid, sig)),
                Stop::Exited(_) | Stop::Killed(_) => {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH))
                }
                _ => {}
            }
            ptrace::syscall(t.tid, 0)?;
        }
    }

    /// Address of a scratch area of SCRATCH_LEN bytes for thread `t`.
    pub fn scratch_addr(t: &FrozenThread) -> u64 {
        (t.regs[reg::RSP] - SCRATCH_GAP - SCRATCH_LEN as u64) & !63
    }

    /// Run a syscall that writes up to SCRATCH_LEN bytes through a pointer argument.
    /// `args` may use the returned scratch address (passed to `make_args`).
    pub fn syscall_with_buf(
        &self,
        t: &mut FrozenThread,
        nr: i64,
        make_args: impl FnOnce(u64) -> [u64; 6],
        input: &[u8],
        out: &mut [u8],
    ) -> io::Result<i64> {
        let addr = Self::scratch_addr(t);
        let mut saved = [0u8; SCRATCH_LEN];
        self.mem.read_exact_at(&mut saved, addr)?;
        let run = || -> io::Result<i64> {
            if !input.is_empty() {
                self.mem.write_all_at(input, addr)?;
            }
            let r = self.syscall(t, nr, make_args(addr))?;
            if !out.is_empty() {
                self.mem.read_exact_at(out, addr)?;
            }
            Ok(r)
        };
        let r = run();
        self.mem.write_all_at(&saved, addr)?;
        r
    }
}

/// The result of an injected system call: a negative result in -4095..0 is an errno.
pub fn injected(r: io::Result<i64>) -> io::Result<i64> {
    match r {
        Ok(v) if (-4095..0).contains(&v) => Err(io::Error::from_raw_os_error(-v as i32)),
        r => r,
    }
}
