//! Changing who is in the cluster, on the leader: [`add_member`] (a learner first, a
//! voter once it has caught up) and [`remove_member`].
//!
//! Both are idempotent, so an operator (or the CLI) can retry them after a timeout or
//! a failover: adding a member that is already a voter at the same address, or removing
//! one that is already gone, changes nothing. Neither leaves a half-made change behind:
//! a learner that cannot catch up in time is taken out again before the error returns.

use std::collections::BTreeSet;
use std::time::Duration;

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, ServerState};

use super::{leader_addr, NodeId, Raft};

/// Why a membership change did not happen.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// Only the leader changes membership.
    #[error("this scheduler is not the leader{}", .leader_addr.as_ref().map(|a| format!("; the leader is at {a}")).unwrap_or_default())]
    NotLeader {
        /// The leader's address, if one is known.
        leader_addr: Option<String>,
    },
    /// The change contradicts the current membership.
    #[error("{0}")]
    Conflict(String),
    /// No member has this id.
    #[error("scheduler {0} is not a member of this cluster; `slipway cluster status` lists the members")]
    NotFound(NodeId),
    /// The new member did not catch up with the leader's log in time; it was taken out again.
    #[error(
        "scheduler {id} at {addr} did not catch up with the leader within {secs} s, so it was not added: \
         is it running with `join = true` under [cluster], and can the leader reach {addr}?",
        secs = .waited.as_secs()
    )]
    CatchUp {
        /// The new member's id.
        id: NodeId,
        /// Its address.
        addr: String,
        /// How long the leader waited.
        waited: Duration,
    },
    /// openraft refused or failed the change (another change under way, storage).
    #[error("raft refused the membership change: {0}")]
    Raft(String),
}

/// What [`add_member`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    /// The scheduler is now a voter.
    Joined,
    /// It already was a voter at that address; nothing changed.
    AlreadyMember,
}

fn require_leader(raft: &Raft) -> Result<(), MembershipError> {
    let metrics = raft.metrics();
    let m = metrics.borrow();
    if m.state == ServerState::Leader && m.current_leader == Some(m.id) {
        return Ok(());
    }
    drop(m);
    Err(MembershipError::NotLeader { leader_addr: leader_addr(raft) })
}

fn refused(e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> MembershipError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(to)) => {
            MembershipError::NotLeader { leader_addr: to.leader_node.map(|n| n.addr) }
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(ChangeMembershipError::InProgress(
            e,
        ))) => MembershipError::Conflict(format!(
            "another membership change is still being committed ({e}); retry in a moment"
        )),
        other => MembershipError::Raft(other.to_string()),
    }
}

/// Adds scheduler `id` at `addr` as a voter: as a learner first, which receives the
/// log (or a snapshot) until it has caught up, then promoted. Waits at most `catch_up`
/// for the learner; if it does not catch up, it is removed again.
pub async fn add_member(
    raft: &Raft,
    id: NodeId,
    addr: &str,
    catch_up: Duration,
) -> Result<Added, MembershipError> {
    require_leader(raft)?;
    let membership = raft.metrics().borrow().membership_config.membership().clone();
    let is_voter = membership.voter_ids().any(|v| v == id);
    match membership.get_node(&id) {
        Some(node) if node.addr != addr => {
            return Err(MembershipError::Conflict(format!(
                "scheduler {id} is already a member at {}; remove it first (`slipway cluster remove {id}`) \
                 or give the new scheduler another node_id",
                node.addr
            )))
        }
        Some(_) if is_voter => return Ok(Added::AlreadyMember),
        _ => {}
    }
    if let Some((other, _)) = membership.nodes().find(|(other, n)| **other != id && n.addr == addr) {
        return Err(MembershipError::Conflict(format!(
            "{addr} is already the address of scheduler {other}; each member needs its own address"
        )));
    }

    let node = BasicNode { addr: addr.to_string() };
    tracing::info!(id, addr, "adding a learner; waiting for it to catch up");
    let added = async {
        let added = raft.add_learner(id, node, true).await.map_err(refused)?;
        learner_holds(raft, id, added.log_id.index).await
    };
    match tokio::time::timeout(catch_up, added).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(_elapsed) => {
            let secs = catch_up.as_secs();
            tracing::warn!(id, addr, secs, "learner did not catch up in time; removing it again");
            let change = ChangeMembers::RemoveNodes(BTreeSet::from([id]));
            match raft.change_membership(change, false).await {
                Ok(_) => tracing::warn!(id, addr, secs, "took out the learner that did not catch up"),
                Err(e) => {
                    tracing::error!(id, error = %e, "could not remove the learner that did not catch up")
                }
            }
            return Err(MembershipError::CatchUp { id, addr: addr.to_string(), waited: catch_up });
        }
    }
    let change = ChangeMembers::AddVoterIds(BTreeSet::from([id]));
    raft.change_membership(change, false).await.map_err(refused)?;
    tracing::info!(id, addr, "scheduler joined the cluster as a voter");
    Ok(Added::Joined)
}

/// Waits until learner `id` holds the log up to `index` (the entry that added it), as
/// the leader's replication to it reports. openraft's blocking `add_learner` alone is
/// not enough: it counts a learner fewer than `replication_lag_threshold` (at least
/// 5000) entries behind as caught up, even one that never answered.
async fn learner_holds(raft: &Raft, id: NodeId, index: u64) -> Result<(), MembershipError> {
    let mut metrics = raft.metrics();
    loop {
        let holds = {
            let m = metrics.borrow_and_update();
            m.replication.as_ref().map(|r| r.get(&id).is_some_and(|l| l.is_some_and(|l| l.index >= index)))
        };
        match holds {
            Some(true) => return Ok(()),
            Some(false) => {}
            None => return Err(MembershipError::NotLeader { leader_addr: leader_addr(raft) }),
        }
        if metrics.changed().await.is_err() {
            return Err(MembershipError::Raft("raft stopped while the learner caught up".into()));
        }
    }
}

/// Removes scheduler `id` (voter or learner) from the cluster. The removed scheduler
/// stops receiving the log; its votes are refused by the members (see the raft
/// service), so it cannot disturb them even if it missed its own removal.
pub async fn remove_member(raft: &Raft, id: NodeId) -> Result<(), MembershipError> {
    require_leader(raft)?;
    let membership = raft.metrics().borrow().membership_config.membership().clone();
    if membership.get_node(&id).is_none() {
        return Err(MembershipError::NotFound(id));
    }
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let change = if voters.contains(&id) {
        if voters.len() == 1 {
            return Err(MembershipError::Conflict(format!(
                "scheduler {id} is the only voter; a cluster cannot remove its last member \
                 (stop the scheduler instead)"
            )));
        }
        ChangeMembers::RemoveVoters(BTreeSet::from([id]))
    } else {
        ChangeMembers::RemoveNodes(BTreeSet::from([id]))
    };
    raft.change_membership(change, false).await.map_err(refused)?;
    tracing::info!(id, "scheduler removed from the cluster");
    Ok(())
}
