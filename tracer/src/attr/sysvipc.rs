//! SysV IPC (the group "sysvipc"): message queues, shared memory segments and
//! semaphore sets live in the IPC namespace, not in the process, and ckpt does not save
//! them yet (their keys, ids, contents and permissions). A process that uses one is
//! refused, naming it, rather than restored into a namespace where the object may be
//! gone (after a reboot) or different:
//!
//! - a message queue it last sent to or received from (`lspid`/`lrpid` of
//!   /proc/sysvipc/msg);
//! - a shared memory segment it created or last attached or detached (`cpid`/`lpid` of
//!   /proc/sysvipc/shm; one it has attached is refused as a mapping already);
//!
//! A semaphore set leaves no trace of the process that /proc shows (and its undo list
//! cannot tell: kcmp(KCMP_SYSVSEM) finds one in every multi-threaded process, since
//! pthread_create's CLONE_SYSVSEM allocates it, used or not); it is listed in the audit
//! as what ckpt cannot see.

use super::{Dump, Group, Restore};
use crate::error::{Result, TraceError};
use crate::fd::RestoreError;
use crate::state::Attr;

pub const GROUP: Group = Group {
    name: "sysvipc",
    dump,
    restore,
    describe,
};

/// The rows of /proc/sysvipc/NAME (after its header) whose columns `cols` hold `pid`:
/// (id, key) of each, `id_col` and `key_col` being their columns.
fn used_by(name: &str, pid: i32, key_col: usize, id_col: usize, cols: &[usize]) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(format!("/proc/sysvipc/{name}")) else {
        return Vec::new(); // a kernel without SysV IPC
    };
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let mine = cols
                .iter()
                .any(|&c| f.get(c).and_then(|v| v.parse::<i32>().ok()) == Some(pid));
            mine.then(|| {
                let key = f.get(key_col).copied().unwrap_or("?");
                let id = f.get(id_col).copied().unwrap_or("?");
                format!("(id {id}, key {key})")
            })
        })
        .collect()
}

fn dump(d: &mut Dump) -> Result<Option<Attr>> {
    let pid = d.pid;
    let refuse = |what: String| Err(TraceError::Unsupported { pid, what });
    // msg: key msqid perms cbytes qnum lspid lrpid ...
    if let Some(q) = used_by("msg", pid, 0, 1, &[5, 6]).first() {
        return refuse(format!("a SysV message queue it used {q}"));
    }
    // shm: key shmid perms size cpid lpid ...
    if let Some(s) = used_by("shm", pid, 0, 1, &[4, 5]).first() {
        return refuse(format!(
            "a SysV shared memory segment it created or last attached {s}"
        ));
    }
    Ok(None)
}

fn restore(_r: &mut Restore, _a: &Attr) -> Option<std::result::Result<(), RestoreError>> {
    None
}

fn describe(_a: &Attr) -> Option<Vec<String>> {
    None
}
