//! SysV IPC (the group "sysvipc"): the message queues, semaphore sets and shared memory
//! segments a process used. They live in the IPC namespace, not in the process, and
//! outlive it: after `ckpt dump --kill` they are usually still there, with whatever the
//! other users of the object did since; after a reboot they are gone.
//!
//! Dump. What the process used, as /proc/sysvipc and the objects themselves show it:
//! - a message queue it last sent to or received from (`lspid`/`lrpid`);
//! - a semaphore set one of whose semaphores it changed last (semctl GETPID: semop,
//!   SETVAL, SETALL; /proc shows no process of a set);
//! - a shared memory segment it created, last attached or detached (`cpid`/`lpid`), or
//!   has attached (its /SYSV mapping, whose inode is the segment's id).
//!
//! Each is read from outside, in the same IPC namespace, with the dumper's rights:
//! IPC_STAT (key, id, mode, owner, creator), every message with its type, without
//! taking it from the queue (msgrcv MSG_COPY, by index), every semaphore's value
//! (GETALL) and last changer (GETPID), and the segment's bytes (through the process's
//! own attachment in /proc/PID/mem, or one attached read-only inside the frozen process
//! for the time of the read, so that the segment's last user stays the process). An
//! object several processes of the tree used is stored once, with the first of them
//! ([`dedupe_tree`]); the others name it. The bytes are in the image's metadata, pages
//! of zeros left out.
//!
//! Refused, naming the object: an object the dumper cannot read; an attachment that
//! is not the whole segment from its first byte; and a process with a
//! semaphore undo list (SEM_UNDO, or any multi-threaded process: pthread_create's
//! CLONE_SYSVSEM makes one) that used a set: its adjustments cannot be read, and a kill
//! applies them to the values. A set changed last by another process, or a queue or
//! segment whose last user is another process, is not seen in this process (it is
//! saved with that process, when it is of the tree). Not seen at all, since nothing
//! names the process: a queue it made and never used, a set it made and never changed
//! (its GETPID stays 0), a set or queue whose last users are all outside the tree, a
//! set the dumper may not read. A restore after a reboot then lacks them, as it lacks
//! any object made outside the job.
//!
//! Restore ([`recreate`], before any process exists). For each object: when an object
//! with its id exists with the same key (and the same number of semaphores, the same
//! size), it is the saved object, still alive: it is used as it is, with what its
//! users did since (SysV objects are shared state, like files). When the id is free, it
//! is made again with the same id (its kind's /proc/sys/kernel/*_next_id, which needs
//! CAP_SYS_ADMIN over the IPC namespace), key, mode and owner, and filled: the messages
//! in order, the values, the bytes. An id or key taken by another object fails the
//! restore with a message before any process exists. Without the privilege a gone
//! object fails the restore too: it would come back under another id, which the
//! program holds in its memory. What cannot come back: the creator (cuid/cgid and the
//! segment's cpid become the restorer's) and the times.
//!
//! Then in each restored process (the group's restore, injected, for the objects this
//! restore made): the process that last changed a semaphore sets its value again
//! (SETVAL) and the last sender or receiver of a queue sends and receives a message of a
//! type none of its messages have, so that a later dump sees them as the users again.
//! Attachments are made by the loader (plan VMA kind `VMA_SYSV_SHM`, shmat at the old
//! address), which makes the process the segment's last attacher: in the loader the
//! address range is free by construction, and it is checked with every other region
//! (an injected shmat with SHM_REMAP afterwards would replace whatever the loader had
//! put there, and needs a placeholder the plan would have to carry anyway). A segment removed
//! (IPC_RMID) while attached (SHM_DEST, its key IPC_PRIVATE: gone once the killed
//! processes detached) is made again with its id and removed again once every process
//! of the tree that had it attached has it again, so that it goes with its last
//! detach as before. A restore that fails while creating or finishing the processes
//! removes what it made ([`restore_failed`]).

use super::{injected, Dump, Group, Restore};
use crate::error::{Result, TraceError};
use crate::fd::RestoreError;
use crate::proc;
use crate::state::{
    Attr, ProcessState, SysvIpc, SysvMsg, SysvMsgQueue, SysvPerm, SysvRef, SysvSemSet, SysvShm,
    VmaKind,
};
use std::collections::{BTreeMap, HashSet};
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Mutex;

pub const GROUP: Group = Group {
    name: "sysvipc",
    dump,
    restore,
    describe,
};

const PAGE: u64 = 4096;
const SHM_DEST: u32 = 0o1000;
const SHM_LOCKED: u32 = 0o2000;
const KCMP_SYSVSEM: i32 = 6;

fn errno() -> io::Error {
    io::Error::last_os_error()
}

fn perm_of(p: &libc::ipc_perm, id: i32) -> SysvPerm {
    SysvPerm {
        key: p.__key,
        id,
        mode: p.mode as u32,
        uid: p.uid,
        gid: p.gid,
        cuid: p.cuid,
        cgid: p.cgid,
    }
}

