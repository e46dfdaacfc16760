//! Everything a restore verifies before it creates a process (docs/CONTRACT.md §6): the files the
//! image refers to are unchanged, the original PIDs are free, the kernel and CPU can
//! take the saved state, and nothing collides with the loader.

use anyhow::{bail, Context, Result};
use ckpt_format::state::{FdKind, FileIdentity, ProcessState, VmaKind};
use ckpt_plan::{LOADER_ZONE_END, LOADER_ZONE_START};
use ckpt_tracer::files::file_identity;
use std::collections::HashSet;
use std::path::Path;

fn check_identity(saved: &FileIdentity, what: &str) -> Result<()> {
    let cur = match file_identity(Path::new(&saved.path), &saved.path) {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            bail!("{what} {} cannot be checked: {e}", saved.path)
        }
        Err(e) => bail!(
            "{what} {} is missing ({e}); restore needs the same file",
            saved.path
        ),
    };
    let differs = if cur.ino != saved.ino {
        Some("inode")
    } else if cur.size != saved.size {
        Some("size")
    } else if cur.mtime_ns != saved.mtime_ns {
        Some("modification time")
    } else if cur.build_id != saved.build_id {
        Some("ELF build-id")
    } else {
        None
    };
    if let Some(d) = differs {
        bail!(
            "{what} {} changed since the checkpoint ({d} differs); restore needs the file as it was",
            saved.path
        );
    }
    Ok(())
}

fn writable_unchanged(saved: &FileIdentity, pos: u64, what: &str) -> Result<()> {
    let md = std::fs::metadata(&saved.path).map_err(|e| {
        anyhow::anyhow!(
            "{what} {} is missing ({e}); restore needs the same file",
            saved.path
        )
    })?;
    use std::os::unix::fs::MetadataExt;
    if md.ino() != saved.ino {
        bail!(
            "{what} {} was replaced since the checkpoint (inode differs); restore needs the same file",
            saved.path
        );
    }
    if md.size() < pos.min(saved.size) {
        bail!(
            "{what} {} was truncated since the checkpoint ({} bytes, the process was at offset {pos})",
            saved.path,
            md.size()
        );
    }
    Ok(())
}

pub fn files_unchanged(state: &ProcessState) -> Result<()> {
    for (_, _, r) in file_checks(state) {
        r?;
    }
    Ok(())
}

/// Every file the restore of `state` depends on, once each: (path, what it is to the
/// process, whether it is as the restore needs it). `ckpt info` lists them all.
pub fn file_checks(state: &ProcessState) -> Vec<(String, String, Result<()>)> {
    let mut out = Vec::new();
    // Files of a memory file system: recreated from the image when gone (a reboot),
    // else used as they are, like files the job writes.
    let mut volatile = HashSet::new();
    for v in &state.volatile_files {
        volatile.insert(v.name.as_str());
        let r = (|| {
            if let Ok(md) = std::fs::metadata(&v.name) {
                use std::os::unix::fs::MetadataExt;
                if md.ino() != v.ino {
                    bail!(
                        "{} was replaced since the checkpoint (inode differs); remove it to restore the saved one",
                        v.name
                    );
                }
            }
            Ok(())
        })();
        out.push((
            v.name.clone(),
            "file of a memory file system (content in the image)".to_string(),
            r,
        ));
    }
    let mut seen: HashSet<&str> = volatile.clone();
    if seen.insert(&state.exe.path) {
        out.push((
            state.exe.path.clone(),
            "executable".into(),
            check_identity(&state.exe, "executable"),
        ));
    }
    for v in &state.vmas {
        if let VmaKind::File { id } = &v.kind {
            if seen.insert(&id.path) {
                out.push((
                    id.path.clone(),
                    "mapped file".into(),
                    check_identity(id, "mapped file"),
                ));
            }
        }
    }
    for fd in &state.fds {
        if let FdKind::File { id, pos } = &fd.kind {
            if volatile.contains(id.path.as_str()) {
                continue;
            }
            let what = format!("file open on fd {}", fd.fd);
            if fd.flags & libc::O_ACCMODE != libc::O_RDONLY {
                // The job itself writes this file (a log, its output): it is expected to
                // have grown since the checkpoint. It must still be the same file, and
                // must not have been cut below the saved offset.
                let r = writable_unchanged(id, *pos, &what);
                out.push((id.path.clone(), format!("{what}, written by the job"), r));
            } else if seen.insert(&id.path) {
                let r = check_identity(id, &what);
                out.push((id.path.clone(), what, r));
            }
        }
    }
    out
}

