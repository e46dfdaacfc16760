//! The dump-time audit (issue 9, docs/AUDIT.md): every attribute the kernel shows for a
//! process, a thread or a memory region is either saved and restored (by the attribute
//! group, descriptor kind or image part named in the table), or not state at all
//! (counters, sizes, identities a restore gives back by itself), or must be at its
//! default — otherwise the dump refuses and names the process, the thread and the
//! attribute, and the process runs on. A field the table does not know (a newer kernel's)
//! is refused too: a new kernel field has exactly one place to go, [`TABLE`].
//!
//! The audit reads the frozen process: /proc status of every thread, system calls
//! injected into every thread (prctl and arch_prctl getters, the memory policy, the LDT),
//! the GDT TLS entries through ptrace, /proc files of the process, its namespaces and
//! root, and the VmFlags of every region. The `lock:` lines of every descriptor's fdinfo
//! are checked against this table by the locks group as it reads them ([`check_lock`]):
//! a lease that changes state between two reads (being broken) must be refused by the
//! read that saves it.

use crate::error::{Result, TraceError};
use crate::freeze::FrozenThread;
use crate::inject::Injector;
use crate::proc::{self, MapEntry};
use std::io;

/// What ckpt does with one attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Saved and restored by this attribute group (`tracer/src/attr/`), descriptor kind, or
    /// part of the image.
    Saved(&'static str),
    /// Not state a restore must carry: a counter, a size, an identity or a flag the
    /// kernel sets by itself for the restored process.
    Info,
    /// Must be at its default; any other value refuses the dump.
    Default(Def),
}

/// The default an attribute must have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Def {
    /// Zero (in any base, with or without a unit), or empty.
    Zero,
    /// Exactly this text (or, for a system call, this result).
    Value(&'static str),
    /// The same as the dumping ckpt's own: what a process it restores inherits from it.
    Ours,
}

