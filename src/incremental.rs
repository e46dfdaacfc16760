//! Incremental generations (issue 11), in one place: what a checkpoint that follows
//! another of the same job stores, how a restore finds the rest, and how a generation
//! is made whole again when the one it follows is dropped.
//!
//! **Dump.** Every image records the xxh3-128 of each page of its private regions
//! (`Attr::PageHashes`). A dump into a directory whose `latest` generation holds the
//! same pid compares each page it reads with the parent's hash at the same address;
//! an equal page is not written but listed in `Attr::Parent` (runs of pages, with the
//! parent's name and generation id), and the manifest names the parent. Pages are
//! compared by content, so a page is only ever taken from a parent that held exactly
//! these bytes at this address: a reused pid, a remapped region or a restored process
//! cost sharing, never correctness. Shared regions (whose pages other processes may
//! store) are always stored whole.
//!
//! **Restore.** [`Chain::of`] follows the parents (each a generation beside this one,
//! its manifest and generation id checked) until every listed page is found in some
//! image's own runs. Every page read from an ancestor is checked against the newest
//! image's hashes (which its sealed metadata covers) before anything is created.
//!
//! **Dropping a base.** `--keep N` drops old generations; before one is removed, every
//! kept generation that follows it is rewritten whole ([`make_whole`]): a new image per
//! process with all its pages, then the manifest replaced atomically, then the old
//! images removed. So every kept generation restores on its own at every moment.

use crate::generation::{self, Manifest};
use crate::image::{Image, ImageWriter, PageBuffer, PAGE};
use anyhow::{bail, Context, Result};
use ckpt_format::state::{Attr, HashedRun, PageRun, ParentPages, ProcessState, Vma, VmaKind};
use ckpt_tracer::dirty::Tracker;
use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use xxhash_rust::xxh3::{xxh3_128, Xxh3};

/// Bytes of one page hash.
pub const HASH_LEN: usize = 16;

pub type PageHash = [u8; HASH_LEN];

pub fn page_hash(page: &[u8]) -> PageHash {
    xxh3_128(page).to_le_bytes()
}

/// Whether the stored pages of `v` take part: private regions, whose stored pages are
/// the process's own (anonymous or written copy-on-write).
pub fn inheritable(v: &Vma) -> bool {
    !v.shared
        && matches!(
            v.kind,
            VmaKind::Anon
                | VmaKind::File { .. }
                | VmaKind::Unlinked { .. }
                | VmaKind::DeletedFile { .. }
        )
}

/// The parent an image names, if any.
pub fn parent_of(state: &ProcessState) -> Option<&ParentPages> {
    state.attrs.iter().find_map(|a| match a {
        Attr::Parent(p) => Some(p),
        _ => None,
    })
}

/// The page hashes an image records, sorted by address.
fn hashes_of(state: &ProcessState) -> Vec<(u64, PageHash)> {
    let mut out = Vec::new();
    for a in &state.attrs {
        let Attr::PageHashes(runs) = a else { continue };
        for r in runs {
            for (i, h) in r.hashes.chunks_exact(HASH_LEN).enumerate() {
                out.push((r.addr + i as u64 * PAGE, h.try_into().unwrap()));
            }
        }
    }
    out.sort_unstable_by_key(|e| e.0);
    out
}

fn lookup(hashes: &[(u64, PageHash)], addr: u64) -> Option<&PageHash> {
    let i = hashes.partition_point(|e| e.0 < addr);
    hashes.get(i).filter(|e| e.0 == addr).map(|e| &e.1)
}

// ------------------------------------------------------------------------ dump

/// The generation a dump follows, with the page hashes of each of its processes.
pub struct Parent {
    pub name: String,
    pub id: String,
    hashes: HashMap<i32, Vec<(u64, PageHash)>>,
}

