//! inotify(7): its watches, each with its watch descriptor number, path and mask.
//! Dump: fdinfo's `inotify wd:` lines give inode, device, mask and a file handle; the
//! path is found by opening that handle (open_by_handle_at, root only). Restore: a new
//! instance whose watches get their saved numbers back (the kernel hands them out in
//! order, so the numbers in between are taken and released on a spare memfd). Events
//! queued and not yet read cannot be put back (nothing writes into an instance): a dump
//! with any (FIONREAD of a pidfd_getfd copy) is refused, naming how many bytes, rather
//! than losing them; a later checkpoint, once the program read them, succeeds. O_NONBLOCK
//! is in the fd flags.

use super::{owned, set_status_flags, Dump, Kind, RestoreError, RestoreResult, Shared};
use crate::error::{Result, TraceError};
use crate::proc;
use crate::state::{Fd, FdKind, InotifyWatch};
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

pub const KIND: Kind = Kind {
    dump,
    dump_process: None,
    dump_tree: None,
    restore,
    finish: None,
    late: None,
    describe,
};

fn dump(d: &mut Dump) -> Option<Result<FdKind>> {
    d.is_anon("inotify")
        .then(|| inotify_of(d.pid, d.fd, d.info))
}

/// The bytes of events queued on descriptor `fd` of `pid`, read through a copy of it.
pub(super) fn queued_bytes(pid: i32, fd: i32) -> io::Result<i32> {
    let copy = crate::procinfo::pidfd_getfd(pid, fd)?;
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int to `n`; `copy` is our own open descriptor.
    if unsafe { libc::ioctl(copy.as_raw_fd(), libc::FIONREAD, &mut n) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n)
}

fn inotify_of(pid: i32, fd: i32, info: &proc::FdInfo) -> Result<FdKind> {
    let unsupported = |kind: String| TraceError::UnsupportedFd { pid, fd, kind };
    let queued = queued_bytes(pid, fd)
        .map_err(|e| TraceError::io(pid, format!("reading the queue of inotify fd {fd}"), e))?;
    if queued > 0 {
        return Err(unsupported(format!(
            "inotify instance with {queued} bytes of events queued, not yet read (they cannot be put back into a new instance)"
        )));
    }
    let mut watches = Vec::new();
    for w in proc::parse_inotify(&info.text).map_err(super::bad(pid, fd))? {
        let (wd, ino, dev, mask) = (w.wd, w.ino, proc::kdev_to_dev(w.sdev), w.mask);
        let path = watch_path(dev, ino, w.handle).map_err(|why| {
            unsupported(format!(
                "inotify watch wd {wd} on inode {ino} whose path cannot be found ({why})"
            ))
        })?;
        watches.push(InotifyWatch {
            wd,
            path,
            mask,
            dev,
            ino,
        });
    }
    watches.sort_by_key(|w| w.wd);
    Ok(FdKind::Inotify { watches })
}

fn restore(_pid: i32, fd: &Fd, _shared: &mut Shared) -> Option<RestoreResult<OwnedFd>> {
    match &fd.kind {
        FdKind::Inotify { watches } => Some(inotify(watches, fd.flags)),
        _ => None,
    }
}

fn describe(kind: &FdKind) -> Option<String> {
    match kind {
        FdKind::Inotify { watches } => Some(format!("inotify, {} watch(es)", watches.len())),
        _ => None,
    }
}

/// A mount point of the filesystem `dev` in our mount namespace (the one mounting its
/// root, if any).
fn mount_of(dev: u64) -> std::result::Result<Option<String>, String> {
    let want = format!("{}:{}", libc::major(dev), libc::minor(dev));
    let mut best: Option<String> = None;
    for m in proc::own_mounts()? {
        if m.majmin != want {
            continue;
        }
        if m.root == "/" {
            return Ok(Some(m.point));
        }
        best.get_or_insert(m.point);
    }
    Ok(best)
}

