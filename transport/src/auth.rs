//! The peer handshake: both sides prove the shared secret (`masterauth`)
//! with SPAKE2, a password-authenticated key exchange, bound to this TLS
//! session.
//!
//! On the first bidirectional stream, opened by the dialer:
//! 1. dialer → `Hello { version, node, spake_d }`
//! 2. acceptor → `Challenge { node, spake_a, confirm_a }` or `Refused(reason)`
//! 3. dialer checks `confirm_a`, → `Proof { confirm_d, cluster, name }` or
//!    `Refused`
//! 4. acceptor checks `confirm_d` and the cluster name, → `Welcome { cluster,
//!    name }` or `Refused(reason)`; the dialer checks the cluster name in turn.
//!
//! Both sides run symmetric SPAKE2 with the secret as password and, as the
//! identity, keying material exported from this TLS session; from the key it
//! yields, `confirm = HMAC-SHA256(key, role)`. What an unauthenticated party
//! sees (a SPAKE2 message, a confirmation) gives it nothing to test guesses
//! against offline: each connection is one online guess at most. A relay in
//! the middle holds two TLS sessions, so the two sides' keys differ and
//! nothing verifies. The cluster name goes only to a peer that proved the
//! secret.

use ring::hmac;
use serde::{Deserialize, Serialize};
use spake2::{Ed25519Group, Password, Spake2};

use crate::frame::{FrameReceiver, FrameSender};
use crate::TransportError;

/// 3: replicated key states carry an expiry floor (crdt format 3); a peer
/// speaking 2 could not decode them. 4: a state transfer begins with what
/// its sender held (`SnapshotBegin`). 5: repair (`Digest`, `RepairAsk`, a
/// scoped `SnapshotBegin`) and transfers that end with their tail. 6: a
/// transfer's `SnapshotBegin` carries its sender's vector. 7: each side
/// names itself (`node-name`) once the secret is proved. 8: key states carry
/// collections (crdt format 4). 9: transfers of what differs
/// (`LeafDigestAsk`, `LeafDigest`, a `SnapshotBegin` scoped by leaves).
/// 10: a `Resume` names the compressions its sender reads; `Compressed`.
/// 11: `Publish` (pub/sub messages on the live stream). 12: key states
/// carry lists (crdt format 5). 13: a write leaves its register stamp's
/// origin implied (crdt format 6). 14: a one-element collection write or
/// increment travels in a compact form (`codec::append_one_write`). 15: so
/// does a hash, set or sorted set write of any size
/// (`codec::append_coll_write`). 16: a repair offer (`Digest`) names the
/// GC floor its states were compacted to and its unsettled buckets, and
/// `LeafDigestAsk` a floor. 17: an element's removal record names the
/// writes its ops killed (crdt format 7).
pub const PROTOCOL_VERSION: u16 = 17;
const EKM_LABEL: &[u8] = b"EXPORTER-chorus-peer-auth";

#[derive(Debug, Serialize, Deserialize)]
pub struct Hello {
    pub version: u16,
    pub node: u64,
    pub spake: Vec<u8>,
}

#[derive(Debug, Serialize, Deserialize)]
enum AcceptorReply {
    Challenge {
        node: u64,
        spake: Vec<u8>,
        confirm: Vec<u8>,
    },
    Refused(String),
}

#[derive(Debug, Serialize, Deserialize)]
enum DialerProof {
    Proof {
        confirm: Vec<u8>,
        cluster: String,
        name: String,
    },
    Refused(String),
}

#[derive(Debug, Serialize, Deserialize)]
enum Verdict {
    Welcome {
        cluster: String,
        name: String,
    },
    /// The dialer proved the secret but belongs to another cluster (named).
    OtherCluster(String),
    Refused(String),
}

/// Why a handshake failed, for counters and log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    WrongSecret,
    ClusterMismatch,
    Version,
    Protocol,
    /// The TLS handshake failed on a certificate (mutual TLS).
    Certificate,
}

impl Refusal {
    /// The QUIC application close code that carries this refusal to the
    /// other side (the refusing side closes the connection at once).
    pub fn close_code(self) -> u32 {
        match self {
            Refusal::WrongSecret => 11,
            Refusal::ClusterMismatch => 12,
            Refusal::Version => 13,
            Refusal::Protocol => 14,
            Refusal::Certificate => 15,
        }
    }

    pub fn from_close_code(code: u64) -> Refusal {
        match code {
            11 => Refusal::WrongSecret,
            12 => Refusal::ClusterMismatch,
            13 => Refusal::Version,
            15 => Refusal::Certificate,
            _ => Refusal::Protocol,
        }
    }
}

