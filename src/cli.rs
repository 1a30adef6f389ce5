//! The command line: parses arguments, loads the config, and hands over to the services.
//! Exit codes: 0 success, 1 runtime failure, 2 bad configuration or usage.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use tokio_util::sync::CancellationToken;

use crate::config::{Config, Role};
use crate::sink::ReplayFrom;
use crate::status::StatusBoard;

#[derive(Debug, Parser)]
#[command(name = "docrepl", version, about = "Cross-region replicator for MongoDB-compatible databases through Kafka")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Read the source cluster (initial copy, then change streams) into Kafka topics.
    Source(ServiceArgs),
    /// Apply the topics to the target cluster.
    Sink(SinkArgs),
    /// Run source and sink in one process (the local demo).
    Run(ServiceArgs),
    /// Insert (or mix inserts/updates/deletes) into a collection to load-test the pipe.
    Loadgen(LoadgenCommand),
    /// Compare source and target: counts, per-document checksums, options and indexes.
    Verify(VerifyCommand),
    /// Switch to the target: wait for quiet and for the sink, make unique and TTL indexes
    /// final, verify; "ready to switch" (exit 0) or "not ready" with reasons (exit 1).
    Cutover(CutoverCommand),
    /// Make the [sink] side equal to the [source] side, moving only what differs; what it
    /// overwrites or deletes is kept in <sink.state_database>.repaired first.
    Repair(RepairCommand),
    /// Turn the pair around after `cutover`: write the opposite direction's config, which
    /// starts where the cutover left off, with no copy; retire the old direction.
    Reverse(ReverseCommand),
    /// Serve digests of the [source] cluster to a `repair` in another region.
    Digests(DigestsCommand),
    /// Print a running service's /status as a table.
    Status(StatusArgs),
    /// Emulate a WAN link: relay TCP with delay, jitter and a bandwidth cap, cut on command.
    Link(LinkArgs),
}

#[derive(Debug, Args)]
pub struct LinkArgs {
    /// Where the near side connects (loopback, high port).
    #[arg(long)]
    pub listen: std::net::SocketAddr,
    /// The far side each connection is relayed to.
    #[arg(long)]
    pub to: std::net::SocketAddr,
    /// One-way delay per direction (half the round trip).
    #[arg(long, default_value_t = 0.0)]
    pub delay_ms: f64,
    /// Up to this much extra one-way delay per chunk (order is kept).
    #[arg(long, default_value_t = 0.0)]
    pub jitter_ms: f64,
    /// Bandwidth cap per direction, in Mbit/s; none when absent.
    #[arg(long)]
    pub rate_mbit: Option<f64>,
    /// The HTTP control endpoint (`/stats`, `/cut/reset`, `/cut/blackhole`, `/restore`, `/shape`).
    #[arg(long)]
    pub control: Option<std::net::SocketAddr>,
}

#[derive(Debug, Args)]
pub struct ServiceArgs {
    /// The TOML config file (keys can be overridden by DOCREPL_<SECTION>__<KEY> variables).
    #[arg(short, long, env = "DOCREPL_CONFIG")]
    pub config: PathBuf,
    /// Only validate the config and print it (secrets masked), then exit.
    #[arg(long)]
    pub check: bool,
}

#[derive(Debug, Args)]
pub struct SinkArgs {
    #[command(flatten)]
    pub service: ServiceArgs,
    /// Rebuild the target from the oldest message the topics retain.
    #[arg(long, conflicts_with = "from_timestamp")]
    pub from_beginning: bool,
    /// Rebuild the target from the first message at or after this time (RFC 3339).
    #[arg(long, value_parser = parse_rfc3339)]
    pub from_timestamp: Option<std::time::SystemTime>,
}

#[derive(Debug, Args)]
pub struct LoadgenCommand {
    #[command(flatten)]
    pub service: ServiceArgs,
    #[command(flatten)]
    pub args: crate::loadgen::LoadgenArgs,
}

#[derive(Debug, Args)]
pub struct VerifyCommand {
    #[command(flatten)]
    pub service: ServiceArgs,
    #[command(flatten)]
    pub args: crate::verify::VerifyArgs,
}

