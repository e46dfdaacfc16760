//! Saved attribute groups of a process (issue 9): credentials, scheduling, prctl state,
//! job control, ... Each group is one variant of [`Attr`], filled and restored by its
//! module in `tracer/src/attr/`. A process's image holds a list of them
//! ([`crate::state::ProcessState::attrs`]).
//!
//! Compatibility: a new group is a new variant **appended at the end** of [`Attr`]
//! (postcard encodes the variant by its index), so every image an older ckpt wrote still
//! decodes; a group's own struct never changes shape within a format version (a change
//! is a new variant, or a format bump). Images of format 2 had no attribute list: they
//! decode with an empty one (see `crate::image`).

use serde::{Deserialize, Serialize};

/// One saved attribute group.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Attr {
    /// Scheduling of every thread and the process's OOM adjustment.
    Sched(Sched),
    /// madvise state and memory locks of the regions that have any.
    Memory(Vec<RegionAdvice>),
    /// File locks, leases, signal-driven I/O owners and pipe capacities of its descriptors.
    Locks(FdLocks),
    /// Seccomp filters of the threads that have any.
    Seccomp(Vec<ThreadSeccomp>),
    /// The process's cgroups, one per hierarchy.
    Cgroups(Vec<CgroupMembership>),
    /// Credentials of every thread.
    Creds(Creds),
    /// prctl state: parent-death signals, child subreaper, THP, dumpable, MDWE, KSM,
    /// the core dump filter and membarrier registrations.
    Prctl(Prctl),
    /// Job control: the group stop the process was in.
    JobCtl(JobCtl),
    /// The audit login uid and session id.
    AuditIds(AuditIds),
    /// The working directory, removed while the process was in it (`cwd` is then its
    /// old path with " (deleted)"): the restored process starts in a new empty one,
    /// made and removed again.
    DeletedCwd(crate::state::DeletedDir),
    /// Descriptors in flight (SCM_RIGHTS) in the receive queues of its unix sockets.
    UnixInFlight(Vec<UnixInFlight>),
    /// What it shares with its parent, which created it with clone(CLONE_FILES) or
    /// clone(CLONE_FS): the restore creates it from its parent the same way.
    SharesWithParent(CloneShares),
    /// The SysV message queues, semaphore sets and shared memory segments the process
    /// used, with their keys, ids, permissions and contents.
    SysvIpc(SysvIpc),
    /// An incremental image (issue 11): the pages of its private regions that were the
    /// same when it was written as in the generation it followed, and are stored there
    /// (or further back), not here.
    Parent(ParentPages),
    /// The xxh3-128 of every page of its private regions, stored here or in a parent:
    /// what the next incremental checkpoint compares against.
    PageHashes(Vec<HashedRun>),
}

/// Where an incremental image's other pages are: generation `generation` (a directory
/// beside this one, with this generation id), the same pid. Each run lists pages (its
/// `file_off` and `hash` are 0) whose content is that generation's at the same address.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ParentPages {
    pub generation: String,
    pub generation_id: String,
    pub runs: Vec<crate::state::PageRun>,
}

/// The page hashes of `npages` consecutive pages from `addr`: 16 bytes a page
/// (xxh3-128, little-endian), in address order.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct HashedRun {
    pub addr: u64,
    #[serde(with = "serde_bytes")]
    pub hashes: Vec<u8>,
}

/// Kernel objects a process shares with its parent (kcmp equal at dump time).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CloneShares {
    /// The descriptor table (CLONE_FILES).
    pub files: bool,
    /// The cwd, root and umask (CLONE_FS).
    pub fs: bool,
}

/// The audit login uid and session id of a process (/proc/PID/loginuid, sessionid;
/// u32::MAX: unset), as the dumper's user namespace shows them.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditIds {
    pub loginuid: u32,
    pub sessionid: u32,
}

/// What `sched_getattr` shows for one thread, plus the rest of its scheduling state.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ThreadSched {
    pub tid: i32,
    /// SCHED_OTHER (0), SCHED_FIFO (1), SCHED_RR (2), SCHED_BATCH (3), SCHED_IDLE (5),
    /// SCHED_DEADLINE (6).
    pub policy: u32,
    /// sched_flags (SCHED_FLAG_RESET_ON_FORK 1, util clamp 0x20/0x40, ...).
    pub flags: u64,
    pub nice: i32,
    /// Real-time priority (SCHED_FIFO / SCHED_RR), 0 otherwise.
    pub priority: u32,
    /// SCHED_DEADLINE parameters, ns (0 otherwise).
    pub runtime: u64,
    pub deadline: u64,
    pub period: u64,
    /// Utilization clamps (0..1024; shown when the kernel has them, else 0 and 1024).
    pub util_min: u32,
    pub util_max: u32,
    /// CPU affinity mask, 64 CPUs per word.
    pub affinity: Vec<u64>,
    /// ioprio_get(IOPRIO_WHO_PROCESS, tid): class << 13 | data.
    pub ioprio: i32,
    /// PR_GET_TIMERSLACK, ns.
    pub timerslack_ns: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Sched {
    pub threads: Vec<ThreadSched>,
    /// /proc/PID/oom_score_adj (per process).
    pub oom_score_adj: i32,
}

