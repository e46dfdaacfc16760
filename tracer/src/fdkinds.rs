//! Descriptor kinds beyond plain files and pipes, read from the outside while the process
//! is frozen: eventfd, timerfd, signalfd, inotify and epoll (from fdinfo), memfds and
//! regular files deleted after they were opened or mapped (content stored), and FIFOs.
//!
//! fdinfo formats (fs/eventfd.c, fs/timerfd.c, fs/signalfd.c, fs/notify/fdinfo.c,
//! fs/eventpoll.c):
//! - `eventfd-count: %16llx` (hex), `eventfd-id: %d`, `eventfd-semaphore: %d` (5.x+)
//! - `clockid: %d`, `ticks: %llu`, `settime flags: 0%o`, `it_value: (%llu, %llu)`,
//!   `it_interval: (%llu, %llu)`; it_value is the time left (0 once expired)
//! - `sigmask:\t%016x` (the accepted signals)
//! - `inotify wd:%x ino:%lx sdev:%x mask:%x ignored_mask:0 fhandle-bytes:%x
//!   fhandle-type:%x f_handle:%02x...` (all hex; sdev is a kernel dev_t)
//! - `tfd: %8d events: %8x data: %16llx  pos:%lli ino:%lx sdev:%x`

use crate::error::{Result, TraceError};
use crate::files::IdentityCache;
use crate::maps::MapEntry;
use crate::state::{EpollEntry, Fd, FdKind, InotifyWatch, UnlinkedFile, VmaKind};
use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt};

/// The most content ckpt stores for one memfd or deleted file.
pub const MAX_STORED_FILE: u64 = 256 << 20;

const TFD_TIMER_ABSTIME: i32 = 1;
const HUGETLBFS_MAGIC: i64 = 0x958458f6;

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// The value of the fdinfo line `key: value`.
fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.trim())
    })
}

/// `key:value` and `key: value` pairs of one fdinfo line, in order.
fn pairs(line: &str) -> Vec<(&str, &str)> {
    let mut out = Vec::new();
    let mut it = line.split_whitespace().peekable();
    while let Some(tok) = it.next() {
        if let Some(k) = tok.strip_suffix(':') {
            if let Some(v) = it.next() {
                out.push((k, v));
            }
        } else if let Some((k, v)) = tok.split_once(':') {
            out.push((k, v));
        }
    }
    out
}

fn get<'a>(p: &[(&str, &'a str)], key: &str) -> Option<&'a str> {
    p.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

fn hex(v: Option<&str>) -> Option<u64> {
    u64::from_str_radix(v?.trim(), 16).ok()
}

/// `(sec, nsec)` → nanoseconds.
fn timespec_ns(v: Option<&str>) -> Option<u64> {
    let (s, n) = v?
        .trim()
        .strip_prefix('(')?
        .strip_suffix(')')?
        .split_once(',')?;
    let (s, n): (u64, u64) = (s.trim().parse().ok()?, n.trim().parse().ok()?);
    s.checked_mul(1_000_000_000)?.checked_add(n)
}

/// A kernel-internal dev_t (as fdinfo prints s_dev) as userspace sees it in st_dev.
fn kdev_to_dev(k: u64) -> u64 {
    libc::makedev((k >> 20) as u32, (k & 0xfffff) as u32)
}

