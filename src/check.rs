//! `ckpt check [DIR]`, like `criu check`: which kernel features and privileges ckpt
//! relies on are here, for the user who runs it, and what follows from each missing
//! one and how to get it; with DIR, whether that checkpoint can be restored here and
//! now (`restore::examine`: seals and checksums, files and libraries unchanged, kernel
//! and vdso, CPU features, PIDs, credentials, SysV objects), creating nothing.
//!
//! Every feature is tried, not guessed from the kernel version: a system call that
//! ENOSYS says is absent, a privilege that EPERM says is missing.

use crate::job;
use crate::restore;
use anyhow::{bail, Result};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// How a feature stands here.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Status {
    /// Present and usable by this user.
    Ok,
    /// Usable, with a limit that the line explains.
    Limited,
    /// Absent or not allowed: what ckpt does without it is on the line.
    Missing,
}

impl Status {
    fn word(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Limited => "limited",
            Status::Missing => "missing",
        }
    }
}

/// One line of the report.
struct Feature {
    name: &'static str,
    status: Status,
    /// What was found, and (unless ok) what follows and how to get it.
    text: String,
    /// ckpt cannot checkpoint anything without it.
    essential: bool,
}

fn euid() -> u32 {
    // SAFETY: plain getter.
    unsafe { libc::geteuid() }
}

/// The errno of a raw system call result (0 when it succeeded).
fn errno_of(r: libc::c_long) -> i32 {
    if r < 0 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    } else {
        0
    }
}

fn ptrace_feature() -> Feature {
    let scope = std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok());
    // A real attach: fork a child that waits, seize it, let it go.
    // SAFETY: the child only blocks in pause(2) until it is killed below.
    let child = unsafe { libc::fork() };
    if child == 0 {
        loop {
            // SAFETY: pause(2) takes nothing.
            unsafe { libc::pause() };
        }
    }
    let seized = child > 0 && {
        // SAFETY: PTRACE_SEIZE of our own child, integers only.
        let r = unsafe { libc::ptrace(libc::PTRACE_SEIZE, child, 0, 0) };
        r == 0
    };
    let e = std::io::Error::last_os_error();
    if child > 0 {
        // SAFETY: kill and reap our own child.
        unsafe {
            libc::kill(child, libc::SIGKILL);
            libc::waitpid(child, std::ptr::null_mut(), 0);
        }
    }
    if !seized {
        return Feature {
            name: "ptrace",
            status: Status::Missing,
            text: format!(
                "cannot attach even to a child of its own ({e}): no checkpoint is possible here (a seccomp policy or container that forbids ptrace; allow ptrace(2))"
            ),
            essential: true,
        };
    }
    let (status, text) = match (scope, euid() == 0) {
        (None | Some(0), _) => (
            Status::Ok,
            "ckpt may attach to any process of this user".to_string(),
        ),
        (Some(1), true) => (
            Status::Ok,
            "Yama ptrace_scope 1; as root ckpt may attach to any process".to_string(),
        ),
        (Some(1), false) => (
            Status::Limited,
            "Yama ptrace_scope 1: `ckpt run` jobs can be checkpointed, but `ckpt dump PID` only of this user's processes that ckpt started; set kernel.yama.ptrace_scope=0 (sysctl) for `ckpt dump` of any of them".to_string(),
        ),
        (Some(2), true) => (
            Status::Ok,
            "Yama ptrace_scope 2: only root may attach (ckpt runs as root)".to_string(),
        ),
        (Some(2), false) => (
            Status::Limited,
            "Yama ptrace_scope 2: only root may attach to a process it did not start; `ckpt dump PID` needs root, `ckpt run` jobs still work; set kernel.yama.ptrace_scope=0 or 1".to_string(),
        ),
        (Some(n), _) => (
            Status::Limited,
            format!("Yama ptrace_scope {n}: attaching to running processes is disabled until reboot; only children ckpt starts can be checkpointed"),
        ),
    };
    Feature {
        name: "ptrace",
        status,
        text,
        essential: true,
    }
}

