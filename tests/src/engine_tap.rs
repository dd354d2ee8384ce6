//! [`EngineTap`]: a Unix socket in front of a Docker engine's socket that passes every
//! byte through and keeps what the caller asked the engine to do with services: each
//! `services/create` and `services/<id>/update` request, when it came, its body (the
//! service spec) and the registry credentials sent with it (`X-Registry-Auth`, which
//! Swarm keeps with the service and never shows again: `docker service inspect` leaves
//! them out). A test points the scheduler at the tap (`deploy.docker_socket`) to check
//! the credentials it hands Swarm.
//!
//! It reads the request side of each connection as HTTP/1.1 (the head, then a
//! `Content-Length` body) and copies the answers back untouched. A connection that
//! sends a chunked body or upgrades is passed through from there on without being read.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use base64::Engine;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// One service request the tap saw.
#[derive(Debug, Clone)]
pub struct ServiceWrite {
    /// When the request's head arrived.
    pub at: SystemTime,
    /// `POST /v1.47/services/create`, `POST /v1.47/services/<id>/update?version=N`.
    pub method: String,
    /// The request target.
    pub path: String,
    /// The spec sent (the body as JSON; Null when it was not JSON).
    pub spec: serde_json::Value,
    /// The decoded `X-Registry-Auth` header (`username`, `password`, `serveraddress`).
    pub registry_auth: Option<serde_json::Value>,
}

impl ServiceWrite {
    /// The password of the registry credentials sent along, if any.
    pub fn password(&self) -> Option<String> {
        self.registry_auth.as_ref()?.get("password")?.as_str().map(str::to_string)
    }

    /// The value of label `name` in the spec sent.
    pub fn label(&self, name: &str) -> Option<String> {
        self.spec.get("Labels")?.get(name)?.as_str().map(str::to_string)
    }
}

/// The tap (module docs); it stops when dropped.
pub struct EngineTap {
    /// The socket to point a client at.
    pub socket: PathBuf,
    writes: Arc<Mutex<Vec<ServiceWrite>>>,
    task: tokio::task::JoinHandle<()>,
}

impl EngineTap {
    /// A tap listening on `socket` (created), passing through to the engine at `engine`.
    pub fn start(socket: &Path, engine: &Path) -> EngineTap {
        let _ = std::fs::remove_file(socket);
        let listener = UnixListener::bind(socket)
            .unwrap_or_else(|e| panic!("the engine tap cannot listen on {}: {e}", socket.display()));
        let writes = Arc::new(Mutex::new(Vec::new()));
        let (seen, engine) = (writes.clone(), engine.to_path_buf());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (seen, engine) = (seen.clone(), engine.clone());
                tokio::spawn(async move {
                    if let Err(err) = relay(client, &engine, &seen).await {
                        tracing::debug!(%err, "engine tap connection ended");
                    }
                });
            }
        });
        EngineTap { socket: socket.to_path_buf(), writes, task }
    }

    /// Every service create and update seen so far, in order.
    pub fn service_writes(&self) -> Vec<ServiceWrite> {
        self.writes.lock().expect("tap lock").clone()
    }
}

impl Drop for EngineTap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Passes one client connection through to the engine, noting its service writes.
async fn relay(client: UnixStream, engine: &Path, seen: &Mutex<Vec<ServiceWrite>>) -> std::io::Result<()> {
    let upstream = UnixStream::connect(engine).await?;
    let (client_read, mut client_write) = client.into_split();
    let (mut engine_read, mut engine_write) = upstream.into_split();
    let answers = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut engine_read, &mut client_write).await;
        let _ = client_write.shutdown().await;
    });
    let mut requests = BufReader::new(client_read);
    let result = async {
        loop {
            let mut head = Vec::new();
            loop {
                let n = requests.read_until(b'\n', &mut head).await?;
                if n == 0 {
                    return Ok(());
                }
                if head.ends_with(b"\r\n\r\n") || head == b"\r\n" {
                    break;
                }
            }
            let at = SystemTime::now();
            let text = String::from_utf8_lossy(&head).to_string();
            let mut lines = text.split("\r\n");
            let mut start = lines.next().unwrap_or_default().split(' ');
            let (method, path) = (start.next().unwrap_or_default(), start.next().unwrap_or_default());
            let header = |name: &str| {
                text.split("\r\n").skip(1).find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
                })
            };
            engine_write.write_all(&head).await?;
            let chunked = header("transfer-encoding").is_some_and(|v| v.contains("chunked"));
            if chunked || header("upgrade").is_some() {
                tokio::io::copy(&mut requests, &mut engine_write).await?;
                return Ok(());
            }
            let length: u64 = header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
            let mut body = Vec::new();
            (&mut requests).take(length).read_to_end(&mut body).await?;
            engine_write.write_all(&body).await?;
            let service_write = method == "POST"
                && path.contains("/services/")
                && (path.contains("/services/create")
                    || path.split('?').next().is_some_and(|p| p.ends_with("/update")));
            if service_write {
                let registry_auth = header("x-registry-auth").and_then(|v| decode_auth(&v));
                let spec = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                seen.lock().expect("tap lock").push(ServiceWrite {
                    at,
                    method: method.to_string(),
                    path: path.to_string(),
                    spec,
                    registry_auth,
                });
            }
        }
    }
    .await;
    let _ = engine_write.shutdown().await;
    let _ = answers.await;
    result
}

/// `X-Registry-Auth`: base64 (standard or URL-safe) of the credentials' JSON.
fn decode_auth(value: &str) -> Option<serde_json::Value> {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
    let bytes = STANDARD
        .decode(value)
        .or_else(|_| URL_SAFE.decode(value))
        .or_else(|_| URL_SAFE_NO_PAD.decode(value))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}