pub fn pids_free(state: &ProcessState) -> Result<()> {
    for t in &state.threads {
        let p = format!("/proc/{}", t.tid);
        if Path::new(&p).exists() {
            let comm = std::fs::read_to_string(format!("{p}/comm")).unwrap_or_default();
            bail!(
                "PID {} is in use by another process ({}); restore needs the original PIDs free",
                t.tid,
                comm.trim()
            );
        }
    }
    Ok(())
}

/// The process of the checkpoint that still runs at its PID, if one does: the same
/// command line and executable, started before the checkpoint was written (so not a
/// later process that was given the same PID). Zombies do not count.
pub fn original_still_running(
    state: &ProcessState,
    cmdline: &[String],
    created_unix_ns: u64,
) -> Option<String> {
    let pid = state.pid;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    // starttime is field 22 of stat, the 20th after the command name.
    let start_ticks: u64 = fields.get(19)?.parse().ok()?;
    let btime: u64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())?;
    // SAFETY: sysconf takes an integer.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let started = btime + start_ticks / hz;
    if started > created_unix_ns / 1_000_000_000 {
        return None;
    }
    let now: Vec<String> = std::fs::read(format!("/proc/{pid}/cmdline"))
        .ok()?
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    (now == cmdline && exe == Path::new(&state.exe.path)).then(|| now.join(" "))
}

fn own_vdso() -> Option<(u64, u64)> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let line = maps.lines().find(|l| l.ends_with("[vdso]"))?;
    let (s, e) = line.split(' ').next()?.split_once('-')?;
    Some((
        u64::from_str_radix(s, 16).ok()?,
        u64::from_str_radix(e, 16).ok()?,
    ))
}

fn xgetbv0() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: xgetbv(0) is available wherever the OS enabled XSAVE (checked by the caller).
    unsafe {
        std::arch::asm!("xgetbv", in("ecx") 0, out("eax") lo, out("edx") hi, options(nomem, nostack))
    };
    (hi as u64) << 32 | lo as u64
}

pub fn machine_compatible(state: &ProcessState) -> Result<()> {
    if state.vdso_hash != 0 {
        let Some((s, e)) = own_vdso() else {
            bail!("this kernel has no vdso, but the checkpoint needs one");
        };
        // SAFETY: our own vdso is mapped readable for its whole range.
        let bytes = unsafe { std::slice::from_raw_parts(s as *const u8, (e - s) as usize) };
        let saved_len = state
            .vmas
            .iter()
            .find(|v| v.kind == VmaKind::Vdso)
            .map(|v| v.end - v.start);
        if saved_len != Some(e - s) || xxhash_rust::xxh3::xxh3_64(bytes) != state.vdso_hash {
            bail!(
                "the kernel changed since the checkpoint (its vdso differs); restore on the kernel the checkpoint was taken on"
            );
        }
    }
    let cpu = std::arch::x86_64::__cpuid_count(1, 0);
    let osxsave = cpu.ecx & (1 << 27) != 0;
    if state.xfeatures != 0 {
        if !osxsave {
            bail!("this CPU/kernel does not enable XSAVE, which the checkpoint's register state needs");
        }
        let have = xgetbv0();
        if state.xfeatures & !have != 0 {
            bail!(
                "this CPU lacks register state the checkpoint uses (XSAVE features {:#x}, available {:#x})",
                state.xfeatures,
                have
            );
        }
        let size = std::arch::x86_64::__cpuid_count(0xd, 0).ebx as usize;
        if let Some(t) = state.threads.first() {
            if t.xstate.len() != size {
                bail!(
                    "the CPU's register save area differs from the checkpoint's ({} bytes, checkpoint has {})",
                    size,
                    t.xstate.len()
                );
            }
        }
    }
    for v in &state.vmas {
        if v.start < LOADER_ZONE_END && v.end > LOADER_ZONE_START {
            bail!(
                "the checkpointed process has memory at {:#x}-{:#x}, where ckpt's loader must run; this image cannot be restored",
                v.start,
                v.end
            );
        }
    }
    Ok(())
}

pub fn zombie_pids_free(zombies: &[ckpt_format::state::Zombie]) -> Result<()> {
    for z in zombies {
        if Path::new(&format!("/proc/{}", z.pid)).exists() {
            bail!(
                "PID {} (a zombie child in the checkpoint) is in use by another process; restore needs the original PIDs free",
                z.pid
            );
        }
    }
    Ok(())
}

