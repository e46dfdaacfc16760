//! `ckpt restore`: check the image completely, then create the process with its
//! original PID, exec the loader in it, finish from the outside, and (in the
//! foreground) wait for it. Any failure after the process exists kills it.

mod checks;
mod fds;
mod finish;
pub mod plan;
mod spawn;

use crate::generation;
use crate::image::Image;
use crate::progress;
use anyhow::{bail, Context, Result};
use plan::layout::{stage_name, Ready, READY_MAGIC};
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

/// The loader binary, built from restore/ by build.rs.
static LOADER: &[u8] = include_bytes!(env!("CKPT_LOADER_PATH"));

pub struct RestoreOptions<'a> {
    pub dir: &'a Path,
    pub detach: bool,
}

fn memfd(name: &str, data: &[u8]) -> Result<OwnedFd> {
    let c = CString::new(name)?;
    // SAFETY: memfd_create returns a descriptor we own.
    let fd = fds::cvt(
        unsafe { libc::memfd_create(c.as_ptr(), libc::MFD_CLOEXEC) },
        "creating a memfd",
    )?;
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let f = std::fs::File::from(fd.try_clone()?);
    use std::io::Write;
    (&f).write_all(data).context("writing a memfd")?;
    Ok(fd)
}

fn read_ready(fd: &OwnedFd) -> Option<Ready> {
    let mut buf = vec![0u8; std::mem::size_of::<Ready>()];
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: read into a live buffer.
        let n = unsafe {
            libc::read(
                fd.as_raw_fd(),
                buf[got..].as_mut_ptr().cast(),
                buf.len() - got,
            )
        };
        if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        if n <= 0 {
            return None;
        }
        got += n as usize;
    }
    // SAFETY: Ready is plain data of exactly this size.
    let r: Ready = unsafe { std::ptr::read_unaligned(buf.as_ptr().cast()) };
    (r.magic == READY_MAGIC).then_some(r)
}

fn kill_and_reap(pid: i32) {
    // SAFETY: kill and waitpid on our own child.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        let mut st = 0;
        libc::waitpid(pid, &mut st, libc::__WALL);
    }
}

