//! Thin, safe wrappers around the ptrace requests ckpt uses (x86-64 only).
//! Every function takes a TID; none of them waits.

use crate::state::{Regs, Rseq};
use std::io;
use std::time::{Duration, Instant};

pub const PTRACE_SEIZE: libc::c_uint = 0x4206;
pub const PTRACE_INTERRUPT: libc::c_uint = 0x4207;
pub const PTRACE_PEEKSIGINFO: libc::c_uint = 0x4209;
pub const PTRACE_GETSIGMASK: libc::c_uint = 0x420a;
pub const PTRACE_SETSIGMASK: libc::c_uint = 0x420b;
pub const PTRACE_GET_RSEQ_CONFIGURATION: libc::c_uint = 0x420f;
pub const PTRACE_EVENT_STOP: i32 = 128;
pub const NT_X86_XSTATE: usize = 0x202;

/// Options used while a process is frozen: follow new threads and children, and mark
/// syscall stops so that injected system calls can be told from signals.
pub const FREEZE_OPTIONS: libc::c_long = (libc::PTRACE_O_TRACESYSGOOD
    | libc::PTRACE_O_TRACECLONE
    | libc::PTRACE_O_TRACEFORK
    | libc::PTRACE_O_TRACEVFORK) as libc::c_long;

fn raw(req: libc::c_uint, tid: i32, addr: usize, data: usize) -> io::Result<libc::c_long> {
    // SAFETY: `__errno_location` returns a valid, aligned pointer to the calling thread's
    // errno, which only this thread accesses; clearing it lets a -1 result from
    // PTRACE_PEEK* be told from an error.
    unsafe { *libc::__errno_location() = 0 };
    // SAFETY: `raw` is private to this module, and every caller passes as `addr`/`data`
    // either a plain integer (options, signal, size, regset type) or a pointer to a live
    // local of at least the size the request reads or writes: Regs (27 * 8 bytes, checked
    // against user_regs_struct) for GETREGS/SETREGS, an iovec over a buffer of iov_len
    // bytes for GETREGSET/SETREGSET, a u64 sigset with size 8, an RseqConfig with its
    // size, a c_ulong for GETEVENTMSG, a 16-byte user_desc for GET_THREAD_AREA, a buffer of the filter's length (learnt by a first call with a null buffer) for SECCOMP_GET_FILTER, a 16-byte seccomp_metadata with its size for SECCOMP_GET_METADATA, and for PEEKSIGINFO the args plus a buffer of
    // `nr * 128` bytes. The kernel keeps none of them after the call.
    let r = unsafe {
        libc::ptrace(
            req,
            tid,
            addr as *mut libc::c_void,
            data as *mut libc::c_void,
        )
    };
    if r == -1 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(0) {
            return Err(e);
        }
    }
    Ok(r)
}

pub fn seize(tid: i32, options: libc::c_long) -> io::Result<()> {
    raw(PTRACE_SEIZE, tid, 0, options as usize).map(drop)
}

pub fn set_options(tid: i32, options: libc::c_long) -> io::Result<()> {
    raw(libc::PTRACE_SETOPTIONS, tid, 0, options as usize).map(drop)
}

pub fn interrupt(tid: i32) -> io::Result<()> {
    raw(PTRACE_INTERRUPT, tid, 0, 0).map(drop)
}

pub fn detach(tid: i32, sig: i32) -> io::Result<()> {
    raw(libc::PTRACE_DETACH, tid, 0, sig as usize).map(drop)
}

pub fn cont(tid: i32, sig: i32) -> io::Result<()> {
    raw(libc::PTRACE_CONT, tid, 0, sig as usize).map(drop)
}

/// Resume `tid` (with `sig`) from a ptrace stop that is not the interrupt stop its
/// caller waits for, with the interrupt asked for again first. Any ptrace stop
/// answers a pending PTRACE_INTERRUPT (the kernel's `ptrace_stop` clears
/// JOBCTL_TRAP_STOP on every trap): a thread that took a signal-delivery stop or a
/// fork event before its interrupt stop, and was only continued, runs on and never
/// stops (a shell that forks and gets SIGCHLD all the time was never frozen).
pub fn cont_to_interrupt(tid: i32, sig: i32) -> io::Result<()> {
    interrupt(tid)?;
    cont(tid, sig)
}

pub fn syscall(tid: i32, sig: i32) -> io::Result<()> {
    raw(libc::PTRACE_SYSCALL, tid, 0, sig as usize).map(drop)
}

pub fn get_regs(tid: i32) -> io::Result<Regs> {
    let mut r: Regs = [0; 27];
    const _: () = assert!(std::mem::size_of::<libc::user_regs_struct>() == 27 * 8);
    raw(libc::PTRACE_GETREGS, tid, 0, r.as_mut_ptr() as usize)?;
    Ok(r)
}

