//! Agent sessions and node liveness: the leader's soft state about the fleet.
//!
//! Each agent holds one bidirectional gRPC stream ([`AgentSessions`]). It opens with
//! `Hello`, then sends a [`NodeReport`] every few seconds and [`BuildEvent`]s for the
//! builds it runs; the scheduler sends [`BuildAssignment`]s down the same stream.
//! Reports and liveness live only in the leader's memory ([`Fleet`]); registration is a
//! raft write. A node that has not reported for `down_after` is Down; nodes this leader
//! has never heard from are Unknown (SwarmKit-style, so a new leader does not declare
//! the whole fleet dead on its first tick).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::Stream;
use slipway_proto::agent_message::Msg as AgentMsg;
use slipway_proto::build_event::Event as BuildEv;
use slipway_proto::scheduler_message::Msg as SchedMsg;
use slipway_proto::{
    AgentMessage, BuildAssignment, BuildEvent, CancelBuild, Hello, NodeReport, SchedulerMessage, Welcome,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::placement::Liveness;
use crate::server::Shared;
use crate::state::Command;

/// One connected agent, as the leader sees it.
struct Session {
    report: Option<NodeReport>,
    /// Distinguishes a reconnected session from the one it replaced.
    session_id: u64,
    tx: mpsc::Sender<SchedulerMessage>,
    /// The agent's last refusal of a build (low disk), while it holds.
    refused: Option<(Instant, String)>,
}

/// How long an agent's refusal keeps builds away from its node.
const REFUSAL_HOLD: Duration = Duration::from_secs(30);

/// Liveness and latest reports of the nodes, plus the channels to their agents.
#[derive(Clone, Default)]
pub struct Fleet {
    inner: Arc<Mutex<FleetInner>>,
}

#[derive(Default)]
struct FleetInner {
    sessions: HashMap<String, Session>,
    /// Last time each node reported, kept after its session ends (to time Down).
    last_seen: HashMap<String, Instant>,
    next_session: u64,
    /// When this member last became leader: nodes silent since then for longer than
    /// the grace period are Down rather than Unknown forever.
    leader_since: Option<Instant>,
    report_delays: ReportDelays,
}

/// How late reports reach the leader (its clock minus the agent's `sent_at_ms`, so it
/// includes clock skew between hosts): a Prometheus-style histogram.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReportDelays {
    /// Reports per bucket of [`ReportDelays::BOUNDS`] (not cumulative), plus one above.
    pub counts: [u64; 14],
    pub sum_seconds: f64,
}

impl ReportDelays {
    /// Upper bounds of the buckets, in seconds.
    pub const BOUNDS: [f64; 13] =
        [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

    fn observe(&mut self, seconds: f64) {
        let i = Self::BOUNDS.iter().position(|b| seconds <= *b).unwrap_or(Self::BOUNDS.len());
        self.counts[i] += 1;
        self.sum_seconds += seconds;
    }

    /// Reports observed.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The upper bound of the bucket holding quantile `q` (infinity past the last
    /// bound), or None with no observations: what Prometheus' histogram_quantile would
    /// bracket.
    pub fn quantile_bound(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = (q * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(Self::BOUNDS.get(i).copied().unwrap_or(f64::INFINITY));
            }
        }
        Some(f64::INFINITY)
    }

    /// Observations since `earlier` (a copy taken before).
    pub fn since(&self, earlier: &ReportDelays) -> ReportDelays {
        let mut d = self.clone();
        for (c, e) in d.counts.iter_mut().zip(earlier.counts) {
            *c = c.saturating_sub(e);
        }
        d.sum_seconds -= earlier.sum_seconds;
        d
    }
}

/// A node's soft state for listings and placement.
#[derive(Debug, Clone)]
pub struct NodeSoftState {
    pub liveness: Liveness,
    pub report: Option<NodeReport>,
    pub last_report_age: Option<Duration>,
    pub connected: bool,
    /// Why the agent refused a build in the last [`REFUSAL_HOLD`], if it did.
    pub refusal: Option<String>,
}

impl Fleet {
    /// Liveness of a node right now.
    pub fn soft_state(&self, node_id: &str, down_after: Duration) -> NodeSoftState {
        let inner = self.inner.lock().expect("fleet lock poisoned");
        let session = inner.sessions.get(node_id);
        let age = inner.last_seen.get(node_id).map(Instant::elapsed);
        let leader_for = inner.leader_since.map(|t| t.elapsed()).unwrap_or_default();
        let liveness = match (session, age) {
            (_, None) if leader_for > down_after => Liveness::Down,
            (_, None) => Liveness::Unknown,
            (Some(_), Some(age)) if age <= down_after => Liveness::Ready,
            (None, Some(age)) if age <= down_after => Liveness::Ready,
            _ => Liveness::Down,
        };
        NodeSoftState {
            liveness,
            report: session.and_then(|s| s.report.clone()),
            last_report_age: age,
            connected: session.is_some(),
            refusal: session
                .and_then(|s| s.refused.as_ref())
                .filter(|(at, _)| at.elapsed() < REFUSAL_HOLD)
                .map(|(_, reason)| reason.clone()),
        }
    }

