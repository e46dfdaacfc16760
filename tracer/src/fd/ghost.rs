//! Ghosts: directories and FIFOs that were removed while the process held them (as a
//! descriptor, or a directory as its working directory), as CRIU's "ghost files". There
//! is nothing to reopen by path, and the process can tell an unlinked one from a linked
//! one (nlink 0, openat in it fails with ENOENT), so the restore makes a new one — at
//! its old path when nothing has that name now, so that /proc shows the same name, else
//! in a directory of its own (`$TMPDIR/ckpt-ghost-XXXXXX`, mode 0700) —, opens it, gives it the
//! saved owner and mode, and removes it (and that directory) again: the process holds an
//! unlinked directory or FIFO with the same mode and owner. Its inode number, device and
//! times are new; a deleted directory comes back empty, as it was (a directory can only
//! be removed once empty). This module is the kind for deleted directories held as
//! descriptors ([`FdKind::DeletedDir`]); the working directory ([`cwd_ghost`], the
//! `cwd` attribute group) and deleted FIFOs (crate::fd::fifo, with their data in
//! flight) use its [`make`].

use super::{cvt, open, owned, Dump, Kind, RestoreResult, Shared, Target};
use crate::error::{Result, TraceError};
use crate::proc;
use crate::state::{DeletedDir, Fd, FdKind};
use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

pub const KIND: Kind = Kind {
    dump,
    dump_process: None,
    dump_tree: None,
    restore,
    finish: None,
    late: None,
    describe,
};

/// The saved description of the removed directory reachable at `open_path` (a
/// /proc/PID/fd or /proc/PID/cwd link) that had the path `name`.
pub fn deleted_dir(md: &std::fs::Metadata, name: &str) -> DeletedDir {
    DeletedDir {
        name: name.to_string(),
        ino: md.ino(),
        mode: md.mode(),
        uid: md.uid(),
        gid: md.gid(),
    }
}

fn dump(d: &mut Dump) -> Option<Result<FdKind>> {
    let Target::Deleted(target) = d.target else {
        return None;
    };
    let link = proc::path(d.pid, &format!("fd/{}", d.fd));
    let md = std::fs::metadata(&link).ok()?;
    if !md.is_dir() || target.starts_with("/memfd:") {
        return None;
    }
    if d.info.flags & libc::O_PATH != 0 {
        return Some(Err(TraceError::UnsupportedFd {
            pid: d.pid,
            fd: d.fd,
            kind: format!("O_PATH descriptor of the deleted directory {target}"),
        }));
    }
    let name = target.strip_suffix(" (deleted)").unwrap_or(target);
    Some(Ok(FdKind::DeletedDir {
        dir: deleted_dir(&md, name),
    }))
}

/// One new directory per saved one (by saved inode), for every descriptor on it.
#[derive(Default)]
struct Dirs(HashMap<u64, OwnedFd>);

fn restore(_pid: i32, fd: &Fd, shared: &mut Shared) -> Option<RestoreResult<OwnedFd>> {
    let FdKind::DeletedDir { dir } = &fd.kind else {
        return None;
    };
    let what = format!("fd {}", fd.fd);
    Some((|| {
        let dirs = &mut shared.part::<Dirs>().0;
        if let Some(first) = dirs.get(&dir.ino) {
            // Another description of the same directory.
            return open(
                &format!("/proc/self/fd/{}", first.as_raw_fd()),
                fd.flags | libc::O_DIRECTORY,
                &what,
            );
        }
        let new = make(Ghost::Dir, &dir.name, dir.mode, dir.uid, dir.gid, fd.flags)?;
        dirs.insert(dir.ino, new.try_clone()?);
        Ok(new)
    })())
}

fn describe(kind: &FdKind) -> Option<String> {
    match kind {
        FdKind::DeletedDir { dir } => Some(format!("deleted directory {}", dir.name)),
        _ => None,
    }
}

/// The new directory the restored process `pid` starts in, for its removed working
/// directory `dir`: opened O_RDONLY|O_DIRECTORY, for the process to fchdir(2) to.
pub fn cwd_ghost(pid: i32, dir: &DeletedDir) -> RestoreResult<OwnedFd> {
    make(
        Ghost::Dir,
        &dir.name,
        dir.mode,
        dir.uid,
        dir.gid,
        libc::O_RDONLY,
    )
    .map_err(|e| {
        super::RestoreError::context(
            format!(
                "process {pid}: recreating its removed working directory {}",
                dir.name
            ),
            e,
        )
    })
}

/// What [`make`] makes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Ghost {
    Dir,
    Fifo,
}

