//! AF_INET and AF_INET6 sockets, TCP and UDP (issue 10, first step: what an ordinary
//! user can save and rebuild without privileges).
//!
//! **Dump.** Each socket is read through our own copy of the target's descriptor
//! (`pidfd_getfd`, as the unix kind does): family, type, protocol, getsockname,
//! getpeername, TCP_INFO (the state, and the byte counts of the connection), SIOCOUTQ,
//! sock_diag (NETLINK_SOCK_DIAG, `inet_diag`: the backlog of a listening socket and the
//! shutdown state), the receive queue peeked (MSG_PEEK, stepping SO_PEEK_OFF, put back
//! afterwards: a TCP queue is one run of bytes, a UDP queue one datagram at a time with
//! its source address), and every option of [`OPTS`] whose value differs from a new
//! socket's of the same family, type and protocol.
//!
//! The pass over the tree ([`link`]) pairs the two ends of each established TCP
//! connection by their addresses (one's local address and port are the other's peer);
//! every byte one end sent must be in the other's receive queue (TCP_INFO
//! `tcpi_bytes_acked` + SIOCOUTQ of the sender = `tcpi_bytes_received` of the receiver,
//! the connecting end counting its SYN), else bytes wait in the sender's send queue
//! (the receiver's buffer is full): as root they are read with TCP_REPAIR (the send
//! queue peeked; the sender's `write_seq` against the receiver's `rcv_nxt` says how
//! many of its last bytes the receiver lacks) and saved after the receiver's own queue;
//! without CAP_NET_ADMIN they are got through the receiver ([`drain_and_refill`]:
//! its queue read until the sender's is empty, every byte sent again from the sender's
//! end before the tree runs on), refused when the sender shut down writing after them.
//! A client whose connection waits in the accept queue of a listening socket of the
//! tree is found in /proc/PID/net/tcp{,6} (the waiting socket has no
//! inode); a waiting connection whose client is outside the tree, or that holds data
//! its client sent (only accepting it could read it), is refused, naming it. A
//! connection to a peer outside the tree is handed to [`super::tcp_repair`], which
//! saves it as `--tcp-established` or `--tcp-close` say, or refuses it.
//!
//! **Restore.** Every socket gets a stand-in while the descriptors of each process are
//! prepared; [`finish`] builds the real ones and puts each in place of its stand-in (as
//! the unix kind does): listening sockets bound and listening with their backlog, bound
//! sockets bound, then each established pair rebuilt with the same addresses and ports
//! (a new client bound to the old client port connects to the restored listener of the
//! server end's address, or to a temporary one bound to it, and that accepts), then
//! the clients of waiting connections connect again to their listener, in the order of
//! their inodes. Each end's receive queue is refilled by sending the saved bytes from the
//! other end, before the shutdown state is set (SHUT_WR after the data: the peer reads
//! the data, then end of file) and before any process runs, so every unread byte is
//! delivered once and in order. UDP datagrams are sent again from their source address
//! and port: from the socket of the tree bound there, or a temporary socket bound to it;
//! when that address cannot be had (another socket holds it, or it is not an address of
//! this host) the restore fails naming it rather than deliver a datagram from another
//! source (recvfrom() shows the source, and a connected socket drops datagrams from
//! anyone but its peer). Connected UDP sockets connect once their queues are refilled.
//!
//! After `ckpt dump --kill` the old connections are closed by the kill: the tree's
//! connected TCP sockets get SO_LINGER {on, 0} just before it ([`abort_on_kill`]), so
//! they close with a reset instead of lingering in TIME_WAIT, whose ports a restore
//! could not bind again when the old socket had no SO_REUSEADDR. Every bind of the
//! restore is made with SO_REUSEADDR for the moment (the saved value is set after).
//!
//! Limits (docs/FDKINDS.md): the buffer sizes of a connected TCP socket are the
//! kernel's (it tunes them as the connection runs; a size a program set on a connected
//! client is not kept, an accepted one inherits its listener's as before); UDP shutdown
//! state and SO_PEEK_OFF on UDP are not seen; multicast group memberships are not seen;
//! urgent (out-of-band) data is not seen; a zero-length datagram after the first one of
//! a queue is not seen by peeking; the order in which waiting connections are accepted
//! is taken as the order of their clients' inodes.

use super::{cvt, set_status_flags, Context, Dump, Kind, RestoreResult, Shared};
use super::{unix, Target};
use crate::error::{Result, TraceError};
use crate::state::{Fd, FdKind, InetAddr, InetSocket, ProcessState, SockOpt};
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

pub const KIND: Kind = Kind {
    dump: dump_fd,
    dump_process: Some(forget_diag),
    dump_tree: Some(link),
    restore: restore_fd,
    finish: Some(finish),
    late: None,
    describe,
};

pub(super) const TCP_ESTABLISHED: u8 = 1;
const TCP_SYN_SENT: u8 = 2;
const TCP_SYN_RECV: u8 = 3;
const TCP_FIN_WAIT1: u8 = 4;
const TCP_FIN_WAIT2: u8 = 5;
const TCP_TIME_WAIT: u8 = 6;
pub(super) const TCP_CLOSE: u8 = 7;
const TCP_CLOSE_WAIT: u8 = 8;
const TCP_LAST_ACK: u8 = 9;
const TCP_LISTEN: u8 = 10;
const TCP_CLOSING: u8 = 11;

const RCV_SHUTDOWN: u8 = 1;
const SEND_SHUTDOWN: u8 = 2;

/// The most datagrams ckpt reads from one receive queue.
const MAX_DATAGRAMS: usize = 1 << 16;

pub(super) fn state_name(s: u8) -> &'static str {
    match s {
        TCP_ESTABLISHED => "ESTABLISHED",
        TCP_SYN_SENT => "SYN_SENT",
        TCP_SYN_RECV => "SYN_RECV",
        TCP_FIN_WAIT1 => "FIN_WAIT1",
        TCP_FIN_WAIT2 => "FIN_WAIT2",
        TCP_TIME_WAIT => "TIME_WAIT",
        TCP_CLOSE => "CLOSE",
        TCP_CLOSE_WAIT => "CLOSE_WAIT",
        TCP_LAST_ACK => "LAST_ACK",
        TCP_LISTEN => "LISTEN",
        TCP_CLOSING => "CLOSING",
        _ => "?",
    }
}

pub(super) fn connected_state(s: u8) -> bool {
    matches!(
        s,
        TCP_ESTABLISHED | TCP_FIN_WAIT1 | TCP_FIN_WAIT2 | TCP_CLOSE_WAIT
    )
}

// ---------------------------------------------------------------------------------------
// system call helpers

