//! memfds and regular files deleted after they were opened or mapped: their content is
//! stored in the image. Dump: a descriptor whose link is `/memfd:NAME (deleted)` or
//! `PATH (deleted)`, or a mapping of one ([`vma`]); the content, size, mode and seals are
//! read once per file (through the descriptor, or /proc/PID/map_files for a mapping),
//! and every other occurrence names the same (dev, ino). Restore: one new file per saved
//! file for the whole tree ([`backing`], shared with the mappings, src/restore/fds.rs): a
//! memfd with the same name, or an O_TMPFILE file in the deleted file's old directory;
//! every descriptor reopens it with its own flags and offset. The seals are added in the
//! late step, once the loader mapped the file and the content is in.

use super::{
    cvt, open, owned, set_status_flags, Context, Dump, Kind, RestoreResult, Shared, Target,
};
use crate::error::{Result, TraceError};
use crate::freeze::FrozenThread;
use crate::identity::IdentityCache;
use crate::inject::Injector;
use crate::proc;
use crate::proc::MapEntry;
use crate::state::{Fd, FdKind, FileMeta, ProcessState, UnlinkedFile, VmaKind};
use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::atomic::{AtomicU64, Ordering};

pub const KIND: Kind = Kind {
    dump,
    dump_process: None,
    dump_tree: None,
    restore,
    finish: None,
    late: Some(late),
    describe,
};

/// The most content ckpt stores for one memfd or deleted file, unless `ckpt dump
/// --max-file-size` says otherwise ([`set_max_stored_file`]).
pub const MAX_STORED_FILE: u64 = 256 << 20;

static MAX_STORED: AtomicU64 = AtomicU64::new(MAX_STORED_FILE);

/// The most content the dumps of this process store for one memfd or deleted file
/// (`ckpt dump --max-file-size`).
pub fn set_max_stored_file(bytes: u64) {
    MAX_STORED.store(bytes, Ordering::Relaxed);
}

/// A size limit as the refusal names it: MiB when it is a whole number of them.
fn limit_text(bytes: u64) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{bytes} bytes")
    }
}

const HUGETLBFS_MAGIC: i64 = 0x958458f6;

/// Whether the content of the unlinked file `(dev, ino)` is already in the image.
fn first_time(ids: &mut IdentityCache, dev: u64, ino: u64) -> bool {
    ids.unlinked_stored.insert((dev, ino))
}

/// Refuse `what` of process `pid` (`at`: "fd N", or a mapping) when it holds more bytes
/// to store (`stored`) than `ckpt dump --max-file-size` allows.
fn check_limit(pid: i32, at: String, what: String, stored: u64) -> Result<()> {
    let limit = MAX_STORED.load(Ordering::Relaxed);
    if stored <= limit {
        return Ok(());
    }
    Err(TraceError::TooLarge {
        pid,
        at,
        what,
        size: stored,
        limit: limit_text(limit),
    })
}

/// Describe (and, the first time, read) the unlinked file reachable at `open_path`:
/// all of it, or with `extents` only those (the holes between them are not stored).
fn unlinked(
    open_path: &str,
    memfd: bool,
    name: &str,
    ids: &mut IdentityCache,
    extents: Option<&[(u64, u64)]>,
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
    if !first_time(ids, file.dev, file.ino) {
        return Ok(file);
    }
    let f = ids
        .open(std::path::Path::new(open_path), file.dev, file.ino)
        .map_err(|e| format!("opening it: {e}"))?;
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
    if let Some(extents) = extents {
        let stored: u64 = extents.iter().map(|x| x.1).sum();
        let mut data = Vec::with_capacity(stored as usize);
        for &(off, len) in extents {
            let at = data.len();
            data.resize(at + len as usize, 0);
            f.read_exact_at(&mut data[at..], off)
                .map_err(|e| format!("reading it at {off}: {e}"))?;
        }
        file.data = Some(data);
        return Ok(file);
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

/// The owner, times and data extents of the deleted file open at `open_path`.
fn meta(open_path: &str) -> io::Result<FileMeta> {
    let f = crate::identity::open_nonblocking(std::path::Path::new(open_path))?;
    let md = f.metadata()?;
    let mut extents = Vec::new();
    let (fd, size) = (f.as_raw_fd(), md.size() as i64);
    let mut pos = 0i64;
    while pos < size {
        // SAFETY: lseek(2) on `f`, our own open descriptor (its offset, not the
        // process's); integers only.
        let data = unsafe { libc::lseek(fd, pos, libc::SEEK_DATA) };
        if data < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break; // only a hole up to the end
            }
            return Err(e);
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(io::Error::last_os_error());
        }
        let hole = hole.min(size);
        extents.push((data as u64, (hole - data) as u64));
        pos = hole;
    }
    Ok(FileMeta {
        uid: md.uid(),
        gid: md.gid(),
        atime_sec: md.atime(),
        atime_nsec: md.atime_nsec() as u32,
        mtime_sec: md.mtime(),
        mtime_nsec: md.mtime_nsec() as u32,
        extents,
    })
}