fn rlimits_for(saved: &[ckpt_tracer::state::Rlimit]) -> Vec<(i32, libc::rlimit64)> {
    saved
        .iter()
        .map(|r| {
            let mut own = libc::rlimit64 {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: getrlimit64 into a local.
            unsafe { libc::getrlimit64(r.resource as _, &mut own) };
            // A hard limit cannot be raised without CAP_SYS_RESOURCE (root lacks it here).
            let max = r.max.min(own.rlim_max);
            (
                r.resource,
                libc::rlimit64 {
                    rlim_cur: r.cur.min(max),
                    rlim_max: max,
                },
            )
        })
        .collect()
}

/// Restore the newest complete generation in `opts.dir`. Returns the exit code for ckpt.
pub fn restore(opts: &RestoreOptions) -> Result<i32> {
    let gen = generation::resolve(opts.dir)?;
    let manifest = generation::read_manifest(&gen)?;
    if manifest.processes.len() != 1 {
        bail!(
            "{} holds {} processes; restoring process trees is not supported yet",
            gen.display(),
            manifest.processes.len()
        );
    }
    let image = Image::open(&gen.join(&manifest.processes[0].image))?;
    let bar = progress::bar(image.stored_bytes(), "verifying");
    image.verify_pages(|n| bar.inc(n))?;
    bar.finish_and_clear();
    let state = &image.state;
    checks::files_unchanged(state)?;
    checks::machine_compatible(state)?;
    checks::pids_free(state)?;

    // Descriptors for the loader live above every target descriptor.
    let base: RawFd = state.fds.iter().map(|f| f.fd).max().unwrap_or(2).max(2) + 1;
    let installs = fds::prepare(state.pid, &state.fds, base)?;
    let image_fd = fds::above(
        OwnedFd::from(image.file.try_clone().context("reopening the image")?),
        base,
    )?;
    let mut map_files: Vec<OwnedFd> = Vec::new();
    let mut map_fds = std::collections::HashMap::new();
    for v in &state.vmas {
        if let ckpt_tracer::state::VmaKind::File { id } = &v.kind {
            let writable_shared = v.shared && v.prot & libc::PROT_WRITE as u32 != 0;
            let prev = map_fds.get(&id.path).copied();
            if prev.is_some() && !writable_shared {
                continue;
            }
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(writable_shared)
                .open(&id.path)
                .with_context(|| format!("opening mapped file {}", id.path))?;
            let fd = fds::above(OwnedFd::from(f), base)?;
            map_fds.insert(id.path.clone(), fd.as_raw_fd());
            map_files.push(fd);
        }
    }
    let exe = std::fs::File::open(&state.exe.path)
        .with_context(|| format!("opening the executable {}", state.exe.path))?;
    let exe_fd = fds::above(OwnedFd::from(exe), base)?;
    let mut p = [0; 2];
    // SAFETY: pipe2 fills two descriptors we own.
    fds::cvt(
        unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) },
        "creating a pipe",
    )?;
    let (status_r, status_w0) = unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };
    let status_w = fds::above(status_w0, base)?;
    let plan_bytes = plan::build(
        state,
        &plan::PlanFds {
            image_fd: image_fd.as_raw_fd(),
            status_fd: status_w.as_raw_fd(),
            map_fds,
        },
    );
    let plan_fd = fds::above(memfd("ckpt-plan", &plan_bytes)?, base)?;
    let loader_fd = fds::above(memfd("ckpt-loader", LOADER)?, base)?;

    let mut loader_fds = vec![
        image_fd.as_raw_fd(),
        status_w.as_raw_fd(),
        plan_fd.as_raw_fd(),
        exe_fd.as_raw_fd(),
    ];
    loader_fds.extend(map_files.iter().map(|f| f.as_raw_fd()));
    let setup = spawn::ChildSetup {
        pid: state.pid,
        installs,
        loader_fds,
        status_fd: status_w.as_raw_fd(),
        loader_exe_fd: loader_fd.as_raw_fd(),
        argv: vec![
            CString::new("ckpt-restore")?,
            CString::new(plan_fd.as_raw_fd().to_string())?,
        ],
        cwd: CString::new(state.cwd.clone())?,
        umask: state.umask,
        rlimits: rlimits_for(&state.rlimits),
        personality: state.personality,
    };
    let pid = spawn::spawn(&setup)?;
    let status_fd_child = status_w.as_raw_fd();
    let exe_fd_child = exe_fd.as_raw_fd();
    drop(setup);
    drop(status_w);
    drop((image_fd, plan_fd, loader_fd, exe_fd, map_files));

    let ready = read_ready(&status_r);
    let result = match ready {
        Some(r) if r.error == 0 => finish::finish(state, &r, status_fd_child, exe_fd_child),
        Some(r) => {
            let msg = String::from_utf8_lossy(&r.msg);
            let msg = msg.trim_end_matches('\0');
            let err = std::io::Error::from_raw_os_error(r.error as i32);
            let stage = if r.stage == 100 {
                "preparing the process"
            } else {
                stage_name(r.stage)
            };
            Err(anyhow::anyhow!(
                "restore failed while {stage} ({msg}{}): {err}",
                if r.addr != 0 {
                    format!(" at {:#x}", r.addr)
                } else {
                    String::new()
                }
            ))
        }
        None => Err(anyhow::anyhow!(
            "the restore loader died before it was ready"
        )),
    };
    if let Err(e) = result {
        kill_and_reap(pid);
        return Err(e);
    }
    if opts.detach {
        return Ok(0);
    }
    wait_exit(pid)
}

/// Wait for the restored process and turn its end into ckpt's exit code.
fn wait_exit(pid: i32) -> Result<i32> {
    let mut st = 0;
    loop {
        // SAFETY: waitpid on our own child.
        let r = unsafe { libc::waitpid(pid, &mut st, 0) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e).context("waiting for the restored process");
        }
        break;
    }
    if libc::WIFEXITED(st) {
        Ok(libc::WEXITSTATUS(st))
    } else if libc::WIFSIGNALED(st) {
        Ok(128 + libc::WTERMSIG(st))
    } else {
        Ok(1)
    }
}
