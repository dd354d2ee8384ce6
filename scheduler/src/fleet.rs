//! The fleet: the leader's soft state about the nodes, in memory only.
//!
//! [`Fleet`] holds each connected agent's session (the channel down to it), its latest
//! [`NodeReport`], and when each node last reported; from these it derives liveness
//! ([`NodeSoftState`]). Reports and liveness are never raft writes: a node that has not
//! reported for `down_after` is Down; nodes this leader has never heard from are Unknown
//! (SwarmKit-style, so a new leader does not declare the whole fleet dead on its first
//! tick). A change of leadership forgets everything ([`Fleet::leadership_changed`]): the
//! agents reconnect to the new leader and report again.
//!
//! The agents' gRPC sessions that feed it are in `api/agents.rs`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use slipway_proto::scheduler_message::Msg as SchedMsg;
use slipway_proto::{Hello, NodeReport, SchedulerMessage};
use tokio::sync::mpsc;

use crate::placement::Liveness;

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
    /// Their sum, in seconds.
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
    /// Ready, down, or unknown since this member became leader.
    pub liveness: Liveness,
    /// The last report received, if any.
    pub report: Option<NodeReport>,
    /// How long ago it arrived.
    pub last_report_age: Option<Duration>,
    /// Whether the agent holds a session with this member now.
    pub connected: bool,
    /// Why the agent refused a build in the last 30 s, if it did.
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

    /// Sends a message to every connected agent; returns how many took it.
    pub fn broadcast(&self, msg: &SchedMsg) -> usize {
        let txs: Vec<_> = {
            let inner = self.inner.lock().expect("fleet lock poisoned");
            inner.sessions.values().map(|s| s.tx.clone()).collect()
        };
        txs.into_iter().filter(|tx| tx.try_send(SchedulerMessage { msg: Some(msg.clone()) }).is_ok()).count()
    }

    /// The router status each connected agent last reported, by node id (`None`: the
    /// agent has not reported one).
    pub fn routers(&self) -> Vec<(String, Option<slipway_proto::RouterStatus>)> {
        let inner = self.inner.lock().expect("fleet lock poisoned");
        let mut routers: Vec<_> = inner
            .sessions
            .iter()
            .map(|(id, s)| (id.clone(), s.report.as_ref().and_then(|r| r.router.clone())))
            .collect();
        routers.sort_by(|a, b| a.0.cmp(&b.0));
        routers
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

    /// Opens a session for the node's agent (replacing any older one) and returns its id.
    pub fn open(&self, node_id: &str, hello: &Hello, tx: mpsc::Sender<SchedulerMessage>) -> u64 {
        let mut inner = self.inner.lock().expect("fleet lock poisoned");
        inner.next_session += 1;
        let session_id = inner.next_session;
        let now = Instant::now();
        inner.last_seen.insert(node_id.to_string(), now);
        let session = Session { report: hello.report.clone(), session_id, tx, refused: None };
        inner.sessions.insert(node_id.to_string(), session);
        session_id
    }

    /// Records a report of the node's session `session_id` (a report from a replaced
    /// session only counts towards the report delays).
    pub fn report(&self, node_id: &str, session_id: u64, report: NodeReport) {
        let mut inner = self.inner.lock().expect("fleet lock poisoned");
        let now = Instant::now();
        if report.sent_at_ms > 0 {
            let delay_ms = slipway_common::now_ms().saturating_sub(report.sent_at_ms);
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
    pub fn refused(&self, node_id: &str, reason: &str) {
        let mut inner = self.inner.lock().expect("fleet lock poisoned");
        if let Some(s) = inner.sessions.get_mut(node_id) {
            s.refused = Some((Instant::now(), reason.to_string()));
        }
    }

    /// Ends the node's session `session_id`, unless a newer one replaced it.
    pub fn close(&self, node_id: &str, session_id: u64) {
        let mut inner = self.inner.lock().expect("fleet lock poisoned");
        if inner.sessions.get(node_id).is_some_and(|s| s.session_id == session_id) {
            inner.sessions.remove(node_id);
        }
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
