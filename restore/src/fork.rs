//! Children that keep the memory they share copy-on-write with their parent.
//!
//! A restored parent's loader forks the children its plan lists ([`fork_children`]) once
//! its own regions are mapped and filled, before it creates its threads. Each child
//! ([`forked`]) drops the parent's plan, loads its own and does what the front end does
//! before exec for the other processes ([`setup`]: pdeathsig, session and group,
//! descriptors, cwd, umask, limits, personality; a child forked with CLONE_FILES or
//! CLONE_FS shares its descriptor table or fs state with its parent and leaves those to
//! it). Then it reshapes the parent's address
//! space into its own ([`reshape`]): every range that is not one of its inherited
//! regions, a vdso piece or the loader zone is unmapped; each inherited region keeps its
//! pages, except that pages whose content differs from the child's image are rewritten
//! (one page copied, the others still shared) and pages the child did not have are
//! dropped (MADV_DONTNEED: zero again, or the file's content for a private file
//! mapping); every other region is mapped and filled as usual. From there on the child
//! is an ordinary loader: its own children, signal handlers, mm fields, threads, report,
//! park.

use crate::planfile::{self, Plan};
use crate::regions;
use crate::status::{self, Context, Fail, Result};
use crate::syscall::{self, EINVAL, EIO, MADV_DONTNEED, PROT_READ, PROT_WRITE};
use ckpt_plan::*;

/// Forks every child of the plan with its PID. Runs in the parent, single-threaded,
/// with its memory in place. Returns `None` in the parent; in a child, its own plan,
/// once its setup is done and its memory in place (the caller goes on with that plan,
/// and never uses the parent's again: it is unmapped).
#[inline(never)]
pub fn fork_children(plan: &Plan) -> Result<Option<Plan>> {
    for f in plan.forks {
        match syscall::fork_with_pid(f.pid as i32, f.flags) {
            Ok(0) => return forked(plan.hdr.pid, plan.hdr.size, f.plan_fd as i32).map(Some),
            Ok(_) => {}
            Err(e) => {
                return Err(Fail::new(
                    STAGE_FORK,
                    e,
                    f.pid,
                    "clone3 with set_tid of a child failed",
                ))
            }
        }
    }
    Ok(None)
}

/// The child, right after the fork: from its parent's memory to its own.
fn forked(parent: u64, parent_plan_size: u64, plan_fd: i32) -> Result<Plan> {
    // Its failures are its own to report, on its own pipe once its plan says which.
    status::set_status_fd(-1);
    // SAFETY: PR_SET_PDEATHSIG takes integers only.
    let _ = unsafe { syscall::prctl(syscall::PR_SET_PDEATHSIG, syscall::SIGKILL, 0, 0, 0) };
    if syscall::getppid() != parent {
        // The parent died before the death signal was set: nobody waits for us.
        syscall::exit_group(status::EXIT_FAILURE);
    }
    // SAFETY: the parent's plan is not read again in this process (see fork_children);
    // what is needed of it (its PID and size) was copied into the arguments.
    let _ = unsafe {
        syscall::munmap(
            LOADER_PLAN_ADDR,
            parent_plan_size.next_multiple_of(PAGE_SIZE),
        )
    };
    status::set_stage(STAGE_PLAN);
    let plan = planfile::load(plan_fd)?;
    if plan.hdr.fork_parent != parent {
        return Err(Fail::new(
            STAGE_PLAN,
            EINVAL,
            plan.hdr.fork_parent,
            "forked by a parent the plan does not name",
        ));
    }
    status::set_stage(STAGE_SETUP);
    setup(&plan)?;
    status::set_stage(STAGE_INHERIT);
    reshape(&plan)?;
    Ok(plan)
}

/// What `src/restore/spawn.rs` does in the child before it execs the loader.
fn setup(plan: &Plan) -> Result<()> {
    let h = plan.hdr;
    if h.setup_flags & SETUP_SETSID != 0 {
        syscall::setsid().ctx(STAGE_SETUP, 0, "creating the saved session (setsid)")?;
    } else if h.setup_flags & SETUP_PGID_LEAD != 0 {
        syscall::setpgid(0, 0).ctx(STAGE_SETUP, 0, "leading the saved process group")?;
    } else if h.setup_flags & SETUP_PGID_JOIN != 0 {
        syscall::setpgid(0, h.setup_pgid as i32).ctx(
            STAGE_SETUP,
            h.setup_pgid,
            "joining the saved process group (setpgid)",
        )?;
    }
    if h.setup_flags & SETUP_SHARED_FILES == 0 {
        for d in plan.dup2s {
            syscall::dup2(d.src, d.target).ctx(
                STAGE_SETUP,
                d.target as u64,
                "installing a descriptor",
            )?;
        }
        // Close everything else: the parent's descriptors and its other children's.
        let mut next: u32 = 0;
        for &k in plan.keep_fds {
            if k as u32 > next {
                syscall::close_range(next, k as u32 - 1).ctx(
                    STAGE_SETUP,
                    next as u64,
                    "close_range failed",
                )?;
            }
            next = k as u32 + 1;
        }
        syscall::close_range(next, u32::MAX).ctx(STAGE_SETUP, next as u64, "close_range failed")?;
    }
    if h.setup_flags & SETUP_SHARED_FS == 0 {
        syscall::chdir(plan.cwd).ctx(STAGE_SETUP, 0, "changing to the saved working directory")?;
        syscall::umask(h.setup_umask as u32);
    }
    for r in plan.rlimits {
        syscall::setrlimit(r.resource, r.cur, r.max).ctx(
            STAGE_SETUP,
            r.resource,
            "setting a resource limit",
        )?;
    }
    syscall::personality(h.setup_personality as u32).ctx(
        STAGE_SETUP,
        0,
        "setting the personality",
    )?;
    Ok(())
}

