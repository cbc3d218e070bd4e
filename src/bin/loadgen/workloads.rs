//! The workloads: connect, p2p, room and idle.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{connect, Conn, Incoming, Target};
use crate::stats::{cpu_seconds, latency, rss_kib, Latency};

static START: OnceLock<Instant> = OnceLock::new();

pub fn now_ns() -> u64 {
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// What every workload reports.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub server: String,
    pub workload: String,
    pub clients: usize,
    pub duration_s: f64,
    pub sent: u64,
    pub delivered: u64,
    pub lost: u64,
    pub errors: u64,
    pub rate_per_s: f64,
    #[serde(flatten)]
    pub latency: Latency,
    pub server_cpu_s: Option<f64>,
    pub per_cpu_s: Option<f64>,
    pub rss_per_session_bytes: Option<u64>,
    /// idle: the server's resident memory once all sessions are in (KiB),
    /// and before the first connected (the fixed cost).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_rss_kib: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_rss_before_kib: Option<u64>,
    /// Server CPU time per delivery (µs): what a delivery costs at this load.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_us_per_delivery: Option<f64>,
    /// Cores the server and the load generator used while measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cores: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loadgen_cores: Option<f64>,
    /// CPU seconds the load generator itself used while measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loadgen_cpu_s: Option<f64>,
    /// p2p: messages a client got from another client than its peer (the
    /// Go server 0.4.1 across processes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub misdelivered: Option<u64>,
    /// call-setup: pairs of clients that negotiate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pairs: Option<u64>,
    /// call-setup: pairs that got all their messages.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pairs_done: Option<u64>,
    /// call-setup: when each pair was done, from the start (µs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pair_done: Option<Latency>,
}

/// Shared settings of a run.
pub struct Ctx {
    /// Servers; client i connects to `targets[i % len]` (several servers of
    /// one cluster: pairs and rooms then span processes).
    pub targets: Vec<Target>,
    pub sources: Vec<IpAddr>,
    /// Server processes whose CPU time and memory are measured.
    pub pids: Vec<u32>,
    pub label: String,
    pub concurrency: usize,
}

impl Ctx {
    /// CPU seconds used so far by all measured server processes.
    pub fn cpu(&self) -> Option<f64> {
        if self.pids.is_empty() {
            return None;
        }
        Some(self.pids.iter().filter_map(|p| cpu_seconds(*p)).sum())
    }

    /// CPU seconds used so far by the load generator itself.
    pub fn own_cpu(&self) -> Option<f64> {
        cpu_seconds(std::process::id())
    }
}

impl Report {
    /// Fills in what follows from the measured figures: cores used and
    /// server CPU per delivery.
    pub fn derive(&mut self) {
        let secs = self.duration_s.max(1e-9);
        self.server_cores = self.server_cpu_s.map(|c| c / secs);
        self.loadgen_cores = self.loadgen_cpu_s.map(|c| c / secs);
        if self.delivered > 0 && self.workload != "idle" {
            self.cpu_us_per_delivery = self.server_cpu_s.map(|c| c * 1e6 / self.delivered as f64);
        }
    }
}

/// The ICE candidate of every message (about 300 bytes on the wire with
/// the rest of the message).
const CANDIDATE: &str = "candidate:842163049 1 udp 1677729535 192.0.2.17 53703 typ srflx raddr 0.0.0.0 rport 0 generation 0 ufrag sA3x network-cost 999";

/// The text of a session or room message to `recipient` (its JSON), sent
/// at `t`: the bytes serde_json makes of the same message (keys sorted),
/// written without building a `Value` (the load generator's own cost per
/// message is what limits the saturation workloads on one machine).
fn message_text(recipient: &str, from: usize, seq: u64, t: u64) -> String {
    format!(
        r#"{{"message":{{"data":{{"from":{from},"payload":{{"candidate":{{"candidate":"{CANDIDATE}","sdpMLineIndex":0,"sdpMid":"0"}}}},"roomType":"video","seq":{seq},"t":{t},"type":"candidate"}},"recipient":{recipient}}},"type":"message"}}"#
    )
}

