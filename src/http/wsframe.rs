//! The WebSocket wire format (RFC 6455) of the server side of a connection.
//!
//! Frame headers are parsed and written by tungstenite's `FrameHeader`; what
//! lives here is the buffering, so that an idle connection holds no buffer
//! at all: bytes are read through a buffer on the stack of each poll and
//! kept on the heap only while a frame is incomplete, and outgoing frames
//! are written straight from the frames the hub built (one allocation per
//! batch, freed after the write). With tokio-tungstenite each connection
//! kept a read buffer and a write buffer the size of the largest frame it
//! ever sent (together about 2.6 KB of the 9.3 KB of an idle session).

use std::io::Cursor;
use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, ReadBuf};

use crate::api::server::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;

/// Close code: protocol error.
pub const CLOSE_PROTOCOL: u16 = 1002;
/// Close code: a text message that is not UTF-8.
pub const CLOSE_INVALID_DATA: u16 = 1007;

/// A message from the client.
#[derive(Debug)]
pub enum Incoming {
    /// A complete text message.
    Text(String),
    /// A complete binary message (not used by the protocol: the client
    /// is told so, as the Go server does), with its length.
    Binary(usize),
    /// A fragment of a text message that is not its last one, with its
    /// length: nothing to handle yet, but it costs its share of the
    /// connection's budget like any frame.
    Fragment(usize),
    /// A ping: answer with a pong carrying `0`.
    Ping(Bytes),
    /// A pong (answers our keep-alive ping) with its payload.
    Pong(Bytes),
    /// The client closes the connection.
    Close,
}

/// Why reading stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum WsError {
    /// A message over the size limit (close 1009).
    TooBig,
    /// A frame that breaks RFC 6455 (close 1002).
    Protocol(&'static str),
    /// A text message that is not UTF-8 (close 1007).
    InvalidUtf8,
    /// The socket failed.
    Io(std::io::ErrorKind),
}

/// Bytes read from the socket in one poll (on the stack of that poll).
const READ_CHUNK: usize = 4096;

/// A fragmented message in progress: a text message's bytes so far, or
/// how long a binary message is so far (its bytes are not kept).
enum Partial {
    Text(Vec<u8>),
    Binary(usize),
}

/// Reads client frames from `io` and assembles messages.
pub struct FrameReader<R> {
    io: R,
    /// Read and not yet parsed (from `pos`); no allocation when empty.
    buf: Vec<u8>,
    pos: usize,
    /// A fragmented message in progress.
    partial: Option<Partial>,
    max: usize,
    eof: bool,
    failed: bool,
}

impl<R> FrameReader<R> {
    /// A reader of messages of at most `max` bytes.
    pub fn new(io: R, max: usize) -> Self {
        FrameReader {
            io,
            buf: Vec::new(),
            pos: 0,
            partial: None,
            max,
            eof: false,
            failed: false,
        }
    }

    /// Parses one frame from what was read; `None` when it is incomplete.
    /// Every frame is something for the reader (a fragment too), so that
    /// each one is charged to the connection's budget.
    fn parse(&mut self) -> Option<Result<Incoming, WsError>> {
        let (header, payload) = match self.next_frame()? {
            Ok(frame) => frame,
            Err(e) => return Some(Err(e)),
        };
        let payload = &self.buf[payload];
        Some(match header.opcode {
            OpCode::Control(c) => control(&header, c, payload),
            OpCode::Data(d) => data(&mut self.partial, self.max, &header, d, payload),
        })
    }

    /// The next complete frame from what was read: its header and where
    /// its payload (unmasked in place) is in `buf`; `None` when it is
    /// incomplete.
    fn next_frame(&mut self) -> Option<Result<(FrameHeader, Range<usize>), WsError>> {
        let avail = &self.buf[self.pos..];
        let mut cur = Cursor::new(avail);
        let (header, len) = match FrameHeader::parse(&mut cur) {
            Ok(Some(h)) => h,
            Ok(None) => return None,
            Err(_) => return Some(Err(WsError::Protocol("bad frame header"))),
        };
        if len > self.max as u64 {
            return Some(Err(WsError::TooBig));
        }
        let start = cur.position() as usize;
        let len = len as usize;
        if avail.len() < start + len {
            return None;
        }
        let begin = self.pos + start;
        self.pos = begin + len;
        if header.rsv1 || header.rsv2 || header.rsv3 {
            return Some(Err(WsError::Protocol("reserved bits set")));
        }
        let Some(mask) = header.mask else {
            return Some(Err(WsError::Protocol("client frames must be masked")));
        };
        unmask(&mut self.buf[begin..begin + len], mask);
        Some(Ok((header, begin..begin + len)))
    }

