//! One build, end to end on the node's local disk:
//!
//! ```text
//! BuildAssignment ─► BuildJob ─► clone (git, shallow, one ref)      <build_root>/<id>-<attempt>/
//!                                 │ slipway.toml at the clone root ─► Manifest
//!                                 ▼
//!                               context (tar, .dockerignore)        in memory
//!                                 ▼
//!                               docker build (BuildKit through the engine, with the
//!                                 │           agent's session for secrets and registry
//!                                 │           login; <repository>:latest as inline
//!                                 │           cache source; classic builder as fallback)
//!                                 ▼
//!                               docker push <repository>:<build id>, then :latest;
//!                                 │           the per-build tag is removed once pushed
//!                                 ▼
//!                               BuildOutput (digest, sizes, cache hits, timings, RunSpec)
//! ```
//!
//! Every log line goes to the [`LogSink`] (streamed live to the scheduler by the session)
//! and to `<build_root>/logs/<build id>-<attempt>.log`. The build directory is removed
//! whatever happens: success, failure, or the future being dropped (cancellation).
//! Build argument values are never logged. Build secrets (`build.secrets`, [`secrets`])
//! are read on the node and served to BuildKit through the build's session only
//! ([`buildkit`]); the deprecated secret build arguments are read likewise and given to
//! Docker as build arguments. Both are masked (`***`) in every log line and in the
//! failure reason, which are also bounded ([`MAX_LOG_LINE_BYTES`], [`MAX_FAILURE_BYTES`])
//! because both travel to the scheduler and the reason is kept in its raft log.

pub mod buildkit;
pub mod changes;
pub mod clone;
pub mod context;
pub mod docker;
pub mod secrets;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bollard::Docker;
use slipway_proto::{BuildAssignment, BuildFailure, BuildOutput, PhaseTimings};
use tokio::sync::mpsc::UnboundedSender;

use crate::config::DEFAULT_SECRETS_DIR;
use crate::error::Failure;
use slipway_common::build_logs::DiskGuard;
use slipway_common::manifest::{Manifest, MANIFEST_FILE, MAX_MANIFEST_BYTES};

/// Longest log line kept; the rest is cut (after secrets are masked).
pub const MAX_LOG_LINE_BYTES: usize = 16 * 1024;

/// Longest failure reason reported (the scheduler keeps it in its raft log).
pub const MAX_FAILURE_BYTES: usize = 64 * 1024;

/// What to build: one attempt of one build, as the scheduler assigned it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildJob {
    /// Scheduler's build id; also the image tag (`<repository>:<build_id>`).
    pub build_id: String,
    /// Attempt number: a build retried on this node gets a fresh directory and log.
    pub attempt: u32,
    /// App the build is for; `slipway.toml` must name the same app.
    pub app: String,
    /// Repository URL to clone.
    pub repo: String,
    /// Branch, tag or full commit id to build.
    pub git_ref: String,
    /// Build without the layer cache and without a cache source.
    pub no_cache: bool,
    /// Repository to push to, without tag, e.g. `127.0.0.1:5000/shop`.
    pub repository: String,
    /// How to log in to the registry (None: it takes anonymous pushes).
    pub registry_login: Option<docker::RegistryLogin>,
    /// Host names other apps hold (host → app): a manifest claiming one fails.
    pub held_hosts: std::collections::HashMap<String, String>,
    /// Host ports other apps publish (port → app): a manifest publishing one fails.
    pub held_ports: std::collections::HashMap<u32, String>,
    /// The commit of the app's previous build: the context paths changed since it are
    /// reported for the cache doctor ([`changes`]).
    pub previous_git_sha: Option<String>,
}

impl From<&BuildAssignment> for BuildJob {
    fn from(a: &BuildAssignment) -> Self {
        BuildJob {
            build_id: a.build_id.clone(),
            attempt: a.attempt,
            app: a.app.clone(),
            repo: a.repo.clone(),
            git_ref: a.git_ref.clone(),
            no_cache: a.no_cache,
            repository: a.repository.clone(),
            registry_login: a.registry_login.clone(),
            held_hosts: a.held_hosts.clone(),
            held_ports: a.held_ports.clone(),
            previous_git_sha: Some(a.previous_git_sha.clone()).filter(|s| !s.is_empty()),
        }
    }
}

/// How this node runs builds (from `agent.toml`).
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineConfig {
    /// Local-disk directory holding build directories and `logs/`.
    pub build_root: PathBuf,
    /// Whether `file://` repositories (on this node's disk) may be built. Off in production:
    /// a user could otherwise build any repository the agent can read.
    pub allow_file_repos: bool,
    /// CPU cap for a build's `RUN` steps, in cores (e.g. `1.5`).
    pub cpu_limit: Option<f64>,
    /// Memory cap for a build's `RUN` steps, in bytes.
    pub memory_limit_bytes: Option<u64>,
    /// Longest a clone may take before the build fails.
    pub clone_timeout: Duration,
    /// Secret build arguments are read from `<secrets_dir>/<app>/<NAME>` ([`secrets`]).
    pub secrets_dir: PathBuf,
    /// The engine's socket: BuildKit builds open their session on it.
    pub docker_socket: PathBuf,
    /// Build with the classic builder even where the engine has BuildKit
    /// (`builder = "classic"` in `agent.toml`).
    pub force_classic: bool,
    /// Stops log files being written below the build filesystem's floor
    /// (`build_logs.min_free_bytes`); none: always written.
    pub log_guard: Option<LogGuard>,
    /// How long a push is retried while the registry is unreachable (zero: not at all).
    pub push_retry: Duration,
    /// Raised when a build runs the build filesystem out of space ([`crate::space`]);
    /// none: the failure is still explained, no floor is kept.
    pub space_floor: Option<crate::space::SpaceFloor>,
    /// The agent's `min_free_bytes`: a raised floor is the room a failed build found
    /// plus this.
    pub min_free_bytes: u64,
}

/// The agent's one [`DiskGuard`] for `<build_root>/logs`, shared by every build.
#[derive(Debug, Clone)]
pub struct LogGuard(pub Arc<DiskGuard>);

impl PartialEq for LogGuard {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            build_root: PathBuf::from("/var/lib/slipway/builds"),
            allow_file_repos: false,
            cpu_limit: None,
            memory_limit_bytes: None,
            clone_timeout: clone::DEFAULT_CLONE_TIMEOUT,
            secrets_dir: PathBuf::from(DEFAULT_SECRETS_DIR),
            docker_socket: PathBuf::from(docker::DEFAULT_DOCKER_SOCKET),
            force_classic: false,
            log_guard: None,
            push_retry: Duration::from_secs(120),
            space_floor: None,
            min_free_bytes: 2 << 30,
        }
    }
}

/// Where a build's log lines go: a channel (the session streams it to the scheduler) and,
/// once [`LogSink::with_file`] was called, a log file on local disk. Cheap to clone.
///
/// Every line has the build's secret values masked ([`LogSink::add_secrets`], shared by
/// all clones) and is cut at [`MAX_LOG_LINE_BYTES`] before it goes anywhere.
///
/// Writing never fails the build: a closed channel or a full disk loses log lines, not
/// the build (the latter is logged once with `tracing`).
#[derive(Debug, Clone, Default)]
pub struct LogSink {
    tx: Option<UnboundedSender<String>>,
    file: Option<Arc<Mutex<LogFile>>>,
    redactor: Arc<RwLock<secrets::Redactor>>,
}

#[derive(Debug)]
struct LogFile {
    path: PathBuf,
    file: std::io::LineWriter<std::fs::File>,
    failed: bool,
    guard: Option<LogGuard>,
}