fn dump(d: &mut Dump) -> Option<Result<FdKind>> {
    let Target::Deleted(target) = d.target else {
        return None;
    };
    Some(unlinked_fd(d.pid, d.fd, target, d.info.pos, d.ids))
}

/// A descriptor on a memfd (`/memfd:NAME (deleted)`) or on a deleted file (`PATH (deleted)`).
fn unlinked_fd(
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
    let refused = |why| TraceError::UnsupportedFd {
        pid,
        fd,
        kind: format!("{what} {name}: {why}"),
    };
    let at = format!("fd {fd}");
    if memfd {
        let size = std::fs::metadata(&link).map_or(0, |m| m.size());
        check_limit(pid, at, format!("{what} {name}"), size)?;
        let file = unlinked(&link, memfd, name, ids, None).map_err(refused)?;
        return Ok(FdKind::Unlinked { file, pos });
    }
    let meta = meta(&link).map_err(|e| refused(format!("reading its layout: {e}")))?;
    let stored = meta.extents.iter().map(|e| e.1).sum();
    check_limit(pid, at, format!("{what} {name}"), stored)?;
    let file = unlinked(&link, memfd, name, ids, Some(&meta.extents)).map_err(refused)?;
    Ok(FdKind::DeletedFile { file, pos, meta })
}

/// A mapping of a memfd or of a deleted regular file. Its content is read through a
/// descriptor of the process on the same file if there is one, else through
/// /proc/PID/map_files (root).
pub fn vma(pid: i32, m: &MapEntry, ids: &mut IdentityCache) -> Result<VmaKind> {
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
    let open_path = match &by_fd {
        Some(p) => p.clone(),
        None => proc::path(pid, &format!("map_files/{:x}-{:x}", m.start, m.end)),
    };
    let refused = |why| TraceError::Unsupported {
        pid,
        what: format!("mapping of {what} {name} at {:#x}: {why}", m.start),
    };
    let at = format!("mapping at {:#x}", m.start);
    if by_fd.is_none() && !may_open_map_files(&open_path) {
        return through_memory(pid, m, memfd, name, ids, refused);
    }
    if !memfd {
        // Its owner, times and holes, as for a descriptor of a deleted file.
        let meta = meta(&open_path).map_err(|e| refused(format!("reading its layout: {e}")))?;
        let stored = meta.extents.iter().map(|e| e.1).sum();
        check_limit(pid, at, format!("{what} {name}"), stored)?;
        let file = unlinked(&open_path, memfd, name, ids, Some(&meta.extents)).map_err(refused)?;
        return Ok(VmaKind::DeletedFile { file, meta });
    }
    let size = std::fs::metadata(&open_path).map_or(0, |m| m.size());
    check_limit(pid, at, format!("{what} {name}"), size)?;
    let file = unlinked(&open_path, memfd, name, ids, None).map_err(refused)?;
    Ok(VmaKind::Unlinked { file })
}

/// Whether /proc/PID/map_files opens here: it takes CAP_SYS_ADMIN (or
/// CAP_CHECKPOINT_RESTORE), which an ordinary user lacks.
fn may_open_map_files(open_path: &str) -> bool {
    !matches!(
        std::fs::metadata(open_path).map_err(|e| e.raw_os_error()),
        Err(Some(libc::EPERM | libc::EACCES))
    )
}

