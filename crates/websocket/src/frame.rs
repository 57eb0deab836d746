//! Encoding server frames: unmasked, final, header and payload in one buffer.

use bytes::{BufMut, Bytes, BytesMut};

/// Text message opcode.
pub const OP_TEXT: u8 = 0x1;
/// Binary message opcode.
pub const OP_BINARY: u8 = 0x2;
/// Close opcode.
pub const OP_CLOSE: u8 = 0x8;
/// Ping opcode.
pub const OP_PING: u8 = 0x9;
/// Pong opcode.
pub const OP_PONG: u8 = 0xA;

/// Longest server frame header: 2 bytes plus a 64-bit length (servers never mask).
pub const MAX_HEADER_LEN: usize = 10;

/// A close status code (RFC 6455, section 7.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// 1000: the purpose of the connection was fulfilled.
    pub const NORMAL: CloseCode = CloseCode(1000);
    /// 1001: the server is going away (shutdown, restart).
    pub const GOING_AWAY: CloseCode = CloseCode(1001);
    /// 1002: the peer broke the protocol.
    pub const PROTOCOL_ERROR: CloseCode = CloseCode(1002);
    /// 1003: a data type this endpoint does not accept.
    pub const UNSUPPORTED_DATA: CloseCode = CloseCode(1003);
    /// 1007: a text message was not valid UTF-8.
    pub const INVALID_PAYLOAD: CloseCode = CloseCode(1007);
    /// 1008: a policy was violated (e.g. a client too slow to read).
    pub const POLICY_VIOLATION: CloseCode = CloseCode(1008);
    /// 1009: a message over the size limit.
    pub const MESSAGE_TOO_BIG: CloseCode = CloseCode(1009);
    /// 1011: the server met an unexpected condition.
    pub const INTERNAL_ERROR: CloseCode = CloseCode(1011);

    /// Whether a peer may send this code in a close frame: 1000–1003, 1007–1014 and the
    /// 3000–4999 range for libraries and applications. 1004–1006 and 1015 are reserved and
    /// never sent; everything else below 3000 is unassigned.
    pub fn is_allowed_on_the_wire(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

/// Writes the header of a final, unmasked frame with `opcode` and a payload of `len` bytes.
pub fn put_header(out: &mut impl BufMut, opcode: u8, len: usize) {
    out.put_u8(0x80 | opcode);
    if len < 126 {
        out.put_u8(len as u8);
    } else if len <= u16::MAX as usize {
        out.put_u8(126);
        out.put_u16(len as u16);
    } else {
        out.put_u8(127);
        out.put_u64(len as u64);
    }
}

/// The header length of a server frame with a payload of `len` bytes.
pub fn header_len(len: usize) -> usize {
    if len < 126 {
        2
    } else if len <= u16::MAX as usize {
        4
    } else {
        10
    }
}

/// A complete frame (header and payload) with `opcode` carrying `payload`.
pub fn encode(opcode: u8, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(header_len(payload.len()) + payload.len());
    put_header(&mut out, opcode, payload.len());
    out.put_slice(payload);
    out.freeze()
}

/// A complete text frame. The caller guarantees `payload` is UTF-8 (every frame the server
/// writes is JSON it encoded).
pub fn text(payload: &[u8]) -> Bytes {
    encode(OP_TEXT, payload)
}

/// A close frame with `code` and a reason (cut to fit the 125-byte control frame limit on a
/// character boundary).
pub fn close(code: CloseCode, reason: &str) -> Bytes {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.0.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    encode(OP_CLOSE, &payload)
}

/// The payload of a text frame this module encoded: what a test or a tool reads back.
pub fn payload_of(frame: &[u8]) -> &[u8] {
    match frame.get(1).map(|b| b & 0x7f) {
        Some(126) => &frame[4.min(frame.len())..],
        Some(127) => &frame[10.min(frame.len())..],
        Some(_) => &frame[2..],
        None => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_use_the_shortest_length_form() {
        assert_eq!(&text(b"hi")[..], b"\x81\x02hi");
        let f = text(&[b'a'; 126]);
        assert_eq!(&f[..4], &[0x81, 126, 0, 126]);
        assert_eq!(f.len(), 130);
        let f = text(&vec![b'a'; 70_000]);
        assert_eq!(&f[..10], &[0x81, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
        assert_eq!(payload_of(&f).len(), 70_000);
        assert_eq!(header_len(125), 2);
        assert_eq!(header_len(65_535), 4);
        assert_eq!(header_len(65_536), 10);
    }

    #[test]
    fn close_reason_is_cut_on_a_character_boundary() {
        let f = close(CloseCode::NORMAL, &"é".repeat(100));
        assert!(f.len() <= 127);
        let reason = &f[4..];
        assert!(std::str::from_utf8(reason).is_ok());
        assert_eq!(&f[2..4], &1000u16.to_be_bytes());
    }

    #[test]
    fn allowed_close_codes() {
        for ok in [1000, 1001, 1002, 1003, 1007, 1011, 1014, 3000, 4999] {
            assert!(CloseCode(ok).is_allowed_on_the_wire(), "{ok}");
        }
        for bad in [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000] {
            assert!(!CloseCode(bad).is_allowed_on_the_wire(), "{bad}");
        }
    }
}
