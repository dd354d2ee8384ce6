//! Wires the scheduler together and runs it: [`start`] binds the listeners, loads or
//! fetches the TLS credentials and derives the registry token signer, opens the raft
//! store, bootstraps a fresh data dir as a single-member cluster, builds the [`Context`],
//! and starts the gRPC services (control, agents, raft, enrollment), the HTTP side, the
//! dispatcher and the leadership watch.
//! [`Running::stop`] stops them within a grace period.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::Instrument;

use slipway_common::supervise::Supervised;
use slipway_proto::tls::{self, Role};
use tonic::service::interceptor::InterceptedService;

use crate::api::agents::AgentSessions;
use crate::api::control::ControlService;
use crate::api::enroll::EnrollmentService;
use crate::config::SchedulerConfig;
use crate::context::{Context, Security};
use crate::raft;
use crate::security;

/// Why the scheduler could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    /// A listener could not be bound.
    Listen {
        /// The address.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    #[error("cannot open the raft store in {dir}: {message}")]
    /// The raft store could not be opened.
    Store {
        /// The data directory.
        dir: String,
        /// Why.
        message: String,
    },
    #[error("TLS: {0}")]
    /// The CA or this member's certificate could not be loaded or fetched.
    Tls(String),
    #[error("the HTTP side: {0}")]
    /// The HTTP side's token or certificate could not be made.
    Http(String),
}

/// A started scheduler: its addresses and the means to stop it.
pub struct Running {
    /// Where the gRPC services listen (control, agents, raft, enrollment).
    pub grpc_addr: SocketAddr,
    /// Where the HTTP side listens (fleet page, metrics, health, registry tokens).
    pub http_addr: SocketAddr,
    /// What the running parts share (tests look inside).
    pub context: Arc<Context>,
    shutdown: watch::Sender<bool>,
    tasks: Supervised,
}

impl Running {
    /// Stops accepting work and waits up to `grace` for the parts to finish.
    pub async fn stop(mut self, grace: Duration) {
        let _ = self.shutdown.send(true);
        if tokio::time::timeout(grace, self.tasks.drain()).await.is_err() {
            tracing::warn!("shutdown grace period over; aborting what is left");
            self.tasks.abort_all();
        }
        if let Err(err) = self.context.store.raft().shutdown().await {
            tracing::warn!(%err, "raft shutdown");
        }
    }
}

/// Runs the scheduler until `shutdown` resolves, then drains for up to 10 s.
pub async fn run(config: SchedulerConfig, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
    let running = start(config).await?;
    tracing::info!(grpc = %running.grpc_addr, http = %running.http_addr, "scheduler running");
    shutdown.await;
    tracing::info!("shutting down");
    running.stop(Duration::from_secs(10)).await;
    Ok(())
}