/// A mapping of a memfd or deleted file that no descriptor of the process leads to,
/// read by an ordinary user, to whom /proc/PID/map_files is closed: the file's content
/// is what the process's mappings of it show, read through /proc/PID/mem at their file
/// offsets (every region of the process that maps the file; what no region shows is a
/// hole), while the process is frozen. What no one can see without map_files is not
/// kept: the owner and mode (the process's own ids and 0600), the times (the dump's),
/// a memfd's seals and the size beyond the last mapped byte; the restored process,
/// which has no descriptor either, cannot see them. UCX (MPICH's transport) maps its
/// peers' /dev/shm segments this way after unlinking them. For a private mapping the
/// pages it wrote show its own copies: its memory comes back the same, since they are
/// restored over the file's anyway. Another process of the tree that maps a part of the
/// file this one does not is refused (its part would be missing).
fn through_memory(
    pid: i32,
    m: &MapEntry,
    memfd: bool,
    name: &str,
    ids: &mut IdentityCache,
    refused: impl Fn(String) -> TraceError,
) -> Result<VmaKind> {
    let regions = proc::regions_of_file(pid, m.dev, m.inode)?;
    let mut extents: Vec<(u64, u64)> = regions.iter().map(|r| (r.2, r.1 - r.0)).collect();
    extents.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for (off, len) in extents {
        match merged.last_mut() {
            Some(last) if off <= last.0 + last.1 => {
                last.1 = last.1.max(off + len - last.0);
            }
            _ => merged.push((off, len)),
        }
    }
    let size = merged.last().map_or(0, |e| e.0 + e.1);
    let dev = libc::makedev(m.dev.0, m.dev.1);
    let covered = |stored: &[(u64, u64)]| {
        merged
            .iter()
            .all(|&(o, l)| stored.iter().any(|&(so, sl)| so <= o && o + l <= so + sl))
    };
    let file = |data| UnlinkedFile {
        memfd,
        name: name.to_string(),
        dev,
        ino: m.inode,
        size,
        mode: libc::S_IFREG | 0o600,
        seals: 0,
        data,
    };
    // /proc/PID belongs to the process's effective ids.
    let owner = std::fs::metadata(proc::path(pid, "")).map_or((0, 0), |m| (m.uid(), m.gid()));
    let meta = |extents| FileMeta {
        uid: owner.0,
        gid: owner.1,
        atime_sec: now_sec(),
        atime_nsec: 0,
        mtime_sec: now_sec(),
        mtime_nsec: 0,
        extents,
    };
    if !first_time(ids, dev, m.inode) {
        let stored = ids.unlinked_through_memory.get(&(dev, m.inode));
        return match stored {
            Some(stored) if covered(stored) => Ok(VmaKind::DeletedFile {
                file: file(None),
                meta: meta(stored.clone()),
            }),
            Some(_) => Err(refused(
                "another process of the tree maps other parts of it, and reading all of it needs /proc/PID/map_files (root, or CAP_CHECKPOINT_RESTORE)".into(),
            )),
            // Stored from a descriptor (or map_files) of another process: all of it.
            None => Ok(VmaKind::DeletedFile {
                file: file(None),
                meta: meta(merged),
            }),
        };
    }
    let stored: u64 = merged.iter().map(|e| e.1).sum();
    check_limit(
        pid,
        format!("mapping at {:#x}", m.start),
        format!("{} {name}", if memfd { "memfd" } else { "deleted file" }),
        stored,
    )?;
    // Opened here: the tracer's memory reader lives in a module that uses this one.
    let mem = std::fs::File::open(proc::path(pid, "mem"))
        .map_err(|e| TraceError::io(pid, "opening its memory", e))?;
    let mut data = Vec::with_capacity(stored as usize);
    for &(off, len) in &merged {
        let at = data.len();
        data.resize(at + len as usize, 0);
        // Every region that shows a part of this extent (one extent may be several
        // adjacent regions, with other protections).
        for &(rs, re, ro) in &regions {
            let (from, to) = (ro.max(off), (ro + (re - rs)).min(off + len));
            if from >= to {
                continue;
            }
            let buf = &mut data[at + (from - off) as usize..at + (to - off) as usize];
            mem.read_exact_at(buf, rs + (from - ro))
                .map_err(|e| refused(format!("reading it through /proc/{pid}/mem: {e}")))?;
        }
    }
    ids.unlinked_through_memory
        .insert((dev, m.inode), merged.clone());
    Ok(VmaKind::DeletedFile {
        file: file(Some(data)),
        meta: meta(merged),
    })
}