fn msg_stat(id: i32) -> io::Result<libc::msqid_ds> {
    // SAFETY: IPC_STAT writes one msqid_ds into the zeroed local.
    unsafe {
        let mut ds: libc::msqid_ds = std::mem::zeroed();
        if libc::msgctl(id, libc::IPC_STAT, &mut ds) < 0 {
            return Err(errno());
        }
        Ok(ds)
    }
}

fn sem_stat(id: i32) -> io::Result<libc::semid_ds> {
    // SAFETY: IPC_STAT writes one semid_ds into the zeroed local.
    unsafe {
        let mut ds: libc::semid_ds = std::mem::zeroed();
        if libc::semctl(id, 0, libc::IPC_STAT, &mut ds as *mut libc::semid_ds) < 0 {
            return Err(errno());
        }
        Ok(ds)
    }
}

fn shm_stat(id: i32) -> io::Result<libc::shmid_ds> {
    // SAFETY: IPC_STAT writes one shmid_ds into the zeroed local.
    unsafe {
        let mut ds: libc::shmid_ds = std::mem::zeroed();
        if libc::shmctl(id, libc::IPC_STAT, &mut ds) < 0 {
            return Err(errno());
        }
        Ok(ds)
    }
}

/// `what (id N, key K)`
fn named(what: &str, id: i32, key: i32) -> String {
    format!("{what} {id} (key {:#x})", key as u32)
}

// ------------------------------------------------------------------------- dump

/// Every message of queue `id`, oldest first, copied (MSG_COPY) and left in place.
fn read_messages(id: i32, cbytes: u64) -> io::Result<Vec<SysvMsg>> {
    let max = std::fs::read_to_string("/proc/sys/kernel/msgmax")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(8192);
    let cap = max.max(cbytes) as usize;
    let mut buf = vec![0u8; 8 + cap];
    let mut out = Vec::new();
    for index in 0i64.. {
        // SAFETY: msgrcv writes at most 8 + cap bytes into `buf`.
        let n = unsafe {
            libc::syscall(
                libc::SYS_msgrcv,
                id,
                buf.as_mut_ptr(),
                cap,
                index,
                libc::IPC_NOWAIT | libc::MSG_COPY,
            )
        };
        if n < 0 {
            let e = errno();
            if e.raw_os_error() == Some(libc::ENOMSG) {
                break;
            }
            return Err(e);
        }
        out.push(SysvMsg {
            mtype: i64::from_ne_bytes(buf[..8].try_into().unwrap()),
            data: buf[8..8 + n as usize].to_vec(),
        });
    }
    Ok(out)
}

fn read_queue(pid: i32, id: i32) -> Result<SysvMsgQueue> {
    let cannot = |e: io::Error| TraceError::Unsupported {
        pid,
        what: format!("reading the SysV message queue {id} it used ({e})"),
    };
    let ds = msg_stat(id).map_err(cannot)?;
    let perm = perm_of(&ds.msg_perm, id);
    let messages = read_messages(id, ds.__msg_cbytes).map_err(cannot)?;
    if messages.len() as u64 != ds.msg_qnum {
        return Err(TraceError::Unsupported {
            pid,
            what: format!(
                "{}: another process changed it while it was read",
                named("the SysV message queue", id, perm.key)
            ),
        });
    }
    Ok(SysvMsgQueue {
        perm,
        qbytes: ds.msg_qbytes,
        lspid: ds.msg_lspid,
        lrpid: ds.msg_lrpid,
        messages,
    })
}

/// The process that last changed each semaphore of set `id` (GETPID).
fn sem_pids(id: i32, nsems: usize) -> io::Result<Vec<i32>> {
    (0..nsems)
        .map(|i| {
            // SAFETY: GETPID takes no pointer.
            let r = unsafe { libc::semctl(id, i as i32, libc::GETPID) };
            if r < 0 {
                Err(errno())
            } else {
                Ok(r)
            }
        })
        .collect()
}

fn read_sem_set(pid: i32, id: i32, pids: Vec<i32>) -> Result<SysvSemSet> {
    let cannot = |e: io::Error| TraceError::Unsupported {
        pid,
        what: format!("reading the SysV semaphore set {id} it used ({e})"),
    };
    let ds = sem_stat(id).map_err(cannot)?;
    let mut values = vec![0u16; ds.sem_nsems as usize];
    // SAFETY: GETALL writes sem_nsems unsigned shorts into `values`.
    if unsafe { libc::semctl(id, 0, libc::GETALL, values.as_mut_ptr()) } < 0 {
        return Err(cannot(errno()));
    }
    Ok(SysvSemSet {
        perm: perm_of(&ds.sem_perm, id),
        values,
        pids,
    })
}

