//! `ckpt dump PID`: freeze, read, write one generation, then let the process run on
//! (or kill it once the image is safely on disk). Any failure lets the process go.

use crate::generation::{self, CoordRef, Manifest, ManifestProcess, PendingGeneration};
use crate::image::{kernel_release, ImageWriter, PageBuffer, PAGE};
use crate::incremental::{self, Delta, Parent};
use crate::progress;
use anyhow::{Context, Result};
use ckpt_format::state::{PageRun, ProcessState};
use ckpt_tracer::read::{read_process_with, MemReader};
use ckpt_tracer::snapshot::Snapshot;
use ckpt_tracer::tree::{dedupe_shared_pages, link_descriptors, FrozenTree, Zombie};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use xxhash_rust::xxh3::Xxh3;

pub struct DumpOptions<'a> {
    pub pid: i32,
    pub dir: &'a Path,
    pub kill: bool,
    pub keep: usize,
    /// The coordinator the job is registered with (recorded so that the restored job
    /// registers again).
    pub coordinator: Option<CoordRef>,
    /// Store every page, even those the newest generation of `dir` holds already
    /// (otherwise a dump with `keep` of 2 or more is incremental: src/incremental.rs).
    pub full: bool,
    /// The written-page trackers of the job, kept between its checkpoints by its agent.
    pub trackers: Option<incremental::SharedTrackers>,
}

#[derive(Debug, Clone)]
pub struct DumpReport {
    pub generation: PathBuf,
    /// How long the process was stopped.
    pub pause: Duration,
    pub total: Duration,
    pub image_bytes: u64,
    /// Page bytes not written because the generation this one follows holds them.
    pub inherited_bytes: u64,
    /// Of those, the bytes not even read (written-page tracking knew them unchanged).
    pub unread_bytes: u64,
}

const CHUNK: usize = 16 << 20;

/// The signal that asked `ckpt dump` to stop (0: none), set by [`stop_on_signals`].
static INTERRUPTED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_stop_signal(sig: libc::c_int) {
    INTERRUPTED.store(sig, Ordering::Relaxed);
}

/// Make SIGINT, SIGTERM and SIGHUP stop a dump at its next step instead of killing
/// ckpt on the spot (which would leave the partial generation behind, and a target
/// it was injecting a system call into would run on with the injected registers):
/// the dump then fails as on any error, which lets the tree go and removes the
/// partial generation. A second one of the same signal kills ckpt as before, should
/// a step never end. Only for `ckpt dump`: an agent passes these signals to its job.
pub fn stop_on_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe;
        // SA_RESTART keeps the waits and writes of the dump going until it checks,
        // SA_RESETHAND restores the default action for the next one.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_stop_signal as *const () as usize;
            sa.sa_flags = libc::SA_RESTART | libc::SA_RESETHAND;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// The error a dump stops with when a signal asked it to.
#[derive(Debug)]
struct Interrupted(i32);

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let name = match self.0 {
            libc::SIGINT => "SIGINT".to_string(),
            libc::SIGTERM => "SIGTERM".to_string(),
            libc::SIGHUP => "SIGHUP".to_string(),
            n => format!("signal {n}"),
        };
        write!(f, "interrupted by {name}")
    }
}

impl std::error::Error for Interrupted {}

/// Stop here if a signal asked to (checked between steps and between chunks of memory).
fn check_interrupted() -> Result<()> {
    match INTERRUPTED.load(Ordering::Relaxed) {
        0 => Ok(()),
        sig => Err(Interrupted(sig).into()),
    }
}

/// With CKPT_TIMING set, say on stderr how long each phase of a dump took.
fn phase(t0: Instant, what: &str) {
    log::debug!("dump: {what} at {:.1} ms", t0.elapsed().as_secs_f64() * 1e3);
    if std::env::var_os("CKPT_TIMING").is_some() {
        eprintln!(
            "ckpt: timing: {what} at {:.1} ms",
            t0.elapsed().as_secs_f64() * 1e3
        );
    }
}

