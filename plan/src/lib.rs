//! The restore plan: the contract between the `ckpt restore` front end (std, in `src/`)
//! and the no_std loader (`restore/`). The front end writes one plan into a memfd and
//! execs the loader with it; the loader only reads it, and writes one [`Ready`] record
//! back on its status pipe.
//!
//! Layout of the plan file (all little-endian, all records `#[repr(C)]` without padding,
//! every offset counted from the start of the file and 8-byte aligned):
//!
//! ```text
//! PlanHeader
//! PlanVma      [nr_vmas]        sorted by start address, not overlapping
//! PlanRun      [nr_runs]        page data to copy; runs of VMA i are runs[vma.first_run ..][..vma.nr_runs]
//! PlanThread   [nr_threads]     threads[0] is the thread-group leader (tid == pid)
//! PlanSigaction[nr_sigactions]  only signals whose handler is not SIG_DFL
//! u64          [auxv_words]     saved auxv (pairs, ending with AT_NULL)
//! i32          [nr_close_fds]   descriptors the loader closes before it parks
//! PlanFork     [nr_forks]       children this loader forks once its memory is in place
//! PlanDup2     [nr_dup2s]       a forked child's descriptors (forked plans only)
//! i32          [nr_keep_fds]    what a forked child keeps open, ascending
//! PlanRlimit   [nr_rlimits]     a forked child's resource limits
//! u8           [cwd_len]        a forked child's working directory, NUL-terminated
//! ```
//!
//! **Forked children** keep the memory they share copy-on-write with their parent: the
//! front end lets a parent's loader create some of its children (leaves of the tree)
//! with `clone3(set_tid)` right after it has mapped and filled its own regions. Such a
//! child's plan has `fork_parent` set and carries the setup the front end would have
//! done before exec (session and group, descriptors, cwd, umask, limits, personality);
//! its VMAs flagged [`VMA_F_INHERITED`] are the parent's own regions, identical in
//! bounds, kind, protection and backing: the child keeps them and rewrites only the
//! pages whose content differs from its image (and drops the pages it did not have),
//! so every page both had in common stays one page.
//!
//! [`validate`] checks a plan against everything the loader relies on and returns typed
//! slices of it ([`PlanView`]). The crate is `no_std` without `alloc` and never panics on
//! any input, so that the loader can use it as it is.

#![no_std]

mod validate;

pub use validate::{validate, validate_header, PlanError, PlanErrorKind, PlanView};
/// The conversions (`IntoBytes::as_bytes`, `FromBytes::read_from_bytes`...) the records
/// implement, for the front end and the loader to use with exactly this version.
pub use zerocopy;

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// "CKPTPLAN"
pub const PLAN_MAGIC: u64 = u64::from_le_bytes(*b"CKPTPLAN");
pub const PLAN_VERSION: u64 = 3;

/// The page size every address, length and file offset of the plan is a multiple of.
pub const PAGE_SIZE: u64 = 4096;
/// Largest end of a user mapping on x86-64 with 4-level paging.
pub const TASK_SIZE: u64 = 0x7fff_ffff_f000;

/// The loader is linked at this address (see restore/build.rs) and keeps everything it
/// maps itself (plan, stacks) inside `[LOADER_ZONE_START, LOADER_ZONE_END)`. No region of a
/// restored image may overlap this zone; the front end checks that before it execs.
pub const LOADER_ZONE_START: u64 = 0x3ff0_0000_0000;
pub const LOADER_ZONE_END: u64 = 0x3ff2_0000_0000;
/// Where the loader maps the plan file.
pub const LOADER_PLAN_ADDR: u64 = 0x3ff1_0000_0000;
/// Scratch area used while moving the vdso/vvar pieces out of the way.
pub const LOADER_SCRATCH_ADDR: u64 = 0x3ff1_8000_0000;
/// Per-thread loader stacks are carved from here, `LOADER_THREAD_STACK` bytes each.
pub const LOADER_STACKS_ADDR: u64 = 0x3ff1_4000_0000;
pub const LOADER_THREAD_STACK: u64 = 64 * 1024;
/// The plan must fit below the thread stacks.
pub const MAX_PLAN_SIZE: u64 = LOADER_STACKS_ADDR - LOADER_PLAN_ADDR;
/// How many thread stacks fit between `LOADER_STACKS_ADDR` and the scratch area.
pub const MAX_THREADS: u64 = (LOADER_SCRATCH_ADDR - LOADER_STACKS_ADDR) / LOADER_THREAD_STACK;

