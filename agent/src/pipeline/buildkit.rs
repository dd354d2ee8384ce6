//! BuildKit builds through the engine: `POST /build?version=2&session=<id>` with a session
//! the agent serves itself over the engine's `/session` endpoint.
//!
//! ```text
//! agent ── POST /session (Upgrade: h2c) ──► dockerd      the agent is the gRPC *server*:
//!        ◄── Health/Check, Secrets/GetSecret,             BuildKit asks it for secrets and
//!            Auth/Credentials ──────────────              registry credentials
//! agent ── POST /build?version=2&session=<id> ──► dockerd (tar context in the body)
//!        ◄── JSON stream: aux "moby.buildkit.trace" (StatusResponse) ─ Progress ─► build log
//! ```
//!
//! **Why our own session.** bollard 0.21's `buildkit` feature runs a session for
//! `build_image`, but it serves registry credentials only: no secrets provider is reachable
//! through its public API (its `SecretProvider` serves only its gRPC `solve` path, which
//! reports no progress). So the agent serves the session with bollard-buildkit-proto's
//! generated services (tonic 0.14, as the rest of the workspace) and lets bollard make the
//! `/build` request: bollard-stubs' `buildkit` feature adds the `session` option and
//! decodes the status stream, while bollard's own feature stays off (with it on, bollard
//! would open a second session of its own for the same id).
//!
//! **Which builder.** [`engine_builder`] reads `GET /_ping`'s `Builder-Version` header:
//! the engine says `1` only when its `daemon.json` turns BuildKit off
//! (`"features": {"buildkit": false}`); then the agent falls back to the classic builder
//! and says so. Debian's 20.10 engine sends no header by default and builds with BuildKit
//! when asked.
//!
//! **Progress.** [`Progress`] turns the status stream into the lines the deploy stream
//! shows, in the shape of `docker build --progress=plain`: `#N <step>` when a step
//! starts, its output beneath as `#N <line>`, then `#N CACHED`, `#N DONE 1.2s` or
//! `#N ERROR: …`. Dockerfile steps (vertices named `[stage N/M] …`) are counted as
//! steps and, when BuildKit answered them from its cache, as cache hits (a `FROM`
//! never is: BuildKit marks it cached whenever another build resolved the image first); BuildKit's own
//! vertices (`[internal] …`, exporting, cache import) are shown but not counted.

use slipway_proto::validate::{MAX_BUILD_STEPS, MAX_STEP_NAME_CHARS};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;

use bollard_buildkit_proto::health::health_check_response::ServingStatus;
use bollard_buildkit_proto::health::health_server::{Health, HealthServer};
use bollard_buildkit_proto::health::{
    HealthCheckRequest, HealthCheckResponse, HealthListRequest, HealthListResponse,
};
use bollard_buildkit_proto::moby::buildkit::secrets::v1::secrets_server::{Secrets, SecretsServer};
use bollard_buildkit_proto::moby::buildkit::secrets::v1::{GetSecretRequest, GetSecretResponse};
use bollard_buildkit_proto::moby::buildkit::v1::StatusResponse;
use bollard_buildkit_proto::moby::filesync::v1::auth_server::{Auth, AuthServer};
use bollard_buildkit_proto::moby::filesync::v1::{
    CredentialsRequest, CredentialsResponse, FetchTokenRequest, FetchTokenResponse, GetTokenAuthorityRequest,
    GetTokenAuthorityResponse, VerifyTokenAuthorityRequest, VerifyTokenAuthorityResponse,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tonic::{Request, Response, Status};

use super::docker::RegistryLogin;
use super::secrets::MountSecrets;

/// Which builder an engine runs our builds with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Builder {
    /// BuildKit through the engine, with the agent's session (the default).
    #[default]
    BuildKit,
    /// Docker's classic builder: the fallback where the engine turned BuildKit off.
    Classic,
}

impl Builder {
    /// How reports and logs name it.
    pub fn name(self) -> &'static str {
        match self {
            Builder::BuildKit => "buildkit",
            Builder::Classic => "classic",
        }
    }
}

