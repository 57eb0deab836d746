//! RPC settings, with anycable-go's names and defaults (`rpc/config.go`).

use std::time::Duration;

use crate::breaker::BreakerPolicy;

/// How ferrocable calls the app.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcConfig {
    /// `http(s)://app:3000/_anycable` (HTTP RPC) or `host:port` / `grpc://host:port` (gRPC)
    /// (`ANYCABLE_RPC_HOST`).
    pub host: String,
    /// The Bearer secret of HTTP RPC (`ANYCABLE_HTTP_RPC_SECRET`, or derived from
    /// `ANYCABLE_SECRET` with [`derive_secret`] and `"rpc-cable"`). `None`: no header.
    pub secret: Option<String>,
    /// Request headers forwarded with every call, lower-cased (`ANYCABLE_HEADERS`; default
    /// `cookie`). `REMOTE_ADDR` is always added.
    pub headers: Vec<String>,
    /// Only these cookies are forwarded (`ANYCABLE_PROXY_COOKIES`; empty: all).
    pub proxy_cookies: Vec<String>,
    /// Calls that may run at once, shared by connect, command and disconnect
    /// (`ANYCABLE_RPC_CONCURRENCY`; 28, just under Ruby's pool of 30).
    pub concurrency: usize,
    /// Deadline of one attempt (`ANYCABLE_RPC_REQUEST_TIMEOUT`, ms; 3,000 for HTTP).
    pub request_timeout: Duration,
    /// Deadline of a whole call: waiting for a slot, attempts and back-off
    /// (`ANYCABLE_COMMAND_TIMEOUT`-like; 3,000 ms).
    pub call_timeout: Duration,
    /// First back-off after an unavailable app; doubles with each retry (100 ms).
    pub retry_base: Duration,
    /// Disconnect calls per second at most (100).
    pub disconnect_rate: u32,
    /// Disconnect calls waiting at most; beyond it they are dropped and counted (4,096).
    pub disconnect_backlog: usize,
    /// Disconnect calls run at once while draining at shutdown (16).
    pub drain_concurrency: usize,
    /// The HTTP transport's circuit breaker.
    pub breaker: BreakerPolicy,
    /// PEM root certificates that an `https://` RPC host's certificate must chain to
    /// (`ANYCABLE_RPC_TLS_ROOT_CA`); `None`: the webpki roots.
    pub tls_root_ca: Option<std::path::PathBuf>,
}

impl Default for RpcConfig {
    fn default() -> Self {
        RpcConfig {
            host: "localhost:50051".into(),
            secret: None,
            headers: vec!["cookie".into()],
            proxy_cookies: Vec::new(),
            concurrency: 28,
            request_timeout: Duration::from_secs(3),
            call_timeout: Duration::from_secs(3),
            retry_base: Duration::from_millis(100),
            disconnect_rate: 100,
            disconnect_backlog: 4096,
            drain_concurrency: 16,
            breaker: BreakerPolicy::default(),
            tls_root_ca: None,
        }
    }
}

impl RpcConfig {
    /// Whether the host selects HTTP RPC (`http://` or `https://`); anything else is gRPC.
    pub fn is_http(&self) -> bool {
        self.host.starts_with("http://") || self.host.starts_with("https://")
    }
}

/// A secret derived from the application secret as AnyCable does: lower-case hex of
/// HMAC-SHA256(key = `secret`, message = `purpose`), e.g. `"rpc-cable"` or `"broadcast-cable"`.
pub fn derive_secret(secret: impl AsRef<[u8]>, purpose: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_ref());
    let tag = ring::hmac::sign(&key, purpose.as_bytes());
    tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_derived_secret_is_hex_hmac_sha256() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            derive_secret("Jefe", "what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(derive_secret("s", "rpc-cable").len(), 64);
        assert_ne!(
            derive_secret("s", "rpc-cable"),
            derive_secret("s", "broadcast-cable")
        );
    }

    #[test]
    fn the_scheme_selects_the_transport() {
        let mut c = RpcConfig {
            host: "http://localhost:3000/_anycable".into(),
            ..RpcConfig::default()
        };
        assert!(c.is_http());
        c.host = "localhost:50051".into();
        assert!(!c.is_http());
    }
}
