//! The last steps of a restore, done from the outside once the loader has parked every
//! thread: seize them, give each its saved registers, xstate and signal mask, unmap the
//! loader, set the exe link and close-on-exec flags, and let everything run.

use anyhow::{bail, Context, Result};
use ckpt_format::state::{reg, ProcessState, VmaKind};
use ckpt_plan::Ready;
use ckpt_tracer::freeze::FrozenThread;
use ckpt_tracer::inject::Injector;
use ckpt_tracer::ptrace::{self, Stop};
use std::os::unix::fs::FileExt;

const PR_SET_MM: u64 = 35;
const PR_SET_MM_MAP: u64 = 14;

fn check(r: std::io::Result<i64>, what: &str) -> Result<i64> {
    match r {
        Ok(v) if (-4095..0).contains(&v) => {
            Err(std::io::Error::from_raw_os_error(-v as i32)).with_context(|| what.to_string())
        }
        Ok(v) => Ok(v),
        Err(e) => Err(e).with_context(|| what.to_string()),
    }
}

fn seize_all(state: &ProcessState) -> Result<Vec<FrozenThread>> {
    let mut threads = Vec::new();
    for t in &state.threads {
        // EXITKILL: if the restorer dies before it lets go, so does the process.
        ptrace::seize(
            t.tid,
            (libc::PTRACE_O_TRACESYSGOOD | libc::PTRACE_O_EXITKILL) as libc::c_long,
        )
        .with_context(|| format!("attaching to restored thread {}", t.tid))?;
        ptrace::interrupt(t.tid)?;
        loop {
            match ptrace::wait(t.tid)?.1 {
                Stop::Event | Stop::Group(_) => break,
                Stop::Exited(_) | Stop::Killed(_) => {
                    bail!("restored thread {} died before it could be resumed", t.tid)
                }
                // Signals are blocked in the loader; anything else: keep waiting (with
                // the interrupt asked for again: that stop answered it).
                _ => ptrace::cont_to_interrupt(t.tid, 0)?,
            }
        }
        threads.push(FrozenThread {
            tid: t.tid,
            regs: t.regs,
            syscall: None,
            resend: Vec::new(),
        });
    }
    Ok(threads)
}

