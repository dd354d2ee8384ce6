//! Serving the HTTP side's router on its listener.
//!
//! An accept loop of its own rather than `axum::serve`, for what that does not offer:
//! TLS (tokio-rustls, with the client certificate handed to the handlers as a
//! [`TlsCaller`]), a deadline on the TLS handshake and on reading each request's headers
//! (hyper's `header_read_timeout`: a client trickling bytes, slowloris-style, is cut
//! off), caps on header bytes and on open connections, and graceful shutdown
//! (hyper-util's). HTTP/1.1 only: the pages are small and a scrape is one request.
//! Per-request limits (body size, time to answer) are tower-http layers on the router.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tower::ServiceBuilder;
use tracing::Instrument;

use super::auth::TlsCaller;

/// Connections served at once; more are closed at accept.
pub const MAX_CONNECTIONS: usize = 256;
/// How long a client may take to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send a request's headers, from the connection's start
/// or the previous response (so also how long an idle keep-alive connection stays).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head (request line and headers) read.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Most headers a request may have.
pub const MAX_HEADERS: usize = 64;

/// Serves `app` on `listener` (over TLS with `tls`) until `stop` changes, then lets the
/// open connections finish their requests (the caller bounds how long).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    mut stop: watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(%err, "cannot accept an HTTP connection; retrying in 100 ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "{MAX_CONNECTIONS} HTTP connections open already; closing a new one");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (app, acceptor, watcher) = (app.clone(), acceptor.clone(), graceful.watcher());
        let connection = async move {
            let _permit = permit;
            let Some(acceptor) = acceptor else {
                return serve_connection(TokioIo::new(tcp), app, TlsCaller::default(), watcher).await;
            };
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(err)) => return tracing::debug!(%err, "TLS handshake failed"),
                Err(_) => return tracing::debug!("TLS handshake not done in time; closed"),
            };
            // Verified against the CA by the handshake; one without a slipway identity
            // (not one of ours) counts as none.
            let caller = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|leaf| slipway_proto::tls::cert_info(leaf).ok());
            serve_connection(TokioIo::new(stream), app, TlsCaller(caller), watcher).await
        };
        tokio::spawn(connection.instrument(tracing::debug_span!("http_connection", %peer)));
    }
    drop(listener);
    graceful.shutdown().await;
}

async fn serve_connection<S>(
    io: TokioIo<S>,
    app: Router,
    caller: TlsCaller,
    watcher: hyper_util::server::graceful::Watcher,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = ServiceBuilder::new()
        .map_request(move |mut request: axum::http::Request<Incoming>| {
            request.extensions_mut().insert(caller.clone());
            request
        })
        .service(app);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES)
        .max_headers(MAX_HEADERS);
    let connection = builder.serve_connection(io, TowerToHyperService::new(service));
    if let Err(err) = watcher.watch(connection).await {
        tracing::debug!(%err, "HTTP connection ended");
    }
}