/// Longest response head read from the engine socket.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Lines of output quoted when a build fails.
const FAILURE_CONTEXT_LINES: usize = 20;

/// Longest line of step output kept whole; see `docker::MAX_OUTPUT_LINE_BYTES`.
const MAX_OUTPUT_LINE_BYTES: usize = 256 * 1024;

/// Asks the engine at `socket` which builder it offers ([`Builder::Classic`] only when
/// its `/_ping` says `Builder-Version: 1`).
pub async fn engine_builder(socket: &Path) -> std::io::Result<Builder> {
    let (_, head) = request_head(socket, "GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n").await?;
    let classic = head.lines().any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("builder-version") && value.trim() == "1"
        })
    });
    Ok(if classic { Builder::Classic } else { Builder::BuildKit })
}

/// Sends `request` over a new connection to `socket` and reads the response head (up to
/// the blank line, byte by byte so nothing after it is consumed).
async fn request_head(socket: &Path, request: &str) -> std::io::Result<(UnixStream, String)> {
    let mut stream = UnixStream::connect(socket).await?;
    stream.write_all(request.as_bytes()).await?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_HEAD_BYTES {
            return Err(std::io::Error::other("the engine's response head is too long"));
        }
        if stream.read(&mut byte).await? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the engine closed the connection",
            ));
        }
        head.push(byte[0]);
    }
    Ok((stream, String::from_utf8_lossy(&head).into_owned()))
}

/// What the session serves BuildKit for one build.
#[derive(Debug, Clone)]
pub struct SessionData {
    /// App being built (named in errors).
    pub app: String,
    /// Where the node keeps the app's secrets (named in errors).
    pub secrets_dir: std::path::PathBuf,
    /// Values for `RUN --mount=type=secret,id=NAME` (`build.secrets`).
    pub secrets: MountSecrets,
    /// Registry host and the build's login to it, for pulling the cache source.
    pub login: Option<(String, RegistryLogin)>,
}

/// A session the engine holds open for one build; closed when dropped.
#[derive(Debug)]
pub struct Session {
    /// The id the build request names.
    pub id: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// gRPC methods the session serves (the engine calls only what is listed).
const SESSION_METHODS: &[&str] = &[
    "/grpc.health.v1.Health/Check",
    "/moby.buildkit.secrets.v1.Secrets/GetSecret",
    "/moby.filesync.v1.Auth/Credentials",
];

/// Opens a session with the engine at `socket` and serves `data` on it until dropped.
pub async fn open_session(socket: &Path, data: SessionData) -> std::io::Result<Session> {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let mut request = format!(
        "POST /session HTTP/1.1\r\nHost: docker\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\
         Content-Length: 0\r\nX-Docker-Expose-Session-Uuid: {id}\r\n\
         X-Docker-Expose-Session-Name: slipway-{}\r\nX-Docker-Expose-Session-Sharedkey: {id}\r\n",
        data.app
    );
    for method in SESSION_METHODS {
        request.push_str(&format!("X-Docker-Expose-Session-Grpc-Method: {method}\r\n"));
    }
    request.push_str("\r\n");
    let (stream, head) = request_head(socket, &request).await?;
    let status = head.lines().next().unwrap_or_default();
    if !status.contains(" 101") {
        return Err(std::io::Error::other(format!("the engine refused a build session: {status}")));
    }
    let data = Arc::new(data);
    let server = tonic::transport::Server::builder()
        .add_service(HealthServer::new(SessionHealth))
        .add_service(SecretsServer::new(SessionSecrets(data.clone())))
        .add_service(AuthServer::new(SessionAuth(data)));
    let task = tokio::spawn(async move {
        let incoming = futures::stream::iter([Ok::<_, std::io::Error>(stream)]);
        if let Err(err) = server.serve_with_incoming(incoming).await {
            tracing::debug!(%err, "build session ended");
        }
    });
    Ok(Session { id, task })
}

struct SessionHealth;

#[tonic::async_trait]
impl Health for SessionHealth {
    async fn check(&self, _: Request<HealthCheckRequest>) -> Result<Response<HealthCheckResponse>, Status> {
        Ok(Response::new(HealthCheckResponse { status: ServingStatus::Serving as i32 }))
    }

