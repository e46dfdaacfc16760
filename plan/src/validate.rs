//! Checking a plan before anybody acts on it.
//!
//! [`validate`] is pure: it reads only the bytes it is given, uses checked arithmetic on
//! every offset and count, never panics, and on success returns typed slices that later
//! code can index without further checks (every VMA's runs are in range, every region is
//! page-aligned, ordered, disjoint and outside the loader zone, every descriptor is a
//! descriptor number).

use core::fmt;
use core::mem::size_of;

use zerocopy::{FromBytes, Immutable, KnownLayout};

use crate::*;

/// What is wrong with a plan. Each kind has a fixed message ([`PlanErrorKind::message`]),
/// which the loader reports on its status pipe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlanErrorKind {
    /// The buffer is shorter than a header.
    HeaderTruncated,
    /// The buffer does not start at an 8-byte aligned address.
    Misaligned,
    BadMagic,
    BadVersion,
    BadStatusFd,
    BadImageFd,
    /// `size` is below a header, above [`MAX_PLAN_SIZE`] or not a multiple of 8.
    BadSize,
    /// The buffer is shorter than the header's `size`.
    Truncated,
    VmasOutOfBounds,
    RunsOutOfBounds,
    ThreadsOutOfBounds,
    SigactionsOutOfBounds,
    AuxvOutOfBounds,
    CloseFdsOutOfBounds,
    StatusFdIsImageFd,
    BadCloseFd,
    StatusFdClosed,
    BadThreadCount,
    BadTid,
    BadThreadName,
    BadThreadField,
    OddAuxv,
    BadSignal,
    VmaBounds,
    VmaInLoaderZone,
    VmaOrder,
    VmaRuns,
    VmaFile,
    VmaFdNotFile,
    VmaVdso,
    VmaKind,
    VmaFlags,
    VmaSysvShm,
    VmaProt,
    RunMalformed,
    RunOutside,
    RunOrder,
    ForksOutOfBounds,
    Dup2sOutOfBounds,
    KeepFdsOutOfBounds,
    RlimitsOutOfBounds,
    CwdOutOfBounds,
    BadFork,
    BadSetup,
    BadCwd,
    BadKeepFds,
    BadDup2,
    BadRlimit,
    VmaInherited,
}

impl PlanErrorKind {
    pub const fn message(self) -> &'static str {
        use PlanErrorKind::*;
        match self {
            HeaderTruncated => "plan shorter than its header",
            Misaligned => "plan not 8-byte aligned in memory",
            BadMagic => "bad plan magic",
            BadVersion => "unsupported plan version",
            BadStatusFd => "bad status_fd",
            BadImageFd => "bad image_fd",
            BadSize => "bad plan size",
            Truncated => "plan shorter than its size",
            VmasOutOfBounds => "vma array outside the plan",
            RunsOutOfBounds => "run array outside the plan",
            ThreadsOutOfBounds => "thread array outside the plan",
            SigactionsOutOfBounds => "sigaction array outside the plan",
            AuxvOutOfBounds => "auxv outside the plan",
            CloseFdsOutOfBounds => "close_fds outside the plan",
            StatusFdIsImageFd => "status_fd is also the image fd",
            BadCloseFd => "bad descriptor in close_fds",
            StatusFdClosed => "status_fd is in close_fds",
            BadThreadCount => "bad number of threads",
            BadTid => "bad thread id",
            BadThreadName => "thread name not NUL-terminated",
            BadThreadField => "rseq or sigaltstack field out of range",
            OddAuxv => "odd number of auxv words",
            BadSignal => "bad signal number in a sigaction",
            VmaBounds => "malformed vma bounds",
            VmaInLoaderZone => "vma overlaps the loader zone",
            VmaOrder => "vmas overlap or are out of order",
            VmaRuns => "vma runs out of range or out of order",
            VmaFile => "file vma without fd or with unaligned offset",
            VmaFdNotFile => "fd on a vma that is not file-backed",
            VmaVdso => "duplicate vdso piece or vdso piece with runs",
            VmaKind => "unknown vma kind",
            VmaFlags => "unknown vma flags",
            VmaSysvShm => "SysV shm vma with an fd, page runs or a bad shmid",
            VmaProt => "unknown vma protection bits",
            RunMalformed => "malformed run",
            RunOutside => "run out of its vma",
            RunOrder => "runs overlap or are out of order",
            ForksOutOfBounds => "fork array outside the plan",
            Dup2sOutOfBounds => "dup2 array outside the plan",
            KeepFdsOutOfBounds => "keep_fds outside the plan",
            RlimitsOutOfBounds => "rlimit array outside the plan",
            CwdOutOfBounds => "cwd outside the plan",
            BadFork => "bad pid or descriptor of a child to fork",
            BadSetup => "setup of a process that is not forked, or bad setup flags",
            BadCwd => "cwd of a forked child empty or not one NUL-terminated string",
            BadKeepFds => "keep_fds not ascending, or without the status or image fd",
            BadDup2 => "bad descriptor in a dup2",
            BadRlimit => "bad resource in an rlimit",
            VmaInherited => "inherited vma in a plan that is not forked, or not private",
        }
    }
}

