//! Loopback networking helpers: a free port to listen on, and polling an HTTP
//! endpoint until it answers.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use anyhow::bail;

/// A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, then
/// released). Another process may take it before the caller binds it; fixtures that
/// start servers retry with a new port when that happens.
pub fn free_port() -> u16 {
    free_port_on(std::net::Ipv4Addr::LOCALHOST.into())
}

/// A TCP port on `ip` (an address of this host) that was free a moment ago.
pub fn free_port_on(ip: std::net::IpAddr) -> u16 {
    TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .unwrap_or_else(|e| panic!("cannot bind {ip}:0 to find a free port: {e}"))
        .port()
}

/// Polls `url` with GET (every 200 ms, each try at most 2 s) until it answers 200,
/// and returns the body. Fails after `timeout` with the last status or error seen.
pub async fn wait_for_http(url: &str, timeout: Duration) -> anyhow::Result<String> {
    wait_for_http_as(url, None, timeout).await
}

/// Like [`wait_for_http`], with the request's `Host` header set to `host` (a router's
/// route, reached at the router's address).
pub async fn wait_for_http_as(url: &str, host: Option<&str>, timeout: Duration) -> anyhow::Result<String> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
    let deadline = Instant::now() + timeout;
    loop {
        let mut request = client.get(url);
        if let Some(host) = host {
            request = request.header(reqwest::header::HOST, host);
        }
        let last = match request.send().await {
            Ok(response) if response.status().is_success() => match response.text().await {
                Ok(body) => return Ok(body),
                Err(e) => format!("reading the body failed: {e}"),
            },
            Ok(response) => format!("status {}", response.status()),
            Err(e) => format!("{e}"),
        };
        if Instant::now() >= deadline {
            let as_host = host.map(|h| format!(" (Host: {h})")).unwrap_or_default();
            bail!("{url}{as_host} did not answer 200 within {timeout:?}; last: {last}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
