//! The reflex payload the client sends (`data` of the `message` command, decoded).

use serde_json::{Map, Value};

/// Why a reflex payload was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReflexDataError {
    /// The payload is not a JSON object.
    #[error("reflex payload is not a JSON object")]
    NotAnObject,
    /// No reflex `id` string.
    #[error("reflex payload has no id")]
    MissingId,
    /// No `target` string.
    #[error("reflex payload has no target")]
    MissingTarget,
    /// `target` is not `Class#method`.
    #[error("reflex target {0:?} is not Class#method")]
    BadTarget(String),
    /// A field has the wrong type.
    #[error("reflex field {0} has the wrong type")]
    BadField(&'static str),
}

/// A decoded reflex, with the whole original object kept for the echo.
#[derive(Debug, Clone, PartialEq)]
pub struct ReflexData {
    raw: Map<String, Value>,
    /// The reflex id (UUID from the client).
    pub id: String,
    /// `"Counter#increment"` as sent.
    pub target: String,
    /// `Counter` (a trailing `Reflex` is dropped: `CounterReflex#x` is `Counter`).
    pub class: String,
    /// `increment`.
    pub method: String,
    /// Positional arguments.
    pub args: Vec<Value>,
    /// The page URL when the reflex was created.
    pub url: String,
    /// Page morph roots; empty means `body`.
    pub selectors: Vec<String>,
    /// The serialized form (`a=1&b=2`) or empty.
    pub form_data: String,
    /// Client-side `params`, usually empty.
    pub params: Map<String, Value>,
    /// The client's stimulus_reflex version.
    pub version: String,
    /// The tab id.
    pub tab_id: String,
    /// The attribute that marks elements a morph must not touch.
    pub permanent_attribute_name: String,
}

fn string(raw: &Map<String, Value>, key: &'static str) -> Result<String, ReflexDataError> {
    match raw.get(key) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(ReflexDataError::BadField(key)),
    }
}

impl ReflexData {
    /// Reads a payload. The error carries the reflex id when one could be read, so the
    /// client can still be told (`morph-error`).
    pub fn parse(value: Value) -> Result<Self, (Option<String>, ReflexDataError)> {
        let Value::Object(raw) = value else {
            return Err((None, ReflexDataError::NotAnObject));
        };
        let id = match raw.get("id") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => return Err((None, ReflexDataError::MissingId)),
        };
        let fail = |e| Err((Some(id.clone()), e));
        let target = match raw.get("target") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => return fail(ReflexDataError::MissingTarget),
        };
        let Some((class, method)) = target.split_once('#') else {
            return fail(ReflexDataError::BadTarget(target));
        };
        let class = class.strip_suffix("Reflex").unwrap_or(class).to_owned();
        let valid_class = !class.is_empty()
            && class.split("::").all(|p| {
                p.chars().next().is_some_and(|c| c.is_ascii_uppercase())
                    && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            });
        let valid_method = !method.is_empty()
            && method
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_class || !valid_method {
            return fail(ReflexDataError::BadTarget(target));
        }
        let method = method.to_owned();
        let args = match raw.get("args") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a.clone(),
            Some(_) => return fail(ReflexDataError::BadField("args")),
        };
        let selectors = match raw.get("selectors") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(Value::as_str)
                .filter(|s| !s.trim().is_empty())
                .map(str::to_owned)
                .collect(),
            Some(_) => return fail(ReflexDataError::BadField("selectors")),
        };
        let params = match raw.get("params") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(_) => return fail(ReflexDataError::BadField("params")),
        };
        let (url, form_data, version, tab_id, permanent) = match (
            string(&raw, "url"),
            string(&raw, "formData"),
            string(&raw, "version"),
            string(&raw, "tabId"),
            string(&raw, "permanentAttributeName"),
        ) {
            (Ok(a), Ok(b), Ok(c), Ok(d), Ok(e)) => (a, b, c, d, e),
            _ => return fail(ReflexDataError::BadField("url/formData/version/tabId")),
        };
        Ok(ReflexData {
            id,
            class,
            method,
            target,
            args,
            url,
            selectors,
            form_data,
            params,
            version,
            tab_id,
            permanent_attribute_name: if permanent.is_empty() {
                "data-reflex-permanent".into()
            } else {
                permanent
            },
            raw,
        })
    }

    /// The raw decoded payload.
    pub fn raw(&self) -> &Map<String, Value> {
        &self.raw
    }

    /// The `stimulusReflex` echo: the whole payload, keys camel-cased deeply as Ruby does
    /// (`inner_html` → `innerHtml`), with `morph` set.
    pub fn echo(&self, morph: &str) -> Value {
        let mut v = camelize(&Value::Object(self.raw.clone()));
        if let Value::Object(m) = &mut v {
            m.insert("morph".into(), Value::from(morph));
        }
        v
    }
}

