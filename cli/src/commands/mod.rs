//! What each command does, one file per command group; [`execute`] picks the group.
//! Every command is one [`Call`] against the leader; the retry around it is the client's.

mod apps;
mod builds;
mod cluster;
mod config;
mod deploy;
mod gc;
mod nodes;
mod secrets;

use serde_json::Value;

use crate::args::Command;
use crate::client::{Call, Result};

/// Runs one command.
pub async fn execute(call: Call<'_>, command: &Command) -> Result<()> {
    match command {
        Command::Apps(cmd) => apps::run(call, cmd).await,
        Command::Deploy { app, git_ref, no_cache } => {
            deploy::deploy(call, app, git_ref.as_deref(), *no_cache).await
        }
        Command::Rollback { app, to } => deploy::rollback(call, app, *to).await,
        Command::Releases { app, json } => deploy::releases(call, app, *json).await,
        Command::Gc { dry_run, json } => gc::run(call, *dry_run, *json).await,
        Command::Builds(args) => builds::run(call, args).await,
        Command::Logs { build, follow } => builds::logs(call, build, *follow).await,
        Command::Nodes(args) => nodes::run(call, args).await,
        Command::Cluster(cmd) => cluster::run(call, cmd).await,
        Command::Config(args) => config::run(call, args).await,
        Command::Scale { app, replicas, reset } => config::scale(call, app, *replicas, *reset).await,
        Command::Secrets(cmd) => secrets::run(call, cmd).await,
    }
}

/// What `command` reads from stdin, read once before the first attempt (a retry sends
/// the same bytes): a secret's value for `secrets set`, nothing for the others.
pub fn read_input(command: &Command) -> Result<Option<Vec<u8>>> {
    match command {
        Command::Secrets(crate::args::SecretsCmd::Set { keep_newline, .. }) => {
            secrets::read_value(std::io::stdin().lock(), *keep_newline).map(Some)
        }
        _ => Ok(None),
    }
}

/// Prints `value` as indented JSON (every listing's `--json`).
fn print_json(value: &Value) {
    println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
}