    /// True once this member has taken over the fleet as leader.
    pub fn is_leading(&self) -> bool {
        self.inner.lock().expect("fleet lock poisoned").leader_since.is_some()
    }

    /// Sends a message to a node's agent; false if it has no open session.
    pub fn send(&self, node_id: &str, msg: SchedMsg) -> bool {
        let tx = {
            let inner = self.inner.lock().expect("fleet lock poisoned");
            inner.sessions.get(node_id).map(|s| s.tx.clone())
        };
        match tx {
            Some(tx) => tx.try_send(SchedulerMessage { msg: Some(msg) }).is_ok(),
            None => false,
        }
    }

    /// Called when this member gains or loses leadership. Either way the old soft state
    /// is forgotten: nodes start Unknown until they report to the new leader, and
    /// dropping the sessions ends their streams so agents go find the leader.
    pub fn leadership_changed(&self, leader: bool) {
        let mut inner = self.inner.lock().expect("fleet lock poisoned");
        inner.sessions.clear();
        inner.last_seen.clear();
        inner.leader_since = leader.then(Instant::now);
    }

    fn open(&self, node_id: &str, hello: &Hello, tx: mpsc::Sender<SchedulerMessage>) -> u64 {
        let mut inner = self.inner.lock().expect("fleet lock poisoned");
        inner.next_session += 1;
        let session_id = inner.next_session;
        let now = Instant::now();
        inner.last_seen.insert(node_id.to_string(), now);
        let session = Session { report: hello.report.clone(), session_id, tx, refused: None };
        inner.sessions.insert(node_id.to_string(), session);
        session_id
    }

    fn report(&self, node_id: &str, session_id: u64, report: NodeReport) {
        let mut inner = self.inner.lock().expect("fleet lock poisoned");
        let now = Instant::now();
        if report.sent_at_ms > 0 {
            let delay_ms = crate::now_ms().saturating_sub(report.sent_at_ms);
            inner.report_delays.observe(delay_ms as f64 / 1000.0);
        }
        if let Some(s) = inner.sessions.get_mut(node_id).filter(|s| s.session_id == session_id) {
            s.report = Some(report);
            inner.last_seen.insert(node_id.to_string(), now);
        }
    }

    /// How late reports have reached this member since it started.
    pub fn report_delays(&self) -> ReportDelays {
        self.inner.lock().expect("fleet lock poisoned").report_delays.clone()
    }

    /// Notes that the node's agent refused a build, so placement skips it for a while.
    fn refused(&self, node_id: &str, reason: &str) {
        let mut inner = self.inner.lock().expect("fleet lock poisoned");
        if let Some(s) = inner.sessions.get_mut(node_id) {
            s.refused = Some((Instant::now(), reason.to_string()));
        }
    }

    fn close(&self, node_id: &str, session_id: u64) {
        let mut inner = self.inner.lock().expect("fleet lock poisoned");
        if inner.sessions.get(node_id).is_some_and(|s| s.session_id == session_id) {
            inner.sessions.remove(node_id);
        }
    }
}

/// The gRPC service agents connect to.
pub struct AgentSessions {
    shared: Arc<Shared>,
}

impl AgentSessions {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

type SessionStream = Pin<Box<dyn Stream<Item = Result<SchedulerMessage, Status>> + Send>>;

#[tonic::async_trait]
impl slipway_proto::agent_service_server::AgentService for AgentSessions {
    type SessionStream = SessionStream;

