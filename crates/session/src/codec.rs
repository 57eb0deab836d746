//! Session encoding: JSON, compressed with LZ4 above a threshold, capped in size.

use serde_json::{Map, Value};

use crate::store::{StoreError, cause};

/// A session's contents: a JSON object, as Rails' JSON serializer keeps it.
pub type SessionData = Map<String, Value>;

const PLAIN: u8 = b'j';
const LZ4: u8 = b'z';

/// Encodes and decodes sessions. The first byte says how the rest is encoded, so the
/// compression threshold can change without invalidating stored sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Codec {
    /// Largest encoded session accepted, in bytes.
    pub max_bytes: usize,
    /// Sessions whose JSON is larger than this are compressed (`None`: never).
    pub compress_above: Option<usize>,
}

impl Default for Codec {
    fn default() -> Self {
        Codec {
            max_bytes: 64 * 1024,
            compress_above: Some(1024),
        }
    }
}

impl Codec {
    /// Encodes `data`; a session over `max_bytes` after compression is a typed error.
    pub fn encode(&self, data: &SessionData) -> Result<Vec<u8>, StoreError> {
        let json = serde_json::to_vec(data).map_err(|e| StoreError::Corrupt(cause(e)))?;
        let out = match self.compress_above {
            Some(limit) if json.len() > limit => {
                let mut out = vec![LZ4];
                out.extend_from_slice(&lz4_flex::compress_prepend_size(&json));
                out
            }
            _ => {
                let mut out = Vec::with_capacity(json.len() + 1);
                out.push(PLAIN);
                out.extend_from_slice(&json);
                out
            }
        };
        if out.len() > self.max_bytes {
            return Err(StoreError::TooLarge {
                size: out.len(),
                max: self.max_bytes,
            });
        }
        Ok(out)
    }

    /// Decodes stored bytes; anything unreadable is [`StoreError::Corrupt`], never a panic.
    pub fn decode(&self, bytes: &[u8]) -> Result<SessionData, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt(cause(what.to_owned()));
        let (tag, rest) = bytes.split_first().ok_or_else(|| corrupt("empty record"))?;
        let json = match *tag {
            PLAIN => std::borrow::Cow::Borrowed(rest),
            LZ4 => {
                // Refuse to inflate past the cap: a hostile record cannot allocate much.
                let claimed = rest
                    .get(..4)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
                if claimed.is_none_or(|n| n > self.max_bytes.saturating_mul(64)) {
                    return Err(corrupt("compressed size out of range"));
                }
                std::borrow::Cow::Owned(
                    lz4_flex::decompress_size_prepended(rest)
                        .map_err(|e| StoreError::Corrupt(cause(e)))?,
                )
            }
            _ => return Err(corrupt("unknown encoding tag")),
        };
        match serde_json::from_slice(&json) {
            Ok(Value::Object(map)) => Ok(map),
            Ok(_) => Err(corrupt("session is not a JSON object")),
            Err(e) => Err(StoreError::Corrupt(cause(e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(s: &str) -> SessionData {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn round_trips_plain_and_compressed() {
        let c = Codec {
            max_bytes: 1 << 20,
            compress_above: Some(100),
        };
        let small = data(r#"{"count":3}"#);
        let enc = c.encode(&small).unwrap();
        assert_eq!(enc[0], b'j');
        assert_eq!(c.decode(&enc).unwrap(), small);
        let big = data(&format!(r#"{{"text":"{}"}}"#, "a".repeat(5000)));
        let enc = c.encode(&big).unwrap();
        assert_eq!(enc[0], b'z');
        assert!(enc.len() < 1000);
        assert_eq!(c.decode(&enc).unwrap(), big);
    }

    #[test]
    fn oversized_is_a_typed_error() {
        let c = Codec {
            max_bytes: 50,
            compress_above: None,
        };
        let big = data(&format!(r#"{{"text":"{}"}}"#, "a".repeat(100)));
        assert!(matches!(
            c.encode(&big),
            Err(StoreError::TooLarge { max: 50, .. })
        ));
    }

    #[test]
    fn corrupt_bytes_are_typed_errors() {
        let c = Codec::default();
        for bad in [
            &b""[..],
            b"x{}",
            b"j{",
            b"j[1]",
            b"z\x01",
            b"z\xff\xff\xff\xffabc",
            b"z\x05\x00\x00\x00zzzz",
        ] {
            assert!(
                matches!(c.decode(bad), Err(StoreError::Corrupt(_))),
                "{bad:?}"
            );
        }
    }
}
