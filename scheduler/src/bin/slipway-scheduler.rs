//! `slipway-scheduler`: parses flags and config, installs logging, and runs the
//! scheduler until SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;

use std::time::Duration;

use clap::{Parser, Subcommand};
use slipway_proto::tls::{PeerIdentity, Role};
use slipway_scheduler::config::SchedulerConfig;
use slipway_scheduler::security::pki::{self, Ca};
use slipway_scheduler::security::registry_signer;

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
    /// Development only: no TLS, nobody checked (tls.insecure).
    #[arg(long, env = "SLIPWAY_INSECURE")]
    insecure: bool,
    #[command(subcommand)]
    command: Option<Offline>,
}

/// Chores done on a scheduler's machine without running a member.
#[derive(Subcommand)]
enum Offline {
    /// Make a cluster CA in DIR (ca.pem, ca.key) for the founding members of a static
    /// cluster: copy DIR to each of them and set `[tls] ca_dir` to it.
    InitCa { dir: PathBuf },
    /// Issue an operator certificate for NAME from this scheduler's CA (in its data
    /// dir) into OUT: the first operator's credentials, before any exist.
    AdminCert {
        name: String,
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
    /// Write the registry's `rootcertbundle` (the token signer's root, derived from this
    /// scheduler's CA; every member gives the same) to OUT, or print it. A file that
    /// already holds it is left as it is. A running scheduler also writes it to
    /// <data_dir>/pki/registry-signer.pem.
    RegistryBundle {
        #[arg(long)]
        out: Option<PathBuf>,
        /// The CA in this directory (ca.pem, ca.key, as `init-ca` makes it) instead of
        /// this scheduler's.
        #[arg(long)]
        ca_dir: Option<PathBuf>,
    },
    /// Serve the registry's token realm for a cluster of several members: forward each
    /// connection on LISTEN to the first of the members' HTTP sides (host:port, in
    /// order) that accepts it. Point the registry's `realm` at http://LISTEN/v2/token
    /// (https:// when the members run `http.tls`: TLS passes through untouched; put
    /// LISTEN's address in their `http.tls_names`).
    RealmProxy {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(required = true)]
        members: Vec<String>,
    },
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
    config.tls.insecure |= args.insecure;
    Ok(config)
}

/// The CA in the data dir, or (before a founding member's first start) the shared one it
/// will install from tls.ca_dir.
fn this_schedulers_ca(config: &SchedulerConfig) -> anyhow::Result<Ca> {
    let dir = pki::pki_dir(&config.data_dir);
    match Ca::load(&dir)? {
        Some(ca) => Ok(ca),
        None => config.tls.ca_dir.as_deref().map(Ca::load).transpose()?.flatten().ok_or_else(|| {
            anyhow::anyhow!("no cluster CA in {}: start this scheduler once first", dir.display())
        }),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    slipway_common::telemetry::init();
    slipway_proto::tls::install_crypto_provider();
    let mut args = Args::parse();
    let command = args.command.take();
    let config = load(args)?;
    match command {
        None => slipway_scheduler::server::run(config, slipway_common::shutdown::signal()).await?,
        Some(Offline::InitCa { dir }) => {
            if Ca::load(&dir)?.is_some() {
                anyhow::bail!("{} already holds a CA; use it, or choose another directory", dir.display());
            }
            let ca = Ca::create()?;
            ca.save(&dir)?;
            println!("cluster CA in {} (digest {}); keep ca.key secret", dir.display(), ca.digest()?);
        }
        Some(Offline::AdminCert { name, out }) => {
            let ca = this_schedulers_ca(&config)?;
            let validity = Duration::from_secs(config.tls.admin_cert_validity_secs);
            let creds = ca.issue(&PeerIdentity::new(Role::Admin, name.clone()), validity)?;
            creds.save_dir(&out).map_err(anyhow::Error::msg)?;
            println!("operator certificate for {name:?} in {} (ca.pem, cert.pem, key.pem)", out.display());
        }
        Some(Offline::RegistryBundle { out, ca_dir }) => {
            let ca = match ca_dir {
                Some(dir) => Ca::load(&dir)?
                    .ok_or_else(|| anyhow::anyhow!("no CA in {}: it holds no ca.pem", dir.display()))?,
                None => this_schedulers_ca(&config)?,
            };
            match out {
                Some(path) => {
                    let written = registry_signer::write_bundle(&ca, &path)?;
                    let what = if written { "wrote" } else { "already holds" };
                    println!(
                        "{} {what} the registry's token signer bundle (its rootcertbundle)",
                        path.display()
                    );
                }
                None => print!("{}", registry_signer::bundle_pem(&ca)?),
            }
        }
        Some(Offline::RealmProxy { listen, members }) => {
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
            tracing::info!(%listen, ?members, "forwarding the registry's token requests");
            tokio::select! {
                () = slipway_scheduler::security::realm_proxy::serve(listener, members) => {}
                () = slipway_common::shutdown::signal() => {}
            }
        }
    }
    Ok(())
}
