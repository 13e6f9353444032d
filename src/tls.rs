//! TLS for clients (`tls-port`), as Redis offers it: the node's certificate
//! and key (`tls-cert-file`, `tls-key-file`, the same files that secure the
//! peer links), and client certificates checked against `tls-ca-cert-file`
//! as `tls-auth-clients` says. TLS 1.2 and 1.3, on rustls and ring.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;

/// `tls-auth-clients`: whether a TLS client must present a certificate the
/// CA signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientAuth {
    /// `yes` (Redis's default): a client without one is refused.
    #[default]
    Required,
    /// `optional`: one is checked if presented.
    Optional,
    /// `no`: none is asked for.
    No,
}

impl ClientAuth {
    pub fn parse(text: &str) -> Option<ClientAuth> {
        match text.to_ascii_lowercase().as_str() {
            "yes" => Some(ClientAuth::Required),
            "optional" => Some(ClientAuth::Optional),
            "no" => Some(ClientAuth::No),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ClientAuth::Required => "yes",
            ClientAuth::Optional => "optional",
            ClientAuth::No => "no",
        }
    }
}

/// Why the client TLS settings cannot be used: the file and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{directive} {path}: {why}")]
pub struct TlsError {
    directive: &'static str,
    path: String,
    why: String,
}

fn failed(directive: &'static str, path: &Path, why: impl std::fmt::Display) -> TlsError {
    TlsError {
        directive,
        path: path.display().to_string(),
        why: why.to_string(),
    }
}

fn certs(directive: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| failed(directive, path, e))?;
    if certs.is_empty() {
        return Err(failed(directive, path, "no certificate in it"));
    }
    Ok(certs)
}

/// The acceptor for `tls-port`: `cert` and `key` name this node, `ca`
/// checks client certificates unless `auth` is [`ClientAuth::No`].
pub fn acceptor(
    cert: &Path,
    key: &Path,
    ca: &Path,
    auth: ClientAuth,
) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
    let chain = certs("tls-cert-file", cert)?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| failed("tls-key-file", key, e))?;
    let builder = rustls::ServerConfig::builder_with_provider(chorus_transport::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| failed("tls-cert-file", cert, e))?;
    let builder = match auth {
        ClientAuth::No => builder.with_no_client_auth(),
        ClientAuth::Required | ClientAuth::Optional => {
            let mut roots = RootCertStore::empty();
            for c in certs("tls-ca-cert-file", ca)? {
                roots
                    .add(c)
                    .map_err(|e| failed("tls-ca-cert-file", ca, e))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                chorus_transport::tls::provider(),
            );
            let verifier = if auth == ClientAuth::Optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .map_err(|e| failed("tls-ca-cert-file", ca, e))?,
            )
        }
    };
    let config = builder
        .with_single_cert(chain, key_der)
        .map_err(|e| failed("tls-key-file", key, e))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