/// Stream the stored page runs of `vmas` that `select` picks from `mem` into `w`.
/// Runs are gathered in `buf` and written a full buffer at a time: with O_DIRECT each
/// write goes to the disk, and many small runs written one by one would be slow.
/// Pages of private regions go through `delta` (src/incremental.rs): each is hashed,
/// and one the parent generation holds unchanged is left out (the buffer is compacted
/// over it), so a run may become several.
fn write_runs(
    state: &mut ProcessState,
    delta: &mut Delta,
    select: impl Fn(u64, u64) -> bool,
    mem: &MemReader,
    w: &mut ImageWriter,
    buf: &mut [u8],
    bar: &indicatif::ProgressBar,
) -> Result<()> {
    let pid = state.pid;
    let page = PAGE as usize;
    let mut fill = 0usize;
    for vma in &mut state.vmas {
        if !select(vma.start, vma.end) {
            continue;
        }
        let track = incremental::inheritable(vma);
        let mut own = Vec::with_capacity(vma.pages.len());
        for whole in std::mem::take(&mut vma.pages) {
            // Pages written-page tracking knows unchanged are not even read.
            let mut segments = Vec::new();
            for i in 0..whole.npages {
                let addr = whole.addr + i * PAGE;
                if track && delta.take_unread(addr) {
                    bar.inc(PAGE);
                    continue;
                }
                ckpt_tracer::maps::push_page(&mut segments, addr);
            }
            for run in segments {
                // The stored run being built: its first page's place in the file, and hash.
                let mut cur: Option<(PageRun, Xxh3)> = None;
                let len = run.npages * PAGE;
                let mut done = 0u64;
                while done < len {
                    check_interrupted()?;
                    let n = (len - done).min((buf.len() - fill) as u64) as usize;
                    mem.read(run.addr + done, &mut buf[fill..fill + n])
                        .with_context(|| {
                            format!(
                                "reading memory of process {pid} at {:#x} ({})",
                                run.addr + done,
                                vma.name
                            )
                        })?;
                    bar.inc(n as u64);
                    let mut kept = 0;
                    for i in 0..n / page {
                        let addr = run.addr + done + (i * page) as u64;
                        let at = fill + i * page;
                        if track && delta.page(addr, &buf[at..at + page]) {
                            own.extend(cur.take().map(close_run));
                            continue;
                        }
                        if kept != i * page {
                            buf.copy_within(at..at + page, fill + kept);
                        }
                        let (r, h) = cur.get_or_insert_with(|| {
                            (
                                PageRun {
                                    addr,
                                    npages: 0,
                                    file_off: w.pos() + (fill + kept) as u64,
                                    hash: 0,
                                },
                                Xxh3::new(),
                            )
                        });
                        r.npages += 1;
                        h.update(&buf[fill + kept..fill + kept + page]);
                        kept += page;
                    }
                    fill += kept;
                    done += n as u64;
                    if fill == buf.len() {
                        w.write_pages(&buf[..fill])?;
                        fill = 0;
                    }
                }
                own.extend(cur.take().map(close_run));
            }
        }
        vma.pages = own;
    }
    if fill > 0 {
        w.write_pages(&buf[..fill])?;
    }
    Ok(())
}

fn close_run((mut r, h): (PageRun, Xxh3)) -> PageRun {
    r.hash = h.digest();
    r
}

/// The network locks a dump took for connections saved with `--tcp-established`
/// (ckpt_tracer::netlock): dropped, they go (the dump failed, or its tree runs on);
/// [`TcpLocks::keep`] leaves them for the restore once the tree is killed.
struct TcpLocks;

impl TcpLocks {
    fn keep(self) {
        std::mem::forget(self);
        ckpt_tracer::fd::tcp_repair::dump_done(true);
    }
}

impl Drop for TcpLocks {
    fn drop(&mut self) {
        ckpt_tracer::fd::tcp_repair::dump_done(false);
    }
}

