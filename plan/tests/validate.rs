//! `validate` on the host: a valid plan round-trips, every kind of corruption is refused
//! with its own error, and random mutations never make it panic.

use ckpt_plan::*;
use zerocopy::{FromZeros, IntoBytes};

const PAGE: u64 = PAGE_SIZE;
const HDR: u64 = core::mem::size_of::<PlanHeader>() as u64;

/// A plan as records, and its bytes in an 8-byte aligned buffer.
#[derive(Clone)]
struct Plan {
    hdr: PlanHeader,
    vmas: Vec<PlanVma>,
    runs: Vec<PlanRun>,
    threads: Vec<PlanThread>,
    sigactions: Vec<PlanSigaction>,
    auxv: Vec<u64>,
    close_fds: Vec<i32>,
    forks: Vec<PlanFork>,
    dup2s: Vec<PlanDup2>,
    keep_fds: Vec<i32>,
    rlimits: Vec<PlanRlimit>,
    cwd: Vec<u8>,
}

/// Bytes in a `Vec<u64>`, so that they are 8-byte aligned.
struct Buf {
    words: Vec<u64>,
    len: usize,
}

impl Buf {
    fn from_bytes(b: &[u8]) -> Buf {
        let mut words = vec![0u64; b.len().div_ceil(8)];
        words.as_mut_bytes()[..b.len()].copy_from_slice(b);
        Buf {
            words,
            len: b.len(),
        }
    }
    fn bytes(&self) -> &[u8] {
        &self.words.as_bytes()[..self.len]
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.words.as_mut_bytes()[..self.len]
    }
    fn header_mut(&mut self) -> &mut PlanHeader {
        use zerocopy::FromBytes;
        PlanHeader::mut_from_prefix(self.words.as_mut_bytes())
            .unwrap()
            .0
    }
}

fn vma(start: u64, pages: u64, kind: u32, fd: i32) -> PlanVma {
    PlanVma {
        start,
        end: start + pages * PAGE,
        prot: 3,
        kind,
        flags: 0,
        fd,
        offset: 0,
        first_run: 0,
        nr_runs: 0,
    }
}

fn thread(tid: u64, name: &str) -> PlanThread {
    let mut t = PlanThread {
        tid,
        robust_head: 0x1000_0100,
        robust_len: 24,
        clear_child_tid: 0x1000_0200,
        ..Default::default()
    };
    t.name[..name.len()].copy_from_slice(name.as_bytes());
    t
}

/// A plan like the front end builds: every kind of record, several of each.
fn sample() -> Plan {
    let mut p = Plan {
        hdr: PlanHeader {
            magic: PLAN_MAGIC,
            version: PLAN_VERSION,
            pid: 4242,
            image_fd: 100,
            status_fd: 101,
            mm: PrctlMmMap {
                start_code: 0x40_0000,
                end_code: 0x40_2000,
                ..Default::default()
            },
            ..Default::default()
        },
        vmas: vec![],
        runs: vec![],
        threads: vec![thread(4242, "main"), thread(4243, "worker-with-15c")],
        sigactions: vec![PlanSigaction {
            signo: 10,
            handler: 0x40_1000,
            flags: 0x0400_0004,
            restorer: 0x40_1100,
            mask: 1 << 9,
        }],
        auxv: vec![6, PAGE, 25, 0x7ffc_0000_0000, 0, 0],
        close_fds: vec![102, 103],
        forks: vec![],
        dup2s: vec![],
        keep_fds: vec![],
        rlimits: vec![],
        cwd: vec![],
    };
    let mut a = vma(0x40_0000, 2, VMA_FILE_PRIVATE, 102);
    a.prot = 5;
    a.first_run = 0;
    a.nr_runs = 1;
    p.runs.push(PlanRun {
        addr: 0x40_1000,
        len: PAGE,
        file_off: 0,
        fd: -1,
    });
    p.vmas.push(a);
    let mut heap = vma(0x40_2000, 16, VMA_ANON_PRIVATE, -1);
    heap.first_run = 1;
    heap.nr_runs = 2;
    p.runs.push(PlanRun {
        addr: 0x40_2000,
        len: 2 * PAGE,
        file_off: PAGE,
        fd: -1,
    });
    p.runs.push(PlanRun {
        addr: 0x40_8000,
        len: 3 * PAGE,
        file_off: 3 * PAGE,
        fd: -1,
    });
    p.vmas.push(heap);
    let mut shm = vma(0x7f00_0000_0000, 4, VMA_FILE_SHARED, 103);
    shm.first_run = 3;
    p.vmas.push(shm);
    let mut stack = vma(0x7ffc_0000_0000, 8, VMA_ANON_PRIVATE, -1);
    stack.flags = VMA_F_GROWSDOWN;
    stack.first_run = 3;
    stack.nr_runs = 1;
    p.runs.push(PlanRun {
        addr: 0x7ffc_0000_6000,
        len: 2 * PAGE,
        file_off: 6 * PAGE,
        fd: -1,
    });
    p.vmas.push(stack);
    for (i, kind) in [VMA_VVAR, VMA_VVAR_VCLOCK, VMA_VDSO]
        .into_iter()
        .enumerate()
    {
        let mut v = vma(0x7ffd_0000_0000 + i as u64 * 4 * PAGE, 4, kind, -1);
        v.prot = 1;
        v.first_run = 4;
        p.vmas.push(v);
    }
    p
}

