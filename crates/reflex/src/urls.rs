//! URL helpers that work outside a request, like Rails' `default_url_options`: renders done
//! for broadcasts (no request, no Host header) still produce absolute links.

/// The scheme, host and port absolute URLs use when no request says otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlOptions {
    /// `http` or `https`.
    pub scheme: String,
    /// Host name.
    pub host: String,
    /// Port; omitted from URLs when it is the scheme's default.
    pub port: Option<u16>,
}

impl Default for UrlOptions {
    fn default() -> Self {
        UrlOptions {
            scheme: "http".into(),
            host: "localhost".into(),
            port: Some(3000),
        }
    }
}

impl UrlOptions {
    /// The origin, e.g. `https://app.example` or `http://localhost:3000`.
    pub fn origin(&self) -> String {
        let default_port = matches!(
            (self.scheme.as_str(), self.port),
            ("http", Some(80)) | ("https", Some(443)) | (_, None)
        );
        match self.port {
            Some(port) if !default_port => format!("{}://{}:{port}", self.scheme, self.host),
            _ => format!("{}://{}", self.scheme, self.host),
        }
    }

    /// An absolute URL for `path` (a leading `/` is added when missing).
    pub fn url_for(&self, path: &str) -> String {
        if path.starts_with('/') {
            format!("{}{path}", self.origin())
        } else {
            format!("{}/{path}", self.origin())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_urls_without_a_request() {
        assert_eq!(
            UrlOptions::default().url_for("/chat"),
            "http://localhost:3000/chat"
        );
        let prod = UrlOptions {
            scheme: "https".into(),
            host: "app.example".into(),
            port: Some(443),
        };
        assert_eq!(prod.url_for("todos?x=1"), "https://app.example/todos?x=1");
        let none = UrlOptions { port: None, ..prod };
        assert_eq!(none.origin(), "https://app.example");
    }
}