/// A checkpoint whose tree is frozen and whose state is read (the first phase of a
/// dump, and of a coordinated checkpoint: every job is frozen before any resumes).
/// Dropping it lets the tree run on and removes the unfinished generation.
pub struct FrozenDump {
    t0: Instant,
    root: i32,
    kill: bool,
    keep: usize,
    tree: FrozenTree,
    zombies: Vec<Zombie>,
    coordinator: Option<CoordRef>,
    states: Vec<ProcessState>,
    gen: PendingGeneration,
    writers: Vec<ImageWriter>,
    snapshots: Vec<Snapshot>,
    from_parent: Vec<Vec<(u64, u64)>>,
    /// The generation this one follows, and per process what its pages were against it.
    parent: Option<Parent>,
    deltas: Vec<Delta>,
    trackers: Option<incremental::SharedTrackers>,
    created_ns: u64,
    buf: PageBuffer,
    bar: indicatif::ProgressBar,
    locks: TcpLocks,
}

impl FrozenDump {
    /// Freeze the tree of `opts.pid`, read its state, take the copy-on-write snapshots
    /// and write what must come from the originals. The tree stays stopped.
    pub fn freeze(opts: &DumpOptions) -> Result<FrozenDump> {
        let root = opts.pid;
        ckpt_tracer::proc::warm_up_locks();
        let locks = TcpLocks;
        // Read before the freeze: the page hashes of the generation this one follows.
        let mut parent = if opts.full || opts.keep < 2 {
            None
        } else {
            Parent::latest_in(opts.dir)
        };
        // The pause counts from here: nothing is stopped before the freeze.
        let t0 = Instant::now();
        let mut tree = FrozenTree::freeze(root)?;
        phase(t0, "frozen");
        check_interrupted()?;
        let procs: Vec<(i32, i32)> = tree
            .procs
            .iter()
            .map(|f| Ok((f.pid, ckpt_tracer::proc::stat(f.pid)?.ppid)))
            .collect::<ckpt_tracer::Result<_>>()?;
        let zombie_parents: Vec<i32> = tree.zombies.iter().map(|z| z.ppid).collect();
        let has_children = |p: i32| procs.iter().any(|x| x.1 == p) || zombie_parents.contains(&p);
        let pids: Vec<i32> = procs.iter().map(|p| p.0).collect();
        let shared = ckpt_tracer::audit::check_tree(&pids)?;
        let shares =
            ckpt_tracer::attr::shares::children_sharing_all(&shared, &procs, &has_children)?;
        phase(t0, "tree audited");
        let zombies = tree.zombies.clone();
        let mut states = Vec::new();
        let mut injectors = Vec::new();
        let mut parent_only = Vec::new();
        for f in &mut tree.procs {
            let (s, extras) = read_process_with(f)?;
            states.push(s);
            parent_only.push(extras.not_from_snapshot);
            injectors.push(extras.injector);
        }
        phase(t0, "state read");
        check_interrupted()?;
        ckpt_tracer::attr::shares::record(&mut states, &shares);
        link_descriptors(&mut states)?;
        dedupe_shared_pages(&mut states);
        ckpt_tracer::attr::sysvipc::dedupe_tree(&mut states);
        let created_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let mut deltas: Vec<Delta> = states
            .iter()
            .map(|s| {
                parent
                    .as_mut()
                    .map(|p| p.delta_for(s.pid))
                    .unwrap_or_default()
            })
            .collect();
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

        // Copy-on-write snapshots let the tree run on while its memory is written; not
        // worth it when the tree is killed afterwards anyway. If one cannot be made,
        // every process stays stopped until its memory is written.
        // Which pages changed since the last checkpoint, while nothing can write.
        if let Some(tr) = &opts.trackers {
            tr.lock().unwrap().scan(
                &mut tree.procs,
                &injectors,
                &states,
                parent.as_ref(),
                &mut deltas,
            );
            phase(t0, "written pages scanned");
        }
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
        phase(t0, "snapshots taken");
        // Regions fork does not copy faithfully, and shared ones, come from the originals.
        let from_parent: Vec<Vec<(u64, u64)>> = if snapshots.is_empty() {
            states.iter().map(|_| vec![(0, u64::MAX)]).collect()
        } else {
            parent_only
        };
        let mut d = FrozenDump {
            t0,
            root,
            kill: opts.kill,
            keep: opts.keep,
            tree,
            zombies,
            coordinator: opts.coordinator.clone(),
            states,
            gen,
            writers,
            snapshots,
            from_parent,
            parent,
            deltas,
            trackers: opts.trackers.clone(),
            created_ns,
            buf: PageBuffer::new(CHUNK),
            bar,
            locks,
        };
        d.write_from_originals()?;
        phase(t0, "originals-only regions written");
        Ok(d)
    }