/// Whether the plan keeps `[start, end)` as it is: an inherited region or a vdso piece
/// (which the parent moved to the same addresses).
fn kept(v: &PlanVma) -> bool {
    v.flags & VMA_F_INHERITED != 0 || v.is_vdso_piece()
}

/// Unmaps `[from, to)` except the loader zone.
fn unmap_gap(from: u64, to: u64) -> Result<()> {
    let mut pieces = [
        (from, to.min(LOADER_ZONE_START)),
        (from.max(LOADER_ZONE_END), to),
    ];
    for (s, e) in pieces.iter_mut() {
        if *s < *e {
            // SAFETY: outside the loader zone; what lies here is the parent's memory,
            // which this process does not keep.
            unsafe { syscall::munmap(*s, *e - *s) }.ctx(STAGE_INHERIT, *s, "munmap failed")?;
        }
    }
    Ok(())
}

/// From the parent's address space to the child's (see the module doc).
fn reshape(plan: &Plan) -> Result<()> {
    let mut prev_end = 0;
    for v in plan.vmas.iter().filter(|v| kept(v)) {
        unmap_gap(prev_end, v.start)?;
        prev_end = v.end;
    }
    unmap_gap(prev_end, TASK_SIZE)?;
    for v in plan.vmas {
        if v.is_vdso_piece() {
            continue;
        }
        if v.flags & VMA_F_INHERITED != 0 {
            patch(plan, v)?;
        } else {
            regions::map_one(plan, v)?;
        }
    }
    Ok(())
}

/// Compare buffer: page data is read from the image here, then compared with memory.
const CMP_SIZE: usize = 1 << 20;

#[repr(C, align(4096))]
struct CmpBuf([u8; CMP_SIZE]);

/// Only the main thread of a forked child uses it, before any thread exists.
static mut CMP_BUF: CmpBuf = CmpBuf([0; CMP_SIZE]);

/// Drops the pages of `[s, e)` (a range the child had no page in).
fn drop_pages(s: u64, e: u64) -> Result<()> {
    if s < e {
        // SAFETY: an inherited region of the child's image, outside the loader zone.
        unsafe { syscall::madvise(s, e - s, MADV_DONTNEED) }.ctx(
            STAGE_INHERIT,
            s,
            "madvise(MADV_DONTNEED) of a page the child did not have failed",
        )?;
    }
    Ok(())
}

/// An inherited region: rewrite the pages that differ, drop those the child lacks.
fn patch(plan: &Plan, v: &PlanVma) -> Result<()> {
    let len = v.end - v.start;
    let rw = PROT_READ | PROT_WRITE;
    let reprotect = v.prot & rw != rw;
    if reprotect {
        // SAFETY: the region is the child's own (inherited), outside the loader zone.
        unsafe { syscall::mprotect(v.start, len, v.prot | rw) }.ctx(
            STAGE_INHERIT,
            v.start,
            "mprotect failed",
        )?;
    }
    // SAFETY: only this thread uses the buffer (see CMP_BUF).
    let buf: &mut [u8; CMP_SIZE] = unsafe { &mut (*core::ptr::addr_of_mut!(CMP_BUF)).0 };
    let mut at = v.start;
    for run in plan.runs_of(v) {
        drop_pages(at, run.addr)?;
        let mut done = 0;
        while done < run.len {
            let n = (run.len - done).min(CMP_SIZE as u64);
            read_exact(
                plan.run_fd(run),
                buf,
                n,
                run.file_off + done,
                run.addr + done,
            )?;
            let addr = run.addr + done;
            for (i, page) in buf[..n as usize]
                .chunks_exact(PAGE_SIZE as usize)
                .enumerate()
            {
                let dst = addr + (i as u64) * PAGE_SIZE;
                // SAFETY: `dst` is a page of the inherited region, mapped readable and
                // writable (above), which no Rust object refers to.
                let mem =
                    unsafe { core::slice::from_raw_parts_mut(dst as *mut u8, PAGE_SIZE as usize) };
                if mem != page {
                    mem.copy_from_slice(page);
                }
            }
            done += n;
        }
        at = run.addr + run.len;
    }
    drop_pages(at, v.end)?;
    if reprotect {
        // SAFETY: as above; only the protection changes back to the saved one.
        unsafe { syscall::mprotect(v.start, len, v.prot) }.ctx(
            STAGE_PROTECT,
            v.start,
            "mprotect failed",
        )?;
    }
    Ok(())
}

/// Reads `n` bytes of page data at `off` into `buf` (`addr`: where they go, for errors).
fn read_exact(fd: i32, buf: &mut [u8], n: u64, off: u64, addr: u64) -> Result<()> {
    let mut got = 0;
    while got < n {
        // SAFETY: `buf` is valid for writes of `n <= buf.len()` bytes.
        let r =
            unsafe { syscall::pread_raw(fd, buf.as_mut_ptr() as u64 + got, n - got, off + got) };
        match r {
            Ok(0) => {
                return Err(Fail::new(
                    STAGE_INHERIT,
                    EIO,
                    addr,
                    "image file ends inside a run",
                ))
            }
            Ok(k) => got += k as u64,
            Err(4) => continue,
            Err(e) => {
                return Err(Fail::new(
                    STAGE_INHERIT,
                    e,
                    addr,
                    "reading page data failed",
                ))
            }
        }
    }
    Ok(())
}
