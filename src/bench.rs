//! `make bench`: dump and restore a process with N MiB of touched memory, and measure
//! in the same run the raw limits of this machine — writing the same number of bytes
//! to the same file system (with fsync) and reading the image back. The machine is
//! shared and noisy, so runs are interleaved and the report gives medians and ratios.

use crate::dump::{dump, DumpOptions};
use crate::restore::{restore, RestoreOptions, Then};
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The workload: `ckpt __bench-workload MIB THREADS PROCS`: PROCS processes (the
/// first and PROCS-1 children), each touching MIB/PROCS MiB with a pattern and running
/// THREADS threads that sleep; prints `ready` once all are set up.
pub fn workload(args: &[String]) -> ! {
    let num = |i: usize, d: u64| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(d);
    let (mib, threads, procs) = (num(0, 1024), num(1, 1), num(2, 1).max(1));
    let (r, w) = nix::unistd::pipe().expect("pipe");
    let mut is_root = true;
    for _ in 1..procs {
        // SAFETY: the workload is single-threaded here.
        if unsafe { libc::fork() } == 0 {
            is_root = false;
            break;
        }
    }
    let len = ((mib << 20) / procs) as usize;
    let mut v: Vec<u64> = Vec::with_capacity(len / 8);
    for i in 0..len / 8 {
        v.push((i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    }
    for _ in 1..threads {
        std::thread::spawn(|| loop {
            std::thread::sleep(Duration::from_millis(100));
        });
    }
    // Each process reports once it is set up; the root prints ready after all.
    let _ = nix::unistd::write(&w, b"x");
    if is_root && procs == 1 {
        // A line on stdin rewrites 5% of the pages (spread over all of them), then
        // the workload answers "w": what changes between incremental checkpoints.
        let pages = len / 4096;
        let mut round = 0u64;
        let ptr = v.as_mut_ptr() as usize;
        std::thread::spawn(move || {
            let mut line = String::new();
            while std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 0) {
                round += 1;
                for k in 0..pages / 20 {
                    let page = (k * 20 + (round as usize % 20)) % pages;
                    // SAFETY: the page lies inside `v`, which lives as long as the
                    // process; the main thread only reads it through black_box.
                    unsafe { *((ptr + page * 4096) as *mut u64) = round };
                }
                line.clear();
                println!("w");
                let _ = std::io::stdout().flush();
            }
        });
    }
    if is_root {
        drop(w);
        let mut got = 0;
        let mut f = File::from(r);
        let mut b = [0u8; 64];
        while got < procs {
            got += f.read(&mut b).unwrap_or(0) as u64;
        }
        println!("ready");
        let _ = std::io::stdout().flush();
    }
    loop {
        std::thread::sleep(Duration::from_millis(100));
        std::hint::black_box(&v);
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn raw_write(path: &Path, bytes: u64) -> Result<Duration> {
    let buf = vec![0x5au8; 16 << 20];
    let t = Instant::now();
    let mut f = File::create(path)?;
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.sync_all()?;
    let d = t.elapsed();
    std::fs::remove_file(path)?;
    Ok(d)
}

/// Read the image file into fresh anonymous memory, as a restore must: the raw limit
/// for putting these bytes back into a process.
fn raw_read(path: &Path) -> Result<Duration> {
    use std::os::unix::fs::FileExt;
    let len = std::fs::metadata(path)?.len() as usize;
    let t = Instant::now();
    let f = File::open(path)?;
    // SAFETY: a private anonymous mapping we unmap below.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len.max(1),
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        bail!("mmap: {}", std::io::Error::last_os_error());
    }
    // SAFETY: the mapping is len bytes and ours.
    let buf = unsafe { std::slice::from_raw_parts_mut(p as *mut u8, len) };
    let mut off = 0;
    while off < len {
        let n = (len - off).min(64 << 20);
        f.read_exact_at(&mut buf[off..off + n], off as u64)?;
        off += n;
    }
    let d = t.elapsed();
    // SAFETY: unmapping our own mapping.
    unsafe { libc::munmap(p, len.max(1)) };
    Ok(d)
}

/// Drops the page cache of `path` (clean pages: no privilege needed), so that the next
/// read of it comes from the disk.
fn evict(path: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let f = File::open(path)?;
    f.sync_all()?;
    // SAFETY: posix_fadvise on our own descriptor; it takes integers only.
    let r = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if r != 0 {
        bail!(
            "posix_fadvise(DONTNEED) of {}: {}",
            path.display(),
            std::io::Error::from_raw_os_error(r)
        );
    }
    Ok(())
}

/// The image files of a generation.
fn images_of(gen: &Path) -> Result<Vec<PathBuf>> {
    Ok(std::fs::read_dir(gen)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "img"))
        .collect())
}

fn wait_pid_free(pid: i32) {
    while Path::new(&format!("/proc/{pid}")).exists() {
        // As subreaper we inherit the killed tree's orphans: reap them.
        // SAFETY: waitpid on any of our children, without blocking.
        while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG | libc::__WALL) } > 0 {
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

struct Workload {
    name: String,
    mib: u64,
    threads: u64,
    procs: u64,
}

#[derive(Default)]
struct Samples {
    image: u64,
    pause: Vec<Duration>,
    dump: Vec<Duration>,
    /// Restores with the images evicted from the page cache, then with them cached.
    restore_cold: Vec<Duration>,
    restore_hot: Vec<Duration>,
    write: Vec<Duration>,
    /// Raw reads of the images into fresh memory, evicted first, then cached.
    read_cold: Vec<Duration>,
    read_hot: Vec<Duration>,
}

fn one_run(exe: &Path, base: &Path, w: &Workload, run: usize, s: &mut Samples) -> Result<()> {
    let ckdir = base.join(format!("{}-{run}", w.name));
    let _ = std::fs::remove_dir_all(&ckdir);
    let mut child = Command::new(exe)
        .args([
            "__bench-workload",
            &w.mib.to_string(),
            &w.threads.to_string(),
            &w.procs.to_string(),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the workload")?;
    let mut line = [0u8; 6];
    child.stdout.as_mut().unwrap().read_exact(&mut line)?;
    let pid = child.id() as i32;
    // A live dump: the pause is what the application feels.
    let rep = dump(&DumpOptions {
        pid,
        dir: &ckdir,
        kill: false,
        keep: 1,
        coordinator: None,
        full: true,
        trackers: None,
    });
    let pids = ckpt_tracer::tree::kill_descendants(pid);
    child.wait()?;
    let rep = rep?;
    for p in &pids {
        wait_pid_free(*p);
    }
    s.image = rep.image_bytes;
    s.pause.push(rep.pause);
    s.dump.push(rep.total);
    s.write
        .push(raw_write(&base.join("raw.bin"), rep.image_bytes)?);
    let images = images_of(&rep.generation)?;
    let raw_all = || -> Result<Duration> {
        let mut d = Duration::ZERO;
        for i in &images {
            d += raw_read(i)?;
        }
        Ok(d)
    };
    for i in &images {
        evict(i)?;
    }
    s.read_cold.push(raw_all()?);
    s.read_hot.push(raw_all()?);
    // A cold restore (the images evicted again), then a hot one of the same generation.
    for cold in [true, false] {
        if cold {
            for i in &images {
                evict(i)?;
            }
        }
        let t = Instant::now();
        let code = restore(
            &RestoreOptions {
                dir: &ckdir,
                detach: true,
                pidns: crate::restore::PidNs::Never,
                new_audit_session: false,
                tcp_established: false,
            },
            Then::Wait,
        )?;
        let took = t.elapsed();
        if code != 0 {
            bail!("restore returned {code}");
        }
        if cold {
            s.restore_cold.push(took);
        } else {
            s.restore_hot.push(took);
        }
        // The restored root is our child: kill its tree and reap it.
        ckpt_tracer::tree::kill_descendants(pid);
        // SAFETY: waitpid on our own child.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
        for p in std::iter::once(&pid).chain(&pids) {
            wait_pid_free(*p);
        }
    }
    let _ = std::fs::remove_dir_all(&ckdir);
    Ok(())
}

/// Two live dumps of a `mib` MiB workload into one directory, 5% of its pages
/// rewritten between them: the first stores everything, the second only what changed.
fn incremental_run(
    exe: &Path,
    base: &Path,
    mib: u64,
    run: usize,
) -> Result<[crate::dump::DumpReport; 2]> {
    let ckdir = base.join(format!("incremental-{run}"));
    let _ = std::fs::remove_dir_all(&ckdir);
    let mut child = Command::new(exe)
        .args(["__bench-workload", &mib.to_string(), "1", "1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the workload")?;
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    use std::io::BufRead;
    out.read_line(&mut line)?;
    let pid = child.id() as i32;
    let opts = DumpOptions {
        pid,
        dir: &ckdir,
        kill: false,
        keep: 3,
        coordinator: None,
        full: false,
        trackers: Some(Default::default()),
    };
    let reps = (|| -> Result<[crate::dump::DumpReport; 2]> {
        let first = dump(&opts)?;
        child.stdin.as_mut().unwrap().write_all(b"w\n")?;
        line.clear();
        out.read_line(&mut line)?;
        if line.trim() != "w" {
            bail!("the workload answered {line:?}");
        }
        let second = dump(&opts)?;
        if second.inherited_bytes == 0 {
            bail!("the second dump was not incremental");
        }
        Ok([first, second])
    })();
    let _ = child.kill();
    child.wait()?;
    wait_pid_free(pid);
    let _ = std::fs::remove_dir_all(&ckdir);
    reps
}

/// "1 GiB", "256 MiB": the size of a workload's memory.
fn size_name(mib: u64) -> String {
    if mib >= 1024 && mib.is_multiple_of(1024) {
        format!("{} GiB", mib / 1024)
    } else {
        format!("{mib} MiB")
    }
}

pub fn bench(mib: u64, dir: Option<PathBuf>, runs: usize) -> Result<()> {
    let base = dir.unwrap_or_else(|| PathBuf::from("target/bench"));
    std::fs::create_dir_all(&base)?;
    // Orphans of the tree workload come back to us.
    // SAFETY: prctl on ourselves.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let exe = std::env::current_exe()?;
    let workloads = [
        Workload {
            name: size_name(mib),
            mib,
            threads: 1,
            procs: 1,
        },
        Workload {
            name: size_name(mib * 4),
            mib: mib * 4,
            threads: 1,
            procs: 1,
        },
        Workload {
            name: "64 threads".into(),
            mib: 64,
            threads: 64,
            procs: 1,
        },
        Workload {
            name: "32 processes".into(),
            mib: 256,
            threads: 1,
            procs: 32,
        },
    ];
    let mut samples: Vec<Samples> = workloads.iter().map(|_| Samples::default()).collect();
    // Interleaved: run r of every workload before run r+1 of any.
    for run in 0..runs.max(1) {
        for (w, s) in workloads.iter().zip(&mut samples) {
            one_run(&exe, &base, w, run, s).with_context(|| format!("workload {}", w.name))?;
        }
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("ckpt bench: medians of {runs} interleaved runs; live dumps (copy-on-write), restores to running");
    println!(
        "{:<14} {:>9} {:>8} {:>8} {:>9} {:>8} | {:>8} {:>8} {:>7} | {:>8} {:>8} {:>7}",
        "workload",
        "image MiB",
        "pause ms",
        "dump ms",
        "raw wr ms",
        "dump/raw",
        "cold rst",
        "raw rd",
        "rst/raw",
        "hot rst",
        "raw rd",
        "rst/raw"
    );
    for (w, s) in workloads.iter().zip(samples) {
        let (p, d, wr) = (median(s.pause), median(s.dump), median(s.write));
        let (rc, rdc) = (median(s.restore_cold), median(s.read_cold));
        let (rh, rdh) = (median(s.restore_hot), median(s.read_hot));
        let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
        println!(
            "{:<14} {:>9.1} {:>8.1} {:>8.1} {:>9.1} {:>8.2} | {:>8.1} {:>8.1} {:>7.2} | {:>8.1} {:>8.1} {:>7.2}",
            w.name,
            s.image as f64 / (1 << 20) as f64,
            ms(p),
            ms(d),
            ms(wr),
            ratio(wr, d),
            ms(rc),
            ms(rdc),
            ratio(rc, rdc),
            ms(rh),
            ms(rdh),
            ratio(rh, rdh)
        );
    }
    println!("dump/raw: raw write+fsync time of the same bytes / dump time (target >= 0.80)");
    println!("rst/raw: restore time / raw read of the images into fresh memory (target <= 1.30),");
    println!(
        "  cold: images evicted from the page cache (POSIX_FADV_DONTNEED) before both; hot: cached"
    );
    // Incremental generations: 4x the base size, 5% of the pages rewritten between.
    let inc_mib = mib * 4;
    let mut inc = Vec::new();
    for run in 0..runs.max(1) {
        inc.push(incremental_run(&exe, &base, inc_mib, run).context("incremental workload")?);
    }
    let med =
        |f: &dyn Fn(&[crate::dump::DumpReport; 2]) -> Duration| median(inc.iter().map(f).collect());
    let (t1, t2) = (med(&|r| r[0].total), med(&|r| r[1].total));
    let (p1, p2) = (med(&|r| r[0].pause), med(&|r| r[1].pause));
    let (b1, b2) = (inc[0][0].image_bytes, inc[0][1].image_bytes);
    let unread = inc[0][1].unread_bytes;
    println!(
        "incremental, {}, 5% of pages rewritten: second dump wrote {:.1} MiB of {:.1} MiB ({:.3}, target <= 0.10), took {:.1} of {:.1} ms ({:.2}, target <= 0.20); pause {:.1} ms (first {:.1} ms); {:.1} MiB not even read (written-page tracking)",
        size_name(inc_mib),
        b2 as f64 / (1 << 20) as f64,
        b1 as f64 / (1 << 20) as f64,
        b2 as f64 / b1 as f64,
        ms(t2),
        ms(t1),
        t2.as_secs_f64() / t1.as_secs_f64(),
        ms(p2),
        ms(p1),
        unread as f64 / (1 << 20) as f64
    );
    println!("CRIU: not measured (Debian's criu does not run on this kernel, see docs/KERNEL.md)");
    Ok(())
}
