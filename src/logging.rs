//! Diagnostics: `-v` (repeatable) and `--log-file FILE`, through the `log` facade, so
//! that a failed dump or restore in the field can be diagnosed from its log.
//!
//! Without either, nothing extra is printed: warnings and errors keep their one-line
//! `ckpt: warning:` / `ckpt: error:` form on stderr. `-v` prints info records on
//! stderr, `-vv` debug, `-vvv` trace; `--log-file` appends debug records (trace with
//! `-vvv`) to FILE, each with the time since start, the pid, the level and the module.
//! `CKPT_TIMING` stays its own switch for the phase timings on stderr; the same phases
//! are debug records here.

use anyhow::{Context, Result};
use log::{LevelFilter, Log, Metadata, Record};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

struct Logger {
    start: Instant,
    stderr: LevelFilter,
    file: Option<(LevelFilter, Mutex<File>)>,
}

impl Logger {
    fn line(&self, r: &Record) -> String {
        format!(
            "[{:>10.3} ms] ckpt[{}] {:<5} {}: {}\n",
            self.start.elapsed().as_secs_f64() * 1e3,
            std::process::id(),
            r.level(),
            r.target(),
            r.args()
        )
    }
}

impl Log for Logger {
    fn enabled(&self, m: &Metadata) -> bool {
        let file = self.file.as_ref().map_or(LevelFilter::Off, |f| f.0);
        m.level() <= self.stderr.max(file)
    }

    fn log(&self, r: &Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let line = self.line(r);
        if r.level() <= self.stderr {
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
        if let Some((level, f)) = &self.file {
            if r.level() <= *level {
                if let Ok(mut f) = f.lock() {
                    let _ = f.write_all(line.as_bytes());
                }
            }
        }
    }

    fn flush(&self) {}
}

fn level(verbose: u8) -> LevelFilter {
    match verbose {
        0 => LevelFilter::Off,
        1 => LevelFilter::Info,
        2 => LevelFilter::Debug,
        _ => LevelFilter::Trace,
    }
}

/// Set up diagnostics for this process.
pub fn init(verbose: u8, log_file: Option<&Path>) -> Result<()> {
    let file = match log_file {
        Some(p) => {
            let f = OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o600)
                .open(p)
                .with_context(|| format!("opening the log file {}", p.display()))?;
            let lvl = if verbose >= 3 {
                LevelFilter::Trace
            } else {
                LevelFilter::Debug
            };
            Some((lvl, Mutex::new(f)))
        }
        None => None,
    };
    let logger = Logger {
        start: Instant::now(),
        stderr: level(verbose),
        file,
    };
    let max = logger
        .stderr
        .max(logger.file.as_ref().map_or(LevelFilter::Off, |f| f.0));
    log::set_boxed_logger(Box::new(logger)).context("setting up the log")?;
    log::set_max_level(max);
    Ok(())
}

static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `--quiet`: no [`notice`] lines.
pub fn set_quiet(q: bool) {
    QUIET.store(q, std::sync::atomic::Ordering::Relaxed);
}

/// Tell the user, on stderr, what a command started (a coordinator, a restored job),
/// unless `--quiet`; logged too.
pub fn notice(msg: &str) {
    log::info!("{msg}");
    if !QUIET.load(std::sync::atomic::Ordering::Relaxed) {
        eprintln!("ckpt: {msg}");
    }
}
