//! `slipway builds [APP]`, `builds show ID` and `logs BUILD [--follow]`: what was built
//! where, why a queued build waits, and its log.

use serde_json::Value;
use slipway_proto::{self as pb, human_bytes};
use tokio_stream::StreamExt;

use super::print_json;
use crate::args::{BuildsArgs, BuildsCmd};
use crate::client::{Call, Result};
use crate::output::{self, age, build_state, table};

/// `slipway builds [APP] [--json]` or `builds show ID [--json]`.
pub async fn run(call: Call<'_>, args: &BuildsArgs) -> Result<()> {
    let mut c = call.client;
    match args {
        BuildsArgs { show: Some(BuildsCmd::Show { id, json }), .. } => {
            let b = c.get_build(pb::GetBuildRequest { id: id.clone() }).await?.into_inner();
            if *json {
                print_json(&output::build_json(&b));
            } else {
                print_build(&b);
            }
        }
        BuildsArgs { show: None, app, json } => {
            let builds = c
                .list_builds(pb::ListBuildsRequest { app: app.clone().unwrap_or_default() })
                .await?
                .into_inner()
                .builds;
            if *json {
                print_json(&Value::Array(builds.iter().map(output::build_json).collect()));
            } else {
                let rows = builds
                    .iter()
                    .map(|b| {
                        vec![
                            b.id.clone(),
                            b.app.clone(),
                            b.git_ref.clone(),
                            build_state(b.state).into(),
                            b.node_id.chars().take(8).collect(),
                            if b.release == 0 { "-".into() } else { format!("v{}", b.release) },
                            age(b.created_at_ms),
                            b.error.lines().next().unwrap_or("").chars().take(60).collect(),
                        ]
                    })
                    .collect();
                table(&["BUILD", "APP", "REF", "STATE", "NODE", "RELEASE", "CREATED", "ERROR"], rows);
            }
        }
    }
    Ok(())
}

/// `slipway logs BUILD [--follow]`.
pub async fn logs(call: Call<'_>, build: &str, follow: bool) -> Result<()> {
    let mut c = call.client;
    let mut stream =
        c.build_logs(pb::BuildLogsRequest { build_id: build.to_string(), follow }).await?.into_inner();
    while let Some(line) = stream.next().await {
        println!("{}", line?.line);
    }
    Ok(())
}

fn print_build(b: &pb::Build) {
    println!(
        "build:    {}\napp:      {}\nref:      {}\nstate:    {}\nattempt:  {}\nnode:     {}",
        b.id,
        b.app,
        b.git_ref,
        build_state(b.state),
        b.attempt,
        b.node_id
    );
    if b.release != 0 {
        println!("release:  v{}", b.release);
    }
    if let Some(o) = &b.output {
        println!(
            "image:    {}@{}\npushed:   {} layers ({} uncompressed), {} reused; {} of {} steps cached",
            o.repository,
            o.digest,
            o.layers_pushed,
            human_bytes(o.bytes_pushed),
            o.layers_reused,
            o.cache_hits,
            o.steps
        );
        if !o.build_steps.is_empty() {
            println!();
            let rows = o
                .build_steps
                .iter()
                .map(|s| {
                    let time = if s.cached {
                        "-".to_string()
                    } else {
                        format!("{:.1}s", s.duration_ms as f64 / 1000.0)
                    };
                    // The name last: a long one does not push the other columns away.
                    vec![if s.cached { "yes" } else { "no" }.to_string(), time, s.name.clone()]
                })
                .collect();
            table(&["CACHED", "TIME", "STEP"], rows);
            println!();
        }
    }
    if let Some(d) = &b.cache_doctor {
        for line in output::cache_doctor_lines(d) {
            println!("{line}");
        }
    }
    if !b.error.is_empty() {
        println!("error:    {}", b.error);
    }
    if !b.waiting_on.is_empty() {
        println!("waiting for a node:");
        for r in &b.waiting_on {
            println!("  {}: {}", r.node_name, r.reason);
        }
    }
}