impl Plan {
    /// Lays the plan out as the front end does, with the header's offsets and counts.
    fn bytes(&self) -> Buf {
        let mut h = self.hdr;
        let mut body = vec![0u8; HDR as usize];
        let section = |body: &mut Vec<u8>, b: &[u8]| {
            let off = body.len() as u64;
            body.extend_from_slice(b);
            while !body.len().is_multiple_of(8) {
                body.push(0);
            }
            off
        };
        h.vmas_off = section(&mut body, self.vmas.as_bytes());
        h.nr_vmas = self.vmas.len() as u64;
        h.runs_off = section(&mut body, self.runs.as_bytes());
        h.nr_runs = self.runs.len() as u64;
        h.threads_off = section(&mut body, self.threads.as_bytes());
        h.nr_threads = self.threads.len() as u64;
        h.sigactions_off = section(&mut body, self.sigactions.as_bytes());
        h.nr_sigactions = self.sigactions.len() as u64;
        h.auxv_off = section(&mut body, self.auxv.as_bytes());
        h.auxv_words = self.auxv.len() as u64;
        h.close_fds_off = section(&mut body, self.close_fds.as_bytes());
        h.nr_close_fds = self.close_fds.len() as u64;
        h.forks_off = section(&mut body, self.forks.as_bytes());
        h.nr_forks = self.forks.len() as u64;
        h.dup2s_off = section(&mut body, self.dup2s.as_bytes());
        h.nr_dup2s = self.dup2s.len() as u64;
        h.keep_fds_off = section(&mut body, self.keep_fds.as_bytes());
        h.nr_keep_fds = self.keep_fds.len() as u64;
        h.rlimits_off = section(&mut body, self.rlimits.as_bytes());
        h.nr_rlimits = self.rlimits.len() as u64;
        h.cwd_off = section(&mut body, &self.cwd);
        h.cwd_len = self.cwd.len() as u64;
        h.size = body.len() as u64;
        body[..HDR as usize].copy_from_slice(h.as_bytes());
        Buf::from_bytes(&body)
    }
}

fn kind_of(buf: &Buf) -> PlanErrorKind {
    match validate(buf.bytes()) {
        Ok(_) => panic!("plan accepted"),
        Err(e) => e.kind,
    }
}

/// The error of `sample()` changed by `f`.
fn refused(f: impl FnOnce(&mut Plan)) -> PlanErrorKind {
    let mut p = sample();
    f(&mut p);
    kind_of(&p.bytes())
}

/// The error of `sample()`'s bytes with the header changed by `f`.
fn refused_hdr(f: impl FnOnce(&mut PlanHeader)) -> PlanErrorKind {
    let mut b = sample().bytes();
    f(b.header_mut());
    kind_of(&b)
}

use PlanErrorKind::*;

