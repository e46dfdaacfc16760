//! The agent: `ckpt run` (launch a job and stay its parent) and a restored job's
//! restorer. It attaches no ptrace while the job runs; it registers with the
//! coordinator (starting a local one in the background when none answers, like
//! dmtcp_launch), checkpoints the job's whole tree when told (freeze, then commit or
//! abort), forwards SIGINT/SIGTERM/SIGHUP sent to it, reconnects when the
//! coordinator goes away, and exits with the job's status.

use crate::dump::{DumpOptions, FrozenDump};
use crate::protocol::{self, Conn, Msg};
use anyhow::{Context, Result};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Clone)]
pub struct AgentOptions {
    pub host: String,
    pub port: u16,
    pub ckpt_dir: PathBuf,
    pub interval: u64,
    pub keep: usize,
    pub token: Option<String>,
    /// Start a coordinator in the background when none answers on a local address.
    pub start_coordinator: bool,
    /// The job's id (see `protocol::new_job_id`), kept across restarts.
    pub job_id: String,
    /// `ckpt run --tcp-established` / `--tcp-close`: how its checkpoints save TCP
    /// connections to peers outside the job, unless the coordinator says.
    pub tcp: Option<protocol::TcpMode>,
}

/// What `ckpt restore` (and the restart script, which passes its arguments on) may
/// change about the coordinator a restored job registers with, as dmtcp_restart's
/// `-h HOST -p PORT`, `-i` and `--ckptdir` do.
#[derive(Clone, Debug, Default)]
pub struct RestartOverrides {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub interval: Option<u64>,
    pub ckpt_dir: Option<PathBuf>,
}

impl RestartOverrides {
    pub fn is_empty(&self) -> bool {
        self.host.is_none()
            && self.port.is_none()
            && self.interval.is_none()
            && self.ckpt_dir.is_none()
    }
}

impl AgentOptions {
    /// The agent of a job restored from generation `gen` of a coordinated checkpoint
    /// (`coord` is the coordinator its manifest names): it registers again, with the
    /// same job id, and can be checkpointed again. `over` wins over the environment,
    /// which wins over the manifest.
    pub fn for_restart(
        coord: crate::generation::CoordRef,
        gen: &Path,
        over: &RestartOverrides,
    ) -> Result<AgentOptions> {
        let (host, port) = protocol::coordinator_for_restart(coord.host, coord.port)?;
        let ckpt_dir = match &over.ckpt_dir {
            Some(d) => std::path::absolute(d)?,
            // <ckpt-dir>/<job dir>/<generation>
            None => gen
                .parent()
                .and_then(Path::parent)
                .map(Path::to_path_buf)
                .unwrap_or_default(),
        };
        Ok(AgentOptions {
            host: over.host.clone().unwrap_or(host),
            port: over.port.unwrap_or(port),
            ckpt_dir,
            interval: over.interval.unwrap_or(coord.interval),
            keep: coord.keep,
            job_id: coord.job_id,
            token: protocol::read_token(None)?,
            start_coordinator: true,
            tcp: None,
        })
    }
}

fn hello(opts: &AgentOptions, job: i32, command: &[String]) -> Msg {
    // Right after the spawn the job may not have exec'd yet: its /proc cmdline is
    // empty then, and the command it was given is what to show.
    let cmdline = ckpt_tracer::proc::cmdline(job)
        .ok()
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| command.to_vec());
    Msg::Hello {
        protocol: protocol::PROTOCOL_VERSION,
        host: protocol::hostname(),
        agent_pid: std::process::id(),
        job_pid: job,
        job_id: opts.job_id.clone(),
        cmdline,
        token: opts.token.clone(),
    }
}

/// Start `ckpt coordinator --daemon --exit-on-last` for this job.
fn start_coordinator(opts: &AgentOptions) -> Result<()> {
    let exe = std::env::current_exe()?;
    let status = std::process::Command::new(exe)
        .args(["coordinator", "--daemon", "--exit-on-last", "--port"])
        .arg(opts.port.to_string())
        .arg("--ckpt-dir")
        .arg(&opts.ckpt_dir)
        .arg("-i")
        .arg(opts.interval.to_string())
        .arg("--keep")
        .arg(opts.keep.to_string())
        .arg("--log-file")
        .arg(opts.ckpt_dir.join("ckpt_coordinator.log"))
        .stdin(std::process::Stdio::null())
        .status()
        .context("starting a coordinator")?;
    anyhow::ensure!(status.success(), "the background coordinator did not start");
    Ok(())
}

