//! Recreating the descriptor table of a process: every saved fd gets a source
//! descriptor in the restorer (numbered above all target fds), which the child then
//! dup2()s to its target number before it execs the loader.

use anyhow::{Context, Result};
use ckpt_format::state::{Fd, Vma, VmaKind};
use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::sys::{above, cvt};

/// One descriptor to install in the child: `src` (ours) becomes `target`.
pub struct Install {
    pub target: RawFd,
    /// None: keep the restorer's own descriptor `target` (standard streams).
    pub src: Option<OwnedFd>,
}

/// What the descriptors of all processes of a tree share: one source per open file
/// description, and what the kind modules share (one new pipe per saved pipe...).
/// Dropped once every process is prepared, which closes the pipe ends nobody uses (a
/// lone read end then sees EOF and a lone write end EPIPE, as with a peer that is gone).
#[derive(Default)]
pub struct Shared {
    /// One memfd per shared anonymous memory object, by its saved inode.
    shared_anon: HashMap<u64, OwnedFd>,
    descs: HashMap<u32, OwnedFd>,
    /// What the kind modules share (`ckpt_tracer::fd`, docs/FDKINDS.md).
    kinds: ckpt_tracer::fd::Shared,
}

impl Shared {
    /// Once every process is prepared: build what spans processes (unix sockets and
    /// their connections, ckpt_tracer::fd::unix) and put it in place of the stand-in
    /// sources.
    pub fn finish(&mut self) -> Result<()> {
        let socks = self.kinds.part::<ckpt_tracer::fd::unix::restore::Sockets>();
        for id in socks.descs_in_flight() {
            let src = self
                .descs
                .get(&id)
                .with_context(|| format!("description {id} in flight is not in the checkpoint"))?;
            socks.give_desc(
                id,
                src.try_clone().context("keeping a description in flight")?,
            );
        }
        Ok(ckpt_tracer::fd::finish(&mut self.kinds)?)
    }

    /// A new pty slave that process `pid`, a session leader, takes as its controlling
    /// terminal (ckpt_tracer::fd::pty), numbered `min` or above, and the session's
    /// foreground group.
    pub fn ctty(&mut self, pid: i32, min: RawFd) -> Result<Option<(OwnedFd, i32)>> {
        match ckpt_tracer::fd::pty::ctty(pid, &mut self.kinds)? {
            Some((fd, fg)) => Ok(Some((above(fd, min)?, fg))),
            None => Ok(None),
        }
    }

    /// What the attributes of a process hold for the descriptor kinds: the descriptors
    /// in flight in its unix sockets' queues.
    pub fn note_attrs(&mut self, attrs: &[ckpt_format::attrs::Attr]) {
        self.kinds
            .part::<ckpt_tracer::fd::unix::restore::Sockets>()
            .note_in_flight(attrs);
    }
}

/// Open (or create) a source for every saved descriptor of process `pid`. `min` is the
/// lowest number sources may use. Descriptors with the same description id (in this
/// process or one prepared earlier with the same `shared`) get the same description.
/// The kind modules print warnings for pipes that led outside the checkpoint.
pub fn prepare(pid: i32, fds: &[Fd], min: RawFd, shared: &mut Shared) -> Result<Vec<Install>> {
    let mut out = Vec::new();
    for fd in fds {
        if fd.inherit {
            out.push(Install {
                target: fd.fd,
                src: None,
            });
            continue;
        }
        if let Some(src) = shared.descs.get(&fd.desc) {
            let dup = src.try_clone().context("sharing a file description")?;
            out.push(Install {
                target: fd.fd,
                src: Some(above(dup, min)?),
            });
            continue;
        }
        // One module per kind (ckpt_tracer::fd, docs/FDKINDS.md); a unix socket is a
        // stand-in until every process is prepared.
        let src = ckpt_tracer::fd::restore(pid, fd, &mut shared.kinds)
            .with_context(|| format!("no kind module restores fd {} of process {pid}", fd.fd))??;
        let src = above(src, min)?;
        shared.descs.insert(
            fd.desc,
            src.try_clone().context("keeping a file description")?,
        );
        out.push(Install {
            target: fd.fd,
            src: Some(src),
        });
    }
    Ok(out)
}

/// The key under which the loader's descriptor for a file mapping is recorded in the
/// plan (`PlanFds::map_fds`): the path for a file that exists; for a memfd or deleted
/// file its identity and whether the descriptor is writable.
pub fn map_key(v: &Vma) -> Option<String> {
    match &v.kind {
        VmaKind::File { id } => Some(id.path.clone()),
        VmaKind::SharedAnon { ino } => Some(format!("\0shared-anon {ino}")),
        VmaKind::Unlinked { file } | VmaKind::DeletedFile { file, .. } => {
            let rw = v.shared && v.prot & libc::PROT_WRITE as u32 != 0;
            Some(format!(
                "\0unlinked {}:{} {}",
                file.dev,
                file.ino,
                if rw { "rw" } else { "ro" }
            ))
        }
        _ => None,
    }
}

