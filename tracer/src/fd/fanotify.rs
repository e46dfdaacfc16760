//! fanotify(7): a notification group, its flags and its inode marks.
//!
//! Dump: fdinfo's `fanotify flags: event-flags:` line gives what fanotify_init took,
//! each `fanotify ino:` line an inode mark with its mask, ignored mask, mark flags and a
//! file handle, whose path is found as inotify's watches are (open_by_handle_at, root).
//! Refused: mount and filesystem marks (not restored yet), events queued and not yet
//! read (FIONREAD of a copy: nothing can put them back into a new group).
//!
//! Restore: fanotify_init with the saved flags (permission classes and most flags need
//! CAP_SYS_ADMIN, as they did to make it), then fanotify_mark(FAN_MARK_ADD) of each
//! mark's mask on its path, and of its ignored mask with FAN_MARK_IGNORED_MASK (with
//! FAN_MARK_IGNORED_SURV_MODIFY when the mark had it). Permission events read but not
//! yet answered are not visible in /proc: not saved.

use super::inotify::{queued_bytes, watch_path};
use super::{owned, set_status_flags, Dump, Kind, RestoreError, RestoreResult, Shared};
use crate::error::{Result, TraceError};
use crate::proc::{self, FanotifyTarget};
use crate::state::{FanotifyMark, Fd, FdKind};
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};

pub const KIND: Kind = Kind {
    dump,
    dump_process: None,
    dump_tree: None,
    restore,
    finish: None,
    late: None,
    describe,
};

const FAN_MARK_ADD: u32 = 0x1;
const FAN_MARK_DONT_FOLLOW: u32 = 0x4;
const FAN_MARK_IGNORED_MASK: u32 = 0x20;
const FAN_MARK_IGNORED_SURV_MODIFY: u32 = 0x40;
const FAN_MARK_EVICTABLE: u32 = 0x200;
/// fanotify_init flags that only set up the descriptor (restored from its own flags).
const FAN_CLOEXEC: u32 = 0x1;
const FAN_NONBLOCK: u32 = 0x2;

fn dump(d: &mut Dump) -> Option<Result<FdKind>> {
    d.is_anon("[fanotify]")
        .then(|| fanotify_of(d.pid, d.fd, d.info))
}

fn fanotify_of(pid: i32, fd: i32, info: &proc::FdInfo) -> Result<FdKind> {
    let unsupported = |kind: String| TraceError::UnsupportedFd { pid, fd, kind };
    let parsed = proc::parse_fanotify(&info.text).map_err(super::bad(pid, fd))?;
    let queued = queued_bytes(pid, fd)
        .map_err(|e| TraceError::io(pid, format!("reading the queue of fanotify fd {fd}"), e))?;
    if queued > 0 {
        return Err(unsupported(format!(
            "fanotify group with {queued} bytes of events queued, not yet read (they cannot be put back into a new group)"
        )));
    }
    let mut marks = Vec::new();
    for m in parsed.marks {
        let (ino, sdev, handle) = match m.target {
            FanotifyTarget::Inode(ino, sdev, handle) => (ino, sdev, handle),
            FanotifyTarget::Mount(id) => {
                return Err(unsupported(format!("fanotify mount mark (mount id {id})")))
            }
            FanotifyTarget::Filesystem(_) => {
                return Err(unsupported("fanotify filesystem mark".into()))
            }
        };
        let dev = proc::kdev_to_dev(sdev);
        let path = watch_path(dev, ino, handle).map_err(|why| {
            unsupported(format!(
                "fanotify mark on inode {ino} whose path cannot be found ({why})"
            ))
        })?;
        marks.push(FanotifyMark {
            path,
            dev,
            ino,
            mflags: m.mflags,
            mask: m.mask,
            ignored_mask: m.ignored_mask,
        });
    }
    Ok(FdKind::Fanotify {
        flags: parsed.flags,
        event_flags: parsed.event_flags,
        marks,
    })
}

fn restore(_pid: i32, fd: &Fd, _shared: &mut Shared) -> Option<RestoreResult<OwnedFd>> {
    match &fd.kind {
        FdKind::Fanotify {
            flags,
            event_flags,
            marks,
        } => Some(fanotify(*flags, *event_flags, marks, fd.flags)),
        _ => None,
    }
}

fn mark(g: &OwnedFd, flags: u32, mask: u64, path: &str) -> RestoreResult<()> {
    let c = CString::new(path)?;
    // SAFETY: fanotify_mark(2) on our own group with a valid C string.
    let r = unsafe {
        libc::fanotify_mark(
            g.as_raw_fd(),
            flags | FAN_MARK_DONT_FOLLOW,
            mask,
            libc::AT_FDCWD,
            c.as_ptr(),
        )
    };
    if r < 0 {
        return Err(RestoreError::context(
            format!("adding the fanotify mark (mask {mask:#x}) on {path}"),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

fn fanotify(
    flags: u32,
    event_flags: u32,
    marks: &[FanotifyMark],
    fd_flags: i32,
) -> RestoreResult<OwnedFd> {
    let init = (flags & !(FAN_CLOEXEC | FAN_NONBLOCK)) | FAN_CLOEXEC;
    // SAFETY: fanotify_init(2) takes two integers and returns a new descriptor or -1.
    let g = owned(
        unsafe { libc::fanotify_init(init, event_flags) },
        &format!("creating a fanotify group (flags {flags:#x})"),
    )?;
    for m in marks {
        let md = std::fs::symlink_metadata(&m.path).map_err(|e| {
            RestoreError::context(format!("the fanotify mark's file {}", m.path), e)
        })?;
        use std::os::unix::fs::MetadataExt;
        if md.ino() != m.ino || md.dev() != m.dev {
            return Err(RestoreError::msg(format!(
                "{} is no longer the file the fanotify mark was on (it was replaced since the checkpoint)",
                m.path
            )));
        }
        let evictable = m.mflags & FAN_MARK_EVICTABLE;
        if m.mask != 0 {
            mark(&g, FAN_MARK_ADD | evictable, m.mask, &m.path)?;
        }
        if m.ignored_mask != 0 {
            let surv = m.mflags & FAN_MARK_IGNORED_SURV_MODIFY;
            mark(
                &g,
                FAN_MARK_ADD | FAN_MARK_IGNORED_MASK | surv | evictable,
                m.ignored_mask,
                &m.path,
            )?;
        }
    }
    set_status_flags(&g, fd_flags)?;
    Ok(g)
}

fn describe(kind: &FdKind) -> Option<String> {
    match kind {
        FdKind::Fanotify { flags, marks, .. } => Some(format!(
            "fanotify (flags {flags:#x}), {} mark(s)",
            marks.len()
        )),
        _ => None,
    }
}