/// If the peer closed the connection with a refusal, that refusal.
pub fn refusal_of(conn: &quinn::Connection) -> Option<TransportError> {
    match conn.close_reason()? {
        quinn::ConnectionError::ApplicationClosed(closed) => Some(TransportError::Refused(
            Refusal::from_close_code(closed.error_code.into_inner()),
            String::from_utf8_lossy(&closed.reason).into_owned(),
        )),
        _ => None,
    }
}

pub struct Identity<'a> {
    pub cluster: &'a str,
    pub node: u64,
    /// The node's name as configured (`node-name`), told to peers that
    /// proved the secret.
    pub name: &'a str,
    pub secret: &'a [u8],
}

/// The peer a handshake authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub node: u64,
    /// As the peer configured it; empty when it has none.
    pub name: String,
}

/// The longest node name a peer may give; a longer one is not taken.
pub const MAX_NAME_LEN: usize = 64;

/// Whether `name` may name a node: up to [`MAX_NAME_LEN`] bytes of visible
/// ASCII other than `,` and `=`, so that it fits any INFO line as it is.
pub fn valid_name(name: &str) -> bool {
    name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b',' && b != b'=')
}

/// A name a peer gave, kept only when valid.
fn taken(name: String) -> String {
    if valid_name(&name) {
        name
    } else {
        String::new()
    }
}

fn ekm(conn: &quinn::Connection) -> Result<[u8; 32], TransportError> {
    let mut out = [0u8; 32];
    conn.export_keying_material(&mut out, EKM_LABEL, b"")
        .map_err(|_| TransportError::Tls("could not export keying material".into()))?;
    Ok(out)
}

/// Starts this side's SPAKE2 exchange: the secret as password, the TLS
/// session's exported keying material as the (shared) identity.
fn spake_start(secret: &[u8], ekm: &[u8]) -> (Spake2<Ed25519Group>, Vec<u8>) {
    Spake2::<Ed25519Group>::start_symmetric(
        &Password::new(secret),
        &spake2::Identity::new(&[b"chorus-peer-v2:".as_slice(), ekm].concat()),
    )
}

/// The key both sides share when both knew the secret; anything else (a
/// malformed message) is a refusal.
fn spake_finish(state: Spake2<Ed25519Group>, theirs: &[u8]) -> Result<Vec<u8>, TransportError> {
    state.finish(theirs).map_err(|e| {
        TransportError::Refused(Refusal::Protocol, format!("malformed key exchange: {e:?}"))
    })
}

fn confirm(key: &[u8], role: &[u8]) -> hmac::Tag {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), role)
}

fn confirmed(key: &[u8], role: &[u8], tag: &[u8]) -> bool {
    hmac::verify(&hmac::Key::new(hmac::HMAC_SHA256, key), role, tag).is_ok()
}

fn cluster_mismatch(mine: &str, theirs: &str) -> TransportError {
    TransportError::Refused(
        Refusal::ClusterMismatch,
        format!("cluster-name '{theirs}' differs from '{mine}'"),
    )
}

const WRONG_SECRET: &str = "peer could not prove the shared secret (masterauth)";

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, TransportError> {
    postcard::to_allocvec(v).map_err(|e| TransportError::Handshake(format!("encode: {e}")))
}

fn decode<T: for<'de> Deserialize<'de>>(frame: Option<bytes::Bytes>) -> Result<T, TransportError> {
    let bytes = frame
        .ok_or_else(|| TransportError::Handshake("peer closed during the handshake".into()))?;
    postcard::from_bytes(&bytes)
        .map_err(|e| TransportError::Handshake(format!("malformed handshake message: {e}")))
}

/// The handshake stream, framed.
fn framed(
    stream: Result<(quinn::SendStream, quinn::RecvStream), quinn::ConnectionError>,
    max_frame: usize,
) -> Result<(FrameSender, FrameReceiver), TransportError> {
    let (send, recv) = stream.map_err(|e| TransportError::Connect(e.to_string()))?;
    Ok((
        FrameSender::new(send, max_frame),
        FrameReceiver::new(recv, max_frame),
    ))
}

fn check_version(version: u16) -> Option<(Refusal, String)> {
    (version != PROTOCOL_VERSION).then(|| {
        (
            Refusal::Version,
            format!("protocol version {version} (this node speaks {PROTOCOL_VERSION})"),
        )
    })
}

/// Runs the dialer's side; returns the peer.
pub async fn dial(
    conn: &quinn::Connection,
    me: &Identity<'_>,
    max_frame: usize,
) -> Result<Peer, TransportError> {
    explain_close(conn, dial_steps(conn, me, max_frame).await)
}