fn now_sec() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn restore(pid: i32, fd: &Fd, shared: &mut Shared) -> Option<RestoreResult<OwnedFd>> {
    let (file, pos, meta) = match &fd.kind {
        FdKind::Unlinked { file, pos } => (file, pos, None),
        FdKind::DeletedFile { file, pos, meta } => (file, pos, Some(meta)),
        _ => return None,
    };
    Some((|| {
        let new = backing_with(shared, file, meta, pid, fd.fd)?;
        let f = match own_description(shared, file, fd.flags)? {
            Some(f) => f,
            None => open(
                &format!("/proc/self/fd/{new}"),
                fd.flags,
                &format!("fd {} ({})", fd.fd, file.name),
            )?,
        };
        // SAFETY: lseek on our own descriptor.
        if unsafe { libc::lseek(f.as_raw_fd(), *pos as i64, libc::SEEK_SET) } < 0 {
            bail!(
                "seeking {} to {pos}: {}",
                file.name,
                std::io::Error::last_os_error()
            );
        }
        Ok(f)
    })())
}

/// The open file description memfd_create made for the new memfd, for the first
/// read-write descriptor of it (the one memfd_create gave the process, as a rule).
/// Reopening through /proc/self/fd would be a second description, and unlike
/// memfd_create's, an open for writing counts as a writer of the file: execveat of the
/// memfd would then fail with ETXTBSY. None for a deleted file, a read-only descriptor,
/// or when the description is taken; also while the content is still to come and the
/// descriptor appends (the content is written with pwrite, which O_APPEND would defeat).
fn own_description(
    shared: &mut Shared,
    file: &UnlinkedFile,
    flags: i32,
) -> RestoreResult<Option<OwnedFd>> {
    let Some(new) = shared.part::<Files>().0.get_mut(&(file.dev, file.ino)) else {
        return Ok(None);
    };
    let append_too_early = flags & libc::O_APPEND != 0 && !new.filled;
    if !file.memfd || flags & libc::O_ACCMODE != libc::O_RDWR || new.given || append_too_early {
        return Ok(None);
    }
    let f = new
        .fd
        .try_clone()
        .with_context(|| format!("sharing the description of memfd {}", file.name))?;
    set_status_flags(&f, flags)?;
    new.given = true;
    Ok(Some(f))
}

fn describe(kind: &FdKind) -> Option<String> {
    match kind {
        FdKind::Unlinked { file, pos } if file.memfd => {
            Some(format!("memfd {} ({} bytes) @{pos}", file.name, file.size))
        }
        FdKind::Unlinked { file, pos } => Some(format!(
            "deleted file {} ({} bytes) @{pos}",
            file.name, file.size
        )),
        FdKind::DeletedFile { file, pos, meta } => Some(format!(
            "deleted file {} ({} bytes, {} in {} extent(s)) @{pos}",
            file.name,
            file.size,
            meta.extents.iter().map(|e| e.1).sum::<u64>(),
            meta.extents.len()
        )),
        _ => None,
    }
}

/// The new files of a restore, by saved (dev, ino).
#[derive(Default)]
struct Files(HashMap<(u64, u64), NewFile>);

/// A new file standing for a saved one.
struct NewFile {
    fd: OwnedFd,
    /// Its content is in (it comes with one of its descriptors or mappings).
    filled: bool,
    /// Its own open file description (the one memfd_create made) went to a descriptor.
    given: bool,
    /// The owner, times and holes of a deleted file, once a descriptor brought them.
    meta: Option<FileMeta>,
    /// `meta` is applied (after the content: writing it changes the times).
    meta_done: bool,
}

