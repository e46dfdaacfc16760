//! Sockets, read from the outside while the process is frozen.
//!
//! Only AF_UNIX sockets (stream, datagram, seqpacket) are supported; any other family is
//! refused naming its family and type (`socket (AF_INET stream)`, `socket (AF_NETLINK)`).
//!
//! - Identity and state come from sock_diag (NETLINK_SOCK_DIAG, `unix_diag_req` for one
//!   inode, see linux/unix_diag.h): type, state, own name, the peer's inode, shutdown
//!   state, the receive queue length and, for a listening socket, its pending
//!   connections and backlog.
//! - The socket itself is reached through our own copy of the target's descriptor
//!   (`pidfd_open` + `pidfd_getfd`, Linux 5.6+, allowed to the tracer): its family and
//!   type, the options that matter (SO_PASSCRED, buffer sizes, timeouts, SO_PEEK_OFF...)
//!   and the receive queue, read with `recvmsg(MSG_PEEK)` so that nothing is consumed.
//!   A stream queue is one run of bytes; datagrams and seqpacket records are peeked one
//!   by one by moving SO_PEEK_OFF from message to message (with MSG_TRUNC to learn each
//!   length), which keeps their boundaries. SO_PEEK_OFF is put back afterwards.
//!
//! Connections waiting to be accepted: the socket accept() will return has no inode yet
//! (sock_diag shows none, nor the peer of its client), so they are found from their
//! clients: a connected stream or seqpacket socket whose peer has no inode and that is
//! not shut down both ways (as a socket whose peer was closed is) is such a client,
//! getpeername() names its listening socket. A listening socket of the tree whose
//! waiting connections all have their client in the tree is restored with them (the
//! clients connect again, in the order of their inodes, see `restore.rs`).
//!
//! Descriptors in flight (SCM_RIGHTS) come with the peek: peeking installs copies of
//! them here, as a read would, without taking them from the queue. Once the whole tree
//! is read, [`link`] finds each one among the descriptors of the tree (kcmp
//! KCMP_FILE: the same open file description) and saves it as that description's id,
//! in the process attribute [`crate::state::Attr::UnixInFlight`]; the restore sends
//! the same message with that description. A stream peek stops after the data sent
//! with descriptors but cannot show where that message began: the descriptors are
//! saved with all the bytes queued since the previous ones (so a read of the restored
//! queue gets them with the same read as before, unless it stops short of the data
//! they came with). A descriptor that no process of the tree has open (its sender
//! closed it) is refused.
//!
//! Refused (the restore could not be faithful): queued ancillary data other than
//! SCM_RIGHTS (SCM_CREDENTIALS, which the kernel attaches to every message of a
//! socket with SO_PASSCRED: a restorer without CAP_SYS_ADMIN cannot send another
//! process's; SCM_PIDFD, SCM_SECURITY), a descriptor in flight open nowhere else in
//! the tree, a connection waiting to be accepted whose client sent data
//! already (it can only be read by accepting the connection, which would take it from
//! the process), a listening socket with waiting connections from clients outside the
//! checkpoint or more of them than its backlog admits, a datagram socket connected to one peer with datagrams queued from another sender,
//! queued datagrams on a socket that has neither a name nor a peer to refill it through.
//! A socket whose peer is outside the checkpoint is not refused: the restore gives it a
//! closed peer (see `restore.rs`).

use crate::error::{Result, TraceError};
use crate::state::{FdKind, ProcessState, UnixOptions, UnixSocketFile, UnixState};
use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;

const UDIAG_SHOW_NAME: u32 = 0x01;
const UDIAG_SHOW_VFS: u32 = 0x02;
const UDIAG_SHOW_PEER: u32 = 0x04;
const UDIAG_SHOW_ICONS: u32 = 0x08;
const UDIAG_SHOW_RQLEN: u32 = 0x10;

const UNIX_DIAG_NAME: u16 = 0;
const UNIX_DIAG_VFS: u16 = 1;
const UNIX_DIAG_PEER: u16 = 2;
const UNIX_DIAG_ICONS: u16 = 3;
const UNIX_DIAG_RQLEN: u16 = 4;
const UNIX_DIAG_SHUTDOWN: u16 = 6;

const TCP_ESTABLISHED: u8 = 1;
const TCP_CLOSE: u8 = 7;
const TCP_LISTEN: u8 = 10;

const SO_PASSPIDFD: i32 = 76;
const SCM_PIDFD: i32 = 4;

/// The most messages ckpt reads from one receive queue.
const MAX_MESSAGES: usize = 1 << 16;

