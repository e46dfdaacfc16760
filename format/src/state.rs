//! What a checkpointed process is made of: the serde types stored (with postcard) in the
//! image metadata, and the zombies a manifest lists. The tracer fills them from a
//! frozen process; `ckpt` writes and reads them. Any change to a type here is a format
//! change: bump [`crate::image::FORMAT_VERSION`] and add a golden image (see
//! docs/FORMAT.md); the golden-image test fails otherwise.

use serde::{Deserialize, Serialize};

pub use crate::attrs::*;

/// General-purpose registers in the order of the kernel's `struct user_regs_struct`.
pub type Regs = [u64; 27];

/// Indices into [`Regs`].
pub mod reg {
    pub const R15: usize = 0;
    pub const R14: usize = 1;
    pub const R13: usize = 2;
    pub const R12: usize = 3;
    pub const RBP: usize = 4;
    pub const RBX: usize = 5;
    pub const R11: usize = 6;
    pub const R10: usize = 7;
    pub const R9: usize = 8;
    pub const R8: usize = 9;
    pub const RAX: usize = 10;
    pub const RCX: usize = 11;
    pub const RDX: usize = 12;
    pub const RSI: usize = 13;
    pub const RDI: usize = 14;
    pub const ORIG_RAX: usize = 15;
    pub const RIP: usize = 16;
    pub const CS: usize = 17;
    pub const EFLAGS: usize = 18;
    pub const RSP: usize = 19;
    pub const SS: usize = 20;
    pub const FS_BASE: usize = 21;
    pub const GS_BASE: usize = 22;
    pub const DS: usize = 23;
    pub const ES: usize = 24;
    pub const FS: usize = 25;
    pub const GS: usize = 26;
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct FileIdentity {
    pub path: String,
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
    pub mode: u32,
    /// GNU build-id of an ELF file, when it has one.
    pub build_id: Option<Vec<u8>>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rseq {
    pub addr: u64,
    pub len: u32,
    pub sig: u32,
    pub flags: u32,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AltStack {
    pub sp: u64,
    pub flags: i32,
    pub size: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct ThreadState {
    pub tid: i32,
    /// Registers as the thread must resume: an interrupted system call is already turned
    /// into its restart (or into -EINTR), and `orig_rax` is -1.
    pub regs: Regs,
    /// The full XSAVE area from PTRACE_GETREGSET(NT_X86_XSTATE), standard format.
    pub xstate: Vec<u8>,
    pub sigmask: u64,
    pub rseq: Option<Rseq>,
    pub robust_head: u64,
    pub robust_len: u64,
    pub clear_child_tid: u64,
    pub altstack: AltStack,
    pub name: String,
    /// The system call the thread was in at the checkpoint, if any (for `ckpt info`).
    pub syscall: Option<i64>,
    /// Signals queued for this thread only, as 128-byte siginfo_t, oldest first.
    pub pending: Vec<Vec<u8>>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum VmaKind {
    /// Private anonymous memory (including `[heap]` and `[stack]`, see `name`).
    Anon,
    /// MAP_SHARED anonymous memory (`/dev/zero (deleted)`): its pages are stored as
    /// runs. `ino` identifies the shared memory object: every mapping of the same object,
    /// in any process of the checkpoint, maps one new object again after restore.
    SharedAnon {
        ino: u64,
    },
    /// A mapping of a regular file that still exists under `id.path`.
    File {
        id: FileIdentity,
    },
    Vdso,
    Vvar,
    VvarVclock,
    /// A mapping of a memfd or of a regular file deleted after it was mapped (content
    /// stored in `file`, see [`UnlinkedFile`]). Restored onto the same new file as every
    /// other descriptor and mapping of that file.
    Unlinked {
        file: UnlinkedFile,
    },
    /// The ring of an aio context (io_setup); the context id is the ring's address.
    /// Made again with io_setup and moved here (tracer/src/aio.rs), its head and tail
    /// where they were; no page is stored.
    AioRing(AioRing),
    /// A mapping of a regular file deleted after it was mapped, with no descriptor of the
    /// process on it: like `Unlinked`, with its owner, times and holes (`meta`; `data`
    /// then holds only the extents' bytes).
    DeletedFile {
        file: UnlinkedFile,
        meta: FileMeta,
    },
    /// An attachment (shmat) of the SysV shared memory segment `shmid`, whole, from its
    /// first byte; its content is saved with the segment (`Attr::SysvIpc`). `may_write`:
    /// attached without SHM_RDONLY. (Whether SHM_EXEC was given cannot be told, every
    /// attachment may be made executable: `prot` says what it is.)
    SysvShm {
        shmid: i32,
        may_write: bool,
    },
}

/// What an aio ring's header said (`struct aio_ring`, linux/fs/aio.c).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct AioRing {
    /// The kernel's index of the context in the process (`id`): contexts are made
    /// again in this order.
    pub id: u32,
    /// Events the ring holds (`nr`).
    pub nr: u32,
    /// Head and tail, equal: the ring held no event not yet reaped.
    pub tail: u32,
}

/// A file without a name: a memfd, or a regular file deleted after it was opened or
/// mapped. Every descriptor and mapping of one such file carries its `dev`/`ino`, which
/// the restore uses to recreate it once. Its content, mode and seals are stored with
/// exactly one of them (`data` is `Some`), the first the dump met; the others have `None`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct UnlinkedFile {
    /// true: a memfd (`name` is its memfd_create name); false: a deleted regular file
    /// (`name` is the path it had).
    pub memfd: bool,
    pub name: String,
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    /// st_mode (type and permission bits).
    pub mode: u32,
    /// F_GET_SEALS of a memfd (0 for deleted files); set only where `data` is `Some`.
    pub seals: u32,
    /// The whole content (at most 256 MiB), with one occurrence only.
    pub data: Option<Vec<u8>>,
}

/// One inode mark of a fanotify group: `path` was found from the inode's file handle;
/// `mflags` the mark flags fdinfo shows (FAN_MARK_IGNORED_SURV_MODIFY,
/// FAN_MARK_EVICTABLE), `mask` and `ignored_mask` its events.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct FanotifyMark {
    pub path: String,
    pub dev: u64,
    pub ino: u64,
    pub mflags: u32,
    pub mask: u64,
    pub ignored_mask: u64,
}

/// One watch of an inotify instance: `path` was found from the inode's file handle.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct InotifyWatch {
    pub wd: i32,
    pub path: String,
    /// The mask as inotify_add_watch takes it (events, IN_ONESHOT, IN_EXCL_UNLINK).
    pub mask: u32,
    pub dev: u64,
    pub ino: u64,
}

/// One entry of an epoll interest list: the target descriptor number in the process,
/// the events (with EPOLLET, EPOLLONESHOT, EPOLLWAKEUP, EPOLLEXCLUSIVE) and the user data.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpollEntry {
    pub fd: i32,
    pub events: u32,
    pub data: u64,
}

