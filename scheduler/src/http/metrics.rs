//! The scheduler's Prometheus metrics: [`render`] turns an [`Overview`] (taken once per
//! scrape) into the `/metrics` page.
//!
//! Names and meanings (every family carries HELP and TYPE lines):
//!
//! ```text
//! slipway_scheduler_info{member_id,version} 1
//! slipway_raft_is_leader, slipway_raft_role{role}, slipway_raft_term, slipway_raft_leader_id,
//! slipway_raft_last_log_index, slipway_raft_commit_index, slipway_raft_last_applied,
//! slipway_raft_snapshot_index, slipway_raft_purged_index, slipway_raft_members, slipway_raft_voters,
//! slipway_raft_member_matched_index{member_id}           (leader only)
//! slipway_apps, slipway_nodes, slipway_builds{state}, slipway_build_queue_length,
//! slipway_build_queue_oldest_seconds, slipway_placement_decisions_total{outcome}
//! slipway_builds_pruned_total, slipway_build_logs_stopped, slipway_build_log_lines_skipped_total,
//! slipway_build_logs_removed_total, slipway_build_logs_removed_bytes_total
//! slipway_storage_free_bytes, slipway_storage_min_free_bytes
//! slipway_node_info{node,node_id}, slipway_node_draining{node,node_id}       (every member)
//! slipway_node_status{node,node_id,status}, slipway_node_build_fs_*_bytes, slipway_node_cpus,
//! slipway_node_cpu_usage_percent, slipway_node_load1, slipway_node_memory_*_bytes,
//! slipway_node_running_builds, slipway_node_build_slots, slipway_node_cache_bytes,
//! slipway_node_engine_healthy, slipway_node_last_report_age_seconds      (leader only)
//! slipway_report_delay_seconds (histogram)
//! ```
//!
//! Node reports and liveness are the leader's memory (see `fleet.rs`): a follower
//! exports the replicated node records (`slipway_node_info`, `slipway_node_draining`)
//! and none of the report gauges, so a dashboard summing over members counts each node
//! once. The HELP lines say so.
//!
//! Why `prometheus-client`: the exposition format (escaping, number formats, `_total`) is the
//! client library's, not ours; each scrape fills a [`Registry`] from the overview and encodes
//! it as Prometheus text 0.0.4, whose counter `# TYPE` line keeps the `_total` name. A
//! labelled family is a [`Samples`] list rather than the crate's `Family`, which keeps its
//! series in a hash map (so in no fixed order) and is made for live, updated metrics.

use prometheus_client::encoding::prometheus_text::encode;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Metric, Registry};
use slipway_proto::NodeReport;

use super::overview::{NodeRow, Overview};
use crate::fleet::ReportDelays;
use crate::placement::Liveness;
use crate::state::BuildState;

/// Content type of the text exposition format (version 0.0.4).
pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Build states in the order `slipway_builds{state}` lists them.
const BUILD_STATES: [BuildState; 6] = [
    BuildState::Queued,
    BuildState::Assigned,
    BuildState::Running,
    BuildState::Pushed,
    BuildState::Failed,
    BuildState::Cancelled,
];

/// Appended to the help of leader-only families (the registry adds the final period).
const LEADER_ONLY: &str =
    "Exported by the leader only: node reports and liveness live in its memory, followers have none";

