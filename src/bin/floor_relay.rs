//! `spreed-floor-relay`: the least a relay can do for the load generator's
//! `p2p` workload, to measure the floor of CPU per delivered message on a
//! machine (docs/benchmarks.md, "The floor relay"). NOT a signaling server:
//! no backend, no authentication, no rooms, no limits; a benchmark tool.
//!
//! One thread and one epoll (mio), a hand-written WebSocket framing for
//! exactly what `spreed-loadgen` sends (unfragmented text and close frames),
//! no JSON parser: the recipient and the `data` of a session message are
//! found by scanning the bytes. Each wake-up reads each ready socket once
//! (again only if the read filled the buffer), appends every frame for a
//! recipient to that recipient's buffer, and ends with one write per
//! recipient that got frames. The frames it sends have the shape and about
//! the size of a real server's (`sender` with a session id as long as ours).

use std::io::{self, Read, Write};
use std::net::SocketAddr;

use clap::Parser;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// Relays the load generator's session messages with the least work.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
}

const LISTENER: Token = Token(usize::MAX);
/// Length of the session ids handed out: about as long as the server's,
/// so that frames on the wire have the same size.
const ID_LEN: usize = 160;
/// Bytes read from a socket at a time (one buffer for all connections).
const READ_CHUNK: usize = 64 * 1024;

struct Conn {
    stream: TcpStream,
    /// Unparsed input (a partial request or frame); empty while idle.
    input: Vec<u8>,
    /// Frames waiting for the socket.
    out: Vec<u8>,
    upgraded: bool,
    hello: bool,
}

struct Relay {
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    /// Connections with frames in `out` not yet written this turn.
    dirty: Vec<usize>,
    scratch: Vec<u8>,
}

fn main() -> io::Result<()> {
    let args = Args::parse();
    let mut poll = Poll::new()?;
    let mut listener = TcpListener::bind(args.listen)?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut relay = Relay {
        conns: Vec::new(),
        free: Vec::new(),
        dirty: Vec::new(),
        scratch: vec![0; READ_CHUNK],
    };
    let mut events = Events::with_capacity(1024);
    loop {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for ev in events.iter() {
            if ev.token() == LISTENER {
                relay.accept(&listener, &poll)?;
                continue;
            }
            let i = ev.token().0;
            if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                relay.read(i);
            }
            if ev.is_writable() && !relay.dirty.contains(&i) {
                relay.dirty.push(i);
            }
        }
        relay.flush();
    }
}