/// Every restored process and zombie is in its saved process group and session, before
/// anything resumes. The root joins the restorer's group and session unless it led its
/// own session (like any job the restorer starts), so what shared the root's saved
/// group or session must now share its new one. Otherwise the restore fails naming the
/// process: a program that signals its group or checks its session would see another.
pub fn groups_as_saved(manifest: &ckpt_format::manifest::Manifest, root: i32) -> Result<()> {
    let ids = |pid: i32| -> Result<(i32, i32)> {
        let st = ckpt_tracer::proc::stat_if_exists(pid)
            .with_context(|| format!("reading the process group of restored process {pid}"))?
            .with_context(|| format!("restored process {pid} is gone"))?;
        Ok((st.pgrp, st.session))
    };
    let Some(saved_root) = manifest.processes.iter().find(|p| p.pid == root) else {
        return Ok(());
    };
    let (root_pgid, root_sid) = ids(root)?;
    let want = |pgid: i32, sid: i32| {
        (
            if pgid == saved_root.pgid {
                root_pgid
            } else {
                pgid
            },
            if sid == saved_root.sid { root_sid } else { sid },
        )
    };
    let all = manifest
        .processes
        .iter()
        .map(|p| (p.pid, p.pgid, p.sid, ""))
        .chain(
            manifest
                .zombies
                .iter()
                .map(|z| (z.pid, z.pgid, z.sid, "zombie ")),
        );
    for (pid, pgid, sid, what) in all {
        let (w_pgid, w_sid) = want(pgid, sid);
        let (pg, s) = ids(pid)?;
        if (pg, s) != (w_pgid, w_sid) {
            bail!(
                "restored {what}process {pid} is in process group {pg} and session {s}, but was in group {w_pgid} and session {w_sid} (counted from the restored root {root}); ckpt cannot recreate that group yet"
            );
        }
    }
    Ok(())
}

/// Recreate the files of a memory file system that are gone since the checkpoint
/// (e.g. /dev/shm after a reboot), with their saved content and mode; and give the ones
/// the process maps their saved content back, unless a process outside the restore
/// uses the file now.
///
/// A mapped file that no one else uses is memory of the job's own (an MPI library's
/// /dev/shm segments, a POSIX shm object): after a checkpoint the job ran on and wrote
/// it, and the restored processes, whose own memory is as at the checkpoint, must find
/// it as it was then too, not as the killed job left it (Open MPI's ranks crashed on
/// their queues otherwise). A file that a running process outside maps or holds open is
/// shared with it, and is used as that process left it. A file only open through a
/// descriptor is used as it is, like the files the job writes on disk.
pub fn recreate_volatile_files(state: &ProcessState) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
    for v in &state.volatile_files {
        let Some(data) = &v.data else { continue };
        if let Ok(md) = std::fs::metadata(&v.name) {
            let mapped = state.vmas.iter().any(|m| match &m.kind {
                VmaKind::File { id } => id.ino == v.ino && id.dev == v.dev,
                _ => false,
            });
            if !mapped || md.ino() != v.ino {
                continue;
            }
            if let Some(user) = used_by_a_process(md.dev(), md.ino()) {
                log::info!(
                    "{} is in use by process {user}, outside the restore: used as it is",
                    v.name
                );
                continue;
            }
            let what = |e: std::io::Error| {
                anyhow::anyhow!(
                    "giving {} (mapped by process {}) its content at the checkpoint back: {e}",
                    v.name,
                    state.pid
                )
            };
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&v.name)
                .map_err(what)?;
            let now = ckpt_tracer::identity::read_all_at(&f).map_err(what)?;
            if now != *data {
                f.set_len(data.len() as u64).map_err(what)?;
                f.write_all_at(data, 0).map_err(what)?;
            }
            continue;
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(v.mode & 0o7777)
            .open(&v.name)
            .map_err(|e| anyhow::anyhow!("recreating {}: {e}", v.name))?;
        f.write_all(data)
            .map_err(|e| anyhow::anyhow!("recreating {}: {e}", v.name))?;
    }
    Ok(())
}

/// A process that maps or holds open the file `(dev, ino)` (of those this user may
/// look at), if any. Run before the restore creates any process.
fn used_by_a_process(dev: u64, ino: u64) -> Option<i32> {
    use std::os::unix::fs::MetadataExt;
    let maps_dev = format!(
        "{:02x}:{:02x}",
        libc::major(dev as libc::dev_t),
        libc::minor(dev as libc::dev_t)
    );
    let ino_s = ino.to_string();
    let pids = std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok());
    for pid in pids {
        if let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) {
            let hit = maps.lines().any(|l| {
                let mut f = l.split_whitespace().skip(3);
                f.next() == Some(maps_dev.as_str()) && f.next() == Some(ino_s.as_str())
            });
            if hit {
                return Some(pid);
            }
        }
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::metadata(fd.path()).is_ok_and(|m| m.dev() == dev && m.ino() == ino) {
                return Some(pid);
            }
        }
    }
    None
}