/// A handshake cut short by the peer closing the connection reports the
/// refusal the peer put in its close frame, not just "connection lost".
fn explain_close(
    conn: &quinn::Connection,
    result: Result<Peer, TransportError>,
) -> Result<Peer, TransportError> {
    match result {
        Err(e @ (TransportError::Stream(_) | TransportError::Connect(_))) => {
            Err(refusal_of(conn).unwrap_or(e))
        }
        other => other,
    }
}

async fn dial_steps(
    conn: &quinn::Connection,
    me: &Identity<'_>,
    max_frame: usize,
) -> Result<Peer, TransportError> {
    let (mut tx, mut rx) = framed(conn.open_bi().await, max_frame)?;
    let ekm = ekm(conn)?;
    let (exchange, spake) = spake_start(me.secret, &ekm);
    tx.send(&encode(&Hello {
        version: PROTOCOL_VERSION,
        node: me.node,
        spake,
    })?)
    .await?;
    let (peer_node, theirs, their_confirm) = match decode::<AcceptorReply>(rx.recv().await?)? {
        AcceptorReply::Refused(reason) => {
            return Err(TransportError::Refused(Refusal::Protocol, reason))
        }
        AcceptorReply::Challenge {
            node,
            spake,
            confirm,
        } => (node, spake, confirm),
    };
    let key = spake_finish(exchange, &theirs)?;
    if !confirmed(&key, b"acceptor", &their_confirm) {
        let _ = tx
            .send(&encode(&DialerProof::Refused(WRONG_SECRET.to_string()))?)
            .await;
        return Err(TransportError::Refused(
            Refusal::WrongSecret,
            WRONG_SECRET.to_string(),
        ));
    }
    tx.send(&encode(&DialerProof::Proof {
        confirm: confirm(&key, b"dialer").as_ref().to_vec(),
        cluster: me.cluster.to_string(),
        name: me.name.to_string(),
    })?)
    .await?;
    match decode::<Verdict>(rx.recv().await?)? {
        Verdict::Welcome { cluster, name } if cluster == me.cluster => Ok(Peer {
            node: peer_node,
            name: taken(name),
        }),
        Verdict::Welcome { cluster, .. } | Verdict::OtherCluster(cluster) => {
            Err(cluster_mismatch(me.cluster, &cluster))
        }
        Verdict::Refused(reason) => Err(TransportError::Refused(Refusal::WrongSecret, reason)),
    }
}

/// Runs the acceptor's side; returns the peer.
pub async fn accept(
    conn: &quinn::Connection,
    me: &Identity<'_>,
    max_frame: usize,
) -> Result<Peer, TransportError> {
    explain_close(conn, accept_steps(conn, me, max_frame).await)
}

async fn accept_steps(
    conn: &quinn::Connection,
    me: &Identity<'_>,
    max_frame: usize,
) -> Result<Peer, TransportError> {
    let (mut tx, mut rx) = framed(conn.accept_bi().await, max_frame)?;
    let ekm = ekm(conn)?;
    let hello: Hello = decode(rx.recv().await?)?;
    if let Some((kind, reason)) = check_version(hello.version) {
        let _ = tx
            .send(&encode(&AcceptorReply::Refused(reason.clone()))?)
            .await;
        return Err(TransportError::Refused(kind, reason));
    }
    let (exchange, spake) = spake_start(me.secret, &ekm);
    let key = spake_finish(exchange, &hello.spake)?;
    tx.send(&encode(&AcceptorReply::Challenge {
        node: me.node,
        spake,
        confirm: confirm(&key, b"acceptor").as_ref().to_vec(),
    })?)
    .await?;
    let (their_confirm, cluster, name) = match decode::<DialerProof>(rx.recv().await?)? {
        DialerProof::Refused(reason) => {
            return Err(TransportError::Refused(Refusal::WrongSecret, reason))
        }
        DialerProof::Proof {
            confirm,
            cluster,
            name,
        } => (confirm, cluster, name),
    };
    if !confirmed(&key, b"dialer", &their_confirm) {
        let _ = tx
            .send(&encode(&Verdict::Refused(WRONG_SECRET.to_string()))?)
            .await;
        return Err(TransportError::Refused(
            Refusal::WrongSecret,
            WRONG_SECRET.to_string(),
        ));
    }
    // The peer proved the secret: only now may it learn our cluster name.
    if cluster != me.cluster {
        let _ = tx
            .send(&encode(&Verdict::OtherCluster(me.cluster.to_string()))?)
            .await;
        return Err(cluster_mismatch(me.cluster, &cluster));
    }
    tx.send(&encode(&Verdict::Welcome {
        cluster: me.cluster.to_string(),
        name: me.name.to_string(),
    })?)
    .await?;
    Ok(Peer {
        node: hello.node,
        name: taken(name),
    })
}