impl From<UnboundedSender<String>> for LogSink {
    fn from(tx: UnboundedSender<String>) -> Self {
        LogSink::new(tx)
    }
}

impl LogSink {
    /// Sends every line to `tx`.
    pub fn new(tx: UnboundedSender<String>) -> Self {
        LogSink { tx: Some(tx), ..LogSink::default() }
    }

    /// Drops every line (tests, tools).
    pub fn discard() -> Self {
        LogSink::default()
    }

    /// A sink that also appends to `path` (created or truncated), while `guard` allows.
    pub fn with_file(&self, path: &Path, guard: Option<LogGuard>) -> std::io::Result<LogSink> {
        let file = std::fs::File::create(path)?;
        let file =
            LogFile { path: path.to_path_buf(), file: std::io::LineWriter::new(file), failed: false, guard };
        Ok(LogSink {
            tx: self.tx.clone(),
            file: Some(Arc::new(Mutex::new(file))),
            redactor: self.redactor.clone(),
        })
    }

    /// Masks `secrets`' values in every later line of this sink and its clones.
    pub fn add_secrets(&self, secrets: &secrets::Redactor) {
        if let Ok(mut redactor) = self.redactor.write() {
            redactor.extend(secrets);
        }
    }

    /// `text` with the known secret values masked.
    pub fn redact(&self, text: &str) -> String {
        match self.redactor.read() {
            Ok(redactor) => redactor.redact(text),
            // Never let text out unmasked.
            Err(_) => secrets::MASK.to_string(),
        }
    }

    /// A failure reason fit to leave the node: secrets masked, each line cut at
    /// [`MAX_LOG_LINE_BYTES`], the whole at [`MAX_FAILURE_BYTES`].
    pub fn clean_reason(&self, reason: &str) -> String {
        let masked = self.redact(reason);
        let lines: Vec<String> = masked.split('\n').map(|l| cut(l, MAX_LOG_LINE_BYTES)).collect();
        cut(&lines.join("\n"), MAX_FAILURE_BYTES)
    }

    /// Records one line (a trailing newline is not needed).
    pub fn line(&self, line: impl Into<String>) {
        let line = cut(&self.redact(&line.into()), MAX_LOG_LINE_BYTES);
        if let Some(file) = &self.file {
            if let Ok(mut f) = file.lock() {
                let allowed = f.guard.as_ref().is_none_or(|g| g.0.may_write());
                if !f.failed && allowed {
                    if let Err(err) = writeln!(f.file, "{line}") {
                        f.failed = true;
                        tracing::warn!(path = %f.path.display(), %err, "cannot write build log file");
                    }
                }
            }
        }
        if let Some(tx) = &self.tx {
            // A closed receiver means nobody listens any more; the file still has it.
            let _ = tx.send(line);
        }
    }
}

/// `text` cut to at most about `max` bytes (at a character boundary), saying how much went.
fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} … ({} bytes cut)", &text[..end], text.len() - end)
}

/// Runs one build attempt end to end and reports what it produced or why it failed.
///
/// Creates `<build_root>/<build_id>-<attempt>` (replacing a leftover one), clones into
/// it, reads `slipway.toml`, packs the context, builds, pushes `<repository>:<build_id>`
/// and `<repository>:latest`, and removes the directory afterwards in every case,
/// including when this future is dropped. Log lines go to `log` and to
/// `<build_root>/logs/<build_id>-<attempt>.log`. `log` may be a [`LogSink`] or the
/// channel sender itself; every clone of it is dropped by the time this returns, so a
/// receiver sees the end of the log before the result.
pub async fn run_build(
    docker: &Docker,
    cfg: &PipelineConfig,
    job: &BuildJob,
    log: impl Into<LogSink>,
) -> Result<BuildOutput, BuildFailure> {
    let log = log.into();
    let started = Instant::now();
    let log = match open_log(cfg, job, &log) {
        Ok(log) => log,
        Err(failure) => {
            log.line(format!("==> {failure}"));
            return Err(failure.into());
        }
    };
    let result = run_phases(docker, cfg, job, &log).await;
    match &result {
        Ok(out) => log.line(format!(
            "==> build {} attempt {} done in {:.1}s: {}@{}",
            job.build_id,
            job.attempt,
            started.elapsed().as_secs_f64(),
            out.repository,
            out.digest
        )),
        Err(failure) => log.line(format!("==> {}", failure.to_string().lines().next().unwrap_or_default())),
    }
    result.map_err(|failure| BuildFailure {
        phase: failure.phase().to_string(),
        reason: log.clean_reason(failure.reason()),
    })
}

fn open_log(cfg: &PipelineConfig, job: &BuildJob, log: &LogSink) -> Result<LogSink, Failure> {
    check_job(job)?;
    let dir = cfg.build_root.join("logs");
    std::fs::create_dir_all(&dir)
        .map_err(|e| Failure::Setup(format!("cannot create the log directory {}: {e}", dir.display())))?;
    if cfg.log_guard.as_ref().is_some_and(|g| !g.0.may_write()) {
        log.line(format!(
            "==> this node keeps no log file of this build: the filesystem of {} is below build_logs.min_free_bytes",
            dir.display()
        ));
        return Ok(log.clone());
    }
    let path = dir.join(format!("{}-{}.log", job.build_id, job.attempt));
    log.with_file(&path, cfg.log_guard.clone())
        .map_err(|e| Failure::Setup(format!("cannot create {}: {e}", path.display())))
}

/// Build ids become directory names and image tags: refuse anything else.
fn check_job(job: &BuildJob) -> Result<(), Failure> {
    let id = &job.build_id;
    let ok = !id.is_empty()
        && id.len() <= 100
        && id.starts_with(|c: char| c.is_ascii_alphanumeric())
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        return Err(Failure::Setup(format!(
            "build id {id:?} is not usable as a directory name and image tag \
             (1-100 of letters, digits, '-', '_', '.'; starting with a letter or digit)"
        )));
    }
    slipway_proto::validate::app_name(&job.app).map_err(|e| Failure::Setup(e.to_string()))?;
    slipway_proto::validate::repository(&job.repository).map_err(|e| Failure::Setup(e.to_string()))?;
    Ok(())
}

async fn run_phases(
    docker: &Docker,
    cfg: &PipelineConfig,
    job: &BuildJob,
    log: &LogSink,
) -> Result<BuildOutput, Failure> {
    let dir = BuildDir::create(cfg.build_root.join(format!("{}-{}", job.build_id, job.attempt)))?;
    let result = build_in(docker, cfg, job, log, dir.path()).await;
    // Measured before the build dir goes: a full build filesystem is seen full.
    let exhausted = match &result {
        Err(failure) => {
            let agent_wrote = matches!(failure, Failure::Clone(_) | Failure::Context(_) | Failure::Setup(_));
            crate::space::diagnose(&cfg.build_root, agent_wrote, failure.reason())
        }
        Ok(_) => None,
    };
    dir.remove().await;
    match (result, exhausted) {
        (Err(failure), Some(exhausted)) => Err(out_of_space(cfg, failure, &exhausted)),
        (result, _) => result,
    }
}

