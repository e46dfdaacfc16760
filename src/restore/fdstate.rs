//! Descriptor state that can only be set once the restored process exists, done from
//! the outside while it is still stopped:
//! - the late step of a kind module (`ckpt_tracer::fd`, e.g. epoll's interest list);
//! - memfd seals, added last (after the loader mapped the memfd and the content is in),
//!   through a descriptor of ours on the process's memfd.

use anyhow::{Context, Result};
use ckpt_format::state::{FdKind, ProcessState, UnlinkedFile, VmaKind};
use ckpt_tracer::freeze::FrozenThread;
use ckpt_tracer::inject::Injector;
use std::collections::HashSet;
use std::os::fd::AsRawFd;

pub fn restore_fd_state(
    inj: &Injector,
    leader: &mut FrozenThread,
    state: &ProcessState,
) -> Result<()> {
    let pid = state.pid;
    // What kind modules do once the process exists (epoll's entries).
    ckpt_tracer::fd::late(inj, leader, state)?;

    // Seals of memfds, once per memfd (they come with the occurrence holding the data).
    let mut sealed = HashSet::new();
    let with_data = state
        .fds
        .iter()
        .filter_map(|f| match &f.kind {
            FdKind::Unlinked { file, .. } => Some(file),
            _ => None,
        })
        .chain(state.vmas.iter().filter_map(|v| match &v.kind {
            VmaKind::Unlinked { file } => Some(file),
            _ => None,
        }))
        .filter(|f| f.memfd && f.data.is_some() && f.seals != 0);
    for file in with_data {
        if sealed.insert((file.dev, file.ino)) {
            add_seals(state, file)
                .with_context(|| format!("process {pid}: sealing memfd {}", file.name))?;
        }
    }
    Ok(())
}

/// Open the restored process's memfd that stands for `file` (through one of its
/// descriptors, or through a mapping) and add the saved seals.
fn add_seals(state: &ProcessState, file: &UnlinkedFile) -> Result<()> {
    let pid = state.pid;
    let same = |f: &UnlinkedFile| f.dev == file.dev && f.ino == file.ino;
    let path = state
        .fds
        .iter()
        .find(|f| matches!(&f.kind, FdKind::Unlinked { file: g, .. } if same(g)))
        .map(|f| format!("/proc/{pid}/fd/{}", f.fd))
        .or_else(|| {
            state
                .vmas
                .iter()
                .find(|v| matches!(&v.kind, VmaKind::Unlinked { file: g } if same(g)))
                .map(|v| format!("/proc/{pid}/map_files/{:x}-{:x}", v.start, v.end))
        })
        .context("no descriptor or mapping of it")?;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {path}"))?;
    // Only the seals not there yet: a memfd shared with a process of the tree restored
    // before is sealed already.
    // SAFETY: fcntl on our own descriptor.
    let have = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GET_SEALS) }.max(0) as u32;
    let add = file.seals & !have;
    if add == 0 {
        return Ok(());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_ADD_SEALS, add as libc::c_int) } < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("adding seals {:#x}", file.seals));
    }
    Ok(())
}
