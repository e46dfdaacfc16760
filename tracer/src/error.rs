//! Typed errors of the tracer: the CLI turns them into one-line messages.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum TraceError {
    #[error("process {0} does not exist")]
    NoSuchProcess(i32),
    #[error("not allowed to trace process {pid}: {why}")]
    PermissionDenied { pid: i32, why: String },
    /// `who` is "process PID", or "thread TID of process PID".
    #[error("{who} is already traced by process {tracer} ({comm}); ckpt cannot attach while another tracer is attached (detach it or let it end first)")]
    AlreadyTraced {
        pid: i32,
        who: String,
        tracer: i32,
        comm: String,
    },
    /// Init, a kernel thread: not something a checkpoint can hold.
    #[error("cannot checkpoint process {pid} ({comm}): it {what}")]
    Untraceable {
        pid: i32,
        comm: String,
        what: String,
    },
    #[error("process {pid} fd {fd}: {kind} is not supported yet")]
    UnsupportedFd { pid: i32, fd: i32, kind: String },
    #[error("process {pid}: {what} is not supported yet")]
    Unsupported { pid: i32, what: String },
    /// A descriptor the dump could save only if told how (`--tcp-established`, ...),
    /// or whose saving failed: `what` says which and why.
    #[error("process {pid} fd {fd}: {what}")]
    FdRefused { pid: i32, fd: i32, what: String },
    /// A memfd or deleted file whose content is more than the dump may store.
    #[error("process {pid} {at}: {what} holds {size} bytes to store, more than the {limit} ckpt dump stores per file (raise it with `ckpt dump --max-file-size`)")]
    TooLarge {
        pid: i32,
        /// "fd N", or "mapping at ADDR".
        at: String,
        what: String,
        size: u64,
        limit: String,
    },
    #[error("process {pid} exited while it was being checkpointed")]
    Exited { pid: i32 },
    /// A field of a /proc file that the checkpoint depends on is missing or does not
    /// parse: the dump refuses rather than save something wrong. `file` is the full
    /// path (/proc/PID/fdinfo/FD names the descriptor).
    #[error("process {pid}: {file}: field {field} {why}")]
    Proc {
        pid: i32,
        file: String,
        field: String,
        why: String,
    },
    /// The cause is part of the message and not a `source` of its own, so that a
    /// chain printed with `{:#}` names it once.
    #[error("process {pid}: {what}: {cause}")]
    Io {
        pid: i32,
        what: String,
        cause: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, TraceError>;

impl TraceError {
    pub fn io(pid: i32, what: impl Into<String>, source: std::io::Error) -> Self {
        TraceError::Io {
            pid,
            what: what.into(),
            cause: source,
        }
    }
}