/// The path of the watched inode: open_by_handle_at(2) with the handle fdinfo shows (needs
/// CAP_DAC_READ_SEARCH, i.e. root), then the name of what it opened.
pub(super) fn watch_path(
    dev: u64,
    ino: u64,
    handle: Option<(i32, Vec<u8>)>,
) -> std::result::Result<String, String> {
    let (htype, bytes) =
        handle.ok_or("its filesystem gives no file handle; ckpt does not search by inode")?;
    let mnt = mount_of(dev)?.ok_or("its filesystem is not mounted here")?;
    let mnt_c = std::ffi::CString::new(mnt.clone()).map_err(|e| e.to_string())?;
    // SAFETY: open(2) with a valid C string.
    let mfd = unsafe {
        libc::open(
            mnt_c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if mfd < 0 {
        return Err(format!("opening {mnt}: {}", io::Error::last_os_error()));
    }
    // SAFETY: `mfd` was just returned by a successful open(2) (checked >= 0 above), so it
    // is a fresh descriptor that nothing else owns; the OwnedFd becomes its only owner and
    // closes it once.
    let mfd = unsafe { OwnedFd::from_raw_fd(mfd) };
    // struct file_handle { u32 handle_bytes; i32 handle_type; u8 f_handle[]; }
    let mut fh = Vec::with_capacity(8 + bytes.len());
    fh.extend_from_slice(&(bytes.len() as u32).to_ne_bytes());
    fh.extend_from_slice(&htype.to_ne_bytes());
    fh.extend_from_slice(&bytes);
    // SAFETY: the handle buffer is live and sized as its header says.
    let r = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mfd.as_raw_fd(),
            fh.as_ptr(),
            libc::O_PATH | libc::O_CLOEXEC,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        return Err(if e.raw_os_error() == Some(libc::EPERM) {
            "open_by_handle_at needs CAP_DAC_READ_SEARCH: dump as root".to_string()
        } else {
            format!("open_by_handle_at: {e}")
        });
    }
    // SAFETY: `r` was just returned by a successful open_by_handle_at(2) (checked >= 0
    // above): a fresh descriptor (it fits an i32, as every fd does) that nothing else owns
    // or closes.
    let f = unsafe { OwnedFd::from_raw_fd(r as i32) };
    let path = std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd()))
        .map_err(|e| e.to_string())?
        .to_string_lossy()
        .into_owned();
    if path.ends_with(" (deleted)") || !path.starts_with('/') {
        return Err(format!("it has no name any more ({path})"));
    }
    match std::fs::metadata(&path) {
        Ok(md) if md.ino() == ino && md.dev() == dev => Ok(path),
        _ => Err(format!("{path} is not reachable under that name")),
    }
}

/// An inotify instance with the saved watches under their saved watch descriptors. The
/// kernel hands out wds in increasing order (cyclically), so the wds of watches removed
/// before the checkpoint are used up by adding and removing a watch on a file of ours.
/// A watch that gets another wd fails the restore.
fn inotify(watches: &[InotifyWatch], flags: i32) -> RestoreResult<OwnedFd> {
    // SAFETY: inotify_init1(2) takes only flags and returns a new descriptor or -1.
    let i = owned(
        unsafe { libc::inotify_init1(libc::IN_CLOEXEC) },
        "creating an inotify instance",
    )?;
    let mut spare: Option<(OwnedFd, CString)> = None;
    let mut next = 1i32;
    for w in watches {
        if w.wd < next {
            return Err(RestoreError::msg(format!(
                "the image lists inotify watch {} twice or out of order",
                w.wd
            )));
        }
        if w.wd - next > 1 << 22 {
            return Err(RestoreError::msg(format!(
                "inotify watch {} on {} cannot get its number back ({} numbers to skip)",
                w.wd,
                w.path,
                w.wd - next
            )));
        }
        while next < w.wd {
            if spare.is_none() {
                // SAFETY: memfd_create(2) reads the NUL-terminated name literal and
                // returns a new descriptor or -1.
                let m = owned(
                    unsafe {
                        libc::memfd_create(c"ckpt-inotify-spare".as_ptr(), libc::MFD_CLOEXEC)
                    },
                    "creating memfd ckpt-inotify-spare",
                )?;
                let p = CString::new(format!("/proc/self/fd/{}", m.as_raw_fd()))
                    .expect("no NUL in a /proc path");
                spare = Some((m, p));
            }
            let p = &spare.as_ref().unwrap().1;
            // SAFETY: inotify calls on our own descriptor with a valid C string.
            let wd = unsafe { libc::inotify_add_watch(i.as_raw_fd(), p.as_ptr(), libc::IN_OPEN) };
            if wd < 0 {
                return Err(RestoreError::context(
                    "skipping an inotify watch number",
                    std::io::Error::last_os_error(),
                ));
            }
            // SAFETY: inotify_rm_watch(2) on our own inotify descriptor `i` with the wd
            // just returned; both are integers, no memory is touched.
            unsafe { libc::inotify_rm_watch(i.as_raw_fd(), wd) };
            next = wd + 1;
        }
        let p = CString::new(w.path.clone())
            .map_err(|e| RestoreError::context(format!("watching {} (wd {})", w.path, w.wd), e))?;
        // SAFETY: as above.
        let wd = unsafe { libc::inotify_add_watch(i.as_raw_fd(), p.as_ptr(), w.mask) };
        if wd < 0 {
            return Err(RestoreError::context(
                format!("watching {} (wd {})", w.path, w.wd),
                std::io::Error::last_os_error(),
            ));
        }
        if wd != w.wd {
            return Err(RestoreError::msg(format!(
                "the kernel gave the watch on {} wd {wd} instead of the saved wd {}",
                w.path, w.wd
            )));
        }
        next = wd + 1;
    }
    set_status_flags(&i, flags)?;
    Ok(i)
}
