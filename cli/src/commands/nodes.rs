//! `slipway nodes [--json]` and `nodes drain|activate NODE`: the fleet's build nodes
//! with the headroom their agents report, and taking one out of placement.

use serde_json::Value;
use slipway_proto::{self as pb, human_bytes};

use super::print_json;
use crate::args::{NodesArgs, NodesCmd};
use crate::client::{Call, Result};
use crate::output::{self, node_status, table};

/// Runs `nodes` or one of its subcommands.
pub async fn run(call: Call<'_>, args: &NodesArgs) -> Result<()> {
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
                            format!(
                                "{} / {}",
                                human_bytes(r.build_fs_available_bytes),
                                human_bytes(r.build_fs_total_bytes)
                            ),
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
