//! Files reopened by path: regular files (with their offset), directories, and the
//! character devices that hold no state of their own (/dev/null, /dev/zero, /dev/full,
//! /dev/random, /dev/urandom). Dump: a descriptor whose link is a path, by what stat
//! says of the open file; a regular file must still be at that path (same inode and
//! device), and its identity (crate::identity) is saved so that the restore can refuse
//! a file that changed. Restore: open(2) of the path with the saved flags (never
//! creating or truncating), then the offset. The identity check itself is part of the
//! restore-wide check of every file the image refers to, before any process exists
//! (src/restore/checks.rs), together with the executable and the mapped files.

use super::{open, Dump, Kind, RestoreResult, Shared, Target};
use crate::error::{Result, TraceError};
use crate::identity::IdentityCache;
use crate::proc;
use crate::state::{Fd, FdKind};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

pub const KIND: Kind = Kind {
    dump,
    dump_process: None,
    dump_tree: None,
    restore,
    finish: None,
    late: None,
    describe,
};

/// The character devices reopened by path: they hold no state a process could depend on.
const STATELESS_DEVICES: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
];

fn dump(d: &mut Dump) -> Option<Result<FdKind>> {
    let Target::Path(path, md) = d.target else {
        return None;
    };
    let ft = md.file_type();
    if ft.is_file() {
        Some(regular(d.pid, d.fd, path, d.info.pos, d.ids))
    } else if ft.is_dir() {
        Some(Ok(FdKind::Dir {
            path: path.to_string(),
        }))
    } else if ft.is_char_device()
        && !super::tty::is_tty_rdev(md.rdev())
        && STATELESS_DEVICES.contains(&path)
    {
        Some(Ok(FdKind::CharDev {
            path: path.to_string(),
            rdev: md.rdev(),
        }))
    } else {
        None
    }
}

/// A regular file open at `path`, which must still be the file at that path.
fn regular(pid: i32, fd: i32, path: &str, pos: u64, ids: &mut IdentityCache) -> Result<FdKind> {
    let link_path = proc::path(pid, &format!("fd/{fd}"));
    let id = ids
        .identity_at(Path::new(&link_path), path)
        .map_err(|e| TraceError::io(pid, format!("stat of fd {fd}"), e))?;
    match ids.identity(path) {
        Ok(cur) if cur.ino == id.ino && cur.dev == id.dev => {}
        _ => {
            return Err(TraceError::UnsupportedFd {
                pid,
                fd,
                kind: format!("file {path} that was replaced or renamed since it was opened"),
            })
        }
    }
    Ok(FdKind::File { id, pos })
}

fn restore(_pid: i32, fd: &Fd, _shared: &mut Shared) -> Option<RestoreResult<OwnedFd>> {
    let what = format!("fd {}", fd.fd);
    match &fd.kind {
        FdKind::File { id, pos } => Some((|| {
            let f = open(&id.path, fd.flags, &what)?;
            // SAFETY: lseek on our own descriptor.
            if unsafe { libc::lseek(f.as_raw_fd(), *pos as i64, libc::SEEK_SET) } < 0 {
                bail!(
                    "seeking {} to {pos}: {}",
                    id.path,
                    std::io::Error::last_os_error()
                );
            }
            Ok(f)
        })()),
        FdKind::Dir { path } => Some(open(path, fd.flags | libc::O_DIRECTORY, &what)),
        FdKind::CharDev { path, .. } => Some(open(path, fd.flags, &what)),
        _ => None,
    }
}

fn describe(kind: &FdKind) -> Option<String> {
    match kind {
        FdKind::File { id, pos } => Some(format!("file {} @{}", id.path, pos)),
        FdKind::Dir { path } => Some(format!("directory {path}")),
        FdKind::CharDev { path, .. } => Some(format!("device {path}")),
        _ => None,
    }
}
