//! Pseudo-terminals made inside the job: a master opened from /dev/ptmx, its slave
//! /dev/pts/N, and /dev/tty opened by a process whose controlling terminal the slave is
//! (terminals outside the job are `tty.rs`'s).
//!
//! Dump: a master's index is TIOCGPTN of a copy of its descriptor (pidfd_getfd); a
//! slave's is in its path. Once the whole tree is read ([`dump_tree`]), a slave whose
//! master is not in the checkpoint is a terminal outside it (`tty.rs`); for each pair
//! whose master is, the state is read through the master's copy and a slave opened on
//! it (TIOCGPTPEER): both termios, the window size, packet mode, the lock, the slave's
//! exclusive mode, the session whose controlling terminal it is and its foreground
//! group (TIOCGSID, TIOCGPGRP), and the data queued both ways. The queues are read out
//! and put back at once, so that a dump that leaves the job running leaves them as they
//! were: the slave's input queue is read with ICANON off (so that a partial line shows)
//! and put back by writing it to the master with the slave's input processing off and
//! echo on (each byte is taken once the line discipline echoed it: canonical lines are
//! rebuilt from their delimiters); the master's queue is put back by writing it to the
//! slave with output processing off. Every process's controlling terminal (stat
//! `tty_nr`) must be the pair of its session, as the kernel makes it.
//!
//! Restore: one new pair per saved pair (a new index: the kernel picks it; a program
//! that kept the old name of its slave finds it gone, which the audit notes), with the
//! saved state set once every process is prepared ([`finish`]); the session leader
//! takes the slave as controlling terminal (TIOCSCTTY, right after its setsid, before
//! it creates its children: src/restore/spawn.rs, through [`ctty`]), and makes the
//! saved foreground group the foreground again once its children made it. /dev/tty
//! descriptors are the new slave reopened (their /proc link names /dev/pts/M, not
//! /dev/tty).

use super::tty::{set_termios, termios_of};
use super::{Context, Dump, Kind, RestoreError, RestoreResult, Shared, Target};
use crate::error::{Result, TraceError};
use crate::state::{Fd, FdKind, ProcessState, PtyState, Termios};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::time::{Duration, Instant};

pub const KIND: Kind = Kind {
    dump,
    dump_process: None,
    dump_tree: Some(dump_tree),
    restore,
    finish: Some(finish),
    late: None,
    describe,
};

/// The standard line discipline (linux/tty.h).
const N_TTY: i32 = 0;
/// The longest a queued byte may take to go through a line discipline.
const SETTLE: Duration = Duration::from_secs(5);
/// The most bytes kept of one queue (a line discipline holds 4 KiB, a pty's flip
/// buffers 64 KiB more).
const QUEUE_MAX: usize = 1 << 20;

/// ioctl(fd, req, &int): the int it writes.
fn get_int(fd: RawFd, req: libc::Ioctl) -> io::Result<i32> {
    let mut v: libc::c_int = 0;
    // SAFETY: the terminal ioctls passed here write one int through the pointer, to `v`.
    if unsafe { libc::ioctl(fd, req, &mut v) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v)
}

