//! The node's router: keep the local Caddy (the task of `<stack>_router` on this node)
//! serving the routes the leader sent last.
//!
//! The leader sends a [`RouterConfig`] after the Welcome and on every change. Every
//! [`CHECK_INTERVAL`], and at once when a new config arrives, the agent finds the router's
//! admin socket in the volume `<stack>_router_admin` on its engine, asks the router which
//! routes it serves (`GET /id/slipway_routes`, the version answered at the reserved host)
//! and, if they are not the ones it was given — a new config, or a router that restarted
//! with its start config — loads the whole config (`POST /load`). Caddy swaps it without
//! dropping connections. What it found goes into every report ([`RouterStatus`]), and a
//! change is reported at once, so the leader knows where the routes are live.
//!
//! The socket is a file on this node, reached by the agent that already runs here as
//! root: nothing else on the network can reprogram the router.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::Docker;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use slipway_proto::router::{admin_volume, ADMIN_ORIGIN, ADMIN_SOCKET, VERSION_ID};
use slipway_proto::{RouterConfig, RouterStatus};
use tokio::sync::{watch, Notify};

/// How often the router is checked (and reloaded when it lost its routes).
pub const CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// How long one admin call may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The routes this node's router should serve, and what it was last found serving.
#[derive(Default)]
pub struct Router {
    desired: watch::Sender<Option<RouterConfig>>,
    status: Mutex<Option<RouterStatus>>,
    /// Notified when [`Router::status`] changes, so it is reported at once.
    pub changed: Notify,
}

impl Router {
    /// Takes the config the leader sent (a repeat of the current one changes nothing).
    pub fn load(&self, config: RouterConfig) {
        self.desired.send_if_modified(|desired| {
            let new = desired.as_ref().is_none_or(|d| d.version != config.version || d.stack != config.stack);
            if new {
                *desired = Some(config);
            }
            new
        });
    }

    /// What the router was last found serving (None before any config arrived).
    pub fn status(&self) -> Option<RouterStatus> {
        self.status.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    fn set_status(&self, status: RouterStatus) {
        let mut slot = self.status.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if slot.as_ref() != Some(&status) {
            if status.error.is_empty() {
                tracing::info!(version = %status.version, "the router serves the routes");
            } else {
                tracing::warn!(error = %status.error, "the router does not serve the routes");
            }
            *slot = Some(status);
            drop(slot);
            self.changed.notify_one();
        }
    }

    /// Keeps the router serving the latest config, using the engine `docker` returns
    /// (None while it does not answer); runs until dropped.
    pub async fn run<F, Fut>(self: Arc<Self>, docker: F)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Option<Docker>>,
    {
        let mut desired = self.desired.subscribe();
        loop {
            let config = desired.borrow_and_update().clone();
            if let Some(config) = config {
                let status = match docker().await {
                    Some(docker) => reconcile(&docker, &config).await,
                    None => RouterStatus {
                        version: String::new(),
                        error: "the Docker engine does not answer, so its router cannot be found".into(),
                    },
                };
                self.set_status(status);
            }
            tokio::select! {
                _ = desired.changed() => {}
                _ = tokio::time::sleep(CHECK_INTERVAL) => {}
            }
        }
    }
}

/// Finds the router, and loads `config` into it unless it serves it already.
async fn reconcile(docker: &Docker, config: &RouterConfig) -> RouterStatus {
    let failed = |error: String| RouterStatus { version: String::new(), error };
    let socket = match admin_socket(docker, &config.stack).await {
        Ok(socket) => socket,
        Err(error) => return failed(error),
    };
    match served_version(&socket).await {
        Ok(version) if version == config.version => return RouterStatus { version, error: String::new() },
        Ok(_) => {}
        Err(error) => return failed(error),
    }
    match call(&socket, "POST", "/load", Some(config.caddy_json.clone())).await {
        Ok((200, _)) => RouterStatus { version: config.version.clone(), error: String::new() },
        Ok((status, body)) => failed(format!(
            "the router at {} refused the routes: HTTP {status}: {}",
            socket.display(),
            body.trim()
        )),
        Err(error) => failed(error),
    }
}

/// The router's admin socket on this engine: `admin.sock` in the admin volume.
async fn admin_socket(docker: &Docker, stack: &str) -> Result<PathBuf, String> {
    let volume = admin_volume(stack);
    let service = format!("{stack}_router");
    let mountpoint = match docker.inspect_volume(&volume).await {
        Ok(v) => v.mountpoint,
        Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => {
            return Err(format!(
                "no router has run on this node yet: the volume {volume} does not exist on its engine \
                 (is {service} running? `docker service ps {service}`)"
            ))
        }
        Err(e) => return Err(format!("cannot inspect the volume {volume}: {e}")),
    };
    let socket = Path::new(&mountpoint).join(ADMIN_SOCKET);
    if !socket.exists() {
        return Err(format!(
            "the router's admin socket {} is missing: {service} does not run on this node \
             (`docker service ps {service}`)",
            socket.display()
        ));
    }
    Ok(socket)
}

/// The version of the routes the router serves ("" when it serves something else).
async fn served_version(socket: &Path) -> Result<String, String> {
    let (status, body) = call(socket, "GET", &format!("/id/{VERSION_ID}"), None).await?;
    if status != 200 {
        return Ok(String::new());
    }
    let handler: serde_json::Value = serde_json::from_str(&body)
        .map_err(|e| format!("the router at {} answered unreadable JSON: {e}", socket.display()))?;
    Ok(handler["body"].as_str().unwrap_or_default().trim().to_owned())
}

/// One HTTP/1.1 call to Caddy's admin API over its socket: (status, body).
async fn call(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<(u16, String), String> {
    let unreachable = |e: &dyn std::fmt::Display| {
        format!("the router's admin socket {} does not answer: {e}", socket.display())
    };
    let exchange = async {
        let stream = tokio::net::UnixStream::connect(socket).await.map_err(|e| unreachable(&e))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| unreachable(&e))?;
        let connection = tokio::spawn(connection);
        let request = Request::builder()
            .method(method)
            .uri(path)
            // Caddy checks the Host of admin requests: the router's config allows this one.
            .header(hyper::header::HOST, ADMIN_ORIGIN)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| unreachable(&e))?;
        let response = sender.send_request(request).await.map_err(|e| unreachable(&e))?;
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await.map_err(|e| unreachable(&e))?.to_bytes();
        connection.abort();
        Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
    };
    tokio::time::timeout(ADMIN_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| Err(unreachable(&format!("no answer within {ADMIN_TIMEOUT:?}"))))
}
