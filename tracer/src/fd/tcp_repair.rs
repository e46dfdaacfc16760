//! TCP connections to peers outside the checkpoint (issue 10, item 3): the inet kind
//! ([`super::inet::link`]) hands them here once the tree is read. How they are saved is
//! the dump's choice ([`set_mode`]):
//!
//! - **Refused** (the default): a one-line error naming the process, the descriptor,
//!   the connection and the two options that would save it.
//! - **`--tcp-established`** (root, or CAP_NET_ADMIN in the socket's network
//!   namespace): the TCP_REPAIR way, as CRIU's `sk-tcp.c` / libsoccr. First the
//!   network lock ([`crate::netlock`]) drops every packet of these connections, both
//!   ways, so that nothing moves while they are read and, with `--kill`, until the
//!   restore rebuilt them (no packet finds the host without a socket, so the peer gets
//!   no reset); then each socket, through our `pidfd_getfd` copy, goes into repair
//!   mode and shows its sequence numbers (TCP_QUEUE_SEQ of the send and receive
//!   queues), both queues (TCP_REPAIR_QUEUE, then recv with MSG_PEEK), the options
//!   negotiated with the peer (TCP_INFO: MSS, window scales, SACK, timestamps), the
//!   window (TCP_REPAIR_WINDOW) and the timestamp clock (TCP_TIMESTAMP); it leaves
//!   repair mode without a window probe. With `--kill`, [`before_kill`] puts it back in
//!   repair mode just before the kill: a socket closed in repair mode sends nothing
//!   (no FIN, no reset; the inet kind's SO_LINGER {1, 0} is not set on it).
//!   The restore makes a socket in repair mode, binds it to the old local address
//!   (repair mode forces the bind, as SO_REUSEADDR would), sets both queues' sequence
//!   numbers, connects it to the peer (no packet in repair mode: it is ESTABLISHED at
//!   once), gives back the options (TCP_REPAIR_OPTIONS, TCP_TIMESTAMP), writes the
//!   receive queue and the sent part of the send queue in repair mode, the window, and
//!   leaves repair mode; the bytes never sent are then written as any write. The lock
//!   is removed once the restored processes run ([`crate::netlock::release_restored`]).
//!   Only ESTABLISHED connections with neither side shut down are saved so: a
//!   half-closed one would need a FIN crafted for the receive queue (CRIU sends one
//!   with a raw socket); it is refused, naming `--tcp-close`.
//! - **`--tcp-close`** (any user): the connection is saved as closed. After the
//!   restore the descriptor is a TCP socket of the same family whose reads return the
//!   bytes received and not read before the checkpoint, then fail once with
//!   ECONNRESET, then return 0 (end of file), as after a reset from the peer; a write
//!   fails with ECONNRESET if it comes first, else EPIPE (and SIGPIPE unless the
//!   program ignores it or sends with MSG_NOSIGNAL); poll shows POLLIN, POLLHUP and
//!   POLLERR. It is made by a connection over loopback whose other end is closed with a
//!   reset, so getsockname shows a loopback address, not the old one, and getpeername
//!   fails with ENOTCONN (as after any reset). The old connection is closed by the kill
//!   with a reset (the inet kind's SO_LINGER {1, 0}), so the peer learns it is gone.

use super::inet::{self, get_int, getsockopt_raw, ioctl_int, set_int, setsockopt_raw, show};
use super::{set_status_flags, Dump, Kind, RestoreResult, Shared};
use crate::error::{Result, TraceError};
use crate::state::{
    Fd, FdKind, InetAddr, InetSocket, ProcessState, TcpOutside, TcpRepair, TcpSaved,
};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Mutex;

pub const KIND: Kind = Kind {
    dump: no_dump,
    dump_process: None,
    dump_tree: None,
    restore: restore_fd,
    finish: Some(finish),
    late: None,
    describe,
};

/// What the dump does with a connection to a peer outside the checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Refuse = 0,
    /// `--tcp-established`.
    Established = 1,
    /// `--tcp-close`.
    Close = 2,
}

