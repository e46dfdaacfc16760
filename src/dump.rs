//! `ckpt dump PID`: freeze, read, write one generation, then let the process run on
//! (or kill it once the image is safely on disk). Any failure lets the process go.

use crate::generation::{Manifest, ManifestProcess, PendingGeneration};
use crate::image::{kernel_release, ImageWriter, PAGE};
use crate::progress;
use anyhow::{Context, Result};
use ckpt_tracer::read::{not_from_snapshot, read_process_with, MemReader};
use ckpt_tracer::snapshot::Snapshot;
use ckpt_tracer::state::ProcessState;
use ckpt_tracer::tree::{link_descriptors, FrozenTree};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use xxhash_rust::xxh3::Xxh3;

pub struct DumpOptions<'a> {
    pub pid: i32,
    pub dir: &'a Path,
    pub kill: bool,
    pub keep: usize,
}

#[derive(Debug, Clone)]
pub struct DumpReport {
    pub generation: PathBuf,
    /// How long the process was stopped.
    pub pause: Duration,
    pub total: Duration,
    pub image_bytes: u64,
}

const CHUNK: usize = 16 << 20;

/// Stream the stored page runs of `vmas` that `select` picks from `mem` into `w`.
fn write_runs(
    state: &mut ProcessState,
    select: impl Fn(u64, u64) -> bool,
    mem: &MemReader,
    w: &mut ImageWriter,
    buf: &mut [u8],
    bar: &indicatif::ProgressBar,
) -> Result<()> {
    let pid = state.pid;
    for vma in &mut state.vmas {
        if !select(vma.start, vma.end) {
            continue;
        }
        for run in &mut vma.pages {
            run.file_off = w.pos();
            let mut h = Xxh3::new();
            let len = run.npages * PAGE;
            let mut done = 0u64;
            while done < len {
                let n = (len - done).min(buf.len() as u64) as usize;
                mem.read(run.addr + done, &mut buf[..n]).with_context(|| {
                    format!(
                        "reading memory of process {pid} at {:#x} ({})",
                        run.addr + done,
                        vma.name
                    )
                })?;
                w.write_pages(&buf[..n], &mut h)?;
                done += n as u64;
                bar.inc(n as u64);
            }
            run.hash = h.digest();
        }
    }
    Ok(())
}

pub fn dump(opts: &DumpOptions) -> Result<DumpReport> {
    let t0 = Instant::now();
    let root = opts.pid;
    let mut tree = FrozenTree::freeze(root)?;
    let zombies = tree.zombies.clone();
    let mut states = Vec::new();
    let mut injectors = Vec::new();
    for f in &mut tree.procs {
        let (s, inj) = read_process_with(f)?;
        states.push(s);
        injectors.push(inj);
    }
    link_descriptors(&mut states)?;
    let created_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let gen = PendingGeneration::create(opts.dir, &states[0].comm, root)?;
    let mut writers = Vec::new();
    for s in &states {
        writers.push(ImageWriter::create(&gen.dir.join(image_name(s.pid)))?);
    }
    let total: u64 = states
        .iter()
        .flat_map(|s| s.vmas.iter())
        .flat_map(|v| v.pages.iter())
        .map(|r| r.npages * PAGE)
        .sum();
    let bar = progress::bar(total, "dumping");
    let mut buf = vec![0u8; CHUNK];

    // Copy-on-write snapshots let the tree run on while its memory is written; not
    // worth it when the tree is killed afterwards anyway. If one cannot be made, every
    // process stays stopped until its memory is written.
    let mut snapshots = Vec::new();
    if !opts.kill {
        for (f, inj) in tree.procs.iter_mut().zip(&injectors) {
            match Snapshot::take(f, inj) {
                Ok(s) => snapshots.push(s),
                Err(e) => {
                    eprintln!(
                        "ckpt: warning: process {}: no copy-on-write snapshot ({e}); the tree stays stopped while its memory is written",
                        f.pid
                    );
                    snapshots.clear();
                    break;
                }
            }
        }
    }
    drop(injectors);
    let use_snapshots = !snapshots.is_empty();
    // Regions fork does not copy faithfully, and shared ones, come from the originals.
    let mut from_parent = Vec::new();
    for s in &states {
        from_parent.push(if use_snapshots {
            not_from_snapshot(s.pid)
                .with_context(|| format!("reading the memory map of process {}", s.pid))?
        } else {
            vec![(0, u64::MAX)]
        });
    }
    let in_parent =
        |i: usize, s: u64, e: u64| from_parent[i].iter().any(|&(a, b)| a <= s && e <= b);
    let mut r = Ok(());
    for (i, (state, w)) in states.iter_mut().zip(&mut writers).enumerate() {
        r = MemReader::open(state.pid)
            .with_context(|| format!("opening memory of process {}", state.pid))
            .and_then(|mem| {
                write_runs(state, |s, e| in_parent(i, s, e), &mem, w, &mut buf, &bar)
            });
        if r.is_err() {
            break;
        }
    }
    let pause;
    let mut kill_after = None;
    if opts.kill && r.is_ok() {
        pause = t0.elapsed();
        kill_after = Some(tree);
    } else {
        // Let go before anything else can fail: snapshot cleanup needs the tree running.
        tree.release();
        pause = t0.elapsed();
    }
    r?;
    if use_snapshots {
        for ((i, (state, w)), snap) in states.iter_mut().zip(&mut writers).enumerate().zip(&snapshots) {
            let mem = MemReader::open(snap.memory_pid())
                .context("opening memory of the snapshot")?;
            write_runs(state, |s, e| !in_parent(i, s, e), &mem, w, &mut buf, &bar)?;
        }
    }
    bar.finish_and_clear();
    for snap in snapshots {
        let pid = snap.pid;
        snap.discard()
            .with_context(|| format!("removing the snapshot copy of process {pid}"))?;
    }
    let mut image_bytes = 0;
    for (state, w) in states.iter().zip(writers) {
        image_bytes += w.finish(state, created_ns)?;
    }
    let manifest = Manifest {
        tool_version: env!("CARGO_PKG_VERSION").into(),
        created_unix_ns: created_ns,
        kernel: kernel_release(),
        root_pid: root,
        processes: states
            .iter()
            .map(|s| ManifestProcess {
                pid: s.pid,
                ppid: s.ppid,
                pgid: s.pgid,
                sid: s.sid,
                image: image_name(s.pid),
                cmdline: s.cmdline.clone(),
            })
            .collect(),
        zombies,
    };
    let generation = gen.publish(&manifest, opts.keep)?;
    if let Some(t) = kill_after {
        t.kill();
    }
    Ok(DumpReport {
        generation,
        pause,
        total: t0.elapsed(),
        image_bytes,
    })
}

pub fn image_name(pid: i32) -> String {
    format!("core-{pid}.img")
}
