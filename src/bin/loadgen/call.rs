//! `call-setup`: the shape of a real call. N clients join one room; every
//! pair negotiates a connection with session messages: the offerer (lower
//! index) sends an offer and trickles its candidates at once, the answerer
//! replies to the offer with an answer and its candidates. Reports the
//! time until every pair is done and the latency of each message.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{Incoming, Ws};
use crate::stats::{latency, Latency};
use crate::workloads::{connect_many, now_ns, Ctx, Report};

/// Candidates each side of a pair sends.
pub const CANDIDATES: usize = 5;
/// Messages per pair: offer, answer and the candidates of both sides.
const PER_PAIR: u8 = 2 + 2 * CANDIDATES as u8;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Offer,
    Answer,
    Candidate(u8),
    /// The run is over: the writer hands its sink back.
    Stop,
}

/// An SDP of realistic size (~2.5 KB): a browser's audio + video offer.
fn sdp(kind: &str) -> String {
    let mut s = format!("v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\na=extmap-allow-mixed\r\na=msid-semantic: WMS {kind}\r\n");
    for (mid, media) in ["audio", "video"].iter().enumerate() {
        s.push_str(&format!("m={media} 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126\r\nc=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\na=ice-ufrag:sA3x\r\na=ice-pwd:Qx4yXk7ZhW2m9pPq1rT5uV8w\r\na=ice-options:trickle\r\na=fingerprint:sha-256 4A:AD:B9:B1:3F:82:18:3B:54:02:12:DF:3E:5D:49:6B:19:E5:7C:AB:3A:7A:D1:4C:5B:2E:94:5D:2E:81:1F:1A\r\na=setup:actpass\r\na=mid:{mid}\r\na=sendrecv\r\na=rtcp-mux\r\n"));
        for pt in 0..12 {
            s.push_str(&format!(
                "a=rtpmap:{} {media}-codec-{pt}/90000\r\na=rtcp-fb:{} nack\r\n",
                96 + pt,
                96 + pt
            ));
        }
    }
    s
}

/// The text of one message from `from` to the session `to_id`, stamped now.
/// `sdp` holds the offer's and the answer's SDP, already as JSON strings.
fn text(kind: Kind, from: usize, to_id: &str, sdp: &(String, String)) -> String {
    let t = now_ns();
    let head = format!(
        r#"{{"type":"message","message":{{"recipient":{{"type":"session","sessionid":"{to_id}"}},"data":{{"t":{t},"from":{from},"roomType":"video","#
    );
    let data = match kind {
        Kind::Offer => format!(
            r#""type":"offer","payload":{{"type":"offer","sdp":{},"nick":"bench"}}"#,
            sdp.0
        ),
        Kind::Answer => format!(
            r#""type":"answer","payload":{{"type":"answer","sdp":{},"nick":"bench"}}"#,
            sdp.1
        ),
        Kind::Candidate(c) => format!(
            r#""type":"candidate","payload":{{"candidate":{{"candidate":"candidate:842163049 {c} udp 1677729535 192.0.2.17 5370{c} typ srflx raddr 0.0.0.0 rport 0 generation 0 ufrag sA3x network-cost 999","sdpMid":"0","sdpMLineIndex":0}}}}"#
        ),
        Kind::Stop => String::new(),
    };
    format!("{head}{data}}}}}}}")
}

/// Per-run shared state.
struct Shared {
    n: usize,
    t0: Mutex<Option<Instant>>,
    /// Messages received per pair (index `lo * n + hi`).
    per_pair: Vec<AtomicU8>,
    delivered: AtomicU64,
    errors: AtomicU64,
    pairs_done: AtomicU64,
    pair_done_us: Mutex<Vec<u64>>,
    latencies: Mutex<Vec<u64>>,
}

impl Shared {
    fn elapsed_us(&self) -> u64 {
        self.t0
            .lock()
            .expect("t0")
            .map(|t| t.elapsed().as_micros() as u64)
            .unwrap_or(0)
    }
}