static MODE: AtomicU8 = AtomicU8::new(0);
/// `ckpt restore --tcp-established`.
static RESTORE_ESTABLISHED: AtomicBool = AtomicBool::new(false);
/// The inodes of the sockets the dump in progress saved the TCP_REPAIR way.
static REPAIRED: Mutex<Vec<u64>> = Mutex::new(Vec::new());

/// How the next dumps save connections to peers outside the checkpoint.
pub fn set_mode(m: Mode) {
    MODE.store(m as u8, Ordering::Relaxed);
}

pub fn mode() -> Mode {
    match MODE.load(Ordering::Relaxed) {
        1 => Mode::Established,
        2 => Mode::Close,
        _ => Mode::Refuse,
    }
}

/// Whether the restore may rebuild connections saved with `--tcp-established`.
pub fn set_restore_established(yes: bool) {
    RESTORE_ESTABLISHED.store(yes, Ordering::Relaxed);
}

fn repaired_list() -> std::sync::MutexGuard<'static, Vec<u64>> {
    REPAIRED.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether socket `ino` was saved the TCP_REPAIR way by the dump in progress.
pub fn repaired(ino: u64) -> bool {
    repaired_list().contains(&ino)
}

/// The dump is over: with `killing`, its locks stay for the restore (the kill comes
/// next, [`before_kill`]); else they go, and the connections run on.
pub fn dump_done(killing: bool) {
    if killing {
        crate::netlock::keep_dump();
    } else {
        crate::netlock::release_dump();
        repaired_list().clear();
    }
}

/// This kind reads nothing itself: the inet kind reads every inet socket, and its tree
/// pass hands the connections to peers outside the checkpoint to [`save`].
fn no_dump(_d: &mut Dump) -> Option<Result<FdKind>> {
    None
}

/// A connection of the tree whose peer is outside it.
pub(super) struct Outside {
    pub pid: i32,
    pub fd: i32,
    pub ino: u64,
    pub state: u8,
    pub local: InetAddr,
    pub peer: InetAddr,
}

impl Outside {
    fn conn(&self) -> String {
        format!("{} → {}", show(&self.local), show(&self.peer))
    }
    fn refuse(&self, what: String) -> TraceError {
        TraceError::FdRefused {
            pid: self.pid,
            fd: self.fd,
            what: format!(
                "TCP connection {} to a peer outside the checkpoint: {what}",
                self.conn()
            ),
        }
    }
}

const TCP_REPAIR_OPTIONS: i32 = 22;
const TCP_TIMESTAMP: i32 = 24;
const TCP_REPAIR_WINDOW: i32 = 29;
const TCP_NO_QUEUE: i32 = 0;
const TCP_REPAIR_ON: i32 = 1;
const TCP_REPAIR_OFF: i32 = 0;
const SIOCOUTQNSD: libc::c_ulong = 0x894B;
const TCPI_OPT_TIMESTAMPS: u8 = 1;
const TCPI_OPT_SACK: u8 = 2;
const TCPI_OPT_WSCALE: u8 = 4;
const TCPOPT_MAXSEG: u32 = 2;
const TCPOPT_WINDOW: u32 = 3;
const TCPOPT_SACK_PERM: u32 = 4;
const TCPOPT_TIMESTAMP: u32 = 8;

/// How one socket (by inode) is saved, and its receive queue as read in repair mode.
type Saved = (u64, TcpSaved, Option<Vec<u8>>);

