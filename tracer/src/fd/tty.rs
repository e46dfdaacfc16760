//! Terminals outside the checkpoint (the console, virtual consoles, serial lines, and
//! pseudo-terminals whose master is not in the job; those made inside the job are
//! `pty.rs`'s). Dump: a descriptor whose link is a path to such a character device.
//! Descriptors 0, 1 and 2 on a terminal are marked `inherit` by the dump pass and keep
//! the terminal's termios ([`FdKind::TtyStd`]): the restored process gets the
//! restorer's own terminal there (src/restore/fds.rs installs no source for them), and
//! the restorer gives its terminal those termios while the job runs
//! ([`RestorerTerminal`]; a shell or an editor had it in raw mode). Restore: any other
//! descriptor reopens the path with the saved flags.

use super::{open, Dump, Kind, RestoreResult, Shared, Target};
use crate::error::Result;
use crate::state::{Fd, FdKind, Termios};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
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
fn dump_process(pid: i32, fds: &mut [Fd]) -> Result<()> {
    for f in fds.iter_mut() {
        if matches!(f.kind, FdKind::Tty { .. }) {
            outside(pid, f)?;
        }
    }
    Ok(())
}

/// Descriptor `f` (a [`FdKind::Tty`]) of process `pid` is on a terminal outside the
/// checkpoint: on a standard stream, the restorer's own takes its place, with the
/// terminal's termios read now ([`FdKind::TtyStd`]).
pub(super) fn outside(pid: i32, f: &mut Fd) -> Result<()> {
    f.inherit = f.fd <= 2;
    if !f.inherit {
        return Ok(());
    }
    let FdKind::Tty { path } = &f.kind else {
        return Ok(());
    };
    let copy = crate::procinfo::pidfd_getfd(pid, f.fd).map_err(|e| {
        crate::error::TraceError::io(pid, format!("copying fd {} (terminal {path})", f.fd), e)
    })?;
    let termios = termios_of(copy.as_raw_fd()).map_err(|e| {
        crate::error::TraceError::io(
            pid,
            format!("reading the termios of fd {} ({path})", f.fd),
            e,
        )
    })?;
    f.kind = FdKind::TtyStd {
        path: path.clone(),
        termios,
    };
    Ok(())
}

fn restore(_pid: i32, fd: &Fd, _shared: &mut Shared) -> Option<RestoreResult<OwnedFd>> {
    match &fd.kind {
        FdKind::Tty { path } | FdKind::TtyStd { path, .. } => {
            Some(open(path, fd.flags, &format!("fd {}", fd.fd)))
        }
        _ => None,
    }
}

fn describe(kind: &FdKind) -> Option<String> {
    match kind {
        FdKind::Tty { path } => Some(format!("terminal {path}")),
        FdKind::TtyStd { path, termios } => Some(format!(
            "terminal {path} (the restorer's; termios lflag {:#o})",
            termios.lflag
        )),
        _ => None,
    }
}

/// TCGETS2 of terminal `fd`.
pub fn termios_of(fd: RawFd) -> io::Result<Termios> {
    // SAFETY: `termios2` is a plain C struct of integers: all-zero bytes are a valid value.
    let mut t: libc::termios2 = unsafe { std::mem::zeroed() };
    // SAFETY: TCGETS2 writes one `struct termios2` into `t`, a local of that type.
    if unsafe { libc::ioctl(fd, libc::TCGETS2, &mut t) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Termios {
        iflag: t.c_iflag,
        oflag: t.c_oflag,
        cflag: t.c_cflag,
        lflag: t.c_lflag,
        line: t.c_line,
        cc: t.c_cc.to_vec(),
        ispeed: t.c_ispeed,
        ospeed: t.c_ospeed,
    })
}

/// TCSETS2 of terminal `fd` (at once: neither waiting for output nor flushing input).
pub fn set_termios(fd: RawFd, want: &Termios) -> io::Result<()> {
    // SAFETY: as in termios_of.
    let mut t: libc::termios2 = unsafe { std::mem::zeroed() };
    t.c_iflag = want.iflag;
    t.c_oflag = want.oflag;
    t.c_cflag = want.cflag;
    t.c_lflag = want.lflag;
    t.c_line = want.line;
    let n = want.cc.len().min(t.c_cc.len());
    t.c_cc[..n].copy_from_slice(&want.cc[..n]);
    t.c_ispeed = want.ispeed;
    t.c_ospeed = want.ospeed;
    // SAFETY: TCSETS2 reads one `struct termios2` from `t`, a local of that type.
    if unsafe { libc::ioctl(fd, libc::TCSETS2, &t) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The restorer's own terminal while a restored job runs on it: given the termios the
/// job's terminal had at the checkpoint, and put back as it was by [`Self::put_back`]
/// (when the job exits, or the restore fails).
pub struct RestorerTerminal {
    fd: RawFd,
    was: Termios,
}

impl RestorerTerminal {
    /// For the first standard stream on a terminal in `fds` (the root's first, then the
    /// other processes', as the caller passes them) whose descriptor of the same number
    /// in the restorer is a terminal: give it the saved termios. `None`: nothing to do.
    pub fn apply<'a>(fds: impl IntoIterator<Item = &'a Fd>) -> io::Result<Option<Self>> {
        for f in fds {
            let FdKind::TtyStd { termios, .. } = &f.kind else {
                continue;
            };
            // SAFETY: isatty takes an integer.
            if unsafe { libc::isatty(f.fd) } != 1 {
                continue;
            }
            let fd = f.fd;
            let was = termios_of(fd)?;
            set_termios(fd, termios)?;
            return Ok(Some(RestorerTerminal { fd, was }));
        }
        Ok(None)
    }

    /// Put the terminal back as it was before [`Self::apply`].
    pub fn put_back(self) -> io::Result<()> {
        set_termios(self.fd, &self.was)
    }
}
