//! Build and push through the Engine API (bollard). BuildKit builds are in
//! [`super::buildkit`]; this module holds the classic builder (the fallback where an engine
//! turned BuildKit off) and the push, which both builders share.
//!
//! **Classic build.** Unless `no_cache`, `<repository>:latest` is pulled first: the classic builder
//! only uses `cachefrom` images that are present locally, and with `cachefrom` set it
//! only trusts local cache entries that are ancestors of those images (or layers it can
//! match against their history). So `cachefrom` names `latest` only when the pull
//! worked; a missing `latest` (first build) or an unreachable registry is logged and the
//! build uses the node's own layer cache as a plain `docker build` would.
//! The build output is streamed line by line; `Step N/M` lines count the steps and
//! ` ---> Using cache` lines the cache hits (the `LABEL` step the builder appends for
//! the [`APP_LABEL`] label is not counted). A failed build reports the failing step,
//! the daemon's message and the last lines of output. CPU and memory caps apply to the
//! `RUN` containers (`cpuquota`/`cpuperiod`, `memory`); bollard 0.21 types `memory` as
//! `i32`, so caps above 2 GiB are lowered to that (and the build log says so).
//!
//! **Push.** `<repository>:<build id>` is pushed and its progress stream read: a layer
//! ends as `Pushed`, `Layer already exists` or `Mounted from …`; the digest comes from the
//! final `<tag>: digest: sha256:… size: N` line (or, failing that, the image's
//! `RepoDigests`). bollard 0.21's `PushImageInfo` drops the stream's per-layer `id`, so
//! bytes are attributed per layer by the `progressDetail.total` of its `Pushing` lines
//! (constant for one layer; two layers of exactly equal size pushed in the same run
//! would be counted once). Those byte counts are what the daemon read from the layer
//! before compression. Then the image is tagged and pushed as `<repository>:latest`
//! (manifest only: every layer exists by then) to seed the next build's cache, and the
//! per-build tag is removed ([`untag_build`]): a node keeps one tag per app, not one per
//! build.
//!
//! The engine connection uses a one-hour timeout ([`DOCKER_TIMEOUT`]): bollard's default
//! of 120 s applies to the whole response and would cut long builds and pushes.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::time::Duration;

use bollard::auth::DockerCredentials;
use bollard::query_parameters::{
    BuildImageOptionsBuilder, CreateImageOptionsBuilder, PushImageOptionsBuilder, RemoveImageOptionsBuilder,
    TagImageOptionsBuilder,
};
use bollard::Docker;
use futures::StreamExt;
use slipway_proto::validate::{self, registry_of};

use super::buildkit::Builder;
use super::secrets::{MountSecrets, SecretArgs};
use super::LogSink;
use crate::error::Failure;

/// Engine socket used when none is configured.
pub const DEFAULT_DOCKER_SOCKET: &str = "/var/run/docker.sock";

/// Timeout for every Engine API request; long enough for any build or push.
pub const DOCKER_TIMEOUT: Duration = Duration::from_secs(3600);

/// Label on every image the agent builds, naming the app (the report counts them).
pub const APP_LABEL: &str = "io.slipway.app";

/// Output lines quoted when a build fails.
const FAILURE_CONTEXT_LINES: usize = 20;

/// Longest line of build output kept whole in memory; the rest of it is dropped. Far
/// above [`super::MAX_LOG_LINE_BYTES`], so a secret cut here is beyond that cut too and
/// never leaves half-masked.
const MAX_OUTPUT_LINE_BYTES: usize = 256 * 1024;

/// CPU period for the build's CFS quota, in microseconds (Docker's default).
const CPU_PERIOD_US: i64 = 100_000;

/// Connects to the engine's unix socket (default [`DEFAULT_DOCKER_SOCKET`]) with a long
/// timeout and negotiates the API version (Debian's engine speaks 1.41).
pub async fn connect_docker(socket: Option<&str>) -> Result<Docker, bollard::errors::Error> {
    let socket = socket.unwrap_or(DEFAULT_DOCKER_SOCKET);
    Docker::connect_with_unix(socket, DOCKER_TIMEOUT.as_secs(), bollard::API_DEFAULT_VERSION)?
        .negotiate_version()
        .await
}

/// How the engine logs in to the registry for one build: the scheduler's grant to push
/// and pull the app's repository (see the scheduler's `registry_auth`). Its `Debug`
/// leaves the password out.
pub use slipway_proto::RegistryLogin;

/// The engine's `X-Registry-Auth` for `repository`'s registry, if the build has a login.
pub(super) fn credentials(login: Option<&RegistryLogin>, repository: &str) -> Option<DockerCredentials> {
    login.map(|l| DockerCredentials {
        username: Some(l.username.clone()),
        password: Some(l.password.clone()),
        serveraddress: Some(registry_of(repository).to_string()),
        ..Default::default()
    })
}

