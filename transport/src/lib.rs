//! `chorus-transport`: authenticated peer links over QUIC. It carries opaque
//! frames and knows nothing of keys, commands or replication.
//!
//! - TLS 1.3 always on (quinn + rustls with the ring provider only).
//! - Before any data flows, both peers prove the shared secret and agree on
//!   the cluster name ([`auth`]); a refused peer is counted in [`AuthStats`].
//! - A link carries independent streams ([`StreamKind::Live`] for deltas,
//!   [`StreamKind::Bulk`] for state transfer), so neither blocks the other.
//! - [`peer::Backoff`] spaces reconnects with exponential backoff and jitter.
//! - The UDP socket is behind quinn's `AsyncUdpSocket`, so a simulation can
//!   run the same stack over a simulated network ([`Transport::with_socket`]).

pub mod auth;
pub mod frame;
pub mod gate;
pub mod peer;
pub mod tls;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use quinn::{AsyncUdpSocket, Endpoint, EndpointConfig, Runtime};
use tracing::{debug, warn};

pub use auth::Refusal;
pub use frame::{FrameReceiver, FrameSender, DEFAULT_MAX_FRAME};
pub use gate::{MAX_PENDING_HANDSHAKES, MAX_PENDING_PER_SOURCE};

/// The largest handshake message: a peer that has proved nothing yet gets
/// no more than this of our memory per stream.
pub const HANDSHAKE_MAX_FRAME: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("TLS setup failed: {0}")]
    Tls(String),
    #[error("could not bind the replication socket: {0}")]
    Bind(String),
    #[error("connection failed: {0}")]
    Connect(String),
    #[error("handshake failed: {0}")]
    Handshake(String),
    #[error("peer refused ({0:?}): {1}")]
    Refused(Refusal, String),
    #[error("stream error: {0}")]
    Stream(String),
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    FrameTooLarge { len: usize, max: usize },
    #[error("handshake timed out")]
    Timeout,
    #[error("configuration: {0}")]
    Config(String),
}

/// Who this node is to its peers, and the link limits.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    pub node: u64,
    /// Peers must carry the same cluster name.
    pub cluster_name: String,
    /// This node's name as configured, told to authenticated peers
    /// (see [`auth::valid_name`]); may be empty.
    pub node_name: String,
    /// The shared secret (`masterauth`); never sent over the wire. May be
    /// empty when `tls` is set.
    pub secret: Vec<u8>,
    /// Mutual TLS: this node's certificate and key and the peers' CA.
    pub tls: Option<tls::TlsFiles>,
    pub max_frame: usize,
    pub handshake_timeout: Duration,
    /// A link with no packets for this long is dead.
    pub idle_timeout: Duration,
    pub keep_alive: Duration,
    /// Bytes a stream may have in flight (QUIC's flow-control window): a
    /// link carries at most this much per round trip, so it must cover the
    /// bandwidth-delay product (1 Gbit/s at 200 ms is 25 MB).
    pub window: u64,
    pub congestion: Congestion,
}

/// How a link paces what it sends (QUIC congestion control).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Congestion {
    Cubic,
    /// Paces by the measured bandwidth and round trip rather than by loss:
    /// steadier on long links with random loss.
    Bbr,
    NewReno,
}

impl std::str::FromStr for Congestion {
    type Err = String;

    fn from_str(s: &str) -> Result<Congestion, String> {
        match s.to_ascii_lowercase().as_str() {
            "cubic" => Ok(Congestion::Cubic),
            "bbr" => Ok(Congestion::Bbr),
            "newreno" => Ok(Congestion::NewReno),
            _ => Err(format!(
                "unknown congestion control '{s}' (cubic, bbr or newreno)"
            )),
        }
    }
}

impl std::fmt::Display for Congestion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Congestion::Cubic => "cubic",
            Congestion::Bbr => "bbr",
            Congestion::NewReno => "newreno",
        })
    }
}