pub fn set_regs(tid: i32, r: &Regs) -> io::Result<()> {
    raw(libc::PTRACE_SETREGS, tid, 0, r.as_ptr() as usize).map(drop)
}

/// The XSAVE area in standard (non-compacted) format, as long as the kernel says.
pub fn get_xstate(tid: i32) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    raw(
        libc::PTRACE_GETREGSET,
        tid,
        NT_X86_XSTATE,
        &mut iov as *mut _ as usize,
    )?;
    buf.truncate(iov.iov_len);
    Ok(buf)
}

pub fn set_xstate(tid: i32, xstate: &[u8]) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: xstate.as_ptr() as *mut libc::c_void,
        iov_len: xstate.len(),
    };
    raw(
        libc::PTRACE_SETREGSET,
        tid,
        NT_X86_XSTATE,
        &mut iov as *mut _ as usize,
    )
    .map(drop)
}

pub fn get_sigmask(tid: i32) -> io::Result<u64> {
    let mut m: u64 = 0;
    raw(PTRACE_GETSIGMASK, tid, 8, &mut m as *mut u64 as usize)?;
    Ok(m)
}

pub fn set_sigmask(tid: i32, mask: u64) -> io::Result<()> {
    raw(PTRACE_SETSIGMASK, tid, 8, &mask as *const u64 as usize).map(drop)
}

#[repr(C)]
#[derive(Default)]
struct RseqConfig {
    rseq_abi_pointer: u64,
    rseq_abi_size: u32,
    signature: u32,
    flags: u32,
    pad: u32,
}

pub fn get_rseq(tid: i32) -> io::Result<Option<Rseq>> {
    let mut c = RseqConfig::default();
    raw(
        PTRACE_GET_RSEQ_CONFIGURATION,
        tid,
        std::mem::size_of::<RseqConfig>(),
        &mut c as *mut _ as usize,
    )?;
    Ok((c.rseq_abi_pointer != 0).then_some(Rseq {
        addr: c.rseq_abi_pointer,
        len: c.rseq_abi_size,
        sig: c.signature,
        flags: c.flags,
    }))
}

const PTRACE_GET_THREAD_AREA: libc::c_uint = 25;

/// Whether any of the thread's three GDT TLS entries (12..14, set_thread_area) is in use.
/// An unused entry reads as base 0, limit 0, and only `read_exec_only` and
/// `seg_not_present` set (flags 0x28).
pub fn thread_area_in_use(tid: i32) -> io::Result<bool> {
    for entry in 12..15usize {
        // struct user_desc: entry_number, base_addr, limit, flag bits: 16 bytes.
        let mut d = [0u32; 4];
        raw(PTRACE_GET_THREAD_AREA, tid, entry, d.as_mut_ptr() as usize)?;
        if d[1] != 0 || d[2] != 0 || d[3] != 0x28 {
            return Ok(true);
        }
    }
    Ok(false)
}

const PTRACE_SECCOMP_GET_FILTER: libc::c_uint = 0x420c;
const PTRACE_SECCOMP_GET_METADATA: libc::c_uint = 0x420d;

/// Seccomp filter `index` of the thread (0: the newest), as `struct sock_filter`
/// instructions (8 bytes each); `None` past the oldest. Needs CAP_SYS_ADMIN.
pub fn seccomp_filter(tid: i32, index: usize) -> io::Result<Option<Vec<u64>>> {
    let n = match raw(PTRACE_SECCOMP_GET_FILTER, tid, index, 0) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        r => r?,
    };
    let mut insns = vec![0u64; n as usize];
    let got = raw(
        PTRACE_SECCOMP_GET_FILTER,
        tid,
        index,
        insns.as_mut_ptr() as usize,
    )?;
    insns.truncate(got as usize);
    Ok(Some(insns))
}

/// The SECCOMP_FILTER_FLAG_* filter `index` of the thread was installed with.
pub fn seccomp_flags(tid: i32, index: usize) -> io::Result<u64> {
    // struct seccomp_metadata { u64 filter_off; u64 flags; }
    let mut md = [index as u64, 0];
    raw(
        PTRACE_SECCOMP_GET_METADATA,
        tid,
        16,
        md.as_mut_ptr() as usize,
    )?;
    Ok(md[1])
}

