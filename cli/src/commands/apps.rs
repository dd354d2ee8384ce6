//! `slipway apps create|list|show|delete`: the apps the cluster knows.

use serde_json::Value;
use slipway_proto as pb;
use tonic::Code;

use super::print_json;
use crate::args::AppsCmd;
use crate::client::{Call, Result};
use crate::output::{self, age, table};

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
            let app = c.get_app(pb::GetAppRequest { name: name.clone() }).await?.into_inner();
            if *json {
                print_json(&output::app_json(&app));
            } else {
                println!(
                    "app:      {}\nrepo:     {}\nbranch:   {}\nservice:  {}\nrelease:  {}\ncreated:  {}",
                    app.name,
                    app.repo,
                    app.branch,
                    app.service,
                    app.current_release,
                    age(app.created_at_ms)
                );
                match app.urls.split_first() {
                    None => println!("urls:     none yet (no release with a [run] port)"),
                    Some((first, rest)) => {
                        println!("urls:     {first}");
                        for url in rest {
                            println!("          {url}");
                        }
                    }
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
