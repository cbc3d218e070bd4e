//! `spreed-signaling`: run the server, check a config, print the version.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use spreed_signaling::config::Config;
use spreed_signaling::sdnotify;
use spreed_signaling::server::Server;

#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Standalone signaling server for Nextcloud Talk.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Path to server.conf (the Go server's format). `-config` works too.
    #[arg(long, short = 'c', default_value = "server.conf")]
    config: PathBuf,
    /// Log format: `text` or `json` (overrides `[logging] format`).
    #[arg(long)]
    log_format: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

/// Changes the log filter of the running server (SIGHUP).
type LogHandle =
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

/// Logs as `[logging]` says (`RUST_LOG` wins over `[logging] level` at
/// start); returns the handle that SIGHUP uses to change the level.
fn init_logging(config: &Config, format: Option<&str>) -> LogHandle {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log_level));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let json = match format {
        Some(f) => f == "json",
        None => config.log_json,
    };
    // Every line about a session carries the span of its connection:
    // client address, session id and backend.
    let fmt = if json {
        tracing_subscriber::fmt::layer().json().boxed()
    } else {
        // Colours only on a terminal: journald and files get plain text.
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
        tracing_subscriber::fmt::layer().with_ansi(ansi).boxed()
    };
    tracing_subscriber::registry().with(filter).with(fmt).init();
    handle
}

#[derive(Subcommand)]
enum Command {
    /// Validate the configuration, probe the backends (capabilities, hello
    /// v2 key, shared secret) and NATS, print one line per check and exit
    /// non-zero on any failure.
    Check,
    /// Run our MCU proxy (a replacement for nextcloud-spreed-signaling-proxy)
    /// with the Go proxy's proxy.conf; `proxy check` checks that file.
    Proxy(ProxyArgs),
}

/// `spreed-signaling proxy [--config proxy.conf] [check]`.
#[derive(clap::Args)]
struct ProxyArgs {
    /// Path to proxy.conf (the Go proxy's format). `-config` works too.
    #[arg(long, short = 'c', default_value = "proxy.conf", global = true)]
    config: PathBuf,
    #[command(subcommand)]
    action: Option<ProxyAction>,
}

#[derive(Subcommand)]
enum ProxyAction {
    /// Validate proxy.conf, load every [tokens] key and probe Janus; one
    /// line per check, non-zero exit on any failure.
    Check,
}

