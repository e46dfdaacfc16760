//! FIFOs (named pipes), with the data in flight. Dump: a descriptor whose link is a path
//! to a FIFO; the pass over a process's descriptors reads the data in flight once per
//! FIFO (as for a pipe, without consuming it) and notes whether both a reader and a
//! writer are open in the process. Restore: the FIFO at its path is opened again; one
//! O_RDWR descriptor of ours per FIFO (the kind's part of [`Shared`]) is held open while
//! the descriptors are prepared, so that opening either end never blocks and the data in
//! flight has a writer; a FIFO whose peer was outside the checkpoint comes back with
//! that peer closed (with a warning). A FIFO removed since it was opened (its link says
//! `PATH (deleted)`) is saved with its mode and owner ([`FdKind::DeletedFifo`]) and
//! comes back on a new FIFO made and removed again (crate::fd::ghost), the same way
//! otherwise. (Before memfd.rs in the table: that kind claims the other deleted files.)

use super::pipe::{peek, write_all};
use super::{cvt, open, set_status_flags, Context, Dump, Kind, RestoreResult, Shared, Target};
use crate::error::{Result, TraceError};
use crate::state::{Fd, FdKind};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};

pub const KIND: Kind = Kind {
    dump,
    dump_process: Some(dump_process),
    dump_tree: None,
    restore,
    finish: None,
    late: None,
    describe,
};

/// A FIFO open at its path, or removed since it was opened; its data is filled by the
/// pass.
fn dump(d: &mut Dump) -> Option<Result<FdKind>> {
    if d.info.flags & libc::O_PATH != 0 {
        return None; // crate::fd::file's
    }
    match d.target {
        Target::Path(path, md) => md.file_type().is_fifo().then(|| {
            Ok(FdKind::Fifo {
                path: path.to_string(),
                ino: md.ino(),
                peer_in_process: false,
                data: Vec::new(),
            })
        }),
        Target::Deleted(target) => {
            let link = crate::proc::path(d.pid, &format!("fd/{}", d.fd));
            let md = std::fs::metadata(link).ok()?;
            md.file_type().is_fifo().then(|| {
                Ok(FdKind::DeletedFifo {
                    name: target
                        .strip_suffix(" (deleted)")
                        .unwrap_or(target)
                        .to_string(),
                    ino: md.ino(),
                    mode: md.mode(),
                    uid: md.uid(),
                    gid: md.gid(),
                    peer_in_process: false,
                    data: Vec::new(),
                })
            })
        }
        _ => None,
    }
}

/// The inode, data and peer flag of a FIFO, deleted or not.
fn parts(kind: &mut FdKind) -> Option<(u64, &mut bool, &mut Vec<u8>)> {
    match kind {
        FdKind::Fifo {
            ino,
            peer_in_process,
            data,
            ..
        }
        | FdKind::DeletedFifo {
            ino,
            peer_in_process,
            data,
            ..
        } => Some((*ino, peer_in_process, data)),
        _ => None,
    }
}

/// Fill the data in flight of every FIFO (once per FIFO, with its first descriptor) and
/// whether both a reader and a writer are open in the process.
fn dump_process(pid: i32, fds: &mut [Fd]) -> Result<()> {
    let mut ends: HashMap<u64, (bool, bool)> = HashMap::new();
    for f in fds.iter_mut() {
        let flags = f.flags;
        if let Some((ino, _, _)) = parts(&mut f.kind) {
            let e = ends.entry(ino).or_default();
            let acc = flags & libc::O_ACCMODE;
            e.0 |= acc != libc::O_WRONLY;
            e.1 |= acc != libc::O_RDONLY;
        }
    }
    let mut done = std::collections::HashSet::new();
    for f in fds.iter_mut() {
        let fdnum = f.fd;
        if let Some((ino, peer_in_process, data)) = parts(&mut f.kind) {
            *peer_in_process = ends.get(&ino).is_some_and(|e| e.0 && e.1);
            if done.insert(ino) {
                *data = peek(pid, fdnum)
                    .map_err(|e| TraceError::io(pid, format!("reading FIFO fd {fdnum}"), e))?;
            }
        }
    }
    Ok(())
}

/// One O_RDWR descriptor per FIFO (by saved inode) while descriptors are prepared.
#[derive(Default)]
struct Keepers(HashMap<u64, OwnedFd>);

fn restore(pid: i32, fd: &Fd, shared: &mut Shared) -> Option<RestoreResult<OwnedFd>> {
    let (path, ino, peer_in_process, data, ghost) = match &fd.kind {
        FdKind::Fifo {
            path,
            ino,
            peer_in_process,
            data,
        } => (path, ino, peer_in_process, data, None),
        FdKind::DeletedFifo {
            name,
            ino,
            mode,
            uid,
            gid,
            peer_in_process,
            data,
        } => (name, ino, peer_in_process, data, Some((*mode, *uid, *gid))),
        _ => return None,
    };
    if !peer_in_process {
        eprintln!(
            "ckpt: warning: process {pid} fd {} was a FIFO ({path}) with a peer outside the checkpoint; restored with that peer closed",
            fd.fd
        );
    }
    let keeper = || match ghost {
        // A FIFO removed since: a new one, made and removed again (crate::fd::ghost).
        Some((mode, uid, gid)) => super::ghost::make(
            super::ghost::Ghost::Fifo,
            path,
            mode,
            uid,
            gid,
            libc::O_RDWR,
        ),
        None => open(path, libc::O_RDWR | libc::O_NONBLOCK, "a FIFO"),
    };
    Some(fifo(
        &mut shared.part::<Keepers>().0,
        path,
        *ino,
        data,
        fd.flags,
        keeper,
    ))
}

fn describe(kind: &FdKind) -> Option<String> {
    match kind {
        FdKind::Fifo { path, .. } => Some(format!("FIFO {path}")),
        FdKind::DeletedFifo { name, .. } => Some(format!("deleted FIFO {name}")),
        _ => None,
    }
}

/// A descriptor on the FIFO at `path` with `flags`. Opened non-blocking (an O_RDWR
/// descriptor of ours is held open meanwhile, so neither end waits for a peer), then
/// given its saved flags. The data in flight is written through our descriptor.
fn fifo(
    keepers: &mut HashMap<u64, OwnedFd>,
    path: &str,
    ino: u64,
    data: &[u8],
    flags: i32,
    keeper: impl FnOnce() -> RestoreResult<OwnedFd>,
) -> RestoreResult<OwnedFd> {
    if let std::collections::hash_map::Entry::Vacant(v) = keepers.entry(ino) {
        let k = keeper()?;
        // SAFETY: `libc::stat` is a plain C struct of integers: all-zero bytes are a valid
        // value, and fstat overwrites it.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        cvt(
            // SAFETY: fstat(2) writes one `struct stat` into `st`, a local of exactly that
            // type; `k` is the descriptor just opened and owned here.
            unsafe { libc::fstat(k.as_raw_fd(), &mut st) },
            "stat of a FIFO",
        )?;
        if st.st_mode & libc::S_IFMT != libc::S_IFIFO {
            bail!("{path} is no longer a FIFO; restore needs the named pipe the process had open");
        }
        v.insert(k);
    }
    let keeper = &keepers[&ino];
    if !data.is_empty() {
        write_all(keeper, data).with_context(|| format!("refilling FIFO {path}"))?;
    }
    let f = open(
        &format!("/proc/self/fd/{}", keeper.as_raw_fd()),
        flags | libc::O_NONBLOCK,
        &format!("FIFO {path}"),
    )?;
    set_status_flags(&f, flags)?;
    Ok(f)
}