/// What sock_diag says about one unix socket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diag {
    pub ino: u64,
    pub sock_type: i32,
    /// TCP_ESTABLISHED (1), TCP_CLOSE (7) or TCP_LISTEN (10).
    pub state: u8,
    /// As in [`FdKind::UnixSocket`]: a path without its NUL, or an abstract name.
    pub name: Vec<u8>,
    /// (inode, st_dev) of the socket file of a path name.
    pub vfs: Option<(u64, u64)>,
    /// The peer's inode, 0 if none (or if the peer was closed).
    pub peer: u64,
    /// Pending connections of a listening socket.
    pub icons: Vec<u64>,
    /// Listening: pending connections and backlog; otherwise: bytes queued (the first
    /// datagram only, for a datagram socket) and bytes in flight to the peer.
    pub rqueue: u32,
    pub wqueue: u32,
    pub shutdown: u8,
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("sock_diag: {what}"))
}

/// Normalise a sun_path: a path ends at its first NUL; an abstract name is kept whole.
pub fn name_from_sun_path(p: &[u8]) -> Vec<u8> {
    match p.first() {
        None => Vec::new(),
        Some(0) => p.to_vec(),
        Some(_) => p.split(|&b| b == 0).next().unwrap_or(&[]).to_vec(),
    }
}

/// How a unix socket name is shown: the path, or `@name` for an abstract one.
pub fn display_name(name: &[u8]) -> String {
    match name.first() {
        None => "(unnamed)".to_string(),
        Some(0) => format!("@{}", String::from_utf8_lossy(&name[1..])),
        Some(_) => String::from_utf8_lossy(name).into_owned(),
    }
}

/// A kernel-internal dev_t (as sock_diag prints s_dev) as userspace sees it in st_dev.
fn kdev_to_dev(k: u64) -> u64 {
    libc::makedev((k >> 20) as u32, (k & 0xfffff) as u32)
}

fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_ne_bytes([b[i], b[i + 1]])
}
fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_ne_bytes(b[i..i + 4].try_into().unwrap())
}

fn parse_diag(msg: &[u8]) -> io::Result<Diag> {
    // struct unix_diag_msg: u8 family, type, state, pad; u32 ino; u32 cookie[2].
    if msg.len() < 16 {
        return Err(invalid("short message"));
    }
    let mut d = Diag {
        sock_type: msg[1] as i32,
        state: msg[2],
        ino: u32_at(msg, 4) as u64,
        ..Default::default()
    };
    let mut at = 16;
    while at + 4 <= msg.len() {
        let len = u16_at(msg, at) as usize;
        let ty = u16_at(msg, at + 2) & 0x3fff;
        if len < 4 || at + len > msg.len() {
            return Err(invalid("bad attribute"));
        }
        let data = &msg[at + 4..at + len];
        match ty {
            UNIX_DIAG_NAME => d.name = name_from_sun_path(data),
            UNIX_DIAG_VFS if data.len() >= 8 => {
                d.vfs = Some((u32_at(data, 0) as u64, kdev_to_dev(u32_at(data, 4) as u64)))
            }
            UNIX_DIAG_PEER if data.len() >= 4 => d.peer = u32_at(data, 0) as u64,
            UNIX_DIAG_ICONS => {
                d.icons = data.chunks_exact(4).map(|c| u32_at(c, 0) as u64).collect()
            }
            UNIX_DIAG_RQLEN if data.len() >= 8 => {
                d.rqueue = u32_at(data, 0);
                d.wqueue = u32_at(data, 4);
            }
            UNIX_DIAG_SHUTDOWN if !data.is_empty() => d.shutdown = data[0],
            _ => {}
        }
        at += len.div_ceil(4) * 4;
    }
    Ok(d)
}