    async fn list(&self, _: Request<HealthListRequest>) -> Result<Response<HealthListResponse>, Status> {
        Err(Status::unimplemented("not served"))
    }

    type WatchStream = futures::stream::Empty<Result<HealthCheckResponse, Status>>;

    async fn watch(&self, _: Request<HealthCheckRequest>) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented("not served"))
    }
}

struct SessionSecrets(Arc<SessionData>);

#[tonic::async_trait]
impl Secrets for SessionSecrets {
    async fn get_secret(
        &self,
        request: Request<GetSecretRequest>,
    ) -> Result<Response<GetSecretResponse>, Status> {
        let id = request.into_inner().id;
        match self.0.secrets.get(&id) {
            Some(data) => Ok(Response::new(GetSecretResponse { data: data.to_vec() })),
            // Not NotFound: BuildKit would then skip a mount without `required`, and the
            // step would run without the secret it needs, failing later and less clearly.
            None => Err(Status::failed_precondition(unknown_secret(&self.0, &id))),
        }
    }
}

/// Why a secret the Dockerfile mounts is not served.
fn unknown_secret(data: &SessionData, id: &str) -> String {
    let id: String = id.chars().take(64).collect();
    format!(
        "secret {id:?} is not in build.secrets of app {app}; add it to build.secrets in slipway.toml \
         and put its value in {}/{app}/{id} on every build node",
        data.secrets_dir.display(),
        app = data.app
    )
}

struct SessionAuth(Arc<SessionData>);

#[tonic::async_trait]
impl Auth for SessionAuth {
    async fn credentials(
        &self,
        request: Request<CredentialsRequest>,
    ) -> Result<Response<CredentialsResponse>, Status> {
        let host = request.into_inner().host;
        let answer = match &self.0.login {
            Some((registry, login)) if *registry == host => {
                CredentialsResponse { username: login.username.clone(), secret: login.password.clone() }
            }
            // Anonymous for any other registry.
            _ => CredentialsResponse::default(),
        };
        Ok(Response::new(answer))
    }

    async fn fetch_token(
        &self,
        _: Request<FetchTokenRequest>,
    ) -> Result<Response<FetchTokenResponse>, Status> {
        Err(Status::unimplemented("not served: use Credentials"))
    }

    async fn get_token_authority(
        &self,
        _: Request<GetTokenAuthorityRequest>,
    ) -> Result<Response<GetTokenAuthorityResponse>, Status> {
        Err(Status::unimplemented("not served"))
    }

    async fn verify_token_authority(
        &self,
        _: Request<VerifyTokenAuthorityRequest>,
    ) -> Result<Response<VerifyTokenAuthorityResponse>, Status> {
        Err(Status::unimplemented("not served"))
    }
}

/// One vertex (a step or BuildKit's own work) as the log shows it.
#[derive(Debug, Default)]
struct VertexState {
    /// `#N` in the log: order of first appearance.
    index: u32,
    name: String,
    announced: bool,
    done: bool,
    /// Output not yet ended by a newline.
    partial: String,
}

/// Reads BuildKit's status stream into log lines, counting steps and cache hits and
/// keeping what a failure report needs (module docs).
#[derive(Debug, Default)]
pub struct Progress {
    vertices: HashMap<String, VertexState>,
    /// Status ids (transfers, pulls) already reported done.
    statuses_done: BTreeSet<String>,
    /// Dockerfile steps run or answered from the cache.
    pub steps: u32,
    /// Dockerfile steps answered from the cache (never a `FROM`).
    pub cache_hits: u32,
    /// The Dockerfile step that failed, if one did.
    failed_step: Option<String>,
    /// Each Dockerfile step completed, by its `#N` (at most [`MAX_BUILD_STEPS`]).
    records: BTreeMap<u32, slipway_proto::BuildStep>,
    /// The step seen last (for a failure without a failed vertex).
    last_step: Option<String>,
    tail: VecDeque<String>,
}

