//! The coordinator protocol: one JSON object per line over TCP, between the
//! coordinator, its agents (`ckpt run`, a restored job) and `ckpt command`. Also the
//! shared defaults: address, port, interval and token from options or environment
//! (CKPT_* first, then DMTCP_* for users coming from DMTCP).

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub const DEFAULT_PORT: u16 = 7779;

/// The protocol version every first message (hello, command) carries. A peer of
/// another version is refused with a message naming both; ckpt 0.1 before versions
/// sent none, which reads as 1. See docs/FORMAT.md.
pub const PROTOCOL_VERSION: u32 = 2;

fn unversioned() -> u32 {
    1
}

/// Why a first message of protocol `theirs` is refused, if it is.
pub fn protocol_mismatch(theirs: u32) -> Option<String> {
    (theirs != PROTOCOL_VERSION).then(|| {
        format!(
            "refused: protocol version {theirs}, this coordinator speaks {PROTOCOL_VERSION}; use the same ckpt release for the coordinator, the jobs and ckpt command"
        )
    })
}

/// How long a new connection may take to send its first line (CKPT_HANDSHAKE_TIMEOUT).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest line accepted on a connection (a message is a few hundred bytes).
const MAX_LINE: usize = 1 << 20;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Msg {
    /// Agent → coordinator, first message.
    Hello {
        #[serde(default = "unversioned")]
        protocol: u32,
        host: String,
        agent_pid: u32,
        job_pid: i32,
        /// Names the job's checkpoint directory; the same again after every restart.
        job_id: String,
        cmdline: Vec<String>,
        token: Option<String>,
    },
    /// Coordinator → agent: freeze the job and read it into generation `gen` in `dir`.
    /// With `kill` (the `kc` verb) the job stays frozen until its generation is
    /// published and is killed then: it does nothing after its checkpoint that a
    /// restart would do again.
    Freeze {
        gen: u64,
        dir: PathBuf,
        keep: usize,
        /// The coordinator's `--tcp-established` / `--tcp-close` (absent from older
        /// coordinators: the agent's own, if any).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tcp: Option<TcpMode>,
        /// See above (`kc`); absent from older coordinators.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        kill: bool,
    },
    /// Agent → coordinator.
    Frozen { gen: u64 },
    /// Coordinator → agent: every job is frozen, resume and finish writing.
    Commit { gen: u64 },
    /// Coordinator → agent: some job failed, resume and drop the generation.
    Abort { gen: u64 },
    /// Agent → coordinator: the generation of this job is published.
    Done { gen: u64, path: PathBuf },
    /// Agent → coordinator: freezing or writing failed.
    Failed { gen: u64, error: String },
    /// Coordinator → agent: kill the job.
    Kill,
    /// Agent → coordinator: the job ended with this exit code.
    Exit { code: i32 },
    /// `ckpt command` → coordinator.
    Command {
        #[serde(default = "unversioned")]
        protocol: u32,
        verb: String,
        arg: Option<String>,
        token: Option<String>,
    },
    /// Coordinator → `ckpt command`.
    Reply { ok: bool, text: String },
}

/// How checkpoints save TCP connections to peers outside the job.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TcpMode {
    /// `--tcp-established`: the TCP_REPAIR way.
    Established,
    /// `--tcp-close`: as closed (reset on restore).
    Close,
}

impl TcpMode {
    pub fn of(established: bool, close: bool) -> Option<TcpMode> {
        if established {
            Some(TcpMode::Established)
        } else if close {
            Some(TcpMode::Close)
        } else {
            None
        }
    }

    pub fn mode(self) -> ckpt_tracer::fd::tcp_repair::Mode {
        match self {
            TcpMode::Established => ckpt_tracer::fd::tcp_repair::Mode::Established,
            TcpMode::Close => ckpt_tracer::fd::tcp_repair::Mode::Close,
        }
    }
}

