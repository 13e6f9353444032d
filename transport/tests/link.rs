//! Real QUIC between endpoints on 127.0.0.1: handshakes, refusals, streams,
//! reconnects and the bounded queue.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chorus_transport::peer::Backoff;
use chorus_transport::{Refusal, StreamKind, Transport, TransportConfig, TransportError};

const LOOPBACK: &str = "127.0.0.1:0";
const WAIT: Duration = Duration::from_secs(10);

fn node(id: u64, cluster: &str, secret: &[u8]) -> Transport {
    let mut config = TransportConfig::new(id, cluster, secret);
    config.handshake_timeout = Duration::from_secs(3);
    Transport::bind(LOOPBACK.parse().unwrap(), config).expect("bind")
}

#[tokio::test]
async fn peers_with_the_secret_exchange_frames_on_separate_streams() {
    let a = node(1, "prod", b"s3cret");
    let b = Arc::new(node(2, "prod", b"s3cret"));
    let b_addr = b.local_addr().unwrap();
    let acceptor = {
        let b = b.clone();
        tokio::spawn(async move { b.accept().await.expect("endpoint open") })
    };
    let link = a.connect(b_addr).await.expect("handshake");
    assert_eq!(link.peer_node, 2);
    let theirs = tokio::time::timeout(WAIT, acceptor)
        .await
        .unwrap()
        .unwrap()
        .expect("accepted");
    assert_eq!(theirs.peer_node, 1);

    let mut live = link.open(StreamKind::Live).await.unwrap();
    let mut bulk = link.open(StreamKind::Bulk).await.unwrap();
    // A large bulk frame does not hold up the live stream.
    let big = vec![7u8; 4 * 1024 * 1024];
    let bulk_send = tokio::spawn(async move {
        bulk.send(&big).await.unwrap();
        bulk.finish().unwrap();
    });
    for i in 0..50u32 {
        live.send(&i.to_be_bytes()).await.unwrap();
    }
    let batch: Vec<[u8; 4]> = (50..100u32).map(|i| i.to_be_bytes()).collect();
    live.send_batch(&batch).await.unwrap();
    live.finish().unwrap();

    let mut got_live = Vec::new();
    let mut got_bulk = None;
    for _ in 0..2 {
        let (kind, mut rx) = tokio::time::timeout(WAIT, theirs.accept_stream())
            .await
            .unwrap()
            .unwrap();
        match kind {
            StreamKind::Live => {
                while let Some(frame) = rx.recv().await.unwrap() {
                    got_live.push(u32::from_be_bytes(frame[..].try_into().unwrap()));
                }
            }
            StreamKind::Bulk => {
                got_bulk = rx.recv().await.unwrap();
                assert!(rx.recv().await.unwrap().is_none());
            }
        }
    }
    bulk_send.await.unwrap();
    assert_eq!(
        got_live,
        (0..100).collect::<Vec<_>>(),
        "in order, none lost"
    );
    assert_eq!(got_bulk.map(|b| b.len()), Some(4 * 1024 * 1024));
    assert_eq!(a.stats.accepted.load(Ordering::Relaxed), 1);
    assert_eq!(b.stats.accepted.load(Ordering::Relaxed), 1);
}

async fn handshake(
    a: &Transport,
    b: Arc<Transport>,
) -> (Result<u64, TransportError>, Result<u64, TransportError>) {
    let addr = b.local_addr().unwrap();
    // The accepted link lives until the dialer is done: dropping it closes
    // the connection, which could cut the dialer's last handshake step.
    let acceptor = tokio::spawn(async move { b.accept().await.expect("endpoint open") });
    let dialed = a.connect(addr).await.map(|l| l.peer_node);
    let accepted = tokio::time::timeout(WAIT, acceptor)
        .await
        .unwrap()
        .unwrap()
        .map(|l| l.peer_node);
    (dialed, accepted)
}

