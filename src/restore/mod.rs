//! `ckpt restore`: check the image completely, then create the process with its
//! original PID, exec the loader in it, finish from the outside, and (in the
//! foreground) wait for it. Any failure after the process exists kills it.

pub mod checks;
mod fds;
mod finish;
mod forked;
mod guard;
pub mod plan;
mod spawn;
mod sys;
mod timers;

use crate::generation;
use crate::image::Image;
use crate::incremental::Chain;
use crate::job::{self, status_code, wait_exit};
use crate::progress;
use anyhow::{bail, Context, Result};
use ckpt_plan::{stage_name, Ready};
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

/// The loader binary, built from restore/ by build.rs.
static LOADER: &[u8] = include_bytes!(env!("CKPT_LOADER_PATH"));

/// Where to restore (docs/CONTRACT.md §2 `--pidns`; the namespace itself is made by
/// `job::run_in_new_pidns`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PidNs {
    /// In the current namespace when the PIDs are free and ckpt may choose PIDs there,
    /// else in a new one.
    Auto,
    /// Always in a new PID namespace.
    Always,
    /// Never: fail if the original PIDs cannot be had here.
    Never,
}

pub struct RestoreOptions<'a> {
    pub dir: &'a Path,
    pub detach: bool,
    pub pidns: PidNs,
    /// Accept an audit login uid and session id other than the saved ones.
    pub new_audit_session: bool,
    /// Rebuild the connections saved with `ckpt dump --tcp-established`.
    pub tcp_established: bool,
}

fn memfd(name: &str, data: &[u8]) -> Result<OwnedFd> {
    let c = CString::new(name)?;
    // SAFETY: memfd_create returns a descriptor we own.
    let fd = sys::cvt(
        unsafe { libc::memfd_create(c.as_ptr(), libc::MFD_CLOEXEC) },
        "creating a memfd",
    )?;
    // SAFETY: `fd` was just returned by a successful memfd_create (cvt rejects negatives):
    // a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let f = std::fs::File::from(fd.try_clone()?);
    use std::io::Write;
    (&f).write_all(data).context("writing a memfd")?;
    Ok(fd)
}

fn read_ready(fd: &OwnedFd) -> Option<Ready> {
    let mut buf = vec![0u8; std::mem::size_of::<Ready>()];
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: read into a live buffer.
        let n = unsafe {
            libc::read(
                fd.as_raw_fd(),
                buf[got..].as_mut_ptr().cast(),
                buf.len() - got,
            )
        };
        if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        if n <= 0 {
            return None;
        }
        got += n as usize;
    }
    Ready::parse(&buf)
}

