//! Mapping and validating the plan (format and checks: the `ckpt-plan` crate).
//!
//! The plan is mapped read-only at `LOADER_PLAN_ADDR` and stays mapped for the loader's
//! whole life (the front end unmaps it with the rest of the loader zone). After
//! [`load`] every array is a bounds-checked slice and every VMA and run is known to be
//! well-formed (`ckpt_plan::validate`), so later stages only meet kernel errors.

use ckpt_plan::zerocopy::{FromZeros, IntoBytes};
use ckpt_plan::*;

use crate::status::{self, Context, Fail, Result};
use crate::syscall::{self, EINVAL};

/// The mapped and validated plan (its typed slices through `Deref`).
pub struct Plan {
    /// The descriptor the plan was read from (closed at the end).
    pub fd: i32,
    pub view: PlanView<'static>,
}

impl core::ops::Deref for Plan {
    type Target = PlanView<'static>;

    fn deref(&self) -> &PlanView<'static> {
        &self.view
    }
}

fn bad(addr: u64, msg: &'static str) -> Fail {
    Fail::new(STAGE_PLAN, EINVAL, addr, msg)
}

fn refused(e: PlanError) -> Fail {
    bad(e.at, e.message())
}

/// Maps the plan read from descriptor `fd` and validates it.
#[inline(never)]
pub fn load(fd: i32) -> Result<Plan> {
    // The header first, to learn the size (and the status pipe, to report further errors).
    let mut hdr = PlanHeader::new_zeroed();
    let buf = hdr.as_mut_bytes();
    let want = buf.len() as u64;
    // SAFETY: `buf` is a live, writable buffer of exactly `want` bytes.
    let got = unsafe { syscall::pread_raw(fd, buf.as_mut_ptr() as u64, want, 0) }.ctx(
        STAGE_PLAN,
        0,
        "cannot read the plan header",
    )?;
    if got as u64 != want {
        return Err(bad(0, "plan shorter than its header"));
    }
    if let Some(status_fd) = hdr.status_pipe() {
        status::set_status_fd(status_fd.into());
    }
    validate_header(&hdr).map_err(refused)?;

    let file_size = syscall::file_size(fd).ctx(STAGE_PLAN, 0, "fstat of the plan failed")?;
    if hdr.size > file_size {
        return Err(bad(hdr.size, "bad plan size"));
    }

    let size = hdr.size;
    // SAFETY: the plan address is reserved for it inside the loader zone.
    let addr = unsafe {
        syscall::mmap(
            LOADER_PLAN_ADDR,
            size,
            syscall::PROT_READ,
            syscall::MAP_PRIVATE | syscall::MAP_FIXED_NOREPLACE,
            fd,
            0,
        )
    }
    .ctx(STAGE_PLAN, LOADER_PLAN_ADDR, "cannot map the plan")?;
    if addr != LOADER_PLAN_ADDR {
        return Err(Fail::new(
            STAGE_PLAN,
            syscall::EEXIST,
            addr,
            "plan mapped at a wrong address",
        ));
    }

    // From here on, everything is read from the mapping (the front end must not rewrite
    // the plan while the loader runs; check the header still says the same).
    // SAFETY: the read-only mapping of `size` bytes just made at `LOADER_PLAN_ADDR` is
    // never unmapped nor written while the loader runs (the front end unmaps the loader
    // zone only once every thread of it is parked and seized).
    let bytes: &'static [u8] =
        unsafe { core::slice::from_raw_parts(LOADER_PLAN_ADDR as *const u8, size as usize) };
    let view = validate(bytes).map_err(refused)?;
    if *view.hdr != hdr {
        return Err(bad(0, "plan changed while being read"));
    }
    if view.hdr.status_fd == i64::from(fd) {
        return Err(bad(0, "status_fd is also the plan fd"));
    }
    Ok(Plan { fd, view })
}
