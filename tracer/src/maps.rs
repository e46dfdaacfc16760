//! The address space of a process: the regions of /proc/PID/smaps (read and parsed in
//! [`crate::proc::smaps`]) and /proc/PID/pagemap (which pages hold data worth storing).

use crate::error::{Result, TraceError};
use crate::identity::IdentityCache;
use crate::proc::VmFlags;
use crate::state::{PageRun, Vma, VmaKind};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

pub const PAGE: u64 = 4096;

/// Name of the memfd a restore rebuilds shared anonymous memory on, as /proc/PID/maps
/// shows it; a later dump treats it as shared anonymous memory again.
pub const SHARED_ANON_MEMFD: &str = "ckpt-shared-anon";
const SHARED_ANON_MEMFD_PREFIX: &str = "/memfd:ckpt-shared-anon";

pub use crate::proc::MapEntry;

/// Decide how a region is saved; refuse what cannot be restored faithfully.
pub fn classify(pid: i32, m: &MapEntry, ids: &mut IdentityCache) -> Result<Option<VmaKind>> {
    let unsupported = |what: String| TraceError::Unsupported { pid, what };
    match m.name.as_str() {
        "[vsyscall]" => return Ok(None),
        "[vdso]" => return Ok(Some(VmaKind::Vdso)),
        "[vvar]" => return Ok(Some(VmaKind::Vvar)),
        "[vvar_vclock]" => return Ok(Some(VmaKind::VvarVclock)),
        _ => {}
    }
    if m.has_flag(VmFlags::HT) {
        return Err(unsupported(format!(
            "hugetlb mapping at {:#x} ({})",
            m.start, m.name
        )));
    }
    if m.has_flag(VmFlags::IO) || m.has_flag(VmFlags::PF) {
        return Err(unsupported(format!(
            "device mapping at {:#x} ({})",
            m.start, m.name
        )));
    }
    // The inode of a SysV attachment is the segment's id, which may be 0. The group
    // `sysvipc` saves the segment and checks that the attachment is whole.
    if m.name.starts_with("/SYSV") && m.shared() {
        return Ok(Some(VmaKind::SysvShm {
            shmid: m.inode as i32,
            may_write: m.has_flag(VmFlags::MW),
        }));
    }
    if m.inode == 0 {
        if m.shared() {
            return Err(unsupported(format!(
                "shared mapping at {:#x} ({})",
                m.start, m.name
            )));
        }
        if m.name.starts_with('[')
            && !matches!(m.name.as_str(), "[heap]" | "[stack]")
            && !m.name.starts_with("[anon:")
            && !m.name.starts_with("[stack:")
        {
            return Err(unsupported(format!(
                "special mapping {} at {:#x}",
                m.name, m.start
            )));
        }
        return Ok(Some(VmaKind::Anon));
    }
    if m.shared()
        && (m.name.starts_with("/dev/zero") || m.name.starts_with(SHARED_ANON_MEMFD_PREFIX))
    {
        return Ok(Some(VmaKind::SharedAnon { ino: m.inode }));
    }
    if m.name.starts_with("/memfd:") {
        return crate::fd::memfd::vma(pid, m, ids).map(Some);
    }
    if m.name.starts_with("/[aio]") {
        return crate::aio::vma(pid, m).map(Some);
    }
    if m.name.ends_with(" (deleted)") && m.name.starts_with('/') {
        return crate::fd::memfd::vma(pid, m, ids).map(Some);
    }
    if !m.name.starts_with('/') {
        return Err(unsupported(format!(
            "mapping of {} at {:#x}",
            m.name, m.start
        )));
    }
    let id = ids
        .identity(&m.name)
        .map_err(|e| TraceError::io(pid, format!("reading mapped file {}", m.name), e))?;
    if id.ino != m.inode {
        return Err(unsupported(format!(
            "mapping of {} at {:#x}: the file was replaced after it was mapped",
            m.name, m.start
        )));
    }
    let meta = std::fs::metadata(&m.name)
        .map_err(|e| TraceError::io(pid, format!("reading mapped file {}", m.name), e))?;
    if !meta.file_type().is_file() {
        return Err(unsupported(format!(
            "mapping of non-regular file {} at {:#x}",
            m.name, m.start
        )));
    }
    Ok(Some(VmaKind::File { id }))
}

