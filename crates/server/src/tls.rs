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

#[cfg(feature = "tls")]
fn tls_error(
    what: impl Into<String>,
    source: impl std::error::Error + Send + Sync + 'static,
) -> StartError {
    StartError::Tls {
        what: what.into(),
        source: std::sync::Arc::new(source),
    }
}

/// A TLS acceptor for the PEM certificate chain `cert` and private key `key`.
#[cfg(feature = "tls")]
pub(crate) fn acceptor(cert: &Path, key: &Path) -> Result<Acceptor, StartError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| tls_error(format!("certificate {}", cert.display()), e))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| tls_error(format!("key {}", key.display()), e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error("protocol versions", e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| tls_error("certificate and key", e))?;
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
