//! Which pages a process wrote since its last checkpoint (issue 11), without reading
//! them: userfaultfd write-protection in asynchronous mode (Linux 6.7+) and the
//! PAGEMAP_SCAN ioctl's PAGE_IS_WRITTEN, the modern replacement of soft-dirty bits.
//!
//! [`Tracker::start`] injects into the frozen process a `userfaultfd(UFFD_USER_MODE_ONLY)`,
//! its UFFDIO_API with `UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED`, and one
//! UFFDIO_REGISTER (write-protect mode) per private region; the descriptor is copied out
//! with pidfd_getfd and closed in the process, whose descriptor table is as before. In
//! asynchronous mode a write to a protected page never stops the process: the kernel
//! lifts the protection and the page reads as written. [`Tracker::changed`] (with the
//! process frozen) returns the pages written or zero-filled since the previous scan and
//! protects them again in the same step (PM_SCAN_WP_MATCHING).
//!
//! What the kernel guarantees, checked on this kernel (see the test): a page written
//! through any path (the process, the kernel on its behalf, another process's
//! process_vm_writev or /proc/PID/mem) is reported written; a page dropped
//! (MADV_DONTNEED) and then read back as zeros is reported as a zero page, which
//! [`Tracker::changed`] counts as changed; a region not registered the way we did it
//! (mapped or moved there since, or another program's registration) makes the scan
//! fail (PM_SCAN_CHECK_WPASYNC), and the caller then reads every page. Holding the
//! descriptor keeps the registration; dropping the tracker ends it.

use crate::freeze::Frozen;
use crate::inject::Injector;
use crate::maps::{pagemap_scan, ScanQuery};
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::Mutex;

const SYS_USERFAULTFD: i64 = 323;
const UFFD_USER_MODE_ONLY: u64 = 1;
const UFFD_API: u64 = 0xaa;
const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
const UFFDIO_API: u64 = 0xc018_aa3f;
const UFFDIO_REGISTER: u64 = 0xc020_aa00;
const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;
const PAGE_IS_WRITTEN: u64 = 1 << 1;
const PAGE_IS_PFNZERO: u64 = 1 << 5;
const PAGE: u64 = 4096;

/// Regions ckpt itself registered, per pid: their `uw` flag is ckpt's, not the
/// process's (the audit lets it pass; a restore never makes it).
static OURS: Mutex<Option<Registered>> = Mutex::new(None);

/// Registered regions, `(start, end)`, per pid.
type Registered = HashMap<i32, Vec<(u64, u64)>>;

/// Whether `[start, end)` of `pid` is a region ckpt registered for tracking.
pub fn tracks(pid: i32, start: u64, end: u64) -> bool {
    OURS.lock()
        .unwrap()
        .as_ref()
        .and_then(|m| m.get(&pid))
        .is_some_and(|v| v.iter().any(|&(s, e)| s <= start && end <= e))
}

/// The written-page tracking of one process.
pub struct Tracker {
    pid: i32,
    _uffd: OwnedFd,
    /// The regions registered, sorted.
    pub regions: Vec<(u64, u64)>,
}

impl Drop for Tracker {
    fn drop(&mut self) {
        if let Some(m) = OURS.lock().unwrap().as_mut() {
            m.remove(&self.pid);
        }
        // Closing `uffd` (dropped with the tracker) ends the registration.
    }
}

fn injected(what: &str, r: io::Result<i64>) -> io::Result<i64> {
    match r? {
        v if (-4095..0).contains(&v) => Err(io::Error::new(
            io::Error::from_raw_os_error(-v as i32).kind(),
            format!("{what}: {}", io::Error::from_raw_os_error(-v as i32)),
        )),
        v => Ok(v),
    }
}

fn bytes(words: &[u64]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

impl Tracker {
    /// Register the private regions `regions` of frozen process `f` for tracking and
    /// protect every page of them. Everything injected is undone on an error.
    pub fn start(f: &mut Frozen, inj: &Injector, regions: &[(u64, u64)]) -> io::Result<Tracker> {
        let pid = f.pid;
        let t = &mut f.threads[0];
        let fd = injected(
            "userfaultfd",
            inj.syscall(
                t,
                SYS_USERFAULTFD,
                [
                    (libc::O_CLOEXEC | libc::O_NONBLOCK) as u64 | UFFD_USER_MODE_ONLY,
                    0,
                    0,
                    0,
                    0,
                    0,
                ],
            ),
        )? as u64;
        let r = (|| -> io::Result<Tracker> {
            let mut out = [0u8; 24];
            injected(
                "UFFDIO_API",
                inj.syscall_with_buf(
                    t,
                    libc::SYS_ioctl,
                    |a| [fd, UFFDIO_API, a, 0, 0, 0],
                    &bytes(&[
                        UFFD_API,
                        UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED,
                        0,
                    ]),
                    &mut out,
                ),
            )?;
            let mut registered = Vec::new();
            for &(start, end) in regions {
                let r = inj.syscall_with_buf(
                    t,
                    libc::SYS_ioctl,
                    |a| [fd, UFFDIO_REGISTER, a, 0, 0, 0],
                    &bytes(&[start, end - start, UFFDIO_REGISTER_MODE_WP, 0]),
                    &mut [],
                );
                // A region the kernel will not track is read in full each time.
                if injected("UFFDIO_REGISTER", r).is_ok() {
                    registered.push((start, end));
                }
            }
            let uffd = crate::procinfo::pidfd_getfd(pid, fd as i32)?;
            Ok(Tracker {
                pid,
                _uffd: uffd,
                regions: registered,
            })
        })();
        // The process keeps no descriptor of ours, whatever happened.
        let _ = inj.syscall(t, libc::SYS_close, [fd, 0, 0, 0, 0, 0]);
        let tracker = r?;
        OURS.lock()
            .unwrap()
            .get_or_insert_with(HashMap::new)
            .insert(pid, tracker.regions.clone());
        // Protect every page now: what the process writes from here on is reported.
        let pagemap = File::open(format!("/proc/{pid}/pagemap"))?;
        for &(s, e) in &tracker.regions.clone() {
            tracker.changed(&pagemap, s, e)?;
        }
        Ok(tracker)
    }

    /// The pid tracked.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The pages of `[start, end)` (a region registered by [`Tracker::start`]) written or
    /// zero-filled since the previous scan, as sorted `(addr, npages)`, protected again.
    /// `None` when the kernel no longer tracks the whole range our way: then every page
    /// may have changed.
    pub fn changed(
        &self,
        pagemap: &File,
        start: u64,
        end: u64,
    ) -> io::Result<Option<Vec<(u64, u64)>>> {
        let q = ScanQuery {
            flags: PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
            category_anyof_mask: PAGE_IS_WRITTEN | PAGE_IS_PFNZERO,
            return_mask: PAGE_IS_WRITTEN | PAGE_IS_PFNZERO,
            ..Default::default()
        };
        let found = match pagemap_scan(pagemap, start, end, q) {
            // EPERM: a region in the range is not registered in asynchronous mode.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM | libc::EINVAL)) => {
                return Ok(None)
            }
            r => r?,
        };
        let mut out: Vec<(u64, u64)> = Vec::new();
        for r in found {
            match out.last_mut() {
                Some(last) if last.0 + last.1 * PAGE == r.start => {
                    last.1 += (r.end - r.start) / PAGE
                }
                _ => out.push((r.start, (r.end - r.start) / PAGE)),
            }
        }
        Ok(Some(out))
    }
}
