//! Open file descriptors (/proc/PID/fd + fdinfo) and the identity of files (stat and
//! the ELF build-id), so that a restore can refuse files that changed.

use crate::error::{Result, TraceError};
use crate::state::{Fd, FdKind, FileIdentity};
use std::collections::HashMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Identity of files by path, computed once per dump.
#[derive(Default)]
pub struct IdentityCache {
    by_path: HashMap<String, FileIdentity>,
    /// (dev, ino) of the memfds and deleted files whose content is already stored.
    pub(crate) unlinked_stored: std::collections::HashSet<(u64, u64)>,
}

impl IdentityCache {
    pub fn identity(&mut self, path: &str) -> io::Result<FileIdentity> {
        if let Some(id) = self.by_path.get(path) {
            return Ok(id.clone());
        }
        let id = file_identity(Path::new(path), path)?;
        self.by_path.insert(path.to_string(), id.clone());
        Ok(id)
    }
}

/// stat() of `open_path` (which may be a /proc/PID/fd link), recorded under `path`.
pub fn file_identity(open_path: &Path, path: &str) -> io::Result<FileIdentity> {
    let md = std::fs::metadata(open_path)?;
    let build_id = if md.is_file() {
        elf_build_id(open_path).unwrap_or(None)
    } else {
        None
    };
    Ok(FileIdentity {
        path: path.to_string(),
        dev: md.dev(),
        ino: md.ino(),
        size: md.size(),
        mtime_ns: md.mtime() as i128 * 1_000_000_000 + md.mtime_nsec() as i128,
        mode: md.mode(),
        build_id,
    })
}

/// The GNU build-id note of an ELF file, None for other files. Reads only the ELF
/// header, the program headers and the PT_NOTE segments, not the whole file.
pub fn elf_build_id(path: &Path) -> io::Result<Option<Vec<u8>>> {
    use goblin::container::{Container, Ctx, Endian};
    use goblin::elf::program_header::ProgramHeader;
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path)?;
    let mut head = [0u8; 64];
    if f.read_exact_at(&mut head, 0).is_err() || &head[..4] != b"\x7fELF" {
        return Ok(None);
    }
    let Ok(h) = goblin::elf::Elf::parse_header(&head) else {
        return Ok(None);
    };
    let Ok(container) = h.container() else {
        return Ok(None);
    };
    let ctx = Ctx::new(container, h.endianness().unwrap_or(Endian::Little));
    let phsize = h.e_phentsize as usize * h.e_phnum as usize;
    if phsize == 0 || phsize > 1 << 20 || container != Container::Big {
        return Ok(None);
    }
    let mut ph = vec![0u8; phsize];
    f.read_exact_at(&mut ph, h.e_phoff)?;
    let Ok(phdrs) = ProgramHeader::parse(&ph, 0, h.e_phnum as usize, ctx) else {
        return Ok(None);
    };
    for p in phdrs
        .iter()
        .filter(|p| p.p_type == goblin::elf::program_header::PT_NOTE)
    {
        if p.p_filesz > 1 << 20 {
            continue;
        }
        let mut notes = vec![0u8; p.p_filesz as usize];
        f.read_exact_at(&mut notes, p.p_offset)?;
        let align = (p.p_align.max(4)) as usize;
        let mut i = 0;
        let word =
            |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as usize;
        while i + 12 <= notes.len() {
            let (namesz, descsz, ntype) =
                (word(&notes, i), word(&notes, i + 4), word(&notes, i + 8));
            let name_at = i + 12;
            let desc_at = name_at + namesz.div_ceil(align) * align;
            let next = desc_at + descsz.div_ceil(align) * align;
            if desc_at + descsz > notes.len() {
                break;
            }
            if ntype == goblin::elf::note::NT_GNU_BUILD_ID as usize
                && &notes[name_at..name_at + namesz.min(4)] == b"GNU\0"[..namesz.min(4)].as_ref()
            {
                return Ok(Some(notes[desc_at..desc_at + descsz].to_vec()));
            }
            i = next;
        }
    }
    Ok(None)
}

fn is_tty_rdev(rdev: u64) -> bool {
    let major = libc::major(rdev);
    matches!(major, 4 | 5 | 136..=143)
}

