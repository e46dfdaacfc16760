//! Reading `/proc/self/maps` without allocating.
//!
//! [`for_each`] streams the file through one static buffer and hands every complete line,
//! parsed, to a callback. The callback may unmap or move mappings while the walk goes on:
//! the kernel resumes each read after the address it last reported, so nothing breaks, but
//! entries may be missed; callers that change the address space repeat the walk until it
//! changes nothing.

use crate::status::{Context, Fail, Result};
use crate::syscall::{self, ERANGE};
use ckpt_plan::STAGE_UNMAP;

/// One line of the maps file. `name` is what follows the inode column ("" if nothing).
#[derive(Clone, Copy)]
pub struct MapEntry<'a> {
    pub start: u64,
    pub end: u64,
    pub name: &'a [u8],
}

const BUF_SIZE: usize = 64 * 1024;

/// The read buffer. Only the main thread walks the maps, never re-entrantly.
static mut BUF: [u8; BUF_SIZE] = [0; BUF_SIZE];

/// Calls `f` on every entry of `/proc/self/maps`, in address order.
#[inline(never)]
pub fn for_each(mut f: impl FnMut(&MapEntry) -> Result<()>) -> Result<()> {
    // SAFETY: only the main thread calls this, and never while another call is active.
    let buf: &mut [u8; BUF_SIZE] = unsafe { &mut *core::ptr::addr_of_mut!(BUF) };
    let fd = syscall::open(b"/proc/self/maps\0", syscall::O_RDONLY | syscall::O_CLOEXEC).ctx(
        STAGE_UNMAP,
        0,
        "cannot open /proc/self/maps",
    )?;
    let result = walk(fd, buf, &mut f);
    let _ = syscall::close(fd);
    result
}

fn walk(fd: i32, buf: &mut [u8], f: &mut impl FnMut(&MapEntry) -> Result<()>) -> Result<()> {
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            return Err(Fail::new(
                STAGE_UNMAP,
                ERANGE,
                0,
                "line of /proc/self/maps too long",
            ));
        }
        let n = syscall::read(fd, &mut buf[filled..]).ctx(
            STAGE_UNMAP,
            0,
            "cannot read /proc/self/maps",
        )?;
        let eof = n == 0;
        filled += n;

        // Hand out every complete line; keep the incomplete tail for the next read.
        let mut pos = 0;
        while let Some(nl) = buf[pos..filled].iter().position(|&b| b == b'\n') {
            line(&buf[pos..pos + nl], f)?;
            pos += nl + 1;
        }
        if eof {
            if pos < filled {
                line(&buf[pos..filled], f)?;
            }
            return Ok(());
        }
        buf.copy_within(pos..filled, 0);
        filled -= pos;
    }
}

fn line(text: &[u8], f: &mut impl FnMut(&MapEntry) -> Result<()>) -> Result<()> {
    match parse_line(text) {
        Some(e) => f(&e),
        None => Err(Fail::new(
            STAGE_UNMAP,
            syscall::EINVAL,
            0,
            "cannot parse /proc/self/maps",
        )),
    }
}

/// Parses `start-end perms offset dev inode [name]`.
pub fn parse_line(text: &[u8]) -> Option<MapEntry<'_>> {
    let dash = text.iter().position(|&b| b == b'-')?;
    let start = parse_hex(&text[..dash])?;
    let rest = &text[dash + 1..];
    let sp = rest.iter().position(|&b| b == b' ')?;
    let end = parse_hex(&rest[..sp])?;

    // Skip the perms, offset, dev and inode columns, then the padding before the name.
    let mut rest = &rest[sp..];
    for _ in 0..4 {
        rest = skip_spaces(rest);
        let w = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
        if w == 0 {
            return None;
        }
        rest = &rest[w..];
    }
    Some(MapEntry {
        start,
        end,
        name: skip_spaces(rest),
    })
}

fn skip_spaces(s: &[u8]) -> &[u8] {
    let n = s.iter().position(|&b| b != b' ').unwrap_or(s.len());
    &s[n..]
}

fn parse_hex(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 16 {
        return None;
    }
    let mut v: u64 = 0;
    for &c in s {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => return None,
        };
        v = (v << 4) | d as u64;
    }
    Some(v)
}
