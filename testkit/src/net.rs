//! Loopback networking helpers: a free port to listen on, and polling an HTTP
//! endpoint until it answers.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use anyhow::bail;

/// A TCP port on 127.0.0.1 that is free now and that no other test process will be
/// handed for a while ([`free_port_on`]).
pub fn free_port() -> u16 {
    free_port_on(std::net::Ipv4Addr::LOCALHOST.into())
}

/// Lowest port [`free_port_on`] hands out.
const FIRST_PORT: u16 = 10_000;
/// How long a port handed out stays reserved for its taker: longer than a test keeps a
/// server it started, so a port is handed out again only after its first taker is done.
const RESERVATION: Duration = Duration::from_secs(30 * 60);

/// A TCP port on `ip` (an address of this host) that is free now, for a server the
/// caller starts later (often seconds later, a Swarm service minutes later). Two
/// things could take it in between, and neither can:
/// - the kernel's ephemeral ports, which every outgoing connection binds: the port is
///   drawn at random below the ephemeral range (`net.ipv4.ip_local_port_range`), from
///   10,000 up;
/// - another test process drawing the same port: each port handed out is reserved for
///   30 minutes by a file in `$TMPDIR/slipway-test-ports/`, created exclusively.
pub fn free_port_on(ip: std::net::IpAddr) -> u16 {
    let below = ephemeral_floor();
    if below <= FIRST_PORT + 1_000 {
        // No room below the ephemeral range: the kernel's choice.
        return TcpListener::bind((ip, 0))
            .and_then(|l| l.local_addr())
            .unwrap_or_else(|e| panic!("cannot bind {ip}:0 to find a free port: {e}"))
            .port();
    }
    let dir = std::env::temp_dir().join("slipway-test-ports");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    let random = std::collections::hash_map::RandomState::new();
    for attempt in 0..10_000u32 {
        let draw = std::hash::BuildHasher::hash_one(&random, (std::process::id(), attempt, Instant::now()));
        let port = FIRST_PORT + (draw % u64::from(below - FIRST_PORT)) as u16;
        if reserve(&dir.join(port.to_string())) && TcpListener::bind((ip, port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on {ip} between {FIRST_PORT} and {below} after 10,000 draws")
}

/// The first port of the kernel's ephemeral range (32,768 where it cannot be read).
fn ephemeral_floor() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// Creates the reservation file `path`, or takes it over once it is older than
/// [`RESERVATION`]; false when another process holds it.
fn reserve(path: &std::path::Path) -> bool {
    let create = || std::fs::OpenOptions::new().write(true).create_new(true).open(path).is_ok();
    if create() {
        return true;
    }
    let stale = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .is_ok_and(|at| at.elapsed().is_ok_and(|age| age > RESERVATION));
    stale && std::fs::remove_file(path).is_ok() && create()
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
