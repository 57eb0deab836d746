//! Decoding client frames in place.

use crate::frame::{CloseCode, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT};

/// A complete message (or control frame) from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A text message, checked to be UTF-8.
    Text(Vec<u8>),
    /// A binary message.
    Binary(Vec<u8>),
    /// A ping; the server answers with a pong carrying the same payload.
    Ping(Vec<u8>),
    /// A pong (unsolicited or not): proof the client is alive.
    Pong,
    /// The client closes, with its code and reason if it gave them.
    Close(Option<CloseFrame>),
}

/// The code and reason of a close frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseFrame {
    /// The status code (one a peer may send).
    pub code: CloseCode,
    /// The reason, UTF-8.
    pub reason: String,
}

/// Why the client's bytes are not a WebSocket stream we accept. Each maps to the close code
/// the server answers with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WsError {
    /// The framing rules were broken (1002).
    #[error("websocket protocol error: {0}")]
    Protocol(&'static str),
    /// A text message or close reason is not UTF-8 (1007).
    #[error("text is not valid UTF-8")]
    InvalidUtf8,
    /// A message longer than the limit (1009).
    #[error("message of {len} bytes is over the {max}-byte limit")]
    TooLarge {
        /// Its length, as far as known when it was refused.
        len: u64,
        /// The limit.
        max: usize,
    },
}

impl WsError {
    /// The close code to answer with.
    pub fn close_code(&self) -> CloseCode {
        match self {
            WsError::Protocol(_) => CloseCode::PROTOCOL_ERROR,
            WsError::InvalidUtf8 => CloseCode::INVALID_PAYLOAD,
            WsError::TooLarge { .. } => CloseCode::MESSAGE_TOO_BIG,
        }
    }
}

/// A fragmented message being put together.
#[derive(Debug)]
struct Partial {
    text: bool,
    data: Vec<u8>,
    /// How much of `data` is known to be whole UTF-8 characters (text only).
    checked: usize,
}

impl Partial {
    fn append(&mut self, payload: &[u8], max: usize) -> Result<(), WsError> {
        let len = self.data.len() + payload.len();
        if len > max {
            return Err(WsError::TooLarge {
                len: len as u64,
                max,
            });
        }
        self.data.extend_from_slice(payload);
        if self.text {
            // Checked as it arrives: a bad message fails at the fragment that breaks it.
            match simdutf8::compat::from_utf8(&self.data[self.checked..]) {
                Ok(_) => self.checked = self.data.len(),
                Err(e) if e.error_len().is_none() => self.checked += e.valid_up_to(),
                Err(_) => return Err(WsError::InvalidUtf8),
            }
        }
        Ok(())
    }

    fn finish(self) -> Result<Message, WsError> {
        if !self.text {
            return Ok(Message::Binary(self.data));
        }
        if self.checked != self.data.len() {
            return Err(WsError::InvalidUtf8);
        }
        Ok(Message::Text(self.data))
    }
}

/// A frame header, parsed.
struct Header {
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    header_len: usize,
    len: usize,
}

/// Parses the header at the start of `buf`; `None` until it is all there.
fn parse_header(buf: &[u8], max: usize) -> Result<Option<Header>, WsError> {
    let [b0, b1, ..] = *buf else { return Ok(None) };
    if b0 & 0x70 != 0 {
        return Err(WsError::Protocol("reserved bits set without an extension"));
    }
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0f;
    if !matches!(
        opcode,
        0 | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG
    ) {
        return Err(WsError::Protocol("reserved opcode"));
    }
    if b1 & 0x80 == 0 {
        return Err(WsError::Protocol("client frames must be masked"));
    }
    let len7 = b1 & 0x7f;
    if opcode >= OP_CLOSE && (!fin || len7 > 125) {
        return Err(WsError::Protocol(
            "control frames must be final and at most 125 bytes",
        ));
    }
    let (len, at) = match len7 {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let len = u64::from_be_bytes(b.try_into().expect("8 bytes"));
                if len >> 63 != 0 {
                    return Err(WsError::Protocol("64-bit length with its top bit set"));
                }
                (len, 10)
            }
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    if len > max as u64 {
        return Err(WsError::TooLarge { len, max });
    }
    let Some(mask) = buf.get(at..at + 4) else {
        return Ok(None);
    };
    Ok(Some(Header {
        fin,
        opcode,
        mask: mask.try_into().expect("4 bytes"),
        header_len: at + 4,
        len: len as usize,
    }))
}

fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let word = u32::from_ne_bytes(mask);
    let mut chunks = payload.chunks_exact_mut(4);
    for chunk in &mut chunks {
        let v = u32::from_ne_bytes((&*chunk).try_into().expect("4 bytes")) ^ word;
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    for (b, m) in chunks.into_remainder().iter_mut().zip(mask) {
        *b ^= m;
    }
}

fn parse_close(payload: &[u8]) -> Result<Option<CloseFrame>, WsError> {
    match payload {
        [] => Ok(None),
        [_] => Err(WsError::Protocol("close payload of one byte")),
        [a, b, reason @ ..] => {
            let code = CloseCode(u16::from_be_bytes([*a, *b]));
            if !code.is_allowed_on_the_wire() {
                return Err(WsError::Protocol("close code not allowed"));
            }
            let reason = simdutf8::basic::from_utf8(reason).map_err(|_| WsError::InvalidUtf8)?;
            Ok(Some(CloseFrame {
                code,
                reason: reason.to_owned(),
            }))
        }
    }
}

/// What parsing the start of a buffer gave.
enum Step {
    /// Not a whole frame yet; its total length when the header is known.
    Incomplete(Option<usize>),
    /// A frame of `consumed` bytes, and the message it completed, if any.
    Frame {
        consumed: usize,
        message: Option<Message>,
    },
}

/// Parses (and unmasks in place) the frame at the start of `buf`.
fn step(buf: &mut [u8], message: &mut Option<Partial>, max: usize) -> Result<Step, WsError> {
    let Some(h) = parse_header(buf, max)? else {
        return Ok(Step::Incomplete(None));
    };
    let total = h.header_len + h.len;
    if buf.len() < total {
        return Ok(Step::Incomplete(Some(total)));
    }
    let payload = &mut buf[h.header_len..total];
    unmask(payload, h.mask);
    let completed = match h.opcode {
        OP_PING => Some(Message::Ping(payload.to_vec())),
        OP_PONG => Some(Message::Pong),
        OP_CLOSE => Some(Message::Close(parse_close(payload)?)),
        OP_TEXT | OP_BINARY => {
            if message.is_some() {
                return Err(WsError::Protocol(
                    "a new message began inside a fragmented one",
                ));
            }
            let text = h.opcode == OP_TEXT;
            if h.fin {
                if text {
                    simdutf8::basic::from_utf8(payload).map_err(|_| WsError::InvalidUtf8)?;
                    Some(Message::Text(payload.to_vec()))
                } else {
                    Some(Message::Binary(payload.to_vec()))
                }
            } else {
                let mut partial = Partial {
                    text,
                    data: Vec::with_capacity(payload.len()),
                    checked: 0,
                };
                partial.append(payload, max)?;
                *message = Some(partial);
                None
            }
        }
        _ => {
            let Some(partial) = message.as_mut() else {
                return Err(WsError::Protocol("continuation frame outside a message"));
            };
            partial.append(payload, max)?;
            if h.fin {
                message.take().map(Partial::finish).transpose()?
            } else {
                None
            }
        }
    };
    Ok(Step::Frame {
        consumed: total,
        message: completed,
    })
}

/// Checks the part of an incomplete text frame at the start of `buf` that arrived, from
/// payload offset `*from` on, so a message that breaks UTF-8 fails at once, not when its
/// frame ends. Only new bytes are checked on each read (`*from` advances over whole
/// characters).
fn check_incomplete_text(
    buf: &[u8],
    message: Option<&Partial>,
    from: &mut usize,
    max: usize,
) -> Result<(), WsError> {
    let Ok(Some(h)) = parse_header(buf, max) else {
        return Ok(());
    };
    let continued = match (h.opcode, message) {
        (OP_TEXT, _) => None,
        (0, Some(m)) if m.text => Some(m),
        _ => return Ok(()),
    };
    let arrived = &buf[h.header_len.min(buf.len())..];
    if *from >= arrived.len() {
        return Ok(());
    }
    // A character the previous fragment left incomplete continues in this one.
    let carry: &[u8] = match continued {
        Some(m) if *from == 0 => &m.data[m.checked..],
        _ => &[],
    };
    let mut text = Vec::with_capacity(carry.len() + arrived.len() - *from);
    text.extend_from_slice(carry);
    text.extend(
        arrived[*from..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ h.mask[(*from + i) % 4]),
    );
    match simdutf8::compat::from_utf8(&text) {
        Ok(_) => *from = arrived.len(),
        Err(e) if e.error_len().is_none() => {
            *from += e.valid_up_to().saturating_sub(carry.len());
        }
        Err(_) => return Err(WsError::InvalidUtf8),
    }
    Ok(())
}