/// What to build and how.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BuildOpts {
    /// App name, recorded in the [`APP_LABEL`] label.
    pub app: String,
    /// Build id: the image's tag.
    pub build_id: String,
    /// Repository without tag, e.g. `127.0.0.1:5000/shop`.
    pub repository: String,
    /// Dockerfile path inside the context.
    pub dockerfile: String,
    /// Stage to build (`--target`).
    pub target: Option<String>,
    /// `--build-arg`s from the manifest. Values are never logged.
    pub build_args: BTreeMap<String, String>,
    /// `--build-arg`s whose values are secrets from the node ([`super::secrets`]).
    pub secret_args: SecretArgs,
    /// Skip the layer cache and the cache source.
    pub no_cache: bool,
    /// CPU cap for `RUN` steps, in cores.
    pub cpu_limit: Option<f64>,
    /// Memory cap for `RUN` steps, in bytes.
    pub memory_limit_bytes: Option<u64>,
    /// How to pull the cache source (None: anonymously).
    pub registry_login: Option<RegistryLogin>,
    /// Which builder runs the build ([`super::buildkit::engine_builder`]).
    pub builder: Builder,
    /// Files served to `RUN --mount=type=secret` (BuildKit only).
    pub mount_secrets: MountSecrets,
    /// The engine's socket: the BuildKit session is opened on it.
    pub docker_socket: PathBuf,
    /// Where the node keeps build secrets (named in errors).
    pub secrets_dir: PathBuf,
}

/// What a successful build measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildStats {
    /// Local image id (`sha256:…`).
    pub image_id: String,
    /// Steps answered from the layer cache.
    pub cache_hits: u32,
    /// Dockerfile steps run (including `FROM`).
    pub steps: u32,
    /// Each step, cached or not, and its time (BuildKit only; empty from the classic builder).
    pub build_steps: Vec<slipway_proto::BuildStep>,
}

/// What a push measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushStats {
    /// Manifest digest, `sha256:` + 64 lowercase hex.
    pub digest: String,
    /// Layers uploaded by this push.
    pub layers_pushed: u32,
    /// Layers the registry already had (or mounted from another repository).
    pub layers_reused: u32,
    /// Bytes of the uploaded layers, as the daemon read them (before compression; layers
    /// of equal size counted once, see [`PushProgress`]): not the bytes the registry
    /// received, which is why operators see it labelled "uncompressed".
    pub bytes_pushed: u64,
}

/// Builds `tar` as `<repository>:<build_id>` with `opts.builder`, streaming its output.
pub async fn build_image(
    docker: &Docker,
    tar: Vec<u8>,
    opts: &BuildOpts,
    log: &LogSink,
) -> Result<BuildStats, Failure> {
    match opts.builder {
        Builder::BuildKit => super::buildkit::build(docker, tar, opts, log).await,
        Builder::Classic => build_classic(docker, tar, opts, log).await,
    }
}

