//! Memory shared copy-on-write between a parent and its forked children (issue 9).
//!
//! Each loader fills its own address space from its image, so children created by the
//! front end would each get a private copy of what they shared with their parent before
//! the checkpoint, and the tree's memory would grow by as many copies. As CRIU does, the
//! parent's loader forks such children instead, once its memory is in place
//! (restore/src/fork.rs): a region the child has exactly as the parent has it is
//! *inherited* (kept, only the pages that differ rewritten), so every page whose content
//! both share stays one page.
//!
//! A child that shares its descriptor table or fs state with its parent (clone with
//! CLONE_FILES or CLONE_FS, `ckpt_tracer::attr::shares`) must be forked this way, with
//! the same clone flags: it then takes none of its own descriptors, cwd or umask (they
//! are its parent's), and the restore refuses, before any process exists, one that
//! cannot be forked.
//!
//! [`choose`] picks the children this can be done for, conservatively: leaves of the
//! tree (a forked child creates neither children nor zombies), without a controlling
//! terminal to take or a removed working directory to enter, whose standard streams
//! that are the restorer's are also their parent's, whose vdso lies where the parent's
//! does, whose process group exists when the parent's loader runs and whose own group
//! nobody needs before (to join it, or as a terminal's foreground group). The others are
//! created by the front end as before (spawn.rs). [`child_extra`] writes down, for the
//! child's plan, what spawn.rs would have done before exec.

use super::plan::{Extra, ForkedSetup};
use super::spawn::Pgid;
use super::PreparedProcess;
use crate::generation::Manifest;
use crate::image::Image;
use anyhow::{bail, Result};
use ckpt_format::state::{ProcessState, Vma, VmaKind};
use ckpt_plan::*;
use ckpt_tracer::attr::shares;
use std::os::fd::{AsRawFd, RawFd};

/// For each process, the index of the parent whose loader forks it, if one does.
pub(super) fn choose(
    images: &[Image],
    manifest: &Manifest,
    children: &[Vec<usize>],
    prepared: &[PreparedProcess],
) -> Result<Vec<Option<usize>>> {
    let parent_of = |i: usize| children.iter().position(|c| c.contains(&i));
    let mut out = Vec::new();
    for i in 0..images.len() {
        let state = &images[i].state;
        let must = shares::saved(state);
        let p = parent_of(i);
        let ok =
            p.is_some_and(|p| eligible(i, p, images, manifest, children, prepared, &parent_of));
        if (must.files || must.fs) && !ok {
            bail!(
                "process {} shares {} with its parent, which ckpt restores only for a child without children, a controlling terminal to take or a removed working directory, whose group exists before it and whose vdso is where its parent's is",
                state.pid,
                if must.files {
                    "its descriptor table (CLONE_FILES)"
                } else {
                    "its cwd and umask (CLONE_FS)"
                }
            );
        }
        out.push(if ok { p } else { None });
    }
    Ok(out)
}

fn eligible(
    i: usize,
    p: usize,
    images: &[Image],
    manifest: &Manifest,
    children: &[Vec<usize>],
    prepared: &[PreparedProcess],
    parent_of: &dyn Fn(usize) -> Option<usize>,
) -> bool {
    let (child, parent) = (&images[i].state, &images[p].state);
    let must = shares::saved(child);
    if std::env::var_os("CKPT_NO_COW_FORK").is_some() && !(must.files || must.fs) {
        return false;
    }
    let (cs, ps) = (&prepared[i].setup, &prepared[p].setup);
    if !children[i].is_empty() || manifest.zombies.iter().any(|z| z.ppid == child.pid) {
        return false;
    }
    if cs.ctty.is_some() || cs.cwd_fd.is_some() {
        return false;
    }
    // The restorer's own descriptors it keeps (standard streams) must be the parent's
    // too: in the loader it inherits the parent's table, not the restorer's.
    let parents_own: Vec<RawFd> = ps
        .installs
        .iter()
        .filter(|x| x.src.is_none())
        .map(|x| x.target)
        .collect();
    if !must.files
        && cs
            .installs
            .iter()
            .any(|x| x.src.is_none() && !parents_own.contains(&x.target))
    {
        return false;
    }
    // A group it leads must not be needed before its parent's loader runs: by another
    // process joining it, a zombie, or a terminal making it the foreground group.
    let needed = prepared.iter().any(|o| {
        o.setup.pgid == Pgid::Join(child.pid) || o.setup.ctty.is_some_and(|(_, fg)| fg == child.pid)
    }) || manifest
        .zombies
        .iter()
        .any(|z| z.pgid == child.pid && z.pid != child.pid);
    if needed {
        return false;
    }
    if vdso_pieces(child) != vdso_pieces(parent) {
        return false;
    }
    // A group to join must exist when the parent's loader runs: the parent's or one of
    // its ancestors' (created before it).
    if let Pgid::Join(g) = cs.pgid {
        let mut a = Some(p);
        let mut found = false;
        while let Some(k) = a {
            if images[k].state.pid == g {
                found = true;
                break;
            }
            a = parent_of(k);
        }
        if !found {
            return false;
        }
    }
    must.files || must.fs || child.vmas.iter().any(|v| inherited(v, parent))
}