/// Sends what the client's tasks queue, stamping each message when it
/// leaves; many queued messages go out with one flush.
async fn writer(
    mut sink: futures_util::stream::SplitSink<Ws, Message>,
    me: usize,
    ids: Arc<Vec<String>>,
    mut rx: mpsc::UnboundedReceiver<(usize, Kind)>,
) -> futures_util::stream::SplitSink<Ws, Message> {
    let sdps = (
        Value::from(sdp("offer")).to_string(),
        Value::from(sdp("answer")).to_string(),
    );
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some((to, kind)) = next {
            if kind == Kind::Stop {
                return sink;
            }
            let msg = text(kind, me, &ids[to], &sdps);
            if sink.feed(Message::Text(msg.into())).await.is_err() {
                return sink;
            }
            next = rx.try_recv().ok();
        }
        if sink.flush().await.is_err() {
            return sink;
        }
    }
    sink
}

fn reader(
    mut stream: futures_util::stream::SplitStream<Ws>,
    me: usize,
    out: mpsc::UnboundedSender<(usize, Kind)>,
    shared: Arc<Shared>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut local = Vec::new();
        while let Some(Ok(m)) = stream.next().await {
            let Message::Text(t) = m else { continue };
            let Ok(v) = serde_json::from_str::<Incoming>(t.as_str()) else {
                continue;
            };
            match v.kind {
                "message" => {
                    let Some((sent, from, kind)) = v.stamp() else {
                        continue;
                    };
                    local.push(now_ns().saturating_sub(sent) / 1000);
                    shared.delivered.fetch_add(1, Ordering::Relaxed);
                    if kind == "offer" {
                        let _ = out.send((from, Kind::Answer));
                        for c in 0..CANDIDATES {
                            let _ = out.send((from, Kind::Candidate(c as u8)));
                        }
                    }
                    let (lo, hi) = (me.min(from), me.max(from));
                    let got = shared.per_pair[lo * shared.n + hi].fetch_add(1, Ordering::AcqRel);
                    if got + 1 == PER_PAIR {
                        let us = shared.elapsed_us();
                        shared.pair_done_us.lock().expect("pairs").push(us);
                        shared.pairs_done.fetch_add(1, Ordering::Release);
                    }
                }
                "error" => {
                    eprintln!("client {me}: server error: {t}");
                    shared.errors.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
            if local.len() >= 1024 {
                shared.latencies.lock().expect("lat").append(&mut local);
            }
        }
        shared.latencies.lock().expect("lat").append(&mut local);
    })
}

/// Every offerer (the lower index of each pair of the `n` clients) sends
/// its offer and trickles its candidates at once.
fn send_offers(senders: &[mpsc::UnboundedSender<(usize, Kind)>], n: usize) {
    for (i, tx) in senders.iter().enumerate() {
        for peer in i + 1..n {
            let _ = tx.send((peer, Kind::Offer));
            for c in 0..CANDIDATES {
                let _ = tx.send((peer, Kind::Candidate(c as u8)));
            }
        }
    }
}

/// Ends the run: the writers close their sockets, the readers get a
/// moment to hand in their latency samples.
async fn stop(
    senders: &[mpsc::UnboundedSender<(usize, Kind)>],
    writers: Vec<tokio::task::JoinHandle<futures_util::stream::SplitSink<Ws, Message>>>,
    readers: Vec<tokio::task::JoinHandle<()>>,
) {
    for tx in senders {
        let _ = tx.send((0, Kind::Stop));
    }
    for w in writers {
        if let Ok(mut sink) = w.await {
            let _ = sink.close().await;
        }
    }
    for r in readers {
        if tokio::time::timeout(Duration::from_secs(5), r)
            .await
            .is_err()
        {
            eprintln!("a reader did not finish; its latency samples are missing");
        }
    }
}