impl Progress {
    /// The lines one status message adds to the log.
    pub fn feed(&mut self, status: &StatusResponse) -> Vec<String> {
        let mut lines = Vec::new();
        for v in &status.vertexes {
            let next = self.vertices.len() as u32 + 1;
            let st = self
                .vertices
                .entry(v.digest.clone())
                .or_insert_with(|| VertexState { index: next, ..Default::default() });
            if !v.name.is_empty() {
                st.name = v.name.clone();
            }
            let i = st.index;
            if !st.announced && (v.started.is_some() || v.cached || v.completed.is_some()) {
                st.announced = true;
                lines.push(format!("#{i} {}", st.name));
            }
            if st.done || v.completed.is_none() {
                continue;
            }
            st.done = true;
            if !st.partial.is_empty() {
                lines.push(format!("#{i} {}", std::mem::take(&mut st.partial)));
            }
            let step = is_step(&st.name);
            let seconds = match (&v.started, &v.completed) {
                (Some(s), Some(c)) => {
                    ((c.seconds - s.seconds) as f64 + f64::from(c.nanos - s.nanos) / 1e9).max(0.0)
                }
                _ => 0.0,
            };
            if step && v.error.is_empty() {
                self.steps += 1;
                // A `FROM` is never a cache hit (as with the classic builder): BuildKit
                // marks it CACHED whenever another build resolved the same image first.
                let cached = v.cached && !is_from(&st.name);
                if cached {
                    self.cache_hits += 1;
                }
                self.last_step = Some(st.name.clone());
                if self.records.len() < MAX_BUILD_STEPS {
                    self.records.insert(
                        i,
                        slipway_proto::BuildStep {
                            name: st.name.chars().take(MAX_STEP_NAME_CHARS).collect(),
                            cached,
                            duration_ms: if v.cached { 0 } else { (seconds * 1000.0).round() as u64 },
                        },
                    );
                }
            }
            if !v.error.is_empty() {
                // A cache source that is missing (first build) or unreachable only makes
                // the build colder: BuildKit goes on without it.
                let note = if st.name.starts_with("importing cache manifest") {
                    " (the build goes on without this cache source)"
                } else {
                    ""
                };
                lines.push(format!("#{i} ERROR: {}{note}", v.error));
                if step {
                    self.failed_step = Some(st.name.clone());
                }
            } else if v.cached {
                lines.push(format!("#{i} CACHED"));
            } else {
                lines.push(format!("#{i} DONE {seconds:.1}s"));
            }
        }
        for s in &status.statuses {
            if s.completed.is_some() && self.statuses_done.insert(s.id.clone()) {
                let i = self.vertices.get(&s.vertex).map(|v| v.index).unwrap_or(0);
                let size = if s.total > 0 { s.total } else { s.current };
                let what = if s.name.is_empty() { &s.id } else { &s.name };
                lines.push(format!("#{i} {what} {} done", human_size(size)));
            }
        }
        for log in &status.logs {
            let next = self.vertices.len() as u32 + 1;
            let st = self
                .vertices
                .entry(log.vertex.clone())
                .or_insert_with(|| VertexState { index: next, ..Default::default() });
            let text = String::from_utf8_lossy(&log.msg);
            let mut rest: &str = &text;
            while let Some(end) = rest.find('\n') {
                push_cut(&mut st.partial, &rest[..end]);
                let line = std::mem::take(&mut st.partial);
                lines.push(format!("#{} {}", st.index, line.trim_end_matches('\r')));
                rest = &rest[end + 1..];
            }
            push_cut(&mut st.partial, rest);
        }
        for line in &lines {
            if self.tail.len() == FAILURE_CONTEXT_LINES {
                self.tail.pop_front();
            }
            self.tail.push_back(line.clone());
        }
        lines
    }

