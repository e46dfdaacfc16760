//! Open file descriptors (/proc/PID/fd + fdinfo). The identity of files (stat and the
//! ELF build-id, so that a restore can refuse files that changed) is in
//! [`crate::identity`].

use crate::error::{Result, TraceError};
use crate::fd::{Dump, Target};
pub use crate::identity::{elf_build_id, file_identity, IdentityCache};
use crate::state::{Fd, FdKind};

/// Read every descriptor of `pid` and classify it by what its link names; the kind that
/// claims it dumps it (crate::fd, docs/FDKINDS.md), then the kinds' passes over the
/// whole process. Unsupported kinds are an error that names the pid, fd and kind.
pub fn read_fds(pid: i32, ids: &mut IdentityCache) -> Result<Vec<Fd>> {
    use crate::proc::FdTarget;
    let nums =
        crate::proc::fd_numbers(pid).map_err(|e| TraceError::io(pid, "listing descriptors", e))?;
    let mut out = Vec::new();
    for fd in nums {
        let link_path = crate::proc::path(pid, &format!("fd/{fd}"));
        let Some(target) = crate::proc::fd_target(pid, fd)? else {
            continue; // closed meanwhile
        };
        let info = crate::proc::fdinfo(pid, fd)?;
        crate::audit::check_fd_flags(pid, fd, info.flags)?;
        let raw_flags = info.flags;
        let cloexec = raw_flags & libc::O_CLOEXEC != 0;
        let flags = raw_flags & !libc::O_CLOEXEC;
        let md;
        let target = match &target {
            FdTarget::Pipe(ino) => Target::Pipe(*ino),
            FdTarget::Socket(ino) => Target::Socket(*ino),
            FdTarget::AnonInode(name) => Target::Anon(name),
            FdTarget::Other(path)
                if path.starts_with("/memfd:") || path.ends_with(" (deleted)") =>
            {
                Target::Deleted(path)
            }
            FdTarget::Other(path) if path.starts_with('/') => {
                md = std::fs::metadata(&link_path)
                    .map_err(|e| TraceError::io(pid, format!("stat of fd {fd}"), e))?;
                Target::Path(path, &md)
            }
            FdTarget::Other(other) => {
                return Err(TraceError::UnsupportedFd {
                    pid,
                    fd,
                    kind: other.clone(),
                })
            }
        };
        let kind = dump(&mut Dump {
            pid,
            fd,
            target,
            info: &info,
            ids,
        })?;
        out.push(Fd {
            fd,
            desc: 0,
            flags,
            cloexec,
            inherit: false,
            kind,
        });
    }
    crate::fd::dump_process(pid, &mut out)?;
    Ok(out)
}

/// The saved variant of a descriptor, from the kind that claims it; a descriptor no kind
/// claims is refused with [`TraceError::UnsupportedFd`], naming what its link shows.
fn dump(d: &mut Dump) -> Result<FdKind> {
    if let Some(r) = crate::fd::dump(d) {
        return r;
    }
    let kind = match d.target {
        Target::Anon(name) => name.to_string(),
        Target::Path(path, _) => format!("device or special file {path}"),
        Target::Deleted(path) => path.to_string(),
        Target::Pipe(ino) => format!("pipe:[{ino}]"),
        Target::Socket(ino) => format!("socket:[{ino}]"),
    };
    Err(TraceError::UnsupportedFd {
        pid: d.pid,
        fd: d.fd,
        kind,
    })
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
/// Read without breaking a lease on them (`IdentityCache::open`).
pub fn volatile_files(
    pid: i32,
    vmas: &[crate::state::Vma],
    fds: &[Fd],
    cache: &IdentityCache,
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
        let data = cache
            .open(std::path::Path::new(&id.path), id.dev, id.ino)
            .and_then(|f| crate::identity::read_all_at(&f))
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
