//! The network lock of `--tcp-established` (issue 10): while a process whose TCP
//! connections to peers outside the checkpoint were saved the TCP_REPAIR way is down
//! (from the dump's freeze until the restore has rebuilt them), no packet of those
//! connections may pass either way. A packet that reached the host with no socket
//! for it would be answered with a reset, and the peer would drop the connection; a
//! dropped packet is only sent again (TCP retransmits it), and reaches the rebuilt
//! socket once the lock is gone.
//!
//! The lock is an nftables table of ckpt's own, `inet ckpt_lock_<pid>_<n>`, made with
//! the `nft` program (package nftables): two base chains (hooks input and output,
//! priority -300, before connection tracking) each dropping the packets of every
//! locked connection by its four-tuple, in both directions. nftables, not iptables:
//! one program, no kernel modules of the xtables era, one table whose deletion takes
//! every rule of the lock at once and touches no other rule of the host (CRIU's
//! `--network-lock nftables` does the same). Without `nft` in PATH a dump that needs the
//! lock is refused, saying so; nothing else is tried.
//!
//! A dump records the table's name in the image ([`crate::state::TcpRepair::lock`]);
//! the restore deletes it once the connections are rebuilt and the processes run. A
//! lock left behind (a checkpoint never restored, or a restore that failed) is removed
//! by hand: `nft delete table inet ckpt_lock_...` (`nft list tables` shows them).
//! After a reboot the table is gone; a restore then finds nothing to delete.

use crate::state::InetAddr;
use std::io::{self, Write};
use std::process::{Command, Stdio};
use std::sync::Mutex;

/// One locked connection: the local address and port, the peer's.
pub type Conn = (InetAddr, InetAddr);

/// The tables this process made and still holds for the dump in progress.
static TAKEN: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// `nft` in PATH, if there is one.
pub fn nft() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("nft"))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| {
                m.is_file()
                    && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
            })
        })
}

/// The address of `a` as nft writes it, and the protocol family keyword (`ip` or
/// `ip6`): an IPv4 address mapped into IPv6 travels as IPv4.
fn nft_addr(a: &InetAddr) -> (&'static str, String) {
    let v4 = match a.ip.len() {
        4 => Some([a.ip[0], a.ip[1], a.ip[2], a.ip[3]]),
        16 if a.ip[..10].iter().all(|&b| b == 0) && a.ip[10] == 0xff && a.ip[11] == 0xff => {
            Some([a.ip[12], a.ip[13], a.ip[14], a.ip[15]])
        }
        _ => None,
    };
    match v4 {
        Some(v) => ("ip", std::net::Ipv4Addr::from(v).to_string()),
        None => {
            let b: [u8; 16] = a.ip.as_slice().try_into().unwrap_or([0; 16]);
            ("ip6", std::net::Ipv6Addr::from(b).to_string())
        }
    }
}

/// The nft script that makes table `name` dropping every packet of `conns`.
fn script(name: &str, conns: &[Conn]) -> String {
    let mut rules = String::new();
    for (l, p) in conns {
        let (fam, la) = nft_addr(l);
        let (_, pa) = nft_addr(p);
        rules.push_str(&format!(
            "    {fam} saddr {la} {fam} daddr {pa} tcp sport {} tcp dport {} drop\n",
            l.port, p.port
        ));
        rules.push_str(&format!(
            "    {fam} saddr {pa} {fam} daddr {la} tcp sport {} tcp dport {} drop\n",
            p.port, l.port
        ));
    }
    format!(
        "table inet {name} {{\n  chain input {{\n    type filter hook input priority -300; policy accept;\n{rules}  }}\n  chain output {{\n    type filter hook output priority -300; policy accept;\n{rules}  }}\n}}\n"
    )
}

fn run_nft(args: &[&str], input: Option<&str>) -> io::Result<()> {
    let nft = nft().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            "the nft program (package nftables) is not in PATH",
        )
    })?;
    let mut child = Command::new(nft)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    if let (Some(text), Some(mut w)) = (input, child.stdin.take()) {
        w.write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(io::Error::other(format!(
            "nft {}: {}",
            args.join(" "),
            err.lines().next().unwrap_or("failed").trim()
        )));
    }
    Ok(())
}