/// A connection that exchanges [`Msg`] lines.
pub struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Conn {
    pub fn new(stream: TcpStream) -> Result<Conn> {
        let _ = stream.set_nodelay(true);
        Ok(Conn {
            writer: stream.try_clone()?,
            reader: BufReader::new(stream),
        })
    }

    pub fn connect(host: &str, port: u16) -> std::io::Result<Conn> {
        let s = TcpStream::connect((host, port))?;
        Conn::new(s).map_err(std::io::Error::other)
    }

    pub fn send(&mut self, m: &Msg) -> Result<()> {
        let mut line = serde_json::to_vec(m)?;
        line.push(b'\n');
        self.writer
            .write_all(&line)
            .context("sending to the coordinator")?;
        Ok(())
    }

    /// The next message; None at end of stream.
    pub fn recv(&mut self) -> Result<Option<Msg>> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        Ok(Some(serde_json::from_str(line.trim_end()).with_context(
            || format!("bad message {:?}", line.trim_end()),
        )?))
    }

    /// The first message of a connection, which must be complete within `timeout`: a
    /// client that sends nothing, part of a line, or a byte now and then is cut off
    /// then. None if the connection ends before a byte arrives.
    pub fn recv_within(&mut self, timeout: Duration) -> Result<Option<Msg>> {
        let deadline = Instant::now() + timeout;
        let mut line = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("no complete first line within {} s", timeout.as_secs());
            }
            self.reader.get_ref().set_read_timeout(Some(left))?;
            // One read at a time (read_until would wait on as long as bytes trickle in).
            let chunk = match self.reader.fill_buf() {
                Ok(c) => c,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) =>
                {
                    continue
                }
                Err(e) => return Err(e.into()),
            };
            if chunk.is_empty() {
                break;
            }
            let (n, end) = match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (chunk.len(), false),
            };
            line.extend_from_slice(&chunk[..n]);
            self.reader.consume(n);
            if end {
                break;
            }
            if line.len() > MAX_LINE {
                bail!("a line longer than {MAX_LINE} bytes");
            }
        }
        self.reader.get_ref().set_read_timeout(None)?;
        if line.is_empty() {
            return Ok(None);
        }
        let text = String::from_utf8_lossy(&line);
        Ok(Some(serde_json::from_str(text.trim_end()).with_context(
            || format!("bad message {:?}", text.trim_end()),
        )?))
    }

    /// Whether a message (or part of one) was read from the socket but not returned
    /// yet: polling the socket does not show it.
    pub fn has_buffered(&self) -> bool {
        !self.reader.buffer().is_empty()
    }

    /// Bound every send: a peer that does not read cannot hold the sender.
    pub fn set_write_timeout(&self, t: Option<Duration>) {
        let _ = self.writer.set_write_timeout(t);
    }

    pub fn stream(&self) -> &TcpStream {
        self.reader.get_ref()
    }

    pub fn try_clone_writer(&self) -> std::io::Result<TcpStream> {
        self.writer.try_clone()
    }
}

fn env_first(names: &[&str]) -> Option<String> {
    names
        .iter()
        .find_map(|n| std::env::var(n).ok().filter(|v| !v.is_empty()))
}

/// For a restored job: the coordinator from the environment if one is named there
/// (a restart job on another node or port), else the one recorded at checkpoint time.
pub fn coordinator_for_restart(host: String, port: u16) -> Result<(String, u16)> {
    let host = env_first(&["CKPT_COORD_HOST", "DMTCP_COORD_HOST"]).unwrap_or(host);
    let port = match env_first(&["CKPT_COORD_PORT", "DMTCP_COORD_PORT"]) {
        Some(v) => v
            .parse()
            .with_context(|| format!("bad coordinator port {v:?}"))?,
        None => port,
    };
    Ok((host, port))
}

pub fn coord_host(opt: Option<String>) -> String {
    opt.or_else(|| env_first(&["CKPT_COORD_HOST", "DMTCP_COORD_HOST"]))
        .unwrap_or_else(|| "localhost".into())
}