impl Relay {
    fn accept(&mut self, listener: &TcpListener, poll: &Poll) -> io::Result<()> {
        loop {
            let (mut stream, _) = match listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            };
            stream.set_nodelay(true)?;
            let i = self.free.pop().unwrap_or_else(|| {
                self.conns.push(None);
                self.conns.len() - 1
            });
            poll.registry().register(
                &mut stream,
                Token(i),
                Interest::READABLE | Interest::WRITABLE,
            )?;
            self.conns[i] = Some(Conn {
                stream,
                input: Vec::new(),
                out: Vec::new(),
                upgraded: false,
                hello: false,
            });
        }
    }

    fn close(&mut self, i: usize) {
        if self.conns[i].take().is_some() {
            self.free.push(i);
        }
    }

    /// Reads what connection `i` has (one read unless it fills the buffer)
    /// and handles every complete request or frame in it.
    fn read(&mut self, i: usize) {
        loop {
            let Some(conn) = self.conns[i].as_mut() else {
                return;
            };
            let n = match conn.stream.read(&mut self.scratch) {
                Ok(0) => return self.close(i),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return self.close(i),
            };
            let mut input = std::mem::take(&mut conn.input);
            if input.is_empty() {
                let mut scratch = std::mem::take(&mut self.scratch);
                let used = self.handle(i, &mut scratch[..n]);
                input.extend_from_slice(&scratch[used..n]);
                self.scratch = scratch;
            } else {
                input.extend_from_slice(&self.scratch[..n]);
                let used = self.handle(i, &mut input);
                input.drain(..used);
            }
            match self.conns[i].as_mut() {
                Some(conn) => conn.input = input,
                None => return,
            }
            // A short read took all there was (as tokio assumes too).
            if n < READ_CHUNK {
                return;
            }
        }
    }

    /// Handles the complete requests and frames at the start of `buf`;
    /// returns the bytes used.
    fn handle(&mut self, i: usize, buf: &mut [u8]) -> usize {
        let mut at = 0;
        while self.conns[i].is_some() {
            let upgraded = self.conns[i].as_ref().is_some_and(|c| c.upgraded);
            let used = if upgraded {
                self.frame(i, &mut buf[at..])
            } else {
                self.upgrade(i, &buf[at..])
            };
            if used == 0 {
                break;
            }
            at += used;
        }
        at
    }

    /// The HTTP upgrade request: answers it with 101 once complete.
    fn upgrade(&mut self, i: usize, buf: &[u8]) -> usize {
        let Some(end) = find(buf, b"\r\n\r\n") else {
            return 0;
        };
        let head = String::from_utf8_lossy(&buf[..end]);
        let key = head.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-key")
                .then(|| value.trim().to_string())
        });
        let Some(key) = key else {
            self.close(i);
            return 0;
        };
        let reply = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
            derive_accept_key(key.as_bytes())
        );
        self.queue_raw(i, reply.as_bytes());
        if let Some(c) = self.conns[i].as_mut() {
            c.upgraded = true;
        }
        end + 4
    }

    /// One client frame (masked): unmasks it in place and handles it.
    /// Returns its length, 0 while incomplete.
    fn frame(&mut self, i: usize, buf: &mut [u8]) -> usize {
        let Some((opcode, start, len)) = frame_header(buf) else {
            return 0;
        };
        let (mask, payload) = buf[start - 4..start + len].split_at_mut(4);
        for (k, b) in payload.iter_mut().enumerate() {
            *b ^= mask[k & 3];
        }
        match opcode {
            0x1 => self.text(i, &buf[start..start + len]),
            0x8 => self.close(i),
            _ => {}
        }
        start + len
    }

    /// A text frame: hello gets its reply, a session message goes to its
    /// recipient.
    fn text(&mut self, i: usize, text: &[u8]) {
        let first = self.conns[i].as_mut().is_some_and(|c| !c.hello);
        if first {
            if let Some(c) = self.conns[i].as_mut() {
                c.hello = true;
            }
            let id = session_id(i);
            let reply = format!(
                r#"{{"type":"hello","hello":{{"version":"1.0","sessionid":"{id}","resumeid":"{id}","userid":"user{i}","server":{{"version":"floor"}}}}}}"#
            );
            self.queue_text(i, &[reply.as_bytes()]);
            return;
        }
        let Some(to) = recipient(text) else {
            return;
        };
        let Some(data) = data_value(text) else {
            return;
        };
        let head = format!(
            r#"{{"type":"message","message":{{"sender":{{"type":"session","sessionid":"{}","userid":"user{i}"}},"data":"#,
            session_id(i)
        );
        self.queue_text(to, &[head.as_bytes(), data, b"}}"]);
    }

    /// Appends one unmasked text frame made of `parts` to `to`'s output.
    fn queue_text(&mut self, to: usize, parts: &[&[u8]]) {
        let Some(Some(c)) = self.conns.get_mut(to) else {
            return;
        };
        let len: usize = parts.iter().map(|p| p.len()).sum();
        c.out.push(0x81);
        if len < 126 {
            c.out.push(len as u8);
        } else if len <= usize::from(u16::MAX) {
            c.out.push(126);
            c.out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            c.out.push(127);
            c.out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        for p in parts {
            c.out.extend_from_slice(p);
        }
        self.dirty.push(to);
    }

    fn queue_raw(&mut self, to: usize, bytes: &[u8]) {
        if let Some(Some(c)) = self.conns.get_mut(to) {
            c.out.extend_from_slice(bytes);
            self.dirty.push(to);
        }
    }

    /// One write per connection that got frames this turn.
    fn flush(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable();
        dirty.dedup();
        for &i in &dirty {
            let Some(c) = self.conns[i].as_mut() else {
                continue;
            };
            if c.out.is_empty() {
                continue;
            }
            match c.stream.write(&c.out) {
                Ok(n) => {
                    c.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => self.close(i),
            }
        }
        dirty.clear();
        self.dirty = dirty;
    }
}

/// `(opcode, payload start, payload length)` of a complete masked frame at
/// the start of `buf`.
fn frame_header(buf: &[u8]) -> Option<(u8, usize, usize)> {
    let (b0, b1) = (*buf.first()?, *buf.get(1)?);
    let (len, at) = match b1 & 0x7f {
        126 => (
            usize::from(u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?])),
            4,
        ),
        127 => {
            let bytes: [u8; 8] = buf.get(2..10)?.try_into().ok()?;
            (usize::try_from(u64::from_be_bytes(bytes)).ok()?, 10)
        }
        n => (usize::from(n), 2),
    };
    let start: usize = at + 4;
    (buf.len() >= start.checked_add(len)?).then_some((b0 & 0x0f, start, len))
}

fn session_id(i: usize) -> String {
    format!("{i:0>ID_LEN$}")
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The connection a session message is for: the session id in
/// `"recipient":{...,"sessionid":"..."}`.
fn recipient(text: &[u8]) -> Option<usize> {
    let r = find(text, b"\"recipient\":")?;
    let s = r + find(&text[r..], b"\"sessionid\":\"")? + 13;
    let end = s + text[s..].iter().position(|&b| b == b'"')?;
    std::str::from_utf8(&text[s..end]).ok()?.parse().ok()
}

/// The raw JSON object after `"message":{...,"data":`.
fn data_value(text: &[u8]) -> Option<&[u8]> {
    let s = find(text, b"\"data\":")? + 7;
    let (mut depth, mut in_str, mut esc) = (0u32, false, false);
    for (k, &b) in text[s..].iter().enumerate() {
        if in_str {
            match (esc, b) {
                (true, _) => esc = false,
                (false, b'\\') => esc = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'{' => depth += 1,
            b'}' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(&text[s..=s + k]);
                }
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_recipient_and_data_in_either_key_order() {
        let sorted = br#"{"message":{"data":{"a":"}\"{","b":{"c":1}},"recipient":{"sessionid":"0042","type":"session"}},"type":"message"}"#;
        assert_eq!(recipient(sorted), Some(42));
        assert_eq!(
            data_value(sorted),
            Some(&br#"{"a":"}\"{","b":{"c":1}}"#[..])
        );
        let ordered = br#"{"type":"message","message":{"recipient":{"type":"session","sessionid":"7"},"data":{"t":1}}}"#;
        assert_eq!(recipient(ordered), Some(7));
        assert_eq!(data_value(ordered), Some(&br#"{"t":1}"#[..]));
    }

    #[test]
    fn frame_header_waits_for_the_whole_frame() {
        let mut f = vec![0x81, 0x80 | 126, 0x01, 0x00, 1, 2, 3, 4];
        f.extend(std::iter::repeat_n(0u8, 256));
        assert_eq!(frame_header(&f), Some((1, 8, 256)));
        assert_eq!(frame_header(&f[..100]), None);
        assert_eq!(frame_header(&[0x88, 0x80, 9, 9, 9, 9]), Some((8, 6, 0)));
    }
}