/// Builds `tar` as `<repository>:<build_id>` with the classic builder, streaming its output.
async fn build_classic(
    docker: &Docker,
    tar: Vec<u8>,
    opts: &BuildOpts,
    log: &LogSink,
) -> Result<BuildStats, Failure> {
    validate::repository(&opts.repository).map_err(|e| Failure::Build(e.to_string()))?;
    validate::tag(&opts.build_id).map_err(|e| Failure::Build(e.to_string()))?;
    let tag = format!("{}:{}", opts.repository, opts.build_id);
    let latest = format!("{}:latest", opts.repository);
    // With `cachefrom` set, the classic builder trusts only the cache sources' ancestry,
    // so name `latest` only when it is really here; otherwise the node's own layer cache
    // serves as usual.
    let cache_source = !opts.no_cache
        && pull_cache_source(docker, &opts.repository, opts.registry_login.as_ref(), log).await
        && docker.inspect_image(&latest).await.is_ok();

    // One label only: the classic builder runs each API label as an extra LABEL step that
    // creates and commits a container (~1 s each here, measured), and a per-build label
    // would never be cached. The build id is the image's tag instead.
    let labels = HashMap::from([(APP_LABEL.to_string(), opts.app.clone())]);
    let mut options = BuildImageOptionsBuilder::default()
        .dockerfile(&opts.dockerfile)
        .t(&tag)
        .nocache(opts.no_cache)
        .rm(true)
        .forcerm(true)
        .labels(&labels);
    if cache_source {
        options = options.cachefrom(&vec![latest.clone()]);
    }
    if let Some(target) = &opts.target {
        options = options.target(target);
    }
    if !opts.build_args.is_empty() || !opts.secret_args.is_empty() {
        let mut args: HashMap<String, String> = opts.build_args.clone().into_iter().collect();
        args.extend(opts.secret_args.expose().map(|(k, v)| (k.to_string(), v.to_string())));
        options = options.buildargs(&args);
    }
    let mut caps = Vec::new();
    if let Some(cores) = opts.cpu_limit.filter(|c| c.is_finite() && *c > 0.0) {
        let quota = (cores * CPU_PERIOD_US as f64).round().clamp(1_000.0, f64::from(i32::MAX)) as i32;
        options = options.cpuperiod(CPU_PERIOD_US as i32).cpuquota(quota);
        caps.push(format!("{cores} CPUs"));
    }
    if let Some(bytes) = opts.memory_limit_bytes.filter(|b| *b > 0) {
        // bollard 0.21 types `memory` as i32: caps above 2 GiB cannot be expressed.
        let sent = i32::try_from(bytes).unwrap_or(i32::MAX);
        if u64::try_from(sent).ok() != Some(bytes) {
            log.line(format!(
                "==> note: memory cap of {bytes} bytes lowered to {sent} (the Engine API client's limit)"
            ));
        }
        options = options.memory(sent);
        caps.push(format!("{sent} bytes of memory"));
    }

    log.line(format!(
        "==> building {tag} (dockerfile {}{}{}{}{}{})",
        opts.dockerfile,
        opts.target.as_ref().map(|t| format!(", target {t}")).unwrap_or_default(),
        match (opts.no_cache, cache_source) {
            (true, _) => ", no cache".to_string(),
            (false, true) => format!(", cache from {latest}"),
            (false, false) => ", this node's layer cache only".to_string(),
        },
        if opts.build_args.is_empty() {
            String::new()
        } else {
            // Names only: build argument values may be secrets.
            format!(", build args {}", opts.build_args.keys().cloned().collect::<Vec<_>>().join(", "))
        },
        if opts.secret_args.is_empty() {
            String::new()
        } else {
            format!(", secret build args {}", opts.secret_args.names().collect::<Vec<_>>().join(", "))
        },
        if caps.is_empty() { String::new() } else { format!(", limited to {}", caps.join(" and ")) },
    ));

    let body = bollard::body_full(tar.into());
    let mut stream = docker.build_image(options.build(), None, Some(body));
    let mut progress = BuildProgress::new(labels.len() as u32);
    while let Some(item) = stream.next().await {
        match item {
            Ok(info) => {
                if let Some(text) = &info.stream {
                    for line in progress.feed(text) {
                        log.line(line);
                    }
                }
                if let Some(status) = info.status.as_deref().filter(|s| !s.is_empty()) {
                    // Pull progress of a base image the engine did not have.
                    if info.progress_detail.as_ref().and_then(|p| p.total).is_none() {
                        log.line(match &info.id {
                            Some(id) => format!("{id}: {status}"),
                            None => status.to_string(),
                        });
                    }
                }
            }
            Err(err) => {
                for line in progress.flush() {
                    log.line(line);
                }
                return Err(progress.failure(&daemon_message(&err)));
            }
        }
    }
    for line in progress.flush() {
        log.line(line);
    }
    let image = docker.inspect_image(&tag).await.map_err(|e| {
        Failure::Build(format!("the build ended but {tag} cannot be found: {}", daemon_message(&e)))
    })?;
    Ok(BuildStats {
        image_id: image.id.unwrap_or_default(),
        cache_hits: progress.cache_hits,
        steps: progress.steps,
        build_steps: Vec::new(),
    })
}

/// Pulls `<repository>:latest` so the classic builder can use it as a cache source;
/// true if the pull worked. Never fails the build: a missing or unreachable image only
/// means a colder build.
async fn pull_cache_source(
    docker: &Docker,
    repository: &str,
    login: Option<&RegistryLogin>,
    log: &LogSink,
) -> bool {
    let latest = format!("{repository}:latest");
    let options = CreateImageOptionsBuilder::default().from_image(repository).tag("latest").build();
    let mut stream = docker.create_image(Some(options), None, credentials(login, repository));
    let mut last_status = None;
    while let Some(item) = stream.next().await {
        match item {
            Ok(info) => last_status = info.status.or(last_status),
            Err(err) => {
                let msg = daemon_message(&err);
                let lower = msg.to_lowercase();
                if lower.contains("not found") || lower.contains("manifest unknown") || lower.contains("404")
                {
                    log.line(format!("==> no {latest} in the registry yet (first build of this app?)"));
                } else {
                    log.line(format!("==> cannot pull {latest} as a cache source: {msg}"));
                }
                return false;
            }
        }
    }
    log.line(format!("==> cache source {latest}: {}", last_status.unwrap_or_else(|| "pulled".into())));
    true
}

