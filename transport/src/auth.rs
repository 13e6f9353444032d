//! The peer handshake: both sides prove the shared secret (`masterauth`)
//! without sending it, bound to this TLS session.
//!
//! On the first bidirectional stream, opened by the dialer:
//! 1. dialer → `Hello { version, cluster, node, nonce_d }`
//! 2. acceptor → `Challenge { hello_a, proof_a }` or `Refused(reason)`
//! 3. dialer checks `proof_a`, → `Proof(proof_d)` or `Refused(reason)`
//! 4. acceptor checks `proof_d`, → `Welcome` or `Refused(reason)`
//!
//! `proof = HMAC-SHA256(secret, role ‖ ekm ‖ nonce_mine_first ‖ nonce_other)`,
//! where `ekm` is keying material exported from this TLS session. A relay
//! in the middle holds two different sessions, so it can forward proofs but
//! they will not verify: the handshake is safe without trusting certificates.

use ring::hmac;
use serde::{Deserialize, Serialize};

use crate::frame::{FrameReceiver, FrameSender};
use crate::TransportError;

pub const PROTOCOL_VERSION: u16 = 1;
const EKM_LABEL: &[u8] = b"EXPORTER-chorus-peer-auth";

#[derive(Debug, Serialize, Deserialize)]
pub struct Hello {
    pub version: u16,
    pub cluster: String,
    pub node: u64,
    pub nonce: [u8; 32],
}

#[derive(Debug, Serialize, Deserialize)]
enum AcceptorReply {
    Challenge { hello: Hello, proof: Vec<u8> },
    Refused(String),
}

#[derive(Debug, Serialize, Deserialize)]
enum DialerProof {
    Proof(Vec<u8>),
    Refused(String),
}

#[derive(Debug, Serialize, Deserialize)]
enum Verdict {
    Welcome,
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
    pub secret: &'a [u8],
}

fn ekm(conn: &quinn::Connection) -> Result<[u8; 32], TransportError> {
    let mut out = [0u8; 32];
    conn.export_keying_material(&mut out, EKM_LABEL, b"")
        .map_err(|_| TransportError::Tls("could not export keying material".into()))?;
    Ok(out)
}

fn nonce() -> Result<[u8; 32], TransportError> {
    let mut n = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut n)
        .map_err(|_| TransportError::Tls("no randomness for the handshake".into()))?;
    Ok(n)
}

fn proof(secret: &[u8], role: &[u8], ekm: &[u8], first: &[u8], second: &[u8]) -> hmac::Tag {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut ctx = hmac::Context::with_key(&key);
    for part in [role, ekm, first, second] {
        ctx.update(part);
    }
    ctx.sign()
}

fn verify(secret: &[u8], role: &[u8], ekm: &[u8], first: &[u8], second: &[u8], tag: &[u8]) -> bool {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let msg = [role, ekm, first, second].concat();
    hmac::verify(&key, &msg, tag).is_ok()
}

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

fn check_hello(me: &Identity<'_>, hello: &Hello) -> Option<(Refusal, String)> {
    if hello.version != PROTOCOL_VERSION {
        return Some((
            Refusal::Version,
            format!(
                "protocol version {} (this node speaks {PROTOCOL_VERSION})",
                hello.version
            ),
        ));
    }
    if hello.cluster != me.cluster {
        return Some((
            Refusal::ClusterMismatch,
            format!(
                "cluster-name '{}' differs from '{}'",
                hello.cluster, me.cluster
            ),
        ));
    }
    None
}

/// Runs the dialer's side; returns the peer's node id.
pub async fn dial(
    conn: &quinn::Connection,
    me: &Identity<'_>,
    max_frame: usize,
) -> Result<u64, TransportError> {
    explain_close(conn, dial_steps(conn, me, max_frame).await)
}

