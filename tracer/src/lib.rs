//! ckpt-tracer: attach to a live Linux x86-64 process from the outside (ptrace +
//! /proc), freeze it, and read everything a restore needs.
//!
//! - [`freeze`]: seize and stop every thread, and let them go unharmed.
//! - [`inject`]: run system calls inside a frozen thread.
//! - [`proc`]: every /proc text read and parsed (procfs-core where it has the field).
//! - [`maps`] / [`files`] / [`procinfo`]: what /proc shows.
//! - [`attr`]: one module per attribute group of a process (scheduling, credentials,
//!   ...): dump, restore, description; [`audit`]: the table of every attribute checked.
//! - [`fd`]: one module per descriptor kind (dump, restore, description), one dispatch.
//! - [`read`]: puts it together into a [`state::ProcessState`].
//! - [`state`]: the serde types of a checkpointed process.

pub mod aio;
pub mod attr;
pub mod audit;
pub mod dirty;
pub mod error;
pub mod fd;
pub mod files;
pub mod freeze;
pub mod identity;
pub mod inject;
pub mod maps;
pub mod netlock;
pub mod prctl_nr;
pub mod proc;
pub mod procinfo;
pub mod ptrace;
pub mod read;
pub mod snapshot;
pub mod state;
pub mod timers;
pub mod tree;

pub use error::{Result, TraceError};
pub use freeze::Frozen;
