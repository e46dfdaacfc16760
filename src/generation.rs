//! The checkpoint directory (docs/CONTRACT.md §3): one generation directory per checkpoint
//! (`ckpt_<program>_<id>_<n>/` with `manifest.json` and one `core-<pid>.img` per
//! process), published atomically by rename; a `latest` link to the newest complete
//! generation; `ckpt_restart_script.sh`; at most `keep` generations.
//!
//! A generation is sealed: see `ckpt_format::manifest` for its manifest and checks.

use anyhow::{bail, Context, Result};
pub use ckpt_format::manifest::{
    self, hex, is_plain_name, open_images, CoordRef, Manifest, ManifestProcess, MANIFEST, PREFIX,
};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

pub const LATEST: &str = "latest";
pub const RESTART_SCRIPT: &str = "ckpt_restart_script.sh";

/// A generation being written: a hidden temporary directory until `publish`.
pub struct PendingGeneration {
    pub dir: PathBuf,
    ckpt_dir: PathBuf,
    name: String,
    /// Written into every image and into the manifest.
    pub id: [u8; 16],
    published: bool,
}

fn random_id() -> Result<[u8; 16]> {
    let mut id = [0u8; 16];
    // SAFETY: getrandom into a local buffer of that size.
    let n = unsafe { libc::getrandom(id.as_mut_ptr().cast(), id.len(), 0) };
    if n != id.len() as isize {
        bail!(
            "drawing a generation id: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(id)
}

fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))
}

/// The generation number in a name `ckpt_<prog>_<id>_<n>`.
fn gen_number(name: &str) -> Option<u64> {
    if !name.starts_with(PREFIX) {
        return None;
    }
    name.rsplit('_').next()?.parse().ok()
}

/// The bytes a generation takes on disk (its files).
pub fn bytes_on_disk(gen: &Path) -> u64 {
    fs::read_dir(gen)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Complete generations in `ckpt_dir`, oldest first.
pub fn generations(ckpt_dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<(u64, PathBuf)> = Vec::new();
    let rd = match fs::read_dir(ckpt_dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", ckpt_dir.display())),
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(n) = gen_number(&name) {
            // A generation is a directory of its own, never a link to one elsewhere.
            if e.file_type().is_ok_and(|t| t.is_dir()) && e.path().join(MANIFEST).is_file() {
                v.push((n, e.path()));
            }
        }
    }
    v.sort();
    Ok(v.into_iter().map(|(_, p)| p).collect())
}

/// The newest complete generation of each job directory (`job_<id>`, as the
/// coordinator names them) in `ckpt_dir`, for `ckpt run --restart-if-checkpoint`. A
/// generation being written has no place here: `latest` and the generation list only
/// ever name published ones.
pub fn job_checkpoints(ckpt_dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = match fs::read_dir(ckpt_dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", ckpt_dir.display())),
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let is_job = e.file_name().to_string_lossy().starts_with("job_");
        if !is_job || !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let dir = e.path();
        if let Some(g) = through_latest(&dir)?.or(generations(&dir)?.pop()) {
            out.push(g);
        }
    }
    out.sort();
    Ok(out)
}

fn sanitize(s: &str) -> String {
    let s: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .take(32)
        .collect();
    if s.is_empty() {
        "proc".into()
    } else {
        s
    }
}

impl PendingGeneration {
    pub fn create(ckpt_dir: &Path, program: &str, id: i32) -> Result<PendingGeneration> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(ckpt_dir)
            .with_context(|| format!("creating checkpoint directory {}", ckpt_dir.display()))?;
        let next = generations(ckpt_dir)?
            .iter()
            .filter_map(|p| gen_number(&p.file_name()?.to_string_lossy()))
            .max()
            .map_or(1, |n| n + 1);
        let name = format!("{PREFIX}{}_{id}_{next}", sanitize(program));
        remove_abandoned(ckpt_dir);
        let dir = ckpt_dir.join(format!(".{name}.tmp.{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        Ok(PendingGeneration {
            dir,
            ckpt_dir: ckpt_dir.to_path_buf(),
            name,
            id: random_id()?,
            published: false,
        })
    }

    /// The name the generation gets when published.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Write the manifest, fsync, rename into place, point `latest` at it, write the
    /// restart script and drop generations beyond `keep`. Returns the final path.
    /// The manifest's name and generation id must be this generation's.
    /// `make_whole` rewrites a kept generation that builds on one about to be dropped so
    /// that it holds all its pages (`make_whole` of src/incremental.rs).
    pub fn publish(
        mut self,
        manifest: &Manifest,
        keep: usize,
        make_whole: fn(&Path) -> Result<()>,
    ) -> Result<PathBuf> {
        if manifest.name != self.name || manifest.generation_id != hex(&self.id) {
            bail!(
                "internal error: the manifest of {} is not its own",
                self.name
            );
        }
        write_sealed(&self.dir.join(MANIFEST), manifest)?;
        sync_dir(&self.dir)?;
        let fin = self.ckpt_dir.join(&self.name);
        fs::rename(&self.dir, &fin).with_context(|| format!("publishing {}", fin.display()))?;
        self.published = true;
        // latest -> name, replaced atomically.
        let tmp_link = self
            .ckpt_dir
            .join(format!(".{LATEST}.tmp.{}", std::process::id()));
        let _ = fs::remove_file(&tmp_link);
        std::os::unix::fs::symlink(&self.name, &tmp_link)?;
        fs::rename(&tmp_link, self.ckpt_dir.join(LATEST))?;
        write_restart_script(&self.ckpt_dir)?;
        sync_dir(&self.ckpt_dir)?;
        prune(&self.ckpt_dir, keep, &fin, make_whole)?;
        Ok(fin)
    }
}

