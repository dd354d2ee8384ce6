//! `slipway-scheduler`: parses flags and config, installs logging, and runs the
//! scheduler until SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use slipway_scheduler::config::SchedulerConfig;

/// slipway's raft-replicated scheduler.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Config file (default: /etc/slipway/scheduler.toml if it exists).
    #[arg(long, env = "SLIPWAY_SCHEDULER_CONFIG")]
    config: Option<PathBuf>,
    /// gRPC listen address (control API, agents, raft).
    #[arg(long, env = "SLIPWAY_LISTEN")]
    listen: Option<SocketAddr>,
    /// Address others use to reach this scheduler.
    #[arg(long, env = "SLIPWAY_ADVERTISE")]
    advertise: Option<String>,
    /// HTTP listen address (/healthz, /readyz, /metrics).
    #[arg(long, env = "SLIPWAY_HTTP_LISTEN")]
    http_listen: Option<SocketAddr>,
    #[arg(long, env = "SLIPWAY_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Raft member id.
    #[arg(long, env = "SLIPWAY_NODE_ID")]
    node_id: Option<u64>,
    /// Internal registry host:port.
    #[arg(long, env = "SLIPWAY_REGISTRY")]
    registry: Option<String>,
}

fn load(args: Args) -> anyhow::Result<SchedulerConfig> {
    let default_path = PathBuf::from("/etc/slipway/scheduler.toml");
    let mut config = match args.config {
        Some(path) => SchedulerConfig::load(&path)?,
        None if default_path.exists() => SchedulerConfig::load(&default_path)?,
        None => SchedulerConfig::default(),
    };
    config.listen = args.listen.unwrap_or(config.listen);
    config.advertise = args.advertise.or(config.advertise);
    config.http_listen = args.http_listen.unwrap_or(config.http_listen);
    config.data_dir = args.data_dir.unwrap_or(config.data_dir);
    config.node_id = args.node_id.unwrap_or(config.node_id);
    if let Some(registry) = args.registry {
        config.registry.addr = registry;
    }
    Ok(config)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = load(Args::parse())?;
    slipway_scheduler::server::run(config, shutdown_signal()).await?;
    Ok(())
}
