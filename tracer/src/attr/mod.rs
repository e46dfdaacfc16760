//! One home per attribute group of a process (issue 9): scheduling, credentials, prctl
//! state, ... Each group module holds, side by side, its dump (from the frozen process
//! to its saved variant of [`Attr`]), its restore (into the restored, still stopped
//! process, from the outside or with injected system calls) and its lines for
//! `ckpt info`. This module is the one dispatch they plug into: the table [`GROUPS`],
//! in restore order. Adding a group means adding one file, its variant in
//! `format/src/attrs.rs`, and one line in [`GROUPS`] — and pointing its rows of the audit
//! table (tracer/src/audit.rs) at it.
//!
//! Like `crate::fd`, the dispatch is a table of function pointers: the saved type is one
//! enum owned by the format crate, so a group is a value that recognises its variant.

use crate::error::Result;
use crate::fd::RestoreError;
use crate::freeze::FrozenThread;
use crate::inject::Injector;
use crate::state::Attr;

pub mod cgroup;
pub mod creds;
pub mod cwd;
pub mod jobctl;
pub mod locks;
pub mod loginuid;
pub mod memory;
pub mod prctl;
pub mod sched;
pub mod seccomp;
pub mod shares;
pub mod sysvipc;

/// The frozen process being dumped.
pub struct Dump<'a> {
    pub pid: i32,
    /// The group stop the process was in when it was frozen: its signal.
    pub group_stop: Option<i32>,
    pub inj: &'a Injector,
    /// Every thread, the leader first.
    pub threads: &'a mut [FrozenThread],
    /// Its regions, as /proc/PID/smaps showed them.
    pub maps: &'a [crate::proc::MapEntry],
}

/// The restored process, complete but still stopped: every descriptor, timer and
/// signal is in place, registers are not yet set back.
pub struct Restore<'a> {
    pub pid: i32,
    pub inj: &'a Injector,
    /// Every thread, the leader first, in the saved order.
    pub threads: &'a mut [FrozenThread],
    /// What the image holds of it (its descriptors, which of them are the restorer's own
    /// standard streams, its process group...).
    pub state: &'a crate::state::ProcessState,
    /// `ckpt restore --new-audit-session`: a login uid and session id other than the
    /// saved ones are accepted (see `loginuid`).
    pub new_audit_session: bool,
}

/// What one attribute group provides.
pub struct Group {
    /// Its name, as the audit table names it.
    pub name: &'static str,
    /// Read the group from the frozen process. `None`: every attribute is at the value
    /// a restore gives anyway, nothing to save.
    pub dump: fn(d: &mut Dump) -> Result<Option<Attr>>,
    /// Give the restored process the saved attributes. `None`: not this group's variant.
    pub restore: fn(r: &mut Restore, a: &Attr) -> Option<std::result::Result<(), RestoreError>>,
    /// Its lines for `ckpt info`; `None`: not this group's variant.
    pub describe: fn(a: &Attr) -> Option<Vec<String>>,
}

/// Every attribute group, in the order their restores run (locks once every descriptor
/// exists). Credentials come after
/// every group that may need a privilege (after them the restorer may no longer be
/// allowed to change the others); prctl after them (a change of credentials resets
/// the parent-death signal and the dumpable flag, and prctl needs no privilege);
/// seccomp last (after it, its filters judge every system call injected).
pub static GROUPS: &[Group] = &[
    shares::GROUP,
    cwd::GROUP,
    sysvipc::GROUP,
    cgroup::GROUP,
    memory::GROUP,
    sched::GROUP,
    locks::GROUP,
    jobctl::GROUP,
    loginuid::GROUP,
    creds::GROUP,
    prctl::GROUP,
    seccomp::GROUP,
];

/// Every group's saved attributes of the frozen process.
pub fn dump_all(d: &mut Dump) -> Result<Vec<Attr>> {
    let mut out = Vec::new();
    for g in GROUPS {
        let t0 = std::time::Instant::now();
        if let Some(a) = (g.dump)(d)? {
            out.push(a);
        }
        timing(&format!("group {}", g.name), t0);
    }
    Ok(out)
}

/// With CKPT_TIMING set, say on stderr how long one step of reading a process took (the
/// dump's own phases say the same for the whole dump): where the pause goes.
pub fn timing(what: &str, since: std::time::Instant) {
    if std::env::var_os("CKPT_TIMING").is_some() {
        eprintln!(
            "ckpt: timing:   {what} took {:.2} ms",
            since.elapsed().as_secs_f64() * 1e3
        );
    }
}

/// Restore every saved group, in [`GROUPS`] order.
pub fn restore_all(r: &mut Restore, attrs: &[Attr]) -> std::result::Result<(), RestoreError> {
    for g in GROUPS {
        for a in attrs {
            if let Some(res) = (g.restore)(r, a) {
                res?;
            }
        }
    }
    Ok(())
}

/// The `ckpt info` lines of a saved group, each led by the group's name.
pub fn describe(a: &Attr) -> Vec<String> {
    GROUPS
        .iter()
        .find_map(|g| {
            let lines = (g.describe)(a)?;
            Some(
                lines
                    .into_iter()
                    .map(|l| format!("{}: {l}", g.name))
                    .collect(),
            )
        })
        .unwrap_or_default()
}

pub(crate) use crate::inject::injected;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_group_per_name() {
        for (i, g) in GROUPS.iter().enumerate() {
            assert!(GROUPS[i + 1..].iter().all(|o| o.name != g.name));
        }
    }
}