fn rlimits_for(saved: &[ckpt_format::state::Rlimit]) -> Vec<(i32, libc::rlimit64)> {
    saved
        .iter()
        .map(|r| {
            let mut own = libc::rlimit64 {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: getrlimit64 into a local.
            unsafe { libc::getrlimit64(r.resource as _, &mut own) };
            // A hard limit cannot be raised without CAP_SYS_RESOURCE (root lacks it here).
            let max = r.max.min(own.rlim_max);
            (
                r.resource,
                libc::rlimit64 {
                    rlim_cur: r.cur.min(max),
                    rlim_max: max,
                },
            )
        })
        .collect()
}

/// Everything prepared in the front end for one process before any process exists.
struct PreparedProcess {
    setup: spawn::ChildSetup,
    /// The descriptors its plan names (the plan itself is written by `write_plan`).
    plan_fds: plan::PlanFds,
    status_r: OwnedFd,
    status_fd_child: RawFd,
    exe_fd_child: RawFd,
    /// Our copies of the loader's descriptors; closed once the tree exists.
    _keep: Vec<OwnedFd>,
}

/// Descriptors backing file mappings, by `fds::map_key` (one per file; read-write when a
/// shared writable mapping needs it).
fn map_fds_for(
    state: &ckpt_format::state::ProcessState,
    base: RawFd,
    shared: &mut fds::Shared,
) -> Result<(std::collections::HashMap<String, RawFd>, Vec<OwnedFd>)> {
    let mut map_files: Vec<OwnedFd> = Vec::new();
    let mut map_fds = std::collections::HashMap::new();
    for v in &state.vmas {
        if let Some(fd) = fds::map_fd_for(v, shared, base, &mut map_fds)? {
            map_files.push(fd);
        }
    }
    Ok((map_fds, map_files))
}

fn prepare_process(
    (image, chain): (&Image, Option<&Chain>),
    m: &generation::ManifestProcess,
    root: &generation::ManifestProcess,
    in_tree: &std::collections::HashSet<i32>,
    base: RawFd,
    shared: &mut fds::Shared,
    loader_fd: RawFd,
) -> Result<PreparedProcess> {
    let state = &image.state;
    let installs = fds::prepare(state.pid, &state.fds, base, shared)?;
    shared.note_attrs(&state.attrs);
    let image_fd = sys::above(
        OwnedFd::from(image.file.try_clone().context("reopening the image")?),
        base,
    )?;
    let (map_fds, mut map_files) = map_fds_for(state, base, shared)?;
    // The older images an incremental image's other pages are read from; the loader
    // closes them with the mapping files.
    let mut inherited = Vec::new();
    if let Some(c) = chain {
        let mut fds = Vec::new();
        for a in &c.ancestors {
            let fd = sys::above(
                OwnedFd::from(a.file.try_clone().context("reopening an image")?),
                base,
            )?;
            fds.push(fd.as_raw_fd());
            map_files.push(fd);
        }
        inherited = c
            .runs
            .iter()
            .map(|r| ckpt_plan::PlanRun {
                addr: r.addr,
                len: r.npages * crate::image::PAGE,
                file_off: r.file_off,
                fd: fds[r.src] as i64,
            })
            .collect();
    }
    let exe = std::fs::File::open(&state.exe.path)
        .with_context(|| format!("opening the executable {}", state.exe.path))?;
    let exe_fd = sys::above(OwnedFd::from(exe), base)?;
    let mut p = [0; 2];
    sys::cvt(
        // SAFETY: pipe2(2) writes exactly two c_ints into `p`, a local `[c_int; 2]` that
        // outlives the call.
        unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) },
        "creating a pipe",
    )?;
    // SAFETY: pipe2 just returned these two descriptors, which nothing else owns.
    let (status_r, status_w0) = unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };
    let status_w = sys::above(status_w0, base)?;
    // A removed working directory: a new one, made and removed again (ckpt_tracer::fd::ghost).
    let cwd_ghost = match ckpt_tracer::attr::cwd::saved(state) {
        Some(d) => Some(sys::above(
            ckpt_tracer::fd::ghost::cwd_ghost(state.pid, d)?,
            base,
        )?),
        None => None,
    };
    let plan_fds = plan::PlanFds {
        image_fd: image_fd.as_raw_fd(),
        status_fd: status_w.as_raw_fd(),
        map_fds,
        map_files: map_files.iter().map(|f| f.as_raw_fd()).collect(),
        inherited,
    };
    // The plan's own descriptor is added by `write_plan`.
    let mut loader_fds = vec![
        image_fd.as_raw_fd(),
        status_w.as_raw_fd(),
        exe_fd.as_raw_fd(),
    ];
    loader_fds.extend(map_files.iter().map(|f| f.as_raw_fd()));
    let pid = state.pid;
    // Sessions and groups: the root joins the restorer's (like any job it starts)
    // unless it led its own session; inside the tree, leaders lead again and members
    // join leaders restored before them. The members of a group the root led (but not
    // a session) stay with the root in the restorer's: that group is not made again.
    let session_leader = m.sid == pid;
    let roots_group_not_made = m.pgid == root.pid && root.sid != root.pid;
    let pgid = if session_leader || m.pgid == pid && pid != root.pid {
        spawn::Pgid::Lead
    } else if m.pgid != pid && in_tree.contains(&m.pgid) && !roots_group_not_made {
        spawn::Pgid::Join(m.pgid)
    } else {
        spawn::Pgid::Inherit
    };
    let setup = spawn::ChildSetup {
        pid,
        session_leader,
        ctty: None,
        pgid,
        installs,
        loader_fds,
        status_fd: status_w.as_raw_fd(),
        loader_exe_fd: loader_fd,
        argv: Vec::new(),
        cwd: CString::new(state.cwd.clone())?,
        cwd_fd: cwd_ghost.as_ref().map(|f| f.as_raw_fd()),
        umask: state.umask,
        rlimits: rlimits_for(&state.rlimits),
        personality: state.personality,
        ambient_checkpoint_cap: false,
    };
    let exe_fd_child = exe_fd.as_raw_fd();
    let mut keep = vec![image_fd, exe_fd, status_w];
    keep.extend(map_files);
    keep.extend(cwd_ghost);
    Ok(PreparedProcess {
        status_fd_child: setup.status_fd,
        exe_fd_child,
        setup,
        plan_fds,
        status_r,
        _keep: keep,
    })
}