/// Whether `pid` has a semaphore undo list: kcmp(KCMP_SYSVSEM) against a fresh child
/// of ours, which has none (equal only when both have none).
fn has_undo_list(pid: i32) -> io::Result<bool> {
    // SAFETY: the child only waits to be killed (async-signal-safe calls only).
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(errno());
    }
    if child == 0 {
        loop {
            // SAFETY: pause(2) takes nothing.
            unsafe { libc::pause() };
        }
    }
    // SAFETY: kcmp takes integers; kill and waitpid of our own child.
    unsafe {
        let r = libc::syscall(libc::SYS_kcmp, pid, child, KCMP_SYSVSEM, 0, 0);
        let e = errno();
        libc::kill(child, libc::SIGKILL);
        libc::waitpid(child, std::ptr::null_mut(), 0);
        if r < 0 {
            return Err(e);
        }
        Ok(r != 0)
    }
}

/// The bytes of segment `id` (`size` bytes), as runs of pages that are not all zeros.
/// Read through the attachment at `at`, or through one made read-only in the process
/// for the time of the read.
fn read_segment(d: &mut Dump, id: i32, size: u64, at: Option<u64>) -> Result<Vec<(u64, Vec<u8>)>> {
    let pid = d.pid;
    let io_err = |what: String| move |e| TraceError::io(pid, what, e);
    let (addr, temporary) = match at {
        Some(a) => (a, false),
        None => {
            let a = injected(d.inj.syscall(
                &mut d.threads[0],
                libc::SYS_shmat,
                [id as u64, 0, libc::SHM_RDONLY as u64, 0, 0, 0],
            ))
            .map_err(io_err(format!(
                "attaching the SysV segment {id} to read it"
            )))?;
            (a as u64, true)
        }
    };
    let mut out: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut page = vec![0u8; PAGE as usize];
    let mut read = || -> io::Result<()> {
        let mut off = 0;
        while off < size {
            let n = (size - off).min(PAGE) as usize;
            d.inj.mem().read_exact_at(&mut page[..n], addr + off)?;
            if page[..n].iter().any(|&b| b != 0) {
                match out.last_mut() {
                    Some((o, data)) if *o + data.len() as u64 == off => {
                        data.extend_from_slice(&page[..n])
                    }
                    _ => out.push((off, page[..n].to_vec())),
                }
            }
            off += n as u64;
        }
        Ok(())
    };
    let r = read();
    if temporary {
        injected(
            d.inj
                .syscall(&mut d.threads[0], libc::SYS_shmdt, [addr, 0, 0, 0, 0, 0]),
        )
        .map_err(io_err(format!("detaching the SysV segment {id}")))?;
    }
    r.map_err(io_err(format!("reading the SysV segment {id}")))?;
    Ok(out)
}

fn dump(d: &mut Dump) -> Result<Option<Attr>> {
    let pid = d.pid;
    let refuse = |what: String| Err(TraceError::Unsupported { pid, what });
    let mut out = SysvIpc::default();
    let is = |r: &proc::SysvipcRow, col: &str| r.get(col) == Some(&(pid as i64));
    let col = |r: &proc::SysvipcRow, col: &str| r.get(col).copied().unwrap_or(-1);

    for r in proc::sysvipc("msg") {
        if is(&r, "lspid") || is(&r, "lrpid") {
            out.msgs.push(read_queue(pid, col(&r, "msqid") as i32)?);
        }
    }

    let mut undo: Option<bool> = None;
    for r in proc::sysvipc("sem") {
        let id = col(&r, "semid") as i32;
        // A set the dumper may not read is not one it can tell the process used.
        let Ok(pids) = sem_pids(id, col(&r, "nsems").max(0) as usize) else {
            continue;
        };
        if !pids.contains(&pid) {
            continue;
        }
        let key = col(&r, "key") as i32;
        let has_undo = match undo {
            Some(u) => u,
            None => match has_undo_list(pid) {
                Ok(u) => *undo.insert(u),
                Err(e) => {
                    return refuse(format!(
                        "{}: whether it holds SEM_UNDO adjustments cannot be told (kcmp: {e})",
                        named("the SysV semaphore set", id, key)
                    ))
                }
            },
        };
        if has_undo {
            return refuse(format!(
                "{} with a semaphore undo list (SEM_UNDO adjustments, or a multi-threaded process), which cannot be read",
                named("the SysV semaphore set", id, key)
            ));
        }
        out.sems.push(read_sem_set(pid, id, pids)?);
    }

    // Attachments: whole segments only, each at its address.
    let mut attached: BTreeMap<i32, u64> = BTreeMap::new();
    let mut pieces: Vec<(i32, u64, u64, u64)> = Vec::new();
    for m in d
        .maps
        .iter()
        .filter(|m| m.name.starts_with("/SYSV") && m.shared())
    {
        pieces.push((m.inode as i32, m.start, m.end, m.offset));
    }
    let rows = proc::sysvipc("shm");
    for &(id, start, end, offset) in &pieces {
        let Some(r) = rows.iter().find(|r| col(r, "shmid") == id as i64) else {
            return refuse(format!(
                "SysV shared memory at {start:#x}: segment {id} is not in /proc/sysvipc/shm"
            ));
        };
        let size = col(r, "size").max(0) as u64;
        if offset != 0 || end - start != size.div_ceil(PAGE) * PAGE {
            return refuse(format!(
                "part of the SysV shared memory segment {id} at {start:#x} (a partial unmap or mprotect of an attachment)"
            ));
        }
        attached.entry(id).or_insert(start);
    }
    for r in &rows {
        let id = col(r, "shmid") as i32;
        if !(is(r, "cpid") || is(r, "lpid") || attached.contains_key(&id)) {
            continue;
        }
        let ds = shm_stat(id).map_err(|e| TraceError::Unsupported {
            pid,
            what: format!("reading the SysV shared memory segment {id} it used ({e})"),
        })?;
        // Removed (IPC_RMID) while attached: SHM_DEST, and the key is IPC_PRIVATE.
        let perm = perm_of(&ds.shm_perm, id);
        let size = ds.shm_segsz as u64;
        let data = read_segment(d, id, size, attached.get(&id).copied())?;
        out.shms.push(SysvShm {
            perm,
            size,
            cpid: ds.shm_cpid,
            lpid: ds.shm_lpid,
            data,
        });
    }
    Ok((out != SysvIpc::default()).then_some(Attr::SysvIpc(out)))
}