    async fn session(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let shared = self.shared.clone();
        shared.store.require_leader()?;
        if !shared.fleet.is_leading() {
            return Err(Status::unavailable("this scheduler is taking over as leader; retry in a moment"));
        }
        let caller = crate::enroll::caller(&request);
        let mut inbound = request.into_inner();
        let hello = match inbound.next().await {
            Some(Ok(AgentMessage { msg: Some(AgentMsg::Hello(hello)) })) => hello,
            Some(Ok(_)) => return Err(Status::invalid_argument("an agent session must open with Hello")),
            Some(Err(status)) => return Err(status),
            None => return Err(Status::cancelled("agent closed the session before Hello")),
        };
        let node_id = hello.node_id.clone();
        if node_id.is_empty() || node_id.len() > 128 || node_id.chars().any(|c| c.is_control()) {
            return Err(Status::invalid_argument("Hello.node_id must be 1 to 128 printable characters"));
        }
        check_hello(&hello)?;
        // An agent speaks for its own node only: the one its certificate names.
        if let slipway_proto::tls::Caller::Verified(who) = &caller {
            if who.name != node_id {
                return Err(Status::permission_denied(format!(
                    "this agent's certificate is for node {:?}, not {node_id:?}: an agent speaks for its own node",
                    who.name
                )));
            }
        }
        let name = if hello.name.is_empty() { node_id.clone() } else { hello.name.clone() };
        let known = shared.store.read(|s| s.nodes.get(&node_id).map(|n| (n.name.clone(), n.labels.clone())));
        let labels = hello.labels.clone().into_iter().collect();
        if known.as_ref() != Some(&(name.clone(), labels)) {
            shared
                .store
                .write(Command::RegisterNode {
                    id: node_id.clone(),
                    name: name.clone(),
                    labels: hello.labels.clone().into_iter().collect(),
                    at_ms: crate::now_ms(),
                })
                .await?;
        }

        let (tx, rx) = mpsc::channel(256);
        let welcome = Welcome {
            node_id: node_id.clone(),
            report_interval_secs: shared.config.agents.report_interval_secs,
        };
        tx.send(SchedulerMessage { msg: Some(SchedMsg::Welcome(welcome)) })
            .await
            .map_err(|_| Status::cancelled("agent went away"))?;
        let session_id = shared.fleet.open(&node_id, &hello, tx);
        tracing::info!(node = %name, %node_id, "agent session opened");
        shared.dispatcher_wake();
        resend_lost_assignments(&shared, &node_id, hello.report.as_ref());

        let span = tracing::info_span!("agent_session", node = %name);
        tokio::spawn(
            async move {
                while let Some(msg) = inbound.next().await {
                    match msg {
                        Ok(AgentMessage { msg: Some(AgentMsg::Report(report)) }) => {
                            cancel_superseded(&shared, &node_id, &report);
                            shared.fleet.report(&node_id, session_id, report);
                            shared.dispatcher_wake();
                        }
                        Ok(AgentMessage { msg: Some(AgentMsg::Build(event)) }) => {
                            handle_build_event(&shared, &node_id, event).await;
                        }
                        Ok(_) => tracing::warn!("ignoring an unexpected message"),
                        Err(status) => {
                            tracing::info!(%status, "agent session broke");
                            break;
                        }
                    }
                }
                shared.fleet.close(&node_id, session_id);
                tracing::info!("agent session closed");
            }
            .instrument(span),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(rx).map(Ok))))
    }
}

/// Cancels the attempts an agent reports running that are not the current attempt of
/// their build on this node (the build was placed again after the node was lost, was
/// cancelled, or its app deleted): their results would be ignored anyway.
fn cancel_superseded(shared: &Shared, node_id: &str, report: &NodeReport) {
    let superseded: Vec<(String, u32)> = shared.store.read(|s| {
        report
            .running
            .iter()
            .filter(|r| {
                !s.builds.get(&r.build_id).is_some_and(|b| {
                    b.attempt == r.attempt && b.node_id.as_deref() == Some(node_id) && !b.state.is_terminal()
                })
            })
            .map(|r| (r.build_id.clone(), r.attempt))
            .collect()
    });
    for (build_id, attempt) in superseded {
        tracing::info!(build = %build_id, attempt, node = %node_id, "cancelling a superseded attempt");
        shared.fleet.send(node_id, SchedMsg::Cancel(CancelBuild { build_id, attempt }));
    }
}

/// After a reconnect, builds the state says are assigned to this node but that the
/// agent does not report running are sent again (assignments are idempotent by build
/// id and attempt, so an agent that already finished one answers with its result).
fn resend_lost_assignments(shared: &Shared, node_id: &str, report: Option<&NodeReport>) {
    let running: Vec<(&str, u32)> = report
        .map(|r| r.running.iter().map(|a| (a.build_id.as_str(), a.attempt)).collect())
        .unwrap_or_default();
    let assignments: Vec<BuildAssignment> = shared.store.read(|s| {
        s.builds
            .values()
            .filter(|b| b.node_id.as_deref() == Some(node_id) && !b.state.is_terminal())
            .filter(|b| b.state != crate::state::BuildState::Queued)
            .filter(|b| !running.contains(&(b.id.as_str(), b.attempt)))
            .filter_map(|b| s.apps.get(&b.app).map(|app| shared.assignment(b, app)))
            .collect()
    });
    for a in assignments {
        tracing::info!(build = %a.build_id, attempt = a.attempt, "re-sending assignment after reconnect");
        shared.fleet.send(node_id, SchedMsg::Assign(a));
    }
}

