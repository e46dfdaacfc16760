//! ckpt: transparent checkpoint/restart of Linux x86-64 processes, from the outside.

mod agent;
mod bench;
mod check;
mod command;
mod coordinator;
mod dump;
mod generation;
mod image;
mod incremental;
mod info;
mod job;
mod logging;
mod progress;
mod protocol;
mod restore;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "ckpt",
    version,
    about = "Checkpoint and restore running Linux processes from the outside"
)]
struct Cli {
    /// Say more on stderr: -v what ckpt does, -vv its phases and details, -vvv all.
    #[arg(short = 'v', long = "verbose", action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Append a diagnostic log (debug level; trace with -vvv) to FILE. For the
    /// coordinator, its own log goes there too.
    #[arg(long, global = true, value_name = "FILE")]
    log_file: Option<PathBuf>,
    /// Do not say what `run` and `restore` started (the coordinator, the restored
    /// processes); warnings and errors are still shown.
    #[arg(short = 'q', long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Checkpoint a running process (it keeps running unless --kill).
    Dump {
        /// The process to checkpoint.
        pid: i32,
        /// Checkpoint directory (a new generation is written inside it).
        #[arg(long, short = 'd', env = "CKPT_DIR", default_value = ".")]
        dir: PathBuf,
        /// Kill the process once the image is safely on disk.
        #[arg(long)]
        kill: bool,
        /// How many generations to keep in the directory.
        #[arg(long, default_value_t = 2)]
        keep: usize,
        /// The most content stored for one memfd or deleted file (bytes, or with a K,
        /// M or G suffix); a larger one is refused, naming its process, descriptor and
        /// size.
        #[arg(long, value_parser = parse_size, default_value = "256M")]
        max_file_size: u64,
        /// Save TCP connections to peers outside the checkpoint the TCP_REPAIR way, so
        /// that they go on after the restore (root or CAP_NET_ADMIN, and nft for the
        /// network lock that holds them while the process is down).
        #[arg(long, conflicts_with = "tcp_close")]
        tcp_established: bool,
        /// Save TCP connections to peers outside the checkpoint as closed: after the
        /// restore they read as reset by the peer (ECONNRESET, then end of file).
        #[arg(long)]
        tcp_close: bool,
        /// Store every page. Without it, a dump into a directory that keeps 2 or more
        /// generations stores only the pages that differ from its newest one (an
        /// incremental generation; dropping that one later merges its pages forward).
        #[arg(long)]
        full: bool,
    },
    /// Restore the newest complete checkpoint in DIR.
    #[command(disable_help_flag = true)]
    Restore {
        /// A checkpoint directory, or one generation in it.
        #[arg(env = "CKPT_DIR", default_value = ".")]
        dir: PathBuf,
        /// The coordinator a job checkpointed under one registers with after the
        /// restore (DMTCP's -h; default: CKPT_COORD_HOST, else the one it ran under).
        #[arg(short = 'h', long)]
        coord_host: Option<String>,
        /// Its port (DMTCP's -p; default: CKPT_COORD_PORT, else the one it ran under).
        #[arg(short = 'p', long)]
        coord_port: Option<u16>,
        /// The checkpoint interval of a coordinator started for the restored job.
        #[arg(short = 'i', long)]
        interval: Option<u64>,
        /// Where a coordinator started for the restored job writes its checkpoints.
        #[arg(long, visible_alias = "ckptdir")]
        ckpt_dir: Option<PathBuf>,
        /// Print help (-h is the coordinator host, as for dmtcp_restart).
        #[arg(long, action = clap::ArgAction::Help)]
        help: Option<bool>,
        /// Return once the process runs instead of waiting for it.
        #[arg(long)]
        detach: bool,
        /// Where to restore: in the current PID namespace (`never` a new one), always in
        /// a new one (a new user namespace too when not root), or `auto`: a new one only
        /// when the original PIDs cannot be had here.
        #[arg(long, value_enum, default_value_t = restore::PidNs::Auto)]
        pidns: restore::PidNs,
        /// Accept an audit login uid and session id other than the saved ones (a restore
        /// from another login session): the login uid is set back where the kernel
        /// allows, the session id is a new one; each with a warning.
        #[arg(long)]
        new_audit_session: bool,
        /// Rebuild the TCP connections to peers outside the checkpoint that were saved
        /// with `ckpt dump --tcp-established` (root or CAP_NET_ADMIN).
        #[arg(long)]
        tcp_established: bool,
    },
    /// Launch a program under ckpt control (registered with a coordinator, which is
    /// started in the background if none answers); exits with the program's status.
    Run {
        #[command(flatten)]
        coord: CoordArgs,
        /// Join the coordinator that runs at the address; fail at once, running nothing,
        /// if none answers (DMTCP's --join-coordinator).
        #[arg(short = 'j', long = "join-coordinator", visible_alias = "join")]
        join: bool,
        /// Start a new coordinator for this job; fail, running nothing, if one already
        /// answers at the address (DMTCP's --new-coordinator).
        #[arg(long, conflicts_with = "join")]
        new_coordinator: bool,
        /// Checkpoint directory (CKPT_DIR; default: the current directory).
        #[arg(long, visible_alias = "ckptdir")]
        ckpt_dir: Option<PathBuf>,
        /// Checkpoint every N seconds when this starts the coordinator (CKPT_INTERVAL,
        /// DMTCP_CHECKPOINT_INTERVAL; 0 = off).
        #[arg(short = 'i', long)]
        interval: Option<u64>,
        /// How many generations to keep.
        #[arg(long, default_value_t = 2)]
        keep: usize,
        /// Start the job in a PID namespace of its own (a user namespace too when not
        /// root), so that its restores never collide with host PIDs.
        #[arg(long)]
        pidns: bool,
        /// Save TCP connections to peers outside the checkpoint the TCP_REPAIR way, so
        /// that they go on after the restore (root or CAP_NET_ADMIN, and nft for the
        /// network lock that holds them while the process is down).
        #[arg(long, conflicts_with = "tcp_close")]
        tcp_established: bool,
        /// Save TCP connections to peers outside the checkpoint as closed: after the
        /// restore they read as reset by the peer (ECONNRESET, then end of file).
        #[arg(long)]
        tcp_close: bool,
        /// When the checkpoint directory holds a checkpoint of a job, restore it (as
        /// `ckpt restore` would, registering with this coordinator) instead of running
        /// the program; run the program when there is none. One batch script can so
        /// start fresh the first time and go on from the last checkpoint after every
        /// requeue. Two or more jobs with checkpoints there are an error.
        #[arg(long)]
        restart_if_checkpoint: bool,
        /// The program and its arguments (an option of ckpt's before it is a usage
        /// error, never run as the program; `--` ends ckpt's options).
        #[arg(required = true, trailing_var_arg = true)]
        command: Vec<String>,
    },
    /// The coordinator: keys h c l s k q and `i N` on standard input.
    Coordinator {
        /// Port to listen on (CKPT_COORD_PORT, DMTCP_COORD_PORT; default 7779).
        #[arg(long, short = 'p')]
        port: Option<u16>,
        /// Checkpoint every N seconds (0 = off).
        #[arg(short = 'i', long)]
        interval: Option<u64>,
        /// Run in the background, without reading keys.
        #[arg(long)]
        daemon: bool,
        /// Exit when the last job has gone.
        #[arg(long)]
        exit_on_last: bool,
        /// Where checkpoints go (one directory per job inside; CKPT_DIR).
        #[arg(long, visible_alias = "ckptdir")]
        ckpt_dir: Option<PathBuf>,
        /// Address to listen on; anything but loopback needs --token-file.
        #[arg(long, default_value = "127.0.0.1")]
        bind: String,
        /// How many generations each job keeps.
        #[arg(long, default_value_t = 2)]
        keep: usize,
        /// Shared secret (a 0600 file) that agents and `ckpt command` must present.
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Write the port it listens on to FILE (with --port 0: the one the kernel
        /// chose), as dmtcp_coordinator --port-file does.
        #[arg(long)]
        port_file: Option<PathBuf>,
        /// Checkpoints save TCP connections to peers outside the checkpoint the TCP_REPAIR way, so
        /// that they go on after the restore (root or CAP_NET_ADMIN, and nft for the
        /// network lock that holds them while the process is down).
        #[arg(long, conflicts_with = "tcp_close")]
        tcp_established: bool,
        /// Checkpoints save TCP connections to peers outside the checkpoint as closed: after the
        /// restore they read as reset by the peer (ECONNRESET, then end of file).
        #[arg(long)]
        tcp_close: bool,
    },
    /// Send one command to a coordinator: checkpoint (c, also bc), checkpoint then
    /// kill (kc), status (s), list (l), kill (k), quit (q), interval N (i N).
    Command {
        #[command(flatten)]
        coord: CoordArgs,
        #[arg(required = true, num_args = 1..=2)]
        words: Vec<String>,
    },
    /// Which kernel features and privileges ckpt relies on are here, and what follows
    /// from each missing one (like `criu check`); with DIR, whether that checkpoint
    /// can be restored here and now, restoring nothing.
    Check {
        /// A checkpoint directory, or one generation in it.
        dir: Option<PathBuf>,
    },
    /// Describe a checkpoint.
    Info {
        dir: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Write man pages for ckpt and every subcommand into DIR.
    #[command(hide = true)]
    Man { dir: PathBuf },
    /// Measure dump and restore against the raw limits of this machine (make bench).
    #[command(hide = true)]
    Bench {
        /// Touched memory of the workload, in MiB.
        #[arg(long, default_value_t = 1024)]
        mib: u64,
        /// Where to write images (default: a temporary directory under target/).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Repetitions (results are interleaved medians).
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
}

/// Man pages from the same definitions as the command line (ckpt.1, ckpt-dump.1, ...).
fn man_pages(dir: &std::path::Path) -> anyhow::Result<()> {
    use clap::CommandFactory;
    std::fs::create_dir_all(dir)?;
    let cmd = Cli::command();
    clap_mangen::generate_to(cmd, dir)?;
    Ok(())
}

#[derive(clap::Args)]
struct CoordArgs {
    /// Coordinator host (CKPT_COORD_HOST, DMTCP_COORD_HOST; default localhost).
    #[arg(long)]
    coord_host: Option<String>,
    /// Coordinator port (CKPT_COORD_PORT, DMTCP_COORD_PORT; default 7779).
    #[arg(long)]
    coord_port: Option<u16>,
    /// Shared secret file of a coordinator that listens beyond loopback
    /// (CKPT_TOKEN_FILE).
    #[arg(long)]
    token_file: Option<PathBuf>,
}

/// `ckpt restore`: check and prepare the restore, then let the tree run. A job that
/// ran under a coordinator registers again and can be checkpointed again: unless
/// detached, the restorer (or, in a new PID namespace, its init) becomes its agent.
fn restore_job(
    overrides: &agent::RestartOverrides,
    opts: &restore::RestoreOptions,
) -> anyhow::Result<i32> {
    let prepared = restore::prepare(opts)?;
    let coordinator = prepared.manifest().coordinator.clone();
    // Options that cannot take effect are errors, before anything runs.
    if !overrides.is_empty() {
        if coordinator.is_none() {
            anyhow::bail!(
                "{} was not checkpointed under a coordinator: --coord-host, --coord-port, -i and --ckpt-dir do not apply",
                prepared.generation().display()
            );
        }
        if opts.detach {
            anyhow::bail!(
                "--detach restores the job without an agent, so it registers with no coordinator: --coord-host, --coord-port, -i and --ckpt-dir do not apply"
            );
        }
    }
    if coordinator.is_some() && opts.detach {
        eprintln!(
            "ckpt: warning: --detach: the restored job registers with no coordinator and cannot be checkpointed by one again (`ckpt dump PID` still works)"
        );
    }
    let then = match coordinator.filter(|_| !opts.detach) {
        Some(c) => {
            let a = agent::AgentOptions::for_restart(c, prepared.generation(), overrides)?;
            // Make sure a coordinator runs outside any namespace the job gets.
            drop(agent::connect(&a)?);
            restore::Then::HandOver(Box::new(move |root| {
                // The job runs now: a coordinator gone meanwhile is only a warning.
                let conn = agent::connect(&a).unwrap_or_else(|e| {
                    eprintln!("ckpt: warning: {e:#}; will keep trying");
                    None
                });
                agent::supervise(&a, root, conn, &[])
            }))
        }
        None => restore::Then::Wait,
    };
    prepared.run(then)
}

/// The checkpoint `ckpt run --restart-if-checkpoint` restores from `ckpt_dir`: the
/// newest complete generation of the one job that has any there, None when no job has.
fn checkpoint_to_restart(ckpt_dir: &std::path::Path) -> anyhow::Result<Option<PathBuf>> {
    let found = generation::job_checkpoints(ckpt_dir)?;
    if found.len() > 1 {
        anyhow::bail!(
            "--restart-if-checkpoint: {} jobs have checkpoints in {} ({}); restore one with `ckpt restore DIR`, or give each job a checkpoint directory of its own",
            found.len(),
            ckpt_dir.display(),
            found
                .iter()
                .map(|g| g.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(found.into_iter().next())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() >= 2 && args[1] == "__bench-workload" {
        bench::workload(&args[2..]);
    }
    let cli = Cli::parse();
    if let Err(e) = logging::init(cli.verbose, cli.log_file.as_deref()) {
        eprintln!("ckpt: error: {}", format!("{e:#}").replace('\n', " "));
        std::process::exit(1);
    }
    logging::set_quiet(cli.quiet);
    log::info!(
        "ckpt {} ({}): {}",
        env!("CARGO_PKG_VERSION"),
        image::kernel_release(),
        args.join(" ")
    );
    let log_file = cli.log_file.clone();
    let r = match cli.cmd {
        Cmd::Dump {
            pid,
            dir,
            kill,
            keep,
            max_file_size,
            tcp_established,
            tcp_close,
            full,
        } => {
            dump::stop_on_signals();
            ckpt_tracer::fd::memfd::set_max_stored_file(max_file_size);
            ckpt_tracer::fd::tcp_repair::set_mode(tcp_mode(tcp_established, tcp_close));
            dump::dump(&dump::DumpOptions {
                pid,
                dir: &dir,
                kill,
                keep,
                coordinator: None,
                full,
                trackers: None,
            })
            .map(|rep| {
                let reused = if rep.inherited_bytes > 0 {
                    format!(
                        ", {} MiB unchanged left in the generation before",
                        rep.inherited_bytes >> 20
                    )
                } else {
                    String::new()
                };
                eprintln!(
                    "ckpt: checkpoint of {pid} written to {} ({} MiB{reused}, process stopped {:.1} ms)",
                    rep.generation.display(),
                    rep.image_bytes >> 20,
                    rep.pause.as_secs_f64() * 1e3
                );
                0
            })
        }
        Cmd::Restore {
            dir,
            coord_host,
            coord_port,
            interval,
            ckpt_dir,
            help: _,
            detach,
            pidns,
            new_audit_session,
            tcp_established,
        } => restore_job(
            &agent::RestartOverrides {
                host: coord_host,
                port: coord_port,
                interval,
                ckpt_dir,
            },
            &restore::RestoreOptions {
                dir: &dir,
                detach,
                pidns,
                new_audit_session,
                tcp_established,
            },
        ),
        Cmd::Run {
            coord,
            join,
            new_coordinator,
            ckpt_dir,
            interval,
            keep,
            pidns,
            tcp_established,
            tcp_close,
            restart_if_checkpoint,
            command,
        } => (|| {
            let ckpt_dir_given = ckpt_dir.is_some();
            let token_file = coord.token_file.clone();
            let opts = agent::AgentOptions {
                tcp: protocol::TcpMode::of(tcp_established, tcp_close),
                host: protocol::coord_host(coord.coord_host),
                port: protocol::coord_port(coord.coord_port)?,
                ckpt_dir: std::path::absolute(protocol::ckpt_dir(ckpt_dir))?,
                interval: protocol::interval(interval)?,
                keep,
                token: protocol::read_token(coord.token_file)?,
                start_coordinator: !join,
                job_id: protocol::new_job_id(),
            };
            // -i and --ckpt-dir set up a coordinator ckpt run starts; one that already
            // runs has its own, and the options would not take effect.
            if ckpt_dir_given || interval.is_some() {
                let probe = protocol::probe(
                    &opts.host,
                    opts.port,
                    opts.token.clone(),
                    protocol::handshake_timeout()?,
                );
                if let protocol::Probe::Coordinator(Some(c)) = probe {
                    let canon = |p: &std::path::Path| std::fs::canonicalize(p).unwrap_or(p.into());
                    if ckpt_dir_given && canon(&c.ckpt_dir) != canon(&opts.ckpt_dir) {
                        anyhow::bail!(
                            "the coordinator at {}:{} writes checkpoints to {}, so --ckpt-dir {} cannot take effect: leave it out, start that coordinator with it, or start another with --new-coordinator --coord-port PORT",
                            opts.host,
                            opts.port,
                            c.ckpt_dir.display(),
                            opts.ckpt_dir.display()
                        );
                    }
                    if interval.is_some() && c.interval != opts.interval {
                        anyhow::bail!(
                            "the coordinator at {}:{} checkpoints every {} s (0: never), so -i {} cannot take effect: leave it out, or change its interval with `ckpt command --coord-port {} i {}`",
                            opts.host,
                            opts.port,
                            c.interval,
                            opts.interval,
                            opts.port,
                            opts.interval
                        );
                    }
                }
            }
            if join || new_coordinator {
                let answers = protocol::Conn::connect(&opts.host, opts.port).is_ok();
                if join && !answers {
                    anyhow::bail!(
                        "no coordinator answers at {}:{} (--join-coordinator): start one with `ckpt coordinator --port {}`, or leave --join-coordinator out to have one started",
                        opts.host,
                        opts.port,
                        opts.port
                    );
                }
                if new_coordinator && answers {
                    anyhow::bail!(
                        "a coordinator already answers at {}:{} (--new-coordinator): choose another port with --coord-port, or join it",
                        opts.host,
                        opts.port
                    );
                }
            }
            if restart_if_checkpoint {
                if let Some(gen) = checkpoint_to_restart(&opts.ckpt_dir)? {
                    eprintln!(
                        "ckpt: restoring {} (--restart-if-checkpoint) instead of starting {}",
                        gen.display(),
                        command.join(" ")
                    );
                    if let Some(t) = &token_file {
                        // The restored job's agent reads the token from there.
                        std::env::set_var("CKPT_TOKEN_FILE", t);
                    }
                    return restore_job(
                        &agent::RestartOverrides {
                            host: Some(opts.host.clone()),
                            port: Some(opts.port),
                            interval,
                            ckpt_dir: Some(opts.ckpt_dir.clone()),
                        },
                        &restore::RestoreOptions {
                            dir: &gen,
                            detach: false,
                            pidns: restore::PidNs::Auto,
                            new_audit_session: false,
                            tcp_established,
                        },
                    );
                }
            }
            if pidns {
                agent::run_in_pidns(&opts, &command)
            } else {
                agent::run(&opts, &command)
            }
        })(),
        Cmd::Coordinator {
            port,
            interval,
            daemon,
            exit_on_last,
            ckpt_dir,
            bind,
            keep,
            token_file,
            port_file,
            tcp_established,
            tcp_close,
        } => (|| {
            coordinator::coordinator(coordinator::CoordinatorOptions {
                tcp: protocol::TcpMode::of(tcp_established, tcp_close),
                port_file,
                log_file,
                port: protocol::coord_port(port)?,
                bind,
                interval: protocol::interval(interval)?,
                daemon,
                exit_on_last,
                ckpt_dir: std::path::absolute(protocol::ckpt_dir(ckpt_dir))?,
                keep,
                token: protocol::read_token(token_file)?,
            })
        })(),
        Cmd::Command { coord, words } => (|| {
            command::command(
                &protocol::coord_host(coord.coord_host),
                protocol::coord_port(coord.coord_port)?,
                protocol::read_token(coord.token_file)?,
                &words,
            )
        })(),
        Cmd::Check { dir } => match dir {
            Some(dir) => check::check_dir(&dir),
            None => check::check_host(),
        },
        Cmd::Info { dir, json } => {
            // `ckpt info | head`: end quietly when the reader goes away, like other tools.
            // SAFETY: restoring the default disposition of SIGPIPE.
            unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
            info::info(&dir, json).map(|_| 0)
        }
        Cmd::Bench { mib, dir, runs } => bench::bench(mib, dir, runs).map(|_| 0),
        Cmd::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "ckpt", &mut std::io::stdout());
            Ok(0)
        }
        Cmd::Man { dir } => man_pages(&dir).map(|_| 0),
    };
    match r {
        Ok(code) => {
            log::info!("exit status {code}");
            std::process::exit(code)
        }
        Err(e) => {
            let msg = format!("{e:#}").replace('\n', " ");
            log::error!("{msg}");
            eprintln!("ckpt: error: {msg}");
            std::process::exit(1);
        }
    }
}

/// What `--tcp-established` / `--tcp-close` ask of a dump.
fn tcp_mode(established: bool, close: bool) -> ckpt_tracer::fd::tcp_repair::Mode {
    protocol::TcpMode::of(established, close).map_or(
        ckpt_tracer::fd::tcp_repair::Mode::Refuse,
        protocol::TcpMode::mode,
    )
}

/// A size in bytes, with an optional K, M or G suffix (powers of 1024; `MiB` too).
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim().trim_end_matches("iB").trim_end_matches('B');
    let (num, shift) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 10),
        Some('M' | 'm') => (&t[..t.len() - 1], 20),
        Some('G' | 'g') => (&t[..t.len() - 1], 30),
        _ => (t, 0),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| format!("{s:?} is not a size (bytes, or a number with K, M or G)"))
}
