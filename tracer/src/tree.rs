//! A process and all its descendants, frozen top-down: a process is frozen before its
//! children are listed, so no child can appear unseen. Zombies are recorded, not
//! seized. Also: which descriptors across the tree share one open file description
//! (kcmp), and whether both ends of each pipe are inside the tree.

use crate::error::{Result, TraceError};
use crate::freeze::Frozen;
use crate::state::ProcessState;

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::os::unix::fs::MetadataExt;

pub use ckpt_format::state::Zombie;

/// Every process of a tree frozen, parents before children.
pub struct FrozenTree {
    pub procs: Vec<Frozen>,
    pub zombies: Vec<Zombie>,
}

fn children(pid: i32) -> io::Result<BTreeSet<i32>> {
    crate::proc::children(pid)
}

/// `root` and every process below it (as far as /proc shows them now), root first.
pub fn descendants(root: i32) -> Vec<i32> {
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        if let Ok(kids) = children(out[i]) {
            out.extend(kids);
        }
        i += 1;
    }
    out
}

/// SIGKILL `root` and every process below it; returns them.
pub fn kill_descendants(root: i32) -> Vec<i32> {
    let pids = descendants(root);
    for &p in &pids {
        // SAFETY: kill(2).
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
    pids
}

/// (state char, ppid, pgrp, session, exit_code) from /proc/PID/stat. `Ok(None)`: gone
/// (and reaped) already.
type Brief = (char, i32, i32, i32, i32);

fn stat_brief(pid: i32) -> Result<Option<Brief>> {
    Ok(
        crate::proc::stat_if_exists(pid)?
            .map(|s| (s.state, s.ppid, s.pgrp, s.session, s.exit_code)),
    )
}

impl FrozenTree {
    pub fn freeze(root: i32) -> Result<FrozenTree> {
        let mut tree = FrozenTree {
            procs: vec![Frozen::freeze(root)?],
            zombies: Vec::new(),
        };
        let mut i = 0;
        while i < tree.procs.len() {
            let pid = tree.procs[i].pid;
            let kids = children(pid).map_err(|e| TraceError::io(pid, "listing children", e))?;
            for kid in kids {
                if is_stale_snapshot(kid)? {
                    wait_zombie(kid);
                    reap_in(&mut tree.procs[i], kid)?;
                    continue;
                }
                match stat_brief(kid)? {
                    Some(('Z', ppid, pgid, sid, status)) => tree.zombies.push(Zombie {
                        pid: kid,
                        ppid,
                        pgid,
                        sid,
                        wait_status: status,
                    }),
                    Some(_) => match Frozen::freeze(kid) {
                        Ok(f) => tree.procs.push(f),
                        // Exited between listing and seizing: it is a zombie now.
                        Err(TraceError::NoSuchProcess(_)) | Err(TraceError::Exited { .. }) => {
                            if let Some(('Z', ppid, pgid, sid, status)) = stat_brief(kid)? {
                                tree.zombies.push(Zombie {
                                    pid: kid,
                                    ppid,
                                    pgid,
                                    sid,
                                    wait_status: status,
                                });
                            }
                        }
                        Err(e) => return Err(e),
                    },
                    None => {} // gone and reaped already
                }
            }
            i += 1;
        }
        Ok(tree)
    }
}

/// A snapshot copy left by a ckpt that was killed during a checkpoint: named
/// `ckpt-snapshot`, with no exit signal, traced by nobody (the kernel killed it when its
/// ckpt died), which its parent will never reap itself. It may still be exiting (freeing
/// a large address space takes a while): dead or dying, it is not part of the job.
fn is_stale_snapshot(pid: i32) -> Result<bool> {
    let Some(s) = crate::proc::stat_if_exists(pid)? else {
        return Ok(false); // gone
    };
    if s.comm != crate::snapshot::SNAPSHOT_COMM || s.exit_signal != 0 {
        return Ok(false);
    }
    Ok(crate::proc::status_if_exists(pid)?.is_some_and(|st| st.tracer_pid == 0))
}

/// Wait (a few seconds at most) until a process that is exiting is a zombie.
fn wait_zombie(pid: i32) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !matches!(stat_brief(pid), Ok(Some(('Z', ..)) | None) | Err(_))
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Reap zombie `kid` from inside its frozen parent (wait4 with __WALL).
fn reap_in(parent: &mut Frozen, kid: i32) -> Result<()> {
    let pid = parent.pid;
    let ranges = crate::read::exec_ranges(pid)?;
    let inj = crate::inject::Injector::new(pid, &ranges)
        .map_err(|e| TraceError::io(pid, "preparing syscall injection", e))?;
    let r = inj
        .syscall(
            &mut parent.threads[0],
            libc::SYS_wait4,
            [
                kid as u64,
                0,
                (libc::__WALL | libc::WNOHANG) as u64,
                0,
                0,
                0,
            ],
        )
        .map_err(|e| TraceError::io(pid, format!("reaping stale snapshot {kid}"), e))?;
    if r != kid as i64 {
        return Err(TraceError::Unsupported {
            pid,
            what: format!("a leftover snapshot process {kid} that cannot be reaped ({r})"),
        });
    }
    Ok(())
}

/// Wait (at most 5 s) for the end of thread `tid`, killed while we traced it.
fn collect_traced(tid: i32) {
    for _ in 0..500 {
        let mut st = 0;
        // SAFETY: waitpid(2) on one thread we trace; writes only `st`.
        let r = unsafe { libc::waitpid(tid, &mut st, libc::WNOHANG | libc::__WALL) };
        if r != 0 {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

impl FrozenTree {
    /// Let every process run on.
    pub fn release(self) {
        for f in self.procs.into_iter().rev() {
            f.release();
        }
    }

    /// Kill every process of the tree (SIGKILL) while it is still frozen.
    ///
    /// A thread that dies before we let go of it stays traced by us, a zombie that
    /// only we can release: its process's end is not reported to its parent (and a
    /// pidfd of it does not wake) until then, and an agent waiting for its job would
    /// wait forever (a multi-threaded MPI tree killed by `kc`). So those are collected
    /// here, threads before their leaders (a leader's end comes once its threads are
    /// gone); a leader that is our own child is left to us to reap, with its status.
    pub fn kill(self) {
        // SAFETY: getpid(2) cannot fail.
        let me = unsafe { libc::getpid() };
        let mut traced = Vec::new();
        for f in self.procs.into_iter().rev() {
            let pid = f.pid;
            let ours = stat_brief(pid).ok().flatten().is_some_and(|b| b.1 == me);
            traced.extend(f.kill().into_iter().map(|tid| (pid, tid, ours)));
        }
        traced.sort_by_key(|&(pid, tid, _)| pid == tid);
        for (pid, tid, ours) in traced {
            if !(tid == pid && ours) {
                collect_traced(tid);
            }
        }
    }
}

const KCMP_FILE: i32 = 0;

fn kcmp_same_file(pid1: i32, pid2: i32, fd1: i32, fd2: i32) -> bool {
    // SAFETY: kcmp(2) only compares kernel objects.
    unsafe { libc::syscall(libc::SYS_kcmp, pid1, pid2, KCMP_FILE, fd1, fd2) == 0 }
}

/// Give every descriptor of the tree the id of its open file description: equal ids
/// mean one description (dup, fork inheritance), so one shared offset after restore.
/// Then the kinds' passes over the tree (crate::fd): for pipes, whether the other end
/// is open somewhere in the tree, and the data in flight of each pipe kept only once.
pub fn link_descriptors(procs: &mut [ProcessState]) -> Result<()> {
    // Candidates for sharing have the same inode: compare only within such groups.
    let mut groups: HashMap<(u64, u64), Vec<(usize, usize)>> = HashMap::new();
    for (pi, p) in procs.iter().enumerate() {
        for (fi, fd) in p.fds.iter().enumerate() {
            let md = std::fs::metadata(crate::proc::path(p.pid, &format!("fd/{}", fd.fd)))
                .map_err(|e| TraceError::io(p.pid, format!("stat of fd {}", fd.fd), e))?;
            groups
                .entry((md.dev(), md.ino()))
                .or_default()
                .push((pi, fi));
        }
    }
    let mut next_id: u32 = 0;
    let mut ids: HashMap<(usize, usize), u32> = HashMap::new();
    let mut keys: Vec<_> = groups.keys().copied().collect();
    keys.sort_unstable();
    for key in keys {
        let members = &groups[&key];
        let mut reps: Vec<((usize, usize), u32)> = Vec::new();
        for &(pi, fi) in members {
            let (pid, fd) = (procs[pi].pid, procs[pi].fds[fi].fd);
            let found = reps.iter().find(|((rp, rf), _)| {
                kcmp_same_file(procs[*rp].pid, pid, procs[*rp].fds[*rf].fd, fd)
            });
            let id = match found {
                Some(&(_, id)) => id,
                None => {
                    next_id += 1;
                    reps.push(((pi, fi), next_id));
                    next_id
                }
            };
            ids.insert((pi, fi), id);
        }
    }
    for (pi, p) in procs.iter_mut().enumerate() {
        for (fi, fd) in p.fds.iter_mut().enumerate() {
            fd.desc = ids[&(pi, fi)];
        }
    }
    // What spans processes, kind by kind: pipe ends and socket peers inside the tree
    // or not, data in flight and queues kept once.
    crate::fd::dump_tree(procs)
}

/// Pages of a shared anonymous memory object are stored once for the whole checkpoint:
/// every process that maps the object maps the same one again after restore, so the
/// first process (in tree order) that stores a page keeps it and the others drop it.
pub fn dedupe_shared_pages(procs: &mut [ProcessState]) {
    use crate::state::{PageRun, VmaKind};
    const PAGE: u64 = 4096;
    // Only objects mapped more than once need it (and it runs while the tree is stopped).
    let mut mappings: HashMap<u64, usize> = HashMap::new();
    for p in procs.iter() {
        for v in &p.vmas {
            if let VmaKind::SharedAnon { ino } = v.kind {
                *mappings.entry(ino).or_default() += 1;
            }
        }
    }
    let mut stored: std::collections::HashSet<(u64, u64)> = std::collections::HashSet::new();
    for p in procs.iter_mut() {
        for v in &mut p.vmas {
            let VmaKind::SharedAnon { ino } = v.kind else {
                continue;
            };
            if mappings[&ino] < 2 {
                continue;
            }
            let mut kept: Vec<PageRun> = Vec::new();
            for r in &v.pages {
                for i in 0..r.npages {
                    let addr = r.addr + i * PAGE;
                    // Page index within the object.
                    let obj_page = (v.offset + (addr - v.start)) / PAGE;
                    if !stored.insert((ino, obj_page)) {
                        continue;
                    }
                    crate::maps::push_page(&mut kept, addr);
                }
            }
            v.pages = kept;
        }
    }
}
