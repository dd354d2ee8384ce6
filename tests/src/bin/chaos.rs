//! `chaos [--events N] [--seed S] [--clients C] [--apps A] [--faults kill,pause,…]
//! [--unsafe-local-reads] [--stack NAME]`: the long chaos run (see `slipway_tests::chaos`): a
//! 3-member cluster of the real schedulers, N nemesis events, the history checked for
//! linearizability. Prints the seed first (a failure replays with `--seed`) and a report
//! at the end; exits 1 on any violation. Run it as root with Docker, in release:
//! `cargo run --release -p slipway-tests --bin chaos -- --events 1000`.
//!
//! `--unsafe-local-reads` starts the schedulers with the test-only switch
//! `SLIPWAY_TEST_UNSAFE_LOCAL_READS=1` (reads served from the member's own state,
//! without the leader check): the run must then report violations.

use anyhow::{bail, Context, Result};
use slipway_tests::chaos::{self, ChaosConfig, Fault};

fn parse() -> Result<ChaosConfig> {
    let mut args = std::env::args().skip(1);
    let seed = rand::random::<u64>() % 1_000_000;
    let mut config = ChaosConfig::new("chs-long", seed, 100);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--events" => config.events = value("--events")?.parse().context("--events")?,
            "--seed" => config.seed = value("--seed")?.parse().context("--seed")?,
            "--clients" => config.clients = value("--clients")?.parse().context("--clients")?,
            "--apps" => config.apps = value("--apps")?.parse().context("--apps")?,
            // Two runs at once need their own stacks (services, data dirs, registry).
            "--stack" => config.stack = value("--stack")?,
            "--faults" => {
                config.faults = value("--faults")?
                    .split(',')
                    .map(|f| {
                        Fault::parse(f).with_context(|| {
                            format!("unknown fault {f:?}: use {:?}", Fault::ALL.map(Fault::name))
                        })
                    })
                    .collect::<Result<_>>()?;
            }
            "--unsafe-local-reads" => {
                config
                    .member_env
                    .push((slipway_scheduler::raft::store::UNSAFE_LOCAL_READS_ENV.into(), "1".into()));
            }
            other => bail!("unknown argument {other:?}; see the doc at the top of tests/src/bin/chaos.rs"),
        }
    }
    if config.clients == 0 || config.apps == 0 || config.faults.is_empty() {
        bail!("--clients, --apps and --faults need at least one");
    }
    Ok(config)
}

fn main() -> Result<()> {
    tracing_subscriber::fmt().with_env_filter("warn").with_writer(std::io::stderr).init();
    let config = parse()?;
    // The fixtures run the slipway binaries in the profile this bench was built in.
    if cfg!(not(debug_assertions)) && std::env::var_os(slipway_tests::cluster::PROFILE_ENV).is_none() {
        std::env::set_var(slipway_tests::cluster::PROFILE_ENV, "release");
    }
    let runtime = tokio::runtime::Runtime::new().context("a tokio runtime")?;
    let Some(report) = runtime.block_on(chaos::run(&config)) else {
        bail!("the chaos run cannot run here (see above)")
    };
    println!("{report}");
    if !report.passed() {
        std::process::exit(1);
    }
    Ok(())
}