const PM_PRESENT: u64 = 1 << 63;
const PM_SWAPPED: u64 = 1 << 62;
const PM_FILE: u64 = 1 << 61;

/// Append the page at `addr` to `runs`, extending the last run when it is adjacent.
pub fn push_page(runs: &mut Vec<PageRun>, addr: u64) {
    match runs.last_mut() {
        Some(r) if r.addr + r.npages * PAGE == addr => r.npages += 1,
        _ => runs.push(PageRun {
            addr,
            npages: 1,
            file_off: 0,
            hash: 0,
        }),
    }
}

/// The runs of pages of a region whose content must be stored: for private mappings the
/// pages that are anonymous (present and not file pages, or swapped); for shared
/// anonymous memory every page.
pub fn stored_runs(pagemap: &File, vma: &Vma) -> io::Result<Vec<PageRun>> {
    let mut runs: Vec<PageRun> = Vec::new();
    let mut push = |addr: u64| push_page(&mut runs, addr);
    match vma.kind {
        VmaKind::Vdso | VmaKind::Vvar | VmaKind::VvarVclock | VmaKind::AioRing(_) => {
            return Ok(runs)
        }
        // Saved with the segment (`Attr::SysvIpc`).
        VmaKind::SysvShm { .. } => return Ok(runs),
        VmaKind::File { .. } | VmaKind::Unlinked { .. } | VmaKind::DeletedFile { .. }
            if vma.shared =>
        {
            return Ok(runs)
        }
        VmaKind::SharedAnon { .. } => {
            // Pages of the object may have been written through another mapping (even
            // one of a process that is gone): read them all, unless the caller knew
            // better (see `shared_anon_runs`).
            let mut a = vma.start;
            while a < vma.end {
                push(a);
                a += PAGE;
            }
            return Ok(runs);
        }
        _ => {}
    }
    let is_file = matches!(
        vma.kind,
        VmaKind::File { .. } | VmaKind::Unlinked { .. } | VmaKind::DeletedFile { .. }
    );
    if let Some(runs) = scan_runs(pagemap, vma.start, vma.end, is_file)? {
        return Ok(runs);
    }
    pagemap_runs(pagemap, vma.start, vma.end, is_file)
}

/// [`stored_runs`] of a private region by reading its pagemap entries, 8 bytes a page.
fn pagemap_runs(pagemap: &File, start: u64, end: u64, is_file: bool) -> io::Result<Vec<PageRun>> {
    let mut runs: Vec<PageRun> = Vec::new();
    let mut push = |addr: u64| push_page(&mut runs, addr);
    const CHUNK: u64 = 64 * 1024; // pages per pagemap read
    let mut buf = vec![0u8; (CHUNK * 8) as usize];
    let mut page = start / PAGE;
    let end = end / PAGE;
    while page < end {
        let n = (end - page).min(CHUNK);
        let b = &mut buf[..(n * 8) as usize];
        pagemap.read_exact_at(b, page * 8)?;
        for (i, e) in b.chunks_exact(8).enumerate() {
            let v = u64::from_le_bytes(e.try_into().unwrap());
            let store = if is_file {
                (v & PM_PRESENT != 0 && v & PM_FILE == 0) || v & PM_SWAPPED != 0
            } else {
                v & (PM_PRESENT | PM_SWAPPED) != 0
            };
            if store {
                push((page + i as u64) * PAGE);
            }
        }
        page += n;
    }
    Ok(runs)
}

