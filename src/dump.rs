//! `ckpt dump PID`: freeze, read, write one generation, then let the process run on
//! (or kill it once the image is safely on disk). Any failure lets the process go.

use crate::generation::{Manifest, ManifestProcess, PendingGeneration};
use crate::image::{kernel_release, ImageWriter, PAGE};
use crate::progress;
use anyhow::{Context, Result};
use ckpt_tracer::read::{not_from_snapshot, read_process_with, MemReader};
use ckpt_tracer::snapshot::Snapshot;
use ckpt_tracer::state::ProcessState;
use ckpt_tracer::Frozen;
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
    pid: i32,
    state: &mut ProcessState,
    select: impl Fn(u64, u64) -> bool,
    mem: &MemReader,
    w: &mut ImageWriter,
    buf: &mut [u8],
    bar: &indicatif::ProgressBar,
) -> Result<()> {
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
    let pid = opts.pid;
    let mut frozen = Frozen::freeze(pid)?;
    let (mut state, inj) = read_process_with(&mut frozen)?;
    let created_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let gen = PendingGeneration::create(opts.dir, &state.comm, pid)?;
    let image_name = format!("core-{pid}.img");
    let mut w = ImageWriter::create(&gen.dir.join(&image_name))?;

    let total: u64 = state
        .vmas
        .iter()
        .flat_map(|v| v.pages.iter())
        .map(|r| r.npages * PAGE)
        .sum();
    let bar = progress::bar(total, "dumping");
    let mut buf = vec![0u8; CHUNK];
    let parent_mem =
        MemReader::open(pid).with_context(|| format!("opening memory of process {pid}"))?;

    // A copy-on-write snapshot lets the process run on while its memory is written;
    // not worth it when the process is killed afterwards anyway.
    let snapshot = if opts.kill {
        None
    } else {
        match Snapshot::take(&mut frozen, &inj) {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("ckpt: warning: process {pid}: no copy-on-write snapshot ({e}); the process stays stopped while its memory is written");
                None
            }
        }
    };
    drop(inj);
    let pause;
    let mut kill_after = None;
    match &snapshot {
        Some(snap) => {
            let from_parent = not_from_snapshot(pid)
                .with_context(|| format!("reading the memory map of process {pid}"))?;
            let in_parent = |s: u64, e: u64| from_parent.iter().any(|&(a, b)| a <= s && e <= b);
            let r = write_runs(
                pid,
                &mut state,
                in_parent,
                &parent_mem,
                &mut w,
                &mut buf,
                &bar,
            );
            // Let go before anything else can fail: the snapshot's cleanup needs the
            // process released.
            frozen.release();
            r?;
            pause = t0.elapsed();
            let child_mem =
                MemReader::open(snap.memory_pid()).context("opening memory of the snapshot")?;
            write_runs(
                pid,
                &mut state,
                |s, e| !in_parent(s, e),
                &child_mem,
                &mut w,
                &mut buf,
                &bar,
            )?;
        }
        None => {
            write_runs(
                pid,
                &mut state,
                |_, _| true,
                &parent_mem,
                &mut w,
                &mut buf,
                &bar,
            )?;
            pause = t0.elapsed();
            if opts.kill {
                kill_after = Some(frozen);
            } else {
                frozen.release();
            }
        }
    }
    bar.finish_and_clear();
    if let Some(snap) = snapshot {
        snap.discard()
            .with_context(|| format!("removing the snapshot copy of process {pid}"))?;
    }
    let image_bytes = w.finish(&state, created_ns)?;
    let manifest = Manifest {
        tool_version: env!("CARGO_PKG_VERSION").into(),
        created_unix_ns: created_ns,
        kernel: kernel_release(),
        root_pid: pid,
        processes: vec![ManifestProcess {
            pid,
            ppid: state.ppid,
            image: image_name,
            cmdline: state.cmdline.clone(),
        }],
    };
    let generation = gen.publish(&manifest, opts.keep)?;
    if let Some(f) = kill_after {
        f.kill();
    }
    Ok(DumpReport {
        generation,
        pause,
        total: t0.elapsed(),
        image_bytes,
    })
}
