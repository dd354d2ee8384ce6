//! Agent sessions: the gRPC service agents connect to.
//!
//! Each agent holds one bidirectional gRPC stream ([`AgentSessions`]). It opens with
//! `Hello`, then sends a [`NodeReport`] every few seconds and [`BuildEvent`]s for the
//! builds it runs; the scheduler sends [`BuildAssignment`]s down the same stream.
//! Reports and liveness live only in the leader's memory ([`crate::fleet::Fleet`]);
//! registration is a raft write. Node names are unique (a `Hello` with a name another
//! node holds is refused naming the holder), and the session of a node removed from the
//! fleet (`slipway nodes remove`) ends at its next report with the reason.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use slipway_proto::agent_message::Msg as AgentMsg;
use slipway_proto::build_event::Event as BuildEv;
use slipway_proto::scheduler_message::Msg as SchedMsg;
use slipway_proto::{
    AgentMessage, BuildAssignment, BuildEvent, CancelBuild, Hello, NodeReport, SchedulerMessage, Welcome,
};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::context::Context;
use crate::state::Command;

/// The gRPC service agents connect to.
pub struct AgentSessions {
    ctx: Arc<Context>,
}

impl AgentSessions {
    /// The agent session service of the scheduler sharing `ctx`.
    pub fn new(ctx: Arc<Context>) -> Self {
        Self { ctx }
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
        let ctx = self.ctx.clone();
        ctx.store.require_leader()?;
        if !ctx.fleet.is_leading() {
            return Err(Status::unavailable(
                "this scheduler is taking over as leader, or cannot confirm with a quorum that it still leads; \
                 retry in a moment",
            ));
        }
        let caller = super::enroll::caller(&request);
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
        let known = ctx.store.read(|s| s.nodes.get(&node_id).map(|n| (n.name.clone(), n.labels.clone())));
        let labels = hello.labels.clone().into_iter().collect();
        if known.as_ref() != Some(&(name.clone(), labels)) {
            ctx.store
                .write(Command::RegisterNode {
                    id: node_id.clone(),
                    name: name.clone(),
                    labels: hello.labels.clone().into_iter().collect(),
                    at_ms: slipway_common::now_ms(),
                })
                .await?;
        }

        let (tx, rx) = mpsc::channel(256);
        let welcome = Welcome {
            node_id: node_id.clone(),
            report_interval_secs: ctx.config.agents.report_interval_secs,
        };
        tx.send(SchedulerMessage { msg: Some(SchedMsg::Welcome(welcome)) })
            .await
            .map_err(|_| Status::cancelled("agent went away"))?;
        let routes = crate::router::config(&ctx);
        tx.send(SchedulerMessage { msg: Some(SchedMsg::Router(routes)) })
            .await
            .map_err(|_| Status::cancelled("agent went away"))?;
        let session_id = ctx.fleet.open(&node_id, &hello, tx);
        tracing::info!(node = %name, %node_id, "agent session opened");
        ctx.dispatcher_wake();
        resend_lost_assignments(&ctx, &node_id, hello.report.as_ref());
        // Ends the stream down to the agent with a status (the node was removed).
        let (end_tx, end_rx) = oneshot::channel::<Status>();
        let mut end_tx = Some(end_tx);

        let span = tracing::info_span!("agent_session", node = %name);
        tokio::spawn(
            async move {
                while let Some(msg) = inbound.next().await {
                    match msg {
                        Ok(AgentMessage { msg: Some(AgentMsg::Report(report)) }) => {
                            // Checked at every report: a removed node's session ends
                            // within one report interval, whichever member removed it.
                            if let Some(removed) = removed(&ctx, &node_id) {
                                tracing::warn!(reason = %removed.message(), "closing the session of a removed node");
                                if let Some(end) = end_tx.take() {
                                    let _ = end.send(removed);
                                }
                                break;
                            }
                            cancel_superseded(&ctx, &node_id, &report);
                            ctx.fleet.report(&node_id, session_id, report);
                            ctx.dispatcher_wake();
                        }
                        Ok(AgentMessage { msg: Some(AgentMsg::Build(event)) }) => {
                            handle_build_event(&ctx, &node_id, event).await;
                        }
                        Ok(_) => tracing::warn!("ignoring an unexpected message"),
                        Err(status) => {
                            tracing::info!(%status, "agent session broke");
                            break;
                        }
                    }
                }
                ctx.fleet.close(&node_id, session_id);
                tracing::info!("agent session closed");
            }
            .instrument(span),
        );
        let ended = futures::StreamExt::filter_map(futures::stream::once(end_rx), |end| {
            std::future::ready(end.ok().map(Err))
        });
        // The fleet drops the session when this member stops leading (or a newer session
        // of the node replaces it): the stream to the agent then ends with why, so the
        // agent looks for the leader instead of reporting to a member that ignores it.
        let ctx = self.ctx.clone();
        let dropped = futures::stream::once(async move { Err(session_dropped(&ctx)) });
        let outbound = futures::stream::select(ReceiverStream::new(rx).map(Ok).chain(dropped), ended);
        Ok(Response::new(Box::pin(outbound)))
    }
}

/// Why the fleet dropped an agent's session: this member no longer leads (the agent is
/// pointed at the leader), cannot confirm it still leads, or holds a newer session of
/// the same node.
fn session_dropped(ctx: &Context) -> Status {
    if ctx.fleet.is_leading() {
        Status::aborted("a newer session of this node replaced this one")
    } else if ctx.store.is_leader() {
        // Raft's belief, not confirmed by a quorum: no hint, the agent tries the others.
        Status::unavailable(
            "this scheduler cannot confirm with a quorum that it still leads: find the leader among the others",
        )
    } else {
        crate::error::Error::NotLeader { leader: ctx.store.leader_addr() }.into()
    }
}

