//! Builds the restore plan the loader executes (format and checks: the `ckpt-plan` crate).

use crate::image::PAGE;
use ckpt_format::state::{ProcessState, VmaKind};
use ckpt_plan::zerocopy::IntoBytes;
use ckpt_plan::*;
use std::collections::HashMap;

/// The descriptors the plan refers to, as numbers they will have in the loader.
pub struct PlanFds {
    pub image_fd: i32,
    pub status_fd: i32,
    /// fd of the file behind each file-backed VMA, by path.
    pub map_fds: HashMap<String, i32>,
    /// Every descriptor opened for mappings (the loader closes them all).
    pub map_files: Vec<i32>,
    /// Pages read from older generations' images (an incremental image), sorted by
    /// address, each with its descriptor (src/incremental.rs).
    pub inherited: Vec<PlanRun>,
}

/// What a plan says beyond the process's own image: the children its loader forks, and,
/// for such a child, the setup its loader does (src/restore/forked.rs).
#[derive(Default)]
pub struct Extra {
    pub forks: Vec<PlanFork>,
    /// Descriptors of the forked children, closed by the parent's loader too.
    pub close: Vec<i32>,
    pub forked: Option<ForkedSetup>,
}

/// The setup of a child its parent's loader forks.
pub struct ForkedSetup {
    pub parent: i32,
    /// `SETUP_*` bits and the group to join.
    pub flags: u64,
    pub pgid: i32,
    pub umask: u32,
    pub personality: u32,
    pub dup2s: Vec<PlanDup2>,
    /// Without the plan's own descriptor (added by `build`).
    pub keep_fds: Vec<i32>,
    pub rlimits: Vec<PlanRlimit>,
    /// With its NUL.
    pub cwd: Vec<u8>,
    /// Per VMA of the image: the parent has it as it is (`VMA_F_INHERITED`).
    pub inherited: Vec<bool>,
}

fn align8(buf: &mut Vec<u8>) {
    while !buf.len().is_multiple_of(8) {
        buf.push(0);
    }
}

/// Appends one array of the plan at the next 8-byte boundary; returns its offset.
fn section(body: &mut Vec<u8>, bytes: &[u8]) -> u64 {
    align8(body);
    let off = body.len() as u64;
    body.extend_from_slice(bytes);
    off
}

