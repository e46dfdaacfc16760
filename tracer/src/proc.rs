//! Every /proc text the tracer reads is read and parsed here, and only here.
//!
//! The `procfs-core` crate (the parsing half of `procfs`) parses what it knows:
//! `stat`, `status`, `smaps` (regions, VmFlags), `mountinfo`, and the descriptor link
//! names. The rest is parsed by hand below, each parser with a test on text captured
//! from a real /proc: fdinfo (procfs has no fdinfo parser at all: pos, flags and the
//! per-kind lines of eventfd, timerfd, signalfd, inotify and epoll), `timers`,
//! `task/TID/children`, the `x86_Thread_features` line of `status`, `personality`,
//! `auxv` and `cmdline` (procfs returns auxv as a map, losing the order, and cmdline
//! as lossy strings), and the numeric directory listings (`task/`, `fd/`).
//!
//! A field the checkpoint depends on that is missing or does not parse is an error
//! ([`TraceError::Proc`]) naming the process, the file (with the fd in its path) and the
//! field: the dump refuses rather than save something wrong. Fields that some kernels
//! legitimately do not show are `Option`s, each with the reason.
//!
//! File access stays with the caller's error: reading a file of a process that is gone
//! is an I/O error (`NotFound`/`ESRCH`), which callers tell apart from bad text.

use crate::error::{Result, TraceError};
use crate::state::MmFields;
use procfs_core::FromRead;
use std::collections::BTreeSet;
use std::io;

pub use procfs_core::process::VmFlags;

/// What is wrong in the text of a /proc file: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bad {
    pub field: String,
    pub why: String,
}

/// The result of a parser of /proc text.
pub type Parsed<T> = std::result::Result<T, Bad>;

impl Bad {
    fn new(field: &str, why: impl Into<String>) -> Bad {
        Bad {
            field: field.to_string(),
            why: why.into(),
        }
    }
    fn missing(field: &str) -> Bad {
        Bad::new(field, "is missing")
    }
    fn value(field: &str, value: &str) -> Bad {
        Bad::new(field, format!("cannot be parsed: {value:?}"))
    }
    /// The error of process `pid` for `file` (a full /proc path).
    pub fn at(self, pid: i32, file: &str) -> TraceError {
        TraceError::Proc {
            pid,
            file: file.to_string(),
            field: self.field,
            why: self.why,
        }
    }
    /// The same as an `io::Error` (InvalidData), for callers that return those.
    pub fn into_io(self, file: &str) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{file}: field {} {}", self.field, self.why),
        )
    }
}

/// A parse error of the procfs crate, on one line.
fn crate_error(file: &str, e: procfs_core::ProcError) -> Bad {
    let msg = match e {
        procfs_core::ProcError::InternalError(i) => i.msg,
        e => e.to_string(),
    };
    let msg = msg.trim_start_matches("Internal Unwrap Error: ");
    Bad::new(
        file,
        format!(
            "cannot be parsed ({})",
            msg.split_whitespace().collect::<Vec<_>>().join(" ")
        ),
    )
}

/// `/proc/PID/REL`.
pub fn path(pid: i32, rel: &str) -> String {
    format!("/proc/{pid}/{rel}")
}

fn read(pid: i32, rel: &str) -> io::Result<String> {
    std::fs::read_to_string(path(pid, rel))
}

fn required<T>(v: Option<T>, field: &str, why: &str) -> Parsed<T> {
    v.ok_or_else(|| Bad::new(field, format!("is missing ({why})")))
}

// ---------------------------------------------------------------------------------------
// stat

/// The fields of /proc/PID/stat the tracer uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub comm: String,
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
    pub session: i32,
    /// Field 7: the controlling terminal's device number (0: none).
    pub tty_nr: i32,
    /// PF_* flags (field 9).
    pub flags: u32,
    /// Field 38: the signal the parent gets at exit.
    pub exit_signal: i32,
    /// Field 52: the wait status of a zombie.
    pub exit_code: i32,
    /// brk is 0: it comes from an injected brk(0).
    pub mm: MmFields,
}

/// Parse the text of /proc/PID/stat (or task/TID/stat).
pub fn parse_stat(text: &str) -> Parsed<Stat> {
    let s = procfs_core::process::Stat::from_read(text.as_bytes())
        .map_err(|e| crate_error("stat", e))?;
    // procfs makes the fields added after Linux 2.6 optional; this kernel line has them
    // all (3.5+), and a checkpoint needs every one of them.
    let since = "shown since Linux 3.5";
    Ok(Stat {
        comm: s.comm,
        state: s.state,
        ppid: s.ppid,
        pgrp: s.pgrp,
        session: s.session,
        tty_nr: s.tty_nr,
        flags: s.flags,
        exit_signal: required(s.exit_signal, "exit_signal (field 38)", since)?,
        exit_code: required(s.exit_code, "exit_code (field 52)", since)?,
        mm: MmFields {
            start_code: s.startcode,
            end_code: s.endcode,
            start_stack: s.startstack,
            start_data: required(s.start_data, "start_data (field 45)", since)?,
            end_data: required(s.end_data, "end_data (field 46)", since)?,
            start_brk: required(s.start_brk, "start_brk (field 47)", since)?,
            brk: 0,
            arg_start: required(s.arg_start, "arg_start (field 48)", since)?,
            arg_end: required(s.arg_end, "arg_end (field 49)", since)?,
            env_start: required(s.env_start, "env_start (field 50)", since)?,
            env_end: required(s.env_end, "env_end (field 51)", since)?,
        },
    })
}

/// /proc/PID/stat. `Ok(None)`: no such process (any more).
pub fn stat_if_exists(pid: i32) -> Result<Option<Stat>> {
    parsed_if_exists(pid, "stat", parse_stat)
}

/// /proc/PID/task/TID/stat. `Ok(None)`: no such thread (any more).
pub fn task_stat_if_exists(pid: i32, tid: i32) -> Result<Option<Stat>> {
    parsed_if_exists(pid, &format!("task/{tid}/stat"), parse_stat)
}

/// /proc/PID/stat; a process that is gone is an I/O error.
pub fn stat(pid: i32) -> Result<Stat> {
    let text = read(pid, "stat").map_err(|e| TraceError::io(pid, "reading stat", e))?;
    parse_stat(&text).map_err(|b| b.at(pid, &path(pid, "stat")))
}

fn gone(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH)
}

fn parsed_if_exists<T>(pid: i32, rel: &str, parse: fn(&str) -> Parsed<T>) -> Result<Option<T>> {
    match read(pid, rel) {
        Ok(text) => parse(&text)
            .map(Some)
            .map_err(|b| b.at(pid, &path(pid, rel))),
        Err(e) if gone(&e) => Ok(None),
        Err(e) => Err(TraceError::io(
            pid,
            format!("reading {}", path(pid, rel)),
            e,
        )),
    }
}

// ---------------------------------------------------------------------------------------
// status

/// The fields of /proc/PID/status the tracer uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub tgid: i32,
    pub tracer_pid: i32,
    /// Real, effective and saved uid.
    pub uids: [u32; 3],
    pub sig_caught: u64,
    pub sig_ignored: u64,
    /// None: a zombie (it has no fs_struct any more) or a kernel before 4.7. A
    /// checkpoint needs it: see [`Status::umask_of`].
    pub umask: Option<u32>,
    /// None: a kernel without CONFIG_SECCOMP, which has no filters either.
    pub seccomp: Option<u32>,
    /// `x86_Thread_features` (hand-parsed: procfs does not know it). None: a kernel
    /// without user shadow stacks (before 6.6, or CONFIG_X86_USER_SHADOW_STACK off),
    /// where no thread can have one.
    pub thread_features: Option<Vec<String>>,
}

/// Parse the text of /proc/PID/status (or task/TID/status).
pub fn parse_status(text: &str) -> Parsed<Status> {
    let s = procfs_core::process::Status::from_read(text.as_bytes())
        .map_err(|e| crate_error("status", e))?;
    let thread_features = text
        .lines()
        .find_map(|l| l.strip_prefix("x86_Thread_features:"))
        .map(|v| v.split_whitespace().map(str::to_string).collect());
    Ok(Status {
        tgid: s.tgid,
        tracer_pid: s.tracerpid,
        uids: [s.ruid, s.euid, s.suid],
        sig_caught: s.sigcgt,
        sig_ignored: s.sigign,
        umask: s.umask,
        seccomp: s.seccomp,
        thread_features,
    })
}

impl Status {
    /// The umask of live process `pid`, which a restore must set: missing is an error.
    pub fn umask_of(&self, pid: i32) -> Result<u32> {
        self.umask.ok_or_else(|| {
            Bad::new("Umask", "is missing (shown since Linux 4.7)").at(pid, &path(pid, "status"))
        })
    }
}

