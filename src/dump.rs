//! `ckpt dump PID`: freeze, read, write one generation, then let the process run on
//! (or kill it once the image is safely on disk). Any failure lets the process go.

use crate::generation::{Manifest, ManifestProcess, PendingGeneration};
use crate::image::{kernel_release, ImageWriter, PAGE};
use crate::progress;
use anyhow::{Context, Result};
use ckpt_tracer::read::{read_process, MemReader};
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

pub fn dump(opts: &DumpOptions) -> Result<DumpReport> {
    let t0 = Instant::now();
    let pid = opts.pid;
    let mut frozen = Frozen::freeze(pid)?;
    let mut state = read_process(&mut frozen)?;
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
    let mem = MemReader::open(pid).with_context(|| format!("opening memory of process {pid}"))?;
    let mut buf = vec![0u8; CHUNK];
    for vma in &mut state.vmas {
        for run in &mut vma.pages {
            run.file_off = w.pos();
            let mut h = Xxh3::new();
            let len = run.npages * PAGE;
            let mut done = 0u64;
            while done < len {
                let n = (len - done).min(CHUNK as u64) as usize;
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
    bar.finish_and_clear();
    // Everything is read: the process may run on while the image reaches the disk.
    let pause;
    let kill_after = if opts.kill {
        pause = t0.elapsed();
        Some(frozen)
    } else {
        frozen.release();
        pause = t0.elapsed();
        None
    };
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