/// Once the whole tree is read: each object is stored with the first process (in tree
/// order) that used it; the others name it (`elsewhere`).
pub fn dedupe_tree(procs: &mut [ProcessState]) {
    let mut stored: HashSet<SysvRef> = HashSet::new();
    for p in procs.iter_mut() {
        for a in &mut p.attrs {
            let Attr::SysvIpc(s) = a else { continue };
            let mut elsewhere = std::mem::take(&mut s.elsewhere);
            let mut keep = |r: SysvRef| {
                let first = stored.insert(r);
                if !first {
                    elsewhere.push(r);
                }
                first
            };
            s.msgs.retain(|q| keep(SysvRef::Msg(q.perm.id)));
            s.sems.retain(|q| keep(SysvRef::Sem(q.perm.id)));
            s.shms.retain(|q| keep(SysvRef::Shm(q.perm.id)));
            s.elsewhere = elsewhere;
        }
    }
}

// ---------------------------------------------------------------------- restore

/// The objects this restore made again (their content left out): the processes of the
/// tree that were their last users become it again in [`restore`]. Filled by
/// [`recreate`] before any process exists.
static MADE: Mutex<SysvIpc> = Mutex::new(SysvIpc {
    msgs: Vec::new(),
    sems: Vec::new(),
    shms: Vec::new(),
    elsewhere: Vec::new(),
});

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Msg,
    Sem,
    Shm,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Msg => "message queue",
            Kind::Sem => "semaphore set",
            Kind::Shm => "shared memory segment",
        }
    }
    fn next_id(self) -> &'static str {
        match self {
            Kind::Msg => "/proc/sys/kernel/msg_next_id",
            Kind::Sem => "/proc/sys/kernel/sem_next_id",
            Kind::Shm => "/proc/sys/kernel/shm_next_id",
        }
    }
    fn ipcrm(self) -> &'static str {
        match self {
            Kind::Msg => "-q",
            Kind::Sem => "-s",
            Kind::Shm => "-m",
        }
    }
}

/// What exists now of a saved object: its key, with its number of semaphores or size.
fn existing(kind: Kind, id: i32) -> io::Result<(i32, u64)> {
    match kind {
        Kind::Msg => msg_stat(id).map(|d| (d.msg_perm.__key, 0)),
        Kind::Sem => sem_stat(id).map(|d| (d.sem_perm.__key, d.sem_nsems)),
        Kind::Shm => shm_stat(id).map(|d| (d.shm_perm.__key, d.shm_segsz as u64)),
    }
}

/// The id of the object of `kind` with `key`, if there is one.
fn by_key(kind: Kind, key: i32) -> io::Result<Option<i32>> {
    // SAFETY: *get without IPC_CREAT only looks the key up.
    let r = unsafe {
        match kind {
            Kind::Msg => libc::msgget(key, 0),
            Kind::Sem => libc::semget(key, 0, 0),
            Kind::Shm => libc::shmget(key, 0, 0),
        }
    };
    if r >= 0 {
        return Ok(Some(r));
    }
    let e = errno();
    match e.raw_os_error() {
        Some(libc::ENOENT) => Ok(None),
        _ => Err(e),
    }
}

struct Saved<'a> {
    kind: Kind,
    perm: SysvPerm,
    /// nsems or size (0 for a queue).
    shape: u64,
    msg: Option<&'a SysvMsgQueue>,
    sem: Option<&'a SysvSemSet>,
    shm: Option<&'a SysvShm>,
}

