//! `make bench`: dump and restore a process with N MiB of touched memory, and measure
//! in the same run the raw limits of this machine — writing the same number of bytes
//! to the same file system (with fsync) and reading the image back. The machine is
//! shared and noisy, so runs are interleaved and the report gives medians and ratios.

use crate::dump::{dump, DumpOptions};
use crate::restore::{restore, RestoreOptions};
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The workload: `ckpt __bench-workload MIB` touches MIB MiB with a pattern and sleeps.
pub fn workload(mib: u64) -> ! {
    let len = (mib << 20) as usize;
    let mut v: Vec<u64> = Vec::with_capacity(len / 8);
    for i in 0..len / 8 {
        v.push((i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    }
    println!("ready");
    let _ = std::io::stdout().flush();
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

fn wait_pid_free(pid: i32) {
    while Path::new(&format!("/proc/{pid}")).exists() {
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub fn bench(mib: u64, dir: Option<PathBuf>, runs: usize) -> Result<()> {
    let base = dir.unwrap_or_else(|| PathBuf::from("target/bench"));
    std::fs::create_dir_all(&base)?;
    let exe = std::env::current_exe()?;
    let (mut pauses, mut dumps, mut restores, mut writes, mut reads) =
        (vec![], vec![], vec![], vec![], vec![]);
    let mut image_bytes = 0;
    for run in 0..runs.max(1) {
        let ckdir = base.join(format!("run{run}"));
        let _ = std::fs::remove_dir_all(&ckdir);
        let mut child = Command::new(&exe)
            .args(["__bench-workload", &mib.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the workload")?;
        let mut line = [0u8; 6];
        child.stdout.as_mut().unwrap().read_exact(&mut line)?;
        let pid = child.id() as i32;
        let rep = dump(&DumpOptions {
            pid,
            dir: &ckdir,
            kill: true,
            keep: 1,
            coordinator: None,
        })?;
        child.wait()?;
        wait_pid_free(pid);
        image_bytes = rep.image_bytes;
        pauses.push(rep.pause);
        dumps.push(rep.total);
        writes.push(raw_write(&base.join("raw.bin"), rep.image_bytes)?);
        let img = rep.generation.join(format!("core-{pid}.img"));
        reads.push(raw_read(&img)?);
        let t = Instant::now();
        let code = restore(&RestoreOptions {
            dir: &ckdir,
            detach: true,
            pidns: crate::restore::PidNs::Never,
        })?;
        restores.push(t.elapsed());
        if code != 0 {
            bail!("restore returned {code}");
        }
        // The restored workload is our child: kill and reap it.
        // SAFETY: kill/waitpid on our own child.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            let mut st = 0;
            libc::waitpid(pid, &mut st, 0);
        }
        let _ = std::fs::remove_dir_all(&ckdir);
    }
    let (p, d, r, w, rd) = (
        median(pauses),
        median(dumps),
        median(restores),
        median(writes),
        median(reads),
    );
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mbps = |d: Duration| image_bytes as f64 / (1 << 20) as f64 / d.as_secs_f64();
    println!("ckpt bench: one process, {mib} MiB touched, median of {runs} interleaved runs");
    println!(
        "  image size                {:>10.1} MiB",
        image_bytes as f64 / (1 << 20) as f64
    );
    println!("  pause (process stopped)   {:>10.1} ms", ms(p));
    println!(
        "  dump total                {:>10.1} ms  {:>8.0} MiB/s",
        ms(d),
        mbps(d)
    );
    println!(
        "  raw write+fsync limit     {:>10.1} ms  {:>8.0} MiB/s",
        ms(w),
        mbps(w)
    );
    println!(
        "  restore (to running)      {:>10.1} ms  {:>8.0} MiB/s",
        ms(r),
        mbps(r)
    );
    println!(
        "  raw read to fresh memory  {:>10.1} ms  {:>8.0} MiB/s",
        ms(rd),
        mbps(rd)
    );
    println!(
        "  dump throughput / raw write   {:>6.2}  (target >= 0.70)",
        w.as_secs_f64() / d.as_secs_f64()
    );
    println!(
        "  restore time / raw read       {:>6.2}  (target <= 1.30)",
        r.as_secs_f64() / rd.as_secs_f64()
    );
    println!("  CRIU: not measured (Debian's criu does not run on this kernel, see KERNEL-NOTES)");
    Ok(())
}