/// Parse the text of /proc/PID/limits: (soft, hard) for every RLIMIT_* in the
/// kernel's order (RLIMIT_CPU = 0 … RLIMIT_RTTIME = 15), RLIM_INFINITY for
/// "unlimited". The values are the kernel's exact integers, so nothing is lost.
pub fn parse_limits(text: &str) -> Parsed<Vec<(u64, u64)>> {
    use procfs_core::process::{Limit, LimitValue};
    let l = procfs_core::process::Limits::from_read(text.as_bytes())
        .map_err(|e| crate_error("limits", e))?;
    let v = |x: LimitValue| match x {
        LimitValue::Unlimited => u64::MAX,
        LimitValue::Value(n) => n,
    };
    let pair = |x: Limit| (v(x.soft_limit), v(x.hard_limit));
    Ok(vec![
        pair(l.max_cpu_time),
        pair(l.max_file_size),
        pair(l.max_data_size),
        pair(l.max_stack_size),
        pair(l.max_core_file_size),
        pair(l.max_resident_set),
        pair(l.max_processes),
        pair(l.max_open_files),
        pair(l.max_locked_memory),
        pair(l.max_address_space),
        pair(l.max_file_locks),
        pair(l.max_pending_signals),
        pair(l.max_msgqueue_size),
        pair(l.max_nice_priority),
        pair(l.max_realtime_priority),
        pair(l.max_realtime_timeout),
    ])
}

/// /proc/PID/limits, parsed (see [`parse_limits`]).
pub fn limits(pid: i32) -> Result<Vec<(u64, u64)>> {
    let text = read(pid, "limits").map_err(|e| TraceError::io(pid, "reading limits", e))?;
    parse_limits(&text).map_err(|b| b.at(pid, &path(pid, "limits")))
}

/// /proc/PID/status; a process that is gone is an I/O error.
/// Every `key: value` field of a status text, in order (the audit checks each one,
/// including those procfs does not know).
pub fn status_fields(text: &str) -> Vec<(&str, &str)> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k, v.trim()))
        .collect()
}

pub fn status(pid: i32) -> Result<Status> {
    let text = read(pid, "status").map_err(|e| TraceError::io(pid, "reading status", e))?;
    parse_status(&text).map_err(|b| b.at(pid, &path(pid, "status")))
}

/// /proc/PID/status. `Ok(None)`: no such process (any more).
pub fn status_if_exists(pid: i32) -> Result<Option<Status>> {
    parsed_if_exists(pid, "status", parse_status)
}

/// /proc/PID/task/TID/status. `Ok(None)`: no such thread (any more).
pub fn task_status_if_exists(pid: i32, tid: i32) -> Result<Option<Status>> {
    parsed_if_exists(pid, &format!("task/{tid}/status"), parse_status)
}

// ---------------------------------------------------------------------------------------
// smaps

/// Parse the text of /proc/PID/smaps: every region with its VmFlags, in address order.
pub fn parse_smaps(text: &str) -> Parsed<Vec<MapEntry>> {
    use procfs_core::process::{MMPermissions, MMapPath, MemoryMaps};
    let maps = MemoryMaps::from_read(text.as_bytes()).map_err(|e| crate_error("smaps", e))?;
    // procfs cannot tell a region without a VmFlags line (kernels before 3.8) from one
    // with no flags: the checkpoint depends on them (dc, wf, gd, ht, io, pf).
    let with_flags = text.lines().filter(|l| l.starts_with("VmFlags:")).count();
    if with_flags != maps.len() {
        return Err(Bad::new(
            "VmFlags",
            format!(
                "is missing for {} of {} regions (shown since Linux 3.8)",
                maps.len() - with_flags.min(maps.len()),
                maps.len()
            ),
        ));
    }
    // Every flag as the kernel wrote it: procfs drops the letters it does not know, and
    // the audit (tracer/src/audit.rs) must see those.
    let mut raw = text
        .lines()
        .filter_map(|l| l.strip_prefix("VmFlags:"))
        .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>());
    let mut out = Vec::with_capacity(maps.len());
    for m in maps {
        let p = m.perms;
        let bit = |f: MMPermissions, c: u8| if p.contains(f) { c } else { b'-' };
        let name = match m.pathname {
            MMapPath::Path(p) => p.to_string_lossy().into_owned(),
            MMapPath::Heap => "[heap]".into(),
            MMapPath::Stack => "[stack]".into(),
            MMapPath::TStack(t) => format!("[stack:{t}]"),
            MMapPath::Vdso => "[vdso]".into(),
            MMapPath::Vvar => "[vvar]".into(),
            MMapPath::Vsyscall => "[vsyscall]".into(),
            MMapPath::Rollup => "[rollup]".into(),
            MMapPath::Anonymous => String::new(),
            // procfs keeps the key, not the text: only the prefix matters (refused).
            MMapPath::Vsys(key) => format!("/SYSV{:08x}", key as u32),
            MMapPath::Other(o) => format!("[{o}]"),
        };
        let dev = |n: i32, what: &str| {
            u32::try_from(n).map_err(|_| Bad::value(&format!("device {what}"), &n.to_string()))
        };
        out.push(MapEntry {
            start: m.address.0,
            end: m.address.1,
            perms: [
                bit(MMPermissions::READ, b'r'),
                bit(MMPermissions::WRITE, b'w'),
                bit(MMPermissions::EXECUTE, b'x'),
                if p.contains(MMPermissions::SHARED) {
                    b's'
                } else {
                    b'p'
                },
            ],
            offset: m.offset,
            dev: (dev(m.dev.0, "major")?, dev(m.dev.1, "minor")?),
            inode: m.inode,
            name,
            vmflags: m.extension.vm_flags,
            flag_names: raw.next().unwrap_or_default(),
        });
    }
    Ok(out)
}

/// A private writable region of process `pid` (from /proc/PID/maps) of at least `len`
/// bytes, not one of the kernel's own: (start, end).
pub fn writable_region(pid: i32, len: u64) -> Result<Option<(u64, u64)>> {
    use procfs_core::process::{MMPermissions, MMapPath, MemoryMaps};
    let text = read(pid, "maps").map_err(|e| TraceError::io(pid, "reading maps", e))?;
    let maps = MemoryMaps::from_read(text.as_bytes())
        .map_err(|e| crate_error("maps", e).at(pid, &path(pid, "maps")))?;
    let rw = MMPermissions::READ | MMPermissions::WRITE | MMPermissions::PRIVATE;
    Ok(maps
        .into_iter()
        .filter(|m| m.perms.contains(rw) && !matches!(m.pathname, MMapPath::Vvar | MMapPath::Vdso))
        .map(|m| m.address)
        .find(|&(s, e)| e - s >= len))
}

/// The regions of process `pid` (from /proc/PID/maps) that map the file `(dev, ino)`:
/// (start, end, file offset), in address order.
pub fn regions_of_file(pid: i32, dev: (u32, u32), ino: u64) -> Result<Vec<(u64, u64, u64)>> {
    use procfs_core::process::MemoryMaps;
    let text = read(pid, "maps").map_err(|e| TraceError::io(pid, "reading maps", e))?;
    let maps = MemoryMaps::from_read(text.as_bytes())
        .map_err(|e| crate_error("maps", e).at(pid, &path(pid, "maps")))?;
    Ok(maps
        .into_iter()
        .filter(|m| m.inode == ino && (m.dev.0 as u32, m.dev.1 as u32) == dev)
        .map(|m| (m.address.0, m.address.1, m.offset))
        .collect())
}

/// Regions of the process from /proc/PID/smaps, in address order.
pub fn smaps(pid: i32) -> Result<Vec<MapEntry>> {
    let text = read(pid, "smaps").map_err(|e| TraceError::io(pid, "reading smaps", e))?;
    parse_smaps(&text).map_err(|b| b.at(pid, &path(pid, "smaps")))
}

// ---------------------------------------------------------------------------------------
// fdinfo (procfs has no parser for it)

/// The value of the fdinfo line `key: value`.
fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.trim())
    })
}

/// `key:value` and `key: value` pairs of one fdinfo line, in order.
fn pairs(line: &str) -> Vec<(&str, &str)> {
    let mut out = Vec::new();
    let mut it = line.split_whitespace();
    while let Some(tok) = it.next() {
        if let Some(k) = tok.strip_suffix(':') {
            if let Some(v) = it.next() {
                out.push((k, v));
            }
        } else if let Some((k, v)) = tok.split_once(':') {
            out.push((k, v));
        }
    }
    out
}