/// `status_fd` and `exe_fd` are descriptor numbers inside the restored process. Returns
/// its threads, ready to run but still stopped: [`resume`] lets them go.
pub fn finish(
    state: &ProcessState,
    ready: &Ready,
    status_fd: i32,
    exe_fd: i32,
    drop_caps: bool,
    new_audit_session: bool,
) -> Result<Vec<FrozenThread>> {
    let pid = state.pid;
    let mut threads = seize_all(state)?;
    // The leader sits right after the `syscall` of its pause loop in loader code.
    let loader_rip = ptrace::get_regs(pid)?[reg::RIP];
    let mem = std::fs::File::open(format!("/proc/{pid}/mem"))?;
    let mut insn = [0u8; 2];
    mem.read_exact_at(&mut insn, loader_rip - 2)?;
    if insn != [0x0f, 0x05] {
        bail!("restored process {pid} is not parked where the loader should be");
    }
    for (t, saved) in threads.iter().zip(&state.threads) {
        ptrace::set_regs(t.tid, &t.regs)
            .with_context(|| format!("setting registers of thread {}", t.tid))?;
        ptrace::set_xstate(t.tid, &saved.xstate)
            .with_context(|| format!("setting xstate of thread {}", t.tid))?;
    }
    let leader = &mut threads[0];
    let loader = Injector::with_syscall_insn(pid, loader_rip - 2)?;
    check(
        loader.syscall(leader, libc::SYS_close, [status_fd as u64, 0, 0, 0, 0, 0]),
        "closing the loader's status pipe",
    )?;
    // Traced now (EXITKILL covers it): the death signal that tied it to its parent
    // during the restore goes back to the default.
    check(
        loader.syscall(
            leader,
            libc::SYS_prctl,
            [libc::PR_SET_PDEATHSIG as u64, 0, 0, 0, 0, 0],
        ),
        "resetting the parent-death signal",
    )?;
    check(
        loader.syscall(
            leader,
            libc::SYS_munmap,
            [
                ready.loader_start,
                ready.loader_end - ready.loader_start,
                0,
                0,
                0,
                0,
            ],
        ),
        "unmapping the loader",
    )?;
    drop(loader);

    // From here on, system calls go through the process's own vdso.
    let mut exec: Vec<(u64, u64)> = state
        .vmas
        .iter()
        .filter(|v| v.kind == VmaKind::Vdso)
        .map(|v| (v.start, v.end))
        .collect();
    exec.extend(
        state
            .vmas
            .iter()
            .filter(|v| v.prot & libc::PROT_EXEC as u32 != 0 && v.kind != VmaKind::Vdso)
            .map(|v| (v.start, v.end)),
    );
    let inj = Injector::new(pid, &exec)?;
    // aio contexts, while the exe descriptor (a regular file) is still open for the
    // empty reads that move their rings' heads and tails (ckpt_tracer::aio).
    ckpt_tracer::aio::restore(&inj, leader, &state.vmas, exe_fd)
        .map_err(|e| anyhow::anyhow!("process {pid}: {e}"))?;
    let mm = &state.mm;
    let mut map = Vec::with_capacity(104);
    for v in [
        mm.start_code,
        mm.end_code,
        mm.start_data,
        mm.end_data,
        mm.start_brk,
        mm.brk,
        mm.start_stack,
        mm.arg_start,
        mm.arg_end,
        mm.env_start,
        mm.env_end,
        0, // auxv pointer: already set by the loader
    ] {
        map.extend_from_slice(&v.to_le_bytes());
    }
    map.extend_from_slice(&0u32.to_le_bytes()); // auxv_size
    map.extend_from_slice(&(exe_fd as u32).to_le_bytes());
    let len = map.len() as u64;
    let r = inj.syscall_with_buf(
        leader,
        libc::SYS_prctl,
        |a| [PR_SET_MM, PR_SET_MM_MAP, a, len, 0, 0],
        &map,
        &mut [],
    );
    if let Err(e) = check(r, "setting /proc/PID/exe") {
        eprintln!("ckpt: warning: process {pid}: {e:#}; /proc/{pid}/exe names the loader");
    }
    check(
        inj.syscall(leader, libc::SYS_close, [exe_fd as u64, 0, 0, 0, 0, 0]),
        "closing the exe descriptor",
    )?;
    for fd in state.fds.iter().filter(|f| f.cloexec) {
        check(
            inj.syscall(
                leader,
                libc::SYS_fcntl,
                [
                    fd.fd as u64,
                    libc::F_SETFD as u64,
                    libc::FD_CLOEXEC as u64,
                    0,
                    0,
                    0,
                ],
            ),
            "setting close-on-exec",
        )?;
    }
    // What descriptor kinds can only do once the process exists and every descriptor
    // of it is in place (epoll's entries, memfd seals: ckpt_tracer::fd, docs/FDKINDS.md);
    // for a descriptor table shared with the parent, the parent's restore does it.
    if !ckpt_tracer::attr::shares::saved(state).files {
        ckpt_tracer::fd::late(&inj, leader, state)?;
    }
    // Pending signals, queued again from inside (only a process may queue a siginfo
    // that looks kernel-made to itself). Every signal is still blocked here.
    // `args` are the leading arguments; the siginfo pointer follows them.
    let queue = |leader: &mut FrozenThread, nr: i64, args: &[u64], info: &[u8]| {
        let r = inj.syscall_with_buf(
            leader,
            nr,
            |a| {
                let mut v = [0u64; 6];
                v[..args.len()].copy_from_slice(args);
                v[args.len()] = a;
                v
            },
            info,
            &mut [],
        );
        check(r, "queueing a pending signal").map(drop)
    };
    for info in &state.shared_pending {
        let sig = i32::from_le_bytes(info[0..4].try_into()?) as u64;
        queue(leader, libc::SYS_rt_sigqueueinfo, &[pid as u64, sig], info)?;
    }
    for saved in &state.threads {
        for info in &saved.pending {
            let sig = i32::from_le_bytes(info[0..4].try_into()?) as u64;
            queue(
                leader,
                libc::SYS_rt_tgsigqueueinfo,
                &[pid as u64, saved.tid as u64, sig],
                info,
            )?;
        }
    }
    super::timers::restore_timers(&inj, leader, state)?;
    ckpt_tracer::attr::restore_all(
        &mut ckpt_tracer::attr::Restore {
            pid,
            inj: &inj,
            threads: &mut threads,
            state,
            new_audit_session,
        },
        &state.attrs,
    )?;
    // The credentials group gave every thread exactly its saved capabilities; an image
    // without it (format 2, or written before the group existed) had ckpt's own, none.
    let creds_restored = state
        .attrs
        .iter()
        .any(|a| matches!(a, ckpt_format::state::Attr::Creds(_)));
    if drop_caps && !creds_restored {
        // capset(v3, all zero) in every thread: capabilities are per thread.
        let mut arg = Vec::new();
        arg.extend_from_slice(&0x2008_0522u32.to_le_bytes());
        arg.extend_from_slice(&0u32.to_le_bytes());
        arg.extend_from_slice(&[0u8; 24]);
        for t in threads.iter_mut() {
            let r = inj.syscall_with_buf(
                t,
                libc::SYS_capset,
                |a| [a, a + 8, 0, 0, 0, 0],
                &arg,
                &mut [],
            );
            check(r, "dropping the loader's capability")?;
        }
    }
    for (t, saved) in threads.iter().zip(&state.threads) {
        ptrace::set_regs(t.tid, &t.regs)?;
        ptrace::set_sigmask(t.tid, saved.sigmask)
            .with_context(|| format!("setting the signal mask of thread {}", t.tid))?;
    }
    Ok(threads)
}