/// get_robust_list(2) of another thread: (head, len).
pub fn get_robust_list(tid: i32) -> io::Result<(u64, u64)> {
    let mut head: u64 = 0;
    let mut len: u64 = 0;
    // SAFETY: get_robust_list(2) writes one pointer-sized head and one size_t, i.e. one
    // u64 each on x86-64, at `&mut head` and `&mut len`, two live locals.
    let r = unsafe {
        libc::syscall(
            libc::SYS_get_robust_list,
            tid,
            &mut head as *mut u64,
            &mut len as *mut u64,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((head, len))
}

/// What `waitpid` reported for a traced thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// PTRACE_EVENT_STOP: the stop PTRACE_INTERRUPT (or a new-thread attach) asked for.
    Event,
    /// A group-stop (SIGSTOP/SIGTSTP...) seen as PTRACE_EVENT_STOP with that signal.
    Group(i32),
    /// PTRACE_EVENT_CLONE/FORK/VFORK: the new task's id.
    NewTask(i32),
    /// A syscall-enter or -exit stop (TRACESYSGOOD).
    Syscall,
    /// A signal about to be delivered; it must be passed on when resuming.
    Signal(i32),
    /// PTRACE_EVENT_EXIT or other events.
    OtherEvent(i32),
    Exited(i32),
    Killed(i32),
}

/// How long [`wait`] waits for a state change: a thread that does not reach a stop in
/// this time (in an uninterruptible sleep, say) fails the step instead of hanging it.
pub const WAIT_LIMIT: Duration = Duration::from_secs(60);

/// Wait for one state change of `tid` (any thread when tid == -1), at most
/// [`WAIT_LIMIT`] (then `ErrorKind::TimedOut`).
pub fn wait(tid: i32) -> io::Result<(i32, Stop)> {
    wait_for(tid, WAIT_LIMIT)
}

/// [`wait`] with its own limit. Polls (WNOHANG): a few yields first, since an injected
/// system call or a ptrace stop usually comes within microseconds, then sleeps growing
/// to a millisecond.
pub fn wait_for(tid: i32, limit: Duration) -> io::Result<(i32, Stop)> {
    let deadline = Instant::now() + limit;
    let mut tries = 0u32;
    loop {
        let mut status = 0;
        // SAFETY: waitpid(2) writes one c_int at `&mut status`, a live local; no other
        // argument is a pointer.
        let r = unsafe { libc::waitpid(tid, &mut status, libc::__WALL | libc::WNOHANG) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if r > 0 {
            return Ok((r, decode(r, status)));
        }
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "thread {tid} did not stop within {} s ({})",
                    limit.as_secs(),
                    task_state(tid)
                ),
            ));
        }
        tries += 1;
        if tries < 200 {
            std::thread::yield_now();
        } else {
            std::thread::sleep(Duration::from_micros(u64::from((tries - 199).min(50)) * 20));
        }
    }
}

/// The state line of a thread's /proc status, for a message.
fn task_state(tid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{tid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("State:"))
                .map(|v| format!("state {}", v.trim()))
        })
        .unwrap_or_else(|| "state unknown".into())
}

fn decode(tid: i32, status: i32) -> Stop {
    if libc::WIFEXITED(status) {
        return Stop::Exited(libc::WEXITSTATUS(status));
    }
    if libc::WIFSIGNALED(status) {
        return Stop::Killed(libc::WTERMSIG(status));
    }
    let sig = libc::WSTOPSIG(status);
    let event = status >> 16;
    match event {
        0 if sig == (libc::SIGTRAP | 0x80) => Stop::Syscall,
        0 => Stop::Signal(sig),
        PTRACE_EVENT_STOP => match sig {
            libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU => Stop::Group(sig),
            _ => Stop::Event,
        },
        libc::PTRACE_EVENT_CLONE | libc::PTRACE_EVENT_FORK | libc::PTRACE_EVENT_VFORK => {
            let mut msg: libc::c_ulong = 0;
            let _ = raw(
                libc::PTRACE_GETEVENTMSG,
                tid,
                0,
                &mut msg as *mut _ as usize,
            );
            Stop::NewTask(msg as i32)
        }
        e => Stop::OtherEvent(e),
    }
}

#[repr(C)]
struct PeekSiginfoArgs {
    off: u64,
    flags: u32,
    nr: i32,
}

/// Every queued siginfo_t (128 bytes each) of the thread's private queue, or of the
/// process-wide queue when `shared`, without dequeuing them.
pub fn peek_siginfo(tid: i32, shared: bool) -> io::Result<Vec<Vec<u8>>> {
    const BATCH: usize = 32;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 128 * BATCH];
    loop {
        let args = PeekSiginfoArgs {
            off: out.len() as u64,
            flags: shared as u32,
            nr: BATCH as i32,
        };
        let n = raw(
            PTRACE_PEEKSIGINFO,
            tid,
            &args as *const _ as usize,
            buf.as_mut_ptr() as usize,
        )? as usize;
        if n == 0 {
            return Ok(out);
        }
        out.extend(buf[..n * 128].chunks_exact(128).map(<[u8]>::to_vec));
    }
}