impl Parent {
    /// The newest complete generation of `dir`, if there is one to follow. Read before
    /// the tree is frozen. Anything wrong with it only means a whole checkpoint.
    pub fn latest_in(dir: &Path) -> Option<Parent> {
        let read = || -> Result<Option<Parent>> {
            if !dir.join(generation::LATEST).exists() {
                return Ok(None);
            }
            let gen = generation::resolve(dir)?;
            let m = generation::read_manifest(&gen)?;
            let mut hashes = HashMap::new();
            for img in ckpt_format::manifest::open_images(&gen, &m)? {
                hashes.insert(img.state.pid, hashes_of(&img.state));
            }
            Ok(Some(Parent {
                name: m.name,
                id: m.generation_id,
                hashes,
            }))
        };
        match read() {
            Ok(p) => p,
            Err(e) => {
                log::info!(
                    "not incremental: the newest generation of {} cannot be followed: {e:#}",
                    dir.display()
                );
                None
            }
        }
    }

    /// What process `pid`'s dump compares against (nothing: every page is stored).
    pub fn delta_for(&mut self, pid: i32) -> Delta {
        Delta {
            parent: self.hashes.remove(&pid),
            ..Delta::default()
        }
    }
}

/// What the dump of one process learns page by page.
#[derive(Default)]
pub struct Delta {
    parent: Option<Vec<(u64, PageHash)>>,
    inherited: Vec<PageRun>,
    hashes: Vec<HashedRun>,
    /// Regions whose written pages since the parent are known (written-page tracking),
    /// and those pages; both sorted.
    known: Vec<(u64, u64)>,
    changed: Vec<(u64, u64)>,
    /// Pages taken from the parent without being read.
    pub skipped: u64,
}

fn in_ranges(r: &[(u64, u64)], addr: u64) -> bool {
    let i = r.partition_point(|&(s, _)| s <= addr);
    i > 0 && addr < r[i - 1].1
}

impl Delta {
    /// Written-page tracking says which pages of `known` (regions, `(start, end)`) may
    /// differ from the parent: `changed`, `(addr, npages)`.
    pub fn set_known(&mut self, mut known: Vec<(u64, u64)>, changed: Vec<(u64, u64)>) {
        known.sort_unstable();
        let mut changed: Vec<(u64, u64)> =
            changed.iter().map(|&(a, n)| (a, a + n * PAGE)).collect();
        changed.sort_unstable();
        self.known = known;
        self.changed = changed;
    }

    /// Whether the page at `addr` is known to be the parent's without reading it; if so
    /// it is recorded as taken from the parent.
    pub fn take_unread(&mut self, addr: u64) -> bool {
        if self.known.is_empty() || !in_ranges(&self.known, addr) || in_ranges(&self.changed, addr)
        {
            return false;
        }
        let Some(h) = self
            .parent
            .as_deref()
            .and_then(|p| lookup(p, addr))
            .copied()
        else {
            return false;
        };
        self.push_hash(addr, &h);
        ckpt_tracer::maps::push_page(&mut self.inherited, addr);
        self.skipped += 1;
        true
    }

    fn push_hash(&mut self, addr: u64, h: &PageHash) {
        match self.hashes.last_mut() {
            Some(r) if r.addr + (r.hashes.len() / HASH_LEN) as u64 * PAGE == addr => {
                r.hashes.extend_from_slice(h)
            }
            _ => self.hashes.push(HashedRun {
                addr,
                hashes: h.to_vec(),
            }),
        }
    }

    /// Page `page` at `addr` of a private region was read: records its hash; true when
    /// the parent holds the same bytes there (the page is then not stored).
    pub fn page(&mut self, addr: u64, page: &[u8]) -> bool {
        let h = page_hash(page);
        self.push_hash(addr, &h);
        let same = self
            .parent
            .as_deref()
            .and_then(|p| lookup(p, addr))
            .is_some_and(|ph| *ph == h);
        if same {
            ckpt_tracer::maps::push_page(&mut self.inherited, addr);
        }
        same
    }

