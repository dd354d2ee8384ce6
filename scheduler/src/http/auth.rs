//! Who may read the fleet page and `/metrics` (`http.require_auth`): a caller with the
//! bearer token ([`BearerToken`]) as `Authorization: Bearer TOKEN` or as the password of
//! HTTP Basic auth (any user name: what a browser prompts for), or, on a TLS listener,
//! with a client certificate from the cluster CA naming an operator or a scheduler.
//! Anyone else gets 401 with `WWW-Authenticate` challenges for both schemes; an agent's
//! certificate alone gets 403 (agents have no business reading the whole fleet), and a
//! revoked one (the deny list, as on every gRPC call) gets 403 with the reason.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use slipway_proto::tls::{CertInfo, Gate, Role};

use crate::security::http_access::BearerToken;

/// Who may read the protected pages.
#[derive(Clone)]
pub struct Access {
    /// The token callers must present, when auth is required; None lets anyone
    /// (`require_auth = false`, loopback only).
    pub token: Option<BearerToken>,
    /// The deny list a client certificate is checked against.
    pub deny_list: Gate,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access").field("token", &self.token).finish_non_exhaustive()
    }
}

/// The client certificate a TLS connection presented, verified against the cluster CA
/// during the handshake (None: none presented, or a plain-HTTP listener); put in every
/// request's extensions by the listener.
#[derive(Debug, Clone, Default)]
pub struct TlsCaller(pub Option<CertInfo>);

/// Middleware in front of the protected routes.
pub async fn require(State(access): State<Arc<Access>>, request: Request, next: Next) -> Response {
    let Some(token) = &access.token else { return next.run(request).await };
    let path = request.uri().path().to_string();
    let caller = request.extensions().get::<TlsCaller>().and_then(|c| c.0.clone());
    if let Some(cert) = &caller {
        if let Err(revoked) = (access.deny_list)(cert) {
            return (StatusCode::FORBIDDEN, format!("{}\n", revoked.message())).into_response();
        }
    }
    let caller = caller.map(|cert| cert.identity);
    match (&caller, presented(request.headers())) {
        (Some(who), _) if matches!(who.role, Role::Admin | Role::Scheduler) => next.run(request).await,
        (_, Some(presented)) if token.matches(&presented) => next.run(request).await,
        (_, Some(_)) => {
            tracing::info!(%path, "refused an HTTP request: wrong token");
            challenge("the token presented is not this scheduler's HTTP token")
        }
        (Some(who), None) => {
            tracing::info!(%path, caller = %who, "refused an HTTP request: not an operator or a scheduler");
            let why = format!(
                "{who} may not read this page: it is for operators and schedulers (or the HTTP token)\n"
            );
            (StatusCode::FORBIDDEN, why).into_response()
        }
        (None, None) => challenge("this page needs the scheduler's HTTP token"),
    }
}

/// The token an `Authorization` header carries: a Bearer token, or a Basic password.
fn presented(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.trim().to_string());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD.decode(rest.trim()).ok()?;
        let (_user, password) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
        return Some(password.to_string());
    }
    None
}

/// 401 with a challenge for each scheme and what to present.
fn challenge(why: &str) -> Response {
    let body = format!(
        "{why}: send `Authorization: Bearer TOKEN`, or in a browser any user name and the token as \
         password. The token is in the file http.token_file names on the scheduler (by default \
         <data_dir>/http-token); with http.tls an operator certificate from the cluster CA also does.\n"
    );
    let mut response = (StatusCode::UNAUTHORIZED, body).into_response();
    let headers = response.headers_mut();
    headers.append(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"slipway\""));
    headers.append(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"slipway\", charset=\"UTF-8\""),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_read_from_bearer_or_basic() {
        let mut headers = HeaderMap::new();
        assert_eq!(presented(&headers), None);
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer abc"));
        assert_eq!(presented(&headers).as_deref(), Some("abc"));
        let basic = base64::engine::general_purpose::STANDARD.encode("anyone:s3cret:with:colons");
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(&format!("Basic {basic}")).unwrap());
        assert_eq!(presented(&headers).as_deref(), Some("s3cret:with:colons"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Digest x"));
        assert_eq!(presented(&headers), None);
    }
}