fn kcmp_feature() -> Feature {
    // SAFETY: kcmp of our own process with itself, integers only.
    let pid = unsafe { libc::getpid() };
    // SAFETY: as above; KCMP_FILE (0) compares descriptor 0 with itself.
    let r = unsafe { libc::syscall(libc::SYS_kcmp, pid, pid, 0, 0, 0) };
    let e = errno_of(r);
    if e == libc::ENOSYS {
        return Feature {
            name: "kcmp",
            status: Status::Missing,
            text: "the kernel has no kcmp (CONFIG_CHECKPOINT_RESTORE or CONFIG_KCMP is off): ckpt cannot tell shared open files apart; use a kernel built with CONFIG_CHECKPOINT_RESTORE=y".into(),
            essential: true,
        };
    }
    Feature {
        name: "kcmp",
        status: Status::Ok,
        text: "open files shared between processes are recognised".into(),
        essential: true,
    }
}

fn pidfd_feature() -> Feature {
    // SAFETY: pidfd_open of ourselves; the result is checked and owned below.
    let pfd = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) };
    if pfd < 0 {
        return Feature {
            name: "pidfd_getfd",
            status: Status::Missing,
            text: format!(
                "pidfd_open failed ({}): ckpt needs Linux 5.6 or newer to read descriptors",
                std::io::Error::last_os_error()
            ),
            essential: true,
        };
    }
    // SAFETY: a fresh descriptor from pidfd_open.
    let pfd = unsafe { OwnedFd::from_raw_fd(pfd as i32) };
    // SAFETY: pidfd_getfd of our own descriptor pfd; the result is closed at once.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pfd.as_raw_fd(), pfd.as_raw_fd(), 0) };
    if r < 0 {
        return Feature {
            name: "pidfd_getfd",
            status: Status::Missing,
            text: format!(
                "pidfd_getfd failed ({}): ckpt needs Linux 5.6 or newer to read descriptors",
                std::io::Error::last_os_error()
            ),
            essential: true,
        };
    }
    // SAFETY: a fresh descriptor from pidfd_getfd.
    drop(unsafe { OwnedFd::from_raw_fd(r as i32) });
    Feature {
        name: "pidfd_getfd",
        status: Status::Ok,
        text: "descriptors of a traced process can be read".into(),
        essential: true,
    }
}

fn set_tid_feature() -> Feature {
    if job::may_choose_pids() {
        return Feature {
            name: "clone3 set_tid",
            status: Status::Ok,
            text: "restores get their original PIDs here when they are free".into(),
            essential: false,
        };
    }
    Feature {
        name: "clone3 set_tid",
        status: Status::Limited,
        text: "choosing PIDs needs CAP_CHECKPOINT_RESTORE: restores run in a new PID namespace (in a new user namespace), where the processes have their original PIDs; outside it they have others".into(),
        essential: false,
    }
}