/// `PlanVma::kind`
pub const VMA_ANON_PRIVATE: u32 = 0;
/// MAP_SHARED|MAP_ANONYMOUS; content comes from the runs.
pub const VMA_ANON_SHARED: u32 = 1;
/// MAP_PRIVATE of `fd` at `offset`; runs hold the pages that had become anonymous (written).
pub const VMA_FILE_PRIVATE: u32 = 2;
/// MAP_SHARED of `fd` at `offset`. Usually no runs (the file holds the data); runs are
/// written through the mapping into a file the front end created (shared anonymous
/// memory rebuilt on a memfd), with `fd` open read-write.
pub const VMA_FILE_SHARED: u32 = 3;
/// `[vvar]`, `[vvar_vclock]`, `[vdso]`: not mapped from the plan, the loader moves its own
/// kernel-provided pieces here (same names, same sizes, same relative layout).
pub const VMA_VVAR: u32 = 4;
pub const VMA_VVAR_VCLOCK: u32 = 5;
pub const VMA_VDSO: u32 = 6;
/// An attachment of the SysV shared memory segment whose id is `offset` (shmat at
/// `start`, the whole segment; `fd` -1, no runs: the front end made the segment with
/// its content). Flag [`VMA_F_SHM_RDONLY`] is shmat's; `prot` is set with mprotect
/// afterwards when it differs (PROT_EXEC among others: SHM_EXEC would need the
/// segment's x permission, which mprotect does not).
pub const VMA_SYSV_SHM: u32 = 7;

/// `PlanVma::flags` bits
pub const VMA_F_GROWSDOWN: u32 = 1;
/// In a forked child's plan: the region exists as it is in the parent's memory at the
/// fork (same bounds, kind, protection, flags and backing file); only pages that differ
/// are written. Private kinds only.
pub const VMA_F_INHERITED: u32 = 2;
/// VMA_SYSV_SHM only: attach with SHM_RDONLY (the attachment can never be written).
pub const VMA_F_SHM_RDONLY: u32 = 4;
pub const VMA_F_ALL: u32 = VMA_F_GROWSDOWN | VMA_F_INHERITED | VMA_F_SHM_RDONLY;

/// `PlanHeader::setup_flags` bits (forked children only).
/// setsid(): the child leads a session (and a group) of its own.
pub const SETUP_SETSID: u64 = 1;
/// setpgid(0, 0): the child leads a group of its own.
pub const SETUP_PGID_LEAD: u64 = 2;
/// setpgid(0, setup_pgid): the child joins that group.
pub const SETUP_PGID_JOIN: u64 = 4;
/// Forked with CLONE_FILES: the descriptor table is the parent's (no dup2s, nothing
/// closed, no keep list).
pub const SETUP_SHARED_FILES: u64 = 8;
/// Forked with CLONE_FS: cwd, root and umask are the parent's (no cwd, no umask).
pub const SETUP_SHARED_FS: u64 = 16;
pub const SETUP_ALL: u64 =
    SETUP_SETSID | SETUP_PGID_LEAD | SETUP_PGID_JOIN | SETUP_SHARED_FILES | SETUP_SHARED_FS;

/// `PlanFork::flags` bits: the clone flags a child is forked with (what it shares with
/// its parent).
pub const FORK_CLONE_FS: u64 = 0x200;
pub const FORK_CLONE_FILES: u64 = 0x400;

/// `PlanVma::prot` bits (PROT_READ | PROT_WRITE | PROT_EXEC).
pub const VMA_PROT_MASK: u32 = 7;

#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct PlanHeader {
    pub magic: u64,
    pub version: u64,
    /// Total size of the plan file in bytes.
    pub size: u64,
    pub pid: u64,

    pub vmas_off: u64,
    pub nr_vmas: u64,
    pub runs_off: u64,
    pub nr_runs: u64,
    pub threads_off: u64,
    pub nr_threads: u64,
    pub sigactions_off: u64,
    pub nr_sigactions: u64,
    pub auxv_off: u64,
    /// Number of u64 words of auxv (even).
    pub auxv_words: u64,
    pub close_fds_off: u64,
    pub nr_close_fds: u64,

    /// The descriptor from which page data is read (`PlanRun::file_off` is an offset in it).
    pub image_fd: i64,
    /// Pipe the loader writes exactly one [`Ready`] into, then leaves open.
    pub status_fd: i64,

    /// Fields for prctl(PR_SET_MM, PR_SET_MM_MAP); exe_fd is always -1 here (the front
    /// end sets the exe link afterwards, once the loader is gone).
    pub mm: PrctlMmMap,

    /// Children to fork once the memory is in place ([`PlanFork`]).
    pub forks_off: u64,
    pub nr_forks: u64,
    /// PID of the parent whose loader forks this process; 0: the front end created it.
    /// The fields below are used only when it is set.
    pub fork_parent: u64,
    /// `SETUP_*` bits, and the group `SETUP_PGID_JOIN` joins.
    pub setup_flags: u64,
    pub setup_pgid: u64,
    pub setup_umask: u64,
    pub setup_personality: u64,
    pub dup2s_off: u64,
    pub nr_dup2s: u64,
    pub keep_fds_off: u64,
    pub nr_keep_fds: u64,
    pub rlimits_off: u64,
    pub nr_rlimits: u64,
    pub cwd_off: u64,
    pub cwd_len: u64,
    pub _reserved: u64,
}