/// Removes the per-build tag `<repository>:<tag>` once pushed, if `<repository>:latest`
/// names the same image (else the image would be left untagged, and the next build
/// without its cache source). Never removes the image itself: `latest` holds it.
pub async fn untag_build(docker: &Docker, repository: &str, tag: &str, log: &LogSink) {
    let built = format!("{repository}:{tag}");
    let (Ok(image), Ok(latest)) =
        (docker.inspect_image(&built).await, docker.inspect_image(&format!("{repository}:latest")).await)
    else {
        return;
    };
    if image.id.is_none() || image.id != latest.id {
        log.line(format!("==> kept the tag {built}: {repository}:latest is another image"));
        return;
    }
    let options = RemoveImageOptionsBuilder::default().force(false).noprune(true).build();
    if let Err(e) = docker.remove_image(&built, Some(options), None).await {
        tracing::warn!(tag = %built, error = %daemon_message(&e), "cannot remove the per-build tag");
    }
}

/// Pushes `<repository>:<tag>` and measures what travelled.
pub async fn push_image(
    docker: &Docker,
    repository: &str,
    tag: &str,
    login: Option<&RegistryLogin>,
    retry: Duration,
    log: &LogSink,
) -> Result<PushStats, Failure> {
    validate::repository(repository).map_err(|e| Failure::Push(e.to_string()))?;
    validate::tag(tag).map_err(|e| Failure::Push(e.to_string()))?;
    let registry = registry_of(repository);
    log.line(format!("==> pushing {repository}:{tag} to {registry}"));
    let mut progress = PushProgress::default();
    push(docker, repository, tag, login, &mut progress, retry, log).await?;

    let digest = match progress.digest.take() {
        Some(digest) => digest,
        None => {
            // The final status line was missing: ask the engine what it recorded.
            let image = docker.inspect_image(&format!("{repository}:{tag}")).await.map_err(|e| {
                Failure::Push(format!(
                    "pushed {repository}:{tag} but cannot inspect it: {}",
                    daemon_message(&e)
                ))
            })?;
            let prefix = format!("{repository}@");
            image
                .repo_digests
                .unwrap_or_default()
                .iter()
                .find_map(|d| d.strip_prefix(&prefix).map(str::to_string))
                .ok_or_else(|| {
                    Failure::Push(format!(
                        "pushed {repository}:{tag} to {registry} but no digest was reported"
                    ))
                })?
        }
    };
    if !validate::is_digest(&digest) {
        return Err(Failure::Push(format!("registry {registry} reported an invalid digest {digest:?}")));
    }
    Ok(PushStats {
        digest,
        layers_pushed: progress.pushed,
        layers_reused: progress.reused,
        bytes_pushed: progress.bytes(),
    })
}

/// Tags `<repository>:<tag>` as `<repository>:latest` and pushes that tag (every layer is
/// in the registry by then, so only the manifest travels).
pub async fn push_latest(
    docker: &Docker,
    repository: &str,
    tag: &str,
    login: Option<&RegistryLogin>,
    retry: Duration,
    log: &LogSink,
) -> Result<(), Failure> {
    let options = TagImageOptionsBuilder::default().repo(repository).tag("latest").build();
    docker.tag_image(&format!("{repository}:{tag}"), Some(options)).await.map_err(|e| {
        Failure::Push(format!("cannot tag {repository}:{tag} as latest: {}", daemon_message(&e)))
    })?;
    let mut progress = PushProgress::default();
    push(docker, repository, "latest", login, &mut progress, retry, log).await?;
    log.line(format!("==> tagged and pushed {repository}:latest ({} layers uploaded)", progress.pushed));
    Ok(())
}

/// Pushes `<repository>:<tag>`, retrying while the registry is unreachable
/// ([`push_error_is_transient`]) with a backoff of [`PUSH_RETRY_FIRST`] doubling to
/// [`PUSH_RETRY_MAX`], for at most `retry` in all (zero: one attempt). Each wait is
/// logged; a refusal (401/403, an invalid manifest, anything not known to pass) fails at
/// once, and the last error names the registry and how long it was tried.
async fn push(
    docker: &Docker,
    repository: &str,
    tag: &str,
    login: Option<&RegistryLogin>,
    progress: &mut PushProgress,
    retry: Duration,
    log: &LogSink,
) -> Result<(), Failure> {
    let registry = registry_of(repository);
    let started = std::time::Instant::now();
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        *progress = PushProgress::default();
        let message = match push_once(docker, repository, tag, login, progress).await {
            Ok(()) => {
                if attempts > 1 {
                    log.line(format!(
                        "==> registry {registry} answered again: pushed {repository}:{tag} on attempt {attempts}"
                    ));
                }
                return Ok(());
            }
            Err(message) => message,
        };
        let elapsed = started.elapsed();
        let wait = push_retry_wait(attempts, elapsed, retry).filter(|_| push_error_is_transient(&message));
        let Some(wait) = wait else {
            let tried = if attempts > 1 {
                format!(
                    " (registry unreachable: {attempts} attempts over {}s, push_retry_secs = {})",
                    elapsed.as_secs(),
                    retry.as_secs()
                )
            } else {
                String::new()
            };
            return Err(Failure::Push(format!(
                "cannot push {repository}:{tag} to registry {registry}{tried}: {message}{}",
                token_hint(&message)
            )));
        };
        log.line(format!(
            "==> registry {registry} unreachable, retrying push in {}s ({}s/{}s): {message}",
            wait.as_secs_f64().ceil() as u64,
            elapsed.as_secs(),
            retry.as_secs()
        ));
        tokio::time::sleep(wait).await;
    }
}