/// A refused plan: what is wrong, and the value or address it is about (the offset of
/// an array, the start of a VMA, the address of a run, a TID, a descriptor...; 0 if none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlanError {
    pub kind: PlanErrorKind,
    pub at: u64,
}

impl PlanError {
    pub const fn message(&self) -> &'static str {
        self.kind.message()
    }
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (at {:#x})", self.kind.message(), self.at)
    }
}

fn err<T>(kind: PlanErrorKind, at: u64) -> Result<T, PlanError> {
    Err(PlanError { kind, at })
}

/// A validated plan, as typed slices of the buffer it was read from.
#[derive(Clone, Copy, Debug)]
pub struct PlanView<'a> {
    pub hdr: &'a PlanHeader,
    pub vmas: &'a [PlanVma],
    pub runs: &'a [PlanRun],
    pub threads: &'a [PlanThread],
    pub sigactions: &'a [PlanSigaction],
    pub auxv: &'a [u64],
    pub close_fds: &'a [i32],
    pub forks: &'a [PlanFork],
    pub dup2s: &'a [PlanDup2],
    pub keep_fds: &'a [i32],
    pub rlimits: &'a [PlanRlimit],
    /// With its NUL; empty unless forked.
    pub cwd: &'a [u8],
}

impl<'a> PlanView<'a> {
    /// The runs of one VMA of this plan (in range: checked by [`validate`]).
    pub fn runs_of(&self, vma: &PlanVma) -> &'a [PlanRun] {
        let start = vma.first_run as usize;
        let end = start.saturating_add(vma.nr_runs as usize);
        self.runs.get(start..end).unwrap_or(&[])
    }

    /// The thread-group leader (there is always one: checked by [`validate`]).
    pub fn leader(&self) -> &'a PlanThread {
        // `threads` is never empty in a validated plan; the fallback is never used.
        static NONE: PlanThread = PlanThread {
            tid: 0,
            robust_head: 0,
            robust_len: 0,
            clear_child_tid: 0,
            rseq_addr: 0,
            rseq_len: 0,
            rseq_sig: 0,
            ss_sp: 0,
            ss_flags: 0,
            ss_size: 0,
            name: [0; 16],
        };
        self.threads.first().unwrap_or(&NONE)
    }

    pub fn image_fd(&self) -> i32 {
        as_fd(self.hdr.image_fd).unwrap_or(-1)
    }

    /// The descriptor `run`'s pages are read from.
    pub fn run_fd(&self, run: &PlanRun) -> i32 {
        if run.fd == -1 {
            self.image_fd()
        } else {
            as_fd(run.fd).unwrap_or(-1)
        }
    }

    pub fn status_fd(&self) -> i32 {
        as_fd(self.hdr.status_fd).unwrap_or(-1)
    }
}

const HEADER_SIZE: u64 = size_of::<PlanHeader>() as u64;

/// Checks the header alone, in the order the loader needs: magic and version, then the
/// status pipe (after which errors can be reported through it), then the image
/// descriptor and the size. `size` is not compared with any buffer here.
pub fn validate_header(hdr: &PlanHeader) -> Result<(), PlanError> {
    use PlanErrorKind::*;
    if hdr.magic != PLAN_MAGIC {
        return err(BadMagic, hdr.magic);
    }
    if hdr.version != PLAN_VERSION {
        return err(BadVersion, hdr.version);
    }
    if as_fd(hdr.status_fd).is_none() {
        return err(BadStatusFd, hdr.status_fd as u64);
    }
    if as_fd(hdr.image_fd).is_none() {
        return err(BadImageFd, hdr.image_fd as u64);
    }
    if hdr.status_fd == hdr.image_fd {
        return err(StatusFdIsImageFd, hdr.status_fd as u64);
    }
    if hdr.size < HEADER_SIZE || hdr.size > MAX_PLAN_SIZE || !hdr.size.is_multiple_of(8) {
        return err(BadSize, hdr.size);
    }
    Ok(())
}

