//! Live build logs and deploy progress, fanned out to whoever watches.
//!
//! Each build (and each rollback) is a *topic* ([`release_topic`] names a release's).
//! The leader publishes [`DeployEvent`]s to it as they happen: placement, log lines, the
//! pushed image, the release, Swarm progress, and one terminal event (`done` or
//! `failed`). A watcher gets the history so far and then the live events, atomically,
//! so joining late never loses a line. Build log lines are also appended to
//! `<data_dir>/logs/<build_id>.log` so `slipway logs` works after the build and after a
//! restart of this scheduler. Events are leader memory, not raft writes: the raft log
//! stays small. The log directory shares its disk with the raft store, so it is bounded
//! (`[build_logs]`, `slipway_common::build_logs`): [`sweep_logs`] removes logs by age and
//! bytes at start and every `interval_secs`, and no line is written while that disk has
//! less than `min_free_bytes` free.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use slipway_common::build_logs::{BuildLogSettings, DiskGuard, Swept};

use slipway_proto::{deploy_event::Event, DeployEvent, LogLine};
use tokio::sync::broadcast;

use crate::state::Release;

/// Finished topics are forgotten this long after their terminal event.
const KEEP_FINISHED: Duration = Duration::from_secs(600);
/// At most this many events are kept per topic for late watchers.
const MAX_HISTORY: usize = 20_000;

/// True for the events that end a topic: `done` and `failed`.
pub fn is_terminal(event: &DeployEvent) -> bool {
    matches!(event.event, Some(Event::Done(_) | Event::Failed(_)))
}

/// Topic of a release's deploy events: its build for built releases, its own for rollbacks
/// and for config or scale releases (which share their image's build id).
pub fn release_topic(r: &Release) -> String {
    match (r.rollback_of, &r.change) {
        (Some(_), _) => format!("rollback-{}-{}", r.app, r.number),
        (None, Some(_)) => format!("change-{}-{}", r.app, r.number),
        (None, None) => r.build_id.clone(),
    }
}

/// The fan-out hub.
#[derive(Clone)]
pub struct Events {
    inner: Arc<Mutex<HashMap<String, Topic>>>,
    log_dir: PathBuf,
    /// Stops log writes below the log disk's free-space floor.
    guard: Arc<DiskGuard>,
    /// Log files and bytes the sweeps removed since start.
    swept: Arc<(AtomicU64, AtomicU64)>,
}

/// What the build log directory looks like now, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogDirStatus {
    /// Log lines are not written (the disk is below its floor).
    pub stopped: bool,
    /// Lines not written for that reason since start.
    pub skipped_lines: u64,
    /// Log files the sweeps removed since start.
    pub swept_files: u64,
    /// Their bytes.
    pub swept_bytes: u64,
}

struct Topic {
    history: Vec<DeployEvent>,
    live: broadcast::Sender<DeployEvent>,
    finished_at: Option<Instant>,
}

/// History so far plus the live feed of one topic.
pub struct Subscription {
    /// What was published before the subscription.
    pub history: Vec<DeployEvent>,
    /// What is published from now on.
    pub live: broadcast::Receiver<DeployEvent>,
    /// True if the topic already ended (history holds the terminal event).
    pub finished: bool,
}

impl Events {
    /// Keeps build logs under `log_dir`, always writing them (tests).
    pub fn new(log_dir: PathBuf) -> Self {
        Self::with_floor(log_dir, 0)
    }

    /// Keeps build logs under `log_dir`, writing none while its filesystem has less
    /// than `min_free_bytes` free.
    pub fn with_floor(log_dir: PathBuf, min_free_bytes: u64) -> Self {
        if let Err(err) = std::fs::create_dir_all(&log_dir) {
            tracing::warn!(dir = %log_dir.display(), %err, "cannot create the build log directory");
        }
        let guard = Arc::new(DiskGuard::new(log_dir.clone(), min_free_bytes));
        Self { inner: Arc::default(), log_dir, guard, swept: Arc::default() }
    }

    /// Removes build logs by age and bytes now (blocking file IO: call it off the async
    /// workers).
    pub fn sweep(&self, settings: &BuildLogSettings) -> std::io::Result<Swept> {
        let swept = slipway_common::build_logs::sweep(&self.log_dir, settings, std::time::SystemTime::now())?;
        self.swept.0.fetch_add(swept.files as u64, Ordering::Relaxed);
        self.swept.1.fetch_add(swept.bytes, Ordering::Relaxed);
        Ok(swept)
    }

    /// The log directory's state, for `/metrics`.
    pub fn log_dir_status(&self) -> LogDirStatus {
        LogDirStatus {
            stopped: self.guard.stopped(),
            skipped_lines: self.guard.skipped_lines(),
            swept_files: self.swept.0.load(Ordering::Relaxed),
            swept_bytes: self.swept.1.load(Ordering::Relaxed),
        }
    }

    /// Publishes one event; a terminal event (`done`/`failed`) ends the topic.
    pub fn publish(&self, topic: &str, event: Event) {
        if let Event::Log(line) = &event {
            self.append_log_file(topic, line);
        }
        let event = DeployEvent { event: Some(event) };
        let terminal = is_terminal(&event);
        let mut topics = self.inner.lock().expect("events lock poisoned");
        if terminal {
            // Topics end rarely and log lines come often: forget old topics only here.
            topics.retain(|_, t| t.finished_at.is_none_or(|at| at.elapsed() < KEEP_FINISHED));
        }
        let topic = topics.entry(topic.to_string()).or_insert_with(Topic::new);
        if topic.history.len() < MAX_HISTORY || terminal {
            topic.history.push(event.clone());
        }
        if terminal {
            topic.finished_at = Some(Instant::now());
        }
        // No receivers is fine: nobody watches right now.
        let _ = topic.live.send(event);
    }