pub fn coord_port(opt: Option<u16>) -> Result<u16> {
    match opt {
        Some(p) => Ok(p),
        None => match env_first(&["CKPT_COORD_PORT", "DMTCP_COORD_PORT"]) {
            Some(v) => v
                .parse()
                .with_context(|| format!("bad coordinator port {v:?}")),
            None => Ok(DEFAULT_PORT),
        },
    }
}

pub fn interval(opt: Option<u64>) -> Result<u64> {
    match opt {
        Some(i) => Ok(i),
        None => match env_first(&["CKPT_INTERVAL", "DMTCP_CHECKPOINT_INTERVAL"]) {
            Some(v) => v.parse().with_context(|| format!("bad interval {v:?}")),
            None => Ok(0),
        },
    }
}

/// What answers at a coordinator's address ([`probe`]).
#[derive(Debug)]
pub enum Probe {
    /// A ckpt coordinator (that accepted our token), with its settings (None from a
    /// coordinator older than the `ping` verb).
    Coordinator(Option<CoordSettings>),
    /// Nothing listens there (the connection was refused).
    Nothing(std::io::Error),
    /// A coordinator that refused us (token, protocol version): its answer.
    Refused(String),
    /// Something that is not a ckpt coordinator: what it did.
    Other(String),
}

/// A running coordinator's checkpoint directory and interval, as its `ping` tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoordSettings {
    pub ckpt_dir: PathBuf,
    pub interval: u64,
}

impl CoordSettings {
    fn parse(text: &str) -> Option<CoordSettings> {
        let field = |k: &str| text.lines().find_map(|l| l.strip_prefix(k));
        Some(CoordSettings {
            ckpt_dir: PathBuf::from(field("ckpt-dir=")?),
            interval: field("interval=")?.parse().ok()?,
        })
    }
}

/// Ask what answers at `host:port`: a `ping` command, answered within `timeout`.
pub fn probe(host: &str, port: u16, token: Option<String>, timeout: Duration) -> Probe {
    let mut conn = match Conn::connect(host, port) {
        Ok(c) => c,
        Err(e) => return Probe::Nothing(e),
    };
    let sent = conn.send(&Msg::Command {
        protocol: PROTOCOL_VERSION,
        verb: "ping".into(),
        arg: None,
        token,
    });
    if let Err(e) = sent {
        return Probe::Other(format!("it closed the connection ({e:#})"));
    }
    match conn.recv_within(timeout) {
        // An older coordinator answers `unknown command`: still one.
        Ok(Some(Msg::Reply { ok: true, text })) => Probe::Coordinator(CoordSettings::parse(&text)),
        Ok(Some(Msg::Reply { ok: false, text })) if text.starts_with("unknown command") => {
            Probe::Coordinator(None)
        }
        Ok(Some(Msg::Reply { ok: false, text })) => Probe::Refused(text),
        Ok(Some(_)) => Probe::Other("it sent a message a coordinator does not send".into()),
        Ok(None) => Probe::Other("it closed the connection without an answer".into()),
        Err(e) => Probe::Other(format!("no answer to a ping: {e:#}")),
    }
}

impl Probe {
    /// The error for a client that needs a coordinator at `host:port`, if this is not one.
    pub fn error(&self, host: &str, port: u16) -> Option<anyhow::Error> {
        match self {
            Probe::Coordinator(_) => None,
            Probe::Nothing(e) => Some(anyhow::anyhow!(
                "cannot reach the coordinator at {host}:{port} ({e}; is one running? see --coord-host/--coord-port)"
            )),
            Probe::Refused(text) => Some(anyhow::anyhow!(
                "the coordinator at {host}:{port} refused us: {text}"
            )),
            Probe::Other(what) => Some(anyhow::anyhow!(
                "{host}:{port} answers, but not as a ckpt coordinator ({what}); give the port of a coordinator with --coord-port"
            )),
        }
    }
}

