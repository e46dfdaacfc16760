//! Pipes, with the data in flight. Dump: a `pipe:[INO]` descriptor, read or write end;
//! the pass over a process's descriptors reads the data in flight once per pipe (tee(2)
//! into a pipe of ours, so nothing is consumed) through a read end, and the pass over
//! the tree decides whether both ends are in the checkpoint and keeps that data once.
//! Standard streams on a pipe that leads outside the checkpoint are the restorer's own
//! (`inherit`). Restore: one new pipe per saved pipe for the whole tree (the kind's part
//! of [`Shared`]), refilled with the data, each descriptor a duplicate of its end with
//! its own status flags; the ends nobody uses are closed when the restore drops
//! `Shared`, so a lone read end sees EOF and a lone write end EPIPE, as with a peer that
//! is gone (with a warning).

use super::{cvt, set_status_flags, Context, Dump, Kind, RestoreResult, Shared, Target};
use crate::error::{Result, TraceError};
use crate::state::{Fd, FdKind, ProcessState};
use std::collections::{BTreeSet, HashMap};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

pub const KIND: Kind = Kind {
    dump,
    dump_process: Some(dump_process),
    dump_tree: Some(dump_tree),
    restore,
    finish: None,
    late: None,
    describe,
};

fn dump(d: &mut Dump) -> Option<Result<FdKind>> {
    let Target::Pipe(ino) = d.target else {
        return None;
    };
    Some(Ok(FdKind::Pipe {
        ino,
        write_end: d.info.flags & libc::O_ACCMODE == libc::O_WRONLY,
        peer_in_process: false,
        data: Vec::new(),
    }))
}

/// Pipes: both ends inside the process, or leading outside; the data in flight, read
/// through the first read end that is not a standard stream.
fn dump_process(pid: i32, out: &mut [Fd]) -> Result<()> {
    let mut pipe_ends: HashMap<u64, Vec<(usize, bool)>> = HashMap::new();
    for (i, f) in out.iter_mut().enumerate() {
        if let FdKind::Pipe { ino, write_end, .. } = f.kind {
            f.inherit = f.fd <= 2;
            pipe_ends.entry(ino).or_default().push((i, write_end));
        }
    }
    for ends in pipe_ends.values() {
        let has_read = ends.iter().any(|e| !e.1);
        let has_write = ends.iter().any(|e| e.1);
        let mut data_taken = false;
        for &(i, write_end) in ends {
            let fdnum = out[i].fd;
            let inherit = out[i].inherit;
            if let FdKind::Pipe {
                peer_in_process,
                data,
                ..
            } = &mut out[i].kind
            {
                *peer_in_process = has_read && has_write;
                if !write_end && !data_taken && !inherit {
                    *data = peek(pid, fdnum)
                        .map_err(|e| TraceError::io(pid, format!("reading pipe fd {fdnum}"), e))?;
                    data_taken = true;
                }
            }
        }
    }
    Ok(())
}

/// Whether the other end of each pipe is open somewhere in the tree; the data in flight
/// of each pipe is kept only once.
fn dump_tree(procs: &mut [ProcessState]) -> Result<()> {
    // Pipe ends anywhere in the tree.
    let mut ends: HashMap<u64, (bool, bool)> = HashMap::new();
    for p in procs.iter() {
        for fd in &p.fds {
            if let FdKind::Pipe { ino, write_end, .. } = &fd.kind {
                let e = ends.entry(*ino).or_default();
                if *write_end {
                    e.1 = true;
                } else {
                    e.0 = true;
                }
            }
        }
    }
    let mut data_kept: BTreeSet<u64> = BTreeSet::new();
    for p in procs.iter_mut() {
        for fd in p.fds.iter_mut() {
            if let FdKind::Pipe {
                ino,
                peer_in_process,
                data,
                ..
            } = &mut fd.kind
            {
                let (r, w) = ends[ino];
                *peer_in_process = r && w;
                // Standard streams are reattached to the restorer's own only when the
                // pipe leads outside the checkpoint.
                fd.inherit = fd.fd <= 2 && !*peer_in_process;
                if !data.is_empty() && !data_kept.insert(*ino) {
                    data.clear();
                }
            }
        }
    }
    Ok(())
}

/// One new pipe per saved pipe (by its saved inode): its read and write ends, and
/// whether a description of each was handed out already.
#[derive(Default)]
struct Pipes(HashMap<u64, PipeEnds>);

type PipeEnds = (Option<OwnedFd>, Option<OwnedFd>, bool, bool);

