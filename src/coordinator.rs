//! `ckpt coordinator`: what `dmtcp_coordinator` is to DMTCP. Agents (`ckpt run`, a
//! restored job) register over TCP; a checkpoint (key `c`, `ckpt command c`, or every
//! `-i` seconds) is one consistent global snapshot: every job is frozen and read
//! first, then all resume and finish writing; if any job fails, all resume, no
//! generation is published, and the failure is reported with the job that failed
//! (in the log, to `ckpt command c`, and in `ckpt command s`).
//!
//! Every connection is served on its own: a new one gets a thread that checks its
//! user and token and reads its first line (within CKPT_HANDSHAKE_TIMEOUT seconds, 10
//! by default, or it is closed and logged); an agent's messages are then read by that
//! thread, and the main loop only ever sends with a timeout. While a checkpoint runs,
//! `s`, `l`, `h` and `i N` are answered at once; `c`, `k` and `q` wait for its end.

use crate::protocol::{Conn, Msg};
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a send to one client may block the coordinator.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// New connections whose first line is still awaited, at most (each has a thread).
const MAX_HANDSHAKES: usize = 128;

pub struct CoordinatorOptions {
    pub port: u16,
    pub bind: String,
    pub interval: u64,
    pub daemon: bool,
    pub exit_on_last: bool,
    pub ckpt_dir: PathBuf,
    pub keep: usize,
    pub token: Option<String>,
    /// Where a daemon writes its log (default: nowhere).
    pub log_file: Option<PathBuf>,
    /// Where to write the port it listens on (the real one, also with `--port 0`).
    pub port_file: Option<PathBuf>,
    /// `--tcp-established` / `--tcp-close`, passed to every job's dump.
    pub tcp: Option<crate::protocol::TcpMode>,
}

enum Event {
    Joined(u64, TcpStream, Msg),
    FromAgent(u64, Msg),
    Gone(u64),
    Command(Conn, String, Option<String>),
    Key(String),
    StdinClosed,
}

struct Agent {
    writer: Conn,
    host: String,
    job_pid: i32,
    job_id: String,
    cmdline: Vec<String>,
}

struct Coordinator {
    opts: CoordinatorOptions,
    agents: BTreeMap<u64, Agent>,
    events: Receiver<Event>,
    deferred: VecDeque<Event>,
    gen: u64,
    interval: u64,
    next: Option<Instant>,
    last: Option<(u64, Vec<PathBuf>)>,
    seen_agent: bool,
    completed: u64,
    failed: u64,
    last_failure: Option<(u64, String)>,
    /// The checkpoint being taken, and how many jobs it covers.
    running: Option<(u64, usize)>,
}

fn log(msg: &str) {
    println!("[ckpt coordinator] {msg}");
    let _ = std::io::stdout().flush();
}

const HELP: &str = "keys (each followed by Return):
  h    this help
  c    checkpoint every job now (also bc: it always waits until done)
  kc   checkpoint every job, then kill them all (none if the checkpoint fails)
  l    list the jobs
  s    status
  k    kill every job
  q    kill every job and quit
  i N  checkpoint every N seconds (0: off)";

pub fn coordinator(mut opts: CoordinatorOptions) -> Result<i32> {
    let handshake = crate::protocol::handshake_timeout()?;
    let loopback = matches!(opts.bind.as_str(), "127.0.0.1" | "::1" | "localhost");
    if !loopback && opts.token.is_none() {
        bail!(
            "listening on {} needs a shared secret: --token-file FILE (a 0600 file that every agent and ckpt command also uses)",
            opts.bind
        );
    }
    let listener = TcpListener::bind((opts.bind.as_str(), opts.port)).with_context(|| {
        format!(
            "listening on {}:{} (is another coordinator running there?)",
            opts.bind, opts.port
        )
    })?;
    // With --port 0 the kernel chose: that is the port to say and to write down.
    opts.port = listener
        .local_addr()
        .context("the listening address")?
        .port();
    if let Some(f) = &opts.port_file {
        let tmp = f.with_extension("tmp");
        std::fs::write(&tmp, format!("{}\n", opts.port))
            .and_then(|()| std::fs::rename(&tmp, f))
            .with_context(|| format!("writing the port to {}", f.display()))?;
    }
    if opts.daemon {
        daemonize(opts.log_file.as_deref())?;
    }
    let (tx, rx) = channel();
    spawn_acceptor(listener, tx.clone(), opts.token.clone(), handshake);
    if !opts.daemon {
        spawn_stdin(tx);
    } else {
        drop(tx);
    }
    log(&format!(
        "listening on {}:{}, checkpoints in {}, interval {} s; type h for help",
        opts.bind,
        opts.port,
        opts.ckpt_dir.display(),
        opts.interval
    ));
    let interval = opts.interval;
    let mut c = Coordinator {
        opts,
        agents: BTreeMap::new(),
        events: rx,
        deferred: VecDeque::new(),
        gen: 0,
        interval,
        next: None,
        last: None,
        seen_agent: false,
        completed: 0,
        failed: 0,
        last_failure: None,
        running: None,
    };
    c.reset_timer();
    c.run()
}