fn userns_feature() -> Feature {
    let sysctl = |p: &str| {
        std::fs::read_to_string(p)
            .ok()
            .map(|s| s.trim().to_string())
    };
    // Try it: a child unshares a user namespace and a PID namespace, as a restore does.
    // SAFETY: the child only calls unshare(2) and _exit(2).
    let child = unsafe { libc::fork() };
    if child == 0 {
        // SAFETY: unshare and _exit in the child.
        unsafe {
            let flags = if libc::geteuid() == 0 {
                libc::CLONE_NEWPID
            } else {
                libc::CLONE_NEWUSER | libc::CLONE_NEWPID
            };
            let r = libc::unshare(flags);
            libc::_exit(if r == 0 {
                0
            } else {
                std::io::Error::last_os_error().raw_os_error().unwrap_or(1)
            });
        }
    }
    let mut st = 0;
    // SAFETY: reaping our own child into a local.
    unsafe { libc::waitpid(child, &mut st, 0) };
    let code = libc::WEXITSTATUS(st);
    if child > 0 && libc::WIFEXITED(st) && code == 0 {
        let what = if euid() == 0 {
            "new PID namespaces can be made (restores whose PIDs are taken go there)"
        } else {
            "unprivileged user namespaces work: restores of this user run in new user and PID namespaces"
        };
        return Feature {
            name: "user namespaces",
            status: Status::Ok,
            text: what.into(),
            essential: false,
        };
    }
    let mut hints = Vec::new();
    if let Some(v) = sysctl("/proc/sys/kernel/unprivileged_userns_clone") {
        hints.push(format!("kernel.unprivileged_userns_clone={v}"));
    }
    if let Some(v) = sysctl("/proc/sys/user/max_user_namespaces") {
        hints.push(format!("user.max_user_namespaces={v}"));
    }
    if let Some(v) = sysctl("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") {
        hints.push(format!("kernel.apparmor_restrict_unprivileged_userns={v}"));
    }
    Feature {
        name: "user namespaces",
        status: Status::Missing,
        text: format!(
            "a new {} namespace cannot be made ({}{}): an ordinary user's restore fails (it needs one); enable unprivileged user namespaces (kernel.unprivileged_userns_clone=1, user.max_user_namespaces > 0, no AppArmor restriction), or restore as root",
            if euid() == 0 { "PID" } else { "user" },
            std::io::Error::from_raw_os_error(code),
            if hints.is_empty() {
                String::new()
            } else {
                format!("; {}", hints.join(", "))
            }
        ),
        essential: false,
    }
}

fn map_files_feature() -> Feature {
    let ok = std::fs::read_dir("/proc/self/map_files")
        .ok()
        .and_then(|mut d| d.next())
        .and_then(|e| e.ok())
        .is_some_and(|e| std::fs::File::open(e.path()).is_ok());
    if ok {
        return Feature {
            name: "map_files",
            status: Status::Ok,
            text: "/proc/PID/map_files opens: mappings of deleted files and memfds are saved whole, shared anonymous memory only where it has pages".into(),
            essential: false,
        };
    }
    Feature {
        name: "map_files",
        status: Status::Limited,
        text: "/proc/PID/map_files needs CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE: a deleted file or memfd mapped without a descriptor is read through the mapping (its owner, mode and times are not kept), and every page of shared anonymous memory is stored".into(),
        essential: false,
    }
}

fn pagemap_scan_feature() -> Feature {
    if ckpt_tracer::maps::pagemap_scan_available() {
        return Feature {
            name: "PAGEMAP_SCAN",
            status: Status::Ok,
            text: "the pages to store are found by the kernel (Linux 6.7+)".into(),
            essential: false,
        };
    }
    Feature {
        name: "PAGEMAP_SCAN",
        status: Status::Limited,
        text: "not in this kernel (Linux 6.7+): /proc/PID/pagemap is read 8 bytes a page, which makes dumps of large processes slower".into(),
        essential: false,
    }
}

fn userfaultfd_feature() -> Feature {
    const UFFD_USER_MODE_ONLY: libc::c_long = 1;
    // SAFETY: userfaultfd(2) with flags only; the result is owned below.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_userfaultfd,
            libc::O_CLOEXEC as libc::c_long | UFFD_USER_MODE_ONLY,
        )
    };
    let e = std::io::Error::last_os_error();
    if fd >= 0 {
        // SAFETY: a fresh descriptor from userfaultfd.
        drop(unsafe { OwnedFd::from_raw_fd(fd as i32) });
    }
    // ckpt does not use it yet: incremental generations (issue 11) will.
    let (status, text) = if fd >= 0 {
        (
            Status::Ok,
            "userfaultfd works for this user (not used by ckpt yet: it is for incremental checkpoints)".to_string(),
        )
    } else {
        (
            Status::Missing,
            format!("userfaultfd fails ({e}); ckpt does not use it yet (it is for incremental checkpoints); vm.unprivileged_userfaultfd=1 allows it"),
        )
    };
    Feature {
        name: "userfaultfd",
        status,
        text,
        essential: false,
    }
}