    /// Drops what was parsed; frees the buffer when nothing is left.
    fn compact(&mut self) {
        if self.pos == self.buf.len() {
            self.buf = Vec::new();
            self.pos = 0;
        } else if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
    }
}

/// A control frame: ping, pong or close (final, at most 125 bytes).
fn control(header: &FrameHeader, c: Control, payload: &[u8]) -> Result<Incoming, WsError> {
    if !header.is_final || payload.len() > 125 {
        return Err(WsError::Protocol("bad control frame"));
    }
    match c {
        Control::Ping => Ok(Incoming::Ping(Bytes::copy_from_slice(payload))),
        Control::Pong => Ok(Incoming::Pong(Bytes::copy_from_slice(payload))),
        Control::Close => Ok(Incoming::Close),
        Control::Reserved(_) => Err(WsError::Protocol("reserved opcode")),
    }
}

/// A data frame: a whole message, its first fragment or a continuation
/// (`partial` holds the message in progress, at most `max` bytes).
fn data(
    partial: &mut Option<Partial>,
    max: usize,
    header: &FrameHeader,
    d: Data,
    payload: &[u8],
) -> Result<Incoming, WsError> {
    match d {
        Data::Text | Data::Binary if partial.is_some() => {
            Err(WsError::Protocol("message inside a fragmented one"))
        }
        Data::Binary if !header.is_final => {
            *partial = Some(Partial::Binary(payload.len()));
            Ok(Incoming::Fragment(payload.len()))
        }
        Data::Binary => Ok(Incoming::Binary(payload.len())),
        Data::Text => {
            if !header.is_final {
                *partial = Some(Partial::Text(payload.to_vec()));
                return Ok(Incoming::Fragment(payload.len()));
            }
            text(payload.to_vec())
        }
        Data::Continue => match partial.take() {
            None => Err(WsError::Protocol("continuation without a message")),
            Some(Partial::Binary(len)) => {
                let len = len + payload.len();
                if len > max {
                    return Err(WsError::TooBig);
                }
                if header.is_final {
                    return Ok(Incoming::Binary(len));
                }
                *partial = Some(Partial::Binary(len));
                Ok(Incoming::Fragment(payload.len()))
            }
            Some(Partial::Text(mut data)) => {
                if data.len() + payload.len() > max {
                    return Err(WsError::TooBig);
                }
                data.extend_from_slice(payload);
                if !header.is_final {
                    *partial = Some(Partial::Text(data));
                    return Ok(Incoming::Fragment(payload.len()));
                }
                text(data)
            }
        },
        Data::Reserved(_) => Err(WsError::Protocol("reserved opcode")),
    }
}

/// XORs a client payload with its mask, eight bytes at a time (a byte at
/// a time was 5% of the server's CPU relaying session messages).
fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let [a, b, c, d] = mask;
    let wide = u64::from_ne_bytes([a, b, c, d, a, b, c, d]);
    let mut chunks = payload.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    // The rest starts at a multiple of 8, so the mask starts over.
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
}

/// A complete text message.
fn text(data: Vec<u8>) -> Result<Incoming, WsError> {
    String::from_utf8(data)
        .map(Incoming::Text)
        .map_err(|_| WsError::InvalidUtf8)
}

impl<R: AsyncRead + Unpin> futures_util::Stream for FrameReader<R> {
    type Item = Result<Incoming, WsError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.failed {
                return Poll::Ready(None);
            }
            if let Some(item) = this.parse() {
                // The rest stays where it is until more must be read (one
                // move per read, not one per message).
                if this.pos == this.buf.len() {
                    this.compact();
                }
                // Nothing is read after an error.
                this.failed = item.is_err();
                return Poll::Ready(Some(item));
            }
            if this.eof {
                return Poll::Ready(None);
            }
            this.compact();
            // Not zeroed: `ReadBuf` tracks what the read filled.
            let mut chunk = [std::mem::MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut rb = ReadBuf::uninit(&mut chunk);
            match Pin::new(&mut this.io).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => {
                    this.failed = true;
                    return Poll::Ready(Some(Err(WsError::Io(e.kind()))));
                }
                Poll::Ready(Ok(())) if rb.filled().is_empty() => {
                    this.eof = true;
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(())) => this.buf.extend_from_slice(rb.filled()),
            }
        }
    }
}

