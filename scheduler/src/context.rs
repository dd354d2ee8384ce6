//! The context: what the scheduler's parts share, in one value.
//!
//! [`Context`] holds the [`Store`] (the replicated state and raft), the config, the
//! leader's soft state ([`Fleet`], [`DispatchState`]), the event hub ([`Events`]), the CA,
//! this member's certificate and registry token signer ([`Security`]), and a lazily
//! connected handle to the Swarm manager's Docker engine. The control and agent services,
//! the enrollment service, the HTTP side and the dispatcher each hold an `Arc<Context>`;
//! `server.rs` builds it and wires them.

use std::sync::Arc;

use bollard::Docker;
use slipway_proto::tls::Credentials;
use tokio::sync::{Mutex, Notify};

use crate::config::SchedulerConfig;
use crate::dispatch_state::DispatchState;
use crate::error::Error;
use crate::events::Events;
use crate::fleet::Fleet;
use crate::raft::Store;
use crate::security::pki::Ca;
use crate::security::registry_signer::RegistrySigner;

/// A member's keys when it runs with TLS: what [`Context::new`] takes.
#[derive(Clone)]
pub struct Security {
    /// The cluster CA.
    pub ca: Arc<Ca>,
    /// This scheduler's own certificate and key.
    pub credentials: Arc<Credentials>,
    /// What signs the registry's tokens.
    pub registry_signer: Arc<RegistrySigner>,
}

/// What the scheduler's parts share: built once by `server::start`, held as an
/// `Arc<Context>` by the services, the HTTP side and the dispatcher.
pub struct Context {
    /// The settings this member started with.
    pub config: SchedulerConfig,
    /// `host:port` where this member's gRPC listener is reached.
    pub advertise: String,
    /// The replicated state: read, write, leadership.
    pub store: Store,
    /// Build logs and deploy progress, by topic (leader memory).
    pub events: Events,
    /// Agent sessions, reports and liveness (leader memory).
    pub fleet: Fleet,
    /// The dispatcher's notes: waiting builds, deploy slots, counters (leader memory).
    pub dispatch: DispatchState,
    /// Wakes the dispatcher early (a report arrived, a build finished).
    pub wake: Notify,
    /// The cluster CA (None when running without TLS).
    pub ca: Option<Arc<Ca>>,
    /// This scheduler's own certificate and key (None when running without TLS).
    pub tls_credentials: Option<Arc<Credentials>>,
    /// What signs the registry's tokens (None when running without TLS).
    pub registry_signer: Option<Arc<RegistrySigner>>,
    /// The Swarm manager's engine, once connected.
    docker: Mutex<Option<Docker>>,
}

impl Context {
    /// The context of a member whose raft is opened as `store`; `security` is the
    /// cluster CA, this scheduler's certificate and its registry token signer (None with
    /// `tls.insecure`).
    pub fn new(config: SchedulerConfig, advertise: String, store: Store, security: Option<Security>) -> Self {
        let (ca, tls_credentials, registry_signer) = match security {
            Some(s) => (Some(s.ca), Some(s.credentials), Some(s.registry_signer)),
            None => (None, None, None),
        };
        Self {
            events: Events::with_floor(config.data_dir.join("logs"), config.build_logs.min_free_bytes),
            config,
            advertise,
            store,
            fleet: Fleet::default(),
            dispatch: DispatchState::default(),
            wake: Notify::new(),
            ca,
            tls_credentials,
            registry_signer,
            docker: Mutex::new(None),
        }
    }

    /// Wakes the dispatcher now rather than at its next tick.
    pub fn dispatcher_wake(&self) {
        self.wake.notify_one();
    }

    /// The Swarm manager's engine, connected on first use (and again after a failure).
    pub async fn docker(&self) -> Result<Docker, Error> {
        let mut slot = self.docker.lock().await;
        if let Some(docker) = slot.as_ref() {
            if docker.ping().await.is_ok() {
                return Ok(docker.clone());
            }
        }
        let socket = &self.config.deploy.docker_socket;
        let unreachable = |e: bollard::errors::Error| {
            Error::Unavailable(format!(
                "cannot reach the Docker engine at unix://{socket}: {e}; is dockerd running there (deploy.docker_socket)?"
            ))
        };
        let docker = Docker::connect_with_unix(socket, 300, bollard::API_DEFAULT_VERSION)
            .map_err(unreachable)?
            .negotiate_version()
            .await
            .map_err(unreachable)?;
        docker.ping().await.map_err(unreachable)?;
        *slot = Some(docker.clone());
        Ok(docker)
    }
}