/// `ioctl(PAGEMAP_SCAN)` (linux/fs.h, Linux 6.7+).
const PAGEMAP_SCAN: libc::c_ulong = 0xc060_6610; // _IOWR('f', 16, struct pm_scan_arg)
const PAGE_IS_FILE: u64 = 1 << 2;
const PAGE_IS_PRESENT: u64 = 1 << 3;
const PAGE_IS_SWAPPED: u64 = 1 << 4;

#[repr(C)]
#[derive(Default)]
struct PmScanArg {
    pub size: u64,
    pub flags: u64,
    pub start: u64,
    pub end: u64,
    pub walk_end: u64,
    pub vec: u64,
    pub vec_len: u64,
    pub max_pages: u64,
    pub category_inverted: u64,
    pub category_mask: u64,
    pub category_anyof_mask: u64,
    pub return_mask: u64,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
pub(crate) struct PageRegion {
    pub start: u64,
    pub end: u64,
    pub categories: u64,
}

/// What a PAGEMAP_SCAN asks: its flags and category masks (linux/fs.h).
#[derive(Default, Clone, Copy)]
pub(crate) struct ScanQuery {
    pub flags: u64,
    pub category_inverted: u64,
    pub category_mask: u64,
    pub category_anyof_mask: u64,
    pub return_mask: u64,
}

/// Every region of `[start, end)` matching `q`, the kernel's vector refilled until the
/// walk reaches `end`. The ioctl's error comes back as it is.
pub(crate) fn pagemap_scan(
    pagemap: &File,
    start: u64,
    end: u64,
    q: ScanQuery,
) -> io::Result<Vec<PageRegion>> {
    use std::os::fd::AsRawFd;
    let mut out = Vec::new();
    let mut regions = vec![PageRegion::default(); 1024];
    let mut at = start;
    while at < end {
        let mut arg = PmScanArg {
            size: std::mem::size_of::<PmScanArg>() as u64,
            flags: q.flags,
            start: at,
            end,
            vec: regions.as_mut_ptr() as u64,
            vec_len: regions.len() as u64,
            category_inverted: q.category_inverted,
            category_mask: q.category_mask,
            category_anyof_mask: q.category_anyof_mask,
            return_mask: q.return_mask,
            ..Default::default()
        };
        // SAFETY: PAGEMAP_SCAN reads `arg` and writes at most `vec_len` regions into
        // `regions`, both live for the call, and `arg.walk_end` back into `arg`.
        let n = unsafe { libc::ioctl(pagemap.as_raw_fd(), PAGEMAP_SCAN, &mut arg) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        out.extend_from_slice(&regions[..n as usize]);
        if arg.walk_end <= at {
            return Err(io::Error::other("PAGEMAP_SCAN made no progress"));
        }
        at = arg.walk_end;
    }
    Ok(out)
}

/// [`stored_runs`] of a private region with PAGEMAP_SCAN: the kernel returns the ranges
/// of pages that are present or swapped (and, for a file mapping, not file pages)
/// instead of 8 bytes a page. `None`: this kernel has no PAGEMAP_SCAN.
fn scan_runs(
    pagemap: &File,
    start: u64,
    end: u64,
    is_file: bool,
) -> io::Result<Option<Vec<PageRun>>> {
    let q = ScanQuery {
        // Not a file page (for a file mapping: one the process wrote, now its own).
        category_inverted: if is_file { PAGE_IS_FILE } else { 0 },
        category_mask: if is_file { PAGE_IS_FILE } else { 0 },
        category_anyof_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
        return_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
        ..Default::default()
    };
    let found = match pagemap_scan(pagemap, start, end, q) {
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTTY | libc::EINVAL)) => return Ok(None),
        r => r?,
    };
    let mut runs: Vec<PageRun> = Vec::new();
    for r in found {
        match runs.last_mut() {
            Some(last) if last.addr + last.npages * PAGE == r.start => {
                last.npages += (r.end - r.start) / PAGE
            }
            _ => runs.push(PageRun {
                addr: r.start,
                npages: (r.end - r.start) / PAGE,
                file_off: 0,
                hash: 0,
            }),
        }
    }
    Ok(Some(runs))
}

