//! Emptying the address space: after exec the process holds the loader itself (inside the
//! loader zone), the initial kernel stack (left in `_start`), and the kernel's vdso pieces.
//! Everything outside the zone except the vdso pieces and `[vsyscall]` is unmapped.

use crate::maps::{self, MapEntry};
use crate::status::{Context, Fail, Result};
use crate::syscall::{self, EINVAL};
use ckpt_plan::{LOADER_ZONE_END, LOADER_ZONE_START, STAGE_UNMAP};

/// Mappings the kernel provides that must survive (the vdso pieces are moved later;
/// `[vsyscall]` lies above the user address space and cannot be unmapped).
pub const KEPT_NAMES: [&[u8]; 4] = [b"[vdso]", b"[vvar]", b"[vvar_vclock]", b"[vsyscall]"];

fn kept(e: &MapEntry) -> bool {
    KEPT_NAMES.contains(&e.name)
}

/// Unmaps everything outside the loader zone but the kernel's special mappings.
#[inline(never)]
pub fn clear_address_space() -> Result<()> {
    // The maps walk may skip entries while we unmap, so repeat until a walk changes nothing.
    loop {
        let mut unmapped = false;
        maps::for_each(|e| {
            if e.start >= LOADER_ZONE_START && e.end <= LOADER_ZONE_END {
                return Ok(());
            }
            if e.start < LOADER_ZONE_END && e.end > LOADER_ZONE_START {
                return Err(Fail::new(
                    STAGE_UNMAP,
                    EINVAL,
                    e.start,
                    "mapping straddles the loader zone",
                ));
            }
            if kept(e) {
                return Ok(());
            }
            // SAFETY: outside the loader zone nothing belongs to the loader any more (its
            // stack is in .bss since `_start`).
            unsafe { syscall::munmap(e.start, e.end - e.start) }.ctx(
                STAGE_UNMAP,
                e.start,
                "munmap failed",
            )?;
            unmapped = true;
            Ok(())
        })?;
        if !unmapped {
            return Ok(());
        }
    }
}