/// Appends one unmasked server frame to `out`.
fn put_frame(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8]) {
    let header = FrameHeader {
        is_final: true,
        rsv1: false,
        rsv2: false,
        rsv3: false,
        opcode,
        mask: None,
    };
    // Writing into a Vec cannot fail.
    let _ = header.format(payload.len() as u64, out);
    out.extend_from_slice(payload);
}

/// Appends a text frame (a [`Frame`] is UTF-8 by construction).
pub fn put_text(out: &mut Vec<u8>, text: &Frame) {
    put_frame(out, OpCode::Data(Data::Text), text.as_bytes());
}

/// Appends a ping frame (payload of at most 125 bytes).
pub fn put_ping(out: &mut Vec<u8>, payload: &[u8]) {
    put_frame(out, OpCode::Control(Control::Ping), payload);
}

/// Appends a pong frame answering a ping's payload.
pub fn put_pong(out: &mut Vec<u8>, payload: &[u8]) {
    put_frame(out, OpCode::Control(Control::Pong), payload);
}

/// Appends a close frame with a code and a reason (cut to fit 125 bytes).
pub fn put_close(out: &mut Vec<u8>, code: u16, reason: &str) {
    let mut payload = code.to_be_bytes().to_vec();
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    payload.extend_from_slice(&reason.as_bytes()[..cut]);
    put_frame(out, OpCode::Control(Control::Close), &payload);
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    /// A client frame as a client library would send it (masked).
    fn client_frame(opcode: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mask = [1, 2, 3, 4];
        let header = FrameHeader {
            is_final: fin,
            rsv1: false,
            rsv2: false,
            rsv3: false,
            opcode,
            mask: Some(mask),
        };
        let mut out = Vec::new();
        header.format(payload.len() as u64, &mut out).unwrap();
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        out
    }

    async fn read_all(bytes: Vec<u8>, max: usize) -> Vec<Result<Incoming, WsError>> {
        FrameReader::new(&bytes[..], max).collect().await
    }

    #[test]
    fn unmask_matches_the_bytewise_definition() {
        let mask = [0x12, 0x34, 0x56, 0x78];
        for len in 0..41 {
            let data: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let mut fast = data.clone();
            unmask(&mut fast, mask);
            let slow: Vec<u8> = data
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i & 3])
                .collect();
            assert_eq!(fast, slow, "length {len}");
        }
    }

    #[tokio::test]
    async fn text_ping_fragments_and_close() {
        let mut b = client_frame(OpCode::Data(Data::Text), true, b"hello");
        b.extend(client_frame(OpCode::Control(Control::Ping), true, b"p"));
        b.extend(client_frame(
            OpCode::Data(Data::Text),
            false,
            "h\u{e9}".as_bytes(),
        ));
        // A control frame between fragments is allowed.
        b.extend(client_frame(OpCode::Control(Control::Pong), true, b""));
        b.extend(client_frame(OpCode::Data(Data::Continue), true, b"llo"));
        b.extend(client_frame(
            OpCode::Control(Control::Close),
            true,
            &[3, 232],
        ));
        let got = read_all(b, 1024).await;
        let got: Vec<String> = got.into_iter().map(|r| format!("{r:?}")).collect();
        assert_eq!(
            got,
            [
                "Ok(Text(\"hello\"))",
                "Ok(Ping(b\"p\"))",
                "Ok(Fragment(3))",
                "Ok(Pong(b\"\"))",
                "Ok(Text(\"h\u{e9}llo\"))",
                "Ok(Close)"
            ]
        );
    }

    #[tokio::test]
    async fn every_fragment_and_whole_binary_messages_are_reported() {
        let mut b = client_frame(OpCode::Data(Data::Text), false, b"");
        for _ in 0..3 {
            b.extend(client_frame(OpCode::Data(Data::Continue), false, b""));
        }
        b.extend(client_frame(OpCode::Data(Data::Continue), true, b"{}"));
        b.extend(client_frame(OpCode::Data(Data::Binary), false, b"x"));
        b.extend(client_frame(OpCode::Data(Data::Continue), true, b"yz"));
        b.extend(client_frame(OpCode::Data(Data::Binary), true, b"abcd"));
        // Over the limit in its continuation.
        b.extend(client_frame(OpCode::Data(Data::Binary), false, &[0; 1000]));
        b.extend(client_frame(OpCode::Data(Data::Continue), true, &[0; 100]));
        let got = read_all(b, 1024).await;
        let got: Vec<String> = got.into_iter().map(|r| format!("{r:?}")).collect();
        assert_eq!(
            got,
            [
                "Ok(Fragment(0))",
                "Ok(Fragment(0))",
                "Ok(Fragment(0))",
                "Ok(Fragment(0))",
                "Ok(Text(\"{}\"))",
                "Ok(Fragment(1))",
                "Ok(Binary(3))",
                "Ok(Binary(4))",
                "Ok(Fragment(1000))",
                "Err(TooBig)"
            ]
        );
    }

    #[tokio::test]
    async fn bad_frames_end_reading_with_their_error() {
        let unmasked = {
            let mut out = Vec::new();
            put_text(&mut out, &Frame::from("x"));
            out
        };
        let cases = [
            (unmasked, WsError::Protocol("client frames must be masked")),
            (
                client_frame(OpCode::Data(Data::Text), true, &[0xff, 0xfe]),
                WsError::InvalidUtf8,
            ),
            (
                client_frame(OpCode::Data(Data::Text), true, &[b'a'; 20]),
                WsError::TooBig,
            ),
            (
                client_frame(OpCode::Data(Data::Continue), true, b"x"),
                WsError::Protocol("continuation without a message"),
            ),
            (
                client_frame(OpCode::Control(Control::Ping), false, b"x"),
                WsError::Protocol("bad control frame"),
            ),
        ];
        for (bytes, want) in cases {
            let mut extra = bytes.clone();
            extra.extend(client_frame(OpCode::Data(Data::Text), true, b"after"));
            let got = read_all(extra, 16).await;
            assert_eq!(got.len(), 1, "nothing is read after an error: {got:?}");
            assert_eq!(got[0].as_ref().unwrap_err(), &want);
        }
        // Fragments add up to more than the limit.
        let mut b = client_frame(OpCode::Data(Data::Text), false, &[b'a'; 10]);
        b.extend(client_frame(
            OpCode::Data(Data::Continue),
            true,
            &[b'a'; 10],
        ));
        let got = read_all(b, 16).await;
        assert!(matches!(got[0], Ok(Incoming::Fragment(10))), "{got:?}");
        assert_eq!(got[1].as_ref().unwrap_err(), &WsError::TooBig);
    }

    #[tokio::test]
    async fn frames_split_across_reads_and_no_buffer_when_idle() {
        let whole = client_frame(OpCode::Data(Data::Text), true, &[b'z'; 300]);
        let (mut tx, rx) = tokio::io::duplex(64);
        let mut r = FrameReader::new(rx, 1024);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for piece in whole.chunks(7) {
                tx.write_all(piece).await.unwrap();
            }
            tx
        });
        match r.next().await {
            Some(Ok(Incoming::Text(t))) => assert_eq!(t.len(), 300),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(r.buf.capacity(), 0, "an idle reader holds no buffer");
        drop(writer.await.unwrap());
        assert!(r.next().await.is_none());
    }

    #[test]
    fn server_frames_are_unmasked_with_the_right_lengths() {
        for len in [0usize, 125, 126, 65535, 65536] {
            let text = "a".repeat(len);
            let mut out = Vec::new();
            put_text(&mut out, &Frame::from(text.clone()));
            let mut cur = Cursor::new(&out[..]);
            let (h, n) = FrameHeader::parse(&mut cur).unwrap().unwrap();
            assert_eq!(n as usize, len);
            assert!(h.mask.is_none() && h.is_final);
            assert_eq!(out.len() - cur.position() as usize, len);
        }
        let mut out = Vec::new();
        put_close(&mut out, 1009, &"\u{e9}".repeat(100));
        let mut cur = Cursor::new(&out[..]);
        let (_, n) = FrameHeader::parse(&mut cur).unwrap().unwrap();
        assert!(n <= 125);
        assert!(std::str::from_utf8(&out[cur.position() as usize + 2..]).is_ok());
    }
}