#[test]
fn valid_plan_round_trips() {
    let p = sample();
    let b = p.bytes();
    let v = validate(b.bytes()).expect("valid plan");
    assert_eq!(v.hdr.size as usize, b.bytes().len());
    assert_eq!(v.hdr.pid, 4242);
    assert_eq!(v.hdr.mm, p.hdr.mm);
    assert_eq!(v.vmas, &p.vmas[..]);
    assert_eq!(v.runs, &p.runs[..]);
    assert_eq!(v.threads, &p.threads[..]);
    assert_eq!(v.sigactions, &p.sigactions[..]);
    assert_eq!(v.auxv, &p.auxv[..]);
    assert_eq!(v.close_fds, &p.close_fds[..]);
    assert_eq!(v.image_fd(), 100);
    assert_eq!(v.status_fd(), 101);
    assert_eq!(v.leader().tid, 4242);
    assert_eq!(v.runs_of(&p.vmas[1]), &p.runs[1..3]);
    assert!(v.runs_of(&p.vmas[2]).is_empty());
    assert_eq!(v.hdr.status_pipe(), Some(101));
}

#[test]
fn minimal_and_trailing_bytes() {
    // One thread, nothing else: empty arrays may sit anywhere inside the plan.
    let mut p = sample();
    p.vmas.clear();
    p.runs.clear();
    p.sigactions.clear();
    p.auxv.clear();
    p.close_fds.clear();
    p.threads.truncate(1);
    let b = p.bytes();
    validate(b.bytes()).unwrap();
    // Bytes after `size` (the rest of a mapped page) are ignored.
    let mut longer = b.bytes().to_vec();
    longer.extend_from_slice(&[0xff; 100]);
    let l = Buf::from_bytes(&longer);
    assert_eq!(
        validate(l.bytes()).unwrap().hdr.size as usize,
        b.bytes().len()
    );
}

#[test]
fn header_errors() {
    assert_eq!(refused_hdr(|h| h.magic ^= 1), BadMagic);
    assert_eq!(refused_hdr(|h| h.version = 0), BadVersion);
    assert_eq!(refused_hdr(|h| h.version = PLAN_VERSION + 1), BadVersion);
    assert_eq!(refused_hdr(|h| h.status_fd = -1), BadStatusFd);
    assert_eq!(refused_hdr(|h| h.status_fd = 1 << 31), BadStatusFd);
    assert_eq!(refused_hdr(|h| h.image_fd = -1), BadImageFd);
    assert_eq!(refused_hdr(|h| h.image_fd = i64::MAX), BadImageFd);
    assert_eq!(refused_hdr(|h| h.image_fd = h.status_fd), StatusFdIsImageFd);
    assert_eq!(refused_hdr(|h| h.size = HDR - 8), BadSize);
    assert_eq!(refused_hdr(|h| h.size = 0), BadSize);
    assert_eq!(refused_hdr(|h| h.size += 4), BadSize);
    assert_eq!(refused_hdr(|h| h.size = MAX_PLAN_SIZE + 8), BadSize);
    assert_eq!(refused_hdr(|h| h.size = u64::MAX), BadSize);
    assert_eq!(refused_hdr(|h| h.size += 8), Truncated);
    assert_eq!(refused_hdr(|h| h.size = MAX_PLAN_SIZE), Truncated);

    // status_pipe() is what the loader reports through before the rest is checked.
    let mut h = *validate(sample().bytes().bytes()).unwrap().hdr;
    h.size = 0;
    assert_eq!(h.status_pipe(), Some(101));
    h.magic = 0;
    assert_eq!(h.status_pipe(), None);
}

#[test]
fn misaligned_buffer() {
    let b = sample().bytes();
    let mut shifted = vec![0u64; b.words.len() + 1];
    shifted.as_mut_bytes()[1..1 + b.len].copy_from_slice(b.bytes());
    let e = validate(&shifted.as_bytes()[1..1 + b.len]).unwrap_err();
    assert_eq!(e.kind, Misaligned);
}

/// The array that a plan cut to `size` bytes (size fixed up) loses first, in the order
/// `validate` looks at them.
fn first_cut_array(h: &PlanHeader, size: u64) -> PlanErrorKind {
    let arrays = [
        (h.vmas_off, h.nr_vmas * 56, VmasOutOfBounds),
        (h.runs_off, h.nr_runs * 32, RunsOutOfBounds),
        (h.threads_off, h.nr_threads * 96, ThreadsOutOfBounds),
        (
            h.sigactions_off,
            h.nr_sigactions * 40,
            SigactionsOutOfBounds,
        ),
        (h.auxv_off, h.auxv_words * 8, AuxvOutOfBounds),
        (h.close_fds_off, h.nr_close_fds * 4, CloseFdsOutOfBounds),
    ];
    arrays
        .iter()
        .find(|(off, len, _)| off + len > size)
        .map(|a| a.2)
        .expect("some array is cut")
}