/// Save the connections `outside` of the tree `procs` as [`mode`] says, or refuse the
/// first one.
pub(super) fn save(procs: &mut [ProcessState], outside: &[Outside]) -> Result<()> {
    // One socket may be open in several descriptors (dup, fork): each is read once.
    let mut seen = std::collections::HashSet::new();
    let outside: Vec<&Outside> = outside.iter().filter(|o| seen.insert(o.ino)).collect();
    let Some(first) = outside.first() else {
        return Ok(());
    };
    let saved: Vec<Saved> = match mode() {
        Mode::Refuse => {
            return Err(first.refuse(
                "save it with --tcp-established (as root or with CAP_NET_ADMIN: the connection goes on after the restore) or --tcp-close (restored as a connection reset by its peer)".into(),
            ))
        }
        Mode::Close => outside.iter().map(|o| (o.ino, TcpSaved::Closed, None)).collect(),
        Mode::Established => established(&outside)?,
    };
    for p in procs.iter_mut() {
        for f in p.fds.iter_mut() {
            let FdKind::InetSocket(s) = &f.kind else {
                continue;
            };
            let Some((_, how, queue)) = saved.iter().find(|(i, _, _)| *i == s.ino) else {
                continue;
            };
            let mut sock = s.clone();
            if let Some(q) = queue {
                sock.queue = if q.is_empty() {
                    Vec::new()
                } else {
                    vec![q.clone()]
                };
            }
            f.kind = FdKind::TcpOutside(TcpOutside {
                sock,
                saved: how.clone(),
            });
        }
    }
    Ok(())
}

/// `--tcp-established`: check every connection can be saved, lock them all, read them.
fn established(outside: &[&Outside]) -> Result<Vec<Saved>> {
    let ours = std::fs::read_link("/proc/self/ns/net").ok();
    for o in outside {
        if o.state != inet::TCP_ESTABLISHED {
            return Err(o.refuse(format!(
                "it is {} (half closed): --tcp-established saves only ESTABLISHED connections; save it with --tcp-close",
                inet::state_name(o.state)
            )));
        }
        if std::fs::read_link(format!("/proc/{}/ns/net", o.pid)).ok() != ours {
            return Err(o.refuse(
                "its process is in another network namespace than ckpt, whose network lock would not hold it; save it with --tcp-close".into(),
            ));
        }
        // Repair mode needs CAP_NET_ADMIN in the socket's network namespace.
        let c = crate::procinfo::pidfd_getfd(o.pid, o.fd)
            .map_err(|e| TraceError::io(o.pid, format!("socket fd {}: pidfd_getfd", o.fd), e))?;
        let s = c.as_raw_fd();
        let reuse = get_int(s, libc::SOL_SOCKET, libc::SO_REUSEADDR).unwrap_or(0);
        match set_int(s, libc::IPPROTO_TCP, inet::TCP_REPAIR, TCP_REPAIR_ON) {
            Ok(()) => {
                let _ = set_int(s, libc::IPPROTO_TCP, inet::TCP_REPAIR, inet::TCP_REPAIR_OFF_NO_WP);
                let _ = set_int(s, libc::SOL_SOCKET, libc::SO_REUSEADDR, reuse);
            }
            Err(e) => {
                return Err(o.refuse(format!(
                    "--tcp-established needs root or CAP_NET_ADMIN for TCP_REPAIR ({e}); save it with --tcp-close"
                )))
            }
        }
    }
    if crate::netlock::nft().is_none() {
        return Err(first_refuse(
            outside,
            "--tcp-established needs the nft program (package nftables) for its network lock, and none is in PATH: install nftables, or save it with --tcp-close",
        ));
    }
    let conns: Vec<crate::netlock::Conn> = outside
        .iter()
        .map(|o| (o.local.clone(), o.peer.clone()))
        .collect();
    let lock = crate::netlock::lock(&conns).map_err(|e| {
        first_refuse(
            outside,
            &format!("--tcp-established could not take its network lock ({e})"),
        )
    })?;
    let mut out = Vec::new();
    for o in outside {
        let (r, queue) = read(o.pid, o.fd, &lock).map_err(|e| {
            o.refuse(format!(
                "reading it in TCP_REPAIR mode (--tcp-established): {e}"
            ))
        })?;
        repaired_list().push(o.ino);
        out.push((o.ino, TcpSaved::Repaired(r), Some(queue)));
    }
    Ok(out)
}

fn first_refuse(outside: &[&Outside], what: &str) -> TraceError {
    outside[0].refuse(what.to_string())
}