/// Send one unix_diag request (`ino` 0: all sockets) and collect the answers.
fn diag_request(ino: u32, dump: bool) -> io::Result<Vec<Diag>> {
    // SAFETY: socket(2) returns a descriptor we own.
    let nl = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    };
    if nl < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `nl` was just returned by a successful socket(2) (checked >= 0 above): a
    // fresh descriptor nothing else owns, now owned only by this OwnedFd.
    let nl = unsafe { OwnedFd::from_raw_fd(nl) };
    let mut req = [0u8; 40];
    // struct nlmsghdr: u32 len, u16 type, u16 flags, u32 seq, u32 pid.
    req[0..4].copy_from_slice(&40u32.to_ne_bytes());
    req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    let flags = libc::NLM_F_REQUEST as u16 | if dump { libc::NLM_F_DUMP as u16 } else { 0 };
    req[6..8].copy_from_slice(&flags.to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    // struct unix_diag_req: u8 family, u8 protocol, u16 pad, u32 states, u32 ino,
    // u32 show, u32 cookie[2] (~0: no cookie check).
    req[16] = libc::AF_UNIX as u8;
    req[20..24].copy_from_slice(&u32::MAX.to_ne_bytes());
    req[24..28].copy_from_slice(&ino.to_ne_bytes());
    let show =
        UDIAG_SHOW_NAME | UDIAG_SHOW_VFS | UDIAG_SHOW_PEER | UDIAG_SHOW_ICONS | UDIAG_SHOW_RQLEN;
    req[28..32].copy_from_slice(&show.to_ne_bytes());
    req[32..40].copy_from_slice(&[0xff; 8]);
    // SAFETY: `sockaddr_nl` is a plain C struct of integers: all-zero bytes are a valid
    // value (and the kernel's "any" address); nl_family is set next.
    let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    sa.nl_family = libc::AF_NETLINK as u16;
    // SAFETY: sendto from a live buffer to a local address.
    let r = unsafe {
        libc::sendto(
            nl.as_raw_fd(),
            req.as_ptr().cast(),
            req.len(),
            0,
            &sa as *const libc::sockaddr_nl as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        // SAFETY: recv into a live buffer.
        let n = unsafe { libc::recv(nl.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let b = &buf[..n as usize];
        let mut at = 0;
        while at + 16 <= b.len() {
            let len = u32_at(b, at) as usize;
            let ty = u16_at(b, at + 4);
            if len < 16 || at + len > b.len() {
                return Err(invalid("bad message"));
            }
            match ty {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR => {
                    let err = if len >= 20 {
                        u32_at(b, at + 16) as i32
                    } else {
                        0
                    };
                    if err != 0 {
                        return Err(io::Error::from_raw_os_error(-err));
                    }
                    return Ok(out);
                }
                SOCK_DIAG_BY_FAMILY => out.push(parse_diag(&b[at + 16..at + len])?),
                _ => {}
            }
            at += len.div_ceil(4) * 4;
        }
        if !dump && !out.is_empty() {
            return Ok(out);
        }
        if n == 0 {
            return Err(invalid("no answer"));
        }
    }
}

/// sock_diag of the unix socket with inode `ino` in our network namespace; None if there
/// is no such socket.
pub fn diag(ino: u64) -> io::Result<Option<Diag>> {
    let Ok(ino32) = u32::try_from(ino) else {
        return Ok(None);
    };
    match diag_request(ino32, false) {
        Ok(v) => Ok(v.into_iter().find(|d| d.ino == ino)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// sock_diag of every unix socket of our network namespace.
pub fn diag_all() -> io::Result<Vec<Diag>> {
    diag_request(0, true)
}

/// Our own descriptor on the open file description behind `fd` of process `pid`.
fn get_fd(pid: i32, fd: i32) -> io::Result<OwnedFd> {
    crate::procinfo::pidfd_getfd(pid, fd)
}

fn get_int(fd: &OwnedFd, level: i32, opt: i32) -> io::Result<i32> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt into a local int.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v)
}

fn set_int(fd: &OwnedFd, opt: i32, v: i32) -> io::Result<()> {
    // SAFETY: setsockopt from a local int.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn get_timeout_us(fd: &OwnedFd, opt: i32) -> io::Result<u64> {
    let mut tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 0,
    };
    let mut len = std::mem::size_of::<libc::timeval>() as libc::socklen_t;
    // SAFETY: getsockopt into a local timeval.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&mut tv as *mut libc::timeval).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(tv.tv_sec.max(0) as u64 * 1_000_000 + tv.tv_usec.max(0) as u64)
}

pub fn family_name(f: i32) -> String {
    match f {
        libc::AF_UNIX => "AF_UNIX".into(),
        libc::AF_INET => "AF_INET".into(),
        libc::AF_INET6 => "AF_INET6".into(),
        libc::AF_NETLINK => "AF_NETLINK".into(),
        libc::AF_PACKET => "AF_PACKET".into(),
        libc::AF_VSOCK => "AF_VSOCK".into(),
        libc::AF_ALG => "AF_ALG".into(),
        libc::AF_BLUETOOTH => "AF_BLUETOOTH".into(),
        libc::AF_TIPC => "AF_TIPC".into(),
        libc::AF_CAN => "AF_CAN".into(),
        libc::AF_XDP => "AF_XDP".into(),
        f => format!("address family {f}"),
    }
}

pub fn type_name(t: i32) -> String {
    match t {
        libc::SOCK_STREAM => "stream".into(),
        libc::SOCK_DGRAM => "dgram".into(),
        libc::SOCK_SEQPACKET => "seqpacket".into(),
        libc::SOCK_RAW => "raw".into(),
        libc::SOCK_RDM => "rdm".into(),
        t => format!("type {t}"),
    }
}

/// Why a receive queue cannot be kept.
enum QueueError {
    Io(io::Error),
    Refused(String),
}

impl From<io::Error> for QueueError {
    fn from(e: io::Error) -> Self {
        QueueError::Io(e)
    }
}

/// One peeked message: its full length, the sender's name and the descriptors sent
/// with it (SCM_RIGHTS; peeking installs copies of them here).
struct Peeked {
    len: usize,
    sender: Vec<u8>,
    fds: Vec<OwnedFd>,
}

/// recvmsg(MSG_PEEK) at the current SO_PEEK_OFF; None when nothing (more) is queued.
fn peek_one(sock: &OwnedFd, buf: &mut [u8], datagram: bool) -> Result2<Option<Peeked>> {
    // SAFETY: `sockaddr_un` is a plain C struct (a family integer and a byte array): all-
    // zero bytes are a valid value.
    let mut name: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    // Room for SCM_MAX_FD (253) descriptors.
    let mut control = [0u64; 160];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut flags = libc::MSG_PEEK | libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC;
    if datagram {
        // The datagram's real length, even when the buffer is too small.
        flags |= libc::MSG_TRUNC;
    }
    let (n, msg) = loop {
        // SAFETY: `msghdr` is a plain C struct of pointers and integers: all-zero bytes
        // (null pointers, zero lengths) are a valid value; the fields recvmsg needs are set
        // right below.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&mut name as *mut libc::sockaddr_un).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_un>() as u32;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control);
        // SAFETY: every buffer the msghdr points to lives across the call.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, flags) };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Ok(None),
                _ => return Err(e.into()),
            }
        }
        break (n as usize, msg);
    };
    // Ancillary data: peeking SCM_RIGHTS installs the descriptors here (kept, closed
    // when dropped).
    let mut kinds = Vec::new();
    let mut fds = Vec::new();
    if msg.msg_controllen > 0 {
        // SAFETY: walking the control buffer the kernel filled, within msg_controllen.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                let (level, ty) = ((*c).cmsg_level, (*c).cmsg_type);
                let data = libc::CMSG_DATA(c);
                let dlen = (*c).cmsg_len as usize - (data as usize - c as usize);
                if level == libc::SOL_SOCKET && (ty == libc::SCM_RIGHTS || ty == SCM_PIDFD) {
                    for i in 0..dlen / 4 {
                        let fd = std::ptr::read_unaligned(data.add(i * 4) as *const i32);
                        // The kernel just installed it in our table: ours alone.
                        fds.push(OwnedFd::from_raw_fd(fd));
                    }
                }
                kinds.push(match (level, ty) {
                    (libc::SOL_SOCKET, libc::SCM_RIGHTS) => {
                        c = libc::CMSG_NXTHDR(&msg, c);
                        continue;
                    }
                    (libc::SOL_SOCKET, libc::SCM_CREDENTIALS) => {
                        "SCM_CREDENTIALS, which SO_PASSCRED attaches to every message"
                    }
                    (libc::SOL_SOCKET, SCM_PIDFD) => "SCM_PIDFD",
                    (libc::SOL_SOCKET, 3) => "SCM_SECURITY",
                    _ => "ancillary data",
                });
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        kinds.push("more ancillary data than one message can carry");
    }
    if !kinds.is_empty() {
        kinds.dedup();
        return Err(QueueError::Refused(format!(
            "queued ancillary data ({})",
            kinds.join(", ")
        )));
    }
    let namelen = (msg.msg_namelen as usize).min(std::mem::size_of::<libc::sockaddr_un>());
    let sender = if namelen > 2 {
        // SAFETY: sun_path is plain bytes; namelen - 2 of them were written.
        let path: &[u8] =
            unsafe { std::slice::from_raw_parts(name.sun_path.as_ptr().cast(), namelen - 2) };
        name_from_sun_path(path)
    } else {
        Vec::new()
    };
    Ok(Some(Peeked {
        len: n,
        sender,
        fds,
    }))
}

type Result2<T> = std::result::Result<T, QueueError>;

/// Descriptors in flight with one queued message, as [`crate::state::UnixInFlight`]
/// holds them, with our copies of them.
pub struct InFlight {
    pub at: u64,
    pub len: u64,
    pub fds: Vec<OwnedFd>,
}

/// Queued messages, per message the sender's name, and the descriptors in flight.
type Queue = (Vec<Vec<u8>>, Vec<Vec<u8>>, Vec<InFlight>);

/// The receive queue, peeked message by message with SO_PEEK_OFF (a stream socket's is
/// one element). Leaves SO_PEEK_OFF at -1; the caller puts the saved value back.
fn peek_queue(sock: &OwnedFd, sock_type: i32) -> Result2<Queue> {
    let stream = sock_type == libc::SOCK_STREAM;
    let mut queue = Vec::new();
    let mut senders = Vec::new();
    let mut inflight = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    if stream {
        let mut n: libc::c_int = 0;
        // SAFETY: ioctl(SIOCINQ) into a local int.
        if unsafe { libc::ioctl(sock.as_raw_fd(), libc::FIONREAD, &mut n) } < 0 {
            return Err(io::Error::last_os_error().into());
        }
        if n <= 0 {
            return Ok((queue, senders, inflight));
        }
        buf.resize(n as usize, 0);
    }
    let mut off: usize = 0;
    let mut data = Vec::new();
    let mut rounds = 0;
    loop {
        rounds += 1;
        if rounds > MAX_MESSAGES {
            return Err(QueueError::Refused(format!(
                "more than {MAX_MESSAGES} queued messages"
            )));
        }
        let off32 = i32::try_from(off)
            .map_err(|_| QueueError::Refused("a receive queue of 2 GiB or more".into()))?;
        set_int(sock, libc::SO_PEEK_OFF, off32)?;
        let Some(p) = peek_one(sock, &mut buf[if stream { off } else { 0 }..], !stream)? else {
            break;
        };
        if stream {
            if p.len == 0 {
                break;
            }
            data.extend_from_slice(&buf[off..off + p.len]);
            if !p.fds.is_empty() {
                // A peek stops after the data that came with descriptors, but shows
                // nothing of where that message began (a peek of any part of the data
                // queued before it returns its descriptors too): the descriptors are
                // saved with all the bytes this peek returned, so that a read of the
                // restored queue returns them at the same point as before, with the
                // read that takes the last of those bytes or any part of them.
                inflight.push(InFlight {
                    at: off as u64,
                    len: p.len as u64,
                    fds: p.fds,
                });
            }
            off += p.len;
            if off >= buf.len() {
                break;
            }
        } else if p.len > buf.len() {
            // Truncated: peek the same message again with room for all of it.
            buf.resize(p.len, 0);
        } else {
            if !p.fds.is_empty() {
                inflight.push(InFlight {
                    at: queue.len() as u64,
                    len: 0,
                    fds: p.fds,
                });
            }
            queue.push(buf[..p.len].to_vec());
            senders.push(p.sender);
            off += p.len;
        }
    }
    if stream && !data.is_empty() {
        queue.push(data);
    }
    Ok((queue, senders, inflight))
}

/// The socket file of a path name, if it is still there under that name.
fn socket_file(pid: i32, name: &[u8], vfs: Option<(u64, u64)>) -> UnixSocketFile {
    let rel = name.first() != Some(&b'/');
    let dir = if rel {
        std::fs::read_link(format!("/proc/{pid}/cwd"))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default()
    } else {
        String::new()
    };
    let full = if rel {
        std::path::Path::new(&format!("/proc/{pid}/cwd")).join(OsStr::from_bytes(name))
    } else {
        std::path::PathBuf::from(OsStr::from_bytes(name))
    };
    match std::fs::symlink_metadata(&full) {
        Ok(md)
            if md.file_type().is_socket()
                && vfs.is_some_and(|(ino, dev)| md.ino() == ino && md.dev() == dev) =>
        {
            UnixSocketFile {
                mode: md.mode(),
                uid: md.uid(),
                gid: md.gid(),
                unlinked: false,
                dir,
            }
        }
        _ => UnixSocketFile {
            mode: 0,
            uid: 0,
            gid: 0,
            unlinked: true,
            dir,
        },
    }
}

/// The name `sock` is connected to (getpeername), empty if none.
fn peer_name_of(sock: &OwnedFd) -> Vec<u8> {
    // SAFETY: sockaddr_un is plain data: all-zero bytes are a valid value.
    let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: getpeername into a local sockaddr_un of `len` bytes.
    let r = unsafe {
        libc::getpeername(
            sock.as_raw_fd(),
            (&mut a as *mut libc::sockaddr_un).cast(),
            &mut len,
        )
    };
    let len = (len as usize).min(std::mem::size_of::<libc::sockaddr_un>());
    if r < 0 || len <= 2 {
        return Vec::new();
    }
    // SAFETY: sun_path is plain bytes; len - 2 of them were written.
    let path: &[u8] = unsafe { std::slice::from_raw_parts(a.sun_path.as_ptr().cast(), len - 2) };
    name_from_sun_path(path)
}

/// The client of a connection waiting to be accepted: connected, but its peer (the
/// socket accept() will return) has no inode yet, so sock_diag shows none; unlike a
/// socket whose peer was closed, it is not shut down both ways. The name it is
/// connected to is its listening socket's.
fn waiting_client(d: &Diag, sock_type: i32) -> bool {
    sock_type != libc::SOCK_DGRAM && d.state == TCP_ESTABLISHED && d.peer == 0 && d.shutdown != 3
}

/// A `socket:[ino]` descriptor: an AF_UNIX socket, or an error naming the kind.
pub fn socket_fd(pid: i32, fd: i32, ino: u64) -> Result<FdKind> {
    let unsupported = |kind: String| TraceError::UnsupportedFd { pid, fd, kind };
    let sock = get_fd(pid, fd).map_err(|e| {
        TraceError::io(
            pid,
            format!("getting a copy of socket fd {fd} (pidfd_getfd)"),
            e,
        )
    })?;
    let io_err = |what: &str| {
        let what = format!("socket fd {fd}: {what}");
        move |e: io::Error| TraceError::io(pid, what.clone(), e)
    };
    let family = get_int(&sock, libc::SOL_SOCKET, libc::SO_DOMAIN).map_err(io_err("SO_DOMAIN"))?;
    let sock_type = get_int(&sock, libc::SOL_SOCKET, libc::SO_TYPE).map_err(io_err("SO_TYPE"))?;
    if family != libc::AF_UNIX {
        return Err(unsupported(if family == libc::AF_NETLINK {
            "socket (AF_NETLINK)".to_string()
        } else {
            format!("socket ({} {})", family_name(family), type_name(sock_type))
        }));
    }
    let tname = type_name(sock_type);
    if !matches!(
        sock_type,
        libc::SOCK_STREAM | libc::SOCK_DGRAM | libc::SOCK_SEQPACKET
    ) {
        return Err(unsupported(format!("socket (AF_UNIX {tname})")));
    }
    let d = diag(ino)
        .map_err(io_err("sock_diag (NETLINK_SOCK_DIAG)"))?
        .ok_or_else(|| {
            unsupported(format!(
                "unix {tname} socket that sock_diag does not show (in another network namespace?)"
            ))
        })?;
    let state = match d.state {
        TCP_LISTEN => UnixState::Listening,
        // connect() to a datagram socket marks it established too: without a peer of
        // its own, a named one is a receiver others connected to (an unnamed one had a
        // peer that was closed since).
        TCP_ESTABLISHED if sock_type == libc::SOCK_DGRAM && d.peer == 0 && !d.name.is_empty() => {
            UnixState::Unconnected
        }
        TCP_ESTABLISHED => UnixState::Connected,
        TCP_CLOSE => UnixState::Unconnected,
        s => return Err(unsupported(format!("unix {tname} socket in state {s}"))),
    };
    let shown = display_name(&d.name);
    if state == UnixState::Listening && d.rqueue > d.wqueue + 1 {
        return Err(unsupported(format!(
            "listening unix {tname} socket {shown} with {} connections waiting to be accepted, more than its backlog {} admits",
            d.rqueue, d.wqueue
        )));
    }
    let waiting = waiting_client(&d, sock_type).then(|| peer_name_of(&sock));
    if let Some(to) = &waiting {
        if d.wqueue > 0 && !to.is_empty() {
            return Err(unsupported(format!(
                "unix {tname} socket connected to {} whose connection is waiting to be accepted, with {} bytes it sent (they cannot be read without accepting the connection)",
                display_name(to),
                d.wqueue
            )));
        }
    }
    let opt = |o: i32| get_int(&sock, libc::SOL_SOCKET, o);
    let opts = UnixOptions {
        passcred: opt(libc::SO_PASSCRED).map_err(io_err("SO_PASSCRED"))? != 0,
        passsec: opt(libc::SO_PASSSEC).unwrap_or(0) != 0,
        passpidfd: opt(SO_PASSPIDFD).unwrap_or(0) != 0,
        rcvbuf: opt(libc::SO_RCVBUF).map_err(io_err("SO_RCVBUF"))?,
        sndbuf: opt(libc::SO_SNDBUF).map_err(io_err("SO_SNDBUF"))?,
        rcvlowat: opt(libc::SO_RCVLOWAT).unwrap_or(1),
        rcvtimeo_us: get_timeout_us(&sock, libc::SO_RCVTIMEO).unwrap_or(0),
        sndtimeo_us: get_timeout_us(&sock, libc::SO_SNDTIMEO).unwrap_or(0),
        peek_off: opt(libc::SO_PEEK_OFF).unwrap_or(-1),
    };
    let (queue, senders, inflight) = if state == UnixState::Listening {
        (Vec::new(), Vec::new(), Vec::new())
    } else {
        let r = peek_queue(&sock, sock_type);
        // Put the program's peek offset back whatever happened.
        let back = set_int(&sock, libc::SO_PEEK_OFF, opts.peek_off);
        match r {
            Ok(q) => {
                back.map_err(io_err("restoring SO_PEEK_OFF"))?;
                q
            }
            Err(QueueError::Io(e)) => {
                return Err(io_err("reading the receive queue")(e));
            }
            Err(QueueError::Refused(why)) => {
                return Err(unsupported(format!("unix {tname} socket with {why}")));
            }
        }
    };
    let (peer_name, peer_peer) = if let Some(to) = waiting {
        (to, 0)
    } else if d.peer != 0 {
        match diag(d.peer).map_err(io_err("sock_diag of the peer"))? {
            Some(p) => (p.name, p.peer),
            None => (Vec::new(), 0),
        }
    } else {
        (Vec::new(), 0)
    };
    if sock_type == libc::SOCK_DGRAM {
        if state == UnixState::Connected && d.peer != 0 {
            if let Some(s) = senders.iter().find(|s| **s != peer_name) {
                return Err(unsupported(format!(
                    "unix dgram socket connected to {} with datagrams queued from another sender ({})",
                    display_name(&peer_name),
                    display_name(s)
                )));
            }
            if peer_name.is_empty() && peer_peer != ino {
                return Err(unsupported(
                    "unix dgram socket connected to an unnamed socket that is connected elsewhere"
                        .into(),
                ));
            }
        }
        if state == UnixState::Unconnected && d.name.is_empty() && !queue.is_empty() {
            return Err(unsupported(
                "unconnected unnamed unix dgram socket with queued datagrams".into(),
            ));
        }
    }
    let senders = if sock_type == libc::SOCK_DGRAM {
        senders
    } else {
        Vec::new()
    };
    if !inflight.is_empty() {
        in_flight_stash().push((ino, pid, fd, inflight));
    }
    let file = match d.name.first() {
        Some(&c) if c != 0 => Some(socket_file(pid, &d.name, d.vfs)),
        _ => None,
    };
    Ok(FdKind::UnixSocket {
        ino,
        sock_type,
        state,
        name: d.name,
        file,
        peer: d.peer,
        peer_name,
        peer_in_checkpoint: false,
        shutdown: d.shutdown,
        backlog: if state == UnixState::Listening {
            d.wqueue
        } else {
            0
        },
        queue,
        senders,
        opts,
    })
}

/// The descriptors in flight found while reading each socket (by inode, with the pid
/// and fd it was read through), until [`link`] knows the whole tree and can tell which
/// open file description of the checkpoint each one is.
type Stash = HashMap<u64, (i32, i32, Vec<InFlight>)>;

/// One socket's descriptors in flight: (inode, pid, fd, messages).
type Stashed = (u64, i32, i32, Vec<InFlight>);

fn in_flight_stash() -> std::sync::MutexGuard<'static, Vec<Stashed>> {
    static STASH: std::sync::Mutex<Vec<Stashed>> = std::sync::Mutex::new(Vec::new());
    STASH.lock().unwrap_or_else(|e| e.into_inner())
}

