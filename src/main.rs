//! ckpt: transparent checkpoint/restart of Linux x86-64 processes, from the outside.

mod bench;
mod dump;
mod generation;
mod image;
mod info;
mod progress;
mod restore;
mod run;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "ckpt",
    version,
    about = "Checkpoint and restore running Linux processes from the outside"
)]
struct Cli {
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
    },
    /// Restore the newest complete checkpoint in DIR.
    Restore {
        /// A checkpoint directory, or one generation in it.
        #[arg(env = "CKPT_DIR", default_value = ".")]
        dir: PathBuf,
        /// Return once the process runs instead of waiting for it.
        #[arg(long)]
        detach: bool,
        /// Where to restore: in the current PID namespace (`never` a new one), always in
        /// a new one (a new user namespace too when not root), or `auto`: a new one only
        /// when the original PIDs cannot be had here.
        #[arg(long, value_enum, default_value_t = restore::PidNs::Auto)]
        pidns: restore::PidNs,
    },
    /// Launch a program under ckpt and wait for it; exits with its status.
    Run {
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Describe a checkpoint.
    Info {
        dir: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        shell: clap_complete::Shell,
    },
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

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 3 && args[1] == "__bench-workload" {
        bench::workload(args[2].parse().unwrap_or(1024));
    }
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Dump {
            pid,
            dir,
            kill,
            keep,
        } => dump::dump(&dump::DumpOptions {
            pid,
            dir: &dir,
            kill,
            keep,
        })
        .map(|rep| {
            eprintln!(
                "ckpt: checkpoint of {pid} written to {} ({} MiB, process stopped {:.1} ms)",
                rep.generation.display(),
                rep.image_bytes >> 20,
                rep.pause.as_secs_f64() * 1e3
            );
            0
        }),
        Cmd::Restore { dir, detach, pidns } => restore::restore(&restore::RestoreOptions {
            dir: &dir,
            detach,
            pidns,
        }),
        Cmd::Run { command } => run::run(&command[0], &command[1..]),
        Cmd::Info { dir, json } => info::info(&dir, json).map(|_| 0),
        Cmd::Bench { mib, dir, runs } => bench::bench(mib, dir, runs).map(|_| 0),
        Cmd::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "ckpt", &mut std::io::stdout());
            Ok(0)
        }
        Cmd::Man { dir } => man_pages(&dir).map(|_| 0),
    };
    match r {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("ckpt: error: {msg}");
            std::process::exit(1);
        }
    }
}