/// Where an attribute is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A field of /proc/PID/task/TID/status, for every thread.
    Status(&'static str),
    /// `prctl(option, arg2)` injected into every thread: its result.
    Prctl(u64, u64),
    /// `prctl(option, &int)` injected into every thread: the int it writes.
    PrctlOut(u64),
    /// `arch_prctl(code, &value)` injected into every thread (`out`: the value is
    /// written through the pointer; else it is the result).
    ArchPrctl { code: u64, out: bool },
    /// A file of /proc/PID/.
    File(&'static str),
    /// A namespace of the process (/proc/PID/ns/NAME).
    Ns(&'static str),
    /// A VmFlags letter of any region (smaps).
    VmFlag(&'static str),
    /// The thread's memory policy (get_mempolicy, injected): the mode.
    Mempolicy,
    /// The process's LDT (modify_ldt read, injected): its size.
    Ldt,
    /// The thread's GDT TLS entries (PTRACE_GET_THREAD_AREA, entries 12..14).
    ThreadArea,
    /// The process's root directory (/proc/PID/root).
    Root,
    /// A word of the class or mode of a `lock:` line of /proc/PID/fdinfo/FD (`POSIX`,
    /// `FLOCK`, `ADVISORY`, `BREAKING`, ...), for every descriptor: checked by the locks
    /// group (tracer/src/attr/locks.rs) as it reads them, with [`check_lock`].
    FdLock(&'static str),
    /// `fcntl(fd, cmd)` injected for every descriptor (F_GETPIPE_SZ: every pipe and FIFO).
    Fcntl(i32),
    /// A kernel object that two processes of the tree may share (clone flags without
    /// CLONE_THREAD), compared with kcmp(KCMP_*) for every pair.
    Shared(i32),
    /// membarrier(MEMBARRIER_CMD_GET_REGISTRATIONS), injected (Linux 6.3+): the
    /// registered commands.
    Membarrier,
    /// What the terminal kinds read of a terminal (`tracer/src/fd/pty.rs` for every
    /// pty pair whose master is in the checkpoint, `tty.rs` for a terminal outside it
    /// on a standard stream), and refuse as they read it: an ioctl or what it stands for.
    Terminal(&'static str),
    /// A bit of the `flags:` word of /proc/PID/fdinfo/FD (octal), for every descriptor:
    /// checked as the descriptors are read (`files::read_fds`), with [`check_fd_flags`];
    /// a bit the table does not know is refused.
    FdFlag(i32),
    /// What stat(2) and lseek(2) show of the file behind a descriptor (through
    /// /proc/PID/fd/FD): saved by the descriptor kind that reads it.
    FdFile(&'static str),
    /// The process's working directory (/proc/PID/cwd).
    Cwd,
    /// SysV IPC objects of the IPC namespace that the process used (/proc/sysvipc/NAME,
    /// or kcmp for the semaphore undo list): the group `sysvipc`.
    SysvIpc(&'static str),
    /// A property of every AF_UNIX socket (sock_diag, getsockopt/getpeername on a copy
    /// of the descriptor, its receive queue peeked), checked by the unix socket kind as
    /// it reads each one (tracer/src/fd/unix/dump.rs).
    UnixSock(&'static str),
    /// A property of every AF_INET/AF_INET6 socket (getsockopt, TCP_INFO, inet_diag,
    /// /proc/PID/net/tcp{,6}, its receive queue peeked, on a copy of the descriptor),
    /// checked by the inet kind as it reads each one and in its tree pass
    /// (tracer/src/fd/inet.rs).
    InetSock(&'static str),
}

/// One attribute the audit checks.
#[derive(Clone, Copy, Debug)]
pub struct Row {
    pub source: Source,
    /// What a person calls it, for the refusal and docs/AUDIT.md.
    pub what: &'static str,
    pub verdict: Verdict,
}

use crate::prctl_nr::*;
use Def::*;
use Source::*;
use Verdict::*;

const fn row(source: Source, what: &'static str, verdict: Verdict) -> Row {
    Row {
        source,
        what,
        verdict,
    }
}

// prctl options (linux/prctl.h).
// fcntl commands (asm-generic/fcntl.h) that the libc crate does not name.
pub const F_GETSIG: i32 = 11;
pub const F_GETOWN_EX: i32 = 16;
// kcmp types (linux/kcmp.h).
const KCMP_VM: i32 = 1;
pub const KCMP_FILES: i32 = 2;
pub const KCMP_FS: i32 = 3;
const KCMP_SIGHAND: i32 = 4;
// arch_prctl codes (asm/prctl.h).
const ARCH_GET_CPUID: u64 = 0x1011;
const ARCH_GET_XCOMP_PERM: u64 = 0x1022;
const ARCH_GET_UNTAG_MASK: u64 = 0x4001;

/// Every attribute the audit checks, and what ckpt does with it.
pub static TABLE: &[Row] = &[
    // ---- /proc/PID/task/TID/status, every thread ----
    row(Status("Name"), "thread name", Saved("image: threads")),
    row(Status("Umask"), "umask", Saved("image: umask")),
    row(Status("State"), "run state", Info),
    row(Status("Tgid"), "thread group id", Info),
    row(Status("Ngid"), "NUMA group id", Info),
    row(Status("Pid"), "thread id", Saved("image: threads")),
    row(Status("PPid"), "parent", Saved("image: process tree")),
    row(Status("TracerPid"), "tracer", Info), // another tracer is refused at attach
    row(
        Status("Uid"),
        "user ids (real, effective, saved, fs)",
        Saved("creds"),
    ),
    row(
        Status("Gid"),
        "group ids (real, effective, saved, fs)",
        Saved("creds"),
    ),
    row(Status("FDSize"), "descriptor table size", Info),
    row(Status("Groups"), "supplementary groups", Saved("creds")),
    row(
        Status("NStgid"),
        "thread group id in each PID namespace",
        Info,
    ),
    row(Status("NSpid"), "thread id in each PID namespace", Info),
    row(
        Status("NSpgid"),
        "process group in each PID namespace",
        Info,
    ),
    row(Status("NSsid"), "session in each PID namespace", Info),
    row(Status("Kthread"), "kernel thread", Info), // kernel threads are refused at attach
    row(Status("VmPeak"), "peak virtual memory", Info),
    row(Status("VmSize"), "virtual memory size", Info),
    row(Status("VmLck"), "locked memory (mlock)", Saved("memory")),
    row(Status("VmPin"), "pinned memory", Default(Zero)),
    row(Status("VmHWM"), "peak resident memory", Info),
    row(Status("VmRSS"), "resident memory", Info),
    row(Status("RssAnon"), "resident anonymous memory", Info),
    row(Status("RssFile"), "resident file memory", Info),
    row(Status("RssShmem"), "resident shared memory", Info),
    row(Status("VmData"), "data size", Info),
    row(Status("VmStk"), "stack size", Info),
    row(Status("VmExe"), "text size", Info),
    row(Status("VmLib"), "library size", Info),
    row(Status("VmPTE"), "page table size", Info),
    row(Status("VmSwap"), "swapped memory", Info),
    row(Status("HugetlbPages"), "hugetlb memory", Info), // hugetlb regions refused by maps
    row(
        Status("CoreDumping"),
        "core dump in progress",
        Default(Zero),
    ),
    row(
        Status("THP_enabled"),
        "transparent huge pages enabled (PR_SET_THP_DISABLE)",
        Saved("prctl"),
    ),
    row(
        Status("untag_mask"),
        "address tag mask (LAM)",
        Default(Ours),
    ),
    row(Status("Threads"), "thread count", Saved("image: threads")),
    row(Status("SigQ"), "queued signals / limit", Info),
    row(Status("SigPnd"), "pending signals", Saved("image: threads")),
    row(
        Status("ShdPnd"),
        "shared pending signals",
        Saved("image: signals"),
    ),
    row(Status("SigBlk"), "blocked signals", Saved("image: threads")),
    row(
        Status("SigIgn"),
        "ignored signals",
        Saved("image: signal handlers"),
    ),
    row(
        Status("SigCgt"),
        "caught signals",
        Saved("image: signal handlers"),
    ),
    row(Status("CapInh"), "inheritable capabilities", Saved("creds")),
    row(Status("CapPrm"), "permitted capabilities", Saved("creds")),
    row(Status("CapEff"), "effective capabilities", Saved("creds")),
    row(Status("CapBnd"), "bounding capabilities", Saved("creds")),
    row(Status("CapAmb"), "ambient capabilities", Saved("creds")),
    row(Status("NoNewPrivs"), "no_new_privs", Saved("creds")),
    row(Status("Seccomp"), "seccomp mode", Saved("seccomp")),
    row(
        Status("Seccomp_filters"),
        "seccomp filters",
        Saved("seccomp"),
    ),
    row(
        Status("Speculation_Store_Bypass"),
        "speculative store bypass control",
        Default(Ours),
    ),
    row(
        Status("SpeculationIndirectBranch"),
        "indirect branch speculation control",
        Default(Ours),
    ),
    row(Status("Cpus_allowed"), "CPU affinity", Saved("sched")),
    row(Status("Cpus_allowed_list"), "CPU affinity", Saved("sched")),
    row(
        Status("Mems_allowed"),
        "memory nodes allowed (cpuset)",
        Default(Ours),
    ),
    row(
        Status("Mems_allowed_list"),
        "memory nodes allowed (cpuset)",
        Default(Ours),
    ),
    row(Status("voluntary_ctxt_switches"), "context switches", Info),
    row(
        Status("nonvoluntary_ctxt_switches"),
        "context switches",
        Info,
    ),
    row(
        Status("x86_Thread_features"),
        "x86 thread features (shadow stack)",
        Default(Zero),
    ),
    row(
        Status("x86_Thread_features_locked"),
        "locked x86 thread features",
        Info,
    ),
    // ---- prctl, every thread ----
    row(
        PrctlOut(PR_GET_PDEATHSIG),
        "parent-death signal (PR_SET_PDEATHSIG)",
        Saved("prctl"),
    ),
    row(
        Prctl(PR_GET_DUMPABLE, 0),
        "dumpable flag (PR_SET_DUMPABLE)",
        Saved("prctl"), // 2 (suid_dumpable) is refused by the group
    ),
    row(
        Prctl(PR_GET_KEEPCAPS, 0),
        "keep-capabilities flag (PR_SET_KEEPCAPS)",
        Saved("creds"),
    ),
    row(
        PrctlOut(PR_GET_TSC),
        "TSC access (PR_SET_TSC)",
        Default(Value("1")),
    ),
    row(Prctl(PR_GET_SECUREBITS, 0), "securebits", Saved("creds")),
    row(Prctl(PR_GET_TIMERSLACK, 0), "timer slack", Saved("sched")),
    row(
        Prctl(PR_MCE_KILL_GET, 0),
        "machine-check kill policy (PR_MCE_KILL)",
        Default(Ours),
    ),
    row(
        PrctlOut(PR_GET_CHILD_SUBREAPER),
        "child subreaper (PR_SET_CHILD_SUBREAPER)",
        Saved("prctl"),
    ),
    row(
        Prctl(PR_GET_NO_NEW_PRIVS, 0),
        "no_new_privs",
        Saved("creds"),
    ),
    row(
        Prctl(PR_GET_THP_DISABLE, 0),
        "THP disable (PR_SET_THP_DISABLE)",
        Saved("prctl"),
    ),
    // Store bypass and indirect branch speculation: the task status rows above.
    row(
        Prctl(PR_GET_SPECULATION_CTRL, 2),
        "L1D flush control",
        Default(Ours),
    ),
    row(
        Prctl(PR_GET_IO_FLUSHER, 0),
        "I/O flusher (PR_SET_IO_FLUSHER)",
        Default(Ours),
    ),
    row(
        Prctl(PR_GET_MDWE, 0),
        "memory-deny-write-execute (PR_SET_MDWE)",
        Saved("prctl"),
    ),
    row(
        Prctl(PR_GET_MEMORY_MERGE, 0),
        "KSM merging of the whole process (PR_SET_MEMORY_MERGE)",
        Saved("prctl"),
    ),
    // ---- arch_prctl, every thread ----
    row(
        ArchPrctl {
            code: ARCH_GET_CPUID,
            out: false,
        },
        "CPUID faulting (ARCH_SET_CPUID)",
        Default(Value("1")),
    ),
    row(
        ArchPrctl {
            code: ARCH_GET_XCOMP_PERM,
            out: true,
        },
        "permitted dynamic xstate features (ARCH_REQ_XCOMP_PERM, e.g. AMX)",
        Default(Ours),
    ),
    row(
        ArchPrctl {
            code: ARCH_GET_UNTAG_MASK,
            out: true,
        },
        "address tag mask (LAM)",
        Default(Ours),
    ),
    // ---- membarrier, memory policy, LDT, TLS entries ----
    row(
        Membarrier,
        "membarrier registrations (MEMBARRIER_CMD_REGISTER_*)",
        Saved("prctl"),
    ),
    row(
        Mempolicy,
        "NUMA memory policy (set_mempolicy)",
        Default(Zero),
    ),
    row(Ldt, "local descriptor table (modify_ldt)", Default(Zero)),
    row(
        ThreadArea,
        "GDT TLS entries (set_thread_area)",
        Default(Zero),
    ),
    // ---- /proc/PID files ----
    row(
        File("oom_score_adj"),
        "OOM score adjustment",
        Saved("sched"),
    ),
    row(File("coredump_filter"), "core dump filter", Saved("prctl")),
    row(File("loginuid"), "audit login uid", Saved("loginuid")),
    row(File("sessionid"), "audit session id", Saved("loginuid")),
    row(
        File("personality"),
        "personality",
        Saved("image: personality"),
    ),
    row(Root, "root directory (chroot)", Default(Ours)),
    row(
        File("cgroup"),
        "cgroups (restored where they exist and are writable, else a warning)",
        Saved("cgroup"),
    ),
    // ---- namespaces ----
    row(Ns("mnt"), "mount namespace", Default(Ours)),
    row(Ns("net"), "network namespace", Default(Ours)),
    row(Ns("uts"), "UTS namespace", Default(Ours)),
    row(Ns("ipc"), "IPC namespace", Default(Ours)),
    row(Ns("user"), "user namespace", Default(Ours)),
    row(Ns("cgroup"), "cgroup namespace", Default(Ours)),
    row(Ns("time"), "time namespace", Default(Ours)),
    row(
        Ns("pid_for_children"),
        "PID namespace of its children (unshare)",
        Default(Ours),
    ),
    row(
        Ns("time_for_children"),
        "time namespace of its children (unshare)",
        Default(Ours),
    ),
    // ---- shared between processes of the tree (kcmp of every pair) ----
    // (KCMP_IO and KCMP_SYSVSEM are not compared: two processes that never made one
    // compare equal. A semaphore undo list is checked by the group sysvipc.)
    row(
        Shared(KCMP_VM),
        "one address space with another process (CLONE_VM, e.g. a vfork child before its exec)",
        Default(Zero),
    ),
    row(
        Shared(KCMP_FILES),
        "one descriptor table with another process (CLONE_FILES)",
        Saved("shares"),
    ),
    row(
        Shared(KCMP_FS),
        "one cwd, root and umask with another process (CLONE_FS)",
        Saved("shares"),
    ),
    row(
        Shared(KCMP_SIGHAND),
        "one signal handler table with another process (CLONE_SIGHAND)",
        Default(Zero),
    ),
    // ---- SysV IPC (tracer/src/attr/sysvipc.rs) ----
    row(
        SysvIpc("msg lspid/lrpid"),
        "a SysV message queue the process last sent to or received from: key, id, mode, owner, size limit and every message with its type (msgrcv MSG_COPY)",
        Saved("sysvipc"),
    ),
    row(
        SysvIpc("sem GETPID"),
        "a SysV semaphore set one of whose semaphores the process changed last (semctl GETPID): key, id, mode, owner and every value",
        Saved("sysvipc"),
    ),
    row(
        SysvIpc("sem undo list"),
        "SEM_UNDO adjustments of a process that used a set (kcmp KCMP_SYSVSEM: it has an undo list, also every multi-threaded process): they cannot be read",
        Default(Zero),
    ),
    row(
        SysvIpc("shm cpid/lpid"),
        "a SysV shared memory segment the process created, last attached or detached, or has attached: key, id, mode, owner, size, SHM_LOCKED and its bytes",
        Saved("sysvipc"),
    ),
    row(
        SysvIpc("shm attachment"),
        "an attachment of a SysV segment (/SYSV mapping), whole, from its first byte: attached again at its address by the loader",
        Saved("sysvipc"),
    ),
    row(
        SysvIpc("shm SHM_DEST"),
        "a segment removed (IPC_RMID) while still attached: made again, attached, and removed again",
        Saved("sysvipc"),
    ),
    row(
        SysvIpc("shm partial attachment"),
        "part of an attachment unmapped or given another protection (maps entries that do not cover the whole segment from offset 0)",
        Default(Zero),
    ),
    // ---- VmFlags of every region ----
    row(VmFlag("rd"), "readable", Saved("image: memory")),
    row(VmFlag("wr"), "writable", Saved("image: memory")),
    row(VmFlag("ex"), "executable", Saved("image: memory")),
    row(VmFlag("sh"), "shared", Saved("image: memory")),
    row(VmFlag("mr"), "may read", Info),
    row(VmFlag("mw"), "may write", Info),
    row(VmFlag("me"), "may execute", Info),
    row(VmFlag("ms"), "may share", Saved("image: memory")),
    row(VmFlag("gd"), "grows down", Saved("image: memory")),
    row(VmFlag("pf"), "PFN map", Info), // refused by maps::classify
    row(VmFlag("io"), "I/O map", Info), // refused by maps::classify
    row(VmFlag("ht"), "hugetlb", Info), // refused by maps::classify
    row(VmFlag("lo"), "locked (mlock)", Saved("memory")),
    row(
        VmFlag("lf"),
        "locked on fault (mlock2 MLOCK_ONFAULT)",
        Saved("memory"),
    ),
    row(
        VmFlag("sr"),
        "sequential read advice (MADV_SEQUENTIAL)",
        Saved("memory"),
    ),
    row(
        VmFlag("rr"),
        "random read advice (MADV_RANDOM)",
        Saved("memory"),
    ),
    row(
        VmFlag("dc"),
        "not copied on fork (MADV_DONTFORK)",
        Saved("memory"),
    ),
    row(VmFlag("de"), "not expandable", Info), // the kernel's own mappings (vdso, vvar)
    row(VmFlag("ac"), "accounted", Info),
    row(VmFlag("nr"), "no swap reservation (MAP_NORESERVE)", Info),
    row(VmFlag("sf"), "synchronous fault (MAP_SYNC)", Default(Zero)),
    row(VmFlag("ar"), "architecture flag", Info),
    row(
        VmFlag("wf"),
        "wiped on fork (MADV_WIPEONFORK)",
        Saved("memory"),
    ),
    row(
        VmFlag("dd"),
        "not in core dumps (MADV_DONTDUMP)",
        Saved("memory"),
    ),
    row(VmFlag("sd"), "soft-dirty", Info),
    row(VmFlag("mm"), "mixed map", Info), // the kernel's own mappings
    row(
        VmFlag("hg"),
        "huge page advice (MADV_HUGEPAGE)",
        Saved("memory"),
    ),
    row(
        VmFlag("nh"),
        "no huge page advice (MADV_NOHUGEPAGE, and every MAP_STACK mapping)",
        Saved("memory"),
    ),
    row(
        VmFlag("mg"),
        "KSM mergeable (MADV_MERGEABLE)",
        Saved("memory"),
    ),
    row(VmFlag("um"), "userfaultfd missing", Default(Zero)),
    row(VmFlag("uw"), "userfaultfd write-protect", Default(Zero)),
    row(VmFlag("ui"), "userfaultfd minor", Default(Zero)),
    row(VmFlag("ss"), "shadow stack", Default(Zero)),
    row(VmFlag("sl"), "sealed (mseal)", Default(Zero)),
    row(
        VmFlag("gu"),
        "guard regions (MADV_GUARD_INSTALL)",
        Default(Zero),
    ),
    row(VmFlag("dp"), "droppable (MAP_DROPPABLE)", Default(Zero)),
    row(VmFlag("bt"), "branch target identification", Default(Zero)),
    row(VmFlag("mt"), "memory tagging", Default(Zero)),
    row(VmFlag("nl"), "non-linear", Default(Zero)),
    row(VmFlag("dw"), "deny write", Info),
    // ---- every descriptor: its locks (fdinfo `lock:` lines) and fcntl getters ----
    row(
        FdLock("POSIX"),
        "POSIX record lock (fcntl F_SETLK)",
        Saved("locks"),
    ),
    row(
        FdLock("OFDLCK"),
        "open file description lock (fcntl F_OFD_SETLK)",
        Saved("locks"),
    ),
    row(FdLock("FLOCK"), "flock lock", Saved("locks")),
    row(FdLock("LEASE"), "lease (fcntl F_SETLEASE)", Saved("locks")),
    row(FdLock("ADVISORY"), "advisory lock", Saved("locks")),
    row(FdLock("ACTIVE"), "lease in force", Saved("locks")),
    row(
        FdLock("MANDATORY"),
        "mandatory lock (a file system mounted with -o mand, before Linux 5.15)",
        Default(Zero),
    ),
    row(
        FdLock("BREAKING"),
        "lease being broken (another process waits to open the file; ckpt does not wait while the holder is frozen)",
        Default(Zero),
    ),
    row(FdLock("DELEG"), "NFS delegation", Default(Zero)),
    row(
        Fcntl(F_GETOWN_EX),
        "owner of its SIGIO and SIGURG (F_SETOWN_EX)",
        Saved("locks"),
    ),
    row(
        Fcntl(F_GETSIG),
        "signal of its signal-driven I/O (F_SETSIG)",
        Saved("locks"),
    ),
    row(
        Fcntl(libc::F_GETPIPE_SZ),
        "pipe capacity (F_SETPIPE_SZ)",
        Saved("locks"),
    ),
    // ---- terminals: pty pairs made inside the job, and the one outside it ----
    row(
        Terminal("TCGETS2 of the slave"),
        "pty slave's termios: every flag, control character and both speeds",
        Saved("fd: pty"),
    ),
    row(
        Terminal("TCGETS2 of the master"),
        "pty master's termios",
        Saved("fd: pty"),
    ),
    row(Terminal("TIOCGWINSZ"), "pty window size", Saved("fd: pty")),
    row(Terminal("TIOCGPKT"), "pty packet mode", Saved("fd: pty")),
    row(
        Terminal("TIOCGPTLCK"),
        "pty lock (before unlockpt, or locked again)",
        Saved("fd: pty"),
    ),
    row(
        Terminal("TIOCGEXCL"),
        "pty slave's exclusive mode (TIOCEXCL)",
        Saved("fd: pty"),
    ),
    row(
        Terminal("TIOCGETD"),
        "line discipline of either end",
        Default(Value("N_TTY (0)")),
    ),
    row(
        Terminal("read of the slave's input queue"),
        "bytes written to the master, not yet read from the slave (a partial canonical line too)",
        Saved("fd: pty"),
    ),
    row(
        Terminal("read of the master's queue"),
        "bytes written to the slave, not yet read from the master",
        Saved("fd: pty"),
    ),
    row(
        Terminal("NUL in canonical input"),
        "an end-of-file (^D) or NUL byte queued unread in canonical input (it cannot be put back as it was)",
        Default(Zero),
    ),
    row(
        Terminal("packet status"),
        "a packet-mode status byte pending on the master (TIOCPKT_FLUSHREAD, ...)",
        Default(Zero),
    ),
    row(
        Terminal("EXTPROC in packet mode"),
        "EXTPROC on a pty in packet mode (every termios change would be reported to the master's reader)",
        Default(Zero),
    ),
    row(
        Terminal("queue of a never opened slave"),
        "data queued on a pair whose slave was never opened",
        Default(Zero),
    ),
    row(
        Terminal("POLLHUP of the master"),
        "the master sees its slave closed (a slave never opened is not opened at restore either)",
        Saved("fd: pty"),
    ),
    row(
        Terminal("TIOCGSID"),
        "session whose controlling terminal the pty is (its leader must be in the checkpoint)",
        Saved("fd: pty"),
    ),
    row(
        Terminal("TIOCGPGRP"),
        "foreground process group of that session (it must have a process in the checkpoint)",
        Saved("fd: pty"),
    ),
    row(
        Terminal("stat tty_nr"),
        "controlling terminal of every process: a pty of the checkpoint must be that of its session, as the kernel makes it",
        Saved("fd: pty"),
    ),
    row(
        Terminal("/dev/tty"),
        "/dev/tty on a pty of the checkpoint (reopened as the new slave: its /proc link names /dev/pts/M)",
        Saved("fd: pty"),
    ),
    row(
        Terminal("TIOCGPTN"),
        "pty index: the new pair gets the kernel's next one; a program that kept its slave's old name (ptsname) finds another terminal or none",
        Info,
    ),
    row(
        Terminal("TCGETS2 of fd 0-2 outside the checkpoint"),
        "termios of the job's terminal: given to the restorer's own terminal while the job runs, which gets its own back when the job exits",
        Saved("fd: tty"),
    ),
    // ---- every descriptor: its status flags (fdinfo `flags:`), per open file description ----
    row(
        FdFlag(libc::O_ACCMODE),
        "access mode (O_RDONLY, O_WRONLY, O_RDWR)",
        Saved("fd: every kind"),
    ),
    row(FdFlag(libc::O_APPEND), "O_APPEND", Saved("fd: every kind")),
    row(
        FdFlag(libc::O_EXCL),
        "O_EXCL: PIDFD_THREAD on a pidfd (open(2) clears it from any other file)",
        Saved("fd: pidfd"),
    ),
    row(FdFlag(libc::O_NONBLOCK), "O_NONBLOCK", Saved("fd: every kind")),
    row(FdFlag(libc::O_DSYNC), "O_DSYNC", Saved("fd: every kind")),
    row(FdFlag(libc::O_ASYNC), "O_ASYNC", Saved("locks")),
    row(FdFlag(libc::O_DIRECT), "O_DIRECT", Saved("fd: every kind")),
    row(FdFlag(O_LARGEFILE_BIT), "O_LARGEFILE (always set on x86-64)", Info),
    row(FdFlag(libc::O_DIRECTORY), "O_DIRECTORY", Saved("fd: every kind")),
    row(FdFlag(libc::O_NOFOLLOW), "O_NOFOLLOW", Saved("fd: every kind")),
    row(FdFlag(libc::O_NOATIME), "O_NOATIME", Saved("fd: every kind")),
    row(
        FdFlag(libc::O_CLOEXEC),
        "close-on-exec (FD_CLOEXEC), per descriptor",
        Saved("image: fds"),
    ),
    row(FdFlag(O_SYNC_BIT), "O_SYNC", Saved("fd: every kind")),
    row(
        FdFlag(libc::O_PATH),
        "O_PATH (reopened O_PATH on the same inode)",
        Saved("fd: file"),
    ),
    row(
        FdFlag(O_TMPFILE_BIT),
        "O_TMPFILE (the file is unlinked: restored as a deleted file)",
        Saved("fd: memfd"),
    ),
    // ---- the file behind a descriptor ----
    row(
        FdFile("content of a memfd or deleted file"),
        "content (at most `ckpt dump --max-file-size`, 256 MiB by default; more is refused)",
        Saved("fd: memfd"),
    ),
    row(
        FdFile("holes of a deleted file"),
        "data extents and holes (SEEK_DATA/SEEK_HOLE) of a deleted file",
        Saved("fd: memfd"),
    ),
    row(
        FdFile("deleted file only mapped"),
        "owner, times and holes of a deleted file that only a mapping holds (no descriptor): it comes back dense, with the restorer's owner and new times",
        Info,
    ),
    row(
        FdFile("holes of a memfd"),
        "holes of a memfd (it comes back with every page up to its size allocated; reads the same)",
        Info,
    ),
    row(
        FdFile("owner and mode of a deleted file"),
        "owner (uid, gid) and mode of a deleted file",
        Saved("fd: memfd"),
    ),
    row(
        FdFile("times of a deleted file"),
        "atime and mtime of a deleted file (set back once its content is written, and again once the loader mapped it)",
        Saved("fd: memfd"),
    ),
    row(
        FdFile("times of a file open by path"),
        "atime and mtime of a file open or mapped by path (ckpt reads and maps files with O_NOATIME where it may, the owner or CAP_FOWNER, and writes none)",
        Info,
    ),
    row(
        FdFile("identity of an unlinked file"),
        "inode number, device and ctime of a deleted file, FIFO or directory (a new file gets new ones)",
        Info,
    ),
    row(
        FdFile("deleted FIFO"),
        "a FIFO removed since it was opened: mode, owner, data in flight (a new FIFO, removed again)",
        Saved("fd: fifo"),
    ),
    row(
        FdFile("deleted directory"),
        "a directory removed since it was opened: mode, owner (a new empty directory, removed again)",
        Saved("fd: ghost"),
    ),
    row(
        FdFile("device number"),
        "device number of a character device (/dev/null, /dev/zero, /dev/full, /dev/random, /dev/urandom at any path; checked on restore)",
        Saved("fd: file"),
    ),
    row(
        Cwd,
        "working directory removed while the process was in it: mode, owner (a new empty directory, removed again)",
        Saved("cwd"),
    ),
    // ---- every AF_UNIX socket (tracer/src/fd/unix/dump.rs) ----
    row(
        UnixSock("sock_diag name"),
        "its name (a path, or an abstract name), also when the socket file was unlinked, its directory deleted or moved, or its path taken by another file since (bound again in a place made bindable for a moment)",
        Saved("image: fd unix"),
    ),
    row(
        UnixSock("sock_diag state, peer"),
        "its connection (inside the tree; to outside: restored with its peer closed, with a warning)",
        Saved("image: fd unix"),
    ),
    row(
        UnixSock("peeked receive queue"),
        "queued bytes, records and datagrams, with the sender of each datagram",
        Saved("image: fd unix"),
    ),
    row(
        UnixSock("peeked SCM_RIGHTS"),
        "descriptors in flight (SCM_RIGHTS) that some process of the tree has open",
        Saved("image: attribute UnixInFlight"),
    ),
    row(
        UnixSock("peeked SCM_RIGHTS open nowhere else"),
        "descriptor in flight that no process of the tree has open (its sender closed it)",
        Default(Zero),
    ),
    row(
        UnixSock("peeked SCM_CREDENTIALS"),
        "queued credentials (SCM_CREDENTIALS: every message of a socket with SO_PASSCRED)",
        Default(Zero),
    ),
    row(
        UnixSock("peeked SCM_PIDFD, SCM_SECURITY"),
        "other queued ancillary data (SCM_PIDFD, SCM_SECURITY)",
        Default(Zero),
    ),
    row(
        UnixSock("sock_diag pending connections"),
        "connections waiting to be accepted, their clients in the tree (connected again, not accepted)",
        Saved("image: fd unix"),
    ),
    row(
        UnixSock("wqueue of a waiting client"),
        "data a client sent on a connection not yet accepted (only accepting it could read it)",
        Default(Zero),
    ),
    row(
        UnixSock("pending connections from outside"),
        "connections waiting to be accepted whose client is outside the tree",
        Default(Zero),
    ),
    row(
        UnixSock("getsockopt"),
        "SO_PASSCRED, SO_PASSSEC, SO_PASSPIDFD, buffer sizes, SO_RCVLOWAT, timeouts, SO_PEEK_OFF",
        Saved("image: fd unix"),
    ),
    // ---- every AF_INET / AF_INET6 socket (tracer/src/fd/inet.rs) ----
    row(
        InetSock("family, type, protocol"),
        "TCP or UDP over IPv4 or IPv6 (any other protocol or type, e.g. raw, SCTP, MPTCP, UDP-Lite, is refused)",
        Saved("image: fd inet"),
    ),
    row(
        InetSock("getsockname, getpeername"),
        "bound address and port, peer address and port",
        Saved("image: fd inet"),
    ),
    row(
        InetSock("TCP_INFO state"),
        "TCP state: LISTEN, CLOSE, ESTABLISHED, FIN_WAIT1/2, CLOSE_WAIT (others, a closed connection, refused)",
        Saved("image: fd inet"),
    ),
    row(
        InetSock("SO_ERROR"),
        "a pending socket error",
        Default(Zero),
    ),
    row(
        InetSock("inet_diag backlog, shutdown"),
        "listen() backlog; shutdown state (SHUT_WR, SHUT_RD)",
        Saved("image: fd inet"),
    ),
    row(
        InetSock("peeked receive queue"),
        "unread bytes (TCP), queued datagrams with their source addresses (UDP)",
        Saved("image: fd inet"),
    ),
    row(
        InetSock("bytes_acked + SIOCOUTQ against the peer's bytes_received"),
        "bytes in a send queue not yet in the peer's receive queue: as root read with TCP_REPAIR (send queue peeked, write_seq against the peer's rcv_nxt) and restored after the peer's own; without CAP_NET_ADMIN got through the receiver (its queue read until the sender's is empty, every byte sent again from the sender's end before the tree runs on); refused when the sender shut down writing after them",
        Saved("image: fd inet"),
    ),
    row(
        InetSock("peer address in the tree"),
        "established connection whose peer is in the tree (rebuilt with the same addresses and ports)",
        Saved("image: fd inet"),
    ),
    row(
        InetSock("peer address outside the tree"),
        "connection to a peer outside the tree: with --tcp-established (root) read in TCP_REPAIR mode (sequence numbers, both queues, MSS, window scales, SACK, timestamps, window) under an nftables lock and rebuilt with them; with --tcp-close restored as reset by its peer; refused without either",
        Saved("image: fd tcp_repair"),
    ),
    row(
        InetSock("net/tcp rows without inode"),
        "connections waiting to be accepted whose client is in the tree (connected again)",
        Saved("image: fd inet"),
    ),
    row(
        InetSock("net/tcp rx_queue of a waiting connection"),
        "data a client sent on a connection not yet accepted, or a waiting connection whose client is outside the tree",
        Default(Zero),
    ),
    row(
        InetSock("getsockopt against a new socket's"),
        "SO_REUSEADDR, SO_REUSEPORT, SO_BINDTODEVICE, SO_KEEPALIVE, SO_BROADCAST, SO_DONTROUTE, SO_OOBINLINE, SO_PRIORITY, SO_RCVLOWAT, buffer sizes (not of a connected TCP socket), SO_LINGER, timeouts, SO_TIMESTAMP(NS), SO_MARK, SO_RXQ_OVFL, SO_BUSY_POLL, SO_INCOMING_CPU, SO_ZEROCOPY, SO_PEEK_OFF, IP_TOS, IP_TTL, IP_RECVERR, IP_PKTINFO, IP_RECVTTL, IP_RECVTOS, IP_MTU_DISCOVER, IP_FREEBIND, IP_TRANSPARENT, IP_BIND_ADDRESS_NO_PORT, IP_LOCAL_PORT_RANGE, IP_MULTICAST_TTL/LOOP/ALL, IPV6_V6ONLY, IPV6_FREEBIND, IPV6_TRANSPARENT, IPV6_UNICAST_HOPS, IPV6_MULTICAST_HOPS/LOOP, IPV6_RECVPKTINFO, IPV6_TCLASS, IPV6_RECVTCLASS, IPV6_RECVERR, IPV6_MTU_DISCOVER, IPV6_RECVHOPLIMIT, TCP_NODELAY, TCP_MAXSEG and TCP_WINDOW_CLAMP (not connected), TCP_CORK, TCP_KEEPIDLE/INTVL/CNT, TCP_SYNCNT, TCP_LINGER2, TCP_DEFER_ACCEPT, TCP_CONGESTION, TCP_USER_TIMEOUT, TCP_THIN_LINEAR_TIMEOUTS, TCP_NOTSENT_LOWAT, TCP_FASTOPEN, TCP_TX_DELAY, UDP_CORK, UDP_SEGMENT, UDP_GRO",
        Saved("image: fd inet"),
    ),
    row(
        InetSock("getsockopt against a new socket's (not restorable)"),
        "SO_TIMESTAMPING, IP_OPTIONS, a socket filter (SO_ATTACH_FILTER), an upper layer protocol (TCP_ULP, e.g. kTLS)",
        Default(Zero),
    ),
];

/// __O_SYNC (O_SYNC without O_DSYNC) and __O_TMPFILE (O_TMPFILE without O_DIRECTORY),
/// which the libc crate does not name alone.
const O_SYNC_BIT: i32 = libc::O_SYNC & !libc::O_DSYNC;
/// The kernel's O_LARGEFILE (the libc crate's is 0 on x86-64, where it is implied).
const O_LARGEFILE_BIT: i32 = 0o100000;
const O_TMPFILE_BIT: i32 = libc::O_TMPFILE & !libc::O_DIRECTORY;

/// Refuse descriptor `fd` whose fdinfo `flags:` word (`flags`) has a bit [`TABLE`] does
/// not know.
pub fn check_fd_flags(pid: i32, fd: i32, flags: i32) -> Result<()> {
    let known = TABLE.iter().fold(0, |k, r| match r.source {
        FdFlag(bit) => k | bit,
        _ => k,
    });
    let unknown = flags & !known;
    if unknown != 0 {
        return Err(TraceError::UnsupportedFd {
            pid,
            fd,
            kind: format!(
                "status flag {unknown:#o} in fdinfo `flags:` {flags:#o} (a kernel feature this ckpt does not know)"
            ),
        });
    }
    Ok(())
}

fn refuse(pid: i32, what: String) -> TraceError {
    TraceError::Unsupported { pid, what }
}

fn is_zero(v: &str) -> bool {
    let v = v.trim();
    let num = v.strip_suffix("kB").unwrap_or(v).trim();
    num.is_empty()
        || num == "none"
        || num
            .trim_start_matches("0x")
            .chars()
            .all(|c| c == '0' || c == ',')
}

fn default_holds(d: Def, value: &str, ours: impl FnOnce() -> Option<String>) -> bool {
    match d {
        Zero => is_zero(value),
        Value(v) => value.trim() == v,
        Ours => ours().is_some_and(|o| o.trim() == value.trim()),
    }
}

/// Refuse the process if any attribute of it or its threads is neither saved nor at its
/// default. `threads` are frozen; the leader first.
pub fn check(
    pid: i32,
    inj: &Injector,
    threads: &mut [FrozenThread],
    maps: &[MapEntry],
) -> Result<()> {
    let io_err = |what: String| move |e: io::Error| TraceError::io(pid, what, e);
    let own_status = std::fs::read_to_string("/proc/thread-self/status")
        .map_err(io_err("reading ckpt's own status".into()))?;
    let own = proc::status_fields(&own_status);
    for t in threads.iter_mut() {
        let tid = t.tid;
        let who = if tid == pid {
            String::new()
        } else {
            format!("thread {tid}: ")
        };
        let p = format!("/proc/{pid}/task/{tid}/status");
        let text = std::fs::read_to_string(&p).map_err(io_err(format!("reading {p}")))?;
        for (key, value) in proc::status_fields(&text) {
            let Some(r) = TABLE
                .iter()
                .find(|r| matches!(r.source, Status(k) if k == key))
            else {
                return Err(refuse(
                    pid,
                    format!("{who}the attribute `{key}` of {p} (a kernel feature this ckpt does not know)"),
                ));
            };
            if let Default(d) = r.verdict {
                let ours = || {
                    own.iter()
                        .find(|(k, _)| *k == key)
                        .map(|(_, v)| v.to_string())
                };
                if !default_holds(d, value, ours) {
                    return Err(refuse(
                        pid,
                        format!("{who}{} set to `{key}: {value}`", r.what),
                    ));
                }
            }
        }
        for r in TABLE {
            let Default(d) = r.verdict else { continue };
            // What the whole process shares is read once, in its leader.
            if tid != pid && process_wide(r.source) {
                continue;
            }
            let got: Option<String> = match r.source {
                Prctl(op, arg) => {
                    let v = inj.syscall(t, libc::SYS_prctl, [op, arg, 0, 0, 0, 0]);
                    let v = v.map_err(io_err(format!("thread {tid}: prctl({op})")))?;
                    // EINVAL: a kernel without this option, where it cannot be set either.
                    (v != -(libc::EINVAL as i64)).then(|| v.to_string())
                }
                PrctlOut(op) => {
                    let mut buf = [0u8; 4];
                    let v = inj.syscall_with_buf(
                        t,
                        libc::SYS_prctl,
                        |a| [op, a, 0, 0, 0, 0],
                        &[],
                        &mut buf,
                    );
                    let v = v.map_err(io_err(format!("thread {tid}: prctl({op})")))?;
                    match v {
                        0 => Some(i32::from_le_bytes(buf).to_string()),
                        v if v == -(libc::EINVAL as i64) => None,
                        v => Some(v.to_string()),
                    }
                }
                ArchPrctl { code, out } => {
                    let mut buf = [0u8; 8];
                    let v = if out {
                        inj.syscall_with_buf(
                            t,
                            libc::SYS_arch_prctl,
                            |a| [code, a, 0, 0, 0, 0],
                            &[],
                            &mut buf,
                        )
                    } else {
                        inj.syscall(t, libc::SYS_arch_prctl, [code, 0, 0, 0, 0, 0])
                    };
                    let v = v.map_err(io_err(format!("thread {tid}: arch_prctl({code:#x})")))?;
                    match (v, out) {
                        (v, _) if v == -(libc::EINVAL as i64) => None,
                        (v, true) if v >= 0 => Some(u64::from_le_bytes(buf).to_string()),
                        (v, _) => Some(v.to_string()),
                    }
                }
                Mempolicy => {
                    let mut mode = [0u8; 4];
                    let v = inj.syscall_with_buf(
                        t,
                        libc::SYS_get_mempolicy,
                        |a| [a, 0, 0, 0, 0, 0],
                        &[],
                        &mut mode,
                    );
                    let v = v.map_err(io_err(format!("thread {tid}: get_mempolicy")))?;
                    // ENOSYS: a kernel without NUMA, where every policy is the default.
                    (v == 0).then(|| i32::from_le_bytes(mode).to_string())
                }
                Membarrier if tid == pid => {
                    const GET_REGISTRATIONS: u64 = 1 << 9;
                    let v =
                        inj.syscall(t, libc::SYS_membarrier, [GET_REGISTRATIONS, 0, 0, 0, 0, 0]);
                    let v = v.map_err(io_err(
                        "membarrier(MEMBARRIER_CMD_GET_REGISTRATIONS)".into(),
                    ))?;
                    // EINVAL: before Linux 6.3, which cannot tell.
                    (v != -(libc::EINVAL as i64)).then(|| v.to_string())
                }
                Ldt => {
                    let mut b = [0u8; 16];
                    let v = inj.syscall_with_buf(
                        t,
                        libc::SYS_modify_ldt,
                        |a| [0, a, 16, 0, 0, 0],
                        &[],
                        &mut b,
                    );
                    let v = v.map_err(io_err("modify_ldt".into()))?;
                    Some(if v > 0 { "in use".into() } else { "0".into() })
                }
                ThreadArea => Some(
                    if crate::ptrace::thread_area_in_use(tid)
                        .map_err(io_err(format!("thread {tid}: reading its TLS entries")))?
                    {
                        "in use".into()
                    } else {
                        "0".into()
                    },
                ),
                _ => continue,
            };
            let Some(got) = got else { continue };
            let ours = || own_value(r.source);
            if !default_holds(d, &got, ours) {
                let how = if got == "in use" {
                    "in use".to_string()
                } else {
                    format!("set to {got}")
                };
                return Err(refuse(pid, format!("{who}{} {how}", r.what)));
            }
        }
    }
    // The process as a whole.
    for r in TABLE {
        let Default(d) = r.verdict else { continue };
        match r.source {
            File(name) => {
                let p = proc::path(pid, name);
                let Ok(v) = std::fs::read_to_string(&p) else {
                    continue; // a kernel without it (audit, CONFIG_...)
                };
                let ours = || std::fs::read_to_string(format!("/proc/self/{name}")).ok();
                if !default_holds(d, &v, ours) {
                    return Err(refuse(pid, format!("{} ({p}: {})", r.what, v.trim())));
                }
            }
            Ns(name) => {
                let theirs = ns_id(&proc::path(pid, &format!("ns/{name}")));
                let mine = ns_id(&format!("/proc/self/ns/{name}"));
                if theirs.is_some() && theirs != mine {
                    return Err(refuse(
                        pid,
                        format!("a process in another {} than ckpt's", r.what),
                    ));
                }
            }
            Root => {
                use std::os::unix::fs::MetadataExt;
                let id = |p: &str| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
                let theirs = id(&proc::path(pid, "root"));
                if theirs.is_some() && theirs != id("/proc/self/root") {
                    let link = proc::link(pid, "root").unwrap_or_default();
                    return Err(refuse(
                        pid,
                        format!("a {} other than ckpt's ({link})", r.what),
                    ));
                }
            }
            _ => {}
        }
    }
    // KSM merging of the whole process (saved by the group "prctl") marks every region
    // it can merge `mg`, and marks them again after a restore.
    let merge_any = inj
        .syscall(
            &mut threads[0],
            libc::SYS_prctl,
            [PR_GET_MEMORY_MERGE, 0, 0, 0, 0, 0],
        )
        .map_err(io_err(format!("prctl({PR_GET_MEMORY_MERGE})")))?
        == 1;
    // The kernel's own mappings carry flags it set itself (vvar and vdso are not dumped);
    // a restore maps them the kernel's way.
    for m in maps.iter().filter(|m| !m.kernel_made()) {
        for f in &m.flag_names {
            let Some(r) = TABLE
                .iter()
                .find(|r| matches!(r.source, VmFlag(k) if k == f))
            else {
                return Err(refuse(
                    pid,
                    format!("the region {:#x}-{:#x} flag `{f}` (a kernel feature this ckpt does not know)", m.start, m.end),
                ));
            };
            if f == "mg" && merge_any {
                continue;
            }
            // ckpt's own written-page tracking (crate::dirty), not the process's.
            if f == "uw" && crate::dirty::tracks(pid, m.start, m.end) {
                continue;
            }
            if let Default(_) = r.verdict {
                return Err(refuse(
                    pid,
                    format!(
                        "the region {:#x}-{:#x} ({}) {}",
                        m.start,
                        m.end,
                        region_name(m),
                        r.what
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Refuse a lock of descriptor `fd` (a line of its fdinfo) whose class or mode [`TABLE`]
/// does not save (a mandatory lock, a lease being broken) or does not know (a newer
/// kernel's): the locks group calls this for every lock line it reads.
pub fn check_lock(pid: i32, fd: i32, l: &proc::LockLine) -> Result<()> {
    for word in [&l.class, &l.mode] {
        match TABLE
            .iter()
            .find(|r| matches!(r.source, FdLock(w) if w == word))
        {
            None => {
                return Err(refuse(
                    pid,
                    format!("fd {fd}: a lock `{word}` (a kernel feature this ckpt does not know)"),
                ))
            }
            Some(r) if matches!(r.verdict, Default(_)) => {
                return Err(refuse(pid, format!("fd {fd}: a {}", r.what)))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// The processes of a tree that share one kernel object of a kcmp type whose row says
/// it is saved (the group `shares` decides which shapes it can restore).
pub struct SharedPairs {
    pub kind: i32,
    /// The row's attribute, for a refusal.
    pub what: &'static str,
    pub pairs: Vec<(i32, i32)>,
}

/// Refuse a tree in which two processes share what a restore would give each its own
/// copy of. `pids`: every process of the tree (thread-group leaders), all frozen.
/// Returns, for the kinds the group `shares` saves, the pairs that share one.
pub fn check_tree(pids: &[i32]) -> Result<Vec<SharedPairs>> {
    let mut saved = Vec::new();
    for r in TABLE {
        let Shared(kind) = r.source else { continue };
        let mut pairs = Vec::new();
        for (i, &a) in pids.iter().enumerate() {
            for &b in &pids[i + 1..] {
                // SAFETY: kcmp(2) compares two kernel objects; it takes only integers.
                if unsafe { libc::syscall(libc::SYS_kcmp, a, b, kind, 0, 0) } == 0 {
                    pairs.push((a, b));
                }
            }
        }
        let Some(&(a, b)) = pairs.first() else {
            continue;
        };
        if !matches!(r.verdict, Saved(_)) {
            return Err(refuse(a, format!("{} ({b})", r.what)));
        }
        saved.push(SharedPairs {
            kind,
            what: r.what,
            pairs,
        });
    }
    Ok(saved)
}

fn region_name(m: &MapEntry) -> &str {
    if m.name.is_empty() {
        "anonymous"
    } else {
        &m.name
    }
}

/// Whether a per-thread source reads what all threads share (the mm): read in the
/// leader only, which keeps the pause of a many-threaded process short.
fn process_wide(s: Source) -> bool {
    matches!(
        s,
        Ldt | ArchPrctl {
            code: ARCH_GET_XCOMP_PERM | ARCH_GET_UNTAG_MASK,
            ..
        }
    )
}

/// The same getter run in ckpt itself.
fn own_value(s: Source) -> Option<String> {
    match s {
        Prctl(op, arg) => {
            // SAFETY: the getters in the table take integers and return an integer.
            let v = unsafe { libc::prctl(op as i32, arg, 0u64, 0u64, 0u64) };
            Some(if v < 0 {
                (-io::Error::last_os_error().raw_os_error()? as i64).to_string()
            } else {
                v.to_string()
            })
        }
        PrctlOut(op) => {
            let mut v: libc::c_int = 0;
            // SAFETY: the getter writes one int through the pointer to the local `v`.
            let r = unsafe { libc::prctl(op as i32, &mut v as *mut libc::c_int, 0u64, 0u64, 0u64) };
            Some(if r < 0 { r.to_string() } else { v.to_string() })
        }
        ArchPrctl { code, out } => {
            let mut v: u64 = 0;
            // SAFETY: arch_prctl writes one u64 through the pointer to the local `v`
            // (the getters with `out`), or takes it as an unused integer.
            let r = unsafe { libc::syscall(libc::SYS_arch_prctl, code, &mut v as *mut u64) };
            Some(if out && r >= 0 {
                v.to_string()
            } else {
                r.to_string()
            })
        }
        _ => None,
    }
}

/// Where a row is read, for people.
fn source_name(s: Source) -> String {
    let prctl = |op: u64| match op {
        PR_GET_PDEATHSIG => "PR_GET_PDEATHSIG",
        PR_GET_DUMPABLE => "PR_GET_DUMPABLE",
        PR_GET_KEEPCAPS => "PR_GET_KEEPCAPS",
        PR_GET_TSC => "PR_GET_TSC",
        PR_GET_SECUREBITS => "PR_GET_SECUREBITS",
        PR_GET_TIMERSLACK => "PR_GET_TIMERSLACK",
        PR_MCE_KILL_GET => "PR_MCE_KILL_GET",
        PR_GET_CHILD_SUBREAPER => "PR_GET_CHILD_SUBREAPER",
        PR_GET_NO_NEW_PRIVS => "PR_GET_NO_NEW_PRIVS",
        PR_GET_THP_DISABLE => "PR_GET_THP_DISABLE",
        PR_GET_SPECULATION_CTRL => "PR_GET_SPECULATION_CTRL",
        PR_GET_IO_FLUSHER => "PR_GET_IO_FLUSHER",
        PR_GET_MDWE => "PR_GET_MDWE",
        PR_GET_MEMORY_MERGE => "PR_GET_MEMORY_MERGE",
        _ => "prctl",
    };
    match s {
        Status(k) => format!("task status `{k}`"),
        Prctl(op, 0) => format!("prctl `{}`", prctl(op)),
        Prctl(op, arg) => format!("prctl `{}({arg})`", prctl(op)),
        PrctlOut(op) => format!("prctl `{}`", prctl(op)),
        ArchPrctl { code, .. } => format!(
            "arch_prctl `{}`",
            match code {
                ARCH_GET_CPUID => "ARCH_GET_CPUID",
                ARCH_GET_XCOMP_PERM => "ARCH_GET_XCOMP_PERM",
                ARCH_GET_UNTAG_MASK => "ARCH_GET_UNTAG_MASK",
                _ => "?",
            }
        ),
        File(f) => format!("/proc/PID/{f}"),
        Ns(n) => format!("/proc/PID/ns/{n}"),
        VmFlag(f) => format!("smaps VmFlags `{f}`"),
        Mempolicy => "get_mempolicy".into(),
        Ldt => "modify_ldt (read)".into(),
        ThreadArea => "PTRACE_GET_THREAD_AREA".into(),
        Root => "/proc/PID/root".into(),
        Membarrier => "membarrier `MEMBARRIER_CMD_GET_REGISTRATIONS`".into(),
        UnixSock(w) => format!("AF_UNIX socket: {w}"),
        InetSock(w) => format!("TCP/UDP socket: {w}"),
        FdLock(w) => format!("fdinfo `lock:` word `{w}`"),
        Terminal(w) => format!("terminal: {w}"),
        FdFlag(bit) => format!("fdinfo `flags:` bit `{bit:#o}`"),
        FdFile(f) => format!("stat/lseek of every descriptor: {f}"),
        Cwd => "/proc/PID/cwd".into(),
        SysvIpc(w) => format!("SysV IPC: {w}"),
        Fcntl(cmd) => format!(
            "fcntl `{}` of every descriptor",
            match cmd {
                libc::F_GETPIPE_SZ => "F_GETPIPE_SZ",
                F_GETSIG => "F_GETSIG",
                F_GETOWN_EX => "F_GETOWN_EX",
                _ => "?",
            }
        ),
        Shared(k) => format!(
            "kcmp `{}` of every pair",
            match k {
                KCMP_VM => "KCMP_VM",
                KCMP_FILES => "KCMP_FILES",
                KCMP_FS => "KCMP_FS",
                KCMP_SIGHAND => "KCMP_SIGHAND",
                _ => "?",
            }
        ),
    }
}

/// [`TABLE`] as the Markdown table of docs/AUDIT.md.
pub fn table_markdown() -> String {
    let mut out = String::from("| read from | attribute | ckpt |\n|---|---|---|\n");
    for r in TABLE {
        let v = match r.verdict {
            Saved(g) if g.starts_with("image: ") => format!("saved ({})", &g[7..]),
            Saved(g) if g.starts_with("fd: ") => {
                format!("saved (descriptor kind `{}`)", &g[4..])
            }
            Saved(g) => format!("saved (group `{g}`)"),
            Info => "not state (informational)".into(),
            Default(Zero) if matches!(r.source, Shared(_)) => "refused if shared".into(),
            Default(Zero) => "refused unless zero / unset".into(),
            Default(Value(v)) => format!("refused unless `{v}`"),
            Default(Ours) => "refused unless the same as ckpt's own".into(),
        };
        out.push_str(&format!(
            "| {} | {} | {v} |\n",
            source_name(r.source),
            r.what
        ));
    }
    out
}

fn ns_id(p: &str) -> Option<String> {
    std::fs::read_link(p)
        .ok()
        .map(|l| l.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_source_is_listed_once() {
        for (i, r) in TABLE.iter().enumerate() {
            assert!(
                TABLE[i + 1..].iter().all(|o| o.source != r.source),
                "{:?} twice",
                r.source
            );
        }
    }

    #[test]
    fn every_field_of_our_own_status_is_known() {
        let text = std::fs::read_to_string("/proc/self/status").unwrap();
        for (k, _) in proc::status_fields(&text) {
            assert!(
                TABLE
                    .iter()
                    .any(|r| matches!(r.source, Status(x) if x == k)),
                "status field {k} is not in the audit table"
            );
        }
    }

    /// docs/AUDIT.md holds the table as it is (CKPT_UPDATE_DOCS=1 rewrites it).
    #[test]
    fn the_documented_table_is_the_table() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/AUDIT.md");
        let doc = std::fs::read_to_string(path).unwrap();
        let (begin, end) = ("<!-- table begin -->\n", "<!-- table end -->");
        let a = doc.find(begin).expect("table begin marker") + begin.len();
        let b = doc.find(end).expect("table end marker");
        let table = table_markdown();
        if std::env::var_os("CKPT_UPDATE_DOCS").is_some() {
            let new = format!("{}{table}{}", &doc[..a], &doc[b..]);
            std::fs::write(path, new).unwrap();
            return;
        }
        assert!(
            doc[a..b] == table,
            "docs/AUDIT.md does not show the audit table as it is: run the tracer tests with CKPT_UPDATE_DOCS=1"
        );
    }

    #[test]
    fn locks_are_checked_by_their_words() {
        let line = |s: &str| proc::parse_lock_line(s).unwrap();
        let ok = line("1: POSIX  ADVISORY  WRITE 7 fe:00:12 10 29");
        assert!(check_lock(7, 3, &ok).is_ok());
        assert!(check_lock(7, 3, &line("1: LEASE  ACTIVE    READ 7 fe:00:12 0 EOF")).is_ok());
        let e = check_lock(7, 3, &line("1: POSIX  MANDATORY WRITE 7 08:01:12 0 EOF"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("process 7") && e.contains("fd 3") && e.contains("mandatory lock"),
            "{e}"
        );
        let e = check_lock(7, 4, &line("1: LEASE  BREAKING  READ 7 fe:00:12 0 EOF"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("fd 4") && e.contains("lease being broken"),
            "{e}"
        );
        let e = check_lock(7, 5, &line("1: FLOCK  MSNFS     READ 7 fe:00:12 0 EOF"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`MSNFS`") && e.contains("does not know"), "{e}");
    }

    #[test]
    fn zero_values() {
        assert!(is_zero("0"));
        assert!(is_zero("0 kB"));
        assert!(is_zero("00000000,00000000"));
        assert!(is_zero(""));
        assert!(!is_zero("1"));
        assert!(!is_zero("4 kB"));
    }

    #[test]
    fn saved_groups_exist() {
        for r in TABLE {
            if let Saved(g) = r.verdict {
                assert!(
                    g.starts_with("image: ")
                        || g.starts_with("fd: ")
                        || crate::attr::GROUPS.iter().any(|x| x.name == g),
                    "{:?} names group {g}, which does not exist",
                    r.source
                );
            }
        }
    }
}