/// Peek exactly `len` bytes of the queue that TCP_REPAIR_QUEUE selects.
fn peek_exact(s: RawFd, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len + 1];
    // SAFETY: recv writes at most `buf.len()` bytes into `buf`, a live buffer.
    let n = unsafe {
        libc::recv(
            s,
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        if len == 0 && e.kind() == io::ErrorKind::WouldBlock {
            return Ok(Vec::new());
        }
        return Err(e);
    }
    if n as usize != len {
        return Err(io::Error::other(format!(
            "the queue held {n} bytes, {len} expected"
        )));
    }
    buf.truncate(len);
    Ok(buf)
}

fn u32_at(v: &[u8], i: usize) -> u32 {
    v.get(i..i + 4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_ne_bytes)
        .unwrap_or(0)
}

/// Read one end in repair mode through a copy of its descriptor: its state and its
/// receive queue. It leaves repair mode without a window probe, its SO_REUSEADDR and
/// SO_PEEK_OFF as they were.
fn read(pid: i32, fd: i32, lock: &str) -> io::Result<(TcpRepair, Vec<u8>)> {
    let c = crate::procinfo::pidfd_getfd(pid, fd)?;
    let s = c.as_raw_fd();
    let reuse = get_int(s, libc::SOL_SOCKET, libc::SO_REUSEADDR)?;
    let peek_off = get_int(s, libc::SOL_SOCKET, libc::SO_PEEK_OFF).unwrap_or(-1);
    if peek_off >= 0 {
        set_int(s, libc::SOL_SOCKET, libc::SO_PEEK_OFF, -1)?;
    }
    set_int(s, libc::IPPROTO_TCP, inet::TCP_REPAIR, TCP_REPAIR_ON)?;
    let r = (|| {
        let info = getsockopt_raw(s, libc::IPPROTO_TCP, libc::TCP_INFO, 232)?;
        if info.first() != Some(&inet::TCP_ESTABLISHED) {
            return Err(io::Error::other(format!(
                "it is {} now",
                inet::state_name(info.first().copied().unwrap_or(0))
            )));
        }
        let options = info.get(5).copied().unwrap_or(0);
        let ws = info.get(6).copied().unwrap_or(0);
        let mss = get_int(s, libc::IPPROTO_TCP, libc::TCP_MAXSEG)? as u32;
        let timestamp = if options & TCPI_OPT_TIMESTAMPS != 0 {
            get_int(s, libc::IPPROTO_TCP, TCP_TIMESTAMP)? as u32
        } else {
            0
        };
        let w = getsockopt_raw(s, libc::IPPROTO_TCP, TCP_REPAIR_WINDOW, 20)?;
        let window = [0, 4, 8, 12, 16].map(|i| u32_at(&w, i));
        let inq = ioctl_int(s, libc::FIONREAD)?.max(0) as usize;
        let outq = ioctl_int(s, libc::TIOCOUTQ)?.max(0) as usize;
        let unsent = ioctl_int(s, SIOCOUTQNSD)?.max(0) as u32;
        set_int(
            s,
            libc::IPPROTO_TCP,
            inet::TCP_REPAIR_QUEUE,
            inet::TCP_RECV_QUEUE,
        )?;
        let recv_seq = get_int(s, libc::IPPROTO_TCP, inet::TCP_QUEUE_SEQ)? as u32;
        let queue = peek_exact(s, inq)?;
        set_int(
            s,
            libc::IPPROTO_TCP,
            inet::TCP_REPAIR_QUEUE,
            inet::TCP_SEND_QUEUE,
        )?;
        let send_seq = get_int(s, libc::IPPROTO_TCP, inet::TCP_QUEUE_SEQ)? as u32;
        let send_queue = peek_exact(s, outq)?;
        set_int(s, libc::IPPROTO_TCP, inet::TCP_REPAIR_QUEUE, TCP_NO_QUEUE)?;
        Ok((
            TcpRepair {
                send_seq,
                recv_seq,
                unsent: unsent.min(outq as u32),
                send_queue,
                options,
                snd_wscale: ws & 0xf,
                rcv_wscale: ws >> 4,
                mss,
                timestamp,
                window,
                lock: Some(lock.to_string()),
            },
            queue,
        ))
    })();
    let off = set_int(
        s,
        libc::IPPROTO_TCP,
        inet::TCP_REPAIR,
        inet::TCP_REPAIR_OFF_NO_WP,
    );
    let back = set_int(s, libc::SOL_SOCKET, libc::SO_REUSEADDR, reuse);
    if peek_off >= 0 {
        set_int(s, libc::SOL_SOCKET, libc::SO_PEEK_OFF, peek_off)?;
    }
    let r = r?;
    off?;
    back?;
    Ok(r)
}