    /// The steps completed, in the order the log numbers them (for the build report).
    pub fn build_steps(&self) -> Vec<slipway_proto::BuildStep> {
        self.records.values().cloned().collect()
    }

    /// The failure report: failing step, the engine's message, last lines of output.
    pub fn failure(&self, message: &str) -> super::Failure {
        let head = match self.failed_step.as_ref().or(self.last_step.as_ref()) {
            Some(step) if !message.contains(step.as_str()) => format!("{step}: {message}"),
            _ => message.to_string(),
        };
        if self.tail.is_empty() {
            return super::Failure::Build(head);
        }
        let tail: Vec<&str> = self.tail.iter().map(String::as_str).collect();
        super::Failure::Build(format!("{head}\nlast {} lines of output:\n{}", tail.len(), tail.join("\n")))
    }
}

/// The engine's message, with what to do where BuildKit's own words do not say it.
fn with_hint(message: String) -> String {
    // `gateway.v0` is the frontend a `# syntax=<image>` line (or a BUILDKIT_SYNTAX build
    // argument) selects: the engine must pull that image, and failing that, fails here.
    if message.contains("frontend gateway.v0") {
        format!(
            "{message}\nhint: the Dockerfile's `# syntax=` line asks the engine to pull that frontend \
             image, which it cannot; remove the `# syntax=` line (the engine's built-in Dockerfile \
             frontend runs RUN --mount=type=cache, bind and secret) or make the image pullable from \
             every build node"
        )
    } else {
        message
    }
}

/// `a, b, c`.
fn join<'a>(names: impl Iterator<Item = &'a str>) -> String {
    names.collect::<Vec<_>>().join(", ")
}

/// Appends to a line, dropping what goes past [`MAX_OUTPUT_LINE_BYTES`].
fn push_cut(line: &mut String, text: &str) {
    let room = MAX_OUTPUT_LINE_BYTES.saturating_sub(line.len());
    let mut end = text.len().min(room);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    line.push_str(&text[..end]);
}

/// A step that starts a stage: `[1/3] FROM …`.
fn is_from(name: &str) -> bool {
    name.split_once("] ").is_some_and(|(_, command)| command.starts_with("FROM "))
}

/// A Dockerfile step: `[1/3] FROM …`, `[build 2/4] RUN …` (not `[internal] …`).
fn is_step(name: &str) -> bool {
    let Some(inside) = name.strip_prefix('[').and_then(|r| r.split_once(']')).map(|(i, _)| i) else {
        return false;
    };
    let Some((n, m)) = inside.rsplit(' ').next().and_then(|t| t.split_once('/')) else {
        return false;
    };
    !n.is_empty()
        && !m.is_empty()
        && n.chars().all(|c| c.is_ascii_digit())
        && m.chars().all(|c| c.is_ascii_digit())
}

fn human_size(bytes: i64) -> String {
    let b = bytes.max(0) as f64;
    if b >= 1e6 {
        format!("{:.1}MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1}kB", b / 1e3)
    } else {
        format!("{b}B")
    }
}