/// kcmp(KCMP_FILE): whether our descriptor `ours` and descriptor `theirs` of process
/// `pid` are the same open file description.
fn same_description(ours: &OwnedFd, pid: i32, theirs: i32) -> bool {
    const KCMP_FILE: libc::c_long = 0;
    // SAFETY: kcmp only compares kernel objects; all arguments are integers.
    let r = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            std::process::id() as libc::c_long,
            pid as libc::c_long,
            KCMP_FILE,
            ours.as_raw_fd() as libc::c_long,
            theirs as libc::c_long,
        )
    };
    r == 0
}

/// What our copy of a descriptor in flight is, as /proc shows it.
fn shown_fd(f: &OwnedFd) -> String {
    std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd()))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "?".into())
}

/// The descriptors in flight of the sockets whose queue `procs[i]` keeps, as open file
/// descriptions of the checkpoint: each must be open in some process of the tree
/// (found with kcmp); one that is not (sent, then closed by its sender) is refused.
fn resolve_in_flight(procs: &mut [ProcessState], mut stash: Stash) -> Result<()> {
    // (pid, fd number, description id) of every descriptor of the tree.
    let all: Vec<(i32, i32, u32)> = procs
        .iter()
        .flat_map(|p| p.fds.iter().map(move |f| (p.pid, f.fd, f.desc)))
        .collect();
    for p in procs.iter_mut() {
        let mut found = Vec::new();
        for fd in &p.fds {
            let FdKind::UnixSocket { ino, queue, .. } = &fd.kind else {
                continue;
            };
            if queue.is_empty() {
                continue;
            }
            let Some((pid, sfd, list)) = stash.remove(ino) else {
                continue;
            };
            // Read in this dump: the socket it was read through is in the tree.
            if !all.iter().any(|&(opid, ofd, _)| opid == pid && ofd == sfd) {
                continue;
            }
            for m in list {
                let mut descs = Vec::new();
                for f in &m.fds {
                    let Some(&(_, _, desc)) = all
                        .iter()
                        .find(|(opid, ofd, _)| same_description(f, *opid, *ofd))
                    else {
                        return Err(TraceError::UnsupportedFd {
                            pid,
                            fd: sfd,
                            kind: format!(
                                "unix socket with a descriptor in flight (SCM_RIGHTS: {}) that no process of the checkpoint has open",
                                shown_fd(f)
                            ),
                        });
                    };
                    descs.push(desc);
                }
                found.push(crate::state::UnixInFlight {
                    ino: *ino,
                    at: m.at,
                    len: m.len,
                    descs,
                });
            }
        }
        if !found.is_empty() {
            p.attrs.push(crate::state::Attr::UnixInFlight(found));
        }
    }
    Ok(())
}

