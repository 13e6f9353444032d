//! TLS for peer links: always on, TLS 1.3 only, ring provider only.
//!
//! Two ways for peers to authenticate each other:
//! - By the shared-secret handshake in [`crate::auth`], bound to the TLS
//!   session: the certificate is then a fresh self-signed one and the dialer
//!   does not judge it (it proves nothing the secret does not prove better).
//! - By mutual TLS: each node presents a certificate its peers' CA signed,
//!   and requires one from them. Peers are dialed by address, so the name
//!   in the certificate is not checked (as Redis does not): the CA is the
//!   membership list.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::TransportError;

/// The ALPN protocol peers speak; a non-Chorus QUIC client fails the handshake.
pub const ALPN: &[u8] = b"chorus-peer/1";

/// ring's suites, every one of them (client TLS on `tls-port` shares this
/// provider and takes TLS 1.2 too), with AES-128-GCM moved first (ring's
/// own order puts AES-256 first): every replicated write is sealed, and
/// AES-128's 10 rounds against AES-256's 14 make that cheaper while its
/// 128-bit security is TLS 1.3's own baseline (RFC 8446 makes it the one
/// suite every implementation must offer). Both ends prefer it, so links
/// negotiate it.
pub fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(provider)
}

/// A fresh self-signed certificate and its key.
pub fn self_signed() -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), TransportError> {
    let certified = rcgen::generate_simple_self_signed(vec!["chorus-peer".to_string()])
        .map_err(|e| TransportError::Tls(format!("certificate generation failed: {e}")))?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    Ok((certified.cert.der().clone(), key))
}

/// Where a node's certificate, key and its peers' CA are (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// Loaded certificates for mutual TLS.
#[derive(Debug, Clone)]
pub struct MutualTls {
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    roots: Arc<RootCertStore>,
}

fn pem_error(what: &str, path: &Path, e: impl std::fmt::Display) -> TransportError {
    TransportError::Tls(format!("{what} {}: {e}", path.display()))
}

impl MutualTls {
    pub fn load(files: &TlsFiles) -> Result<MutualTls, TransportError> {
        let chain = CertificateDer::pem_file_iter(&files.cert)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| pem_error("tls-cert-file", &files.cert, e))?;
        if chain.is_empty() {
            return Err(pem_error(
                "tls-cert-file",
                &files.cert,
                "no certificate in it",
            ));
        }
        let key = PrivateKeyDer::from_pem_file(&files.key)
            .map_err(|e| pem_error("tls-key-file", &files.key, e))?;
        let mut roots = RootCertStore::empty();
        let cas = CertificateDer::pem_file_iter(&files.ca)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| pem_error("tls-ca-cert-file", &files.ca, e))?;
        for ca in cas {
            roots
                .add(ca)
                .map_err(|e| pem_error("tls-ca-cert-file", &files.ca, e))?;
        }
        if roots.is_empty() {
            return Err(pem_error(
                "tls-ca-cert-file",
                &files.ca,
                "no certificate in it",
            ));
        }
        Ok(MutualTls {
            chain,
            key: Arc::new(key),
            roots: Arc::new(roots),
        })
    }
}

fn tls_error(e: impl std::fmt::Display) -> TransportError {
    TransportError::Tls(e.to_string())
}

/// The acceptor's TLS: a fresh self-signed certificate and no client
/// certificate (`None`), or mutual TLS.
pub fn server_config(mutual: Option<&MutualTls>) -> Result<rustls::ServerConfig, TransportError> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?;
    let mut config = match mutual {
        None => {
            let (cert, key) = self_signed()?;
            builder
                .with_no_client_auth()
                .with_single_cert(vec![cert], key)
        }
        Some(m) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                m.roots.clone(),
                provider(),
            )
            .build()
            .map_err(tls_error)?;
            builder
                .with_client_cert_verifier(verifier)
                .with_single_cert(m.chain.clone(), m.key.clone_key())
        }
    }
    .map_err(tls_error)?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// The dialer's TLS, to match [`server_config`].