/// How long the coordinator waits for the first line of a new connection:
/// CKPT_HANDSHAKE_TIMEOUT seconds (1 to 86400), 10 by default.
pub fn handshake_timeout() -> Result<Duration> {
    match env_first(&["CKPT_HANDSHAKE_TIMEOUT"]) {
        Some(v) => match v.parse::<u64>() {
            Ok(n) if (1..=86400).contains(&n) => Ok(Duration::from_secs(n)),
            _ => bail!("bad CKPT_HANDSHAKE_TIMEOUT {v:?} (whole seconds, 1 to 86400)"),
        },
        None => Ok(DEFAULT_HANDSHAKE_TIMEOUT),
    }
}

pub fn ckpt_dir(opt: Option<PathBuf>) -> PathBuf {
    opt.or_else(|| env_first(&["CKPT_DIR"]).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The shared secret from a 0600 token file (`--token-file` or CKPT_TOKEN_FILE).
pub fn read_token(opt: Option<PathBuf>) -> Result<Option<String>> {
    let Some(path) = opt.or_else(|| env_first(&["CKPT_TOKEN_FILE"]).map(PathBuf::from)) else {
        return Ok(None);
    };
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let unreadable = |e: std::io::Error, md: Option<&std::fs::Metadata>| {
        let why = match (e.kind(), md) {
            (std::io::ErrorKind::PermissionDenied, Some(md)) => format!(
                "permission denied (mode {:04o}, owner {}; the token file must be readable by \
                 the user running ckpt and nobody else: chmod 600)",
                md.mode() & 0o7777,
                user_name(md.uid())
            ),
            (std::io::ErrorKind::PermissionDenied, None) => {
                "permission denied (a directory on the way to it is closed to this user)".into()
            }
            (std::io::ErrorKind::NotFound, _) => "it does not exist".into(),
            _ => e.to_string(),
        };
        anyhow::anyhow!("cannot read token file {}: {why}", path.display())
    };
    let md = std::fs::metadata(&path).map_err(|e| unreadable(e, None))?;
    if md.permissions().mode() & 0o077 != 0 {
        bail!(
            "token file {} must not be readable by others (chmod 600)",
            path.display()
        );
    }
    let t = std::fs::read_to_string(&path)
        .map_err(|e| unreadable(e, Some(&md)))?
        .trim()
        .to_string();
    if t.is_empty() {
        bail!("token file {} is empty", path.display());
    }
    Ok(Some(t))
}

/// The name of a user, or `#UID` when it has none.
pub fn user_name(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(u)) => u.name,
        _ => format!("#{uid}"),
    }
}

pub fn is_local(host: &str) -> bool {
    matches!(host, "localhost" | "127.0.0.1" | "::1" | "")
}

/// A new job's id: host, launching process and launch time (two jobs started with
/// --pidns both have PID 2, so the PID alone does not do).
pub fn new_job_id() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("{}_{}_{secs}", hostname(), std::process::id())
}

pub fn hostname() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The freeze message's new fields are optional both ways: an older coordinator's
    /// message reads with neither, and a message without them is the same line as before.
    #[test]
    fn freeze_fields_are_compatible() {
        let old = r#"{"type":"freeze","gen":3,"dir":"/d","keep":2}"#;
        let m: Msg = serde_json::from_str(old).unwrap();
        assert_eq!(
            m,
            Msg::Freeze {
                gen: 3,
                dir: "/d".into(),
                keep: 2,
                tcp: None,
                kill: false
            }
        );
        assert_eq!(serde_json::to_string(&m).unwrap(), old);
        let new = Msg::Freeze {
            gen: 3,
            dir: "/d".into(),
            keep: 2,
            tcp: Some(TcpMode::Established),
            kill: true,
        };
        let line = serde_json::to_string(&new).unwrap();
        assert!(line.contains(r#""tcp":"established""#) && line.contains(r#""kill":true"#));
        assert_eq!(serde_json::from_str::<Msg>(&line).unwrap(), new);
    }
}