/// `n` records of `T` at offset `off` of `plan` (8-byte aligned, after the header unless
/// empty, inside `plan`).
fn array<T: FromBytes + KnownLayout + Immutable>(
    plan: &[u8],
    off: u64,
    n: u64,
    kind: PlanErrorKind,
) -> Result<&[T], PlanError> {
    let bad = PlanError { kind, at: off };
    let bytes = n.checked_mul(size_of::<T>() as u64).ok_or(bad)?;
    let end = off.checked_add(bytes).ok_or(bad)?;
    if !off.is_multiple_of(8) || (n > 0 && off < HEADER_SIZE) {
        return Err(bad);
    }
    let start = usize::try_from(off).map_err(|_| bad)?;
    let end = usize::try_from(end).map_err(|_| bad)?;
    let slice = plan.get(start..end).ok_or(bad)?;
    <[T]>::ref_from_bytes(slice).map_err(|_| bad)
}

fn page_aligned(x: u64) -> bool {
    x.is_multiple_of(PAGE_SIZE)
}

fn overlaps_zone(start: u64, end: u64) -> bool {
    start < LOADER_ZONE_END && end > LOADER_ZONE_START
}

/// Checks a whole plan: `bytes` starts with the header (8-byte aligned in memory) and
/// holds at least `size` bytes; whatever follows `size` is ignored.
pub fn validate(bytes: &[u8]) -> Result<PlanView<'_>, PlanError> {
    use PlanErrorKind::*;
    if (bytes.len() as u64) < HEADER_SIZE {
        return err(HeaderTruncated, bytes.len() as u64);
    }
    if !(bytes.as_ptr() as usize).is_multiple_of(8) {
        return err(Misaligned, bytes.as_ptr() as usize as u64);
    }
    let (hdr, _) = PlanHeader::ref_from_prefix(bytes).map_err(|_| PlanError {
        kind: Misaligned,
        at: 0,
    })?;
    validate_header(hdr)?;
    let plan = usize::try_from(hdr.size)
        .ok()
        .and_then(|n| bytes.get(..n))
        .ok_or(PlanError {
            kind: Truncated,
            at: hdr.size,
        })?;

    let view = PlanView {
        hdr,
        vmas: array(plan, hdr.vmas_off, hdr.nr_vmas, VmasOutOfBounds)?,
        runs: array(plan, hdr.runs_off, hdr.nr_runs, RunsOutOfBounds)?,
        threads: array(plan, hdr.threads_off, hdr.nr_threads, ThreadsOutOfBounds)?,
        sigactions: array(
            plan,
            hdr.sigactions_off,
            hdr.nr_sigactions,
            SigactionsOutOfBounds,
        )?,
        auxv: array(plan, hdr.auxv_off, hdr.auxv_words, AuxvOutOfBounds)?,
        close_fds: array(
            plan,
            hdr.close_fds_off,
            hdr.nr_close_fds,
            CloseFdsOutOfBounds,
        )?,
        forks: array(plan, hdr.forks_off, hdr.nr_forks, ForksOutOfBounds)?,
        dup2s: array(plan, hdr.dup2s_off, hdr.nr_dup2s, Dup2sOutOfBounds)?,
        keep_fds: array(plan, hdr.keep_fds_off, hdr.nr_keep_fds, KeepFdsOutOfBounds)?,
        rlimits: array(plan, hdr.rlimits_off, hdr.nr_rlimits, RlimitsOutOfBounds)?,
        cwd: array(plan, hdr.cwd_off, hdr.cwd_len, CwdOutOfBounds)?,
    };

    check_fds(&view)?;
    check_threads(view.threads)?;
    if !view.auxv.len().is_multiple_of(2) {
        return err(OddAuxv, view.auxv.len() as u64);
    }
    check_sigactions(view.sigactions)?;
    check_vmas(&view)?;
    check_forks(&view)?;
    check_setup(&view)?;
    Ok(view)
}

