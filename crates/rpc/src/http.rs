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

/// A pooled HTTP/1.1 client for one RPC base URL.
#[derive(Debug)]
pub(crate) struct HttpTransport {
    client: Client<HttpConnector, Full<Bytes>>,
    /// `http://app:3000/_anycable`, without a trailing slash.
    base: String,
    /// The `Authorization: Bearer` value, if a secret is set.
    bearer: Option<http::HeaderValue>,
}

impl HttpTransport {
    pub(crate) fn new(base: &str, secret: Option<&str>) -> Result<Self, crate::RpcError> {
        if base.starts_with("https://") {
            return Err(crate::RpcError::Unsupported(
                "https:// RPC hosts (put the app's RPC on http:// inside the private network)",
            ));
        }
        let bearer = secret
            .map(|s| http::HeaderValue::from_str(&format!("Bearer {s}")))
            .transpose()
            .map_err(|_| crate::RpcError::BadSecret)?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(1)));
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
