//! The agent's life: keep one session open with the scheduler's leader, report the
//! node's headroom on a period with jitter, run the builds it is assigned, and stream
//! their logs and results back.
//!
//! ```text
//!   run ──► connect (any scheduler; follow `slipway-leader` hints; back off) ──► Hello
//!            ▲                                                                  │
//!            └── session ends (leader lost, network) ◄── reports / build events ┘
//!                                                     ◄── assignments / cancels
//! ```
//!
//! Builds belong to the agent, not to a session: a build keeps running while the agent
//! reconnects, and its result is delivered on whichever session is open when it ends
//! (results finished while disconnected wait in `undelivered`). Assignments are
//! idempotent by (build id, attempt): a repeated one is answered with the result if the
//! build already finished, and ignored if it is running.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::Docker;
use rand::Rng;
use slipway_common::{now_ms, Backoff};
use slipway_proto::agent_message::Msg as AgentMsg;
use slipway_proto::agent_service_client::AgentServiceClient;
use slipway_proto::build_event::Event as BuildEv;
use slipway_proto::metadata::LEADER_HINT;
use slipway_proto::scheduler_message::Msg as SchedMsg;
use slipway_proto::{
    AgentMessage, BuildAssignment, BuildEvent, BuildRefused, BuildStarted, Hello, LogLine, NodeReport,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tracing::Instrument;

use crate::config::AgentConfig;
use crate::metrics::LastReport;
use crate::pipeline::{self, BuildJob, PipelineConfig};
use crate::report::Reporter;
use crate::router::Router;

/// gRPC metadata key in which a follower names the leader's address.
/// How long opening a session (and its Welcome) may take before trying elsewhere.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long measuring the node (engine calls included) may take.
const MEASURE_TIMEOUT: Duration = Duration::from_secs(5);
/// Leader hints followed per round of connection attempts.
const MAX_REDIRECTS: u32 = 3;
/// Pause between rounds of connection attempts: from this…
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// …doubling to this while no scheduler holds a session.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Finished results remembered for answering repeated assignments.
const REMEMBERED_RESULTS: usize = 256;

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot use the state directory {dir}: {source}")]
    /// The state directory (credentials) cannot be created or used.
    StateDir {
        /// The directory.
        dir: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    #[error("cannot use the build root {dir}: {source}")]
    /// The build root cannot be created or used.
    BuildRoot {
        /// The directory.
        dir: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    #[error(transparent)]
    /// Joining the cluster or renewing the certificate failed.
    Enroll(#[from] crate::enroll::EnrollError),
}

type BuildKey = (String, u32);

/// Builds this agent runs or ran, shared by all sessions.
#[derive(Default)]
struct Builds {
    running: HashMap<BuildKey, tokio::task::AbortHandle>,
    /// Terminal events of finished builds, newest last.
    finished: VecDeque<(BuildKey, BuildEvent)>,
    /// Terminal events produced while no session was open.
    undelivered: Vec<BuildEvent>,
    /// Apps whose last build here succeeded (their layers are cached on this engine).
    cached_apps: Vec<String>,
}

struct Agent {
    config: AgentConfig,
    node_id: String,
    /// This node's engine; reconnected on demand while it does not answer.
    docker: tokio::sync::Mutex<Option<Docker>>,
    builds: Mutex<Builds>,
    /// Outbound channel of the open session, if any.
    outbound: Mutex<Option<mpsc::Sender<AgentMessage>>>,
    /// How sessions reach the schedulers (the certificate changes when renewed).
    transport: Arc<std::sync::RwLock<slipway_proto::tls::Transport>>,
    /// Where every report measured is recorded for `/metrics`.
    last_report: LastReport,
    /// The routes this node's router should serve, and what it serves.
    router: Arc<Router>,
    /// What reclaiming freed since start, and the build cache's last size.
    reclaim_stats: crate::reclaim::ReclaimStats,
    /// One reclaim pass at a time.
    reclaiming: tokio::sync::Mutex<()>,
    /// Stops build log files below the build filesystem's floor.
    log_guard: pipeline::LogGuard,
    /// Raised above `min_free_bytes` after a build ran the build filesystem out of space.
    space_floor: crate::space::SpaceFloor,
}

/// A task aborted when its handle is dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads the node id from the state dir, creating it on first start. The state dir is
/// made private (0700) first: it holds the node's key (`tls/`).
fn node_id(state_dir: &std::path::Path) -> Result<String, std::io::Error> {
    slipway_proto::tls::create_private_dir(state_dir)?;
    let path = state_dir.join("node-id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => Ok(id.trim().to_string()),
        _ => {
            let id = uuid::Uuid::new_v4().to_string();
            std::fs::write(&path, format!("{id}\n"))?;
            Ok(id)
        }
    }
}

/// Runs the agent until `shutdown` resolves, recording each report measured in
/// `last_report`; running builds are abandoned then (their build dirs are removed) and
/// the scheduler re-places them when this node is down.
pub async fn run(
    config: AgentConfig,
    last_report: LastReport,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let node_id = node_id(&config.state_dir)
        .map_err(|source| AgentError::StateDir { dir: config.state_dir.clone(), source })?;
    std::fs::create_dir_all(&config.build_root)
        .map_err(|source| AgentError::BuildRoot { dir: config.build_root.clone(), source })?;
    tracing::info!(%node_id, name = %config.node_name(), "agent starting");
    let transport = Arc::new(std::sync::RwLock::new(crate::enroll::transport(&config, &node_id).await?));
    // The certificate renewal and the router run supervised: a panic in either ends the
    // process (one line naming it; systemd restarts the agent) instead of leaving an agent
    // whose certificate silently expires or whose router stops following the routes.
    let (stopping, stopping_rx) = tokio::sync::watch::channel(false);
    let mut supervised = slipway_common::supervise::Supervised::new(stopping_rx);
    let renewal = crate::enroll::renew_loop(config.clone(), transport.clone());
    supervised.spawn("certificate renewal", async move {
        renewal.await;
        Ok(())
    });
    let log_guard = pipeline::LogGuard(Arc::new(slipway_common::build_logs::DiskGuard::new(
        config.build_root.join("logs"),
        config.build_logs.min_free_bytes,
    )));
    let space_floor = crate::space::SpaceFloor::kept_in(config.state_dir.join(crate::space::FLOOR_FILE));
    let agent = Arc::new(Agent {
        config,
        node_id,
        docker: tokio::sync::Mutex::new(None),
        builds: Mutex::new(Builds::default()),
        outbound: Mutex::new(None),
        transport,
        log_guard,
        last_report,
        router: Arc::new(Router::default()),
        reclaim_stats: Default::default(),
        reclaiming: tokio::sync::Mutex::new(()),
        space_floor,
    });
    let upkeep = upkeep(agent.clone()).instrument(tracing::info_span!("upkeep"));
    supervised.spawn("upkeep", async move {
        upkeep.await;
        Ok(())
    });
    let router_agent = agent.clone();
    let router = agent
        .router
        .clone()
        .run(move || {
            let agent = router_agent.clone();
            async move { agent.docker().await }
        })
        .instrument(tracing::info_span!("router"));
    supervised.spawn("router", async move {
        router.await;
        Ok(())
    });
    tokio::select! {
        _ = connect_loop(agent.clone()) => {}
        _ = shutdown => tracing::info!("shutting down"),
    }
    let _ = stopping.send(true);
    supervised.abort_all();
    let builds = agent.builds.lock().expect("builds lock poisoned");
    for handle in builds.running.values() {
        handle.abort();
    }
    Ok(())
}

/// Keeps a session open with the leader. Each round tries the configured schedulers
/// in turn, following a leader hint right away when one is given (at most
/// [`MAX_REDIRECTS`] per round, so hints that bounce during an election cannot spin);
/// only a round in which nobody held a session waits, with a backoff that grows to
/// [`MAX_BACKOFF`]. So after a leader dies, the agent finds its successor within a
/// round or two of the election, well inside the scheduler's grace period.
async fn connect_loop(agent: Arc<Agent>) {
    let schedulers = agent.config.schedulers.clone();
    let mut backoff = Backoff::new(MIN_BACKOFF, MAX_BACKOFF);
    let mut start = 0usize;
    loop {
        let mut redirects = 0;
        let mut held = false;
        let mut queue: VecDeque<String> =
            (0..schedulers.len()).map(|i| schedulers[(start + i) % schedulers.len()].clone()).collect();
        start += 1;
        while let Some(addr) = queue.pop_front() {
            match session(&agent, &addr).await {
                Ok(()) => {
                    tracing::info!(%addr, "session ended; reconnecting");
                    held = true;
                    break;
                }
                Err(SessionEnd::Redirect(leader)) if redirects < MAX_REDIRECTS && leader != addr => {
                    tracing::info!(%addr, %leader, "following the leader hint");
                    redirects += 1;
                    queue.retain(|a| *a != leader);
                    queue.push_front(leader);
                }
                Err(SessionEnd::Redirect(leader)) => {
                    tracing::info!(%addr, %leader, "leader hints disagree (an election under way?)");
                }
                Err(SessionEnd::Failed(err)) => {
                    tracing::warn!(%addr, %err, "cannot hold a session with the scheduler");
                }
            }
        }
        if held {
            backoff.reset();
        }
        backoff.wait().await;
    }
}

enum SessionEnd {
    Redirect(String),
    Failed(String),
}

/// One session: from Hello until the stream ends.
async fn session(agent: &Arc<Agent>, addr: &str) -> Result<(), SessionEnd> {
    let transport = agent.transport.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    let endpoint = transport
        .endpoint(addr)
        .map_err(SessionEnd::Failed)?
        .connect_timeout(Duration::from_secs(3))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10));
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| SessionEnd::Failed(format!("connect: {}", slipway_proto::tls::error_chain(&e))))?;
    let mut client = AgentServiceClient::new(channel)
        .max_decoding_message_size(slipway_proto::validate::MAX_AGENT_MESSAGE_BYTES);

    let mut reporter = Reporter::new(
        agent.config.build_root.clone(),
        agent.config.build_slots,
        agent.config.docker_socket.clone(),
        agent.last_report.clone(),
    )
    .force_classic(agent.config.builder == crate::config::BuilderChoice::Classic)
    .with_upkeep(agent.reclaim_stats.clone(), agent.log_guard.0.clone())
    .with_space_floor(agent.space_floor.clone());
    let (running, cached) = agent.snapshot();
    let docker = agent.docker().await;
    let report = reporter.measure(docker.as_ref(), running, cached).await;
    let hello = Hello {
        node_id: agent.node_id.clone(),
        name: agent.config.node_name(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        labels: agent.config.labels.clone().into_iter().collect(),
        report: Some(report),
    };
    let (tx, rx) = mpsc::channel::<AgentMessage>(1024);
    tx.send(AgentMessage { msg: Some(AgentMsg::Hello(hello)) }).await.expect("receiver held below");
    let opened =
        tokio::time::timeout(OPEN_TIMEOUT, client.session(ReceiverStream::new(rx))).await.map_err(|_| {
            SessionEnd::Failed(format!("the scheduler did not open a session within {OPEN_TIMEOUT:?}"))
        })?;
    let refused =
        |status: tonic::Status| match status.metadata().get(LEADER_HINT).and_then(|v| v.to_str().ok()) {
            Some(leader) if leader != addr => SessionEnd::Redirect(leader.to_string()),
            _ => SessionEnd::Failed(status.message().to_string()),
        };
    let response = opened.map_err(refused)?;
    let mut inbound = response.into_inner();
    let welcome = tokio::time::timeout(OPEN_TIMEOUT, inbound.next())
        .await
        .map_err(|_| SessionEnd::Failed(format!("no Welcome from the scheduler within {OPEN_TIMEOUT:?}")))?;
    let interval = match welcome {
        Some(Ok(msg)) => match msg.msg {
            Some(SchedMsg::Welcome(w)) => {
                let interval = Duration::from_secs(u64::from(w.report_interval_secs.max(1)));
                tracing::info!(%addr, ?interval, "session open");
                interval
            }
            other => return Err(SessionEnd::Failed(format!("expected Welcome, got {other:?}"))),
        },
        Some(Err(status)) => return Err(SessionEnd::Failed(status.message().to_string())),
        None => return Err(SessionEnd::Failed("scheduler closed the session".into())),
    };
    agent.attach(tx.clone());

    let result = loop {
        let jitter = rand::rng().random_range(0..=interval.as_millis() as u64 / 5);
        let tick = tokio::time::sleep(interval + Duration::from_millis(jitter));
        // A report goes out on the period, and at once when the router's state changes.
        let report_now = tokio::select! {
            _ = tick => true,
            _ = agent.router.changed.notified() => true,
            msg = inbound.next() => match msg {
                Some(Ok(msg)) => {
                    match msg.msg {
                        Some(SchedMsg::Assign(a)) => agent.clone().assign(a),
                        Some(SchedMsg::Cancel(c)) => agent.cancel(&c.build_id, c.attempt),
                        Some(SchedMsg::Router(config)) => agent.router.load(config),
                        Some(SchedMsg::Welcome(_)) | None => {}
                    }
                    false
                }
                // A scheduler that stops leading ends the session, naming the leader
                // when it knows it.
                Some(Err(status)) => break Err(refused(status)),
                None => break Ok(()),
            },
        };
        if !report_now {
            continue;
        }
        let (running, cached) = agent.snapshot();
        let docker = agent.docker().await;
        // A hung engine must not stop the session: the read loop goes on, and a
        // report that cannot be measured in time is skipped.
        let measured =
            tokio::time::timeout(MEASURE_TIMEOUT, reporter.measure(docker.as_ref(), running, cached));
        match measured.await {
            Ok(report) => {
                let report = NodeReport { sent_at_ms: now_ms(), router: agent.router.status(), ..report };
                match tx.try_send(AgentMessage { msg: Some(AgentMsg::Report(report)) }) {
                    Err(mpsc::error::TrySendError::Closed(_)) => break Ok(()),
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        tracing::warn!("session backlog full; report skipped")
                    }
                    Ok(()) => {}
                }
            }
            Err(_) => {
                tracing::warn!(timeout = ?MEASURE_TIMEOUT, "measuring the node took too long; report skipped")
            }
        }
    };
    agent.detach();
    result
}