/// A new directory or FIFO made at `name` itself when nothing has that name now (so
/// that /proc shows `name (deleted)` as before the checkpoint), else named like `name`
/// (its last component) in a new private directory of ours, opened with `flags` (close-on-exec, never blocking), given
/// `uid`:`gid` (when they differ from ours) and the permission bits of `mode`, then
/// removed with that private directory: an unlinked one, held only by the descriptor
/// returned.
pub fn make(
    what: Ghost,
    name: &str,
    mode: u32,
    uid: u32,
    gid: u32,
    flags: i32,
) -> RestoreResult<OwnedFd> {
    if let Some(fd) = at_old_name(what, name, mode, uid, gid, flags) {
        return Ok(fd);
    }
    let base = std::path::Path::new(name)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "ghost".into());
    let tmp = std::env::temp_dir().join("ckpt-ghost-XXXXXX");
    let template = CString::new(tmp.to_string_lossy().into_owned())?;
    let mut template = template.into_bytes_with_nul();
    // SAFETY: mkdtemp(3) rewrites the XXXXXX of `template`, a NUL-terminated buffer we
    // own, in place; it keeps no pointer to it.
    if unsafe { libc::mkdtemp(template.as_mut_ptr().cast()) }.is_null() {
        bail!(
            "making a directory for it in {}: {}",
            std::env::temp_dir().display(),
            std::io::Error::last_os_error()
        );
    }
    template.pop();
    let private = String::from_utf8_lossy(&template).into_owned();
    let path = format!("{private}/{base}");
    let r = make_in(what, &path, mode, uid, gid, flags);
    let c = CString::new(path.clone())?;
    // SAFETY: rmdir/unlink of `c`, a NUL-terminated CString alive for the call.
    unsafe {
        if what == Ghost::Dir {
            libc::rmdir(c.as_ptr());
        } else {
            libc::unlink(c.as_ptr());
        }
    }
    let p = CString::new(private)?;
    // SAFETY: as above.
    unsafe { libc::rmdir(p.as_ptr()) };
    r
}

/// [`make`] at `name` itself, removed again at once; None when `name` is taken, its
/// directory is gone, or the object cannot be made there (the caller falls back).
fn at_old_name(
    what: Ghost,
    name: &str,
    mode: u32,
    uid: u32,
    gid: u32,
    flags: i32,
) -> Option<OwnedFd> {
    if !name.starts_with('/') || std::fs::symlink_metadata(name).is_ok() {
        return None;
    }
    let c = CString::new(name).ok()?;
    let r = make_in(what, name, mode, uid, gid, flags);
    // Whatever make_in got to (made, opened, or failed after making), the name goes.
    // SAFETY: rmdir/unlink of `c`, a NUL-terminated CString alive for the call; an
    // object that is not there (make_in failed to make it) makes them fail, harmlessly.
    unsafe {
        if what == Ghost::Dir {
            libc::rmdir(c.as_ptr());
        } else {
            libc::unlink(c.as_ptr());
        }
    }
    r.ok()
}

fn make_in(
    what: Ghost,
    path: &str,
    mode: u32,
    uid: u32,
    gid: u32,
    flags: i32,
) -> RestoreResult<OwnedFd> {
    let c = CString::new(path)?;
    let (made, kind) = match what {
        // SAFETY: mkdir/mkfifo of `c`, a NUL-terminated CString alive for the call.
        Ghost::Dir => (unsafe { libc::mkdir(c.as_ptr(), 0o700) }, "directory"),
        // SAFETY: as above.
        Ghost::Fifo => (unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, "FIFO"),
    };
    cvt(made, &format!("making the {kind} {path}"))?;
    let flags = match what {
        Ghost::Dir => flags | libc::O_DIRECTORY,
        Ghost::Fifo => flags | libc::O_NONBLOCK,
    } & !(libc::O_CREAT | libc::O_TRUNC | libc::O_EXCL)
        | libc::O_CLOEXEC;
    // SAFETY: open(2) of `c`, a NUL-terminated CString alive for the call.
    let fd = owned(
        unsafe { libc::open(c.as_ptr(), flags) },
        &format!("opening {path}"),
    )?;
    // SAFETY: getuid/getgid take no arguments and cannot fail.
    let (me, my_group) = unsafe { (libc::getuid(), libc::getgid()) };
    if (uid, gid) != (me, my_group) {
        cvt(
            // SAFETY: fchown(2) on our own descriptor; integers only.
            unsafe { libc::fchown(fd.as_raw_fd(), uid, gid) },
            &format!("giving the {kind} to its owner {uid}:{gid}"),
        )?;
    }
    cvt(
        // SAFETY: fchmod(2) on our own descriptor; integers only.
        unsafe { libc::fchmod(fd.as_raw_fd(), (mode & 0o7777) as libc::mode_t) },
        &format!("setting the mode of the {kind}"),
    )?;
    Ok(fd)
}