/// A run of `npages` consecutive pages stored in the image.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRun {
    pub addr: u64,
    pub npages: u64,
    /// Offset of the run in the image file (filled by the image writer).
    pub file_off: u64,
    /// xxh3-64 of the run's bytes (filled by the image writer).
    pub hash: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Vma {
    pub start: u64,
    pub end: u64,
    /// PROT_READ | PROT_WRITE | PROT_EXEC
    pub prot: u32,
    pub shared: bool,
    pub offset: u64,
    pub growsdown: bool,
    /// The name /proc/PID/maps shows (`[heap]`, `[stack]`, a path, or empty).
    pub name: String,
    pub kind: VmaKind,
    /// The pages whose content is stored in the image.
    pub pages: Vec<PageRun>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum FdKind {
    /// A regular file, reopened by path at `pos`.
    File {
        id: FileIdentity,
        pos: u64,
    },
    Dir {
        path: String,
    },
    /// /dev/null, /dev/zero, /dev/full, /dev/random, /dev/urandom: reopened by path.
    CharDev {
        path: String,
        rdev: u64,
    },
    /// A terminal: reattached to the restorer's own terminal.
    Tty {
        path: String,
    },
    /// One end of a pipe. `data` (the bytes in flight) is stored once per pipe, with a
    /// read end. `peer_in_process` says whether the other end is open in the checkpoint
    /// (in this process or another process of the tree).
    Pipe {
        ino: u64,
        write_end: bool,
        peer_in_process: bool,
        data: Vec<u8>,
    },
    /// A memfd or a regular file deleted after it was opened, at `pos`.
    Unlinked {
        file: UnlinkedFile,
        pos: u64,
    },
    /// A named pipe, reopened by path. `data` (the bytes in flight) is stored once per
    /// FIFO, with its first descriptor; `peer_in_process`: both a reader and a writer are
    /// open in the process.
    Fifo {
        path: String,
        ino: u64,
        peer_in_process: bool,
        data: Vec<u8>,
    },
    /// eventfd: its counter and EFD_SEMAPHORE (O_NONBLOCK is in the fd flags).
    Eventfd {
        count: u64,
        semaphore: bool,
    },
    /// timerfd: `value_ns` is the time left to the next expiry as fdinfo shows it (0:
    /// disarmed, or expired with `ticks` unread); with TFD_TIMER_ABSTIME in
    /// `settime_flags`, `deadline_ns` is that expiry on the timer's clock.
    Timerfd {
        clockid: i32,
        settime_flags: i32,
        ticks: u64,
        value_ns: u64,
        interval_ns: u64,
        deadline_ns: u64,
    },
    /// signalfd: the signals it accepts.
    Signalfd {
        mask: u64,
    },
    /// inotify: its watches by ascending wd (queued events are not kept).
    Inotify {
        watches: Vec<InotifyWatch>,
    },
    /// epoll: its interest list (entries are added back inside the restored process).
    Epoll {
        entries: Vec<EpollEntry>,
    },
    /// An AF_UNIX socket (SOCK_STREAM, SOCK_DGRAM or SOCK_SEQPACKET). A socket is one open
    /// file description: its inode identifies it across the tree. `queue` (and
    /// `senders`) are stored once per socket, with its first descriptor in the checkpoint.
    UnixSocket {
        ino: u64,
        /// SOCK_STREAM (1), SOCK_DGRAM (2) or SOCK_SEQPACKET (5).
        sock_type: i32,
        state: UnixState,
        /// The address it is bound to, as sun_path bytes: a path (without its NUL), or an
        /// abstract name (starting with NUL); empty: unbound. An accepted socket has the
        /// name of its listening socket.
        name: Vec<u8>,
        /// For a path name: the socket file at bind time.
        file: Option<UnixSocketFile>,
        /// Inode of the connected peer (0: not connected, or the peer was closed).
        peer: u64,
        /// The peer's name (empty: unnamed or no peer).
        peer_name: Vec<u8>,
        /// Whether the peer is open in the checkpoint (in any process of the tree).
        peer_in_checkpoint: bool,
        /// The kernel's sk_shutdown: RCV_SHUTDOWN (1) | SEND_SHUTDOWN (2).
        shutdown: u8,
        /// listen() backlog of a listening socket.
        backlog: u32,
        /// The receive queue: for a stream socket one element with all its bytes, for a
        /// datagram or seqpacket socket one element per message, oldest first.
        queue: Vec<Vec<u8>>,
        /// The sender address of each message of `queue` (datagram sockets; empty:
        /// unnamed sender). Empty for stream and seqpacket sockets.
        senders: Vec<Vec<u8>>,
        opts: UnixOptions,
    },
    /// The master of a pseudo-terminal made inside the job (opened from /dev/ptmx):
    /// restored as a new pair, whose index may differ from `index`. `pty`, the pair's
    /// state, is stored with exactly one master descriptor of the pair (`None` on any
    /// other).
    PtyMaster {
        index: u32,
        pty: Option<PtyState>,
    },
    /// The slave of a pseudo-terminal whose master is in the checkpoint: /dev/pts/INDEX,
    /// or (`dev_tty`) /dev/tty opened by a process whose controlling terminal it is.
    /// Reopened on the new pair.
    PtySlave {
        index: u32,
        dev_tty: bool,
    },
    /// A terminal outside the checkpoint on a standard stream (0, 1 or 2): as [`Self::Tty`]
    /// the restorer's own takes its place, and gets `termios` (the job's settings, raw
    /// mode for an editor or a shell) until the job exits.
    TtyStd {
        path: String,
        termios: Termios,
    },
    /// A pidfd (pidfd_open, clone with CLONE_PIDFD) of process (or, with PIDFD_THREAD,
    /// O_EXCL in the flags, thread) `pid` of the checkpoint, a zombie among them, or
    /// (`pid` -1) of a process that had exited and been reaped.
    Pidfd {
        pid: i32,
    },
    /// A regular file deleted after it was opened (not a memfd), at `pos`: as
    /// [`FdKind::Unlinked`], with what else the restore gives back ([`FileMeta`]). Where
    /// this descriptor carries the content (`file.data` is `Some`), `data` holds only
    /// the bytes of `meta.extents`, one after the other (the holes are not stored).
    DeletedFile {
        file: UnlinkedFile,
        pos: u64,
        meta: FileMeta,
    },
    /// A FIFO deleted after it was opened: restored on a new FIFO made in a directory
    /// of the restorer's and removed again, so that the process sees an unlinked FIFO.
    /// `name` is the path it had; `mode` its st_mode; `data` and `peer_in_process` as in
    /// [`FdKind::Fifo`].
    DeletedFifo {
        name: String,
        ino: u64,
        mode: u32,
        uid: u32,
        gid: u32,
        peer_in_process: bool,
        data: Vec<u8>,
    },
    /// A directory deleted after it was opened: restored on a new empty directory made
    /// in a directory of the restorer's and removed again.
    DeletedDir {
        dir: DeletedDir,
    },
    /// A descriptor opened with O_PATH on `path` (a regular file, directory, symlink
    /// (O_NOFOLLOW), or any other file): reopened with O_PATH, and it must be the same
    /// file: the same inode, type and birth time. `mode` is its st_mode; `btime` its
    /// birth time (statx, ns since the epoch; 0: the file system does not keep one).
    OPath {
        path: String,
        mode: u32,
        dev: u64,
        ino: u64,
        btime: i128,
    },
    /// A fanotify group (fanotify_init `flags` and `event_flags`) with its inode marks.
    Fanotify {
        flags: u32,
        event_flags: u32,
        marks: Vec<FanotifyMark>,
    },
    /// An AF_INET or AF_INET6 socket, TCP or UDP (tracer/src/fd/inet.rs).
    InetSocket(InetSocket),
    /// A TCP connection to a peer outside the checkpoint, saved with
    /// `--tcp-established` or `--tcp-close` (tracer/src/fd/tcp_repair.rs).
    TcpOutside(TcpOutside),
}

/// A TCP connection whose peer is outside the checkpoint.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct TcpOutside {
    /// The socket as the inet kind reads any: addresses, state, shutdown, options, and
    /// (`queue`) the bytes received and not read yet.
    pub sock: InetSocket,
    pub saved: TcpSaved,
}

