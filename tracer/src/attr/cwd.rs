//! The working directory, when it was removed while the process was in it. A working
//! directory that still exists is `ProcessState::cwd`, which the restored process
//! chdir(2)s to before it execs the loader (src/restore/spawn.rs). One that was removed
//! cannot be reached by path, and the process can tell (getcwd fails with ENOENT, no file
//! can be made in it): the dump saves its mode and owner, and the restore front end makes
//! a new empty directory with them and removes it again (crate::fd::ghost::cwd_ghost),
//! and the process fchdir(2)s to it instead, before any process of the restore can fail
//! for it. Nothing is left for the stopped process.

use super::{Dump, Group, Restore};
use crate::error::{Result, TraceError};
use crate::fd::RestoreError;
use crate::state::{Attr, DeletedDir, ProcessState};

pub const GROUP: Group = Group {
    name: "cwd",
    dump,
    restore,
    describe,
};

fn dump(d: &mut Dump) -> Result<Option<Attr>> {
    let link = crate::proc::path(d.pid, "cwd");
    let md = std::fs::metadata(&link)
        .map_err(|e| TraceError::io(d.pid, "stat of the working directory", e))?;
    if !md.is_dir() || std::os::unix::fs::MetadataExt::nlink(&md) != 0 {
        return Ok(None);
    }
    let name =
        crate::proc::link(d.pid, "cwd").map_err(|e| TraceError::io(d.pid, "reading cwd", e))?;
    let name = name.strip_suffix(" (deleted)").unwrap_or(&name);
    Ok(Some(Attr::DeletedCwd(crate::fd::ghost::deleted_dir(
        &md, name,
    ))))
}

/// Done before the process exists (the front end's [`saved`]).
fn restore(_r: &mut Restore, a: &Attr) -> Option<std::result::Result<(), RestoreError>> {
    matches!(a, Attr::DeletedCwd(_)).then_some(Ok(()))
}

fn describe(a: &Attr) -> Option<Vec<String>> {
    let Attr::DeletedCwd(d) = a else {
        return None;
    };
    Some(vec![format!(
        "working directory {} (deleted), mode {:o}, owner {}:{}",
        d.name,
        d.mode & 0o7777,
        d.uid,
        d.gid
    )])
}

/// The removed working directory of `state`, if it had one.
pub fn saved(state: &ProcessState) -> Option<&DeletedDir> {
    state.attrs.iter().find_map(|a| match a {
        Attr::DeletedCwd(d) => Some(d),
        _ => None,
    })
}