/// Run in the background: a new session, no terminal, output to `log` (or nowhere);
/// the parent returns at once.
fn daemonize(log: Option<&Path>) -> Result<()> {
    use std::os::fd::IntoRawFd;
    let out = match log {
        Some(p) => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .with_context(|| format!("opening log file {}", p.display()))?,
        None => std::fs::OpenOptions::new().write(true).open("/dev/null")?,
    }
    .into_raw_fd();
    // SAFETY: fork before any thread exists; the parent exits immediately.
    match unsafe { libc::fork() } {
        -1 => bail!("fork: {}", std::io::Error::last_os_error()),
        0 => {}
        _ => std::process::exit(0),
    }
    // SAFETY: plain syscalls in the child.
    unsafe {
        libc::setsid();
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY);
        if null >= 0 {
            libc::dup2(null, 0);
        }
        libc::dup2(out, 1);
        libc::dup2(out, 2);
    }
    Ok(())
}

fn spawn_acceptor(
    listener: TcpListener,
    tx: Sender<Event>,
    token: Option<String>,
    handshake: Duration,
) {
    std::thread::spawn(move || {
        let next_id = Arc::new(AtomicU64::new(1));
        let pending = Arc::new(AtomicUsize::new(0));
        for stream in listener.incoming() {
            let stream = match stream {
                Ok(s) => s,
                Err(_) => {
                    // Out of descriptors, most likely: let some connections end.
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            };
            if pending.load(Ordering::SeqCst) >= MAX_HANDSHAKES {
                log(&format!(
                    "closed a connection from {}: {MAX_HANDSHAKES} other new connections have not sent their first line yet",
                    peer_of(&stream)
                ));
                continue;
            }
            pending.fetch_add(1, Ordering::SeqCst);
            let (tx, token, next_id, pending) =
                (tx.clone(), token.clone(), next_id.clone(), pending.clone());
            std::thread::spawn(move || {
                let agent = serve_connection(stream, &tx, token.as_deref(), handshake, &next_id);
                pending.fetch_sub(1, Ordering::SeqCst);
                // An agent's messages, read by this thread until it goes.
                if let Some((id, mut conn)) = agent {
                    while let Ok(Some(m)) = conn.recv() {
                        if tx.send(Event::FromAgent(id, m)).is_err() {
                            return;
                        }
                    }
                    let _ = tx.send(Event::Gone(id));
                }
            });
        }
    });
}

fn peer_of(stream: &TcpStream) -> String {
    stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "an unknown address".into())
}

/// Check a new connection (user, token) and read its first line; hand a command to
/// the main loop, or register an agent and return its connection to read from.
fn serve_connection(
    stream: TcpStream,
    tx: &Sender<Event>,
    token: Option<&str>,
    handshake: Duration,
    next_id: &AtomicU64,
) -> Option<(u64, Conn)> {
    // A connection from this host must come from our own user (or root): no
    // user may act on another user's jobs through a local coordinator.
    if let (Ok(peer), Ok(local)) = (stream.peer_addr(), stream.local_addr()) {
        if peer.ip().is_loopback() {
            // SAFETY: geteuid(2) takes no argument, touches no memory and cannot fail.
            let me = unsafe { libc::geteuid() };
            match loopback_peer_uid(peer, local) {
                Some(uid) if uid == me || uid == 0 => {}
                other => {
                    log(&format!(
                        "refused a local connection from {peer}: {}",
                        match other {
                            Some(uid) => format!("user {uid} is not the coordinator's user"),
                            None => "its user cannot be determined".into(),
                        }
                    ));
                    if let Ok(mut c) = Conn::new(stream) {
                        c.set_write_timeout(Some(SEND_TIMEOUT));
                        let _ = c.send(&Msg::Reply {
                            ok: false,
                            text: "refused: this coordinator belongs to another user".into(),
                        });
                    }
                    return None;
                }
            }
        }
    }
    let peer = peer_of(&stream);
    let mut conn = Conn::new(stream).ok()?;
    conn.set_write_timeout(Some(SEND_TIMEOUT));
    let first = match conn.recv_within(handshake) {
        Ok(Some(m)) => m,
        Ok(None) => return None,
        Err(e) => {
            log(&format!("closed a connection from {peer}: {e:#}"));
            return None;
        }
    };
    let presented = match &first {
        Msg::Hello { token, .. } | Msg::Command { token, .. } => token.as_deref(),
        _ => None,
    };
    let version = match &first {
        Msg::Hello { protocol, .. } | Msg::Command { protocol, .. } => *protocol,
        _ => crate::protocol::PROTOCOL_VERSION,
    };
    if let Some(why) = crate::protocol::protocol_mismatch(version) {
        log(&format!("{why} (a connection from {peer})"));
        let _ = conn.send(&Msg::Reply {
            ok: false,
            text: why,
        });
        return None;
    }
    if token.is_some() && presented != token {
        log(&format!(
            "refused a connection from {peer}: wrong or missing token"
        ));
        let _ = conn.send(&Msg::Reply {
            ok: false,
            text: "refused: wrong or missing token".into(),
        });
        return None;
    }
    match first {
        Msg::Hello { .. } => {
            let id = next_id.fetch_add(1, Ordering::SeqCst);
            let writer = conn.try_clone_writer().ok()?;
            tx.send(Event::Joined(id, writer, first)).ok()?;
            Some((id, conn))
        }
        Msg::Command { verb, arg, .. } => {
            let _ = tx.send(Event::Command(conn, verb, arg));
            None
        }
        other => {
            log(&format!(
                "closed a connection from {peer}: it began with {other:?}, not hello or command"
            ));
            None
        }
    }
}