const MFD_EXEC: libc::c_uint = 0x10;

fn new_memfd(name: &str) -> RestoreResult<OwnedFd> {
    let c = CString::new(name)?;
    let base = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    // MFD_EXEC (Linux 6.3+) keeps the mode settable whatever vm.memfd_noexec says.
    // SAFETY: memfd_create returns a descriptor we own.
    let mut fd = unsafe { libc::memfd_create(c.as_ptr(), base | MFD_EXEC) };
    if fd < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
        // SAFETY: `c` is a NUL-terminated CString alive for the call; memfd_create only
        // reads the name and keeps no pointer to it.
        fd = unsafe { libc::memfd_create(c.as_ptr(), base) };
    }
    owned(fd, &format!("creating memfd {name}"))
}

/// The new file standing for the saved memfd or deleted file `f` (created at its first
/// occurrence); its content, size and mode are filled from the occurrence that carries
/// them. Seals are added last, once the process exists (the late step). `fdnum` is the
/// descriptor of process `pid` it is for, -1 for a mapping.
pub fn backing(
    shared: &mut Shared,
    f: &UnlinkedFile,
    pid: i32,
    fdnum: RawFd,
) -> RestoreResult<RawFd> {
    backing_with(shared, f, None, pid, fdnum)
}

/// [`backing`] for a mapping of a deleted file that brings its owner, times and holes.
pub fn backing_of_deleted(
    shared: &mut Shared,
    f: &UnlinkedFile,
    meta: &FileMeta,
) -> RestoreResult<RawFd> {
    backing_with(shared, f, Some(meta), 0, -1)
}

/// [`backing`], for an occurrence that may bring the owner, times and holes of a deleted
/// file (`meta`; its `data` is then only the bytes of the extents). They are applied once
/// the content is in, whichever occurrence brought it.
fn backing_with(
    shared: &mut Shared,
    f: &UnlinkedFile,
    meta: Option<&FileMeta>,
    pid: i32,
    fdnum: RawFd,
) -> RestoreResult<RawFd> {
    use std::collections::hash_map::Entry;
    let new = match shared.part::<Files>().0.entry((f.dev, f.ino)) {
        Entry::Occupied(o) => o.into_mut(),
        Entry::Vacant(v) => v.insert(NewFile {
            fd: new_unlinked(f, pid, fdnum)?,
            filled: false,
            given: false,
            meta: None,
            meta_done: false,
        }),
    };
    let file = std::fs::File::from(new.fd.try_clone()?);
    if let (Some(data), false) = (&f.data, new.filled) {
        match meta {
            // Only the extents are stored: written where they were, the rest stays holes.
            Some(m) => {
                let mut at = 0usize;
                for &(off, len) in &m.extents {
                    let part = data
                        .get(at..at + len as usize)
                        .with_context(|| format!("the stored content of {} is short", f.name))?;
                    file.write_all_at(part, off)
                        .with_context(|| format!("writing the content of {}", f.name))?;
                    at += len as usize;
                }
            }
            None => file
                .write_all_at(data, 0)
                .with_context(|| format!("writing the content of {}", f.name))?,
        }
        file.set_len(f.size)
            .with_context(|| format!("setting the size of {}", f.name))?;
        set_mode(&file, f)?;
        new.filled = true;
    }
    if new.meta.is_none() {
        new.meta = meta.cloned();
    }
    if let (true, Some(m), false) = (new.filled, &new.meta, new.meta_done) {
        apply_meta(&file, f, m)?;
        new.meta_done = true;
    }
    Ok(new.fd.as_raw_fd())
}

fn set_mode(file: &std::fs::File, f: &UnlinkedFile) -> RestoreResult<()> {
    cvt(
        // SAFETY: fchmod(2) on `file`, a descriptor borrowed open for the call, with an
        // integer mode; no pointer is involved.
        unsafe { libc::fchmod(file.as_raw_fd(), (f.mode & 0o7777) as libc::mode_t) },
        &format!("setting the mode of {}", f.name),
    )?;
    Ok(())
}