/// A build the build filesystem failed: the failure names the build root, its mount
/// point and the free bytes, and (with a [`PipelineConfig::space_floor`]) the node's
/// floor is raised to what the build found plus `min_free_bytes`. Called once the build
/// dir is removed.
fn out_of_space(cfg: &PipelineConfig, failure: Failure, exhausted: &crate::space::Exhausted) -> Failure {
    let free_after =
        crate::space::filesystem_bytes(&cfg.build_root).map_or(exhausted.free_bytes, |(_, free)| free);
    let floor = match &cfg.space_floor {
        Some(floor) => format!(
            "; this node takes no builds until it has {} free (the {} this build found, plus              min_free_bytes): free space under {} or build elsewhere",
            slipway_proto::human_bytes(floor.raise(exhausted, free_after, cfg.min_free_bytes)),
            slipway_proto::human_bytes(free_after),
            exhausted.mount_point.display()
        ),
        None => String::new(),
    };
    Failure::Setup(format!(
        "{exhausted}; the build dir was removed{floor}. {}: {}",
        failure.phase(),
        failure.reason()
    ))
}

async fn build_in(
    docker: &Docker,
    cfg: &PipelineConfig,
    job: &BuildJob,
    log: &LogSink,
    dir: &Path,
) -> Result<BuildOutput, Failure> {
    let mut timings = PhaseTimings::default();

    let t = Instant::now();
    let git_sha =
        clone::clone(&job.repo, &job.git_ref, dir, cfg.allow_file_repos, cfg.clone_timeout, log).await?;
    let (manifest, manifest_text) = read_manifest(dir, job, &git_sha).await?;
    timings.clone_ms = ms(t);
    let b = &manifest.build;
    log.line(format!(
        "==> manifest: app {}, context {}, dockerfile {}{}{}{}{}",
        manifest.name,
        b.context,
        b.dockerfile,
        b.target.as_ref().map(|t| format!(", target {t}")).unwrap_or_default(),
        if b.args.is_empty() {
            String::new()
        } else {
            // Names only: values are not logged.
            format!(", build args {}", b.args.keys().cloned().collect::<Vec<_>>().join(", "))
        },
        if b.secret_args.is_empty() {
            String::new()
        } else {
            format!(", secret build args {}", b.secret_args.join(", "))
        },
        if b.secrets.is_empty() { String::new() } else { format!(", secrets {}", b.secrets.join(", ")) }
    ));
    let secret_args = secrets::load(&cfg.secrets_dir, &job.app, &b.secret_args)?;
    log.add_secrets(&secret_args.redactor());
    let mount_secrets = secrets::load_mounts(&cfg.secrets_dir, &job.app, &b.secrets)?;
    log.add_secrets(&mount_secrets.redactor());
    if !b.secret_args.is_empty() {
        log.line(format!(
            "==> warning: build.secret_args is deprecated and goes away in the next release: its values \
             are build arguments, which the image's history keeps. Move {} to build.secrets and read \
             each in the Dockerfile with RUN --mount=type=secret,id=NAME (the file /run/secrets/NAME)",
            b.secret_args.join(", ")
        ));
    }
    let builder = match buildkit::engine_builder(&cfg.docker_socket).await {
        Ok(_) if cfg.force_classic => {
            log.line("==> builder: classic (builder = \"classic\" in this agent's agent.toml)");
            buildkit::Builder::Classic
        }
        Ok(buildkit::Builder::Classic) => {
            log.line(format!(
                "==> builder: classic (fallback: the engine at unix://{} has BuildKit turned off in \
                 its daemon.json; RUN --mount, build.secrets and parallel stages need BuildKit)",
                cfg.docker_socket.display()
            ));
            buildkit::Builder::Classic
        }
        Ok(builder) => builder,
        Err(err) => {
            log.line(format!(
                "==> cannot ask the engine at unix://{} for its builder ({err}); trying BuildKit",
                cfg.docker_socket.display()
            ));
            buildkit::Builder::BuildKit
        }
    };
    if builder == buildkit::Builder::Classic && !b.secrets.is_empty() {
        return Err(Failure::Setup(format!(
            "build.secrets ({}) needs BuildKit, and this node builds with the classic builder; \
             remove \"features\": {{\"buildkit\": false}} from the daemon.json of the engine at \
             unix://{} (or builder = \"classic\" from agent.toml), or drain this node",
            b.secrets.join(", "),
            cfg.docker_socket.display()
        )));
    }

    let t = Instant::now();
    let (clone_dir, context_rel, dockerfile_rel) =
        (dir.to_path_buf(), b.context.clone(), b.dockerfile.clone());
    let tar =
        tokio::task::spawn_blocking(move || context::pack_context(&clone_dir, &context_rel, &dockerfile_rel))
            .await
            .map_err(|e| Failure::Context(format!("packing the context stopped: {e}")))??;
    timings.context_ms = ms(t);
    log.line(format!("==> context: {} bytes", tar.len()));
    // For the cache doctor; a --no-cache build rebuilds every step by request.
    let changed_paths = match job.previous_git_sha.as_deref().filter(|_| !job.no_cache) {
        Some(previous) => {
            let compare = changes::Compare {
                clone_dir: dir,
                repo: &job.repo,
                allow_file_repos: cfg.allow_file_repos,
                head: &git_sha,
                previous,
                context_rel: &b.context,
                dockerfile_rel: &b.dockerfile,
            };
            Some(changes::changed_paths(&compare, log).await)
        }
        None => None,
    };

    let t = Instant::now();
    let opts = docker::BuildOpts {
        app: job.app.clone(),
        build_id: job.build_id.clone(),
        repository: job.repository.clone(),
        dockerfile: b.dockerfile.clone(),
        target: b.target.clone(),
        build_args: b.args.clone(),
        secret_args,
        no_cache: job.no_cache,
        cpu_limit: cfg.cpu_limit,
        memory_limit_bytes: cfg.memory_limit_bytes,
        registry_login: job.registry_login.clone(),
        builder,
        mount_secrets,
        docker_socket: cfg.docker_socket.clone(),
        secrets_dir: cfg.secrets_dir.clone(),
    };
    let built = docker::build_image(docker, tar, &opts, log).await?;
    timings.build_ms = ms(t);

    let t = Instant::now();
    let login = job.registry_login.as_ref();
    let pushed =
        docker::push_image(docker, &job.repository, &job.build_id, login, cfg.push_retry, log).await?;
    log.line(format!(
        "==> pushed {} ({} layers pushed, {} reused, {} bytes)",
        pushed.digest, pushed.layers_pushed, pushed.layers_reused, pushed.bytes_pushed
    ));
    if let Err(failure) =
        docker::push_latest(docker, &job.repository, &job.build_id, login, cfg.push_retry, log).await
    {
        // `latest` only seeds the next build's cache; the release itself is pushed.
        log.line(format!("==> warning: {failure}; the next build may not find a cache source"));
    }
    let image_size_bytes = docker::image_size(docker, &format!("{}:{}", job.repository, job.build_id)).await;
    // The per-build tag has done its job (the registry holds the image by digest): only
    // `latest` stays on this node, as the next build's cache source.
    docker::untag_build(docker, &job.repository, &job.build_id, log).await;
    timings.push_ms = ms(t);

    Ok(BuildOutput {
        git_sha,
        digest: pushed.digest,
        repository: job.repository.clone(),
        image_size_bytes,
        layers_pushed: pushed.layers_pushed,
        layers_reused: pushed.layers_reused,
        bytes_pushed: pushed.bytes_pushed,
        cache_hits: built.cache_hits,
        steps: built.steps,
        timings: Some(timings),
        run: Some(manifest.run_spec()),
        manifest: manifest_text,
        build_steps: built.build_steps,
        changed_paths,
    })
}