impl PlanHeader {
    /// The status pipe, once magic and version are right and the descriptor is one: the
    /// loader reports every later error through it.
    pub fn status_pipe(&self) -> Option<i32> {
        if self.magic == PLAN_MAGIC && self.version == PLAN_VERSION {
            as_fd(self.status_fd)
        } else {
            None
        }
    }
}

/// `fd` as a descriptor number, if it is one (0 ..= i32::MAX).
pub fn as_fd(fd: i64) -> Option<i32> {
    i32::try_from(fd).ok().filter(|&fd| fd >= 0)
}

/// Mirror of the kernel's `struct prctl_mm_map` (include/uapi/linux/prctl.h) minus the
/// auxv pointer/size and exe_fd, which the loader fills in.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct PrctlMmMap {
    pub start_code: u64,
    pub end_code: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub brk: u64,
    pub start_stack: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
}

#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct PlanVma {
    pub start: u64,
    pub end: u64,
    /// PROT_* bits the region must end up with.
    pub prot: u32,
    /// One of the `VMA_*` kinds.
    pub kind: u32,
    /// `VMA_F_*` bits.
    pub flags: u32,
    /// Descriptor of the backing file for the file kinds, -1 otherwise. Already open in the
    /// loader (inherited across exec), with an access mode that allows `prot`.
    pub fd: i32,
    /// File offset of `start` for the file kinds.
    pub offset: u64,
    /// Index of this VMA's first run in the run array, and how many runs it has.
    pub first_run: u64,
    pub nr_runs: u64,
}

impl PlanVma {
    /// `[vvar]`, `[vvar_vclock]` or `[vdso]`: moved by the loader, not mapped.
    pub fn is_vdso_piece(&self) -> bool {
        (VMA_VVAR..=VMA_VDSO).contains(&self.kind)
    }
}

/// `len` bytes at address `addr` are read from `fd` at `file_off` (`fd` -1: the plan's
/// `image_fd`; another descriptor holds an older generation's image, for pages an
/// incremental image does not store). `addr`, `len` and `file_off` are page-aligned.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct PlanRun {
    pub addr: u64,
    pub len: u64,
    pub file_off: u64,
    pub fd: i64,
}

#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct PlanThread {
    pub tid: u64,
    /// set_robust_list(head, len); head 0 = none.
    pub robust_head: u64,
    pub robust_len: u64,
    /// set_tid_address(clear_child_tid)
    pub clear_child_tid: u64,
    /// rseq(addr, len, 0, sig); addr 0 = not registered.
    pub rseq_addr: u64,
    pub rseq_len: u64,
    pub rseq_sig: u64,
    /// sigaltstack: ss_sp, ss_flags (SS_DISABLE or 0 | SS_AUTODISARM), ss_size.
    pub ss_sp: u64,
    pub ss_flags: u64,
    pub ss_size: u64,
    /// NUL-padded thread name (prctl PR_SET_NAME); the last byte is always NUL.
    pub name: [u8; 16],
}

/// One rt_sigaction(signo, &act, NULL, 8) to perform; mirrors the kernel's
/// `struct sigaction` for x86-64 (handler, flags, restorer, mask).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct PlanSigaction {
    pub signo: u64,
    pub handler: u64,
    pub flags: u64,
    pub restorer: u64,
    pub mask: u64,
}

/// A child the loader forks with `clone3(set_tid = [pid])` once its memory is in place;
/// the child loads the plan at `plan_fd` (its `fork_parent` is this process).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct PlanFork {
    pub pid: u64,
    pub plan_fd: i64,
    /// `FORK_CLONE_*` bits.
    pub flags: u64,
}