/// Builds `tar` as `<repository>:<build_id>` with BuildKit, streaming its progress.
///
/// Unless `no_cache`, `<repository>:latest` is BuildKit's `cache-from`: BuildKit reads the
/// inline cache metadata from the registry (with the build's login, through the session)
/// and fetches only the layers it reuses, so nothing is pulled beforehand. A missing
/// `latest` (first build) only means a colder build.
pub async fn build(
    docker: &bollard::Docker,
    tar: Vec<u8>,
    opts: &super::docker::BuildOpts,
    log: &super::LogSink,
) -> Result<super::docker::BuildStats, super::Failure> {
    use bollard::models::BuildInfoAux;
    use bollard::query_parameters::{BuildImageOptionsBuilder, BuilderVersion};
    use futures::StreamExt;
    use slipway_proto::validate::{self, registry_of};

    use super::docker::{daemon_message, APP_LABEL};
    use super::Failure;

    validate::repository(&opts.repository).map_err(|e| Failure::Build(e.to_string()))?;
    validate::tag(&opts.build_id).map_err(|e| Failure::Build(e.to_string()))?;
    let tag = format!("{}:{}", opts.repository, opts.build_id);
    let latest = format!("{}:latest", opts.repository);
    let registry = registry_of(&opts.repository).to_string();

    let session = open_session(
        &opts.docker_socket,
        SessionData {
            app: opts.app.clone(),
            secrets_dir: opts.secrets_dir.clone(),
            secrets: opts.mount_secrets.clone(),
            login: opts.registry_login.clone().map(|l| (registry.clone(), l)),
        },
    )
    .await
    .map_err(|e| {
        Failure::Build(format!(
            "cannot open a BuildKit session with the engine at unix://{}: {e}",
            opts.docker_socket.display()
        ))
    })?;

    let labels = HashMap::from([(APP_LABEL.to_string(), opts.app.clone())]);
    let args = build_args(&opts.app, &opts.build_args, &opts.secret_args);
    let mut options = BuildImageOptionsBuilder::default()
        .dockerfile(&opts.dockerfile)
        .t(&tag)
        .nocache(opts.no_cache)
        .rm(true)
        .forcerm(true)
        .labels(&labels)
        .buildargs(&args)
        .version(BuilderVersion::BuilderBuildKit)
        .session(&session.id);
    if !opts.no_cache {
        options = options.cachefrom(&vec![latest.clone()]);
    }
    if let Some(target) = &opts.target {
        options = options.target(target);
    }
    // BuildKit runs RUN steps on the engine's `bridge` network; an engine started without
    // one (`"bridge": "none"`) fails every RUN with "network bridge not found".
    let bridge =
        docker.inspect_network("bridge", None::<bollard::query_parameters::InspectNetworkOptions>).await;
    if let Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) = bridge {
        log.line("==> note: the engine has no bridge network; RUN steps run without a network");
        options = options.networkmode("none");
    }
    log.line(format!(
        "==> building {tag} with BuildKit (dockerfile {}{}{}{}{}{})",
        opts.dockerfile,
        opts.target.as_ref().map(|t| format!(", target {t}")).unwrap_or_default(),
        if opts.no_cache { ", no cache".to_string() } else { format!(", cache from {latest}") },
        if opts.build_args.is_empty() {
            String::new()
        } else {
            // Names only: build argument values may be secrets.
            format!(", build args {}", join(opts.build_args.keys().map(String::as_str)))
        },
        if opts.secret_args.is_empty() {
            String::new()
        } else {
            format!(", secret build args {}", join(opts.secret_args.names()))
        },
        if opts.mount_secrets.is_empty() {
            String::new()
        } else {
            format!(", secrets {}", join(opts.mount_secrets.names()))
        },
    ));
    if opts.cpu_limit.is_some() || opts.memory_limit_bytes.is_some() {
        log.line(
            "==> note: build_cpu_limit and build_memory_limit apply to the classic builder only; \
             the engine's BuildKit runs RUN steps without them",
        );
    }

    let body = bollard::body_full(tar.into());
    let mut stream = docker.build_image(options.build(), None, Some(body));
    let mut progress = Progress::default();
    let mut image_id = None;
    while let Some(item) = stream.next().await {
        match item {
            Ok(info) => {
                match info.aux {
                    Some(BuildInfoAux::BuildKit(status)) => {
                        for line in progress.feed(&status) {
                            log.line(line);
                        }
                    }
                    Some(BuildInfoAux::Default(id)) => image_id = id.id.or(image_id),
                    None => {}
                }
                if let Some(text) = info.stream.as_deref().map(str::trim).filter(|t| !t.is_empty()) {
                    log.line(text.to_string());
                }
            }
            Err(err) => return Err(progress.failure(&with_hint(daemon_message(&err)))),
        }
    }
    drop(session);
    let image_id = match image_id {
        Some(id) => id,
        None => docker.inspect_image(&tag).await.map(|i| i.id.unwrap_or_default()).map_err(|e| {
            Failure::Build(format!("the build ended but {tag} cannot be found: {}", daemon_message(&e)))
        })?,
    };
    log.line(format!("==> built {tag}: {} steps, {} from the cache", progress.steps, progress.cache_hits));
    let build_steps = progress.build_steps();
    Ok(super::docker::BuildStats {
        image_id,
        cache_hits: progress.cache_hits,
        steps: progress.steps,
        build_steps,
    })
}