/// How a connection to a peer outside the checkpoint was saved.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum TcpSaved {
    /// `--tcp-established`: read in TCP_REPAIR mode, rebuilt with the same sequence
    /// numbers, so the peer sees the same connection go on.
    Repaired(TcpRepair),
    /// `--tcp-close`: restored as a connection reset by its peer (its unread bytes
    /// first, then ECONNRESET, then end of file).
    Closed,
}

/// What TCP_REPAIR shows of one end of a connection (as CRIU's `tcp-stream` image).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct TcpRepair {
    /// TCP_QUEUE_SEQ of the send queue: the sequence number after the last byte the
    /// program wrote (write_seq).
    pub send_seq: u32,
    /// TCP_QUEUE_SEQ of the receive queue: the next sequence number expected (rcv_nxt).
    pub recv_seq: u32,
    /// The send queue: every byte written and not acknowledged, oldest first.
    pub send_queue: Vec<u8>,
    /// How many bytes at the end of `send_queue` were never sent (SIOCOUTQNSD).
    pub unsent: u32,
    /// TCP_INFO tcpi_options: TCPI_OPT_TIMESTAMPS 1, TCPI_OPT_SACK 2, TCPI_OPT_WSCALE 4.
    pub options: u8,
    pub snd_wscale: u8,
    pub rcv_wscale: u8,
    /// TCP_MAXSEG: the MSS clamp given back with TCP_REPAIR_OPTIONS.
    pub mss: u32,
    /// TCP_TIMESTAMP (with TCPI_OPT_TIMESTAMPS).
    pub timestamp: u32,
    /// TCP_REPAIR_WINDOW: snd_wl1, snd_wnd, max_window, rcv_wnd, rcv_wup.
    pub window: [u32; 5],
    /// The nftables table (`inet NAME`) the dump left dropping the connection's
    /// packets while the process is down (`--kill`); the restore deletes it. `None`:
    /// the dump took no lock past itself.
    pub lock: Option<String>,
}