fn vdso_pieces(s: &ProcessState) -> Vec<(u64, u64, String)> {
    s.vmas
        .iter()
        .filter(|v| matches!(v.kind, VmaKind::Vdso | VmaKind::Vvar | VmaKind::VvarVclock))
        .map(|v| (v.start, v.end, format!("{:?}", v.kind)))
        .collect()
}

/// Whether the parent's loader leaves region `v` of the child in place, as the child
/// needs it but for its pages: the same bounds, protection and flags, private, and the
/// same backing (anonymous memory, or the same file at the same offset).
pub(super) fn inherited(v: &Vma, parent: &ProcessState) -> bool {
    let Ok(k) = parent.vmas.binary_search_by_key(&v.start, |p| p.start) else {
        return false;
    };
    let p = &parent.vmas[k];
    if p.end != v.end || p.prot != v.prot || p.growsdown != v.growsdown || p.shared || v.shared {
        return false;
    }
    match (&p.kind, &v.kind) {
        (VmaKind::Anon, VmaKind::Anon) => true,
        (VmaKind::File { .. }, VmaKind::File { .. })
        | (VmaKind::Unlinked { .. }, VmaKind::Unlinked { .. })
        | (VmaKind::DeletedFile { .. }, VmaKind::DeletedFile { .. }) => {
            p.offset == v.offset
                && super::fds::map_key(p).is_some()
                && super::fds::map_key(p) == super::fds::map_key(v)
        }
        _ => false,
    }
}

/// What the plan of child `c` (forked by `parent`'s loader) adds: its setup.
pub(super) fn child_extra(
    c: &ProcessState,
    parent: &ProcessState,
    p: &PreparedProcess,
) -> Result<Extra> {
    let s = &p.setup;
    let must = shares::saved(c);
    let (mut flags, pgid) = if s.session_leader {
        (SETUP_SETSID, 0)
    } else {
        match s.pgid {
            Pgid::Inherit => (0, 0),
            Pgid::Lead => (SETUP_PGID_LEAD, 0),
            Pgid::Join(g) => (SETUP_PGID_JOIN, g),
        }
    };
    let mut dup2s: Vec<PlanDup2> = s
        .installs
        .iter()
        .filter_map(|x| {
            x.src.as_ref().map(|src| PlanDup2 {
                src: src.as_raw_fd(),
                target: x.target,
            })
        })
        .collect();
    let mut keep_fds: Vec<i32> = s
        .installs
        .iter()
        .map(|x| x.target)
        .chain(s.loader_fds.iter().copied())
        .collect();
    keep_fds.sort_unstable();
    keep_fds.dedup();
    let mut cwd = s.cwd.as_bytes_with_nul().to_vec();
    if must.files {
        // The table is the parent's: nothing to install, nothing to close.
        flags |= SETUP_SHARED_FILES;
        dup2s.clear();
        keep_fds.clear();
    }
    if must.fs {
        flags |= SETUP_SHARED_FS;
        cwd.clear();
    }
    let rlimits = s
        .rlimits
        .iter()
        .map(|(r, l)| PlanRlimit {
            resource: *r as u64,
            cur: l.rlim_cur,
            max: l.rlim_max,
        })
        .collect();
    Ok(Extra {
        forks: Vec::new(),
        close: Vec::new(),
        forked: Some(ForkedSetup {
            parent: parent.pid,
            flags,
            pgid,
            umask: s.umask,
            personality: s.personality,
            dup2s,
            keep_fds,
            rlimits,
            cwd,
            inherited: c.vmas.iter().map(|v| inherited(v, parent)).collect(),
        }),
    })
}

/// The descriptors of forked child `p` that must survive into its parent's loader (and
/// that the parent's loader closes once the child is forked, unless they share one
/// table: then the child's loader closes them, and it installs nothing).
pub(super) fn fds_for_parent(c: &ProcessState, p: &PreparedProcess) -> Vec<RawFd> {
    let installs = if shares::saved(c).files {
        &[][..]
    } else {
        &p.setup.installs[..]
    };
    let mut fds: Vec<RawFd> = installs
        .iter()
        .filter_map(|x| x.src.as_ref().map(|s| s.as_raw_fd()))
        .chain(p.setup.loader_fds.iter().copied())
        .collect();
    fds.sort_unstable();
    fds.dedup();
    fds
}

/// The clone flags child `c` is forked with.
pub(super) fn clone_flags(c: &ProcessState) -> u64 {
    let s = shares::saved(c);
    (if s.files { FORK_CLONE_FILES } else { 0 }) | (if s.fs { FORK_CLONE_FS } else { 0 })
}

/// A child that shares its parent's descriptor table gets descriptors for its mappings
/// that are its own (numbers no other loader uses), so that neither loader closes one
/// the other still needs.
pub(super) fn own_map_fds(c: &ProcessState, p: &mut PreparedProcess, base: RawFd) -> Result<()> {
    if !shares::saved(c).files {
        return Ok(());
    }
    for fd in p.plan_fds.map_fds.values_mut() {
        // SAFETY: `*fd` is a descriptor of ours, open for this process's loader.
        let own = super::sys::above(
            unsafe { std::os::fd::BorrowedFd::borrow_raw(*fd) }.try_clone_to_owned()?,
            base,
        )?;
        *fd = own.as_raw_fd();
        p.setup.loader_fds.push(own.as_raw_fd());
        p.plan_fds.map_files.push(own.as_raw_fd());
        p._keep.push(own);
    }
    Ok(())
}