/// Starts every part of the scheduler and returns once it serves.
pub async fn start(config: SchedulerConfig) -> Result<Running, StartError> {
    let grpc_listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Listen { addr: config.listen, source })?;
    let grpc_addr =
        grpc_listener.local_addr().map_err(|source| StartError::Listen { addr: config.listen, source })?;
    let http_listener = TcpListener::bind(config.http_listen)
        .await
        .map_err(|source| StartError::Listen { addr: config.http_listen, source })?;
    let http_addr = http_listener
        .local_addr()
        .map_err(|source| StartError::Listen { addr: config.http_listen, source })?;
    let advertise = config.advertised().unwrap_or_else(|| grpc_addr.to_string());

    let store_err =
        |message: String| StartError::Store { dir: config.data_dir.display().to_string(), message };
    // Private before anything is written into it: it holds the CA key and the raft store.
    tls::create_private_dir(&config.data_dir).map_err(|e| store_err(e.to_string()))?;
    let credentials = match security::credentials::at_start(&config).await.map_err(StartError::Tls)? {
        Some((ca, creds)) => {
            // The registry's bundle is written to the data dir before anything answers.
            let signer = security::registry_signer::at_start(&ca, &config.data_dir, config.node_id)
                .map_err(|e| StartError::Tls(format!("the registry token signer: {e}")))?;
            Some(Security {
                ca: Arc::new(ca),
                credentials: Arc::new(creds),
                registry_signer: Arc::new(signer),
            })
        }
        None => None,
    };
    let transport = match &credentials {
        Some(security) => tls::Transport::Tls(security.credentials.clone()),
        None => tls::Transport::Insecure,
    };
    let opened = raft::open(&config.data_dir, config.node_id, &config.raft.to_raft_config(), transport)
        .await
        .map_err(|e| store_err(e.to_string()))?;
    if opened.initialized {
        tracing::info!(node_id = config.node_id, "the data dir holds a cluster; rejoining it");
    } else if config.cluster.join {
        tracing::warn!(
            node_id = config.node_id,
            %advertise,
            "not a member of any cluster yet: waiting to be added; run `slipway cluster join {advertise}` \
             against the cluster"
        );
    } else {
        let members = match config.static_members() {
            m if m.is_empty() => BTreeMap::from([(config.node_id, advertise.clone())]),
            m => m,
        };
        tracing::info!(node_id = config.node_id, ?members, "founding a new cluster");
        raft::bootstrap(opened.store.raft(), members).await.map_err(|e| store_err(e.to_string()))?;
    }

    let (token, http_tls) = http_side(&config, http_addr, credentials.as_ref())?;
    let space = raft::SpaceGuard::new(&config.data_dir, config.storage.min_free_bytes);
    let store = opened.store.with_space_guard(space);
    let ctx = Arc::new(Context::new(config, advertise, store, credentials.clone()));
    let deny_list = security::revocation::gate(ctx.store.clone());
    let access = crate::http::auth::Access { token, deny_list: deny_list.clone() };
    let http_app = crate::http::router(ctx.clone(), access);

    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut tasks = Supervised::new(shutdown_rx.clone());

    // Who may call what (see slipway_proto::tls): operators the control API (and other
    // schedulers, which hold the CA anyway), agents their sessions, schedulers raft,
    // none with a revoked certificate (the deny list); enrollment is open (it checks
    // tokens and certificates itself).
    let secure = credentials.is_some();
    let mut builder = tonic::transport::Server::builder();
    if let Some(security) = &credentials {
        builder = builder
            .tls_config(security.credentials.server_tls())
            .map_err(|e| StartError::Tls(e.to_string()))?;
    }
    let grpc = builder
        .add_service(InterceptedService::new(
            slipway_proto::control_server::ControlServer::new(ControlService::new(ctx.clone()))
                .max_decoding_message_size(slipway_proto::validate::MAX_CONTROL_REQUEST_BYTES),
            tls::require(&[Role::Admin, Role::Scheduler], secure, deny_list.clone()),
        ))
        .add_service(InterceptedService::new(
            slipway_proto::agent_service_server::AgentServiceServer::new(AgentSessions::new(ctx.clone()))
                .max_decoding_message_size(slipway_proto::validate::MAX_AGENT_MESSAGE_BYTES),
            tls::require(&[Role::Agent], secure, deny_list.clone()),
        ))
        .add_service(InterceptedService::new(
            raft::RaftService::new(&ctx.store).into_server(),
            tls::require(&[Role::Scheduler], secure, deny_list.clone()),
        ))
        .add_service(
            slipway_proto::enrollment_server::EnrollmentServer::new(EnrollmentService::new(ctx.clone()))
                .max_decoding_message_size(slipway_proto::validate::MAX_CONTROL_REQUEST_BYTES),
        );
    let mut stop = shutdown_rx.clone();
    tasks.spawn(
        "grpc",
        async move {
            // No Nagle: a raft append or a small control call is one short write, and
            // waiting for the peer's delayed ACK costs 40 ms a round trip.
            let incoming =
                tonic::transport::server::TcpIncoming::from(grpc_listener).with_nodelay(Some(true));
            let signal = async move {
                let _ = stop.changed().await;
            };
            grpc.serve_with_incoming_shutdown(incoming, signal)
                .await
                .map_err(|err| format!("the gRPC server failed: {err}"))
        }
        .instrument(tracing::info_span!("grpc")),
    );

    let http = crate::http::serve::serve(http_listener, http_app, http_tls, shutdown_rx.clone());
    tasks.spawn(
        "http",
        async move {
            http.await;
            Ok(())
        }
        .instrument(tracing::info_span!("http")),
    );
    tasks.spawn(
        "leadership",
        crate::dispatch::watch_leadership(ctx.clone(), shutdown_rx.clone())
            .instrument(tracing::info_span!("leadership")),
    );
    tasks.spawn(
        "registry_gc",
        crate::dispatch::gc::run_scheduled(ctx.clone(), shutdown_rx.clone())
            .instrument(tracing::info_span!("registry_gc")),
    );
    tasks.spawn(
        "dispatcher",
        crate::dispatch::run(ctx.clone(), shutdown_rx.clone()).instrument(tracing::info_span!("dispatcher")),
    );
    let router = crate::router::run(ctx.clone(), shutdown_rx.clone());
    tasks.spawn(
        "router",
        async move {
            router.await;
            Ok(())
        }
        .instrument(tracing::info_span!("router")),
    );
    let sweep =
        crate::events::sweep_logs(ctx.events.clone(), ctx.config.build_logs.clone(), shutdown_rx.clone());
    tasks.spawn(
        "build log sweep",
        async move {
            sweep.await;
            Ok(())
        }
        .instrument(tracing::info_span!("build_logs")),
    );

    Ok(Running { grpc_addr, http_addr, context: ctx, shutdown, tasks })
}

/// The token the HTTP side's fleet page and `/metrics` want, and its TLS settings
/// (`[http]`), for the listener bound at `http_addr`.
fn http_side(
    config: &SchedulerConfig,
    http_addr: SocketAddr,
    security: Option<&Security>,
) -> Result<(Option<crate::security::http_access::BearerToken>, Option<Arc<rustls::ServerConfig>>), StartError>
{
    use crate::security::http_access::{self, BearerToken, HttpCertificate};
    let token = if config.http.require_auth {
        Some(BearerToken::load_or_create(&config.http_token_file()).map_err(StartError::Http)?)
    } else {
        tracing::warn!(http = %http_addr, "http.require_auth = false: anyone on this host reads the fleet page and /metrics");
        None
    };
    let tls = match (config.http.tls, security) {
        (false, _) => None,
        (true, None) => {
            return Err(StartError::Http("http.tls needs the cluster CA (tls.insecure is on)".into()))
        }
        (true, Some(security)) => {
            let mut names = config.http.tls_names.clone();
            if !http_addr.ip().is_unspecified() {
                names.push(http_addr.ip().to_string());
            }
            let certificate = HttpCertificate::issue(security.ca.clone(), config.node_id, names)
                .map_err(StartError::Http)?;
            Some(Arc::new(http_access::server_config(&security.ca, certificate).map_err(StartError::Http)?))
        }
    };
    Ok((token, tls))
}