/// What a connection keeps between reads: nothing at all while idle.
#[derive(Debug, Default)]
struct State {
    /// Bytes read but not parsed yet: an incomplete frame, or frames read ahead.
    pending: Vec<u8>,
    /// Where parsing resumes in `pending`.
    start: usize,
    /// A fragmented message being put together.
    message: Option<Partial>,
    /// How much of the incomplete frame's payload is known to be whole UTF-8 characters.
    utf8_from: usize,
}

/// One connection's WebSocket decoder. Idle (no incomplete frame, no fragmented message),
/// it is one null pointer: the bytes of a read live in the caller's scratch buffer and
/// only what a read left incomplete is copied out, into a buffer sized to fit and freed as
/// soon as it has been parsed.
#[derive(Debug, Default)]
pub struct Decoder {
    state: Option<Box<State>>,
}

impl Decoder {
    /// A decoder with nothing buffered.
    pub fn new() -> Self {
        Decoder::default()
    }

    /// A decoder holding bytes read before it existed (what an HTTP server read past the
    /// upgrade request); they are parsed by [`Decoder::next_buffered`].
    pub fn with_buffered(bytes: &[u8]) -> Self {
        if bytes.is_empty() {
            return Decoder::default();
        }
        Decoder {
            state: Some(Box::new(State {
                pending: bytes.to_vec(),
                ..State::default()
            })),
        }
    }

    /// Bytes this decoder holds on the heap (buffered input and a fragmented message).
    pub fn buffered_capacity(&self) -> usize {
        self.state.as_ref().map_or(0, |s| {
            s.pending.capacity() + s.message.as_ref().map_or(0, |m| m.data.capacity())
        })
    }

    /// Parses freshly read bytes (in place: `input` is unmasked as it is parsed). Returns the
    /// first message they complete; what follows it is kept for [`Decoder::next_buffered`].
    /// Messages longer than `max` bytes are refused.
    pub fn feed(&mut self, input: &mut [u8], max: usize) -> Result<Option<Message>, WsError> {
        if let Some(state) = self.state.as_deref_mut()
            && state.start < state.pending.len()
        {
            state.pending.extend_from_slice(input);
            return self.next_buffered(max);
        }
        let mut message = self.state.as_mut().and_then(|s| s.message.take());
        let mut at = 0;
        let (completed, hint) = loop {
            match step(&mut input[at..], &mut message, max) {
                Err(e) => {
                    self.state = None;
                    return Err(e);
                }
                Ok(Step::Incomplete(total)) => break (None, total.unwrap_or(0)),
                Ok(Step::Frame { consumed, message }) => {
                    at += consumed;
                    if message.is_some() {
                        break (message, 0);
                    }
                }
            }
        };
        let rest = &input[at..];
        if rest.is_empty() && message.is_none() {
            self.state = None;
            return Ok(completed);
        }
        let mut utf8_from = 0;
        if completed.is_none()
            && let Err(e) = check_incomplete_text(rest, message.as_ref(), &mut utf8_from, max)
        {
            self.state = None;
            return Err(e);
        }
        let state = self.state.get_or_insert_with(Box::default);
        state.pending = Vec::with_capacity(hint.max(rest.len()));
        state.pending.extend_from_slice(rest);
        state.start = 0;
        state.message = message;
        state.utf8_from = utf8_from;
        Ok(completed)
    }