fn get<'a>(p: &[(&str, &'a str)], key: &str) -> Option<&'a str> {
    p.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

fn num<T: std::str::FromStr>(v: Option<&str>, field: &str) -> Parsed<T> {
    let v = v.ok_or_else(|| Bad::missing(field))?;
    v.trim().parse().map_err(|_| Bad::value(field, v))
}

fn radix<T: num_radix::FromRadix>(v: Option<&str>, field: &str, radix: u32) -> Parsed<T> {
    let v = v.ok_or_else(|| Bad::missing(field))?;
    T::from_radix(v.trim(), radix).ok_or_else(|| Bad::value(field, v))
}

/// An optional hex field: absent is None, present and unparsable is an error.
fn opt_hex(v: Option<&str>, field: &str) -> Parsed<Option<u64>> {
    v.map(|v| radix(Some(v), field, 16)).transpose()
}

mod num_radix {
    pub trait FromRadix: Sized {
        fn from_radix(s: &str, radix: u32) -> Option<Self>;
    }
    macro_rules! imp {
        ($($t:ty),*) => {$(impl FromRadix for $t {
            fn from_radix(s: &str, radix: u32) -> Option<Self> {
                <$t>::from_str_radix(s, radix).ok()
            }
        })*};
    }
    imp!(i32, u32, u64);
}

/// `(sec, nsec)` → nanoseconds.
fn timespec_ns(v: Option<&str>, field: &str) -> Parsed<u64> {
    let v = v.ok_or_else(|| Bad::missing(field))?;
    let parse = || {
        let (s, n) = v
            .trim()
            .strip_prefix('(')?
            .strip_suffix(')')?
            .split_once(',')?;
        let (s, n): (u64, u64) = (s.trim().parse().ok()?, n.trim().parse().ok()?);
        s.checked_mul(1_000_000_000)?.checked_add(n)
    };
    parse().ok_or_else(|| Bad::value(field, v))
}

/// The common lines of /proc/PID/fdinfo/FD, and the text for the per-kind parsers.
#[derive(Debug, Clone)]
pub struct FdInfo {
    pub pos: u64,
    /// open(2) flags, O_CLOEXEC included.
    pub flags: i32,
    pub text: String,
}

pub fn parse_fdinfo(text: &str) -> Parsed<FdInfo> {
    Ok(FdInfo {
        pos: num(field(text, "pos"), "pos")?,
        flags: radix(field(text, "flags"), "flags", 8)?,
        text: text.to_string(),
    })
}

/// The path of fdinfo `fd` of `pid`, which names both in errors.
pub fn fdinfo_path(pid: i32, fd: i32) -> String {
    path(pid, &format!("fdinfo/{fd}"))
}

/// /proc/PID/fdinfo/FD.
pub fn fdinfo(pid: i32, fd: i32) -> Result<FdInfo> {
    let file = fdinfo_path(pid, fd);
    let text = std::fs::read_to_string(&file)
        .map_err(|e| TraceError::io(pid, format!("fdinfo {fd}"), e))?;
    parse_fdinfo(&text).map_err(|b| b.at(pid, &file))
}

/// fs/eventfd.c: `eventfd-count: %16llx`, `eventfd-semaphore: %d`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventfdInfo {
    pub count: u64,
    /// None: an older kernel, which does not show it; such an eventfd is taken as a
    /// plain counter (as before).
    pub semaphore: Option<bool>,
}

pub fn parse_eventfd(text: &str) -> Parsed<EventfdInfo> {
    let semaphore = match field(text, "eventfd-semaphore") {
        None => None,
        Some("0") => Some(false),
        Some("1") => Some(true),
        Some(v) => return Err(Bad::value("eventfd-semaphore", v)),
    };
    Ok(EventfdInfo {
        count: radix(field(text, "eventfd-count"), "eventfd-count", 16)?,
        semaphore,
    })
}

/// kernel/pid.c (pidfd_show_fdinfo): `Pid: %d`, the process (or thread) in the pid
/// namespace of this /proc (0: not in it; -1: it has exited and was reaped).
pub fn parse_pidfd(text: &str) -> Parsed<i32> {
    num(field(text, "Pid"), "Pid")
}

/// fs/timerfd.c: `clockid: %d`, `ticks: %llu`, `settime flags: 0%o`,
/// `it_value: (%llu, %llu)` (time left, 0 once expired), `it_interval: (%llu, %llu)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimerfdInfo {
    pub clockid: i32,
    pub ticks: u64,
    pub settime_flags: i32,
    pub value_ns: u64,
    pub interval_ns: u64,
}

pub fn parse_timerfd(text: &str) -> Parsed<TimerfdInfo> {
    Ok(TimerfdInfo {
        clockid: num(field(text, "clockid"), "clockid")?,
        ticks: num(field(text, "ticks"), "ticks")?,
        settime_flags: radix(field(text, "settime flags"), "settime flags", 8)?,
        value_ns: timespec_ns(field(text, "it_value"), "it_value")?,
        interval_ns: timespec_ns(field(text, "it_interval"), "it_interval")?,
    })
}

/// fs/signalfd.c: `sigmask:\t%016x`, the accepted signals.
pub fn parse_signalfd(text: &str) -> Parsed<u64> {
    radix(field(text, "sigmask"), "sigmask", 16)
}

/// One `inotify wd:%x ino:%lx sdev:%x mask:%x ignored_mask:0 fhandle-bytes:%x
/// fhandle-type:%x f_handle:%02x...` line of fs/notify/fdinfo.c (all hex).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InotifyLine {
    pub wd: i32,
    pub ino: u64,
    /// A kernel-internal dev_t (see [`kdev_to_dev`]).
    pub sdev: u64,
    pub mask: u32,
    /// (fhandle-type, f_handle). None: the filesystem gives no file handle (no export
    /// operations), and the kernel prints none.
    pub handle: Option<(i32, Vec<u8>)>,
}

pub fn parse_inotify(text: &str) -> Parsed<Vec<InotifyLine>> {
    let mut out = Vec::new();
    for line in text.lines().filter_map(|l| l.strip_prefix("inotify ")) {
        let p = pairs(line);
        let handle = match (get(&p, "fhandle-type"), get(&p, "f_handle")) {
            (None, None) => None,
            (t, h) => {
                let h = h.ok_or_else(|| Bad::missing("inotify f_handle"))?;
                let bytes = unhex(h).ok_or_else(|| Bad::value("inotify f_handle", h))?;
                let t: i32 = radix(t, "inotify fhandle-type", 16)?;
                (!bytes.is_empty()).then_some((t, bytes))
            }
        };
        out.push(InotifyLine {
            wd: radix(get(&p, "wd"), "inotify wd", 16)?,
            ino: radix(get(&p, "ino"), "inotify ino", 16)?,
            sdev: radix(get(&p, "sdev"), "inotify sdev", 16)?,
            mask: radix(get(&p, "mask"), "inotify mask", 16)?,
            handle,
        });
    }
    Ok(out)
}

