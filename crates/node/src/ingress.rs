//! Broadcast ingress in AnyCable's publication format, so an app that already broadcasts
//! through AnyCable can point at ferrocable unchanged:
//! `{"stream":"chat_42","data":"{\"text\":\"Hello\"}","meta":{…}}` or an array of them.
//! `data` is a string holding JSON (used as the message) or, failing that, plain text (sent
//! as a JSON string).

use serde::Deserialize;
use serde_json::value::RawValue;

/// One publication, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    /// The stream.
    pub stream: String,
    /// The message as JSON text.
    pub message: String,
    /// How it is delivered (AnyCable's `meta`).
    pub meta: Meta,
}

/// A publication's `meta`, as anycable-rails sends it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Meta {
    /// The session id (`sid`) of the client that caused the broadcast (anycable-rails'
    /// `X-Socket-ID`): it does not get the message ("broadcast to others").
    #[serde(default)]
    pub exclude_socket: Option<String>,
    /// Not stored in history (a message no one needs replayed).
    #[serde(default)]
    pub transient: bool,
}

/// Why a publication body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngressError {
    /// Not JSON, or not an object or array of objects.
    #[error("body is not a publication or an array of publications")]
    Malformed,
    /// A publication has no `stream` string.
    #[error("publication {0} has no \"stream\" string")]
    MissingStream(usize),
    /// A publication has no `data`.
    #[error("publication {0} has no \"data\"")]
    MissingData(usize),
}

#[derive(Deserialize)]
struct Raw<'a> {
    #[serde(default)]
    stream: Option<String>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    /// Unknown or malformed meta is ignored (delivered as a plain broadcast).
    #[serde(borrow, default)]
    meta: Option<&'a RawValue>,
}

fn message(data: &RawValue) -> String {
    // A string holding JSON is the message; any other string is sent as a string; a
    // non-string value (a lenient client) is the message itself.
    match serde_json::from_str::<String>(data.get()) {
        Ok(s) => match serde_json::from_str::<&RawValue>(&s) {
            Ok(_) => s,
            Err(_) => data.get().to_owned(),
        },
        Err(_) => data.get().to_owned(),
    }
}

/// Decodes a body holding one publication or an array of them.
pub fn decode_publications(body: &[u8]) -> Result<Vec<Publication>, IngressError> {
    let raws: Vec<Raw<'_>> = match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'[') => serde_json::from_slice(body).map_err(|_| IngressError::Malformed)?,
        Some(b'{') => vec![serde_json::from_slice(body).map_err(|_| IngressError::Malformed)?],
        _ => return Err(IngressError::Malformed),
    };
    raws.into_iter()
        .enumerate()
        .map(|(i, r)| {
            let stream = r
                .stream
                .filter(|s| !s.is_empty())
                .ok_or(IngressError::MissingStream(i))?;
            let data = r.data.ok_or(IngressError::MissingData(i))?;
            let meta = r
                .meta
                .and_then(|m| serde_json::from_str::<Meta>(m.get()).ok())
                .unwrap_or_default();
            Ok(Publication {
                stream,
                message: message(data),
                meta,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_batch_json_and_plain_data() {
        let one = decode_publications(
            br#"{"stream":"chat","data":"{\"text\":\"hi\"}","meta":{"exclude_socket":"x"}}"#,
        )
        .unwrap();
        assert_eq!(
            one,
            vec![Publication {
                stream: "chat".into(),
                message: r#"{"text":"hi"}"#.into(),
                meta: Meta {
                    exclude_socket: Some("x".into()),
                    transient: false,
                },
            }]
        );
        let transient =
            decode_publications(br#"{"stream":"s","data":"1","meta":{"transient":true}}"#).unwrap();
        assert!(transient[0].meta.transient);
        let odd = decode_publications(br#"{"stream":"s","data":"1","meta":"?"}"#).unwrap();
        assert_eq!(odd[0].meta, Meta::default(), "bad meta is ignored");
        let batch = decode_publications(
            br#"[{"stream":"a","data":"plain words"},{"stream":"b","data":"42"}]"#,
        )
        .unwrap();
        assert_eq!(batch[0].message, r#""plain words""#);
        assert_eq!(batch[1].message, "42");
    }

    #[test]
    fn malformed_bodies_are_typed_errors() {
        assert_eq!(decode_publications(b"nope"), Err(IngressError::Malformed));
        assert_eq!(decode_publications(b"{"), Err(IngressError::Malformed));
        assert_eq!(decode_publications(b"[1]"), Err(IngressError::Malformed));
        assert_eq!(
            decode_publications(br#"{"data":"1"}"#),
            Err(IngressError::MissingStream(0))
        );
        assert_eq!(
            decode_publications(br#"[{"stream":"a","data":"1"},{"stream":"b"}]"#),
            Err(IngressError::MissingData(1))
        );
    }
}