#[test]
fn truncation_everywhere() {
    let p = sample();
    let full = p.bytes();
    let h = *validate(full.bytes()).unwrap().hdr;
    let mut boundaries = vec![];
    for len in 0..full.len {
        // The buffer cut, the header unchanged.
        let cut = Buf::from_bytes(&full.bytes()[..len]);
        let want = if (len as u64) < HDR {
            HeaderTruncated
        } else {
            Truncated
        };
        assert_eq!(kind_of(&cut), want, "cut at {len}");
        // The buffer cut and its size saying so (at every 8-byte boundary, which
        // includes every record boundary): the array that lost records is named.
        if len as u64 >= HDR && len.is_multiple_of(8) {
            let mut cut = Buf::from_bytes(&full.bytes()[..len]);
            cut.header_mut().size = len as u64;
            assert_eq!(
                kind_of(&cut),
                first_cut_array(&h, len as u64),
                "cut at {len}, size fixed"
            );
            boundaries.push(len);
        }
    }
    // Every record boundary was among them.
    let mut ends = vec![];
    for (off, n, sz) in [
        (h.vmas_off, h.nr_vmas, 56),
        (h.runs_off, h.nr_runs, 32),
        (h.threads_off, h.nr_threads, 96),
        (h.sigactions_off, h.nr_sigactions, 40),
        (h.auxv_off, h.auxv_words, 8),
    ] {
        ends.extend((0..n).map(|i| (off + i * sz) as usize));
    }
    for e in ends {
        assert!(e == HDR as usize || boundaries.contains(&e), "{e}");
    }
}

#[test]
fn overflowing_offsets_and_counts() {
    assert_eq!(refused_hdr(|h| h.nr_vmas = u64::MAX), VmasOutOfBounds);
    assert_eq!(
        refused_hdr(|h| h.nr_vmas = u64::MAX / 56 + 1),
        VmasOutOfBounds
    );
    assert_eq!(
        refused_hdr(|h| h.nr_vmas = (h.size - h.vmas_off) / 56 + 1),
        VmasOutOfBounds
    );
    assert_eq!(refused_hdr(|h| h.vmas_off = u64::MAX - 7), VmasOutOfBounds);
    assert_eq!(refused_hdr(|h| h.vmas_off += 4), VmasOutOfBounds);
    assert_eq!(refused_hdr(|h| h.vmas_off = 0), VmasOutOfBounds);
    assert_eq!(refused_hdr(|h| h.vmas_off = HDR - 8), VmasOutOfBounds);
    assert_eq!(
        refused_hdr(|h| h.nr_runs = u64::MAX / 24 + 1),
        RunsOutOfBounds
    );
    assert_eq!(refused_hdr(|h| h.runs_off = h.size), RunsOutOfBounds);
    assert_eq!(
        refused_hdr(|h| h.nr_threads = u64::MAX / 96 + 2),
        ThreadsOutOfBounds
    );
    assert_eq!(refused_hdr(|h| h.threads_off = 1 << 63), ThreadsOutOfBounds);
    assert_eq!(
        refused_hdr(|h| h.nr_sigactions = u64::MAX),
        SigactionsOutOfBounds
    );
    assert_eq!(refused_hdr(|h| h.sigactions_off = 7), SigactionsOutOfBounds);
    assert_eq!(refused_hdr(|h| h.auxv_words = 1 << 61), AuxvOutOfBounds);
    assert_eq!(refused_hdr(|h| h.auxv_off = u64::MAX), AuxvOutOfBounds);
    assert_eq!(
        refused_hdr(|h| h.nr_close_fds = 1 << 62),
        CloseFdsOutOfBounds
    );
    assert_eq!(
        refused_hdr(|h| h.close_fds_off = h.size + 8),
        CloseFdsOutOfBounds
    );
    // An empty array may point anywhere up to the end, but not past it.
    let mut b = sample().bytes();
    let h = b.header_mut();
    h.nr_sigactions = 0;
    h.sigactions_off = h.size;
    validate(b.bytes()).unwrap();
    assert_eq!(
        refused_hdr(|h| {
            h.nr_sigactions = 0;
            h.sigactions_off = h.size + 8;
        }),
        SigactionsOutOfBounds
    );
    // A VMA's run range that overflows.
    assert_eq!(
        refused(|p| {
            p.vmas[2].first_run = u64::MAX;
            p.vmas[2].nr_runs = 2;
        }),
        VmaRuns
    );
}