/// Build arguments for a BuildKit build of `app`: the manifest's, the deprecated secret
/// build arguments', `BUILDKIT_INLINE_CACHE=1` so the pushed image carries the cache
/// metadata a cold node's build reads through `cache-from`, and
/// `BUILDKIT_CACHE_MOUNT_NS` naming the app, so that its `RUN --mount=type=cache` mounts
/// are its own on a node that builds many apps (BuildKit keys a cache mount by its id,
/// by default its target path: without it, every app mounting `/root/.cache/pip` would
/// read and write one cache). Both are set last: a manifest cannot override them.
pub fn build_args(
    app: &str,
    args: &BTreeMap<String, String>,
    secret_args: &super::secrets::SecretArgs,
) -> HashMap<String, String> {
    let mut all: HashMap<String, String> = args.clone().into_iter().collect();
    all.extend(secret_args.expose().map(|(k, v)| (k.to_string(), v.to_string())));
    all.insert("BUILDKIT_INLINE_CACHE".into(), "1".into());
    all.insert(CACHE_MOUNT_NS.into(), format!("slipway-app-{app}"));
    all
}

/// The Dockerfile frontend's build argument that prefixes every cache mount's id.
const CACHE_MOUNT_NS: &str = "BUILDKIT_CACHE_MOUNT_NS";

#[cfg(test)]
mod tests {
    use bollard_buildkit_proto::google::protobuf::Timestamp;
    use bollard_buildkit_proto::moby::buildkit::v1::{Vertex, VertexLog};

    use super::*;

    fn at(seconds: i64, nanos: i32) -> Option<Timestamp> {
        Some(Timestamp { seconds, nanos })
    }

    fn vertex(digest: &str, name: &str, started: bool, done: bool, cached: bool) -> Vertex {
        Vertex {
            digest: digest.into(),
            name: name.into(),
            cached,
            started: if started || done { at(10, 0) } else { None },
            completed: if done { at(11, 500_000_000) } else { None },
            ..Default::default()
        }
    }

    fn log(digest: &str, msg: &str) -> VertexLog {
        VertexLog { vertex: digest.into(), msg: msg.as_bytes().to_vec(), stream: 1, ..Default::default() }
    }

    #[test]
    fn steps_are_shown_with_their_output_state_and_time() {
        let mut p = Progress::default();
        let mut lines = p.feed(&StatusResponse {
            vertexes: vec![
                vertex("d0", "[internal] load build definition from Dockerfile", true, true, false),
                vertex("d1", "[1/3] FROM slipway-base", false, true, true),
                vertex("d2", "[2/3] RUN --mount=type=cache,target=/c make", true, false, false),
            ],
            ..Default::default()
        });
        lines.extend(p.feed(&StatusResponse {
            logs: vec![log("d2", "compiling\nhal"), log("d2", "f done\n")],
            ..Default::default()
        }));
        lines.extend(p.feed(&StatusResponse {
            vertexes: vec![
                vertex("d2", "[2/3] RUN --mount=type=cache,target=/c make", true, true, false),
                vertex("d3", "[3/3] COPY . /app", false, true, true),
                vertex("d4", "exporting to image", true, true, false),
            ],
            ..Default::default()
        }));
        assert_eq!(
            lines,
            [
                "#1 [internal] load build definition from Dockerfile",
                "#1 DONE 1.5s",
                "#2 [1/3] FROM slipway-base",
                "#2 CACHED",
                "#3 [2/3] RUN --mount=type=cache,target=/c make",
                "#3 compiling",
                "#3 half done",
                "#3 DONE 1.5s",
                "#4 [3/3] COPY . /app",
                "#4 CACHED",
                "#5 exporting to image",
                "#5 DONE 1.5s",
            ]
        );
        assert_eq!((p.steps, p.cache_hits), (3, 1), "a cached FROM is not a cache hit");
        let records: Vec<_> =
            p.build_steps().into_iter().map(|s| (s.name, s.cached, s.duration_ms)).collect();
        assert_eq!(
            records,
            [
                ("[1/3] FROM slipway-base".to_string(), false, 0),
                ("[2/3] RUN --mount=type=cache,target=/c make".to_string(), false, 1500),
                ("[3/3] COPY . /app".to_string(), true, 0),
            ],
            "steps only, in log order"
        );
    }

