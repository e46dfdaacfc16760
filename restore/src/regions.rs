//! Mapping every memory region of the plan at its old address and filling its pages.
//!
//! Each region is mapped with `MAP_FIXED_NOREPLACE` (an EEXIST means two planned regions
//! overlap, or one overlaps a vdso piece: a bug in the plan). A region with page data is
//! mapped writable, filled with `pread64` straight from the image file into place (no
//! bounce buffer), then given its final protection; a region without data is mapped with
//! its final protection at once.

use crate::planfile::Plan;
use crate::status::{Context, Fail, Result};
use crate::syscall::{
    self, EEXIST, EIO, MAP_ANONYMOUS, MAP_FIXED_NOREPLACE, MAP_GROWSDOWN, MAP_PRIVATE, MAP_SHARED,
    PROT_READ, PROT_WRITE,
};
use ckpt_plan::*;

/// Maps and fills every non-vdso region of the plan.
#[inline(never)]
pub fn map_all(plan: &Plan) -> Result<()> {
    for vma in plan.vmas {
        if (VMA_VVAR..=VMA_VDSO).contains(&vma.kind) {
            continue; // moved by vdso::relocate
        }
        map_one(plan, vma)?;
    }
    Ok(())
}

pub fn map_one(plan: &Plan, vma: &PlanVma) -> Result<()> {
    if vma.kind == VMA_SYSV_SHM {
        return attach_sysv_shm(vma);
    }
    let len = vma.end - vma.start;
    let runs = plan.runs_of(vma);
    // Regions with runs are writable while they are filled, then get their protection.
    let prot = if runs.is_empty() {
        vma.prot
    } else {
        vma.prot | PROT_READ | PROT_WRITE
    };
    let growsdown = if vma.flags & VMA_F_GROWSDOWN != 0 {
        MAP_GROWSDOWN
    } else {
        0
    };
    let (flags, fd, offset) = match vma.kind {
        VMA_ANON_PRIVATE => (MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
        VMA_ANON_SHARED => (MAP_SHARED | MAP_ANONYMOUS, -1, 0),
        VMA_FILE_PRIVATE => (MAP_PRIVATE, vma.fd, vma.offset),
        VMA_FILE_SHARED => (MAP_SHARED, vma.fd, vma.offset),
        _ => unreachable_kind(vma.start)?,
    };

    // SAFETY: outside the loader zone (checked with the plan); NOREPLACE protects the rest.
    let got = unsafe {
        syscall::mmap(
            vma.start,
            len,
            prot,
            flags | growsdown | MAP_FIXED_NOREPLACE,
            fd,
            offset,
        )
    }
    .ctx(STAGE_MAP, vma.start, "mmap of a region failed")?;
    if got != vma.start {
        // A kernel without MAP_FIXED_NOREPLACE treats it as a hint.
        // SAFETY: `[got, got+len)` is the mapping this mmap just created at an address the
        // kernel chose; nothing (loader or image) refers to it yet.
        let _ = unsafe { syscall::munmap(got, len) };
        return Err(Fail::new(
            STAGE_MAP,
            EEXIST,
            vma.start,
            "region mapped at a wrong address",
        ));
    }

    if runs.is_empty() {
        return Ok(());
    }
    for run in runs {
        fill(plan.run_fd(run), run)?;
    }
    // SAFETY: `[vma.start, vma.start+len)` is exactly the mapping created above, outside the
    // loader zone (checked with the plan); only its protection changes, no loader data
    // lives in it, and `fill` has finished writing it.
    unsafe { syscall::mprotect(vma.start, len, vma.prot) }.ctx(
        STAGE_PROTECT,
        vma.start,
        "mprotect failed",
    )?;
    Ok(())
}

/// A SysV shared memory attachment: shmat of the segment (made again or found by the
/// front end, with its content) at its old address, then its protection if it differs
/// from what shmat gives.
fn attach_sysv_shm(vma: &PlanVma) -> Result<()> {
    let mut flags = 0;
    let mut prot = PROT_READ | PROT_WRITE;
    if vma.flags & VMA_F_SHM_RDONLY != 0 {
        flags |= syscall::SHM_RDONLY;
        prot = PROT_READ;
    }
    // SAFETY: `[vma.start, vma.end)` lies outside the loader zone (checked with the plan)
    // and does not overlap another region; without SHM_REMAP shmat replaces no mapping.
    let got = unsafe { syscall::shmat(vma.offset as i32, vma.start, flags) }.ctx(
        STAGE_MAP,
        vma.start,
        "shmat of a SysV shared memory segment failed",
    )?;
    if got != vma.start {
        return Err(Fail::new(
            STAGE_MAP,
            EEXIST,
            vma.start,
            "SysV segment attached at a wrong address",
        ));
    }
    if prot != vma.prot {
        // SAFETY: exactly the attachment made above, outside the loader zone; only its
        // protection changes.
        unsafe { syscall::mprotect(vma.start, vma.end - vma.start, vma.prot) }.ctx(
            STAGE_PROTECT,
            vma.start,
            "mprotect failed",
        )?;
    }
    Ok(())
}

fn unreachable_kind(addr: u64) -> Result<(u32, i32, u64)> {
    Err(Fail::new(
        STAGE_MAP,
        syscall::EINVAL,
        addr,
        "unknown vma kind",
    ))
}

/// Reads one run from the image straight into place, handling short reads.
fn fill(image_fd: i32, run: &PlanRun) -> Result<()> {
    let mut done = 0;
    while done < run.len {
        // SAFETY: the run lies inside a region we just mapped writable (checked with the plan).
        let n = unsafe {
            syscall::pread_raw(
                image_fd,
                run.addr + done,
                run.len - done,
                run.file_off + done,
            )
        };
        match n {
            Ok(0) => {
                return Err(Fail::new(
                    STAGE_FILL,
                    EIO,
                    run.addr + done,
                    "image file ends inside a run",
                ))
            }
            Ok(n) => done += n as u64,
            Err(4) => continue, // EINTR
            Err(e) => {
                return Err(Fail::new(
                    STAGE_FILL,
                    e,
                    run.addr + done,
                    "reading page data failed",
                ))
            }
        }
    }
    Ok(())
}