/// Most labels an agent may report.
const MAX_LABELS: usize = 64;

/// The parts of a `Hello` that are written to raft (name, labels) are bounded and
/// printable; checked before the node is registered.
fn check_hello(hello: &Hello) -> Result<(), Status> {
    let max = slipway_proto::validate::MAX_ID_BYTES;
    let printable = |s: &str| s.len() <= max && !s.chars().any(char::is_control);
    if !printable(&hello.name) {
        return Err(Status::invalid_argument(format!(
            "Hello.name must be at most {max} bytes of printable characters; fix the agent's `name`"
        )));
    }
    if hello.labels.len() > MAX_LABELS {
        return Err(Status::invalid_argument(format!(
            "Hello.labels has {} labels; the limit is {MAX_LABELS}",
            hello.labels.len()
        )));
    }
    if let Some(key) = hello.labels.iter().find(|(k, v)| k.is_empty() || !printable(k) || !printable(v)) {
        let key: String = key.0.chars().take(64).collect();
        return Err(Status::invalid_argument(format!(
            "Hello.labels: label {key:?} must have a non-empty key, and key and value at most {max} bytes \
             of printable characters; fix the agent's `labels`"
        )));
    }
    Ok(())
}

async fn handle_build_event(shared: &Arc<Shared>, node_id: &str, event: BuildEvent) {
    let BuildEvent { build_id, attempt, event } = event;
    // Only the current attempt on the node it was given to may change the build.
    let current = shared.store.read(|s| {
        s.builds.get(&build_id).is_some_and(|b| b.attempt == attempt && b.node_id.as_deref() == Some(node_id))
    });
    if !current {
        tracing::info!(build = %build_id, attempt, "ignoring an event from a stale attempt");
        return;
    }
    match event {
        Some(BuildEv::Started(_)) => {
            if let Err(err) =
                shared.store.write(Command::StartBuild { build_id: build_id.clone(), attempt }).await
            {
                tracing::warn!(build = %build_id, %err, "cannot record build start");
            }
        }
        Some(BuildEv::Log(line)) => {
            shared.events.publish(&build_id, slipway_proto::deploy_event::Event::Log(line));
        }
        Some(BuildEv::Succeeded(output)) => {
            let result = crate::convert::build_output_from(&output);
            if result.is_ok() {
                shared.events.publish(&build_id, slipway_proto::deploy_event::Event::Built(output));
            }
            crate::dispatcher::finish_build(shared, &build_id, attempt, result).await;
        }
        Some(BuildEv::Refused(refusal)) => {
            let node =
                shared.store.read(|s| s.nodes.get(node_id).map_or(node_id.to_string(), |n| n.name.clone()));
            let reason = format!("node {node} refused it: {}", refusal.reason);
            tracing::warn!(build = %build_id, attempt, %reason, "build refused; placing it again");
            shared.fleet.refused(node_id, &refusal.reason);
            shared.events.log(&build_id, format!("==> {reason}; placing the build again"));
            let requeue =
                Command::RequeueBuild { build_id: build_id.clone(), attempt, reason, at_ms: crate::now_ms() };
            if let Err(err) = shared.store.write(requeue).await {
                tracing::warn!(build = %build_id, %err, "cannot requeue the refused build");
            }
            shared.dispatcher_wake();
        }
        Some(BuildEv::Failed(failure)) => {
            let reason = format!("{} failed: {}", failure.phase, failure.reason);
            crate::dispatcher::finish_build(shared, &build_id, attempt, Err(reason)).await;
        }
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_delays_bucket_and_bracket_quantiles() {
        let mut d = ReportDelays::default();
        assert_eq!(d.quantile_bound(0.99), None);
        for _ in 0..98 {
            d.observe(0.0005);
        }
        d.observe(0.2);
        d.observe(30.0);
        assert_eq!(d.count(), 100);
        assert_eq!(d.quantile_bound(0.5), Some(0.001));
        assert_eq!(d.quantile_bound(0.99), Some(0.25));
        assert_eq!(d.quantile_bound(1.0), Some(f64::INFINITY));
        let before = d.clone();
        d.observe(0.003);
        let since = d.since(&before);
        assert_eq!((since.count(), since.quantile_bound(0.99)), (1, Some(0.005)));
    }
}
