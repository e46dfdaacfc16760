//! `ckpt run -- PROGRAM ARGS...`: launch a program under ckpt and wait for it. (The
//! coordinator link and checkpoints on demand come with the job workflow, issue #4.)

use anyhow::{Context, Result};
use std::os::unix::process::ExitStatusExt;
use std::process::Command;

pub fn run(program: &str, args: &[String]) -> Result<i32> {
    let status = Command::new(program)
        .args(args)
        .status()
        .with_context(|| format!("starting {program}"))?;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}