/// Holes (punched where the content was written densely, from a mapping), owner, mode
/// again (a change of owner clears set-user-ID) and last the times, of the new `file`.
fn apply_meta(file: &std::fs::File, f: &UnlinkedFile, m: &FileMeta) -> RestoreResult<()> {
    let fd = file.as_raw_fd();
    let mut holes = Vec::new();
    let mut pos = 0u64;
    for &(off, len) in &m.extents {
        holes.push((pos, off.saturating_sub(pos)));
        pos = off + len;
    }
    holes.push((pos, f.size.saturating_sub(pos)));
    for (off, len) in holes.into_iter().filter(|h| h.1 > 0) {
        cvt(
            // SAFETY: fallocate(2) on our own descriptor; integers only.
            unsafe {
                libc::fallocate(
                    fd,
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    off as i64,
                    len as i64,
                )
            },
            &format!("punching the hole at {off} of {}", f.name),
        )?;
    }
    let md = file.metadata()?;
    if (md.uid(), md.gid()) != (m.uid, m.gid) {
        cvt(
            // SAFETY: fchown(2) on our own descriptor; integers only.
            unsafe { libc::fchown(fd, m.uid, m.gid) },
            &format!(
                "giving {} back to its owner {}:{} (a restore as another user cannot)",
                f.name, m.uid, m.gid
            ),
        )?;
        set_mode(file, f)?;
    }
    set_times(&CString::new(format!("/proc/self/fd/{fd}"))?, m)
        .with_context(|| format!("setting the times of {}", f.name))?;
    Ok(())
}

