//! `slipway apps create|list|show|delete|logs|webhook`: the apps the cluster knows, what
//! Swarm runs of each, what its tasks print, and the webhook that deploys it on push.

use serde_json::Value;
use slipway_proto as pb;
use tokio_stream::StreamExt;
use tonic::Code;

use super::print_json;
use crate::args::AppsCmd;
use crate::client::{Call, Result};
use crate::output::{self, age, short_digest, table};

/// Runs an `apps` subcommand.
pub async fn run(call: Call<'_>, command: &AppsCmd) -> Result<()> {
    let Call { client: mut c, retry, .. } = call;
    match command {
        AppsCmd::Create { name, repo, branch } => {
            let req = pb::CreateAppRequest { name: name.clone(), repo: repo.clone(), branch: branch.clone() };
            let app = match c.create_app(req).await {
                Ok(app) => app.into_inner(),
                Err(s) if retry && s.code() == Code::AlreadyExists => {
                    let app = c.get_app(pb::GetAppRequest { name: name.clone() }).await?.into_inner();
                    if app.repo != *repo || app.branch != *branch {
                        return Err(s.into());
                    }
                    app
                }
                Err(s) => return Err(s.into()),
            };
            println!(
                "app {} created (repo {}, branch {}); deploy it with `slipway deploy {}`",
                app.name, app.repo, app.branch, app.name
            );
        }
        AppsCmd::List { json } => {
            let apps = c.list_apps(pb::ListAppsRequest {}).await?.into_inner().apps;
            if *json {
                print_json(&Value::Array(apps.iter().map(output::app_json).collect()));
            } else {
                let rows = apps
                    .iter()
                    .map(|a| {
                        let current = if a.current_release == 0 {
                            "-".into()
                        } else {
                            format!("v{}", a.current_release)
                        };
                        vec![a.name.clone(), current, a.branch.clone(), a.repo.clone(), a.service.clone()]
                    })
                    .collect();
                table(&["APP", "RELEASE", "BRANCH", "REPO", "SERVICE"], rows);
            }
        }
        AppsCmd::Show { name, json } => {
            let status = c.app_status(pb::AppStatusRequest { app: name.clone() }).await?.into_inner();
            if *json {
                print_json(&output::app_status_json(&status));
            } else {
                print_status(&status);
            }
        }
        AppsCmd::Webhook { name, rotate, json } => {
            let req = pb::AppWebhookRequest { app: name.clone(), rotate: *rotate };
            let hook = c.app_webhook(req).await?.into_inner();
            if *json {
                print_json(&serde_json::json!({ "url": hook.url, "secret": hook.secret }));
            } else {
                println!("URL:    {}", hook.url);
                println!("Secret: {}", hook.secret);
                println!(
                    "Content type application/json, push events only. GitHub and Gitea sign with the \
                     secret; GitLab sends it as its secret token. The git host must reach the URL."
                );
                if *rotate {
                    println!("The previous secret is refused from now on: update the git host's hook.");
                }
            }
        }
        AppsCmd::Logs { name, follow, tail, since } => {
            let req = pb::AppLogsRequest {
                app: name.clone(),
                follow: *follow,
                tail: *tail,
                since_seconds: since.map_or(0, |s| s.as_secs().max(1)),
            };
            let mut lines = c.app_logs(req).await?.into_inner();
            while let Some(line) = lines.next().await {
                let line = line?;
                let prefix = output::log_prefix(name, &line);
                match line.stream.as_str() {
                    "stderr" => eprintln!("{prefix} | {}", line.line),
                    "slipway" => eprintln!("note: {prefix}: {}", line.line),
                    _ => println!("{prefix} | {}", line.line),
                }
            }
        }
        AppsCmd::Delete { name } => {
            match c.delete_app(pb::DeleteAppRequest { name: name.clone() }).await {
                Ok(_) => {}
                Err(s) if retry && s.code() == Code::NotFound => {}
                Err(s) => return Err(s.into()),
            }
            println!("app {name} deleted (its service was removed)");
        }
    }
    Ok(())
}

/// `apps show APP`: the app, its current release, replicas, URLs and tasks.
fn print_status(s: &pb::AppStatusResponse) {
    let app = s.app.clone().unwrap_or_default();
    println!(
        "app:      {}\nrepo:     {}\nbranch:   {}\nservice:  {}\ncreated:  {}",
        app.name,
        app.repo,
        app.branch,
        app.service,
        age(app.created_at_ms)
    );
    match &s.current {
        None => println!("release:  none yet: never deployed (`slipway deploy {}` starts it)", app.name),
        Some(r) => {
            let rollback =
                if r.rollback_of != 0 { format!(", rollback of v{}", r.rollback_of) } else { String::new() };
            let sha: String = r.git_sha.chars().take(8).collect();
            println!(
                "release:  v{} ({}, git {sha}{rollback}), {} {}",
                r.number,
                output::deploy_state(r.deploy_state),
                short_digest(&r.digest),
                age(r.created_at_ms)
            );
            println!("image:    {}", r.image);
            if let Some(run) = &r.run {
                println!("run:      {}", output::run_summary(run));
            }
        }
    }
    if !s.config_keys.is_empty() {
        println!("config:   {} (`slipway config {}` shows the values)", s.config_keys.join(", "), app.name);
    }
    if !s.secret_names.is_empty() {
        println!(
            "secrets:  {} (files under /run/secrets; `slipway secrets list {}` shows versions)",
            s.secret_names.join(", "),
            app.name
        );
    }
    let scaled =
        if s.scaled_replicas != 0 { format!(" (scaled to {})", s.scaled_replicas) } else { String::new() };
    if s.deployed {
        println!("replicas: {} running of {}{scaled}", s.running_replicas, s.desired_replicas);
    } else if s.current.is_some() {
        println!(
            "replicas: no Swarm service (removed outside slipway?); `slipway deploy {}` recreates it",
            app.name
        );
    }
    match app.urls.split_first() {
        None => println!("urls:     none yet (no release with a [run] port)"),
        Some((first, rest)) => {
            println!("urls:     {first}");
            for url in rest {
                println!("          {url}");
            }
        }
    }
    if s.tasks.is_empty() {
        return;
    }
    println!();
    let rows = s
        .tasks
        .iter()
        .map(|t| {
            let id: String = t.id.chars().take(12).collect();
            vec![
                format!("{}.{}.{id}", app.name, t.slot),
                if t.node.is_empty() { "-".into() } else { t.node.clone() },
                t.state.clone(),
                t.desired_state.clone(),
                if t.release == 0 { "-".into() } else { format!("v{}", t.release) },
                age(t.since_ms),
                t.error.lines().next().unwrap_or("").chars().take(60).collect(),
            ]
        })
        .collect();
    table(&["TASK", "NODE", "STATE", "DESIRED", "RELEASE", "SINCE", "ERROR"], rows);
}