pub fn client_config(mutual: Option<&MutualTls>) -> Result<rustls::ClientConfig, TransportError> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?;
    let mut config = match mutual {
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SecretAuthenticated(provider)))
            .with_no_client_auth(),
        Some(m) => {
            let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
                m.roots.clone(),
                provider,
            )
            .build()
            .map_err(tls_error)?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(SignedByCa(inner)))
                .with_client_auth_cert(m.chain.clone(), m.key.clone_key())
                .map_err(tls_error)?
        }
    };
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// Checks the peer's chain against the CA, but not the name in it: peers
/// are dialed by address and the CA alone decides membership.
#[derive(Debug)]
struct SignedByCa(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for SignedByCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Accepts any server certificate: identity is proven afterwards by the
/// secret, over this very session. Signatures are still checked, so the
/// session keys belong to whoever holds the certificate's key.
#[derive(Debug)]
struct SecretAuthenticated(Arc<CryptoProvider>);

impl ServerCertVerifier for SecretAuthenticated {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// PEM certificates for a mesh that authenticates by mutual TLS.
#[derive(Debug)]
pub struct ClusterCerts {
    pub ca_cert: String,
    pub ca_key: String,
    /// (certificate, key) per node.
    pub nodes: Vec<(String, String)>,
    /// (certificate, key) per client of `tls-port`: client authentication
    /// only.
    pub clients: Vec<(String, String)>,
}

/// A fresh CA and `nodes` node certificates it signed (each good for both
/// ends of a link, and for clients on `tls-port` reaching the node by one
/// of `hosts`: DNS names or IP addresses). For operators (`chorus
/// gen-certs`) and tests.
pub fn generate_cluster(
    cluster: &str,
    nodes: usize,
    clients: usize,
    hosts: &[String],
) -> Result<ClusterCerts, TransportError> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    let fail = |e: rcgen::Error| TransportError::Tls(format!("certificate generation failed: {e}"));
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("{cluster} peer CA"));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().map_err(fail)?;
    let ca_key_pem = ca_key.serialize_pem();
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).map_err(fail)?;
    let mut out = Vec::with_capacity(nodes);
    for i in 1..=nodes {
        let name = format!("{cluster}-node-{i}");
        let names: Vec<String> = std::iter::once(name.clone())
            .chain(hosts.iter().cloned())
            .collect();
        let mut params = CertificateParams::new(names).map_err(fail)?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().map_err(fail)?;
        let cert = params.signed_by(&key, &ca).map_err(fail)?;
        out.push((cert.pem(), key.serialize_pem()));
    }
    let mut client_certs = Vec::with_capacity(clients);
    for i in 1..=clients {
        let name = format!("{cluster}-client-{i}");
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().map_err(fail)?;
        let cert = params.signed_by(&key, &ca).map_err(fail)?;
        client_certs.push((cert.pem(), key.serialize_pem()));
    }
    Ok(ClusterCerts {
        ca_cert: ca.pem(),
        ca_key: ca_key_pem,
        nodes: out,
        clients: client_certs,
    })
}

/// Writes [`generate_cluster`]'s files into `dir`: `ca.pem`, `ca.key`,
/// `node-N.pem`, `node-N.key`, `client-N.pem`, `client-N.key` (keys
/// readable by the owner only).
pub fn write_cluster(
    dir: &Path,
    cluster: &str,
    nodes: usize,
    clients: usize,
    hosts: &[String],
) -> Result<Vec<PathBuf>, TransportError> {
    let certs = generate_cluster(cluster, nodes, clients, hosts)?;
    let io =
        |path: &Path, e: std::io::Error| TransportError::Tls(format!("{}: {e}", path.display()));
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let mut files = vec![
        (dir.join("ca.pem"), certs.ca_cert, false),
        (dir.join("ca.key"), certs.ca_key, true),
    ];
    for (i, (cert, key)) in certs.nodes.into_iter().enumerate() {
        files.push((dir.join(format!("node-{}.pem", i + 1)), cert, false));
        files.push((dir.join(format!("node-{}.key", i + 1)), key, true));
    }
    for (i, (cert, key)) in certs.clients.into_iter().enumerate() {
        files.push((dir.join(format!("client-{}.pem", i + 1)), cert, false));
        files.push((dir.join(format!("client-{}.key", i + 1)), key, true));
    }
    let mut written = Vec::new();
    for (path, text, secret) in files {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        if secret {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        #[cfg(not(unix))]
        let _ = secret;
        let mut file = options.open(&path).map_err(|e| io(&path, e))?;
        std::io::Write::write_all(&mut file, text.as_bytes()).map_err(|e| io(&path, e))?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both ends prefer AES-128-GCM (see [`provider`]), so a link is
    /// sealed with it: ring's order would make it AES-256-GCM.
    #[test]
    fn peers_negotiate_aes_128_gcm() {
        let server = Arc::new(server_config(None).unwrap());
        let client = Arc::new(client_config(None).unwrap());
        let name = ServerName::try_from("chorus-peer").unwrap();
        let mut dialer = rustls::ClientConnection::new(client, name).unwrap();
        let mut acceptor = rustls::ServerConnection::new(server).unwrap();
        let mut flights = 0;
        while dialer.is_handshaking() || acceptor.is_handshaking() {
            flights += 1;
            assert!(flights < 10, "the handshake did not end");
            let mut bytes = Vec::new();
            dialer.write_tls(&mut bytes).unwrap();
            acceptor.read_tls(&mut bytes.as_slice()).unwrap();
            acceptor.process_new_packets().unwrap();
            bytes.clear();
            acceptor.write_tls(&mut bytes).unwrap();
            dialer.read_tls(&mut bytes.as_slice()).unwrap();
            dialer.process_new_packets().unwrap();
        }
        let aes_128 = Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
        assert_eq!(dialer.negotiated_cipher_suite().map(|s| s.suite()), aes_128);
        assert_eq!(
            acceptor.negotiated_cipher_suite().map(|s| s.suite()),
            aes_128
        );
    }

    /// The reordering keeps every suite ring offers (the TLS 1.2 ones
    /// too, when the server enables them for clients on `tls-port`), only
    /// AES-128-GCM moved first.
    #[test]
    fn the_provider_keeps_every_suite_of_rings() {
        let suites = |p: &CryptoProvider| -> Vec<rustls::CipherSuite> {
            p.cipher_suites.iter().map(|s| s.suite()).collect()
        };
        let ours = suites(&provider());
        let rings = suites(&rustls::crypto::ring::default_provider());
        assert_eq!(ours[0], rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
        let sorted = |mut v: Vec<rustls::CipherSuite>| {
            v.sort_by_key(|s| u16::from(*s));
            v
        };
        assert_eq!(sorted(ours), sorted(rings));
    }
}