/// A handshake cut short by the peer closing the connection reports the
/// refusal the peer put in its close frame, not just "connection lost".
fn explain_close(
    conn: &quinn::Connection,
    result: Result<u64, TransportError>,
) -> Result<u64, TransportError> {
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
) -> Result<u64, TransportError> {
    let (mut tx, mut rx) = framed(conn.open_bi().await, max_frame)?;
    let ekm = ekm(conn)?;
    let my_nonce = nonce()?;
    tx.send(&encode(&Hello {
        version: PROTOCOL_VERSION,
        cluster: me.cluster.to_string(),
        node: me.node,
        nonce: my_nonce,
    })?)
    .await?;
    let (hello, their_proof) = match decode::<AcceptorReply>(rx.recv().await?)? {
        AcceptorReply::Refused(reason) => {
            return Err(TransportError::Refused(Refusal::Protocol, reason))
        }
        AcceptorReply::Challenge { hello, proof } => (hello, proof),
    };
    if let Some((kind, reason)) = check_hello(me, &hello) {
        let _ = tx
            .send(&encode(&DialerProof::Refused(reason.clone()))?)
            .await;
        return Err(TransportError::Refused(kind, reason));
    }
    if !verify(
        me.secret,
        b"acceptor",
        &ekm,
        &my_nonce,
        &hello.nonce,
        &their_proof,
    ) {
        let reason = "peer could not prove the shared secret (masterauth)".to_string();
        let _ = tx
            .send(&encode(&DialerProof::Refused(reason.clone()))?)
            .await;
        return Err(TransportError::Refused(Refusal::WrongSecret, reason));
    }
    let mine = proof(me.secret, b"dialer", &ekm, &hello.nonce, &my_nonce);
    tx.send(&encode(&DialerProof::Proof(mine.as_ref().to_vec()))?)
        .await?;
    match decode::<Verdict>(rx.recv().await?)? {
        Verdict::Welcome => Ok(hello.node),
        Verdict::Refused(reason) => Err(TransportError::Refused(Refusal::WrongSecret, reason)),
    }
}

/// Runs the acceptor's side; returns the peer's node id.
pub async fn accept(
    conn: &quinn::Connection,
    me: &Identity<'_>,
    max_frame: usize,
) -> Result<u64, TransportError> {
    explain_close(conn, accept_steps(conn, me, max_frame).await)
}

async fn accept_steps(
    conn: &quinn::Connection,
    me: &Identity<'_>,
    max_frame: usize,
) -> Result<u64, TransportError> {
    let (mut tx, mut rx) = framed(conn.accept_bi().await, max_frame)?;
    let ekm = ekm(conn)?;
    let hello: Hello = decode(rx.recv().await?)?;
    if let Some((kind, reason)) = check_hello(me, &hello) {
        let _ = tx
            .send(&encode(&AcceptorReply::Refused(reason.clone()))?)
            .await;
        return Err(TransportError::Refused(kind, reason));
    }
    let my_nonce = nonce()?;
    let mine = proof(me.secret, b"acceptor", &ekm, &hello.nonce, &my_nonce);
    tx.send(&encode(&AcceptorReply::Challenge {
        hello: Hello {
            version: PROTOCOL_VERSION,
            cluster: me.cluster.to_string(),
            node: me.node,
            nonce: my_nonce,
        },
        proof: mine.as_ref().to_vec(),
    })?)
    .await?;
    let their_proof = match decode::<DialerProof>(rx.recv().await?)? {
        DialerProof::Refused(reason) => {
            return Err(TransportError::Refused(Refusal::WrongSecret, reason))
        }
        DialerProof::Proof(p) => p,
    };
    if !verify(
        me.secret,
        b"dialer",
        &ekm,
        &my_nonce,
        &hello.nonce,
        &their_proof,
    ) {
        let reason = "peer could not prove the shared secret (masterauth)".to_string();
        let _ = tx.send(&encode(&Verdict::Refused(reason.clone()))?).await;
        return Err(TransportError::Refused(Refusal::WrongSecret, reason));
    }
    tx.send(&encode(&Verdict::Welcome)?).await?;
    Ok(hello.node)
}
