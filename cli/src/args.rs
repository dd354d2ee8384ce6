//! The command line: every command, flag and help text `slipway --help` shows.
//! What each command does lives in `commands/`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// slipway: build apps on your Swarm nodes and deploy them by digest.
#[derive(Parser)]
#[command(name = "slipway", version, about)]
pub struct Cli {
    /// CLI config file (default: $SLIPWAY_CONFIG, ./.slipway/config.toml, ~/.config/slipway/config.toml).
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// Scheduler address host:port (repeat or comma-separate for several); overrides the config.
    #[arg(long = "scheduler", env = "SLIPWAY_ADDR", global = true, value_delimiter = ',')]
    pub schedulers: Vec<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Create, list, show and delete apps; their tasks' logs.
    #[command(subcommand)]
    Apps(AppsCmd),
    /// Build APP from git and deploy it; streams the build log and the deploy.
    Deploy {
        app: String,
        /// Branch, tag or commit (default: the app's branch).
        #[arg(long = "ref")]
        git_ref: Option<String>,
        /// Build without the layer cache.
        #[arg(long)]
        no_cache: bool,
    },
    /// List builds (of APP), or `builds show ID`.
    Builds(BuildsArgs),
    /// Print a build's log.
    Logs {
        build: String,
        /// Keep printing until the build ends.
        #[arg(long, short)]
        follow: bool,
    },
    /// List an app's releases.
    Releases {
        app: String,
        #[arg(long)]
        json: bool,
    },
    /// Deploy an earlier release again, as a new release.
    Rollback {
        app: String,
        /// Release to return to (default: the one deployed before the current one).
        #[arg(long)]
        to: Option<u64>,
    },
    /// Registry retention now: delete the images outside each app's policy
    /// (`[registry.retention]`) and reclaim their blobs; prints what went and the bytes.
    Gc {
        /// Only print what would be deleted; change nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// List the fleet's nodes with their headroom, or drain / activate one.
    Nodes(NodesArgs),
    /// Raft cluster membership and state.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Show APP's environment (its config over the manifest's `[run] env`, each value with
    /// where it comes from), or change it with `config set` / `config unset`.
    Config(ConfigArgs),
    /// Run N tasks of APP without a build (a release of the running image); the scaled
    /// value wins over the manifest's `replicas`, also for later deploys, until `--reset`.
    Scale {
        app: String,
        /// Tasks to run, 1 to 1000 (the manifest's bounds).
        #[arg(allow_negative_numbers = true, required_unless_present = "reset", conflicts_with = "reset")]
        replicas: Option<i64>,
        /// Go back to the manifest's `replicas`.
        #[arg(long)]
        reset: bool,
    },
    /// APP's secrets, delivered to its tasks as files under /run/secrets (never as env):
    /// set one (value from stdin), list them (names and versions, never values), unset one.
    #[command(subcommand)]
    Secrets(SecretsCmd),
}

#[derive(Subcommand)]
pub enum SecretsCmd {
    /// Set secret NAME of APP, reading its value from stdin (never from an argument, which
    /// `ps` and shell history would show). One trailing newline is stripped, so
    /// `echo s3cret | slipway secrets set shop DB_PASSWORD` stores `s3cret`; `--keep-newline`
    /// stores the bytes exactly. Each set is a new version and a release (no build) that
    /// mounts it at /run/secrets/NAME.
    Set {
        app: String,
        name: String,
        /// Store stdin as it is, trailing newline included.
        #[arg(long)]
        keep_newline: bool,
    },
    /// List APP's secrets: names, versions, when set, the Swarm secret; never values.
    List {
        app: String,
        #[arg(long)]
        json: bool,
    },
    /// Remove secret NAME of APP: a release without its file, then its Swarm secret.
    Unset { app: String, name: String },
}

#[derive(Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    pub cmd: Option<ConfigCmd>,
    /// The app whose config to show.
    pub app: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum ConfigCmd {
    /// Set keys of APP's config (one change, one release, no build); a key set here wins
    /// over the same key in the manifest's `[run] env`. An app not deployed yet keeps it
    /// for its first deploy.
    Set {
        app: String,
        /// KEY=VALUE pairs; KEY is an environment variable name ([A-Za-z_][A-Za-z0-9_]*).
        #[arg(required = true, value_name = "KEY=VALUE")]
        pairs: Vec<String>,
    },
    /// Remove keys from APP's config (one change, one release, no build); a key the
    /// manifest also sets goes back to the manifest's value.
    Unset {
        app: String,
        #[arg(required = true, value_name = "KEY")]
        keys: Vec<String>,
    },
}

#[derive(Subcommand)]
pub enum AppsCmd {
    /// Register an app: a git repository with a slipway.toml.
    Create {
        name: String,
        #[arg(long)]
        repo: String,
        /// Branch deployed by default.
        #[arg(long, default_value = "main")]
        branch: String,
    },
    List {
        #[arg(long)]
        json: bool,
    },
    /// The app, its current release and replicas, URLs, and its Swarm tasks (node,
    /// state, release, since, last error).
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Remove the app, its Swarm service and its records.
    Delete { name: String },
    /// Print what the app's tasks write (stdout and stderr), each line prefixed with
    /// `<app>.<slot>.<task>@<node>`.
    Logs {
        name: String,
        /// Keep printing new lines (and tasks started later) until Ctrl-C.
        #[arg(long, short)]
        follow: bool,
        /// Lines from the end of each task's log (default: all; at most 10000).
        #[arg(long, value_parser = clap::value_parser!(u32).range(0..=i64::from(slipway_proto::validate::MAX_LOG_TAIL)))]
        tail: Option<u32>,
        /// Only lines written in this last span of time, e.g. 30s, 10m, 2h, 1h30m.
        #[arg(long, value_parser = parse_since)]
        since: Option<std::time::Duration>,
    },
    /// Print the URL git hosts post pushes to (deploy on push) and the app's webhook
    /// secret; give both to GitHub, GitLab or Gitea (README, "Deploy on git push").
    Webhook {
        name: String,
        /// Replace the secret: the old one is refused from now on.
        #[arg(long)]
        rotate: bool,
        /// `{"url": …, "secret": …}`.
        #[arg(long)]
        json: bool,
    },
}

/// `--since`: a span of time back from now, as humantime reads it (`10m`, `1h30m`).
pub fn parse_since(value: &str) -> Result<std::time::Duration, String> {
    let span = humantime::parse_duration(value)
        .map_err(|e| format!("{value:?} is not a span of time ({e}); write it like 30s, 10m, 2h or 1h30m"))?;
    if span.is_zero() {
        return Err(format!("{value:?} is zero; write a span like 30s, 10m, 2h or 1h30m"));
    }
    Ok(span)
}

#[derive(Args)]
pub struct BuildsArgs {
    #[command(subcommand)]
    pub show: Option<BuildsCmd>,
    /// Only this app's builds.
    pub app: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum BuildsCmd {
    /// One build, with why it waits if it is queued.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
pub struct NodesArgs {
    #[command(subcommand)]
    pub cmd: Option<NodesCmd>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum NodesCmd {
    /// Stop placing builds on NODE (name or id); its running builds finish.
    Drain { node: String },
    /// Place builds on NODE again.
    Activate { node: String },
    /// Remove NODE (name or id) from the fleet: its unfinished builds are queued again,
    /// its certificates are denied, its agent's session closes, and its name is free.
    Remove { node: String },
}

#[derive(Subcommand)]
pub enum ClusterCmd {
    /// Every member's role, term and log position, as each member sees itself.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Add the scheduler at ADDR (started with `join = true` under [cluster]) as a voter.
    Join {
        /// The joining scheduler's advertised address, host:port.
        addr: String,
        /// Its node_id (default: asked from the scheduler at ADDR).
        #[arg(long)]
        id: Option<u64>,
    },
    /// Remove member ID from the cluster.
    Remove { id: u64 },
    /// Print the join token for agents or schedulers (`--rotate` replaces it first: the
    /// old one stops working).
    Token {
        /// agent or scheduler
        role: String,
        #[arg(long)]
        rotate: bool,
    },
    /// Issue an operator certificate for NAME into DIR (ca.pem, cert.pem, key.pem; the
    /// key is made here and never leaves this machine).
    AdminCert {
        name: String,
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
    /// Deny every operator certificate issued to NAME so far, on every call and renewal
    /// (a certificate issued to NAME afterwards works).
    AdminRevoke { name: String },
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::parse_since;

    #[test]
    fn since_reads_spans_and_names_the_format() {
        assert_eq!(parse_since("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_since("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_since("45s"), Ok(Duration::from_secs(45)));
        for bad in ["10", "ten minutes", "-5m", "", "0s"] {
            let err = parse_since(bad).unwrap_err();
            assert!(err.contains("10m") && err.contains(&format!("{bad:?}")), "{bad}: {err}");
        }
    }
}
