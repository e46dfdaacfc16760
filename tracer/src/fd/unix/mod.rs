//! AF_UNIX sockets (stream, datagram, seqpacket), with their names, connections, queued
//! data and options. Large enough for two files: [`dump`] reads a socket from the
//! outside (sock_diag and a copy of the descriptor; any other family is refused here),
//! and its pass over the tree decides which peers are in the checkpoint; [`restore`]
//! gives every socket a stand-in while the descriptors of each process are prepared (the
//! kind's part of [`Shared`]), then, in the finish step once every process is prepared,
//! builds the real sockets connected to each other across the tree and puts each in
//! place of its stand-in.

pub mod dump;
pub mod restore;

use super::{Dump, Kind, RestoreResult, Shared, Target};
use crate::error::Result;
use crate::state::{Fd, FdKind};
use std::os::fd::OwnedFd;

pub const KIND: Kind = Kind {
    dump: dump_fd,
    dump_process: None,
    dump_tree: Some(dump::link),
    restore: restore_fd,
    finish: Some(finish),
    late: None,
    describe,
};

/// Every `socket:[INO]` descriptor: an AF_UNIX socket, or refused naming its family.
fn dump_fd(d: &mut Dump) -> Option<Result<FdKind>> {
    let Target::Socket(ino) = d.target else {
        return None;
    };
    Some(dump::socket_fd(d.pid, d.fd, ino))
}

/// A stand-in until every process is prepared.
fn restore_fd(pid: i32, fd: &Fd, shared: &mut Shared) -> Option<RestoreResult<OwnedFd>> {
    matches!(fd.kind, FdKind::UnixSocket { .. })
        .then(|| shared.part::<restore::Sockets>().add(pid, fd))
}

/// Build every socket of the tree and put it in place of its stand-in.
fn finish(shared: &mut Shared) -> RestoreResult<()> {
    shared.part::<restore::Sockets>().finish()
}

fn describe(kind: &FdKind) -> Option<String> {
    let FdKind::UnixSocket {
        ino,
        sock_type,
        name,
        queue,
        ..
    } = kind
    else {
        return None;
    };
    Some(format!(
        "unix socket:[{ino}] {} {}, {} bytes queued",
        match sock_type {
            1 => "stream",
            2 => "dgram",
            5 => "seqpacket",
            _ => "?",
        },
        if name.is_empty() {
            "unnamed".to_string()
        } else {
            String::from_utf8_lossy(name).replace('\0', "@")
        },
        queue.iter().map(Vec::len).sum::<usize>()
    ))
}