/// fs/notify/fdinfo.c for a fanotify group: its `fanotify flags:%x event-flags:%x`
/// line and one line per mark (all hex): an inode mark (`ino:`, `sdev:`, with its file
/// handle as inotify's), a mount mark (`mnt_id:`) or a filesystem mark (`sdev:` alone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FanotifyInfo {
    pub flags: u32,
    pub event_flags: u32,
    pub marks: Vec<FanotifyLine>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FanotifyTarget {
    /// An inode: (ino, kernel dev_t, file handle as in [`InotifyLine`]).
    Inode(u64, u64, Option<(i32, Vec<u8>)>),
    Mount(u32),
    /// A filesystem: its kernel dev_t.
    Filesystem(u64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FanotifyLine {
    pub target: FanotifyTarget,
    pub mflags: u32,
    pub mask: u64,
    pub ignored_mask: u64,
}

pub fn parse_fanotify(text: &str) -> Parsed<FanotifyInfo> {
    let mut info = None;
    let mut marks = Vec::new();
    for line in text.lines().filter_map(|l| l.strip_prefix("fanotify ")) {
        let p = pairs(line);
        if get(&p, "event-flags").is_some() {
            info = Some((
                radix(get(&p, "flags"), "fanotify flags", 16)?,
                radix(get(&p, "event-flags"), "fanotify event-flags", 16)?,
            ));
            continue;
        }
        let target = if let Some(ino) = get(&p, "ino") {
            let handle = match (get(&p, "fhandle-type"), get(&p, "f_handle")) {
                (None, None) => None,
                (t, h) => {
                    let h = h.ok_or_else(|| Bad::missing("fanotify f_handle"))?;
                    let bytes = unhex(h).ok_or_else(|| Bad::value("fanotify f_handle", h))?;
                    let t: i32 = radix(t, "fanotify fhandle-type", 16)?;
                    (!bytes.is_empty()).then_some((t, bytes))
                }
            };
            FanotifyTarget::Inode(
                radix(Some(ino), "fanotify ino", 16)?,
                radix(get(&p, "sdev"), "fanotify sdev", 16)?,
                handle,
            )
        } else if let Some(m) = get(&p, "mnt_id") {
            FanotifyTarget::Mount(radix(Some(m), "fanotify mnt_id", 16)?)
        } else {
            FanotifyTarget::Filesystem(radix(get(&p, "sdev"), "fanotify sdev", 16)?)
        };
        marks.push(FanotifyLine {
            target,
            mflags: radix(get(&p, "mflags"), "fanotify mflags", 16)?,
            mask: radix(get(&p, "mask"), "fanotify mask", 16)?,
            ignored_mask: radix(get(&p, "ignored_mask"), "fanotify ignored_mask", 16)?,
        });
    }
    let (flags, event_flags) = info.ok_or_else(|| Bad::missing("fanotify flags"))?;
    Ok(FanotifyInfo {
        flags,
        event_flags,
        marks,
    })
}

/// One `tfd: %8d events: %8x data: %16llx  pos:%lli ino:%lx sdev:%x` line of
/// fs/eventpoll.c.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpollLine {
    pub tfd: i32,
    pub events: u32,
    pub data: u64,
    /// ino and sdev (a kernel dev_t) of the watched file. None: kernels before 3.18
    /// do not show them.
    pub ino: Option<u64>,
    pub sdev: Option<u64>,
}

pub fn parse_epoll(text: &str) -> Parsed<Vec<EpollLine>> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| l.starts_with("tfd:")) {
        let p = pairs(line);
        out.push(EpollLine {
            tfd: num(get(&p, "tfd"), "epoll tfd")?,
            events: radix(get(&p, "events"), "epoll events", 16)?,
            data: radix(get(&p, "data"), "epoll data", 16)?,
            ino: opt_hex(get(&p, "ino"), "epoll ino")?,
            sdev: opt_hex(get(&p, "sdev"), "epoll sdev")?,
        });
    }
    Ok(out)
}

/// One lock of fs/locks.c (`lock_get_status`): a `lock:` line of /proc/PID/fdinfo/FD
/// (only the locks of that descriptor's open file description that this process owns:
/// its POSIX locks, and the OFD locks, flocks and leases of the description) or a line
/// of /proc/locks (every lock of the system, and the requests blocked on each, marked
/// `->`): `ID: [-> ]CLASS MODE TYPE PID MAJ:MIN:INO START END`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockLine {
    /// `POSIX`, `OFDLCK`, `FLOCK`, `LEASE`, `DELEG`, `ACCESS`, ... as printed.
    pub class: String,
    /// `ADVISORY`, `MANDATORY` (kernels before 5.15), `ACTIVE`, `BREAKING`, `BREAKER`
    /// (leases), `MSNFS` (old flock LOCK_MAND), ... as printed.
    pub mode: String,
    /// `WRITE`, `READ` or `UNLCK` (a lease being broken to nothing).
    pub access: String,
    /// The process that took it (-1 for OFD locks).
    pub pid: i32,
    /// st_dev and inode of the locked file; None: `<none>:0` (a lease breaker).
    pub file: Option<(u64, u64)>,
    pub start: u64,
    /// Last byte, inclusive; None: `EOF`.
    pub end: Option<u64>,
    /// A request waiting for this lock (`->`, /proc/locks only).
    pub blocked: bool,
}

/// Parse one lock line, without its `lock:` prefix.
pub fn parse_lock_line(line: &str) -> Parsed<LockLine> {
    let bad = || Bad::value("lock", line);
    let mut w = line.split_whitespace().peekable();
    let id = w.next().ok_or_else(bad)?;
    if !id.ends_with(':') {
        return Err(bad());
    }
    let blocked = w.next_if_eq(&"->").is_some();
    let mut next = || w.next().ok_or_else(bad);
    let (class, mode, access) = (next()?, next()?, next()?);
    let pid = next()?.parse().map_err(|_| bad())?;
    let file = match next()? {
        f if f.starts_with("<none>") => None,
        f => {
            let mut p = f.splitn(3, ':');
            let maj = u32::from_str_radix(p.next().ok_or_else(bad)?, 16).map_err(|_| bad())?;
            let min = u32::from_str_radix(p.next().ok_or_else(bad)?, 16).map_err(|_| bad())?;
            let ino = p.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
            Some((libc::makedev(maj, min), ino))
        }
    };
    let start = next()?.parse().map_err(|_| bad())?;
    let end = match next()? {
        "EOF" => None,
        e => Some(e.parse().map_err(|_| bad())?),
    };
    if w.next().is_some() {
        return Err(bad());
    }
    Ok(LockLine {
        class: class.to_string(),
        mode: mode.to_string(),
        access: access.to_string(),
        pid,
        file,
        start,
        end,
        blocked,
    })
}

/// The `lock:` lines of an fdinfo text.
pub fn parse_fd_locks(text: &str) -> Parsed<Vec<LockLine>> {
    text.lines()
        .filter_map(|l| l.strip_prefix("lock:"))
        .map(parse_lock_line)
        .collect()
}

/// Read /proc/locks once and forget it: the first read in a process takes several ms
/// (8 to 19 ms measured here, later ones 0.1 ms), which a dump pays before it freezes
/// anything rather than while the tree is stopped.
pub fn warm_up_locks() {
    let _ = std::fs::read("/proc/locks");
}

/// Every lock of /proc/locks (of the processes this PID namespace sees), read for the
/// dump of process `pid` (which errors name).
pub fn locks(pid: i32) -> Result<Vec<LockLine>> {
    let file = "/proc/locks";
    let text = std::fs::read_to_string(file).map_err(|e| TraceError::io(pid, file, e))?;
    text.lines()
        .map(parse_lock_line)
        .collect::<Parsed<_>>()
        .map_err(|b| b.at(pid, file))
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A kernel-internal dev_t (as fdinfo and sock_diag print s_dev) as userspace sees it
/// in st_dev.
pub fn kdev_to_dev(k: u64) -> u64 {
    libc::makedev((k >> 20) as u32, (k & 0xfffff) as u32)
}

// ---------------------------------------------------------------------------------------
// descriptors

/// What a /proc/PID/fd/N link names, as far as the tracer tells kinds apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FdTarget {
    Pipe(u64),
    Socket(u64),
    /// `anon_inode:NAME`: the name.
    AnonInode(String),
    /// Anything else, as the link reads (a path, `/memfd:NAME (deleted)`, `net:[N]`...).
    Other(String),
}

/// Parse a descriptor link target (with procfs: `pipe:[N]`, `socket:[N]`,
/// `anon_inode:NAME`).
pub fn parse_fd_target(target: &str) -> Parsed<FdTarget> {
    use procfs_core::process::FDTarget as T;
    if !(target.starts_with("pipe:") || target.starts_with("socket:")) {
        if let Some(name) = target.strip_prefix("anon_inode:") {
            // Whole, even if the name has a ':' (procfs would cut it there).
            return Ok(FdTarget::AnonInode(name.to_string()));
        }
        return Ok(FdTarget::Other(target.to_string()));
    }
    match target.parse::<T>() {
        Ok(T::Pipe(ino)) => Ok(FdTarget::Pipe(ino)),
        Ok(T::Socket(ino)) => Ok(FdTarget::Socket(ino)),
        _ => Err(Bad::value("link target", target)),
    }
}

/// The link target of /proc/PID/fd/FD. `Ok(None)`: closed meanwhile.
pub fn fd_target(pid: i32, fd: i32) -> Result<Option<FdTarget>> {
    let link = path(pid, &format!("fd/{fd}"));
    match std::fs::read_link(&link) {
        Ok(t) => parse_fd_target(&t.to_string_lossy())
            .map(Some)
            .map_err(|b| b.at(pid, &link)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(TraceError::io(pid, format!("reading fd {fd}"), e)),
    }
}

/// The numbers in a /proc directory of numbered entries (`fd/`, `task/`); any other
/// name is an error.
fn numbered(dir: &str) -> io::Result<BTreeSet<i32>> {
    let mut out = BTreeSet::new();
    for e in std::fs::read_dir(dir)? {
        let name = e?.file_name();
        let n = name
            .to_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Bad::value("entry", &name.to_string_lossy()).into_io(dir))?;
        out.insert(n);
    }
    Ok(out)
}

