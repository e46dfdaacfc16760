//! Writing image files (the format itself is defined in `ckpt_format::image`).

use anyhow::{Context, Result};
pub use ckpt_format::image::*;
use ckpt_format::state::ProcessState;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use xxhash_rust::xxh3::xxh3_64;

pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Streams one process image to disk: pages first, then metadata, then the header.
/// Page data goes through a second descriptor opened with O_DIRECT when the file
/// system allows it: the bytes go straight to the disk instead of first filling the
/// page cache (which costs as much again on a machine short of free memory), and
/// nothing is left to flush at fsync time.
pub struct ImageWriter {
    file: File,
    direct: Option<File>,
    path: PathBuf,
    pos: u64,
}

impl ImageWriter {
    pub fn create(path: &Path) -> Result<ImageWriter> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("creating {}", path.display()))?;
        let direct = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .ok();
        Ok(ImageWriter {
            file,
            direct,
            path: path.to_path_buf(),
            pos: HEADER_LEN,
        })
    }

    /// Current write offset (where the next page run starts).
    pub fn pos(&self) -> u64 {
        self.pos
    }

    /// Append page bytes (a multiple of the page size).
    /// With O_DIRECT, `data` must start on a page boundary in memory (see
    /// [`PageBuffer`]); otherwise it is written through the page cache.
    pub fn write_pages(&mut self, data: &[u8]) -> Result<()> {
        let aligned = (data.as_ptr() as usize).is_multiple_of(PAGE as usize)
            && (data.len() as u64).is_multiple_of(PAGE);
        let direct = match (&self.direct, aligned) {
            (Some(d), true) => d.write_all_at(data, self.pos).map(|_| true),
            _ => Ok(false),
        };
        let done = match direct {
            Ok(done) => done,
            // Some file systems refuse O_DIRECT writes: the page cache it is.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                self.direct = None;
                false
            }
            Err(e) => return Err(e).with_context(|| format!("writing {}", self.path.display())),
        };
        if !done {
            self.file
                .write_all_at(data, self.pos)
                .with_context(|| format!("writing {}", self.path.display()))?;
        }
        self.pos += data.len() as u64;
        Ok(())
    }

    /// Write metadata and header, fsync, and close. Returns the file's size and its
    /// header checksum, which the manifest records.
    pub fn finish(
        self,
        state: &ProcessState,
        created_ns: u64,
        generation_id: [u8; 16],
    ) -> Result<(u64, u64)> {
        let meta = postcard::to_allocvec(state).context("encoding image metadata")?;
        let meta_offset = self.pos;
        self.file
            .write_all_at(&meta, meta_offset)
            .with_context(|| format!("writing {}", self.path.display()))?;
        let header = Header {
            version: FORMAT_VERSION,
            meta_offset,
            meta_len: meta.len() as u64,
            meta_hash: xxh3_64(&meta),
            pages_offset: HEADER_LEN,
            pages_len: meta_offset - HEADER_LEN,
            created_ns,
            tool_version: env!("CARGO_PKG_VERSION").to_string(),
            kernel: kernel_release(),
            pid: state.pid as u32,
            generation_id,
            checksum: 0,
        };
        let encoded = header.encode();
        let checksum = u64_at(&encoded, 16);
        let mut f = &self.file;
        f.write_all_at(&encoded, 0)?;
        f.flush()?;
        self.file
            .sync_all()
            .with_context(|| format!("syncing {}", self.path.display()))?;
        Ok((meta_offset + meta.len() as u64, checksum))
    }
}

/// A page-aligned buffer, as O_DIRECT needs.
pub struct PageBuffer {
    ptr: *mut u8,
    len: usize,
}

impl PageBuffer {
    pub fn new(len: usize) -> PageBuffer {
        let layout = std::alloc::Layout::from_size_align(len, PAGE as usize).unwrap();
        // SAFETY: a non-zero size with a valid alignment.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "out of memory");
        PageBuffer { ptr, len }
    }
}

impl std::ops::Deref for PageBuffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr/len describe our allocation.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl std::ops::DerefMut for PageBuffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: ptr/len describe our allocation, borrowed mutably.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for PageBuffer {
    fn drop(&mut self) {
        let layout = std::alloc::Layout::from_size_align(self.len, PAGE as usize).unwrap();
        // SAFETY: allocated in new() with this layout.
        unsafe { std::alloc::dealloc(self.ptr, layout) };
    }
}

// SAFETY: the buffer is plain owned memory.
unsafe impl Send for PageBuffer {}