#[test]
fn descriptor_errors() {
    assert_eq!(refused(|p| p.close_fds[1] = -1), BadCloseFd);
    assert_eq!(refused(|p| p.close_fds.push(i32::MIN)), BadCloseFd);
    assert_eq!(refused(|p| p.close_fds.push(101)), StatusFdClosed);
    assert_eq!(refused(|p| p.vmas[0].fd = -1), VmaFile);
    assert_eq!(refused(|p| p.vmas[2].fd = -5), VmaFile);
    assert_eq!(refused(|p| p.vmas[1].fd = 3), VmaFdNotFile);
    assert_eq!(refused(|p| p.vmas[6].fd = 0), VmaFdNotFile);
}

#[test]
fn thread_errors() {
    assert_eq!(refused(|p| p.threads.clear()), BadThreadCount);
    assert_eq!(
        refused(|p| p.threads = (1..=MAX_THREADS + 1).map(|t| thread(t, "t")).collect()),
        BadThreadCount
    );
    let mut many = sample();
    many.threads = (1..=MAX_THREADS).map(|t| thread(t, "t")).collect();
    validate(many.bytes().bytes()).unwrap();
    assert_eq!(refused(|p| p.threads[1].tid = 0), BadTid);
    assert_eq!(refused(|p| p.threads[0].tid = 1 << 31), BadTid);
    assert_eq!(refused(|p| p.threads[1].name = [b'x'; 16]), BadThreadName);
    assert_eq!(refused(|p| p.threads[1].rseq_len = 1 << 32), BadThreadField);
    assert_eq!(
        refused(|p| p.threads[1].rseq_sig = u64::MAX),
        BadThreadField
    );
    assert_eq!(refused(|p| p.threads[0].ss_flags = 1 << 32), BadThreadField);
    // SS_AUTODISARM (bit 31) as the front end writes it is fine.
    let mut p = sample();
    p.threads[0].ss_flags = 1 << 31;
    validate(p.bytes().bytes()).unwrap();
}

#[test]
fn auxv_and_sigaction_errors() {
    assert_eq!(refused(|p| p.auxv.push(0)), OddAuxv);
    for signo in [0, 9, 19, 65, u64::MAX] {
        assert_eq!(
            refused(|p| p.sigactions[0].signo = signo),
            BadSignal,
            "{signo}"
        );
    }
    for signo in [1, 8, 10, 32, 64] {
        let mut p = sample();
        p.sigactions[0].signo = signo;
        validate(p.bytes().bytes()).unwrap();
    }
}