/// Let the threads of a finished process run.
pub fn resume(threads: &[FrozenThread]) -> Result<()> {
    for t in threads {
        ptrace::detach(t.tid, 0).with_context(|| format!("resuming thread {}", t.tid))?;
    }
    Ok(())
}

/// Stop again every process that was in a group stop at the checkpoint, while every
/// process of the tree is finished and still traced (`ckpt_tracer::attr::jobctl`).
/// `states[i]`, `finished[i]`: each process and its threads; `children`: indices of each
/// one's children.
pub fn stop_stopped(
    states: &[&ProcessState],
    children: &[Vec<usize>],
    finished: &mut [Vec<FrozenThread>],
) -> Result<()> {
    use ckpt_tracer::attr::jobctl;
    for i in 0..states.len() {
        if jobctl::saved(states[i]).is_none_or(|j| j.stop_signal == 0) {
            continue;
        }
        let Some(j) = children.iter().position(|c| c.contains(&i)) else {
            jobctl::stop_again(states[i], &mut finished[i], None)?;
            continue;
        };
        let (own, parent) = if i < j {
            let (a, b) = finished.split_at_mut(j);
            (&mut a[i], &mut b[0])
        } else {
            let (a, b) = finished.split_at_mut(i);
            (&mut b[0], &mut a[j])
        };
        let ps = states[j];
        let inj = Injector::new(ps.pid, &ckpt_tracer::read::exec_ranges_of(&ps.vmas))
            .with_context(|| format!("process {}: preparing system call injection", ps.pid))?;
        let report_pending =
            jobctl::saved(ps).is_some_and(|p| p.stop_reports.contains(&states[i].pid));
        jobctl::stop_again(
            states[i],
            own,
            Some(jobctl::Parent {
                pid: ps.pid,
                thread: &mut parent[0],
                inj: &inj,
                report_pending,
            }),
        )?;
    }
    Ok(())
}