    /// Bytes not stored because the parent holds them.
    pub fn inherited_bytes(&self) -> u64 {
        self.inherited.iter().map(|r| r.npages * PAGE).sum()
    }

    /// Record what was learnt in the image's attributes.
    pub fn finish(self, state: &mut ProcessState, parent: Option<&Parent>) {
        if let (Some(p), false) = (parent, self.inherited.is_empty()) {
            state.attrs.push(Attr::Parent(ParentPages {
                generation: p.name.clone(),
                generation_id: p.id.clone(),
                runs: self.inherited,
            }));
        }
        if !self.hashes.is_empty() {
            state.attrs.push(Attr::PageHashes(self.hashes));
        }
    }
}

/// The written-page trackers of a job's processes (`ckpt_tracer::dirty`), kept by its
/// agent from one checkpoint to the next: a `ckpt dump` from the command line has
/// nobody to keep them and compares every page instead.
#[derive(Default)]
pub struct Trackers {
    by_pid: HashMap<i32, Tracker>,
    /// The generation published after the trackers' last scan: a page they report
    /// unchanged holds what that generation stored.
    scanned_for: Option<String>,
}

pub type SharedTrackers = std::sync::Arc<std::sync::Mutex<Trackers>>;

impl Trackers {
    /// With the tree frozen, before its snapshots: tell each process's `Delta` which
    /// pages changed since the last scan (when the parent is the generation of that
    /// scan), and protect every page again; start tracking processes and regions not
    /// tracked yet. Tracking that fails only means reading every page.
    pub fn scan(
        &mut self,
        procs: &mut [ckpt_tracer::freeze::Frozen],
        injectors: &[ckpt_tracer::inject::Injector],
        states: &[ProcessState],
        parent: Option<&Parent>,
        deltas: &mut [Delta],
    ) {
        let valid = parent.is_some_and(|p| self.scanned_for.as_deref() == Some(p.name.as_str()));
        self.scanned_for = None;
        self.by_pid
            .retain(|pid, _| states.iter().any(|s| s.pid == *pid));
        for (i, f) in procs.iter_mut().enumerate() {
            let regions: Vec<(u64, u64)> = states[i]
                .vmas
                .iter()
                .filter(|v| inheritable(v))
                .map(|v| (v.start, v.end))
                .collect();
            let mut untracked = regions.is_empty();
            if let Some(t) = self.by_pid.get(&f.pid) {
                let Ok(pagemap) = fs::File::open(format!("/proc/{}/pagemap", f.pid)) else {
                    continue;
                };
                let (mut known, mut changed) = (Vec::new(), Vec::new());
                for &(s, e) in &regions {
                    let inside = t.regions.iter().any(|&(a, b)| a <= s && e <= b);
                    match inside.then(|| t.changed(&pagemap, s, e)) {
                        Some(Ok(Some(c))) => {
                            known.push((s, e));
                            changed.extend(c);
                        }
                        _ => untracked = true,
                    }
                }
                if valid {
                    deltas[i].set_known(known, changed);
                }
            } else {
                untracked = true;
            }
            if untracked && !regions.is_empty() {
                // Register again, all regions as they are now (every page protected).
                self.by_pid.remove(&f.pid);
                match Tracker::start(f, &injectors[i], &regions) {
                    Ok(t) => {
                        self.by_pid.insert(f.pid, t);
                    }
                    Err(e) => log::info!(
                        "process {}: no written-page tracking ({e}); every page is compared",
                        f.pid
                    ),
                }
            }
        }
    }

    /// The checkpoint whose freeze scanned last was published as `name`.
    pub fn published(&mut self, name: &str) {
        self.scanned_for = Some(name.to_string());
    }
}

// --------------------------------------------------------------------- restore

/// Pages of a process read at restore from an image other than its own: `npages` at
/// `addr`, from `Chain::ancestors[src]` at `file_off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SrcRun {
    pub addr: u64,
    pub npages: u64,
    pub file_off: u64,
    pub src: usize,
}