impl Saved<'_> {
    fn named(&self) -> String {
        named(
            &format!("SysV {}", self.kind.name()),
            self.perm.id,
            self.perm.key,
        )
    }
}

/// Whether the saved object still exists (true), is gone (false), or its id or key is
/// another object's (an error).
fn still_there(o: &Saved) -> std::result::Result<bool, String> {
    let (kind, id, key) = (o.kind, o.perm.id, o.perm.key);
    match existing(kind, id) {
        Ok((k, shape)) if k == key && (shape == o.shape || kind == Kind::Msg) => return Ok(true),
        Ok((k, shape)) => {
            let what = if k != key {
                format!("key {:#x}", k as u32)
            } else {
                format!(
                    "the same key but {shape} {}",
                    if kind == Kind::Sem {
                        "semaphores"
                    } else {
                        "bytes"
                    }
                )
            };
            return Err(format!(
                "{}: its id is taken by another {} ({what}) since the checkpoint; remove it (ipcrm {} {id}) to restore the saved one",
                o.named(),
                kind.name(),
                kind.ipcrm()
            ));
        }
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::EIDRM)) => {}
        Err(e) => {
            return Err(format!(
                "{}: an object with its id exists but cannot be read ({e})",
                o.named()
            ))
        }
    }
    if key != libc::IPC_PRIVATE {
        match by_key(kind, key) {
            Ok(None) => {}
            Ok(Some(other)) => {
                return Err(format!(
                    "{}: it is gone, and its key is taken by another {} ({other}) since the checkpoint; remove it (ipcrm {} {other}) to restore the saved one",
                    o.named(),
                    kind.name(),
                    kind.ipcrm()
                ))
            }
            Err(e) => {
                return Err(format!(
                    "{}: it is gone, and an object with its key exists but cannot be read ({e})",
                    o.named()
                ))
            }
        }
    }
    Ok(false)
}

fn set_next_id(kind: Kind, id: i32) -> io::Result<()> {
    std::fs::write(kind.next_id(), format!("{id}\n"))
}

/// Make the saved object again with its id; fill it.
fn make(o: &Saved) -> std::result::Result<(), String> {
    let (kind, id, key) = (o.kind, o.perm.id, o.perm.key);
    let fail = |what: &str, e: io::Error| format!("{}: {what}: {e}", o.named());
    set_next_id(kind, id).map_err(|e| fail(&format!("writing {}", kind.next_id()), e))?;
    let flags = libc::IPC_CREAT | libc::IPC_EXCL | (o.perm.mode & 0o777) as i32;
    // SAFETY: *get with integers only.
    let got = unsafe {
        match kind {
            Kind::Msg => libc::msgget(key, flags),
            Kind::Sem => libc::semget(key, o.shape as i32, flags),
            Kind::Shm => libc::shmget(key, o.shape as usize, flags),
        }
    };
    if got < 0 {
        let e = errno();
        let _ = set_next_id(kind, -1);
        return Err(fail("making it again", e));
    }
    let remove = || {
        // SAFETY: removing the object just made, by id.
        unsafe {
            match kind {
                Kind::Msg => libc::msgctl(got, libc::IPC_RMID, std::ptr::null_mut()),
                Kind::Sem => libc::semctl(got, 0, libc::IPC_RMID),
                Kind::Shm => libc::shmctl(got, libc::IPC_RMID, std::ptr::null_mut()),
            }
        };
    };
    if got != id {
        remove();
        return Err(format!(
            "{}: made again, the kernel gave it id {got} ({} was not taken)",
            o.named(),
            kind.next_id()
        ));
    }
    let filled = fill(o).map_err(|e| fail("filling it", e));
    if filled.is_err() {
        remove();
    }
    filled
}

/// `r` of a libc call as a result.
fn check(r: i32) -> io::Result<()> {
    if r < 0 {
        Err(errno())
    } else {
        Ok(())
    }
}

fn msg_set(id: i32, ds: &mut libc::msqid_ds) -> io::Result<()> {
    // SAFETY: IPC_SET reads one msqid_ds from the exclusive borrow.
    check(unsafe { libc::msgctl(id, libc::IPC_SET, ds) })
}

fn sem_ctl_ptr<T>(id: i32, cmd: i32, p: *mut T) -> io::Result<()> {
    // SAFETY: the callers pass IPC_SET with a semid_ds, SETALL with an array of as many
    // unsigned shorts as the set has semaphores.
    check(unsafe { libc::semctl(id, 0, cmd, p) })
}

fn shm_set(id: i32, ds: &mut libc::shmid_ds) -> io::Result<()> {
    // SAFETY: IPC_SET reads one shmid_ds from the exclusive borrow.
    check(unsafe { libc::shmctl(id, libc::IPC_SET, ds) })
}

