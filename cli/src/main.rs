//! # slipway
//!
//! The operator's CLI: one client of the scheduler's control API (gRPC over mutual
//! TLS). It depends on the wire crate and the common crate only.
//!
//! ## Layout
//! - [`args`]: the command line (clap): every command and flag.
//! - [`config`]: where the CLI finds its schedulers and the operator's certificate.
//! - [`client`]: connecting, finding the leader, retrying while the leader changes.
//! - [`commands`]: what each command does, one file per command group.
//! - [`output`]: tables for people, `--json` for programs.
#![forbid(unsafe_code)]

mod args;
mod client;
mod commands;
mod config;
mod output;

use clap::Parser;

#[tokio::main]
async fn main() {
    slipway_proto::tls::install_crypto_provider();
    let cli = args::Cli::parse();
    std::process::exit(client::run(cli).await);
}
