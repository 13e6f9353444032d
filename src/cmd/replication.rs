//! Replication commands: WAIT and REPLICAOF.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::Flag::*;
use super::{int_arg, is, CmdResult, Error, Exec, Spec};
use super::{Flags, Keys};
use crate::replication::{PeerAddrError, Replicator};

pub static COMMANDS: &[Spec] = &[
    Spec { name: "wait", arity: 3, flags: Flags::of(&[]), keys: Keys::None, group: "generic", syntax: "numpeers timeout", summary: "Blocks until the asynchronous replication of all preceding write commands sent by the connection is completed.", run: wait },
    Spec { name: "replicaof", arity: -3, flags: Flags::of(&[Admin, NoMulti]), keys: Keys::None, group: "server", syntax: "host port|REMOVE host port|NO ONE", summary: "Adds, removes or leaves active-active peers.", run: replicaof },
    Spec { name: "slaveof", arity: -3, flags: Flags::of(&[Admin, NoMulti]), keys: Keys::None, group: "server", syntax: "host port|REMOVE host port|NO ONE", summary: "Deprecated alias of REPLICAOF.", run: replicaof },
];

/// What WAIT is waiting for; the connection awaits it after the command.
pub struct PendingWait {
    pub repl: Arc<Replicator>,
    /// Every write numbered up to this (the client's last write included).
    pub seq: u64,
    pub peers: usize,
    /// `None`: wait as long as it takes.
    pub timeout: Option<Duration>,
}

impl PendingWait {
    /// Waits until enough peers acknowledged, or the timeout; returns how many did.
    pub async fn run(self) -> i64 {
        let deadline = self.timeout.map(|t| tokio::time::Instant::now() + t);
        loop {
            let acked = self.repl.peers_acked(self.seq);
            if acked >= self.peers || deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                return acked as i64;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

fn wait(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let peers = int_arg(args[1])?;
    let timeout_ms = int_arg(args[2])?;
    if timeout_ms < 0 {
        return Err(Error::err("timeout is negative"));
    }
    let Some(repl) = &x.node.repl else {
        // No peers: nothing to wait for, as Redis answers with no replicas.
        x.out.int(0);
        return Ok(());
    };
    if x.session.multi.is_some() {
        // Inside EXEC it cannot block; report what is acknowledged now.
        x.out.int(repl.peers_acked(repl.head_seq()) as i64);
        return Ok(());
    }
    x.session.wait = Some(PendingWait {
        repl: repl.clone(),
        seq: repl.head_seq(),
        peers: peers.max(0) as usize,
        timeout: (timeout_ms > 0).then(|| Duration::from_millis(timeout_ms as u64)),
    });
    Ok(())
}

fn peer_addr(host: &[u8], port: &[u8]) -> Result<SocketAddr, Error> {
    let host = std::str::from_utf8(host).map_err(|_| Error::err("Invalid host"))?;
    let port = u16::try_from(int_arg(port)?).map_err(|_| Error::err("Invalid master port"))?;
    crate::replication::resolve_peer(host, port).map_err(|e| match e {
        PeerAddrError::Port => Error::err("Invalid master port: port + 10000 must be below 65536"),
        PeerAddrError::Resolve(_) => Error::err(format!("{e}")),
    })
}

fn replicaof(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let Some(repl) = &x.node.repl else {
        return Err(Error::err("replication is not enabled on this node: start it with masterauth and active-replica yes"));
    };
    match args {
        [_, no, one] if is(no, "NO") && is(one, "ONE") => {
            let removed = repl.remove_peers(None);
            tracing::info!(removed, "REPLICAOF NO ONE: left the mesh");
            x.out.ok();
        }
        [_, remove, host, port] if is(remove, "REMOVE") => {
            let addr = peer_addr(host, port)?;
            if repl.remove_peers(Some(addr)) == 0 {
                return Err(Error::err("no such peer"));
            }
            x.out.ok();
        }
        [_, host, port] => {
            let addr = peer_addr(host, port)?;
            match repl.add_peer(addr) {
                Ok(true) => x.out.ok(),
                Ok(false) => x.out.simple("OK Already connected to specified peer"),
                Err(e) => return Err(Error::err(e.to_string())),
            }
        }
        _ => return Err(Error::Syntax),
    }
    Ok(())
}
