//! A micro-benchmark of what the server does per relayed `message` in user
//! space, without sockets: parse the client's frame, route it, build the
//! recipient's frame, queue it, and write a batch of six into a buffer as
//! the connection's writer does. Deterministic enough to compare builds
//! on a busy machine (the socket benchmark is not, docs/benchmarks.md):
//!
//!   cargo test --release --lib hot_path -- --ignored --nocapture

use tokio::time::Instant;

use super::tests::{hub_on, internal_hello};

/// The load generator's p2p message (`src/bin/loadgen/workloads.rs`).
fn message_text(recipient: &str, seq: u64) -> String {
    format!(
        r#"{{"message":{{"data":{{"from":7,"payload":{{"candidate":{{"candidate":"candidate:842163049 1 udp 1677729535 192.0.2.17 53703 typ srflx raddr 0.0.0.0 rport 0 generation 0 ufrag sA3x network-cost 999","sdpMLineIndex":0,"sdpMid":"0"}}}},"roomType":"video","seq":{seq},"t":1765000000000000,"type":"candidate"}},"recipient":{{"type":"session","sessionid":"{recipient}"}}}},"type":"message"}}"#
    )
}

#[tokio::test]
#[ignore = "a benchmark: run it in a release build"]
async fn hot_path_of_a_session_message() {
    let hub = hub_on(std::sync::Arc::new(crate::bus::LocalBus::new()));
    let a = hub.new_outbox();
    let from = hub.hello(&a, None, internal_hello(None)).await.unwrap().sid;
    let b = hub.new_outbox();
    let to = hub.hello(&b, None, internal_hello(None)).await.unwrap().sid;
    b.drain();
    let text = message_text(&to, 12345);
    const N: usize = 300_000;
    let mut best = f64::MAX;
    let mut out = Vec::new();
    for _ in 0..7 {
        let mut delivered = 0;
        let t0 = Instant::now();
        for i in 0..N {
            // The reader gets each frame as a String of its own.
            let frame = text.clone();
            let parsed = serde_json::from_str(&frame).expect("message parses");
            assert!(!a.is_closing());
            assert!(hub.handle(&from, parsed, &frame).is_none());
            if i % 6 == 5 {
                let batch = b.drain();
                delivered += batch.frames.len();
                for f in &batch.frames {
                    crate::http::wsframe::put_text(&mut out, f);
                }
                out = Vec::new();
            }
        }
        let per = t0.elapsed().as_secs_f64() * 1e9 / N as f64;
        assert_eq!(delivered, N, "every message delivered");
        best = best.min(per);
        eprintln!("hot path: {per:.0} ns per message");
    }
    eprintln!("hot path: best {best:.0} ns per message");
}
