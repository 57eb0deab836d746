//! The HTTP transport: `POST <rpc_host>/connect|command|disconnect` with a JSON body and the
//! Bearer secret, as anycable-go's `rpc/http.go` and the Rails-mounted `/_anycable` speak it.

use std::time::Duration;

use bytes::Bytes;
use ferrocable_node::remote::CallError;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Largest reply body read (a reply carries the app's transmissions, rendered HTML included).
pub(crate) const MAX_REPLY_BYTES: usize = 8 * 1024 * 1024;

/// What the client dials with: TCP, and TLS for `https://` when built with the `tls` feature.
#[cfg(feature = "tls")]
type Connector = hyper_rustls::HttpsConnector<HttpConnector>;
#[cfg(not(feature = "tls"))]
type Connector = HttpConnector;

/// A pooled HTTP/1.1 client for one RPC base URL.
#[derive(Debug)]
pub(crate) struct HttpTransport {
    client: Client<Connector, Full<Bytes>>,
    /// `http://app:3000/_anycable`, without a trailing slash.
    base: String,
    /// The `Authorization: Bearer` value, if a secret is set.
    bearer: Option<http::HeaderValue>,
}

impl HttpTransport {
    pub(crate) fn new(
        base: &str,
        secret: Option<&str>,
        root_ca: Option<&std::path::Path>,
    ) -> Result<Self, crate::RpcError> {
        #[cfg(not(feature = "tls"))]
        if base.starts_with("https://") {
            let _ = root_ca;
            return Err(crate::RpcError::Unsupported(
                "https:// RPC hosts in a build without the `tls` feature",
            ));
        }
        let bearer = secret
            .map(|s| http::HeaderValue::from_str(&format!("Bearer {s}")))
            .transpose()
            .map_err(|_| crate::RpcError::BadSecret)?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(1)));
        #[cfg(feature = "tls")]
        let connector = tls_connector(connector, root_ca)?;
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(HttpTransport {
            client,
            base: base.trim_end_matches('/').to_owned(),
            bearer,
        })
    }

    /// Posts `body` to `<base>/<path>` and returns the reply's body.
    pub(crate) async fn post(
        &self,
        path: &str,
        body: Bytes,
        sid: Option<&str>,
        timeout: Duration,
    ) -> Result<Bytes, CallError> {
        let mut request = http::Request::post(format!("{}/{path}", self.base))
            .header(http::header::CONTENT_TYPE, "application/json")
            .header("x-anycable-meta-protov", "v1");
        if let Some(bearer) = &self.bearer {
            request = request.header(http::header::AUTHORIZATION, bearer.clone());
        }
        if let Some(sid) = sid {
            request = request.header("x-anycable-meta-sid", sid);
        }
        let request = request
            .body(Full::new(body))
            .map_err(|e| CallError::BadReply(format!("request: {e}")))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| CallError::Unavailable(Box::new(e)))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_REPLY_BYTES)
                .collect()
                .await
                .map_err(|e| CallError::BadReply(format!("reading the reply: {e}")))?
                .to_bytes();
            match status.as_u16() {
                200 | 201 => Ok(body),
                401 | 403 => Err(CallError::Unauthenticated),
                400 | 422 => Err(CallError::BadReply(format!(
                    "HTTP {status}: {}",
                    String::from_utf8_lossy(&body[..body.len().min(200)])
                ))),
                _ => Err(CallError::BadReply(format!("HTTP {status}"))),
            }
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(CallError::Timeout),
        }
    }
}

/// TLS for `https://` hosts (plain TCP stays for `http://`): the deployment's root CA when
/// given, else the webpki roots; ring, TLS 1.2 and 1.3.
#[cfg(feature = "tls")]
fn tls_connector(
    mut http: HttpConnector,
    root_ca: Option<&std::path::Path>,
) -> Result<Connector, crate::RpcError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    http.enforce_http(false);
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| crate::RpcError::Tls(e.to_string()))?;
    let config = match root_ca {
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| crate::RpcError::Tls(format!("root CA {}: {e}", path.display())))?;
            for cert in certs {
                roots.add(cert).map_err(|e| {
                    crate::RpcError::Tls(format!("root CA {}: {e}", path.display()))
                })?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => builder
            .with_root_certificates(rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            })
            .with_no_client_auth(),
    };
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http))
}