    /// Write the runs that must come from the frozen originals.
    fn write_from_originals(&mut self) -> Result<()> {
        let procs = self
            .states
            .iter_mut()
            .zip(&mut self.writers)
            .zip(&mut self.deltas);
        for (i, ((state, w), delta)) in procs.enumerate() {
            let regions = &self.from_parent[i];
            let mem = MemReader::open(state.pid)
                .with_context(|| format!("opening memory of process {}", state.pid))?;
            write_runs(
                state,
                delta,
                |s, e| regions.iter().any(|&(a, b)| a <= s && e <= b),
                &mem,
                w,
                &mut self.buf,
                &self.bar,
            )?;
        }
        Ok(())
    }

    /// Let the tree run on (or, with --kill, kill it once the image is on disk), write
    /// the rest from the snapshots, and publish the generation.
    pub fn complete(self) -> Result<DumpReport> {
        let FrozenDump {
            t0,
            root,
            kill,
            keep,
            tree,
            zombies,
            coordinator,
            mut states,
            gen,
            mut writers,
            snapshots,
            from_parent,
            parent,
            mut deltas,
            trackers,
            created_ns,
            mut buf,
            bar,
            locks,
        } = self;
        let pause = t0.elapsed();
        let (kill_after, locks) = if kill {
            (Some(tree), Some(locks))
        } else {
            // Let go before anything else can fail: snapshot cleanup needs it running.
            tree.release();
            // Its connections run on: no network lock past the freeze.
            drop(locks);
            (None, None)
        };
        let mut rest = FrozenDumpRest {
            states: &mut states,
            writers: &mut writers,
            snapshots: &snapshots,
            from_parent: &from_parent,
            deltas: &mut deltas,
            buf: &mut buf,
            bar: &bar,
        };
        rest.write_from_snapshots()?;
        phase(t0, "memory written");
        bar.finish_and_clear();
        for snap in snapshots {
            let pid = snap.pid;
            snap.discard()
                .with_context(|| format!("removing the snapshot copy of process {pid}"))?;
        }
        phase(t0, "snapshots removed");
        let mut inherited_bytes = 0;
        let mut unread_bytes = 0;
        for (state, delta) in states.iter_mut().zip(deltas) {
            inherited_bytes += delta.inherited_bytes();
            unread_bytes += delta.skipped * PAGE;
            delta.finish(state, parent.as_ref());
        }
        if std::env::var_os("CKPT_TIMING").is_some() {
            eprintln!(
                "ckpt: timing: {} KiB left in the generation before, {} KiB of them not read (written-page tracking)",
                inherited_bytes >> 10,
                unread_bytes >> 10
            );
        }
        let follows = states
            .iter()
            .any(|s| incremental::parent_of(s).is_some())
            .then(|| parent.as_ref().map(|p| p.name.clone()))
            .flatten();
        // Metadata, header and fsync of every image, in parallel: with many processes
        // the syncs, not the bytes, take the time.
        let gen_id = gen.id;
        let finished: Vec<Result<(u64, u64)>> = std::thread::scope(|scope| {
            let handles: Vec<_> = states
                .iter()
                .zip(writers)
                .map(|(state, w)| scope.spawn(move || w.finish(state, created_ns, gen_id)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("writing an image failed")))
                })
                .collect()
        });
        let mut image_bytes = 0;
        let mut checksums = Vec::new();
        for r in finished {
            let (bytes, checksum) = r?;
            image_bytes += bytes;
            checksums.push(checksum);
        }
        phase(t0, "images synced");
        check_interrupted()?;
        let manifest = Manifest {
            name: gen.name().to_string(),
            generation_id: generation::hex(&gen.id),
            tool_version: env!("CARGO_PKG_VERSION").into(),
            created_unix_ns: created_ns,
            kernel: kernel_release(),
            root_pid: root,
            processes: states
                .iter()
                .zip(&checksums)
                .map(|(s, sum)| ManifestProcess {
                    pid: s.pid,
                    ppid: s.ppid,
                    pgid: s.pgid,
                    sid: s.sid,
                    image: image_name(s.pid),
                    image_checksum: format!("{sum:016x}"),
                    cmdline: s.cmdline.clone(),
                })
                .collect(),
            zombies,
            coordinator,
            parent: follows,
        };
        let generation = gen.publish(&manifest, keep, incremental::make_whole)?;
        if let Some(tr) = trackers {
            tr.lock().unwrap().published(&manifest.name);
        }
        if let Some(t) = kill_after {
            let pids: Vec<i32> = states.iter().map(|s| s.pid).collect();
            ckpt_tracer::fd::before_kill(&pids);
            t.kill();
            // Connections saved with --tcp-established stay locked until the restore.
            if let Some(l) = locks {
                l.keep();
            }
        }
        Ok(DumpReport {
            generation,
            pause,
            total: t0.elapsed(),
            image_bytes,
            inherited_bytes,
            unread_bytes,
        })
    }
}

