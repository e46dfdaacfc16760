//! prctl(2) options as the u64 arguments of a system call injected into a traced
//! process (`crate::inject`): one list for the audit and every attribute group, taken
//! from the libc crate rather than written out again.

pub const PR_CAPBSET_DROP: u64 = libc::PR_CAPBSET_DROP as u64;
pub const PR_CAP_AMBIENT: u64 = libc::PR_CAP_AMBIENT as u64;
pub const PR_CAP_AMBIENT_CLEAR_ALL: u64 = libc::PR_CAP_AMBIENT_CLEAR_ALL as u64;
pub const PR_CAP_AMBIENT_RAISE: u64 = libc::PR_CAP_AMBIENT_RAISE as u64;
pub const PR_GET_CHILD_SUBREAPER: u64 = libc::PR_GET_CHILD_SUBREAPER as u64;
pub const PR_GET_DUMPABLE: u64 = libc::PR_GET_DUMPABLE as u64;
/// Not in the libc crate for glibc targets (linux/prctl.h: 58).
pub const PR_GET_IO_FLUSHER: u64 = 58;
pub const PR_GET_KEEPCAPS: u64 = libc::PR_GET_KEEPCAPS as u64;
pub const PR_GET_MDWE: u64 = libc::PR_GET_MDWE as u64;
pub const PR_GET_MEMORY_MERGE: u64 = libc::PR_GET_MEMORY_MERGE as u64;
pub const PR_GET_NO_NEW_PRIVS: u64 = libc::PR_GET_NO_NEW_PRIVS as u64;
pub const PR_GET_PDEATHSIG: u64 = libc::PR_GET_PDEATHSIG as u64;
pub const PR_GET_SECUREBITS: u64 = libc::PR_GET_SECUREBITS as u64;
pub const PR_GET_SPECULATION_CTRL: u64 = libc::PR_GET_SPECULATION_CTRL as u64;
pub const PR_GET_THP_DISABLE: u64 = libc::PR_GET_THP_DISABLE as u64;
pub const PR_GET_TIMERSLACK: u64 = libc::PR_GET_TIMERSLACK as u64;
pub const PR_GET_TSC: u64 = libc::PR_GET_TSC as u64;
pub const PR_MCE_KILL_GET: u64 = libc::PR_MCE_KILL_GET as u64;
pub const PR_SET_CHILD_SUBREAPER: u64 = libc::PR_SET_CHILD_SUBREAPER as u64;
pub const PR_SET_DUMPABLE: u64 = libc::PR_SET_DUMPABLE as u64;
pub const PR_SET_KEEPCAPS: u64 = libc::PR_SET_KEEPCAPS as u64;
pub const PR_SET_MDWE: u64 = libc::PR_SET_MDWE as u64;
pub const PR_SET_MEMORY_MERGE: u64 = libc::PR_SET_MEMORY_MERGE as u64;
pub const PR_SET_NO_NEW_PRIVS: u64 = libc::PR_SET_NO_NEW_PRIVS as u64;
pub const PR_SET_PDEATHSIG: u64 = libc::PR_SET_PDEATHSIG as u64;
pub const PR_SET_SECUREBITS: u64 = libc::PR_SET_SECUREBITS as u64;
pub const PR_SET_THP_DISABLE: u64 = libc::PR_SET_THP_DISABLE as u64;
pub const PR_SET_TIMERSLACK: u64 = libc::PR_SET_TIMERSLACK as u64;