fn check_forks(view: &PlanView<'_>) -> Result<(), PlanError> {
    for f in view.forks {
        let fd_ok = as_fd(f.plan_fd).is_some_and(|fd| {
            i64::from(fd) != view.hdr.status_fd && i64::from(fd) != view.hdr.image_fd
        });
        let flags_ok = f.flags & !(FORK_CLONE_FILES | FORK_CLONE_FS) == 0;
        if f.pid == 0 || f.pid > i32::MAX as u64 || f.pid == view.hdr.pid || !fd_ok || !flags_ok {
            return err(PlanErrorKind::BadFork, f.pid);
        }
    }
    Ok(())
}

/// A forked child's setup: only in a forked plan, and complete there.
fn check_setup(view: &PlanView<'_>) -> Result<(), PlanError> {
    use PlanErrorKind::*;
    let h = view.hdr;
    if h.fork_parent == 0 {
        let any = h.setup_flags != 0
            || !view.dup2s.is_empty()
            || !view.keep_fds.is_empty()
            || !view.rlimits.is_empty()
            || !view.cwd.is_empty();
        return if any { err(BadSetup, 0) } else { Ok(()) };
    }
    if h.fork_parent > i32::MAX as u64
        || h.fork_parent == h.pid
        || h.setup_flags & !SETUP_ALL != 0
        || h.setup_pgid > i32::MAX as u64
        || h.setup_umask > 0o777
        || h.setup_personality > u64::from(u32::MAX)
    {
        return err(BadSetup, h.setup_flags);
    }
    if h.setup_flags & SETUP_SHARED_FS == 0 {
        match view.cwd.split_last() {
            Some((0, path)) if !path.is_empty() && !path.contains(&0) => {}
            _ => return err(BadCwd, view.cwd.len() as u64),
        }
    } else if !view.cwd.is_empty() {
        return err(BadCwd, view.cwd.len() as u64);
    }
    if h.setup_flags & SETUP_SHARED_FILES != 0 {
        // The table is the parent's: nothing to install or close.
        if !view.dup2s.is_empty() {
            return err(BadDup2, view.dup2s.len() as u64);
        }
        if !view.keep_fds.is_empty() {
            return err(BadKeepFds, view.keep_fds.len() as u64);
        }
    } else {
        check_keep(view)?;
    }
    for r in view.rlimits {
        // RLIM_NLIMITS is 16 on Linux.
        if r.resource >= 16 || r.cur > r.max {
            return err(BadRlimit, r.resource);
        }
    }
    Ok(())
}

fn check_keep(view: &PlanView<'_>) -> Result<(), PlanError> {
    use PlanErrorKind::*;
    let h = view.hdr;
    let mut prev = -1;
    for &fd in view.keep_fds {
        if fd <= prev {
            return err(BadKeepFds, fd as u64);
        }
        prev = fd;
    }
    for fd in [h.status_fd, h.image_fd] {
        if !view.keep_fds.iter().any(|&k| i64::from(k) == fd) {
            return err(BadKeepFds, fd as u64);
        }
    }
    for d in view.dup2s {
        if d.src < 0 || d.target < 0 {
            return err(BadDup2, d.target as u32 as u64);
        }
    }
    Ok(())
}

fn check_fds(view: &PlanView<'_>) -> Result<(), PlanError> {
    use PlanErrorKind::*;
    for &fd in view.close_fds {
        if fd < 0 {
            return err(BadCloseFd, fd as u64);
        }
        if i64::from(fd) == view.hdr.status_fd {
            return err(StatusFdClosed, fd as u64);
        }
    }
    Ok(())
}

fn check_threads(threads: &[PlanThread]) -> Result<(), PlanError> {
    use PlanErrorKind::*;
    let n = threads.len() as u64;
    if n == 0 || n > MAX_THREADS {
        return err(BadThreadCount, n);
    }
    let u32_max = u64::from(u32::MAX);
    for t in threads {
        // clone3 takes the TID as an i32 (set_tid), and 0 is nobody.
        if t.tid == 0 || t.tid > i32::MAX as u64 {
            return err(BadTid, t.tid);
        }
        if t.name[15] != 0 {
            return err(BadThreadName, t.tid);
        }
        // rseq takes a u32 length and signature, sigaltstack an int of flags.
        if t.rseq_len > u32_max || t.rseq_sig > u32_max || t.ss_flags > u32_max {
            return err(BadThreadField, t.tid);
        }
    }
    Ok(())
}

