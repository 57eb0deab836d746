//! What of the upgrade request the app sees (anycable-go's `server/headers_extractor.go`):
//! the absolute URL, the configured headers (`cookie` by default, filtered to the proxied
//! cookies when some are named) and `REMOTE_ADDR`.

use std::collections::BTreeMap;

use ferrocable_node::ConnectRequest;
use ferrocable_node::remote::Env;

use crate::RpcConfig;

/// The env of `request` under `config`.
pub(crate) fn env_of(request: &ConnectRequest, config: &RpcConfig) -> Env {
    let host = request
        .headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| request.uri.authority().map(|a| a.as_str()))
        .unwrap_or("localhost");
    let scheme = match request
        .headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
    {
        Some("https") | Some("wss") => "https",
        _ => match request.uri.scheme_str() {
            Some("https") | Some("wss") => "https",
            _ => "http",
        },
    };
    let path = request.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut headers = BTreeMap::new();
    for name in &config.headers {
        let values: Vec<&str> = request
            .headers
            .get_all(name.as_str())
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if values.is_empty() {
            continue;
        }
        let value = if name == "cookie" {
            cookies(&values, &config.proxy_cookies)
        } else {
            values.join(", ")
        };
        headers.insert(name.clone(), value);
    }
    if let Some(addr) = request.remote_addr {
        headers.insert("REMOTE_ADDR".into(), addr.ip().to_string());
    }
    Env {
        url: format!("{scheme}://{host}{path}"),
        headers,
    }
}

/// The cookie header, only with the named cookies when some are (`name=value;` joined, as
/// anycable-go writes it).
fn cookies(values: &[&str], keep: &[String]) -> String {
    if keep.is_empty() {
        return values.join("; ");
    }
    let mut out = String::new();
    for pair in values.iter().flat_map(|v| v.split(';')) {
        let pair = pair.trim();
        if let Some((name, _)) = pair.split_once('=')
            && keep.iter().any(|k| k == name)
        {
            out.push_str(pair);
            out.push(';');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> ConnectRequest {
        let mut r = ConnectRequest {
            uri: "/cable?token=1".parse().unwrap(),
            remote_addr: Some("10.0.0.7:5555".parse().unwrap()),
            ..ConnectRequest::default()
        };
        r.headers.insert("host", "example.com".parse().unwrap());
        r.headers.insert(
            "cookie",
            "_session_id=abc; tracking=xyz; other=1".parse().unwrap(),
        );
        r.headers.insert("x-api-token", "t0k".parse().unwrap());
        r.headers.insert("user-agent", "curl".parse().unwrap());
        r
    }

    #[test]
    fn the_default_forwards_cookie_and_remote_addr() {
        let env = env_of(&request(), &RpcConfig::default());
        assert_eq!(env.url, "http://example.com/cable?token=1");
        assert_eq!(
            env.headers,
            BTreeMap::from([
                (
                    "cookie".to_owned(),
                    "_session_id=abc; tracking=xyz; other=1".to_owned()
                ),
                ("REMOTE_ADDR".to_owned(), "10.0.0.7".to_owned()),
            ])
        );
    }

    #[test]
    fn named_headers_and_proxied_cookies_only() {
        let config = RpcConfig {
            headers: vec!["cookie".into(), "x-api-token".into()],
            proxy_cookies: vec!["_session_id".into()],
            ..RpcConfig::default()
        };
        let mut r = request();
        r.headers
            .insert("x-forwarded-proto", "https".parse().unwrap());
        let env = env_of(&r, &config);
        assert_eq!(env.url, "https://example.com/cable?token=1");
        assert_eq!(env.headers["cookie"], "_session_id=abc;");
        assert_eq!(env.headers["x-api-token"], "t0k");
        assert!(!env.headers.contains_key("user-agent"));
    }
}