/// Reads and validates `slipway.toml` at the clone root; the manifest and its text (the
/// scheduler parses the text again and takes the release's run spec from its own parse).
async fn read_manifest(dir: &Path, job: &BuildJob, git_sha: &str) -> Result<(Manifest, String), Failure> {
    let path = dir.join(MANIFEST_FILE);
    let at = format!("{} at {} ({})", clone::redact_url(&job.repo), job.git_ref, short(git_sha));
    let meta = match tokio::fs::symlink_metadata(&path).await {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Failure::Manifest(format!(
                "no {MANIFEST_FILE} at the root of {at}; add one with at least `name = \"{}\"`",
                job.app
            )))
        }
        Err(e) => return Err(Failure::Manifest(format!("cannot read {MANIFEST_FILE} in {at}: {e}"))),
    };
    if !meta.is_file() {
        return Err(Failure::Manifest(format!("{MANIFEST_FILE} in {at} must be a regular file, not a link")));
    }
    if meta.len() > MAX_MANIFEST_BYTES as u64 {
        return Err(Failure::Manifest(format!(
            "{MANIFEST_FILE} in {at} is {} bytes; the limit is {MAX_MANIFEST_BYTES}",
            meta.len()
        )));
    }
    let bytes = tokio::fs::read(&path)
        .await
        .map_err(|e| Failure::Manifest(format!("cannot read {MANIFEST_FILE} in {at}: {e}")))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| Failure::Manifest(format!("{MANIFEST_FILE} in {at} is not UTF-8 text")))?;
    let manifest = Manifest::parse(&text).map_err(|e| Failure::Manifest(format!("{MANIFEST_FILE}: {e}")))?;
    if manifest.name != job.app {
        return Err(Failure::Manifest(format!(
            "{MANIFEST_FILE} names the app {:?}, but this build is for the app {:?}; \
             fix `name` or deploy the repository as {:?}",
            manifest.name, job.app, manifest.name
        )));
    }
    check_claims(&manifest, job)?;
    Ok((manifest, text))
}

/// Refuses a manifest that claims a host name or host port another app holds, before
/// the image is built (the scheduler checks again when it records the release).
fn check_claims(manifest: &Manifest, job: &BuildJob) -> Result<(), Failure> {
    let held = |field: String, what: String, holder: &str| {
        Failure::Manifest(format!(
            "{MANIFEST_FILE}: {field}: {what} is held by app {holder:?}; remove it from this app's \
             {MANIFEST_FILE}, or from {holder}'s and deploy {holder} first"
        ))
    };
    for (i, domain) in manifest.run.domains.iter().enumerate() {
        if let Some(holder) = job.held_hosts.get(domain) {
            return Err(held(format!("run.domains[{i}]"), format!("host name {domain:?}"), holder));
        }
    }
    if let Some(port) = manifest.run.publish {
        if let Some(holder) = job.held_ports.get(&u32::from(port)) {
            return Err(held("run.publish".into(), format!("host port {port}"), holder));
        }
    }
    Ok(())
}

fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

fn ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// A build directory that removes itself: explicitly with [`BuildDir::remove`] on the
/// normal path, or in `Drop` when the build future is dropped mid-way.
struct BuildDir {
    path: PathBuf,
    removed: bool,
}

impl BuildDir {
    /// Synchronous so that nothing (such as a blocking-pool task) can create the
    /// directory after a dropped build's guard removed it.
    fn create(path: PathBuf) -> Result<BuildDir, Failure> {
        let setup =
            |what: &str, e: std::io::Error| Failure::Setup(format!("cannot {what} {}: {e}", path.display()));
        // A leftover from an earlier run of the same attempt (agent crash): start clean.
        match std::fs::remove_dir_all(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(setup("remove the leftover build directory", e)),
        }
        std::fs::create_dir_all(&path).map_err(|e| setup("create the build directory", e))?;
        Ok(BuildDir { path, removed: false })
    }

    fn path(&self) -> &Path {
        &self.path
    }

    async fn remove(mut self) {
        let path = self.path.clone();
        let result = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&path)).await;
        self.removed = true;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                tracing::warn!(path = %self.path.display(), %err, "cannot remove build directory")
            }
            Err(err) => tracing::warn!(path = %self.path.display(), %err, "build directory removal stopped"),
        }
    }
}

