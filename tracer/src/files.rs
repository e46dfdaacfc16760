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

/// The GNU build-id note of an ELF file, None for other files.
pub fn elf_build_id(path: &Path) -> io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut magic = [0u8; 4];
    if f.read_exact(&mut magic).is_err() || &magic != b"\x7fELF" {
        return Ok(None);
    }
    let data = std::fs::read(path)?;
    let elf = match goblin_elf(&data) {
        Some(e) => e,
        None => return Ok(None),
    };
    Ok(elf)
}

fn goblin_elf(data: &[u8]) -> Option<Option<Vec<u8>>> {
    let elf = goblin::elf::Elf::parse(data).ok()?;
    if let Some(notes) = elf.iter_note_headers(data) {
        for n in notes.flatten() {
            if n.n_type == goblin::elf::note::NT_GNU_BUILD_ID && n.name == "GNU" {
                return Some(Some(n.desc.to_vec()));
            }
        }
    }
    Some(None)
}

fn fdinfo(pid: i32, fd: i32) -> io::Result<HashMap<String, String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}"))?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect())
}

fn is_tty_rdev(rdev: u64) -> bool {
    let major = libc::major(rdev);
    matches!(major, 4 | 5 | 136..=143)
}

/// Read every descriptor of `pid` and classify it; unsupported kinds are an error that
/// names the pid, fd and kind.
pub fn read_fds(pid: i32, ids: &mut IdentityCache) -> Result<Vec<Fd>> {
    let dir = format!("/proc/{pid}/fd");
    let mut nums: Vec<i32> = std::fs::read_dir(&dir)
        .map_err(|e| TraceError::io(pid, "listing descriptors", e))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    nums.sort_unstable();
    let mut out = Vec::new();
    let mut pipe_ends: HashMap<u64, Vec<(usize, bool)>> = HashMap::new();
    for fd in nums {
        let link_path = format!("{dir}/{fd}");
        let target = match std::fs::read_link(&link_path) {
            Ok(t) => t.to_string_lossy().into_owned(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue, // closed meanwhile
            Err(e) => return Err(TraceError::io(pid, format!("reading fd {fd}"), e)),
        };
        let info = fdinfo(pid, fd).map_err(|e| TraceError::io(pid, format!("fdinfo {fd}"), e))?;
        let raw_flags = info
            .get("flags")
            .and_then(|v| i32::from_str_radix(v, 8).ok())
            .unwrap_or(0);
        let pos: u64 = info.get("pos").and_then(|v| v.parse().ok()).unwrap_or(0);
        let cloexec = raw_flags & libc::O_CLOEXEC != 0;
        let flags = raw_flags & !libc::O_CLOEXEC;
        let unsupported = |kind: &str| TraceError::UnsupportedFd {
            pid,
            fd,
            kind: kind.to_string(),
        };
        let kind = if let Some(rest) = target.strip_prefix("pipe:[") {
            let ino: u64 = rest.trim_end_matches(']').parse().unwrap_or(0);
            let write_end = flags & libc::O_ACCMODE == libc::O_WRONLY;
            pipe_ends.entry(ino).or_default().push((out.len(), write_end));
            FdKind::Pipe {
                ino,
                write_end,
                peer_in_process: false,
                data: Vec::new(),
            }
        } else if target.starts_with("socket:[") {
            return Err(unsupported("socket"));
        } else if let Some(k) = target.strip_prefix("anon_inode:") {
            return Err(unsupported(k));
        } else if target.starts_with("/memfd:") {
            return Err(unsupported("memfd"));
        } else if target.ends_with(" (deleted)") {
            return Err(unsupported(&format!("deleted file {target}")));
        } else if target.starts_with('/') {
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
                return Err(unsupported(&format!("FIFO {target}")));
            } else {
                return Err(unsupported(&format!("device or special file {target}")));
            }
        } else {
            return Err(unsupported(&target));
        };
        let inherit = fd <= 2 && matches!(kind, FdKind::Tty { .. } | FdKind::Pipe { .. });
        out.push(Fd {
            fd,
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
    Ok(out)
}

/// The bytes in flight in a pipe, without consuming them: tee(2) them into a pipe of ours.
fn peek_pipe(pid: i32, fd: i32) -> io::Result<Vec<u8>> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let src = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags_nonblock()
        .open(format!("/proc/{pid}/fd/{fd}"))?;
    let mut p = [0; 2];
    // SAFETY: pipe2 fills two descriptors we then own.
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };
    // SAFETY: fcntl on our own descriptors.
    let size = unsafe { libc::fcntl(src.as_raw_fd(), libc::F_GETPIPE_SZ) };
    if size > 0 {
        unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, size) };
    }
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
        let k = unsafe { libc::read(r.as_raw_fd(), data[got..].as_mut_ptr().cast(), data.len() - got) };
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
