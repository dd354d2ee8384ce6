//! `slipway`: the operator CLI, a client of the scheduler's control API.

#[tokio::main]
async fn main() {
    std::process::exit(slipway_scheduler::cli::main().await);
}