/// Connects `n` clients (hello), `concurrency` at a time, optionally
/// joining `room(i)`. Returns the clients and the handshake latencies.
pub async fn connect_many(
    ctx: &Ctx,
    n: usize,
    room: impl Fn(usize) -> Option<String>,
) -> anyhow::Result<(Vec<Conn>, Vec<u64>)> {
    let sem = Arc::new(Semaphore::new(ctx.concurrency));
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        let sem = sem.clone();
        let target = ctx.targets[i % ctx.targets.len()].clone();
        let source = ctx.sources[i % ctx.sources.len()];
        let room = room(i);
        handles.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await;
            let t0 = Instant::now();
            let mut c = connect(&target, source, &format!("user{i}")).await?;
            let took = t0.elapsed().as_micros() as u64;
            if let Some(r) = room {
                c.join(&r).await?;
            }
            anyhow::Ok((c, took))
        }));
    }
    let mut conns = Vec::with_capacity(n);
    let mut lat = Vec::with_capacity(n);
    for h in handles {
        let (c, t) = h.await??;
        conns.push(c);
        lat.push(t);
    }
    Ok((conns, lat))
}

/// `connect`: hellos per second and handshake latency.
pub async fn run_connect(ctx: &Ctx, n: usize) -> anyhow::Result<Report> {
    let cpu0 = ctx.cpu();
    let gen0 = ctx.own_cpu();
    let t0 = Instant::now();
    let (conns, mut lat) = connect_many(ctx, n, |_| None).await?;
    let secs = t0.elapsed().as_secs_f64();
    let cpu = ctx.cpu().zip(cpu0).map(|(b, a)| b - a);
    let gen = ctx.own_cpu().zip(gen0).map(|(b, a)| b - a);
    drop(conns);
    Ok(Report {
        server: ctx.label.clone(),
        workload: "connect".into(),
        clients: n,
        duration_s: secs,
        sent: n as u64,
        delivered: n as u64,
        rate_per_s: n as f64 / secs,
        latency: latency(&mut lat),
        server_cpu_s: cpu,
        loadgen_cpu_s: gen,
        per_cpu_s: cpu.map(|c| n as f64 / c.max(1e-9)),
        ..Default::default()
    })
}

/// One window (semaphore of `size` permits) per client.
fn windows(n: usize, size: usize) -> Arc<Vec<Arc<Semaphore>>> {
    Arc::new((0..n).map(|_| Arc::new(Semaphore::new(size))).collect())
}

#[derive(Default)]
struct Counters {
    delivered: AtomicU64,
    misdelivered: AtomicU64,
    errors: AtomicU64,
    latencies: Mutex<Vec<u64>>,
}

/// Reads a client's messages: counts deliveries and errors, records
/// latencies, and returns window permits to senders (`ack` decides whether
/// this client acknowledges a message from `from`).
fn spawn_reader(
    mut stream: futures_util::stream::SplitStream<crate::client::Ws>,
    counters: Arc<Counters>,
    windows: Arc<Vec<Arc<Semaphore>>>,
    ack: impl Fn(usize) -> bool + Send + 'static,
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
                    let Some((sent, from, _)) = v.stamp() else {
                        continue;
                    };
                    local.push(now_ns().saturating_sub(sent) / 1000);
                    counters.delivered.fetch_add(1, Ordering::Relaxed);
                    if ack(from) {
                        windows[from].add_permits(1);
                    }
                }
                "error" => {
                    let first = counters.errors.fetch_add(1, Ordering::Relaxed) == 0;
                    if first {
                        eprintln!("first server error: {t}");
                    }
                }
                _ => {}
            }
            if local.len() >= 4096 {
                counters
                    .latencies
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .append(&mut local);
            }
        }
        counters
            .latencies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .append(&mut local);
    })
}

/// How a sender is paced: `rate` messages per second (0: as fast as the
/// window allows), starting `phase` (0 to 1) of a period late, so that the
/// senders of a fixed load are spread over the period instead of all
/// sending in the same millisecond.
#[derive(Clone, Copy)]
struct Pace {
    rate: u32,
    phase: f64,
}

/// Sends from `sinks[i]` until `deadline` with a bounded window, paced by
/// `pace`. Unpaced, every message the window allows at once goes out in
/// one write (several frames), as a client with several queued would.
async fn send_loop(
    mut sink: futures_util::stream::SplitSink<crate::client::Ws, Message>,
    me: usize,
    recipient: Value,
    window: Arc<Semaphore>,
    deadline: Instant,
    pace: Pace,
    sent: Arc<AtomicU64>,
) -> futures_util::stream::SplitSink<crate::client::Ws, Message> {
    let recipient = recipient.to_string();
    let mut seq = 0u64;
    let mut pace = (pace.rate > 0).then(|| {
        let period = Duration::from_secs_f64(1.0 / f64::from(pace.rate));
        let start = tokio::time::Instant::now() + period.mul_f64(pace.phase);
        tokio::time::interval_at(start, period)
    });
    'send: while Instant::now() < deadline {
        if let Some(p) = pace.as_mut() {
            p.tick().await;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(Ok(permit)) = tokio::time::timeout(left, window.acquire()).await else {
            break;
        };
        permit.forget();
        let mut n = 1;
        if pace.is_none() {
            while let Ok(p) = window.try_acquire() {
                p.forget();
                n += 1;
            }
        }
        for _ in 0..n {
            let msg = message_text(&recipient, me, seq, now_ns());
            if sink.feed(Message::Text(msg.into())).await.is_err() {
                break 'send;
            }
            seq += 1;
            sent.fetch_add(1, Ordering::Relaxed);
        }
        if sink.flush().await.is_err() {
            break;
        }
    }
    sink
}