#[derive(Debug, Args)]
pub struct CutoverCommand {
    #[command(flatten)]
    pub service: ServiceArgs,
    #[command(flatten)]
    pub args: crate::cutover::CutoverArgs,
}

#[derive(Debug, Args)]
pub struct RepairCommand {
    #[command(flatten)]
    pub service: ServiceArgs,
    #[command(flatten)]
    pub args: crate::repair::RepairArgs,
}

#[derive(Debug, Args)]
pub struct ReverseCommand {
    #[command(flatten)]
    pub service: ServiceArgs,
    #[command(flatten)]
    pub args: crate::direction::reverse::ReverseArgs,
}

#[derive(Debug, Args)]
pub struct DigestsCommand {
    #[command(flatten)]
    pub service: ServiceArgs,
    #[command(flatten)]
    pub args: crate::repair::peer::DigestsArgs,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Base URL of the service's HTTP listener.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Bearer token, when the service sets http.bearer_token.
    #[arg(long, env = "DOCREPL_STATUS_TOKEN")]
    pub token: Option<String>,
}

fn parse_rfc3339(s: &str) -> Result<std::time::SystemTime, String> {
    humantime::parse_rfc3339_weak(s).map_err(|e| format!("{e}: expected e.g. 2026-11-21T10:00:00Z"))
}

/// Loads and validates the config for `role`, printing a one-line error on failure.
pub fn load_config(args: &ServiceArgs, role: Role) -> Result<Config, ExitCode> {
    match Config::load(&args.config, role) {
        Ok(c) => Ok(c),
        Err(e) => {
            eprintln!("docrepl: {e}");
            Err(ExitCode::from(2))
        }
    }
}

