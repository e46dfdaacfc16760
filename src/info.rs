//! `ckpt info DIR`: what a checkpoint holds, for people (text) and scripts (--json).

use crate::generation;
use crate::image::PAGE;
use anyhow::Result;
use ckpt_format::state::{FdKind, VmaKind};
use serde_json::json;
use std::path::Path;

pub fn info(dir: &Path, as_json: bool) -> Result<()> {
    let gen = generation::resolve(dir)?;
    let manifest = generation::read_manifest(&gen)?;
    let all = generation::generations(gen.parent().unwrap_or(Path::new(".")))?;
    // Unfinished generations beside the complete ones: a dump still writing, or one
    // that died (the next dump removes those).
    let ckpt_dir = if dir.join(generation::MANIFEST).is_file() {
        dir.parent().unwrap_or(Path::new("."))
    } else {
        dir
    };
    let unfinished = generation::unfinished(ckpt_dir);
    for u in &unfinished {
        if u.writer_running {
            eprintln!(
                "ckpt: warning: checkpoint still being written by process {}: {}",
                u.writer,
                u.path.display()
            );
        } else {
            eprintln!(
                "ckpt: warning: unfinished checkpoint left by an interrupted dump (pid {}): {} (the next dump in this directory removes it)",
                u.writer,
                u.path.display()
            );
        }
    }
    let procs = generation::open_images(&gen, &manifest)?;
    // Every complete generation of the directory: (path, created, bytes, processes).
    // and the generation it builds on (an incremental one).
    type GenRow = (std::path::PathBuf, u64, u64, usize, Option<String>);
    let gens: Vec<GenRow> = all
        .iter()
        .map(|g| {
            let m = generation::read_manifest(g).ok();
            (
                g.clone(),
                m.as_ref().map_or(0, |m| m.created_unix_ns),
                generation::bytes_on_disk(g),
                m.as_ref().map_or(0, |m| m.processes.len()),
                m.and_then(|m| m.parent),
            )
        })
        .collect();
    // Page bytes each process takes from older generations.
    let inherited = |s: &ckpt_format::state::ProcessState| -> u64 {
        crate::incremental::parent_of(s).map_or(0, |p| {
            p.runs.iter().map(|r| r.npages * crate::image::PAGE).sum()
        })
    };
    if as_json {
        let v = json!({
            "generation": gen.display().to_string(),
            "generations": all.iter().map(|g| g.display().to_string()).collect::<Vec<_>>(),
            "unfinished": unfinished.iter().map(|u| json!({
                "path": u.path.display().to_string(),
                "writer_pid": u.writer,
                "writer_running": u.writer_running,
            })).collect::<Vec<_>>(),
            "created_unix_ns": manifest.created_unix_ns,
            "created": when(manifest.created_unix_ns),
            "parent": manifest.parent,
            "generation_list": gens.iter().map(|(p, created, bytes, n, parent)| json!({
                "path": p.display().to_string(),
                "created_unix_ns": created,
                "bytes": bytes,
                "processes": n,
                "parent": parent,
            })).collect::<Vec<_>>(),
            "kernel": manifest.kernel,
            "tool_version": manifest.tool_version,
            "root_pid": manifest.root_pid,
            "zombies": manifest.zombies.iter().map(|z| json!({
                "pid": z.pid, "ppid": z.ppid, "pgid": z.pgid, "sid": z.sid,
                "wait_status": z.wait_status,
            })).collect::<Vec<_>>(),
            "processes": procs.iter().map(|i| {
                let s = &i.state;
                json!({
                    "pid": s.pid,
                    "ppid": s.ppid,
                    "pgid": s.pgid,
                    "sid": s.sid,
                    "cmdline": s.cmdline,
                    "exe": s.exe.path,
                    "image": i.path.display().to_string(),
                    "meta_offset": i.header.meta_offset,
                    "meta_len": i.header.meta_len,
                    "pages_offset": i.header.pages_offset,
                    "pages_len": i.header.pages_len,
                    "stored_bytes": i.stored_bytes(),
                    "inherited_bytes": inherited(s),
                    "threads": s.threads.len(),
                    "tids": s.threads.iter().map(|t| t.tid).collect::<Vec<_>>(),
                    "regions": s.vmas.len(),
                    "memory": memory_totals(&s.vmas).iter().map(|(k, n, mapped, stored)| json!({
                        "kind": k, "regions": n, "mapped_bytes": mapped, "stored_bytes": stored,
                    })).collect::<Vec<_>>(),
                    "files": crate::restore::checks::file_checks(s).iter().map(|(path, what, r)| json!({
                        "path": path,
                        "what": what,
                        "matches": r.is_ok(),
                        "problem": r.as_ref().err().map(|e| format!("{e:#}")),
                    })).collect::<Vec<_>>(),
                    "fds": s.fds.iter().map(|f| json!({
                        "fd": f.fd,
                        "type": fd_type(&f.kind),
                        "kind": fd_kind(&f.kind),
                        "flags": f.flags,
                        "cloexec": f.cloexec,
                    })).collect::<Vec<_>>(),
                    "attributes": s.attrs.iter().flat_map(ckpt_tracer::attr::describe).collect::<Vec<_>>(),
                })
            }).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("generation  {}", gen.display());
    println!(
        "created     {}, Linux {}, ckpt {}",
        when(manifest.created_unix_ns),
        manifest.kernel,
        manifest.tool_version
    );
    println!(
        "generations {} in {}:",
        all.len(),
        gen.parent().unwrap_or(Path::new(".")).display()
    );
    if let Some(p) = &manifest.parent {
        println!("builds on   {p} (the pages unchanged since are read from there)");
    }
    for (p, created, bytes, n, parent) in &gens {
        println!(
            "  {}{}  {}  {}, {n} process{}{}",
            p.file_name().unwrap_or_default().to_string_lossy(),
            if *p == gen { " (this one)" } else { "" },
            when(*created),
            human(*bytes),
            if *n == 1 { "" } else { "es" },
            match parent {
                Some(b) => format!(", incremental: builds on {b}"),
                None => ", holds all its pages".to_string(),
            }
        );
    }
    for z in &manifest.zombies {
        println!(
            "zombie {} (parent {}), wait status {:#x}",
            z.pid, z.ppid, z.wait_status
        );
    }
    for i in &procs {
        let s = &i.state;
        println!(
            "process {} (parent {}): {}",
            s.pid,
            s.ppid,
            s.cmdline.join(" ")
        );
        println!("  executable {}", s.exe.path);
        println!(
            "  {} thread(s): {}",
            s.threads.len(),
            s.threads
                .iter()
                .map(|t| format!("{} {:?}", t.tid, t.name))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let older = inherited(s);
        println!(
            "  {} memory regions, {} stored{}:",
            s.vmas.len(),
            human(i.stored_bytes()),
            if older > 0 {
                format!(" here, {} unchanged in older generations", human(older))
            } else {
                String::new()
            }
        );
        for (k, n, mapped, stored) in memory_totals(&s.vmas) {
            println!(
                "    {k:<12} {n:>4} region{} {:>10} mapped {:>10} stored",
                if n == 1 { " " } else { "s" },
                human(mapped),
                human(stored)
            );
        }
        let files = crate::restore::checks::file_checks(s);
        let changed = files.iter().filter(|f| f.2.is_err()).count();
        println!(
            "  {} file(s) the restore depends on{}:",
            files.len(),
            if changed == 0 {
                ", all as at the checkpoint".to_string()
            } else {
                format!(", {changed} changed")
            }
        );
        for (path, what, r) in &files {
            match r {
                Ok(()) => println!("    ok       {path} ({what})"),
                Err(e) => println!("    CHANGED  {path} ({what}): {e:#}"),
            }
        }
        println!("  regions:");
        for v in &s.vmas {
            let kind = vma_kind(&v.kind);
            let stored: u64 = v.pages.iter().map(|r| r.npages * PAGE).sum();
            println!(
                "    {:012x}-{:012x} {}{}{}{} {:<11} {:>10} KiB  {}",
                v.start,
                v.end,
                if v.prot & 1 != 0 { 'r' } else { '-' },
                if v.prot & 2 != 0 { 'w' } else { '-' },
                if v.prot & 4 != 0 { 'x' } else { '-' },
                if v.shared { 's' } else { 'p' },
                kind,
                stored / 1024,
                v.name
            );
        }
        println!("  {} file descriptor(s)", s.fds.len());
        for f in &s.fds {
            println!("    {:>4}  {}", f.fd, fd_kind(&f.kind));
        }
        // One module per attribute group describes it (ckpt_tracer::attr).
        for line in s.attrs.iter().flat_map(ckpt_tracer::attr::describe) {
            println!("  {line}");
        }
    }
    Ok(())
}

/// One module per kind describes it (ckpt_tracer::fd, docs/FDKINDS.md).
fn fd_kind(k: &FdKind) -> String {
    ckpt_tracer::fd::describe(k).unwrap_or_else(|| "?".to_string())
}

/// A kind of memory region, for `ckpt info`.
fn vma_kind(k: &VmaKind) -> &'static str {
    match k {
        VmaKind::Anon => "anon",
        VmaKind::SharedAnon { .. } => "shared-anon",
        VmaKind::File { .. } => "file",
        VmaKind::Vdso => "vdso",
        VmaKind::Vvar | VmaKind::VvarVclock => "vvar",
        VmaKind::Unlinked { .. } => "unlinked",
        VmaKind::AioRing(_) => "aio ring",
        VmaKind::DeletedFile { .. } => "deleted file",
        VmaKind::SysvShm { .. } => "sysv-shm",
    }
}

/// Per kind of region: (kind, regions, mapped bytes, stored bytes), in first-seen order.
fn memory_totals(vmas: &[ckpt_format::state::Vma]) -> Vec<(&'static str, usize, u64, u64)> {
    let mut out: Vec<(&'static str, usize, u64, u64)> = Vec::new();
    for v in vmas {
        let k = vma_kind(&v.kind);
        let stored: u64 = v.pages.iter().map(|r| r.npages * PAGE).sum();
        match out.iter_mut().find(|t| t.0 == k) {
            Some(t) => {
                t.1 += 1;
                t.2 += v.end - v.start;
                t.3 += stored;
            }
            None => out.push((k, 1, v.end - v.start, stored)),
        }
    }
    out
}

/// A size for people: bytes, KiB, MiB or GiB with one decimal.
fn human(n: u64) -> String {
    const U: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < U.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[u])
    }
}

/// A time for people: UTC date and time, and how long ago.
fn when(unix_ns: u64) -> String {
    let secs = (unix_ns / 1_000_000_000) as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let ago = now - secs;
    let ago = match ago {
        a if a < 0 => "in the future".to_string(),
        a if a < 120 => format!("{a} s ago"),
        a if a < 7200 => format!("{} min ago", a / 60),
        a if a < 172_800 => format!("{} h ago", a / 3600),
        a => format!("{} days ago", a / 86400),
    };
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC ({ago})",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The variant name of a descriptor kind (`Pipe`, `InetSocket`, ...), for scripts.
fn fd_type(k: &FdKind) -> String {
    match serde_json::to_value(k) {
        Ok(serde_json::Value::Object(m)) => m.keys().next().cloned().unwrap_or_default(),
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}