fn check_sigactions(sigactions: &[PlanSigaction]) -> Result<(), PlanError> {
    const SIGKILL: u64 = 9;
    const SIGSTOP: u64 = 19;
    for sa in sigactions {
        if !(1..=64).contains(&sa.signo) || sa.signo == SIGKILL || sa.signo == SIGSTOP {
            return err(PlanErrorKind::BadSignal, sa.signo);
        }
    }
    Ok(())
}

fn check_vmas(view: &PlanView<'_>) -> Result<(), PlanError> {
    use PlanErrorKind::*;
    let mut vdso_seen = [false; 3];
    // End of the previous VMA, and the index its runs stopped at.
    let mut prev_end = 0u64;
    let mut next_run = 0u64;
    for vma in view.vmas {
        let s = vma.start;
        if vma.start >= vma.end
            || !page_aligned(vma.start)
            || !page_aligned(vma.end)
            || vma.end > TASK_SIZE
        {
            return err(VmaBounds, s);
        }
        if overlaps_zone(vma.start, vma.end) {
            return err(VmaInLoaderZone, s);
        }
        if vma.start < prev_end {
            return err(VmaOrder, s);
        }
        prev_end = vma.end;
        // The runs are the VMAs' runs one after the other, none left over.
        let last_run = vma.first_run.checked_add(vma.nr_runs);
        match last_run {
            Some(last) if vma.first_run == next_run && last <= view.runs.len() as u64 => {
                next_run = last;
            }
            _ => return err(VmaRuns, s),
        }
        match vma.kind {
            VMA_ANON_PRIVATE | VMA_ANON_SHARED | VMA_VVAR | VMA_VVAR_VCLOCK | VMA_VDSO => {
                if vma.fd != -1 {
                    return err(VmaFdNotFile, s);
                }
            }
            VMA_FILE_PRIVATE | VMA_FILE_SHARED => {
                let len = vma.end - vma.start;
                if vma.fd < 0 || !page_aligned(vma.offset) || vma.offset.checked_add(len).is_none()
                {
                    return err(VmaFile, s);
                }
            }
            VMA_SYSV_SHM => {
                if vma.fd != -1 || vma.nr_runs != 0 || vma.offset > i32::MAX as u64 {
                    return err(VmaSysvShm, s);
                }
            }
            _ => return err(VmaKind, s),
        }
        if vma.is_vdso_piece() {
            let Some(seen) = vdso_seen.get_mut((vma.kind - VMA_VVAR) as usize) else {
                return err(VmaKind, s);
            };
            if *seen || vma.nr_runs != 0 {
                return err(VmaVdso, s);
            }
            *seen = true;
        }
        let shm_flags = if vma.kind == VMA_SYSV_SHM {
            VMA_F_SHM_RDONLY
        } else {
            0
        };
        if vma.flags & !(VMA_F_GROWSDOWN | VMA_F_INHERITED | shm_flags) != 0 {
            return err(VmaFlags, s);
        }
        if vma.flags & VMA_F_INHERITED != 0
            && (view.hdr.fork_parent == 0
                || !matches!(vma.kind, VMA_ANON_PRIVATE | VMA_FILE_PRIVATE))
        {
            return err(VmaInherited, s);
        }
        if vma.prot & !VMA_PROT_MASK != 0 {
            return err(VmaProt, s);
        }
        let mut prev_run_end = vma.start;
        for run in view.runs_of(vma) {
            if run.len == 0
                || !page_aligned(run.addr)
                || !page_aligned(run.len)
                || !page_aligned(run.file_off)
                || run.file_off.checked_add(run.len).is_none()
                || (run.fd != -1 && as_fd(run.fd).is_none())
            {
                return err(RunMalformed, run.addr);
            }
            let end = run.addr.checked_add(run.len).ok_or(PlanError {
                kind: RunOutside,
                at: run.addr,
            })?;
            if run.addr < vma.start || end > vma.end {
                return err(RunOutside, run.addr);
            }
            if run.addr < prev_run_end {
                return err(RunOrder, run.addr);
            }
            prev_run_end = end;
        }
    }
    if next_run != view.runs.len() as u64 {
        return err(VmaRuns, next_run);
    }
    Ok(())
}