/// Read every descriptor of `pid` and classify it; unsupported kinds are an error that
/// names the pid, fd and kind.
pub fn read_fds(pid: i32, ids: &mut IdentityCache) -> Result<Vec<Fd>> {
    use crate::proc::FdTarget;
    let nums =
        crate::proc::fd_numbers(pid).map_err(|e| TraceError::io(pid, "listing descriptors", e))?;
    let mut out = Vec::new();
    let mut pipe_ends: HashMap<u64, Vec<(usize, bool)>> = HashMap::new();
    for fd in nums {
        let link_path = crate::proc::path(pid, &format!("fd/{fd}"));
        let Some(target) = crate::proc::fd_target(pid, fd)? else {
            continue; // closed meanwhile
        };
        let info = crate::proc::fdinfo(pid, fd)?;
        let (raw_flags, pos) = (info.flags, info.pos);
        let cloexec = raw_flags & libc::O_CLOEXEC != 0;
        let flags = raw_flags & !libc::O_CLOEXEC;
        let unsupported = |kind: &str| TraceError::UnsupportedFd {
            pid,
            fd,
            kind: kind.to_string(),
        };
        let kind = match target {
            FdTarget::Pipe(ino) => {
                let write_end = flags & libc::O_ACCMODE == libc::O_WRONLY;
                pipe_ends
                    .entry(ino)
                    .or_default()
                    .push((out.len(), write_end));
                FdKind::Pipe {
                    ino,
                    write_end,
                    peer_in_process: false,
                    data: Vec::new(),
                }
            }
            FdTarget::Socket(ino) => crate::unix::socket_fd(pid, fd, ino)?,
            FdTarget::AnonInode(k) => crate::fdkinds::anon_fd(pid, fd, &k, &info)?,
            FdTarget::Other(target)
                if target.starts_with("/memfd:") || target.ends_with(" (deleted)") =>
            {
                crate::fdkinds::unlinked_fd(pid, fd, &target, pos, ids)?
            }
            FdTarget::Other(target) if target.starts_with('/') => {
                let md = std::fs::metadata(&link_path)
                    .map_err(|e| TraceError::io(pid, format!("stat of fd {fd}"), e))?;
                let ft = md.file_type();
                use std::os::unix::fs::FileTypeExt;
                if ft.is_file() {
                    let id = file_identity(Path::new(&link_path), &target)
                        .map_err(|e| TraceError::io(pid, format!("stat of fd {fd}"), e))?;
                    match ids.identity(&target) {
                        Ok(cur) if cur.ino == id.ino && cur.dev == id.dev => {}
                        _ => {
                            return Err(unsupported(&format!(
                                "file {target} that was replaced or renamed since it was opened"
                            )))
                        }
                    }
                    FdKind::File { id, pos }
                } else if ft.is_dir() {
                    FdKind::Dir { path: target }
                } else if ft.is_char_device() && is_tty_rdev(md.rdev()) {
                    FdKind::Tty { path: target }
                } else if ft.is_char_device()
                    && matches!(
                        target.as_str(),
                        "/dev/null" | "/dev/zero" | "/dev/full" | "/dev/random" | "/dev/urandom"
                    )
                {
                    FdKind::CharDev {
                        path: target,
                        rdev: md.rdev(),
                    }
                } else if ft.is_fifo() {
                    crate::fdkinds::fifo_fd(&target, md.ino())
                } else {
                    return Err(unsupported(&format!("device or special file {target}")));
                }
            }
            FdTarget::Other(target) => return Err(unsupported(&target)),
        };
        let inherit = fd <= 2 && matches!(kind, FdKind::Tty { .. } | FdKind::Pipe { .. });
        out.push(Fd {
            fd,
            desc: 0,
            flags,
            cloexec,
            inherit,
            kind,
        });
    }
    // Pipes: both ends inside the process, or leading outside.
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
                    *data = peek_pipe(pid, fdnum)
                        .map_err(|e| TraceError::io(pid, format!("reading pipe fd {fdnum}"), e))?;
                    data_taken = true;
                }
            }
        }
    }
    crate::fdkinds::fifo_data(pid, &mut out)?;
    Ok(out)
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

const TMPFS_MAGIC: i64 = 0x0102_1994;
const RAMFS_MAGIC: i64 = 0x8584_58f6;
/// Files larger than this on a memory file system are refused rather than stored.
const VOLATILE_MAX: u64 = 256 << 20;

/// Whether `path` lives on a file system a reboot wipes (tmpfs, ramfs).
pub fn on_memory_fs(path: &str) -> bool {
    let Ok(c) = std::ffi::CString::new(path) else {
        return false;
    };
    // SAFETY: `libc::statfs` is a plain C struct of integers and integer arrays: all-zero
    // bytes are a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated CString alive for the call, and `st` a local `statfs`
    // that statfs(2) fills and does not retain.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } < 0 {
        return false;
    }
    let t = st.f_type as i64;
    t == TMPFS_MAGIC || t == RAMFS_MAGIC
}

/// The content of every regular file on a memory file system that the process maps or
/// has open, once per file.
pub fn volatile_files(
    pid: i32,
    vmas: &[crate::state::Vma],
    fds: &[Fd],
) -> Result<Vec<crate::state::UnlinkedFile>> {
    use crate::state::{UnlinkedFile, VmaKind};
    let ids = vmas
        .iter()
        .filter_map(|v| match &v.kind {
            VmaKind::File { id } => Some(id),
            _ => None,
        })
        .chain(fds.iter().filter_map(|f| match &f.kind {
            FdKind::File { id, .. } => Some(id),
            _ => None,
        }));
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for id in ids {
        if !seen.insert((id.dev, id.ino)) || !on_memory_fs(&id.path) {
            continue;
        }
        if id.size > VOLATILE_MAX {
            return Err(TraceError::Unsupported {
                pid,
                what: format!(
                    "{} is on a memory file system and larger than {} MiB",
                    id.path,
                    VOLATILE_MAX >> 20
                ),
            });
        }
        let data = std::fs::read(&id.path)
            .map_err(|e| TraceError::io(pid, format!("reading {}", id.path), e))?;
        out.push(UnlinkedFile {
            memfd: false,
            name: id.path.clone(),
            dev: id.dev,
            ino: id.ino,
            size: data.len() as u64,
            mode: id.mode,
            seals: 0,
            data: Some(data),
        });
    }
    Ok(out)
}