    #[test]
    fn a_failed_step_leads_the_failure_report() {
        let mut p = Progress::default();
        let mut failing = vertex("d1", "[build 2/4] RUN false", true, true, false);
        failing.error = "process \"/bin/sh -c false\" did not complete successfully: exit code: 1".into();
        p.feed(&StatusResponse { vertexes: vec![failing], ..Default::default() });
        let failure = p.failure("executor failed running [/bin/sh -c false]: exit code: 1");
        assert_eq!(failure.phase(), "build");
        let reason = failure.reason();
        assert!(reason.starts_with("[build 2/4] RUN false: executor failed running"), "{reason}");
        assert!(reason.contains("last 2 lines of output:\n#1 [build 2/4] RUN false\n#1 ERROR: process"));
        assert_eq!((p.steps, p.cache_hits), (0, 0), "a failed step is not counted as run");
    }

    #[test]
    fn step_records_are_bounded() {
        let mut p = Progress::default();
        let long = format!("[1/250] RUN {}", "x".repeat(500));
        let mut vertexes = vec![vertex("d1", &long, true, true, false)];
        vertexes.extend(
            (2..=250).map(|n| vertex(&format!("d{n}"), &format!("[{n}/250] RUN n"), true, true, true)),
        );
        p.feed(&StatusResponse { vertexes, ..Default::default() });
        let records = p.build_steps();
        assert_eq!((p.steps, records.len()), (250, MAX_BUILD_STEPS), "counted all, recorded 200");
        assert_eq!(records[0].name.chars().count(), MAX_STEP_NAME_CHARS);
        assert_eq!(records[199].name, "[200/250] RUN n");
    }

    #[test]
    fn steps_are_recognised_by_their_numbering() {
        assert!(is_step("[1/3] FROM x"));
        assert!(is_step("[stage-1 12/14] RUN make"));
        assert!(!is_step("[internal] load .dockerignore"));
        assert!(!is_step("[auth] sharing credentials"));
        assert!(!is_step("exporting to image"));
        assert!(!is_step("[a/3] x"));
        assert!(!is_step("[/3] x"));
        assert!(is_from("[stage-1 1/4] FROM base AS deps") && !is_from("[2/4] RUN echo FROM x"));
    }

    #[test]
    fn inline_cache_is_always_asked_for() {
        let args = BTreeMap::from([("MODE".to_string(), "prod".to_string())]);
        let all = build_args("shop", &args, &super::super::secrets::SecretArgs::default());
        assert_eq!(all.get("BUILDKIT_INLINE_CACHE").map(String::as_str), Some("1"));
        assert_eq!(all.get("MODE").map(String::as_str), Some("prod"));
        let overridden = BTreeMap::from([(CACHE_MOUNT_NS.to_string(), "slipway-app-other".to_string())]);
        let all = build_args("shop", &overridden, &super::super::secrets::SecretArgs::default());
        assert_eq!(all.get(CACHE_MOUNT_NS).map(String::as_str), Some("slipway-app-shop"), "the app's own");
    }
}
