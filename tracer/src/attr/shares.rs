//! Kernel objects a process shares with its parent (the group "shares"): a descriptor
//! table (clone(CLONE_FILES)) or fs state: cwd, root and umask (clone(CLONE_FS)).
//!
//! The dump compares every pair of processes of the tree with kcmp(2) (the audit's
//! `Shared` rows, `crate::audit::check_tree`); [`children_sharing_all`] accepts a sharing
//! when it is one the restore can make again: between a parent and children of it that
//! have no children of their own (also several children sharing their parent's table),
//! and records it in the child ([`record`]). The restore front end has the parent's loader
//! fork such a child with the same clone flags (src/restore/forked.rs,
//! restore/src/fork.rs), so nothing is left to do for the stopped process. Any other
//! shape (two siblings sharing what their parent does not, a grandchild) is refused.

use super::{Dump, Group, Restore};
pub use crate::audit::{SharedPairs, KCMP_FILES, KCMP_FS};
use crate::error::{Result, TraceError};
use crate::fd::RestoreError;
use crate::state::{Attr, CloneShares, ProcessState};

pub const GROUP: Group = Group {
    name: "shares",
    dump,
    restore,
    describe,
};

/// Read for the whole tree at once ([`children_sharing_all`]), not per process.
fn dump(_d: &mut Dump) -> Result<Option<Attr>> {
    Ok(None)
}

/// Made when the process is created (restore/src/fork.rs).
fn restore(_r: &mut Restore, a: &Attr) -> Option<std::result::Result<(), RestoreError>> {
    matches!(a, Attr::SharesWithParent(_)).then_some(Ok(()))
}

fn describe(a: &Attr) -> Option<Vec<String>> {
    let Attr::SharesWithParent(s) = a else {
        return None;
    };
    let mut what = Vec::new();
    if s.files {
        what.push("its descriptor table (CLONE_FILES)");
    }
    if s.fs {
        what.push("its cwd, root and umask (CLONE_FS)");
    }
    Some(vec![format!(
        "shares with its parent {}",
        what.join(" and ")
    )])
}

/// For every kind of object the audit found shared ([`crate::audit::check_tree`]), the
/// children that share it with their parent, as (pid, kcmp type); any other sharing
/// refuses the dump, naming both processes. `procs` and `has_children` as for
/// [`pairs_of_kind`].
pub fn children_sharing_all(
    shared: &[SharedPairs],
    procs: &[(i32, i32)],
    has_children: &dyn Fn(i32) -> bool,
) -> Result<Vec<(i32, i32)>> {
    let mut out = Vec::new();
    for s in shared {
        match pairs_of_kind(s.kind, &s.pairs, procs, has_children) {
            Ok(c) => out.extend(c),
            Err((a, b)) => {
                return Err(TraceError::Unsupported {
                    pid: a,
                    what: format!(
                        "{} ({b}), other than between a parent and children without children of their own",
                        s.what
                    ),
                })
            }
        }
    }
    Ok(out)
}

/// Of the pairs of processes that share the object of kcmp type `kind`, the children
/// that share it with their parent: `procs` is every process of the tree as (pid,
/// ppid), `has_children` says whether one has children (or zombies). `Err((a, b))`: a
/// pair that is not a parent and such a child, nor two such children of one parent.
pub fn pairs_of_kind(
    kind: i32,
    pairs: &[(i32, i32)],
    procs: &[(i32, i32)],
    has_children: &dyn Fn(i32) -> bool,
) -> std::result::Result<Vec<(i32, i32)>, (i32, i32)> {
    let ppid = |p: i32| procs.iter().find(|x| x.0 == p).map(|x| x.1);
    let shared = |a: i32, b: i32| pairs.contains(&(a, b)) || pairs.contains(&(b, a));
    let child_of = |c: i32, p: i32| ppid(c) == Some(p) && !has_children(c);
    let mut out = Vec::new();
    for &(a, b) in pairs {
        if child_of(b, a) {
            out.push((b, kind));
        } else if child_of(a, b) {
            out.push((a, kind));
        } else {
            let siblings = match (ppid(a), ppid(b)) {
                (Some(p), Some(q)) => {
                    p == q && child_of(a, p) && child_of(b, p) && shared(p, a) && shared(p, b)
                }
                _ => false,
            };
            if !siblings {
                return Err((a, b));
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// Records in each child what it shares with its parent (`shares`: (pid, kcmp type)).
pub fn record(states: &mut [ProcessState], shares: &[(i32, i32)]) {
    for s in states.iter_mut() {
        let mut c = CloneShares::default();
        for &(pid, kind) in shares {
            if pid == s.pid {
                c.files |= kind == KCMP_FILES;
                c.fs |= kind == KCMP_FS;
            }
        }
        if c.files || c.fs {
            s.attrs.push(Attr::SharesWithParent(c));
        }
    }
}

/// What `state` shares with its parent.
pub fn saved(state: &ProcessState) -> CloneShares {
    state
        .attrs
        .iter()
        .find_map(|a| match a {
            Attr::SharesWithParent(s) => Some(*s),
            _ => None,
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_and_leaf_children_only() {
        // 1 -> 2, 3 (leaves); 1 -> 4 -> 5.
        let procs = [(1, 0), (2, 1), (3, 1), (4, 1), (5, 4)];
        let leaf = |p: i32| p == 1 || p == 4;
        assert_eq!(
            pairs_of_kind(KCMP_FILES, &[(1, 2)], &procs, &leaf),
            Ok(vec![(2, KCMP_FILES)])
        );
        assert_eq!(
            pairs_of_kind(KCMP_FILES, &[(1, 2), (1, 3), (2, 3)], &procs, &leaf),
            Ok(vec![(2, KCMP_FILES), (3, KCMP_FILES)])
        );
        // Siblings without their parent, a parent with children of its own, a grandchild.
        assert_eq!(
            pairs_of_kind(KCMP_FS, &[(2, 3)], &procs, &leaf),
            Err((2, 3))
        );
        assert_eq!(
            pairs_of_kind(KCMP_FS, &[(1, 4)], &procs, &leaf),
            Err((1, 4))
        );
        assert_eq!(
            pairs_of_kind(KCMP_FS, &[(1, 5)], &procs, &leaf),
            Err((1, 5))
        );
    }
}
