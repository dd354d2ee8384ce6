//! [`Overview`]: what the HTTP side shows of this member, taken once per request and
//! rendered by both the fleet page and `/metrics`: what this member has applied of the
//! replicated state, its raft metrics, and — on the leader only — the fleet's soft state
//! (reports, liveness), which followers do not have.

use std::time::Duration;

use openraft::ServerState;

use crate::context::Context;
use crate::fleet::{NodeSoftState, ReportDelays};
use crate::state::{Build, BuildState, NodeRecord, Release};

/// Rows of the recent builds and recent releases tables.
pub const RECENT: usize = 20;

/// What the HTTP side shows of this member, taken once per request.
#[derive(Debug, Clone)]
pub struct Overview {
    /// Wall clock when it was taken (ages are relative to it).
    pub now_ms: u64,
    /// This member leads and has taken over the fleet: node soft state is known.
    pub leading: bool,
    /// This member's raft view.
    pub raft: RaftOverview,
    /// Registered nodes, by id.
    pub nodes: Vec<NodeRow>,
    /// Builds per state, indexed by `BuildState as usize`.
    pub builds_by_state: [u64; 6],
    /// When the longest-waiting queued build entered the queue.
    pub oldest_queued_ms: Option<u64>,
    /// Every app with its current release.
    pub apps: Vec<AppRow>,
    /// The last [`RECENT`] builds, newest first.
    pub recent_builds: Vec<Build>,
    /// The cache doctor's finding for those of [`Self::recent_builds`] it has one for, by
    /// build id.
    pub cache_doctor: std::collections::BTreeMap<String, crate::state::cache_doctor::Diagnosis>,
    /// The last [`RECENT`] releases of all apps, newest first.
    pub recent_releases: Vec<Release>,
    /// Placement decisions (placed, no node) since this member started.
    pub placements: (u64, u64),
    /// How late agents' reports arrive.
    pub report_delays: ReportDelays,
    /// Finished builds the build retention removed (replicated count).
    pub builds_pruned: u64,
    /// This member's build log directory.
    pub build_logs: crate::events::LogDirStatus,
    /// This member's data dir: its free space and the floor below which new work is
    /// refused (`raft::space`).
    pub storage: crate::raft::space::SpaceStatus,
}

/// This member's raft view.
#[derive(Debug, Clone, PartialEq)]
pub struct RaftOverview {
    /// This member's id.
    pub member_id: u64,
    /// `leader`, `candidate`, `follower`, `learner` or `shutdown`.
    pub role: String,
    /// The current term.
    pub term: u64,
    /// Who leads, if known.
    pub leader_id: Option<u64>,
    /// The leader's advertised gRPC address.
    pub leader_addr: Option<String>,
    /// Index of the last entry in the log.
    pub last_log_index: u64,
    /// None when the raft core did not answer in time.
    pub commit_index: Option<u64>,
    /// Index of the last entry applied.
    pub last_applied: u64,
    /// Index the last snapshot covers.
    pub snapshot_index: u64,
    /// Index up to which the log was purged.
    pub purged_index: u64,
    /// The members as this one knows them.
    pub members: Vec<MemberRow>,
}

/// One cluster member.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberRow {
    /// The member's raft id.
    pub id: u64,
    /// Advertised gRPC address.
    pub addr: String,
    /// Votes (false: a learner catching up).
    pub voter: bool,
    /// Last log index the leader knows it holds (known on the leader only).
    pub matched: Option<u64>,
}

/// A registered node with what the leader knows of it.
#[derive(Debug, Clone)]
pub struct NodeRow {
    /// The replicated node record.
    pub record: NodeRecord,
    /// Liveness and last report: None on a follower.
    pub soft: Option<NodeSoftState>,
    /// Builds the state has assigned to it and not finished.
    pub assigned: u32,
}

/// An app and the release it runs.
#[derive(Debug, Clone, PartialEq)]
pub struct AppRow {
    /// The app's name.
    pub name: String,
    /// The release its service runs (0: none).
    pub current_release: u64,
    /// Digest of the current release (empty when never deployed).
    pub digest: String,
    /// How many releases it has.
    pub releases: usize,
    /// Where it answers (router names, published port).
    pub urls: Vec<String>,
}