/// The open descriptors of `pid` (/proc/PID/fd), in order.
/// One row of a /proc/sysvipc table: its columns by their header names.
pub type SysvipcRow = std::collections::HashMap<String, i64>;

/// Parse the text of /proc/sysvipc/msg, sem or shm: every row, with each numeric
/// column by its header name (`key`, `msqid`, `lspid`, ...). Columns that are not
/// numbers are left out.
pub fn parse_sysvipc(text: &str) -> Vec<SysvipcRow> {
    let mut lines = text.lines();
    let Some(header) = lines.next() else {
        return Vec::new();
    };
    let names: Vec<&str> = header.split_whitespace().collect();
    lines
        .map(|l| {
            names
                .iter()
                .zip(l.split_whitespace())
                .filter_map(|(n, v)| Some((n.to_string(), v.parse::<i64>().ok()?)))
                .collect()
        })
        .filter(|r: &SysvipcRow| !r.is_empty())
        .collect()
}

/// The rows of /proc/sysvipc/`name` (none on a kernel without SysV IPC).
pub fn sysvipc(name: &str) -> Vec<SysvipcRow> {
    std::fs::read_to_string(format!("/proc/sysvipc/{name}"))
        .map(|t| parse_sysvipc(&t))
        .unwrap_or_default()
}

pub fn fd_numbers(pid: i32) -> io::Result<BTreeSet<i32>> {
    numbered(&path(pid, "fd"))
}

/// The threads of `pid` (/proc/PID/task).
pub fn tasks(pid: i32) -> io::Result<BTreeSet<i32>> {
    numbered(&path(pid, "task"))
}

/// Parse /proc/PID/task/TID/children: pids separated by spaces.
pub fn parse_children(text: &str) -> Parsed<Vec<i32>> {
    text.split_whitespace()
        .map(|c| c.parse().map_err(|_| Bad::value("child pid", c)))
        .collect()
}

/// The children of `pid`, all threads together. A thread that ended meanwhile has none.
pub fn children(pid: i32) -> io::Result<BTreeSet<i32>> {
    let mut out = BTreeSet::new();
    for tid in tasks(pid)? {
        let rel = format!("task/{tid}/children");
        let text = match read(pid, &rel) {
            Ok(t) => t,
            Err(e) if gone(&e) => continue,
            Err(e) => return Err(e),
        };
        out.extend(parse_children(&text).map_err(|b| b.into_io(&path(pid, &rel)))?);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// mountinfo

/// A line of /proc/self/mountinfo, as far as the tracer uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// `MAJOR:MINOR` of the filesystem.
    pub majmin: String,
    /// The directory of the filesystem mounted there.
    pub root: String,
    /// The mount point, unescaped.
    pub point: String,
    /// The filesystem type (`ext4`, `cgroup2`, ...).
    pub fs_type: String,
    /// The superblock options, e.g. a cgroup v1 hierarchy's controllers (`memory`,
    /// `name=systemd`).
    pub super_options: Vec<String>,
}

/// The cgroup of process `pid` in each hierarchy (/proc/PID/cgroup):
/// (hierarchy id, controllers, path); hierarchy 0 with no controllers is cgroup v2.
pub fn cgroups(pid: i32) -> Result<Vec<(u32, String, String)>> {
    let text = read(pid, "cgroup").map_err(|e| TraceError::io(pid, "reading cgroup", e))?;
    let c = procfs_core::ProcessCGroups::from_read(text.as_bytes())
        .map_err(|e| crate_error("cgroup", e).at(pid, &path(pid, "cgroup")))?;
    Ok(c.into_iter()
        .map(|g| (g.hierarchy, g.controllers.join(","), g.pathname))
        .collect())
}

/// The kernel's octal escapes (`\040` for space, `\011`, `\012`, `\134`).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn parse_mountinfo(text: &str) -> Parsed<Vec<Mount>> {
    let m = procfs_core::process::MountInfos::from_read(text.as_bytes())
        .map_err(|e| crate_error("mountinfo", e))?;
    Ok(m.into_iter()
        .map(|m| Mount {
            majmin: m.majmin,
            root: unescape(&m.root),
            point: unescape(&m.mount_point.to_string_lossy()),
            fs_type: m.fs_type,
            super_options: m
                .super_options
                .into_iter()
                .map(|(k, v)| match v {
                    Some(v) => format!("{k}={v}"),
                    None => k,
                })
                .collect(),
        })
        .collect())
}

/// Our own mounts (/proc/self/mountinfo).
pub fn own_mounts() -> std::result::Result<Vec<Mount>, String> {
    let file = "/proc/self/mountinfo";
    let text = std::fs::read_to_string(file).map_err(|e| format!("reading {file}: {e}"))?;
    parse_mountinfo(&text).map_err(|b| format!("{file}: field {} {}", b.field, b.why))
}

// ---------------------------------------------------------------------------------------
// timers

pub const SIGEV_SIGNAL: i32 = 0;
pub const SIGEV_NONE: i32 = 1;
pub const SIGEV_THREAD: i32 = 2;
pub const SIGEV_THREAD_ID: i32 = 4;

/// One block of /proc/PID/timers (fs/proc/base.c, show_timer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcTimer {
    pub id: i32,
    pub signo: i32,
    pub sigval: u64,
    /// sigev_notify as the kernel keeps it (SIGEV_THREAD_ID included).
    pub notify: i32,
    /// The pid (or, with SIGEV_THREAD_ID, the tid) that is signalled.
    pub target: i32,
    pub clock: i32,
}

/// Parse the text of /proc/PID/timers; each block must have all four lines.
pub fn parse_timers(text: &str) -> Parsed<Vec<ProcTimer>> {
    let bad = |line: &str| Bad::new("line", format!("is unexpected: {line:?}"));
    // With, per timer, which of signal, notify, ClockID were seen.
    let mut out: Vec<(ProcTimer, [bool; 3])> = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (key, val) = line.split_once(':').ok_or_else(|| bad(line))?;
        let val = val.trim();
        if key == "ID" {
            out.push((
                ProcTimer {
                    id: val.parse().map_err(|_| bad(line))?,
                    signo: 0,
                    sigval: 0,
                    notify: SIGEV_SIGNAL,
                    target: 0,
                    clock: 0,
                },
                [false; 3],
            ));
            continue;
        }
        let (t, seen) = out.last_mut().ok_or_else(|| bad(line))?;
        match key {
            "signal" => {
                let (sig, value) = val.split_once('/').ok_or_else(|| bad(line))?;
                t.signo = sig.parse().map_err(|_| bad(line))?;
                // %px prints 16 hex digits; old kernels printed "(null)" for NULL.
                t.sigval = match value {
                    "(null)" => 0,
                    v => u64::from_str_radix(v.trim_start_matches("0x"), 16)
                        .map_err(|_| bad(line))?,
                };
                seen[0] = true;
            }
            "notify" => {
                let (kind, who) = val.split_once('/').ok_or_else(|| bad(line))?;
                let base = match kind {
                    "signal" => SIGEV_SIGNAL,
                    "none" => SIGEV_NONE,
                    "thread" => SIGEV_THREAD,
                    _ => return Err(bad(line)),
                };
                let (pt, n) = who.split_once('.').ok_or_else(|| bad(line))?;
                t.notify = match pt {
                    "pid" => base,
                    "tid" => base | SIGEV_THREAD_ID,
                    _ => return Err(bad(line)),
                };
                t.target = n.parse().map_err(|_| bad(line))?;
                seen[1] = true;
            }
            "ClockID" => {
                t.clock = val.parse().map_err(|_| bad(line))?;
                seen[2] = true;
            }
            _ => {} // a field added by a newer kernel
        }
    }
    out.into_iter()
        .map(|(t, seen)| match seen.iter().position(|s| !s) {
            Some(i) => Err(Bad::new(
                ["signal", "notify", "ClockID"][i],
                format!("is missing for timer {}", t.id),
            )),
            None => Ok(t),
        })
        .collect()
}

