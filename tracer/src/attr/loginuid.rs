//! The audit login uid and session id of a process (the group "loginuid"):
//! /proc/PID/loginuid and /proc/PID/sessionid, which the kernel's audit attaches to the
//! login a process descends from (pam_loginuid sets them for ssh and console logins;
//! unset, 4294967295, for daemons and what they start).
//!
//! A restored process inherits the restorer's. When those equal the saved ones — a
//! restore from the same login session, or unset both times — there is nothing to do.
//! Otherwise the restore refuses, naming both, unless `ckpt restore
//! --new-audit-session` accepts new ones: then the login uid is set back where the
//! kernel allows it (a process may write only its own loginuid, so the write is
//! injected into the restored process; it needs CAP_AUDIT_CONTROL and a login uid
//! that is unset or not immutable), and the session id is whatever the kernel gives
//! (no interface sets it: each write of loginuid starts a new session), each with a
//! warning that names the old and new value.

use super::{injected, Dump, Group, Restore};
use crate::error::{Result, TraceError};
use crate::fd::RestoreError;
use crate::proc;
use crate::state::{Attr, AuditIds};

pub const GROUP: Group = Group {
    name: "loginuid",
    dump,
    restore,
    describe,
};

fn read(pid: i32) -> std::io::Result<AuditIds> {
    let num = |name: &str| -> std::io::Result<u32> {
        let text = std::fs::read_to_string(proc::path(pid, name))?;
        text.trim().parse().map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("/proc/{pid}/{name}: {text:?} is not a number"),
            )
        })
    };
    Ok(AuditIds {
        loginuid: num("loginuid")?,
        sessionid: num("sessionid")?,
    })
}

fn dump(d: &mut Dump) -> Result<Option<Attr>> {
    match read(d.pid) {
        Ok(ids) => Ok(Some(Attr::AuditIds(ids))),
        // A kernel without audit has neither file: nothing to save, nothing to differ.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(TraceError::io(d.pid, "reading its audit login uid", e)),
    }
}

fn show(v: u32) -> String {
    if v == u32::MAX {
        "unset".into()
    } else {
        v.to_string()
    }
}

/// Write the restored process's own loginuid, from inside it.
fn set_loginuid(r: &mut Restore, uid: u32) -> std::io::Result<()> {
    let t = &mut r.threads[0];
    let path = b"/proc/self/loginuid\0";
    let fd = injected(r.inj.syscall_with_buf(
        t,
        libc::SYS_open,
        |a| [a, (libc::O_WRONLY | libc::O_CLOEXEC) as u64, 0, 0, 0, 0],
        path,
        &mut [],
    ))?;
    let text = uid.to_string();
    let n = text.len() as u64;
    let w = injected(r.inj.syscall_with_buf(
        t,
        libc::SYS_write,
        |a| [fd as u64, a, n, 0, 0, 0],
        text.as_bytes(),
        &mut [],
    ));
    injected(
        r.inj
            .syscall(t, libc::SYS_close, [fd as u64, 0, 0, 0, 0, 0]),
    )?;
    w.map(drop)
}

fn restore(r: &mut Restore, a: &Attr) -> Option<std::result::Result<(), RestoreError>> {
    let Attr::AuditIds(saved) = a else {
        return None;
    };
    let pid = r.pid;
    Some((|| {
        let now = read(pid).map_err(|e| {
            RestoreError::msg(format!(
                "process {pid}: reading its audit login uid ({e}); it had login uid {}",
                show(saved.loginuid)
            ))
        })?;
        if now == *saved {
            return Ok(());
        }
        if !r.new_audit_session {
            return Err(RestoreError::msg(format!(
                "process {pid} had audit login uid {} and session id {}, and would get {} and {} here (a restore from another login session): restore from its session, or accept new ones with --new-audit-session",
                show(saved.loginuid),
                show(saved.sessionid),
                show(now.loginuid),
                show(now.sessionid)
            )));
        }
        if now.loginuid != saved.loginuid {
            if let Err(e) = set_loginuid(r, saved.loginuid) {
                eprintln!(
                    "ckpt: warning: process {pid}: audit login uid {} could not be set back ({e}); it is now {}",
                    show(saved.loginuid),
                    show(now.loginuid)
                );
            }
        }
        let after = read(pid).map_err(|e| {
            RestoreError::msg(format!("process {pid}: reading its audit login uid: {e}"))
        })?;
        if after.sessionid != saved.sessionid {
            eprintln!(
                "ckpt: warning: process {pid}: audit session id {} is now {} (--new-audit-session)",
                show(saved.sessionid),
                show(after.sessionid)
            );
        }
        Ok(())
    })())
}

fn describe(a: &Attr) -> Option<Vec<String>> {
    let Attr::AuditIds(ids) = a else {
        return None;
    };
    Some(vec![format!(
        "login uid {}, session id {}",
        show(ids.loginuid),
        show(ids.sessionid)
    )])
}