#[test]
fn vma_errors() {
    assert_eq!(refused(|p| p.vmas[2].start += 1), VmaBounds);
    assert_eq!(refused(|p| p.vmas[2].end -= 8), VmaBounds);
    assert_eq!(refused(|p| p.vmas[2].end = p.vmas[2].start), VmaBounds);
    assert_eq!(
        refused(|p| {
            let v = &mut p.vmas[2];
            std::mem::swap(&mut v.start, &mut v.end)
        }),
        VmaBounds
    );
    assert_eq!(refused(|p| p.vmas[6].end = TASK_SIZE + PAGE), VmaBounds);
    assert_eq!(refused(|p| p.vmas[6].end = !(PAGE - 1)), VmaBounds);
    assert_eq!(
        refused(|p| {
            p.vmas[2].start = LOADER_ZONE_END - PAGE;
            p.vmas[2].end = LOADER_ZONE_END + PAGE;
        }),
        VmaInLoaderZone
    );
    assert_eq!(
        refused(|p| {
            p.vmas[2].start = LOADER_ZONE_START - PAGE;
            p.vmas[2].end = LOADER_ZONE_START + PAGE;
        }),
        VmaInLoaderZone
    );
    // Touching the zone from outside is fine.
    let mut p = sample();
    p.vmas[2].start = LOADER_ZONE_END;
    p.vmas[2].end = LOADER_ZONE_END + PAGE;
    validate(p.bytes().bytes()).unwrap();
    // Overlapping, out of order, and (fine) adjacent regions.
    assert_eq!(refused(|p| p.vmas[1].start -= PAGE), VmaOrder);
    assert_eq!(refused(|p| p.vmas.swap(2, 3)), VmaOrder);
    assert_eq!(
        refused(|p| {
            let v = p.vmas[1];
            p.vmas.insert(2, v);
            p.vmas[2].nr_runs = 0;
            p.vmas[2].first_run = 3;
        }),
        VmaOrder
    );
    assert_eq!(refused(|p| p.vmas[2].offset = 12), VmaFile);
    assert_eq!(refused(|p| p.vmas[2].offset = !(PAGE - 1)), VmaFile);
    assert_eq!(refused(|p| p.vmas[2].kind = 8), VmaKind);
    // A SysV shm attachment: no fd, no runs, a shmid; SHM_RDONLY is its flag only.
    assert_eq!(refused(|p| p.vmas[2].kind = VMA_SYSV_SHM), VmaSysvShm);
    let shm = |p: &mut Plan| {
        let v = &mut p.vmas[2];
        v.kind = VMA_SYSV_SHM;
        v.fd = -1;
        v.offset = 7;
        v.flags = VMA_F_SHM_RDONLY;
    };
    let mut p = sample();
    assert_eq!(p.vmas[2].nr_runs, 0);
    shm(&mut p);
    validate(p.bytes().bytes()).unwrap();
    assert_eq!(
        refused(|p| {
            shm(p);
            p.vmas[2].offset = 1 << 31;
        }),
        VmaSysvShm
    );
    assert_eq!(refused(|p| p.vmas[2].kind = u32::MAX), VmaKind);
    assert_eq!(refused(|p| p.vmas[2].flags = 4), VmaFlags);
    assert_eq!(refused(|p| p.vmas[1].flags = VMA_F_INHERITED), VmaInherited);
    assert_eq!(refused(|p| p.vmas[2].prot = 8), VmaProt);
    assert_eq!(refused(|p| p.vmas[5].kind = VMA_VVAR), VmaVdso);
    assert_eq!(
        refused(|p| {
            p.vmas[3].nr_runs = 0;
            p.vmas[4].nr_runs = 1;
            p.vmas[4].first_run = 3;
            p.runs[3].addr = p.vmas[4].start;
        }),
        VmaVdso
    );
}

#[test]
fn run_errors() {
    // Runs out of range of the run array, skipped, shared or left over.
    assert_eq!(refused(|p| p.vmas[3].nr_runs = 2), VmaRuns);
    assert_eq!(refused(|p| p.vmas[1].first_run = 2), VmaRuns);
    assert_eq!(
        refused(|p| {
            p.vmas[1].first_run = 0;
            p.vmas[1].nr_runs = 3;
        }),
        VmaRuns
    );
    assert_eq!(refused(|p| p.vmas[3].nr_runs = 0), VmaRuns);
    assert_eq!(refused(|p| p.runs[1].len = 0), RunMalformed);
    assert_eq!(refused(|p| p.runs[1].addr += 8), RunMalformed);
    assert_eq!(refused(|p| p.runs[1].len += 8), RunMalformed);
    assert_eq!(refused(|p| p.runs[1].file_off += 8), RunMalformed);
    assert_eq!(refused(|p| p.runs[1].file_off = !(PAGE - 1)), RunMalformed);
    assert_eq!(refused(|p| p.runs[1].addr = 0x40_1000), RunOutside);
    assert_eq!(refused(|p| p.runs[2].len = 16 * PAGE), RunOutside);
    assert_eq!(refused(|p| p.runs[0].len = !(PAGE - 1)), RunOutside);
    assert_eq!(refused(|p| p.runs[2].addr = 0x40_3000), RunOrder);
    assert_eq!(refused(|p| p.runs.swap(1, 2)), RunOrder);
}

#[test]
fn error_messages() {
    let e = validate(&[0u8; 8]).unwrap_err();
    assert_eq!(e.message(), "plan shorter than its header");
    assert_eq!(e.to_string(), "plan shorter than its header (at 0x8)");
}