impl Agent {
    /// The engine, connecting if it is not connected (a failure is logged and retried
    /// at the next call, so an engine that comes back is picked up).
    async fn docker(&self) -> Option<Docker> {
        let mut slot = self.docker.lock().await;
        if slot.is_none() {
            let connect = pipeline::docker::connect_docker(Some(&self.config.docker_socket));
            match tokio::time::timeout(MEASURE_TIMEOUT, connect).await.unwrap_or_else(|_| {
                Err(bollard::errors::Error::IOError {
                    err: std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the engine did not answer in time",
                    ),
                })
            }) {
                Ok(docker) => *slot = Some(docker),
                Err(err) => {
                    tracing::warn!(socket = %self.config.docker_socket, %err, "the Docker engine does not answer")
                }
            }
        }
        slot.clone()
    }

    /// Running attempts and cached apps, for a report.
    fn snapshot(&self) -> (Vec<BuildKey>, Vec<String>) {
        let builds = self.builds.lock().expect("builds lock poisoned");
        (builds.running.keys().cloned().collect(), builds.cached_apps.clone())
    }

    fn attach(&self, tx: mpsc::Sender<AgentMessage>) {
        let undelivered = std::mem::take(&mut self.builds.lock().expect("builds lock poisoned").undelivered);
        for event in undelivered {
            let _ = tx.try_send(AgentMessage { msg: Some(AgentMsg::Build(event)) });
        }
        *self.outbound.lock().expect("outbound lock poisoned") = Some(tx);
    }

    fn detach(&self) {
        *self.outbound.lock().expect("outbound lock poisoned") = None;
    }

    /// Sends a build event on the open session. Terminal events that cannot be sent
    /// now are kept for the next session; log lines are dropped (the full log stays
    /// in `<build_root>/logs`).
    fn send(&self, event: BuildEvent) {
        let terminal = matches!(event.event, Some(BuildEv::Succeeded(_) | BuildEv::Failed(_)));
        let tx = self.outbound.lock().expect("outbound lock poisoned").clone();
        let msg = AgentMessage { msg: Some(AgentMsg::Build(event.clone())) };
        let sent = match tx {
            Some(tx) if terminal => {
                tx.try_send(msg).is_ok() || {
                    // A full channel must not lose a result: wait for room in the background.
                    let tx = tx.clone();
                    let event = event.clone();
                    tokio::spawn(async move {
                        let _ = tx.send(AgentMessage { msg: Some(AgentMsg::Build(event)) }).await;
                    });
                    true
                }
            }
            Some(tx) => tx.try_send(msg).is_ok(),
            None => false,
        };
        if !sent && terminal {
            self.builds.lock().expect("builds lock poisoned").undelivered.push(event);
        }
    }

    fn assign(self: Arc<Self>, a: BuildAssignment) {
        let key = (a.build_id.clone(), a.attempt);
        {
            let builds = self.builds.lock().expect("builds lock poisoned");
            if builds.running.contains_key(&key) {
                tracing::info!(build = %a.build_id, attempt = a.attempt, "already running this assignment");
                return;
            }
            if let Some((_, event)) = builds.finished.iter().find(|(k, _)| *k == key) {
                tracing::info!(build = %a.build_id, attempt = a.attempt, "already finished; sending the result again");
                let event = event.clone();
                drop(builds);
                self.send(event);
                return;
            }
        }
        let span = tracing::info_span!("build", build = %a.build_id, attempt = a.attempt, app = %a.app);
        let agent = self.clone();
        let task_key = key.clone();
        // Hold the lock across spawn so the task cannot finish before it is registered.
        let mut builds = self.builds.lock().expect("builds lock poisoned");
        let handle = tokio::spawn(
            async move {
                agent.run_build(a).await;
            }
            .instrument(span),
        );
        builds.running.insert(task_key, handle.abort_handle());
    }

    /// Why this node cannot take a build now: its build filesystem is below the floor
    /// even after reclaiming slipway's own leftovers. None when it can.
    async fn disk_refusal(&self) -> Option<String> {
        let root = &self.config.build_root;
        let free = || crate::report::filesystem_bytes(root).map(|(_, available)| available).unwrap_or(0);
        // A build ran the filesystem out of space: wait for the room it needed.
        if let Some((floor, reason)) = self.space_floor.current(free()) {
            return Some(format!(
                "the build filesystem of {} has {} free, below this agent's raised floor of {}: {reason}",
                root.display(),
                slipway_proto::human_bytes(free()),
                slipway_proto::human_bytes(floor)
            ));
        }
        let floor = self.config.min_free_bytes;
        if free() >= floor {
            return None;
        }
        let running: Vec<String> = {
            let builds = self.builds.lock().expect("builds lock poisoned");
            builds.running.keys().map(|(id, attempt)| format!("{id}-{attempt}")).collect()
        };
        let docker = self.docker().await;
        let reclaimed = {
            let _one = self.reclaiming.lock().await;
            crate::reclaim::reclaim(
                docker.as_ref(),
                Path::new(&self.config.docker_socket),
                root,
                &running,
                self.config.reclaim.build_cache_low_watermark_bytes,
                &self.reclaim_stats,
            )
            .await
        };
        let available = free();
        (available < floor).then(|| {
            format!(
                "the build filesystem of {} has {} free, below this agent's floor of {} (min_free_bytes); \
                 removing slipway's own leftovers ({} build dirs, {} old images, {} of images and build \
                 cache) was not enough: free space on this node or lower the floor",
                root.display(),
                slipway_proto::human_bytes(available),
                slipway_proto::human_bytes(floor),
                reclaimed.build_dirs,
                reclaimed.images,
                slipway_proto::human_bytes(reclaimed.bytes())
            )
        })
    }

    fn cancel(&self, build_id: &str, attempt: u32) {
        let key = (build_id.to_string(), attempt);
        let handle = self.builds.lock().expect("builds lock poisoned").running.remove(&key);
        if let Some(handle) = handle {
            tracing::info!(build = %build_id, attempt, "cancelling");
            handle.abort();
        }
    }

    async fn run_build(self: Arc<Self>, a: BuildAssignment) {
        let key = (a.build_id.clone(), a.attempt);
        let event = |event: BuildEv| BuildEvent {
            build_id: a.build_id.clone(),
            attempt: a.attempt,
            event: Some(event),
        };
        if let Some(reason) = self.disk_refusal().await {
            tracing::warn!(%reason, "refusing the build");
            self.builds.lock().expect("builds lock poisoned").running.remove(&key);
            self.send(event(BuildEv::Refused(BuildRefused { reason })));
            return;
        }
        // A build cache prune in progress would remove records this build's cache
        // import and `COPY --from` are about to use (BuildKit failed such a build with
        // "bytes remaining on stream"): wait for it to end. A pass starting after this
        // sees the build running and skips (`watermark_pass`).
        drop(self.reclaiming.lock().await);
        self.send(event(BuildEv::Started(BuildStarted {})));

        let (log_tx, mut log_rx) = mpsc::unbounded_channel::<String>();
        let forward = {
            let agent = self.clone();
            let (build_id, attempt) = key.clone();
            tokio::spawn(async move {
                while let Some(line) = log_rx.recv().await {
                    let at_ms = now_ms();
                    agent.send(BuildEvent {
                        build_id: build_id.clone(),
                        attempt,
                        event: Some(BuildEv::Log(LogLine { at_ms, line })),
                    });
                }
            })
        };
        let result = match self.docker().await {
            Some(docker) => {
                let cfg = PipelineConfig {
                    build_root: self.config.build_root.clone(),
                    allow_file_repos: self.config.allow_file_repos,
                    cpu_limit: (self.config.build_cpu_limit > 0.0).then_some(self.config.build_cpu_limit),
                    memory_limit_bytes: (self.config.build_memory_limit_bytes > 0)
                        .then_some(self.config.build_memory_limit_bytes),
                    clone_timeout: Duration::from_secs(self.config.clone_timeout_secs),
                    secrets_dir: self.config.build_secrets_dir.clone(),
                    docker_socket: self.config.docker_socket.clone().into(),
                    force_classic: self.config.builder == crate::config::BuilderChoice::Classic,
                    log_guard: Some(self.log_guard.clone()),
                    push_retry: Duration::from_secs(self.config.push_retry_secs),
                    space_floor: Some(self.space_floor.clone()),
                    min_free_bytes: self.config.min_free_bytes,
                };
                let job = BuildJob::from(&a);
                // A panic in the pipeline fails this build, not the agent: the task is
                // supervised and its panic becomes the build's failure. Cancelling this
                // build (aborting its task) aborts the pipeline too.
                let mut pipeline = AbortOnDrop(tokio::spawn(async move {
                    pipeline::run_build(&docker, &cfg, &job, log_tx).await
                }));
                match (&mut pipeline.0).await {
                    Ok(result) => result,
                    Err(e) => {
                        tracing::error!(error = %e, "the build task panicked");
                        Err(slipway_proto::BuildFailure {
                            phase: "agent".into(),
                            reason: format!(
                                "the agent's build task failed unexpectedly ({e}); see the agent's log"
                            ),
                        })
                    }
                }
            }
            None => {
                drop(log_tx);
                Err(slipway_proto::BuildFailure {
                phase: "engine".into(),
                reason: format!(
                    "the Docker engine at unix://{} does not answer this agent; start dockerd or fix docker_socket",
                    self.config.docker_socket
                ),
            })
            }
        };
        // Every log line goes out before the result.
        let _ = forward.await;
        let terminal = match result {
            Ok(output) => {
                tracing::info!(digest = %output.digest, "build pushed");
                event(BuildEv::Succeeded(output))
            }
            Err(failure) => {
                tracing::info!(phase = %failure.phase, reason = %failure.reason, "build failed");
                event(BuildEv::Failed(failure))
            }
        };
        {
            let mut builds = self.builds.lock().expect("builds lock poisoned");
            builds.running.remove(&key);
            if matches!(terminal.event, Some(BuildEv::Succeeded(_))) {
                builds.cached_apps.retain(|app| *app != a.app);
                builds.cached_apps.push(a.app.clone());
            }
            builds.finished.push_back((key, terminal.clone()));
            while builds.finished.len() > REMEMBERED_RESULTS {
                builds.finished.pop_front();
            }
        }
        self.send(terminal);
        // Every build adds to the engine's build cache: measure it now.
        self.watermark_pass().await;
    }

    /// Measures the build cache and prunes it above its high watermark (`reclaim.rs`);
    /// skipped while another pass runs, and while a build runs here: a prune can remove
    /// cache records a running build is about to use. The pass comes again after the
    /// next build ends and every `reclaim.interval_secs`.
    async fn watermark_pass(&self) {
        let Ok(_one) = self.reclaiming.try_lock() else { return };
        let running = self.builds.lock().expect("builds lock poisoned").running.len();
        if running > 0 {
            tracing::debug!(running, "build cache watermark pass skipped: builds are running");
            return;
        }
        let docker = self.docker().await;
        crate::reclaim::watermark_pass(
            docker.as_ref(),
            Path::new(&self.config.docker_socket),
            &self.config.build_root,
            &self.config.reclaim,
            &self.reclaim_stats,
        )
        .await;
    }
}