/// The advice and locking of one memory region, as its VmFlags show them.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct RegionAdvice {
    pub start: u64,
    pub end: u64,
    /// MADV_* values to apply again (MADV_RANDOM, MADV_SEQUENTIAL, MADV_DONTFORK,
    /// MADV_WIPEONFORK, MADV_DONTDUMP, MADV_HUGEPAGE, MADV_NOHUGEPAGE, MADV_MERGEABLE).
    pub advice: Vec<i32>,
    /// 0: not locked; 1: mlock; 2: mlock2(MLOCK_ONFAULT).
    pub lock: u8,
}

/// The state of a process's descriptors that only the process can set, by descriptor
/// number, and that [`crate::state::Fd`] has no field for (group "locks"): its file locks
/// and leases, the owners and signals of signal-driven I/O, and pipe capacities.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct FdLocks {
    /// Every lock and lease the process holds, once per open file description (a lock
    /// shown on several descriptors of one description is kept with the lowest).
    pub locks: Vec<FileLock>,
    /// Descriptors with an owner, a signal, O_ASYNC or a lease (whose owner a restore of
    /// the lease resets).
    pub owners: Vec<FdOwner>,
    /// The capacity of every pipe and FIFO, by one of its descriptors.
    pub pipe_sizes: Vec<PipeSize>,
}

/// What kind of lock, as the `lock:` lines of /proc/PID/fdinfo/FD name it.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockKind {
    /// fcntl(F_SETLK): a record lock of the process (`POSIX`).
    Posix,
    /// fcntl(F_OFD_SETLK): a record lock of the open file description (`OFDLCK`).
    Ofd,
    /// flock(2): a whole-file lock of the open file description (`FLOCK`).
    Flock,
    /// fcntl(F_SETLEASE): a lease of the open file description (`LEASE`).
    Lease,
}

/// One lock or lease.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct FileLock {
    /// The descriptor it is (re)taken through.
    pub fd: i32,
    pub kind: LockKind,
    /// A write (exclusive) lock or lease; else a read (shared) one.
    pub write: bool,
    /// First byte (0 for flock and leases).
    pub start: u64,
    /// Last byte, inclusive; `None`: to the end of the file, however long (EOF).
    pub end: Option<u64>,
    /// The locked file, as the lock line shows it: st_dev and inode.
    pub dev: u64,
    pub ino: u64,
}

/// The signal-driven I/O settings of one descriptor (of its open file description).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct FdOwner {
    pub fd: i32,
    /// F_GETOWN_EX: F_OWNER_TID (0), F_OWNER_PID (1) or F_OWNER_PGRP (2), and the id
    /// (0: no owner).
    pub owner_type: i32,
    pub owner: i32,
    /// F_GETSIG: the signal sent instead of SIGIO (0: SIGIO).
    pub sig: i32,
    /// O_ASYNC is set: re-armed from inside the process, so that its signals name this
    /// descriptor (si_fd).
    pub async_io: bool,
}

/// F_GETPIPE_SZ of a pipe or FIFO, in bytes.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct PipeSize {
    pub fd: i32,
    pub size: u32,
}

/// One seccomp filter as PTRACE_SECCOMP_GET_FILTER shows it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SeccompFilter {
    /// SECCOMP_FILTER_FLAG_* it was installed with (PTRACE_SECCOMP_GET_METADATA).
    pub flags: u64,
    /// The classic BPF program: 8-byte `struct sock_filter` instructions.
    pub insns: Vec<u64>,
}

/// The seccomp filters of one thread, oldest first.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ThreadSeccomp {
    pub tid: i32,
    pub filters: Vec<SeccompFilter>,
}

/// The cgroup of a process in one hierarchy, as /proc/PID/cgroup shows it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CgroupMembership {
    /// The controllers of a v1 hierarchy (`memory`, `name=systemd`, ...); empty for v2.
    pub controllers: String,
    /// The path inside the hierarchy, as seen from the dumper's cgroup namespace.
    pub path: String,
}