#[test]
fn ready_round_trips() {
    let r = Ready::new(17, STAGE_MAP, 0x1000, (1, 2), b"mmap of a region failed");
    let back = Ready::parse(r.as_bytes()).unwrap();
    assert_eq!(back, r);
    assert_eq!(&back.msg[..23], b"mmap of a region failed");
    assert_eq!(back.msg[23], 0);
    // A message too long keeps its final NUL.
    let long = Ready::new(1, 1, 0, (0, 0), &[b'x'; 200]);
    assert_eq!(long.msg[79], 0);
    assert_eq!(long.msg[78], b'x');
    let mut bad = r;
    bad.magic = 0;
    assert_eq!(Ready::parse(bad.as_bytes()), None);
    assert_eq!(Ready::parse(&r.as_bytes()[..127]), None);
    let _ = Ready::new_zeroed();
}

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Values that sit on the edges the checks care about.
fn interesting(rng: &mut Rng, size: u64) -> u64 {
    match rng.below(12) {
        0 => 0,
        1 => 1,
        2 => u64::MAX,
        3 => u64::MAX - rng.below(64),
        4 => size,
        5 => size + 8 * rng.below(4),
        6 => rng.below(size + 64),
        7 => 1 << rng.below(64),
        8 => PAGE * rng.below(1 << 20),
        9 => LOADER_ZONE_START + PAGE * rng.below(16),
        10 => (i32::MAX as u64) + rng.below(3),
        _ => rng.next(),
    }
}

/// If a mutated plan passes, what the view promises must hold.
fn check_view(v: &PlanView<'_>, buf: &[u8]) {
    let lo = buf.as_ptr() as usize;
    let hi = lo + buf.len();
    let inside = |p: usize, n: usize| p >= lo && p + n <= hi;
    assert!(inside(v.vmas.as_ptr() as usize, v.vmas.len() * 56));
    assert!(inside(v.runs.as_ptr() as usize, v.runs.len() * 24));
    assert!(inside(v.threads.as_ptr() as usize, v.threads.len() * 96));
    assert!(!v.threads.is_empty());
    assert!(v.image_fd() >= 0 && v.status_fd() >= 0);
    let mut prev = 0;
    let mut total = 0;
    for vma in v.vmas {
        assert!(vma.start >= prev && vma.start < vma.end);
        prev = vma.end;
        let runs = v.runs_of(vma);
        assert_eq!(runs.len() as u64, vma.nr_runs);
        total += runs.len();
        for r in runs {
            assert!(r.addr >= vma.start && r.addr + r.len <= vma.end);
        }
    }
    assert_eq!(total, v.runs.len());
}

#[test]
fn random_mutations_never_panic() {
    let base = sample().bytes();
    let size = base.len as u64;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut accepted, mut refused) = (0u32, 0u32);
    for _ in 0..50_000 {
        let mut b = Buf::from_bytes(base.bytes());
        for _ in 0..1 + rng.below(4) {
            if b.len < 8 {
                break;
            }
            match rng.below(6) {
                // One byte of anything.
                0 | 1 => {
                    let i = rng.below(b.len as u64) as usize;
                    b.bytes_mut()[i] = rng.next() as u8;
                }
                // One bit.
                2 => {
                    let i = rng.below(b.len as u64) as usize;
                    b.bytes_mut()[i] ^= 1 << rng.below(8);
                }
                // One 64-bit field (header or body) set to an edge value.
                3 | 4 => {
                    let i = rng.below(b.len as u64 / 8) as usize;
                    b.words[i] = interesting(&mut rng, size);
                }
                // A cut, with or without the size fixed up.
                _ => {
                    let len = rng.below(b.len as u64 + 1) as usize;
                    b = Buf::from_bytes(&b.bytes()[..len]);
                    if len as u64 >= HDR && rng.below(2) == 0 {
                        b.header_mut().size = len as u64;
                    }
                }
            }
        }
        match validate(b.bytes()) {
            Ok(v) => {
                check_view(&v, b.bytes());
                accepted += 1;
            }
            Err(e) => {
                assert!(!e.message().is_empty());
                refused += 1;
            }
        }
    }
    // Both outcomes were exercised (mutations of padding or of values nobody checks
    // leave a valid plan).
    assert!(accepted > 100 && refused > 10_000, "{accepted} {refused}");
}

/// `sample()` as the plan of a child its parent's loader forks.
fn forked() -> Plan {
    let mut p = sample();
    p.hdr.fork_parent = 4000;
    p.hdr.setup_flags = SETUP_PGID_LEAD;
    p.hdr.setup_umask = 0o022;
    p.dup2s = vec![PlanDup2 {
        src: 110,
        target: 3,
    }];
    p.keep_fds = vec![0, 1, 2, 3, 100, 101, 102, 103];
    p.rlimits = vec![PlanRlimit {
        resource: 7,
        cur: 1024,
        max: 4096,
    }];
    p.cwd = b"/tmp\0".to_vec();
    p.vmas[1].flags = VMA_F_INHERITED;
    p
}