/// The owner of the local TCP socket `peer` connected to our `local` address, from
/// /proc/net/tcp or tcp6 (the `uid` column).
fn loopback_peer_uid(peer: std::net::SocketAddr, local: std::net::SocketAddr) -> Option<u32> {
    use std::net::IpAddr;
    fn hex_addr(a: std::net::SocketAddr) -> (String, bool) {
        match a.ip() {
            IpAddr::V4(ip) => (
                format!("{:08X}:{:04X}", u32::from_le_bytes(ip.octets()), a.port()),
                false,
            ),
            IpAddr::V6(ip) => {
                let o = ip.octets();
                let words: String = o
                    .chunks(4)
                    .map(|c| format!("{:08X}", u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                    .collect();
                (format!("{words}:{:04X}", a.port()), true)
            }
        }
    }
    let (want_local, v6) = hex_addr(peer);
    let (want_rem, _) = hex_addr(local);
    let table = std::fs::read_to_string(if v6 {
        "/proc/net/tcp6"
    } else {
        "/proc/net/tcp"
    })
    .ok()?;
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(1) == Some(&want_local.as_str()) && f.get(2) == Some(&want_rem.as_str()))
            .then(|| f.get(7)?.parse().ok())
            .flatten()
    })
}

fn spawn_stdin(tx: Sender<Event>) {
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(Event::Key(line)).is_err() {
                return;
            }
        }
        let _ = tx.send(Event::StdinClosed);
    });
}

impl Coordinator {
    fn reset_timer(&mut self) {
        self.next =
            (self.interval > 0).then(|| Instant::now() + Duration::from_secs(self.interval));
    }

