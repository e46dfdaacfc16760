//! Files reopened by path: regular files (with their offset), directories, the
//! character devices that hold no state of their own (/dev/null, /dev/zero, /dev/full,
//! /dev/random, /dev/urandom, at their own path or at a node made with mknod: the
//! restore checks the device number), and O_PATH descriptors of any file (reopened with
//! O_PATH, O_NOFOLLOW for a symlink, and the same inode checked). Dump: a descriptor whose link is a path, by what stat
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

/// The character devices reopened by path, by (major, minor): /dev/null, /dev/zero,
/// /dev/full, /dev/random and /dev/urandom, at any path (a node made with mknod too).
/// They hold no state a process could depend on.
const STATELESS_DEVICES: &[(u32, u32)] = &[(1, 3), (1, 5), (1, 7), (1, 8), (1, 9)];

fn stateless(rdev: u64) -> bool {
    STATELESS_DEVICES.contains(&(libc::major(rdev), libc::minor(rdev)))
}

fn dump(d: &mut Dump) -> Option<Result<FdKind>> {
    let Target::Path(path, md) = d.target else {
        return None;
    };
    let ft = md.file_type();
    if d.info.flags & libc::O_PATH != 0 {
        // Any file type: an O_PATH descriptor names a file and holds no open state.
        return Some(Ok(FdKind::OPath {
            path: path.to_string(),
            mode: md.mode(),
            dev: md.dev(),
            ino: md.ino(),
            btime: btime(md),
        }));
    }
    if ft.is_file() {
        Some(regular(d.pid, d.fd, path, d.info.pos, d.ids))
    } else if ft.is_dir() {
        Some(Ok(FdKind::Dir {
            path: path.to_string(),
        }))
    } else if ft.is_char_device() && !super::tty::is_tty_rdev(md.rdev()) && stateless(md.rdev()) {
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
        FdKind::CharDev { path, rdev } => Some((|| {
            let f = open(path, fd.flags, &what)?;
            let st = fstat(&f)?;
            if st.st_mode & libc::S_IFMT != libc::S_IFCHR || st.st_rdev != *rdev {
                bail!(
                    "{path} is no longer the device {}:{} that {what} had open",
                    libc::major(*rdev),
                    libc::minor(*rdev)
                );
            }
            Ok(f)
        })()),
        FdKind::OPath {
            path,
            mode,
            dev,
            ino,
            btime: born,
        } => Some((|| {
            let nofollow = if mode & libc::S_IFMT == libc::S_IFLNK {
                libc::O_NOFOLLOW
            } else {
                0
            };
            let f = open(path, fd.flags | libc::O_PATH | nofollow, &what)?;
            // statx through the descriptor (O_PATH too): an inode number is reused at
            // once by a file made after the one removed, its birth time is not.
            let md = std::fs::File::from(f.try_clone()?).metadata()?;
            let now = (md.dev(), md.ino(), md.mode() & libc::S_IFMT, btime(&md));
            if now != (*dev, *ino, mode & libc::S_IFMT, *born) {
                bail!("{path} is no longer the file that {what} had open (O_PATH): it was replaced since the checkpoint");
            }
            Ok(f)
        })()),
        _ => None,
    }
}

/// The birth time of a file in ns since the epoch (0: its file system keeps none).
fn btime(md: &std::fs::Metadata) -> i128 {
    md.created()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as i128)
}

/// fstat(2) of a descriptor of ours.
fn fstat(f: &OwnedFd) -> RestoreResult<libc::stat> {
    // SAFETY: `libc::stat` is a plain C struct of integers: all-zero bytes are a valid
    // value, and fstat overwrites it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    super::cvt(
        // SAFETY: fstat(2) writes one `struct stat` into `st`, a local of that type; `f`
        // is borrowed open for the call.
        unsafe { libc::fstat(f.as_raw_fd(), &mut st) },
        "stat of a reopened file",
    )?;
    Ok(st)
}

fn describe(kind: &FdKind) -> Option<String> {
    match kind {
        FdKind::File { id, pos } => Some(format!("file {} @{}", id.path, pos)),
        FdKind::Dir { path } => Some(format!("directory {path}")),
        FdKind::CharDev { path, .. } => Some(format!("device {path}")),
        FdKind::OPath { path, .. } => Some(format!("O_PATH {path}")),
        _ => None,
    }
}