/// Just before the processes `pids` are killed: their sockets saved the TCP_REPAIR
/// way go into repair mode, so that closing them sends nothing (the lock drops
/// anything anyway). Best effort, as the inet kind's SO_LINGER.
pub fn before_kill(pids: &[i32]) {
    let inos = std::mem::take(&mut *repaired_list());
    if inos.is_empty() {
        return;
    }
    for &pid in pids {
        let Ok(fds) = crate::proc::fd_numbers(pid) else {
            continue;
        };
        for fd in fds {
            let Ok(Some(crate::proc::FdTarget::Socket(ino))) = crate::proc::fd_target(pid, fd)
            else {
                continue;
            };
            if !inos.contains(&ino) {
                continue;
            }
            if let Ok(c) = crate::procinfo::pidfd_getfd(pid, fd) {
                let _ = set_int(
                    c.as_raw_fd(),
                    libc::IPPROTO_TCP,
                    inet::TCP_REPAIR,
                    TCP_REPAIR_ON,
                );
            }
        }
    }
    // The inet kind's SO_LINGER pass runs next and must still skip them.
    *repaired_list() = inos;
}

/// Once the kill is done.
pub fn after_kill() {
    repaired_list().clear();
}

// ---------------------------------------------------------------------------------------
// restore

/// The rebuilt sockets whose SO_REUSEADDR is set to its saved value once every inet
/// socket is bound (until then it lets a listener of the tree bind the same port).
#[derive(Default)]
pub struct Rebuilt {
    socks: Vec<(OwnedFd, bool)>,
}

fn what(pid: i32, fd: &Fd, s: &InetSocket) -> String {
    let peer = s.peer.as_ref().map(show).unwrap_or_default();
    format!(
        "process {pid} fd {} (TCP connection {} → {peer})",
        fd.fd,
        show(&s.local)
    )
}

fn restore_fd(pid: i32, fd: &Fd, shared: &mut Shared) -> Option<RestoreResult<OwnedFd>> {
    let FdKind::TcpOutside(t) = &fd.kind else {
        return None;
    };
    Some(match &t.saved {
        TcpSaved::Repaired(r) => rebuild(pid, fd, &t.sock, r, shared),
        TcpSaved::Closed => reset(pid, fd, &t.sock),
    })
}

fn finish(shared: &mut Shared) -> RestoreResult<()> {
    for (s, reuse) in std::mem::take(&mut shared.part::<Rebuilt>().socks) {
        set_int(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            reuse as i32,
        )
        .map_err(|e| super::RestoreError::msg(format!("setting SO_REUSEADDR: {e}")))?;
    }
    Ok(())
}

