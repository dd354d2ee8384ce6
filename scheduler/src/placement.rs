//! Placement: which node builds what, and why every other node was not chosen.
//!
//! A pure function from (build, node views) to a [`Decision`], in the style of
//! SwarmKit's scheduler filters: each [`Filter`] either passes a node or rejects it with
//! a reason a person can act on; the nodes that pass are ranked by [`score`]. Ties are
//! broken by node name, then id, so placement never picks at random between nodes.

use slipway_proto::NodeReport;

/// Liveness of a node as the leader sees it (soft state, never replicated).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Reporting within the liveness window.
    Ready,
    /// Silent for longer than the liveness window.
    Down,
    /// This leader has not heard from the node yet.
    Unknown,
}

/// What placement knows about one node.
#[derive(Debug, Clone)]
pub struct NodeView<'a> {
    /// The node's id (from its certificate).
    pub id: &'a str,
    /// The node's name, for explanations.
    pub name: &'a str,
    /// Whether the node reports.
    pub liveness: Liveness,
    /// Drained by an operator: no new builds.
    pub draining: bool,
    /// Latest report, if any.
    pub report: Option<&'a NodeReport>,
    /// Builds the replicated state has assigned to this node and not yet finished:
    /// counted even before the node's next report shows them.
    pub assigned_builds: u32,
    /// Why the node's agent refused a build recently (its disk is below its floor).
    pub refusal: Option<&'a str>,
}

/// What the build needs.
#[derive(Debug, Clone)]
pub struct BuildNeeds<'a> {
    /// The app to build (cache affinity is per app).
    pub app: &'a str,
    /// Free bytes the build filesystem must keep: the configured floor plus the size of
    /// the app's last image.
    pub min_free_bytes: u64,
    /// Node that built the app last (its layers are cached there).
    pub last_built_on: Option<&'a str>,
}

/// One reason a node was not chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The rejected node's id.
    pub node_id: String,
    /// The rejected node's name.
    pub node_name: String,
    /// Why it cannot take the build now.
    pub reason: String,
}

/// The outcome: a node, or none with every node's reason.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Chosen node id.
    pub chosen: Option<String>,
    /// Nodes the filters rejected, with why.
    pub rejected: Vec<Rejection>,
    /// Feasible nodes ranked best first, with their scores (for explanations and tests).
    pub ranking: Vec<(String, f64)>,
}

impl Decision {
    /// One line per rejected node, for the queue explanation shown to operators.
    pub fn explain(&self) -> String {
        if self.rejected.is_empty() && self.chosen.is_none() {
            return "no nodes are registered: start an agent (slipway-agent) on a Swarm node".into();
        }
        self.rejected.iter().map(|r| format!("{}: {}", r.node_name, r.reason)).collect::<Vec<_>>().join("; ")
    }
}

/// A filter passes a node or says why not.
pub type Filter = fn(&NodeView<'_>, &BuildNeeds<'_>) -> Result<(), String>;

/// The filters, in the order their reasons are reported.
pub const FILTERS: &[(&str, Filter)] = &[
    ("ready", ready),
    ("active", not_draining),
    ("engine", engine_healthy),
    ("accepting", accepting),
    ("slots", free_slot),
    ("disk", enough_disk),
];

fn ready(node: &NodeView<'_>, _: &BuildNeeds<'_>) -> Result<(), String> {
    match node.liveness {
        Liveness::Ready => Ok(()),
        Liveness::Down => Err("node is down (no report within the grace period)".into()),
        Liveness::Unknown => Err("node has not reported to this leader yet".into()),
    }
}

fn not_draining(node: &NodeView<'_>, _: &BuildNeeds<'_>) -> Result<(), String> {
    if node.draining {
        Err("node is draining (`slipway nodes activate` to use it again)".into())
    } else {
        Ok(())
    }
}

fn engine_healthy(node: &NodeView<'_>, _: &BuildNeeds<'_>) -> Result<(), String> {
    match node.report {
        Some(r) if r.docker_healthy => Ok(()),
        Some(r) if r.docker_error.is_empty() => Err("its Docker engine does not answer the agent".into()),
        Some(r) => Err(format!("its Docker engine does not answer the agent: {}", r.docker_error)),
        None => Err("no report yet".into()),
    }
}