fn main() -> std::process::ExitCode {
    // Accept the Go server's single-dash `-config` / `-version`.
    let args = std::env::args().map(|a| match a.as_str() {
        "-config" => "--config".to_string(),
        "-version" => "--version".to_string(),
        _ => a,
    });
    let cli = Cli::parse_from(args);
    if let Some(Command::Proxy(args)) = &cli.command {
        return proxy_main(args, cli.log_format.as_deref());
    }
    let config = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("configuration error in {}: {e}", cli.config.display());
            return std::process::ExitCode::from(2);
        }
    };
    if let Some(Command::Check) = cli.command {
        return check(&config, &cli.config);
    }
    // What the file asks for that this server does not do stops start-up
    // before anything is bound.
    if let Some(refused) = config.refusals() {
        for line in refused.lines() {
            eprintln!("configuration error in {}: {line}", cli.config.display());
        }
        return std::process::ExitCode::from(2);
    }
    let log = init_logging(&config, cli.log_format.as_deref());
    // `[http] threads` workers (default: the cores but one); one thread
    // runs a current-thread runtime: no cross-thread wake-ups, the most
    // messages per CPU-second (docs/benchmarks.md).
    let rt = if config.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.threads)
            .enable_all()
            .build()
    }
    .expect("tokio runtime");
    match rt.block_on(run(config, cli.config, log)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `proxy`: our MCU proxy, or `proxy check`.
fn proxy_main(args: &ProxyArgs, log_format: Option<&str>) -> std::process::ExitCode {
    use spreed_signaling::proxy::config::ProxyConfig;
    use spreed_signaling::proxy::tokens::TokenKeys;
    let config = match ProxyConfig::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("configuration error in {}: {e}", args.config.display());
            return std::process::ExitCode::from(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Some(ProxyAction::Check) = args.action {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
            .with_writer(std::io::stderr)
            .init();
        let lines = rt.block_on(spreed_signaling::proxy::check::lines(&config, &args.config));
        return print_check(&lines);
    }
    if let Some(refused) = config.refusals() {
        for line in refused.lines() {
            eprintln!("configuration error in {}: {line}", args.config.display());
        }
        return std::process::ExitCode::from(2);
    }
    init_proxy_logging(log_format);
    for f in &config.findings {
        tracing::warn!("{}", f.text);
    }
    let tokens = match TokenKeys::load(&config.tokens, true) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("configuration error in {}: {e}", args.config.display());
            return std::process::ExitCode::from(2);
        }
    };
    match rt.block_on(spreed_signaling::proxy::run(config, tokens, &args.config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The proxy logs at `info` (`RUST_LOG` overrides), as text or JSON.
fn init_proxy_logging(format: Option<&str>) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    if format == Some("json") {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_ansi(ansi)
            .with_env_filter(filter)
            .init();
    }
}

/// Prints check lines (a closed stdout ends the printing); fails when one
/// failed.
fn print_check(lines: &[spreed_signaling::check::CheckLine]) -> std::process::ExitCode {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    for l in lines {
        if writeln!(out, "{l}").is_err() {
            break;
        }
    }
    let _ = out.flush();
    if lines.iter().all(|l| l.ok) {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

/// `check`: the findings of the file, then a probe of everything it
/// points at, a line each on stdout (a closed stdout, e.g. `check | head
/// -1`, ends the printing, not the process with a panic). Log lines of the
/// probes' libraries go to stderr, warnings only.
fn check(config: &Config, path: &std::path::Path) -> std::process::ExitCode {
    use spreed_signaling::check::CheckLine;
    use std::io::Write;
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn,async_nats=off"))
        .with_writer(std::io::stderr)
        .init();
    let mut lines = vec![CheckLine::from_text(
        true,
        false,
        format!("{}: configuration valid", path.display()),
    )];
    lines.extend(config.findings.iter().map(CheckLine::from_finding));
    // Then everything it points at, as the server would use it.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    lines.extend(rt.block_on(spreed_signaling::check::probe(config)));
    let mut out = std::io::stdout().lock();
    for l in &lines {
        if writeln!(out, "{l}").is_err() {
            break;
        }
    }
    let _ = out.flush();
    if lines.iter().all(|l| l.ok) {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

async fn run(config: Config, path: PathBuf, log: LogHandle) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        config = %path.display(),
        threads = config.threads,
        "spreed-signaling starting"
    );
    // The handlers exist before anything is bound: a SIGHUP or SIGUSR1
    // during start-up (the port answers TCP while start-up waits for NATS)
    // waits for the loop below instead of killing the process; SIGTERM
    // stops start-up.
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    // SIGUSR1 drains (as the Go server); it never kills the process.
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let server = tokio::select! {
        s = Server::start(config, None) => s?,
        _ = term.recv() => return Ok(()),
        _ = tokio::signal::ctrl_c() => return Ok(()),
    };
    let hub = server.hub.clone();
    let drained = async move { hub.drained().await };
    tokio::pin!(drained);
    // systemd (Type=notify): ready once the port is bound; the watchdog is
    // fed only while the hub answers (a stuck hub lock stops it).
    sdnotify::notify(&format!("READY=1\nSTATUS=listening on {}", server.addr));
    if let Some(every) = sdnotify::watchdog_interval() {
        let hub = server.hub.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let _ = hub.session_count();
                sdnotify::notify("WATCHDOG=1");
            }
        });
    }
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = usr1.recv() => drain(&server),
            _ = &mut drained => {
                tracing::info!("drained: the last client session is gone");
                break;
            }
            _ = hup.recv() => {
                sdnotify::reloading();
                match Config::load(&path).and_then(|c| match c.refusals() {
                    Some(r) => Err(spreed_signaling::config::ConfigError(r)),
                    None => Ok(c),
                }) {
                    // SIGHUP: backends, [app], [stats], the certificate
                    // and the log level are reloaded, sessions stay; other
                    // settings need a restart (logged).
                    Ok(c) => {
                        server.reload(&c);
                        match tracing_subscriber::EnvFilter::try_new(&c.log_level) {
                            Ok(f) => {
                                let _ = log.reload(f);
                                tracing::info!(level = %c.log_level, "log level reloaded");
                            }
                            Err(e) => tracing::error!("[logging] level: {e}"),
                        }
                    }
                    Err(e) => tracing::error!("reload of {} failed, keeping the running configuration: {e}", path.display()),
                }
                sdnotify::notify("READY=1");
            }
        }
    }
    tracing::info!("shutting down");
    sdnotify::notify("STOPPING=1");
    server.shutdown().await;
    Ok(())
}

/// SIGUSR1: stop accepting connections, serve the sessions already here,
/// exit once the last client session is gone (SIGTERM still stops at once).
fn drain(server: &Server) {
    if server.drain() {
        let clients = server.hub.client_sessions();
        tracing::info!(
            clients,
            "SIGUSR1: draining: listeners closed, exiting when the last client session is gone"
        );
        sdnotify::notify(&format!("STATUS=draining, {clients} client sessions left"));
    } else {
        tracing::info!("SIGUSR1: already draining");
    }
}
