//! Recreating the descriptor table of a process: every saved fd gets a source
//! descriptor in the restorer (numbered above all target fds), which the child then
//! dup2()s to its target number before it execs the loader.

use anyhow::{bail, Context, Result};
use ckpt_tracer::state::{Fd, FdKind};
use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// One descriptor to install in the child: `src` (ours) becomes `target`.
pub struct Install {
    pub target: RawFd,
    /// None: keep the restorer's own descriptor `target` (standard streams).
    pub src: Option<OwnedFd>,
}

pub fn cvt(r: libc::c_int, what: &str) -> Result<libc::c_int> {
    if r < 0 {
        Err(std::io::Error::last_os_error()).with_context(|| what.to_string())
    } else {
        Ok(r)
    }
}

/// Move `fd` to a number >= `min`, close-on-exec, and own it.
pub fn above(fd: OwnedFd, min: RawFd) -> Result<OwnedFd> {
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) returns a new descriptor we own.
    let n = cvt(
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min) },
        "duplicating a descriptor",
    )?;
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

fn open(path: &str, flags: i32, what: &str) -> Result<OwnedFd> {
    let c = CString::new(path)?;
    let flags = flags & !(libc::O_CREAT | libc::O_TRUNC | libc::O_EXCL) | libc::O_CLOEXEC;
    // SAFETY: open(2) with a valid C string.
    let fd = unsafe { libc::open(c.as_ptr(), flags) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("reopening {path} for {what}"));
    }
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut p = [0; 2];
    // SAFETY: pipe2 fills two descriptors we then own.
    cvt(
        unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) },
        "creating a pipe",
    )?;
    Ok(unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) })
}

fn write_all(fd: &OwnedFd, data: &[u8]) -> Result<()> {
    if data.len() > 65536 {
        // SAFETY: fcntl on our own pipe.
        unsafe {
            libc::fcntl(
                fd.as_raw_fd(),
                libc::F_SETPIPE_SZ,
                data.len() as libc::c_int,
            )
        };
    }
    let mut done = 0;
    while done < data.len() {
        // SAFETY: write from a live slice.
        let n = unsafe {
            libc::write(
                fd.as_raw_fd(),
                data[done..].as_ptr().cast(),
                data.len() - done,
            )
        };
        if n <= 0 {
            bail!("refilling a pipe: {}", std::io::Error::last_os_error());
        }
        done += n as usize;
    }
    Ok(())
}

fn set_status_flags(fd: &OwnedFd, flags: i32) -> Result<()> {
    // SAFETY: fcntl on our own descriptor.
    let keep = flags
        & (libc::O_NONBLOCK | libc::O_APPEND | libc::O_ASYNC | libc::O_DIRECT | libc::O_NOATIME);
    cvt(
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, keep) },
        "setting descriptor flags",
    )?;
    Ok(())
}

/// Open (or create) a source for every saved descriptor. `min` is the lowest number
/// sources may use. Warnings are printed for pipes that led outside the process.
pub fn prepare(pid: i32, fds: &[Fd], min: RawFd) -> Result<Vec<Install>> {
    let mut out = Vec::new();
    // Pipes: one new pipe per saved pipe inode.
    let mut pipes: HashMap<u64, (Option<OwnedFd>, Option<OwnedFd>)> = HashMap::new();
    for fd in fds {
        if fd.inherit {
            out.push(Install {
                target: fd.fd,
                src: None,
            });
            continue;
        }
        let src = match &fd.kind {
            FdKind::File { id, pos } => {
                let f = open(&id.path, fd.flags, &format!("fd {}", fd.fd))?;
                // SAFETY: lseek on our own descriptor.
                if unsafe { libc::lseek(f.as_raw_fd(), *pos as i64, libc::SEEK_SET) } < 0 {
                    bail!(
                        "seeking {} to {pos}: {}",
                        id.path,
                        std::io::Error::last_os_error()
                    );
                }
                f
            }
            FdKind::Dir { path } => {
                open(path, fd.flags | libc::O_DIRECTORY, &format!("fd {}", fd.fd))?
            }
            FdKind::CharDev { path, .. } | FdKind::Tty { path } => {
                open(path, fd.flags, &format!("fd {}", fd.fd))?
            }
            FdKind::Pipe {
                ino,
                write_end,
                peer_in_process,
                data,
            } => {
                let ends = match pipes.get_mut(ino) {
                    Some(e) => e,
                    None => {
                        let (r, w) = pipe()?;
                        pipes.insert(*ino, (Some(r), Some(w)));
                        pipes.get_mut(ino).unwrap()
                    }
                };
                if !data.is_empty() {
                    write_all(ends.1.as_ref().context("pipe write end")?, data)?;
                }
                if !peer_in_process {
                    eprintln!(
                        "ckpt: warning: process {pid} fd {} was a pipe leading outside the process; restored with its peer closed",
                        fd.fd
                    );
                }
                let end = if *write_end { &ends.1 } else { &ends.0 };
                let dup = end
                    .as_ref()
                    .context("pipe end")?
                    .try_clone()
                    .context("duplicating a pipe end")?;
                set_status_flags(&dup, fd.flags)?;
                dup
            }
        };
        out.push(Install {
            target: fd.fd,
            src: Some(above(src, min)?),
        });
    }
    // The ends not used by the process are closed here (dropped), so a lone read end
    // sees EOF and a lone write end sees EPIPE, as with a peer that is gone.
    drop(pipes);
    Ok(out)
}
