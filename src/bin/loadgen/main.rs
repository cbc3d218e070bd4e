//! `spreed-loadgen`: load generator for signaling servers speaking the
//! Nextcloud Talk signaling API (this one and the Go server). It runs its
//! own fake Nextcloud; point the server's backend at `--backend-listen`.
//!
//! Output: one JSON line per result on stdout, a table on stderr.

mod backend;
mod call;
mod client;
mod stats;
mod workloads;

use std::net::IpAddr;
use std::time::Duration;

use clap::Parser;

use client::Target;
use workloads::{Ctx, Report};

/// Load generator for Talk signaling servers.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Server WebSocket URL (ws://IP:PORT/spreed); several, comma-separated,
    /// for the processes of one cluster.
    #[arg(long, default_value = "ws://127.0.0.1:8080/spreed")]
    url: String,
    /// Address of the built-in fake Nextcloud.
    #[arg(long, default_value = "127.0.0.1:18500")]
    backend_listen: String,
    /// Workload: connect, p2p, room, call-setup or idle.
    #[arg(long, default_value = "p2p")]
    workload: String,
    /// Number of clients.
    #[arg(long, default_value_t = 100)]
    clients: usize,
    /// Seconds of sending (p2p, room); call-setup: seconds to wait for all pairs.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Messages in flight per sender (closed loop).
    #[arg(long, default_value_t = 16)]
    window: usize,
    /// Messages per second per sender, the senders' first messages spread
    /// over one period (a steady load, not one burst a period); 0 = as
    /// fast as the window allows.
    #[arg(long, default_value_t = 0)]
    rate: u32,
    /// Senders in the room workload.
    #[arg(long, default_value_t = 1)]
    senders: usize,
    /// Sessions per room in the idle workload (0: no room).
    #[arg(long, default_value_t = 50)]
    room_size: usize,
    /// idle: seconds to keep the sessions connected after measuring (prints
    /// `ready:` on stderr first).
    #[arg(long, default_value_t = 0)]
    hold: u64,
    /// Concurrent handshakes.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Source addresses 127.0.0.1..=127.0.0.N (more than ~28k connections
    /// need several).
    #[arg(long, default_value_t = 1)]
    sources: u8,
    /// Server process ids (comma-separated), for CPU and memory readings.
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// Bytes of each connection's read buffer (tungstenite's 128 KiB by
    /// default, resident per connection: many idle sessions want less).
    #[arg(long, default_value_t = 128 * 1024)]
    read_buffer: usize,
    /// Name of the server in the output.
    #[arg(long, default_value = "server")]
    label: String,
}

fn print_table(r: &Report) {
    eprintln!(
        "{:<10} {:<8} clients={:<6} rate={:>10.0}/s sent={:<8} delivered={:<9} lost={:<5} errors={:<4} p50={}us p99={}us max={}us cpu={} per_cpu_s={} us/delivery={} cores={}/{} rss/session={}",
        r.server,
        r.workload,
        r.clients,
        r.rate_per_s,
        r.sent,
        r.delivered,
        r.lost,
        r.errors,
        r.latency.p50_us,
        r.latency.p99_us,
        r.latency.max_us,
        r.server_cpu_s.map(|c| format!("{c:.2}s")).unwrap_or("-".into()),
        r.per_cpu_s.map(|c| format!("{c:.0}")).unwrap_or("-".into()),
        r.cpu_us_per_delivery
            .map(|c| format!("{c:.2}"))
            .unwrap_or("-".into()),
        r.server_cores
            .map(|c| format!("{c:.2}"))
            .unwrap_or("-".into()),
        r.loadgen_cores
            .map(|c| format!("{c:.2}"))
            .unwrap_or("-".into()),
        r.rss_per_session_bytes.map(|b| format!("{b}B")).unwrap_or("-".into()),
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    backend::start(&args.backend_listen).await?;
    let backend_url = format!(
        "http://{}/ocs/v2.php/apps/spreed/api/v3/signaling/backend",
        args.backend_listen
    );
    let ctx = Ctx {
        targets: args
            .url
            .split(',')
            .map(|u| Target::new(u.trim(), &backend_url, args.read_buffer))
            .collect::<anyhow::Result<_>>()?,
        sources: (1..=args.sources.max(1))
            .map(|i| IpAddr::from([127, 0, 0, i]))
            .collect(),
        pids: args.server_pid.clone(),
        label: args.label.clone(),
        concurrency: args.concurrency.max(1),
    };
    let duration = Duration::from_secs(args.duration);
    let mut report = match args.workload.as_str() {
        "connect" => workloads::run_connect(&ctx, args.clients).await?,
        "p2p" => workloads::run_p2p(&ctx, args.clients, duration, args.window, args.rate).await?,
        "room" => {
            workloads::run_room(
                &ctx,
                args.clients,
                args.senders,
                duration,
                args.window,
                args.rate,
            )
            .await?
        }
        "call-setup" => call::run_call_setup(&ctx, args.clients, duration).await?,
        "idle" => {
            let hold = Duration::from_secs(args.hold);
            workloads::run_idle(&ctx, args.clients, args.room_size, hold).await?
        }
        other => anyhow::bail!("unknown workload {other}"),
    };
    report.derive();
    println!("{}", serde_json::to_string(&report)?);
    print_table(&report);
    if let (Some(p), Some(d)) = (report.pairs, report.pairs_done) {
        let l = report.pair_done.unwrap_or_default();
        eprintln!(
            "{:<10} call-setup pairs={p} done={d} pair done after p50={}us p99={}us all={}us",
            report.server, l.p50_us, l.p99_us, l.max_us
        );
    }
    Ok(())
}
