//! Restoring AF_UNIX sockets (what the image holds: `dump.rs`).
//!
//! Sockets are connected to each other across the whole tree, so they are built in two
//! steps. While the descriptors of each process are prepared, every socket gets a
//! stand-in (a fresh socket that only reserves descriptor numbers); once every process is
//! prepared, [`Sockets::finish`] builds the real sockets in an order that works and puts
//! each in place of its stand-in (dup3 onto every descriptor of ours that names the
//! stand-in), so a description shared between processes stays shared.
//!
//! How each socket is rebuilt:
//! - listening: socket, bind to its name (a stale socket file at that path that no live
//!   socket uses is removed first), listen with the saved backlog;
//! - unconnected: socket, bound to its name if it had one;
//! - a connected stream/seqpacket pair inside the checkpoint with one end accepted from
//!   a listening socket of the checkpoint (it has the listener's name): a new client
//!   (bound first to the client's own name, if any) connects to the restored listener,
//!   which accepts; both ends get their names back and the accept queue stays empty.
//!   With no such listener, a temporary one bound to the accepted end's name does the
//!   same if that name is free (else the name is lost, with a warning);
//! - any other connected pair inside the checkpoint: socketpair(), then each end is bound
//!   to its own name, if it had one (bind works on a connected socket);
//! - the client of a connection that was waiting to be accepted: once every accepted
//!   end is rebuilt, it connects again to the restored listener (without blocking),
//!   and stays in its accept queue; clients connect in the order of their inodes;
//! - a datagram socket connected to a socket of the checkpoint that is connected
//!   elsewhere: connect() by name once every socket is bound;
//! - connected to a peer outside the checkpoint, or to a peer closed since: one end of a
//!   socketpair whose other end is closed once the queued data is in (reads return that
//!   data then EOF; writes fail with EPIPE or ECONNREFUSED), with a warning when the
//!   peer was still open (docs/KERNEL.md: descriptors leading outside the job).
//!
//! A path name whose socket file was gone at checkpoint time (unlinked, or its
//! directory deleted or moved) is given back by a bind in a place made bindable for a
//! moment (see `bind_detached`); the socket file stays until every connection and
//! queue is rebuilt, then it goes again with whatever was made for it.
//!
//! Queued data is written through the socket's (restored or stand-in) peer so that it
//! lands in its receive queue, one send per datagram or record. Datagrams queued on an
//! unconnected socket are sent from a socket bound to their sender's name where one can
//! be had (a socket of the checkpoint, or a temporary one for a free abstract name);
//! otherwise from an unnamed socket, with a warning. Queues are sent once the real
//! sockets stand in place of their stand-ins, so that a message carrying descriptors
//! (SCM_RIGHTS, `Attr::UnixInFlight`: description ids, whose descriptors the front end
//! hands over with [`Sockets::give_desc`]) carries the real ones, sockets included.
//! Every send is MSG_DONTWAIT and every connect does not wait: a full queue is an error,
//! never a hang. Shutdown state, socket options
//! (SO_PASSCRED last, so that nothing autobinds) and descriptor flags come last.
//!
//! Limits: SO_PEERCRED of a restored connection names the restorer, which created it,
//! not the original peer process. A connected pair whose ends both had names of their own
//! (bound sockets, not accepted ones) gets them back by bind, so the restored sockets
//! hold those names (a later bind of the same name fails), as the originals did only if
//! they had bound them themselves.

use super::dump::{diag_all, display_name, type_name};
use crate::fd::{cvt, set_status_flags, Context, RestoreError, RestoreResult};
use crate::state::{Attr, Fd, FdKind, UnixInFlight, UnixOptions, UnixSocketFile, UnixState};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{CString, OsStr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

type Result<T> = RestoreResult<T>;

const RCV_SHUTDOWN: u8 = 1;
const SEND_SHUTDOWN: u8 = 2;
const SO_PASSPIDFD: i32 = 76;

/// One saved socket, from the first descriptor of it met.
struct Rec {
    pid: i32,
    fd: RawFd,
    flags: i32,
    ty: i32,
    state: UnixState,
    name: Vec<u8>,
    file: Option<UnixSocketFile>,
    peer: u64,
    peer_name: Vec<u8>,
    /// With `peer` not among the sockets: the peer is a connection waiting in the
    /// accept queue of the listening socket named `peer_name`.
    peer_in_checkpoint: bool,
    shutdown: u8,
    backlog: u32,
    queue: Vec<Vec<u8>>,
    senders: Vec<Vec<u8>>,
    opts: UnixOptions,
}

impl Rec {
    fn dir(&self) -> &str {
        self.file.as_ref().map(|f| f.dir.as_str()).unwrap_or("")
    }
    fn what(&self) -> String {
        format!(
            "process {} fd {} (unix {} socket {})",
            self.pid,
            self.fd,
            type_name(self.ty),
            display_name(&self.name)
        )
    }
}

/// The unix sockets of the tree being restored, by saved inode.
#[derive(Default)]
pub struct Sockets {
    recs: BTreeMap<u64, Rec>,
    /// Stand-in socket inode -> saved inode.
    standins: HashMap<u64, u64>,
    /// Descriptors in flight, by the saved inode of the socket whose queue holds them.
    in_flight: HashMap<u64, Vec<UnixInFlight>>,
    /// Our descriptor for each open file description in flight, by its id.
    descs: HashMap<u32, OwnedFd>,
}

fn new_socket(ty: i32) -> Result<OwnedFd> {
    // SAFETY: socket(2) returns a descriptor we own.
    let s = cvt(
        unsafe { libc::socket(libc::AF_UNIX, ty | libc::SOCK_CLOEXEC, 0) },
        "creating a unix socket",
    )?;
    // SAFETY: `s` was just returned by a successful socket(2) (cvt rejects negatives): a
    // fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(s) })
}

fn socketpair(ty: i32) -> Result<(OwnedFd, OwnedFd)> {
    let mut p = [0; 2];
    cvt(
        // SAFETY: socketpair(2) writes exactly two c_ints into `p`, a local `[c_int; 2]`
        // that outlives the call.
        unsafe { libc::socketpair(libc::AF_UNIX, ty | libc::SOCK_CLOEXEC, 0, p.as_mut_ptr()) },
        "creating a unix socket pair",
    )?;
    // SAFETY: socketpair succeeded (cvt returned Ok), so `p[0]` and `p[1]` are two fresh
    // descriptors that nothing else owns; each OwnedFd takes sole ownership of one.
    Ok(unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) })
}

