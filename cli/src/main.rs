//! # slipway
//!
//! The operator's CLI: one client of the scheduler's control API (gRPC over mutual
//! TLS). It depends on the wire crate and the common crate only.
//!
//! ## Layout
//! - [`args`]: the command line (clap): every command and flag.
//! - [`config`]: where the CLI finds its schedulers and the operator's certificate.
//! - [`client`]: connecting and finding the leader; `main` retries a command while the
//!   leader changes, with one request id so the scheduler joins a retried deploy to the first.
//! - [`commands`]: what each command does, one file per command group.
//! - [`output`]: tables for people, `--json` for programs.
#![forbid(unsafe_code)]

mod args;
mod client;
mod commands;
mod config;
mod output;

use std::time::{Duration, Instant};

use clap::Parser;
use slipway_common::Backoff;

use crate::args::Cli;
use crate::client::{Call, Cluster, Failure, Result};

/// How long the CLI keeps retrying a request that failed because the cluster is
/// changing leader (or the member it talked to went away), counted from the first such
/// failure.
const RETRY_FOR: Duration = Duration::from_secs(20);

#[tokio::main]
async fn main() {
    slipway_proto::tls::install_crypto_provider();
    let cli = Cli::parse();
    std::process::exit(run(cli).await);
}

/// Runs the CLI; returns the process exit code.
async fn run(cli: Cli) -> i32 {
    match run_with_retries(cli).await {
        Ok(()) => 0,
        Err(Failure { message, .. }) => {
            eprintln!("error: {message}");
            1
        }
    }
}

async fn run_with_retries(cli: Cli) -> Result<()> {
    let (addrs, transport) =
        config::resolve(cli.config.as_deref(), &cli.schedulers).map_err(Failure::fatal)?;
    let cluster = Cluster::new(addrs, transport);
    let request_id = uuid::Uuid::new_v4().to_string();
    // The 20 s run from the first failure: a deploy that streamed for minutes before
    // its leader died still gets its retries.
    let mut deadline = None;
    let mut backoff = Backoff::new(Duration::from_millis(300), Duration::from_secs(2));
    let mut retry = false;
    let input = commands::read_input(&cli.command)?;
    loop {
        let result = match cluster.leader().await {
            Ok(client) => {
                let call = Call {
                    client,
                    cluster: &cluster,
                    request_id: &request_id,
                    retry,
                    input: input.as_deref(),
                };
                commands::execute(call, &cli.command).await
            }
            Err(f) => Err(f),
        };
        match result {
            Err(f)
                if f.retry
                    && Instant::now() < *deadline.get_or_insert_with(|| Instant::now() + RETRY_FOR) =>
            {
                if !retry {
                    eprintln!("note: {}; retrying", f.message);
                }
                retry = true;
                backoff.wait().await;
            }
            other => return other,
        }
    }
}
