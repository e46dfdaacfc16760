//! Read the whole state of a frozen process into a [`ProcessState`] (all but the page
//! contents, which the image writer streams with [`MemReader`]).

use crate::error::{Result, TraceError};
use crate::files::{self, IdentityCache};
use crate::freeze::Frozen;
use crate::inject::Injector;
use crate::maps::{self, MapEntry};
use crate::proc::{self, VmFlags};
use crate::procinfo;
use crate::ptrace;
use crate::state::*;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Reads page contents of the frozen process through /proc/PID/mem.
pub struct MemReader {
    mem: File,
}

impl MemReader {
    pub fn open(pid: i32) -> io::Result<MemReader> {
        Ok(MemReader {
            mem: File::open(proc::path(pid, "mem"))?,
        })
    }
    /// Fill `buf` from address `addr`.
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
        self.mem.read_exact_at(buf, addr)
    }
}

const PR_GET_TID_ADDRESS: u64 = 40;

fn injected(pid: i32, what: &str, r: io::Result<i64>) -> Result<i64> {
    match r {
        Ok(v) if v < 0 && v > -4096 => Err(TraceError::io(
            pid,
            what.to_string(),
            io::Error::from_raw_os_error(-v as i32),
        )),
        Ok(v) => Ok(v),
        Err(e) => Err(TraceError::io(pid, what.to_string(), e)),
    }
}

/// xfeatures (XCR0) from the sw_reserved bytes of an XSAVE area.
pub fn xstate_features(xstate: &[u8]) -> u64 {
    if xstate.len() >= 480 && xstate[464..468] == 0x46505853u32.to_le_bytes() {
        u64::from_le_bytes(xstate[472..480].try_into().unwrap())
    } else {
        0
    }
}

/// Executable regions to look for a `syscall` instruction in: the vdso first.
pub fn exec_ranges_of(vmas: &[Vma]) -> Vec<(u64, u64)> {
    let mut exec: Vec<(u64, u64)> = vmas
        .iter()
        .filter(|v| v.kind == VmaKind::Vdso)
        .map(|v| (v.start, v.end))
        .collect();
    exec.extend(
        vmas.iter()
            .filter(|v| v.prot & libc::PROT_EXEC as u32 != 0 && v.kind != VmaKind::Vdso)
            .map(|v| (v.start, v.end)),
    );
    exec
}

/// The same, read from /proc/PID/smaps of a live process.
pub fn exec_ranges(pid: i32) -> Result<Vec<(u64, u64)>> {
    let maps = proc::smaps(pid)?;
    let mut v: Vec<(u64, u64)> = maps
        .iter()
        .filter(|m| m.name == "[vdso]")
        .map(|m| (m.start, m.end))
        .collect();
    v.extend(
        maps.iter()
            .filter(|m| m.perms[2] == b'x' && m.name != "[vdso]")
            .map(|m| (m.start, m.end)),
    );
    Ok(v)
}

/// What reading a process yields besides its state, for a copy-on-write snapshot.
pub struct ReadExtras {
    /// The injector used (a snapshot is made with it).
    pub injector: Injector,
    /// Regions fork does not copy faithfully (MADV_DONTFORK, MADV_WIPEONFORK) or that the
    /// running process could change (shared): to be read from the original.
    pub not_from_snapshot: Vec<(u64, u64)>,
}

/// Read the state of a frozen process.
pub fn read_process(f: &mut Frozen) -> Result<ProcessState> {
    read_process_with(f).map(|(s, _)| s)
}