/// The saved atime and mtime on the file at `path` (a /proc fd link: the file itself).
/// Also in the late step: mapping a file (the loader's mmap) updates its atime.
fn set_times(path: &CString, m: &FileMeta) -> io::Result<()> {
    let times = [
        libc::timespec {
            tv_sec: m.atime_sec,
            tv_nsec: m.atime_nsec as i64,
        },
        libc::timespec {
            tv_sec: m.mtime_sec,
            tv_nsec: m.mtime_nsec as i64,
        },
    ];
    // SAFETY: utimensat(2) reads `path`, a NUL-terminated CString, and the two timespecs
    // of `times`, a local array, both alive for the call.
    if unsafe { libc::utimensat(libc::AT_FDCWD, path.as_ptr(), times.as_ptr(), 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The unnamed file `tmp` opened again under `name` and unlinked again, so that what
/// the process sees of it (/proc/PID/fd, /proc/PID/maps) is `name (deleted)`, as
/// before the checkpoint, not the `#INODE` an O_TMPFILE file shows. The name is given
/// for an instant only (linkat, open, unlink), and only when nothing has it now; None
/// when it cannot be (the file stays unnamed).
fn under_old_name(tmp: &OwnedFd, name: &str) -> Option<OwnedFd> {
    use std::os::unix::fs::MetadataExt;
    let from = CString::new(format!("/proc/self/fd/{}", tmp.as_raw_fd())).ok()?;
    let to = CString::new(name).ok()?;
    // SAFETY: linkat(2) with two valid C strings; it creates the name or fails.
    let r = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if r < 0 {
        return None;
    }
    // SAFETY: open(2) with a valid C string; the result is checked below.
    let fd = unsafe {
        libc::open(
            to.as_ptr(),
            libc::O_RDWR | libc::O_CLOEXEC | libc::O_NOFOLLOW,
        )
    };
    // SAFETY: unlink(2) of the name made above.
    unsafe { libc::unlink(to.as_ptr()) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` was just returned by a successful open(2): ours alone.
    let named = unsafe { OwnedFd::from_raw_fd(fd) };
    let same = |f: &OwnedFd| {
        std::fs::File::from(f.try_clone().ok()?)
            .metadata()
            .ok()
            .map(|m| (m.dev(), m.ino()))
    };
    (same(&named).is_some() && same(&named) == same(tmp)).then_some(named)
}

/// A new empty file for `f`: a memfd with the same name, or, for a deleted file, an
/// O_TMPFILE file in its old directory (so it lives on the same filesystem, unnamed), or a
/// memfd (with a warning) when that directory is gone or cannot hold one.
fn new_unlinked(f: &UnlinkedFile, pid: i32, fdnum: RawFd) -> RestoreResult<OwnedFd> {
    if f.memfd {
        return new_memfd(&f.name);
    }
    let path = std::path::Path::new(&f.name);
    let dir = path
        .parent()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|| "/".into());
    let c = CString::new(dir.clone())?;
    // SAFETY: open(2) with a valid C string.
    let r = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC,
            (f.mode & 0o7777) as libc::c_uint,
        )
    };
    if r >= 0 {
        // SAFETY: `r` was just returned by a successful open(O_TMPFILE) (checked >= 0): a
        // fresh descriptor nothing else owns.
        let tmp = unsafe { OwnedFd::from_raw_fd(r) };
        return Ok(under_old_name(&tmp, &f.name).unwrap_or(tmp));
    }
    let what = if fdnum >= 0 {
        format!("process {pid} fd {fdnum}")
    } else {
        "a mapping".to_string()
    };
    eprintln!(
        "ckpt: warning: {what}: deleted file {} restored as a memfd ({dir}: {})",
        f.name,
        std::io::Error::last_os_error()
    );
    let base = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    new_memfd(&base)
}

/// Seals of memfds, once per memfd (they come with the occurrence holding the data),
/// added through a descriptor of ours on the restored process's memfd.
fn late(_inj: &Injector, _leader: &mut FrozenThread, state: &ProcessState) -> RestoreResult<()> {
    let pid = state.pid;
    // The times of deleted files once more: the loader's mmap of one updated its atime.
    for f in &state.fds {
        if let FdKind::DeletedFile { file, meta, .. } = &f.kind {
            let path = format!("/proc/{pid}/fd/{}", f.fd);
            set_times(&CString::new(path)?, meta)
                .with_context(|| format!("process {pid}: setting the times of {}", file.name))?;
        }
    }
    let mut sealed = HashSet::new();
    let with_data = state
        .fds
        .iter()
        .filter_map(|f| match &f.kind {
            FdKind::Unlinked { file, .. } => Some(file),
            _ => None,
        })
        .chain(state.vmas.iter().filter_map(|v| match &v.kind {
            VmaKind::Unlinked { file } => Some(file),
            _ => None,
        }))
        .filter(|f| f.memfd && f.data.is_some() && f.seals != 0);
    for file in with_data {
        if sealed.insert((file.dev, file.ino)) {
            add_seals(state, file)
                .with_context(|| format!("process {pid}: sealing memfd {}", file.name))?;
        }
    }
    Ok(())
}

/// Open the restored process's memfd that stands for `file` (through one of its
/// descriptors, or through a mapping) and add the saved seals.
fn add_seals(state: &ProcessState, file: &UnlinkedFile) -> RestoreResult<()> {
    let pid = state.pid;
    let same = |f: &UnlinkedFile| f.dev == file.dev && f.ino == file.ino;
    let path = state
        .fds
        .iter()
        .find(|f| matches!(&f.kind, FdKind::Unlinked { file: g, .. } if same(g)))
        .map(|f| format!("/proc/{pid}/fd/{}", f.fd))
        .or_else(|| {
            state
                .vmas
                .iter()
                .find(|v| matches!(&v.kind, VmaKind::Unlinked { file: g } if same(g)))
                .map(|v| format!("/proc/{pid}/map_files/{:x}-{:x}", v.start, v.end))
        })
        .context("no descriptor or mapping of it")?;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {path}"))?;
    // Only the seals not there yet: a memfd shared with a process of the tree restored
    // before is sealed already.
    // SAFETY: fcntl on our own descriptor.
    let have = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GET_SEALS) }.max(0) as u32;
    let add = file.seals & !have;
    if add == 0 {
        return Ok(());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_ADD_SEALS, add as libc::c_int) } < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("adding seals {:#x}", file.seals));
    }
    Ok(())
}