/// Writes `data` (runs of bytes at offsets) into the segment `id` of `size` bytes.
fn shm_write(id: i32, size: u64, data: &[(u64, Vec<u8>)]) -> io::Result<()> {
    // SAFETY: a new attachment of our own, where the kernel chooses.
    let p = unsafe { libc::shmat(id, std::ptr::null(), 0) };
    if p as isize == -1 {
        return Err(errno());
    }
    for (off, bytes) in data {
        if off
            .checked_add(bytes.len() as u64)
            .is_some_and(|e| e <= size)
        {
            // SAFETY: the run lies inside the segment, which is attached at `p` for
            // `size` bytes (rounded up to pages) and which nothing else of ours uses.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    bytes.as_ptr(),
                    (p as *mut u8).add(*off as usize),
                    bytes.len(),
                )
            };
        }
    }
    // SAFETY: detaching the attachment made above.
    unsafe { libc::shmdt(p) };
    Ok(())
}

/// Owner, mode and content of an object just made.
fn fill(o: &Saved) -> io::Result<()> {
    let id = o.perm.id;
    let set_perm = |p: &mut libc::ipc_perm| {
        p.uid = o.perm.uid;
        p.gid = o.perm.gid;
        p.mode = (o.perm.mode & 0o777) as u16;
    };
    match o.kind {
        Kind::Msg => {
            let q = o.msg.unwrap();
            let mut ds = msg_stat(id)?;
            set_perm(&mut ds.msg_perm);
            let mut with_size = ds;
            with_size.msg_qbytes = q.qbytes;
            // Raising msg_qbytes above msgmnb needs CAP_SYS_RESOURCE: keep the default then.
            if msg_set(id, &mut with_size).is_err() {
                msg_set(id, &mut ds)?;
            }
            for m in &q.messages {
                let mut buf = m.mtype.to_ne_bytes().to_vec();
                buf.extend_from_slice(&m.data);
                // SAFETY: msgsnd reads the type and m.data.len() bytes from `buf`.
                check(unsafe {
                    libc::msgsnd(id, buf.as_ptr().cast(), m.data.len(), libc::IPC_NOWAIT)
                })?;
            }
        }
        Kind::Sem => {
            let s = o.sem.unwrap();
            let mut ds = sem_stat(id)?;
            set_perm(&mut ds.sem_perm);
            sem_ctl_ptr(id, libc::IPC_SET, &mut ds as *mut libc::semid_ds)?;
            let mut values = s.values.clone();
            sem_ctl_ptr(id, libc::SETALL, values.as_mut_ptr())?;
        }
        Kind::Shm => {
            let m = o.shm.unwrap();
            let mut ds = shm_stat(id)?;
            set_perm(&mut ds.shm_perm);
            shm_set(id, &mut ds)?;
            if !m.data.is_empty() {
                shm_write(id, m.size, &m.data)?;
            }
            if o.perm.mode & SHM_LOCKED != 0 {
                // SAFETY: SHM_LOCK takes no buffer.
                check(unsafe { libc::shmctl(id, libc::SHM_LOCK, std::ptr::null_mut()) })?;
            }
        }
    }
    Ok(())
}

/// The SysV objects of the tree that a restore needs, each once, and who attaches each
/// segment again.
type Needed<'a> = (Vec<Saved<'a>>, BTreeMap<i32, HashSet<i32>>);

fn needed<'a>(states: &[&'a ProcessState]) -> Needed<'a> {
    let mut all: Vec<Saved> = Vec::new();
    let mut seen: HashSet<(u8, i32)> = HashSet::new();
    // Who attaches each segment again: a segment removed while attached is removed
    // again once the last of them has.
    let mut attachers: BTreeMap<i32, HashSet<i32>> = BTreeMap::new();
    for p in states {
        for v in &p.vmas {
            if let VmaKind::SysvShm { shmid, .. } = v.kind {
                attachers.entry(shmid).or_default().insert(p.pid);
            }
        }
    }
    for a in states.iter().flat_map(|p| p.attrs.iter()) {
        let Attr::SysvIpc(s) = a else { continue };
        for q in &s.msgs {
            if seen.insert((0, q.perm.id)) {
                all.push(Saved {
                    kind: Kind::Msg,
                    perm: q.perm,
                    shape: 0,
                    msg: Some(q),
                    sem: None,
                    shm: None,
                });
            }
        }
        for q in &s.sems {
            if seen.insert((1, q.perm.id)) {
                all.push(Saved {
                    kind: Kind::Sem,
                    perm: q.perm,
                    shape: q.values.len() as u64,
                    msg: None,
                    sem: Some(q),
                    shm: None,
                });
            }
        }
        for q in &s.shms {
            // Removed while attached, and attached in no process of the tree: it
            // would go at once.
            let unused = !attachers.contains_key(&q.perm.id);
            if q.perm.mode & SHM_DEST != 0 && unused {
                continue;
            }
            if seen.insert((2, q.perm.id)) {
                all.push(Saved {
                    kind: Kind::Shm,
                    perm: q.perm,
                    shape: q.size,
                    msg: None,
                    sem: None,
                    shm: Some(q),
                });
            }
        }
    }
    (all, attachers)
}

