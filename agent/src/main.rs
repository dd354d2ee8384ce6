//! `slipway-agent`: parses flags and config, installs logging and the TLS provider, and
//! runs the agent ([`slipway_agent::run`]) until SIGTERM or SIGINT.

use std::path::PathBuf;

use clap::Parser;
use slipway_agent::config::AgentConfig;

/// Per-node slipway agent: reports headroom and runs builds on local disk.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Config file (default: /etc/slipway/agent.toml if it exists).
    #[arg(long, env = "SLIPWAY_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// Scheduler address host:port; repeat (or comma-separate) for several.
    #[arg(long = "scheduler", env = "SLIPWAY_SCHEDULERS", value_delimiter = ',')]
    schedulers: Vec<String>,
    /// Node name shown to operators.
    #[arg(long, env = "SLIPWAY_NODE_NAME")]
    name: Option<String>,
    #[arg(long, env = "SLIPWAY_STATE_DIR")]
    state_dir: Option<PathBuf>,
    #[arg(long, env = "SLIPWAY_BUILD_ROOT")]
    build_root: Option<PathBuf>,
    #[arg(long, env = "SLIPWAY_DOCKER_SOCKET")]
    docker_socket: Option<String>,
    #[arg(long, env = "SLIPWAY_BUILD_SLOTS")]
    build_slots: Option<u32>,
    /// Where to serve /metrics (ip:port; port 0 picks one; "" for none).
    #[arg(long, env = "SLIPWAY_AGENT_METRICS_LISTEN")]
    metrics_listen: Option<String>,
    /// Join token from `slipway cluster token agent` (needed once, to get a certificate).
    #[arg(long = "join", env = "SLIPWAY_JOIN_TOKEN")]
    join_token: Option<String>,
    /// Development only: plain text to a scheduler running with tls.insecure.
    #[arg(long, env = "SLIPWAY_INSECURE")]
    insecure: bool,
}

fn load(args: Args) -> anyhow::Result<AgentConfig> {
    let default_path = PathBuf::from("/etc/slipway/agent.toml");
    let mut config = match args.config {
        Some(path) => AgentConfig::load(&path)?,
        None if default_path.exists() => AgentConfig::load(&default_path)?,
        None => AgentConfig::default(),
    };
    if !args.schedulers.is_empty() {
        config.schedulers = args.schedulers;
    }
    config.name = args.name.or(config.name);
    config.state_dir = args.state_dir.unwrap_or(config.state_dir);
    config.build_root = args.build_root.unwrap_or(config.build_root);
    config.docker_socket = args.docker_socket.unwrap_or(config.docker_socket);
    config.build_slots = args.build_slots.unwrap_or(config.build_slots);
    config.metrics_listen = args.metrics_listen.unwrap_or(config.metrics_listen);
    config.join_token = args.join_token.or(config.join_token);
    config.insecure |= args.insecure;
    config.validate()?;
    Ok(config)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    slipway_common::telemetry::init();
    slipway_proto::tls::install_crypto_provider();
    let config = load(Args::parse())?;
    slipway_agent::run(config, slipway_common::shutdown::signal()).await?;
    Ok(())
}