/// Lock `conns`: a new table, which this dump holds until [`release_dump`] or
/// [`keep_dump`]. Returns its name.
pub fn lock(conns: &[Conn]) -> io::Result<String> {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let name = format!("ckpt_lock_{}_{t:x}{n}", std::process::id());
    run_nft(&["-f", "-"], Some(&script(&name, conns)))?;
    TAKEN
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(name.clone());
    Ok(name)
}

/// Delete table `name`; one that is not there (removed by hand, or a reboot) is no
/// error.
pub fn unlock(name: &str) -> io::Result<()> {
    if !name.starts_with("ckpt_lock_")
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(io::Error::other(format!(
            "{name:?} is not the name of a ckpt network lock"
        )));
    }
    if run_nft(&["list", "table", "inet", name], None).is_err() {
        return Ok(());
    }
    run_nft(&["delete", "table", "inet", name], None)?;
    Ok(())
}

/// The dump failed, or leaves its processes running: every lock it took goes.
pub fn release_dump() {
    let taken = std::mem::take(&mut *TAKEN.lock().unwrap_or_else(|e| e.into_inner()));
    for name in taken {
        if let Err(e) = unlock(&name) {
            eprintln!(
                "ckpt: warning: the network lock {name} could not be removed ({e}): remove it with `nft delete table inet {name}`"
            );
        }
    }
}

/// The dump killed its processes: the locks stay until the restore (their names are
/// in the image).
pub fn keep_dump() {
    TAKEN.lock().unwrap_or_else(|e| e.into_inner()).clear();
}

/// The locks of the connections a restore rebuilt, removed once its processes run.
static RESTORED: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// A connection under lock `name` was rebuilt.
pub fn restored(name: &str) {
    let mut r = RESTORED.lock().unwrap_or_else(|e| e.into_inner());
    if !r.iter().any(|n| n == name) {
        r.push(name.to_string());
    }
}

/// The restored processes run: the locks of their connections go (a warning names one
/// that cannot be removed, and how to remove it).
pub fn release_restored() {
    let taken = std::mem::take(&mut *RESTORED.lock().unwrap_or_else(|e| e.into_inner()));
    for name in taken {
        if let Err(e) = unlock(&name) {
            eprintln!(
                "ckpt: warning: the network lock {name} could not be removed ({e}): remove it with `nft delete table inet {name}`"
            );
        }
    }
}

/// The restore failed: the locks stay (the peers keep their connections for another
/// try); say so.
pub fn restore_failed() {
    let taken = std::mem::take(&mut *RESTORED.lock().unwrap_or_else(|e| e.into_inner()));
    for name in taken {
        eprintln!(
            "ckpt: the network lock {name} stays, so that another restore can take the connections up; without one, remove it with `nft delete table inet {name}`"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_match_both_directions() {
        let a = |ip: &[u8], port| InetAddr {
            ip: ip.to_vec(),
            port,
            flowinfo: 0,
            scope_id: 0,
        };
        let mapped = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1];
        let s = script(
            "ckpt_lock_1_0",
            &[(a(&mapped, 40000), a(&[127, 0, 0, 2], 80))],
        );
        assert!(
            s.contains("ip saddr 127.0.0.1 ip daddr 127.0.0.2 tcp sport 40000 tcp dport 80 drop")
        );
        assert!(
            s.contains("ip saddr 127.0.0.2 ip daddr 127.0.0.1 tcp sport 80 tcp dport 40000 drop")
        );
        let mut one = [0u8; 16];
        one[15] = 1;
        let s = script("ckpt_lock_1_1", &[(a(&one, 1), a(&one, 2))]);
        assert!(s.contains("ip6 saddr ::1 ip6 daddr ::1 tcp sport 1 tcp dport 2 drop"));
        assert!(unlock("filter").is_err());
    }
}