fn accepting(node: &NodeView<'_>, _: &BuildNeeds<'_>) -> Result<(), String> {
    match node.refusal {
        Some(reason) => Err(format!("its agent refused a build just now: {reason}")),
        None => Ok(()),
    }
}

fn free_slot(node: &NodeView<'_>, _: &BuildNeeds<'_>) -> Result<(), String> {
    let Some(r) = node.report else { return Err("no report yet".into()) };
    let running = r.running_builds.max(node.assigned_builds);
    if running < r.build_slots {
        Ok(())
    } else {
        Err(format!("all {} build slots are busy", r.build_slots))
    }
}

fn enough_disk(node: &NodeView<'_>, needs: &BuildNeeds<'_>) -> Result<(), String> {
    let Some(r) = node.report else { return Err("no report yet".into()) };
    // A build ran out of space there: its agent waits for the room that build needed.
    if r.build_fs_floor_bytes > r.build_fs_available_bytes {
        return Err(format!(
            "build filesystem has {} free, below the floor of {} its agent raised: {}",
            human_bytes(r.build_fs_available_bytes),
            human_bytes(r.build_fs_floor_bytes),
            if r.build_fs_floor_reason.is_empty() {
                "a build ran out of space there"
            } else {
                r.build_fs_floor_reason.as_str()
            }
        ));
    }
    if r.build_fs_available_bytes >= needs.min_free_bytes {
        Ok(())
    } else {
        Err(format!(
            "build filesystem has {} free, needs at least {}",
            human_bytes(r.build_fs_available_bytes),
            human_bytes(needs.min_free_bytes)
        ))
    }
}

/// Score of a feasible node: higher is better.
///
/// - cache affinity: +100 if the node built this app last or reports holding its layers
///   (a warm rebuild beats any headroom difference);
/// - CPU headroom: up to +30, the idle share of its CPUs by the 1-minute load average
///   (the kernel's smoothed run queue: the instantaneous usage swings with every
///   sample, and equal nodes would swap ranks report by report);
/// - disk headroom: up to +20 (free share of the build filesystem);
/// - load: −10 per build already running there.
///
/// Both headroom shares count in steps of [`HEADROOM_STEP`], so nodes whose headroom
/// differs by noise are equal and the tie goes to the name: placement prefers a node
/// for a difference an operator would see on `slipway nodes`, not for a few bytes.
pub fn score(node: &NodeView<'_>, needs: &BuildNeeds<'_>) -> f64 {
    let Some(r) = node.report else { return f64::MIN };
    let affinity = needs.last_built_on == Some(node.id) || r.cached_apps.iter().any(|a| a == needs.app);
    let cpu_idle = if r.cpu_count == 0 { 0.0 } else { 1.0 - r.load_1m / f64::from(r.cpu_count) };
    let disk_free = if r.build_fs_total_bytes == 0 {
        0.0
    } else {
        r.build_fs_available_bytes as f64 / r.build_fs_total_bytes as f64
    };
    let running = r.running_builds.max(node.assigned_builds);
    (if affinity { 100.0 } else { 0.0 }) + 30.0 * headroom_share(cpu_idle) + 20.0 * headroom_share(disk_free)
        - 10.0 * f64::from(running)
}

/// Headroom shares count in steps of 5 %.
pub const HEADROOM_STEP: f64 = 0.05;

/// A share in 0..=1 rounded down to a [`HEADROOM_STEP`]; reports come from agents, so
/// a NaN or out-of-range figure counts as no headroom (or all of it, above 1).
fn headroom_share(share: f64) -> f64 {
    if !share.is_finite() {
        return 0.0;
    }
    ((share.clamp(0.0, 1.0) / HEADROOM_STEP) + 1e-9).floor() * HEADROOM_STEP
}

/// Places one build.
pub fn place(needs: &BuildNeeds<'_>, nodes: &[NodeView<'_>]) -> Decision {
    let mut rejected = Vec::new();
    let mut feasible = Vec::new();
    for node in nodes {
        match FILTERS.iter().find_map(|(_, filter)| filter(node, needs).err()) {
            Some(reason) => rejected.push(Rejection {
                node_id: node.id.to_string(),
                node_name: node.name.to_string(),
                reason,
            }),
            None => feasible.push((node, score(node, needs))),
        }
    }
    feasible.sort_by(|(a, sa), (b, sb)| {
        sb.total_cmp(sa).then_with(|| a.name.cmp(b.name)).then_with(|| a.id.cmp(b.id))
    });
    rejected.sort_by(|a, b| a.node_name.cmp(&b.node_name).then_with(|| a.node_id.cmp(&b.node_id)));
    Decision {
        chosen: feasible.first().map(|(n, _)| n.id.to_string()),
        rejected,
        ranking: feasible.into_iter().map(|(n, s)| (n.id.to_string(), s)).collect(),
    }
}

