//! The image file of one process (docs/CONTRACT.md §3):
//!
//! ```text
//! 0      header, 4096 bytes (layout below), with its own xxh3 checksum
//! 4096   page data: every stored run, page-aligned, in VMA order (pages_len bytes)
//! ...    metadata: postcard-encoded ProcessState (meta_len bytes, xxh3 in the header)
//! ```
//!
//! Header fields (little-endian): magic `CKPTIMG\0` @0, format version u32 @8, header
//! length u32 @12, header xxh3 u64 @16 (computed with this field zero), meta offset @24,
//! meta length @32, meta xxh3 @40, pages offset @48, pages length @56, creation time in
//! ns since the epoch @64, tool version (32 bytes, NUL-padded) @72, kernel release (64
//! bytes) @104, pid u32 @168, generation id (16 bytes) @172. The version is checked
//! before anything else, so a future format is refused as such. Each page run carries
//! its own xxh3 in the metadata, so the header checksum, which covers the metadata
//! checksum, stands for the whole file: the generation's manifest records it (see
//! [`crate::generation`]).
//!
//! Compatibility: format 2 images (before attribute groups) are read as format 3 with
//! no attribute groups; format 1 images (ckpt 0.1 before generations were sealed) carry
//! no generation id and are refused with a message that says so; a newer format is
//! refused with a message asking for a newer ckpt.

use crate::state::ProcessState;
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use xxhash_rust::xxh3::{xxh3_64, Xxh3};

pub const MAGIC: &[u8; 8] = b"CKPTIMG\0";
pub const FORMAT_VERSION: u32 = 3;
/// The oldest image format this ckpt still reads (docs/FORMAT.md, compatibility rule).
pub const OLDEST_READ: u32 = 2;
pub const HEADER_LEN: u64 = 4096;
pub const PAGE: u64 = 4096;

#[derive(Debug, Clone)]
pub struct Header {
    pub version: u32,
    pub meta_offset: u64,
    pub meta_len: u64,
    pub meta_hash: u64,
    pub pages_offset: u64,
    pub pages_len: u64,
    pub created_ns: u64,
    pub tool_version: String,
    pub kernel: String,
    pub pid: u32,
    /// The generation this image was written for.
    pub generation_id: [u8; 16],
    /// The header's own xxh3 (as stored at offset 16).
    pub checksum: u64,
}

fn put_str(buf: &mut [u8], s: &str) {
    let b = s.as_bytes();
    let n = b.len().min(buf.len() - 1);
    buf[..n].copy_from_slice(&b[..n]);
}