pub(super) fn getsockopt_raw(s: RawFd, level: i32, name: i32, len: usize) -> io::Result<Vec<u8>> {
    let mut v = vec![0u8; len];
    let mut l = len as libc::socklen_t;
    // SAFETY: getsockopt writes at most `l` bytes into `v`, a live buffer of that length,
    // and the length into `l`, a local.
    let r = unsafe { libc::getsockopt(s, level, name, v.as_mut_ptr().cast(), &mut l) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    v.truncate(l as usize);
    Ok(v)
}

pub(super) fn setsockopt_raw(s: RawFd, level: i32, name: i32, v: &[u8]) -> io::Result<()> {
    // SAFETY: setsockopt reads `v.len()` bytes from `v`, a live slice.
    let r = unsafe { libc::setsockopt(s, level, name, v.as_ptr().cast(), v.len() as u32) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub(super) fn get_int(s: RawFd, level: i32, name: i32) -> io::Result<i32> {
    let v = getsockopt_raw(s, level, name, 4)?;
    Ok(i32::from_ne_bytes(
        v.get(..4).and_then(|b| b.try_into().ok()).unwrap_or([0; 4]),
    ))
}

pub(super) fn set_int(s: RawFd, level: i32, name: i32, v: i32) -> io::Result<()> {
    setsockopt_raw(s, level, name, &v.to_ne_bytes())
}

pub(super) fn ioctl_int(s: RawFd, req: libc::c_ulong) -> io::Result<i32> {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCINQ / SIOCOUTQ write one int into `n`, a local.
    if unsafe { libc::ioctl(s, req, &mut n) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n)
}

pub(super) fn new_socket(family: i32, ty: i32, protocol: i32) -> RestoreResult<OwnedFd> {
    super::owned(
        // SAFETY: socket(2) takes integers and returns a new descriptor.
        unsafe { libc::socket(family, ty | libc::SOCK_CLOEXEC, protocol) },
        "creating an inet socket",
    )
}

/// A sockaddr for `a` in family `family` (an AF_INET6 socket takes an IPv4 address as
/// ::ffff:a.b.c.d).
pub(super) fn sockaddr(a: &InetAddr, family: i32) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data: all-zero bytes are a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    if family == libc::AF_INET {
        // SAFETY: sockaddr_storage is larger than sockaddr_in and suitably aligned.
        let s =
            unsafe { &mut *(&mut ss as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
        s.sin_family = libc::AF_INET as u16;
        s.sin_port = a.port.to_be();
        let ip = v4_of(&a.ip).unwrap_or([0; 4]);
        s.sin_addr.s_addr = u32::from_ne_bytes(ip);
        return (ss, std::mem::size_of::<libc::sockaddr_in>() as u32);
    }
    // SAFETY: sockaddr_storage is larger than sockaddr_in6 and suitably aligned.
    let s = unsafe { &mut *(&mut ss as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
    s.sin6_family = libc::AF_INET6 as u16;
    s.sin6_port = a.port.to_be();
    s.sin6_flowinfo = a.flowinfo;
    s.sin6_scope_id = a.scope_id;
    s.sin6_addr.s6_addr = if a.ip.len() == 4 {
        let mut m = [0u8; 16];
        m[10] = 0xff;
        m[11] = 0xff;
        m[12..].copy_from_slice(&a.ip);
        m
    } else {
        a.ip.as_slice().try_into().unwrap_or([0; 16])
    };
    (ss, std::mem::size_of::<libc::sockaddr_in6>() as u32)
}

fn addr_of(ss: &libc::sockaddr_storage) -> Option<InetAddr> {
    match ss.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in (its family says so) into `ss`.
            let s = unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(InetAddr {
                ip: s.sin_addr.s_addr.to_ne_bytes().to_vec(),
                port: u16::from_be(s.sin_port),
                flowinfo: 0,
                scope_id: 0,
            })
        }
        libc::AF_INET6 => {
            // SAFETY: the kernel wrote a sockaddr_in6 (its family says so) into `ss`.
            let s = unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(InetAddr {
                ip: s.sin6_addr.s6_addr.to_vec(),
                port: u16::from_be(s.sin6_port),
                flowinfo: s.sin6_flowinfo,
                scope_id: s.sin6_scope_id,
            })
        }
        _ => None,
    }
}

pub(super) fn sock_name(s: RawFd, peer: bool) -> io::Result<Option<InetAddr>> {
    // SAFETY: sockaddr_storage is plain data: all-zero bytes are a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let p = (&mut ss as *mut libc::sockaddr_storage).cast();
    // SAFETY: getsockname/getpeername write at most `len` bytes into `ss`, a local.
    let r = unsafe {
        if peer {
            libc::getpeername(s, p, &mut len)
        } else {
            libc::getsockname(s, p, &mut len)
        }
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENOTCONN) {
            return Ok(None);
        }
        return Err(e);
    }
    Ok(addr_of(&ss))
}

pub(super) fn bind(s: &OwnedFd, a: &InetAddr, family: i32) -> io::Result<()> {
    let (ss, len) = sockaddr(a, family);
    // SAFETY: bind reads `len` bytes of `ss`, a local sockaddr of that size.
    let r = unsafe {
        libc::bind(
            s.as_raw_fd(),
            (&ss as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub(super) fn connect(s: &OwnedFd, a: &InetAddr, family: i32) -> io::Result<()> {
    let (ss, len) = sockaddr(a, family);
    loop {
        // SAFETY: connect reads `len` bytes of `ss`, a local sockaddr of that size.
        let r = unsafe {
            libc::connect(
                s.as_raw_fd(),
                (&ss as *const libc::sockaddr_storage).cast(),
                len,
            )
        };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// The IPv4 address of `ip` (4 bytes, or ::ffff:a.b.c.d).
fn v4_of(ip: &[u8]) -> Option<[u8; 4]> {
    match ip.len() {
        4 => ip.try_into().ok(),
        16 if ip[..10].iter().all(|&b| b == 0) && ip[10] == 0xff && ip[11] == 0xff => {
            ip[12..].try_into().ok()
        }
        _ => None,
    }
}

/// The address as a comparable value: IPv4 (also when mapped into IPv6) as 4 bytes.
fn norm(a: &InetAddr) -> (Vec<u8>, u16) {
    match v4_of(&a.ip) {
        Some(v4) => (v4.to_vec(), a.port),
        None => (a.ip.clone(), a.port),
    }
}

fn unspecified(ip: &[u8]) -> bool {
    ip.iter().all(|&b| b == 0)
}

/// `1.2.3.4:80`, `[::1]:80`.
pub fn show(a: &InetAddr) -> String {
    match a.ip.len() {
        4 => format!(
            "{}:{}",
            Ipv4Addr::from(<[u8; 4]>::try_from(a.ip.as_slice()).unwrap_or([0; 4])),
            a.port
        ),
        _ => format!(
            "[{}]:{}",
            Ipv6Addr::from(<[u8; 16]>::try_from(a.ip.as_slice()).unwrap_or([0; 16])),
            a.port
        ),
    }
}

fn proto_name(s: &InetSocket) -> &'static str {
    match (s.sock_type, s.family) {
        (libc::SOCK_STREAM, libc::AF_INET) => "TCP",
        (libc::SOCK_STREAM, _) => "TCP6",
        (_, libc::AF_INET) => "UDP",
        _ => "UDP6",
    }
}

// ---------------------------------------------------------------------------------------
// options

/// Where an option applies.
#[derive(Clone, Copy, PartialEq)]
enum On {
    All,
    Tcp,
    Udp,
    V4,
    V6,
    /// UDP over IPv4 or IPv6 (multicast: a TCP socket shows what it got from its SYN).
    V4Udp,
    V6Udp,
}

/// What ckpt does with an option at another value than a new socket's.
#[derive(Clone, Copy, PartialEq)]
enum Opt {
    /// Set before bind (it decides what bind may take).
    BeforeBind,
    /// Set once the socket is rebuilt, its queue refilled.
    After,
    /// Set like `After`, but only read on a socket that is not connected (on a
    /// connected TCP socket the kernel tunes it: buffer sizes, the MSS, the window).
    Unconnected,
    /// Cannot be restored: any other value than a new socket's refuses the dump.
    Refuse,
}

/// (level, name, option name, getsockopt length, where, what).
type OptRow = (i32, i32, &'static str, usize, On, Opt);

const SO_TIMESTAMP_OLD: i32 = 29;
const SO_TIMESTAMPNS_OLD: i32 = 35;
const SO_TIMESTAMPING_OLD: i32 = 37;
const SO_RCVTIMEO_OLD: i32 = 20;
const SO_SNDTIMEO_OLD: i32 = 21;
const SO_GET_FILTER: i32 = 26;
const TCP_TX_DELAY: i32 = 37;
const IP_LOCAL_PORT_RANGE: i32 = 51;

/// Every option ckpt reads. An option not listed is not seen (docs/FDKINDS.md).
#[rustfmt::skip]
const OPTS: &[OptRow] = {
    use libc::*;
    use On::*;
    use Opt::*;
    &[
        (SOL_SOCKET, SO_REUSEADDR, "SO_REUSEADDR", 4, All, BeforeBind),
        (SOL_SOCKET, SO_REUSEPORT, "SO_REUSEPORT", 4, All, BeforeBind),
        (SOL_SOCKET, SO_BINDTODEVICE, "SO_BINDTODEVICE", 16, All, BeforeBind),
        (SOL_SOCKET, SO_KEEPALIVE, "SO_KEEPALIVE", 4, All, After),
        (SOL_SOCKET, SO_BROADCAST, "SO_BROADCAST", 4, All, After),
        (SOL_SOCKET, SO_DONTROUTE, "SO_DONTROUTE", 4, All, After),
        (SOL_SOCKET, SO_OOBINLINE, "SO_OOBINLINE", 4, All, After),
        (SOL_SOCKET, SO_PRIORITY, "SO_PRIORITY", 4, All, After),
        (SOL_SOCKET, SO_RCVLOWAT, "SO_RCVLOWAT", 4, All, After),
        (SOL_SOCKET, SO_RCVBUF, "SO_RCVBUF", 4, All, Unconnected),
        (SOL_SOCKET, SO_SNDBUF, "SO_SNDBUF", 4, All, Unconnected),
        (SOL_SOCKET, SO_LINGER, "SO_LINGER", 8, All, After),
        (SOL_SOCKET, SO_RCVTIMEO_OLD, "SO_RCVTIMEO", 16, All, After),
        (SOL_SOCKET, SO_SNDTIMEO_OLD, "SO_SNDTIMEO", 16, All, After),
        (SOL_SOCKET, SO_TIMESTAMP_OLD, "SO_TIMESTAMP", 4, All, After),
        (SOL_SOCKET, SO_TIMESTAMPNS_OLD, "SO_TIMESTAMPNS", 4, All, After),
        (SOL_SOCKET, SO_TIMESTAMPING_OLD, "SO_TIMESTAMPING", 4, All, Refuse),
        (SOL_SOCKET, SO_MARK, "SO_MARK", 4, All, After),
        (SOL_SOCKET, SO_RXQ_OVFL, "SO_RXQ_OVFL", 4, All, After),
        (SOL_SOCKET, SO_BUSY_POLL, "SO_BUSY_POLL", 4, All, After),
        (SOL_SOCKET, SO_INCOMING_CPU, "SO_INCOMING_CPU", 4, All, After),
        (SOL_SOCKET, SO_ZEROCOPY, "SO_ZEROCOPY", 4, All, After),
        (
            SOL_SOCKET,
            SO_GET_FILTER,
            "a socket filter (SO_ATTACH_FILTER)",
            4,
            All,
            Refuse,
        ),
        (IPPROTO_IP, IP_TOS, "IP_TOS", 4, V4, After),
        (IPPROTO_IP, IP_TTL, "IP_TTL", 4, V4, After),
        (IPPROTO_IP, IP_OPTIONS, "IP_OPTIONS", 40, V4, Refuse),
        (IPPROTO_IP, IP_RECVERR, "IP_RECVERR", 4, V4, After),
        (IPPROTO_IP, IP_PKTINFO, "IP_PKTINFO", 4, V4, After),
        (IPPROTO_IP, IP_RECVTTL, "IP_RECVTTL", 4, V4, After),
        (IPPROTO_IP, IP_RECVTOS, "IP_RECVTOS", 4, V4, After),
        (IPPROTO_IP, IP_MTU_DISCOVER, "IP_MTU_DISCOVER", 4, V4, After),
        (IPPROTO_IP, IP_FREEBIND, "IP_FREEBIND", 4, V4, BeforeBind),
        (IPPROTO_IP, IP_TRANSPARENT, "IP_TRANSPARENT", 4, V4, BeforeBind),
        (IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, "IP_BIND_ADDRESS_NO_PORT", 4, V4, After),
        (IPPROTO_IP, IP_LOCAL_PORT_RANGE, "IP_LOCAL_PORT_RANGE", 4, V4, After),
        (IPPROTO_IP, IP_MULTICAST_TTL, "IP_MULTICAST_TTL", 4, V4Udp, After),
        (IPPROTO_IP, IP_MULTICAST_LOOP, "IP_MULTICAST_LOOP", 4, V4Udp, After),
        (IPPROTO_IP, IP_MULTICAST_ALL, "IP_MULTICAST_ALL", 4, V4Udp, After),
        (IPPROTO_IPV6, IPV6_V6ONLY, "IPV6_V6ONLY", 4, V6, BeforeBind),
        (IPPROTO_IPV6, IPV6_FREEBIND, "IPV6_FREEBIND", 4, V6, BeforeBind),
        (IPPROTO_IPV6, IPV6_TRANSPARENT, "IPV6_TRANSPARENT", 4, V6, BeforeBind),
        (IPPROTO_IPV6, IPV6_UNICAST_HOPS, "IPV6_UNICAST_HOPS", 4, V6, After),
        (IPPROTO_IPV6, IPV6_MULTICAST_HOPS, "IPV6_MULTICAST_HOPS", 4, V6Udp, After),
        (IPPROTO_IPV6, IPV6_MULTICAST_LOOP, "IPV6_MULTICAST_LOOP", 4, V6Udp, After),
        (IPPROTO_IPV6, IPV6_RECVPKTINFO, "IPV6_RECVPKTINFO", 4, V6, After),
        (IPPROTO_IPV6, IPV6_TCLASS, "IPV6_TCLASS", 4, V6, After),
        (IPPROTO_IPV6, IPV6_RECVTCLASS, "IPV6_RECVTCLASS", 4, V6, After),
        (IPPROTO_IPV6, IPV6_RECVERR, "IPV6_RECVERR", 4, V6, After),
        (IPPROTO_IPV6, IPV6_MTU_DISCOVER, "IPV6_MTU_DISCOVER", 4, V6, After),
        (IPPROTO_IPV6, IPV6_RECVHOPLIMIT, "IPV6_RECVHOPLIMIT", 4, V6, After),
        (IPPROTO_TCP, TCP_NODELAY, "TCP_NODELAY", 4, Tcp, After),
        (IPPROTO_TCP, TCP_MAXSEG, "TCP_MAXSEG", 4, Tcp, Unconnected),
        (IPPROTO_TCP, TCP_CORK, "TCP_CORK", 4, Tcp, After),
        (IPPROTO_TCP, TCP_KEEPIDLE, "TCP_KEEPIDLE", 4, Tcp, After),
        (IPPROTO_TCP, TCP_KEEPINTVL, "TCP_KEEPINTVL", 4, Tcp, After),
        (IPPROTO_TCP, TCP_KEEPCNT, "TCP_KEEPCNT", 4, Tcp, After),
        (IPPROTO_TCP, TCP_SYNCNT, "TCP_SYNCNT", 4, Tcp, After),
        (IPPROTO_TCP, TCP_LINGER2, "TCP_LINGER2", 4, Tcp, After),
        (IPPROTO_TCP, TCP_DEFER_ACCEPT, "TCP_DEFER_ACCEPT", 4, Tcp, After),
        (IPPROTO_TCP, TCP_WINDOW_CLAMP, "TCP_WINDOW_CLAMP", 4, Tcp, Unconnected),
        (IPPROTO_TCP, TCP_CONGESTION, "TCP_CONGESTION", 16, Tcp, After),
        (IPPROTO_TCP, TCP_USER_TIMEOUT, "TCP_USER_TIMEOUT", 4, Tcp, After),
        (IPPROTO_TCP, TCP_THIN_LINEAR_TIMEOUTS, "TCP_THIN_LINEAR_TIMEOUTS", 4, Tcp, After),
        (IPPROTO_TCP, TCP_NOTSENT_LOWAT, "TCP_NOTSENT_LOWAT", 4, Tcp, After),
        (IPPROTO_TCP, TCP_FASTOPEN, "TCP_FASTOPEN", 4, Tcp, After),
        (IPPROTO_TCP, TCP_TX_DELAY, "TCP_TX_DELAY", 4, Tcp, After),
        (
            IPPROTO_TCP,
            TCP_ULP,
            "an upper layer protocol (TCP_ULP, e.g. kTLS)",
            16,
            Tcp,
            Refuse,
        ),
        (IPPROTO_UDP, UDP_CORK, "UDP_CORK", 4, Udp, After),
        (IPPROTO_UDP, UDP_SEGMENT, "UDP_SEGMENT", 4, Udp, After),
        (IPPROTO_UDP, UDP_GRO, "UDP_GRO", 4, Udp, After),
    ]
};

fn applies(on: On, family: i32, tcp: bool) -> bool {
    match on {
        On::All => true,
        On::Tcp => tcp,
        On::Udp => !tcp,
        On::V4 => family == libc::AF_INET,
        On::V6 => family == libc::AF_INET6,
        On::V4Udp => family == libc::AF_INET && !tcp,
        On::V6Udp => family == libc::AF_INET6 && !tcp,
    }
}

fn opt_row(level: i32, name: i32) -> Option<&'static OptRow> {
    OPTS.iter().find(|r| r.0 == level && r.1 == name)
}

/// A string option's value up to its NUL (TCP_CONGESTION, TCP_ULP, SO_BINDTODEVICE).
fn trimmed(len: usize, v: Vec<u8>) -> Vec<u8> {
    if len == 16 {
        let end = v.iter().position(|&b| b == 0).unwrap_or(v.len());
        return v[..end].to_vec();
    }
    v
}

/// The number of instructions of the classic BPF filter attached to `s` (0: none).
fn filter_len(s: RawFd) -> io::Result<u32> {
    let mut l: libc::socklen_t = 0;
    let mut none = [0u8; 0];
    // SAFETY: with a length of 0, SO_GET_FILTER writes no instruction, only the count
    // into `l`, a local.
    let r = unsafe {
        libc::getsockopt(
            s,
            libc::SOL_SOCKET,
            SO_GET_FILTER,
            none.as_mut_ptr().cast(),
            &mut l,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(l)
}

/// The options of `s` at another value than on `fresh`, a new socket of the same kind;
/// an error names one that cannot be restored.
fn read_opts(
    s: RawFd,
    fresh: RawFd,
    family: i32,
    tcp: bool,
    connected: bool,
) -> std::result::Result<Vec<SockOpt>, String> {
    let mut out = Vec::new();
    for &(level, name, what, len, on, how) in OPTS {
        if !applies(on, family, tcp) || (how == Opt::Unconnected && connected) {
            continue;
        }
        if level == libc::SOL_SOCKET && name == SO_GET_FILTER {
            // Its length is counted in instructions (a buffer shorter than the filter
            // would be overrun): asked with none, for the number of instructions.
            match filter_len(s) {
                Ok(0) => continue,
                Err(e) if e.raw_os_error() != Some(libc::EACCES) => continue,
                // Instructions, or an eBPF filter (EACCES: it cannot be read back).
                _ => return Err(what.to_string()),
            }
        }
        let Ok(v) = getsockopt_raw(s, level, name, len) else {
            continue;
        };
        let v = trimmed(len, v);
        let d = getsockopt_raw(fresh, level, name, len).map(|d| trimmed(len, d));
        if d.as_ref().is_ok_and(|d| *d == v) {
            continue;
        }
        if how == Opt::Refuse {
            return Err(what.to_string());
        }
        out.push(SockOpt {
            level,
            name,
            value: v,
        });
    }
    Ok(out)
}

/// Set the saved options of the kind `which` (before bind, or after).
pub(super) fn set_opts(s: &OwnedFd, opts: &[SockOpt], before_bind: bool) -> io::Result<()> {
    for o in opts {
        let Some(&(_, _, what, _, _, how)) = opt_row(o.level, o.name) else {
            continue;
        };
        if (how == Opt::BeforeBind) != before_bind {
            continue;
        }
        let mut v = o.value.clone();
        if o.level == libc::SOL_SOCKET && (o.name == libc::SO_RCVBUF || o.name == libc::SO_SNDBUF) {
            let n =
                i32::from_ne_bytes(v.get(..4).and_then(|b| b.try_into().ok()).unwrap_or([0; 4]));
            // The kernel doubles what it is given; beyond net.core.*mem_max only root may.
            let force = if o.name == libc::SO_RCVBUF {
                libc::SO_RCVBUFFORCE
            } else {
                libc::SO_SNDBUFFORCE
            };
            if set_int(s.as_raw_fd(), libc::SOL_SOCKET, force, n / 2).is_err() {
                set_int(s.as_raw_fd(), libc::SOL_SOCKET, o.name, n / 2)
                    .map_err(|e| io::Error::new(e.kind(), format!("setting {what}: {e}")))?;
            }
            continue;
        }
        if o.level == libc::IPPROTO_TCP && o.name == libc::TCP_CONGESTION {
            v.push(0);
        }
        setsockopt_raw(s.as_raw_fd(), o.level, o.name, &v)
            .map_err(|e| io::Error::new(e.kind(), format!("setting {what}: {e}")))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// sock_diag (inet_diag)

/// What inet_diag says of one TCP socket.
#[derive(Debug, Clone, Default)]
struct Diag {
    wqueue: u32,
    shutdown: u8,
}

/// inet_diag of the TCP socket with inode `ino` of family `family`, in our network
/// namespace: from one dump of all of them per process read (the process is frozen;
/// [`forget_diag`] drops it once its descriptors are read), not one per socket.
fn tcp_diag(family: i32, ino: u64) -> io::Result<Option<Diag>> {
    let mut c = diag_cache();
    if let std::collections::btree_map::Entry::Vacant(e) = c.entry(family) {
        e.insert(tcp_diag_all(family)?);
    }
    Ok(c.get(&family).and_then(|m| m.get(&ino)).cloned())
}

type DiagCache = BTreeMap<i32, BTreeMap<u64, Diag>>;

fn diag_cache() -> std::sync::MutexGuard<'static, DiagCache> {
    static CACHE: std::sync::Mutex<DiagCache> = std::sync::Mutex::new(BTreeMap::new());
    CACHE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Once the descriptors of a process are read: its sock_diag dump is not reused.
fn forget_diag(_pid: i32, _fds: &mut [Fd]) -> Result<()> {
    diag_cache().clear();
    Ok(())
}

/// inet_diag of every TCP socket of family `family` in our network namespace, by inode.
fn tcp_diag_all(family: i32) -> io::Result<BTreeMap<u64, Diag>> {
    const NETLINK_SOCK_DIAG: i32 = 4;
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const INET_DIAG_SHUTDOWN: u16 = 8;
    // SAFETY: socket(2) takes integers and returns a new descriptor.
    let nl = super::owned(
        unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_SOCK_DIAG,
            )
        },
        "netlink",
    )
    .map_err(|e| io::Error::other(e.to_string()))?;
    // nlmsghdr (16) + inet_diag_req_v2 (56).
    let mut req = [0u8; 72];
    req[0..4].copy_from_slice(&72u32.to_ne_bytes());
    req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    req[6..8].copy_from_slice(&flags.to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    req[16] = family as u8;
    req[17] = libc::IPPROTO_TCP as u8;
    req[20..24].copy_from_slice(&u32::MAX.to_ne_bytes());
    // No cookie to check.
    req[64..72].copy_from_slice(&[0xff; 8]);
    // SAFETY: send reads `req.len()` bytes of `req`, a local.
    let r = unsafe { libc::send(nl.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 64 << 10];
    let mut found = BTreeMap::new();
    loop {
        // SAFETY: recv writes at most `buf.len()` bytes into `buf`, a live buffer.
        let n = unsafe { libc::recv(nl.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Ok(found);
        }
        let b = &buf[..n as usize];
        let mut at = 0;
        while at + 16 <= b.len() {
            let len = u32::from_ne_bytes(b[at..at + 4].try_into().unwrap()) as usize;
            let ty = u16::from_ne_bytes([b[at + 4], b[at + 5]]);
            if len < 16 || at + len > b.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "inet_diag: bad message",
                ));
            }
            match ty {
                3 => return Ok(found),
                2 => {
                    let err = i32::from_ne_bytes(b[at + 16..at + 20].try_into().unwrap_or([0; 4]));
                    if err != 0 {
                        return Err(io::Error::from_raw_os_error(-err));
                    }
                    return Ok(found);
                }
                SOCK_DIAG_BY_FAMILY if len >= 16 + 72 => {
                    let m = &b[at + 16..at + len];
                    let u = |i: usize| u32::from_ne_bytes(m[i..i + 4].try_into().unwrap());
                    {
                        let mut d = Diag {
                            wqueue: u(60),
                            shutdown: 0,
                        };
                        let mut a = 72;
                        while a + 4 <= m.len() {
                            let alen = u16::from_ne_bytes([m[a], m[a + 1]]) as usize;
                            let aty = u16::from_ne_bytes([m[a + 2], m[a + 3]]);
                            if alen < 4 || a + alen > m.len() {
                                break;
                            }
                            if aty == INET_DIAG_SHUTDOWN && alen > 4 {
                                d.shutdown = m[a + 4];
                            }
                            a += alen.div_ceil(4) * 4;
                        }
                        found.insert(u(68) as u64, d);
                    }
                }
                _ => {}
            }
            at += len.div_ceil(4) * 4;
        }
    }
}

// ---------------------------------------------------------------------------------------
// dump

/// What the tree pass needs of a connected TCP socket that the image does not hold.
#[derive(Clone, Copy)]
struct Flow {
    /// Bytes (and FIN, and for the end that connected its SYN) the socket was given to
    /// send: acked + still in its send queue (SIOCOUTQ).
    sent: u64,
    /// Bytes (and FIN) it received in order.
    received: u64,
}

fn flows() -> std::sync::MutexGuard<'static, BTreeMap<u64, Flow>> {
    static FLOWS: std::sync::Mutex<BTreeMap<u64, Flow>> = std::sync::Mutex::new(BTreeMap::new());
    FLOWS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Every `socket:[INO]` descriptor of family AF_INET or AF_INET6; any other is the
/// unix kind's (which refuses families it does not know).
fn dump_fd(d: &mut Dump) -> Option<Result<FdKind>> {
    let Target::Socket(ino) = d.target else {
        return None;
    };
    let sock = crate::procinfo::pidfd_getfd(d.pid, d.fd).ok()?;
    let family = get_int(sock.as_raw_fd(), libc::SOL_SOCKET, libc::SO_DOMAIN).ok()?;
    if family != libc::AF_INET && family != libc::AF_INET6 {
        return None;
    }
    Some(dump_socket(d.pid, d.fd, ino, &sock, family))
}

fn dump_socket(pid: i32, fd: i32, ino: u64, sock: &OwnedFd, family: i32) -> Result<FdKind> {
    let s = sock.as_raw_fd();
    let unsupported = |kind: String| TraceError::UnsupportedFd { pid, fd, kind };
    let io_err = |what: &str| {
        let what = format!("socket fd {fd}: {what}");
        move |e: io::Error| TraceError::io(pid, what.clone(), e)
    };
    let ty = get_int(s, libc::SOL_SOCKET, libc::SO_TYPE).map_err(io_err("SO_TYPE"))?;
    let protocol =
        get_int(s, libc::SOL_SOCKET, libc::SO_PROTOCOL).map_err(io_err("SO_PROTOCOL"))?;
    let fname = unix::dump::family_name(family);
    let tcp = match (ty, protocol) {
        (libc::SOCK_STREAM, libc::IPPROTO_TCP) => true,
        (libc::SOCK_DGRAM, libc::IPPROTO_UDP) => false,
        (libc::SOCK_STREAM | libc::SOCK_DGRAM, p) => {
            return Err(unsupported(format!(
                "socket ({fname} {}, protocol {p})",
                unix::dump::type_name(ty)
            )))
        }
        _ => {
            return Err(unsupported(format!(
                "socket ({fname} {})",
                unix::dump::type_name(ty)
            )))
        }
    };
    let local = sock_name(s, false)
        .map_err(io_err("getsockname"))?
        .unwrap_or_default();
    let peer = sock_name(s, true).map_err(io_err("getpeername"))?;
    let mut sk = InetSocket {
        ino,
        family,
        sock_type: ty,
        protocol,
        state: if peer.is_some() {
            TCP_ESTABLISHED
        } else {
            TCP_CLOSE
        },
        local,
        peer,
        shutdown: 0,
        backlog: 0,
        queue: Vec::new(),
        sources: Vec::new(),
        opts: Vec::new(),
        peer_ino: 0,
        waiting: false,
    };
    let what = if tcp { "TCP" } else { "UDP" };
    let err = get_int(s, libc::SOL_SOCKET, libc::SO_ERROR).map_err(io_err("SO_ERROR"))?;
    if err != 0 {
        return Err(unsupported(format!(
            "{what} socket {} with a pending error ({})",
            show(&sk.local),
            io::Error::from_raw_os_error(err)
        )));
    }
    let peek_off = get_int(s, libc::SOL_SOCKET, libc::SO_PEEK_OFF).unwrap_or(-1);
    if tcp {
        let info = getsockopt_raw(s, libc::IPPROTO_TCP, libc::TCP_INFO, 232)
            .map_err(io_err("TCP_INFO"))?;
        if info.len() < 136 {
            return Err(unsupported(
                "TCP socket on a kernel without tcpi_bytes_received".into(),
            ));
        }
        sk.state = info[0];
        let u64_at = |i: usize| u64::from_ne_bytes(info[i..i + 8].try_into().unwrap());
        let (acked, received) = (u64_at(120), u64_at(128));
        let d = tcp_diag(family, ino).map_err(io_err("sock_diag (inet_diag)"))?;
        let conn = match &sk.peer {
            Some(p) => format!("{} → {}", show(&sk.local), show(p)),
            None => show(&sk.local),
        };
        match sk.state {
            TCP_LISTEN => {
                let d = d.ok_or_else(|| {
                    unsupported(format!(
                        "listening TCP socket {conn} that sock_diag does not show (in another network namespace?)"
                    ))
                })?;
                sk.backlog = d.wqueue;
            }
            st if connected_state(st) => {
                let d = d.ok_or_else(|| {
                    unsupported(format!(
                        "TCP connection {conn} that sock_diag does not show (in another network namespace?)"
                    ))
                })?;
                sk.shutdown = d.shutdown;
                let outq =
                    ioctl_int(sock.as_raw_fd(), libc::TIOCOUTQ).map_err(io_err("SIOCOUTQ"))?;
                flows().insert(
                    ino,
                    Flow {
                        sent: acked + outq.max(0) as u64,
                        received,
                    },
                );
                let r = peek_stream(sock);
                let back = set_int(s, libc::SOL_SOCKET, libc::SO_PEEK_OFF, peek_off);
                sk.queue = r.map_err(io_err("reading the receive queue"))?;
                back.map_err(io_err("restoring SO_PEEK_OFF"))?;
            }
            TCP_CLOSE => {
                if d.is_some_and(|d| d.shutdown != 0) {
                    return Err(unsupported(format!(
                        "TCP socket {conn} whose connection was closed"
                    )));
                }
            }
            st => {
                return Err(unsupported(format!(
                    "TCP socket {conn} in state {}",
                    state_name(st)
                )))
            }
        }
    } else {
        let r = peek_datagrams(sock);
        let back = set_int(s, libc::SOL_SOCKET, libc::SO_PEEK_OFF, peek_off);
        match r {
            Ok((q, src)) => {
                sk.queue = q;
                sk.sources = src;
            }
            Err(Peek::Io(e)) => return Err(io_err("reading the receive queue")(e)),
            Err(Peek::Refused(why)) => {
                return Err(unsupported(format!(
                    "UDP socket {} with {why}",
                    show(&sk.local)
                )))
            }
        }
        if !sk.queue.is_empty() {
            back.map_err(io_err("restoring SO_PEEK_OFF"))?;
        }
    }
    let fresh = new_socket(family, ty, protocol).map_err(|e| {
        io_err("a new socket to compare options with")(io::Error::other(e.to_string()))
    })?;
    sk.opts = read_opts(
        s,
        fresh.as_raw_fd(),
        family,
        tcp,
        tcp && sk.state != TCP_LISTEN && sk.state != TCP_CLOSE,
    )
    .map_err(|o| unsupported(format!("{what} socket {} with {o} set", show(&sk.local))))?;
    if peek_off >= 0 {
        sk.opts.push(SockOpt {
            level: libc::SOL_SOCKET,
            name: libc::SO_PEEK_OFF,
            value: peek_off.to_ne_bytes().to_vec(),
        });
    }
    Ok(FdKind::InetSocket(sk))
}

/// The bytes of a TCP receive queue, peeked by steps of SO_PEEK_OFF. Leaves SO_PEEK_OFF
/// moved; the caller puts the saved value back.
fn peek_stream(sock: &OwnedFd) -> io::Result<Vec<Vec<u8>>> {
    let s = sock.as_raw_fd();
    let n = ioctl_int(s, libc::FIONREAD)?;
    if n <= 0 {
        return Ok(Vec::new());
    }
    let mut buf = vec![0u8; n as usize];
    let mut off = 0;
    while off < buf.len() {
        set_int(s, libc::SOL_SOCKET, libc::SO_PEEK_OFF, off as i32)?;
        // SAFETY: recv writes at most `buf.len() - off` bytes at `buf[off..]`.
        let r = unsafe {
            libc::recv(
                s,
                buf[off..].as_mut_ptr().cast(),
                buf.len() - off,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            break;
        }
        off += r as usize;
    }
    buf.truncate(off);
    Ok(vec![buf])
}

enum Peek {
    Io(io::Error),
    Refused(String),
}

/// The datagrams of a UDP receive queue with their sources, peeked one by one by moving
/// SO_PEEK_OFF past each (MSG_TRUNC gives each one's length).
fn peek_datagrams(sock: &OwnedFd) -> std::result::Result<(Vec<Vec<u8>>, Vec<InetAddr>), Peek> {
    let s = sock.as_raw_fd();
    let mut queue = Vec::new();
    let mut sources = Vec::new();
    let mut buf = vec![0u8; 65536];
    let mut off: usize = 0;
    loop {
        if queue.len() > MAX_DATAGRAMS {
            return Err(Peek::Refused(format!(
                "more than {MAX_DATAGRAMS} queued datagrams"
            )));
        }
        if let Err(e) = set_int(s, libc::SOL_SOCKET, libc::SO_PEEK_OFF, off as i32) {
            // No SO_PEEK_OFF: only an empty queue can be read.
            if ioctl_int(s, libc::FIONREAD).unwrap_or(1) == 0 && queue.is_empty() {
                return Ok((queue, sources));
            }
            return Err(Peek::Io(e));
        }
        // SAFETY: sockaddr_storage is plain data: all-zero bytes are a valid value.
        let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: msghdr is plain data: all-zero bytes are a valid value.
        let mut m: libc::msghdr = unsafe { std::mem::zeroed() };
        m.msg_name = (&mut ss as *mut libc::sockaddr_storage).cast();
        m.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
        m.msg_iov = &mut iov;
        m.msg_iovlen = 1;
        // SAFETY: every buffer the msghdr points to (`ss`, `buf` through `iov`) lives
        // across the call; no control buffer.
        let n = unsafe {
            libc::recvmsg(
                s,
                &mut m,
                libc::MSG_PEEK | libc::MSG_DONTWAIT | libc::MSG_TRUNC,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => break,
                _ => return Err(Peek::Io(e)),
            }
        }
        let n = n as usize;
        if n > buf.len() {
            buf.resize(n, 0);
            continue;
        }
        let Some(src) = addr_of(&ss) else {
            return Err(Peek::Refused(
                "a queued datagram without a source address".into(),
            ));
        };
        queue.push(buf[..n].to_vec());
        sources.push(src);
        off += n;
    }
    Ok((queue, sources))
}

/// One inet socket of the tree, as the tree pass sees it.
struct Seen {
    pid: i32,
    fd: i32,
    ino: u64,
    tcp: bool,
    state: u8,
    local: InetAddr,
    peer: Option<InetAddr>,
    /// bytes of its receive queue the image holds
    queued: usize,
}

/// Whether a listening socket bound to `l` takes connections to `to`.
/// Both as a socket of the listener's family shows them: an AF_INET listener's
/// connections have IPv4 addresses, an AF_INET6 one's IPv6 ones (an IPv4 client of a
/// dual-stack listener as ::ffff:a.b.c.d), so a listener on 0.0.0.0:P does not take
/// the connections of one on [::]:P.
fn listens_on(l: &InetAddr, to: &InetAddr) -> bool {
    l.port == to.port && l.ip.len() == to.ip.len() && (unspecified(&l.ip) || l.ip == to.ip)
}

/// A /proc/net/tcp address as it is (4 or 16 bytes).
fn raw_addr(p: &(Vec<u8>, u16)) -> InetAddr {
    InetAddr {
        ip: p.0.clone(),
        port: p.1,
        flowinfo: 0,
        scope_id: 0,
    }
}

/// Across the tree: pair the ends of each established TCP connection, find the clients
/// of connections waiting to be accepted, refuse what cannot be rebuilt.
pub fn link(procs: &mut [ProcessState]) -> Result<()> {
    let mut seen = Vec::new();
    for p in procs.iter() {
        for f in &p.fds {
            if let FdKind::InetSocket(s) = &f.kind {
                seen.push(Seen {
                    pid: p.pid,
                    fd: f.fd,
                    ino: s.ino,
                    tcp: s.sock_type == libc::SOCK_STREAM,
                    state: s.state,
                    local: s.local.clone(),
                    peer: s.peer.clone(),
                    queued: s.queue.iter().map(Vec::len).sum(),
                });
            }
        }
    }
    if !seen.iter().any(|s| s.tcp) {
        return Ok(());
    }
    let rows = crate::proc::net_tcp(procs[0].pid)?;
    let flow = flows().clone();
    // ino -> (peer_ino, waiting)
    let mut links: HashMap<u64, (u64, bool)> = HashMap::new();
    // ino -> the bytes its peer's send queue holds beyond its receive queue (TCP_REPAIR)
    let mut extra: HashMap<u64, Vec<u8>> = HashMap::new();
    let mut repaired = std::collections::HashSet::new();
    let mut outside = Vec::new();
    for s in seen.iter().filter(|s| s.tcp && connected_state(s.state)) {
        let Some(peer) = &s.peer else { continue };
        let conn = format!("{} → {}", show(&s.local), show(peer));
        let refuse = |kind: String| TraceError::UnsupportedFd {
            pid: s.pid,
            fd: s.fd,
            kind,
        };
        if let Some(o) = seen.iter().find(|o| {
            o.tcp
                && o.ino != s.ino
                && connected_state(o.state)
                && o.peer.as_ref().is_some_and(|op| norm(op) == norm(&s.local))
                && norm(&o.local) == norm(peer)
        }) {
            if let (Some(a), Some(b)) = (flow.get(&s.ino), flow.get(&o.ino)) {
                // What each end was given to send and the other did not receive. The end
                // that connected counts its SYN as acked too: one of the two is 1 when
                // nothing is missing.
                let da = a.sent as i128 - b.received as i128;
                let db = b.sent as i128 - a.received as i128;
                if da + db > 1 && !repaired.contains(&s.ino) {
                    let read = from_send_queues(s, o).or_else(|e| {
                        if e.raw_os_error() != Some(libc::EPERM) {
                            return Err(e);
                        }
                        drain_and_refill(s, o, da, db).map_err(|d| {
                            io::Error::other(format!("{e}; without it, through the receiver: {d}"))
                        })
                    });
                    match read {
                        Ok((to_o, to_s)) => {
                            extra.insert(o.ino, to_o);
                            extra.insert(s.ino, to_s);
                            repaired.insert(s.ino);
                            repaired.insert(o.ino);
                        }
                        Err(e) => {
                            let (from, to) = if da >= db {
                                (show(&s.local), show(peer))
                            } else {
                                (show(peer), show(&s.local))
                            };
                            return Err(refuse(format!(
                                "TCP connection {conn} with {} bytes that {from} sent still in its send queue, not in the receive queue of {to} (reading them needs TCP_REPAIR, as root: {e})",
                                da + db - 1
                            )));
                        }
                    }
                }
            }
            links.insert(s.ino, (o.ino, false));
            continue;
        }
        // Waiting in the accept queue of a listening socket of the tree?
        let child = rows.iter().find(|r| {
            r.inode == 0
                && matches!(r.state, TCP_ESTABLISHED | TCP_CLOSE_WAIT | TCP_SYN_RECV)
                && norm(&pair_addr(&r.local)) == norm_pair(peer)
                && norm(&pair_addr(&r.remote)) == norm_pair(&s.local)
        });
        let listener = child.and_then(|c| {
            seen.iter().find(|l| {
                l.tcp && l.state == TCP_LISTEN && listens_on(&l.local, &raw_addr(&c.local))
            })
        });
        match (child, listener) {
            (Some(c), Some(l)) => {
                if c.rx_queue > 0 || s.state != TCP_ESTABLISHED {
                    return Err(refuse(format!(
                        "TCP connection {conn} waiting to be accepted, with {} bytes its client sent (they cannot be read without accepting the connection)",
                        c.rx_queue
                    )));
                }
                links.insert(s.ino, (l.ino, true));
            }
            // A peer outside the checkpoint: --tcp-established or --tcp-close say how
            // it is saved (tcp_repair.rs), else it is refused there.
            _ => outside.push(super::tcp_repair::Outside {
                pid: s.pid,
                fd: s.fd,
                ino: s.ino,
                state: s.state,
                local: s.local.clone(),
                peer: peer.clone(),
            }),
        }
    }
    // Every waiting connection of a listening socket of the tree has its client here
    // (each one by itself: listeners sharing a port with SO_REUSEPORT do not tell which
    // of them holds which).
    for l in seen.iter().filter(|l| l.tcp && l.state == TCP_LISTEN) {
        let outside: Vec<String> = rows
            .iter()
            .filter(|r| {
                r.inode == 0
                    && matches!(r.state, TCP_ESTABLISHED | TCP_CLOSE_WAIT | TCP_SYN_RECV)
                    && listens_on(&l.local, &raw_addr(&r.local))
                    && !seen.iter().any(|c| {
                        c.tcp
                            && norm(&c.local) == norm(&pair_addr(&r.remote))
                            && c.peer
                                .as_ref()
                                .is_some_and(|p| norm(p) == norm(&pair_addr(&r.local)))
                    })
            })
            .map(|r| {
                format!(
                    "{} → {}",
                    show(&pair_addr(&r.remote)),
                    show(&pair_addr(&r.local))
                )
            })
            .collect();
        if !outside.is_empty() {
            return Err(TraceError::UnsupportedFd {
                pid: l.pid,
                fd: l.fd,
                kind: format!(
                    "listening TCP socket {} with connections waiting to be accepted from clients outside the checkpoint ({})",
                    show(&l.local),
                    outside.join(", ")
                ),
            });
        }
    }
    let mut kept = std::collections::HashSet::new();
    for p in procs.iter_mut() {
        for f in p.fds.iter_mut() {
            if let FdKind::InetSocket(s) = &mut f.kind {
                if let Some(&(peer, waiting)) = links.get(&s.ino) {
                    s.peer_ino = peer;
                    s.waiting = waiting;
                }
                if !kept.insert(s.ino) {
                    s.queue.clear();
                    s.sources.clear();
                } else if let Some(more) = extra.remove(&s.ino).filter(|m| !m.is_empty()) {
                    // The bytes its peer's send queue still held come after its own.
                    let mut q = s.queue.concat();
                    q.extend_from_slice(&more);
                    s.queue = vec![q];
                }
            }
        }
    }
    flows().clear();
    super::tcp_repair::save(procs, &outside)
}

pub(super) const TCP_REPAIR: i32 = 19;
pub(super) const TCP_REPAIR_QUEUE: i32 = 20;
pub(super) const TCP_QUEUE_SEQ: i32 = 21;
pub(super) const TCP_RECV_QUEUE: i32 = 1;
pub(super) const TCP_SEND_QUEUE: i32 = 2;
pub(super) const TCP_REPAIR_OFF_NO_WP: i32 = -1;

/// What TCP_REPAIR shows of one end: the sequence number after the last byte it was
/// given to send, after the last it received, and its whole send queue (from the
/// oldest byte not acked).
struct Repaired {
    write_seq: u32,
    rcv_nxt: u32,
    sendq: Vec<u8>,
}

/// Read an end in repair mode (CAP_NET_ADMIN in its network namespace: root), through a
/// copy of its descriptor, and leave repair mode without a window probe; its
/// SO_REUSEADDR, which leaving repair mode clears, is set back.
fn repair_read(pid: i32, fd: i32) -> io::Result<Repaired> {
    let c = crate::procinfo::pidfd_getfd(pid, fd)?;
    let s = c.as_raw_fd();
    let reuse = get_int(s, libc::SOL_SOCKET, libc::SO_REUSEADDR)?;
    set_int(s, libc::IPPROTO_TCP, TCP_REPAIR, 1)?;
    let r = (|| {
        set_int(s, libc::IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)?;
        let write_seq = get_int(s, libc::IPPROTO_TCP, TCP_QUEUE_SEQ)? as u32;
        let outq = ioctl_int(s, libc::TIOCOUTQ)?.max(0) as usize;
        let mut sendq = vec![0u8; outq + 1];
        // SAFETY: recv writes at most `sendq.len()` bytes into `sendq`, a live buffer
        // larger than the send queue (SIOCOUTQ counts a queued FIN too, which has no
        // byte).
        let n = unsafe {
            libc::recv(
                s,
                sendq.as_mut_ptr().cast(),
                sendq.len(),
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        sendq.truncate(n as usize);
        set_int(s, libc::IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE)?;
        let rcv_nxt = get_int(s, libc::IPPROTO_TCP, TCP_QUEUE_SEQ)? as u32;
        Ok(Repaired {
            write_seq,
            rcv_nxt,
            sendq,
        })
    })();
    let off = set_int(s, libc::IPPROTO_TCP, TCP_REPAIR, TCP_REPAIR_OFF_NO_WP);
    let back = set_int(s, libc::SOL_SOCKET, libc::SO_REUSEADDR, reuse);
    let r = r?;
    off?;
    back?;
    Ok(r)
}

/// The bytes still in the send queues of the two ends of a connection that are not in
/// the other end's receive queue (each end's sequence numbers, read in repair mode):
/// (what `s` sent and `o` did not receive, what `o` sent and `s` did not receive).
fn from_send_queues(s: &Seen, o: &Seen) -> io::Result<(Vec<u8>, Vec<u8>)> {
    let a = repair_read(s.pid, s.fd)?;
    let b = repair_read(o.pid, o.fd)?;
    let missing = |x: &Repaired, y: &Repaired, x_end: &Seen, y_end: &Seen| {
        let mut n = x.write_seq.wrapping_sub(y.rcv_nxt) as usize;
        // A FIN queued and not received takes a sequence number and no byte.
        let fin_sent = matches!(x_end.state, TCP_FIN_WAIT1 | TCP_FIN_WAIT2);
        let fin_seen = matches!(y_end.state, TCP_CLOSE_WAIT);
        if fin_sent && !fin_seen && n > 0 {
            n -= 1;
        }
        if n > x.sendq.len() {
            return Err(io::Error::other(format!(
                "{n} bytes missing from the receive queue but {} in the send queue",
                x.sendq.len()
            )));
        }
        Ok(x.sendq[x.sendq.len() - n..].to_vec())
    };
    Ok((missing(&a, &b, s, o)?, missing(&b, &a, o, s)?))
}

/// How long draining or refilling a connection waits for bytes that do not move.
const DRAIN_STILL: std::time::Duration = std::time::Duration::from_secs(5);

/// Without TCP_REPAIR (an ordinary user): the bytes still in the send queues of a
/// connection whose two ends are in the frozen tree, got through the receiver. For each
/// direction whose sender holds bytes the receiver lacks, the receiver's queue is read
/// (through our copy of its descriptor: the same socket) until the sender's queue is
/// empty, the kernel moving the rest in as room is made, and every byte read is sent
/// again, in order, from the sender's end, before any process runs again: the receiver
/// reads the same bytes next, and only the byte counts of the connection moved. What
/// was read beyond the receiver's queue as the image holds it is what
/// [`from_send_queues`] gives as root: (what `s` sent and `o` lacks, what `o` sent and
/// `s` lacks). A sender that shut down writing is refused (nothing could be sent
/// again after its FIN), before anything is read.
fn drain_and_refill(s: &Seen, o: &Seen, ds: i128, d_o: i128) -> io::Result<(Vec<u8>, Vec<u8>)> {
    let dirs = [(s, o, ds), (o, s, d_o)];
    let mut ends = Vec::new();
    for (x, y, d) in dirs {
        let xc = crate::procinfo::pidfd_getfd(x.pid, x.fd)?;
        let pending = d >= 1 && ioctl_int(xc.as_raw_fd(), libc::TIOCOUTQ)? > 0;
        if pending && matches!(x.state, TCP_FIN_WAIT1 | TCP_FIN_WAIT2) {
            return Err(io::Error::other(format!(
                "{} shut down writing after them",
                show(&x.local)
            )));
        }
        ends.push((x, y, xc, pending));
    }
    let mut out = Vec::new();
    for (_, y, xc, pending) in ends {
        if !pending {
            out.push(Vec::new());
            continue;
        }
        let yc = crate::procinfo::pidfd_getfd(y.pid, y.fd)?;
        let peek_off = get_int(yc.as_raw_fd(), libc::SOL_SOCKET, libc::SO_PEEK_OFF).unwrap_or(-1);
        let data = drain(&xc, &yc)?;
        refill(&xc, &data).map_err(|e| {
            io::Error::other(format!(
                "{e}: {} bytes read from {} could not all be sent again, that connection of the running process lost them",
                data.len(),
                show(&y.local)
            ))
        })?;
        if peek_off >= 0 {
            set_int(
                yc.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEEK_OFF,
                peek_off,
            )?;
        }
        if data.len() < y.queued {
            return Err(io::Error::other(format!(
                "{} bytes read from {}, whose receive queue held {}",
                data.len(),
                show(&y.local),
                y.queued
            )));
        }
        out.push(data[y.queued..].to_vec());
    }
    let to_s = out.pop().unwrap_or_default();
    let to_o = out.pop().unwrap_or_default();
    Ok((to_o, to_s))
}

/// Reads the receiver `y` until the sender `x` has nothing left in its send queue and
/// `y` nothing in its receive queue: every byte in flight, in order.
fn drain(x: &OwnedFd, y: &OwnedFd) -> io::Result<Vec<u8>> {
    let mut data = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut moved = std::time::Instant::now();
    loop {
        // SAFETY: recv writes at most `buf.len()` bytes into `buf`, a live buffer.
        let n = unsafe {
            libc::recv(
                y.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n > 0 {
            data.extend_from_slice(&buf[..n as usize]);
            moved = std::time::Instant::now();
            continue;
        }
        if n == 0 {
            return Err(io::Error::other("end of file while reading the receiver"));
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => {}
            _ => return Err(e),
        }
        if ioctl_int(x.as_raw_fd(), libc::TIOCOUTQ)? <= 0
            && ioctl_int(y.as_raw_fd(), libc::FIONREAD)? <= 0
        {
            return Ok(data);
        }
        if moved.elapsed() > DRAIN_STILL {
            return Err(io::Error::other(format!(
                "the sender's queue did not move for {DRAIN_STILL:?}"
            )));
        }
        poll_for(y.as_raw_fd(), libc::POLLIN, 10)?;
    }
}

/// Sends `data` from `x`, waiting while the receiver takes it in; if the send queue
/// stays full, its buffer is made larger once (by what is left to send).
fn refill(x: &OwnedFd, data: &[u8]) -> io::Result<()> {
    let mut done = 0;
    let mut moved = std::time::Instant::now();
    let mut grown = false;
    while done < data.len() {
        // SAFETY: send reads `data.len() - done` bytes of `data`, alive across the call.
        let n = unsafe {
            libc::send(
                x.as_raw_fd(),
                data[done..].as_ptr().cast(),
                data.len() - done,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n >= 0 {
            done += n as usize;
            moved = std::time::Instant::now();
            continue;
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => {}
            _ => return Err(e),
        }
        if !grown && moved.elapsed() > std::time::Duration::from_millis(200) {
            let have = get_int(x.as_raw_fd(), libc::SOL_SOCKET, libc::SO_SNDBUF)?;
            let want = (have as usize / 2 + (data.len() - done)).min(i32::MAX as usize / 2);
            set_int(
                x.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                want as i32,
            )?;
            grown = true;
            moved = std::time::Instant::now();
        } else if moved.elapsed() > DRAIN_STILL {
            return Err(io::Error::other(format!(
                "the send queue stayed full for {DRAIN_STILL:?}"
            )));
        }
        poll_for(x.as_raw_fd(), libc::POLLOUT, 10)?;
    }
    Ok(())
}

/// poll(2) one descriptor for `events`, `timeout_ms` at most.
fn poll_for(fd: RawFd, events: i16, timeout_ms: i32) -> io::Result<()> {
    let mut p = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // SAFETY: poll(2) on one `pollfd`, a local.
    if unsafe { libc::poll(&mut p, 1, timeout_ms) } < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(())
}

/// A /proc/net/tcp address as [`norm`] gives it (IPv4 mapped into IPv6 as 4 bytes).
fn norm_pair(a: &InetAddr) -> (Vec<u8>, u16) {
    norm(a)
}

fn pair_addr(p: &(Vec<u8>, u16)) -> InetAddr {
    let a = InetAddr {
        ip: p.0.clone(),
        port: p.1,
        flowinfo: 0,
        scope_id: 0,
    };
    InetAddr {
        ip: norm(&a).0,
        ..a
    }
}

/// Before the processes `pids` are killed (`ckpt dump --kill`, the coordinator's kill):
/// their connected TCP sockets get SO_LINGER {on, 0}, so that the kill closes them with
/// a reset, leaving no TIME_WAIT behind to hold the ports a restore binds again (a
/// TIME_WAIT socket without SO_REUSEADDR keeps even a bind with SO_REUSEADDR off its
/// port for 60 s). Best effort: a socket that cannot be reached is left as it is.
pub fn abort_on_kill(pids: &[i32]) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `linger` is plain data, alive for the whole function; its bytes are only
    // read.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            (&linger as *const libc::linger).cast::<u8>(),
            std::mem::size_of::<libc::linger>(),
        )
    };
    for &pid in pids {
        let Ok(fds) = crate::proc::fd_numbers(pid) else {
            continue;
        };
        for fd in fds {
            let Ok(Some(crate::proc::FdTarget::Socket(ino))) = crate::proc::fd_target(pid, fd)
            else {
                continue;
            };
            // Saved the TCP_REPAIR way: it closes in repair mode, sending nothing.
            if super::tcp_repair::repaired(ino) {
                continue;
            }
            let Ok(c) = crate::procinfo::pidfd_getfd(pid, fd) else {
                continue;
            };
            let s = c.as_raw_fd();
            let inet = matches!(
                get_int(s, libc::SOL_SOCKET, libc::SO_DOMAIN),
                Ok(libc::AF_INET | libc::AF_INET6)
            );
            let tcp =
                get_int(s, libc::SOL_SOCKET, libc::SO_PROTOCOL).ok() == Some(libc::IPPROTO_TCP);
            if !inet || !tcp {
                continue;
            }
            let state = getsockopt_raw(s, libc::IPPROTO_TCP, libc::TCP_INFO, 8)
                .ok()
                .and_then(|i| i.first().copied());
            if state.is_some_and(connected_state) {
                let _ = setsockopt_raw(s, libc::SOL_SOCKET, libc::SO_LINGER, bytes);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// restore

struct Rec {
    pid: i32,
    fd: RawFd,
    flags: i32,
    s: InetSocket,
}

impl Rec {
    fn what(&self) -> String {
        let s = &self.s;
        let conn = match &s.peer {
            Some(p) => format!("{} → {}", show(&s.local), show(p)),
            None => show(&s.local),
        };
        format!(
            "process {} fd {} ({} {conn})",
            self.pid,
            self.fd,
            proto_name(s)
        )
    }
    fn tcp(&self) -> bool {
        self.s.sock_type == libc::SOCK_STREAM
    }
}

/// The inet sockets of the tree being restored, by saved inode.
#[derive(Default)]
pub struct Inets {
    recs: BTreeMap<u64, Rec>,
    /// Stand-in socket inode -> saved inode.
    standins: HashMap<u64, u64>,
}

fn restore_fd(pid: i32, fd: &Fd, shared: &mut Shared) -> Option<RestoreResult<OwnedFd>> {
    let FdKind::InetSocket(s) = &fd.kind else {
        return None;
    };
    Some(shared.part::<Inets>().add(pid, fd, s))
}

fn finish(shared: &mut Shared) -> RestoreResult<()> {
    shared.part::<Inets>().finish()
}

fn ino_of(s: &OwnedFd) -> RestoreResult<u64> {
    // SAFETY: `libc::stat` is plain data: all-zero bytes are a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    cvt(
        // SAFETY: fstat writes one `struct stat` into `st`, a local of that type.
        unsafe { libc::fstat(s.as_raw_fd(), &mut st) },
        "stat of a socket",
    )?;
    Ok(st.st_ino)
}

impl Inets {
    fn add(&mut self, pid: i32, fd: &Fd, s: &InetSocket) -> RestoreResult<OwnedFd> {
        if !matches!(
            (s.sock_type, s.family),
            (
                libc::SOCK_STREAM | libc::SOCK_DGRAM,
                libc::AF_INET | libc::AF_INET6
            )
        ) {
            bail!(
                "process {pid} fd {}: the image holds an inet socket of unknown kind",
                fd.fd
            );
        }
        let standin = new_socket(s.family, s.sock_type, 0)?;
        self.standins.insert(ino_of(&standin)?, s.ino);
        let r = self.recs.entry(s.ino).or_insert_with(|| Rec {
            pid,
            fd: fd.fd,
            flags: fd.flags,
            s: s.clone(),
        });
        if r.s.queue.is_empty() && !s.queue.is_empty() {
            r.s.queue = s.queue.clone();
            r.s.sources = s.sources.clone();
        }
        Ok(standin)
    }

    fn finish(&mut self) -> RestoreResult<()> {
        if self.recs.is_empty() {
            return Ok(());
        }
        let recs = std::mem::take(&mut self.recs);
        let mut b = Builder {
            recs: &recs,
            made: HashMap::new(),
        };
        b.build()?;
        unix::restore::replace_standins(&self.standins, &b.made)?;
        b.fill_and_settle()?;
        self.standins.clear();
        Ok(())
    }
}

struct Builder<'a> {
    recs: &'a BTreeMap<u64, Rec>,
    made: HashMap<u64, OwnedFd>,
}

/// A socket for `r`, its before-bind options set, bound to its saved address (with
/// SO_REUSEADDR for the moment).
fn bound_socket(r: &Rec, addr: &InetAddr) -> RestoreResult<OwnedFd> {
    let s = new_socket(r.s.family, r.s.sock_type, 0)?;
    set_opts(&s, &r.s.opts, true).with_context(|| r.what())?;
    let _ = set_int(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1);
    bind(&s, addr, r.s.family)
        .with_context(|| format!("{}: binding to {}", r.what(), show(addr)))?;
    Ok(s)
}

pub(super) fn accept(l: &OwnedFd) -> io::Result<OwnedFd> {
    loop {
        // SAFETY: accept4 on our own listening socket, no address wanted.
        let a = unsafe {
            libc::accept4(
                l.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if a >= 0 {
            // SAFETY: `a` was just returned by a successful accept4: a fresh descriptor.
            return Ok(unsafe { OwnedFd::from_raw_fd(a) });
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

pub(super) fn listen(s: &OwnedFd, backlog: u32) -> io::Result<()> {
    // SAFETY: listen on our own socket; integers only.
    if unsafe { libc::listen(s.as_raw_fd(), backlog.min(i32::MAX as u32) as i32) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Send all of `data` without blocking.
pub(super) fn send_all(
    s: &OwnedFd,
    data: &[u8],
    to: Option<(&InetAddr, i32)>,
) -> RestoreResult<()> {
    let mut done = 0;
    let dest = to.map(|(a, f)| sockaddr(a, f));
    while done < data.len() || (data.is_empty() && done == 0 && to.is_some()) {
        let (p, l) = match &dest {
            Some((ss, l)) => ((ss as *const libc::sockaddr_storage).cast(), *l),
            None => (std::ptr::null(), 0),
        };
        // SAFETY: sendto reads `data.len() - done` bytes of `data` and `l` bytes of the
        // destination `ss`, both alive across the call.
        let n = unsafe {
            libc::sendto(
                s.as_raw_fd(),
                data[done..].as_ptr().cast(),
                data.len() - done,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                p,
                l,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => bail!("the receive queue is full"),
                _ => return Err(e).context("sending queued data"),
            }
        }
        if to.is_some() {
            return Ok(());
        }
        done += n as usize;
    }
    Ok(())
}

/// How long [`settle`] waits at most for the send queues of a restore to empty.
const SETTLE_MAX: std::time::Duration = std::time::Duration::from_secs(2);
/// How long it waits for a send queue that does not move any more.
const SETTLE_STILL: std::time::Duration = std::time::Duration::from_millis(100);

/// Waits until the send queues (SIOCOUTQ) of `socks` are empty: on loopback the
/// kernel moves the refilled bytes into the receivers' queues at once, unless a
/// receiver's buffer is full, where the rest waits in the sender's queue (as bytes the
/// receiver had no room for did before the checkpoint) until the receiver reads. So one
/// deadline for all of them, and no wait once no queue has moved for [`SETTLE_STILL`]
/// (it was 2 s for each such connection: 10 s for a redis-server whose 5 clients had
/// filled its buffers).
fn settle(socks: &[RawFd]) {
    let outq = || -> Vec<i32> {
        socks
            .iter()
            .map(|&s| ioctl_int(s, libc::TIOCOUTQ).unwrap_or(0).max(0))
            .collect()
    };
    let start = std::time::Instant::now();
    let mut last = outq();
    let mut moved = start;
    while last.iter().any(|&n| n > 0) {
        let now = std::time::Instant::now();
        if now - start >= SETTLE_MAX || now - moved >= SETTLE_STILL {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
        let q = outq();
        if q != last {
            last = q;
            moved = std::time::Instant::now();
        }
    }
}

/// The address to send to for a socket bound to `a`: itself, or loopback for a
/// wildcard address.
fn reachable(a: &InetAddr, family: i32) -> InetAddr {
    if !unspecified(&a.ip) {
        return a.clone();
    }
    InetAddr {
        ip: if family == libc::AF_INET {
            Ipv4Addr::LOCALHOST.octets().to_vec()
        } else {
            Ipv6Addr::LOCALHOST.octets().to_vec()
        },
        ..a.clone()
    }
}

impl Builder<'_> {
    fn build(&mut self) -> RestoreResult<()> {
        let recs = self.recs;
        for (&ino, r) in recs
            .iter()
            .filter(|(_, r)| r.tcp() && r.s.state == TCP_LISTEN)
        {
            let s = bound_socket(r, &r.s.local)?;
            listen(&s, r.s.backlog).with_context(|| format!("{}: listen", r.what()))?;
            // Its options now, so that the connections rebuilt through it inherit them
            // (buffer sizes, TCP_NODELAY...) as the accepted sockets did; not
            // TCP_DEFER_ACCEPT, which would hold those accepts until data comes.
            let early: Vec<SockOpt> =
                r.s.opts
                    .iter()
                    .filter(|o| !(o.level == libc::IPPROTO_TCP && o.name == libc::TCP_DEFER_ACCEPT))
                    .cloned()
                    .collect();
            set_opts(&s, &early, false).with_context(|| r.what())?;
            self.made.insert(ino, s);
        }
        for (&ino, r) in recs
            .iter()
            .filter(|(_, r)| !r.tcp() || r.s.state == TCP_CLOSE)
        {
            let s = if r.s.local.port != 0 {
                bound_socket(r, &r.s.local)?
            } else {
                let s = new_socket(r.s.family, r.s.sock_type, 0)?;
                set_opts(&s, &r.s.opts, true).with_context(|| r.what())?;
                s
            };
            self.made.insert(ino, s);
        }
        // Established pairs, once each.
        for (&ino, r) in recs
            .iter()
            .filter(|(_, r)| r.tcp() && connected_state(r.s.state) && !r.s.waiting)
        {
            if self.made.contains_key(&ino) {
                continue;
            }
            let p = recs
                .get(&r.s.peer_ino)
                .with_context(|| format!("{}: its peer is not in the image", r.what()))?;
            self.pair(ino, r, r.s.peer_ino, p)
                .with_context(|| format!("{}: rebuilding the connection", r.what()))?;
        }
        // Clients of connections waiting to be accepted, in the order of their inodes.
        for (&ino, r) in recs.iter().filter(|(_, r)| r.tcp() && r.s.waiting) {
            let l = recs.get(&r.s.peer_ino).with_context(|| {
                format!("{}: its listening socket is not in the image", r.what())
            })?;
            let to =
                r.s.peer
                    .clone()
                    .unwrap_or_else(|| reachable(&l.s.local, l.s.family));
            let s = bound_socket(r, &r.s.local)?;
            connect(&s, &to, r.s.family)
                .with_context(|| format!("{}: connecting again (not accepted)", r.what()))?;
            self.made.insert(ino, s);
        }
        Ok(())
    }

    /// The connection between `a` and `b`: the end on a listening socket's address
    /// (else `a`) is accepted from that listener (else from a temporary one bound to its
    /// address), the other connects from its own address.
    fn pair(&mut self, ia: u64, a: &Rec, ib: u64, b: &Rec) -> RestoreResult<()> {
        let listener_of = |r: &Rec| {
            self.recs
                .iter()
                .find(|(_, l)| {
                    l.tcp() && l.s.state == TCP_LISTEN && listens_on(&l.s.local, &r.s.local)
                })
                .map(|(&i, _)| i)
        };
        let (server, client) = match (listener_of(a), listener_of(b)) {
            (None, Some(_)) => ((ib, b), (ia, a)),
            _ => ((ia, a), (ib, b)),
        };
        let temp;
        let l = match listener_of(server.1) {
            Some(l) => &self.made[&l],
            None => {
                temp = bound_socket(server.1, &server.1.s.local)?;
                listen(&temp, 1).context("listen")?;
                &temp
            }
        };
        let c = bound_socket(client.1, &client.1.s.local)?;
        connect(&c, &server.1.s.local, client.1.s.family).with_context(|| {
            format!(
                "connecting from {} to {}",
                show(&client.1.s.local),
                show(&server.1.s.local)
            )
        })?;
        // A client from outside may connect to the restored listener meanwhile (a
        // program polling for the restored server): its connection is closed (it reads
        // end of file) and ours is taken after it. This used to fail the restore.
        let mut strays = 0;
        let acc = loop {
            let acc = accept(l).context("accepting")?;
            let got = sock_name(acc.as_raw_fd(), true)?.unwrap_or_default();
            if norm(&got) == norm(&client.1.s.local) {
                break acc;
            }
            strays += 1;
            if strays > 1024 {
                bail!(
                    "the listener accepted connections from {} and others instead of {}",
                    show(&got),
                    show(&client.1.s.local)
                );
            }
            eprintln!(
                "ckpt: warning: a connection from {} to {} came while the restore rebuilt its connections; it was closed",
                show(&got),
                show(&server.1.s.local)
            );
        };
        self.made.insert(server.0, acc);
        self.made.insert(client.0, c);
        Ok(())
    }

    fn fill_and_settle(&mut self) -> RestoreResult<()> {
        let recs = self.recs;
        // TCP queues: sent by the other end.
        for r in recs.values().filter(|r| r.tcp() && !r.s.queue.is_empty()) {
            let from = self
                .made
                .get(&r.s.peer_ino)
                .with_context(|| format!("{}: no peer to refill its receive queue", r.what()))?;
            let data = r.s.queue.concat();
            let need = (data.len() * 2 + (256 << 10)).min(i32::MAX as usize) as i32;
            if get_int(from.as_raw_fd(), libc::SOL_SOCKET, libc::SO_SNDBUF).unwrap_or(0) < need {
                let _ = set_int(
                    from.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_SNDBUFFORCE,
                    need / 2,
                )
                .or_else(|_| {
                    set_int(
                        from.as_raw_fd(),
                        libc::SOL_SOCKET,
                        libc::SO_SNDBUF,
                        need / 2,
                    )
                });
            }
            send_all(from, &data, None)
                .with_context(|| format!("{}: refilling its receive queue", r.what()))?;
        }
        // UDP queues: from each datagram's source.
        let mut temps: HashMap<(Vec<u8>, u16), OwnedFd> = HashMap::new();
        for r in recs.values().filter(|r| !r.tcp() && !r.s.queue.is_empty()) {
            let to = reachable(&r.s.local, r.s.family);
            for (m, src) in r.s.queue.iter().zip(&r.s.sources) {
                let own = recs
                    .iter()
                    .find(|(_, o)| {
                        !o.tcp()
                            && o.s.local.port == src.port
                            && (unspecified(&o.s.local.ip) || norm(&o.s.local).0 == norm(src).0)
                    })
                    .map(|(&i, _)| i);
                let sender = match own {
                    Some(o) => &self.made[&o],
                    None => {
                        let key = norm(src);
                        if !temps.contains_key(&key) {
                            let fam = if src.ip.len() == 4
                                || v4_of(&src.ip).is_some() && r.s.family == libc::AF_INET
                            {
                                libc::AF_INET
                            } else {
                                r.s.family
                            };
                            let t = new_socket(fam, libc::SOCK_DGRAM, 0)?;
                            let _ = set_int(t.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1);
                            bind(&t, src, fam).with_context(|| {
                                format!(
                                    "{}: binding to {}, the source of a queued datagram (the datagram cannot be sent again from its source)",
                                    r.what(),
                                    show(src)
                                )
                            })?;
                            temps.insert(key.clone(), t);
                        }
                        &temps[&key]
                    }
                };
                let fam = get_int(sender.as_raw_fd(), libc::SOL_SOCKET, libc::SO_DOMAIN)
                    .unwrap_or(r.s.family);
                send_all(sender, m, Some((&to, fam)))
                    .with_context(|| format!("{}: refilling its receive queue", r.what()))?;
            }
        }
        drop(temps);
        // Connected UDP sockets connect once every datagram is in.
        for (&ino, r) in recs.iter().filter(|(_, r)| !r.tcp()) {
            if let Some(p) = &r.s.peer {
                connect(&self.made[&ino], p, r.s.family)
                    .with_context(|| format!("{}: connecting", r.what()))?;
            }
        }
        // Wait (a little) until every byte sent is in its receiver's queue.
        let senders: Vec<RawFd> = recs
            .iter()
            .filter(|(_, r)| r.tcp() && connected_state(r.s.state))
            .map(|(ino, _)| self.made[ino].as_raw_fd())
            .collect();
        settle(&senders);
        for (&ino, r) in recs
            .iter()
            .filter(|(_, r)| r.tcp() && connected_state(r.s.state))
        {
            let s = &self.made[&ino];
            let peer_shut = recs.get(&r.s.peer_ino).map_or(0, |p| p.s.shutdown);
            if r.s.shutdown & SEND_SHUTDOWN != 0 {
                cvt(
                    // SAFETY: shutdown on our own socket; integers only.
                    unsafe { libc::shutdown(s.as_raw_fd(), libc::SHUT_WR) },
                    "shutdown",
                )
                .with_context(|| r.what())?;
            }
            if r.s.shutdown & RCV_SHUTDOWN != 0 && peer_shut & SEND_SHUTDOWN == 0 && !r.s.waiting {
                cvt(
                    // SAFETY: shutdown on our own socket; integers only.
                    unsafe { libc::shutdown(s.as_raw_fd(), libc::SHUT_RD) },
                    "shutdown",
                )
                .with_context(|| r.what())?;
            }
        }
        for (&ino, r) in recs.iter() {
            let s = &self.made[&ino];
            if !r
                .s
                .opts
                .iter()
                .any(|o| o.level == libc::SOL_SOCKET && o.name == libc::SO_REUSEADDR)
            {
                let _ = set_int(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 0);
            }
            set_opts(s, &r.s.opts, false).with_context(|| r.what())?;
            if let Some(o) =
                r.s.opts
                    .iter()
                    .find(|o| o.level == libc::SOL_SOCKET && o.name == libc::SO_PEEK_OFF)
            {
                setsockopt_raw(s.as_raw_fd(), o.level, o.name, &o.value)
                    .with_context(|| format!("{}: setting SO_PEEK_OFF", r.what()))?;
            }
            set_status_flags(s, r.flags).with_context(|| r.what())?;
        }
        Ok(())
    }
}

fn describe(kind: &FdKind) -> Option<String> {
    let FdKind::InetSocket(s) = kind else {
        return None;
    };
    let conn = match &s.peer {
        Some(p) => format!("{} → {}", show(&s.local), show(p)),
        None => show(&s.local),
    };
    let state = if s.sock_type == libc::SOCK_STREAM {
        state_name(s.state)
    } else if s.peer.is_some() {
        "connected"
    } else {
        "unconnected"
    };
    Some(format!(
        "{} socket:[{}] {conn} {state}, {} bytes queued",
        proto_name(s),
        s.ino,
        s.queue.iter().map(Vec::len).sum::<usize>()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(ip: &[u8], port: u16) -> InetAddr {
        InetAddr {
            ip: ip.to_vec(),
            port,
            flowinfo: 0,
            scope_id: 0,
        }
    }

    const MAPPED: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1];

    #[test]
    fn addresses_compare_across_families() {
        assert_eq!(norm(&a(&MAPPED, 80)), norm(&a(&[127, 0, 0, 1], 80)));
        assert_ne!(
            norm(&a(&Ipv6Addr::LOCALHOST.octets(), 80)),
            norm(&a(&[127, 0, 0, 1], 80))
        );
        assert_eq!(show(&a(&[127, 0, 0, 1], 80)), "127.0.0.1:80");
        assert_eq!(show(&a(&Ipv6Addr::LOCALHOST.octets(), 80)), "[::1]:80");
        // A listener takes what its own family shows.
        assert!(listens_on(&a(&[0; 4], 80), &a(&[127, 0, 0, 1], 80)));
        assert!(listens_on(&a(&[0; 16], 80), &a(&MAPPED, 80)));
        assert!(!listens_on(
            &a(&[0; 4], 80),
            &a(&Ipv6Addr::LOCALHOST.octets(), 80)
        ));
        assert!(!listens_on(
            &a(&[127, 0, 0, 1], 80),
            &a(&[127, 0, 0, 2], 80)
        ));
        assert!(!listens_on(&a(&[0; 4], 81), &a(&[127, 0, 0, 1], 80)));
    }

    #[test]
    fn sockaddrs_round_trip() {
        for (x, fam) in [
            (a(&[127, 0, 0, 1], 8080), libc::AF_INET),
            (a(&Ipv6Addr::LOCALHOST.octets(), 443), libc::AF_INET6),
            (a(&MAPPED, 22), libc::AF_INET6),
        ] {
            let (ss, _) = sockaddr(&x, fam);
            assert_eq!(addr_of(&ss).unwrap(), x);
        }
        // An IPv4 address for an AF_INET6 socket is mapped.
        let (ss, _) = sockaddr(&a(&[127, 0, 0, 1], 1), libc::AF_INET6);
        assert_eq!(addr_of(&ss).unwrap().ip, MAPPED.to_vec());
    }

    #[test]
    fn every_option_has_one_row() {
        for (i, r) in OPTS.iter().enumerate() {
            assert!(
                !OPTS[..i].iter().any(|o| o.0 == r.0 && o.1 == r.1),
                "{} twice",
                r.2
            );
        }
    }
}
