//! The cgroups of a process (the group "cgroup"): its path in every hierarchy (cgroup
//! v2 and any v1 hierarchies mounted), from /proc/PID/cgroup. At restore a process goes
//! back into each saved cgroup that differs from the one it inherited, by writing its
//! PID to that cgroup's `cgroup.procs` (which moves all its threads); a cgroup that no
//! longer exists, a hierarchy that is not mounted here, or one the restorer may not
//! write to is a warning that names it, and the process stays where the restorer is —
//! the resource limits differ, the program's state does not.

use super::{Dump, Group, Restore};
use crate::error::Result;
use crate::fd::RestoreError;
use crate::proc;
use crate::state::{Attr, CgroupMembership};
use std::path::PathBuf;

pub const GROUP: Group = Group {
    name: "cgroup",
    dump,
    restore,
    describe,
};

fn dump(d: &mut Dump) -> Result<Option<Attr>> {
    let list: Vec<CgroupMembership> = proc::cgroups(d.pid)?
        .into_iter()
        .map(|(_, controllers, path)| CgroupMembership { controllers, path })
        .collect();
    Ok((!list.is_empty()).then_some(Attr::Cgroups(list)))
}

/// Where hierarchy `controllers` (empty: v2) is mounted here, at its root.
fn mount_of(mounts: &[proc::Mount], controllers: &str) -> Option<PathBuf> {
    let want: Vec<&str> = controllers.split(',').filter(|c| !c.is_empty()).collect();
    mounts
        .iter()
        .filter(|m| m.root == "/")
        .find(|m| {
            if want.is_empty() {
                m.fs_type == "cgroup2"
            } else {
                m.fs_type == "cgroup" && want.iter().all(|c| m.super_options.iter().any(|o| o == c))
            }
        })
        .map(|m| PathBuf::from(&m.point))
}

fn restore(r: &mut Restore, a: &Attr) -> Option<std::result::Result<(), RestoreError>> {
    let Attr::Cgroups(saved) = a else {
        return None;
    };
    let pid = r.pid;
    let now = match proc::cgroups(pid) {
        Ok(n) => n,
        Err(e) => return Some(Err(RestoreError::msg(e.to_string()))),
    };
    let mounts = proc::own_mounts().unwrap_or_default();
    for c in saved {
        let current = now.iter().find(|(_, ctl, _)| *ctl == c.controllers);
        if current.is_some_and(|(_, _, p)| *p == c.path) {
            continue;
        }
        let name = if c.controllers.is_empty() {
            format!("cgroup {}", c.path)
        } else {
            format!("cgroup {}:{}", c.controllers, c.path)
        };
        let Some(root) = mount_of(&mounts, &c.controllers) else {
            eprintln!(
                "ckpt: warning: process {pid}: {name} not restored: that hierarchy is not mounted here"
            );
            continue;
        };
        let procs = root
            .join(c.path.trim_start_matches('/'))
            .join("cgroup.procs");
        if let Err(e) = std::fs::write(&procs, pid.to_string()) {
            eprintln!(
                "ckpt: warning: process {pid}: {name} not restored ({}: {e}); it stays in the restorer's",
                procs.display()
            );
        }
    }
    Some(Ok(()))
}

fn describe(a: &Attr) -> Option<Vec<String>> {
    let Attr::Cgroups(list) = a else {
        return None;
    };
    Some(
        list.iter()
            .map(|c| {
                if c.controllers.is_empty() {
                    c.path.clone()
                } else {
                    format!("{}:{}", c.controllers, c.path)
                }
            })
            .collect(),
    )
}