/// `send` of all of `data` in chunks, halving a chunk the kernel refuses (in repair
/// mode a receive queue chunk is one linear buffer, which may be too large to have).
fn send_chunks(s: RawFd, data: &[u8]) -> io::Result<()> {
    let mut off = 0;
    let mut chunk = data.len().clamp(1, 1 << 20);
    while off < data.len() {
        let n = chunk.min(data.len() - off);
        // SAFETY: send reads `n` bytes of `data[off..]`, a live slice at least that long.
        let r = unsafe {
            libc::send(
                s,
                data[off..].as_ptr().cast(),
                n,
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        if r <= 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            if chunk > 1024 {
                chunk /= 2;
                continue;
            }
            return Err(e);
        }
        off += r as usize;
    }
    Ok(())
}

fn tcp_opt(s: RawFd, name: i32, v: i32, what: &str) -> io::Result<()> {
    set_int(s, libc::IPPROTO_TCP, name, v)
        .map_err(|e| io::Error::new(e.kind(), format!("{what}: {e}")))
}

fn rebuild(
    pid: i32,
    fd: &Fd,
    sk: &InetSocket,
    r: &TcpRepair,
    shared: &mut Shared,
) -> RestoreResult<OwnedFd> {
    let w = what(pid, fd, sk);
    if !RESTORE_ESTABLISHED.load(Ordering::Relaxed) {
        bail!(
            "{w}: it was saved with --tcp-established; restore it with `ckpt restore --tcp-established` (as root or with CAP_NET_ADMIN)"
        );
    }
    let Some(peer) = &sk.peer else {
        bail!("{w}: the image holds no peer address");
    };
    let sock = inet::new_socket(sk.family, libc::SOCK_STREAM, 0)?;
    let s = sock.as_raw_fd();
    if let Err(e) = set_int(s, libc::IPPROTO_TCP, inet::TCP_REPAIR, TCP_REPAIR_ON) {
        bail!("{w}: TCP_REPAIR: {e} (a connection saved with --tcp-established is restored by root or with CAP_NET_ADMIN)");
    }
    let rq = sk.queue.concat();
    let sent = r.send_queue.len() - (r.unsent as usize).min(r.send_queue.len());
    let step = || -> io::Result<()> {
        inet::set_opts(&sock, &sk.opts, true)?;
        let _ = set_int(s, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1);
        inet::bind(&sock, &sk.local, sk.family).map_err(|e| {
            io::Error::new(e.kind(), format!("binding to {}: {e}", show(&sk.local)))
        })?;
        tcp_opt(
            s,
            inet::TCP_REPAIR_QUEUE,
            inet::TCP_RECV_QUEUE,
            "TCP_REPAIR_QUEUE",
        )?;
        tcp_opt(
            s,
            inet::TCP_QUEUE_SEQ,
            r.recv_seq.wrapping_sub(rq.len() as u32) as i32,
            "TCP_QUEUE_SEQ (receive queue)",
        )?;
        tcp_opt(
            s,
            inet::TCP_REPAIR_QUEUE,
            inet::TCP_SEND_QUEUE,
            "TCP_REPAIR_QUEUE",
        )?;
        tcp_opt(
            s,
            inet::TCP_QUEUE_SEQ,
            r.send_seq.wrapping_sub(r.send_queue.len() as u32) as i32,
            "TCP_QUEUE_SEQ (send queue)",
        )?;
        inet::connect(&sock, peer, sk.family).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("connecting to {} in repair mode: {e}", show(peer)),
            )
        })?;
        let mut opts: Vec<[u32; 2]> = Vec::new();
        if r.options & TCPI_OPT_SACK != 0 {
            opts.push([TCPOPT_SACK_PERM, 0]);
        }
        if r.options & TCPI_OPT_WSCALE != 0 {
            opts.push([
                TCPOPT_WINDOW,
                r.snd_wscale as u32 | (r.rcv_wscale as u32) << 16,
            ]);
        }
        if r.options & TCPI_OPT_TIMESTAMPS != 0 {
            opts.push([TCPOPT_TIMESTAMP, 0]);
        }
        opts.push([TCPOPT_MAXSEG, r.mss]);
        let bytes: Vec<u8> = opts
            .iter()
            .flat_map(|o| o.iter().flat_map(|v| v.to_ne_bytes()))
            .collect();
        setsockopt_raw(s, libc::IPPROTO_TCP, TCP_REPAIR_OPTIONS, &bytes)
            .map_err(|e| io::Error::new(e.kind(), format!("TCP_REPAIR_OPTIONS: {e}")))?;
        if r.options & TCPI_OPT_TIMESTAMPS != 0 {
            tcp_opt(s, TCP_TIMESTAMP, r.timestamp as i32, "TCP_TIMESTAMP")?;
        }
        // Room for queues larger than a new socket's buffers hold (the kernel had grown
        // the live connection's; a size set here stays, as one a program sets).
        let room = |n: usize| (n * 2 + (256 << 10)).min(i32::MAX as usize / 2) as i32;
        for (name, force, n) in [
            (libc::SO_RCVBUF, libc::SO_RCVBUFFORCE, rq.len()),
            (libc::SO_SNDBUF, libc::SO_SNDBUFFORCE, r.send_queue.len()),
        ] {
            if n > 0 && get_int(s, libc::SOL_SOCKET, name).unwrap_or(0) < room(n) {
                let _ = set_int(s, libc::SOL_SOCKET, force, room(n) / 2);
            }
        }
        if !rq.is_empty() {
            tcp_opt(
                s,
                inet::TCP_REPAIR_QUEUE,
                inet::TCP_RECV_QUEUE,
                "TCP_REPAIR_QUEUE",
            )?;
            send_chunks(s, &rq).map_err(|e| {
                io::Error::new(e.kind(), format!("refilling the receive queue: {e}"))
            })?;
        }
        if sent > 0 {
            tcp_opt(
                s,
                inet::TCP_REPAIR_QUEUE,
                inet::TCP_SEND_QUEUE,
                "TCP_REPAIR_QUEUE",
            )?;
            send_chunks(s, &r.send_queue[..sent])
                .map_err(|e| io::Error::new(e.kind(), format!("refilling the send queue: {e}")))?;
        }
        tcp_opt(s, inet::TCP_REPAIR_QUEUE, TCP_NO_QUEUE, "TCP_REPAIR_QUEUE")?;
        if r.window != [0; 5] {
            let w: Vec<u8> = r.window.iter().flat_map(|v| v.to_ne_bytes()).collect();
            setsockopt_raw(s, libc::IPPROTO_TCP, TCP_REPAIR_WINDOW, &w)
                .map_err(|e| io::Error::new(e.kind(), format!("TCP_REPAIR_WINDOW: {e}")))?;
        }
        tcp_opt(s, inet::TCP_REPAIR, TCP_REPAIR_OFF, "leaving repair mode")?;
        // Leaving repair mode cleared SO_REUSEADDR: set until every socket is bound.
        let _ = set_int(s, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1);
        // SHUT_RD of an ESTABLISHED connection sends nothing: set again as saved.
        if sk.shutdown & 1 != 0 {
            // SAFETY: shutdown on our own socket; integers only.
            if unsafe { libc::shutdown(s, libc::SHUT_RD) } < 0 {
                let e = io::Error::last_os_error();
                return Err(io::Error::new(e.kind(), format!("shutdown(SHUT_RD): {e}")));
            }
        }
        if sent < r.send_queue.len() {
            send_chunks(s, &r.send_queue[sent..])
                .map_err(|e| io::Error::new(e.kind(), format!("writing the unsent bytes: {e}")))?;
        }
        inet::set_opts(&sock, &sk.opts, false)?;
        if let Some(o) = sk
            .opts
            .iter()
            .find(|o| o.level == libc::SOL_SOCKET && o.name == libc::SO_PEEK_OFF)
        {
            setsockopt_raw(s, o.level, o.name, &o.value)
                .map_err(|e| io::Error::new(e.kind(), format!("setting SO_PEEK_OFF: {e}")))?;
        }
        Ok(())
    };
    step().map_err(|e| super::RestoreError::msg(format!("{w}: {e}")))?;
    set_status_flags(&sock, fd.flags)?;
    let reuse = sk
        .opts
        .iter()
        .any(|o| o.level == libc::SOL_SOCKET && o.name == libc::SO_REUSEADDR);
    shared.part::<Rebuilt>().socks.push((
        sock.try_clone()
            .map_err(|e| super::RestoreError::msg(format!("{w}: {e}")))?,
        reuse,
    ));
    if let Some(l) = &r.lock {
        crate::netlock::restored(l);
    }
    Ok(sock)
}