/// Why the session of `node_id` must end, if the node was removed from the fleet.
fn removed(ctx: &Context, node_id: &str) -> Option<Status> {
    ctx.store.read(|s| {
        if s.nodes.contains_key(node_id) {
            return None;
        }
        let reason = s
            .revocations
            .get(&crate::state::holder_key("agent", node_id))
            .map_or_else(|| format!("node {node_id:?} is not registered"), |r| r.reason.clone());
        Some(Status::permission_denied(format!(
            "{reason}: this agent's certificate is revoked; to bring the node back, delete the `tls` directory \
             in the agent's state_dir and start it with a join token"
        )))
    })
}

/// Cancels the attempts an agent reports running that are not the current attempt of
/// their build on this node (the build was placed again after the node was lost, was
/// cancelled, or its app deleted): their results would be ignored anyway.
fn cancel_superseded(ctx: &Context, node_id: &str, report: &NodeReport) {
    let superseded: Vec<(String, u32)> = ctx.store.read(|s| {
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
        ctx.fleet.send(node_id, SchedMsg::Cancel(CancelBuild { build_id, attempt }));
    }
}

/// After a reconnect, builds the state says are assigned to this node but that the
/// agent does not report running are sent again (assignments are idempotent by build
/// id and attempt, so an agent that already finished one answers with its result).
fn resend_lost_assignments(ctx: &Context, node_id: &str, report: Option<&NodeReport>) {
    let running: Vec<(&str, u32)> = report
        .map(|r| r.running.iter().map(|a| (a.build_id.as_str(), a.attempt)).collect())
        .unwrap_or_default();
    let assignments: Vec<BuildAssignment> = ctx.store.read(|s| {
        s.builds
            .values()
            .filter(|b| b.node_id.as_deref() == Some(node_id) && !b.state.is_terminal())
            .filter(|b| b.state != crate::state::BuildState::Queued)
            .filter(|b| !running.contains(&(b.id.as_str(), b.attempt)))
            .filter_map(|b| s.apps.get(&b.app).map(|app| crate::dispatch::assignment(ctx, b, app)))
            .collect()
    });
    for a in assignments {
        tracing::info!(build = %a.build_id, attempt = a.attempt, "re-sending assignment after reconnect");
        ctx.fleet.send(node_id, SchedMsg::Assign(a));
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

async fn handle_build_event(ctx: &Arc<Context>, node_id: &str, event: BuildEvent) {
    let BuildEvent { build_id, attempt, event } = event;
    // Only the current attempt on the node it was given to may change the build.
    let current = ctx.store.read(|s| {
        s.builds.get(&build_id).is_some_and(|b| b.attempt == attempt && b.node_id.as_deref() == Some(node_id))
    });
    if !current {
        tracing::info!(build = %build_id, attempt, "ignoring an event from a stale attempt");
        return;
    }
    match event {
        Some(BuildEv::Started(_)) => {
            if let Err(err) =
                ctx.store.write(Command::StartBuild { build_id: build_id.clone(), attempt }).await
            {
                tracing::warn!(build = %build_id, %err, "cannot record build start");
            }
        }
        Some(BuildEv::Log(line)) => {
            ctx.events.publish(&build_id, slipway_proto::deploy_event::Event::Log(line));
        }
        Some(BuildEv::Succeeded(output)) => {
            // Checking the report asks the registry (retrying for a few seconds while it
            // does not answer): off this session's loop, so its reports keep flowing.
            let (ctx, node_id) = (ctx.clone(), node_id.to_string());
            let span = tracing::info_span!("build_result", build = %build_id, attempt);
            tokio::spawn(
                async move {
                    let result = crate::dispatch::verify_success(&ctx, &build_id, &node_id, &output).await;
                    if let Ok(verified) = &result {
                        let built = crate::convert::build_output(verified);
                        ctx.events.publish(&build_id, slipway_proto::deploy_event::Event::Built(built));
                        let doctor = ctx.store.read(|s| {
                            let build = s.builds.get(&build_id).filter(|b| !b.no_cache)?;
                            crate::state::cache_doctor::against_previous(s, &build.app, &build_id, verified)
                        });
                        for (i, line) in doctor.iter().flat_map(|d| d.lines()).enumerate() {
                            let lead = if i == 0 { "==> " } else { "  " };
                            ctx.events.log(&build_id, format!("{lead}{line}"));
                        }
                    }
                    crate::dispatch::finish_build(&ctx, &build_id, attempt, result).await;
                }
                .instrument(span),
            );
        }
        Some(BuildEv::Refused(refusal)) => {
            let node =
                ctx.store.read(|s| s.nodes.get(node_id).map_or(node_id.to_string(), |n| n.name.clone()));
            let reason = format!("node {node} refused it: {}", refusal.reason);
            tracing::warn!(build = %build_id, attempt, %reason, "build refused; placing it again");
            ctx.fleet.refused(node_id, &refusal.reason);
            ctx.events.log(&build_id, format!("==> {reason}; placing the build again"));
            let requeue = Command::RequeueBuild {
                build_id: build_id.clone(),
                attempt,
                reason,
                at_ms: slipway_common::now_ms(),
            };
            if let Err(err) = ctx.store.write(requeue).await {
                tracing::warn!(build = %build_id, %err, "cannot requeue the refused build");
            }
            ctx.dispatcher_wake();
        }
        Some(BuildEv::Failed(failure)) => {
            let reason = format!("{} failed: {}", failure.phase, failure.reason);
            crate::dispatch::finish_build(ctx, &build_id, attempt, Err(reason)).await;
        }
        None => {}
    }
}
