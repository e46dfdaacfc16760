//! Terminals (the console, virtual consoles, serial lines and pseudo-terminals, by
//! device major). Dump: a descriptor whose link is a path to such a character device.
//! Descriptors 0, 1 and 2 on a terminal are marked `inherit` by the dump pass: the
//! restored process gets the restorer's own there (src/restore/fds.rs installs no source
//! for them). Restore: any other descriptor reopens the path with the saved flags.

use super::{open, Dump, Kind, RestoreResult, Shared, Target};
use crate::error::Result;
use crate::state::{Fd, FdKind};
use std::os::fd::OwnedFd;
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

/// Whether a character device number is a terminal's: /dev/tty* and /dev/console (4, 5),
/// pseudo-terminal slaves (136-143).
pub(super) fn is_tty_rdev(rdev: u64) -> bool {
    let major = libc::major(rdev);
    matches!(major, 4 | 5 | 136..=143)
}

fn dump(d: &mut Dump) -> Option<Result<FdKind>> {
    let Target::Path(path, md) = d.target else {
        return None;
    };
    (md.file_type().is_char_device() && is_tty_rdev(md.rdev())).then(|| {
        Ok(FdKind::Tty {
            path: path.to_string(),
        })
    })
}

/// Standard streams on a terminal are the restorer's own after restore.
fn dump_process(_pid: i32, fds: &mut [Fd]) -> Result<()> {
    for f in fds.iter_mut() {
        if matches!(f.kind, FdKind::Tty { .. }) {
            f.inherit = f.fd <= 2;
        }
    }
    Ok(())
}

fn restore(_pid: i32, fd: &Fd, _shared: &mut Shared) -> Option<RestoreResult<OwnedFd>> {
    match &fd.kind {
        FdKind::Tty { path } => Some(open(path, fd.flags, &format!("fd {}", fd.fd))),
        _ => None,
    }
}

fn describe(kind: &FdKind) -> Option<String> {
    match kind {
        FdKind::Tty { path } => Some(format!("terminal {path}")),
        _ => None,
    }
}