/// Runs the parsed command and returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    let (args, role) = match &cli.command {
        Command::Source(a) => (a, Role::Source),
        Command::Sink(a) => (&a.service, Role::Sink),
        Command::Run(a) => (a, Role::Both),
        Command::Loadgen(a) => (&a.service, Role::Tool),
        Command::Verify(a) => (&a.service, Role::Tool),
        Command::Cutover(a) => (&a.service, Role::Tool),
        Command::Repair(a) => (&a.service, Role::Tool),
        Command::Reverse(a) => (&a.service, Role::Both),
        Command::Digests(a) => (&a.service, Role::Tool),
        Command::Link(a) => {
            crate::logging::init(&crate::logging::LogConfig::default());
            let shape = crate::link::Shape {
                delay: std::time::Duration::from_secs_f64(a.delay_ms.max(0.0) / 1000.0),
                jitter: std::time::Duration::from_secs_f64(a.jitter_ms.max(0.0) / 1000.0),
                rate_bits: a.rate_mbit.map(|m| (m * 1_000_000.0) as u64),
            };
            let (listen, to, control) = (a.listen, a.to, a.control);
            return serve(|shutdown| async move {
                let link = crate::link::Link::start(listen, to, crate::link::Shapes { up: shape, down: shape })
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
                tracing::info!(listen = %link.local_addr, %to, ?shape, "link up");
                if let Some(addr) = control {
                    let addr = crate::link::control::serve(link, addr).await.map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
                    tracing::info!("link control on http://{addr}/stats");
                }
                shutdown.cancelled().await;
                Ok(())
            });
        }
        Command::Status(a) => {
            return match crate::status_cli::run(&a.url, a.token.as_deref()) {
                Ok(table) => {
                    print!("{table}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("docrepl status: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    };
    let config = match load_config(args, role) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if args.check {
        println!("config OK: {}\n{}", args.config.display(), config.redacted_toml());
        return ExitCode::SUCCESS;
    }
    let mut config = config;
    if let Err(e) = config.add_passwords(|p| std::fs::read_to_string(p), |v| std::env::var(v).ok()) {
        eprintln!("docrepl: {e}");
        return ExitCode::from(2);
    }
    crate::logging::init(&config.log);
    // Before any Kafka client: a missing AWS identity or region is a setting to fix.
    let uses_kafka = matches!(cli.command, Command::Source(_) | Command::Sink(_) | Command::Run(_) | Command::Cutover(_));
    if uses_kafka {
        if let Err(e) = crate::kafka::msk_iam::install(&config.kafka) {
            eprintln!("docrepl: {e}");
            return ExitCode::from(2);
        }
    }
    match cli.command {
        Command::Source(_) => serve(|shutdown| async move {
            let board = StatusBoard::new("source");
            crate::http::start(&config.http, board.clone(), shutdown.clone()).await?;
            crate::source::run(&config, board, shutdown).await
        }),
        Command::Sink(a) => {
            let replay = match (a.from_beginning, a.from_timestamp) {
                (true, _) => Some(ReplayFrom::Beginning),
                (_, Some(t)) => Some(ReplayFrom::Time(t)),
                _ => None,
            };
            serve(|shutdown| async move {
                let board = StatusBoard::new("sink");
                crate::http::start(&config.http, board.clone(), shutdown.clone()).await?;
                crate::sink::run(&config, replay, board, shutdown).await
            })
        }
        Command::Run(_) => serve(|shutdown| async move { run_both(&config, shutdown).await }),
        Command::Loadgen(c) => serve(|_| async move { crate::loadgen::run(&config, &c.args).await }),
        // verify: 0 equal, 1 different, 2 could not compare.
        Command::Verify(c) => serve_with_codes(2, |_| async move { crate::verify::run(&config, &c.args).await }),
        // cutover: 0 ready to switch, 1 not ready, 2 could not check.
        Command::Cutover(c) => serve_with_codes(2, |_| async move { crate::cutover::run(&config, &c.args).await }),
        // repair: 0 equal, 1 still different, 2 could not repair.
        Command::Repair(c) => serve_with_codes(2, |_| async move { crate::repair::run(&config, &c.args).await }),
        // reverse: 0 the file is written, 2 a step must come first (or an error).
        Command::Reverse(c) => {
            let path = c.service.config.clone();
            serve_with_codes(2, |_| async move { crate::direction::reverse::run(&config, &path, &c.args).await })
        }
        Command::Digests(c) => serve(|shutdown| async move { crate::repair::peer::run(&config, &c.args, shutdown).await }),
        // Answered above, before any config is loaded.
        Command::Status(_) | Command::Link(_) => ExitCode::SUCCESS,
    }
}

/// Runs a service on a multi-threaded runtime until SIGTERM/SIGINT or failure.
/// Exit 0 after a graceful stop, 1 after an error (printed as one clear line).
fn serve<F, Fut>(service: F) -> ExitCode
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    serve_with_codes(1, |shutdown| async move { service(shutdown).await.map(|()| 0) })
}

/// Like `serve`, for commands whose success has several exit codes; `on_error` is the
/// code after an error.
fn serve_with_codes<F, Fut>(on_error: i32, service: F) -> ExitCode
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<u8>>,
{
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("docrepl: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(cancel_on_signal(shutdown.clone()));
        service(shutdown).await
    });
    let code = match result {
        Ok(code) => i32::from(code),
        Err(e) => {
            eprintln!("docrepl: error: {e:#}");
            // Refused credentials, certificate or ACL: a setting to fix, like a bad config.
            // So is the direction lock refusing: a step to take first.
            if crate::kafka::access::is_refusal(&e) || crate::direction::lock::is_refusal(&e) {
                2
            } else {
                on_error
            }
        }
    };
    // Everything that matters is flushed and saved by now. Exit without tearing the
    // runtime down: a driver task still waking up during teardown would only add noise.
    use std::io::Write;
    let _ = std::io::stdout().flush();
    std::process::exit(code)
}

async fn cancel_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("stop requested: finishing in-flight work");
    shutdown.cancel();
}

/// `docrepl run`: source and sink side by side; if one fails, both stop.
async fn run_both(config: &Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let board = StatusBoard::new("source+sink");
    crate::http::start(&config.http, board.clone(), shutdown.clone()).await?;
    let source = async {
        let r = crate::source::run(config, board.clone(), shutdown.clone()).await;
        shutdown.cancel();
        r
    };
    let sink = async {
        let r = crate::sink::run(config, None, board.clone(), shutdown.clone()).await;
        shutdown.cancel();
        r
    };
    let (a, b) = tokio::join!(source, sink);
    a.and(b)
}