/// Whether an ordinary user's restore of `states` needs an IPC namespace of its own:
/// some SysV objects of the tree are gone (after `ckpt dump --kill`, the segments that
/// were removed while attached, say — as UCX, MPICH's transport, does with its own),
/// none is still in place, and ids cannot be chosen here (`*_next_id` needs
/// CAP_SYS_ADMIN over the IPC namespace). In a namespace of its own, made with its new
/// user namespace, the restore may choose them, and nothing else lives there: every
/// object comes back with its id. With some objects still in place, the job shares
/// them with the host namespace, and the restore stays there.
pub fn needs_own_namespace(states: &[&ProcessState]) -> bool {
    let (all, _) = needed(states);
    if all.is_empty() || all.iter().any(|o| still_there(o) == Ok(true)) {
        return false;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(all[0].kind.next_id())
        .is_err()
}

/// The objects of `all` that are gone, each checked to be one this restore may make
/// again with its id; fails naming the first that is not, or an id taken by another.
fn checked_gone<'a, 'b>(all: &'a [Saved<'b>]) -> std::result::Result<Vec<&'a Saved<'b>>, String> {
    let mut gone = Vec::new();
    for o in all {
        if !still_there(o)? {
            gone.push(o);
        }
    }
    for o in &gone {
        // Only who may choose the id: an object under another id would be another one
        // for the program, which holds the old id.
        if let Err(e) = std::fs::OpenOptions::new()
            .write(true)
            .open(o.kind.next_id())
        {
            return Err(format!(
                "{} is gone and cannot be made again with its id: writing {} needs CAP_SYS_ADMIN over the IPC namespace ({e}); restore as root, or with the object still in place",
                o.named(),
                o.kind.next_id()
            ));
        }
    }
    Ok(gone)
}

/// What [`recreate`] would fail on, without making anything (`ckpt check DIR`).
pub fn check_restorable(states: &[&ProcessState]) -> std::result::Result<(), String> {
    let (all, _) = needed(states);
    checked_gone(&all).map(|_| ())
}

/// Before any process exists: every SysV object the images hold (`attrs`, every
/// process's groups), once each by id, found where it still is or made again. Fails,
/// with a message naming the object, when an id or key is another object's or a gone
/// object cannot be made again with its id; nothing is made then.
pub fn recreate(states: &[&ProcessState]) -> std::result::Result<(), String> {
    let (all, attachers) = needed(states);
    let gone = checked_gone(&all)?;
    for o in gone {
        if let Err(e) = make(o) {
            restore_failed(); // the ones made before it
            return Err(e);
        }
        let mut made = MADE.lock().unwrap();
        if let Some(q) = o.msg {
            made.msgs.push(q.clone());
        }
        if let Some(q) = o.sem {
            made.sems.push(q.clone());
        }
        if let Some(q) = o.shm {
            made.shms.push(SysvShm {
                data: Vec::new(),
                ..q.clone()
            });
            if q.perm.mode & SHM_DEST != 0 {
                let who = attachers.get(&q.perm.id).cloned().unwrap_or_default();
                TO_REMOVE.lock().unwrap().push((q.perm.id, who));
            }
        }
    }
    Ok(())
}

/// Segments this restore made that had been removed while attached, with the
/// processes yet to attach them: removed again once none is left.
static TO_REMOVE: Mutex<Vec<(i32, HashSet<i32>)>> = Mutex::new(Vec::new());

fn shm_rmid(id: i32) {
    // SAFETY: IPC_RMID takes no buffer.
    unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) };
}

/// Process `pid` has its attachments again (its loader ran): remove the segments
/// that were removed while attached once every process has.
fn attached_again(pid: i32) {
    let mut pending = TO_REMOVE.lock().unwrap();
    pending.retain_mut(|(id, who)| {
        who.remove(&pid);
        if who.is_empty() {
            shm_rmid(*id);
        }
        !who.is_empty()
    });
}

/// The restore failed after [`recreate`]: remove every object it made, so that the
/// IPC namespace is as before (a retry makes them again).
pub fn restore_failed() {
    TO_REMOVE.lock().unwrap().clear();
    let made = std::mem::take(&mut *MADE.lock().unwrap());
    for q in &made.msgs {
        // SAFETY: IPC_RMID takes no buffer.
        unsafe { libc::msgctl(q.perm.id, libc::IPC_RMID, std::ptr::null_mut()) };
    }
    for q in &made.sems {
        // SAFETY: as above.
        unsafe { libc::semctl(q.perm.id, 0, libc::IPC_RMID) };
    }
    for q in &made.shms {
        shm_rmid(q.perm.id);
    }
}

