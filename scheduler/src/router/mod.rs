//! The router: every app is reached by host name through one maintained reverse proxy,
//! Caddy, run by slipway as the Swarm service `<stack>_router` on every node. No app
//! needs a host port, so apps that listen on the same port live side by side and
//! rollouts go start-first behind the router.
//!
//! ```text
//! replicated state ─► routes (pure) ─► caddy::render (pure) ─► RouterConfig{version, json}
//!                                                                    │ every agent session
//!                     agent (per node) ─► its router's admin socket: POST /load ◄┘
//!                                      ◄─ GET /id/slipway_routes: the version it serves
//!                     NodeReport.router ─► the leader knows which node serves what
//! leader, every round: service::ensure(<stack>_router, its start config, admin volume),
//!                     fenced (a quorum confirms this member leads right before a write)
//! ```
//!
//! Why agents and not a poll: Caddy 2.6's HTTP config loader (what a router would poll
//! the schedulers with) leaks nine responses per poll (caddy#5159, fixed in 2.6.3 after
//! Debian's 2.6.2), and an admin API reachable over the network would let anyone who
//! reaches a node reprogram it. The admin socket is a file on the node, reached by the
//! agent that already runs there as root.
//!
//! # Layout
//! - `routes.rs`: which host names reach which app, and the URLs an app answers at.
//! - `caddy.rs`: the start config and the routes as Caddy JSON.
//! - `service.rs`: the router's Swarm service.
//! - this file: the leader's loop ([`run`]) that sends each new config to every agent
//!   and keeps the service, and [`wait_served`], which a deploy uses to say where the
//!   routes are live.

pub mod caddy;
pub mod routes;
pub mod service;

use std::sync::Arc;
use std::time::Duration;

use slipway_proto::scheduler_message::Msg as SchedMsg;
use slipway_proto::RouterConfig;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::context::Context;
use crate::deploy::PublishMode;

/// How often the leader re-sends the config to every agent (in case one missed it) and
/// checks the router service.
const ROUND: Duration = Duration::from_secs(15);
/// A burst of raft writes is one config computation.
const MIN_TICK: Duration = Duration::from_millis(50);

/// The router config the replicated state asks for now.
pub fn config(ctx: &Context) -> RouterConfig {
    let stack = &ctx.config.deploy.stack;
    let routes = ctx.store.read(|s| routes::routes(s, stack, &ctx.config.router.domain));
    let rendered = caddy::render(&routes);
    RouterConfig { stack: stack.clone(), version: rendered.version, caddy_json: rendered.json }
}

/// Where `app` answers, per the replicated state and this member's router settings.
pub fn app_urls(ctx: &Context, app: &str) -> Vec<String> {
    let router = &ctx.config.router;
    ctx.store.read(|s| routes::app_urls(s, app, &router.domain, router.http_port))
}

/// The leader's router loop; does nothing while this member does not lead. Runs until
/// shutdown.
pub async fn run(ctx: Arc<Context>, mut shutdown: watch::Receiver<bool>) {
    let mut applied = ctx.store.applied();
    let mut sent: Option<String> = None;
    let mut round_at: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = applied.changed() => {}
            _ = tokio::time::sleep(ROUND) => {}
            _ = shutdown.changed() => return,
        }
        tokio::time::sleep(MIN_TICK).await;
        applied.borrow_and_update();
        if !ctx.fleet.is_leading() || !ctx.store.is_leader() {
            (sent, round_at) = (None, None);
            continue;
        }
        let round = round_at.is_none_or(|at| at.elapsed() >= ROUND);
        let config = config(&ctx);
        if round || sent.as_deref() != Some(config.version.as_str()) {
            let agents = ctx.fleet.broadcast(&SchedMsg::Router(config.clone()));
            if sent.as_deref() != Some(config.version.as_str()) {
                tracing::info!(version = %config.version, agents, "router config sent");
            }
            sent = Some(config.version);
        }
        if round {
            round_at = Some(Instant::now());
            ensure_service(&ctx).await;
        }
    }
}

async fn ensure_service(ctx: &Context) {
    let stack = &ctx.config.deploy.stack;
    let docker = match ctx.docker().await {
        Ok(docker) => docker,
        Err(err) => {
            tracing::warn!(%err, "cannot check the router service");
            return;
        }
    };
    match service::ensure(
        &docker,
        stack,
        &ctx.config.router,
        PublishMode::from(ctx.config.deploy.publish_mode),
        || async { ctx.store.confirm_leading().await.map_err(|e| e.to_string()) },
    )
    .await
    {
        Ok(service::Ensured::Unchanged) => {}
        Ok(done) => tracing::info!(service = %service::service_name(stack), ?done, "router service"),
        Err(err) => tracing::warn!(%err, "cannot create or update the router service"),
    }
}

/// Waits up to `timeout` until every connected agent reports its node's router serving
/// the current routes. `Ok(nodes)` names how many do; `Err` says, per node that does not,
/// what its agent last reported.
pub async fn wait_served(ctx: &Context, timeout: Duration) -> Result<usize, Vec<String>> {
    let deadline = Instant::now() + timeout;
    loop {
        let version = config(ctx).version;
        let routers = ctx.fleet.routers();
        let lagging: Vec<String> = routers
            .iter()
            .filter(|(_, status)| status.as_ref().is_none_or(|s| s.version != version))
            .map(|(node, status)| {
                let name =
                    ctx.store.read(|s| s.nodes.get(node).map(|n| n.name.clone())).unwrap_or(node.clone());
                match status {
                    None => format!("node {name}: its agent has not reported a router yet"),
                    Some(s) if !s.error.is_empty() => format!("node {name}: {}", s.error),
                    Some(s) => format!("node {name}: still serves routes {:?}", s.version),
                }
            })
            .collect();
        if routers.is_empty() {
            return Err(vec!["no agent is connected to program a router".into()]);
        }
        if lagging.is_empty() {
            return Ok(routers.len());
        }
        if Instant::now() >= deadline {
            return Err(lagging);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