impl Overview {
    /// Takes the overview: raft metrics, the applied state, and the fleet's soft state
    /// when this member leads.
    pub async fn gather(ctx: &Context) -> Overview {
        let storage = ctx.store.space().status();
        let m = ctx.store.raft().metrics().borrow().clone();
        let committed = ctx.store.raft().with_raft_state(|st| st.committed.map_or(0, |l| l.index));
        let commit_index =
            tokio::time::timeout(Duration::from_secs(1), committed).await.ok().and_then(Result::ok);
        let membership = m.membership_config.membership();
        let voters: Vec<u64> = membership.voter_ids().collect();
        let matched = |id: u64| {
            let replication = m.replication.as_ref()?;
            match replication.get(&id) {
                Some(log_id) => Some(log_id.map_or(0, |l| l.index)),
                None if id == m.id => m.last_log_index,
                None => None,
            }
        };
        let members = membership
            .nodes()
            .map(|(id, node)| MemberRow {
                id: *id,
                addr: node.addr.clone(),
                voter: voters.contains(id),
                matched: matched(*id),
            })
            .collect();
        let raft = RaftOverview {
            member_id: m.id,
            role: match m.state {
                ServerState::Leader => "leader",
                ServerState::Candidate => "candidate",
                ServerState::Follower => "follower",
                ServerState::Learner => "learner",
                ServerState::Shutdown => "shutdown",
            }
            .into(),
            term: m.current_term,
            leader_id: m.current_leader,
            leader_addr: m.current_leader.and_then(|l| membership.get_node(&l)).map(|n| n.addr.clone()),
            last_log_index: m.last_log_index.unwrap_or(0),
            commit_index,
            last_applied: m.last_applied.map_or(0, |l| l.index),
            snapshot_index: m.snapshot.map_or(0, |l| l.index),
            purged_index: m.purged.map_or(0, |l| l.index),
            members,
        };
        let leading = ctx.store.is_leader() && ctx.fleet.is_leading();
        let mut overview = ctx.store.read(|s| {
            let mut builds_by_state = [0u64; 6];
            let mut assigned = std::collections::HashMap::<&str, u32>::new();
            for b in s.builds.values() {
                builds_by_state[b.state as usize] += 1;
                if matches!(b.state, BuildState::Assigned | BuildState::Running) {
                    if let Some(node) = b.node_id.as_deref() {
                        *assigned.entry(node).or_default() += 1;
                    }
                }
            }
            let oldest_queued_ms = s
                .builds
                .values()
                .filter(|b| b.state == BuildState::Queued)
                .map(|b| if b.queued_at_ms == 0 { b.created_at_ms } else { b.queued_at_ms })
                .min();
            let mut recent_builds: Vec<&Build> = s.builds.values().collect();
            recent_builds.sort_by_key(|b| std::cmp::Reverse(crate::state::build_seq(&b.id)));
            let mut recent_releases: Vec<&Release> = s.releases.values().flatten().collect();
            recent_releases.sort_by_key(|r| std::cmp::Reverse((r.created_at_ms, r.number)));
            Overview {
                now_ms: slipway_common::now_ms(),
                leading,
                raft,
                nodes: s
                    .nodes
                    .values()
                    .map(|n| NodeRow {
                        record: n.clone(),
                        soft: None,
                        assigned: assigned.get(n.id.as_str()).copied().unwrap_or(0),
                    })
                    .collect(),
                builds_by_state,
                oldest_queued_ms,
                apps: s
                    .apps
                    .values()
                    .map(|a| {
                        let releases = s.releases.get(&a.name).map_or(&[][..], Vec::as_slice);
                        AppRow {
                            name: a.name.clone(),
                            current_release: a.current_release,
                            digest: releases
                                .iter()
                                .find(|r| r.number == a.current_release)
                                .map(|r| r.digest.clone())
                                .unwrap_or_default(),
                            releases: releases.len(),
                            urls: crate::router::routes::app_urls(
                                s,
                                &a.name,
                                &ctx.config.router.domain,
                                ctx.config.router.http_port,
                            ),
                        }
                    })
                    .collect(),
                cache_doctor: recent_builds
                    .iter()
                    .take(RECENT)
                    .filter_map(|b| Some((b.id.clone(), crate::state::cache_doctor::for_build(s, b)?)))
                    .collect(),
                recent_builds: recent_builds.into_iter().take(RECENT).cloned().collect(),
                recent_releases: recent_releases.into_iter().take(RECENT).cloned().collect(),
                placements: ctx.dispatch.placements.get(),
                report_delays: ctx.fleet.report_delays(),
                builds_pruned: s.pruned_builds,
                build_logs: ctx.events.log_dir_status(),
                storage,
            }
        });
        if leading {
            let down_after = ctx.config.down_after();
            for n in &mut overview.nodes {
                n.soft = Some(ctx.fleet.soft_state(&n.record.id, down_after));
            }
        }
        overview
    }

    /// Builds in `state`.
    pub fn builds_in(&self, state: BuildState) -> u64 {
        self.builds_by_state[state as usize]
    }

    /// A node's name, or its id if it is not registered.
    pub fn node_name<'a>(&'a self, id: &'a str) -> &'a str {
        self.nodes.iter().find(|n| n.record.id == id).map_or(id, |n| n.record.name.as_str())
    }
}
