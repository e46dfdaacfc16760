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
                    "threads": s.threads.len(),
                    "tids": s.threads.iter().map(|t| t.tid).collect::<Vec<_>>(),
                    "regions": s.vmas.len(),
                    "fds": s.fds.iter().map(|f| json!({"fd": f.fd, "kind": fd_kind(&f.kind)})).collect::<Vec<_>>(),
                    "attributes": s.attrs.iter().flat_map(ckpt_tracer::attr::describe).collect::<Vec<_>>(),
                })
            }).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("generation  {}", gen.display());
    println!(
        "generations {} in {}",
        all.len(),
        gen.parent().unwrap_or(Path::new(".")).display()
    );
    println!(
        "created     {} ns since the epoch, kernel {}, ckpt {}",
        manifest.created_unix_ns, manifest.kernel, manifest.tool_version
    );
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
        println!(
            "  {} memory regions, {} MiB stored",
            s.vmas.len(),
            i.stored_bytes() as f64 / (1 << 20) as f64
        );
        for v in &s.vmas {
            let kind = match &v.kind {
                VmaKind::Anon => "anon",
                VmaKind::SharedAnon { .. } => "shared-anon",
                VmaKind::File { .. } => "file",
                VmaKind::Vdso => "vdso",
                VmaKind::Vvar | VmaKind::VvarVclock => "vvar",
                VmaKind::Unlinked { .. } => "unlinked",
                VmaKind::AioRing(_) => "aio ring",
                VmaKind::DeletedFile { .. } => "deleted file",
                VmaKind::SysvShm { .. } => "sysv-shm",
            };
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