/// A minimal echo for a payload that could not be read in full (only the id is known).
pub(crate) fn minimal_echo(id: &str, raw: &Value, morph: &str) -> Value {
    let mut m = match camelize(raw) {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    m.insert("id".into(), Value::from(id));
    m.insert("morph".into(), Value::from(morph));
    Value::Object(m)
}

fn camel(key: &str) -> String {
    if !key.contains('_') {
        return key.to_owned();
    }
    let mut out = String::with_capacity(key.len());
    let mut upper = false;
    for (i, c) in key.chars().enumerate() {
        if c == '_' && i > 0 {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

fn camelize(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (camel(k), camelize(v))).collect()),
        Value::Array(a) => Value::Array(a.iter().map(camelize).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn payload() -> Value {
        json!({"id": "r1", "target": "Post#save", "args": [1, "x"], "url": "http://h/p?q=1#f",
               "selectors": ["#a", " "], "formData": "a=1", "version": "3.5.5", "tabId": "t",
               "inner_html": "", "attrs": {"tag_name": "BUTTON", "data-reflex": "click->Post#save"},
               "suppressLogging": {}})
    }

    #[test]
    fn parses_the_fields_and_echoes_everything_camel_cased() {
        let d = ReflexData::parse(payload()).unwrap();
        assert_eq!((d.class.as_str(), d.method.as_str()), ("Post", "save"));
        assert_eq!(d.args, vec![json!(1), json!("x")]);
        assert_eq!(d.selectors, vec!["#a"]);
        assert_eq!(d.permanent_attribute_name, "data-reflex-permanent");
        let e = d.echo("page");
        assert_eq!(e["innerHtml"], "");
        assert_eq!(e["attrs"]["tagName"], "BUTTON");
        assert_eq!(e["attrs"]["data-reflex"], "click->Post#save");
        assert_eq!(e["url"], "http://h/p?q=1#f", "the url is echoed untouched");
        assert_eq!(e["morph"], "page");
    }

    #[test]
    fn reflex_suffix_and_namespaces() {
        let mut p = payload();
        p["target"] = json!("Admin::PostReflex#save");
        assert_eq!(ReflexData::parse(p).unwrap().class, "Admin::Post");
    }

    #[test]
    fn bad_payloads_are_typed_errors_with_the_id_when_known() {
        assert_eq!(
            ReflexData::parse(json!([1])).unwrap_err(),
            (None, ReflexDataError::NotAnObject)
        );
        assert_eq!(
            ReflexData::parse(json!({"target": "A#b"})).unwrap_err(),
            (None, ReflexDataError::MissingId)
        );
        for target in [
            "nohash", "#m", "A#", "lower#m", "A#m-x", "A#m;drop", "A B#m",
        ] {
            let mut p = payload();
            p["target"] = json!(target);
            let (id, e) = ReflexData::parse(p).unwrap_err();
            assert_eq!(id.as_deref(), Some("r1"));
            assert!(matches!(e, ReflexDataError::BadTarget(_)), "{target}");
        }
        let mut p = payload();
        p["args"] = json!("x");
        assert_eq!(
            ReflexData::parse(p).unwrap_err().1,
            ReflexDataError::BadField("args")
        );
    }
}