/// The older images an incremental image's pages come from.
pub struct Chain {
    /// Parent first.
    pub ancestors: Vec<Image>,
    /// Every page the image does not store itself, sorted by address.
    pub runs: Vec<SrcRun>,
    /// Generation names, parent first (for messages and `ckpt info`).
    pub names: Vec<String>,
}

/// `a` minus `b` and `a` intersected with `b`, both sorted lists of page ranges
/// `(addr, npages)`; the intersection keeps `b`'s index.
type Ranges = Vec<(u64, u64)>;
type Tagged = Vec<(u64, u64, usize)>;

fn split(a: &[(u64, u64)], b: &[(u64, u64, usize)]) -> (Ranges, Tagged) {
    let (mut rest, mut both) = (Vec::new(), Vec::new());
    let mut j = 0;
    for &(start, n) in a {
        let end = start + n * PAGE;
        let mut at = start;
        while j < b.len() && b[j].0 + b[j].1 * PAGE <= at {
            j += 1;
        }
        let mut k = j;
        while at < end {
            match b.get(k) {
                Some(&(bs, bn, bi)) if bs < end => {
                    let be = bs + bn * PAGE;
                    if bs > at {
                        rest.push((at, (bs - at) / PAGE));
                        at = bs;
                    }
                    let e = be.min(end);
                    if e > at {
                        both.push((at, (e - at) / PAGE, bi));
                        at = e;
                    }
                    if be <= end {
                        k += 1;
                    }
                }
                _ => {
                    rest.push((at, (end - at) / PAGE));
                    at = end;
                }
            }
        }
    }
    (rest, both)
}

/// Every own run of an image, sorted by address.
fn own_runs(state: &ProcessState) -> Vec<PageRun> {
    let mut runs: Vec<PageRun> = state
        .vmas
        .iter()
        .flat_map(|v| v.pages.iter().copied())
        .collect();
    runs.sort_unstable_by_key(|r| r.addr);
    runs
}

impl Chain {
    /// The images the pages `img` (of generation `gen`) does not store come from;
    /// `None` for a whole image.
    pub fn of(gen: &Path, img: &Image) -> Result<Option<Chain>> {
        let Some(first) = parent_of(&img.state) else {
            return Ok(None);
        };
        let pid = img.state.pid;
        let mut want: Vec<(u64, u64)> = first.runs.iter().map(|r| (r.addr, r.npages)).collect();
        want.sort_unstable();
        let mut parent = first.clone();
        let mut dir = gen.to_path_buf();
        let mut chain = Chain {
            ancestors: Vec::new(),
            runs: Vec::new(),
            names: Vec::new(),
        };
        while !want.is_empty() {
            if chain.ancestors.len() > 4096 {
                bail!(
                    "{} is damaged (its generations follow each other in a circle)",
                    gen.display()
                );
            }
            let pdir = locate(&dir, &parent.generation).with_context(|| {
                format!(
                    "{} builds on generation {}, which is gone; this checkpoint cannot be restored",
                    dir.display(),
                    parent.generation
                )
            })?;
            let m = generation::read_manifest(&pdir)?;
            if m.generation_id != parent.generation_id {
                bail!(
                    "{} builds on generation {} (id {}), but {} holds another generation (id {}); refusing a mixed-up checkpoint",
                    dir.display(),
                    parent.generation,
                    parent.generation_id,
                    pdir.display(),
                    m.generation_id
                );
            }
            let pimg = open_one(&pdir, &m, pid)?;
            let src = chain.ancestors.len();
            let own: Vec<(u64, u64, usize)> = own_runs(&pimg.state)
                .iter()
                .map(|r| (r.addr, r.npages, 0))
                .collect();
            let own_runs = own_runs(&pimg.state);
            let (rest, found) = split(&want, &own);
            for (addr, npages, _) in found {
                // The own run holding `addr`.
                let i = own_runs.partition_point(|r| r.addr + r.npages * PAGE <= addr);
                let r = own_runs[i];
                chain.runs.push(SrcRun {
                    addr,
                    npages,
                    file_off: r.file_off + (addr - r.addr),
                    src,
                });
            }
            let next = parent_of(&pimg.state).cloned();
            chain.names.push(m.name.clone());
            chain.ancestors.push(pimg);
            want = rest;
            if want.is_empty() {
                break;
            }
            match next {
                Some(n) => {
                    // What is still missing must be what this one takes from its own parent.
                    let theirs: Vec<(u64, u64, usize)> =
                        n.runs.iter().map(|r| (r.addr, r.npages, 0)).collect();
                    let (missing, _) = split(&want, &theirs);
                    if let Some(&(addr, _)) = missing.first() {
                        bail!(
                            "{} is damaged (page {addr:#x} of process {pid} is in none of the generations it builds on)",
                            gen.display()
                        );
                    }
                    parent = n;
                    dir = pdir;
                }
                None => bail!(
                    "{} is damaged (page {:#x} of process {pid} is in none of the generations it builds on)",
                    gen.display(),
                    want[0].0
                ),
            }
        }
        chain.runs.sort_unstable_by_key(|r| r.addr);
        Ok(Some(chain))
    }