    /// The next event to handle. Periodic checkpoints run in here when they are due:
    /// after what arrived during the previous checkpoint (a job that left meanwhile is
    /// not in the next one), before anything new (a stream of clients cannot hold the
    /// timer back).
    fn next_event(&mut self) -> Option<Event> {
        loop {
            if let Some(e) = self.deferred.pop_front() {
                return Some(e);
            }
            if let Some(t) = self.next {
                if Instant::now() >= t {
                    self.reset_timer();
                    if !self.agents.is_empty() {
                        // Its outcome is logged and counted in the status.
                        let _ = self.checkpoint(false);
                    }
                    continue;
                }
            }
            let r = match self.next {
                Some(t) => self
                    .events
                    .recv_timeout(t.saturating_duration_since(Instant::now())),
                None => self
                    .events
                    .recv()
                    .map_err(|_| RecvTimeoutError::Disconnected),
            };
            match r {
                Ok(e) => return Some(e),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// Handle an event that arrives while a checkpoint runs: questions are answered
    /// at once, everything else waits until the checkpoint is over.
    fn during_checkpoint(&mut self, ev: Event) {
        const AT_ONCE: &[&str] = &[
            "h", "help", "?", "s", "status", "l", "list", "i", "interval", "ping",
        ];
        match ev {
            Event::Command(mut conn, verb, arg) if AT_ONCE.contains(&verb.as_str()) => {
                let (_, ok, text) = self.command(&verb, arg.as_deref());
                let _ = conn.send(&Msg::Reply { ok, text });
            }
            Event::Key(line)
                if line
                    .split_whitespace()
                    .next()
                    .is_some_and(|v| AT_ONCE.contains(&v)) =>
            {
                let mut it = line.split_whitespace();
                let verb = it.next().unwrap_or_default();
                let (_, _, text) = self.command(verb, it.next());
                println!("{text}");
            }
            other => self.deferred.push_back(other),
        }
    }

    fn run(&mut self) -> Result<i32> {
        while let Some(ev) = self.next_event() {
            match ev {
                Event::Joined(id, stream, hello) => self.join(id, stream, hello),
                Event::FromAgent(id, Msg::Exit { code }) => {
                    if let Some(a) = self.agents.get(&id) {
                        log(&format!(
                            "job {id} (pid {}) exited with status {code}",
                            a.job_pid
                        ));
                    }
                }
                Event::FromAgent(..) => {}
                Event::Gone(id) => {
                    if self.agents.remove(&id).is_some() {
                        log(&format!(
                            "job {id} disconnected; {} left",
                            self.agents.len()
                        ));
                    }
                    if self.opts.exit_on_last && self.seen_agent && self.agents.is_empty() {
                        log("last job gone, exiting (--exit-on-last)");
                        return Ok(0);
                    }
                }
                Event::Command(mut conn, verb, arg) => {
                    let (quit, ok, text) = self.command(&verb, arg.as_deref());
                    let _ = conn.send(&Msg::Reply { ok, text });
                    if quit {
                        return Ok(0);
                    }
                }
                Event::Key(line) => {
                    let mut it = line.split_whitespace();
                    let Some(verb) = it.next() else { continue };
                    let (quit, _, text) = self.command(verb, it.next());
                    println!("{text}");
                    if quit {
                        return Ok(0);
                    }
                }
                Event::StdinClosed => {}
            }
        }
        Ok(0)
    }

    fn join(&mut self, id: u64, stream: TcpStream, hello: Msg) {
        let Msg::Hello {
            host,
            job_pid,
            job_id,
            cmdline,
            ..
        } = hello
        else {
            return;
        };
        let writer = match Conn::new(stream) {
            Ok(w) => w,
            Err(e) => {
                log(&format!(
                    "job {id} (pid {job_pid} on {host}) not registered: {e:#}"
                ));
                return;
            }
        };
        log(&format!(
            "job {id} joined: pid {job_pid} on {host}: {}",
            cmdline.join(" ")
        ));
        self.seen_agent = true;
        self.agents.insert(
            id,
            Agent {
                writer,
                host,
                job_pid,
                job_id,
                cmdline,
            },
        );
    }

    /// Returns (quit, success, text to show).
    fn command(&mut self, verb: &str, arg: Option<&str>) -> (bool, bool, String) {
        match verb {
            "h" | "help" | "?" => (false, true, HELP.into()),
            // `protocol::probe`: a client making sure a coordinator answers here.
            "ping" => (
                false,
                true,
                format!(
                    "ckpt coordinator\nckpt-dir={}\ninterval={}",
                    std::path::absolute(&self.opts.ckpt_dir)
                        .unwrap_or_else(|_| self.opts.ckpt_dir.clone())
                        .display(),
                    self.interval
                ),
            ),
            "kc" => match self.checkpoint(true) {
                Ok(paths) => {
                    // Each job was killed by its agent once its generation was
                    // published, still frozen; Kill reaches anything left over.
                    let n = self.kill_all();
                    let mut text: Vec<String> =
                        paths.iter().map(|p| p.display().to_string()).collect();
                    text.push(format!("killing {n} job(s)"));
                    (false, true, text.join("\n"))
                }
                Err(e) => (
                    false,
                    false,
                    format!("checkpoint failed: {e:#}; no job killed"),
                ),
            },
            "c" | "bc" | "checkpoint" => match self.checkpoint(false) {
                Ok(paths) => (
                    false,
                    true,
                    paths
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join("\n"),
                ),
                Err(e) => (false, false, format!("checkpoint failed: {e:#}")),
            },
            "l" | "list" => {
                let mut out = format!("{} job(s)", self.agents.len());
                for (id, a) in &self.agents {
                    out.push_str(&format!(
                        "\n  job {id}: pid {} on {}: {}",
                        a.job_pid,
                        a.host,
                        a.cmdline.join(" ")
                    ));
                }
                (false, true, out)
            }
            "s" | "status" => {
                let last = match &self.last {
                    Some((g, paths)) => format!(
                        "checkpoint {g}: {}",
                        paths
                            .iter()
                            .map(|p| p.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    None => "none".into(),
                };
                let mut text = format!(
                    "jobs: {}\ninterval: {} s\ncheckpoint directory: {}\ncheckpoints completed: {}\ncheckpoints failed: {}\nlast checkpoint: {last}",
                    self.agents.len(),
                    self.interval,
                    self.opts.ckpt_dir.display(),
                    self.completed,
                    self.failed,
                );
                if let Some((g, why)) = &self.last_failure {
                    text.push_str(&format!("\nlast failed checkpoint: checkpoint {g}: {why}"));
                }
                if let Some((g, n)) = self.running {
                    text.push_str(&format!(
                        "\ncheckpoint in progress: checkpoint {g} of {n} job(s)"
                    ));
                }
                (false, true, text)
            }
            "k" | "kill" => {
                let n = self.kill_all();
                (false, true, format!("killing {n} job(s)"))
            }
            "q" | "quit" => {
                let n = self.kill_all();
                log(&format!("killed {n} job(s); quitting"));
                (true, true, format!("killed {n} job(s); coordinator quits"))
            }
            "i" | "interval" => match arg.and_then(|a| a.parse::<u64>().ok()) {
                Some(n) => {
                    self.interval = n;
                    self.reset_timer();
                    (false, true, format!("interval set to {n} s"))
                }
                None => (false, false, "usage: i SECONDS".into()),
            },
            other => (
                false,
                false,
                format!("unknown command {other:?}; h for help"),
            ),
        }
    }

    fn kill_all(&mut self) -> usize {
        for a in self.agents.values_mut() {
            let _ = a.writer.send(&Msg::Kill);
        }
        self.agents.len()
    }

    /// Directory of one job's generations: `<ckpt-dir>/job_<job id>` (the same
    /// again after a restart, which keeps the job id).
    fn job_dir(&self, a: &Agent) -> PathBuf {
        let safe: String = format!("job_{}", a.job_id)
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        self.opts.ckpt_dir.join(safe)
    }

    /// Wait for one reply from each agent in `waiting`; other events are answered or
    /// deferred (see `during_checkpoint`).
    /// The answers of the `waiting` agents to checkpoint `gen`, each logged as it comes
    /// (with the time since `since`, the start of the checkpoint), so that whoever
    /// watches the coordinator sees each job frozen, written or failed.
    /// One line for an agent's answer during checkpoint `gen`.
    fn progress(&self, gen: u64, id: u64, m: &Msg, since: Instant) {
        let pid = self.agents.get(&id).map_or(0, |a| a.job_pid);
        let at = since.elapsed().as_secs_f64() * 1e3;
        let what = match m {
            Msg::Frozen { .. } => "frozen".to_string(),
            Msg::Done { path, .. } => format!(
                "written, {:.1} MiB: {}",
                crate::generation::bytes_on_disk(path) as f64 / (1 << 20) as f64,
                path.display()
            ),
            Msg::Failed { error, .. } => format!("failed: {error}"),
            _ => return,
        };
        log(&format!(
            "checkpoint {gen}: job {id} (pid {pid}) {what} ({at:.0} ms)"
        ));
    }

    fn collect(
        &mut self,
        gen: u64,
        mut waiting: Vec<u64>,
        timeout: Duration,
        since: Instant,
    ) -> BTreeMap<u64, Msg> {
        let deadline = Instant::now() + timeout;
        let mut replies = BTreeMap::new();
        while !waiting.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            let ev = match self.events.recv_timeout(left) {
                Ok(ev) => ev,
                Err(_) => break,
            };
            let answer = |m: &Msg| match m {
                Msg::Frozen { gen: g } | Msg::Done { gen: g, .. } | Msg::Failed { gen: g, .. } => {
                    *g == gen
                }
                _ => false,
            };
            match ev {
                Event::FromAgent(id, m) if waiting.contains(&id) && answer(&m) => {
                    waiting.retain(|&w| w != id);
                    self.progress(gen, id, &m, since);
                    replies.insert(id, m);
                }
                Event::Gone(id) if waiting.contains(&id) => {
                    waiting.retain(|&w| w != id);
                    replies.insert(
                        id,
                        Msg::Failed {
                            gen,
                            error: "the job's agent disconnected".into(),
                        },
                    );
                    self.deferred.push_back(Event::Gone(id));
                }
                other => self.during_checkpoint(other),
            }
        }
        for id in waiting {
            replies.insert(
                id,
                Msg::Failed {
                    gen,
                    error: format!("no answer within {} s", timeout.as_secs()),
                },
            );
        }
        replies
    }

    /// Send `msg` to each agent of `ids`; returns those reached, and a failure for
    /// each of the others.
    fn send_all(
        &mut self,
        gen: u64,
        ids: &[u64],
        msg: impl Fn(&Self, &Agent) -> Msg,
    ) -> (Vec<u64>, BTreeMap<u64, Msg>) {
        let mut reached = Vec::new();
        let mut failed = BTreeMap::new();
        for &id in ids {
            let Some(a) = self.agents.get(&id) else {
                continue;
            };
            let m = msg(self, a);
            let a = self.agents.get_mut(&id).unwrap();
            match a.writer.send(&m) {
                Ok(()) => reached.push(id),
                Err(e) => {
                    // Part of a line may have gone out: end the connection (the agent
                    // lets its job go and registers again).
                    let _ = a.writer.stream().shutdown(std::net::Shutdown::Both);
                    failed.insert(
                        id,
                        Msg::Failed {
                            gen,
                            error: format!("sending to its agent: {}", e.root_cause()),
                        },
                    );
                }
            }
        }
        (reached, failed)
    }

    /// One global checkpoint: every job frozen, then every job written. Its outcome is
    /// logged and counted; a failure names each job that failed and why.
    /// With `kill`, every job stays frozen until its generation is published and is
    /// killed then (`kc`); a job whose checkpoint fails resumes.
    fn checkpoint(&mut self, kill: bool) -> Result<Vec<PathBuf>> {
        if self.agents.is_empty() {
            bail!("no job is registered");
        }
        self.gen += 1;
        let gen = self.gen;
        self.running = Some((gen, self.agents.len()));
        let r = self.round(gen, kill);
        self.running = None;
        match &r {
            Ok(_) => self.completed += 1,
            Err(e) => {
                self.failed += 1;
                self.last_failure = Some((gen, format!("{e:#}")));
            }
        }
        r
    }

    fn round(&mut self, gen: u64, kill: bool) -> Result<Vec<PathBuf>> {
        let t0 = Instant::now();
        log(&format!(
            "checkpoint {gen}: freezing {} job(s)",
            self.agents.len()
        ));
        let ids: Vec<u64> = self.agents.keys().copied().collect();
        let keep = self.opts.keep;
        let tcp = self.opts.tcp;
        let (reached, mut frozen) = self.send_all(gen, &ids, |c, a| Msg::Freeze {
            gen,
            dir: c.job_dir(a),
            keep,
            tcp,
            kill,
        });
        frozen.extend(self.collect(gen, reached, Duration::from_secs(300), t0));
        let failed: Vec<(u64, String)> = frozen
            .iter()
            .filter_map(|(id, m)| match m {
                Msg::Failed { error, .. } => Some((*id, error.clone())),
                _ => None,
            })
            .collect();
        if !failed.is_empty() {
            let _ = self.send_all(gen, &ids, |_, _| Msg::Abort { gen });
            let why = failed
                .iter()
                .map(|(id, e)| {
                    let pid = self.agents.get(id).map(|a| a.job_pid).unwrap_or(0);
                    format!("job {id} (pid {pid}): {e}")
                })
                .collect::<Vec<_>>()
                .join("; ");
            log(&format!(
                "checkpoint {gen} failed, every job resumes and the previous checkpoint stays latest: {why}"
            ));
            bail!("{why}");
        }
        let pause = t0.elapsed();
        log(&format!(
            "checkpoint {gen}: every job frozen in {:.0} ms; writing",
            pause.as_secs_f64() * 1e3
        ));
        let (reached, mut done) = self.send_all(gen, &ids, |_, _| Msg::Commit { gen });
        done.extend(self.collect(gen, reached, Duration::from_secs(3600), t0));
        let mut paths = Vec::new();
        let mut jobs = Vec::new();
        let mut errors = Vec::new();
        for (id, m) in done {
            match m {
                Msg::Done { path, .. } => {
                    if let Some(a) = self.agents.get(&id) {
                        jobs.push(ScriptJob {
                            host: a.host.clone(),
                            pid: a.job_pid,
                            generation: path.clone(),
                        });
                    }
                    paths.push(path)
                }
                Msg::Failed { error, .. } => errors.push(format!("job {id}: {error}")),
                _ => {}
            }
        }
        if !errors.is_empty() {
            let why = errors.join("; ");
            log(&format!("checkpoint {gen} failed while writing: {why}"));
            bail!("{why}");
        }
        if let Err(e) = write_restart_script(&self.opts.ckpt_dir, &jobs) {
            log(&format!(
                "checkpoint {gen} failed writing the restart script: {e:#}"
            ));
            return Err(e);
        }
        log(&format!(
            "checkpoint {gen} complete in {:.0} ms (jobs stopped {:.0} ms): {}",
            t0.elapsed().as_secs_f64() * 1e3,
            pause.as_secs_f64() * 1e3,
            paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        self.last = Some((gen, paths.clone()));
        Ok(paths)
    }
}

/// One job of a global checkpoint, as the restart script needs it.
struct ScriptJob {
    /// The host it ran on (its agent's host name, as `uname -n` says it).
    host: String,
    pid: i32,
    generation: PathBuf,
}

/// `s` quoted for sh: in single quotes, each `'` as `'\''`.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// `<ckpt-dir>/ckpt_restart_script.sh`: restores the jobs of the newest global
/// checkpoint (each job's own `latest`), like dmtcp_restart_script.sh, each on the
/// host it ran on: run on a host, it restores the jobs of that host only (the host
/// recorded at the checkpoint, by name as `uname -n` gives it, which is what DMTCP
/// goes by too) and says on stderr which it leaves to other hosts. Its own options
/// come first, the rest goes to every `ckpt restore`:
///   --host NAME      restore the jobs of host NAME here (also CKPT_RESTART_HOST)
///   --host-index N   restore the jobs of the N-th host of the checkpoint (from 0;
///                    for a new allocation on other nodes: `--host-index $SLURM_NODEID`)
///   --all-hosts      restore every job here (a single node after a host change)
///   --list-hosts     print the hosts of the checkpoint, one a line, and exit
fn write_restart_script(ckpt_dir: &Path, jobs: &[ScriptJob]) -> Result<()> {
    let exe = std::env::current_exe()?;
    let script = restart_script(&exe.display().to_string(), jobs);
    crate::generation::write_script(&ckpt_dir.join(crate::generation::RESTART_SCRIPT), &script)
}

/// The text of the restart script, which runs `exe restore JOB_DIR ARGS`.
fn restart_script(exe: &str, jobs: &[ScriptJob]) -> String {
    let exe = sh_quote(exe);
    let mut hosts: Vec<&str> = Vec::new();
    for j in jobs {
        if !hosts.contains(&j.host.as_str()) {
            hosts.push(&j.host);
        }
    }
    let mut script = String::from(
        "#!/bin/sh\n\
         # Restores the jobs of the newest checkpoint (written by ckpt coordinator), each on\n\
         # the host it ran on: run it once on every host (under Slurm, in the restart job:\n\
         # srun --ntasks-per-node=1 ./ckpt_restart_script.sh). Its options come first, the\n\
         # rest goes to every `ckpt restore`:\n\
         #   --host NAME     restore the jobs of host NAME here (default: CKPT_RESTART_HOST,\n\
         #                   else this host's name, `uname -n`)\n\
         #   --host-index N  restore the jobs of the N-th host below (from 0)\n\
         #   --all-hosts     restore every job here\n\
         #   --list-hosts    print the hosts of this checkpoint and exit\n",
    );
    script.push_str("# Hosts:");
    for h in &hosts {
        script.push_str(&format!(" {}", sh_quote(h)));
    }
    script.push_str("\n\nme=ckpt_restart_script.sh\n");
    // The hosts, one a line; the script's own options are taken off "$@".
    let list: String = hosts.iter().map(|h| format!("{h}\n")).collect();
    script.push_str(&format!("hosts={}\n", sh_quote(&list)));
    script.push_str(
        r#"host=${CKPT_RESTART_HOST:-}
all=
while [ $# -gt 0 ]; do
    case $1 in
    --all-hosts) all=1; shift ;;
    --host=*) host=${1#--host=}; shift ;;
    --host)
        [ $# -ge 2 ] || { echo "$me: --host needs a host name" >&2; exit 2; }
        host=$2; shift 2 ;;
    --host-index=* | --host-index)
        if [ "$1" = --host-index ]; then
            [ $# -ge 2 ] || { echo "$me: --host-index needs a number" >&2; exit 2; }
            i=$2; shift 2
        else
            i=${1#--host-index=}; shift
        fi
        case $i in '' | *[!0-9]*) echo "$me: --host-index: not a number: $i" >&2; exit 2 ;; esac
        host=$(printf '%s' "$hosts" | sed -n "$((i + 1))p")
        if [ -z "$host" ]; then
            echo "$me: host index $i: this checkpoint has $(printf '%s' "$hosts" | wc -l) host(s), no job to restore here" >&2
            exit 0
        fi ;;
    --list-hosts) printf '%s' "$hosts"; exit 0 ;;
    --) shift; break ;;
    *) break ;;
    esac
done
[ -n "$host" ] || host=$(uname -n)
status=0
pids=
here=0
left=
"#,
    );
    for j in jobs {
        let Some(dir) = j.generation.parent() else {
            continue;
        };
        let dir = sh_quote(&dir.display().to_string());
        let host = sh_quote(&j.host);
        let name = format!(
            "{} (pid {}) of {}",
            j.generation
                .parent()
                .and_then(Path::file_name)
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            j.pid,
            j.host
        );
        let name = sh_quote(&name);
        if jobs.len() == 1 {
            script.push_str(&format!(
                "if [ -n \"$all\" ] || [ \"$host\" = {host} ]; then\n    exec {exe} restore {dir} \"$@\"\nfi\nleft={name}\n"
            ));
        } else {
            script.push_str(&format!(
                "if [ -n \"$all\" ] || [ \"$host\" = {host} ]; then\n    {exe} restore {dir} \"$@\" &\n    pids=\"$pids $!\"; here=$((here + 1))\nelse\n    left=\"$left${{left:+, }}\"{name}\nfi\n"
            ));
        }
    }
    script.push_str(
        r#"if [ -n "$left" ]; then
    echo "$me: on host $host: leaving to other hosts: $left" >&2
fi
if [ "$here" = 0 ]; then
    echo "$me: no job of host $host in this checkpoint (its hosts: $(printf '%s' "$hosts" | tr '\n' ' ')); run it on those hosts, or give --host NAME, --host-index N or --all-hosts" >&2
    exit 1
fi
for p in $pids; do
    wait "$p" || status=$?
done
exit $status
"#,
    );
    script
}

/// Make sure `ckpt_dir` exists (0700).
pub fn ensure_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the restart script of `jobs`, with `echo` for ckpt: (status, stdout
    /// lines sorted, stderr).
    fn run_script(
        jobs: &[ScriptJob],
        args: &[&str],
        env: &[(&str, &str)],
    ) -> (i32, Vec<String>, String) {
        let script = restart_script("echo", jobs);
        let mut cmd = std::process::Command::new("sh");
        cmd.arg("-c")
            .arg(&script)
            .arg("ckpt_restart_script.sh")
            .args(args);
        cmd.env_remove("CKPT_RESTART_HOST");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        lines.sort();
        (
            out.status.code().unwrap_or(-1),
            lines,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn job(host: &str, pid: i32, dir: &str) -> ScriptJob {
        ScriptJob {
            host: host.into(),
            pid,
            generation: PathBuf::from(format!("/ck/{dir}/gen_1")),
        }
    }

    #[test]
    fn restart_script_restores_the_jobs_of_its_host() {
        let jobs = [
            job("node1", 10, "job_a"),
            job("it's node2", 20, "job_b"),
            job("node1", 30, "job_c"),
        ];
        let (st, out, err) = run_script(&jobs, &["--host", "node1", "-i", "5"], &[]);
        assert_eq!(st, 0, "{err}");
        assert_eq!(out, ["restore /ck/job_a -i 5", "restore /ck/job_c -i 5"]);
        assert!(
            err.contains("on host node1: leaving to other hosts: job_b (pid 20) of it's node2"),
            "{err}"
        );
        let (st, out, _) = run_script(&jobs, &[], &[("CKPT_RESTART_HOST", "it's node2")]);
        assert_eq!((st, out), (0, vec!["restore /ck/job_b".to_string()]));
        let (st, out, _) = run_script(&jobs, &["--host-index=1"], &[]);
        assert_eq!((st, out), (0, vec!["restore /ck/job_b".to_string()]));
        let (st, out, err) = run_script(&jobs, &["--host-index", "2"], &[]);
        assert_eq!((st, out.len()), (0, 0), "{err}");
        let (st, out, err) = run_script(&jobs, &["--all-hosts", "--", "--x"], &[]);
        assert_eq!(st, 0, "{err}");
        assert_eq!(out.len(), 3, "{out:?}");
        assert!(err.is_empty(), "{err}");
        let (st, out, _) = run_script(&jobs, &["--list-hosts"], &[]);
        assert_eq!(
            (st, out),
            (0, vec!["it's node2".to_string(), "node1".to_string()])
        );
        let (st, out, err) = run_script(&jobs, &["--host", "elsewhere"], &[]);
        assert_eq!((st, out.len()), (1, 0));
        assert!(err.contains("no job of host elsewhere"), "{err}");
        // one job: exec, as before
        let (st, out, _) = run_script(&jobs[1..2], &["--host=it's node2", "x"], &[]);
        assert_eq!((st, out), (0, vec!["restore /ck/job_b x".to_string()]));
        let (st, _, err) = run_script(&jobs[1..2], &["--host=node1"], &[]);
        assert_eq!(st, 1);
        assert!(
            err.contains("leaving to other hosts: job_b (pid 20)"),
            "{err}"
        );
    }
}