/// An IPv4 or IPv6 socket address: `ip` is 4 bytes (AF_INET) or 16 (AF_INET6, an IPv4
/// peer of a dual-stack socket as ::ffff:a.b.c.d), in network order.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct InetAddr {
    pub ip: Vec<u8>,
    pub port: u16,
    pub flowinfo: u32,
    pub scope_id: u32,
}

/// One socket option as getsockopt(level, name) returned it, set back with the same
/// bytes (SO_RCVBUF and SO_SNDBUF: halved, as the kernel doubles what it is given).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SockOpt {
    pub level: i32,
    pub name: i32,
    pub value: Vec<u8>,
}

/// A TCP or UDP socket over IPv4 or IPv6.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct InetSocket {
    pub ino: u64,
    /// AF_INET (2) or AF_INET6 (10).
    pub family: i32,
    /// SOCK_STREAM (TCP) or SOCK_DGRAM (UDP).
    pub sock_type: i32,
    pub protocol: i32,
    /// TCP: the state (linux/tcp_states.h: 1 ESTABLISHED, 4 FIN_WAIT1, 5 FIN_WAIT2,
    /// 7 CLOSE, 8 CLOSE_WAIT, 10 LISTEN). UDP: 1 connected, 7 not.
    pub state: u8,
    /// getsockname (port 0: not bound).
    pub local: InetAddr,
    /// getpeername, if connected.
    pub peer: Option<InetAddr>,
    /// The kernel's sk_shutdown as far as it is known: RCV_SHUTDOWN (1) | SEND_SHUTDOWN (2).
    pub shutdown: u8,
    /// listen() backlog of a listening socket.
    pub backlog: u32,
    /// The receive queue: TCP one element with its bytes, UDP one per datagram.
    pub queue: Vec<Vec<u8>>,
    /// UDP: the source address of each datagram of `queue`.
    pub sources: Vec<InetAddr>,
    /// The options at another value than a new socket's.
    pub opts: Vec<SockOpt>,
    /// Established TCP: the inode of the other end, a socket of the checkpoint. The
    /// client of a connection waiting to be accepted: the inode of the listening socket
    /// of the checkpoint whose accept queue holds it. 0: none.
    pub peer_ino: u64,
    /// Whether `peer_ino` is a listening socket (a connection not accepted yet).
    pub waiting: bool,
}

