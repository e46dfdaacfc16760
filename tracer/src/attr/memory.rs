//! madvise state and memory locks of every region (the group "memory"): what the
//! VmFlags letters of /proc/PID/smaps show (`rr` `sr` `dc` `wf` `dd` `hg` `nh` `mg`,
//! `lo` `lf`), applied again with injected madvise and mlock2 calls once the loader has
//! mapped and filled every region, so that the restored process's regions behave as
//! before (a MADV_DONTFORK buffer is still not copied into a child, a MADV_WIPEONFORK
//! region is still wiped in one, locked memory stays resident, glibc's guard pages keep
//! MADV_NOHUGEPAGE, ...). Locks come last: mlock faults the pages in.

use super::{injected, Dump, Group, Restore};
use crate::error::Result;
use crate::fd::RestoreError;
use crate::state::{Attr, RegionAdvice};

pub const GROUP: Group = Group {
    name: "memory",
    dump,
    restore,
    describe,
};

/// VmFlags letter → MADV_* value.
const ADVICE: &[(&str, i32, &str)] = &[
    ("rr", libc::MADV_RANDOM, "MADV_RANDOM"),
    ("sr", libc::MADV_SEQUENTIAL, "MADV_SEQUENTIAL"),
    ("dc", libc::MADV_DONTFORK, "MADV_DONTFORK"),
    ("wf", libc::MADV_WIPEONFORK, "MADV_WIPEONFORK"),
    ("dd", libc::MADV_DONTDUMP, "MADV_DONTDUMP"),
    ("hg", libc::MADV_HUGEPAGE, "MADV_HUGEPAGE"),
    ("nh", libc::MADV_NOHUGEPAGE, "MADV_NOHUGEPAGE"),
    ("mg", libc::MADV_MERGEABLE, "MADV_MERGEABLE"),
];
const MLOCK_ONFAULT: u64 = 1;

fn dump(d: &mut Dump) -> Result<Option<Attr>> {
    let mut out = Vec::new();
    for m in d.maps.iter().filter(|m| !m.kernel_made()) {
        let has = |f: &str| m.flag_names.iter().any(|x| x == f);
        let advice: Vec<i32> = ADVICE
            .iter()
            .filter(|(f, _, _)| has(f))
            .map(|&(_, a, _)| a)
            .collect();
        let lock = if has("lf") {
            2
        } else if has("lo") {
            1
        } else {
            0
        };
        if !advice.is_empty() || lock != 0 {
            out.push(RegionAdvice {
                start: m.start,
                end: m.end,
                advice,
                lock,
            });
        }
    }
    Ok((!out.is_empty()).then_some(Attr::Memory(out)))
}

fn name(a: i32) -> &'static str {
    ADVICE
        .iter()
        .find(|x| x.1 == a)
        .map(|x| x.2)
        .unwrap_or("madvise")
}

fn restore(r: &mut Restore, a: &Attr) -> Option<std::result::Result<(), RestoreError>> {
    let Attr::Memory(regions) = a else {
        return None;
    };
    let pid = r.pid;
    let leader = &mut r.threads[0];
    let mut run = || -> std::result::Result<(), RestoreError> {
        for g in regions {
            let len = g.end - g.start;
            let ctx = |what: &str, e| {
                RestoreError::context(
                    format!("process {pid}: {what} on {:#x}-{:#x}", g.start, g.end),
                    e,
                )
            };
            for &adv in &g.advice {
                injected(r.inj.syscall(
                    leader,
                    libc::SYS_madvise,
                    [g.start, len, adv as u64, 0, 0, 0],
                ))
                .map_err(|e| ctx(name(adv), e))?;
            }
        }
        for g in regions.iter().filter(|g| g.lock != 0) {
            let flags = if g.lock == 2 { MLOCK_ONFAULT } else { 0 };
            injected(r.inj.syscall(
                leader,
                libc::SYS_mlock2,
                [g.start, g.end - g.start, flags, 0, 0, 0],
            ))
            .map_err(|e| {
                RestoreError::context(
                    format!(
                        "process {pid}: locking {:#x}-{:#x} (mlock; RLIMIT_MEMLOCK or CAP_IPC_LOCK)",
                        g.start, g.end
                    ),
                    e,
                )
            })?;
        }
        Ok(())
    };
    Some(run())
}

fn describe(a: &Attr) -> Option<Vec<String>> {
    let Attr::Memory(regions) = a else {
        return None;
    };
    Some(
        regions
            .iter()
            .map(|g| {
                let mut v: Vec<&str> = g.advice.iter().map(|&a| name(a)).collect();
                match g.lock {
                    1 => v.push("mlock"),
                    2 => v.push("mlock onfault"),
                    _ => {}
                }
                format!("{:x}-{:x} {}", g.start, g.end, v.join(" "))
            })
            .collect(),
    )
}