pub fn read_process_with(f: &mut Frozen) -> Result<(ProcessState, ReadExtras)> {
    let pid = f.pid;
    let io_err = |what: &str| {
        let what = what.to_string();
        move |e: io::Error| TraceError::io(pid, what.clone(), e)
    };
    let t0 = std::time::Instant::now();
    let status = proc::status(pid)?;
    crate::attr::timing("status", t0);
    // No x86_Thread_features line: a kernel without user shadow stacks.
    if status
        .thread_features
        .as_ref()
        .is_some_and(|f| f.iter().any(|f| f == "shstk"))
    {
        return Err(TraceError::Unsupported {
            pid,
            what: "shadow stacks".into(),
        });
    }
    if f.threads[0].regs[reg::CS] != 0x33 {
        return Err(TraceError::Unsupported {
            pid,
            what: "32-bit (compat mode) processes".into(),
        });
    }

    let mut ids = IdentityCache::for_dump(pid)?;
    let t0 = std::time::Instant::now();
    let entries: Vec<MapEntry> = proc::smaps(pid)?;
    crate::attr::timing("smaps", t0);
    let not_from_snapshot = entries
        .iter()
        .filter(|m| m.has_flag(VmFlags::DC) || m.has_flag(VmFlags::WF) || m.shared())
        .map(|m| (m.start, m.end))
        .collect();
    let t0 = std::time::Instant::now();
    let mut vmas = Vec::new();
    for m in &entries {
        if let Some(kind) = maps::classify(pid, m, &mut ids)? {
            vmas.push(Vma {
                start: m.start,
                end: m.end,
                prot: m.prot(),
                shared: m.shared(),
                offset: m.offset,
                growsdown: m.has_flag(VmFlags::GD),
                name: m.name.clone(),
                kind,
                pages: Vec::new(),
            });
        }
    }

    crate::attr::timing("regions", t0);
    let t0 = std::time::Instant::now();
    let inj = Injector::new(pid, &exec_ranges_of(&vmas))
        .map_err(io_err("preparing syscall injection"))?;
    crate::attr::timing("injector", t0);
    let t0 = std::time::Instant::now();
    crate::audit::check(pid, &inj, &mut f.threads, &entries)?;
    crate::attr::timing("audit", t0);

    let vdso_hash = match vmas.iter().find(|v| v.kind == VmaKind::Vdso) {
        Some(v) => {
            let mut b = vec![0u8; (v.end - v.start) as usize];
            inj.mem()
                .read_exact_at(&mut b, v.start)
                .map_err(io_err("reading the vdso"))?;
            xxhash_rust::xxh3::xxh3_64(&b)
        }
        None => 0,
    };

    let t0 = std::time::Instant::now();
    // Per-thread state.
    let mut threads = Vec::new();
    for i in 0..f.threads.len() {
        let tid = f.threads[i].tid;
        let what = |w: &str| format!("thread {tid}: {w}");
        let xstate = ptrace::get_xstate(tid).map_err(io_err(&what("reading xstate")))?;
        let sigmask = ptrace::get_sigmask(tid).map_err(io_err(&what("reading signal mask")))?;
        let rseq = ptrace::get_rseq(tid).map_err(io_err(&what("reading rseq")))?;
        let (robust_head, robust_len) =
            ptrace::get_robust_list(tid).map_err(io_err(&what("reading robust list")))?;
        let name = proc::comm(pid, tid).map_err(io_err(&what("reading name")))?;
        let pending =
            ptrace::peek_siginfo(tid, false).map_err(io_err(&what("reading pending signals")))?;
        let t = &mut f.threads[i];
        let mut out = [0u8; 8];
        let r = inj.syscall_with_buf(
            t,
            libc::SYS_prctl,
            |a| [PR_GET_TID_ADDRESS, a, 0, 0, 0, 0],
            &[],
            &mut out,
        );
        injected(pid, &what("prctl(PR_GET_TID_ADDRESS)"), r)?;
        let clear_child_tid = u64::from_le_bytes(out);
        let mut ss = [0u8; 24];
        let r = inj.syscall_with_buf(
            t,
            libc::SYS_sigaltstack,
            |a| [0, a, 0, 0, 0, 0],
            &[],
            &mut ss,
        );
        injected(pid, &what("sigaltstack"), r)?;
        threads.push(ThreadState {
            tid,
            regs: t.regs,
            xstate,
            sigmask,
            rseq,
            robust_head,
            robust_len,
            clear_child_tid,
            altstack: AltStack {
                sp: u64::from_le_bytes(ss[0..8].try_into().unwrap()),
                flags: i32::from_le_bytes(ss[8..12].try_into().unwrap()),
                size: u64::from_le_bytes(ss[16..24].try_into().unwrap()),
            },
            name,
            syscall: t.syscall,
            pending,
        });
    }

    crate::attr::timing("threads", t0);
    let t0 = std::time::Instant::now();
    // Per-process state that needs injection: brk, handlers, itimers.
    let leader = &mut f.threads[0];
    let brk = injected(pid, "brk(0)", inj.syscall(leader, libc::SYS_brk, [0; 6]))? as u64;
    // Read while the process is frozen: handlers cannot change until it runs again.
    let (caught, ignored) = (status.sig_caught, status.sig_ignored);
    let mut sigactions = Vec::new();
    for sig in 1..=64i32 {
        let bit = 1u64 << (sig - 1);
        if caught & bit != 0 {
            let mut sa = [0u8; 32];
            let r = inj.syscall_with_buf(
                leader,
                libc::SYS_rt_sigaction,
                |a| [sig as u64, 0, a, 8, 0, 0],
                &[],
                &mut sa,
            );
            injected(pid, &format!("rt_sigaction({sig})"), r)?;
            let w = |i: usize| u64::from_le_bytes(sa[i * 8..i * 8 + 8].try_into().unwrap());
            sigactions.push(SigAction {
                signo: sig,
                handler: w(0),
                flags: w(1),
                restorer: w(2),
                mask: w(3),
            });
        } else if ignored & bit != 0 {
            sigactions.push(SigAction {
                signo: sig,
                handler: 1, // SIG_IGN
                flags: 0,
                restorer: 0,
                mask: 0,
            });
        }
    }
    let (itimers, posix_timers) = crate::timers::read_timers(&inj, leader, pid, &threads)?;
    crate::attr::timing("handlers and timers", t0);
    let attrs = crate::attr::dump_all(&mut crate::attr::Dump {
        pid,
        group_stop: f.group_stop,
        inj: &inj,
        threads: &mut f.threads,
        maps: &entries,
    })?;

    let shared_pending =
        ptrace::peek_siginfo(pid, true).map_err(io_err("reading pending signals"))?;
    let stat = proc::stat(pid)?;
    let mut mm = stat.mm;
    mm.brk = brk;
    let t0 = std::time::Instant::now();
    let fds = files::read_fds(pid, &mut ids)?;
    crate::attr::timing("descriptors", t0);
    let t0 = std::time::Instant::now();
    let volatile_files = files::volatile_files(pid, &vmas, &fds, &ids)?;
    crate::attr::timing("memory file systems", t0);
    let t0 = std::time::Instant::now();
    let exe_path = proc::link(pid, "exe").map_err(io_err("reading exe link"))?;
    let exe = files::file_identity(std::path::Path::new(&proc::path(pid, "exe")), &exe_path)
        .map_err(io_err("reading the executable"))?;

    crate::attr::timing("executable", t0);
    let t0 = std::time::Instant::now();
    let pagemap = File::open(proc::path(pid, "pagemap")).map_err(io_err("opening pagemap"))?;
    for v in &mut vmas {
        v.pages = match v.kind {
            VmaKind::SharedAnon { .. } => maps::shared_anon_runs(pid, v),
            _ => None,
        }
        .map_or_else(|| maps::stored_runs(&pagemap, v), Ok)
        .map_err(io_err("reading pagemap"))?;
    }

    crate::attr::timing("pagemap", t0);
    Ok((
        ProcessState {
            pid,
            ppid: stat.ppid,
            pgid: stat.pgrp,
            sid: stat.session,
            comm: proc::comm(pid, pid).map_err(io_err("reading comm"))?,
            cmdline: proc::cmdline(pid).map_err(io_err("reading cmdline"))?,
            exe,
            cwd: proc::link(pid, "cwd").map_err(io_err("reading cwd"))?,
            umask: status.umask_of(pid)?,
            personality: proc::personality(pid)?,
            rlimits: procinfo::rlimits(pid).map_err(io_err("reading rlimits"))?,
            mm,
            auxv: proc::auxv(pid)?,
            xfeatures: threads
                .first()
                .map(|t| xstate_features(&t.xstate))
                .unwrap_or(0),
            threads,
            vmas,
            fds,
            sigactions,
            vdso_hash,
            shared_pending,
            volatile_files,
            itimers,
            posix_timers,
            attrs,
        },
        ReadExtras {
            injector: inj,
            not_from_snapshot,
        },
    ))
}