/// A terminal's settings, as TCGETS2 shows them (`struct termios2`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Termios {
    pub iflag: u32,
    pub oflag: u32,
    pub cflag: u32,
    pub lflag: u32,
    /// The line discipline number (N_TTY, 0).
    pub line: u8,
    /// The control characters (NCCS, 19).
    pub cc: Vec<u8>,
    pub ispeed: u32,
    pub ospeed: u32,
}

/// The state of a pseudo-terminal pair made inside the job.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct PtyState {
    /// The slave's termios (what the program on the terminal set); `None`: the slave
    /// was never opened (its termios are the kernel's defaults, and the master does not
    /// see it closed: it is not opened at restore either).
    pub slave: Option<Termios>,
    /// The master's termios.
    pub master: Termios,
    /// TIOCGWINSZ: rows, columns, x and y pixels.
    pub winsize: [u16; 4],
    /// TIOCGPKT of the master.
    pub packet: bool,
    /// TIOCGPTLCK: the slave cannot be opened (before unlockpt, or locked again).
    pub locked: bool,
    /// TIOCGEXCL of the slave (TIOCEXCL: no further open but by root).
    pub exclusive: bool,
    /// The session whose controlling terminal the slave is (0: none), and its
    /// foreground process group.
    pub session: i32,
    pub fg_pgrp: i32,
    /// Written to the master, not yet read from the slave: the slave's input queue, as
    /// its line discipline holds it (after its input processing and line editing).
    pub input: Vec<u8>,
    /// Written to the slave (after its output processing), not yet read from the master.
    pub output: Vec<u8>,
}