/// A listening socket of the tree, by (type, name): (inode, pid, fd, clients found of
/// its waiting connections).
type Listener = (u64, i32, i32, u32);

/// Across the whole tree: whether each socket's peer is in the checkpoint; standard
/// streams connected outside are reattached to the restorer's own (like pipes); each
/// receive queue is kept once. Refuses datagram connections the restore cannot rebuild.
pub fn link(procs: &mut [ProcessState]) -> Result<()> {
    // inode -> (peer, name)
    let mut socks: HashMap<u64, (u64, Vec<u8>)> = HashMap::new();
    for p in procs.iter() {
        for fd in &p.fds {
            if let FdKind::UnixSocket {
                ino, peer, name, ..
            } = &fd.kind
            {
                socks.insert(*ino, (*peer, name.clone()));
            }
        }
    }
    // Connections waiting to be accepted on a listening socket of the tree: their
    // clients connect again at restore time (peer_in_checkpoint: the peer is in the
    // accept queue of the listening socket of the checkpoint named peer_name).
    let mut listeners: HashMap<(i32, Vec<u8>), Listener> = HashMap::new();
    for p in procs.iter() {
        for fd in &p.fds {
            if let FdKind::UnixSocket {
                ino,
                sock_type,
                state: UnixState::Listening,
                name,
                ..
            } = &fd.kind
            {
                if !name.is_empty() {
                    listeners.insert((*sock_type, name.clone()), (*ino, p.pid, fd.fd, 0));
                }
            }
        }
    }
    let mut counted: HashSet<u64> = HashSet::new();
    let mut kept: HashSet<u64> = HashSet::new();
    for p in procs.iter_mut() {
        let pid = p.pid;
        for fd in p.fds.iter_mut() {
            let FdKind::UnixSocket {
                ino,
                sock_type,
                state,
                name,
                peer,
                peer_name,
                peer_in_checkpoint,
                shutdown,
                queue,
                senders,
                ..
            } = &mut fd.kind
            else {
                continue;
            };
            *peer_in_checkpoint = *peer != 0 && socks.contains_key(peer);
            if *state == UnixState::Connected
                && *peer == 0
                && *sock_type != libc::SOCK_DGRAM
                && *shutdown != 3
                && !peer_name.is_empty()
            {
                if let Some(l) = listeners.get_mut(&(*sock_type, peer_name.clone())) {
                    *peer_in_checkpoint = true;
                    if counted.insert(*ino) {
                        l.3 += 1;
                    }
                }
            }
            if *state == UnixState::Connected
                && !*peer_in_checkpoint
                && fd.fd <= 2
                && *sock_type != libc::SOCK_DGRAM
            {
                fd.inherit = true;
            }
            if *sock_type == libc::SOCK_DGRAM && *peer_in_checkpoint {
                let (peers_peer, peer_name) = &socks[peer];
                if *peers_peer != *ino && peer_name.is_empty() {
                    return Err(TraceError::UnsupportedFd {
                        pid,
                        fd: fd.fd,
                        kind: "unix dgram socket connected to an unnamed socket that is connected elsewhere".into(),
                    });
                }
                if *peers_peer != *ino && name.is_empty() && !queue.is_empty() {
                    return Err(TraceError::UnsupportedFd {
                        pid,
                        fd: fd.fd,
                        kind: "unnamed unix dgram socket with datagrams queued from a peer that is connected elsewhere".into(),
                    });
                }
            }
            if fd.inherit || (!queue.is_empty() && !kept.insert(*ino)) {
                queue.clear();
                senders.clear();
            }
        }
    }
    let stash = std::mem::take(&mut *in_flight_stash())
        .into_iter()
        .map(|(ino, pid, fd, list)| (ino, (pid, fd, list)))
        .collect();
    resolve_in_flight(procs, stash)?;
    for (ino, pid, fd, found) in listeners.into_values() {
        let waiting = diag(ino)
            .map_err(|e| TraceError::io(pid, format!("sock_diag of socket fd {fd}"), e))?
            .map_or(0, |d| d.rqueue);
        if waiting > found {
            return Err(TraceError::UnsupportedFd {
                pid,
                fd,
                kind: format!(
                    "listening unix socket with {} of its {waiting} connections waiting to be accepted from clients outside the checkpoint",
                    waiting - found
                ),
            });
        }
    }
    Ok(())
}