#[allow(clippy::too_many_arguments)]
async fn finish(
    ctx: &Ctx,
    workload: &str,
    clients: usize,
    duration: Duration,
    sent: u64,
    expected: u64,
    counters: &Counters,
    readers: Vec<tokio::task::JoinHandle<()>>,
    sinks: Vec<futures_util::stream::SplitSink<crate::client::Ws, Message>>,
    (cpu, gen): (Option<f64>, Option<f64>),
) -> Report {
    // Let in-flight messages arrive (bounded wait).
    let until = Instant::now() + Duration::from_secs(5);
    while counters.delivered.load(Ordering::Relaxed) < expected && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let delivered = counters.delivered.load(Ordering::Relaxed);
    // Close the connections; the readers then end and hand in their samples.
    for mut s in sinks {
        let _ = s.close().await;
    }
    for r in readers {
        if tokio::time::timeout(Duration::from_secs(5), r)
            .await
            .is_err()
        {
            eprintln!("a reader did not finish; its latency samples are missing");
        }
    }
    let mut lat =
        std::mem::take(&mut *counters.latencies.lock().unwrap_or_else(|p| p.into_inner()));
    let secs = duration.as_secs_f64();
    Report {
        server: ctx.label.clone(),
        workload: workload.into(),
        clients,
        duration_s: secs,
        sent,
        delivered,
        lost: expected.saturating_sub(delivered),
        errors: counters.errors.load(Ordering::Relaxed),
        rate_per_s: delivered as f64 / secs,
        latency: latency(&mut lat),
        server_cpu_s: cpu,
        loadgen_cpu_s: gen,
        per_cpu_s: cpu.map(|c| delivered as f64 / c.max(1e-9)),
        ..Default::default()
    }
}

/// `p2p`: pairs exchange session messages.
pub async fn run_p2p(
    ctx: &Ctx,
    n: usize,
    duration: Duration,
    window: usize,
    rate: u32,
) -> anyhow::Result<Report> {
    let n = n.max(2) & !1;
    let (conns, _) = connect_many(ctx, n, |_| None).await?;
    let ids: Vec<String> = conns.iter().map(|c| c.session_id.clone()).collect();
    let windows = windows(n, window);
    let counters = Arc::new(Counters::default());
    let sent = Arc::new(AtomicU64::new(0));
    let mut sinks = Vec::new();
    let mut readers = Vec::new();
    for (i, c) in conns.into_iter().enumerate() {
        let wrong = counters.clone();
        readers.push(spawn_reader(
            c.stream,
            counters.clone(),
            windows.clone(),
            move |from| {
                if from != i ^ 1 {
                    wrong.misdelivered.fetch_add(1, Ordering::Relaxed);
                }
                true
            },
        ));
        sinks.push((i, c.sink));
    }
    let cpu0 = ctx.cpu();
    let gen0 = ctx.own_cpu();
    let t0 = Instant::now();
    let deadline = t0 + duration;
    let mut senders = Vec::new();
    for (i, sink) in sinks {
        let peer = i ^ 1;
        let recipient = json!({"type": "session", "sessionid": ids[peer]});
        let pace = Pace {
            rate,
            phase: i as f64 / n as f64,
        };
        senders.push(tokio::spawn(send_loop(
            sink,
            i,
            recipient,
            windows[i].clone(),
            deadline,
            pace,
            sent.clone(),
        )));
    }
    let mut sinks = Vec::new();
    for s in senders {
        sinks.push(s.await?);
    }
    let elapsed = t0.elapsed();
    let cpu = ctx.cpu().zip(cpu0).map(|(b, a)| b - a);
    let gen = ctx.own_cpu().zip(gen0).map(|(b, a)| b - a);
    let total = sent.load(Ordering::Relaxed);
    let mut r = finish(
        ctx,
        "p2p",
        n,
        elapsed,
        total,
        total,
        &counters,
        readers,
        sinks,
        (cpu, gen),
    )
    .await;
    r.misdelivered = Some(counters.misdelivered.load(Ordering::Relaxed));
    Ok(r)
}

