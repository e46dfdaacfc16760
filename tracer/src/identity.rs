//! The identity of files: stat and the ELF build-id, so that a restore can refuse files
//! that changed since the checkpoint; and the per-dump cache of it.
//!
//! Leases: an open(2) of a file breaks a lease another holder has on it that conflicts
//! (an open for reading breaks a write lease, one for writing any lease): the holder is
//! signalled and the open waits for it to give the lease up, up to
//! /proc/sys/fs/lease-break-time (45 s), after which the kernel takes the lease away. A
//! holder that ckpt has frozen cannot answer, so such an open would stall the dump and
//! then cost the process its lease. A dump therefore never opens a file that has a lease
//! (as /proc/locks shows when the dump begins, [`IdentityCache::for_dump`]): it reads one
//! through a copy of the process's own descriptor on it (pidfd_getfd, not a new open);
//! and every other open it makes of a process's files is O_NONBLOCK, so that a lease
//! taken meanwhile makes it fail at once (EWOULDBLOCK, with a message) instead of
//! waiting.

use crate::state::FileIdentity;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// Identity of files by path, computed once per dump.
#[derive(Default)]
pub struct IdentityCache {
    by_path: HashMap<String, FileIdentity>,
    /// (dev, ino) of the memfds and deleted files whose content is already stored.
    pub(crate) unlinked_stored: HashSet<(u64, u64)>,
    /// The extents stored of those read through a process's memory (an ordinary user's
    /// mapping without a descriptor: `fd::memfd`), for the other processes that map them.
    pub(crate) unlinked_through_memory: HashMap<(u64, u64), Vec<(u64, u64)>>,
    /// The process being dumped (0: none, a cache for tests).
    pid: i32,
    /// (dev, ino) of every file with a lease on it when the dump began.
    leased: HashSet<(u64, u64)>,
}

impl IdentityCache {
    /// The cache of the dump of `pid`, with the files that have a lease (/proc/locks).
    pub fn for_dump(pid: i32) -> crate::error::Result<IdentityCache> {
        let leased = crate::proc::locks(pid)?
            .into_iter()
            .filter(|l| !l.blocked && matches!(l.class.as_str(), "LEASE" | "DELEG"))
            .filter_map(|l| l.file)
            .collect();
        Ok(IdentityCache {
            pid,
            leased,
            ..IdentityCache::default()
        })
    }

    /// Whether the file `(dev, ino)` had a lease on it when the dump began.
    pub fn leased(&self, dev: u64, ino: u64) -> bool {
        self.leased.contains(&(dev, ino))
    }

    /// The identity of the file at `path`, once per path.
    pub fn identity(&mut self, path: &str) -> io::Result<FileIdentity> {
        if let Some(id) = self.by_path.get(path) {
            return Ok(id.clone());
        }
        let id = self.identity_at(Path::new(path), path)?;
        self.by_path.insert(path.to_string(), id.clone());
        Ok(id)
    }

    /// [`file_identity`] of `open_path` (a path, or a /proc/PID/fd link) recorded under
    /// `path`; a leased file is read through the process's own descriptor on it.
    pub fn identity_at(&mut self, open_path: &Path, path: &str) -> io::Result<FileIdentity> {
        let md = std::fs::metadata(open_path)?;
        if !self.leased(md.dev(), md.ino()) {
            return file_identity(open_path, path);
        }
        let build_id = if md.is_file() {
            self.open(open_path, md.dev(), md.ino())
                .ok()
                .and_then(|f| elf_build_id_of(&f).unwrap_or(None))
        } else {
            None
        };
        Ok(identity_of(&md, path, build_id))
    }

    /// The file `(dev, ino)` reachable at `open_path`, open for reading, without
    /// breaking a lease: a leased file through a copy of a readable descriptor of the
    /// process on it (an error if it has none), any other one opened O_NONBLOCK.
    pub fn open(&self, open_path: &Path, dev: u64, ino: u64) -> io::Result<File> {
        if self.leased(dev, ino) {
            return copy_of_descriptor_on(self.pid, dev, ino).and_then(|f| {
                f.ok_or_else(|| {
                    io::Error::other(
                        "it has a lease on it, and no descriptor of the process reads it (opening it would break the lease)",
                    )
                })
            });
        }
        open_nonblocking(open_path)
    }
}

