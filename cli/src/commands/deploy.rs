//! `slipway deploy`, `rollback` and `releases`: build and deploy an app, deploy an
//! earlier release again, list the releases. A deploy streams the build log and the
//! rollout and exits non-zero with the reason when it fails.

use serde_json::Value;
use slipway_proto::deploy_event::Event;
use slipway_proto::{self as pb, human_bytes, DeployEvent};
use tokio_stream::StreamExt;

use super::print_json;
use crate::client::{leader_changing, Call, Failure, Result};
use crate::output::{self, age, deploy_state, short_digest, table};

/// `slipway deploy APP [--ref R] [--no-cache]`.
pub async fn deploy(call: Call<'_>, app: &str, git_ref: Option<&str>, no_cache: bool) -> Result<()> {
    let Call { client: mut c, request_id, .. } = call;
    let req = pb::DeployRequest {
        app: app.to_string(),
        git_ref: git_ref.unwrap_or_default().to_string(),
        no_cache,
        request_id: request_id.to_string(),
    };
    let stream = c.deploy(req).await?.into_inner();
    follow_deploy(stream).await?;
    Ok(())
}

/// `slipway releases APP [--json]`.
pub async fn releases(call: Call<'_>, app: &str, json: bool) -> Result<()> {
    let mut c = call.client;
    let releases =
        c.list_releases(pb::ListReleasesRequest { app: app.to_string() }).await?.into_inner().releases;
    if json {
        print_json(&Value::Array(releases.iter().map(output::release_json).collect()));
    } else {
        let rows = releases
            .iter()
            .map(|r| {
                let what = if r.rollback_of != 0 {
                    format!("rollback to v{}", r.rollback_of)
                } else if !r.change.is_empty() {
                    r.change.clone()
                } else {
                    format!("build {}", r.build_id)
                };
                vec![
                    format!("v{}", r.number),
                    short_digest(&r.digest),
                    r.git_sha.chars().take(10).collect(),
                    what,
                    deploy_state(r.deploy_state).into(),
                    if r.collected {
                        "collected"
                    } else if r.rollbackable {
                        "kept"
                    } else {
                        "outside policy"
                    }
                    .into(),
                    age(r.created_at_ms),
                ]
            })
            .collect();
        table(&["RELEASE", "DIGEST", "GIT SHA", "FROM", "DEPLOY", "IMAGE", "CREATED"], rows);
    }
    Ok(())
}

/// `slipway rollback APP [--to N]`.
pub async fn rollback(call: Call<'_>, app: &str, to: Option<u64>) -> Result<()> {
    let Call { client: mut c, request_id, .. } = call;
    let req =
        pb::RollbackRequest { app: app.to_string(), to: to.unwrap_or(0), request_id: request_id.to_string() };
    let stream = c.rollback(req).await?.into_inner();
    follow_deploy(stream).await?;
    Ok(())
}

/// Prints a deploy's events until it ends; an error if it failed.
pub(super) async fn follow_deploy(
    mut stream: impl tokio_stream::Stream<Item = std::result::Result<DeployEvent, tonic::Status>> + Unpin,
) -> Result<()> {
    let mut build_id = String::new();
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(e) => e,
            // A broken connection (the leader died or stepped down) is retried with the
            // same request id: the next leader joins the retry to this deploy.
            Err(status) => {
                return Err(Failure {
                    message: format!(
                        "lost the scheduler while following the deploy ({}); it goes on without you: see `slipway builds show {build_id}`",
                        status.message()
                    ),
                    retry: leader_changing(&status),
                })
            }
        };
        match event.event {
            Some(Event::BuildQueued(id)) => {
                println!("==> build {id} queued");
                build_id = id;
            }
            Some(Event::Placement(p)) if !p.node_id.is_empty() => println!("==> building on {}", p.node_name),
            Some(Event::Placement(p)) => {
                println!("==> waiting for a node that can build:");
                for r in &p.rejected {
                    println!("    {}: {}", r.node_name, r.reason);
                }
                if p.rejected.is_empty() {
                    println!("    no agents are registered: start slipway-agent on a node");
                }
            }
            Some(Event::Log(line)) => println!("{}", line.line),
            Some(Event::Built(o)) => {
                let t = o.timings.unwrap_or_default();
                println!(
                    "==> image {}@{}: {} layers pushed ({} uncompressed), {} reused, {}/{} steps cached; clone {} ms, build {} ms, push {} ms",
                    o.repository, o.digest, o.layers_pushed, human_bytes(o.bytes_pushed), o.layers_reused, o.cache_hits, o.steps,
                    t.clone_ms, t.build_ms, t.push_ms
                );
            }
            Some(Event::Release(r)) => {
                let from = if r.rollback_of != 0 {
                    format!(" (image of v{})", r.rollback_of)
                } else if !r.change.is_empty() {
                    format!(" ({}, no build)", r.change)
                } else {
                    String::new()
                };
                println!("==> release v{} of {} recorded: {}{from}", r.number, r.app, r.image);
            }
            Some(Event::DeployProgress(line)) => println!("    {line}"),
            Some(Event::Done(d)) => {
                let number = d.release.as_ref().map_or(0, |r| r.number);
                let port = if d.published_port != 0 {
                    format!(", published on port {}", d.published_port)
                } else {
                    String::new()
                };
                println!(
                    "==> release v{number} is live: service {} runs {} task(s){port}",
                    d.service, d.running
                );
                for url in &d.urls {
                    println!("    {url}");
                }
                return Ok(());
            }
            Some(Event::Failed(reason)) => return Err(Failure::fatal(reason)),
            None => {}
        }
    }
    Err(Failure::fatal(format!(
        "the scheduler ended the stream before the deploy finished; see `slipway builds show {build_id}`"
    )))
}
