//! Credentials of every thread (they are per thread in Linux): real, effective, saved
//! and filesystem user and group ids, supplementary groups, the five capability sets,
//! securebits (keep-caps among them) and no_new_privs. Dumped from the outside
//! (/proc/PID/task/TID/status) except the securebits, which only the thread itself can
//! read (PR_GET_SECUREBITS, injected).
//!
//! Restored last of all groups (after it the restorer may no longer be allowed to change
//! anything), with raw system calls injected into each thread — glibc's wrappers would
//! apply them to every thread — and only where the restored thread, which inherited the
//! restorer's credentials, differs. The order matters, as in CRIU's restorer:
//!
//! 1. setgroups, setresgid, setfsgid (CAP_SETGID, which changing the uids may take);
//! 2. SECBIT_NO_SETUID_FIXUP for the moment, so that setresuid and setfsuid leave every
//!    capability set alone, then setresuid, setfsuid;
//! 3. the inheritable set (it may hold capabilities the bounding set drops next, which
//!    capset refuses to add once they are gone), then the ambient set (raised while the
//!    permitted set is still whole, before securebits may forbid raising);
//! 4. PR_CAPBSET_DROP and PR_SET_SECUREBITS (both need CAP_SETPCAP, which the final
//!    capset may take away), then capset of the saved permitted, effective and
//!    inheritable sets;
//! 5. no_new_privs, which can be set but never cleared.
//!
//! A change of credentials makes the kernel reset the process's dumpable flag and the
//! thread's parent-death signal (commit_creds): both are put back as they were before
//! this group ran. Every thread's credentials are read again at the end and must be the
//! saved ones.
//!
//! Ids are those seen from the user namespace ckpt runs in. A restore by an ordinary
//! user runs in a user namespace ckpt makes, where only that user's uid and gid are
//! mapped (to themselves) and setgroups is denied: [`check_unprivileged`] refuses,
//! before anything is created, a checkpoint whose ids, groups or capabilities cannot be
//! had there; the restored threads keep the restorer's groups, which then are the saved
//! ones, though the namespace shows the unmapped ones as the overflow gid.

use super::{injected, Dump, Group, Restore};
use crate::error::{Result, TraceError};
use crate::fd::RestoreError;
use crate::freeze::FrozenThread;
use crate::inject::Injector;
use crate::prctl_nr::*;
use crate::state::{Attr, Creds, ThreadCreds};
use std::io;

pub const GROUP: Group = Group {
    name: "creds",
    dump,
    restore,
    describe,
};

const SECBIT_NO_SETUID_FIXUP: u32 = 1 << 2;
const SECBIT_KEEP_CAPS: u32 = 1 << 4;
const SECBIT_KEEP_CAPS_LOCKED: u32 = 1 << 5;

/// _LINUX_CAPABILITY_VERSION_3: two 32-bit words per set.
const CAP_VERSION_3: u32 = 0x2008_0522;