/// The agent's housekeeping: the build cache watermark every `reclaim.interval_secs` and
/// the build log retention every `build_logs.interval_secs`, both also at start.
async fn upkeep(agent: Arc<Agent>) {
    let mut cache = tokio::time::interval(Duration::from_secs(agent.config.reclaim.interval_secs.max(1)));
    let mut logs = tokio::time::interval(Duration::from_secs(agent.config.build_logs.interval_secs.max(1)));
    loop {
        tokio::select! {
            _ = cache.tick() => agent.watermark_pass().await,
            _ = logs.tick() => {
                let dir = agent.config.build_root.join("logs");
                let settings = agent.config.build_logs.clone();
                let swept = tokio::task::spawn_blocking(move || {
                    slipway_common::build_logs::sweep(&dir, &settings, std::time::SystemTime::now())
                })
                .await;
                match swept {
                    Ok(Ok(s)) if s.files > 0 => tracing::info!(
                        files = s.files, bytes = s.bytes, kept_files = s.kept_files, kept_bytes = s.kept_bytes,
                        "old build logs removed"
                    ),
                    Ok(Ok(_)) => {}
                    Ok(Err(err)) => tracing::warn!(%err, "cannot sweep the build logs"),
                    Err(err) => tracing::warn!(%err, "the build log sweep stopped"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn the_state_dir_is_private_and_keeps_the_node_id() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("state");
        let id = node_id(&dir).unwrap();
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        // A state dir from before, open to everyone: made private, the same id kept.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(node_id(&dir).unwrap(), id);
        assert_eq!(mode(&dir), 0o700);
    }
}