/// In the restored process: it becomes again the last user of the objects this restore
/// made that it was the last user of.
fn restore(r: &mut Restore, a: &Attr) -> Option<std::result::Result<(), RestoreError>> {
    let Attr::SysvIpc(_) = a else {
        return None;
    };
    let made = MADE.lock().unwrap().clone();
    let done = restore_users(r, &made);
    attached_again(r.pid);
    Some(done)
}

/// `s`: the objects this restore made, of every process of the tree.
fn restore_users(r: &mut Restore, s: &SysvIpc) -> std::result::Result<(), RestoreError> {
    let pid = r.pid;
    let fail =
        |what: String| move |e: io::Error| RestoreError::msg(format!("process {pid}: {what}: {e}"));
    for set in &s.sems {
        for (i, (&v, &p)) in set.values.iter().zip(&set.pids).enumerate() {
            if p == pid {
                injected(r.inj.syscall(
                    &mut r.threads[0],
                    libc::SYS_semctl,
                    [
                        set.perm.id as u64,
                        i as u64,
                        libc::SETVAL as u64,
                        v as u64,
                        0,
                        0,
                    ],
                ))
                .map_err(fail(format!(
                    "setting semaphore {i} of SysV set {}",
                    set.perm.id
                )))?;
            }
        }
    }
    for q in &s.msgs {
        if q.lspid != pid && q.lrpid != pid {
            continue;
        }
        // A message of a type none of the saved ones has, sent and taken back at once.
        let mut mtype = i64::MAX;
        while q.messages.iter().any(|m| m.mtype == mtype) {
            mtype -= 1;
        }
        let id = q.perm.id as u64;
        let buf = mtype.to_ne_bytes();
        let mut out = [0u8; 8];
        let sent = injected(r.inj.syscall_with_buf(
            &mut r.threads[0],
            libc::SYS_msgsnd,
            |a| [id, a, 0, libc::IPC_NOWAIT as u64, 0, 0],
            &buf,
            &mut out,
        ));
        match sent {
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                eprintln!(
                    "ckpt: warning: process {pid}: the SysV message queue {id} is full; a later dump will not see this process as its user"
                );
                continue;
            }
            r => r.map_err(fail(format!("sending to the SysV message queue {id}")))?,
        };
        injected(r.inj.syscall_with_buf(
            &mut r.threads[0],
            libc::SYS_msgrcv,
            |a| {
                [
                    id,
                    a,
                    0,
                    mtype as u64,
                    (libc::IPC_NOWAIT | libc::MSG_NOERROR) as u64,
                    0,
                ]
            },
            &buf,
            &mut out,
        ))
        .map_err(fail(format!("receiving from the SysV message queue {id}")))?;
    }
    let attached: HashSet<i32> = r
        .state
        .vmas
        .iter()
        .filter_map(|v| match v.kind {
            VmaKind::SysvShm { shmid, .. } => Some(shmid),
            _ => None,
        })
        .collect();
    for m in &s.shms {
        if m.lpid != pid || attached.contains(&m.perm.id) {
            continue; // the loader's shmat made it the last attacher
        }
        let id = m.perm.id;
        let a = injected(r.inj.syscall(
            &mut r.threads[0],
            libc::SYS_shmat,
            [id as u64, 0, libc::SHM_RDONLY as u64, 0, 0, 0],
        ))
        .map_err(fail(format!("attaching the SysV segment {id}")))?;
        injected(r.inj.syscall(
            &mut r.threads[0],
            libc::SYS_shmdt,
            [a as u64, 0, 0, 0, 0, 0],
        ))
        .map_err(fail(format!("detaching the SysV segment {id}")))?;
    }
    Ok(())
}

fn describe(a: &Attr) -> Option<Vec<String>> {
    let Attr::SysvIpc(s) = a else {
        return None;
    };
    let perm = |p: &SysvPerm| {
        format!(
            "{} (key {:#x}) mode {:o} owner {}:{}",
            p.id, p.key as u32, p.mode, p.uid, p.gid
        )
    };
    let mut out = Vec::new();
    for q in &s.msgs {
        let bytes: usize = q.messages.iter().map(|m| m.data.len()).sum();
        out.push(format!(
            "message queue {}: {} messages, {bytes} bytes",
            perm(&q.perm),
            q.messages.len()
        ));
    }
    for q in &s.sems {
        out.push(format!(
            "semaphore set {}: values {:?}",
            perm(&q.perm),
            q.values
        ));
    }
    for r in &s.elsewhere {
        let (what, id) = match *r {
            SysvRef::Msg(id) => ("message queue", id),
            SysvRef::Sem(id) => ("semaphore set", id),
            SysvRef::Shm(id) => ("shared memory segment", id),
        };
        out.push(format!(
            "{what} {id}: stored with another process of the tree"
        ));
    }
    for q in &s.shms {
        let stored: usize = q.data.iter().map(|(_, d)| d.len()).sum();
        out.push(format!(
            "shared memory segment {}: {} bytes, {stored} stored",
            perm(&q.perm),
            q.size
        ));
    }
    Some(out)
}