/// Capability names, by number (linux/capability.h).
const CAP_NAMES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// `CAP_CHOWN,CAP_KILL` for a set, `none` for the empty set.
pub fn cap_list(set: u64) -> String {
    if set == 0 {
        return "none".into();
    }
    (0..64)
        .filter(|c| set & (1 << c) != 0)
        .map(|c| {
            CAP_NAMES
                .get(c)
                .map_or_else(|| format!("capability {c}"), |n| n.to_string())
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn ids(v: &[u32]) -> String {
    v.iter().map(u32::to_string).collect::<Vec<_>>().join(" ")
}

fn id_names(v: &[u32; 4]) -> String {
    format!(
        "real {}, effective {}, saved {}, fs {}",
        v[0], v[1], v[2], v[3]
    )
}

fn groups_text(g: &[u32]) -> String {
    if g.is_empty() {
        "none".into()
    } else {
        ids(g)
    }
}

/// The credential fields of a status file (everything but the securebits).
pub fn parse_status(text: &str) -> std::result::Result<ThreadCreds, String> {
    let field = |key: &str| -> std::result::Result<&str, String> {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .map(str::trim)
            .ok_or_else(|| format!("no `{key}` line"))
    };
    let nums = |key: &str| -> std::result::Result<Vec<u32>, String> {
        field(key)?
            .split_whitespace()
            .map(|v| v.parse().map_err(|_| format!("`{key}: {v}`")))
            .collect()
    };
    let four = |key: &str| -> std::result::Result<[u32; 4], String> {
        nums(key)?
            .try_into()
            .map_err(|_| format!("`{key}` does not hold four ids"))
    };
    let hex = |key: &str| -> std::result::Result<u64, String> {
        let v = field(key)?;
        u64::from_str_radix(v, 16).map_err(|_| format!("`{key}: {v}`"))
    };
    let mut groups = nums("Groups")?;
    groups.sort_unstable();
    Ok(ThreadCreds {
        tid: 0,
        uid: four("Uid")?,
        gid: four("Gid")?,
        groups,
        cap_inheritable: hex("CapInh")?,
        cap_permitted: hex("CapPrm")?,
        cap_effective: hex("CapEff")?,
        cap_bounding: hex("CapBnd")?,
        cap_ambient: hex("CapAmb")?,
        securebits: 0,
        no_new_privs: match field("NoNewPrivs")? {
            "0" => false,
            "1" => true,
            v => return Err(format!("`NoNewPrivs: {v}`")),
        },
    })
}

fn status_of(pid: i32, tid: i32) -> io::Result<ThreadCreds> {
    let p = format!("/proc/{pid}/task/{tid}/status");
    let text = std::fs::read_to_string(&p)?;
    let mut c = parse_status(&text)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{p}: unexpected {e}")))?;
    c.tid = tid;
    Ok(c)
}

fn securebits(inj: &Injector, t: &mut FrozenThread) -> io::Result<u32> {
    injected(inj.syscall(t, libc::SYS_prctl, [PR_GET_SECUREBITS, 0, 0, 0, 0, 0])).map(|v| v as u32)
}

/// Everything of thread `t` this group saves.
fn current(pid: i32, inj: &Injector, t: &mut FrozenThread) -> io::Result<ThreadCreds> {
    let mut c = status_of(pid, t.tid)?;
    c.securebits = securebits(inj, t)?;
    Ok(c)
}

fn dump(d: &mut Dump) -> Result<Option<Attr>> {
    let pid = d.pid;
    let mut threads = Vec::new();
    for t in d.threads.iter_mut() {
        let tid = t.tid;
        let c = current(pid, d.inj, t).map_err(|e| {
            TraceError::io(pid, format!("thread {tid}: reading its credentials"), e)
        })?;
        threads.push(c);
    }
    Ok(Some(Attr::Creds(Creds { threads })))
}

// ---------------------------------------------------------------------------------------
// the user namespace the restorer runs in

/// One line of a uid_map or gid_map: first id inside, first id outside, count.
type MapLine = (u64, u64, u64);

fn id_map(which: &str) -> Vec<MapLine> {
    let Ok(text) = std::fs::read_to_string(format!("/proc/self/{which}")) else {
        return vec![(0, 0, u32::MAX as u64)];
    };
    text.lines()
        .filter_map(|l| {
            let v: Vec<u64> = l
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            (v.len() == 3).then(|| (v[0], v[1], v[2]))
        })
        .collect()
}

/// How the restorer's user namespace shows ids: those it maps as they are, the others as
/// the overflow id.
struct View {
    uids: Vec<MapLine>,
    gids: Vec<MapLine>,
    overflow_uid: u32,
    overflow_gid: u32,
}

impl View {
    fn here() -> View {
        let overflow = |f: &str| {
            std::fs::read_to_string(format!("/proc/sys/kernel/{f}"))
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(65534)
        };
        View {
            uids: id_map("uid_map"),
            gids: id_map("gid_map"),
            overflow_uid: overflow("overflowuid"),
            overflow_gid: overflow("overflowgid"),
        }
    }

    fn mapped(map: &[MapLine], id: u32) -> bool {
        let id = id as u64;
        map.iter()
            .any(|&(inside, _, n)| id >= inside && id < inside + n)
    }

    fn uid(&self, id: u32) -> u32 {
        if Self::mapped(&self.uids, id) {
            id
        } else {
            self.overflow_uid
        }
    }

    fn gid(&self, id: u32) -> u32 {
        if Self::mapped(&self.gids, id) {
            id
        } else {
            self.overflow_gid
        }
    }

    /// The saved credentials as this namespace would show them.
    fn seen(&self, s: &ThreadCreds) -> ThreadCreds {
        let mut groups: Vec<u32> = s.groups.iter().map(|&g| self.gid(g)).collect();
        groups.sort_unstable();
        ThreadCreds {
            uid: s.uid.map(|u| self.uid(u)),
            gid: s.gid.map(|g| self.gid(g)),
            groups,
            ..s.clone()
        }
    }
}

/// The first attribute in which `now` differs from `want`, described.
fn difference(now: &ThreadCreds, want: &ThreadCreds) -> Option<String> {
    let mut groups_now = now.groups.clone();
    groups_now.sort_unstable();
    if now.uid != want.uid {
        return Some(format!(
            "its user ids are {} instead of {}",
            id_names(&now.uid),
            id_names(&want.uid)
        ));
    }
    if now.gid != want.gid {
        return Some(format!(
            "its group ids are {} instead of {}",
            id_names(&now.gid),
            id_names(&want.gid)
        ));
    }
    if groups_now != want.groups {
        return Some(format!(
            "its supplementary groups are {} instead of {}",
            groups_text(&groups_now),
            groups_text(&want.groups)
        ));
    }
    let sets = [
        ("inheritable", now.cap_inheritable, want.cap_inheritable),
        ("permitted", now.cap_permitted, want.cap_permitted),
        ("effective", now.cap_effective, want.cap_effective),
        ("bounding", now.cap_bounding, want.cap_bounding),
        ("ambient", now.cap_ambient, want.cap_ambient),
    ];
    for (name, n, w) in sets {
        if n != w {
            return Some(format!(
                "its {name} capabilities are {} instead of {}",
                cap_list(n),
                cap_list(w)
            ));
        }
    }
    if now.securebits != want.securebits {
        return Some(format!(
            "its securebits are {:#x} instead of {:#x}",
            now.securebits, want.securebits
        ));
    }
    if now.no_new_privs != want.no_new_privs {
        return Some(format!(
            "its no_new_privs is {} instead of {}",
            now.no_new_privs as u8, want.no_new_privs as u8
        ));
    }
    None
}

// ---------------------------------------------------------------------------------------
// restore

fn call(inj: &Injector, t: &mut FrozenThread, nr: i64, args: [u64; 6]) -> io::Result<()> {
    injected(inj.syscall(t, nr, args)).map(drop)
}

fn prctl(inj: &Injector, t: &mut FrozenThread, args: [u64; 5]) -> io::Result<()> {
    let [a, b, c, d, e] = args;
    call(inj, t, libc::SYS_prctl, [a, b, c, d, e, 0])
}

/// capset(v3) of thread `t` itself.
fn capset(inj: &Injector, t: &mut FrozenThread, eff: u64, prm: u64, inh: u64) -> io::Result<()> {
    let mut arg = Vec::with_capacity(32);
    arg.extend_from_slice(&CAP_VERSION_3.to_le_bytes());
    arg.extend_from_slice(&0u32.to_le_bytes());
    for w in 0..2 {
        for set in [eff, prm, inh] {
            arg.extend_from_slice(&((set >> (32 * w)) as u32).to_le_bytes());
        }
    }
    let r = inj.syscall_with_buf(
        t,
        libc::SYS_capset,
        |a| [a, a + 8, 0, 0, 0, 0],
        &arg,
        &mut [],
    );
    injected(r).map(drop)
}

fn cap_last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(CAP_NAMES.len() as u32 - 1)
}

/// Why the kernel said no, for the message.
fn eperm_hint(e: &io::Error, need: &str) -> String {
    if e.raw_os_error() == Some(libc::EPERM) {
        format!(" (needs {need})")
    } else if e.raw_os_error() == Some(libc::EINVAL) {
        " (an id that is not mapped in the user namespace this restore runs in)".into()
    } else {
        String::new()
    }
}

/// Give thread `t` the credentials `saved` (seen here as `want`).
fn set_thread(
    pid: i32,
    inj: &Injector,
    t: &mut FrozenThread,
    saved: &ThreadCreds,
    want: &ThreadCreds,
) -> std::result::Result<(), String> {
    let read = |t: &mut FrozenThread| {
        current(pid, inj, t).map_err(|e| format!("reading its credentials: {e}"))
    };
    let now = read(t)?;
    if difference(&now, want).is_none() {
        return Ok(());
    }

    // 1. Groups and group ids.
    let mut groups_now = now.groups.clone();
    groups_now.sort_unstable();
    if groups_now != want.groups {
        let buf: Vec<u8> = saved.groups.iter().flat_map(|g| g.to_le_bytes()).collect();
        let n = saved.groups.len() as u64;
        let r = inj.syscall_with_buf(
            t,
            libc::SYS_setgroups,
            |a| [n, a, 0, 0, 0, 0],
            &buf,
            &mut [],
        );
        injected(r).map_err(|e| {
            let hint = eperm_hint(&e, "CAP_SETGID");
            format!(
                "setting its supplementary groups ({}){hint}: {e}",
                groups_text(&saved.groups)
            )
        })?;
    }
    if now.gid[..3] != want.gid[..3] {
        let [r, e, s, _] = saved.gid.map(u64::from);
        call(inj, t, libc::SYS_setresgid, [r, e, s, 0, 0, 0]).map_err(|e| {
            let hint = eperm_hint(&e, "CAP_SETGID");
            format!(
                "setting its group ids ({}){hint}: {e}",
                id_names(&saved.gid)
            )
        })?;
    }
    // setfsgid returns the previous fsgid whatever happens: checked at the end.
    let fsgid = saved.gid[3] as u64;
    let _ = inj.syscall(t, libc::SYS_setfsgid, [fsgid, 0, 0, 0, 0, 0]);

    // 2. User ids, with every capability set left alone.
    if now.uid != want.uid {
        let bits = securebits(inj, t).map_err(|e| format!("reading its securebits: {e}"))?;
        if bits & SECBIT_NO_SETUID_FIXUP == 0 {
            // Without CAP_SETPCAP this fails; then no capability is at stake either.
            let _ = prctl(
                inj,
                t,
                [
                    PR_SET_SECUREBITS,
                    (bits | SECBIT_NO_SETUID_FIXUP) as u64,
                    0,
                    0,
                    0,
                ],
            );
        }
        if now.uid[..3] != want.uid[..3] {
            let [r, e, s, _] = saved.uid.map(u64::from);
            call(inj, t, libc::SYS_setresuid, [r, e, s, 0, 0, 0]).map_err(|e| {
                let hint = eperm_hint(&e, "CAP_SETUID");
                format!("setting its user ids ({}){hint}: {e}", id_names(&saved.uid))
            })?;
        }
        let fsuid = saved.uid[3] as u64;
        let _ = inj.syscall(t, libc::SYS_setfsuid, [fsuid, 0, 0, 0, 0, 0]);
    }

    // 3. Inheritable, then ambient.
    let now = read(t)?;
    if now.cap_inheritable != want.cap_inheritable {
        capset(
            inj,
            t,
            now.cap_effective,
            now.cap_permitted,
            want.cap_inheritable,
        )
        .map_err(|e| {
            format!(
                "setting its inheritable capabilities ({}): {e}",
                cap_list(want.cap_inheritable)
            )
        })?;
    }
    let now = read(t)?;
    if now.cap_ambient != want.cap_ambient {
        if now.cap_ambient & !want.cap_ambient != 0 {
            prctl(inj, t, [PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0])
                .map_err(|e| format!("clearing its ambient capabilities: {e}"))?;
        }
        let have = read(t)?.cap_ambient;
        for c in (0..64).filter(|c| want.cap_ambient & !have & (1 << c) != 0) {
            prctl(inj, t, [PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, c, 0, 0])
                .map_err(|e| format!("raising its ambient capability {}: {e}", cap_list(1 << c)))?;
        }
    }

    // 4. Bounding set and securebits while CAP_SETPCAP may still be there, then the
    //    permitted and effective sets.
    let now = read(t)?;
    let extra = want.cap_bounding & !now.cap_bounding;
    if extra != 0 {
        return Err(format!(
            "its bounding set holds {}, which this restorer's lacks (a bounding set can only shrink)",
            cap_list(extra)
        ));
    }
    let last = cap_last_cap() as u64;
    for c in (0..=last).filter(|c| now.cap_bounding & !want.cap_bounding & (1 << c) != 0) {
        prctl(inj, t, [PR_CAPBSET_DROP, c, 0, 0, 0]).map_err(|e| {
            let hint = eperm_hint(&e, "CAP_SETPCAP");
            format!(
                "dropping {} from its bounding set{hint}: {e}",
                cap_list(1 << c)
            )
        })?;
    }
    let bits = securebits(inj, t).map_err(|e| format!("reading its securebits: {e}"))?;
    if bits != want.securebits {
        // Only keep-caps differs: PR_SET_KEEPCAPS needs no privilege.
        let r = if bits ^ want.securebits == SECBIT_KEEP_CAPS && bits & SECBIT_KEEP_CAPS_LOCKED == 0
        {
            let keep = (want.securebits & SECBIT_KEEP_CAPS != 0) as u64;
            prctl(inj, t, [PR_SET_KEEPCAPS, keep, 0, 0, 0])
        } else {
            prctl(inj, t, [PR_SET_SECUREBITS, want.securebits as u64, 0, 0, 0])
        };
        r.map_err(|e| {
            let hint = eperm_hint(&e, "CAP_SETPCAP, and no locked bit may change");
            format!(
                "setting its securebits {:#x} (were {bits:#x}){hint}: {e}",
                want.securebits
            )
        })?;
    }
    let now = read(t)?;
    if (now.cap_permitted, now.cap_effective, now.cap_inheritable)
        != (want.cap_permitted, want.cap_effective, want.cap_inheritable)
    {
        capset(
            inj,
            t,
            want.cap_effective,
            want.cap_permitted,
            want.cap_inheritable,
        )
        .map_err(|e| {
            format!(
                "setting its capabilities (permitted {}, effective {}){}: {e}",
                cap_list(want.cap_permitted),
                cap_list(want.cap_effective),
                if e.raw_os_error() == Some(libc::EPERM) {
                    " (this restorer does not hold them)"
                } else {
                    ""
                }
            )
        })?;
    }

    // 5. no_new_privs.
    if want.no_new_privs && !now.no_new_privs {
        prctl(inj, t, [PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0])
            .map_err(|e| format!("setting no_new_privs: {e}"))?;
    } else if !want.no_new_privs && now.no_new_privs {
        return Err(
            "it had no no_new_privs, which the restored thread inherited from ckpt and cannot drop"
                .into(),
        );
    }

    let now = read(t)?;
    match difference(&now, want) {
        None => Ok(()),
        Some(d) => Err(format!("after setting its credentials, {d}")),
    }
}

fn pdeathsig(inj: &Injector, t: &mut FrozenThread) -> io::Result<u64> {
    let mut b = [0u8; 4];
    let r = inj.syscall_with_buf(
        t,
        libc::SYS_prctl,
        |a| [PR_GET_PDEATHSIG, a, 0, 0, 0, 0],
        &[],
        &mut b,
    );
    injected(r).map(|_| u32::from_le_bytes(b) as u64)
}

fn restore(r: &mut Restore, a: &Attr) -> Option<std::result::Result<(), RestoreError>> {
    let Attr::Creds(saved) = a else {
        return None;
    };
    let pid = r.pid;
    let view = View::here();
    let mut run = || -> std::result::Result<(), RestoreError> {
        let fail = |tid: i32, what: String| {
            let who = if tid == pid {
                format!("process {pid}")
            } else {
                format!("process {pid} thread {tid}")
            };
            RestoreError::msg(format!("{who}: restoring its credentials: {what}"))
        };
        // What changing credentials resets (commit_creds), to be put back.
        let leader = r
            .threads
            .first_mut()
            .ok_or_else(|| RestoreError::msg(format!("process {pid}: no thread")))?;
        let dumpable = injected(r.inj.syscall(
            leader,
            libc::SYS_prctl,
            [PR_GET_DUMPABLE, 0, 0, 0, 0, 0],
        ))
        .map_err(|e| fail(pid, format!("reading its dumpable flag: {e}")))?;
        for s in &saved.threads {
            let tid = s.tid;
            let Some(t) = r.threads.iter_mut().find(|t| t.tid == tid) else {
                return Err(RestoreError::msg(format!(
                    "process {pid}: thread {tid} of the image was not restored"
                )));
            };
            let sig = pdeathsig(r.inj, t)
                .map_err(|e| fail(tid, format!("reading its death signal: {e}")))?;
            set_thread(pid, r.inj, t, s, &view.seen(s)).map_err(|w| fail(tid, w))?;
            if sig != 0 && pdeathsig(r.inj, t).ok() != Some(sig) {
                injected(
                    r.inj
                        .syscall(t, libc::SYS_prctl, [PR_SET_PDEATHSIG, sig, 0, 0, 0, 0]),
                )
                .map_err(|e| fail(tid, format!("setting its death signal again: {e}")))?;
            }
        }
        let leader = &mut r.threads[0];
        let now = injected(r.inj.syscall(
            leader,
            libc::SYS_prctl,
            [PR_GET_DUMPABLE, 0, 0, 0, 0, 0],
        ))
        .map_err(|e| fail(pid, format!("reading its dumpable flag: {e}")))?;
        if now != dumpable && (0..=1).contains(&dumpable) {
            injected(r.inj.syscall(
                leader,
                libc::SYS_prctl,
                [PR_SET_DUMPABLE, dumpable as u64, 0, 0, 0, 0],
            ))
            .map_err(|e| {
                fail(
                    pid,
                    format!("setting its dumpable flag {dumpable} again: {e}"),
                )
            })?;
        }
        Ok(())
    };
    Some(run())
}

// ---------------------------------------------------------------------------------------
// before anything is created

/// Refuse, before a restore creates anything, credentials it could not give: a thread
/// with no_new_privs clear when ckpt has it set (it would inherit it, and it cannot be
/// cleared), or with a capability in its bounding set that ckpt's lacks; and, when the restore runs in a user namespace ckpt makes for an ordinary
/// user (`unprivileged`, where only the user's own uid and gid are mapped and setgroups
/// is denied), any user or group id other than ckpt's, other supplementary groups than
/// ckpt's, and any capability but in the bounding set (capabilities there would hold
/// only inside that namespace). The message names the process, the thread and the
/// credential.
pub fn check_restorable(
    pid: i32,
    attrs: &[Attr],
    unprivileged: bool,
) -> std::result::Result<(), String> {
    let Some(saved) = attrs.iter().find_map(|a| match a {
        Attr::Creds(c) => Some(c),
        _ => None,
    }) else {
        return Ok(());
    };
    let own = std::fs::read_to_string("/proc/thread-self/status")
        .map_err(|e| format!("reading ckpt's own credentials: {e}"))
        .and_then(|t| parse_status(&t).map_err(|e| format!("ckpt's own status: unexpected {e}")))?;
    for s in &saved.threads {
        let who = if s.tid == pid {
            format!("process {pid}")
        } else {
            format!("process {pid} thread {}", s.tid)
        };
        if own.no_new_privs && !s.no_new_privs {
            return Err(format!(
                "{who} had no no_new_privs, which ckpt has set: a process it restores would inherit it, and it cannot be cleared"
            ));
        }
        if !unprivileged {
            // The restored thread inherits ckpt's bounding set, which can only shrink.
            let extra = s.cap_bounding & !own.cap_bounding;
            if extra != 0 {
                return Err(format!(
                    "{who}: its bounding set holds {}, which ckpt's lacks (a bounding set can only shrink)",
                    cap_list(extra)
                ));
            }
            continue;
        }
        let unpriv = "in the user namespace of an ordinary user's restore";
        if s.uid.iter().any(|&u| u != own.uid[0]) {
            return Err(format!(
                "{who}: its user ids ({}) cannot be had {unpriv}, which maps only uid {} (restore it as root)",
                id_names(&s.uid),
                own.uid[0]
            ));
        }
        if s.gid.iter().any(|&g| g != own.gid[0]) {
            return Err(format!(
                "{who}: its group ids ({}) cannot be had {unpriv}, which maps only gid {} (restore it as root)",
                id_names(&s.gid),
                own.gid[0]
            ));
        }
        if s.groups != own.groups {
            return Err(format!(
                "{who}: its supplementary groups ({}) differ from this restorer's ({}), and cannot be set {unpriv} (restore it with the same groups, or as root)",
                groups_text(&s.groups),
                groups_text(&own.groups)
            ));
        }
        let caps = s.cap_permitted | s.cap_effective | s.cap_inheritable | s.cap_ambient;
        if caps != 0 {
            return Err(format!(
                "{who}: its capabilities ({}) cannot be restored {unpriv}: they would hold only inside it (restore it as root)",
                cap_list(caps)
            ));
        }
    }
    Ok(())
}

fn describe(a: &Attr) -> Option<Vec<String>> {
    let Attr::Creds(c) = a else {
        return None;
    };
    Some(
        c.threads
            .iter()
            .map(|t| {
                format!(
                    "thread {}: uid {}, gid {}, groups {}, capabilities permitted {} effective {} inheritable {} ambient {} bounding {}, securebits {:#x}, no_new_privs {}",
                    t.tid,
                    ids(&t.uid),
                    ids(&t.gid),
                    groups_text(&t.groups),
                    cap_list(t.cap_permitted),
                    cap_list(t.cap_effective),
                    cap_list(t.cap_inheritable),
                    cap_list(t.cap_ambient),
                    cap_list(t.cap_bounding),
                    t.securebits,
                    t.no_new_privs as u8
                )
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tx\nUid:\t999\t20003\t20004\t999\nGid:\t995\t20001\t20002\t995\n\
        FDSize:\t64\nGroups:\t20002 995 20001 \nCapInh:\t0000000008000400\n\
        CapPrm:\t0000000000000400\nCapEff:\t0000000000000400\nCapBnd:\t000001fff7bfffff\n\
        CapAmb:\t0000000000000400\nNoNewPrivs:\t1\n";

    #[test]
    fn parses_status() {
        let c = parse_status(STATUS).unwrap();
        assert_eq!(c.uid, [999, 20003, 20004, 999]);
        assert_eq!(c.gid, [995, 20001, 20002, 995]);
        assert_eq!(c.groups, vec![995, 20001, 20002]);
        assert_eq!(c.cap_inheritable, 0x800_0400);
        assert_eq!(cap_list(c.cap_ambient), "CAP_NET_BIND_SERVICE");
        assert!(c.no_new_privs);
        let none = STATUS.replace("Groups:\t20002 995 20001 ", "Groups:\t");
        assert!(parse_status(&none).unwrap().groups.is_empty());
        assert!(parse_status(&STATUS.replace("NoNewPrivs:\t1\n", "")).is_err());
    }

    #[test]
    fn our_own_status_parses() {
        let text = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        parse_status(&text).unwrap();
    }

    #[test]
    fn unmapped_ids_show_as_overflow() {
        let v = View {
            uids: vec![(999, 999, 1)],
            gids: vec![(995, 995, 1)],
            overflow_uid: 65534,
            overflow_gid: 65534,
        };
        let s = parse_status(STATUS).unwrap();
        let seen = v.seen(&s);
        assert_eq!(seen.uid, [999, 65534, 65534, 999]);
        assert_eq!(seen.groups, vec![995, 65534, 65534]);
        assert!(difference(&seen, &seen).is_none());
        assert!(difference(&s, &seen).unwrap().contains("user ids"));
    }

    #[test]
    fn capability_names() {
        assert_eq!(cap_list(0), "none");
        assert_eq!(cap_list(1 | 1 << 40), "CAP_CHOWN,CAP_CHECKPOINT_RESTORE");
        assert_eq!(cap_list(1 << 41), "capability 41");
    }
}