    /// Convenience for a log line stamped now.
    pub fn log(&self, topic: &str, line: impl Into<String>) {
        self.publish(topic, Event::Log(LogLine { at_ms: slipway_common::now_ms(), line: line.into() }));
    }

    /// Subscribes to a topic, creating it if nobody published yet.
    pub fn subscribe(&self, topic: &str) -> Subscription {
        let mut topics = self.inner.lock().expect("events lock poisoned");
        let topic = topics.entry(topic.to_string()).or_insert_with(Topic::new);
        Subscription {
            history: topic.history.clone(),
            live: topic.live.subscribe(),
            finished: topic.finished_at.is_some(),
        }
    }

    /// True if this scheduler holds the topic in memory.
    pub fn has_topic(&self, topic: &str) -> bool {
        self.inner.lock().expect("events lock poisoned").contains_key(topic)
    }

    /// Path of a build's log file on this scheduler.
    pub fn log_path(&self, build_id: &str) -> PathBuf {
        self.log_dir.join(format!("{build_id}.log"))
    }

    fn append_log_file(&self, topic: &str, line: &LogLine) {
        // Topics of rollbacks hold no build log.
        if !topic.starts_with("b-") {
            return;
        }
        if !self.guard.may_write() {
            return;
        }
        let path = self.log_path(topic);
        let result = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| writeln!(f, "{}", line.line));
        if let Err(err) = result {
            tracing::warn!(path = %path.display(), %err, "cannot append to build log");
        }
    }
}

/// Sweeps the build logs at start and every `interval_secs` until `stop` changes.
pub async fn sweep_logs(
    events: Events,
    settings: BuildLogSettings,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let every = Duration::from_secs(settings.interval_secs.max(1));
    loop {
        let (e, s) = (events.clone(), settings.clone());
        match tokio::task::spawn_blocking(move || e.sweep(&s)).await {
            Ok(Ok(swept)) if swept.files > 0 => tracing::info!(
                files = swept.files,
                bytes = swept.bytes,
                kept_files = swept.kept_files,
                kept_bytes = swept.kept_bytes,
                "old build logs removed"
            ),
            Ok(Ok(_)) => {}
            Ok(Err(err)) => {
                tracing::warn!(dir = %events.log_dir.display(), %err, "cannot sweep the build logs")
            }
            Err(err) => tracing::warn!(%err, "the build log sweep stopped"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Events a live watcher may fall behind by before it is told lines were skipped. The
/// channel allocates all its slots up front, per topic: every queued build has one, so
/// this stays small (a watcher that lags still gets the outcome; the full log is on disk).
const LIVE_CAPACITY: usize = 256;

impl Topic {
    fn new() -> Self {
        Self { history: Vec::new(), live: broadcast::channel(LIVE_CAPACITY).0, finished_at: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn late_watchers_get_history_then_live_events() {
        let dir = tempfile::tempdir().unwrap();
        let events = Events::new(dir.path().to_path_buf());
        events.log("b-1", "step 1");
        let mut sub = events.subscribe("b-1");
        assert_eq!(sub.history.len(), 1);
        events.log("b-1", "step 2");
        events.publish("b-1", Event::Failed("boom".into()));
        let Some(Event::Log(l)) = sub.live.recv().await.unwrap().event else { panic!() };
        assert_eq!(l.line, "step 2");
        assert!(matches!(sub.live.recv().await.unwrap().event, Some(Event::Failed(_))));
        assert!(events.subscribe("b-1").finished);
        let file = std::fs::read_to_string(events.log_path("b-1")).unwrap();
        assert_eq!(file, "step 1\nstep 2\n");
    }

    #[test]
    fn below_the_floor_no_log_is_written_and_watchers_still_get_lines() {
        let dir = tempfile::tempdir().unwrap();
        let events = Events::with_floor(dir.path().to_path_buf(), u64::MAX);
        events.log("b-1", "step 1");
        assert!(!events.log_path("b-1").exists());
        assert_eq!(events.subscribe("b-1").history.len(), 1);
        let status = events.log_dir_status();
        assert!(status.stopped && status.skipped_lines == 1, "{status:?}");
    }

    #[test]
    fn releases_without_a_build_have_topics_of_their_own() {
        let built = Release {
            secrets: Default::default(),
            app: "shop".into(),
            number: 2,
            digest: String::new(),
            repository: String::new(),
            git_sha: String::new(),
            build_id: "b-7".into(),
            node_id: String::new(),
            created_at_ms: 0,
            rollback_of: None,
            deploy: crate::state::DeployState::Pending,
            deploy_error: None,
            run: Default::default(),
            bytes_pushed: 0,
            timings: Default::default(),
            config: Default::default(),
            replicas: None,
            change: None,
            collected: false,
        };
        let change = crate::state::ReleaseChange::Scale { replicas: Some(2) };
        let scaled = Release { number: 3, change: Some(change), ..built.clone() };
        let rollback = Release { number: 4, rollback_of: Some(2), ..built.clone() };
        let topics = [&built, &scaled, &rollback].map(release_topic);
        assert_eq!(topics, ["b-7", "change-shop-3", "rollback-shop-4"]);
    }
}
