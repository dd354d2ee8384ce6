//! The scheduler's HTTP side, served by every member on `http_listen`:
//!
//! - `/` and `/fleet`: the fleet page ([`fleet_page`]), server-rendered HTML that
//!   refreshes itself every 3 s: nodes and their headroom, apps, recent builds and
//!   releases, cluster members;
//! - `/metrics`: Prometheus text format ([`metrics`]);
//! - `/healthz`: this member keeps what it commits (raft runs, its store is in place),
//!   503 with the reason otherwise; `/readyz`: that, and a leader is known, so writes
//!   can be served, its data dir above `[storage] min_free_bytes` (`raft::space`), and
//!   on the leader its dispatcher's last pass (503 when it has not finished one for
//!   [`DISPATCHER_STALL`]);
//! - `/v2/token`: the registry's token realm (`security::registry_auth`);
//! - `POST /hooks/APP`: deploy on git push ([`hooks`]), authenticated by the push's
//!   signature with the app's webhook secret, not by the HTTP token.
//!
//! The fleet page and `/metrics` show the fleet's nodes, addresses and build errors, so
//! they answer only callers [`auth`] admits (`http.require_auth`); health and the token
//! realm (which checks grants itself) stay open. Every route answers within
//! [`REQUEST_TIMEOUT`] and refuses bodies over [`MAX_BODY_BYTES`]; [`serve`] adds TLS
//! and the connection-level limits.
//!
//! Both pages render from one [`Overview`] taken per request: what this member has
//! applied of the replicated state, its raft metrics, and — on the leader only — the
//! fleet's soft state (reports, liveness), which followers do not have.

pub mod auth;
pub mod fleet_page;
pub mod hooks;
pub mod metrics;
pub mod overview;
pub mod serve;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State as AxState;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse};
use axum::routing::{get, post};
use axum::Router;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

use self::auth::Access;
use self::overview::Overview;
use crate::context::Context;

/// How long any request may take to be answered (503 after that).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request body taken (413 above it) on every route but `/hooks/` (which takes
/// up to [`hooks::MAX_HOOK_BODY_BYTES`]): the others are GETs.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// Routes of the HTTP side; the fleet page and `/metrics` behind `access`.
pub fn router(ctx: Arc<Context>, access: Access) -> Router {
    let protected = Router::new()
        .route("/", get(fleet_page))
        .route("/fleet", get(fleet_page))
        .route("/metrics", get(metrics))
        .route_layer(axum::middleware::from_fn_with_state(Arc::new(access), auth::require));
    // Push notifications are larger than anything else: their own limit, enforced by
    // the handler (declared length first, then while reading), which logs a refusal.
    let hooks = Router::new().route("/hooks/{app}", post(hooks::receive));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/v2/token", get(registry_token))
        .merge(protected)
        .layer(RequestBodyLimitLayer::new(MAX_BODY_BYTES))
        .merge(hooks)
        .with_state(ctx)
        .layer(TimeoutLayer::with_status_code(StatusCode::SERVICE_UNAVAILABLE, REQUEST_TIMEOUT))
}

async fn healthz(AxState(ctx): AxState<Arc<Context>>) -> (StatusCode, String) {
    match ctx.store.health().await {
        Ok(()) => (StatusCode::OK, "ok\n".into()),
        Err(why) => {
            tracing::error!(%why, "unhealthy");
            (StatusCode::SERVICE_UNAVAILABLE, format!("unhealthy: {why}\n"))
        }
    }
}

/// The registry's token server (see `registry_auth`): a short-lived JWT for what the
/// presented grant allows of the scopes asked for; anonymous callers get no access.
async fn registry_token(
    AxState(ctx): AxState<Arc<Context>>,
    headers: HeaderMap,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> axum::response::Response {
    use crate::security::registry_auth as auth;
    let refuse = |status: StatusCode, why: String| {
        let body =
            serde_json::json!({ "details": why, "errors": [{ "code": "UNAUTHORIZED", "message": why }] });
        (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
    };
    let (Some(ca), Some(signer)) = (ctx.ca.as_deref(), ctx.registry_signer.as_deref()) else {
        return refuse(
            StatusCode::NOT_FOUND,
            "this scheduler runs without TLS: it has no CA to sign with".into(),
        );
    };
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let grant = match auth::basic_password(authorization) {
        Ok(None) => None,
        Ok(Some(password)) => match auth::verify_grant(ca, &password) {
            Ok(grant) => Some(grant),
            Err(e) => return refuse(StatusCode::UNAUTHORIZED, e.0),
        },
        Err(e) => return refuse(StatusCode::UNAUTHORIZED, e.0),
    };
    let mut asked = Vec::new();
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match key.as_ref() {
            "service" if value != auth::SERVICE => {
                return refuse(StatusCode::BAD_REQUEST, format!("unknown service {value:?}"))
            }
            "scope" => asked.extend(value.split(' ').filter_map(auth::parse_scope)),
            _ => {}
        }
    }
    let subject = grant.as_ref().map_or("anonymous".to_string(), |g| format!("grant:{}", g.app));
    match auth::token(signer.credentials(), &subject, auth::allowed(grant.as_ref(), &asked)) {
        Ok(answer) => axum::Json(answer).into_response(),
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

async fn readyz(AxState(ctx): AxState<Arc<Context>>) -> (StatusCode, String) {
    if let Err(why) = ctx.store.health().await {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n"));
    }
    // Still healthy (it keeps what it commits and serves reads), but it refuses new work.
    if let Err(why) = ctx.store.space().check() {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n"));
    }
    let leader = ctx.store.raft().metrics().borrow().current_leader;
    let Some(leader) = leader else {
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready: no leader elected\n".into());
    };
    if !ctx.store.is_leader() {
        return (StatusCode::OK, format!("ready: leader is member {leader}; store ok\n"));
    }
    // The leader's dispatcher: its task is supervised (a dead one ends the process), so
    // here it is alive; a pass that has not finished for long means it is stuck.
    match ctx.dispatch.last_pass_age() {
        Some(age) if age > DISPATCHER_STALL => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: this member leads but its dispatcher's last pass ended {:.1} s ago (stuck for \
                 more than {} s); see its log\n",
                age.as_secs_f64(),
                DISPATCHER_STALL.as_secs()
            ),
        ),
        Some(age) => (
            StatusCode::OK,
            format!(
                "ready: leader is member {leader} (this one); dispatcher alive, last pass {:.1} s ago; store ok\n",
                age.as_secs_f64()
            ),
        ),
        None => (
            StatusCode::OK,
            format!("ready: leader is member {leader} (this one); dispatcher alive, first pass pending; store ok\n"),
        ),
    }
}

/// A leader whose dispatcher has not finished a pass for this long is not ready: a pass
/// waits at most for a few raft writes (each bounded by `raft::store::WRITE_TIMEOUT`).
const DISPATCHER_STALL: Duration = Duration::from_secs(30);

async fn metrics(AxState(ctx): AxState<Arc<Context>>) -> impl IntoResponse {
    let overview = Overview::gather(&ctx).await;
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], metrics::render(&overview))
}

async fn fleet_page(AxState(ctx): AxState<Arc<Context>>, headers: HeaderMap) -> Html<String> {
    let overview = Overview::gather(&ctx).await;
    // The port the browser reached this member on: the best guess at the leader's
    // HTTP port, which members do not tell each other.
    let port = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.rsplit_once(':'))
        .and_then(|(_, port)| port.parse::<u16>().ok());
    let scheme = if ctx.config.http.tls { "https" } else { "http" };
    Html(fleet_page::render(&overview, scheme, port))
}