impl Drop for BuildDir {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        // A git killed by the same drop may still be writing for a moment: retry briefly.
        for attempt in 0..5 {
            match std::fs::remove_dir_all(&self.path) {
                Ok(()) => return,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => return,
                Err(err) if attempt == 4 => {
                    tracing::warn!(path = %self.path.display(), %err, "cannot remove build directory")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use slipway_testkit::{engine_with_base, free_port, remove_images, require_registry, GitRepo};

    use super::*;

    /// A build root in a fresh temporary directory.
    fn build_root() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("builds");
        (dir, root)
    }

    /// A loopback address nothing listens on (it was free a moment ago).
    fn free_loopback_addr() -> String {
        format!("127.0.0.1:{}", free_port())
    }

    fn job(repo: &str, app: &str, registry: &str) -> BuildJob {
        BuildJob {
            build_id: format!("b-{}", uuid::Uuid::new_v4().simple()),
            attempt: 1,
            app: app.into(),
            repo: repo.into(),
            git_ref: "main".into(),
            no_cache: false,
            repository: format!("{registry}/{app}"),
            registry_login: None,
            held_hosts: Default::default(),
            held_ports: Default::default(),
            previous_git_sha: None,
        }
    }

    fn config(build_root: &Path) -> PipelineConfig {
        PipelineConfig {
            build_root: build_root.to_path_buf(),
            allow_file_repos: true,
            // The unreachable-registry test fails after one retry.
            push_retry: Duration::from_secs(1),
            ..Default::default()
        }
    }

    /// A Docker client that is never reached: for failures before the build phase.
    fn unreachable_docker() -> Docker {
        Docker::connect_with_http("http://127.0.0.1:9", 1, bollard::API_DEFAULT_VERSION).expect("client")
    }

    fn collect(mut rx: tokio::sync::mpsc::UnboundedReceiver<String>) -> Vec<String> {
        let mut lines = Vec::new();
        while let Ok(line) = rx.try_recv() {
            lines.push(line);
        }
        lines
    }

    #[test]
    fn log_lines_and_failure_reasons_mask_secrets_and_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let sink = LogSink::new(tx).with_file(&dir.path().join("build.log"), None).unwrap();
        let earlier_clone = sink.clone();
        sink.add_secrets(&secrets::SecretArgs::from_pairs([("TOKEN", "s3cr3t-v4lue")]).redactor());
        earlier_clone.line("token=s3cr3t-v4lue!");
        earlier_clone.line("x".repeat(MAX_LOG_LINE_BYTES + 10));
        drop((sink.clone(), earlier_clone));
        let lines = collect(rx);
        assert_eq!(lines[0], "token=***!");
        assert!(lines[1].ends_with("x … (10 bytes cut)"), "{}", &lines[1][MAX_LOG_LINE_BYTES - 10..]);
        let file = std::fs::read_to_string(dir.path().join("build.log")).unwrap();
        assert!(file.starts_with("token=***!\n") && !file.contains("s3cr3t"), "the file is masked too");

        let reason = format!("Step 2/2 : RUN x: failed\nlast lines:\ns3cr3t-v4lue\n{}", "y".repeat(1 << 20));
        let clean = sink.clean_reason(&reason);
        assert!(clean.starts_with("Step 2/2 : RUN x: failed\nlast lines:\n***\nyyy"), "{}", &clean[..60]);
        assert!(clean.len() <= MAX_LOG_LINE_BYTES + 100, "{}", clean.len());
        let many = format!("{}\n", "z".repeat(1000)).repeat(1000);
        assert!(sink.clean_reason(&many).len() <= MAX_FAILURE_BYTES + 40);
    }

    #[test]
    fn a_job_is_made_from_an_assignment() {
        let a = BuildAssignment {
            build_id: "b-1".into(),
            attempt: 2,
            app: "shop".into(),
            repo: "https://example.com/shop.git".into(),
            git_ref: "main".into(),
            no_cache: true,
            repository: "127.0.0.1:5000/shop".into(),
            registry_login: Some(slipway_proto::RegistryLogin {
                username: "slipway-grant".into(),
                password: "v1.secret".into(),
            }),
            held_hosts: [("shop.example.com".to_owned(), "blog".to_owned())].into(),
            held_ports: [(5432, "db".to_owned())].into(),
            previous_git_sha: String::new(),
        };
        let j = BuildJob::from(&a);
        assert_eq!(j.previous_git_sha, None, "a first build");
        assert_eq!(j.held_hosts["shop.example.com"], "blog");
        assert_eq!(j.held_ports[&5432], "db");
        assert_eq!((j.build_id.as_str(), j.attempt, j.no_cache), ("b-1", 2, true));
        assert_eq!(j.repository, "127.0.0.1:5000/shop");
        assert_eq!(j.registry_login.as_ref().map(|l| l.password.as_str()), Some("v1.secret"));
        assert!(!format!("{j:?}").contains("v1.secret"), "Debug shows no grant: {j:?}");
        assert!(!format!("{a:?}").contains("v1.secret"), "nor the assignment's: {a:?}");
    }

    #[tokio::test]
    async fn a_repository_without_a_manifest_fails_in_the_manifest_phase() {
        let repo = GitRepo::empty();
        repo.commit_files(&[("Dockerfile", "FROM scratch\n")], "no manifest");
        let (_tmp, root) = build_root();
        let j = job(&repo.url(), "shop", "127.0.0.1:5000");
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let err = run_build(&unreachable_docker(), &config(&root), &j, LogSink::new(tx)).await.unwrap_err();
        assert_eq!(err.phase, "manifest");
        assert!(err.reason.contains("no slipway.toml at the root of"), "{}", err.reason);
        assert!(err.reason.contains("name = \"shop\""), "{}", err.reason);
        let lines = collect(rx);
        assert!(lines[0].starts_with("==> cloning file://"), "{lines:?}");
        // The build directory is gone, the log stays.
        assert!(!root.join(format!("{}-1", j.build_id)).exists());
        let file = std::fs::read_to_string(root.join("logs").join(format!("{}-1.log", j.build_id))).unwrap();
        assert_eq!(file.lines().collect::<Vec<_>>(), lines);
    }

    #[tokio::test]
    async fn a_manifest_for_another_app_names_both() {
        let repo = GitRepo::empty();
        repo.commit_files(&[("slipway.toml", "name = \"blog\"\n"), ("Dockerfile", "FROM scratch\n")], "x");
        let (_tmp, root) = build_root();
        let j = job(&repo.url(), "shop", "127.0.0.1:5000");
        let err = run_build(&unreachable_docker(), &config(&root), &j, LogSink::discard()).await.unwrap_err();
        assert_eq!(err.phase, "manifest");
        assert!(err.reason.contains("\"blog\"") && err.reason.contains("\"shop\""), "{}", err.reason);
    }

    #[tokio::test]
    async fn a_manifest_claiming_what_another_app_holds_fails_before_the_build() {
        let repo = GitRepo::empty();
        let manifest = "name = \"shop\"\n[run]\nport = 8080\ndomains = [\"www.example.com\"]\n";
        repo.commit_files(&[("slipway.toml", manifest), ("Dockerfile", "FROM scratch\n")], "x");
        let (_tmp, root) = build_root();
        let mut j = job(&repo.url(), "shop", "127.0.0.1:5000");
        j.held_hosts.insert("www.example.com".into(), "blog".into());
        // The engine is never reached: the claim fails in the manifest phase.
        let err = run_build(&unreachable_docker(), &config(&root), &j, LogSink::discard()).await.unwrap_err();
        assert_eq!(err.phase, "manifest");
        assert!(
            err.reason.contains("run.domains[0]") && err.reason.contains("held by app \"blog\""),
            "{}",
            err.reason
        );
        let manifest = "name = \"shop\"\n[run]\nport = 5432\npublish = 5432\n";
        repo.commit_files(&[("slipway.toml", manifest)], "y");
        j.held_ports.insert(5432, "db".into());
        let err = run_build(&unreachable_docker(), &config(&root), &j, LogSink::discard()).await.unwrap_err();
        assert!(err.reason.contains("run.publish: host port 5432 is held by app \"db\""), "{}", err.reason);
    }

    #[tokio::test]
    async fn an_invalid_manifest_names_the_field() {
        let repo = GitRepo::empty();
        repo.commit_files(&[("slipway.toml", "name = \"shop\"\n[run]\nreplicas = \"two\"\n")], "x");
        let (_tmp, root) = build_root();
        let j = job(&repo.url(), "shop", "127.0.0.1:5000");
        let err = run_build(&unreachable_docker(), &config(&root), &j, LogSink::discard()).await.unwrap_err();
        assert_eq!(err.phase, "manifest");
        assert!(err.reason.contains("run.replicas: invalid type"), "{}", err.reason);
    }

    #[tokio::test]
    async fn a_manifest_that_links_outside_the_clone_is_refused() {
        let repo = GitRepo::empty();
        std::os::unix::fs::symlink("/etc/hostname", repo.path().join("slipway.toml")).unwrap();
        repo.commit("link");
        let (_tmp, root) = build_root();
        let j = job(&repo.url(), "shop", "127.0.0.1:5000");
        let err = run_build(&unreachable_docker(), &config(&root), &j, LogSink::discard()).await.unwrap_err();
        assert_eq!(err.phase, "manifest");
        assert!(err.reason.contains("regular file"), "{}", err.reason);
    }

    #[tokio::test]
    async fn an_oversized_manifest_is_refused_before_it_is_read() {
        let repo = GitRepo::empty();
        let big = format!("name = \"shop\"\n# {}\n", "x".repeat(70_000));
        repo.commit_files(&[("slipway.toml", &big)], "x");
        let (_tmp, root) = build_root();
        let j = job(&repo.url(), "shop", "127.0.0.1:5000");
        let err = run_build(&unreachable_docker(), &config(&root), &j, LogSink::discard()).await.unwrap_err();
        assert_eq!(err.phase, "manifest");
        assert!(
            err.reason.contains(&format!("is {} bytes; the limit is 65536", big.len())),
            "{}",
            err.reason
        );
    }

    #[tokio::test]
    async fn a_secret_missing_on_the_node_fails_naming_its_file() {
        let repo = GitRepo::empty();
        repo.commit_files(
            &[
                ("slipway.toml", "name = \"shop\"\n[build]\nsecret_args = [\"NPM_TOKEN\"]\n"),
                ("Dockerfile", "FROM scratch\n"),
            ],
            "x",
        );
        let (tmp, root) = build_root();
        let cfg = PipelineConfig { secrets_dir: tmp.path().join("secrets"), ..config(&root) };
        let j = job(&repo.url(), "shop", "127.0.0.1:5000");
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let err = run_build(&unreachable_docker(), &cfg, &j, LogSink::new(tx)).await.unwrap_err();
        assert_eq!(err.phase, "setup", "{}", err.reason);
        let file = tmp.path().join("secrets/shop/NPM_TOKEN");
        assert!(err.reason.contains(&format!("in {} on every build node", file.display())), "{}", err.reason);
        assert!(err.reason.ends_with("or remove NPM_TOKEN from build.secret_args"), "{}", err.reason);
        let lines = collect(rx);
        assert!(lines.iter().any(|l| l.ends_with(", secret build args NPM_TOKEN")), "{lines:#?}");
    }

    #[tokio::test]
    async fn build_ids_cannot_walk_out_of_the_build_root() {
        let (_tmp, root) = build_root();
        let mut j = job("file:///nowhere", "shop", "127.0.0.1:5000");
        j.build_id = "../../etc".into();
        let err = run_build(&unreachable_docker(), &config(&root), &j, LogSink::discard()).await.unwrap_err();
        assert_eq!(err.phase, "setup");
        assert!(err.reason.contains("build id"), "{}", err.reason);
    }

    #[tokio::test]
    async fn a_dropped_build_removes_its_directory() {
        let repo = GitRepo::empty();
        repo.commit_files(&[("slipway.toml", "name = \"shop\"\n")], "x");
        let (_tmp, root) = build_root();
        let j = job(&repo.url(), "shop", "127.0.0.1:5000");
        let dir = root.join(format!("{}-1", j.build_id));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let docker = unreachable_docker();
        let cfg = config(&root);
        let mut build = Box::pin(run_build(&docker, &cfg, &j, LogSink::new(tx)));
        tokio::select! {
            _ = &mut build => panic!("the build should still be cloning"),
            line = rx.recv() => assert!(line.unwrap().starts_with("==> cloning")),
        }
        assert!(dir.exists(), "the clone directory exists while cloning");
        drop(build);
        assert!(!dir.exists(), "the dropped build removed its directory");
    }

    /// The scenario the design is about: build, push, then a code-only change rebuilds
    /// from the layer cache and pushes only the changed layer.
    #[tokio::test]
    async fn a_code_only_change_reuses_cached_layers() {
        let Some((docker, base)) = engine_with_base().await else { return };
        let Some(registry) = require_registry().await else { return };
        let dockerfile = format!(
            "FROM {base}\nCOPY deps.txt /app/deps.txt\nRUN cp /app/deps.txt /app/installed && echo installed\n\
             COPY code.txt /app/code.txt\n"
        );
        let repo = GitRepo::empty();
        let first_sha = repo.commit_files(
            &[
                ("slipway.toml", "name = \"shop\"\n[run]\nport = 8080\n"),
                ("Dockerfile", &dockerfile),
                // Unique per run: layers cached by earlier runs must not answer.
                ("deps.txt", &format!("left-pad 1.0 {}\n", uuid::Uuid::new_v4())),
                ("code.txt", "version 1\n"),
            ],
            "first",
        );
        let (_tmp, root) = build_root();
        let cfg =
            PipelineConfig { cpu_limit: Some(1.0), memory_limit_bytes: Some(256 << 20), ..config(&root) };

        let j1 = job(&repo.url(), "shop", &registry.addr());
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let first = run_build(&docker, &cfg, &j1, LogSink::new(tx)).await.unwrap_or_else(|f| panic!("{f:?}"));
        let lines = collect(rx);
        assert_eq!(first.git_sha, first_sha);
        assert!(slipway_proto::validate::is_digest(&first.digest), "{}", first.digest);
        assert_eq!(first.repository, format!("{}/shop", registry.addr()));
        assert_eq!(first.steps, 4, "{lines:#?}");
        assert_eq!(first.cache_hits, 0, "{lines:#?}");
        assert_eq!((first.layers_pushed, first.layers_reused), (4, 0), "{lines:#?}");
        assert!(first.bytes_pushed > 1_000_000, "busybox itself was pushed: {}", first.bytes_pushed);
        assert!(first.image_size_bytes > 1_000_000);
        assert_eq!(first.run.as_ref().unwrap().port, 8080);
        assert_eq!(first.manifest, "name = \"shop\"\n[run]\nport = 8080\n", "the manifest's text travels");
        assert!(lines.iter().any(|l| l.starts_with("==> pushed sha256:")), "{lines:#?}");
        assert!(
            lines.iter().any(|l| l.starts_with('#') && l.ends_with(" installed")),
            "RUN output: {lines:#?}"
        );
        assert!(lines.iter().any(|l| l.contains("with BuildKit")), "{lines:#?}");
        assert!(!root.join(format!("{}-1", j1.build_id)).exists());
        // The per-build tag went once pushed; `latest` (the next build's cache source) stays.
        let per_build = docker.inspect_image(&format!("{}:{}", first.repository, j1.build_id)).await;
        assert!(per_build.is_err(), "the per-build tag was removed: {per_build:?}");
        let image = docker.inspect_image(&format!("{}:latest", first.repository)).await.unwrap();
        let labels = image.config.and_then(|c| c.labels).unwrap_or_default();
        assert_eq!(labels.get(docker::APP_LABEL).map(String::as_str), Some("shop"));

        repo.commit_files(&[("code.txt", "version 2\n")], "code only");
        let j2 = job(&repo.url(), "shop", &registry.addr());
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let second =
            run_build(&docker, &cfg, &j2, LogSink::new(tx)).await.unwrap_or_else(|f| panic!("{f:?}"));
        let lines = collect(rx);
        assert_ne!(second.digest, first.digest);
        assert_eq!(second.steps, 4);
        assert_eq!(second.cache_hits, 2, "COPY deps and RUN come from the cache: {lines:#?}");
        assert_eq!((second.layers_pushed, second.layers_reused), (1, 3), "{lines:#?}");
        assert!(second.bytes_pushed < 100_000, "only the code layer travels: {}", second.bytes_pushed);
        let t = second.timings.unwrap();
        assert!(t.build_ms > 0 && t.push_ms > 0);
        let repository = &second.repository;
        remove_images(
            &docker,
            &[
                format!("{repository}:{}", j1.build_id),
                format!("{repository}:{}", j2.build_id),
                format!("{repository}:latest"),
            ],
        )
        .await;
    }

    /// A secret build argument reaches `RUN` (which checks its length and prefix) and
    /// nothing else: every log line (what the session sends as events), the log file, the
    /// failure reason and the output show `***`, and the final stage's history is clean.
    #[tokio::test]
    async fn a_secret_build_arg_reaches_the_build_and_nothing_else() {
        let Some((docker, base)) = engine_with_base().await else { return };
        let Some(registry) = require_registry().await else { return };
        let secret = format!("s3cr3t-{}", uuid::Uuid::new_v4().simple());
        let (tmp, root) = build_root();
        let secrets_dir = tmp.path().join("secrets");
        std::fs::create_dir_all(secrets_dir.join("vault")).unwrap();
        std::fs::write(secrets_dir.join("vault/NPM_TOKEN"), format!("{secret}\n")).unwrap();
        let cfg = PipelineConfig { secrets_dir, ..config(&root) };
        let check = format!(
            "RUN echo \"token is $NPM_TOKEN\" && test ${{#NPM_TOKEN}} -eq {} && case $NPM_TOKEN in s3cr3t-*) ;; *) exit 1;; esac",
            secret.len()
        );
        let manifest = "name = \"vault\"\n[build]\nsecret_args = [\"NPM_TOKEN\"]\n";
        let repo = GitRepo::empty();

        // A failing step that printed the secret: masked in the reason too.
        repo.commit_files(
            &[
                ("slipway.toml", manifest),
                ("Dockerfile", &format!("FROM {base}\nARG NPM_TOKEN\n{check} && false\n")),
            ],
            "fails",
        );
        let j = job(&repo.url(), "vault", &registry.addr());
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let err = run_build(&docker, &cfg, &j, LogSink::new(tx)).await.unwrap_err();
        assert_eq!(err.phase, "build", "{}", err.reason);
        assert!(err.reason.contains("token is ***"), "{}", err.reason);
        assert!(!err.reason.contains(&secret), "{}", err.reason);
        assert!(collect(rx).iter().all(|l| !l.contains(&secret)));

        repo.commit_files(
            &[(
                "Dockerfile",
                // BuildKit skips stages the target does not use: the last stage copies from it.
                &format!(
                    "FROM {base} AS build\nARG NPM_TOKEN\n{check} && touch /built\n\
                     FROM {base}\nCOPY --from=build /built /built\n"
                ),
            )],
            "works",
        );
        let j = job(&repo.url(), "vault", &registry.addr());
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let output = run_build(&docker, &cfg, &j, LogSink::new(tx)).await.unwrap_or_else(|f| panic!("{f:?}"));
        let lines = collect(rx);
        assert!(
            lines.iter().any(|l| l.ends_with(" token is ***")),
            "the build saw it, the log masks it: {lines:#?}"
        );
        assert!(lines.iter().any(|l| l.contains("build.secret_args is deprecated")), "{lines:#?}");
        assert!(lines.iter().any(|l| l.contains("secret build args NPM_TOKEN")), "{lines:#?}");
        for line in &lines {
            assert!(!line.contains(&secret), "{line}");
        }
        let file = std::fs::read_to_string(root.join("logs").join(format!("{}-1.log", j.build_id))).unwrap();
        assert!(!file.contains(&secret));
        assert!(!format!("{output:?}").contains(&secret));
        let image = format!("{}:latest", output.repository);
        let history = docker.image_history(&image).await.unwrap();
        assert!(history.iter().all(|h| !h.created_by.contains(&secret)), "{history:#?}");
        remove_images(&docker, &[image]).await;
    }

    /// Today's Dockerfiles: a cache mount that the next build finds again, bind mounts
    /// from the context and from another stage, a multi-stage build, and a secret mounted
    /// through the session that reaches `RUN`, shows as `***` in the log and is nowhere in
    /// the pushed image (pulled back by digest, history and config inspected). A secret the
    /// manifest does not name fails the build naming the fix.
    #[tokio::test]
    async fn buildkit_mounts_cache_bind_and_secret() {
        let Some((docker, base)) = engine_with_base().await else { return };
        let Some(registry) = require_registry().await else { return };
        let secret = format!("k3y-{}", uuid::Uuid::new_v4().simple());
        let (tmp, root) = build_root();
        let secrets_dir = tmp.path().join("secrets");
        std::fs::create_dir_all(secrets_dir.join("mounts")).unwrap();
        std::fs::write(secrets_dir.join("mounts/API_KEY"), format!("{secret}\n")).unwrap();
        let cfg = PipelineConfig { secrets_dir, ..config(&root) };
        // A cache id of this run only: earlier runs' caches must not answer.
        let cache_id = format!("t-{}", uuid::Uuid::new_v4().simple());
        let dockerfile = format!(
            "FROM {base} AS deps\n\
             COPY deps.txt /deps.txt\n\
             RUN --mount=type=cache,id={cache_id},target=/cache \
                 echo \"cache held: $(cat /cache/seen 2>/dev/null || echo nothing)\" && cp /deps.txt /cache/seen && cp /deps.txt /deps-done\n\
             FROM {base}\n\
             RUN --mount=type=bind,source=code.txt,target=/mnt/code.txt cp /mnt/code.txt /code-copy\n\
             RUN --mount=type=bind,from=deps,source=/deps-done,target=/mnt/deps cp /mnt/deps /deps-copy\n\
             RUN --mount=type=secret,id=API_KEY \
                 echo \"key is $(cat /run/secrets/API_KEY)\" && test $(wc -c < /run/secrets/API_KEY) -eq {len} \
                 && grep -q '^k3y-' /run/secrets/API_KEY && touch /used-key\n",
            len = secret.len() + 1,
        );
        let repo = GitRepo::empty();
        repo.commit_files(
            &[
                ("slipway.toml", "name = \"mounts\"\n[build]\nsecrets = [\"API_KEY\"]\n"),
                ("Dockerfile", &dockerfile),
                ("deps.txt", "deps v1\n"),
                // Unique per run: the steps after it must run, not come from earlier runs' cache.
                ("code.txt", &format!("code {cache_id}\n")),
            ],
            "first",
        );
        let j1 = job(&repo.url(), "mounts", &registry.addr());
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let first = run_build(&docker, &cfg, &j1, LogSink::new(tx)).await.unwrap_or_else(|f| panic!("{f:?}"));
        let lines = collect(rx);
        assert!(lines.iter().any(|l| l.ends_with(" cache held: nothing")), "{lines:#?}");
        assert!(lines.iter().any(|l| l.ends_with(" key is ***")), "the secret reached RUN: {lines:#?}");
        assert!(lines.iter().all(|l| !l.contains(&secret)), "{lines:#?}");
        assert!(lines.iter().any(|l| l.contains(", secrets API_KEY")), "{lines:#?}");
        // Both stages start FROM the same image: BuildKit runs that vertex once.
        assert_eq!(first.steps, 6, "{lines:#?}");

        // The pushed image, pulled back by digest: no trace of the secret.
        let pinned = format!("{}@{}", first.repository, first.digest);
        remove_images(&docker, &[format!("{}:{}", first.repository, j1.build_id)]).await;
        let options =
            bollard::query_parameters::CreateImageOptionsBuilder::default().from_image(&pinned).build();
        let pulled: Vec<_> =
            futures::StreamExt::collect(docker.create_image(Some(options), None, None)).await;
        assert!(pulled.iter().all(Result::is_ok), "{pulled:?}");
        let history = docker.image_history(&pinned).await.unwrap();
        assert!(history.iter().all(|h| !h.created_by.contains(&secret)), "{history:#?}");
        assert!(history.iter().any(|h| h.created_by.contains("/run/secrets/API_KEY")), "{history:#?}");
        let inspect = docker.inspect_image(&pinned).await.unwrap();
        let config = serde_json::to_string(&inspect).unwrap();
        assert!(!config.contains(&secret) && !config.contains("API_KEY="), "{config}");

        // The cache mount is kept: a dependency change reruns the step, which finds the
        // file the first build left.
        repo.commit_files(&[("deps.txt", "deps v2\n")], "deps");
        let j2 = job(&repo.url(), "mounts", &registry.addr());
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let second =
            run_build(&docker, &cfg, &j2, LogSink::new(tx)).await.unwrap_or_else(|f| panic!("{f:?}"));
        let lines = collect(rx);
        assert!(lines.iter().any(|l| l.ends_with(" cache held: deps v1")), "{lines:#?}");
        assert!(second.cache_hits >= 1, "the code bind step comes from the cache: {lines:#?}");

        // Another app on the same node mounting the same cache id gets a cache of its own.
        let intruder = GitRepo::empty();
        intruder.commit_files(
            &[
                ("slipway.toml", "name = \"intruder\"\n"),
                (
                    "Dockerfile",
                    &format!(
                        "FROM {base}\nRUN --mount=type=cache,id={cache_id},target=/cache \
                         echo \"intruder sees: $(cat /cache/seen 2>/dev/null || echo nothing)\"\n"
                    ),
                ),
            ],
            "first",
        );
        let j_other = job(&intruder.url(), "intruder", &registry.addr());
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let other =
            run_build(&docker, &cfg, &j_other, LogSink::new(tx)).await.unwrap_or_else(|f| panic!("{f:?}"));
        let lines = collect(rx);
        assert!(lines.iter().any(|l| l.ends_with(" intruder sees: nothing")), "{lines:#?}");

        // A secret the manifest does not name: the build fails naming the fix.
        repo.commit_files(
            &[(
                "Dockerfile",
                &format!("FROM {base}\nRUN --mount=type=secret,id=OTHER cat /run/secrets/OTHER\n"),
            )],
            "unnamed secret",
        );
        let j3 = job(&repo.url(), "mounts", &registry.addr());
        let err = run_build(&docker, &cfg, &j3, LogSink::discard()).await.unwrap_err();
        assert_eq!(err.phase, "build", "{}", err.reason);
        assert!(
            err.reason.contains("secret \"OTHER\" is not in build.secrets of app mounts"),
            "{}",
            err.reason
        );

        let repository = &first.repository;
        remove_images(
            &docker,
            &[pinned.clone(), format!("{repository}:{}", j2.build_id), format!("{repository}:latest")],
        )
        .await;
        let other_repo = &other.repository;
        remove_images(
            &docker,
            &[format!("{other_repo}:{}", j_other.build_id), format!("{other_repo}:latest")],
        )
        .await;
    }

    /// The fallback: the classic builder builds and pushes, the log says which builder
    /// and why, and a manifest needing BuildKit (`build.secrets`) is refused naming the fix.
    #[tokio::test]
    async fn the_classic_builder_builds_when_buildkit_is_not_used() {
        let Some((docker, base)) = engine_with_base().await else { return };
        let Some(registry) = require_registry().await else { return };
        let marker = format!("classic-{}", uuid::Uuid::new_v4().simple());
        let repo = GitRepo::empty();
        repo.commit_files(
            &[
                ("slipway.toml", "name = \"old\"\n"),
                ("Dockerfile", &format!("FROM {base}\nRUN echo {marker}\n")),
            ],
            "classic",
        );
        let (_tmp, root) = build_root();
        let cfg = PipelineConfig { force_classic: true, ..config(&root) };
        let j = job(&repo.url(), "old", &registry.addr());
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let out = run_build(&docker, &cfg, &j, LogSink::new(tx)).await.unwrap_or_else(|f| panic!("{f:?}"));
        let lines = collect(rx);
        assert!(
            lines.iter().any(|l| l.starts_with("==> builder: classic (builder = \"classic\"")),
            "{lines:#?}"
        );
        assert!(lines.iter().any(|l| l == &format!("Step 2/3 : RUN echo {marker}")), "{lines:#?}");
        assert!(lines.iter().any(|l| l == &marker), "{lines:#?}");
        assert_eq!(out.steps, 2, "{lines:#?}");

        repo.commit_files(&[("slipway.toml", "name = \"old\"\n[build]\nsecrets = [\"K\"]\n")], "secrets");
        let secrets_dir = root.join("secrets");
        std::fs::create_dir_all(secrets_dir.join("old")).unwrap();
        std::fs::write(secrets_dir.join("old/K"), "value").unwrap();
        let cfg = PipelineConfig { secrets_dir, ..cfg };
        let j2 = job(&repo.url(), "old", &registry.addr());
        let err = run_build(&docker, &cfg, &j2, LogSink::discard()).await.unwrap_err();
        assert_eq!(err.phase, "setup", "{}", err.reason);
        assert!(err.reason.starts_with("build.secrets (K) needs BuildKit"), "{}", err.reason);
        remove_images(
            &docker,
            &[format!("{}:{}", out.repository, j.build_id), format!("{}:latest", out.repository)],
        )
        .await;
    }

    #[tokio::test]
    async fn a_failing_step_fails_the_build_phase_naming_the_step() {
        let Some((docker, base)) = engine_with_base().await else { return };
        let repo = GitRepo::empty();
        let marker = format!("about to fail {}", uuid::Uuid::new_v4());
        repo.commit_files(
            &[
                ("slipway.toml", "name = \"broken\"\n"),
                ("Dockerfile", &format!("FROM {base}\nRUN echo {marker}\nRUN false\n")),
            ],
            "broken",
        );
        let (_tmp, root) = build_root();
        // Nothing listens there: the build must fail before any push is tried.
        let j = job(&repo.url(), "broken", &free_loopback_addr());
        let err = run_build(&docker, &config(&root), &j, LogSink::discard()).await.unwrap_err();
        assert_eq!(err.phase, "build", "{}", err.reason);
        assert!(err.reason.starts_with("[3/3] RUN false: "), "{}", err.reason);
        assert!(err.reason.contains("exit code: 1"), "{}", err.reason);
        assert!(err.reason.contains(&format!(" {marker}\n")), "output before the failure: {}", err.reason);
    }

    /// What BuildKit refuses fails the build phase with its message: a Dockerfile syntax
    /// error names the line; a `# syntax=` frontend the engine cannot pull names the image
    /// and how to build without it.
    #[tokio::test]
    async fn buildkit_refusals_fail_the_build_with_its_message() {
        let Some((docker, base)) = engine_with_base().await else { return };
        let (_tmp, root) = build_root();
        let repo = GitRepo::empty();
        repo.commit_files(
            &[
                ("slipway.toml", "name = \"refused\"\n"),
                ("Dockerfile", &format!("FROM {base}\nRUNN echo hi\n")),
            ],
            "typo",
        );
        // Nothing listens there: neither build may get as far as a push.
        let j = job(&repo.url(), "refused", &free_loopback_addr());
        let err = run_build(&docker, &config(&root), &j, LogSink::discard()).await.unwrap_err();
        assert_eq!(err.phase, "build", "{}", err.reason);
        assert!(
            err.reason.contains("dockerfile parse error line 2: unknown instruction: RUNN"),
            "{}",
            err.reason
        );

        repo.commit_files(
            &[("Dockerfile", &format!("# syntax=docker/dockerfile:1\nFROM {base}\nRUN echo hi\n"))],
            "frontend",
        );
        let j = job(&repo.url(), "refused", &free_loopback_addr());
        let err = run_build(&docker, &config(&root), &j, LogSink::discard()).await.unwrap_err();
        assert_eq!(err.phase, "build", "{}", err.reason);
        assert!(err.reason.contains("docker/dockerfile"), "names the frontend: {}", err.reason);
        assert!(err.reason.contains("remove the `# syntax=` line"), "says what to do: {}", err.reason);
    }

    #[tokio::test]
    async fn an_unreachable_registry_fails_the_push_phase() {
        let Some((docker, base)) = engine_with_base().await else { return };
        let repo = GitRepo::empty();
        repo.commit_files(
            &[("slipway.toml", "name = \"lonely\"\n"), ("Dockerfile", &format!("FROM {base}\nENV A=1\n"))],
            "x",
        );
        let (_tmp, root) = build_root();
        let registry = free_loopback_addr();
        let j = job(&repo.url(), "lonely", &registry);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let err = run_build(&docker, &config(&root), &j, LogSink::new(tx)).await.unwrap_err();
        assert_eq!(err.phase, "push", "{}", err.reason);
        assert!(err.reason.contains(&format!("registry {registry}")), "{}", err.reason);
        assert!(err.reason.contains("connection refused"), "{}", err.reason);
        assert!(err.reason.contains("2 attempts over 1s, push_retry_secs = 1"), "{}", err.reason);
        let lines = collect(rx);
        assert!(
            lines.iter().any(|l| l
                .starts_with(&format!("==> registry {registry} unreachable, retrying push in 1s (0s/1s): "))),
            "the retry is logged: {lines:#?}"
        );
        assert!(
            lines.iter().any(|l| l.contains("ERROR") && l.contains("connection refused")),
            "the cache import failure is logged: {lines:#?}"
        );
        remove_images(&docker, &[format!("{}:{}", j.repository, j.build_id)]).await;
    }
}