/// `--tcp-close`: a TCP socket of the family of `sk` holding the bytes it had received
/// and not read, then reset by its peer (a loopback connection whose other end closes
/// with SO_LINGER {1, 0}).
fn reset(pid: i32, fd: &Fd, sk: &InetSocket) -> RestoreResult<OwnedFd> {
    let w = what(pid, fd, sk);
    let lo = InetAddr {
        ip: if sk.family == libc::AF_INET {
            vec![127, 0, 0, 1]
        } else {
            std::net::Ipv6Addr::LOCALHOST.octets().to_vec()
        },
        port: 0,
        flowinfo: 0,
        scope_id: 0,
    };
    let l = inet::new_socket(sk.family, libc::SOCK_STREAM, 0)?;
    let data = sk.queue.concat();
    let step = || -> io::Result<OwnedFd> {
        inet::bind(&l, &lo, sk.family)?;
        inet::listen(&l, 1)?;
        let at = inet::sock_name(l.as_raw_fd(), false)?.unwrap_or_default();
        let c = inet::new_socket(sk.family, libc::SOCK_STREAM, 0)
            .map_err(|e| io::Error::other(e.to_string()))?;
        let room = (data.len() * 2 + (256 << 10)).min(i32::MAX as usize / 2) as i32;
        let _ = set_int(c.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, room);
        inet::connect(&c, &at, sk.family)?;
        let a = inet::accept(&l)?;
        let _ = set_int(a.as_raw_fd(), libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, room);
        send_chunks(a.as_raw_fd(), &data)?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while (ioctl_int(c.as_raw_fd(), libc::FIONREAD)?.max(0) as usize) < data.len() {
            if std::time::Instant::now() > deadline {
                return Err(io::Error::other("its unread bytes did not arrive"));
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let linger = [1i32, 0i32];
        let bytes: Vec<u8> = linger.iter().flat_map(|v| v.to_ne_bytes()).collect();
        setsockopt_raw(a.as_raw_fd(), libc::SOL_SOCKET, libc::SO_LINGER, &bytes)?;
        drop(a);
        while getsockopt_raw(c.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_INFO, 8)?.first()
            != Some(&inet::TCP_CLOSE)
        {
            if std::time::Instant::now() > deadline {
                return Err(io::Error::other("the reset did not arrive"));
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        Ok(c)
    };
    let c = step().map_err(|e| {
        super::RestoreError::msg(format!("{w}: making the reset socket (--tcp-close): {e}"))
    })?;
    set_status_flags(&c, fd.flags)?;
    Ok(c)
}

fn describe(kind: &FdKind) -> Option<String> {
    let FdKind::TcpOutside(t) = kind else {
        return None;
    };
    let s = &t.sock;
    let peer = s.peer.as_ref().map(show).unwrap_or_default();
    let fam = if s.family == libc::AF_INET {
        "TCP"
    } else {
        "TCP6"
    };
    Some(match &t.saved {
        TcpSaved::Repaired(r) => format!(
            "{fam} socket:[{}] {} → {peer} (peer outside, saved with TCP_REPAIR: send seq {}, receive seq {}, {} bytes to send, {} received unread{})",
            s.ino,
            show(&s.local),
            r.send_seq,
            r.recv_seq,
            r.send_queue.len(),
            s.queue.iter().map(Vec::len).sum::<usize>(),
            r.lock.as_ref().map(|l| format!(", lock inet {l}")).unwrap_or_default()
        ),
        TcpSaved::Closed => format!(
            "{fam} socket:[{}] {} → {peer} (peer outside, saved as closed: restored reset, {} bytes unread)",
            s.ino,
            show(&s.local),
            s.queue.iter().map(Vec::len).sum::<usize>()
        ),
    })
}
