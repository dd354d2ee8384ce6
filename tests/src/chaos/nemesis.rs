//! The nemesis: faults injected into a replicated [`TestCluster`], one at a time, each
//! undone before the next.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::Rng;

use crate::TestCluster;

/// A kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fault {
    /// `kill -9` a member, then restart it from its data dir.
    Kill,
    /// `kill -STOP` a member, then `kill -CONT`.
    Pause,
    /// Cut a member off from the others, both ways.
    Isolate,
    /// Drop traffic between two members only (a non-transitive partition).
    CutLink,
    /// Peers cannot call a member's gRPC port; its own calls to them work.
    OneWay,
    /// Isolate and heal a member over and over.
    Flap,
    /// Rate-limit a member's outgoing traffic (queueing delay).
    Slow,
}

impl Fault {
    /// Every kind.
    pub const ALL: [Fault; 7] =
        [Fault::Kill, Fault::Pause, Fault::Isolate, Fault::CutLink, Fault::OneWay, Fault::Flap, Fault::Slow];

    /// Its name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::Pause => "pause",
            Fault::Isolate => "isolate",
            Fault::CutLink => "cut-link",
            Fault::OneWay => "one-way",
            Fault::Flap => "flap",
            Fault::Slow => "slow",
        }
    }

    /// The kind named `name`.
    pub fn parse(name: &str) -> Option<Fault> {
        Fault::ALL.into_iter().find(|f| f.name() == name)
    }
}

/// A fault as injected: what, on which member(s).
#[derive(Debug, Clone)]
pub struct Injected {
    /// The kind.
    pub fault: Fault,
    /// The member it hit.
    pub target: u64,
    /// The other end of a cut link.
    pub peer: Option<u64>,
    /// Whether the target led when it was hit.
    pub hit_leader: bool,
}

/// Injects `fault` on `target` (and `peer`, for a cut link).
pub async fn inject(cluster: &TestCluster, fault: Fault, target: u64, peer: u64) {
    let lab = cluster.lab().expect("a replicated cluster");
    let node = cluster.member_node(target).expect("a member in the lab");
    match fault {
        Fault::Kill => cluster.kill_member(target),
        Fault::Pause => cluster.pause_member(target),
        Fault::Isolate => cluster.isolate(target),
        Fault::CutLink => lab.cut_between(node, cluster.member_node(peer).expect("a member in the lab")),
        Fault::OneWay => lab.block_inbound(node, cluster.member_grpc_port()),
        Fault::Flap => cluster.isolate(target),
        Fault::Slow => lab.throttle(node, 96, Duration::from_millis(400)),
    }
}

/// Holds `fault` for `hold` (flapping the link meanwhile for [`Fault::Flap`]).
pub async fn hold(cluster: &TestCluster, fault: Fault, target: u64, hold: Duration, rng: &mut StdRng) {
    let end = Instant::now() + hold;
    if fault != Fault::Flap {
        tokio::time::sleep(hold).await;
        return;
    }
    let mut cut = true;
    while Instant::now() < end {
        let step = Duration::from_millis(rng.random_range(150..=700)).min(end - Instant::now());
        tokio::time::sleep(step).await;
        if cut {
            cluster.heal(target);
        } else {
            cluster.isolate(target);
        }
        cut = !cut;
    }
}

/// Undoes `fault`: restarts a killed member, continues a paused one, heals the links.
pub async fn undo(cluster: &TestCluster, fault: Fault, target: u64) {
    match fault {
        Fault::Kill => cluster.start_member(target).await,
        Fault::Pause => cluster.resume_member(target),
        _ => cluster.heal(target),
    }
}