fn get_str(buf: &[u8]) -> String {
    let end = buf.iter().position(|&c| c == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// The little-endian u64 at `off` of `b`.
pub fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

impl Header {
    /// The header's bytes, its checksum filled in at offset 16.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_LEN as usize];
        b[0..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[12..16].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        for (off, v) in [
            (24, self.meta_offset),
            (32, self.meta_len),
            (40, self.meta_hash),
            (48, self.pages_offset),
            (56, self.pages_len),
            (64, self.created_ns),
        ] {
            b[off..off + 8].copy_from_slice(&v.to_le_bytes());
        }
        put_str(&mut b[72..104], &self.tool_version);
        put_str(&mut b[104..168], &self.kernel);
        b[168..172].copy_from_slice(&self.pid.to_le_bytes());
        b[172..188].copy_from_slice(&self.generation_id);
        let h = xxh3_64(&b);
        b[16..24].copy_from_slice(&h.to_le_bytes());
        b
    }

    /// Check and decode a header read from `path`.
    pub fn decode(b: &[u8], path: &Path) -> Result<Header> {
        let p = path.display();
        if b.len() < 16 || &b[0..8] != MAGIC {
            bail!("{p} is not a ckpt image (bad magic)");
        }
        let version = u32::from_le_bytes(b[8..12].try_into().unwrap());
        if version > FORMAT_VERSION {
            bail!(
                "{p} has image format version {version}, newer than this ckpt supports ({FORMAT_VERSION}); use a newer ckpt"
            );
        }
        if version == 1 {
            bail!(
                "{p} was written by an older ckpt (image format 1, not bound to its generation); this ckpt restores only sealed checkpoints (format {FORMAT_VERSION}): checkpoint the job again"
            );
        }
        if !(OLDEST_READ..=FORMAT_VERSION).contains(&version) {
            bail!("{p} has unknown image format version {version}");
        }
        if (b.len() as u64) < HEADER_LEN {
            bail!("{p} is truncated (header incomplete)");
        }
        let mut copy = b[..HEADER_LEN as usize].to_vec();
        let stored = u64_at(&copy, 16);
        copy[16..24].fill(0);
        if xxh3_64(&copy) != stored {
            bail!("{p} is corrupted (header checksum mismatch)");
        }
        Ok(Header {
            version,
            meta_offset: u64_at(b, 24),
            meta_len: u64_at(b, 32),
            meta_hash: u64_at(b, 40),
            pages_offset: u64_at(b, 48),
            pages_len: u64_at(b, 56),
            created_ns: u64_at(b, 64),
            tool_version: get_str(&b[72..104]),
            kernel: get_str(&b[104..168]),
            pid: u32::from_le_bytes(b[168..172].try_into().unwrap()),
            generation_id: b[172..188].try_into().unwrap(),
            checksum: stored,
        })
    }
}

/// Decode the metadata of an image of format `version` (one this ckpt reads).
///
/// Format 2 is format 3 without the attribute list that ends [`ProcessState`]: its
/// metadata plus one zero byte (postcard's empty list) is format 3 metadata, and the
/// process restores as a format 2 restore did.
pub fn decode_state(version: u32, mut meta: Vec<u8>) -> Result<ProcessState> {
    if version == 2 {
        meta.push(0);
    }
    Ok(postcard::from_bytes(&meta)?)
}

/// An image opened for reading, with header and metadata checked.
pub struct Image {
    pub path: PathBuf,
    pub header: Header,
    pub state: ProcessState,
    pub file: File,
}

impl Image {
    pub fn open(path: &Path) -> Result<Image> {
        let p = path.display();
        // Never through a symbolic link: an image is a plain file of its generation.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ELOOP) => anyhow::anyhow!(
                    "image {p} is a symbolic link; an image must be a plain file of its generation"
                ),
                _ => anyhow::Error::new(e).context(format!("opening image {p}")),
            })?;
        let md = file.metadata()?;
        if !md.is_file() {
            bail!("image {p} is not a regular file");
        }
        let size = md.len();
        let mut head = vec![0u8; HEADER_LEN.min(size) as usize];
        file.read_exact_at(&mut head, 0)
            .with_context(|| format!("reading {p}"))?;
        let header = Header::decode(&head, path)?;
        let end = header.meta_offset.checked_add(header.meta_len);
        if end.is_none_or(|e| e > size)
            || header.pages_offset != HEADER_LEN
            || header.pages_offset.checked_add(header.pages_len) != Some(header.meta_offset)
        {
            bail!("{p} is truncated or damaged (file is {size} bytes, header expects more)");
        }
        if end != Some(size) {
            bail!("{p} has trailing bytes after the metadata (damaged)");
        }
        let mut meta = vec![0u8; header.meta_len as usize];
        file.read_exact_at(&mut meta, header.meta_offset)
            .with_context(|| format!("reading metadata of {p}"))?;
        if xxh3_64(&meta) != header.meta_hash {
            bail!("{p} is corrupted (metadata checksum mismatch)");
        }
        let state = decode_state(header.version, meta)
            .with_context(|| format!("decoding metadata of {p}"))?;
        if state.pid as u32 != header.pid {
            bail!(
                "{p} is damaged (its header names process {}, its metadata process {})",
                header.pid,
                state.pid
            );
        }
        Ok(Image {
            path: path.to_path_buf(),
            header,
            state,
            file,
        })
    }

    /// Read every page run and compare its checksum; `progress` gets byte counts.
    pub fn verify_pages(&self, mut progress: impl FnMut(u64)) -> Result<()> {
        let mut buf = vec![0u8; 8 << 20];
        let limit = self.header.meta_offset;
        for vma in &self.state.vmas {
            for run in &vma.pages {
                let len = run.npages.checked_mul(PAGE);
                let end = len.and_then(|l| run.file_off.checked_add(l));
                if run.file_off < HEADER_LEN || end.is_none_or(|e| e > limit) {
                    bail!(
                        "{} is damaged (page run at {:#x} lies outside the page data)",
                        self.path.display(),
                        run.addr
                    );
                }
                let len = len.unwrap_or(0);
                let mut h = Xxh3::new();
                let mut done = 0;
                while done < len {
                    let n = (len - done).min(buf.len() as u64) as usize;
                    self.file
                        .read_exact_at(&mut buf[..n], run.file_off + done)?;
                    h.update(&buf[..n]);
                    done += n as u64;
                    progress(n as u64);
                }
                if h.digest() != run.hash {
                    bail!(
                        "{} is corrupted (checksum mismatch in page data of region {:#x}-{:#x})",
                        self.path.display(),
                        vma.start,
                        vma.end
                    );
                }
            }
        }
        Ok(())
    }

    pub fn stored_bytes(&self) -> u64 {
        self.state
            .vmas
            .iter()
            .flat_map(|v| v.pages.iter())
            .map(|r| r.npages.saturating_mul(PAGE))
            .fold(0u64, u64::saturating_add)
    }
}