/// `room`: all clients in one room, `senders` of them send room messages.
pub async fn run_room(
    ctx: &Ctx,
    n: usize,
    senders: usize,
    duration: Duration,
    window: usize,
    rate: u32,
) -> anyhow::Result<Report> {
    let n = n.max(2);
    let senders = senders.clamp(1, n - 1);
    let (conns, _) = connect_many(ctx, n, |_| Some("bench-room".to_string())).await?;
    let windows = windows(n, window);
    let counters = Arc::new(Counters::default());
    let sent = Arc::new(AtomicU64::new(0));
    let acker = n - 1;
    let mut sinks = Vec::new();
    let mut readers = Vec::new();
    for (i, c) in conns.into_iter().enumerate() {
        readers.push(spawn_reader(
            c.stream,
            counters.clone(),
            windows.clone(),
            move |_| i == acker,
        ));
        sinks.push(c.sink);
    }
    // Join events are done: give the server a moment to flush them.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cpu0 = ctx.cpu();
    let gen0 = ctx.own_cpu();
    let t0 = Instant::now();
    let deadline = t0 + duration;
    let mut tasks = Vec::new();
    let mut idle = Vec::new();
    for (i, sink) in sinks.into_iter().enumerate() {
        if i < senders {
            let pace = Pace {
                rate,
                phase: i as f64 / senders as f64,
            };
            tasks.push(tokio::spawn(send_loop(
                sink,
                i,
                json!({"type": "room"}),
                windows[i].clone(),
                deadline,
                pace,
                sent.clone(),
            )));
        } else {
            idle.push(sink);
        }
    }
    for t in tasks {
        idle.push(t.await?);
    }
    let elapsed = t0.elapsed();
    let cpu = ctx.cpu().zip(cpu0).map(|(b, a)| b - a);
    let gen = ctx.own_cpu().zip(gen0).map(|(b, a)| b - a);
    let total = sent.load(Ordering::Relaxed);
    let r = finish(
        ctx,
        "room",
        n,
        elapsed,
        total,
        total * (n as u64 - 1),
        &counters,
        readers,
        idle,
        (cpu, gen),
    )
    .await;
    Ok(r)
}

/// `idle`: sessions sitting in rooms of `room_size` (0: in none); resident
/// memory per session.
pub async fn run_idle(
    ctx: &Ctx,
    n: usize,
    room_size: usize,
    hold: Duration,
) -> anyhow::Result<Report> {
    if ctx.pids.is_empty() {
        anyhow::bail!("idle needs --server-pid");
    }
    let rss = || ctx.pids.iter().filter_map(|p| rss_kib(*p)).sum::<u64>();
    let before = rss();
    let t0 = Instant::now();
    // Rooms of `room_size`; 0: the sessions join no room.
    let (conns, mut lat) = connect_many(ctx, n, |i| {
        (room_size > 0).then(|| format!("idle-{}", i / room_size))
    })
    .await?;
    let secs = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss();
    let per = (after.saturating_sub(before) * 1024) / n.max(1) as u64;
    let r = Report {
        server: ctx.label.clone(),
        workload: "idle".into(),
        clients: n,
        duration_s: secs,
        sent: n as u64,
        delivered: conns.len() as u64,
        rate_per_s: n as f64 / secs,
        latency: latency(&mut lat),
        rss_per_session_bytes: Some(per),
        server_rss_kib: Some(after),
        server_rss_before_kib: Some(before),
        ..Default::default()
    };
    if !hold.is_zero() {
        // Other load generators (scripts/bench-50k) wait for this line.
        eprintln!("ready: {} sessions connected", conns.len());
        tokio::time::sleep(hold).await;
    }
    drop(conns);
    Ok(r)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    /// The hand-written message is byte for byte what serde_json makes of
    /// it (the servers parse the same text as before).
    #[test]
    fn message_text_is_what_serde_json_writes() {
        for recipient in [
            json!({"type": "session", "sessionid": "abc"}),
            json!({"type": "room"}),
        ] {
            let data = json!({"t": 12345, "from": 7, "seq": 3, "type": "candidate", "roomType": "video",
                "payload": {"candidate": {"candidate": super::CANDIDATE, "sdpMid": "0", "sdpMLineIndex": 0}}});
            let expected =
                json!({"type": "message", "message": {"recipient": recipient, "data": data}});
            assert_eq!(
                super::message_text(&recipient.to_string(), 7, 3, 12345),
                expected.to_string()
            );
        }
    }
}
