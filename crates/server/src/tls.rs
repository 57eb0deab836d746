//! TLS on the cable's own listener (`wss://`), with rustls: the `tls` feature. Without it,
//! a configured certificate is a start-up error naming the feature.

use std::path::Path;
#[cfg(feature = "tls")]
use std::sync::Arc;

use crate::StartError;

/// What accepts TLS on a connection.
#[cfg(feature = "tls")]
pub(crate) type Acceptor = tokio_rustls::TlsAcceptor;

/// What accepts TLS on a connection: nothing in a build without the `tls` feature.
#[cfg(not(feature = "tls"))]
#[derive(Debug)]
pub(crate) enum Acceptor {}

/// A TLS acceptor for the PEM certificate chain `cert` and private key `key`.
#[cfg(feature = "tls")]
pub(crate) fn acceptor(cert: &Path, key: &Path) -> Result<Acceptor, StartError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| StartError::Tls(format!("certificate {}: {e}", cert.display())))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| StartError::Tls(format!("key {}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StartError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| StartError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Acceptor::from(Arc::new(config)))
}

/// A build without the `tls` feature refuses a configured certificate.
#[cfg(not(feature = "tls"))]
pub(crate) fn acceptor(cert: &Path, _key: &Path) -> Result<Acceptor, StartError> {
    Err(StartError::NotBuilt {
        what: format!("TLS (certificate {})", cert.display()),
        feature: "tls",
    })
}