/// The descriptor the loader maps the file mapping `v` from, recorded in `map_fds`
/// under [`map_key`]: one per file (read-write when a shared writable mapping needs
/// it). Returns a descriptor to keep open for the loader when a new one was opened.
/// A memfd or deleted file is the one new file its descriptors also use.
pub fn map_fd_for(
    v: &Vma,
    shared: &mut Shared,
    min: RawFd,
    map_fds: &mut HashMap<String, RawFd>,
) -> Result<Option<OwnedFd>> {
    let writable_shared = v.shared && v.prot & libc::PROT_WRITE as u32 != 0;
    match &v.kind {
        VmaKind::File { id } => {
            let prev = map_fds.get(&id.path).copied();
            if prev.is_some() && !writable_shared {
                return Ok(None);
            }
            // O_NOATIME where we may (owner, CAP_FOWNER): mapping a file updates its
            // atime otherwise, which the process may check.
            let open = |extra| {
                use std::os::unix::fs::OpenOptionsExt;
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(writable_shared)
                    .custom_flags(extra)
                    .open(&id.path)
            };
            let f = match open(libc::O_NOATIME) {
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => open(0),
                r => r,
            }
            .with_context(|| format!("opening mapped file {}", id.path))?;
            let fd = above(OwnedFd::from(f), min)?;
            map_fds.insert(id.path.clone(), fd.as_raw_fd());
            Ok(Some(fd))
        }
        VmaKind::SharedAnon { ino } => {
            let key = map_key(v).context("mapping key")?;
            let size = v.offset + (v.end - v.start);
            let obj = match shared.shared_anon.get(ino) {
                Some(f) => f.try_clone()?,
                None => {
                    let f = memfd_rw(ckpt_tracer::maps::SHARED_ANON_MEMFD)?;
                    shared.shared_anon.insert(*ino, f.try_clone()?);
                    f
                }
            };
            // The object must cover every mapping of it in the whole tree.
            // SAFETY: `libc::stat` is a plain C struct of integers: all-zero bytes are a valid
            // value, and fstat overwrites it.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            cvt(
                // SAFETY: fstat(2) writes one `struct stat` into `st`, a local of exactly
                // that type; `obj` is our own open memfd.
                unsafe { libc::fstat(obj.as_raw_fd(), &mut st) },
                "fstat of a memfd",
            )?;
            if (st.st_size as u64) < size {
                cvt(
                    // SAFETY: ftruncate(2) on `obj`, our own open memfd, with an integer
                    // length; no pointer is involved.
                    unsafe { libc::ftruncate(obj.as_raw_fd(), size as i64) },
                    "sizing shared memory",
                )?;
            }
            if map_fds.contains_key(&key) {
                return Ok(None);
            }
            let fd = above(obj, min)?;
            map_fds.insert(key, fd.as_raw_fd());
            Ok(Some(fd))
        }
        VmaKind::Unlinked { .. } | VmaKind::DeletedFile { .. } => {
            let backing = match &v.kind {
                VmaKind::DeletedFile { file, meta } => {
                    ckpt_tracer::fd::memfd::backing_of_deleted(&mut shared.kinds, file, meta)?
                }
                VmaKind::Unlinked { file } => {
                    ckpt_tracer::fd::memfd::backing(&mut shared.kinds, file, 0, -1)?
                }
                _ => unreachable!("matched above"),
            };
            let key = map_key(v).context("mapping key")?;
            if map_fds.contains_key(&key) {
                return Ok(None);
            }
            let mode = if writable_shared {
                libc::O_RDWR
            } else {
                libc::O_RDONLY
            };
            // O_NOATIME where we may: the loader's mmap would give a deleted file
            // restored with its times a new atime.
            let path = format!("/proc/self/fd/{backing}");
            let what = format!("the mapping at {:#x}", v.start);
            let f = match ckpt_tracer::fd::open(&path, mode | libc::O_NOATIME, &what) {
                Ok(f) => f,
                Err(_) => ckpt_tracer::fd::open(&path, mode, &what)?,
            };
            let fd = above(f, min)?;
            map_fds.insert(key, fd.as_raw_fd());
            Ok(Some(fd))
        }
        _ => Ok(None),
    }
}

/// A new memfd, read-write, close-on-exec.
fn memfd_rw(name: &str) -> Result<OwnedFd> {
    let c = CString::new(name)?;
    // SAFETY: memfd_create returns a descriptor we own.
    let fd = cvt(
        unsafe { libc::memfd_create(c.as_ptr(), libc::MFD_CLOEXEC) },
        "creating a memfd",
    )?;
    // SAFETY: `fd` was just returned by a successful memfd_create (cvt rejects negatives):
    // a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