/// The first pause between push attempts; it doubles up to [`PUSH_RETRY_MAX`].
pub const PUSH_RETRY_FIRST: Duration = Duration::from_secs(1);
/// The longest pause between push attempts.
pub const PUSH_RETRY_MAX: Duration = Duration::from_secs(16);

/// The pause before attempt `attempts + 1`, `elapsed` after the first began, retrying
/// for at most `limit`: None when the limit is spent. The last pause is cut so the last
/// attempt starts at the limit, not after it.
pub fn push_retry_wait(attempts: u32, elapsed: Duration, limit: Duration) -> Option<Duration> {
    if elapsed >= limit {
        return None;
    }
    let backoff =
        PUSH_RETRY_FIRST.saturating_mul(1u32 << attempts.saturating_sub(1).min(16)).min(PUSH_RETRY_MAX);
    Some(backoff.min(limit - elapsed))
}

/// Whether a push error is the registry (or its token realm) being unreachable or
/// overloaded for now: worth another attempt. Refusals are not: 401/403 (a bad or
/// expired grant), an invalid manifest or name; and neither is anything unknown.
pub fn push_error_is_transient(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    const REFUSED: &[&str] = &[
        "unauthorized",
        "denied",
        "forbidden",
        "http 401",
        "http 403",
        "401 unauthorized",
        "403 forbidden",
        "manifest invalid",
        "manifest_invalid",
        "manifest unknown",
        "name invalid",
        "name_invalid",
        "tag invalid",
        "unsupported",
    ];
    const UNREACHABLE: &[&str] = &[
        "connection refused",
        "connection reset",
        "no route to host",
        "network is unreachable",
        "host is unreachable",
        "i/o timeout",
        "timeout exceeded",
        "timed out",
        "tls handshake timeout",
        "broken pipe",
        ": eof",
        "unexpected eof",
        "no such host",
        "server misbehaving",
        "service unavailable",
        "bad gateway",
        "gateway timeout",
        "too many requests",
        "http 502",
        "http 503",
        "http 504",
        "http 429",
        "status code 502",
        "status code 503",
        "status code 504",
        "received unexpected http status: 50",
    ];
    !REFUSED.iter().any(|r| m.contains(r)) && UNREACHABLE.iter().any(|u| m.contains(u))
}

/// One push attempt; the daemon's message if it failed.
async fn push_once(
    docker: &Docker,
    repository: &str,
    tag: &str,
    login: Option<&RegistryLogin>,
    progress: &mut PushProgress,
) -> Result<(), String> {
    let options = PushImageOptionsBuilder::default().tag(tag).build();
    let mut stream = docker.push_image(repository, Some(options), credentials(login, repository));
    while let Some(item) = stream.next().await {
        match item {
            Ok(info) => progress.observe(
                info.status.as_deref().unwrap_or_default(),
                info.progress_detail.as_ref().and_then(|p| p.current),
                info.progress_detail.as_ref().and_then(|p| p.total),
            ),
            Err(err) => return Err(daemon_message(&err)),
        }
    }
    Ok(())
}

/// Size of a local image in bytes (0 if the engine does not say).
pub async fn image_size(docker: &Docker, image: &str) -> u64 {
    match docker.inspect_image(image).await {
        Ok(image) => image.size.and_then(|s| u64::try_from(s).ok()).unwrap_or(0),
        Err(err) => {
            tracing::warn!(image, %err, "cannot inspect image for its size");
            0
        }
    }
}

/// What to check when the engine could not get a token from the registry's realm (a
/// scheduler's `/v2/token`) or was refused one.
fn token_hint(message: &str) -> &'static str {
    if message.contains("/v2/token") {
        ". Fix: the registry's token realm (auth.token.realm in its config) must reach a live \
         scheduler's HTTP side from this node"
    } else if message.contains("unauthorized") || message.contains("denied") {
        ". The registry refused this build's grant: it expired (grants last 6 h), or the \
         registry does not trust this cluster (its rootcertbundle must be the cluster's token \
         signer, a scheduler's <data_dir>/pki/registry-signer.pem, not the CA's ca.pem)"
    } else {
        ""
    }
}