/// dup2(src, target) in a forked child.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct PlanDup2 {
    pub src: i32,
    pub target: i32,
}

/// prlimit64(0, resource, {cur, max}) in a forked child.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct PlanRlimit {
    pub resource: u64,
    pub cur: u64,
    pub max: u64,
}

pub const READY_MAGIC: u64 = u64::from_le_bytes(*b"CKPTRDY!");

/// What the loader writes to `status_fd`: once everything is mapped, every thread exists
/// and has parked (all signals blocked, inside `pause()` in loader code), `error == 0`.
/// On failure `error` is the positive errno, `stage` says what failed, `msg` is a short
/// NUL-padded text, and the loader exits with status 127 right after writing.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct Ready {
    pub magic: u64,
    pub error: u64,
    pub stage: u64,
    /// Address of the failing object (e.g. the VMA start), 0 if none.
    pub addr: u64,
    /// The loader's own memory, which the front end unmaps once every thread is seized.
    pub loader_start: u64,
    pub loader_end: u64,
    pub msg: [u8; 80],
}

impl Ready {
    /// A record with magic set; `msg` is cut to keep at least one NUL at the end.
    pub fn new(error: u64, stage: u64, addr: u64, loader: (u64, u64), msg: &[u8]) -> Ready {
        let mut r = Ready {
            magic: READY_MAGIC,
            error,
            stage,
            addr,
            loader_start: loader.0,
            loader_end: loader.1,
            msg: [0; 80],
        };
        let n = msg.len().min(r.msg.len() - 1);
        if let (Some(dst), Some(src)) = (r.msg.get_mut(..n), msg.get(..n)) {
            dst.copy_from_slice(src);
        }
        r
    }

    /// The record in `bytes` (exactly one record long), if its magic is right.
    pub fn parse(bytes: &[u8]) -> Option<Ready> {
        Ready::read_from_bytes(bytes)
            .ok()
            .filter(|r| r.magic == READY_MAGIC)
    }
}

/// `Ready::stage` values
pub const STAGE_DONE: u64 = 0;
pub const STAGE_PLAN: u64 = 1;
pub const STAGE_UNMAP: u64 = 2;
pub const STAGE_VDSO: u64 = 3;
pub const STAGE_MAP: u64 = 4;
pub const STAGE_FILL: u64 = 5;
pub const STAGE_PROTECT: u64 = 6;
pub const STAGE_SIGACTION: u64 = 7;
pub const STAGE_MM: u64 = 8;
pub const STAGE_THREAD: u64 = 9;
pub const STAGE_THREAD_STATE: u64 = 10;
pub const STAGE_FORK: u64 = 11;
pub const STAGE_SETUP: u64 = 12;
pub const STAGE_INHERIT: u64 = 13;

pub fn stage_name(stage: u64) -> &'static str {
    match stage {
        STAGE_DONE => "done",
        STAGE_PLAN => "reading the plan",
        STAGE_UNMAP => "clearing the address space",
        STAGE_VDSO => "moving the vdso",
        STAGE_MAP => "mapping a region",
        STAGE_FILL => "filling pages",
        STAGE_PROTECT => "setting protection",
        STAGE_SIGACTION => "installing signal handlers",
        STAGE_MM => "restoring mm fields (PR_SET_MM_MAP)",
        STAGE_THREAD => "creating a thread with its original TID (clone3 set_tid)",
        STAGE_THREAD_STATE => "restoring per-thread state",
        STAGE_FORK => "forking a child that shares memory (clone3 set_tid)",
        STAGE_SETUP => "setting up a forked child (group, descriptors, cwd, limits)",
        STAGE_INHERIT => "rewriting the pages a forked child does not share",
        _ => "unknown stage",
    }
}

// The sizes the front end, the loader and restore/tests/smoke.py agree on.
const _: () = assert!(core::mem::size_of::<PlanHeader>() == 360);
const _: () = assert!(core::mem::size_of::<PlanVma>() == 56);
const _: () = assert!(core::mem::size_of::<PlanRun>() == 32);
const _: () = assert!(core::mem::size_of::<PlanThread>() == 96);
const _: () = assert!(core::mem::size_of::<PlanSigaction>() == 40);
const _: () = assert!(core::mem::size_of::<PlanFork>() == 24);
const _: () = assert!(core::mem::size_of::<PlanDup2>() == 8);
const _: () = assert!(core::mem::size_of::<PlanRlimit>() == 24);
// One write below PIPE_BUF, so atomic on a pipe.
const _: () = assert!(core::mem::size_of::<Ready>() == 128);
