//! Reporting to the front end: exactly one `ckpt_plan::Ready` record on the status pipe.
//!
//! Failures anywhere (any thread, any stage, a panic) end in [`fail`], which writes the
//! record once and ends the whole process with `exit_group(127)`. Success is reported by
//! the main thread with [`report_done`] once every thread has parked.

use core::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use crate::syscall::{self, Errno};
use ckpt_plan::zerocopy::IntoBytes;
use ckpt_plan::{self as plan, Ready};

/// Exit status of the loader after a failure.
pub const EXIT_FAILURE: i32 = 127;

/// Why the loader gave up: errno, stage (`ckpt_plan::STAGE_*`), address of the failing object.
#[derive(Clone, Copy, Debug)]
pub struct Fail {
    pub errno: Errno,
    pub stage: u64,
    pub addr: u64,
    pub msg: &'static str,
}

impl Fail {
    pub const fn new(stage: u64, errno: Errno, addr: u64, msg: &'static str) -> Fail {
        Fail {
            errno,
            stage,
            addr,
            msg,
        }
    }
}

pub type Result<T> = core::result::Result<T, Fail>;

/// Attaches a stage, an address and a message to a raw errno result.
pub trait Context<T> {
    fn ctx(self, stage: u64, addr: u64, msg: &'static str) -> Result<T>;
}

impl<T> Context<T> for core::result::Result<T, Errno> {
    #[inline]
    fn ctx(self, stage: u64, addr: u64, msg: &'static str) -> Result<T> {
        self.map_err(|e| Fail::new(stage, e, addr, msg))
    }
}

/// The status pipe, known once the plan header has been read (-1 before).
static STATUS_FD: AtomicI64 = AtomicI64::new(-1);
/// The stage the main thread is in, for panics.
static CURRENT_STAGE: AtomicU64 = AtomicU64::new(plan::STAGE_PLAN);
/// Set by the first thread that reports; the record is written exactly once.
static REPORTED: AtomicBool = AtomicBool::new(false);

pub fn set_status_fd(fd: i64) {
    STATUS_FD.store(fd, Ordering::SeqCst);
}

pub fn set_stage(stage: u64) {
    CURRENT_STAGE.store(stage, Ordering::SeqCst);
}

pub fn current_stage() -> u64 {
    CURRENT_STAGE.load(Ordering::SeqCst)
}

fn ready(error: Errno, stage: u64, addr: u64, msg: &[u8]) -> Ready {
    Ready::new(
        error,
        stage,
        addr,
        (plan::LOADER_ZONE_START, plan::LOADER_ZONE_END),
        msg,
    )
}

/// Writes the record (128 bytes, below PIPE_BUF, so one atomic write on a pipe).
fn write_ready(r: &Ready) {
    let fd = STATUS_FD.load(Ordering::SeqCst);
    if fd < 0 {
        // Nothing to tell it through: the exit status 127 must do.
        return;
    }
    let bytes = r.as_bytes();
    let mut done = 0;
    while done < bytes.len() {
        match syscall::write(fd as i32, &bytes[done..]) {
            Ok(0) => return,
            Ok(n) => done += n,
            Err(4) => continue, // EINTR
            Err(_) => return,
        }
    }
}

/// Claims the right to report. Only the first caller gets it; everybody else parks and is
/// taken down by the winner's exit_group.
fn claim() -> bool {
    !REPORTED.swap(true, Ordering::SeqCst)
}

/// Reports a failure and ends the process with status 127.
pub fn fail_raw(errno: Errno, stage: u64, addr: u64, msg: &[u8]) -> ! {
    if !claim() {
        park();
    }
    let errno = if errno == 0 {
        syscall::ENOTRECOVERABLE
    } else {
        errno
    };
    write_ready(&ready(errno, stage, addr, msg));
    syscall::exit_group(EXIT_FAILURE)
}

pub fn fail(f: Fail) -> ! {
    fail_raw(f.errno, f.stage, f.addr, f.msg.as_bytes())
}

/// Reports success (the main thread, once every thread has parked).
pub fn report_done() {
    if !claim() {
        park();
    }
    write_ready(&ready(0, plan::STAGE_DONE, 0, b""));
}

/// Parks the calling thread forever with every signal blocked. The front end finds it
/// here (inside `pause()`), seizes it and replaces its registers.
pub fn park() -> ! {
    loop {
        syscall::pause();
    }
}
