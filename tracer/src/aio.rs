//! Linux native aio contexts (io_setup): one home for their dump and restore.
//!
//! A context shows as the mapping of its ring (`/[aio] (deleted)` in /proc/PID/maps);
//! the context id the program holds is the ring's address, and the ring's header
//! (`struct aio_ring`, linux/fs/aio.c) says how many events it holds and where its head
//! and tail are. The dump saves the header ([`vma`]) and no page; a ring holding events
//! not yet reaped is refused (the kernel alone can put events into a ring, and requests
//! still in flight would complete into the old one). As CRIU does, the restore makes a
//! context of the same size with io_setup in the restored process, moves its ring to
//! the old address with mremap (the kernel follows the move: the context id is the new
//! address), and brings its head and tail to where they were by running that many
//! empty reads through it and reaping them ([`restore`]).

use crate::error::{Result, TraceError};
use crate::freeze::FrozenThread;
use crate::inject::{injected, Injector, SCRATCH_LEN};
use crate::proc::MapEntry;
use crate::state::{AioRing, Vma, VmaKind};
use std::io;
use std::os::unix::fs::FileExt;

const AIO_RING_MAGIC: u32 = 0xa10a_10a1;
/// `struct aio_ring` before its events: id, nr, head, tail, magic, compat_features,
/// incompat_features, header_length (u32 each).
const HEADER_LEN: usize = 32;
const IO_EVENT_LEN: u64 = 32;
const IOCB_LEN: usize = 64;
const IOCB_CMD_PREAD: u16 = 0;

/// The saved form of the ring mapped at `m` of process `pid` (frozen).
pub fn vma(pid: i32, m: &MapEntry) -> Result<VmaKind> {
    let refuse = |what: String| TraceError::Unsupported { pid, what };
    let mem = std::fs::File::open(crate::proc::path(pid, "mem"))
        .map_err(|e| TraceError::io(pid, "opening its memory", e))?;
    let mut h = [0u8; HEADER_LEN];
    mem.read_exact_at(&mut h, m.start)
        .map_err(|e| TraceError::io(pid, format!("reading the aio ring at {:#x}", m.start), e))?;
    let word = |i: usize| u32::from_le_bytes(h[i * 4..i * 4 + 4].try_into().unwrap_or_default());
    let (id, nr, head, tail) = (word(0), word(1), word(2), word(3));
    if word(4) != AIO_RING_MAGIC || word(5) != 1 || word(6) != 0 || word(7) as usize != HEADER_LEN {
        return Err(refuse(format!(
            "aio ring (io_setup) at {:#x} with a header this ckpt does not know",
            m.start
        )));
    }
    if head != tail {
        return Err(refuse(format!(
            "aio ring (io_setup) at {:#x} holding {} completed events not yet reaped (io_getevents)",
            m.start,
            (tail + nr - head) % nr.max(1)
        )));
    }
    if tail >= nr || nr_req(m.end - m.start) == 0 {
        return Err(refuse(format!(
            "aio ring (io_setup) at {:#x} of an unexpected size",
            m.start
        )));
    }
    Ok(VmaKind::AioRing(AioRing { id, nr, tail }))
}

/// The io_setup argument that makes a ring of `len` bytes again. The kernel makes room
/// for max(n, 4 * CPUs) * 2 + 2 events, rounded up to whole pages; half of what the
/// pages hold, less the two spare ones, rounds up to the same pages.
fn nr_req(len: u64) -> u64 {
    let events = len.saturating_sub(HEADER_LEN as u64) / IO_EVENT_LEN;
    events.saturating_sub(2) / 2
}

/// Restores every aio ring of the stopped process (`vmas`: its saved regions), in the
/// order the contexts were made, with `fd`, a regular file open in it, for the empty
/// reads that move the head and tail.
pub fn restore(
    inj: &Injector,
    t: &mut FrozenThread,
    vmas: &[Vma],
    fd: i32,
) -> std::result::Result<(), String> {
    let mut rings: Vec<(&Vma, AioRing)> = vmas
        .iter()
        .filter_map(|v| match v.kind {
            VmaKind::AioRing(r) => Some((v, r)),
            _ => None,
        })
        .collect();
    rings.sort_by_key(|(_, r)| r.id);
    for (v, r) in rings {
        restore_one(inj, t, v, r, fd)
            .map_err(|e| format!("aio ring (io_setup) at {:#x}: {e}", v.start))?;
    }
    Ok(())
}

fn restore_one(
    inj: &Injector,
    t: &mut FrozenThread,
    v: &Vma,
    r: AioRing,
    fd: i32,
) -> io::Result<()> {
    let len = v.end - v.start;
    let mut ctx = [0u8; 8];
    injected(inj.syscall_with_buf(
        t,
        libc::SYS_io_setup,
        |a| [nr_req(len), a, 0, 0, 0, 0],
        &[0u8; 8],
        &mut ctx,
    ))?;
    let made = u64::from_le_bytes(ctx);
    if made != v.start {
        let flags = (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64;
        let moved = injected(inj.syscall(t, libc::SYS_mremap, [made, len, len, flags, v.start, 0]));
        if let Err(e) = moved {
            let _ = inj.syscall(t, libc::SYS_io_destroy, [made, 0, 0, 0, 0, 0]);
            return Err(io::Error::new(
                e.kind(),
                format!("moving the new ring to its old address (a ring of another size?): {e}"),
            ));
        }
    }
    let ctx = v.start;
    // Head and tail: `tail` empty reads, submitted and reaped a few at a time through the
    // scratch area (iocbs, then the pointers to them; the events come back there too).
    const BATCH: usize = SCRATCH_LEN / (IOCB_LEN + 8 + IO_EVENT_LEN as usize);
    let mut left = r.tail as usize;
    while left > 0 {
        let n = left.min(BATCH);
        let base = Injector::scratch_addr(t);
        let mut buf = vec![0u8; n * (IOCB_LEN + 8)];
        for i in 0..n {
            let cb = &mut buf[i * IOCB_LEN..(i + 1) * IOCB_LEN];
            // struct iocb: aio_data, aio_key/rw_flags, aio_lio_opcode (u16 at 16),
            // aio_reqprio, aio_fildes (u32 at 20), aio_buf (24), aio_nbytes (32), ...
            cb[16..18].copy_from_slice(&IOCB_CMD_PREAD.to_le_bytes());
            cb[20..24].copy_from_slice(&(fd as u32).to_le_bytes());
            let p = n * IOCB_LEN + i * 8;
            buf[p..p + 8].copy_from_slice(&(base + (i * IOCB_LEN) as u64).to_le_bytes());
        }
        let ptrs = base + (n * IOCB_LEN) as u64;
        let got = injected(inj.syscall_with_buf(
            t,
            libc::SYS_io_submit,
            |_| [ctx, n as u64, ptrs, 0, 0, 0],
            &buf,
            &mut [],
        ))?;
        if got as usize != n {
            return Err(io::Error::other(format!(
                "io_submit of {n} empty reads took {got}"
            )));
        }
        let mut events = vec![0u8; n * IO_EVENT_LEN as usize];
        let reaped = injected(inj.syscall_with_buf(
            t,
            libc::SYS_io_getevents,
            |a| [ctx, n as u64, n as u64, a, 0, 0],
            &[],
            &mut events,
        ))?;
        if reaped as usize != n {
            return Err(io::Error::other(format!(
                "io_getevents reaped {reaped} of {n} empty reads"
            )));
        }
        left -= n;
    }
    Ok(())
}
