//! Descriptor kinds beyond plain files and pipes, read from the outside while the process
//! is frozen: memfds and regular files deleted after they were opened or mapped
//! (content stored), and FIFOs. The `anon_inode:` kinds (eventfd, timerfd, signalfd,
//! inotify, epoll) have their own modules in [`crate::fd`] (docs/FDKINDS.md).

use crate::error::{Result, TraceError};
use crate::identity::IdentityCache;
use crate::proc;
use crate::proc::MapEntry;
use crate::state::{Fd, FdKind, UnlinkedFile, VmaKind};
use std::collections::HashMap;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};

/// The most content ckpt stores for one memfd or deleted file.
pub const MAX_STORED_FILE: u64 = 256 << 20;

const HUGETLBFS_MAGIC: i64 = 0x958458f6;

/// Whether the content of the unlinked file `(dev, ino)` is already in the image.
fn first_time(ids: &mut IdentityCache, dev: u64, ino: u64) -> bool {
    ids.unlinked_stored.insert((dev, ino))
}

/// Describe (and, the first time, read) the unlinked file reachable at `open_path`.
fn unlinked(
    open_path: &str,
    memfd: bool,
    name: &str,
    ids: &mut IdentityCache,
) -> std::result::Result<UnlinkedFile, String> {
    let md = std::fs::metadata(open_path).map_err(|e| format!("stat: {e}"))?;
    if !md.is_file() {
        return Err("not a regular file".into());
    }
    let mut file = UnlinkedFile {
        memfd,
        name: name.to_string(),
        dev: md.dev(),
        ino: md.ino(),
        size: md.size(),
        mode: md.mode(),
        seals: 0,
        data: None,
    };
    if md.size() > MAX_STORED_FILE {
        return Err(format!(
            "{} bytes, more than the {} MiB ckpt stores per file",
            md.size(),
            MAX_STORED_FILE >> 20
        ));
    }
    if !first_time(ids, file.dev, file.ino) {
        return Ok(file);
    }
    let f = std::fs::File::open(open_path).map_err(|e| format!("opening it: {e}"))?;
    // SAFETY: `libc::statfs` is a plain C struct of integers and integer arrays, for which
    // all-zero bytes are a valid value; fstatfs overwrites it anyway.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: fstatfs/fcntl on our own descriptor.
    if unsafe { libc::fstatfs(f.as_raw_fd(), &mut st) } == 0 && st.f_type as i64 == HUGETLBFS_MAGIC
    {
        return Err("a hugetlbfs file".into());
    }
    if memfd {
        // SAFETY: fcntl(F_GET_SEALS) takes no pointer argument and only reads the seals of
        // `f`, a File that is open and borrowed for the whole call.
        let s = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GET_SEALS) };
        file.seals = s.max(0) as u32;
    }
    let size = f.metadata().map_err(|e| e.to_string())?.len();
    let mut data = vec![0u8; size as usize];
    let mut got = 0;
    while got < data.len() {
        match f.read_at(&mut data[got..], got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("reading it: {e}")),
        }
    }
    data.truncate(got);
    file.size = got as u64;
    file.data = Some(data);
    Ok(file)
}

/// A descriptor on a memfd (`/memfd:NAME (deleted)`) or on a deleted file (`PATH (deleted)`).
pub fn unlinked_fd(
    pid: i32,
    fd: i32,
    target: &str,
    pos: u64,
    ids: &mut IdentityCache,
) -> Result<FdKind> {
    let base = target.strip_suffix(" (deleted)").unwrap_or(target);
    let (memfd, name, what) = match base.strip_prefix("/memfd:") {
        Some(n) => (true, n, "memfd"),
        None => (false, base, "deleted file"),
    };
    let link = proc::path(pid, &format!("fd/{fd}"));
    if !memfd {
        let md = std::fs::metadata(&link)
            .map_err(|e| TraceError::io(pid, format!("stat of fd {fd}"), e))?;
        if !md.is_file() {
            let t = if md.is_dir() {
                "directory"
            } else {
                "special file"
            };
            return Err(TraceError::UnsupportedFd {
                pid,
                fd,
                kind: format!("deleted {t} {target}"),
            });
        }
    }
    let file = unlinked(&link, memfd, name, ids).map_err(|why| TraceError::UnsupportedFd {
        pid,
        fd,
        kind: format!("{what} {name}: {why}"),
    })?;
    Ok(FdKind::Unlinked { file, pos })
}

/// A mapping of a memfd or of a deleted regular file. Its content is read through a
/// descriptor of the process on the same file if there is one, else through
/// /proc/PID/map_files (root).
pub fn unlinked_vma(pid: i32, m: &MapEntry, ids: &mut IdentityCache) -> Result<VmaKind> {
    let base = m.name.strip_suffix(" (deleted)").unwrap_or(&m.name);
    let (memfd, name, what) = match base.strip_prefix("/memfd:") {
        Some(n) => (true, n, "memfd"),
        None => (false, base, "deleted file"),
    };
    let dev = libc::makedev(m.dev.0, m.dev.1);
    let fds = proc::fd_numbers(pid).map_err(|e| TraceError::io(pid, "listing descriptors", e))?;
    // A descriptor closed meanwhile (no metadata) is simply not one to read through.
    let by_fd = fds
        .into_iter()
        .map(|fd| proc::path(pid, &format!("fd/{fd}")))
        .find(|p| std::fs::metadata(p).is_ok_and(|md| md.ino() == m.inode && md.dev() == dev));
    let open_path = match by_fd {
        Some(p) => p,
        None => proc::path(pid, &format!("map_files/{:x}-{:x}", m.start, m.end)),
    };
    let file = unlinked(&open_path, memfd, name, ids).map_err(|why| TraceError::Unsupported {
        pid,
        what: format!("mapping of {what} {name} at {:#x}: {why}", m.start),
    })?;
    Ok(VmaKind::Unlinked { file })
}

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