/// Builds the plan of `p` (with what `extra` adds for forking), checks it as the loader
/// will, and puts it where the loader finds it (a descriptor above `base`, its number
/// the loader's argument). Returns that descriptor's number.
fn write_plan(
    state: &ckpt_format::state::ProcessState,
    p: &mut PreparedProcess,
    extra: &plan::Extra,
    base: RawFd,
) -> Result<RawFd> {
    let plan_fd = sys::above(memfd("ckpt-plan", &[])?, base)?;
    let n = plan_fd.as_raw_fd();
    let plan_bytes = plan::build(state, &p.plan_fds, extra, n);
    // The loader's own checks, before any process exists: a plan it would refuse is a bug
    // here, better reported now and with its cause.
    if let Err(e) = plan::check(&plan_bytes) {
        bail!(
            "internal error: the restore plan of process {} is invalid: {e}",
            state.pid
        );
    }
    use std::io::Write;
    std::fs::File::from(plan_fd.try_clone()?)
        .write_all(&plan_bytes)
        .context("writing the restore plan")?;
    p.setup.loader_fds.push(n);
    p.setup.argv = vec![CString::new("ckpt-restore")?, CString::new(n.to_string())?];
    p._keep.push(plan_fd);
    Ok(n)
}

fn raise_nofile() {
    let mut l = libc::rlimit64 {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: get/setrlimit64 on a local struct.
    unsafe {
        if libc::getrlimit64(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < l.rlim_max {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit64(libc::RLIMIT_NOFILE, &l);
        }
    }
}

fn ready_error(pid: i32, r: &Ready) -> anyhow::Error {
    let msg = String::from_utf8_lossy(&r.msg);
    let msg = msg.trim_end_matches('\0');
    let err = std::io::Error::from_raw_os_error(r.error as i32);
    let stage = if r.stage == 100 {
        "preparing the process"
    } else {
        stage_name(r.stage)
    };
    let at = if r.addr != 0 {
        format!(" at {:#x}", r.addr)
    } else {
        String::new()
    };
    anyhow::anyhow!("restore of process {pid} failed while {stage} ({msg}{at}): {err}")
}

/// What the restorer does once every process of the tree runs; the caller decides
/// (`ckpt restore` keeps supervising a job that ran under a coordinator, see main.rs).
pub enum Then {
    /// Wait for the root and return its exit code; with `detach`, return 0 at once.
    Wait,
    /// Call this with the root's PID where the restorer runs (as init of the new PID
    /// namespace when there is one) instead of waiting; its result is the exit code.
    HandOver(Box<dyn FnOnce(i32) -> Result<i32>>),
}

/// A generation checked and ready to be restored: every step that can fail before a
/// process exists is done (docs/RESTORE.md §1, §2). Dropping it creates nothing.
pub struct Prepared {
    gen: PathBuf,
    manifest: generation::Manifest,
    images: Vec<Image>,
    prepared: Vec<PreparedProcess>,
    loader_fd: OwnedFd,
    /// Indices of each process's children.
    children: Vec<Vec<usize>>,
    /// Those the front end creates (the others are forked by their parent's loader).
    spawned_children: Vec<Vec<usize>>,
    new_ns: bool,
    /// The SysV objects are made again in a new IPC namespace (`sysvipc::needs_own_namespace`).
    new_ipc: bool,
    /// Why the restore goes to a new PID namespace when it was not asked for.
    ns_reason: Option<String>,
    detach: bool,
    new_audit_session: bool,
}

/// Restore the newest complete generation in `opts.dir`, then do `then`. Returns the
/// exit code for ckpt.
pub fn restore(opts: &RestoreOptions, then: Then) -> Result<i32> {
    prepare(opts)?.run(then)
}

/// A generation checked for a restore here and now, with nothing created or changed
/// yet (`ckpt check DIR` stops here).
pub struct Examined {
    pub gen: PathBuf,
    pub manifest: generation::Manifest,
    images: Vec<Image>,
    /// Per image: where the pages an incremental image does not store are.
    chains: Vec<Option<Chain>>,
    /// The restore goes to a new PID namespace.
    pub new_ns: bool,
    /// Why, when it was not asked for.
    pub ns_reason: Option<String>,
    /// The SysV objects are made again in a new IPC namespace.
    pub new_ipc: bool,
}

impl Examined {
    /// Image bytes the restore reads.
    pub fn stored_bytes(&self) -> u64 {
        self.images.iter().map(Image::stored_bytes).sum::<u64>()
            + self.chains.iter().flatten().map(Chain::bytes).sum::<u64>()
    }
}

/// Check the newest complete generation in `opts.dir` for a restore here and now:
/// seals and checksums, every file and library it depends on, the kernel (vdso) and
/// CPU features, PIDs, credentials, SysV objects. Creates and changes nothing.
pub fn examine(opts: &RestoreOptions) -> Result<Examined> {
    ckpt_tracer::fd::tcp_repair::set_restore_established(opts.tcp_established);
    let gen = generation::resolve(opts.dir)?;
    let manifest = generation::read_manifest(&gen)?;
    let Some(root) = manifest.processes.first() else {
        bail!("{} holds no process", gen.display());
    };
    if root.pid != manifest.root_pid {
        bail!(
            "{} is damaged (the first process is not the root)",
            gen.display()
        );
    }
    log::info!(
        "restoring generation {} ({} processes, root {}, written by ckpt {} on {})",
        gen.display(),
        manifest.processes.len(),
        manifest.root_pid,
        manifest.tool_version,
        manifest.kernel
    );
    let images = generation::open_images(&gen, &manifest)?;
    // An incremental generation: the older images the rest of its pages are in.
    let chains = images
        .iter()
        .map(|i| Chain::of(&gen, i))
        .collect::<Result<Vec<_>>>()?;
    let total = images.iter().map(Image::stored_bytes).sum::<u64>()
        + chains.iter().flatten().map(Chain::bytes).sum::<u64>();
    let bar = progress::bar(total, "verifying");
    for (image, chain) in images.iter().zip(&chains) {
        image.verify_pages(|n| bar.inc(n))?;
        if let Some(c) = chain {
            c.verify(image, |n| bar.inc(n))?;
        }
    }
    bar.finish_and_clear();
    for image in &images {
        checks::files_unchanged(&image.state)?;
        checks::machine_compatible(&image.state)?;
    }
    if opts.pidns == PidNs::Auto {
        for (image, m) in images.iter().zip(&manifest.processes) {
            if let Some(cmd) =
                checks::original_still_running(&image.state, &m.cmdline, manifest.created_unix_ns)
            {
                bail!(
                    "process {} ({cmd}) of this checkpoint still runs; stop it before restoring, or restore a second copy beside it with --pidns always",
                    m.pid
                );
            }
        }
    }
    let pids_here = (|| -> Result<()> {
        for image in &images {
            checks::pids_free(&image.state)?;
        }
        checks::zombie_pids_free(&manifest.zombies)?;
        if !job::may_choose_pids() {
            bail!(
                "restoring the original PIDs here needs CAP_CHECKPOINT_RESTORE (run as root, or let ckpt restore in a new PID namespace with --pidns auto)"
            );
        }
        Ok(())
    })();
    let mut ns_reason = None;
    let new_ns = match (opts.pidns, pids_here) {
        (PidNs::Never, Err(e)) => return Err(e.context("--pidns never")),
        (PidNs::Never, Ok(())) | (PidNs::Auto, Ok(())) => false,
        (PidNs::Auto, Err(e)) => {
            ns_reason = Some(format!("{e:#}"));
            true
        }
        (PidNs::Always, _) => true,
    };
    // In a new PID namespace, an ordinary user's restore runs in a new user namespace
    // too, where only that user's ids are mapped.
    let unprivileged_userns = new_ns && job::needs_user_ns();
    for image in &images {
        let s = &image.state;
        ckpt_tracer::attr::creds::check_restorable(s.pid, &s.attrs, unprivileged_userns)
            .map_err(anyhow::Error::msg)?;
    }
    // SysV objects: found where they still are, or made again with their ids (by an
    // ordinary user whose objects are all gone: in an IPC namespace of the restore's
    // own, once it exists).
    let states: Vec<&ckpt_format::state::ProcessState> = images.iter().map(|i| &i.state).collect();
    let new_ipc = unprivileged_userns && ckpt_tracer::attr::sysvipc::needs_own_namespace(&states);
    if !new_ipc {
        ckpt_tracer::attr::sysvipc::check_restorable(&states).map_err(anyhow::Error::msg)?;
    }
    if new_ns {
        if let Some(p) = images.iter().find(|i| i.state.pid == 1) {
            bail!(
                "process {} had PID 1; restoring it in a new PID namespace is not supported",
                p.state.pid
            );
        }
    }
    Ok(Examined {
        gen,
        manifest,
        images,
        chains,
        new_ns,
        ns_reason,
        new_ipc,
    })
}

/// Check the newest complete generation in `opts.dir` and prepare its restore, up to
/// the creation of the first process.
pub fn prepare(opts: &RestoreOptions) -> Result<Prepared> {
    let Examined {
        gen,
        manifest,
        images,
        chains,
        new_ns,
        ns_reason,
        new_ipc,
    } = examine(opts)?;
    let root = &manifest.processes[0];
    for image in &images {
        checks::recreate_volatile_files(&image.state)?;
    }
    if !new_ipc {
        let states: Vec<&ckpt_format::state::ProcessState> =
            images.iter().map(|i| &i.state).collect();
        ckpt_tracer::attr::sysvipc::recreate(&states).map_err(anyhow::Error::msg)?;
    }

    guard::step("checked");
    raise_nofile();
    let in_tree: std::collections::HashSet<i32> =
        manifest.processes.iter().map(|p| p.pid).collect();
    // Descriptors for the loaders live above every target descriptor of every process.
    let base: RawFd = images
        .iter()
        .flat_map(|i| i.state.fds.iter().map(|f| f.fd))
        .max()
        .unwrap_or(2)
        .max(2)
        + 1;
    let loader_fd = sys::above(memfd("ckpt-loader", LOADER)?, base)?;
    let mut shared = fds::Shared::default();
    let mut prepared: Vec<PreparedProcess> = Vec::new();
    for ((image, m), chain) in images.iter().zip(&manifest.processes).zip(&chains) {
        prepared.push(prepare_process(
            (image, chain.as_ref()),
            m,
            root,
            &in_tree,
            base,
            &mut shared,
            loader_fd.as_raw_fd(),
        )?);
    }
    shared.finish()?;
    for (image, p) in images.iter().zip(&mut prepared) {
        if let Some((t, fg)) = shared.ctty(image.state.pid, base)? {
            p.setup.ctty = Some((t.as_raw_fd(), fg));
            p._keep.push(t);
        }
    }
    drop(shared);

    // Parent links: children are created by their restored parent, in PID order.
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); manifest.processes.len()];
    for (i, m) in manifest.processes.iter().enumerate().skip(1) {
        let Some(parent) = manifest.processes.iter().position(|p| p.pid == m.ppid) else {
            bail!(
                "{} is damaged (process {} has no parent in it)",
                gen.display(),
                m.pid
            );
        };
        children[parent].push(i);
    }
    for c in &mut children {
        c.sort_by_key(|&i| manifest.processes[i].pid);
    }
    // Children that share memory copy-on-write with their parent are forked by its
    // loader (forked.rs); their plans are written first, their parents' name them.
    let forked_by = forked::choose(&images, &manifest, &children, &prepared)?;
    let mut extras: Vec<plan::Extra> = Vec::new();
    for (i, parent) in forked_by.iter().enumerate() {
        extras.push(match parent {
            Some(p) => {
                forked::own_map_fds(&images[i].state, &mut prepared[i], base)?;
                forked::child_extra(&images[i].state, &images[*p].state, &prepared[i])?
            }
            None => plan::Extra::default(),
        });
    }
    for i in 0..prepared.len() {
        if let Some(p) = forked_by[i] {
            log::debug!(
                "process {} is forked by the loader of {} (memory shared copy-on-write)",
                images[i].state.pid,
                images[p].state.pid
            );
            let plan_fd = write_plan(&images[i].state, &mut prepared[i], &extras[i], base)?;
            let c = &images[i].state;
            let fds = forked::fds_for_parent(c, &prepared[i]);
            extras[p].forks.push(ckpt_plan::PlanFork {
                pid: c.pid as u64,
                plan_fd: plan_fd as i64,
                flags: forked::clone_flags(c),
            });
            if !ckpt_tracer::attr::shares::saved(c).files {
                extras[p].close.extend(fds.iter().copied());
            }
            prepared[p].setup.loader_fds.extend(fds);
        }
    }
    for i in 0..prepared.len() {
        if forked_by[i].is_none() {
            write_plan(&images[i].state, &mut prepared[i], &extras[i], base)?;
        }
    }
    // The front end creates the others (spawn.rs); `children` itself stays the tree.
    let spawned_children: Vec<Vec<usize>> = children
        .iter()
        .map(|c| {
            c.iter()
                .copied()
                .filter(|&i| forked_by[i].is_none())
                .collect()
        })
        .collect();
    Ok(Prepared {
        gen,
        manifest,
        images,
        prepared,
        loader_fd,
        children,
        spawned_children,
        new_ns,
        new_ipc,
        ns_reason,
        detach: opts.detach,
        new_audit_session: opts.new_audit_session,
    })
}

