//! Process-wide state: signal handlers and the mm fields (code/data/brk/stack/arg/env
//! boundaries and auxv) set with `prctl(PR_SET_MM, PR_SET_MM_MAP)`.

use crate::planfile::Plan;
use crate::status::{Context, Result};
use crate::syscall::{self, KernelSigaction};
use ckpt_plan::*;

/// Installs every signal handler of the plan.
#[inline(never)]
pub fn install_sigactions(plan: &Plan) -> Result<()> {
    for sa in plan.sigactions {
        let act = KernelSigaction {
            handler: sa.handler,
            flags: sa.flags,
            restorer: sa.restorer,
            mask: sa.mask,
        };
        syscall::rt_sigaction(sa.signo, &act).ctx(
            STAGE_SIGACTION,
            sa.signo,
            "rt_sigaction failed",
        )?;
    }
    Ok(())
}

/// The kernel's `struct prctl_mm_map` (include/uapi/linux/prctl.h).
#[repr(C)]
struct KernelMmMap {
    map: PrctlMmMap,
    auxv: u64,
    auxv_size: u32,
    exe_fd: u32,
}

const _: () = assert!(core::mem::size_of::<KernelMmMap>() == 104);

/// Restores the mm fields and the saved auxv; the exe link is left to the front end.
#[inline(never)]
pub fn restore_mm(plan: &Plan) -> Result<()> {
    let m = KernelMmMap {
        map: plan.hdr.mm,
        auxv: if plan.auxv.is_empty() {
            0
        } else {
            plan.auxv.as_ptr() as u64
        },
        auxv_size: (plan.auxv.len() * 8) as u32,
        exe_fd: u32::MAX,
    };
    // SAFETY: `m` is a valid prctl_mm_map for the duration of the call.
    unsafe {
        syscall::prctl(
            syscall::PR_SET_MM,
            syscall::PR_SET_MM_MAP,
            &m as *const KernelMmMap as usize,
            core::mem::size_of::<KernelMmMap>(),
            0,
        )
    }
    .ctx(STAGE_MM, 0, "prctl(PR_SET_MM_MAP) failed")?;
    Ok(())
}
