//! Moving the kernel's vdso pieces (`[vvar]`, `[vvar_vclock]`, `[vdso]`) to the addresses
//! they had at checkpoint time.
//!
//! The vdso code reaches its data pages at fixed offsets, so the pieces only work in the
//! layout the kernel gave them: the plan must put every piece it lists at the same offset
//! from its neighbours as now, with the same size. A piece the plan does not list is
//! unmapped. Because a destination may overlap where the pieces are now, every piece is
//! first moved to the scratch area (keeping the layout), then to its final address.

use crate::maps;
use crate::planfile::Plan;
use crate::status::{Context, Fail, Result};
use crate::syscall::{self, EINVAL, ENOENT};
use ckpt_plan::*;

/// Names of the pieces, indexed by `kind - VMA_VVAR`.
const NAMES: [&[u8]; 3] = [b"[vvar]", b"[vvar_vclock]", b"[vdso]"];

/// Where a piece is now: `(start, end)`, or `None` if this kernel has no such piece.
type Pieces = [Option<(u64, u64)>; 3];

fn fail(errno: u64, addr: u64, msg: &'static str) -> Fail {
    Fail::new(STAGE_VDSO, errno, addr, msg)
}

/// Finds the loader's own pieces in /proc/self/maps.
fn find_pieces() -> Result<Pieces> {
    let mut pieces: Pieces = [None; 3];
    maps::for_each(|e| {
        if let Some(i) = NAMES.iter().position(|n| *n == e.name) {
            if pieces[i].is_some() {
                return Err(fail(EINVAL, e.start, "vdso piece mapped twice"));
            }
            pieces[i] = Some((e.start, e.end));
        }
        Ok(())
    })
    .map_err(|f| Fail {
        stage: STAGE_VDSO,
        ..f
    })?;
    Ok(pieces)
}

/// Moves the vdso pieces to the addresses the plan gives them.
#[inline(never)]
pub fn relocate(plan: &Plan) -> Result<()> {
    let mut pieces = find_pieces()?;

    // Where the plan wants each piece, checked against what we have.
    let mut targets: [Option<u64>; 3] = [None; 3];
    let mut delta: Option<u64> = None;
    for vma in plan
        .vmas
        .iter()
        .filter(|v| (VMA_VVAR..=VMA_VDSO).contains(&v.kind))
    {
        let i = (vma.kind - VMA_VVAR) as usize;
        let (start, end) = pieces[i].ok_or(fail(
            ENOENT,
            vma.start,
            "this kernel lacks a planned vdso piece",
        ))?;
        if end - start != vma.end - vma.start {
            return Err(fail(
                EINVAL,
                vma.start,
                "vdso piece size differs from the plan",
            ));
        }
        // All pieces must move by the same amount (wrapping arithmetic: moves go both ways).
        let d = vma.start.wrapping_sub(start);
        if delta.is_some_and(|x| x != d) {
            return Err(fail(EINVAL, vma.start, "vdso layout differs from the plan"));
        }
        delta = Some(d);
        targets[i] = Some(vma.start);
    }

    // Unmap the pieces the plan does not want.
    for i in 0..3 {
        if let (Some((start, end)), None) = (pieces[i], targets[i]) {
            // SAFETY: a kernel special mapping the loader does not use.
            unsafe { syscall::munmap(start, end - start) }.ctx(
                STAGE_VDSO,
                start,
                "cannot unmap a vdso piece",
            )?;
            pieces[i] = None;
        }
    }

    // First into the scratch area, keeping the layout...
    let Some(base) = pieces.iter().flatten().map(|p| p.0).min() else {
        return Ok(());
    };
    let top = pieces.iter().flatten().map(|p| p.1).max().unwrap_or(base);
    if top - base > LOADER_ZONE_END - LOADER_SCRATCH_ADDR {
        return Err(fail(EINVAL, base, "vdso pieces too far apart"));
    }
    for piece in pieces.iter_mut().flatten() {
        let (start, end) = *piece;
        let to = LOADER_SCRATCH_ADDR + (start - base);
        // SAFETY: the scratch area is reserved for this inside the loader zone.
        unsafe { syscall::mremap_fixed(start, end - start, to) }.ctx(
            STAGE_VDSO,
            start,
            "cannot move a vdso piece to scratch",
        )?;
        *piece = (to, to + (end - start));
    }

    // ...then to the final addresses (nothing else is mapped outside the zone yet).
    for i in 0..3 {
        if let (Some((start, end)), Some(to)) = (pieces[i], targets[i]) {
            // SAFETY: the destination is outside the loader zone (checked with the plan).
            unsafe { syscall::mremap_fixed(start, end - start, to) }.ctx(
                STAGE_VDSO,
                to,
                "cannot move a vdso piece into place",
            )?;
        }
    }
    Ok(())
}