impl Prepared {
    /// The generation directory being restored.
    pub fn generation(&self) -> &Path {
        &self.gen
    }

    /// Its sealed manifest (the coordinator the job ran under, among others).
    pub fn manifest(&self) -> &generation::Manifest {
        &self.manifest
    }

    /// Create the tree, let it run, then do `then`. Returns the exit code for ckpt.
    pub fn run(self, then: Then) -> Result<i32> {
        let Prepared {
            gen: _,
            manifest,
            images,
            mut prepared,
            loader_fd,
            children,
            spawned_children,
            new_ns,
            new_ipc,
            ns_reason,
            detach,
            new_audit_session,
        } = self;
        let hand_over = match then {
            Then::Wait => None,
            Then::HandOver(f) => Some(f),
        };
        let root_pid = manifest.root_pid;
        let manifest_len = manifest.processes.len();
        let tree = Tree {
            images: &images,
            manifest: &manifest,
            children,
            spawned_children,
            detach: detach || hand_over.is_some(),
            handed_over: hand_over.is_some(),
            drop_caps: new_ns && job::needs_user_ns(),
            new_audit_session,
        };
        if tree.drop_caps {
            for p in &mut prepared {
                p.setup.ambient_checkpoint_cap = true;
            }
        }
        let go = move |report_ok: &dyn Fn()| -> Result<i32> {
            if new_ipc {
                let states: Vec<&ckpt_format::state::ProcessState> =
                    tree.images.iter().map(|i| &i.state).collect();
                ckpt_tracer::attr::sysvipc::recreate(&states).map_err(anyhow::Error::msg)?;
            }
            let code = run_tree(tree, prepared, loader_fd, report_ok)?;
            match hand_over {
                Some(f) => f(root_pid),
                None => Ok(code),
            }
        };
        if !new_ns {
            let n = manifest_len;
            return go(&|| {
                crate::logging::notice(&format!(
                    "restored {n} process{}, root PID {root_pid}, with the original PIDs",
                    if n == 1 { "" } else { "es" }
                ))
            });
        }
        let why = ns_reason.unwrap_or_else(|| "--pidns always".into());
        let ipc = if new_ipc {
            " and a new IPC namespace (its SysV objects were gone, and only there can an ordinary user make them again with their ids)"
        } else {
            ""
        };
        job::run_in_new_pidns_then(detach, new_ipc, go, move |init| {
            crate::logging::notice(&format!(
                "restored in a new PID namespace{ipc} ({why}); outside it the processes are {}",
                outer_pids(init)
            ));
        })
    }
}