pub use slipway_proto::human_bytes;

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    /// A node with 4 CPUs, `cpu` percent of them busy (by load), `free_gib` of 100 GiB free.
    fn report(cpu: f64, free_gib: u64, running: u32) -> NodeReport {
        NodeReport {
            build_fs_total_bytes: 100 * GIB,
            build_fs_available_bytes: free_gib * GIB,
            cpu_count: 4,
            load_1m: 4.0 * cpu / 100.0,
            running_builds: running,
            build_slots: 2,
            docker_healthy: true,
            ..Default::default()
        }
    }

    fn view<'a>(id: &'a str, r: &'a NodeReport) -> NodeView<'a> {
        NodeView {
            id,
            name: id,
            liveness: Liveness::Ready,
            draining: false,
            report: Some(r),
            assigned_builds: 0,
            refusal: None,
        }
    }

    fn needs(app: &str) -> BuildNeeds<'_> {
        BuildNeeds { app, min_free_bytes: 2 * GIB, last_built_on: None }
    }

    #[test]
    fn picks_the_node_with_most_headroom() {
        let (busy, idle) = (report(90.0, 50, 0), report(10.0, 50, 0));
        let d = place(&needs("shop"), &[view("a", &busy), view("b", &idle)]);
        assert_eq!(d.chosen.as_deref(), Some("b"));
        assert!(d.rejected.is_empty());
    }

    #[test]
    fn a_node_whose_agent_refused_a_build_is_skipped_with_its_reason() {
        let (r1, r2) = (report(10.0, 50, 0), report(50.0, 50, 0));
        let mut refusing = view("a", &r1);
        refusing.refusal = Some("the build filesystem has 1.0 GiB free, below the floor");
        let d = place(&needs("shop"), &[refusing, view("b", &r2)]);
        assert_eq!(d.chosen.as_deref(), Some("b"));
        assert!(d.rejected[0].reason.contains("refused a build just now: the build filesystem"), "{d:?}");
    }

    #[test]
    fn cache_affinity_never_places_on_a_node_below_its_floor() {
        // The node holding the app's layers is below the floor (its prune was not enough):
        // the build goes elsewhere, and the explanation names the floor.
        let (full, idle) = (report(5.0, 1, 0), report(70.0, 20, 0));
        let mut n = needs("shop");
        n.last_built_on = Some("a");
        let d = place(&n, &[view("a", &full), view("b", &idle)]);
        assert_eq!(d.chosen.as_deref(), Some("b"));
        assert!(d.rejected[0].reason.contains("needs at least 2.0 GiB"), "{d:?}");
    }

    #[test]
    fn a_node_whose_build_ran_out_of_space_is_avoided_until_it_has_the_room() {
        // 50 GiB free is plenty by min_free_bytes, but a build there found 49 GiB too
        // little: its agent raised its floor to 51 GiB.
        let raised = NodeReport {
            build_fs_floor_bytes: 51 * GIB,
            build_fs_floor_reason: "a build ran out of space on /var/lib/slipway/builds".into(),
            ..report(5.0, 50, 0)
        };
        let other = report(70.0, 20, 0);
        let mut n = needs("shop");
        n.last_built_on = Some("a");
        let d = place(&n, &[view("a", &raised), view("b", &other)]);
        assert_eq!(d.chosen.as_deref(), Some("b"), "affinity does not override the floor");
        let reason = &d.rejected[0].reason;
        assert!(reason.contains("50.0 GiB free, below the floor of 51.0 GiB its agent raised"), "{reason}");
        assert!(reason.contains("ran out of space on /var/lib/slipway/builds"), "{reason}");
        // Once the node has the room, it is placed on again.
        let roomy = NodeReport { build_fs_available_bytes: 60 * GIB, ..raised };
        assert_eq!(place(&n, &[view("a", &roomy), view("b", &other)]).chosen.as_deref(), Some("a"));
    }

    #[test]
    fn cache_affinity_wins_over_headroom() {
        let (busy, idle) = (report(70.0, 20, 0), report(5.0, 90, 0));
        let mut n = needs("shop");
        n.last_built_on = Some("a");
        let d = place(&n, &[view("a", &busy), view("b", &idle)]);
        assert_eq!(d.chosen.as_deref(), Some("a"));
    }

    #[test]
    fn every_rejected_node_says_why() {
        let full = report(10.0, 1, 0);
        let busy = report(10.0, 50, 2);
        let ok = report(10.0, 50, 0);
        let sick = NodeReport { docker_healthy: false, ..ok.clone() };
        let mut draining = view("drained", &ok);
        draining.draining = true;
        let mut down = view("down", &ok);
        down.liveness = Liveness::Down;
        let mut unknown = view("unknown", &ok);
        unknown.liveness = Liveness::Unknown;
        let nodes = [view("full", &full), view("busy", &busy), view("sick", &sick), draining, down, unknown];
        let d = place(&needs("shop"), &nodes);
        assert_eq!(d.chosen, None);
        let reasons: Vec<_> = d.rejected.iter().map(|r| (r.node_name.as_str(), r.reason.as_str())).collect();
        assert_eq!(reasons.len(), 6);
        let reason = |n: &str| reasons.iter().find(|(name, _)| *name == n).unwrap().1;
        assert!(reason("full").contains("build filesystem has 1.0 GiB free, needs at least 2.0 GiB"));
        assert!(reason("busy").contains("build slots are busy"));
        assert!(reason("sick").contains("Docker engine"));
        assert!(reason("drained").contains("draining"));
        assert!(reason("down").contains("down"));
        assert!(reason("unknown").contains("not reported"));
        assert!(d.explain().contains("full: build filesystem"));
    }

    #[test]
    fn assignments_not_yet_reported_count_against_slots() {
        let r = report(10.0, 50, 0);
        let mut v = view("a", &r);
        v.assigned_builds = 2;
        assert_eq!(place(&needs("shop"), &[v]).chosen, None);
    }

    #[test]
    fn equal_nodes_are_ordered_by_name_not_chance() {
        let r = report(10.0, 50, 0);
        for _ in 0..10 {
            let d = place(&needs("shop"), &[view("b", &r), view("a", &r), view("c", &r)]);
            assert_eq!(d.chosen.as_deref(), Some("a"));
        }
    }

    #[test]
    fn nonsense_reports_do_not_break_the_ranking() {
        let nan = NodeReport { load_1m: f64::NAN, ..report(10.0, 50, 0) };
        let reports: Vec<NodeReport> = (0..40)
            .map(|i| if i % 2 == 0 { nan.clone() } else { report(f64::from(i) * 2.5, 50, 0) })
            .collect();
        let ids: Vec<String> = (0..40).map(|i| format!("n{i:02}")).collect();
        let views: Vec<NodeView<'_>> = ids.iter().zip(&reports).map(|(id, r)| view(id, r)).collect();
        let d = place(&needs("shop"), &views);
        assert_eq!(d.chosen.as_deref(), Some("n01"), "the idlest sane node wins");
    }

    #[test]
    fn headroom_differences_below_a_step_are_ties_broken_by_name() {
        let (a, b) = (report(22.0, 50, 0), report(21.0, 51, 0));
        let d = place(&needs("shop"), &[view("b", &b), view("a", &a)]);
        assert_eq!(d.chosen.as_deref(), Some("a"), "{d:?}");
        assert_eq!(d.ranking[0].1, d.ranking[1].1);
        // A whole step apart is a difference.
        let c = report(14.0, 50, 0);
        assert_eq!(place(&needs("shop"), &[view("a", &a), view("c", &c)]).chosen.as_deref(), Some("c"));
    }

    #[test]
    fn a_running_build_outweighs_a_little_more_headroom() {
        let (busy, idle) = (report(10.0, 90, 1), report(20.0, 70, 0));
        assert_eq!(place(&needs("shop"), &[view("a", &busy), view("b", &idle)]).chosen.as_deref(), Some("b"));
    }

    #[test]
    fn no_nodes_explains_how_to_add_one() {
        let d = place(&needs("shop"), &[]);
        assert!(d.explain().contains("start an agent"));
    }
}
