//! The Origin check that runs before a WebSocket upgrade (CSRF protection for sockets).
//!
//! Same rules, same order as Rails: forgery protection disabled → accept; same origin as
//! the Host (scheme from TLS or `X-Forwarded-Proto`/`X-Forwarded-Ssl`) → accept; an origin on
//! the allow-list (exact strings, `*` wildcards, `/regex/`) → accept; anything else,
//! including a missing Origin, is refused before the upgrade.

use http::HeaderMap;
use regex::Regex;

/// One entry of the allow-list.
#[derive(Debug, Clone)]
enum Rule {
    Exact(String),
    Pattern(Regex),
}

/// A configuration entry of the allow-list could not be read.
#[derive(Debug, thiserror::Error)]
#[error("invalid allowed origin {entry:?}: {source}")]
pub struct OriginRuleError {
    entry: String,
    source: regex::Error,
}

/// Which `Origin` headers may open a cable connection.
#[derive(Debug, Clone)]
pub struct OriginPolicy {
    disabled: bool,
    allow_same_origin: bool,
    rules: Vec<Rule>,
}

fn normalize(origin: &str) -> String {
    origin.trim().trim_end_matches('/').to_ascii_lowercase()
}

impl OriginPolicy {
    /// Builds a policy. `allowed` entries are exact origins (`https://app.example`),
    /// wildcards (`https://*.example.com`, `*` matches within the host) or regular
    /// expressions between slashes (`/https?:\/\/localhost:\d+/`).
    pub fn new(
        disabled: bool,
        allow_same_origin: bool,
        allowed: &[String],
    ) -> Result<Self, OriginRuleError> {
        let mut rules = Vec::with_capacity(allowed.len());
        for entry in allowed {
            let e = entry.trim();
            let rule = if e.len() > 2 && e.starts_with('/') && e.ends_with('/') {
                let re =
                    Regex::new(&format!("^(?:{})$", &e[1..e.len() - 1])).map_err(|source| {
                        OriginRuleError {
                            entry: entry.clone(),
                            source,
                        }
                    })?;
                Rule::Pattern(re)
            } else if e.contains('*') {
                let body = normalize(e)
                    .split('*')
                    .map(regex::escape)
                    .collect::<Vec<_>>()
                    .join("[a-z0-9.-]*");
                let re = Regex::new(&format!("^{body}$")).map_err(|source| OriginRuleError {
                    entry: entry.clone(),
                    source,
                })?;
                Rule::Pattern(re)
            } else {
                Rule::Exact(normalize(e))
            };
            rules.push(rule);
        }
        Ok(OriginPolicy {
            disabled,
            allow_same_origin,
            rules,
        })
    }

    /// Whether a request with these headers may upgrade. `tls` says whether the request
    /// arrived over TLS on our own listener.
    pub fn allows(&self, headers: &HeaderMap, tls: bool) -> bool {
        if self.disabled {
            return true;
        }
        let Some(origin) = headers
            .get(http::header::ORIGIN)
            .and_then(|v| v.to_str().ok())
        else {
            return false;
        };
        let origin = normalize(origin);
        if self.allow_same_origin
            && let Some(host) = headers
                .get(http::header::HOST)
                .and_then(|v| v.to_str().ok())
        {
            {
                let header = |name: &str| {
                    headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                };
                let https = tls
                    || header("x-forwarded-proto")
                        .split(',')
                        .next()
                        .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"))
                    || header("x-forwarded-ssl").eq_ignore_ascii_case("on");
                let scheme = if https { "https" } else { "http" };
                if origin == format!("{scheme}://{}", host.trim().to_ascii_lowercase()) {
                    return true;
                }
            }
        }
        self.rules.iter().any(|rule| match rule {
            Rule::Exact(o) => *o == origin,
            Rule::Pattern(re) => re.is_match(&origin),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(o) = origin {
            h.insert(http::header::ORIGIN, o.parse().unwrap());
        }
        h.insert(http::header::HOST, host.parse().unwrap());
        h
    }

    fn policy(allowed: &[&str]) -> OriginPolicy {
        OriginPolicy::new(
            false,
            true,
            &allowed.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
        .unwrap()
    }

    #[test]
    fn same_origin_is_allowed_by_default() {
        let p = policy(&[]);
        assert!(p.allows(
            &headers(Some("http://app.test:3000"), "app.test:3000"),
            false
        ));
        assert!(!p.allows(&headers(Some("http://evil.test"), "app.test:3000"), false));
        assert!(!p.allows(
            &headers(Some("https://app.test:3000"), "app.test:3000"),
            false
        ));
        assert!(p.allows(
            &headers(Some("https://app.test:3000"), "app.test:3000"),
            true
        ));
    }

    #[test]
    fn forwarded_proto_makes_the_scheme_https() {
        let p = policy(&[]);
        let mut h = headers(Some("https://app.test"), "app.test");
        assert!(!p.allows(&h, false));
        h.insert("x-forwarded-proto", "https".parse().unwrap());
        assert!(p.allows(&h, false));
    }

    #[test]
    fn missing_origin_is_refused_unless_disabled() {
        assert!(!policy(&[]).allows(&headers(None, "app.test"), false));
        let off = OriginPolicy::new(true, true, &[]).unwrap();
        assert!(off.allows(&headers(None, "app.test"), false));
        assert!(off.allows(&headers(Some("http://evil.test"), "app.test"), false));
    }

    #[test]
    fn allow_list_exact_wildcard_and_regex() {
        let p = policy(&[
            "https://app.example/",
            "https://*.example.com",
            r"/http:\/\/localhost:\d+/",
        ]);
        let h = |o| headers(Some(o), "other.host");
        assert!(p.allows(&h("https://app.example"), false));
        assert!(p.allows(&h("HTTPS://APP.EXAMPLE"), false));
        assert!(p.allows(&h("https://a.example.com"), false));
        assert!(p.allows(&h("https://a.b.example.com"), false));
        assert!(!p.allows(&h("https://example.com.evil.test"), false));
        assert!(!p.allows(&h("https://a.example.com/x"), false));
        assert!(p.allows(&h("http://localhost:8080"), false));
        assert!(!p.allows(&h("http://localhost:8080.evil.test"), false));
        assert!(!p.allows(&h("https://evil.test"), false));
    }

    #[test]
    fn same_origin_can_be_turned_off() {
        let p = OriginPolicy::new(false, false, &[]).unwrap();
        assert!(!p.allows(&headers(Some("http://app.test"), "app.test"), false));
    }

    #[test]
    fn bad_regex_is_a_typed_error() {
        assert!(OriginPolicy::new(false, true, &["/(/".to_string()]).is_err());
    }
}