/// The daemon's own words for an error, without bollard's wrapping.
pub(super) fn daemon_message(err: &bollard::errors::Error) -> String {
    use bollard::errors::Error;
    match err {
        Error::DockerStreamError { error } => error.trim().to_string(),
        Error::DockerResponseServerError { status_code, message } => {
            format!("{} (HTTP {status_code})", message.trim())
        }
        other => other.to_string(),
    }
}

/// Reads the classic builder's `stream` chunks (which split lines anywhere) into lines,
/// counting steps and cache hits and keeping what a failure report needs.
///
/// The classic builder turns the API's `labels` into `LABEL` steps appended after the
/// Dockerfile's own (`Step 5/5 : LABEL io.slipway.app=shop`); those last
/// `appended_steps` steps are not counted, so `steps` and `cache_hits` describe the
/// app's Dockerfile.
#[derive(Debug, Default)]
struct BuildProgress {
    /// Steps the builder appends after the Dockerfile's (one per label).
    appended_steps: u32,
    /// Whether the step being run is one of those.
    in_appended_step: bool,
    partial: String,
    /// Bytes of the current line dropped past [`MAX_OUTPUT_LINE_BYTES`].
    partial_cut: usize,
    steps: u32,
    cache_hits: u32,
    /// The latest `Step N/M : …` line.
    current_step: Option<String>,
    /// The last lines of output, for failure reports.
    tail: VecDeque<String>,
}

impl BuildProgress {
    /// Adds a chunk; returns the lines it completed.
    fn feed(&mut self, chunk: &str) -> Vec<String> {
        let mut lines = Vec::new();
        let mut rest = chunk;
        while let Some(end) = rest.find('\n') {
            self.push_partial(&rest[..end]);
            lines.push(self.take_line());
            rest = &rest[end + 1..];
        }
        self.push_partial(rest);
        lines
    }

    /// Completes a last line without a newline.
    fn flush(&mut self) -> Vec<String> {
        if self.partial.is_empty() && self.partial_cut == 0 {
            return Vec::new();
        }
        vec![self.take_line()]
    }

    /// Appends to the current line, dropping what goes past [`MAX_OUTPUT_LINE_BYTES`].
    fn push_partial(&mut self, text: &str) {
        let room = MAX_OUTPUT_LINE_BYTES.saturating_sub(self.partial.len());
        if text.len() <= room {
            self.partial.push_str(text);
            return;
        }
        let mut end = room;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        self.partial.push_str(&text[..end]);
        self.partial_cut += text.len() - end;
    }

    fn take_line(&mut self) -> String {
        let line = std::mem::take(&mut self.partial);
        let cut = std::mem::take(&mut self.partial_cut);
        let line = line.trim_end_matches('\r');
        if cut == 0 {
            self.record(line)
        } else {
            self.record(&format!("{line} … ({cut} bytes cut)"))
        }
    }

    fn new(appended_steps: u32) -> Self {
        BuildProgress { appended_steps, ..Default::default() }
    }

    fn record(&mut self, line: &str) -> String {
        if let Some((n, m)) = step_numbers(line) {
            self.in_appended_step = n > m.saturating_sub(self.appended_steps);
            if !self.in_appended_step {
                self.steps += 1;
            }
            self.current_step = Some(line.to_string());
        } else if line.trim() == "---> Using cache" && !self.in_appended_step {
            self.cache_hits += 1;
        }
        if self.tail.len() == FAILURE_CONTEXT_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(line.to_string());
        line.to_string()
    }

    /// The failure report: failing step, daemon message, last lines of output.
    fn failure(&self, message: &str) -> Failure {
        let head = match &self.current_step {
            Some(step) => format!("{step}: {message}"),
            None => message.to_string(),
        };
        if self.tail.is_empty() {
            return Failure::Build(head);
        }
        let tail: Vec<&str> = self.tail.iter().map(String::as_str).collect();
        Failure::Build(format!("{head}\nlast {} lines of output:\n{}", tail.len(), tail.join("\n")))
    }
}

/// `Step 3/5 : RUN make` → `(3, 5)`.
fn step_numbers(line: &str) -> Option<(u32, u32)> {
    let (numbers, _) = line.strip_prefix("Step ")?.split_once(" : ")?;
    let (n, m) = numbers.split_once('/')?;
    Some((n.parse().ok()?, m.parse().ok()?))
}

