//! The engine's BuildKit build cache: how big it is (`GET /system/df`) and pruning it down
//! to a size (`POST /build/prune?keep-storage=N`), over the engine's socket with API 1.41
//! (Docker 20.10).
//!
//! **Why raw requests, not bollard.** bollard 0.21 speaks the current Engine API: its
//! `df` answer reads `BuildCacheUsage` and its `prune_build` sends `reserved-space`, both
//! newer than 20.10, whose `/system/df` lists `BuildCache` records and whose
//! `/build/prune` takes `keep-storage`. Two small JSON requests over the socket keep the
//! agent right on the engines Debian ships.
//!
//! The cache counts cache mounts (`RUN --mount=type=cache`, records of type
//! `exec.cachemount`) besides layers. A prune with `keep-storage` and without `all`
//! removes, least recently used first, only what BuildKit itself calls reclaimable:
//! records no build uses now that are neither shared with an image nor internal.

use std::path::Path;

use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// The most a JSON answer of the engine may hold (a df of a busy engine is large).
const MAX_ANSWER_BYTES: usize = 64 << 20;

/// The build cache as `/system/df` lists it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CacheUsage {
    /// Bytes of every record (cache mounts included).
    pub total_bytes: u64,
    /// Bytes of the records a prune may remove (not in use, not shared).
    pub reclaimable_bytes: u64,
}

#[derive(Deserialize)]
struct DiskUsage {
    #[serde(rename = "BuildCache", default)]
    build_cache: Option<Vec<CacheRecord>>,
}

#[derive(Deserialize)]
struct CacheRecord {
    #[serde(rename = "Size", default)]
    size: i64,
    #[serde(rename = "InUse", default)]
    in_use: bool,
    #[serde(rename = "Shared", default)]
    shared: bool,
}

#[derive(Deserialize)]
struct PruneAnswer {
    #[serde(rename = "SpaceReclaimed", default)]
    space_reclaimed: u64,
}

/// Sums the records of a `/system/df` answer. Pure.
fn usage_of(answer: &[u8]) -> Result<CacheUsage, String> {
    let du: DiskUsage =
        serde_json::from_slice(answer).map_err(|e| format!("unexpected /system/df answer: {e}"))?;
    let mut usage = CacheUsage::default();
    for r in du.build_cache.unwrap_or_default() {
        let size = r.size.max(0) as u64;
        usage.total_bytes += size;
        if !r.in_use && !r.shared {
            usage.reclaimable_bytes += size;
        }
    }
    Ok(usage)
}

/// The size of the engine's build cache now.
pub async fn usage(socket: &Path) -> Result<CacheUsage, String> {
    // The engine runs one disk usage operation at a time and refuses others ("a disk
    // usage operation is already running"): ask a few times.
    let mut tries = 0;
    loop {
        match engine_json(socket, "GET", "/v1.41/system/df").await {
            Ok(body) => return usage_of(&body),
            Err(err) if err.contains("already running") && tries < 10 => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            Err(err) => return Err(err),
        }
    }
}

/// Prunes the build cache down to `keep_bytes` (least recently used first, reclaimable
/// records only); the bytes BuildKit reports freed.
pub async fn prune_to(socket: &Path, keep_bytes: u64) -> Result<u64, String> {
    let path = format!("/v1.41/build/prune?keep-storage={keep_bytes}");
    let body = engine_json(socket, "POST", &path).await?;
    let answer: PruneAnswer =
        serde_json::from_slice(&body).map_err(|e| format!("unexpected /build/prune answer: {e}"))?;
    Ok(answer.space_reclaimed)
}

/// One HTTP/1.0 request to the engine (so the answer ends with the connection, never
/// chunked); the body of a 2xx answer, or the engine's message.
async fn engine_json(socket: &Path, method: &str, path: &str) -> Result<Vec<u8>, String> {
    let at = format!("{method} {path} on unix://{}", socket.display());
    let io = |e: std::io::Error| format!("{at}: {e}");
    let mut stream = UnixStream::connect(socket).await.map_err(io)?;
    let request = format!("{method} {path} HTTP/1.0\r\nHost: docker\r\nContent-Length: 0\r\n\r\n");
    stream.write_all(request.as_bytes()).await.map_err(io)?;
    let mut answer = Vec::new();
    (&mut stream).take(MAX_ANSWER_BYTES as u64 + 1).read_to_end(&mut answer).await.map_err(io)?;
    if answer.len() > MAX_ANSWER_BYTES {
        return Err(format!("{at}: the answer is larger than {MAX_ANSWER_BYTES} bytes"));
    }
    let split =
        answer.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| format!("{at}: no HTTP answer"))?;
    let head = String::from_utf8_lossy(&answer[..split]).into_owned();
    let body = answer[split + 4..].to_vec();
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse::<u16>().ok()).unwrap_or(0);
    if !(200..300).contains(&status) {
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        return Err(format!("{at}: HTTP {status}: {message}"));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_mounts_count_and_only_unused_unshared_records_are_reclaimable() {
        let answer = br#"{"LayersSize": 1, "Images": [], "BuildCache": [
            {"ID": "a", "Type": "regular", "Size": 100, "InUse": false, "Shared": false},
            {"ID": "b", "Type": "exec.cachemount", "Size": 1000, "InUse": false, "Shared": false},
            {"ID": "c", "Type": "regular", "Size": 10, "InUse": true, "Shared": false},
            {"ID": "d", "Type": "regular", "Size": 1, "InUse": false, "Shared": true}
        ]}"#;
        assert_eq!(usage_of(answer).unwrap(), CacheUsage { total_bytes: 1111, reclaimable_bytes: 1100 });
        assert_eq!(usage_of(br#"{"BuildCache": null}"#).unwrap(), CacheUsage::default());
        assert!(usage_of(b"<html>").unwrap_err().contains("/system/df"));
    }

    #[tokio::test]
    async fn an_unreachable_engine_is_named() {
        let err = usage(Path::new("/nonexistent/docker.sock")).await.unwrap_err();
        assert!(err.contains("/nonexistent/docker.sock"), "{err}");
    }
}