#[test]
fn forks_and_forked_setup() {
    let mut parent = sample();
    parent.forks = vec![PlanFork {
        pid: 4300,
        plan_fd: 120,
        flags: FORK_CLONE_FILES,
    }];
    let b = parent.bytes();
    let v = validate(b.bytes()).unwrap();
    assert_eq!(v.forks, &parent.forks[..]);
    let b = forked().bytes();
    let v = validate(b.bytes()).unwrap();
    assert_eq!(v.cwd, b"/tmp\0");
    assert_eq!(v.keep_fds.len(), 8);

    let fork_refused = |f: PlanFork| {
        let mut p = sample();
        p.forks = vec![f];
        kind_of(&p.bytes())
    };
    assert_eq!(
        fork_refused(PlanFork {
            pid: 0,
            plan_fd: 120,
            flags: 0
        }),
        BadFork
    );
    assert_eq!(
        fork_refused(PlanFork {
            pid: 4242,
            plan_fd: 120,
            flags: 0
        }),
        BadFork
    );
    assert_eq!(
        fork_refused(PlanFork {
            pid: 4300,
            plan_fd: 101,
            flags: 0
        }),
        BadFork
    );
    assert_eq!(
        fork_refused(PlanFork {
            pid: 4300,
            plan_fd: -1,
            flags: 0
        }),
        BadFork
    );

    let forked_refused = |f: &dyn Fn(&mut Plan)| {
        let mut p = forked();
        f(&mut p);
        kind_of(&p.bytes())
    };
    // Setup in a plan the front end made the process for.
    assert_eq!(refused(|p| p.cwd = b"/\0".to_vec()), BadSetup);
    assert_eq!(refused(|p| p.hdr.setup_flags = SETUP_SETSID), BadSetup);
    assert_eq!(forked_refused(&|p| p.hdr.setup_flags = 32), BadSetup);
    assert_eq!(forked_refused(&|p| p.hdr.fork_parent = 4242), BadSetup);
    assert_eq!(forked_refused(&|p| p.hdr.setup_umask = 0o1000), BadSetup);
    assert_eq!(forked_refused(&|p| p.cwd = vec![]), BadCwd);
    assert_eq!(forked_refused(&|p| p.cwd = b"/tmp".to_vec()), BadCwd);
    assert_eq!(forked_refused(&|p| p.cwd = b"/t\0mp\0".to_vec()), BadCwd);
    assert_eq!(forked_refused(&|p| p.keep_fds.swap(0, 1)), BadKeepFds);
    assert_eq!(
        forked_refused(&|p| p.keep_fds.retain(|&f| f != 101)),
        BadKeepFds
    );
    assert_eq!(forked_refused(&|p| p.dup2s[0].src = -1), BadDup2);
    assert_eq!(forked_refused(&|p| p.rlimits[0].resource = 16), BadRlimit);
    assert_eq!(forked_refused(&|p| p.rlimits[0].cur = 5000), BadRlimit);
    assert_eq!(
        fork_refused(PlanFork {
            pid: 4300,
            plan_fd: 120,
            flags: 0x100
        }),
        BadFork
    );
    // A shared table or fs: nothing of them in the setup.
    let shared = |f: &dyn Fn(&mut Plan)| {
        let mut p = forked();
        p.hdr.setup_flags = SETUP_SHARED_FILES | SETUP_SHARED_FS;
        p.dup2s.clear();
        p.keep_fds.clear();
        p.cwd.clear();
        f(&mut p);
        p
    };
    assert!(validate(shared(&|_| {}).bytes().bytes()).is_ok());
    assert_eq!(
        kind_of(&shared(&|p| p.cwd = b"/\0".to_vec()).bytes()),
        BadCwd
    );
    assert_eq!(
        kind_of(&shared(&|p| p.keep_fds = vec![100, 101]).bytes()),
        BadKeepFds
    );
    assert_eq!(
        kind_of(&shared(&|p| p.dup2s = vec![PlanDup2 { src: 9, target: 3 }]).bytes()),
        BadDup2
    );
    // Only private regions can be inherited.
    assert_eq!(
        forked_refused(&|p| p.vmas[2].flags = VMA_F_INHERITED),
        VmaInherited
    );
}
