//! `slipway cluster status|join|remove|token|admin-cert|admin-revoke`: the raft membership of the
//! schedulers, join tokens, and operator certificates.

use std::time::Duration;

use serde_json::Value;
use slipway_proto::control_client::ControlClient;
use slipway_proto::{self as pb};
use tonic::transport::Channel;
use tonic::Code;

use super::print_json;
use crate::args::ClusterCmd;
use crate::client::{Call, Cluster, Failure, Result};
use crate::output::table;

/// Runs a `cluster` subcommand.
pub async fn run(call: Call<'_>, command: &ClusterCmd) -> Result<()> {
    let Call { client: mut c, cluster: call_cluster, retry, .. } = call;
    match command {
        ClusterCmd::Join { addr, id } => {
            let req = pb::AddMemberRequest { addr: addr.clone(), node_id: id.unwrap_or(0) };
            let status = c.add_member(req).await?.into_inner();
            let joined = status.members.iter().find(|m| m.addr == *addr).map_or(0, |m| m.id);
            println!("scheduler {joined} at {addr} joined the cluster ({} members)", status.members.len());
        }
        ClusterCmd::Remove { id } => {
            match c.remove_member(pb::RemoveMemberRequest { node_id: *id }).await {
                Ok(_) => {}
                Err(s) if retry && s.code() == Code::NotFound => {}
                Err(s) => return Err(s.into()),
            }
            println!(
                "scheduler {id} removed from the cluster; stop it, and empty its data_dir before it joins again"
            );
        }
        ClusterCmd::Status { json } => status(&mut c, call_cluster, *json).await?,
        ClusterCmd::Token { role, rotate } => {
            let req = pb::JoinTokenRequest { role: role.clone(), rotate: *rotate };
            println!("{}", c.join_token(req).await?.into_inner().token);
        }
        ClusterCmd::AdminCert { name, out } => {
            let (key_pem, csr_pem) = slipway_proto::tls::new_key_and_csr().map_err(Failure::fatal)?;
            let req = pb::IssueAdminCertRequest { name: name.clone(), csr_pem };
            let got = c.issue_admin_cert(req).await?.into_inner();
            let creds =
                slipway_proto::tls::Credentials { ca_pem: got.ca_pem, cert_pem: got.cert_pem, key_pem };
            creds.save_dir(out).map_err(Failure::fatal)?;
            println!(
                "operator certificate for {name:?} in {}: point [tls] ca, cert and key of a CLI config at it",
                out.display()
            );
        }
        ClusterCmd::AdminRevoke { name } => {
            c.revoke_admin(pb::RevokeAdminRequest { name: name.clone() }).await?;
            println!(
                "every operator certificate issued to {name:?} so far is denied on every member; \
                 `slipway cluster admin-cert {name}` issues a new one"
            );
        }
    }
    Ok(())
}

/// `cluster status`: the members as the member `c` knows them, each asked for its own
/// view (role, term, log position); the leader's view adds what it replicated to each.
async fn status(c: &mut ControlClient<Channel>, cluster: &Cluster, json: bool) -> Result<()> {
    let first = c.cluster_status(pb::ClusterStatusRequest {}).await?.into_inner();
    if first.members.is_empty() {
        println!(
            "scheduler {} is not a member of any cluster yet: add it with `slipway cluster join ADDR` \
             against the cluster",
            first.node_id
        );
        return Ok(());
    }
    let from_leader = first.leader_id == first.node_id;
    let views = futures::future::join_all(first.members.iter().map(|m| async move {
        let view = match tokio::time::timeout(Duration::from_secs(3), cluster.connect(&m.addr)).await {
            Err(_) => Err("no answer in 3 s".to_string()),
            Ok(Err(e)) => Err(e),
            Ok(Ok(mut client)) => {
                match tokio::time::timeout(
                    Duration::from_secs(3),
                    client.cluster_status(pb::ClusterStatusRequest {}),
                )
                .await
                {
                    Err(_) => Err("no answer in 3 s".to_string()),
                    Ok(Err(s)) => Err(s.message().to_string()),
                    Ok(Ok(r)) => Ok(r.into_inner()),
                }
            }
        };
        (m.clone(), view)
    }))
    .await;
    let leader = views
        .iter()
        .filter_map(|(_, v)| v.as_ref().ok())
        .find(|v| v.leader_id == v.node_id)
        .map_or(0, |v| v.node_id);
    if json {
        let members: Vec<Value> = views
            .iter()
            .map(|(m, v)| {
                let mut entry = serde_json::json!({
                    "id": m.id, "addr": m.addr, "voter": m.voter,
                    "matched_index": from_leader.then_some(m.matched_index),
                });
                match v {
                    Ok(v) => {
                        entry["reachable"] = true.into();
                        entry["state"] = v.state.clone().into();
                        entry["term"] = v.term.into();
                        entry["last_log_index"] = v.last_log_index.into();
                        entry["last_applied_index"] = v.last_applied_index.into();
                        entry["snapshot_index"] = v.snapshot_index.into();
                        entry["purged_index"] = v.purged_index.into();
                    }
                    Err(e) => {
                        entry["reachable"] = false.into();
                        entry["error"] = e.clone().into();
                    }
                }
                entry
            })
            .collect();
        print_json(&serde_json::json!({ "leader_id": leader, "members": members }));
        return Ok(());
    }
    match leader {
        0 => println!("no leader: fewer than a majority of the members answer, or an election is under way"),
        id => println!("leader: scheduler {id}"),
    }
    let rows = views
        .iter()
        .map(|(m, v)| {
            let role = if m.voter { "voter" } else { "learner" };
            let matched = if from_leader { m.matched_index.to_string() } else { "-".into() };
            match v {
                Ok(v) => vec![
                    m.id.to_string(),
                    m.addr.clone(),
                    role.into(),
                    v.state.clone(),
                    v.term.to_string(),
                    v.last_log_index.to_string(),
                    v.last_applied_index.to_string(),
                    v.snapshot_index.to_string(),
                    matched,
                ],
                Err(e) => vec![
                    m.id.to_string(),
                    m.addr.clone(),
                    role.into(),
                    format!("unreachable ({})", e.chars().take(60).collect::<String>()),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    matched,
                ],
            }
        })
        .collect();
    table(&["ID", "ADDRESS", "ROLE", "STATE", "TERM", "LAST LOG", "APPLIED", "SNAPSHOT", "MATCHED"], rows);
    Ok(())
}