/// ioctl(fd, req, &int).
fn set_int(fd: RawFd, req: libc::Ioctl, v: i32) -> io::Result<()> {
    // SAFETY: the terminal ioctls passed here read one int through the pointer, from `v`.
    if unsafe { libc::ioctl(fd, req, &v) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// ioctl(fd, req, arg) with an integer argument; its result.
fn ioctl_arg(fd: RawFd, req: libc::Ioctl, arg: libc::c_ulong) -> io::Result<i32> {
    // SAFETY: the terminal ioctls passed here take an integer argument, no pointer.
    let r = unsafe { libc::ioctl(fd, req, arg) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r)
}

fn winsize(fd: RawFd) -> io::Result<[u16; 4]> {
    // SAFETY: `winsize` is a plain C struct of integers: all-zero bytes are a valid value.
    let mut w: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes one `struct winsize` into `w`, a local of that type.
    if unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut w) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok([w.ws_row, w.ws_col, w.ws_xpixel, w.ws_ypixel])
}

fn set_winsize(fd: RawFd, v: [u16; 4]) -> io::Result<()> {
    let w = libc::winsize {
        ws_row: v[0],
        ws_col: v[1],
        ws_xpixel: v[2],
        ws_ypixel: v[3],
    };
    // SAFETY: TIOCSWINSZ reads one `struct winsize` from `w`, a local of that type.
    if unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &w) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A new descriptor on the slave of master `m` (TIOCGPTPEER), never the controlling
/// terminal of the caller.
fn open_peer(m: RawFd, flags: i32) -> io::Result<OwnedFd> {
    let flags = (flags & (libc::O_ACCMODE | libc::O_NONBLOCK)) | libc::O_NOCTTY | libc::O_CLOEXEC;
    let r = ioctl_arg(m, libc::TIOCGPTPEER, flags as libc::c_ulong)?;
    // SAFETY: TIOCGPTPEER returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}

/// poll(fd) for `events` within `timeout_ms`: the events it returned.
fn poll(fd: RawFd, events: i16, timeout_ms: i32) -> io::Result<i16> {
    let mut p = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // SAFETY: poll(2) on one `pollfd`, a local.
    let r = unsafe { libc::poll(&mut p, 1, timeout_ms) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(p.revents)
}

/// Read what is ready on `fd` without waiting longer than `timeout_ms` for more, up to
/// `want` bytes (or everything ready, if `want` is `None`). In packet mode every read
/// starts with a status byte, which must be TIOCPKT_DATA (0).
fn read_ready(
    fd: RawFd,
    packet: bool,
    want: Option<usize>,
    timeout_ms: i32,
) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_millis(timeout_ms as u64);
    let mut buf = [0u8; 4096];
    loop {
        if want.is_some_and(|w| out.len() >= w) || out.len() >= QUEUE_MAX {
            break;
        }
        let left = deadline
            .saturating_duration_since(Instant::now())
            .as_millis() as i32;
        let ev = poll(fd, libc::POLLIN, if want.is_some() { left } else { 0 })?;
        if ev & libc::POLLIN == 0 {
            if want.is_some() && left > 0 {
                continue;
            }
            break;
        }
        let max = want.map_or(buf.len(), |w| {
            (w - out.len() + packet as usize).min(buf.len())
        });
        // SAFETY: read(2) writes at most `max` (<= buf.len()) bytes into `buf`.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), max) };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                // Nothing ready after all, or the other side is closed and drained.
                Some(libc::EAGAIN) | Some(libc::EIO) => break,
                _ => return Err(e),
            }
        }
        if n == 0 {
            break;
        }
        let got = &buf[..n as usize];
        if packet {
            if got[0] != 0 {
                return Err(io::Error::other(format!(
                    "a packet-mode status ({:#x}) was pending on the master",
                    got[0]
                )));
            }
            out.extend_from_slice(&got[1..]);
        } else {
            out.extend_from_slice(got);
        }
    }
    Ok(out)
}

fn write_all(fd: RawFd, mut data: &[u8]) -> io::Result<()> {
    let deadline = Instant::now() + SETTLE;
    while !data.is_empty() {
        // SAFETY: write(2) reads `data.len()` bytes from `data`.
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) if Instant::now() < deadline => {
                    poll(fd, libc::POLLOUT, 10)?;
                    continue;
                }
                _ => return Err(e),
            }
        }
        data = &data[n as usize..];
    }
    Ok(())
}

/// `t` without any processing or special character: how a master reads.
fn raw(t: &Termios) -> Termios {
    let mut r = t.clone();
    r.iflag = 0;
    r.oflag = 0;
    r.lflag &= !(libc::ICANON | libc::ECHO | libc::ISIG | libc::IEXTEN | libc::PENDIN);
    r
}

/// The slave's termios `t` while queued bytes are put back: no input processing, no
/// special character but the line delimiters (canonical mode stays as it was, so that
/// complete lines are complete again), no output processing, and every byte echoed raw
/// (the echo says the line discipline took it). In packet mode the flow control
/// settings stay (a change would be reported to the master's reader).
fn putting_back(t: &Termios, packet: bool) -> Termios {
    let mut r = t.clone();
    r.iflag &= !(libc::IXOFF
        | libc::ICRNL
        | libc::INLCR
        | libc::IGNCR
        | libc::IUCLC
        | libc::ISTRIP
        | libc::INPCK
        | libc::PARMRK
        | libc::BRKINT
        | libc::IMAXBEL);
    if !packet {
        r.iflag &= !libc::IXON;
    }
    r.oflag = 0;
    r.lflag &= !(libc::ISIG
        | libc::IEXTEN
        | libc::ECHOCTL
        | libc::ECHOPRT
        | libc::ECHOE
        | libc::ECHOK
        | libc::ECHOKE
        | libc::ECHONL
        | libc::XCASE
        | libc::FLUSHO
        | libc::PENDIN
        | libc::TOSTOP);
    r.lflag |= libc::ECHO;
    for c in [
        libc::VERASE,
        libc::VKILL,
        libc::VEOF,
        libc::VWERASE,
        libc::VREPRINT,
        libc::VLNEXT,
        libc::VINTR,
        libc::VQUIT,
        libc::VSUSP,
        libc::VDISCARD,
    ] {
        if let Some(b) = r.cc.get_mut(c) {
            *b = 0;
        }
    }
    r
}

