//! Threads: recreating every thread of the plan with its original TID, restoring each
//! thread's own kernel state, and parking them all for the front end.
//!
//! `threads[0]` is the calling process itself (its TID is the PID the front end forked
//! with). Thread `i > 0` is created with `clone3(set_tid = [tid])` on loader stack slot `i`
//! and starts in [`thread_entry`]. Every thread restores its own state
//! ([`restore_thread_state`]), then the others count themselves in [`ARRIVED`] and park;
//! the main thread waits for all of them in [`wait_for_threads`].

use core::arch::naked_asm;
use core::sync::atomic::{AtomicU32, Ordering};

use crate::planfile::Plan;
use crate::status::{self, Context, Fail, Result};
use crate::syscall::{
    self, CloneArgs, MAP_ANONYMOUS, MAP_FIXED_NOREPLACE, MAP_PRIVATE, PROT_READ, PROT_WRITE,
};
use ckpt_plan::*;

/// Number of non-main threads that have restored their state and parked (futex word).
static ARRIVED: AtomicU32 = AtomicU32::new(0);

const CLONE_VM: u64 = 0x100;
const CLONE_FS: u64 = 0x200;
const CLONE_FILES: u64 = 0x400;
const CLONE_SIGHAND: u64 = 0x800;
const CLONE_THREAD: u64 = 0x10000;
const CLONE_SYSVSEM: u64 = 0x40000;

/// Checks that the process is `threads[0]` and creates every other thread.
#[inline(never)]
pub fn create_threads(plan: &Plan) -> Result<()> {
    let pid = syscall::getpid();
    let leader = plan.leader();
    if leader.tid != pid {
        return Err(Fail::new(
            STAGE_THREAD,
            syscall::ESRCH,
            leader.tid,
            "threads[0] is not this process",
        ));
    }
    let n = plan.threads.len() as u64;
    if n < 2 {
        return Ok(());
    }
    // One stack slot per thread index (slot 0 stays unused: the main thread runs on .bss).
    // SAFETY: the stacks area is reserved for this inside the loader zone.
    let got = unsafe {
        syscall::mmap(
            LOADER_STACKS_ADDR,
            n * LOADER_THREAD_STACK,
            PROT_READ | PROT_WRITE,
            MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    }
    .ctx(
        STAGE_THREAD,
        LOADER_STACKS_ADDR,
        "cannot map the thread stacks",
    )?;
    if got != LOADER_STACKS_ADDR {
        return Err(Fail::new(
            STAGE_THREAD,
            syscall::EEXIST,
            got,
            "thread stacks mapped at a wrong address",
        ));
    }

    for (i, t) in plan.threads.iter().enumerate().skip(1) {
        let set_tid: [i32; 1] = [t.tid as i32];
        let args = CloneArgs {
            flags: CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM,
            pidfd: 0,
            child_tid: 0,
            parent_tid: 0,
            exit_signal: 0,
            stack: LOADER_STACKS_ADDR + i as u64 * LOADER_THREAD_STACK,
            stack_size: LOADER_THREAD_STACK,
            tls: 0,
            set_tid: set_tid.as_ptr() as u64,
            set_tid_size: 1,
            cgroup: 0,
        };
        // SAFETY: the stack slot is ours and unused; the child never returns here.
        let ret =
            unsafe { clone3_thread(&args, core::mem::size_of::<CloneArgs>(), i as u64, plan) };
        if (-4095..0).contains(&ret) {
            return Err(Fail::new(
                STAGE_THREAD,
                (-ret) as u64,
                t.tid,
                "clone3 with set_tid failed",
            ));
        }
    }
    Ok(())
}

/// `clone3(args, size)`; the child starts on its new stack in `thread_entry(index, plan)`.
/// Returns the child TID or `-errno` in the parent.
///
/// # Safety
/// `args` points to a valid `CloneArgs` of `size` bytes whose stack is a mapped, unused
/// slot that nothing else runs on, and `plan` stays valid for as long as the child runs
/// (the child dereferences it in `thread_entry`, and never returns into the caller).
#[unsafe(naked)]
unsafe extern "C" fn clone3_thread(
    _args: *const CloneArgs,
    _size: usize,
    _index: u64,
    _plan: *const Plan,
) -> i64 {
    naked_asm!(
        "push rbx",
        "push r12",
        // Callee-saved registers survive into the child: index and plan go there.
        "mov rbx, rdx",
        "mov r12, rcx",
        "mov eax, {nr}",
        "syscall",
        "test rax, rax",
        "jz 2f",
        "pop r12",
        "pop rbx",
        "ret",
        // Child: rsp is the 16-byte aligned top of its stack slot.
        "2:",
        "xor ebp, ebp",
        "mov rdi, rbx",
        "mov rsi, r12",
        "call {entry}",
        "ud2",
        nr = const syscall::SYS_CLONE3,
        entry = sym thread_entry,
    )
}

/// First Rust code of a created thread: restore its state, check in, park.
extern "C" fn thread_entry(index: u64, plan: *const Plan) -> ! {
    // SAFETY: the Plan lives in the main thread's frame, which never returns.
    let plan = unsafe { &*plan };
    let t = &plan.threads[index as usize];
    if let Err(f) = restore_thread_state(t) {
        status::fail(f);
    }
    ARRIVED.fetch_add(1, Ordering::SeqCst);
    syscall::futex_wake(&ARRIVED, 1);
    status::park()
}

/// Restores the kernel state of the calling thread (the signal mask is left to the front
/// end, which sets it with the registers).
#[inline(never)]
pub fn restore_thread_state(t: &PlanThread) -> Result<()> {
    let tid = t.tid;
    if t.robust_head != 0 {
        syscall::set_robust_list(t.robust_head, t.robust_len).ctx(
            STAGE_THREAD_STATE,
            tid,
            "set_robust_list failed",
        )?;
    }
    syscall::set_tid_address(t.clear_child_tid);

    let ss = if t.ss_flags & syscall::SS_DISABLE != 0 {
        syscall::StackT {
            ss_sp: 0,
            ss_flags: syscall::SS_DISABLE as i32,
            _pad: 0,
            ss_size: 0,
        }
    } else {
        syscall::StackT {
            ss_sp: t.ss_sp,
            ss_flags: t.ss_flags as i32,
            _pad: 0,
            ss_size: t.ss_size,
        }
    };
    syscall::sigaltstack(&ss).ctx(STAGE_THREAD_STATE, tid, "sigaltstack failed")?;

    // PR_SET_NAME reads at most 16 bytes and terminates the name itself.
    let mut name = t.name;
    name[15] = 0;
    // SAFETY: `name` is a 16-byte NUL-terminated buffer.
    unsafe { syscall::prctl(syscall::PR_SET_NAME, name.as_ptr() as usize, 0, 0, 0) }.ctx(
        STAGE_THREAD_STATE,
        tid,
        "prctl(PR_SET_NAME) failed",
    )?;

    // Last: from here on the kernel writes into the restored image's rseq area.
    if t.rseq_addr != 0 {
        syscall::rseq(t.rseq_addr, t.rseq_len, t.rseq_sig).ctx(
            STAGE_THREAD_STATE,
            tid,
            "rseq registration failed",
        )?;
    }
    Ok(())
}

/// Waits until every created thread has restored its state and parked.
#[inline(never)]
pub fn wait_for_threads(plan: &Plan) {
    let others = plan.threads.len() as u32 - 1;
    loop {
        let n = ARRIVED.load(Ordering::SeqCst);
        if n >= others {
            return;
        }
        syscall::futex_wait(&ARRIVED, n);
    }
}