fn sockaddr(name: &[u8]) -> Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: sockaddr_un is plain data.
    let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    a.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let path = name.first().is_some_and(|&c| c != 0);
    let len = name.len() + usize::from(path);
    if name.is_empty() || len > a.sun_path.len() {
        bail!("bad unix socket name {}", display_name(name));
    }
    for (d, s) in a.sun_path.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    let off = std::mem::size_of::<libc::sa_family_t>();
    Ok((a, (off + len) as libc::socklen_t))
}

fn bind_raw(s: &OwnedFd, name: &[u8]) -> std::io::Result<()> {
    let (a, len) = sockaddr(name).map_err(|e| std::io::Error::other(e.to_string()))?;
    // SAFETY: bind with a local address.
    let r = unsafe { libc::bind(s.as_raw_fd(), (&a as *const libc::sockaddr_un).cast(), len) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// connect() without waiting: a unix stream connect waits while the listener's accept
/// queue is full; here that is an error (nothing would drain it).
fn connect(s: &OwnedFd, name: &[u8]) -> Result<()> {
    let (a, len) = sockaddr(name)?;
    // SAFETY: fcntl on our own socket, integers only.
    let fl = unsafe { libc::fcntl(s.as_raw_fd(), libc::F_GETFL) };
    if fl >= 0 && fl & libc::O_NONBLOCK == 0 {
        // SAFETY: as above.
        unsafe { libc::fcntl(s.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK) };
    }
    let r = loop {
        // SAFETY: connect with a local address.
        let r =
            unsafe { libc::connect(s.as_raw_fd(), (&a as *const libc::sockaddr_un).cast(), len) };
        if r == 0 {
            break Ok(());
        }
        let e = std::io::Error::last_os_error();
        match e.kind() {
            std::io::ErrorKind::Interrupted => continue,
            std::io::ErrorKind::WouldBlock => {
                break Err(RestoreError::msg(format!(
                    "connecting to {}: its accept queue is full",
                    display_name(name)
                )))
            }
            _ => break Err(e).with_context(|| format!("connecting to {}", display_name(name))),
        }
    };
    if fl >= 0 && fl & libc::O_NONBLOCK == 0 {
        // SAFETY: as above.
        unsafe { libc::fcntl(s.as_raw_fd(), libc::F_SETFL, fl) };
    }
    r
}

/// Run `f` with `dir` as working directory (for relative socket names), if not empty.
fn with_dir<T>(dir: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    if dir.is_empty() {
        return f();
    }
    let old = std::fs::File::open(".").context("opening the working directory")?;
    std::env::set_current_dir(dir).with_context(|| format!("entering {dir}"))?;
    let r = f();
    // SAFETY: fchdir to a directory descriptor of ours.
    unsafe { libc::fchdir(old.as_raw_fd()) };
    r
}

fn get_int(s: &OwnedFd, opt: i32) -> Option<i32> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt into a local int.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    (r == 0).then_some(v)
}

fn set_int(s: &OwnedFd, opt: i32, v: i32) -> std::io::Result<()> {
    // SAFETY: setsockopt from a local int.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn set_timeout(s: &OwnedFd, opt: i32, us: u64) -> std::io::Result<()> {
    let tv = libc::timeval {
        tv_sec: (us / 1_000_000) as libc::time_t,
        tv_usec: (us % 1_000_000) as libc::suseconds_t,
    };
    // SAFETY: setsockopt from a local timeval.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Set a buffer size to `value` as getsockopt showed it (the kernel doubles what it is
/// given); beyond the system maximum only with the FORCE variant (root).
fn set_buf(s: &OwnedFd, opt: i32, force: i32, value: i32) {
    if value <= 0 || get_int(s, opt) == Some(value) {
        return;
    }
    if set_int(s, force, value / 2).is_err() {
        let _ = set_int(s, opt, value / 2);
    }
}

/// Room in the send buffer of `s` for the messages `queue`: the kernel charges each
/// one's whole buffer (its bytes and some 1 KiB of overhead, more than the bytes for
/// small records) to the sender until it is read, so a queue of many small records
/// needs more than its bytes. At least `saved`, the send buffer of the socket that
/// filled it (root may set any size; an ordinary user gets at most net.core.wmem_max,
/// as the original sender did).
fn ensure_sndbuf(s: &OwnedFd, queue: &[Vec<u8>], saved: i32) {
    let bytes: usize = queue.iter().map(Vec::len).sum();
    let need = bytes
        .saturating_mul(2)
        .saturating_add(queue.len().saturating_mul(1536))
        .saturating_add(256 << 10);
    let want = need.min(i32::MAX as usize) as i32;
    let want = want.max(saved);
    if get_int(s, libc::SO_SNDBUF).unwrap_or(0) < want {
        set_buf(s, libc::SO_SNDBUF, libc::SO_SNDBUFFORCE, want);
    }
}

fn set_options(s: &OwnedFd, o: &UnixOptions) -> Result<()> {
    set_buf(s, libc::SO_RCVBUF, libc::SO_RCVBUFFORCE, o.rcvbuf);
    set_buf(s, libc::SO_SNDBUF, libc::SO_SNDBUFFORCE, o.sndbuf);
    if get_int(s, libc::SO_RCVLOWAT) != Some(o.rcvlowat) && o.rcvlowat > 0 {
        set_int(s, libc::SO_RCVLOWAT, o.rcvlowat).context("setting SO_RCVLOWAT")?;
    }
    if o.rcvtimeo_us != 0 {
        set_timeout(s, libc::SO_RCVTIMEO, o.rcvtimeo_us).context("setting SO_RCVTIMEO")?;
    }
    if o.sndtimeo_us != 0 {
        set_timeout(s, libc::SO_SNDTIMEO, o.sndtimeo_us).context("setting SO_SNDTIMEO")?;
    }
    if o.peek_off >= 0 {
        set_int(s, libc::SO_PEEK_OFF, o.peek_off).context("setting SO_PEEK_OFF")?;
    }
    if o.passsec {
        let _ = set_int(s, libc::SO_PASSSEC, 1);
    }
    if o.passpidfd {
        let _ = set_int(s, SO_PASSPIDFD, 1);
    }
    if o.passcred {
        set_int(s, libc::SO_PASSCRED, 1).context("setting SO_PASSCRED")?;
    }
    Ok(())
}

/// send() (or sendto() `to`) one message without blocking: a full queue is an error.
fn send_one(s: &OwnedFd, msg: &[u8], to: Option<&[u8]>) -> Result<usize> {
    send_msg(s, msg, to, &[])
}

/// sendmsg() one message to `to` (or the peer) with the descriptors `fds` (SCM_RIGHTS),
/// without blocking: a full queue is an error.
fn send_msg(s: &OwnedFd, msg: &[u8], to: Option<&[u8]>, fds: &[RawFd]) -> Result<usize> {
    let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
    let mut addr = to.map(sockaddr).transpose()?;
    // Room for SCM_MAX_FD (253) descriptors.
    let mut control = [0u64; 160];
    if fds.len() > 253 {
        bail!("{} descriptors in one message (at most 253)", fds.len());
    }
    let mut iov = libc::iovec {
        iov_base: msg.as_ptr() as *mut libc::c_void,
        iov_len: msg.len(),
    };
    loop {
        // SAFETY: `msghdr` is plain C data: all-zero bytes (null pointers, zero lengths)
        // are a valid value; the fields sendmsg needs are set right below.
        let mut m: libc::msghdr = unsafe { std::mem::zeroed() };
        m.msg_iov = &mut iov;
        m.msg_iovlen = 1;
        if let Some((a, len)) = &mut addr {
            m.msg_name = (a as *mut libc::sockaddr_un).cast();
            m.msg_namelen = *len;
        }
        if !fds.is_empty() {
            let bytes = std::mem::size_of_val(fds) as u32;
            m.msg_control = control.as_mut_ptr().cast();
            // SAFETY: CMSG_SPACE is arithmetic; the control buffer holds 1280 bytes, more
            // than CMSG_SPACE of 253 descriptors; the header and data written lie in it.
            unsafe {
                m.msg_controllen = libc::CMSG_SPACE(bytes) as usize;
                let c = libc::CMSG_FIRSTHDR(&m);
                (*c).cmsg_level = libc::SOL_SOCKET;
                (*c).cmsg_type = libc::SCM_RIGHTS;
                (*c).cmsg_len = libc::CMSG_LEN(bytes) as usize;
                std::ptr::copy_nonoverlapping(
                    fds.as_ptr().cast::<u8>(),
                    libc::CMSG_DATA(c),
                    bytes as usize,
                );
            }
        }
        // SAFETY: every buffer the msghdr points to lives across the call.
        let n = unsafe { libc::sendmsg(s.as_raw_fd(), &m, flags) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = std::io::Error::last_os_error();
        match e.kind() {
            std::io::ErrorKind::Interrupted => continue,
            std::io::ErrorKind::WouldBlock => {
                bail!("the receive queue is full (for datagrams: net.unix.max_dgram_qlen)")
            }
            _ => return Err(e).context("sending queued data"),
        }
    }
}

fn send_all(s: &OwnedFd, data: &[u8]) -> Result<()> {
    let mut done = 0;
    while done < data.len() {
        done += send_one(s, &data[done..], None)?;
    }
    Ok(())
}

/// A temporary listening socket bound to a name that is free, and the file it created.
struct TempListener {
    sock: OwnedFd,
    file: Option<(std::path::PathBuf, u64, u64)>,
}

impl Drop for TempListener {
    fn drop(&mut self) {
        if let Some((path, dev, ino)) = &self.file {
            if std::fs::symlink_metadata(path).is_ok_and(|m| m.dev() == *dev && m.ino() == *ino) {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

impl Sockets {
    /// Note the descriptors in flight that process attributes `attrs` hold.
    pub fn note_in_flight(&mut self, attrs: &[Attr]) {
        for a in attrs {
            if let Attr::UnixInFlight(list) = a {
                for m in list {
                    self.in_flight.entry(m.ino).or_default().push(m.clone());
                }
            }
        }
    }

    /// The ids of the open file descriptions in flight, whose descriptors
    /// [`Sockets::give_desc`] hands over before [`Sockets::finish`].
    pub fn descs_in_flight(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .in_flight
            .values()
            .flatten()
            .flat_map(|m| m.descs.iter().copied())
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Our descriptor (a copy) for the open file description `id` in flight.
    pub fn give_desc(&mut self, id: u32, fd: OwnedFd) {
        self.descs.insert(id, fd);
    }

    /// A stand-in source for the socket of `fd`, replaced by the real one in [`finish`].
    ///
    /// [`finish`]: Sockets::finish
    pub fn add(&mut self, pid: i32, fd: &Fd) -> Result<OwnedFd> {
        let FdKind::UnixSocket {
            ino,
            sock_type,
            state,
            name,
            file,
            peer,
            peer_name,
            peer_in_checkpoint,
            shutdown,
            backlog,
            queue,
            senders,
            opts,
            ..
        } = &fd.kind
        else {
            bail!("process {pid} fd {}: not a unix socket", fd.fd);
        };
        if !matches!(
            *sock_type,
            libc::SOCK_STREAM | libc::SOCK_DGRAM | libc::SOCK_SEQPACKET
        ) {
            bail!(
                "process {pid} fd {}: the image holds a unix socket of unknown type {sock_type}",
                fd.fd
            );
        }
        let standin = new_socket(*sock_type)?;
        // SAFETY: `libc::stat` is a plain C struct of integers: all-zero bytes are a valid
        // value, and fstat overwrites it.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        cvt(
            // SAFETY: fstat(2) writes one `struct stat` into `st`, a local of exactly that
            // type; `standin` is the socket just created and owned here.
            unsafe { libc::fstat(standin.as_raw_fd(), &mut st) },
            "stat of a socket",
        )?;
        self.standins.insert(st.st_ino, *ino);
        match self.recs.get_mut(ino) {
            Some(r) => {
                if r.queue.is_empty() && !queue.is_empty() {
                    r.queue = queue.clone();
                    r.senders = senders.clone();
                }
            }
            None => {
                self.recs.insert(
                    *ino,
                    Rec {
                        pid,
                        fd: fd.fd,
                        flags: fd.flags,
                        ty: *sock_type,
                        state: *state,
                        name: name.clone(),
                        file: file.clone(),
                        peer: *peer,
                        peer_name: peer_name.clone(),
                        peer_in_checkpoint: *peer_in_checkpoint,
                        shutdown: *shutdown,
                        backlog: *backlog,
                        queue: queue.clone(),
                        senders: senders.clone(),
                        opts: *opts,
                    },
                );
            }
        }
        Ok(standin)
    }

    /// Build every socket, with its connections, names, queued data, shutdown state,
    /// options and flags, and put it in place of its stand-in.
    pub fn finish(&mut self) -> Result<()> {
        if self.recs.is_empty() {
            return Ok(());
        }
        let mut b = Builder {
            recs: &self.recs,
            made: HashMap::new(),
            far: HashMap::new(),
            in_use: None,
            detached: DetachedSet::default(),
            in_flight: &self.in_flight,
            descs: &self.descs,
        };
        b.build()?;
        // Descriptors in flight may be sockets of the tree: they are sent once the real
        // ones stand in every descriptor of ours (the descriptions in `descs` too).
        replace_standins(&self.standins, &b.made)?;
        b.fill_and_settle()?;
        drop(b);
        self.recs.clear();
        self.standins.clear();
        self.in_flight.clear();
        self.descs.clear();
        Ok(())
    }
}

/// dup3 each real socket onto every descriptor of ours that names its stand-in (unix and
/// inet sockets alike).
pub(crate) fn replace_standins(
    standins: &HashMap<u64, u64>,
    made: &HashMap<u64, OwnedFd>,
) -> Result<()> {
    let nums: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
        .context("listing our descriptors")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    for n in nums {
        // SAFETY: `libc::stat` is a plain C struct of integers: all-zero bytes are a valid
        // value, and fstat overwrites it.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat of a descriptor number into a local (it may be gone: skipped).
        if unsafe { libc::fstat(n, &mut st) } != 0 || st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
            continue;
        }
        let Some(ino) = standins.get(&st.st_ino) else {
            continue;
        };
        let real = made
            .get(ino)
            .with_context(|| format!("socket {ino} was not rebuilt"))?;
        cvt(
            // SAFETY: dup3(2) takes only descriptor numbers. `n` names a stand-in socket
            // (its inode is a stand-in's), so it differs from `real` (dup3 would fail with
            // EINVAL, not misbehave, if not); whoever owns number `n` keeps owning it, and
            // it now names the rebuilt socket, which is the point. No memory is touched.
            unsafe { libc::dup3(real.as_raw_fd(), n, libc::O_CLOEXEC) },
            "putting a socket in place",
        )?;
    }
    Ok(())
}

struct Builder<'a> {
    recs: &'a BTreeMap<u64, Rec>,
    /// The rebuilt sockets, by saved inode.
    made: HashMap<u64, OwnedFd>,
    /// The other end standing for a peer that is not in the checkpoint (closed at the
    /// end), by the saved inode of the socket it is connected to.
    far: HashMap<u64, OwnedFd>,
    /// (dev, ino) of the socket files of live sockets here (computed when needed).
    in_use: Option<HashSet<(u64, u64)>>,
    /// Socket files of names bound detached, removed once everything is rebuilt.
    detached: DetachedSet,
    /// Descriptors in flight, by the saved inode of the socket whose queue holds them.
    in_flight: &'a HashMap<u64, Vec<UnixInFlight>>,
    /// Our descriptor for each open file description in flight, by its id.
    descs: &'a HashMap<u32, OwnedFd>,
}

/// Undone in the reverse order of creation (a directory made for one name may hold the
/// socket file of the next).
#[derive(Default)]
struct DetachedSet(Vec<Detached>);

impl Drop for DetachedSet {
    fn drop(&mut self) {
        while self.0.pop().is_some() {}
    }
}

impl Builder<'_> {
    fn build(&mut self) -> Result<()> {
        let recs = self.recs;
        // Listening sockets first: they hold their names, and accepted ends connect to them.
        for (&ino, r) in recs.iter().filter(|(_, r)| r.state == UnixState::Listening) {
            let s = new_socket(r.ty)?;
            self.bind_own(&s, r, "binding the listening socket")?;
            cvt(
                // SAFETY: listen(2) on `s`, a socket this function owns and keeps open; its
                // arguments are integers.
                unsafe { libc::listen(s.as_raw_fd(), r.backlog as i32) },
                &format!("{}: listen", r.what()),
            )?;
            self.made.insert(ino, s);
        }
        for (&ino, r) in recs
            .iter()
            .filter(|(_, r)| r.state == UnixState::Unconnected)
        {
            let s = new_socket(r.ty)?;
            self.bind_own(&s, r, "binding the socket")?;
            self.made.insert(ino, s);
        }
        let mut connect_later = Vec::new();
        // Clients of connections waiting to be accepted, in the order of their inodes:
        // the order they connect again in, taken as the order they were created and
        // connected in (the sockets in the accept queue have no inode to tell).
        let mut waiting = Vec::new();
        for (&ino, r) in recs.iter().filter(|(_, r)| r.state == UnixState::Connected) {
            if self.made.contains_key(&ino) {
                continue;
            }
            let peer = (r.peer != 0).then(|| recs.get(&r.peer)).flatten();
            if peer.is_none() && r.peer_in_checkpoint && r.ty != libc::SOCK_DGRAM {
                waiting.push(ino);
                continue;
            }
            match peer {
                Some(p) if r.ty != libc::SOCK_DGRAM => self.stream_pair(ino, r, p)?,
                Some(p) if p.peer == ino => {
                    let (a, b) = socketpair(r.ty)?;
                    self.bind_or_warn(&a, r);
                    self.bind_or_warn(&b, p);
                    self.made.insert(ino, a);
                    self.made.insert(r.peer, b);
                }
                Some(_) => {
                    let s = new_socket(r.ty)?;
                    self.bind_or_warn(&s, r);
                    self.made.insert(ino, s);
                    connect_later.push(ino);
                }
                None => self.orphan(ino, r)?,
            }
        }
        // After every accepted end is rebuilt (each connect + accept on a listener takes
        // the connection it made only while its accept queue is empty).
        for ino in waiting {
            self.wait_in_queue(ino, &recs[&ino]).with_context(|| {
                format!("{}: connecting again (not accepted)", recs[&ino].what())
            })?;
        }
        for ino in connect_later {
            let r = &recs[&ino];
            let p = &recs[&r.peer];
            with_dir(p.dir(), || connect(&self.made[&ino], &p.name))
                .with_context(|| format!("{}: reconnecting", r.what()))?;
        }
        Ok(())
    }

    /// Once the real sockets are in place: queued data (with the descriptors in flight),
    /// shutdown state, options and flags.
    fn fill_and_settle(&mut self) -> Result<()> {
        let recs = self.recs;
        for (&ino, r) in recs.iter().filter(|(_, r)| !r.queue.is_empty()) {
            self.refill(ino, r)
                .with_context(|| format!("{}: refilling its receive queue", r.what()))?;
        }
        // Names bound detached lose their socket files again.
        self.detached = DetachedSet::default();
        for (&ino, r) in recs.iter() {
            let s = &self.made[&ino];
            for (bit, how) in [
                (RCV_SHUTDOWN, libc::SHUT_RD),
                (SEND_SHUTDOWN, libc::SHUT_WR),
            ] {
                if r.shutdown & bit != 0 {
                    // SAFETY: shutdown on our own socket. ENOTCONN (a datagram socket
                    // whose peer went away) changes nothing.
                    unsafe { libc::shutdown(s.as_raw_fd(), how) };
                }
            }
        }
        // Peers outside the checkpoint go away now: their sockets see them closed.
        self.far.clear();
        for (&ino, r) in recs.iter() {
            let s = &self.made[&ino];
            set_options(s, &r.opts).with_context(|| r.what())?;
            set_status_flags(s, r.flags).with_context(|| r.what())?;
        }
        Ok(())
    }

    /// The client `r` of a connection that was waiting to be accepted: connected again
    /// (without blocking: the listener's backlog admits as many as before) to its
    /// listening socket, and left in its accept queue.
    fn wait_in_queue(&mut self, ino: u64, r: &Rec) -> Result<()> {
        let (_, l) = self
            .recs
            .iter()
            .find(|(_, l)| l.state == UnixState::Listening && l.ty == r.ty && l.name == r.peer_name)
            .with_context(|| {
                format!(
                    "no listening socket {} in the checkpoint",
                    display_name(&r.peer_name)
                )
            })?;
        let s = new_socket(r.ty)?;
        self.bind_or_warn(&s, r);
        with_dir(l.dir(), || connect(&s, &l.name))?;
        self.made.insert(ino, s);
        Ok(())
    }

    /// The listening socket of the checkpoint that `r` was accepted from (same name and
    /// type), if any.
    fn listener_for(&self, r: &Rec) -> Option<u64> {
        if r.name.is_empty() {
            return None;
        }
        self.recs
            .iter()
            .find(|(_, l)| l.state == UnixState::Listening && l.ty == r.ty && l.name == r.name)
            .map(|(&i, _)| i)
    }

    /// Whether the connected stream socket `r` is taken as the accepted end of its
    /// connection: it has the name of a listening socket of the checkpoint, or a name
    /// while its peer has none (clients rarely bind).
    fn accepted(&self, r: &Rec, peer_named: bool) -> bool {
        !r.name.is_empty() && (self.listener_for(r).is_some() || !peer_named)
    }

    /// A connected stream or seqpacket pair, both ends in the checkpoint.
    fn stream_pair(&mut self, ino: u64, r: &Rec, p: &Rec) -> Result<()> {
        let (ra, pa) = (
            self.accepted(r, !p.name.is_empty()),
            self.accepted(p, !r.name.is_empty()),
        );
        let (server, client) = match (ra, pa) {
            (true, false) => ((ino, r), (r.peer, p)),
            (false, true) => ((r.peer, p), (ino, r)),
            _ => {
                let (a, b) = socketpair(r.ty)?;
                self.bind_or_warn(&a, r);
                self.bind_or_warn(&b, p);
                self.made.insert(ino, a);
                self.made.insert(r.peer, b);
                return Ok(());
            }
        };
        let cs = new_socket(client.1.ty)?;
        self.bind_or_warn(&cs, client.1);
        match self.via_listener(server.1, &cs)? {
            Some(acc) => {
                self.made.insert(server.0, acc);
                self.made.insert(client.0, cs);
            }
            None => {
                // Its name is taken: a plain pair, and the accepted end loses its name.
                let (a, b) = socketpair(r.ty)?;
                self.bind_or_warn(&b, client.1);
                self.made.insert(server.0, a);
                self.made.insert(client.0, b);
            }
        }
        Ok(())
    }

    /// Connect `client` to the listener of `server`'s name (the restored one, or a
    /// temporary one) and accept: the accepted socket has that name. None if the name is
    /// taken and no listener of the checkpoint has it (a warning is printed).
    fn via_listener(&mut self, server: &Rec, client: &OwnedFd) -> Result<Option<OwnedFd>> {
        let temp;
        let listener = match self.listener_for(server) {
            Some(l) => &self.made[&l],
            None => match temp_listener(server) {
                Ok(t) => {
                    temp = t;
                    &temp.sock
                }
                Err(e) => {
                    eprintln!(
                        "ckpt: warning: process {} fd {}: unix socket name {} could not be given back ({e:#}); restored unnamed",
                        server.pid,
                        server.fd,
                        display_name(&server.name)
                    );
                    return Ok(None);
                }
            },
        };
        with_dir(server.dir(), || connect(client, &server.name))
            .with_context(|| format!("{}: rebuilding its connection", server.what()))?;
        // SAFETY: accept4 on our own listening socket; returns a descriptor we own.
        let a = cvt(
            unsafe {
                libc::accept4(
                    listener.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_CLOEXEC,
                )
            },
            &format!("{}: accepting its connection again", server.what()),
        )?;
        // SAFETY: `a` was just returned by a successful accept4 (cvt rejects negatives): a
        // fresh descriptor nothing else owns.
        Ok(Some(unsafe { OwnedFd::from_raw_fd(a) }))
    }

    /// A socket whose peer is not in the checkpoint: one end of a socketpair whose other
    /// end (kept in `far` until the queued data is in) is then closed.
    fn orphan(&mut self, ino: u64, r: &Rec) -> Result<()> {
        let stream = r.ty != libc::SOCK_DGRAM;
        // A stream socket whose peer was closed has both directions shut down.
        let outside = r.peer != 0 || (stream && r.shutdown & (RCV_SHUTDOWN | SEND_SHUTDOWN) != 3);
        if outside {
            eprintln!(
                "ckpt: warning: process {} fd {} was a unix {} socket connected outside the checkpoint; restored with its peer closed",
                r.pid,
                r.fd,
                type_name(r.ty)
            );
        }
        if stream && self.accepted(r, false) {
            let client = new_socket(r.ty)?;
            if let Some(acc) = self.via_listener(r, &client)? {
                self.made.insert(ino, acc);
                self.far.insert(ino, client);
                return Ok(());
            }
            let (a, t) = socketpair(r.ty)?;
            self.made.insert(ino, a);
            self.far.insert(ino, t);
            return Ok(());
        }
        let (a, t) = socketpair(r.ty)?;
        self.bind_or_warn(&a, r);
        self.made.insert(ino, a);
        self.far.insert(ino, t);
        Ok(())
    }

    /// Our descriptors for the open file descriptions in flight with `m`.
    fn fds_of(&self, m: &UnixInFlight) -> Result<Vec<RawFd>> {
        m.descs
            .iter()
            .map(|d| {
                self.descs.get(d).map(|f| f.as_raw_fd()).with_context(|| {
                    format!("the description {d} in flight is not in the checkpoint")
                })
            })
            .collect()
    }

    /// The descriptors in flight with message `i` of the queue of socket `ino`.
    fn fds_at(&self, ino: u64, i: usize) -> Result<Vec<RawFd>> {
        match self
            .in_flight
            .get(&ino)
            .and_then(|l| l.iter().find(|m| m.at == i as u64))
        {
            Some(m) => self.fds_of(m),
            None => Ok(Vec::new()),
        }
    }

    /// Write the saved receive queue of `r` so that it lands in its receive queue.
    fn refill(&mut self, ino: u64, r: &Rec) -> Result<()> {
        let peer = (r.peer != 0).then(|| self.recs.get(&r.peer)).flatten();
        let saved = peer.map_or(0, |p| p.opts.sndbuf);
        if r.ty != libc::SOCK_DGRAM {
            let from = match peer {
                Some(_) => self.made.get(&r.peer),
                None => self.far.get(&ino),
            }
            .context("no peer to write the queued data through")?;
            ensure_sndbuf(from, &r.queue, saved);
            if r.ty == libc::SOCK_STREAM {
                let data = r.queue.concat();
                let mut done = 0;
                for m in self.in_flight.get(&ino).into_iter().flatten() {
                    let (at, end) = (m.at as usize, (m.at + m.len) as usize);
                    if at < done || end > data.len() || at == end {
                        bail!(
                            "descriptors in flight at bytes {at}..{end} of a queue of {}",
                            data.len()
                        );
                    }
                    send_all(from, &data[done..at])?;
                    // The descriptors go with the first part the kernel takes.
                    let n = send_msg(from, &data[at..end], None, &self.fds_of(m)?)?;
                    send_all(from, &data[at + n..end])?;
                    done = end;
                }
                return send_all(from, &data[done..]);
            }
            for (i, m) in r.queue.iter().enumerate() {
                send_msg(from, m, None, &self.fds_at(ino, i)?)?;
            }
            return Ok(());
        }
        if let Some(p) = peer {
            // Connected to a socket of the checkpoint: every datagram came from it.
            let from = &self.made[&r.peer];
            ensure_sndbuf(from, &r.queue, saved);
            let to = if p.peer == ino {
                None
            } else if !r.name.is_empty() {
                Some(r.name.as_slice())
            } else {
                bail!("it has no name to send its queued datagrams to");
            };
            for (i, m) in r.queue.iter().enumerate() {
                let fds = self.fds_at(ino, i)?;
                with_dir(r.dir(), || send_msg(from, m, to, &fds))?;
            }
            return Ok(());
        }
        if let Some(t) = self.far.get(&ino) {
            ensure_sndbuf(t, &r.queue, 0);
            for (i, m) in r.queue.iter().enumerate() {
                send_msg(t, m, None, &self.fds_at(ino, i)?)?;
            }
            return Ok(());
        }
        if r.name.is_empty() {
            bail!("it has neither a name nor a peer to send its queued datagrams through");
        }
        // Unconnected: each datagram from a socket with its sender's name, if possible.
        let mut temps: HashMap<Vec<u8>, OwnedFd> = HashMap::new();
        let mut lost: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
        for (i, m) in r.queue.iter().enumerate() {
            let sender = r.senders.get(i).cloned().unwrap_or_default();
            let own = self
                .recs
                .iter()
                .find(|(_, x)| x.ty == libc::SOCK_DGRAM && !sender.is_empty() && x.name == sender)
                .map(|(&i, _)| i);
            let from = match own {
                Some(o) => &self.made[&o],
                None => {
                    let mut key = sender.clone();
                    if !sender.is_empty() && !temps.contains_key(&sender) {
                        // An abstract name can be borrowed if it is free; a path cannot.
                        let s = new_socket(libc::SOCK_DGRAM)?;
                        if sender[0] == 0 && bind_raw(&s, &sender).is_ok() {
                            temps.insert(sender.clone(), s);
                        } else {
                            *lost.entry(sender.clone()).or_default() += 1;
                            key = Vec::new();
                        }
                    }
                    if !temps.contains_key(&key) {
                        temps.insert(key.clone(), new_socket(libc::SOCK_DGRAM)?);
                    }
                    &temps[&key]
                }
            };
            ensure_sndbuf(from, std::slice::from_ref(m), 0);
            let fds = self.fds_at(ino, i)?;
            with_dir(r.dir(), || send_msg(from, m, Some(&r.name), &fds))?;
        }
        for (name, n) in lost {
            eprintln!(
                "ckpt: warning: {}: {n} queued datagram(s) from {} restored with an unnamed sender (that name cannot be had here)",
                r.what(),
                display_name(&name)
            );
        }
        Ok(())
    }

    /// Whether a live socket here uses the socket file (dev, ino).
    fn in_use(&mut self, dev: u64, ino: u64) -> Result<bool> {
        if self.in_use.is_none() {
            let all = diag_all()
                .context("listing unix sockets (sock_diag) to find stale socket files")?;
            self.in_use = Some(
                all.into_iter()
                    .filter_map(|d| d.vfs)
                    .map(|(i, d)| (d, i))
                    .collect(),
            );
        }
        Ok(self.in_use.as_ref().unwrap().contains(&(dev, ino)))
    }

    /// Bind `s` to the saved name of `r`. A path name whose socket file was still there
    /// at checkpoint time is bound in its saved directory (relative names), after
    /// removing a stale socket file that no live socket uses, and the new file gets the
    /// saved mode and owner. A name whose file was gone (unlinked, its directory deleted
    /// or moved), or whose path is taken now by a live socket or another file, is bound
    /// detached: see [`bind_detached`].
    fn bind_name(&mut self, s: &OwnedFd, r: &Rec) -> Result<()> {
        if r.name.is_empty() {
            return Ok(());
        }
        let shown = display_name(&r.name);
        if r.name[0] == 0 {
            return bind_raw(s, &r.name).with_context(|| format!("binding to {shown}"));
        }
        let file = match &r.file {
            Some(f) if !f.unlinked => f.clone(),
            _ => return self.detach(s, r),
        };
        let path = Path::new(OsStr::from_bytes(&r.name));
        let dir = r.dir().to_string();
        if !dir.is_empty() && !Path::new(&dir).is_dir() {
            return self.detach(s, r);
        }
        let stale = with_dir(&dir, || Ok(std::fs::symlink_metadata(path).ok()))?;
        let remove = match &stale {
            Some(m) if m.file_type().is_socket() => !self.in_use(m.dev(), m.ino())?,
            _ => false,
        };
        if stale.is_some() && !remove {
            eprintln!(
                "ckpt: warning: {}: {shown} is taken by another file or a live socket now; the socket gets its name back without the file (nobody can connect to it by that path)",
                r.what()
            );
            return self.detach(s, r);
        }
        let r2 = with_dir(&dir, || {
            if remove {
                std::fs::remove_file(path)
                    .with_context(|| format!("removing the stale socket file {shown}"))?;
            }
            match bind_raw(s, &r.name) {
                Ok(()) => {}
                // The directory is gone since the checkpoint.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(false),
                Err(e) => return Err(e).with_context(|| format!("binding to {shown}")),
            }
            let c = CString::new(r.name.clone())?;
            // SAFETY: chmod/lchown with a valid C string; failures leave the file as
            // bind made it.
            unsafe {
                libc::chmod(c.as_ptr(), file.mode & 0o7777);
                libc::lchown(c.as_ptr(), file.uid, file.gid);
            }
            Ok(true)
        })?;
        if !r2 {
            eprintln!(
                "ckpt: warning: {}: the directory of {shown} is gone; the socket gets its name back without the file",
                r.what()
            );
            return self.detach(s, r);
        }
        Ok(())
    }

    /// [`bind_detached`], keeping the socket file until every connection and queue is
    /// rebuilt (clients connect to it, datagrams are sent to it by name).
    fn detach(&mut self, s: &OwnedFd, r: &Rec) -> Result<()> {
        let d = bind_detached(s, r)?;
        self.detached.0.push(d);
        Ok(())
    }

    /// Bind a listening or unconnected socket: an error if its socket file was there at
    /// checkpoint time (the name is someone else's now), a warning if not (nobody could
    /// connect to it by name anyway).
    fn bind_own(&mut self, s: &OwnedFd, r: &Rec, what: &str) -> Result<()> {
        if r.file.as_ref().is_some_and(|f| f.unlinked) {
            self.bind_or_warn(s, r);
            return Ok(());
        }
        self.bind_name(s, r)
            .with_context(|| format!("{}: {what}", r.what()))
    }

    fn bind_or_warn(&mut self, s: &OwnedFd, r: &Rec) {
        if let Err(e) = self.bind_name(s, r) {
            eprintln!(
                "ckpt: warning: process {} fd {}: unix socket name {} could not be given back ({e:#}); restored unnamed",
                r.pid,
                r.fd,
                display_name(&r.name)
            );
        }
    }
}

/// What [`bind_detached`] changed on disk, undone when dropped: directories it made
/// (deepest last), the file it put aside, the socket file bind made.
#[derive(Default)]
struct Detached {
    made_dirs: Vec<std::path::PathBuf>,
    aside: Option<(std::path::PathBuf, std::path::PathBuf)>,
    bound: Option<std::path::PathBuf>,
}

impl Drop for Detached {
    fn drop(&mut self) {
        if let Some(p) = self.bound.take() {
            let _ = std::fs::remove_file(p);
        }
        if let Some((aside, back)) = self.aside.take() {
            if let Err(e) = std::fs::rename(&aside, &back) {
                eprintln!(
                    "ckpt: warning: could not move {} back to {} ({e})",
                    aside.display(),
                    back.display()
                );
            }
        }
        for d in self.made_dirs.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// Bind `s` to the path name of `r` although no socket file of it exists any more, as
/// CRIU does for deleted socket files: the kernel keeps the name a socket was bound
/// with (getsockname() shows it) whatever becomes of the file. So the path is made
/// bindable for a moment: the missing directories up to it are created (and the saved
/// working directory of a relative name), a file that has taken the path since is
/// renamed aside, bind() creates the socket file, which is removed at once; then the
/// file put aside comes back and the directories made are removed again. Nobody can
/// connect to the socket by its name afterwards, as before the checkpoint (for a socket
/// whose directory was moved, connecting through the moved file is refused: the file
/// does not lead to the restored socket).
fn bind_detached(s: &OwnedFd, r: &Rec) -> Result<Detached> {
    let shown = display_name(&r.name);
    let name = Path::new(OsStr::from_bytes(&r.name));
    let dir = r.dir().trim_end_matches(" (deleted)");
    let full = if name.is_absolute() {
        name.to_path_buf()
    } else if dir.is_empty() {
        std::env::current_dir()?.join(name)
    } else {
        Path::new(dir).join(name)
    };
    let mut undo = Detached::default();
    let parent = full.parent().unwrap_or(Path::new("/"));
    let mut missing = Vec::new();
    let mut p = parent;
    while std::fs::symlink_metadata(p).is_err() {
        missing.push(p.to_path_buf());
        match p.parent() {
            Some(q) => p = q,
            None => break,
        }
    }
    for d in missing.into_iter().rev() {
        std::fs::create_dir(&d).with_context(|| {
            format!("binding to {shown}: creating {} for a moment", d.display())
        })?;
        undo.made_dirs.push(d);
    }
    if std::fs::symlink_metadata(&full).is_ok() {
        let aside = parent.join(format!(
            ".ckpt-aside-{}-{}",
            std::process::id(),
            full.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default()
        ));
        std::fs::rename(&full, &aside).with_context(|| {
            format!("binding to {shown}: moving the file that took its path aside for a moment")
        })?;
        undo.aside = Some((aside, full.clone()));
    }
    // The saved name, relative or not, from the directory it was relative to.
    let cwd = if name.is_absolute() {
        String::new()
    } else {
        parent_dir(&full, name)
    };
    with_dir(&cwd, || {
        bind_raw(s, &r.name).with_context(|| format!("binding to {shown}"))
    })?;
    undo.bound = Some(full);
    Ok(undo)
}

/// The directory a relative `name` resolves from to give `full`.
fn parent_dir(full: &Path, name: &Path) -> String {
    let mut d = full.to_path_buf();
    for _ in name.components() {
        d.pop();
    }
    d.to_string_lossy().into_owned()
}

/// A listening socket bound to `r`'s name for one connection, if the name is free.
fn temp_listener(r: &Rec) -> Result<TempListener> {
    let sock = new_socket(r.ty)?;
    with_dir(r.dir(), || {
        bind_raw(&sock, &r.name).context("the name is taken")?;
        let mut t = TempListener { sock, file: None };
        if r.name[0] != 0 {
            let path = Path::new(OsStr::from_bytes(&r.name));
            let m = std::fs::symlink_metadata(path)?;
            t.file = Some((std::env::current_dir()?.join(path), m.dev(), m.ino()));
        }
        // SAFETY: listen on our own socket.
        cvt(unsafe { libc::listen(t.sock.as_raw_fd(), 1) }, "listen")?;
        Ok(t)
    })
}