/// What a restore gives back of a deleted regular file besides its content and mode.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct FileMeta {
    pub uid: u32,
    pub gid: u32,
    pub atime_sec: i64,
    pub atime_nsec: u32,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
    /// The data extents (offset, length) as SEEK_DATA/SEEK_HOLE show them; what lies
    /// between them, and after the last one up to the size, is a hole.
    pub extents: Vec<(u64, u64)>,
}

/// A directory that was removed while the process held it (as a descriptor, or as its
/// working directory: [`DeletedCwd`] in the attribute groups).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct DeletedDir {
    /// The path it had.
    pub name: String,
    pub ino: u64,
    /// st_mode, uid and gid.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// The state of an AF_UNIX socket as the program sees it.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnixState {
    /// Not connected (possibly bound).
    Unconnected,
    Listening,
    /// Connected (to a live peer, or to one that was closed since).
    Connected,
}

/// The file a unix socket bound to a path name created.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct UnixSocketFile {
    /// st_mode, uid and gid of the socket file.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// The file was removed (or replaced) since bind: the name stays, the file does not.
    pub unlinked: bool,
    /// For a relative name: the directory it was bound in (the process's working
    /// directory at checkpoint time); empty for absolute names.
    pub dir: String,
}

/// Socket options of a unix socket that the program can see or that change behaviour.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnixOptions {
    pub passcred: bool,
    pub passsec: bool,
    pub passpidfd: bool,
    /// SO_RCVBUF / SO_SNDBUF as getsockopt returns them (doubled).
    pub rcvbuf: i32,
    pub sndbuf: i32,
    pub rcvlowat: i32,
    /// SO_RCVTIMEO / SO_SNDTIMEO in microseconds (0: none).
    pub rcvtimeo_us: u64,
    pub sndtimeo_us: u64,
    /// SO_PEEK_OFF (-1: off).
    pub peek_off: i32,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Fd {
    pub fd: i32,
    /// Id of the open file description within the checkpoint: descriptors with the same
    /// id (dup, inherited across fork) share one description, and so one offset.
    pub desc: u32,
    /// open flags from fdinfo (access mode, O_APPEND, O_NONBLOCK, ...), without O_CLOEXEC.
    pub flags: i32,
    pub cloexec: bool,
    /// The descriptor is standard input/output/error leading outside the process (a
    /// terminal or a pipe): the restorer attaches its own in its place.
    pub inherit: bool,
    pub kind: FdKind,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct SigAction {
    pub signo: i32,
    pub handler: u64,
    pub flags: u64,
    pub restorer: u64,
    pub mask: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MmFields {
    pub start_code: u64,
    pub end_code: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub brk: u64,
    pub start_stack: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rlimit {
    pub resource: i32,
    pub cur: u64,
    pub max: u64,
}

/// An interval timer (`setitimer`): `which` is ITIMER_REAL (0), ITIMER_VIRTUAL (1) or
/// ITIMER_PROF (2); `value_ns` is the time left until it expires (0: not running, which
/// with an interval means its SIGALRM is pending and re-arms it when dequeued).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct ITimer {
    pub which: i32,
    pub value_ns: u64,
    pub interval_ns: u64,
}

/// A POSIX timer (`timer_create`), as /proc/PID/timers and `timer_gettime` show it.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct PosixTimer {
    /// The timer id the process knows it by.
    pub id: i32,
    /// The clock id: CLOCK_REALTIME, CLOCK_MONOTONIC, ..., or a CPU clock (negative:
    /// `~pid << 3 | per-thread 4 | PROF 0 / VIRT 1 / SCHED 2`, pid 0 for the caller).
    pub clock: i32,
    /// The kernel's sigev_notify: SIGEV_SIGNAL (0), SIGEV_NONE (1), SIGEV_THREAD (2,
    /// behaves as SIGEV_SIGNAL in the kernel) or SIGEV_THREAD_ID (4).
    pub notify: i32,
    pub signo: i32,
    /// The thread signalled with SIGEV_THREAD_ID (0 otherwise).
    pub tid: i32,
    /// sigev_value (sival_ptr / sival_int), passed in si_value.
    pub sigval: u64,
    /// Time left until the next expiry (0: disarmed) and the period.
    pub value_ns: u64,
    pub interval_ns: u64,
    /// timer_getoverrun at the checkpoint (informational: it cannot be set).
    pub overrun: i32,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct ProcessState {
    pub pid: i32,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    pub comm: String,
    pub cmdline: Vec<String>,
    pub exe: FileIdentity,
    pub cwd: String,
    pub umask: u32,
    pub personality: u32,
    pub rlimits: Vec<Rlimit>,
    pub mm: MmFields,
    pub auxv: Vec<u64>,
    pub threads: Vec<ThreadState>,
    pub vmas: Vec<Vma>,
    pub fds: Vec<Fd>,
    pub sigactions: Vec<SigAction>,
    /// XSAVE features enabled (XCR0) on the machine that took the checkpoint.
    pub xfeatures: u64,
    /// xxh3 of the `[vdso]` bytes: a restore on another kernel build must be refused.
    pub vdso_hash: u64,
    /// Signals queued for the whole process, as 128-byte siginfo_t, oldest first.
    pub shared_pending: Vec<Vec<u8>>,
    /// Regular files on a memory file system (tmpfs, /dev/shm) that the process maps
    /// or has open, with their content: a reboot wipes them, so a restore recreates
    /// the ones that are gone. `name` is the path; `data` is always there.
    pub volatile_files: Vec<UnlinkedFile>,
    /// Interval timers (setitimer) that are armed or have an interval.
    pub itimers: Vec<ITimer>,
    /// POSIX timers (timer_create), by ascending id.
    pub posix_timers: Vec<PosixTimer>,
    /// Attribute groups (credentials, scheduling, ...), one entry per group that has
    /// something to restore. Last, so that format 2 metadata decodes with it empty.
    pub attrs: Vec<crate::attrs::Attr>,
}

/// A child that had exited but was not yet reaped at checkpoint time.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Zombie {
    pub pid: i32,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    /// The wait status its parent will collect (as from waitpid).
    pub wait_status: i32,
}