fn tcp_repair_feature() -> Feature {
    // SAFETY: a TCP socket of our own, owned below.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
    if s < 0 {
        return Feature {
            name: "TCP_REPAIR",
            status: Status::Missing,
            text: format!(
                "no TCP socket can be made ({})",
                std::io::Error::last_os_error()
            ),
            essential: false,
        };
    }
    // SAFETY: a fresh descriptor from socket(2).
    let s = unsafe { OwnedFd::from_raw_fd(s) };
    let on: libc::c_int = 1;
    const TCP_REPAIR: libc::c_int = 19;
    // SAFETY: setsockopt with a pointer to a local int of the size given.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            TCP_REPAIR,
            &on as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        return Feature {
            name: "TCP_REPAIR",
            status: Status::Ok,
            text: "TCP connections to peers outside the job can be saved with --tcp-established (repair mode)".into(),
            essential: false,
        };
    }
    Feature {
        name: "TCP_REPAIR",
        status: Status::Limited,
        text: format!(
            "needs CAP_NET_ADMIN ({}): TCP connections with both ends in the job are saved without it, but connections to peers outside the job are refused (or restored as reset with --tcp-close); run as root for --tcp-established",
            std::io::Error::last_os_error()
        ),
        essential: false,
    }
}

/// Every feature, in the order the report shows them.
fn features() -> Vec<Feature> {
    vec![
        ptrace_feature(),
        kcmp_feature(),
        pidfd_feature(),
        set_tid_feature(),
        userns_feature(),
        map_files_feature(),
        pagemap_scan_feature(),
        userfaultfd_feature(),
        tcp_repair_feature(),
    ]
}

/// `ckpt check`: print the report; fails when ckpt cannot checkpoint anything here.
pub fn check_host() -> Result<i32> {
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::effective())
        .ok()
        .flatten()
        .map_or_else(|| format!("uid {}", euid()), |u| u.name);
    println!(
        "ckpt {} on Linux {} ({}), as {user}:",
        env!("CARGO_PKG_VERSION"),
        crate::image::kernel_release(),
        std::env::consts::ARCH
    );
    let all = features();
    let width = all.iter().map(|f| f.name.len()).max().unwrap_or(0);
    for f in &all {
        println!("  {:<7}  {:<width$}  {}", f.status.word(), f.name, f.text);
    }
    let essential: Vec<&str> = all
        .iter()
        .filter(|f| f.essential && f.status == Status::Missing)
        .map(|f| f.name)
        .collect();
    if !essential.is_empty() {
        bail!(
            "ckpt cannot checkpoint here: {} missing (see above)",
            essential.join(", ")
        );
    }
    Ok(0)
}

/// `ckpt check DIR`: whether the newest complete generation in DIR can be restored here
/// and now, without restoring anything.
pub fn check_dir(dir: &Path) -> Result<i32> {
    let opts = restore::RestoreOptions {
        dir,
        detach: false,
        pidns: restore::PidNs::Auto,
        new_audit_session: false,
        tcp_established: false,
    };
    let e = restore::examine(&opts)
        .map_err(|e| anyhow::anyhow!("{} cannot be restored here: {e:#}", dir.display()))?;
    let m = &e.manifest;
    let root = &m.processes[0];
    println!(
        "{}: {} process{}, root PID {} ({}), {} MiB of images, written by ckpt {} on Linux {}",
        e.gen.display(),
        m.processes.len(),
        if m.processes.len() == 1 { "" } else { "es" },
        root.pid,
        root.cmdline.first().map_or("", String::as_str),
        e.stored_bytes().div_ceil(1 << 20),
        m.tool_version,
        m.kernel
    );
    println!(
        "  checksums, files and libraries, kernel (vdso) and CPU features: as at the checkpoint"
    );
    if e.new_ns {
        println!(
            "  PIDs: a restore runs in a new PID namespace{} ({}), where the processes get their original PIDs",
            if e.new_ipc {
                " and a new IPC namespace"
            } else {
                ""
            },
            e.ns_reason.as_deref().unwrap_or("--pidns always")
        );
    } else {
        println!("  PIDs: every original PID is free here, and may be chosen");
    }
    println!("ckpt: {} can be restored here", dir.display());
    Ok(0)
}