/// Whether this kernel has PAGEMAP_SCAN (Linux 6.7+), tried on our own stack
/// (`ckpt check`).
pub fn pagemap_scan_available() -> bool {
    let Ok(pagemap) = File::open("/proc/self/pagemap") else {
        return false;
    };
    let here = &pagemap as *const File as u64 & !(PAGE - 1);
    matches!(scan_runs(&pagemap, here, here + PAGE, false), Ok(Some(_)))
}

/// The pages of a shared anonymous mapping that exist in its memory object, found with
/// SEEK_DATA/SEEK_HOLE on the object itself (through /proc/PID/map_files, which needs
/// privileges). None when the object cannot be opened: the caller stores every page.
pub fn shared_anon_runs(pid: i32, vma: &Vma) -> Option<Vec<PageRun>> {
    use std::os::fd::AsRawFd;
    let f = File::open(crate::proc::path(
        pid,
        &format!("map_files/{:x}-{:x}", vma.start, vma.end),
    ))
    .ok()?;
    let fd = f.as_raw_fd();
    let (lo, hi) = (vma.offset, vma.offset + (vma.end - vma.start));
    let mut runs = Vec::new();
    let mut pos = lo;
    while pos < hi {
        // SAFETY: lseek on our own descriptor.
        let data = unsafe { libc::lseek(fd, pos as i64, libc::SEEK_DATA) };
        if data < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break; // no data after pos
            }
            return None;
        }
        let data = (data as u64).max(pos);
        if data >= hi {
            break;
        }
        // SAFETY: lseek(SEEK_HOLE) takes no pointer; `fd` is the descriptor of `f`, which
        // stays open until the end of this function.
        let hole = unsafe { libc::lseek(fd, data as i64, libc::SEEK_HOLE) };
        if hole < 0 {
            return None;
        }
        let start = data & !(PAGE - 1);
        let end = ((hole as u64).min(hi) + PAGE - 1) & !(PAGE - 1);
        runs.push(PageRun {
            addr: vma.start + (start - lo),
            npages: (end - start) / PAGE,
            file_off: 0,
            hash: 0,
        });
        pos = end;
    }
    Some(runs)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PAGEMAP_SCAN and the pagemap entries find the same pages of this process.
    #[test]
    fn scan_and_pagemap_agree() {
        let len = 64 * PAGE as usize;
        // SAFETY: a fresh private anonymous mapping of our own, unmapped below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        } as *mut u8;
        assert!(p as *mut libc::c_void != libc::MAP_FAILED);
        for page in [0usize, 1, 2, 7, 30, 31, 63] {
            // SAFETY: inside the mapping.
            unsafe { *p.add(page * PAGE as usize) = 1 };
        }
        // A page only read (the zero page: present) and one never touched.
        // SAFETY: inside the mapping.
        let _ = unsafe { std::ptr::read_volatile(p.add(40 * PAGE as usize)) };
        let pagemap = File::open("/proc/self/pagemap").unwrap();
        let (s, e) = (p as u64, p as u64 + len as u64);
        let read = pagemap_runs(&pagemap, s, e, false).unwrap();
        let scanned = scan_runs(&pagemap, s, e, false)
            .unwrap()
            .expect("PAGEMAP_SCAN (Linux 6.7 and later)");
        // SAFETY: our own mapping.
        unsafe { libc::munmap(p as *mut libc::c_void, len) };
        let pages = |r: &[PageRun]| -> Vec<u64> {
            r.iter()
                .flat_map(|r| (0..r.npages).map(move |i| (r.addr - s) / PAGE + i))
                .collect()
        };
        assert_eq!(pages(&read), vec![0, 1, 2, 7, 30, 31, 40, 63]);
        assert_eq!(pages(&scanned), pages(&read));
    }
}
