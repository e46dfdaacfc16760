//! The generation manifest (`manifest.json`): which processes a generation holds and
//! in which image files, sealed so that nothing can be mixed up or forged unseen.
//!
//! A generation has a random generation id, written into the header of each of its
//! images; its manifest lists every image by plain file name with the process's pid
//! and the image's header checksum (which covers the metadata and, through the per-run
//! checksums there, the page data), and the manifest itself carries a checksum.
//! [`unseal`] and [`open_images`] check all of it, so an image of another generation
//! or another process, a path leading out of the generation, or a manifest of another
//! generation is refused with the file named.
//!
//! On disk: `{"format": 2, "checksum": "<xxh3 hex>", "manifest": {...}}`, the checksum
//! taken over the exact text of `manifest`. See docs/FORMAT.md for the compatibility
//! rule.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use xxhash_rust::xxh3::xxh3_64;

/// Generation directories are named `ckpt_<program>_<id>_<n>`.
pub const PREFIX: &str = "ckpt_";
pub const MANIFEST: &str = "manifest.json";
/// The manifest format this ckpt writes; it also reads format 2 (the same shape).
pub const MANIFEST_FORMAT: u32 = 3;

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct ManifestProcess {
    pub pid: i32,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    /// A plain file name inside the generation.
    pub image: String,
    /// The image's header checksum (xxh3, hex).
    pub image_checksum: String,
    pub cmdline: Vec<String>,
}

/// Where a coordinated job's coordinator was, and how it was checkpointed.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CoordRef {
    pub host: String,
    pub port: u16,
    pub interval: u64,
    pub keep: usize,
    pub job_id: String,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Manifest {
    /// The generation's directory name, as published.
    pub name: String,
    /// Random, 32 hex digits; every image of the generation carries it.
    pub generation_id: String,
    pub tool_version: String,
    pub created_unix_ns: u64,
    pub kernel: String,
    pub root_pid: i32,
    /// Parents before children.
    pub processes: Vec<ManifestProcess>,
    /// Children that had exited but were not reaped yet.
    pub zombies: Vec<crate::state::Zombie>,
    /// The coordinator the job was registered with, if any.
    pub coordinator: Option<CoordRef>,
    /// The generation (a directory beside this one) whose pages this incremental one
    /// does not store again; absent for a generation that holds all its pages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
}

/// The on-disk form of the manifest: the manifest's exact text and its checksum.
#[derive(Serialize, Deserialize)]
struct Sealed<'a> {
    format: u32,
    checksum: String,
    #[serde(borrow)]
    manifest: &'a serde_json::value::RawValue,
}

/// Only the format, to tell an old or newer manifest from a damaged one.
#[derive(Deserialize)]
struct FormatOnly {
    format: Option<u32>,
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `name` is a plain file name: no directory part, not `.` or `..`, not hidden,
/// only characters ckpt itself uses in names.
pub fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// The manifest's on-disk bytes.
pub fn seal(manifest: &Manifest) -> Result<Vec<u8>> {
    let body = serde_json::to_string_pretty(manifest)?;
    let raw = serde_json::value::RawValue::from_string(body)?;
    let sealed = Sealed {
        format: MANIFEST_FORMAT,
        checksum: format!("{:016x}", xxh3_64(raw.get().as_bytes())),
        manifest: &raw,
    };
    Ok(serde_json::to_vec_pretty(&sealed)?)
}

/// Decode and check the manifest `b` read from `p`, the manifest of generation
/// directory `gen`: its format, its checksum, and that it names this generation and
/// only plain image files in it.
pub fn unseal(b: &[u8], p: &Path, gen: &Path) -> Result<Manifest> {
    let pd = p.display();
    let format = serde_json::from_slice::<FormatOnly>(b)
        .map(|f| f.format)
        .unwrap_or(Some(0));
    match format {
        None => bail!(
            "{pd} was written by an older ckpt (manifest format 1, not sealed); this ckpt restores only sealed checkpoints (format {MANIFEST_FORMAT}): checkpoint the job again"
        ),
        Some(f) if f > MANIFEST_FORMAT => bail!(
            "{pd} has manifest format {f}, newer than this ckpt supports ({MANIFEST_FORMAT}); use a newer ckpt"
        ),
        // Format 2 manifests have the same shape (format 3 changed only the images).
        Some(2 | MANIFEST_FORMAT) => {}
        Some(_) => bail!("{pd} is damaged (not a ckpt manifest)"),
    }
    let sealed: Sealed = serde_json::from_slice(b).with_context(|| format!("{pd} is damaged"))?;
    let sum = format!("{:016x}", xxh3_64(sealed.manifest.get().as_bytes()));
    if sum != sealed.checksum {
        bail!("{pd} is corrupted (manifest checksum mismatch)");
    }
    let m: Manifest =
        serde_json::from_str(sealed.manifest.get()).with_context(|| format!("{pd} is damaged"))?;
    // A directory named like a generation must be the generation its manifest names:
    // a generation renamed over another would restore an older state under a newer name.
    let dir_name = gen
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if dir_name.starts_with(PREFIX) && dir_name != m.name {
        bail!(
            "{pd} belongs to generation {}, not to {dir_name}; refusing a generation under another's name",
            m.name
        );
    }
    let mut pids = std::collections::HashSet::new();
    let mut names = std::collections::HashSet::new();
    for proc_ in &m.processes {
        if !is_plain_name(&proc_.image) {
            bail!(
                "{pd} names image {:?} for process {}, which is not a plain file name inside the generation; refusing",
                proc_.image,
                proc_.pid
            );
        }
        if !pids.insert(proc_.pid) || !names.insert(proc_.image.as_str()) {
            bail!(
                "{pd} is damaged (process {} or image {} is listed twice)",
                proc_.pid,
                proc_.image
            );
        }
    }
    Ok(m)
}

/// Open and check every image of generation `gen` against its manifest: each must
/// carry the generation's id, the listed pid, and the listed header checksum.
pub fn open_images(gen: &Path, m: &Manifest) -> Result<Vec<crate::image::Image>> {
    let mut images = Vec::new();
    for proc_ in &m.processes {
        let path = gen.join(&proc_.image);
        let img = crate::image::Image::open(&path)?;
        let p = path.display();
        if hex(&img.header.generation_id) != m.generation_id {
            bail!(
                "{p} belongs to another generation (id {}, the manifest's is {}); refusing a mixed-up checkpoint",
                hex(&img.header.generation_id),
                m.generation_id
            );
        }
        if img.header.pid as i32 != proc_.pid {
            bail!(
                "{p} holds process {}, but the manifest lists it for process {}; refusing",
                img.header.pid,
                proc_.pid
            );
        }
        if format!("{:016x}", img.header.checksum) != proc_.image_checksum {
            bail!("{p} is not the image its manifest sealed (checksum mismatch); refusing");
        }
        images.push(img);
    }
    Ok(images)
}
