//! Cluster membership for the control API (`ClusterStatus`, `AddMember`,
//! `RemoveMember`): this member's view of the cluster, the check a joining scheduler
//! passes before it is added, and how membership errors reach the operator.

use std::time::Duration;

use slipway_proto as pb;
use tonic::Status;

use crate::context::Context;
use crate::error::Error;
use crate::raft;

/// This member's view of the cluster.
pub(super) fn cluster_status(ctx: &Context) -> pb::ClusterStatusResponse {
    let metrics = ctx.store.raft().metrics().borrow().clone();
    let membership = metrics.membership_config.membership();
    let voters: Vec<u64> = membership.voter_ids().collect();
    let matched = |id: &u64| {
        let replication = metrics.replication.as_ref()?;
        match replication.get(id) {
            Some(log_id) => log_id.map(|l| l.index),
            // The leader itself: everything it has.
            None if *id == metrics.id => metrics.last_log_index,
            None => None,
        }
    };
    let members = membership
        .nodes()
        .map(|(id, node)| pb::ClusterMember {
            id: *id,
            addr: node.addr.clone(),
            voter: voters.contains(id),
            matched_index: matched(id).unwrap_or_default(),
        })
        .collect();
    pb::ClusterStatusResponse {
        node_id: metrics.id,
        leader_id: metrics.current_leader.unwrap_or_default(),
        term: metrics.current_term,
        last_log_index: metrics.last_log_index.unwrap_or_default(),
        last_applied_index: metrics.last_applied.map_or(0, |l| l.index),
        members,
        state: format!("{:?}", metrics.state),
        snapshot_index: metrics.snapshot.map_or(0, |l| l.index),
        purged_index: metrics.purged.map_or(0, |l| l.index),
    }
}

/// Asks the scheduler at `addr` who it is before it is added: it must answer, carry
/// the expected id (if one was given), and not belong to another cluster. Returns its id.
pub(super) async fn probe_joiner(ctx: &Context, addr: &str, expected: u64) -> Result<u64, Status> {
    let unreachable = |e: String| {
        Status::unavailable(format!(
            "cannot reach the joining scheduler at {addr} from the leader ({e}); is it running, with \
             advertise = \"{addr}\", and is that address reachable from the other schedulers?"
        ))
    };
    // As a scheduler (its certificate), which the joiner's control API admits.
    let endpoint = ctx
        .store
        .peers()
        .endpoint(addr)
        .map_err(|e| Status::invalid_argument(format!("bad address {addr:?}: {e}")))?
        .timeout(Duration::from_secs(5));
    let channel = endpoint.connect().await.map_err(|e| unreachable(e.to_string()))?;
    let theirs = pb::control_client::ControlClient::new(channel)
        .cluster_status(pb::ClusterStatusRequest {})
        .await
        .map_err(|e| unreachable(e.message().to_string()))?
        .into_inner();
    if expected != 0 && theirs.node_id != expected {
        return Err(Status::invalid_argument(format!(
            "the scheduler at {addr} has node_id {}, not {expected}",
            theirs.node_id
        )));
    }
    let ours = ctx.store.raft().metrics().borrow().membership_config.membership().clone();
    let same_cluster = theirs.members.iter().any(|m| ours.get_node(&m.id).is_some_and(|n| n.addr == m.addr));
    if !theirs.members.is_empty() && !same_cluster {
        let listed: Vec<String> = theirs.members.iter().map(|m| format!("{}@{}", m.id, m.addr)).collect();
        return Err(Status::failed_precondition(format!(
            "the scheduler at {addr} already belongs to another cluster (members {}); to join it here, \
             stop it, empty its data_dir, and start it with join = true under [cluster]",
            listed.join(", ")
        )));
    }
    Ok(theirs.node_id)
}

/// A membership change's error as a gRPC status.
pub(super) fn membership_status(e: raft::MembershipError) -> Status {
    use raft::MembershipError as M;
    match e {
        M::NotLeader { leader_addr } => Error::NotLeader { leader: leader_addr }.into(),
        M::Conflict(_) => Status::failed_precondition(e.to_string()),
        M::NotFound(_) => Status::not_found(e.to_string()),
        M::CatchUp { .. } => Status::deadline_exceeded(e.to_string()),
        M::Raft(_) => Status::unavailable(e.to_string()),
    }
}