impl Drop for PendingGeneration {
    fn drop(&mut self) {
        if !self.published {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Remove unfinished generations whose writer is gone (a ckpt killed mid-checkpoint),
/// saying so: otherwise nobody learns that a checkpoint was lost that way.
fn remove_abandoned(ckpt_dir: &Path) {
    for u in unfinished(ckpt_dir) {
        if u.writer_running {
            continue;
        }
        match fs::remove_dir_all(&u.path) {
            Ok(()) => eprintln!(
                "ckpt: warning: removed an unfinished checkpoint left by an interrupted dump (pid {}): {}",
                u.writer,
                u.path.display()
            ),
            Err(e) => eprintln!(
                "ckpt: warning: cannot remove an unfinished checkpoint left by an interrupted dump (pid {}): {}: {e}",
                u.writer,
                u.path.display()
            ),
        }
    }
}

fn prune(
    ckpt_dir: &Path,
    keep: usize,
    newest: &Path,
    make_whole: fn(&Path) -> Result<()>,
) -> Result<()> {
    let gens = generations(ckpt_dir)?;
    let keep = keep.max(1);
    if gens.len() > keep {
        let (dropped, kept) = gens.split_at(gens.len() - keep);
        // A kept generation that builds on one about to go is made whole first. If that
        // fails (a full disk), nothing is dropped: every generation still restores.
        for k in kept {
            let follows = read_manifest(k).ok().and_then(|m| m.parent);
            if follows.is_some_and(|p| {
                dropped
                    .iter()
                    .any(|d| d.file_name().is_some_and(|n| *n == *p))
            }) {
                if let Err(e) = make_whole(k) {
                    eprintln!(
                        "ckpt: warning: cannot merge the pages of older generations into {} ({e:#}); keeping them all",
                        k.display()
                    );
                    return Ok(());
                }
            }
        }
        for old in dropped {
            if old != newest {
                // Out of sight first (a hidden name, as an unfinished one), then
                // removed: nobody lists a generation half removed.
                let name = old.file_name().unwrap_or_default().to_string_lossy();
                let hidden = ckpt_dir.join(format!(".{name}.tmp.{}", std::process::id()));
                fs::rename(old, &hidden)
                    .with_context(|| format!("removing old generation {}", old.display()))?;
                fs::remove_dir_all(&hidden)
                    .with_context(|| format!("removing old generation {}", old.display()))?;
            }
        }
    }
    Ok(())
}

fn write_restart_script(ckpt_dir: &Path) -> Result<()> {
    let exe = std::env::current_exe().context("locating the ckpt binary")?;
    let script = format!(
        "#!/bin/sh\n# Restores the newest complete checkpoint of this directory (written by ckpt).\n\
         exec '{}' restore \"$(dirname \"$0\")/{LATEST}\" \"$@\"\n",
        exe.display()
    );
    write_script(&ckpt_dir.join(RESTART_SCRIPT), &script)
}

/// Write an executable script (0700) atomically: temporary file, fsync, rename.
pub fn write_script(path: &Path, script: &str) -> Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o700)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(script.as_bytes())?;
    f.sync_all()?;
    fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// The generation to restore from `dir`: a generation itself, the target of `latest`,
/// or the newest complete generation.
pub fn resolve(dir: &Path) -> Result<PathBuf> {
    // `DIR/latest` itself (as the restart script names it) is read like DIR.
    let is_link = fs::symlink_metadata(dir).is_ok_and(|m| m.file_type().is_symlink());
    if is_link && dir.file_name().is_some_and(|n| n == LATEST) {
        let parent = dir.parent().unwrap_or(Path::new("."));
        if let Some(g) = through_latest(parent)? {
            return Ok(g);
        }
    }
    if dir.join(MANIFEST).is_file() {
        return Ok(dir.to_path_buf());
    }
    check_readable(dir)?;
    if let Some(g) = through_latest(dir)? {
        return Ok(g);
    }
    match generations(dir)?.pop() {
        Some(g) => Ok(g),
        None => bail!("no complete checkpoint found in {}", dir.display()),
    }
}

/// The generation `DIR/latest` names, if it names a complete one. `latest` names a
/// generation of this directory, never a path elsewhere.
fn through_latest(dir: &Path) -> Result<Option<PathBuf>> {
    let latest = dir.join(LATEST);
    let Ok(target) = fs::read_link(&latest) else {
        return Ok(None);
    };
    let name = target.to_string_lossy();
    if !is_plain_name(&name) {
        bail!(
            "{} points to {name}, which is not a generation of {}; refusing",
            latest.display(),
            dir.display()
        );
    }
    let gen = dir.join(target);
    let is_dir = fs::symlink_metadata(&gen).is_ok_and(|m| m.is_dir());
    Ok((is_dir && gen.join(MANIFEST).is_file()).then_some(gen))
}

/// Replace the manifest of the published generation `gen` atomically (temporary
/// file, fsync, rename, fsync of the directory).
pub fn replace_manifest(gen: &Path, m: &Manifest) -> Result<()> {
    let tmp = gen.join(format!(".{MANIFEST}.tmp.{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    write_sealed(&tmp, m)?;
    fs::rename(&tmp, gen.join(MANIFEST))
        .with_context(|| format!("replacing the manifest of {}", gen.display()))?;
    sync_dir(gen)
}

/// Write the sealed manifest `m` into the new file `path` (0600) and fsync it.
fn write_sealed(path: &Path, m: &Manifest) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(&manifest::seal(m)?)?;
    f.sync_all()?;
    Ok(())
}

/// Read and check the manifest of generation `gen` (see [`manifest::unseal`]).
pub fn read_manifest(gen: &Path) -> Result<Manifest> {
    let p = gen.join(MANIFEST);
    let b = fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
    manifest::unseal(&b, &p, gen)
}

/// Fails, with the true cause, when `dir` cannot be read as a checkpoint directory:
/// it does not exist, or it or a directory on the way to it is closed to this user
/// (`Path::exists` says false for both).
fn check_readable(dir: &Path) -> Result<()> {
    let err = match fs::metadata(dir).and_then(|_| fs::read_dir(dir).map(drop)) {
        Ok(()) => {
            // The generation `latest` names may be closed even when the directory is not.
            let latest = dir.join(LATEST);
            return match fs::metadata(latest.join(MANIFEST)) {
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => bail!(
                    "cannot read checkpoint {}: permission denied ({})",
                    latest.display(),
                    who_closes(&latest)
                ),
                _ => Ok(()),
            };
        }
        Err(e) => e,
    };
    match err.kind() {
        std::io::ErrorKind::NotFound => {
            bail!("checkpoint directory {} does not exist", dir.display())
        }
        std::io::ErrorKind::PermissionDenied => bail!(
            "cannot read checkpoint directory {}: permission denied ({})",
            dir.display(),
            who_closes(dir)
        ),
        _ => Err(err).with_context(|| format!("reading checkpoint directory {}", dir.display())),
    }
}

/// Which directory on the way to `dir` (or `dir` itself) this user may not enter or
/// read, and whose it is: "it belongs to user root, mode 0700".
fn who_closes(dir: &Path) -> String {
    use nix::unistd::{access, AccessFlags};
    use std::os::unix::fs::MetadataExt;
    let n = dir.components().count();
    let mut closed = None;
    let mut p = PathBuf::new();
    for (i, c) in dir.components().enumerate() {
        p.push(c);
        let how = if i + 1 == n {
            AccessFlags::R_OK | AccessFlags::X_OK
        } else {
            AccessFlags::X_OK
        };
        if access(&p, how).is_err() {
            closed = Some(p.clone());
            break;
        }
    }
    let closed = closed.unwrap_or_else(|| dir.to_path_buf());
    let whose = match fs::metadata(&closed) {
        Ok(md) => format!(
            "belongs to user {}, mode {:04o}",
            crate::protocol::user_name(md.uid()),
            md.mode() & 0o7777
        ),
        Err(_) => "cannot be examined".into(),
    };
    if closed.components().eq(dir.components()) {
        format!("it {whose}")
    } else {
        format!("{} {whose}", closed.display())
    }
}

/// A generation still being written, or left unfinished by a ckpt that died:
/// `.ckpt_*.tmp.<pid of its writer>` in a checkpoint directory.
pub struct Unfinished {
    pub path: PathBuf,
    pub writer: i32,
    /// A process with the writer's pid runs (it may be still writing).
    pub writer_running: bool,
}

/// The unfinished generations in `ckpt_dir`, by name.
pub fn unfinished(ckpt_dir: &Path) -> Vec<Unfinished> {
    let Ok(rd) = fs::read_dir(ckpt_dir) else {
        return Vec::new();
    };
    let mut v: Vec<Unfinished> = rd
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with(&format!(".{PREFIX}")) {
                return None;
            }
            let writer = name.rsplit_once(".tmp.")?.1.parse::<i32>().ok()?;
            Some(Unfinished {
                path: e.path(),
                writer,
                writer_running: Path::new(&format!("/proc/{writer}")).exists(),
            })
        })
        .collect();
    v.sort_by(|a, b| a.path.cmp(&b.path));
    v
}