/// Per-layer outcome of a push stream.
#[derive(Debug, Default)]
struct PushProgress {
    pushed: u32,
    reused: u32,
    /// Largest byte count seen per uploading layer, keyed by the layer's total size
    /// (bollard 0.21 drops the layer id, see the module docs).
    uploading: BTreeMap<i64, u64>,
    digest: Option<String>,
}

impl PushProgress {
    fn observe(&mut self, status: &str, current: Option<i64>, total: Option<i64>) {
        match status {
            "Pushed" => self.pushed += 1,
            "Layer already exists" => self.reused += 1,
            s if s.starts_with("Mounted from") => self.reused += 1,
            "Pushing" => {
                if let Some(total) = total.filter(|t| *t > 0) {
                    let seen = current.unwrap_or(0).max(total);
                    let entry = self.uploading.entry(total).or_default();
                    *entry = (*entry).max(u64::try_from(seen).unwrap_or(0));
                }
            }
            s => {
                // `<tag>: digest: sha256:… size: N`
                if let Some((_, rest)) = s.split_once(": digest: ") {
                    if let Some(digest) = rest.split_whitespace().next().filter(|d| validate::is_digest(d)) {
                        self.digest = Some(digest.to_string());
                    }
                }
            }
        }
    }

    fn bytes(&self) -> u64 {
        self.uploading.values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_registry_is_retried_and_a_refusal_is_not() {
        for transient in [
            "Get \"http://127.0.0.1:5000/v2/\": dial tcp 127.0.0.1:5000: connect: connection refused",
            "Put \"http://r:5000/v2/shop/blobs/uploads/x\": read tcp 1.2.3.4:5000: connection reset by peer",
            "Get \"https://r/v2/\": net/http: TLS handshake timeout",
            "Get \"https://r/v2/\": dial tcp: lookup r on 127.0.0.53:53: no such host",
            "received unexpected HTTP status: 503 Service Unavailable",
            "Patch \"http://r/v2/shop/blobs/uploads/u\": EOF",
            "Get \"http://127.0.0.1:7401/v2/token?scope=repository%3Ashop%3Apush\": connection refused",
        ] {
            assert!(push_error_is_transient(transient), "{transient}");
        }
        for refused in [
            "unauthorized: authentication required",
            "denied: requested access to the resource is denied",
            "failed to push: 403 Forbidden",
            "manifest invalid: manifest invalid",
            "error parsing HTTP 401 response body: unexpected end of JSON input: \"\" (HTTP 401)",
            "name invalid: invalid repository name",
            // Unknown errors are not guessed at: they fail at once.
            "something nobody has seen before",
            "",
        ] {
            assert!(!push_error_is_transient(refused), "{refused}");
        }
    }

    #[test]
    fn push_retries_back_off_within_their_limit() {
        let s = Duration::from_secs;
        let limit = s(20);
        // 1, 2, 4, 8 s: attempts at 0, 1, 3, 7, 15; the last pause is cut to reach 20 s.
        assert_eq!(push_retry_wait(1, s(0), limit), Some(s(1)));
        assert_eq!(push_retry_wait(2, s(1), limit), Some(s(2)));
        assert_eq!(push_retry_wait(3, s(3), limit), Some(s(4)));
        assert_eq!(push_retry_wait(4, s(7), limit), Some(s(8)));
        assert_eq!(push_retry_wait(5, s(15), limit), Some(s(5)));
        assert_eq!(push_retry_wait(6, s(20), limit), None);
        // The pause never grows past PUSH_RETRY_MAX, whatever the attempt count.
        assert_eq!(push_retry_wait(40, s(0), s(3600)), Some(PUSH_RETRY_MAX));
        assert_eq!(push_retry_wait(u32::MAX, s(0), s(3600)), Some(PUSH_RETRY_MAX));
        // No retry configured: the first failure is the last.
        assert_eq!(push_retry_wait(1, s(0), Duration::ZERO), None);
    }

    #[test]
    fn token_failures_name_what_to_check() {
        let realm =
            "Get \"http://127.0.0.1:7401/v2/token?scope=repository%3Ashop%3Apush\": connection refused";
        assert!(token_hint(realm).contains("auth.token.realm"));
        assert!(token_hint("unauthorized: authentication required").contains("rootcertbundle"));
        assert_eq!(token_hint("blob upload unknown"), "");
    }

    /// Chunks as the 20.10 engine sends them (recorded): step lines arrive without their
    /// newline, which follows in a chunk of its own.
    const FAILING_BUILD: &[&str] = &[
        "Step 1/3 : FROM slipway/busybox:latest",
        "\n",
        " ---> 0d01ed8a3837\n",
        "Step 2/3 : COPY deps.txt /app/deps.txt",
        "\n",
        " ---> Using cache\n",
        " ---> 803ca441407b\n",
        "Step 3/3 : RUN false",
        "\n",
        " ---> Running in 573d38202f7e\n",
        "Removing intermediate container 573d38202f7e\n",
    ];

    #[test]
    fn build_output_is_split_into_lines_and_counted() {
        let mut p = BuildProgress::new(0);
        let lines: Vec<String> = FAILING_BUILD.iter().flat_map(|chunk| p.feed(chunk)).collect();
        assert_eq!(lines[0], "Step 1/3 : FROM slipway/busybox:latest");
        assert_eq!(lines.len(), 8);
        assert_eq!((p.steps, p.cache_hits), (3, 1));
        let failure = p.failure("The command '/bin/sh -c false' returned a non-zero code: 1");
        assert_eq!(failure.phase(), "build");
        let reason = failure.reason();
        assert!(
            reason.starts_with(
                "Step 3/3 : RUN false: The command '/bin/sh -c false' returned a non-zero code: 1\n"
            ),
            "{reason}"
        );
        assert!(reason.contains("last 8 lines of output:\nStep 1/3"), "{reason}");
    }

    #[test]
    fn only_the_last_lines_are_quoted() {
        let mut p = BuildProgress::default();
        for i in 0..50 {
            p.feed(&format!("line {i}\n"));
        }
        p.feed("no newline");
        assert_eq!(p.flush(), ["no newline"]);
        let reason = p.failure("boom").reason().to_string();
        assert!(reason.starts_with("boom\nlast 20 lines"), "{reason}");
        assert!(!reason.contains("line 30\n") && reason.contains("line 31\n"), "{reason}");
    }

    #[test]
    fn an_endless_line_is_kept_to_its_start() {
        let mut p = BuildProgress::default();
        let chunk = "x".repeat(100 * 1024);
        for _ in 0..5 {
            assert!(p.feed(&chunk).is_empty());
        }
        let lines = p.feed("tail\nnext\n");
        assert_eq!(lines.len(), 2);
        let cut = 5 * 100 * 1024 + 4 - MAX_OUTPUT_LINE_BYTES;
        assert!(
            lines[0].ends_with(&format!("x … ({cut} bytes cut)")),
            "{}",
            &lines[0][lines[0].len() - 40..]
        );
        assert!(lines[0].len() < MAX_OUTPUT_LINE_BYTES + 40);
        assert_eq!(lines[1], "next");
        p.feed(&"é".repeat(MAX_OUTPUT_LINE_BYTES));
        assert!(p.flush()[0].ends_with("bytes cut)"), "cut at a character boundary");
    }

    #[test]
    fn step_lines_are_recognised_strictly() {
        assert_eq!(step_numbers("Step 10/12 : RUN make"), Some((10, 12)));
        assert_eq!(step_numbers("Step 1 : RUN make"), None);
        assert_eq!(step_numbers("Steps 1/2 : x"), None);
        assert_eq!(step_numbers("echo Step 1/2 : x"), None);
        assert_eq!(step_numbers("Step -1/2 : x"), None);
    }

    #[test]
    fn label_steps_appended_by_the_builder_are_not_counted() {
        let mut p = BuildProgress::new(2);
        for chunk in [
            "Step 1/4 : FROM base\n",
            " ---> 0d01ed8a3837\n",
            "Step 2/4 : RUN make\n",
            " ---> Using cache\n",
            "Step 3/4 : LABEL io.slipway.app=shop\n",
            " ---> Using cache\n",
            "Step 4/4 : LABEL io.slipway.build=b-2\n",
            " ---> Running in 2fd1ca1e5040\n",
        ] {
            p.feed(chunk);
        }
        assert_eq!((p.steps, p.cache_hits), (2, 1));
    }

    #[test]
    fn push_streams_count_layers_bytes_and_the_digest() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        let mut p = PushProgress::default();
        for (status, current, total) in [
            ("The push refers to repository [127.0.0.1:5000/shop]", None, None),
            ("Preparing", None, None),
            ("Preparing", None, None),
            ("Preparing", None, None),
            ("Waiting", None, None),
            ("Pushing", Some(512), Some(2048)),
            ("Pushing", Some(19_968), Some(1_984_132)),
            ("Pushing", Some(2_129_920), Some(1_984_132)),
            ("Pushing", Some(2048), Some(2048)),
            ("Pushed", None, None),
            ("Pushed", None, None),
            ("Layer already exists", None, None),
            ("Mounted from other/app", None, None),
            (&format!("b-1: digest: {digest} size: 527"), None, None),
        ] {
            p.observe(status, current, total);
        }
        assert_eq!((p.pushed, p.reused), (2, 2));
        assert_eq!(p.bytes(), 2048 + 2_129_920);
        assert_eq!(p.digest.as_deref(), Some(digest.as_str()));
    }
}