/// The credentials of one thread (they are per thread in Linux), as the dumping ckpt
/// sees them (ids in its user namespace, which the audit makes the process's too).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ThreadCreds {
    pub tid: i32,
    /// Real, effective, saved and filesystem user id (status `Uid:`).
    pub uid: [u32; 4],
    /// Real, effective, saved and filesystem group id (status `Gid:`).
    pub gid: [u32; 4],
    /// Supplementary groups, in the kernel's (sorted) order (status `Groups:`).
    pub groups: Vec<u32>,
    /// Capability sets, one bit per capability (status `CapInh:` ... `CapAmb:`).
    pub cap_inheritable: u64,
    pub cap_permitted: u64,
    pub cap_effective: u64,
    pub cap_bounding: u64,
    pub cap_ambient: u64,
    /// PR_GET_SECUREBITS, with SECBIT_KEEP_CAPS (what PR_GET_KEEPCAPS shows) among them.
    pub securebits: u32,
    /// PR_GET_NO_NEW_PRIVS (status `NoNewPrivs:`).
    pub no_new_privs: bool,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Creds {
    /// Every thread, the leader first.
    pub threads: Vec<ThreadCreds>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Prctl {
    /// PR_GET_PDEATHSIG of each thread that has one: (tid, signal).
    pub pdeathsig: Vec<(i32, i32)>,
    /// PR_GET_CHILD_SUBREAPER.
    pub child_subreaper: bool,
    /// PR_GET_THP_DISABLE: 0, or 1 | PR_THP_DISABLE_EXCEPT_ADVISED (2) as flags.
    pub thp_disable: u32,
    /// PR_GET_DUMPABLE: 0 or 1.
    pub dumpable: u32,
    /// PR_GET_MDWE: PR_MDWE_REFUSE_EXEC_GAIN (1) | PR_MDWE_NO_INHERIT (2).
    pub mdwe: u32,
    /// PR_GET_MEMORY_MERGE: KSM merging of the whole process.
    pub memory_merge: bool,
    /// /proc/PID/coredump_filter.
    pub coredump_filter: u64,
    /// membarrier(MEMBARRIER_CMD_GET_REGISTRATIONS): the MEMBARRIER_CMD_REGISTER_*
    /// commands the process registered (0 on kernels before 6.3, which cannot tell).
    pub membarrier: u32,
}

/// Job control state of a process at the checkpoint.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct JobCtl {
    /// The signal of the group stop (SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU) the process
    /// was in; 0: not stopped.
    pub stop_signal: i32,
    /// The children of this process whose stop its parent (this process) had not yet
    /// collected with waitpid(WUNTRACED): they are to report it again after restore.
    pub stop_reports: Vec<i32>,
}

/// Descriptors sent with one queued message (SCM_RIGHTS) of a unix socket's receive
/// queue ([`crate::state::FdKind::UnixSocket`] `queue`), not yet received.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct UnixInFlight {
    /// The saved inode of the socket whose receive queue holds the message.
    pub ino: u64,
    /// Datagram and seqpacket sockets: the index of the message in the queue. Stream
    /// sockets: the byte offset in the queue of the data sent with the descriptors.
    pub at: u64,
    /// Stream sockets: how many bytes were sent with the descriptors (0 otherwise).
    pub len: u64,
    /// The descriptors, in order, as open file descriptions of the checkpoint
    /// ([`crate::state::Fd::desc`]): each is open in some process of the tree too.
    pub descs: Vec<u32>,
}

/// SysV IPC objects of the IPC namespace that a process used (its group `sysvipc`). An
/// object several processes of the tree used is stored once, with the first of them in
/// tree order; the others name it in `elsewhere`.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct SysvIpc {
    pub msgs: Vec<SysvMsgQueue>,
    pub sems: Vec<SysvSemSet>,
    pub shms: Vec<SysvShm>,
    /// Objects this process used that are stored with another process of the tree.
    pub elsewhere: Vec<SysvRef>,
}

/// A SysV object by kind and id.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SysvRef {
    Msg(i32),
    Sem(i32),
    Shm(i32),
}

/// The `ipc_perm` of an object, as IPC_STAT shows it.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct SysvPerm {
    /// The key (0: IPC_PRIVATE).
    pub key: i32,
    pub id: i32,
    /// Permission bits, with SHM_LOCKED (02000) for a locked segment.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// The creator's (informational: a made-again object has the restorer's).
    pub cuid: u32,
    pub cgid: u32,
}

/// A message queue and every message it held, oldest first.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SysvMsgQueue {
    pub perm: SysvPerm,
    /// msg_qbytes: the most bytes it holds.
    pub qbytes: u64,
    /// The processes that last sent to and received from it (0: none).
    pub lspid: i32,
    pub lrpid: i32,
    pub messages: Vec<SysvMsg>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SysvMsg {
    pub mtype: i64,
    pub data: Vec<u8>,
}

/// A semaphore set: every value, and the process that last changed each (GETPID).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SysvSemSet {
    pub perm: SysvPerm,
    pub values: Vec<u16>,
    pub pids: Vec<i32>,
}

/// A shared memory segment and its content: the runs of pages that are not all
/// zeros (offset in the segment, bytes), the rest reads as zeros.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SysvShm {
    pub perm: SysvPerm,
    pub size: u64,
    /// The creator and the process that last attached or detached it.
    pub cpid: i32,
    pub lpid: i32,
    pub data: Vec<(u64, Vec<u8>)>,
}
