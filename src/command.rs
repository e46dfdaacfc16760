//! `ckpt command VERB`: send one command to a coordinator and print its answer.

use crate::protocol::{Conn, Msg};
use anyhow::{bail, Context, Result};

pub fn command(host: &str, port: u16, token: Option<String>, words: &[String]) -> Result<i32> {
    let verb = words.first().context("no command given")?.clone();
    let arg = words.get(1).cloned();
    // First make sure a coordinator answers (a silent server would keep us waiting for
    // ever: a checkpoint's answer comes only when it is complete).
    let probe = crate::protocol::probe(
        host,
        port,
        token.clone(),
        crate::protocol::handshake_timeout()?,
    );
    if let Some(e) = probe.error(host, port) {
        return Err(e);
    }
    let mut conn = Conn::connect(host, port).with_context(|| {
        format!("cannot reach the coordinator at {host}:{port} (is one running? see --coord-host/--coord-port)")
    })?;
    conn.send(&Msg::Command {
        protocol: crate::protocol::PROTOCOL_VERSION,
        verb,
        arg,
        token,
    })?;
    match conn.recv()? {
        Some(Msg::Reply { ok: true, text }) => {
            if !text.is_empty() {
                println!("{text}");
            }
            Ok(0)
        }
        Some(Msg::Reply { ok: false, text }) => bail!("{}", text.replace('\n', " ")),
        _ => bail!("the coordinator closed the connection without an answer"),
    }
}
