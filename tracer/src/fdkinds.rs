//! FIFOs, read from the outside while the process is frozen. The other kinds have their
//! own modules in [`crate::fd`] (docs/FDKINDS.md).

use crate::error::{Result, TraceError};
use crate::state::{Fd, FdKind};
use std::collections::HashMap;
use std::io;

/// A FIFO (named pipe) open at `path`; its data is filled by [`fifo_data`].
pub fn fifo_fd(path: &str, ino: u64) -> FdKind {
    FdKind::Fifo {
        path: path.to_string(),
        ino,
        peer_in_process: false,
        data: Vec::new(),
    }
}

/// Fill the data in flight of every FIFO (once per FIFO, with its first descriptor) and
/// whether both a reader and a writer are open in the process.
pub fn fifo_data(pid: i32, fds: &mut [Fd]) -> Result<()> {
    let mut ends: HashMap<u64, (bool, bool)> = HashMap::new();
    for f in fds.iter() {
        if let FdKind::Fifo { ino, .. } = f.kind {
            let e = ends.entry(ino).or_default();
            let acc = f.flags & libc::O_ACCMODE;
            e.0 |= acc != libc::O_WRONLY;
            e.1 |= acc != libc::O_RDONLY;
        }
    }
    let mut done = std::collections::HashSet::new();
    for f in fds.iter_mut() {
        let fdnum = f.fd;
        if let FdKind::Fifo {
            ino,
            peer_in_process,
            data,
            ..
        } = &mut f.kind
        {
            *peer_in_process = ends.get(ino).is_some_and(|e| e.0 && e.1);
            if done.insert(*ino) {
                *data = peek_pipe(pid, fdnum)
                    .map_err(|e| TraceError::io(pid, format!("reading FIFO fd {fdnum}"), e))?;
            }
        }
    }
    Ok(())
}

/// The bytes in flight in a pipe, without consuming them: tee(2) them into a pipe of ours.
pub(crate) fn peek_pipe(pid: i32, fd: i32) -> io::Result<Vec<u8>> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
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