/// Label pairs of one sample.
type Labels = Vec<(&'static str, String)>;

/// One labelled family of this scrape: a constant metric per label set, in the order
/// given. With no samples it still writes its HELP and TYPE lines.
#[derive(Debug)]
struct Samples<M>(Vec<(Labels, M)>);

impl<M: EncodeMetric + TypedMetric> EncodeMetric for Samples<M> {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        for (labels, metric) in &self.0 {
            metric.encode(encoder.encode_family(labels)?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        M::TYPE
    }
}

/// `slipway_report_delay_seconds`: the delays as counted, encoded as a histogram.
#[derive(Debug)]
struct DelayHistogram(ReportDelays);

impl EncodeMetric for DelayHistogram {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        // Per-bucket counts; the encoder accumulates them and adds `+Inf` with the count.
        let buckets: Vec<(f64, u64)> = ReportDelays::BOUNDS.iter().copied().zip(self.0.counts).collect();
        encoder.encode_histogram::<NoLabelSet>(self.0.sum_seconds, self.0.count(), &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// The `/metrics` page for an overview of this member.
pub fn render(o: &Overview) -> String {
    let mut out = String::new();
    encode(&mut out, &registry(o)).expect("writing to a String cannot fail");
    out
}

/// The metrics of one scrape, in the order they are written. Help texts carry no final
/// period: the registry adds it.
fn registry(o: &Overview) -> Registry {
    let mut registry = Registry::default();
    // An info metric: the registry names it `slipway_scheduler_info`, typed gauge, value 1.
    let info: Labels =
        vec![("member_id", o.raft.member_id.to_string()), ("version", env!("CARGO_PKG_VERSION").into())];
    registry.register("slipway_scheduler", "This scheduler: its raft member id and version", Info::new(info));
    register_raft(&mut registry, o);
    register_builds(&mut registry, o);
    register_nodes(&mut registry, o);
    registry.register(
        "slipway_report_delay_seconds",
        "How late agent reports reach this scheduler (includes clock skew)",
        DelayHistogram(o.report_delays.clone()),
    );
    registry
}

/// Registers a gauge holding `value` for this scrape.
fn gauge<N>(registry: &mut Registry, name: &str, help: &str, value: N)
where
    ConstGauge<N>: Metric,
{
    registry.register(name, help, ConstGauge::new(value));
}

/// Registers a labelled gauge family holding `samples` for this scrape.
fn gauges<N>(registry: &mut Registry, name: &str, help: &str, samples: Vec<(Labels, N)>)
where
    Samples<ConstGauge<N>>: Metric,
{
    let samples = samples.into_iter().map(|(labels, v)| (labels, ConstGauge::new(v))).collect();
    registry.register(name, help, Samples(samples));
}

fn register_raft(g: &mut Registry, o: &Overview) {
    let r = &o.raft;
    gauge(g, "slipway_raft_is_leader", "1 if this member leads the cluster", u64::from(o.leading));
    let roles = ["leader", "candidate", "follower", "learner", "shutdown"];
    let roles = roles.map(|role| (vec![("role", role.to_string())], u64::from(r.role == role)));
    gauges(g, "slipway_raft_role", "This member's raft role (1 for the current one)", roles.into());
    gauge(g, "slipway_raft_term", "Current raft term", r.term);
    let leader = r.leader_id.unwrap_or(0);
    gauge(g, "slipway_raft_leader_id", "Member id of the leader this member knows (0: none)", leader);
    let last = r.last_log_index;
    gauge(g, "slipway_raft_last_log_index", "Index of the last entry in this member's log", last);
    if let Some(committed) = r.commit_index {
        gauge(
            g,
            "slipway_raft_commit_index",
            "Index of the last entry this member knows committed by a quorum",
            committed,
        );
    }
    let applied = r.last_applied;
    gauge(g, "slipway_raft_last_applied", "Index of the last entry applied to this member's state", applied);
    gauge(
        g,
        "slipway_raft_snapshot_index",
        "Last log index included in this member's snapshot (0: none)",
        r.snapshot_index,
    );
    gauge(
        g,
        "slipway_raft_purged_index",
        "Last log index purged from this member's log (0: none)",
        r.purged_index,
    );
    gauge(g, "slipway_raft_members", "Cluster members, voters and learners", r.members.len() as u64);
    let voters = r.members.iter().filter(|m| m.voter).count() as u64;
    gauge(g, "slipway_raft_voters", "Voting cluster members", voters);
    if o.leading {
        let matched =
            r.members.iter().map(|m| (vec![("member_id", m.id.to_string())], m.matched.unwrap_or(0)));
        gauges(
            g,
            "slipway_raft_member_matched_index",
            "Last log index the leader knows each member holds. Exported by the leader only",
            matched.collect(),
        );
    }
}

fn register_builds(g: &mut Registry, o: &Overview) {
    gauge(g, "slipway_apps", "Apps", o.apps.len() as u64);
    gauge(g, "slipway_nodes", "Registered nodes", o.nodes.len() as u64);
    let builds = BUILD_STATES.map(|state| (vec![("state", format!("{state:?}"))], o.builds_in(state)));
    gauges(g, "slipway_builds", "Builds by state (as applied on this member)", builds.into());
    let queued = o.builds_in(BuildState::Queued);
    gauge(g, "slipway_build_queue_length", "Builds waiting for a node (queued)", queued);
    gauge(
        g,
        "slipway_build_queue_oldest_seconds",
        "How long the oldest queued build has waited (0: none waits)",
        o.oldest_queued_ms.map_or(0.0, |ms| o.now_ms.saturating_sub(ms) as f64 / 1000.0),
    );
    let (placed, no_node) = o.placements;
    let decisions = [("placed", placed), ("no_node", no_node)]
        .map(|(outcome, n)| (vec![("outcome", outcome.to_string())], ConstCounter::new(n)));
    // Counters: the registry appends `_total` to the name.
    g.register(
        "slipway_builds_pruned",
        "Finished builds the build retention removed from the replicated state (build_retention.finished_builds_per_app)",
        ConstCounter::new(o.builds_pruned),
    );
    if let Some(free) = o.storage.free_bytes {
        gauge(
            g,
            "slipway_storage_free_bytes",
            "Free bytes on the filesystem of this member's data dir (the raft store), measured at most once a second",
            free,
        );
    }
    gauge(
        g,
        "slipway_storage_min_free_bytes",
        "storage.min_free_bytes: below it this member refuses new apps, builds, releases, config and secrets (0: off)",
        o.storage.min_free_bytes,
    );
    let logs = o.build_logs;
    gauge(
        g,
        "slipway_build_logs_stopped",
        "1 while this member writes no build log: its log directory's filesystem is below build_logs.min_free_bytes",
        u64::from(logs.stopped),
    );
    g.register(
        "slipway_build_log_lines_skipped",
        "Build log lines this member did not write to disk because its log filesystem was below its floor",
        ConstCounter::new(logs.skipped_lines),
    );
    g.register(
        "slipway_build_logs_removed",
        "Build log files the retention (build_logs.max_age_days, max_bytes) removed since this member started",
        ConstCounter::new(logs.swept_files),
    );
    g.register(
        "slipway_build_logs_removed_bytes",
        "Bytes of the build log files the retention removed since this member started",
        ConstCounter::new(logs.swept_bytes),
    );
    g.register(
        "slipway_placement_decisions",
        "Placement decisions this member took as leader since it started: placed (a node took the build) \
         or no_node (no node could take it; the build waits and is tried again about every second)",
        Samples(decisions.into()),
    );
}

/// The `node` and `node_id` labels of a node's samples.
fn node_labels(n: &NodeRow) -> Labels {
    vec![("node", n.record.name.clone()), ("node_id", n.record.id.clone())]
}

/// One gauge family over the nodes that have a report (leader only).
fn node_gauge<N>(g: &mut Registry, o: &Overview, name: &str, help: &str, value: impl Fn(&NodeReport) -> N)
where
    Samples<ConstGauge<N>>: Metric,
{
    let samples = o
        .nodes
        .iter()
        .filter_map(|n| n.soft.as_ref()?.report.as_ref().map(|r| (node_labels(n), value(r))))
        .collect();
    gauges(g, name, &format!("{help}. {LEADER_ONLY}"), samples);
}

fn register_nodes(g: &mut Registry, o: &Overview) {
    let info = o.nodes.iter().map(|n| (node_labels(n), 1u64)).collect();
    gauges(
        g,
        "slipway_node_info",
        "Registered nodes (replicated: every member exports them), always 1",
        info,
    );
    let draining = o.nodes.iter().map(|n| (node_labels(n), u64::from(n.record.draining))).collect();
    gauges(g, "slipway_node_draining", "1 if the node is draining (takes no new builds)", draining);
    if !o.leading {
        return;
    }
    let mut status = Vec::new();
    for n in &o.nodes {
        let Some(soft) = &n.soft else { continue };
        for (name, l) in
            [("ready", Liveness::Ready), ("down", Liveness::Down), ("unknown", Liveness::Unknown)]
        {
            let mut labels = node_labels(n);
            labels.push(("status", name.to_string()));
            status.push((labels, u64::from(soft.liveness == l)));
        }
    }
    let help = format!("Node liveness as the leader sees it (1 for the current status). {LEADER_ONLY}");
    gauges(g, "slipway_node_status", &help, status);
    let ages = o
        .nodes
        .iter()
        .filter_map(|n| n.soft.as_ref()?.last_report_age.map(|age| (node_labels(n), age.as_secs_f64())))
        .collect();
    let help = format!("Seconds since the node's last report reached the leader. {LEADER_ONLY}");
    gauges(g, "slipway_node_last_report_age_seconds", &help, ages);
    node_gauge(
        g,
        o,
        "slipway_node_build_fs_available_bytes",
        "Free bytes on the node's build filesystem",
        |r| r.build_fs_available_bytes,
    );
    node_gauge(g, o, "slipway_node_build_fs_total_bytes", "Size of the node's build filesystem", |r| {
        r.build_fs_total_bytes
    });
    node_gauge(g, o, "slipway_node_cpus", "CPUs of the node", |r| r.cpu_count);
    node_gauge(g, o, "slipway_node_cpu_usage_percent", "CPU use of the whole node, 0-100", |r| {
        f64::from(r.cpu_usage_percent)
    });
    node_gauge(g, o, "slipway_node_load1", "Load average over 1 minute", |r| r.load_1m);
    node_gauge(g, o, "slipway_node_memory_total_bytes", "Memory of the node", |r| r.memory_total_bytes);
    node_gauge(g, o, "slipway_node_memory_available_bytes", "Memory available on the node", |r| {
        r.memory_available_bytes
    });
    node_gauge(g, o, "slipway_node_running_builds", "Builds the agent runs, by its last report", |r| {
        r.running_builds
    });
    node_gauge(g, o, "slipway_node_build_slots", "Builds the agent runs at once, at most", |r| r.build_slots);
    node_gauge(
        g,
        o,
        "slipway_node_cache_bytes",
        "Bytes held by slipway's images on the node's engine",
        |r| r.cache_bytes,
    );
    node_gauge(g, o, "slipway_node_engine_healthy", "1 if the node's Docker engine answers its agent", |r| {
        u32::from(r.docker_healthy)
    });
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use slipway_proto::NodeReport;

    use super::*;
    use crate::fleet::NodeSoftState;
    use crate::http::overview::{MemberRow, NodeRow, RaftOverview};
    use crate::state::NodeRecord;
    use slipway_testkit::exposition::{check, Sample};

    fn node(id: &str, name: &str, report: Option<NodeReport>) -> NodeRow {
        NodeRow {
            record: NodeRecord {
                id: id.into(),
                name: name.into(),
                labels: BTreeMap::new(),
                draining: false,
                registered_at_ms: 0,
            },
            soft: Some(NodeSoftState {
                liveness: if report.is_some() { Liveness::Ready } else { Liveness::Unknown },
                last_report_age: report.as_ref().map(|_| Duration::from_millis(1500)),
                report,
                connected: true,
                refusal: None,
            }),
            assigned: 0,
        }
    }

    fn overview(leading: bool) -> Overview {
        let report = NodeReport {
            build_fs_total_bytes: 100 << 30,
            build_fs_available_bytes: 40 << 30,
            cpu_count: 4,
            cpu_usage_percent: f32::NAN,
            load_1m: 0.5,
            memory_total_bytes: 8 << 30,
            memory_available_bytes: 6 << 30,
            build_slots: 2,
            running_builds: 1,
            cache_bytes: 123,
            docker_healthy: true,
            ..Default::default()
        };
        let mut nodes = vec![
            node("n-1", "plain", Some(report.clone())),
            node("n-2", "we\"ird\\na\nme", Some(report)),
            node("n-3", "silent", None),
        ];
        nodes[2].record.draining = true;
        if !leading {
            for n in &mut nodes {
                n.soft = None;
            }
        }
        let mut delays = ReportDelays::default();
        delays.counts[0] = 3;
        delays.sum_seconds = 0.002;
        Overview {
            now_ms: 10_000,
            leading,
            raft: RaftOverview {
                member_id: 1,
                role: if leading { "leader" } else { "follower" }.into(),
                term: 3,
                leader_id: Some(1),
                leader_addr: Some("10.0.0.1:7400".into()),
                last_log_index: 42,
                commit_index: Some(42),
                last_applied: 41,
                snapshot_index: 0,
                purged_index: 0,
                members: vec![
                    MemberRow { id: 1, addr: "10.0.0.1:7400".into(), voter: true, matched: Some(42) },
                    MemberRow { id: 2, addr: "10.0.0.2:7400".into(), voter: false, matched: None },
                ],
            },
            nodes,
            builds_by_state: [2, 0, 0, 5, 0, 0],
            oldest_queued_ms: Some(4_000),
            apps: Vec::new(),
            recent_builds: Vec::new(),
            cache_doctor: Default::default(),
            recent_releases: Vec::new(),
            placements: (7, 11),
            report_delays: delays,
            builds_pruned: 0,
            build_logs: Default::default(),
            storage: crate::raft::space::SpaceStatus {
                free_bytes: Some(300 << 20),
                min_free_bytes: 256 << 20,
            },
        }
    }

    fn find<'a>(samples: &'a [Sample], name: &str, node: &str) -> Option<&'a Sample> {
        samples.iter().find(|s| s.name == name && s.label("node").is_none_or(|n| n == node))
    }

    #[test]
    fn the_leaders_text_parses_back_with_every_family_typed() {
        let text = render(&overview(true));
        let samples = check(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let weird = "we\"ird\\na\nme";
        assert!(text.contains(r#"node="we\"ird\\na\nme""#), "escaped label:\n{text}");
        let fs = find(&samples, "slipway_node_build_fs_available_bytes", weird).expect("weird node's gauge");
        assert_eq!((fs.label("node_id"), fs.value), (Some("n-2"), (40u64 << 30) as f64));
        assert!(find(&samples, "slipway_node_cpu_usage_percent", "plain").unwrap().value.is_nan());
        assert_eq!(find(&samples, "slipway_node_last_report_age_seconds", "plain").unwrap().value, 1.5);
        let ready: Vec<_> = samples
            .iter()
            .filter(|s| s.name == "slipway_node_status" && s.label("status") == Some("ready"))
            .collect();
        assert_eq!(ready.iter().map(|s| s.value).collect::<Vec<_>>(), [1.0, 1.0, 0.0]);
        assert!(find(&samples, "slipway_node_cpus", "silent").is_none(), "no report, no report gauges");
        assert_eq!(find(&samples, "slipway_node_draining", "silent").unwrap().value, 1.0);
        let value = |name: &str| samples.iter().find(|s| s.name == name).map(|s| s.value);
        assert_eq!(value("slipway_build_queue_length"), Some(2.0));
        assert_eq!(value("slipway_build_queue_oldest_seconds"), Some(6.0));
        assert_eq!(value("slipway_raft_commit_index"), Some(42.0));
        assert_eq!(value("slipway_raft_members"), Some(2.0));
        assert_eq!(value("slipway_raft_voters"), Some(1.0));
        assert_eq!(value("slipway_report_delay_seconds_count"), Some(3.0));
        assert_eq!(value("slipway_storage_free_bytes"), Some((300u64 << 20) as f64));
        assert_eq!(value("slipway_storage_min_free_bytes"), Some((256u64 << 20) as f64));
        let placed = samples
            .iter()
            .find(|s| s.name == "slipway_placement_decisions_total" && s.label("outcome") == Some("no_node"));
        assert_eq!(placed.map(|s| s.value), Some(11.0));
        assert!(text.contains("slipway_report_delay_seconds_bucket{le=\"+Inf\"} 3\n"), "{text}");
    }

    #[test]
    fn a_follower_exports_node_records_without_report_gauges() {
        let text = render(&overview(false));
        let samples = check(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let names: std::collections::BTreeSet<_> = samples.iter().map(|s| s.name.as_str()).collect();
        assert!(names.contains("slipway_node_info") && names.contains("slipway_node_draining"));
        assert_eq!(samples.iter().filter(|s| s.name == "slipway_node_info").count(), 3);
        for name in names {
            assert!(
                !name.starts_with("slipway_node_")
                    || name == "slipway_node_info"
                    || name == "slipway_node_draining",
                "{name} on a follower"
            );
            assert_ne!(name, "slipway_raft_member_matched_index");
        }
        assert!(samples
            .iter()
            .any(|s| s.name == "slipway_raft_role" && s.label("role") == Some("follower") && s.value == 1.0));
    }

    #[test]
    fn values_are_spelled_as_prometheus_does() {
        let mut registry = Registry::default();
        for (name, value) in
            [("plus_inf", f64::INFINITY), ("minus_inf", f64::NEG_INFINITY), ("quarter", 0.25)]
        {
            gauge(&mut registry, name, "A value", value);
        }
        gauge(&mut registry, "big", "A value", 1e21);
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        for line in ["plus_inf +Inf\n", "minus_inf -Inf\n", "quarter 0.25\n"] {
            assert!(text.contains(line), "{line:?} in:\n{text}");
        }
        let samples = check(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(samples.iter().find(|s| s.name == "big").map(|s| s.value), Some(1e21), "{text}");
    }
}
