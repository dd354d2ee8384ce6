//! `slipway nodes [--json]` and `nodes drain|activate|remove NODE`: the fleet's build
//! nodes with the headroom their agents report, taking one out of placement, and
//! removing one from the fleet (revoking its certificates).

use serde_json::Value;
use slipway_proto::{self as pb, human_bytes};

use super::print_json;
use crate::args::{NodesArgs, NodesCmd};
use crate::client::{Call, Result};
use crate::output::{self, node_status, table};

/// Runs `nodes` or one of its subcommands.
pub async fn run(call: Call<'_>, args: &NodesArgs) -> Result<()> {
    let retry = call.retry;
    let mut c = call.client;
    match args {
        NodesArgs { cmd: Some(NodesCmd::Drain { node } | NodesCmd::Activate { node }), .. } => {
            let draining = matches!(args.cmd, Some(NodesCmd::Drain { .. }));
            let req = pb::SetNodeDrainRequest { node: node.clone(), draining };
            let n = c.set_node_drain(req).await?.into_inner();
            if n.draining {
                println!("node {} is draining: it finishes its running builds and gets no new ones", n.name);
            } else {
                println!("node {} is active: builds may be placed on it", n.name);
            }
        }
        NodesArgs { cmd: Some(NodesCmd::Remove { node }), .. } => {
            let got = match c.remove_node(pb::RemoveNodeRequest { node: node.clone() }).await {
                Ok(got) => got.into_inner(),
                // A retry after a leader change: the first attempt removed it.
                Err(s) if retry && s.code() == tonic::Code::NotFound => {
                    println!("node {node} removed from the fleet");
                    return Ok(());
                }
                Err(s) => return Err(s.into()),
            };
            let n = got.node.unwrap_or_default();
            println!(
                "node {} ({}) removed from the fleet: its certificates are denied, its agent's session closes, \
                 and its name is free",
                n.name, n.id
            );
            if !got.requeued_builds.is_empty() {
                println!("builds queued again for another node: {}", got.requeued_builds.join(", "));
            }
        }
        NodesArgs { cmd: None, json } => {
            let nodes = c.list_nodes(pb::ListNodesRequest {}).await?.into_inner().nodes;
            if *json {
                print_json(&Value::Array(nodes.iter().map(output::node_json).collect()));
            } else {
                let rows = nodes
                    .iter()
                    .map(|n| {
                        let r = n.report.clone().unwrap_or_default();
                        let status = if n.draining {
                            format!("{} (draining)", node_status(n.status))
                        } else {
                            node_status(n.status).into()
                        };
                        vec![
                            n.name.clone(),
                            status,
                            build_fs_cell(&r),
                            format!("{:.0}% of {}", r.cpu_usage_percent, r.cpu_count),
                            format!(
                                "{} / {}",
                                human_bytes(r.memory_available_bytes),
                                human_bytes(r.memory_total_bytes)
                            ),
                            format!("{}/{}", r.running_builds, r.build_slots),
                            human_bytes(r.cache_bytes),
                            if r.builder.is_empty() {
                                r.docker_version.clone()
                            } else {
                                format!("{} ({})", r.docker_version, r.builder)
                            },
                            if n.last_report_age_ms == 0 {
                                "-".into()
                            } else {
                                format!("{}s", n.last_report_age_ms / 1000)
                            },
                        ]
                    })
                    .collect();
                table(
                    &[
                        "NODE",
                        "STATUS",
                        "BUILD FS FREE",
                        "CPU USED",
                        "MEM FREE",
                        "BUILDS",
                        "CACHE",
                        "ENGINE",
                        "LAST REPORT",
                    ],
                    rows,
                );
            }
        }
    }
    Ok(())
}

/// Free / total of the build filesystem, and the floor its agent raised after a build ran
/// out of space there (no builds go to the node until that much is free).
fn build_fs_cell(r: &pb::NodeReport) -> String {
    let cell =
        format!("{} / {}", human_bytes(r.build_fs_available_bytes), human_bytes(r.build_fs_total_bytes));
    if r.build_fs_floor_bytes == 0 {
        return cell;
    }
    format!("{cell} (no builds below {})", human_bytes(r.build_fs_floor_bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_build_fs_cell_names_a_raised_floor() {
        let mut r = pb::NodeReport {
            build_fs_available_bytes: 100 << 20,
            build_fs_total_bytes: 160 << 20,
            ..Default::default()
        };
        let plain = build_fs_cell(&r);
        assert!(!plain.contains("no builds"), "{plain}");
        r.build_fs_floor_bytes = 400 << 20;
        let floored = build_fs_cell(&r);
        assert!(floored.starts_with(&plain) && floored.contains("(no builds below "), "{floored}");
    }
}