/// The restored tree, as `run_tree` needs it.
struct Tree<'a> {
    images: &'a [Image],
    manifest: &'a generation::Manifest,
    /// Indices of each process's children.
    children: Vec<Vec<usize>>,
    /// Those the front end creates.
    spawned_children: Vec<Vec<usize>>,
    detach: bool,
    /// The processes run in a user namespace ckpt made: the capability the loader
    /// needed is taken away from them before they resume.
    drop_caps: bool,
    /// `--new-audit-session`.
    new_audit_session: bool,
    /// The caller takes the job over once it runs (`Then::HandOver`).
    handed_over: bool,
}

/// Create every process, finish each from the outside, resume them all, and (unless
/// detached) wait for the root. `report_ok` is called once everything runs.
fn run_tree(
    tree: Tree,
    prepared: Vec<PreparedProcess>,
    loader_fd: OwnedFd,
    report_ok: &dyn Fn(),
) -> Result<i32> {
    let manifest = tree.manifest;
    let setups: Vec<&spawn::ChildSetup> = prepared.iter().map(|p| &p.setup).collect();
    // Orphans of a failed restore come back to us to be reaped.
    // SAFETY: prctl on ourselves.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let all_pids: Vec<i32> = manifest
        .processes
        .iter()
        .map(|p| p.pid)
        .chain(manifest.zombies.iter().map(|z| z.pid))
        .collect();
    let root_pid = spawn::spawn_tree(&setups, &tree.spawned_children, &manifest.zombies)?;
    guard::step("spawned");
    drop(setups);
    drop(loader_fd);
    let mut status = Vec::new();
    for p in prepared {
        status.push((p.status_r, p.status_fd_child, p.exe_fd_child));
        drop(p.setup);
        drop(p._keep);
    }

    let mut finished = Vec::new();
    let mut result = Ok(());
    for (n, (image, (status_r, status_fd, exe_fd))) in tree.images.iter().zip(&status).enumerate() {
        let pid = image.state.pid;
        result = match read_ready(status_r) {
            Some(r) if r.error == 0 => {
                guard::step(&format!("ready#{}", n + 1));
                finish::finish(
                    &image.state,
                    &r,
                    *status_fd,
                    *exe_fd,
                    tree.drop_caps,
                    tree.new_audit_session,
                )
                .map(|t| {
                    guard::step(&format!("finished#{}", n + 1));
                    finished.push(t)
                })
            }
            Some(r) => Err(ready_error(pid, &r)),
            None => Err(anyhow::anyhow!(
                "restore of process {pid} failed: its loader died before it was ready"
            )),
        };
        if result.is_err() {
            break;
        }
    }
    if result.is_ok() {
        let root = tree.images.first().map(|i| i.state.pid).unwrap_or(0);
        result = checks::groups_as_saved(manifest, root);
        if result.is_ok() {
            let states: Vec<&ckpt_format::state::ProcessState> =
                tree.images.iter().map(|i| &i.state).collect();
            result = finish::stop_stopped(&states, &tree.children, &mut finished);
        }
    }
    // In a new PID namespace the init is the restorer: the namespace dies with it.
    // Elsewhere a guard kills everything unless the last process was let go.
    let mut guard = None;
    if result.is_ok() && std::process::id() != 1 {
        let pids: Vec<i32> = tree.images.iter().map(|i| i.state.pid).collect();
        result = guard::Guard::arm(&pids).map(|g| guard = Some(g));
    }
    // The job's terminal settings on the restorer's terminal (a shell or an editor had
    // it in raw mode), until the job exits.
    let mut terminal = None;
    if result.is_ok() {
        let fds = tree.images.iter().flat_map(|i| i.state.fds.iter());
        match ckpt_tracer::fd::tty::RestorerTerminal::apply(fds) {
            Ok(t) => terminal = t,
            Err(e) => eprintln!("ckpt: warning: the terminal keeps its settings: {e}"),
        }
    }
    let put_back = |t: Option<ckpt_tracer::fd::tty::RestorerTerminal>| {
        if let Some(Err(e)) = t.map(|t| t.put_back()) {
            eprintln!("ckpt: warning: putting the terminal's settings back: {e}");
        }
    };
    if result.is_ok() {
        for (n, t) in finished.iter().enumerate() {
            result = finish::resume(t);
            if result.is_err() {
                break;
            }
            guard::step(&format!("resumed#{}", n + 1));
        }
    }
    if let Err(e) = result {
        drop(guard);
        kill_all(&all_pids);
        ckpt_tracer::attr::sysvipc::restore_failed();
        ckpt_tracer::netlock::restore_failed();
        put_back(terminal);
        return Err(e);
    }
    if let Some(g) = guard {
        g.commit();
    }
    // The connections saved with --tcp-established are rebuilt and their processes
    // run: their packets may pass again.
    ckpt_tracer::netlock::release_restored();
    guard::step("committed");
    report_ok();
    // Detached: done; but an init of a namespace stays as its reaper, unless the caller
    // takes the job over.
    if tree.detach && (std::process::id() != 1 || tree.handed_over) {
        return Ok(0);
    }
    let code = wait_root(root_pid);
    put_back(terminal);
    code
}