/// /proc/PID/timers. None: the kernel has no such file (CONFIG_CHECKPOINT_RESTORE off),
/// and then no way to list POSIX timers.
pub fn timers(pid: i32) -> Result<Option<Vec<ProcTimer>>> {
    match read(pid, "timers") {
        Ok(text) => parse_timers(&text)
            .map(Some)
            .map_err(|b| b.at(pid, &path(pid, "timers"))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(TraceError::io(pid, "reading /proc/PID/timers", e)),
    }
}

// ---------------------------------------------------------------------------------------
// small files

/// /proc/PID/task/TID/comm.
pub fn comm(pid: i32, tid: i32) -> io::Result<String> {
    Ok(read(pid, &format!("task/{tid}/comm"))?
        .trim_end_matches('\n')
        .to_string())
}

/// Parse /proc/PID/auxv: native-endian u64 words (type, value pairs up to AT_NULL).
pub fn parse_auxv(b: &[u8]) -> Parsed<Vec<u64>> {
    if !b.len().is_multiple_of(16) {
        return Err(Bad::new(
            "auxv",
            format!("has {} bytes, not whole (type, value) pairs", b.len()),
        ));
    }
    Ok(b.chunks_exact(8)
        .map(|c| u64::from_ne_bytes(c.try_into().expect("8 bytes")))
        .collect())
}

pub fn auxv(pid: i32) -> Result<Vec<u64>> {
    let b = std::fs::read(path(pid, "auxv")).map_err(|e| TraceError::io(pid, "reading auxv", e))?;
    parse_auxv(&b).map_err(|bad| bad.at(pid, &path(pid, "auxv")))
}

/// /proc/PID/cmdline: the arguments, NUL-terminated (empty ones dropped, as before:
/// the command line is shown, not restored).
pub fn cmdline(pid: i32) -> io::Result<Vec<String>> {
    let b = std::fs::read(path(pid, "cmdline"))?;
    Ok(b.split(|&c| c == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect())
}

/// Parse /proc/PID/personality: `%08x`.
pub fn parse_personality(text: &str) -> Parsed<u32> {
    u32::from_str_radix(text.trim(), 16).map_err(|_| Bad::value("personality", text.trim()))
}

pub fn personality(pid: i32) -> Result<u32> {
    let text =
        read(pid, "personality").map_err(|e| TraceError::io(pid, "reading personality", e))?;
    parse_personality(&text).map_err(|b| b.at(pid, &path(pid, "personality")))
}

/// A /proc/PID link (`exe`, `cwd`) as text.
pub fn link(pid: i32, rel: &str) -> io::Result<String> {
    Ok(std::fs::read_link(path(pid, rel))?
        .to_string_lossy()
        .into_owned())
}

/// kernel.yama.ptrace_scope. None: no Yama in this kernel (or an unreadable value:
/// only used to explain a refusal).
pub fn yama_ptrace_scope() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// One region of /proc/PID/smaps: its maps line and its VmFlags.
#[derive(Debug, Clone)]
pub struct MapEntry {
    pub start: u64,
    pub end: u64,
    pub perms: [u8; 4],
    pub offset: u64,
    pub dev: (u32, u32),
    pub inode: u64,
    pub name: String,
    pub vmflags: VmFlags,
    /// The VmFlags letters as shown (`rd`, `wr`, ...), unknown ones included.
    pub flag_names: Vec<String>,
}

impl MapEntry {
    pub fn prot(&self) -> u32 {
        let mut p = 0;
        if self.perms[0] == b'r' {
            p |= libc::PROT_READ as u32;
        }
        if self.perms[1] == b'w' {
            p |= libc::PROT_WRITE as u32;
        }
        if self.perms[2] == b'x' {
            p |= libc::PROT_EXEC as u32;
        }
        p
    }
    pub fn shared(&self) -> bool {
        self.perms[3] == b's'
    }
    pub fn has_flag(&self, f: VmFlags) -> bool {
        self.vmflags.contains(f)
    }
    /// One of the kernel's own mappings (vdso, vvar, vsyscall), which carry flags the
    /// kernel set itself and which a restore maps the kernel's way.
    pub fn kernel_made(&self) -> bool {
        matches!(
            self.name.as_str(),
            "[vvar]" | "[vvar_vclock]" | "[vdso]" | "[vsyscall]"
        )
    }
}

/// /proc/PID/oom_score_adj.
pub fn oom_score_adj(pid: i32) -> Result<i32> {
    let p = path(pid, "oom_score_adj");
    let text =
        std::fs::read_to_string(&p).map_err(|e| TraceError::io(pid, format!("reading {p}"), e))?;
    text.trim()
        .parse()
        .map_err(|_| Bad::new("oom_score_adj", "is not an integer").at(pid, &p))
}

// ---------------------------------------------------------------------------------------
// /proc/PID/net/tcp, tcp6

/// One row of /proc/PID/net/tcp or tcp6 (net/ipv4/tcp_ipv4.c `get_tcp4_sock`,
/// `get_openreq4`, `get_timewait4_sock`): addresses in network byte order (4 or 16
/// bytes), ports, the state, the queues (for a listening socket: `rx_queue` is the
/// accept queue's length, `tx_queue` its backlog; else the bytes unread and unacked),
/// the inode (0: no descriptor, e.g. a connection waiting to be accepted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpRow {
    pub local: (Vec<u8>, u16),
    pub remote: (Vec<u8>, u16),
    pub state: u8,
    pub tx_queue: u32,
    pub rx_queue: u32,
    pub inode: u64,
}

/// `HEX:PORT`, the address printed as 32-bit words in host order.
fn parse_tcp_addr(s: &str) -> Option<(Vec<u8>, u16)> {
    let (ip, port) = s.split_once(':')?;
    if ip.len() % 8 != 0 || ip.is_empty() || ip.len() > 32 {
        return None;
    }
    let mut b = Vec::new();
    for i in (0..ip.len()).step_by(8) {
        let w = u32::from_str_radix(&ip[i..i + 8], 16).ok()?;
        b.extend_from_slice(&w.to_ne_bytes());
    }
    Some((b, u16::from_str_radix(port, 16).ok()?))
}

pub fn parse_net_tcp(text: &str) -> Parsed<Vec<TcpRow>> {
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 {
            continue;
        }
        let bad = || Bad::value("net/tcp line", line);
        let local = parse_tcp_addr(f[1]).ok_or_else(bad)?;
        let remote = parse_tcp_addr(f[2]).ok_or_else(bad)?;
        let state = u8::from_str_radix(f[3], 16).map_err(|_| bad())?;
        let (tx, rx) = f[4].split_once(':').ok_or_else(bad)?;
        let tx_queue = u32::from_str_radix(tx, 16).map_err(|_| bad())?;
        let rx_queue = u32::from_str_radix(rx, 16).map_err(|_| bad())?;
        let inode = f[9].parse().map_err(|_| bad())?;
        out.push(TcpRow {
            local,
            remote,
            state,
            tx_queue,
            rx_queue,
            inode,
        });
    }
    Ok(out)
}