    /// The next message from bytes buffered earlier, if they hold one.
    pub fn next_buffered(&mut self, max: usize) -> Result<Option<Message>, WsError> {
        let Some(state) = self.state.as_deref_mut() else {
            return Ok(None);
        };
        let result = loop {
            if state.start == state.pending.len() {
                break Ok(None);
            }
            let State {
                pending,
                start,
                message,
                utf8_from,
            } = state;
            match step(&mut pending[*start..], message, max) {
                Err(e) => break Err(e),
                Ok(Step::Incomplete(total)) => {
                    if *start > 0 {
                        pending.drain(..*start);
                        *start = 0;
                    }
                    if let Some(total) = total {
                        pending.reserve_exact(total.saturating_sub(pending.len()));
                    }
                    if let Err(e) = check_incomplete_text(pending, message.as_ref(), utf8_from, max)
                    {
                        break Err(e);
                    }
                    break Ok(None);
                }
                Ok(Step::Frame { consumed, message }) => {
                    *start += consumed;
                    *utf8_from = 0;
                    if message.is_some() {
                        break Ok(message);
                    }
                }
            }
        };
        match &result {
            Err(_) => self.state = None,
            Ok(_) if state.start == state.pending.len() => {
                if state.message.is_none() {
                    self.state = None;
                } else {
                    state.pending = Vec::new();
                    state.start = 0;
                }
            }
            Ok(_) => {}
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX: usize = 1 << 16;

    /// A client frame: masked with `mask`.
    fn client(fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
        let len = payload.len();
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if len <= 65535 {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn text(s: &str) -> Vec<u8> {
        client(true, OP_TEXT, s.as_bytes(), [1, 2, 3, 4])
    }

    /// Feeds `bytes` in chunks of `chunk` and collects every message.
    fn decode_chunked(bytes: &[u8], chunk: usize) -> Result<Vec<Message>, WsError> {
        let mut d = Decoder::new();
        let mut out = Vec::new();
        for piece in bytes.chunks(chunk.max(1)) {
            let mut piece = piece.to_vec();
            if let Some(m) = d.feed(&mut piece, MAX)? {
                out.push(m);
            }
            while let Some(m) = d.next_buffered(MAX)? {
                out.push(m);
            }
        }
        Ok(out)
    }

    #[test]
    fn a_whole_frame_in_one_read_leaves_nothing_behind() {
        let mut d = Decoder::new();
        let mut f = text(r#"{"command":"subscribe"}"#);
        let m = d.feed(&mut f, MAX).unwrap();
        assert_eq!(
            m,
            Some(Message::Text(br#"{"command":"subscribe"}"#.to_vec()))
        );
        assert_eq!(d.buffered_capacity(), 0);
        assert!(d.state.is_none());
    }

    #[test]
    fn an_incomplete_frame_gets_a_buffer_sized_to_fit_and_frees_it() {
        let payload = "x".repeat(1000);
        let f = text(&payload);
        let mut d = Decoder::new();
        let mut first = f[..100].to_vec();
        assert_eq!(d.feed(&mut first, MAX).unwrap(), None);
        assert_eq!(d.buffered_capacity(), f.len(), "reserved the whole frame");
        let mut rest = f[100..].to_vec();
        assert_eq!(
            d.feed(&mut rest, MAX).unwrap(),
            Some(Message::Text(payload.into_bytes()))
        );
        assert_eq!(d.buffered_capacity(), 0);
    }

    #[test]
    fn several_frames_in_one_read_come_out_one_by_one() {
        let mut bytes = text("a");
        bytes.extend(client(true, OP_PING, b"p", [9, 9, 9, 9]));
        bytes.extend(text("b"));
        let mut d = Decoder::new();
        assert_eq!(
            d.feed(&mut bytes, MAX).unwrap(),
            Some(Message::Text(b"a".to_vec()))
        );
        assert_eq!(
            d.next_buffered(MAX).unwrap(),
            Some(Message::Ping(b"p".to_vec()))
        );
        assert_eq!(
            d.next_buffered(MAX).unwrap(),
            Some(Message::Text(b"b".to_vec()))
        );
        assert_eq!(d.next_buffered(MAX).unwrap(), None);
        assert!(d.state.is_none());
    }

    #[test]
    fn fragments_with_a_ping_between_make_one_message() {
        let mut bytes = client(false, OP_TEXT, b"Hel", [1, 1, 1, 1]);
        bytes.extend(client(true, OP_PING, b"", [2, 2, 2, 2]));
        bytes.extend(client(false, 0, b"lo ", [3, 3, 3, 3]));
        bytes.extend(client(true, 0, "wörld".as_bytes(), [4, 4, 4, 4]));
        for chunk in [1, 2, 3, 7, 1000] {
            assert_eq!(
                decode_chunked(&bytes, chunk).unwrap(),
                vec![
                    Message::Ping(vec![]),
                    Message::Text("Hello wörld".as_bytes().to_vec())
                ],
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn a_character_split_across_fragments_is_fine_and_a_bad_one_fails_at_its_fragment() {
        let ok = "é".as_bytes();
        let mut bytes = client(false, OP_TEXT, &ok[..1], [1, 2, 3, 4]);
        bytes.extend(client(true, 0, &ok[1..], [1, 2, 3, 4]));
        assert_eq!(
            decode_chunked(&bytes, 100).unwrap(),
            vec![Message::Text(ok.to_vec())]
        );
        // The second fragment breaks the text: refused before the message ends.
        let mut d = Decoder::new();
        let mut f1 = client(false, OP_TEXT, b"ok", [1, 2, 3, 4]);
        assert_eq!(d.feed(&mut f1, MAX).unwrap(), None);
        let mut f2 = client(false, 0, &[0xf4, 0x90, 0x80, 0x80], [1, 2, 3, 4]);
        assert_eq!(d.feed(&mut f2, MAX), Err(WsError::InvalidUtf8));
        // A message ending inside a character.
        let f = client(true, OP_TEXT, &ok[..1], [1, 2, 3, 4]);
        assert_eq!(decode_chunked(&f, 100), Err(WsError::InvalidUtf8));
    }

    #[test]
    fn bad_text_fails_inside_a_frame_that_has_not_ended() {
        // One frame, sent in three chops: the second breaks UTF-8 (Autobahn 6.4.3).
        let payload = [
            &b"\xce\xba\xe1\xbd\xb9"[..],
            &[0xf4, 0x90, 0x80, 0x80],
            b"edited",
        ]
        .concat();
        let f = client(true, OP_TEXT, &payload, [7, 1, 9, 3]);
        let mut d = Decoder::new();
        assert_eq!(d.feed(&mut f[..9].to_vec(), MAX).unwrap(), None);
        assert_eq!(
            d.feed(&mut f[9..14].to_vec(), MAX),
            Err(WsError::InvalidUtf8)
        );
        // A valid character cut between chops, and between fragments, is waited for.
        let good = "κόσμε".as_bytes();
        let f = client(true, OP_TEXT, good, [7, 1, 9, 3]);
        for cut in 1..f.len() {
            let mut d = Decoder::new();
            assert_eq!(
                d.feed(&mut f[..cut].to_vec(), MAX).unwrap(),
                None,
                "cut {cut}"
            );
            assert_eq!(
                d.feed(&mut f[cut..].to_vec(), MAX).unwrap(),
                Some(Message::Text(good.to_vec()))
            );
        }
        let mut bytes = client(false, OP_TEXT, &good[..1], [1, 2, 3, 4]);
        bytes.extend(client(true, 0, &good[1..], [5, 6, 7, 8]));
        for chunk in 1..bytes.len() {
            assert_eq!(
                decode_chunked(&bytes, chunk).unwrap(),
                vec![Message::Text(good.to_vec())],
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn protocol_errors_name_their_close_code() {
        let cases: Vec<(Vec<u8>, CloseCode)> = vec![
            (vec![0x81, 0x01, b'a'], CloseCode::PROTOCOL_ERROR), // unmasked
            (
                {
                    let mut f = text("a");
                    f[0] |= 0x40;
                    f
                },
                CloseCode::PROTOCOL_ERROR,
            ), // RSV1
            (client(true, 3, b"", [0; 4]), CloseCode::PROTOCOL_ERROR), // reserved opcode
            (client(true, 0xb, b"", [0; 4]), CloseCode::PROTOCOL_ERROR),
            (
                client(false, OP_PING, b"", [0; 4]),
                CloseCode::PROTOCOL_ERROR,
            ), // fragmented control
            (
                client(true, OP_PING, &[0; 126], [0; 4]),
                CloseCode::PROTOCOL_ERROR,
            ),
            (client(true, 0, b"x", [0; 4]), CloseCode::PROTOCOL_ERROR), // orphan continuation
            (
                client(true, OP_CLOSE, &[3], [0; 4]),
                CloseCode::PROTOCOL_ERROR,
            ),
            (
                client(true, OP_CLOSE, &1005u16.to_be_bytes(), [0; 4]),
                CloseCode::PROTOCOL_ERROR,
            ),
            (
                client(true, OP_TEXT, &[0xff], [0; 4]),
                CloseCode::INVALID_PAYLOAD,
            ),
            (
                client(true, OP_CLOSE, &[3, 232, 0xff], [0; 4]),
                CloseCode::INVALID_PAYLOAD,
            ),
            (
                client(true, OP_TEXT, &vec![b'a'; MAX + 1], [0; 4]),
                CloseCode::MESSAGE_TOO_BIG,
            ),
        ];
        for (i, (bytes, code)) in cases.into_iter().enumerate() {
            let e = decode_chunked(&bytes, 1).expect_err(&format!("case {i}"));
            assert_eq!(e.close_code(), code, "case {i}: {e}");
        }
        // A new message inside a fragmented one.
        let mut bytes = client(false, OP_TEXT, b"a", [0; 4]);
        bytes.extend(text("b"));
        assert!(matches!(
            decode_chunked(&bytes, 100),
            Err(WsError::Protocol(_))
        ));
    }

    #[test]
    fn an_oversized_length_is_refused_from_the_header_alone() {
        // 2^40 bytes announced, nothing sent: refused without waiting or allocating.
        let mut f = vec![0x81, 0x80 | 127];
        f.extend_from_slice(&(1u64 << 40).to_be_bytes());
        let mut d = Decoder::new();
        assert!(matches!(
            d.feed(&mut f, MAX),
            Err(WsError::TooLarge { len, .. }) if len == 1 << 40
        ));
        // Fragments adding up past the limit.
        let mut bytes = client(false, OP_BINARY, &vec![0; MAX / 2 + 1], [0; 4]);
        bytes.extend(client(true, 0, &vec![0; MAX / 2 + 1], [0; 4]));
        assert!(matches!(
            decode_chunked(&bytes, 4096),
            Err(WsError::TooLarge { .. })
        ));
    }

    #[test]
    fn close_frames_carry_code_and_reason() {
        let mut payload = 1001u16.to_be_bytes().to_vec();
        payload.extend_from_slice(b"bye");
        assert_eq!(
            decode_chunked(&client(true, OP_CLOSE, &payload, [5; 4]), 3).unwrap(),
            vec![Message::Close(Some(CloseFrame {
                code: CloseCode::GOING_AWAY,
                reason: "bye".into()
            }))]
        );
        assert_eq!(
            decode_chunked(&client(true, OP_CLOSE, b"", [5; 4]), 3).unwrap(),
            vec![Message::Close(None)]
        );
    }

    proptest! {
        /// Any stream of valid frames, cut anywhere, decodes to the same messages.
        #[test]
        fn cutting_the_stream_anywhere_changes_nothing(
            msgs in proptest::collection::vec(("[a-zé]{0,300}", any::<[u8; 4]>(), 1usize..4), 1..8),
            chunk in 1usize..600,
        ) {
            let mut bytes = Vec::new();
            let mut expected = Vec::new();
            for (s, mask, parts) in &msgs {
                let b = s.as_bytes();
                let size = b.len().div_ceil(*parts).max(1);
                let pieces: Vec<&[u8]> = if b.is_empty() { vec![b] } else { b.chunks(size).collect() };
                for (i, piece) in pieces.iter().enumerate() {
                    let op = if i == 0 { OP_TEXT } else { 0 };
                    bytes.extend(client(i + 1 == pieces.len(), op, piece, *mask));
                }
                expected.push(Message::Text(b.to_vec()));
            }
            prop_assert_eq!(decode_chunked(&bytes, chunk).unwrap(), expected);
        }

        /// Arbitrary bytes never panic, and never make the decoder hold more than the limit
        /// plus one read.
        #[test]
        fn garbage_is_refused_or_waited_for_never_a_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..2000),
            chunk in 1usize..300,
        ) {
            let mut d = Decoder::new();
            for piece in bytes.chunks(chunk) {
                let mut piece = piece.to_vec();
                if d.feed(&mut piece, 1024).is_err() {
                    return Ok(());
                }
                loop {
                    match d.next_buffered(1024) {
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(_) => return Ok(()),
                    }
                }
                prop_assert!(d.buffered_capacity() <= 2 * 1024 + 14 + 300);
            }
        }
    }
}
