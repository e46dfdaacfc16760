//! Mapping and validating the plan (format: `plan.rs`).
//!
//! The plan is mapped read-only at `LOADER_PLAN_ADDR` and stays mapped for the loader's
//! whole life (the front end unmaps it with the rest of the loader zone). After
//! [`load`] every array is a bounds-checked slice and every VMA and run is known to be
//! well-formed, so later stages only meet kernel errors.

use core::mem::size_of;

use crate::plan::*;
use crate::status::{self, Context, Fail, Result};
use crate::syscall::{self, EINVAL, PAGE_SIZE};

/// Largest address of a user mapping on x86-64 with 4-level paging.
const TASK_SIZE: u64 = 0x7fff_ffff_f000;
/// The plan must fit below the thread stacks.
const MAX_PLAN_SIZE: u64 = LOADER_STACKS_ADDR - LOADER_PLAN_ADDR;
/// How many thread stacks fit between `LOADER_STACKS_ADDR` and the scratch area.
pub const MAX_THREADS: u64 = (LOADER_SCRATCH_ADDR - LOADER_STACKS_ADDR) / LOADER_THREAD_STACK;

/// The mapped plan, as typed slices.
pub struct Plan {
    /// The descriptor the plan was read from (closed at the end).
    pub fd: i32,
    pub hdr: &'static PlanHeader,
    pub vmas: &'static [PlanVma],
    pub runs: &'static [PlanRun],
    pub threads: &'static [PlanThread],
    pub sigactions: &'static [PlanSigaction],
    pub auxv: &'static [u64],
    pub close_fds: &'static [i32],
}

impl Plan {
    /// The runs of one VMA (bounds were checked by `load`).
    pub fn runs_of(&self, vma: &PlanVma) -> &'static [PlanRun] {
        &self.runs[vma.first_run as usize..(vma.first_run + vma.nr_runs) as usize]
    }

    pub fn image_fd(&self) -> i32 {
        self.hdr.image_fd as i32
    }
}

fn bad(addr: u64, msg: &'static str) -> Fail {
    Fail::new(STAGE_PLAN, EINVAL, addr, msg)
}

fn is_fd(fd: i64) -> bool {
    (0..=i32::MAX as i64).contains(&fd)
}