/// The plan of `state`, to be read from descriptor `plan_fd` in the loader.
pub fn build(state: &ProcessState, fds: &PlanFds, extra: &Extra, plan_fd: i32) -> Vec<u8> {
    let mut vmas = Vec::new();
    let mut runs = Vec::new();
    for (n, v) in state.vmas.iter().enumerate() {
        let inherited = extra
            .forked
            .as_ref()
            .is_some_and(|f| f.inherited.get(n) == Some(&true));
        let (kind, fd) = match &v.kind {
            VmaKind::Anon => (VMA_ANON_PRIVATE, -1),
            // Rebuilt on one memfd per object, shared by every process that maps it.
            VmaKind::SharedAnon { .. } => (
                VMA_FILE_SHARED,
                fds.map_fds[&super::fds::map_key(v).unwrap()],
            ),
            VmaKind::File { .. } | VmaKind::Unlinked { .. } | VmaKind::DeletedFile { .. } => {
                let fd = super::fds::map_key(v)
                    .and_then(|k| fds.map_fds.get(&k).copied())
                    .unwrap_or(-1);
                (
                    if v.shared {
                        VMA_FILE_SHARED
                    } else {
                        VMA_FILE_PRIVATE
                    },
                    fd,
                )
            }
            VmaKind::Vdso => (VMA_VDSO, -1),
            VmaKind::Vvar => (VMA_VVAR, -1),
            VmaKind::VvarVclock => (VMA_VVAR_VCLOCK, -1),
            // Made in the stopped process (ckpt_tracer::aio), not by the loader.
            VmaKind::AioRing(_) => continue,
            // Attached by the loader: the segment exists again (attr::sysvipc::recreate).
            VmaKind::SysvShm { .. } => (VMA_SYSV_SHM, -1),
        };
        let (offset, shm_flags) = sysv_shm_fields(&v.kind).unwrap_or((v.offset, 0));
        let first_run = runs.len() as u64;
        for r in &v.pages {
            runs.push(PlanRun {
                addr: r.addr,
                len: r.npages * PAGE,
                file_off: r.file_off,
                fd: -1,
            });
        }
        let from = fds.inherited.partition_point(|r| r.addr < v.start);
        let to = fds.inherited.partition_point(|r| r.addr < v.end);
        if from < to {
            runs.extend_from_slice(&fds.inherited[from..to]);
            runs[first_run as usize..].sort_unstable_by_key(|r| r.addr);
        }
        vmas.push(PlanVma {
            start: v.start,
            end: v.end,
            prot: v.prot,
            kind,
            flags: if v.growsdown { VMA_F_GROWSDOWN } else { 0 }
                | if inherited { VMA_F_INHERITED } else { 0 }
                | shm_flags,
            fd,
            offset,
            first_run,
            nr_runs: runs.len() as u64 - first_run,
        });
    }
    let threads: Vec<PlanThread> = state
        .threads
        .iter()
        .map(|t| {
            let mut name = [0u8; 16];
            let b = t.name.as_bytes();
            let n = b.len().min(15);
            name[..n].copy_from_slice(&b[..n]);
            let rseq = t.rseq.unwrap_or_default();
            PlanThread {
                tid: t.tid as u64,
                robust_head: t.robust_head,
                robust_len: t.robust_len,
                clear_child_tid: t.clear_child_tid,
                rseq_addr: rseq.addr,
                rseq_len: rseq.len as u64,
                rseq_sig: rseq.sig as u64,
                ss_sp: t.altstack.sp,
                // SS_ONSTACK is a state, not a setting: keep SS_DISABLE / SS_AUTODISARM.
                ss_flags: (t.altstack.flags & !libc::SS_ONSTACK) as u32 as u64,
                ss_size: t.altstack.size,
                name,
            }
        })
        .collect();
    let sigactions: Vec<PlanSigaction> = state
        .sigactions
        .iter()
        .filter(|s| s.signo != libc::SIGKILL && s.signo != libc::SIGSTOP)
        .map(|s| PlanSigaction {
            signo: s.signo as u64,
            handler: s.handler,
            flags: s.flags,
            restorer: s.restorer,
            mask: s.mask,
        })
        .collect();
    // Every descriptor opened for mappings, also one superseded by a read-write one.
    let mut close_fds: Vec<i32> = fds
        .map_fds
        .values()
        .chain(fds.map_files.iter())
        .chain(extra.close.iter())
        .copied()
        .collect();
    close_fds.sort_unstable();
    close_fds.dedup();

    let mm = PrctlMmMap {
        start_code: state.mm.start_code,
        end_code: state.mm.end_code,
        start_data: state.mm.start_data,
        end_data: state.mm.end_data,
        start_brk: state.mm.start_brk,
        brk: state.mm.brk,
        start_stack: state.mm.start_stack,
        arg_start: state.mm.arg_start,
        arg_end: state.mm.arg_end,
        env_start: state.mm.env_start,
        env_end: state.mm.env_end,
    };
    let mut h = PlanHeader {
        magic: PLAN_MAGIC,
        version: PLAN_VERSION,
        pid: state.pid as u64,
        image_fd: fds.image_fd as i64,
        status_fd: fds.status_fd as i64,
        mm,
        ..Default::default()
    };
    let hdr_len = std::mem::size_of::<PlanHeader>();
    let mut body = vec![0u8; hdr_len];
    let b = &mut body;
    (h.vmas_off, h.nr_vmas) = (section(b, vmas.as_bytes()), vmas.len() as u64);
    (h.runs_off, h.nr_runs) = (section(b, runs.as_bytes()), runs.len() as u64);
    (h.threads_off, h.nr_threads) = (section(b, threads.as_bytes()), threads.len() as u64);
    (h.sigactions_off, h.nr_sigactions) =
        (section(b, sigactions.as_bytes()), sigactions.len() as u64);
    (h.auxv_off, h.auxv_words) = (section(b, state.auxv.as_bytes()), state.auxv.len() as u64);
    (h.close_fds_off, h.nr_close_fds) = (section(b, close_fds.as_bytes()), close_fds.len() as u64);
    (h.forks_off, h.nr_forks) = (section(b, extra.forks.as_bytes()), extra.forks.len() as u64);
    if let Some(f) = &extra.forked {
        let mut keep = f.keep_fds.clone();
        if f.flags & SETUP_SHARED_FILES == 0 {
            keep.push(plan_fd);
        }
        keep.sort_unstable();
        keep.dedup();
        h.fork_parent = f.parent as u64;
        h.setup_flags = f.flags;
        h.setup_pgid = f.pgid as u64;
        h.setup_umask = f.umask as u64;
        h.setup_personality = f.personality as u64;
        (h.dup2s_off, h.nr_dup2s) = (section(b, f.dup2s.as_bytes()), f.dup2s.len() as u64);
        (h.keep_fds_off, h.nr_keep_fds) = (section(b, keep.as_bytes()), keep.len() as u64);
        (h.rlimits_off, h.nr_rlimits) = (section(b, f.rlimits.as_bytes()), f.rlimits.len() as u64);
        (h.cwd_off, h.cwd_len) = (section(b, &f.cwd), f.cwd.len() as u64);
    }
    align8(b);
    h.size = body.len() as u64;
    body[..hdr_len].copy_from_slice(h.as_bytes());
    body
}

/// A SysV shm attachment's `offset` (its shmid) and flags in the plan.
fn sysv_shm_fields(kind: &VmaKind) -> Option<(u64, u32)> {
    let VmaKind::SysvShm { shmid, may_write } = *kind else {
        return None;
    };
    let flags = if may_write { 0 } else { VMA_F_SHM_RDONLY };
    Some((shmid as u64, flags))
}

/// Runs `ckpt_plan::validate` (the checks the loader makes first) on a plan built here.
pub fn check(plan: &[u8]) -> Result<(), PlanError> {
    // `validate` reads the records in place, so it wants them 8-byte aligned.
    let mut words = vec![0u64; plan.len().div_ceil(8)];
    words.as_mut_bytes()[..plan.len()].copy_from_slice(plan);
    validate(&words.as_bytes()[..plan.len()]).map(|_| ())
}