fn clock_now_ns(clockid: i32) -> u64 {
    // The alarm clocks read like the clocks they are based on.
    let c = match clockid {
        libc::CLOCK_REALTIME_ALARM => libc::CLOCK_REALTIME,
        libc::CLOCK_BOOTTIME_ALARM => libc::CLOCK_BOOTTIME,
        c => c,
    };
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime into a local.
    unsafe { libc::clock_gettime(c, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Classify an `anon_inode:` descriptor; kinds not listed here are refused with
/// [`TraceError::UnsupportedFd`].
pub fn anon_fd(pid: i32, fd: i32, name: &str) -> Result<FdKind> {
    let unsupported = |kind: String| TraceError::UnsupportedFd { pid, fd, kind };
    if !matches!(
        name,
        "[eventfd]" | "[timerfd]" | "[signalfd]" | "inotify" | "[eventpoll]"
    ) {
        return Err(unsupported(name.to_string()));
    }
    let text = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}"))
        .map_err(|e| TraceError::io(pid, format!("fdinfo {fd}"), e))?;
    let bad = |what: &str| {
        TraceError::io(
            pid,
            format!("fd {fd} ({name})"),
            invalid(format!("unexpected fdinfo: no valid {what}")),
        )
    };
    match name {
        "[eventfd]" => Ok(FdKind::Eventfd {
            count: hex(field(&text, "eventfd-count")).ok_or_else(|| bad("eventfd-count"))?,
            // Older kernels do not show it: taken as a plain counter.
            semaphore: field(&text, "eventfd-semaphore") == Some("1"),
        }),
        "[timerfd]" => {
            let clockid: i32 = field(&text, "clockid")
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| bad("clockid"))?;
            let settime_flags = field(&text, "settime flags")
                .and_then(|v| i32::from_str_radix(v, 8).ok())
                .ok_or_else(|| bad("settime flags"))?;
            let ticks = field(&text, "ticks")
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| bad("ticks"))?;
            let value_ns = timespec_ns(field(&text, "it_value")).ok_or_else(|| bad("it_value"))?;
            let interval_ns =
                timespec_ns(field(&text, "it_interval")).ok_or_else(|| bad("it_interval"))?;
            let deadline_ns = if settime_flags & TFD_TIMER_ABSTIME != 0 {
                clock_now_ns(clockid) + value_ns
            } else {
                0
            };
            Ok(FdKind::Timerfd {
                clockid,
                settime_flags,
                ticks,
                value_ns,
                interval_ns,
                deadline_ns,
            })
        }
        "[signalfd]" => Ok(FdKind::Signalfd {
            mask: hex(field(&text, "sigmask")).ok_or_else(|| bad("sigmask"))?,
        }),
        "inotify" => {
            let mut watches = Vec::new();
            for line in text.lines().filter(|l| l.starts_with("inotify ")) {
                let p = pairs(line.trim_start_matches("inotify "));
                let wd = hex(get(&p, "wd")).ok_or_else(|| bad("inotify wd"))? as i32;
                let ino = hex(get(&p, "ino")).ok_or_else(|| bad("inotify ino"))?;
                let dev = kdev_to_dev(hex(get(&p, "sdev")).ok_or_else(|| bad("inotify sdev"))?);
                let mask = hex(get(&p, "mask")).ok_or_else(|| bad("inotify mask"))? as u32;
                let handle = match (
                    hex(get(&p, "fhandle-type")),
                    get(&p, "f_handle").and_then(unhex),
                ) {
                    (Some(t), Some(h)) if !h.is_empty() => Some((t as i32, h)),
                    _ => None,
                };
                let path = watch_path(dev, ino, handle).map_err(|why| {
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
        _ => {
            // "[eventpoll]"
            let mut entries = Vec::new();
            for line in text.lines().filter(|l| l.starts_with("tfd:")) {
                let p = pairs(line);
                let tfd: i32 = get(&p, "tfd")
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| bad("epoll tfd"))?;
                let events = hex(get(&p, "events")).ok_or_else(|| bad("epoll events"))? as u32;
                let data = hex(get(&p, "data")).ok_or_else(|| bad("epoll data"))?;
                // The entry is keyed by (file, fd number): the number must still name that
                // file in this process, or the entry cannot be added back.
                let ino = hex(get(&p, "ino"));
                let sdev = hex(get(&p, "sdev")).map(kdev_to_dev);
                let toff = entries.iter().filter(|e: &&EpollEntry| e.fd == tfd).count();
                match std::fs::metadata(format!("/proc/{pid}/fd/{tfd}")) {
                    Ok(md)
                        if ino.is_none_or(|i| i == md.ino())
                            && sdev.is_none_or(|d| d == md.dev())
                            && same_epoll_target(pid, fd, tfd, toff) != Some(false) => {}
                    Ok(_) => {
                        return Err(unsupported(format!(
                            "epoll entry for fd {tfd}, which now names another file (the watched file was closed under that number, or belongs to another process)"
                        )))
                    }
                    Err(_) => {
                        return Err(unsupported(format!(
                            "epoll entry for fd {tfd}, which is not open in the process (closed while still registered, or a descriptor of another process)"
                        )))
                    }
                }
                entries.push(EpollEntry {
                    fd: tfd,
                    events,
                    data,
                });
            }
            entries.sort_by_key(|e| e.fd);
            Ok(FdKind::Epoll { entries })
        }
    }
}

/// Whether the file registered in epoll `epfd` under number `tfd` (the `toff`-th such
/// entry) is the file open at `tfd`: kcmp(KCMP_EPOLL_TFD). Anonymous-inode files all
/// share one inode, so fdinfo's `ino` cannot tell them apart. None: kcmp is not
/// available (CONFIG_KCMP off).
fn same_epoll_target(pid: i32, epfd: i32, tfd: i32, toff: usize) -> Option<bool> {
    const KCMP_EPOLL_TFD: libc::c_long = 7;
    #[repr(C)]
    struct Slot {
        efd: u32,
        tfd: u32,
        toff: u32,
    }
    let slot = Slot {
        efd: epfd as u32,
        tfd: tfd as u32,
        toff: toff as u32,
    };
    // SAFETY: kcmp reads the slot struct, which lives across the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            pid,
            pid,
            KCMP_EPOLL_TFD,
            tfd as libc::c_long,
            &slot as *const Slot,
        )
    };
    match r {
        0 => Some(true),
        1..=3 => Some(false),
        // ENOENT: no such entry or descriptor; other errors: no kcmp here.
        _ if io::Error::last_os_error().raw_os_error() == Some(libc::ENOENT) => Some(false),
        _ => None,
    }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// A mount point of the filesystem `dev` in our mount namespace (the one mounting its
/// root, if any).
fn mount_of(dev: u64) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = format!("{}:{}", libc::major(dev), libc::minor(dev));
    let mut best: Option<String> = None;
    for l in text.lines() {
        let f: Vec<&str> = l.split(' ').collect();
        if f.len() < 5 || f[2] != want {
            continue;
        }
        let point = f[4].replace("\\040", " ");
        if f[3] == "/" {
            return Some(point);
        }
        best.get_or_insert(point);
    }
    best
}

/// The path of the watched inode: open_by_handle_at(2) with the handle fdinfo shows (needs
/// CAP_DAC_READ_SEARCH, i.e. root), then the name of what it opened.
fn watch_path(
    dev: u64,
    ino: u64,
    handle: Option<(i32, Vec<u8>)>,
) -> std::result::Result<String, String> {
    let (htype, bytes) =
        handle.ok_or("its filesystem gives no file handle; ckpt does not search by inode")?;
    let mnt = mount_of(dev).ok_or("its filesystem is not mounted here")?;
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
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: fstatfs/fcntl on our own descriptor.
    if unsafe { libc::fstatfs(f.as_raw_fd(), &mut st) } == 0 && st.f_type as i64 == HUGETLBFS_MAGIC
    {
        return Err("a hugetlbfs file".into());
    }
    if memfd {
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
    let link = format!("/proc/{pid}/fd/{fd}");
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
    let by_fd = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .and_then(|d| {
            d.filter_map(|e| e.ok()).map(|e| e.path()).find(|p| {
                std::fs::metadata(p).is_ok_and(|md| md.ino() == m.inode && md.dev() == dev)
            })
        });
    let open_path = match by_fd {
        Some(p) => p.to_string_lossy().into_owned(),
        None => format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end),
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
                *data = crate::files::peek_pipe(pid, fdnum)
                    .map_err(|e| TraceError::io(pid, format!("reading FIFO fd {fdnum}"), e))?;
            }
        }
    }
    Ok(())
}