/// Take both queues of the pair (master `m`, slave `s` with termios `st`, master
/// termios `mt`): (input, output). Leaves both terminals in other modes: follow with
/// [`put_back`].
fn take_queues(
    m: RawFd,
    s: RawFd,
    st: &Termios,
    mt: &Termios,
    packet: bool,
) -> io::Result<(Vec<u8>, Vec<u8>)> {
    set_termios(m, &raw(mt))?;
    let output = read_ready(m, packet, None, 0)?;
    let mut nc = st.clone();
    nc.lflag &= !libc::ICANON;
    set_termios(s, &nc)?;
    let input = read_ready(s, false, None, 0)?;
    Ok((input, output))
}

/// Put `input` back in the slave's input queue and `output` in the master's, then give
/// both their termios (`st` the slave's, `mt` the master's).
fn put_back(
    m: RawFd,
    s: RawFd,
    st: &Termios,
    mt: &Termios,
    packet: bool,
    input: &[u8],
    output: &[u8],
) -> io::Result<()> {
    let moving = || -> io::Result<()> {
        if input.is_empty() && output.is_empty() {
            return Ok(());
        }
        set_termios(m, &raw(mt))?;
        set_termios(s, &putting_back(st, packet))?;
        if !input.is_empty() {
            write_all(m, input)?;
            let echo = read_ready(m, packet, Some(input.len()), SETTLE.as_millis() as i32)?;
            if echo.len() != input.len() {
                return Err(io::Error::other(format!(
                    "the slave's line discipline took {} of {} queued input bytes",
                    echo.len(),
                    input.len()
                )));
            }
        }
        if !output.is_empty() {
            write_all(s, output)?;
            let deadline = Instant::now() + SETTLE;
            while (get_int(m, libc::FIONREAD)? as usize) < output.len() {
                if Instant::now() > deadline {
                    return Err(io::Error::other(
                        "the queued output did not reach the master (output stopped?)",
                    ));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        Ok(())
    };
    let r = moving();
    set_termios(s, st)?;
    set_termios(m, mt)?;
    r
}

// ---------------------------------------------------------------------------------------
// dump

fn dump(d: &mut Dump) -> Option<Result<FdKind>> {
    let Target::Path(path, md) = d.target else {
        return None;
    };
    if !md.file_type().is_char_device() {
        return None;
    }
    let rdev = md.rdev();
    if (libc::major(rdev), libc::minor(rdev)) == (5, 2) {
        let (pid, fd) = (d.pid, d.fd);
        return Some(
            crate::procinfo::pidfd_getfd(pid, fd)
                .and_then(|m| get_int(m.as_raw_fd(), libc::TIOCGPTN))
                .map(|index| FdKind::PtyMaster {
                    index: index as u32,
                    pty: None,
                })
                .map_err(|e| TraceError::io(pid, format!("reading the pty index of fd {fd}"), e)),
        );
    }
    let index = path.strip_prefix("/dev/pts/")?.parse().ok()?;
    super::tty::is_tty_rdev(rdev).then_some(Ok(FdKind::PtySlave {
        index,
        dev_tty: false,
    }))
}

/// The pty index of a controlling terminal's device number (stat `tty_nr`), if a pty
/// slave.
fn pts_index(tty_nr: i32) -> Option<u32> {
    let v = tty_nr as u32;
    let major = (v >> 8) & 0xfff;
    let minor = (v & 0xff) | ((v >> 12) & 0xfff00);
    (136..=143)
        .contains(&major)
        .then_some((major - 136) * 256 + minor)
}

fn refuse(pid: i32, what: String) -> TraceError {
    TraceError::Unsupported { pid, what }
}

/// The state of the pair whose master is descriptor `fd` of process `pid`. `slave_open`:
/// a slave of it is open in the checkpoint.
fn read_pair(pid: i32, fd: i32, index: u32, slave_open: bool) -> Result<PtyState> {
    let what = |w: &str| format!("pty {index} (master fd {fd}): {w}");
    let io_err = |w: &str| {
        let w = what(w);
        move |e: io::Error| TraceError::io(pid, w, e)
    };
    let copy = crate::procinfo::pidfd_getfd(pid, fd).map_err(io_err("copying the master"))?;
    let m = copy.as_raw_fd();
    // Only the standard line discipline is saved, on either end.
    let n_tty = |t: RawFd, end: &str| -> Result<()> {
        let ldisc =
            get_int(t, libc::TIOCGETD).map_err(io_err(&format!("TIOCGETD of the {end}")))?;
        if ldisc == N_TTY {
            return Ok(());
        }
        Err(refuse(
            pid,
            what(&format!(
                "{end} line discipline {ldisc} (only N_TTY is saved)"
            )),
        ))
    };
    n_tty(m, "master")?;
    let master = termios_of(m).map_err(io_err("reading the master's termios"))?;
    let winsize = winsize(m).map_err(io_err("TIOCGWINSZ"))?;
    let packet = get_int(m, libc::TIOCGPKT).map_err(io_err("TIOCGPKT"))? != 0;
    let locked = get_int(m, libc::TIOCGPTLCK).map_err(io_err("TIOCGPTLCK"))? != 0;
    let session = match get_int(m, libc::TIOCGSID) {
        Ok(s) => s,
        Err(e) if e.raw_os_error() == Some(libc::ENOTTY) => 0,
        Err(e) => return Err(io_err("TIOCGSID")(e)),
    };
    let fg_pgrp = if session != 0 {
        get_int(m, libc::TIOCGPGRP).map_err(io_err("TIOCGPGRP"))?
    } else {
        0
    };
    // The master sees its slave closed (POLLHUP) once it was opened and closed again;
    // a slave never opened is not opened here either (closing it would show it closed).
    let hup = poll(m, 0, 0).map_err(io_err("poll"))? & libc::POLLHUP != 0;
    if !hup && !slave_open {
        if get_int(m, libc::FIONREAD).map_err(io_err("FIONREAD"))? > 0 {
            return Err(refuse(
                pid,
                what("data queued on a pair whose slave was never opened"),
            ));
        }
        return Ok(PtyState {
            slave: None,
            master,
            winsize,
            packet,
            locked,
            exclusive: false,
            session,
            fg_pgrp,
            input: Vec::new(),
            output: Vec::new(),
        });
    }
    if locked {
        set_int(m, libc::TIOCSPTLCK, 0).map_err(io_err("unlocking"))?;
    }
    let peer = open_peer(m, libc::O_RDWR | libc::O_NONBLOCK);
    if locked {
        set_int(m, libc::TIOCSPTLCK, 1).map_err(io_err("locking again"))?;
    }
    let peer = peer.map_err(io_err("opening the slave (TIOCGPTPEER)"))?;
    let s = peer.as_raw_fd();
    n_tty(s, "slave")?;
    let slave = termios_of(s).map_err(io_err("reading the slave's termios"))?;
    let exclusive = get_int(s, libc::TIOCGEXCL).map_err(io_err("TIOCGEXCL"))? != 0;
    if packet && slave.lflag & libc::EXTPROC != 0 {
        return Err(refuse(pid, what("packet mode with EXTPROC")));
    }
    let taken = take_queues(m, s, &slave, &master, packet);
    let (input, output) = match taken {
        Ok(q) => q,
        Err(e) => {
            let _ = set_termios(s, &slave);
            let _ = set_termios(m, &master);
            return Err(io_err("reading the queued data")(e));
        }
    };
    // Back where it was, for the job running on (or a dump that fails later).
    put_back(m, s, &slave, &master, packet, &input, &output)
        .map_err(io_err("putting the queued data back"))?;
    if slave.lflag & libc::ICANON != 0 && input.contains(&0) {
        return Err(refuse(
            pid,
            what("an end-of-file (^D) or NUL byte queued unread in canonical input"),
        ));
    }
    Ok(PtyState {
        slave: Some(slave),
        master,
        winsize,
        packet,
        locked,
        exclusive,
        session,
        fg_pgrp,
        input,
        output,
    })
}

fn dump_tree(procs: &mut [ProcessState]) -> Result<()> {
    // The first master descriptor of each pair in the checkpoint.
    let mut masters: BTreeMap<u32, (usize, usize)> = BTreeMap::new();
    for (p, s) in procs.iter().enumerate() {
        for (i, f) in s.fds.iter().enumerate() {
            if let FdKind::PtyMaster { index, .. } = f.kind {
                masters.entry(index).or_insert((p, i));
            }
        }
    }
    // A slave whose master is not in the checkpoint: a terminal outside it.
    let mut slaves = BTreeSet::new();
    for s in procs.iter_mut() {
        for f in s.fds.iter_mut() {
            if let FdKind::PtySlave { index, .. } = f.kind {
                if masters.contains_key(&index) {
                    slaves.insert(index);
                } else {
                    f.kind = FdKind::Tty {
                        path: format!("/dev/pts/{index}"),
                    };
                    super::tty::outside(s.pid, f)?;
                }
            }
        }
    }
    // Controlling terminals, and /dev/tty on one of these pairs.
    let mut cttys = HashMap::new();
    for s in procs.iter_mut() {
        let ctty = pts_index(crate::proc::stat(s.pid)?.tty_nr).filter(|i| masters.contains_key(i));
        if let Some(index) = ctty {
            cttys.insert(s.pid, index);
            for f in s.fds.iter_mut() {
                let dev_tty = matches!(&f.kind,
                    FdKind::Tty { path } | FdKind::TtyStd { path, .. } if path == "/dev/tty");
                if dev_tty {
                    f.kind = FdKind::PtySlave {
                        index,
                        dev_tty: true,
                    };
                    f.inherit = false;
                    slaves.insert(index);
                }
            }
        }
    }
    for (&index, &(p, i)) in &masters {
        let (pid, fd) = (procs[p].pid, procs[p].fds[i].fd);
        let st = read_pair(pid, fd, index, slaves.contains(&index))?;
        if st.session != 0 {
            if !procs.iter().any(|s| s.pid == st.session) {
                return Err(refuse(pid, format!("pty {index} (master fd {fd}) is the controlling terminal of session {}, whose leader is not in the checkpoint", st.session)));
            }
            if !procs.iter().any(|s| s.pgid == st.fg_pgrp) {
                return Err(refuse(pid, format!("pty {index} (master fd {fd}): its foreground process group {} has no process in the checkpoint", st.fg_pgrp)));
            }
        }
        for s in procs.iter() {
            let has = cttys.get(&s.pid) == Some(&index);
            if has != (st.session != 0 && s.sid == st.session) {
                return Err(refuse(
                    s.pid,
                    format!(
                        "its controlling terminal ({}) is not that of its session {} (pty {index})",
                        if has { "pty" } else { "none" },
                        s.sid
                    ),
                ));
            }
        }
        procs[p].fds[i].kind = FdKind::PtyMaster {
            index,
            pty: Some(st),
        };
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// restore

/// One new pair per saved pair, by saved index.
#[derive(Default)]
struct Ptys {
    pairs: BTreeMap<u32, Pair>,
}

struct Pair {
    master: OwnedFd,
    /// The restorer's own slave, while the restore prepares (opened when a descriptor
    /// or the saved state needs one).
    slave: Option<OwnedFd>,
    state: Option<PtyState>,
}

impl Pair {
    fn new(index: u32) -> RestoreResult<Pair> {
        let master = super::open(
            "/dev/ptmx",
            libc::O_RDWR | libc::O_NOCTTY,
            &format!("pty {index}"),
        )?;
        set_int(master.as_raw_fd(), libc::TIOCSPTLCK, 0)
            .with_context(|| format!("unlocking the new pty for pty {index}"))?;
        Ok(Pair {
            master,
            slave: None,
            state: None,
        })
    }

    fn slave(&mut self, index: u32) -> RestoreResult<RawFd> {
        if self.slave.is_none() {
            let s = open_peer(self.master.as_raw_fd(), libc::O_RDWR | libc::O_NONBLOCK)
                .with_context(|| format!("opening the slave of the new pty for pty {index}"))?;
            self.slave = Some(s);
        }
        Ok(self.slave.as_ref().map(|s| s.as_raw_fd()).unwrap_or(-1))
    }
}

fn pair(shared: &mut Shared, index: u32) -> RestoreResult<&mut Pair> {
    use std::collections::btree_map::Entry;
    Ok(match shared.part::<Ptys>().pairs.entry(index) {
        Entry::Occupied(e) => e.into_mut(),
        Entry::Vacant(e) => e.insert(Pair::new(index)?),
    })
}

fn restore(pid: i32, fd: &Fd, shared: &mut Shared) -> Option<RestoreResult<OwnedFd>> {
    let what = || format!("recreating pty fd {} of process {pid}", fd.fd);
    match &fd.kind {
        FdKind::PtyMaster { index, pty } => Some((|| {
            let p = pair(shared, *index)?;
            if let Some(st) = pty {
                p.state = Some(st.clone());
            }
            let m = p.master.try_clone().with_context(what)?;
            super::set_status_flags(&m, fd.flags).with_context(what)?;
            Ok(m)
        })()),
        FdKind::PtySlave { index, .. } => Some((|| {
            let p = pair(shared, *index)?;
            open_peer(p.master.as_raw_fd(), fd.flags).with_context(what)
        })()),
        _ => None,
    }
}

/// Once every process is prepared: each new pair gets its saved state.
fn finish(shared: &mut Shared) -> RestoreResult<()> {
    for (index, p) in shared.part::<Ptys>().pairs.iter_mut() {
        let index = *index;
        let Some(st) = p.state.clone() else {
            return Err(RestoreError::msg(format!(
                "pty {index}: its slave is in the checkpoint but not its state (no master)"
            )));
        };
        let ctx = |w: &str| format!("giving the new pty for pty {index} its {w}");
        let m = p.master.as_raw_fd();
        set_termios(m, &st.master).with_context(|| ctx("master's termios"))?;
        if let Some(slave) = &st.slave {
            let s = p.slave(index)?;
            put_back(m, s, slave, &st.master, false, &st.input, &st.output)
                .with_context(|| ctx("termios and queued data"))?;
            if st.exclusive {
                ioctl_arg(s, libc::TIOCEXCL, 0).with_context(|| ctx("exclusive mode"))?;
            }
        }
        set_winsize(m, st.winsize).with_context(|| ctx("window size"))?;
        if st.packet {
            set_int(m, libc::TIOCPKT, 1).with_context(|| ctx("packet mode"))?;
        }
        if st.locked {
            set_int(m, libc::TIOCSPTLCK, 1).with_context(|| ctx("lock"))?;
        }
    }
    Ok(())
}

/// The slave of the new pair that is the controlling terminal of the session process
/// `pid` leads, if any, and the session's foreground group: taken with TIOCSCTTY right
/// after its setsid; the group is made the foreground (TIOCSPGRP, which only a process
/// of the session may do) once it exists.
pub fn ctty(pid: i32, shared: &mut Shared) -> RestoreResult<Option<(OwnedFd, i32)>> {
    for (index, p) in shared.part::<Ptys>().pairs.iter_mut() {
        if p.state.as_ref().is_some_and(|s| s.session == pid) {
            let s = p.slave(*index)?;
            // SAFETY: `s` is our own open slave, kept in `p` for the call.
            let b = unsafe { std::os::fd::BorrowedFd::borrow_raw(s) };
            let fg = p.state.as_ref().map_or(0, |s| s.fg_pgrp);
            return Ok(Some((b.try_clone_to_owned()?, fg)));
        }
    }
    Ok(None)
}

fn describe(kind: &FdKind) -> Option<String> {
    match kind {
        FdKind::PtyMaster { index, pty } => Some(match pty {
            Some(st) => format!(
                "pty master {index} ({}x{}{}{}{}, {} bytes queued in, {} out)",
                st.winsize[1],
                st.winsize[0],
                if st.session != 0 {
                    format!(
                        ", terminal of session {} foreground {}",
                        st.session, st.fg_pgrp
                    )
                } else {
                    String::new()
                },
                if st.packet { ", packet mode" } else { "" },
                if st.locked { ", locked" } else { "" },
                st.input.len(),
                st.output.len()
            ),
            None => format!("pty master {index}"),
        }),
        FdKind::PtySlave { index, dev_tty } => Some(if *dev_tty {
            format!("pty slave {index} (opened as /dev/tty)")
        } else {
            format!("pty slave {index}")
        }),
        _ => None,
    }
}