/// Every TCP socket of the network namespace of process `pid`, IPv4 and IPv6.
pub fn net_tcp(pid: i32) -> Result<Vec<TcpRow>> {
    let mut out = Vec::new();
    for rel in ["net/tcp", "net/tcp6"] {
        let text = match read(pid, rel) {
            Ok(t) => t,
            // No IPv6 in this kernel.
            Err(e) if rel == "net/tcp6" && e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(TraceError::io(pid, format!("reading /proc/{pid}/{rel}"), e)),
        };
        out.extend(parse_net_tcp(&text).map_err(|b| b.at(pid, &path(pid, rel)))?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn limits_parse_as_getrlimit_says() {
        let sample = include_str!("proc_samples/limits.txt");
        let l = parse_limits(sample).unwrap();
        assert_eq!(l.len(), 16);
        assert!(l.iter().all(|&(soft, hard)| soft <= hard));
        // The live file agrees with getrlimit for every resource.
        let live = parse_limits(&std::fs::read_to_string("/proc/self/limits").unwrap()).unwrap();
        for (res, &(soft, hard)) in live.iter().enumerate() {
            let mut r = libc::rlimit64 {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: getrlimit64 writes one rlimit64 into the local `r`.
            assert_eq!(unsafe { libc::getrlimit64(res as _, &mut r) }, 0);
            assert_eq!((soft, hard), (r.rlim_cur, r.rlim_max), "resource {res}");
        }
        assert!(parse_limits("Limit  Soft Limit\nMax cpu time  x y seconds\n").is_err());
    }

    use super::*;

    // Captured on this project's test machine (Linux 6.18, x86-64) from a small C
    // program holding one descriptor of each kind.
    const STAT: &str = include_str!("proc_samples/stat.txt");
    const STATUS: &str = include_str!("proc_samples/status.txt");
    const SMAPS: &str = include_str!("proc_samples/smaps.txt");
    const MOUNTINFO: &str = include_str!("proc_samples/mountinfo.txt");
    const FD_EVENTFD: &str = include_str!("proc_samples/fdinfo_eventfd.txt");
    const FD_TIMERFD: &str = include_str!("proc_samples/fdinfo_timerfd.txt");
    const FD_SIGNALFD: &str = include_str!("proc_samples/fdinfo_signalfd.txt");
    const FD_INOTIFY: &str = include_str!("proc_samples/fdinfo_inotify.txt");
    const FD_EPOLL: &str = include_str!("proc_samples/fdinfo_epoll.txt");
    const FD_FILE: &str = include_str!("proc_samples/fdinfo_file.txt");

    fn field_of<T: std::fmt::Debug>(r: Parsed<T>) -> String {
        r.unwrap_err().field
    }

    #[test]
    fn stat() {
        let s = parse_stat(STAT).unwrap();
        assert_eq!((s.comm.as_str(), s.state), ("s", 'S'));
        assert_eq!((s.ppid, s.pgrp, s.session), (1, 27334, 10988));
        assert_eq!((s.flags, s.exit_signal, s.exit_code), (4194304, 17, 0));
        assert_eq!(s.mm.start_code, 94822882140160);
        assert_eq!(s.mm.end_code, 94822882141305);
        assert_eq!(s.mm.start_stack, 140737177300784);
        assert_eq!(s.mm.start_data, 94822882151888);
        assert_eq!(s.mm.start_brk, 94823291420672);
        assert_eq!(s.mm.env_end, 140737177305076);
        // A name with spaces and parentheses.
        let odd = STAT.replacen("(s)", "(a (b) c)", 1);
        assert_eq!(parse_stat(&odd).unwrap().comm, "a (b) c");
        // A field that does not parse, a line cut short.
        assert!(parse_stat(&STAT.replacen(" 27334 ", " x ", 1)).is_err());
        let cut: Vec<&str> = STAT.split(' ').collect();
        assert_eq!(
            field_of(parse_stat(&cut[..51].join(" "))),
            "exit_code (field 52)"
        );
        assert!(parse_stat(&cut[..46].join(" ")).is_err());
        assert!(parse_stat(&cut[..20].join(" ")).is_err());
    }

    #[test]
    fn status() {
        let s = parse_status(STATUS).unwrap();
        assert_eq!((s.tgid, s.tracer_pid, s.uids), (27351, 0, [0, 0, 0]));
        assert_eq!((s.sig_caught, s.sig_ignored), (0, 0x806));
        assert_eq!((s.umask, s.seccomp), (Some(0o022), Some(0)));
        assert_eq!(s.thread_features, None);
        let with = STATUS.replace(
            "Threads:",
            "x86_Thread_features:\tshstk wrss\nx86_Thread_features_locked:\t\nThreads:",
        );
        assert_eq!(
            parse_status(&with).unwrap().thread_features,
            Some(vec!["shstk".to_string(), "wrss".to_string()])
        );
        // A SigCgt that does not parse is an error, not "no handlers".
        let e =
            parse_status(&STATUS.replace("SigCgt:\t0000000000000000", "SigCgt:\tzz")).unwrap_err();
        assert!(e.why.contains("SigCgt"), "{e:?}");
        assert!(parse_status(&STATUS.replace("SigIgn:", "SigIgnored:")).is_err());
        // A zombie has no Umask line.
        let zombie = STATUS.replace("Umask:\t0022\n", "");
        assert_eq!(parse_status(&zombie).unwrap().umask, None);
        let e = parse_status(&zombie).unwrap().umask_of(7).unwrap_err();
        assert!(e.to_string().contains("/proc/7/status: field Umask"), "{e}");
        assert!(parse_status(&STATUS.replace("Umask:\t0022", "Umask:\t9")).is_err());
        // Seccomp is legitimately absent without CONFIG_SECCOMP.
        let no_seccomp = STATUS.replace("Seccomp:\t0\n", "");
        assert_eq!(parse_status(&no_seccomp).unwrap().seccomp, None);
    }

    #[test]
    fn smaps() {
        let m = parse_smaps(SMAPS).unwrap();
        let names: Vec<&str> = m.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "/tmp/parse-samples/s",
                "[heap]",
                "",
                "",
                "/dev/zero (deleted)",
                "",
                "[vvar]",
                "[vvar_vclock]",
                "[vdso]",
                "[stack]"
            ]
        );
        let exe = &m[0];
        assert_eq!((exe.start, exe.end), (0x563dac34e000, 0x563dac34f000));
        assert_eq!((&exe.perms, exe.offset), (b"r-xp", 0x1000));
        assert_eq!((exe.dev, exe.inode), ((0xfe, 0), 10011773));
        assert!(exe.vmflags.contains(VmFlags::EX | VmFlags::MR));
        let shm = &m[4];
        assert_eq!((&shm.perms, shm.dev, shm.inode), (b"rw-s", (0, 1), 2301));
        assert!(shm.vmflags.contains(VmFlags::SH | VmFlags::MS));
        assert!(m[6].vmflags.contains(VmFlags::IO | VmFlags::PF));
        assert!(m[9].vmflags.contains(VmFlags::GD));
        assert!(!m[9].vmflags.contains(VmFlags::DC));
        // Unparsable numbers, a region without VmFlags.
        assert!(parse_smaps(&SMAPS.replacen("Rss:", "Rss: x", 1)).is_err());
        assert!(parse_smaps(&SMAPS.replacen("563dac34e000-", "563dacz4e000-", 1)).is_err());
        assert_eq!(
            field_of(parse_smaps(&SMAPS.replacen(
                "VmFlags: rd ex mr mw me \n",
                "",
                1
            ))),
            "VmFlags"
        );
    }

    #[test]
    fn lock_lines() {
        let fe = libc::makedev(0xfe, 0);
        let l = parse_fd_locks(include_str!("proc_samples/fdinfo_locks.txt")).unwrap();
        assert_eq!(
            l,
            [
                LockLine {
                    class: "POSIX".into(),
                    mode: "ADVISORY".into(),
                    access: "WRITE".into(),
                    pid: 8364,
                    file: Some((fe, 10010851)),
                    start: 10,
                    end: Some(29),
                    blocked: false,
                },
                LockLine {
                    class: "POSIX".into(),
                    mode: "ADVISORY".into(),
                    access: "READ".into(),
                    pid: 8364,
                    file: Some((fe, 10010851)),
                    start: 100,
                    end: None,
                    blocked: false,
                },
            ]
        );
        assert!(parse_fd_locks(FD_FILE).unwrap().is_empty());
        let all: Vec<LockLine> = include_str!("proc_samples/locks.txt")
            .lines()
            .map(|l| parse_lock_line(l).unwrap())
            .collect();
        assert_eq!(all.len(), 5);
        assert_eq!(
            (all[0].class.as_str(), all[0].mode.as_str()),
            ("LEASE", "BREAKING")
        );
        assert!(all[1].blocked && all[1].file.is_none() && all[1].mode == "BREAKER");
        assert_eq!(
            (all[2].class.as_str(), all[2].pid, all[2].end),
            ("OFDLCK", -1, Some(4))
        );
        assert_eq!(
            (all[3].class.as_str(), all[3].access.as_str()),
            ("FLOCK", "WRITE")
        );
        // An old kernel's mandatory lock parses (the audit refuses it).
        let m = parse_lock_line("1: POSIX  MANDATORY WRITE 7 08:01:12 0 EOF").unwrap();
        assert_eq!(m.mode, "MANDATORY");
        for bad in [
            "1: POSIX ADVISORY WRITE x fe:00:1 0 EOF",
            "1: POSIX ADVISORY WRITE 7 fe:00 0 EOF",
            "1: POSIX ADVISORY WRITE 7 fe:00:1 0",
            "1: POSIX ADVISORY WRITE 7 fe:00:1 0 EOF extra",
            "POSIX ADVISORY WRITE 7 fe:00:1 0 EOF",
        ] {
            assert!(parse_lock_line(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn fdinfo_common() {
        let f = parse_fdinfo(FD_FILE).unwrap();
        assert_eq!((f.pos, f.flags), (3, 0o100000));
        let e = parse_fdinfo(FD_EVENTFD).unwrap();
        assert_eq!(e.flags, 0o2000002);
        assert_eq!(
            field_of(parse_fdinfo(&FD_FILE.replace("pos:", "p:"))),
            "pos"
        );
        assert_eq!(
            field_of(parse_fdinfo(&FD_FILE.replace("0100000", "0100008"))),
            "flags"
        );
    }

    #[test]
    fn fdinfo_kinds() {
        assert_eq!(
            parse_eventfd(FD_EVENTFD).unwrap(),
            EventfdInfo {
                count: 5,
                semaphore: Some(true)
            }
        );
        let old = FD_EVENTFD.replace("eventfd-semaphore: 1\n", "");
        assert_eq!(parse_eventfd(&old).unwrap().semaphore, None);
        assert!(parse_eventfd(&FD_EVENTFD.replace("semaphore: 1", "semaphore: 2")).is_err());
        assert!(parse_eventfd(&FD_EVENTFD.replace("count:                5", "count: g")).is_err());

        assert_eq!(
            parse_timerfd(FD_TIMERFD).unwrap(),
            TimerfdInfo {
                clockid: 1,
                ticks: 0,
                settime_flags: 0,
                value_ns: 88_096_061_339,
                interval_ns: 1_000_000_500,
            }
        );
        assert_eq!(
            field_of(parse_timerfd(&FD_TIMERFD.replace("(1, 500)", "(1 500)"))),
            "it_interval"
        );

        assert_eq!(parse_signalfd(FD_SIGNALFD).unwrap(), 0x4200);
        assert_eq!(field_of(parse_signalfd(FD_FILE)), "sigmask");

        let w = parse_inotify(FD_INOTIFY).unwrap();
        assert_eq!(w.len(), 2);
        assert_eq!(
            w[0],
            InotifyLine {
                wd: 2,
                ino: 0x13,
                sdev: 0xfe00000,
                mask: 2,
                handle: Some((1, vec![0x13, 0, 0, 0, 0, 0, 0, 0])),
            }
        );
        assert_eq!(kdev_to_dev(w[0].sdev), libc::makedev(254, 0));
        assert_eq!((w[1].wd, w[1].ino, w[1].mask), (1, 0x3c4a7, 0x300));
        let no_handle = FD_INOTIFY.replace(
            " fhandle-bytes:8 fhandle-type:1 f_handle:1300000000000000",
            "",
        );
        assert_eq!(parse_inotify(&no_handle).unwrap()[0].handle, None);
        assert!(parse_inotify(&FD_INOTIFY.replace("f_handle:13", "f_handle:1")).is_err());
        assert!(parse_inotify(&FD_INOTIFY.replace("wd:2", "wd:")).is_err());

        let e = parse_epoll(FD_EPOLL).unwrap();
        assert_eq!(
            e,
            [
                EpollLine {
                    tfd: 4,
                    events: 0x1d,
                    data: 7,
                    ino: Some(0x40e),
                    sdev: Some(0x10)
                },
                EpollLine {
                    tfd: 3,
                    events: 0x19,
                    data: 0x1234,
                    ino: Some(0x40e),
                    sdev: Some(0x10)
                }
            ]
        );
        let old = FD_EPOLL.replace(" ino:40e sdev:10", "");
        assert_eq!(parse_epoll(&old).unwrap()[0].ino, None);
        assert!(parse_epoll(&FD_EPOLL.replace("data:                7", "data: q")).is_err());
    }

    #[test]
    fn fd_targets() {
        assert_eq!(
            parse_fd_target("pipe:[1234]").unwrap(),
            FdTarget::Pipe(1234)
        );
        assert_eq!(
            parse_fd_target("socket:[99]").unwrap(),
            FdTarget::Socket(99)
        );
        assert_eq!(
            parse_fd_target("anon_inode:[eventfd]").unwrap(),
            FdTarget::AnonInode("[eventfd]".into())
        );
        assert_eq!(
            parse_fd_target("anon_inode:inotify").unwrap(),
            FdTarget::AnonInode("inotify".into())
        );
        for t in [
            "/etc/hostname",
            "/memfd:x (deleted)",
            "net:[4026531840]",
            "/a:b",
        ] {
            assert_eq!(parse_fd_target(t).unwrap(), FdTarget::Other(t.into()));
        }
        assert!(parse_fd_target("pipe:[12x]").is_err());
        assert!(parse_fd_target("socket:").is_err());
    }

    #[test]
    fn mountinfo() {
        let m = parse_mountinfo(MOUNTINFO).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!((m[1].majmin.as_str(), m[1].root.as_str()), ("254:0", "/"));
        assert_eq!(m[1].point, "/");
        let spaced = MOUNTINFO.replace(" /proc rw", " /a\\040b\\134c rw");
        assert_eq!(parse_mountinfo(&spaced).unwrap()[0].point, "/a b\\c");
        assert!(parse_mountinfo("22 27 0:21\n").is_err());
    }

    #[test]
    fn children_and_small_files() {
        assert_eq!(parse_children("12 13 \n").unwrap(), [12, 13]);
        assert!(parse_children("").unwrap().is_empty());
        assert!(parse_children("12 1x").is_err());
        assert_eq!(parse_personality("00000000\n").unwrap(), 0);
        assert_eq!(parse_personality("00400000\n").unwrap(), 0x400000);
        assert!(parse_personality("").is_err());
        let mut auxv = Vec::new();
        for w in [6u64, 4096, 0, 0] {
            auxv.extend_from_slice(&w.to_ne_bytes());
        }
        assert_eq!(parse_auxv(&auxv).unwrap(), [6, 4096, 0, 0]);
        assert!(parse_auxv(&auxv[..24]).is_err());
    }

    const TIMERS: &str =
        "ID: 5\nsignal: 10/000000001234abcd\nnotify: signal/pid.27967\nClockID: -223738\n\
ID: 2\nsignal: 34/0000000000000000\nnotify: signal/tid.27968\nClockID: -6\n\
ID: 1\nsignal: 14/(null)\nnotify: none/pid.27967\nClockID: 0\n\
ID: 0\nsignal: 12/00007ffd00000001\nnotify: thread/pid.27967\nClockID: 1\n";

    #[test]
    fn timers() {
        let t = parse_timers(TIMERS).unwrap();
        assert_eq!(t.len(), 4);
        assert_eq!(
            t[0],
            ProcTimer {
                id: 5,
                signo: 10,
                sigval: 0x1234abcd,
                notify: SIGEV_SIGNAL,
                target: 27967,
                clock: -223738
            }
        );
        assert_eq!((t[1].notify, t[1].target), (SIGEV_THREAD_ID, 27968));
        assert_eq!((t[2].notify, t[2].sigval, t[2].signo), (SIGEV_NONE, 0, 14));
        assert_eq!((t[3].notify, t[3].sigval), (SIGEV_THREAD, 0x7ffd00000001));
        assert!(parse_timers("").unwrap().is_empty());
        assert!(parse_timers("signal: 1/0\n").is_err());
        assert_eq!(
            field_of(parse_timers(&TIMERS.replacen("ClockID: -6\n", "", 1))),
            "ClockID"
        );
    }

    #[test]
    fn sysvipc_rows_by_column_name() {
        let rows = parse_sysvipc(include_str!("proc_samples/sysvipc_msg.txt"));
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0]["key"], 1543624900);
        assert_eq!(rows[0]["msqid"], 45);
        assert_eq!(rows[0]["lspid"], 30275);
        assert_eq!(rows[1]["lrpid"], 17);
        assert_eq!(rows[1]["cuid"], 999);
        assert!(parse_sysvipc("").is_empty());
        // The live tables have the columns the group reads.
        for (name, cols) in [
            ("msg", &["key", "msqid", "lspid", "lrpid"][..]),
            ("sem", &["key", "semid", "nsems"][..]),
            ("shm", &["key", "shmid", "size", "cpid", "lpid"][..]),
        ] {
            let text = std::fs::read_to_string(format!("/proc/sysvipc/{name}")).unwrap();
            let header: Vec<&str> = text.lines().next().unwrap().split_whitespace().collect();
            for c in cols {
                assert!(header.contains(c), "/proc/sysvipc/{name} has no column {c}");
            }
        }
    }

    #[test]
    fn net_tcp_rows() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F90 00000000:0000 0A 00000000:00000002 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0\n   1: 0100007F:1F90 0100007F:D431 01 00000000:00000005 00:00000000 00000000     0        0 0 1 0000000000000000 20 4 30 10 -1\n";
        let rows = parse_net_tcp(text).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].local, (vec![127, 0, 0, 1], 8080));
        assert_eq!(rows[0].state, 10);
        assert_eq!(rows[0].rx_queue, 2);
        assert_eq!(rows[0].inode, 4242);
        assert_eq!(rows[1].remote, (vec![127, 0, 0, 1], 0xd431));
        assert_eq!((rows[1].state, rows[1].rx_queue, rows[1].inode), (1, 5, 0));
        let v6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 00000000000000000000000001000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 77 1 0000000000000000 100 0 0 10 0\n";
        let rows = parse_net_tcp(v6).unwrap();
        let mut lo = vec![0u8; 16];
        lo[15] = 1;
        assert_eq!(rows[0].local, (lo, 80));
        assert!(parse_net_tcp("header\n 0: zz:1 00:0 0A 0:0 0 0 0 0 x\n").is_err());
    }
}