fn restore(pid: i32, fd: &Fd, shared: &mut Shared) -> Option<RestoreResult<OwnedFd>> {
    let FdKind::Pipe {
        ino,
        write_end,
        peer_in_process,
        data,
    } = &fd.kind
    else {
        return None;
    };
    Some((|| {
        let pipes = &mut shared.part::<Pipes>().0;
        let ends = match pipes.entry(*ino) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let (r, w) = pipe()?;
                v.insert((Some(r), Some(w), false, false))
            }
        };
        if !data.is_empty() {
            write_all(ends.1.as_ref().context("pipe write end")?, data)?;
        }
        if !peer_in_process {
            eprintln!(
                "ckpt: warning: process {pid} fd {} was a pipe leading outside the checkpoint; restored with its peer closed",
                fd.fd
            );
        }
        let (end, used) = if *write_end {
            (&ends.1, &mut ends.3)
        } else {
            (&ends.0, &mut ends.2)
        };
        let end = end.as_ref().context("pipe end")?;
        // The first description of an end is a duplicate of it; another description of
        // the same end (the process opened /proc/self/fd/N again) is a new open of it,
        // so that its status flags are its own.
        let new = if std::mem::replace(used, true) {
            super::open(
                &format!("/proc/self/fd/{}", end.as_raw_fd()),
                fd.flags | libc::O_NONBLOCK,
                &format!("fd {} (another description of a pipe end)", fd.fd),
            )?
        } else {
            end.try_clone().context("duplicating a pipe end")?
        };
        set_status_flags(&new, fd.flags)?;
        Ok(new)
    })())
}

fn describe(kind: &FdKind) -> Option<String> {
    match kind {
        FdKind::Pipe { ino, write_end, .. } => Some(format!(
            "pipe:[{ino}] {} end",
            if *write_end { "write" } else { "read" }
        )),
        _ => None,
    }
}

fn pipe() -> RestoreResult<(OwnedFd, OwnedFd)> {
    let mut p = [0; 2];
    cvt(
        // SAFETY: pipe2(2) writes exactly two c_ints into `p`, a local `[c_int; 2]` that
        // outlives the call.
        unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) },
        "creating a pipe",
    )?;
    // SAFETY: pipe2 succeeded (cvt returned Ok), so `p[0]` and `p[1]` are two fresh
    // descriptors that nothing else owns; each OwnedFd takes sole ownership of one.
    Ok(unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) })
}

/// Write all of `data` into the pipe (or FIFO) `fd`, growing it first if it needs to.
pub(super) fn write_all(fd: &OwnedFd, data: &[u8]) -> RestoreResult<()> {
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

/// The bytes in flight in a pipe, without consuming them: tee(2) them into a pipe of ours.
pub(super) fn peek(pid: i32, fd: i32) -> io::Result<Vec<u8>> {
    let src = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags_nonblock()
        .open(crate::proc::path(pid, &format!("fd/{fd}")))?;
    let mut p = [0; 2];
    // SAFETY: pipe2 fills two descriptors we then own.
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded (checked above), so `p[0]` and `p[1]` are two fresh
    // descriptors that nothing else owns; each OwnedFd takes sole ownership of one of them.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };
    // SAFETY: fcntl on our own descriptors.
    let size = unsafe { libc::fcntl(src.as_raw_fd(), libc::F_GETPIPE_SZ) };
    if size > 0 {
        // SAFETY: fcntl(F_SETPIPE_SZ) on `w`, a pipe end we own and keep open across the
        // call; its argument is an integer, not a pointer.
        unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, size) };
    }
    // SAFETY: tee(2) only moves pipe buffer references between `src` and `w`, two
    // descriptors this function holds open; it takes no pointer argument.
    let n = unsafe {
        libc::tee(
            src.as_raw_fd(),
            w.as_raw_fd(),
            usize::MAX >> 1,
            libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::WouldBlock {
            return Ok(Vec::new());
        }
        return Err(e);
    }
    let mut data = vec![0u8; n as usize];
    let mut got = 0;
    while got < data.len() {
        // SAFETY: read(2) writes at most `data.len() - got` bytes at
        // `data[got..].as_mut_ptr()`, which is exactly the writable tail of `data` (got <
        // data.len() by the loop condition); `r` is our own open read end.
        let k = unsafe {
            libc::read(
                r.as_raw_fd(),
                data[got..].as_mut_ptr().cast(),
                data.len() - got,
            )
        };
        if k <= 0 {
            return Err(io::Error::last_os_error());
        }
        got += k as usize;
    }
    Ok(data)
}

trait NonBlock {
    fn custom_flags_nonblock(&mut self) -> &mut Self;
}
impl NonBlock for std::fs::OpenOptions {
    fn custom_flags_nonblock(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
    }
}