    pub fn bytes(&self) -> u64 {
        self.runs.iter().map(|r| r.npages * PAGE).sum()
    }

    /// Read every page taken from an ancestor and compare it with the hash `img`
    /// recorded for it.
    pub fn verify(&self, img: &Image, mut progress: impl FnMut(u64)) -> Result<()> {
        let hashes = hashes_of(&img.state);
        let mut buf = vec![0u8; 4 << 20];
        for r in &self.runs {
            let src = &self.ancestors[r.src];
            let mut done = 0;
            while done < r.npages * PAGE {
                let n = (r.npages * PAGE - done).min(buf.len() as u64) as usize;
                src.file
                    .read_exact_at(&mut buf[..n], r.file_off + done)
                    .with_context(|| format!("reading {}", src.path.display()))?;
                for (i, page) in buf[..n].chunks_exact(PAGE as usize).enumerate() {
                    let addr = r.addr + done + i as u64 * PAGE;
                    if lookup(&hashes, addr) != Some(&page_hash(page)) {
                        bail!(
                            "{} is corrupted (page {addr:#x} of process {}, stored in {}, does not match)",
                            img.path.display(),
                            img.state.pid,
                            src.path.display()
                        );
                    }
                }
                done += n as u64;
                progress(n as u64);
            }
        }
        Ok(())
    }
}

/// Generation `name` beside `dir`.
fn locate(dir: &Path, name: &str) -> Result<PathBuf> {
    if !ckpt_format::manifest::is_plain_name(name) {
        bail!(
            "{} names a parent generation {name:?} that is not a plain name; refusing",
            dir.display()
        );
    }
    let p = dir.parent().unwrap_or(Path::new(".")).join(name);
    if !p.join(generation::MANIFEST).is_file() {
        bail!("{} does not exist", p.display());
    }
    Ok(p)
}

/// The image of process `pid` in generation `gen`, checked against its manifest.
fn open_one(gen: &Path, m: &Manifest, pid: i32) -> Result<Image> {
    let Some(proc_) = m.processes.iter().find(|p| p.pid == pid) else {
        bail!("{} holds no process {pid}", gen.display());
    };
    let one = Manifest {
        processes: vec![proc_.clone()],
        ..m.clone()
    };
    Ok(ckpt_format::manifest::open_images(gen, &one)?.remove(0))
}

// ------------------------------------------------------------------ merging

