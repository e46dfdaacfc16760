//! `ckpt-restore <plan_fd>`: the restore loader.
//!
//! A static, libc-free executable linked inside the loader zone (`ckpt_plan::LOADER_ZONE_*`).
//! The `ckpt restore` front end forks a child with the original PID, recreates its file
//! descriptors and execs this loader in it. The loader turns its own process into the
//! checkpointed memory image:
//!
//! 1. `_start` leaves the kernel's stack for one in `.bss`;
//! 2. blocks every signal;
//! 3. maps and validates the plan (`planfile`);
//! 4. unmaps everything outside the loader zone but the vdso pieces (`clear`);
//! 5. moves the vdso pieces to their old addresses (`vdso`);
//! 6. maps and fills every region (`regions`), then forks the children that share
//!    memory with it copy-on-write (`fork`: they reshape its memory into theirs);
//! 7. installs the signal handlers and 8. the mm fields (`process`);
//! 9. recreates the threads with their TIDs and 10. restores each thread's state (`threads`);
//! 11. closes the descriptors the plan names, reports success on the status pipe and parks.
//!
//! The front end then seizes every thread, sets registers, xstate and signal masks,
//! unmaps the loader zone and detaches. Any failure is reported on the status pipe
//! (`status`) and ends the process with status 127.

#![no_std]
#![no_main]

mod clear;
mod fork;
mod maps;
mod planfile;
mod process;
mod regions;
mod rt;
mod status;
mod syscall;
mod threads;
mod vdso;

use core::arch::naked_asm;

use ckpt_plan::*;
use status::{Fail, Result};

/// Size of the main thread's stack (in `.bss`, inside the loader zone).
const MAIN_STACK_SIZE: usize = 256 * 1024;

#[repr(C, align(16))]
struct Stack([u8; MAIN_STACK_SIZE]);

/// The main thread's stack. `static mut` so that it lands in writable `.bss`.
static mut MAIN_STACK: Stack = Stack([0; MAIN_STACK_SIZE]);

/// Entry point. The kernel's stack may lie where the image needs memory, so switch to our
/// own at once and hand the original stack pointer (argc, argv...) to Rust.
///
/// # Safety
/// Only the kernel calls this, once, as the process entry point.
#[unsafe(no_mangle)]
#[unsafe(naked)]
pub unsafe extern "C" fn _start() -> ! {
    naked_asm!(
        "mov rdi, rsp",
        "lea rsp, [rip + {stack}]",
        "add rsp, {size}",
        "xor ebp, ebp",
        "call {main}",
        "ud2",
        stack = sym MAIN_STACK,
        size = const MAIN_STACK_SIZE,
        main = sym loader_main,
    )
}

/// Reads argv[1] (the plan descriptor) from the initial stack.
///
/// # Safety
/// `sp` is the stack pointer the kernel gave `_start`.
unsafe fn plan_fd_from_args(sp: *const u64) -> Option<i32> {
    let argc = *sp;
    if argc < 2 {
        return None;
    }
    let mut p = *sp.add(2) as *const u8;
    let mut fd: i64 = 0;
    if *p == 0 {
        return None;
    }
    while *p != 0 {
        let c = *p;
        if !c.is_ascii_digit() || fd > i32::MAX as i64 / 10 {
            return None;
        }
        fd = fd * 10 + (c - b'0') as i64;
        p = p.add(1);
    }
    Some(fd as i32)
}

extern "C" fn loader_main(sp: *const u64) -> ! {
    // Nothing must interrupt the loader: block everything (SIGKILL/SIGSTOP aside).
    let _ = syscall::sigprocmask_set(!0);
    // SAFETY: `sp` is the kernel's initial stack pointer, still mapped at this point.
    let Some(plan_fd) = (unsafe { plan_fd_from_args(sp) }) else {
        // No plan, so no status pipe: the exit status must do.
        syscall::exit_group(status::EXIT_FAILURE);
    };
    match restore(plan_fd) {
        Ok(()) => status::park(),
        Err(f) => status::fail(f),
    }
}

/// Steps 3 to 11. Returns only on failure or after reporting success (then the caller
/// parks). The `Plan` lives in this frame, which the created threads also read.
fn restore(plan_fd: i32) -> Result<()> {
    status::set_stage(STAGE_PLAN);
    let mut plan = planfile::load(plan_fd)?;

    status::set_stage(STAGE_UNMAP);
    clear::clear_address_space()?;

    status::set_stage(STAGE_VDSO);
    vdso::relocate(&plan)?;

    status::set_stage(STAGE_MAP);
    regions::map_all(&plan)?;

    // A forked child goes on with its own plan (and may fork children of its own).
    status::set_stage(STAGE_FORK);
    while let Some(child) = fork::fork_children(&plan)? {
        plan = child;
        status::set_stage(STAGE_FORK);
    }
    finish_restore(&plan)
}

/// Steps 7 to 11.
fn finish_restore(plan: &planfile::Plan) -> Result<()> {
    status::set_stage(STAGE_SIGACTION);
    process::install_sigactions(plan)?;

    status::set_stage(STAGE_MM);
    process::restore_mm(plan)?;

    status::set_stage(STAGE_THREAD);
    threads::create_threads(plan)?;

    status::set_stage(STAGE_THREAD_STATE);
    threads::restore_thread_state(plan.leader())?;
    threads::wait_for_threads(plan);

    close_fds(plan);
    status::set_stage(STAGE_DONE);
    status::report_done();
    Ok(())
}

/// Closes the descriptors the plan lists, the image and the plan itself (the plan stays
/// mapped). Errors are ignored: a descriptor that is already closed is what we want.
fn close_fds(plan: &planfile::Plan) {
    for &fd in plan.close_fds {
        let _ = syscall::close(fd);
    }
    let _ = syscall::close(plan.image_fd());
    let _ = syscall::close(plan.fd);
}

/// Appends `s` to `buf` at `*n`, keeping room for the final NUL.
fn push(buf: &mut [u8], n: &mut usize, s: &[u8]) {
    for &b in s {
        if *n + 1 >= buf.len() {
            return;
        }
        buf[*n] = b;
        *n += 1;
    }
}

/// A panic is a loader bug: report it (with its location) like any failure.
#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    let mut msg = [0u8; 80];
    let mut n = 0;
    push(&mut msg, &mut n, b"loader panic");
    if let Some(loc) = info.location() {
        push(&mut msg, &mut n, b" at ");
        push(&mut msg, &mut n, loc.file().as_bytes());
        push(&mut msg, &mut n, b":");
        let mut digits = [0u8; 10];
        let mut line = loc.line();
        let mut d = digits.len();
        loop {
            d -= 1;
            digits[d] = b'0' + (line % 10) as u8;
            line /= 10;
            if line == 0 {
                break;
            }
        }
        push(&mut msg, &mut n, &digits[d..]);
    }
    let f = Fail::new(status::current_stage(), syscall::ENOTRECOVERABLE, 0, "");
    status::fail_raw(f.errno, f.stage, f.addr, &msg[..n])
}