/// Connect to the coordinator, starting a local one if allowed and none answers.
/// Fails, before the job starts, when what answers at the address is not a
/// coordinator, or a coordinator that refuses us (token, version): the job would run
/// unprotected while the user believes it checkpointed.
pub fn connect(opts: &AgentOptions) -> Result<Option<Conn>> {
    let probe = protocol::probe(
        &opts.host,
        opts.port,
        opts.token.clone(),
        protocol::handshake_timeout()?,
    );
    match probe {
        protocol::Probe::Coordinator(_) => {
            if let Ok(c) = Conn::connect(&opts.host, opts.port) {
                return Ok(Some(c));
            }
        }
        protocol::Probe::Nothing(e)
            if !(opts.start_coordinator && protocol::is_local(&opts.host)) =>
        {
            eprintln!(
                "ckpt: warning: no coordinator at {}:{} ({e}); will keep trying",
                opts.host, opts.port
            );
            return Ok(None);
        }
        protocol::Probe::Nothing(_) => {}
        other => {
            return Err(other
                .error(&opts.host, opts.port)
                .expect("not a coordinator"))
        }
    }
    if let Err(e) = start_coordinator(opts) {
        eprintln!("ckpt: warning: {e:#}");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(c) = Conn::connect(&opts.host, opts.port) {
            crate::logging::notice(&format!(
                "started a coordinator at {}:{} (checkpoints in {}{}, its log {}); `ckpt command --coord-port {} c` checkpoints",
                opts.host,
                opts.port,
                opts.ckpt_dir.display(),
                if opts.interval > 0 {
                    format!(", every {} s", opts.interval)
                } else {
                    String::new()
                },
                opts.ckpt_dir.join("ckpt_coordinator.log").display(),
                opts.port
            ));
            return Ok(Some(c));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "ckpt: warning: no coordinator at {}:{}; will keep trying",
        opts.host, opts.port
    );
    Ok(None)
}

fn pidfd_open(pid: i32) -> Result<OwnedFd> {
    ckpt_tracer::procinfo::pidfd_open(pid).context("pidfd_open")
}

/// Launch `command` in a PID namespace of its own (and a user namespace when not
/// root), whose init is the agent: its restores never collide with host PIDs, and it
/// is checkpointed from inside, with the PIDs it sees.
pub fn run_in_pidns(opts: &AgentOptions, command: &[String]) -> Result<i32> {
    crate::coordinator::ensure_dir(&opts.ckpt_dir)?;
    check_program(&command[0])?;
    // A coordinator started for the job must live outside the job's namespace.
    drop(connect(opts)?);
    let inner = AgentOptions {
        start_coordinator: false,
        ..opts.clone()
    };
    crate::job::run_in_new_pidns(false, move |report_ok| {
        report_ok();
        run(&inner, command)
    })
}

/// Launch `command` and supervise it. Returns its exit code.
/// Fails, as starting it would, when `program` cannot be executed: checked before a
/// coordinator is started for it, so that a job that cannot start leaves nothing behind.
fn check_program(program: &str) -> Result<()> {
    use nix::unistd::{access, AccessFlags};
    let runnable = |p: &Path| p.is_file() && access(p, AccessFlags::X_OK).is_ok();
    let found = if program.contains('/') {
        let p = Path::new(program);
        if p.is_file() && !runnable(p) {
            anyhow::bail!("starting {program}: Permission denied (not executable)");
        }
        runnable(p)
    } else {
        std::env::var_os("PATH")
            .map(|path| std::env::split_paths(&path).any(|d| runnable(&d.join(program))))
            .unwrap_or(false)
    };
    if !found {
        anyhow::bail!("starting {program}: No such file or directory");
    }
    Ok(())
}

pub fn run(opts: &AgentOptions, command: &[String]) -> Result<i32> {
    crate::coordinator::ensure_dir(&opts.ckpt_dir)?;
    check_program(&command[0])?;
    let conn = connect(opts)?;
    let child = std::process::Command::new(&command[0])
        .args(&command[1..])
        .spawn()
        .with_context(|| format!("starting {}", command[0]))?;
    let job = child.id() as i32;
    // The child is reaped by supervise (waitpid), not by std.
    std::mem::forget(child);
    supervise(opts, job, conn, command)
}

/// Be the agent of the running job `job` (our child) until it ends.
/// `command` is what the job was started as (shown until /proc has its command line).
pub fn supervise(
    opts: &AgentOptions,
    job: i32,
    mut conn: Option<Conn>,
    command: &[String],
) -> Result<i32> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let pidfd = pidfd_open(job)?;
    let signals = crate::job::Signals::catch()?;
    if let Some(c) = conn.as_mut() {
        if c.send(&hello(opts, job, command)).is_err() {
            conn = None;
        }
    }
    let mut frozen: Option<(u64, FrozenDump)> = None;
    // Which pages the job wrote since its last checkpoint (src/incremental.rs).
    let trackers = crate::incremental::SharedTrackers::default();
    let mut last_try = Instant::now();
    loop {
        let conn_fd = conn.as_ref().map(|c| c.stream().as_raw_fd());
        let mut fds = vec![
            PollFd::new(pidfd.as_fd(), PollFlags::POLLIN),
            PollFd::new(signals.as_fd(), PollFlags::POLLIN),
        ];
        // SAFETY: the stream outlives this poll call.
        let borrowed = conn_fd.map(|fd| unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) });
        if let Some(b) = &borrowed {
            fds.push(PollFd::new(b.as_fd(), PollFlags::POLLIN));
        }
        // Messages that came in one read wait in the connection's buffer, where poll
        // does not see them: handle them without waiting.
        let buffered = conn.as_ref().is_some_and(Conn::has_buffered);
        let timeout = if buffered {
            PollTimeout::ZERO
        } else if conn.is_none() || frozen.is_some() || std::process::id() == 1 {
            PollTimeout::from(1000u16)
        } else {
            PollTimeout::NONE
        };
        match poll(&mut fds, timeout) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e).context("poll"),
        }
        let ready = |i: usize| {
            fds.get(i)
                .and_then(|f| f.revents())
                .is_some_and(|r| !r.is_empty())
        };
        let (job_done, sig_ready, conn_ready) = (ready(0), ready(1), ready(2) || buffered);
        drop(fds);
        // As init of a PID namespace, reap the orphans it inherits (never while the
        // job is frozen: its ptrace stops are ours to collect then).
        if std::process::id() == 1 && frozen.is_none() {
            loop {
                let mut st = 0;
                // SAFETY: reap any exited child without blocking.
                let r = unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG) };
                if r <= 0 {
                    break;
                }
                if r == job {
                    let code = crate::job::status_code(st);
                    if let Some(c) = conn.as_mut() {
                        let _ = c.send(&Msg::Exit { code });
                    }
                    return Ok(code);
                }
            }
        }
        if job_done {
            drop(frozen.take());
            let mut st = 0;
            // SAFETY: reap our child.
            unsafe { libc::waitpid(job, &mut st, 0) };
            let code = crate::job::status_code(st);
            if let Some(c) = conn.as_mut() {
                let _ = c.send(&Msg::Exit { code });
            }
            return Ok(code);
        }
        if sig_ready {
            signals.forward_to(job);
        }
        if conn.is_none() {
            if last_try.elapsed() >= Duration::from_secs(1) {
                last_try = Instant::now();
                if let Ok(mut c) = Conn::connect(&opts.host, opts.port) {
                    if c.send(&hello(opts, job, command)).is_ok() {
                        conn = Some(c);
                    }
                }
            }
            continue;
        }
        if !conn_ready {
            continue;
        }
        let msg = conn.as_mut().unwrap().recv();
        let msg = match msg {
            Ok(Some(m)) => m,
            _ => {
                // The coordinator is gone: never leave the job frozen.
                drop(frozen.take());
                conn = None;
                continue;
            }
        };
        let reply = match msg {
            Msg::Freeze {
                gen,
                dir,
                keep,
                tcp,
                kill,
            } => {
                drop(frozen.take());
                let tcp = tcp.or(opts.tcp);
                ckpt_tracer::fd::tcp_repair::set_mode(tcp.map_or(
                    ckpt_tracer::fd::tcp_repair::Mode::Refuse,
                    protocol::TcpMode::mode,
                ));
                let r = crate::coordinator::ensure_dir(&dir).and_then(|_| {
                    FrozenDump::freeze(&DumpOptions {
                        pid: job,
                        dir: &dir,
                        kill,
                        keep,
                        coordinator: Some(crate::generation::CoordRef {
                            host: opts.host.clone(),
                            port: opts.port,
                            interval: opts.interval,
                            keep: opts.keep,
                            job_id: opts.job_id.clone(),
                        }),
                        full: false,
                        trackers: Some(trackers.clone()),
                    })
                });
                match r {
                    Ok(d) => {
                        frozen = Some((gen, d));
                        Some(Msg::Frozen { gen })
                    }
                    Err(e) => Some(Msg::Failed {
                        gen,
                        error: format!("{e:#}"),
                    }),
                }
            }
            Msg::Commit { gen } => match frozen.take() {
                Some((g, d)) if g == gen => Some(match d.complete() {
                    Ok(rep) => Msg::Done {
                        gen,
                        path: rep.generation,
                    },
                    Err(e) => Msg::Failed {
                        gen,
                        error: format!("{e:#}"),
                    },
                }),
                _ => Some(Msg::Failed {
                    gen,
                    error: "nothing frozen for this checkpoint".into(),
                }),
            },
            Msg::Abort { .. } => {
                drop(frozen.take());
                None
            }
            Msg::Kill => {
                drop(frozen.take());
                ckpt_tracer::fd::before_kill(&ckpt_tracer::tree::descendants(job));
                ckpt_tracer::tree::kill_descendants(job);
                None
            }
            _ => None,
        };
        if let Some(r) = reply {
            if conn.as_mut().unwrap().send(&r).is_err() {
                drop(frozen.take());
                conn = None;
            }
        }
    }
}