/// Socket buffers asked for: a burst of a long link's packets overflows
/// the default (about 200 KB), the kernel drops what does not fit, and the
/// congestion control takes the drops for a congested path. The kernel
/// caps the size at `net.core.rmem_max`/`wmem_max` (docs/operations.md).
const SOCKET_BUFFER: usize = 16 << 20;

/// Asks for `bytes` of receive and send buffer on `socket`; logs what the
/// kernel granted when it is less.
fn grow_socket_buffers(socket: &std::net::UdpSocket, bytes: usize) {
    use std::os::fd::AsRawFd;
    let fd = socket.as_raw_fd();
    for (option, name) in [(libc::SO_RCVBUF, "receive"), (libc::SO_SNDBUF, "send")] {
        let want = bytes as libc::c_int;
        // SAFETY: a valid socket descriptor, an int option of the right size.
        let set = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                option,
                (&want as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        let mut got: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: as above, with room for the answer.
        let read = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                option,
                (&mut got as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        // Linux reports twice the size asked (its bookkeeping).
        if set != 0 || read != 0 || (got as usize) < bytes {
            tracing::info!(
                "replication socket {name} buffer is {} KB of the {} KB asked for; raise net.core.{}mem_max for long links",
                got / 1024 / 2,
                bytes / 1024,
                if option == libc::SO_RCVBUF { "r" } else { "w" }
            );
        }
    }
}

/// The default [`TransportConfig::window`]: fills 1 Gbit/s at 200 ms.
pub const DEFAULT_WINDOW: u64 = 32 << 20;

impl TransportConfig {
    pub fn new(node: u64, cluster_name: &str, secret: &[u8]) -> TransportConfig {
        TransportConfig {
            node,
            cluster_name: cluster_name.to_string(),
            node_name: String::new(),
            secret: secret.to_vec(),
            tls: None,
            max_frame: DEFAULT_MAX_FRAME,
            handshake_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(10),
            keep_alive: Duration::from_secs(1),
            window: DEFAULT_WINDOW,
            congestion: Congestion::Cubic,
        }
    }
}

/// Handshake outcomes, for INFO.
#[derive(Debug, Default)]
pub struct AuthStats {
    pub accepted: AtomicU64,
    pub refused_wrong_secret: AtomicU64,
    pub refused_cluster: AtomicU64,
    /// TLS handshakes that failed on a certificate (wrong CA, none given).
    pub refused_certificate: AtomicU64,
    pub refused_other: AtomicU64,
    /// Connections refused before a handshake by [`gate`]'s limits.
    pub refused_limit: AtomicU64,
}

impl AuthStats {
    fn count<T>(&self, result: &Result<T, TransportError>) {
        match result {
            Ok(_) => {
                self.accepted.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => self.count_refusal(e),
        }
    }

    fn count_refusal(&self, e: &TransportError) {
        let counter = match e {
            TransportError::Refused(Refusal::WrongSecret, _) => &self.refused_wrong_secret,
            TransportError::Refused(Refusal::ClusterMismatch, _) => &self.refused_cluster,
            TransportError::Refused(Refusal::Certificate, _) => &self.refused_certificate,
            _ => &self.refused_other,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The kinds of stream a link carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// Live deltas, in order.
    Live,
    /// Bulk state transfer.
    Bulk,
}

impl StreamKind {
    fn tag(self) -> u8 {
        match self {
            StreamKind::Live => 1,
            StreamKind::Bulk => 2,
        }
    }

    fn from_tag(tag: u8) -> Option<StreamKind> {
        match tag {
            1 => Some(StreamKind::Live),
            2 => Some(StreamKind::Bulk),
            _ => None,
        }
    }
}

/// A QUIC handshake failure; one on a certificate is a refusal.
fn quic_failure(addr: SocketAddr, e: quinn::ConnectionError) -> TransportError {
    let text = e.to_string();
    if text.contains("certificate") {
        TransportError::Refused(Refusal::Certificate, format!("{addr}: {text}"))
    } else {
        TransportError::Connect(format!("{addr}: {text}"))
    }
}

/// This node's QUIC endpoint: dials peers and accepts them.
pub struct Transport {
    endpoint: Endpoint,
    config: Arc<TransportConfig>,
    pub stats: Arc<AuthStats>,
    /// Inbound handshakes in progress, each on its own task, so that a
    /// connection that says nothing holds up no other.
    pending: tokio::sync::Mutex<Accepting>,
}

struct Accepting {
    tasks: tokio::task::JoinSet<(gate::Source, Result<PeerLink, TransportError>)>,
    gate: gate::Gate,
}

/// An authenticated connection to one peer.
#[derive(Clone)]
pub struct PeerLink {
    conn: quinn::Connection,
    /// The peer's node id, as it proved in the handshake.
    pub peer_node: u64,
    /// The peer's name as it configured it (empty: none).
    pub peer_name: String,
    max_frame: usize,
}

impl Transport {
    /// Binds a UDP socket at `addr` (port 0 for any) and listens for peers.
    pub fn bind(addr: SocketAddr, config: TransportConfig) -> Result<Transport, TransportError> {
        let socket = std::net::UdpSocket::bind(addr)
            .map_err(|e| TransportError::Bind(format!("{addr}: {e}")))?;
        grow_socket_buffers(&socket, SOCKET_BUFFER);
        let runtime: Arc<dyn Runtime> = Arc::new(quinn::TokioRuntime);
        let socket = runtime
            .wrap_udp_socket(socket)
            .map_err(|e| TransportError::Bind(e.to_string()))?;
        Transport::with_socket(socket, runtime, EndpointConfig::default(), config)
    }

    /// Builds the endpoint over any `AsyncUdpSocket` and runtime (a simulated
    /// network, a fixed RNG seed in `endpoint_config`).
    pub fn with_socket(
        socket: Arc<dyn AsyncUdpSocket>,
        runtime: Arc<dyn Runtime>,
        endpoint_config: EndpointConfig,
        config: TransportConfig,
    ) -> Result<Transport, TransportError> {
        if config.secret.is_empty() && config.tls.is_none() {
            return Err(TransportError::Config(
                "peers must authenticate: set a shared secret (masterauth) or certificates \
                 (tls-cert-file, tls-key-file, tls-ca-cert-file)"
                    .into(),
            ));
        }
        let mut link_config = quinn::TransportConfig::default();
        link_config.keep_alive_interval(Some(config.keep_alive));
        link_config.max_idle_timeout(Some(
            config
                .idle_timeout
                .try_into()
                .map_err(|_| TransportError::Config("idle timeout too large".into()))?,
        ));
        let window = quinn::VarInt::from_u64(config.window)
            .map_err(|_| TransportError::Config("window too large".into()))?;
        // A link has a few streams (live, back, a transfer's bulk): the
        // connection may fill the window on two at once.
        let connection_window = quinn::VarInt::from_u64(config.window.saturating_mul(2))
            .map_err(|_| TransportError::Config("window too large".into()))?;
        link_config.stream_receive_window(window);
        link_config.receive_window(connection_window);
        link_config.send_window(config.window.saturating_mul(2));
        match config.congestion {
            Congestion::Cubic => {
                link_config.congestion_controller_factory(Arc::new(
                    quinn::congestion::CubicConfig::default(),
                ));
            }
            Congestion::Bbr => {
                link_config.congestion_controller_factory(Arc::new(
                    quinn::congestion::BbrConfig::default(),
                ));
            }
            Congestion::NewReno => {
                link_config.congestion_controller_factory(Arc::new(
                    quinn::congestion::NewRenoConfig::default(),
                ));
            }
        }
        let link_config = Arc::new(link_config);

        let mutual = config.tls.as_ref().map(tls::MutualTls::load).transpose()?;
        let server_crypto =
            quinn::crypto::rustls::QuicServerConfig::try_from(tls::server_config(mutual.as_ref())?)
                .map_err(|e| TransportError::Tls(e.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
        server.transport_config(link_config.clone());
        let client_crypto =
            quinn::crypto::rustls::QuicClientConfig::try_from(tls::client_config(mutual.as_ref())?)
                .map_err(|e| TransportError::Tls(e.to_string()))?;
        let mut client = quinn::ClientConfig::new(Arc::new(client_crypto));
        client.transport_config(link_config);

        let mut endpoint =
            Endpoint::new_with_abstract_socket(endpoint_config, Some(server), socket, runtime)
                .map_err(|e| TransportError::Bind(e.to_string()))?;
        endpoint.set_default_client_config(client);
        Ok(Transport {
            endpoint,
            config: Arc::new(config),
            stats: Arc::new(AuthStats::default()),
            pending: tokio::sync::Mutex::new(Accepting {
                tasks: tokio::task::JoinSet::new(),
                gate: gate::Gate::default(),
            }),
        })
    }

    pub fn local_addr(&self) -> Result<SocketAddr, TransportError> {
        self.endpoint
            .local_addr()
            .map_err(|e| TransportError::Bind(e.to_string()))
    }

    pub fn node(&self) -> u64 {
        self.config.node
    }

    fn identity(&self) -> auth::Identity<'_> {
        identity(&self.config)
    }

    /// Dials a peer and runs the handshake.
    pub async fn connect(&self, addr: SocketAddr) -> Result<PeerLink, TransportError> {
        let connecting = self
            .endpoint
            .connect(addr, "chorus-peer")
            .map_err(|e| TransportError::Connect(format!("{addr}: {e}")))?;
        let attempt = async {
            let conn = connecting.await.map_err(|e| quic_failure(addr, e))?;
            let node = auth::dial(&conn, &self.identity(), HANDSHAKE_MAX_FRAME).await;
            Ok::<_, TransportError>((conn, node))
        };
        let (conn, node) = tokio::time::timeout(self.config.handshake_timeout, attempt)
            .await
            .map_err(|_| TransportError::Timeout)??;
        self.finish_handshake(conn, node, addr)
    }

    /// The next peer that connected and passed the handshake; `Err` for one
    /// that did not (it is already closed and counted). `None` once closed.
    /// Handshakes run concurrently, each bounded by the handshake timeout,
    /// within the limits of [`gate`].
    pub async fn accept(&self) -> Option<Result<PeerLink, TransportError>> {
        let mut pending = self.pending.lock().await;
        let Accepting { tasks, gate } = &mut *pending;
        loop {
            tokio::select! {
                biased;
                Some(done) = tasks.join_next() => {
                    let Ok((source, result)) = done else {
                        // A handshake task cannot panic short of a bug;
                        // its slot stays taken rather than guessed at.
                        return Some(Err(TransportError::Handshake("a handshake task failed".into())));
                    };
                    gate.finished(source, result.is_err(), tokio::time::Instant::now());
                    return Some(result);
                }
                incoming = self.endpoint.accept() => {
                    let incoming = incoming?;
                    let ip = incoming.remote_address().ip();
                    match gate.admit(ip, tokio::time::Instant::now()) {
                        Ok(source) => {
                            let (config, stats) = (self.config.clone(), self.stats.clone());
                            tasks.spawn(async move {
                                (source, handshake(incoming, config, stats).await)
                            });
                        }
                        Err(why) => {
                            // Not a warning each: a flood would flood the log.
                            debug!(peer = %incoming.remote_address(), "{}; refused", why.as_str());
                            self.stats.refused_limit.fetch_add(1, Ordering::Relaxed);
                            incoming.refuse();
                        }
                    }
                }
            }
        }
    }

    fn finish_handshake(
        &self,
        conn: quinn::Connection,
        node: Result<auth::Peer, TransportError>,
        addr: SocketAddr,
    ) -> Result<PeerLink, TransportError> {
        finish_handshake(&self.config, &self.stats, conn, node, addr)
    }

    /// Closes every link and stops accepting.
    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"shutdown");
    }
}

fn identity(config: &TransportConfig) -> auth::Identity<'_> {
    auth::Identity {
        cluster: &config.cluster_name,
        node: config.node,
        name: &config.node_name,
        secret: &config.secret,
    }
}

/// One inbound handshake, on its own task.
async fn handshake(
    incoming: quinn::Incoming,
    config: Arc<TransportConfig>,
    stats: Arc<AuthStats>,
) -> Result<PeerLink, TransportError> {
    let addr = incoming.remote_address();
    let attempt = async {
        let conn = incoming.await.map_err(|e| quic_failure(addr, e))?;
        let node = auth::accept(&conn, &identity(&config), HANDSHAKE_MAX_FRAME).await;
        Ok::<_, TransportError>((conn, node))
    };
    match tokio::time::timeout(config.handshake_timeout, attempt).await {
        Err(_) => Err(TransportError::Timeout),
        Ok(Err(e)) => {
            // Refused before our handshake began (TLS): count it too.
            stats.count_refusal(&e);
            warn!(peer = %addr, "refused replication peer: {e}");
            Err(e)
        }
        Ok(Ok((conn, node))) => finish_handshake(&config, &stats, conn, node, addr),
    }
}

fn finish_handshake(
    config: &TransportConfig,
    stats: &AuthStats,
    conn: quinn::Connection,
    node: Result<auth::Peer, TransportError>,
    addr: SocketAddr,
) -> Result<PeerLink, TransportError> {
    stats.count(&node);
    match node {
        Ok(peer) => Ok(PeerLink {
            conn,
            peer_node: peer.node,
            peer_name: peer.name,
            max_frame: config.max_frame,
        }),
        Err(e) => {
            warn!(peer = %addr, "refused replication peer: {e}");
            let (code, reason) = match &e {
                TransportError::Refused(kind, reason) => (kind.close_code(), reason.clone()),
                other => (Refusal::Protocol.close_code(), other.to_string()),
            };
            conn.close(code.into(), reason.as_bytes());
            Err(e)
        }
    }
}

impl PeerLink {
    /// Opens a stream of `kind` to the peer.
    pub async fn open(&self, kind: StreamKind) -> Result<FrameSender, TransportError> {
        let mut send = self
            .conn
            .open_uni()
            .await
            .map_err(|e| TransportError::Stream(e.to_string()))?;
        // The tag also makes the stream visible to the peer at once.
        send.write_all(&[kind.tag()])
            .await
            .map_err(|e| TransportError::Stream(e.to_string()))?;
        Ok(FrameSender::new(send, self.max_frame))
    }

    /// The next stream the peer opened.
    pub async fn accept_stream(&self) -> Result<(StreamKind, FrameReceiver), TransportError> {
        let mut recv = self
            .conn
            .accept_uni()
            .await
            .map_err(|e| TransportError::Stream(e.to_string()))?;
        let tag = FrameReceiver::read_tag(&mut recv).await?;
        let kind = StreamKind::from_tag(tag)
            .ok_or_else(|| TransportError::Stream(format!("unknown stream kind {tag}")))?;
        Ok((kind, FrameReceiver::new(recv, self.max_frame)))
    }

    pub fn remote_address(&self) -> SocketAddr {
        self.conn.remote_address()
    }

    pub fn close(&self, reason: &str) {
        self.conn.close(0u32.into(), reason.as_bytes());
    }

    /// Resolves when the link is closed, by either side or by idleness.
    pub async fn closed(&self) -> String {
        self.conn.closed().await.to_string()
    }

    /// Smoothed round-trip time.
    pub fn rtt(&self) -> Duration {
        self.conn.rtt()
    }
}