#[tokio::test]
async fn a_wrong_secret_is_refused_on_both_sides_and_counted() {
    let a = node(1, "prod", b"right");
    let b = Arc::new(node(2, "prod", b"wrong"));
    let (dialed, accepted) = handshake(&a, b.clone()).await;
    assert!(
        matches!(
            dialed,
            Err(TransportError::Refused(Refusal::WrongSecret, _))
        ),
        "{dialed:?}"
    );
    assert!(accepted.is_err(), "{accepted:?}");
    assert_eq!(a.stats.refused_wrong_secret.load(Ordering::Relaxed), 1);
    assert_eq!(b.stats.accepted.load(Ordering::Relaxed), 0);
    assert_eq!(
        b.stats.refused_wrong_secret.load(Ordering::Relaxed)
            + b.stats.refused_other.load(Ordering::Relaxed),
        1
    );
}

/// #11 item 6: a peer that does not know the secret learns nothing of the
/// node it dials: not its cluster name (the refusal used to name it), and,
/// with the handshake a password-authenticated key exchange, no proof
/// derived from the secret that it could test guesses against offline.
#[tokio::test]
async fn a_peer_without_the_secret_learns_nothing_of_the_cluster() {
    let intruder = node(9, "guessing", b"not-the-secret");
    let victim = Arc::new(node(2, "payments-eu", b"the-real-secret"));
    let (dialed, accepted) = handshake(&intruder, victim.clone()).await;
    let told = format!("{dialed:?}");
    assert!(
        matches!(
            dialed,
            Err(TransportError::Refused(Refusal::WrongSecret, _))
        ),
        "{told}"
    );
    assert!(
        !told.contains("payments-eu"),
        "the cluster name leaked: {told}"
    );
    assert!(accepted.is_err());
    assert_eq!(victim.stats.refused_cluster.load(Ordering::Relaxed), 0);
    assert_eq!(victim.stats.accepted.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_different_cluster_name_is_refused() {
    let a = node(1, "prod", b"s");
    let b = Arc::new(node(2, "staging", b"s"));
    let (dialed, accepted) = handshake(&a, b.clone()).await;
    assert!(
        matches!(dialed, Err(TransportError::Refused(_, ref why)) if why.contains("cluster-name")),
        "{dialed:?}"
    );
    assert!(
        matches!(
            accepted,
            Err(TransportError::Refused(Refusal::ClusterMismatch, _))
        ),
        "{accepted:?}"
    );
    assert_eq!(b.stats.refused_cluster.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn no_secret_no_transport() {
    let err = Transport::bind(LOOPBACK.parse().unwrap(), TransportConfig::new(1, "c", b"")).err();
    assert!(matches!(err, Some(TransportError::Config(_))));
}

#[tokio::test]
async fn a_dialer_that_never_finishes_the_handshake_gets_no_link() {
    let b = Arc::new({
        let mut c = TransportConfig::new(2, "prod", b"s");
        c.handshake_timeout = Duration::from_millis(300);
        Transport::bind(LOOPBACK.parse().unwrap(), c).unwrap()
    });
    let addr = b.local_addr().unwrap();
    let acceptor = {
        let b = b.clone();
        tokio::spawn(async move { b.accept().await.expect("open").map(|l| l.peer_node) })
    };
    // This dialer gives up once it has sent its first packet, long before
    // it could prove anything: its connect is dropped after one poll (a
    // 1 ms handshake timeout sometimes finished in time on loopback).
    let impatient = Transport::bind(
        LOOPBACK.parse().unwrap(),
        TransportConfig::new(9, "prod", b"s"),
    )
    .unwrap();
    assert!(
        tokio::time::timeout(Duration::ZERO, impatient.connect(addr))
            .await
            .is_err(),
        "a handshake cannot finish in one poll"
    );
    let accepted = tokio::time::timeout(WAIT, acceptor).await.unwrap().unwrap();
    assert!(accepted.is_err());
    assert_eq!(b.stats.accepted.load(Ordering::Relaxed), 0);
}

/// A bare QUIC client that completes TLS with a node and then never says a
/// word of the peer handshake.
fn silent_client() -> quinn::Endpoint {
    let mut silent = quinn::Endpoint::client(LOOPBACK.parse().unwrap()).unwrap();
    let crypto = chorus_transport::tls::client_config(None).unwrap();
    silent.set_default_client_config(quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(crypto).unwrap(),
    )));
    silent
}

/// #11 item 7: handshakes ran one at a time inside `accept`, so one
/// connection that never says anything held every other peer out until its
/// handshake timed out.
#[tokio::test]
async fn a_silent_connection_does_not_hold_other_peers_out() {
    let b = Arc::new({
        let mut c = TransportConfig::new(2, "prod", b"s");
        c.handshake_timeout = Duration::from_secs(4);
        Transport::bind(LOOPBACK.parse().unwrap(), c).unwrap()
    });
    let addr = b.local_addr().unwrap();
    let acceptor = {
        let b = b.clone();
        tokio::spawn(async move {
            loop {
                match b.accept().await {
                    Some(Ok(link)) => return Some(link.peer_node),
                    Some(Err(_)) => continue,
                    None => return None,
                }
            }
        })
    };
    // A QUIC client that completes TLS, then never sends a word.
    let silent = silent_client();
    let _held = silent.connect(addr, "chorus-peer").unwrap().await.unwrap();
    // A real peer, which gives up after one second, still gets in.
    let mut patient = TransportConfig::new(1, "prod", b"s");
    patient.handshake_timeout = Duration::from_secs(1);
    let a = Transport::bind(LOOPBACK.parse().unwrap(), patient).unwrap();
    let link = a.connect(addr).await.expect("the real peer links at once");
    assert_eq!(link.peer_node, 2);
    let accepted = tokio::time::timeout(WAIT, acceptor).await.unwrap().unwrap();
    assert_eq!(accepted, Some(1));
}

/// Named bounds (#11): connections that never finish the handshake hold at
/// most `MAX_PENDING_PER_SOURCE` handshakes open from one source (and
/// `MAX_PENDING_HANDSHAKES` from all, see `gate`'s unit tests); any beyond
/// are refused at once instead of queueing (or growing the set of tasks).
/// One party can thus not take every slot from the others.
#[tokio::test]
async fn silent_connections_beyond_the_per_source_limit_are_refused_at_once() {
    use chorus_transport::MAX_PENDING_PER_SOURCE;
    let b = Arc::new({
        let mut c = TransportConfig::new(2, "prod", b"s");
        c.handshake_timeout = Duration::from_secs(60);
        Transport::bind(LOOPBACK.parse().unwrap(), c).unwrap()
    });
    let addr = b.local_addr().unwrap();
    let acceptor = {
        let b = b.clone();
        tokio::spawn(async move { while b.accept().await.is_some() {} })
    };
    let silent = silent_client();
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..MAX_PENDING_PER_SOURCE + 8 {
        let connecting = silent.connect(addr, "chorus-peer").unwrap();
        match tokio::time::timeout(WAIT, connecting)
            .await
            .expect("answered at once")
        {
            Ok(conn) => held.push(conn),
            Err(_) => refused += 1,
        }
    }
    assert_eq!(held.len(), MAX_PENDING_PER_SOURCE);
    assert_eq!(refused, 8);
    assert_eq!(b.stats.refused_limit.load(Ordering::Relaxed), 8);
    acceptor.abort();
}

/// Review of #11 item 6: each connection is one online guess at the
/// secret, and guesses were limited only by the handshakes in progress
/// (thousands a second). A source that keeps failing now waits: a burst,
/// then one try per refill; the right secret from it gets in once it has.
#[tokio::test]
async fn a_source_that_keeps_guessing_wrong_is_slowed_to_a_trickle() {
    use chorus_transport::gate::{FAILURE_BURST, FAILURE_REFILL};
    let b = Arc::new(node(2, "prod", b"the-secret"));
    let addr = b.local_addr().unwrap();
    let acceptor = {
        let b = b.clone();
        tokio::spawn(async move { while b.accept().await.is_some() {} })
    };
    let guesser = node(9, "prod", b"a-guess");
    // Failures are recorded as the acceptor finishes each handshake, and
    // the budget refills meanwhile: the limit bites at the burst or a
    // little after on a slow machine, never before.
    let mut guesses = 0;
    loop {
        let started = tokio::time::Instant::now();
        match guesser.connect(addr).await {
            Err(TransportError::Connect(_)) => {
                assert!(started.elapsed() < FAILURE_REFILL, "refused at once");
                break;
            }
            Err(_) => guesses += 1,
            Ok(_) => panic!("a wrong secret got in"),
        }
        assert!(guesses <= FAILURE_BURST + 20, "never slowed");
    }
    assert!(guesses >= FAILURE_BURST, "slowed after {guesses} guesses");
    assert_eq!(b.stats.refused_limit.load(Ordering::Relaxed), 1);
    // A guess still finishing when the limit bit costs one refill more.
    let peer = node(1, "prod", b"the-secret");
    let mut linked = None;
    for _ in 0..4 {
        tokio::time::sleep(FAILURE_REFILL).await;
        if let Ok(link) = peer.connect(addr).await {
            linked = Some(link.peer_node);
            break;
        }
    }
    assert_eq!(
        linked,
        Some(2),
        "the right secret gets in after a refill or two"
    );
    acceptor.abort();
}

#[tokio::test]
async fn oversized_frames_are_refused() {
    let mut small = TransportConfig::new(1, "prod", b"s");
    small.max_frame = 1024;
    let a = Transport::bind(LOOPBACK.parse().unwrap(), small.clone()).unwrap();
    let mut small_b = small;
    small_b.node = 2;
    let b = Arc::new(Transport::bind(LOOPBACK.parse().unwrap(), small_b).unwrap());
    let (link, theirs) = linked(&a, b).await;
    let mut tx = link.open(StreamKind::Live).await.unwrap();
    assert!(matches!(
        tx.send(&[0u8; 2048]).await,
        Err(TransportError::FrameTooLarge { .. })
    ));
    tx.send(b"fits").await.unwrap();
    let (_, mut rx) = theirs.accept_stream().await.unwrap();
    assert_eq!(rx.recv().await.unwrap().as_deref(), Some(&b"fits"[..]));
}

/// A dialed link from `a` to `b` and `b`'s side of it.
async fn linked(
    a: &Transport,
    b: Arc<Transport>,
) -> (chorus_transport::PeerLink, chorus_transport::PeerLink) {
    let addr = b.local_addr().unwrap();
    let acceptor = tokio::spawn(async move { b.accept().await.unwrap().unwrap() });
    let link = a.connect(addr).await.unwrap();
    (link, acceptor.await.unwrap())
}

#[tokio::test]
async fn pre_framed_chunks_arrive_as_frames_and_a_cut_frame_is_an_error() {
    let a = node(1, "prod", b"s");
    let (link, theirs) = linked(&a, Arc::new(node(2, "prod", b"s"))).await;

    // Three frames laid out by the caller, split across two chunks mid-frame.
    let mut wire = bytes::BytesMut::new();
    for payload in [&b"one"[..], b"", &[9u8; 5000]] {
        chorus_transport::frame::append_framed(&mut wire, payload);
    }
    let wire = wire.freeze();
    let mut tx = link.open(StreamKind::Live).await.unwrap();
    tx.send_framed(&mut [wire.slice(..5), wire.slice(5..)])
        .await
        .unwrap();
    // Then a frame whose payload never comes.
    let mut cut = 10u32.to_be_bytes().to_vec();
    cut.extend_from_slice(b"abc");
    tx.send_framed(&mut [bytes::Bytes::from(cut)])
        .await
        .unwrap();
    tx.finish().unwrap();

    let (_, mut rx) = theirs.accept_stream().await.unwrap();
    assert_eq!(rx.recv().await.unwrap().as_deref(), Some(&b"one"[..]));
    assert_eq!(rx.recv().await.unwrap().as_deref(), Some(&b""[..]));
    assert_eq!(rx.recv().await.unwrap().map(|f| f.len()), Some(5000));
    let err = rx.recv().await.unwrap_err();
    assert!(err.to_string().contains("inside a frame"), "{err}");
}

/// A message larger than a fragment crosses as several and arrives whole,
/// whichever way it was sent; a message over the receiver's limit is
/// refused however it is cut up.
#[tokio::test]
async fn messages_larger_than_a_fragment_arrive_whole() {
    use chorus_transport::frame::{append_framed, MAX_FRAGMENT};
    let mut config = TransportConfig::new(1, "prod", b"s");
    config.max_frame = 8 * MAX_FRAGMENT;
    let a = Transport::bind(LOOPBACK.parse().unwrap(), config.clone()).unwrap();
    let mut config_b = config;
    config_b.node = 2;
    let b = Arc::new(Transport::bind(LOOPBACK.parse().unwrap(), config_b).unwrap());
    let (link, theirs) = linked(&a, b).await;
    let big: Vec<u8> = (0..3 * MAX_FRAGMENT + 17)
        .map(|i| (i % 251) as u8)
        .collect();
    let exact = vec![7u8; MAX_FRAGMENT];
    let mut tx = link.open(StreamKind::Live).await.unwrap();
    // Flow control holds the sender until the receiver reads: send apart.
    let sending = {
        let (big, exact) = (big.clone(), exact.clone());
        tokio::spawn(async move {
            tx.send(&big).await.unwrap();
            tx.send_batch(&[&b"small"[..], &big, &exact]).await.unwrap();
            let mut wire = bytes::BytesMut::new();
            append_framed(&mut wire, &big);
            tx.send_framed(&mut [wire.freeze()]).await.unwrap();
            // Over the limit: refused by the sender...
            assert!(matches!(
                tx.send(&vec![0u8; 8 * MAX_FRAGMENT + 1]).await,
                Err(TransportError::FrameTooLarge { .. })
            ));
            // ...and by the receiver, when a sender lays it out itself.
            let mut over = bytes::BytesMut::new();
            append_framed(&mut over, &vec![1u8; 8 * MAX_FRAGMENT + 1]);
            let _ = tx.send_framed(&mut [over.freeze()]).await;
            tx
        })
    };
    let (_, mut rx) = theirs.accept_stream().await.unwrap();
    assert_eq!(rx.recv().await.unwrap().as_deref(), Some(&big[..]));
    assert_eq!(rx.recv().await.unwrap().as_deref(), Some(&b"small"[..]));
    assert_eq!(rx.recv().await.unwrap().as_deref(), Some(&big[..]));
    assert_eq!(rx.recv().await.unwrap().as_deref(), Some(&exact[..]));
    assert_eq!(rx.recv().await.unwrap().as_deref(), Some(&big[..]));
    assert!(matches!(
        rx.recv().await,
        Err(TransportError::FrameTooLarge { .. })
    ));
    drop(rx);
    let _ = tokio::time::timeout(Duration::from_secs(5), sending).await;
}

#[test]
fn backoff_grows_to_its_cap_with_jitter() {
    let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    let delays: Vec<Duration> = (0..10).map(|_| b.next_delay()).collect();
    assert!(delays[0] >= Duration::from_millis(50) && delays[0] < Duration::from_millis(150));
    assert!(delays.iter().all(|d| *d < Duration::from_secs(3)));
    assert!(delays[9] >= Duration::from_secs(1), "{delays:?}");
    b.reset();
    assert!(b.next_delay() < Duration::from_millis(150));
}

/// A directory of certificates, removed when the test is done with it.
struct CertDir(std::path::PathBuf);

impl std::ops::Deref for CertDir {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for CertDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes a fresh CA and `n` node certificates into a new directory.
fn cluster_certs(tag: &str, n: usize) -> CertDir {
    let dir = CertDir(std::env::temp_dir().join(format!(
        "chorus-transport-{tag}-{}-{}",
        std::process::id(),
        rand_suffix()
    )));
    chorus_transport::tls::write_cluster(&dir, "prod", n, 0, &[]).expect("certificates");
    dir
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::AtomicU64;
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn mtls_node(
    id: u64,
    certs: &std::path::Path,
    node: usize,
    ca_from: &std::path::Path,
) -> Transport {
    let mut config = TransportConfig::new(id, "prod", b"");
    config.handshake_timeout = Duration::from_secs(3);
    config.tls = Some(chorus_transport::tls::TlsFiles {
        cert: certs.join(format!("node-{node}.pem")),
        key: certs.join(format!("node-{node}.key")),
        ca: ca_from.join("ca.pem"),
    });
    Transport::bind(LOOPBACK.parse().unwrap(), config).expect("bind")
}

#[tokio::test]
async fn peers_with_certificates_from_one_ca_link_without_a_secret() {
    let certs = cluster_certs("mtls", 2);
    let a = mtls_node(1, &certs, 1, &certs);
    let b = Arc::new(mtls_node(2, &certs, 2, &certs));
    let (dialed, accepted) = handshake(&a, b.clone()).await;
    assert_eq!(dialed.expect("dialed"), 2);
    assert_eq!(accepted.expect("accepted"), 1);
    assert_eq!(b.stats.accepted.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused_either_way_and_counted() {
    let (ours, theirs) = (cluster_certs("ours", 2), cluster_certs("theirs", 1));
    // The foreign node trusts our CA but holds a certificate from its own.
    let foreign = mtls_node(9, &theirs, 1, &ours);
    let b = Arc::new(mtls_node(2, &ours, 2, &ours));
    let (dialed, accepted) = handshake(&foreign, b.clone()).await;
    assert!(dialed.is_err(), "{dialed:?}");
    assert!(
        matches!(
            accepted,
            Err(TransportError::Refused(Refusal::Certificate, _))
        ),
        "{accepted:?}"
    );
    assert_eq!(b.stats.refused_certificate.load(Ordering::Relaxed), 1);
    assert_eq!(b.stats.accepted.load(Ordering::Relaxed), 0);

    // Dialing a node whose certificate our CA did not sign fails too.
    let a = mtls_node(1, &ours, 1, &ours);
    let foreign = Arc::new(mtls_node(9, &theirs, 1, &theirs));
    let (dialed, _) = handshake(&a, foreign).await;
    assert!(
        matches!(
            dialed,
            Err(TransportError::Refused(Refusal::Certificate, _))
        ),
        "{dialed:?}"
    );
    assert_eq!(a.stats.accepted.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_peer_without_a_certificate_is_refused_by_a_mutual_tls_node() {
    let certs = cluster_certs("nocert", 1);
    let plain = node(1, "prod", b"s3cret");
    let b = Arc::new(mtls_node(2, &certs, 1, &certs));
    let (dialed, accepted) = handshake(&plain, b.clone()).await;
    assert!(dialed.is_err(), "{dialed:?}");
    assert!(
        matches!(
            accepted,
            Err(TransportError::Refused(Refusal::Certificate, _))
        ),
        "{accepted:?}"
    );
}

#[tokio::test]
async fn bad_certificate_files_are_named_in_the_error() {
    let certs = cluster_certs("badfiles", 1);
    let mut config = TransportConfig::new(1, "prod", b"");
    config.tls = Some(chorus_transport::tls::TlsFiles {
        cert: certs.join("missing.pem"),
        key: certs.join("node-1.key"),
        ca: certs.join("ca.pem"),
    });
    let err = Transport::bind(LOOPBACK.parse().unwrap(), config.clone())
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("tls-cert-file") && err.to_string().contains("missing.pem"),
        "{err}"
    );
    config.tls = Some(chorus_transport::tls::TlsFiles {
        cert: certs.join("node-1.pem"),
        key: certs.join("ca.pem"),
        ca: certs.join("ca.pem"),
    });
    let err = Transport::bind(LOOPBACK.parse().unwrap(), config.clone())
        .err()
        .unwrap();
    assert!(err.to_string().contains("tls-key-file"), "{err}");
    config.tls = None;
    let err = Transport::bind(LOOPBACK.parse().unwrap(), config)
        .err()
        .unwrap();
    assert!(err.to_string().contains("masterauth"), "{err}");
}