/// The second write phase, on the parts of a [`FrozenDump`] that outlive the tree.
struct FrozenDumpRest<'a> {
    states: &'a mut [ProcessState],
    writers: &'a mut [ImageWriter],
    snapshots: &'a [Snapshot],
    from_parent: &'a [Vec<(u64, u64)>],
    deltas: &'a mut [Delta],
    buf: &'a mut [u8],
    bar: &'a indicatif::ProgressBar,
}

impl FrozenDumpRest<'_> {
    fn write_from_snapshots(&mut self) -> Result<()> {
        for (i, snap) in self.snapshots.iter().enumerate() {
            let regions = &self.from_parent[i];
            let in_parent = |s: u64, e: u64| regions.iter().any(|&(a, b)| a <= s && e <= b);
            let mem =
                MemReader::open(snap.memory_pid()).context("opening memory of the snapshot")?;
            write_runs(
                &mut self.states[i],
                &mut self.deltas[i],
                |s, e| !in_parent(s, e),
                &mem,
                &mut self.writers[i],
                self.buf,
                self.bar,
            )?;
        }
        Ok(())
    }
}

/// Checkpoint a tree in one go: freeze, then complete.
pub fn dump(opts: &DumpOptions) -> Result<DumpReport> {
    log::info!(
        "dump of process {} and its descendants into {}",
        opts.pid,
        opts.dir.display()
    );
    let r = FrozenDump::freeze(opts).and_then(FrozenDump::complete);
    // By now a failed dump has let the tree go and removed its partial generation.
    match r {
        Err(e) if e.is::<Interrupted>() => {
            let me = std::process::id() as i32;
            let left: Vec<_> = crate::generation::unfinished(opts.dir)
                .into_iter()
                .filter(|u| u.writer == me)
                .map(|u| u.path.display().to_string())
                .collect();
            let removed = if left.is_empty() {
                "its unfinished checkpoint was removed".to_string()
            } else {
                format!(
                    "its unfinished checkpoint could not be removed: {}",
                    left.join(", ")
                )
            };
            Err(anyhow::anyhow!(
                "dump of process {} {e}: {removed}, and the process runs on as before",
                opts.pid
            ))
        }
        r => r,
    }
}

pub fn image_name(pid: i32) -> String {
    format!("core-{pid}.img")
}