/// Maps the plan read from descriptor `fd` and validates it.
#[inline(never)]
pub fn load(fd: i32) -> Result<Plan> {
    // The header first, to learn the size (and the status pipe, to report further errors).
    let mut hdr = PlanHeader::default();
    let want = size_of::<PlanHeader>() as u64;
    // SAFETY: `hdr` is a local of exactly `want` bytes.
    let got = unsafe { syscall::pread_raw(fd, &mut hdr as *mut PlanHeader as u64, want, 0) }.ctx(
        STAGE_PLAN,
        0,
        "cannot read the plan header",
    )?;
    if got as u64 != want {
        return Err(bad(0, "plan shorter than its header"));
    }
    if hdr.magic != PLAN_MAGIC {
        return Err(bad(0, "bad plan magic"));
    }
    if hdr.version != PLAN_VERSION {
        return Err(bad(hdr.version, "unsupported plan version"));
    }
    if is_fd(hdr.status_fd) {
        status::set_status_fd(hdr.status_fd);
    } else {
        return Err(bad(0, "bad status_fd"));
    }

    let file_size = syscall::file_size(fd).ctx(STAGE_PLAN, 0, "fstat of the plan failed")?;
    if hdr.size < want || hdr.size > file_size || hdr.size > MAX_PLAN_SIZE {
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
    // SAFETY: the mapping is at least one header long and stays mapped forever.
    let hdr: &'static PlanHeader = unsafe { &*(LOADER_PLAN_ADDR as *const PlanHeader) };
    if hdr.magic != PLAN_MAGIC || hdr.version != PLAN_VERSION || hdr.size != size {
        return Err(bad(0, "plan changed while being read"));
    }

    let plan = Plan {
        fd,
        hdr,
        vmas: array(hdr, hdr.vmas_off, hdr.nr_vmas, "vma array outside the plan")?,
        runs: array(hdr, hdr.runs_off, hdr.nr_runs, "run array outside the plan")?,
        threads: array(
            hdr,
            hdr.threads_off,
            hdr.nr_threads,
            "thread array outside the plan",
        )?,
        sigactions: array(
            hdr,
            hdr.sigactions_off,
            hdr.nr_sigactions,
            "sigaction array outside the plan",
        )?,
        auxv: array(hdr, hdr.auxv_off, hdr.auxv_words, "auxv outside the plan")?,
        close_fds: array(
            hdr,
            hdr.close_fds_off,
            hdr.nr_close_fds,
            "close_fds outside the plan",
        )?,
    };
    check(&plan)?;
    Ok(plan)
}

/// A bounds-checked slice of `n` elements of `T` at offset `off` of the mapped plan.
fn array<T>(hdr: &PlanHeader, off: u64, n: u64, msg: &'static str) -> Result<&'static [T]> {
    let bytes = n.checked_mul(size_of::<T>() as u64).ok_or(bad(off, msg))?;
    let end = off.checked_add(bytes).ok_or(bad(off, msg))?;
    if !off.is_multiple_of(8) || end > hdr.size || (n > 0 && off < size_of::<PlanHeader>() as u64) {
        return Err(bad(off, msg));
    }
    // SAFETY: in bounds of the read-only mapping, which lives forever; 8-byte aligned,
    // which is enough for every plan type.
    Ok(unsafe { core::slice::from_raw_parts((LOADER_PLAN_ADDR + off) as *const T, n as usize) })
}

fn page_aligned(x: u64) -> bool {
    x.is_multiple_of(PAGE_SIZE)
}

fn overlaps_zone(start: u64, end: u64) -> bool {
    start < LOADER_ZONE_END && end > LOADER_ZONE_START
}

/// Semantic checks: the shape of every VMA, run and thread, and the descriptors.
fn check(plan: &Plan) -> Result<()> {
    let hdr = plan.hdr;
    if !is_fd(hdr.image_fd) {
        return Err(bad(0, "bad image_fd"));
    }
    if hdr.status_fd == hdr.image_fd || hdr.status_fd == plan.fd as i64 {
        return Err(bad(0, "status_fd is also the image or plan fd"));
    }
    if plan.close_fds.iter().any(|&fd| fd as i64 == hdr.status_fd) {
        return Err(bad(0, "status_fd is in close_fds"));
    }
    if plan.threads.is_empty() || plan.threads.len() as u64 > MAX_THREADS {
        return Err(bad(plan.threads.len() as u64, "bad number of threads"));
    }
    if !plan.auxv.len().is_multiple_of(2) {
        return Err(bad(0, "odd number of auxv words"));
    }

    let mut vdso_seen = [false; 3];
    for vma in plan.vmas {
        let s = vma.start;
        if vma.start >= vma.end
            || !page_aligned(vma.start)
            || !page_aligned(vma.end)
            || vma.end > TASK_SIZE
        {
            return Err(bad(s, "malformed vma bounds"));
        }
        if overlaps_zone(vma.start, vma.end) {
            return Err(bad(s, "vma overlaps the loader zone"));
        }
        let last_run = vma
            .first_run
            .checked_add(vma.nr_runs)
            .ok_or(bad(s, "vma runs out of range"))?;
        if last_run > plan.runs.len() as u64 {
            return Err(bad(s, "vma runs out of range"));
        }
        match vma.kind {
            VMA_ANON_PRIVATE | VMA_ANON_SHARED => {}
            VMA_FILE_PRIVATE | VMA_FILE_SHARED => {
                if vma.fd < 0 || !page_aligned(vma.offset) {
                    return Err(bad(s, "file vma without fd or with unaligned offset"));
                }
            }
            VMA_VVAR | VMA_VVAR_VCLOCK | VMA_VDSO => {
                let i = (vma.kind - VMA_VVAR) as usize;
                if vdso_seen[i] || vma.nr_runs != 0 {
                    return Err(bad(s, "duplicate vdso piece or vdso piece with runs"));
                }
                vdso_seen[i] = true;
            }
            _ => return Err(bad(s, "unknown vma kind")),
        }
        if vma.flags & !VMA_F_GROWSDOWN != 0 {
            return Err(bad(s, "unknown vma flags"));
        }
        for run in plan.runs_of(vma) {
            let end = run
                .addr
                .checked_add(run.len)
                .ok_or(bad(run.addr, "run out of its vma"))?;
            if run.len == 0
                || !page_aligned(run.addr)
                || !page_aligned(run.len)
                || !page_aligned(run.file_off)
            {
                return Err(bad(run.addr, "malformed run"));
            }
            if run.addr < vma.start || end > vma.end {
                return Err(bad(run.addr, "run out of its vma"));
            }
        }
    }
    Ok(())
}
