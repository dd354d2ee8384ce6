//! `slipway`: the operator CLI, a client of the scheduler's control API.

#[tokio::main]
async fn main() {
    slipway_proto::tls::install_crypto_provider();
    std::process::exit(slipway_scheduler::cli::main().await);
}