/// Rewrite generation `gen` so that it holds all its pages itself: a new image per
/// incremental process (written and synced), the manifest replaced atomically, the
/// old images removed. `gen` restores at every step.
pub fn make_whole(gen: &Path) -> Result<()> {
    let mut written = Vec::new();
    let r = write_whole(gen, &mut written);
    if r.is_err() {
        // The manifest was not replaced: the new images are nobody's.
        for f in written {
            let _ = fs::remove_file(f);
        }
    }
    r
}

fn write_whole(gen: &Path, written: &mut Vec<PathBuf>) -> Result<()> {
    let m = generation::read_manifest(gen)?;
    if m.parent.is_none() {
        return Ok(());
    }
    let images = ckpt_format::manifest::open_images(gen, &m)?;
    let mut new_m = m.clone();
    new_m.parent = None;
    let mut old_files = Vec::new();
    let mut buf = PageBuffer::new(8 << 20);
    for (img, mp) in images.iter().zip(new_m.processes.iter_mut()) {
        let Some(chain) = Chain::of(gen, img)? else {
            continue;
        };
        let name = format!("{}-whole.img", mp.image.trim_end_matches(".img"));
        let path = gen.join(&name);
        let _ = fs::remove_file(&path);
        let mut w = ImageWriter::create(&path)?;
        written.push(path.clone());
        let mut state = img.state.clone();
        state.attrs.retain(|a| !matches!(a, Attr::Parent(_)));
        // Every run, own or inherited, in address order, with where to read it.
        let mut all: Vec<(u64, u64, u64, Option<usize>)> = own_runs(&img.state)
            .iter()
            .map(|r| (r.addr, r.npages, r.file_off, None))
            .chain(
                chain
                    .runs
                    .iter()
                    .map(|r| (r.addr, r.npages, r.file_off, Some(r.src))),
            )
            .collect();
        all.sort_unstable_by_key(|r| r.0);
        let mut next = 0;
        for v in &mut state.vmas {
            let mut runs = Vec::new();
            while next < all.len() && all[next].0 < v.end {
                let (addr, npages, off, src) = all[next];
                let file = match src {
                    None => &img.file,
                    Some(i) => &chain.ancestors[i].file,
                };
                let mut run = PageRun {
                    addr,
                    npages,
                    file_off: w.pos(),
                    hash: 0,
                };
                let mut h = Xxh3::new();
                let mut done = 0;
                while done < npages * PAGE {
                    let n = (npages * PAGE - done).min(buf.len() as u64) as usize;
                    file.read_exact_at(&mut buf[..n], off + done)?;
                    h.update(&buf[..n]);
                    w.write_pages(&buf[..n])?;
                    done += n as u64;
                }
                run.hash = h.digest();
                // Adjacent runs from different files stay separate runs: harmless.
                runs.push(run);
                next += 1;
            }
            v.pages = runs;
        }
        if next != all.len() {
            bail!(
                "{} is damaged (pages outside every region)",
                img.path.display()
            );
        }
        let (_, sum) = w.finish(&state, img.header.created_ns, img.header.generation_id)?;
        old_files.push(gen.join(&mp.image));
        mp.image = name;
        mp.image_checksum = format!("{sum:016x}");
    }
    generation::replace_manifest(gen, &new_m)?;
    written.clear();
    for f in old_files {
        let _ = fs::remove_file(f);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_finds_overlaps_and_the_rest() {
        let p = PAGE;
        let a = [(0, 10), (20 * p, 2)];
        let b = [(2 * p, 3, 7), (8 * p, 4, 9), (21 * p, 1, 1)];
        let (rest, both) = split(&a, &b);
        assert_eq!(rest, vec![(0, 2), (5 * p, 3), (20 * p, 1)]);
        assert_eq!(both, vec![(2 * p, 3, 7), (8 * p, 2, 9), (21 * p, 1, 1)]);
        let (rest, both) = split(&a, &[]);
        assert_eq!(rest, a.to_vec());
        assert!(both.is_empty());
    }
}