/// Open `path` for reading with O_NONBLOCK: if a lease is on it that the open would
/// break, fail at once with a message rather than wait for the holder. With O_NOATIME
/// where the caller may (the file's owner, or CAP_FOWNER), so that reading an ELF
/// header or a file's content for the image does not change the atime the process may
/// check (relatime updates it on a read when it is older than the mtime).
pub fn open_nonblocking(path: &Path) -> io::Result<File> {
    let open = |extra| {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | extra)
            .open(path)
    };
    match open(libc::O_NOATIME) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => open(0),
        r => r,
    }
    .map_err(|e| {
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                io::Error::new(
                    e.kind(),
                    "another process holds a lease on it, which an open would break (ckpt does not wait for the lease to be given up)",
                )
            } else {
                e
            }
        })
}

/// A copy (pidfd_getfd) of a descriptor of `pid` on the file `(dev, ino)` that is open
/// for reading; `None` if it has none.
fn copy_of_descriptor_on(pid: i32, dev: u64, ino: u64) -> io::Result<Option<File>> {
    for fd in crate::proc::fd_numbers(pid)? {
        let Ok(md) = std::fs::metadata(crate::proc::path(pid, &format!("fd/{fd}"))) else {
            continue;
        };
        if (md.dev(), md.ino()) != (dev, ino) {
            continue;
        }
        let Ok(info) = crate::proc::fdinfo(pid, fd) else {
            continue;
        };
        if info.flags & libc::O_ACCMODE == libc::O_WRONLY || info.flags & libc::O_PATH != 0 {
            continue;
        }
        return crate::procinfo::pidfd_getfd(pid, fd).map(|f| Some(File::from(f)));
    }
    Ok(None)
}

/// The whole content of `f`, read with pread: the offset of the open file description
/// (maybe the process's own, [`IdentityCache::open`]) does not move.
pub fn read_all_at(f: &File) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut data = vec![0u8; f.metadata()?.len() as usize];
    let mut got = 0;
    loop {
        if got == data.len() {
            data.resize(got + 65536, 0);
        }
        match f.read_at(&mut data[got..], got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    data.truncate(got);
    Ok(data)
}

fn identity_of(md: &std::fs::Metadata, path: &str, build_id: Option<Vec<u8>>) -> FileIdentity {
    FileIdentity {
        path: path.to_string(),
        dev: md.dev(),
        ino: md.ino(),
        size: md.size(),
        mtime_ns: md.mtime() as i128 * 1_000_000_000 + md.mtime_nsec() as i128,
        mode: md.mode(),
        build_id,
    }
}

/// stat() of `open_path` (which may be a /proc/PID/fd link), recorded under `path`.
/// A file being leased is opened O_NONBLOCK (see the module doc): an error then, not a
/// wait.
pub fn file_identity(open_path: &Path, path: &str) -> io::Result<FileIdentity> {
    let md = std::fs::metadata(open_path)?;
    let build_id = if md.is_file() {
        match elf_build_id(open_path) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(e),
            r => r.unwrap_or(None),
        }
    } else {
        None
    };
    Ok(identity_of(&md, path, build_id))
}

/// The GNU build-id note of an ELF file, None for other files. Reads only the ELF
/// header, the program headers and the PT_NOTE segments, not the whole file. Opened
/// O_NONBLOCK ([`open_nonblocking`]).
pub fn elf_build_id(path: &Path) -> io::Result<Option<Vec<u8>>> {
    elf_build_id_of(&open_nonblocking(path)?)
}

/// [`elf_build_id`] of an open file (read with pread: its offset does not move).
pub fn elf_build_id_of(f: &File) -> io::Result<Option<Vec<u8>>> {
    use goblin::container::{Container, Ctx, Endian};
    use goblin::elf::program_header::ProgramHeader;
    use std::os::unix::fs::FileExt;
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