/// "OUTER (PID INNER), ..." for every process below `init` (seen from here, outside the
/// namespace it is the init of): what a user outside must use to signal them.
fn outer_pids(init: i32) -> String {
    let mut out = Vec::new();
    for p in ckpt_tracer::tree::descendants(init).into_iter().skip(1) {
        let status = std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
        let inner = status
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .and_then(|v| v.split_whitespace().nth(1).map(str::to_string))
            .unwrap_or_else(|| "?".into());
        out.push((p, format!("{p} (PID {inner} inside)")));
    }
    out.sort();
    out.into_iter()
        .map(|(_, s)| s)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Wait for the root; as init of a namespace, reap every orphan meanwhile.
fn wait_root(root: i32) -> Result<i32> {
    if std::process::id() != 1 {
        return wait_exit(root);
    }
    loop {
        let mut st = 0;
        // SAFETY: reap any child.
        let r = unsafe { libc::waitpid(-1, &mut st, libc::__WALL) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e).context("waiting for the restored processes");
        }
        if r == root {
            return Ok(status_code(st));
        }
    }
}

/// Whether `pid` descends from this process (so is one we created).
fn is_descendant(pid: i32) -> bool {
    let me = std::process::id() as i32;
    let mut p = pid;
    for _ in 0..4096 {
        let Ok(s) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            return false;
        };
        let rest = &s[s.rfind(')').map(|i| i + 2).unwrap_or(0)..];
        let ppid: i32 = rest
            .split(' ')
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if ppid == me {
            return true;
        }
        if ppid <= 1 {
            return false;
        }
        p = ppid;
    }
    false
}

/// Kill every process a failed restore created and reap them (we are their subreaper).
fn kill_all(pids: &[i32]) {
    for &pid in pids {
        if is_descendant(pid) {
            // SAFETY: kill(2) of a process we created.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    loop {
        let mut st = 0;
        // SAFETY: reap any child; ECHILD ends the loop.
        if unsafe { libc::waitpid(-1, &mut st, libc::__WALL) } < 0 {
            break;
        }
    }
}