/// Runs `call-setup` with `n` clients in one room.
pub async fn run_call_setup(ctx: &Ctx, n: usize, timeout: Duration) -> anyhow::Result<Report> {
    let n = n.max(2);
    let (conns, _) = connect_many(ctx, n, |_| Some("bench-call".to_string())).await?;
    let ids: Arc<Vec<String>> = Arc::new(conns.iter().map(|c| c.session_id.clone()).collect());
    let shared = Arc::new(Shared {
        n,
        t0: Mutex::new(None),
        per_pair: (0..n * n).map(|_| AtomicU8::new(0)).collect(),
        delivered: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        pairs_done: AtomicU64::new(0),
        pair_done_us: Mutex::new(Vec::new()),
        latencies: Mutex::new(Vec::new()),
    });
    let mut writers = Vec::new();
    let mut readers = Vec::new();
    let mut senders = Vec::new();
    for (i, c) in conns.into_iter().enumerate() {
        let (tx, rx) = mpsc::unbounded_channel();
        writers.push(tokio::spawn(writer(c.sink, i, ids.clone(), rx)));
        readers.push(reader(c.stream, i, tx.clone(), shared.clone()));
        senders.push(tx);
    }
    // Join events are done: give the server a moment to flush them.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pairs = (n * (n - 1) / 2) as u64;
    let expected = pairs * PER_PAIR as u64;
    let cpu0 = ctx.cpu();
    let gen0 = ctx.own_cpu();
    let t0 = Instant::now();
    *shared.t0.lock().expect("t0") = Some(t0);
    send_offers(&senders, n);
    let until = t0 + timeout;
    while shared.pairs_done.load(Ordering::Acquire) < pairs && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = t0.elapsed();
    let cpu = ctx.cpu().zip(cpu0).map(|(b, a)| b - a);
    let gen = ctx.own_cpu().zip(gen0).map(|(b, a)| b - a);
    let delivered = shared.delivered.load(Ordering::Relaxed);
    stop(&senders, writers, readers).await;
    let mut lat = std::mem::take(&mut *shared.latencies.lock().expect("lat"));
    let mut done = std::mem::take(&mut *shared.pair_done_us.lock().expect("pairs"));
    let done_pairs = done.len() as u64;
    let secs = elapsed.as_secs_f64();
    Ok(Report {
        server: ctx.label.clone(),
        workload: "call-setup".into(),
        clients: n,
        duration_s: secs,
        sent: expected,
        delivered,
        lost: expected.saturating_sub(delivered),
        errors: shared.errors.load(Ordering::Relaxed),
        rate_per_s: delivered as f64 / secs,
        latency: latency(&mut lat),
        server_cpu_s: cpu,
        loadgen_cpu_s: gen,
        per_cpu_s: cpu.map(|c| delivered as f64 / c.max(1e-9)),
        pairs: Some(pairs),
        pairs_done: Some(done_pairs),
        pair_done: Some(latency(&mut done)).filter(|_: &Latency| done_pairs > 0),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_valid_json_with_stamp() {
        let sdps = (
            Value::from(sdp("offer")).to_string(),
            Value::from(sdp("answer")).to_string(),
        );
        for kind in [Kind::Offer, Kind::Answer, Kind::Candidate(3)] {
            let v: Value = serde_json::from_str(&text(kind, 7, "sid", &sdps)).unwrap();
            assert_eq!(v["message"]["recipient"]["sessionid"], "sid");
            assert_eq!(v["message"]["data"]["from"], 7);
            assert!(v["message"]["data"]["t"].is_u64());
        }
        let v: Value = serde_json::from_str(&text(Kind::Offer, 7, "sid", &sdps)).unwrap();
        assert_eq!(v["message"]["data"]["type"], "offer");
        assert!(
            v["message"]["data"]["payload"]["sdp"]
                .as_str()
                .unwrap()
                .len()
                > 2000
        );
    }
}
