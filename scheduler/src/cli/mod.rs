//! The `slipway` command-line client: one client of the control API.
//!
//! It finds its schedulers in a config file ([`config`]), talks to the leader (asking
//! any member who leads), prints tables or `--json` ([`output`]), streams deploys, and
//! exits non-zero with the reason when something fails.

pub mod config;
pub mod output;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use serde_json::Value;
use slipway_proto::control_client::ControlClient;
use slipway_proto::deploy_event::Event;
use slipway_proto::tls::Transport;
use slipway_proto::{self as pb, DeployEvent};
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::{Code, Status};

use output::{age, build_state, deploy_state, node_status, short_digest, table};

use crate::placement::human_bytes;

/// slipway: build apps on your Swarm nodes and deploy them by digest.
#[derive(Parser)]
#[command(name = "slipway", version, about)]
pub struct Cli {
    /// CLI config file (default: $SLIPWAY_CONFIG, ./.slipway/config.toml, ~/.config/slipway/config.toml).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Scheduler address host:port (repeat or comma-separate for several); overrides the config.
    #[arg(long = "scheduler", env = "SLIPWAY_ADDR", global = true, value_delimiter = ',')]
    schedulers: Vec<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create, list, show and delete apps.
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
    /// List the fleet's nodes with their headroom, or drain / activate one.
    Nodes(NodesArgs),
    /// Raft cluster membership and state.
    #[command(subcommand)]
    Cluster(ClusterCmd),
}

#[derive(Subcommand)]
enum AppsCmd {
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
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Remove the app, its Swarm service and its records.
    Delete { name: String },
}

#[derive(Args)]
struct BuildsArgs {
    #[command(subcommand)]
    show: Option<BuildsCmd>,
    /// Only this app's builds.
    app: Option<String>,
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum BuildsCmd {
    /// One build, with why it waits if it is queued.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct NodesArgs {
    #[command(subcommand)]
    cmd: Option<NodesCmd>,
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum NodesCmd {
    /// Stop placing builds on NODE (name or id); its running builds finish.
    Drain { node: String },
    /// Place builds on NODE again.
    Activate { node: String },
}

#[derive(Subcommand)]
enum ClusterCmd {
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
}

/// A failure to report: the message is what the operator reads; `retry` marks the
/// failures a leader change explains, which are worth another try.
struct Failure {
    message: String,
    retry: bool,
}

impl Failure {
    fn fatal(message: String) -> Self {
        Self { message, retry: false }
    }
}

impl From<Status> for Failure {
    fn from(s: Status) -> Self {
        let what = match s.code() {
            Code::NotFound => "not found",
            Code::InvalidArgument => "invalid input",
            Code::AlreadyExists => "already exists",
            Code::FailedPrecondition => "refused",
            Code::Unavailable => "unavailable",
            Code::DeadlineExceeded => "timed out",
            _ => "error",
        };
        Failure { message: format!("{what}: {}", s.message()), retry: leader_changing(&s) }
    }
}

/// Did the call fail because the member is not (or no longer) the leader, or because
/// the connection to it broke? Errors the scheduler itself answers carry no transport
/// error as their source; "not the leader" carries the leader hint.
fn leader_changing(s: &Status) -> bool {
    s.metadata().contains_key(crate::error::LEADER_HINT)
        || (matches!(s.code(), Code::Unavailable | Code::Unknown | Code::Cancelled)
            && std::error::Error::source(s).is_some())
}

type Result<T> = std::result::Result<T, Failure>;

/// Runs the CLI; returns the process exit code.
pub async fn main() -> i32 {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => 0,
        Err(Failure { message, .. }) => {
            eprintln!("error: {message}");
            1
        }
    }
}

/// How this process reaches the schedulers (set once from the config).
static TRANSPORT: std::sync::OnceLock<Transport> = std::sync::OnceLock::new();

async fn connect(addr: &str) -> std::result::Result<ControlClient<Channel>, String> {
    let transport = TRANSPORT.get().cloned().unwrap_or(Transport::Insecure);
    let endpoint = transport.endpoint(addr)?.connect_timeout(Duration::from_secs(3));
    let channel =
        endpoint.connect().await.map_err(|e| format!("{addr}: {}", slipway_proto::tls::error_chain(&e)))?;
    Ok(ControlClient::new(channel).max_decoding_message_size(64 << 20))
}

/// Connects to the leader: asks the members in turn who leads. While an election is
/// under way (nobody leads) or the leader cannot be reached, a member that answers is
/// used (it forwards writes, or says who leads once the election is over). A scheduler
/// that belongs to no cluster yet (waiting to join) is only used when nothing else
/// answers, so `cluster status` can still say so.
async fn leader(addrs: &[String]) -> Result<ControlClient<Channel>> {
    let mut errors = Vec::new();
    let mut member = None;
    let mut outsider = None;
    for addr in addrs {
        let mut client = match connect(addr).await {
            Ok(c) => c,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        let status = match client.cluster_status(pb::ClusterStatusRequest {}).await {
            Ok(s) => s.into_inner(),
            Err(e) => {
                errors.push(format!("{addr}: {}", e.message()));
                continue;
            }
        };
        if status.members.is_empty() {
            outsider.get_or_insert(client);
            continue;
        }
        if status.leader_id == status.node_id {
            return Ok(client);
        }
        if let Some(m) = status.members.iter().find(|m| m.id == status.leader_id) {
            if let Ok(c) = connect(&m.addr).await {
                return Ok(c);
            }
        }
        member.get_or_insert(client);
    }
    member.or(outsider).ok_or_else(|| {
        Failure::fatal(format!(
            "cannot reach a scheduler ({}); is slipway-scheduler running? (`./packaging/quickstart.sh` starts one)",
            errors.join("; ")
        ))
    })
}

fn print_json(value: &Value) {
    println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
}

/// How long the CLI keeps retrying a request that failed because the cluster is
/// changing leader (or the member it talked to went away).
const RETRY_FOR: Duration = Duration::from_secs(20);

async fn run(cli: Cli) -> Result<()> {
    let (addrs, transport) =
        config::resolve(cli.config.as_deref(), &cli.schedulers).map_err(Failure::fatal)?;
    let _ = TRANSPORT.set(transport);
    // One id for every retry: the scheduler joins a retried deploy to the first one.
    let request_id = uuid::Uuid::new_v4().to_string();
    let deadline = Instant::now() + RETRY_FOR;
    let mut retry = false;
    loop {
        let result = match leader(&addrs).await {
            Ok(mut c) => execute(&mut c, &cli.command, &request_id, retry).await,
            Err(f) => Err(f),
        };
        match result {
            Err(f) if f.retry && Instant::now() < deadline => {
                if !retry {
                    eprintln!("note: {}; retrying", f.message);
                }
                retry = true;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            other => return other,
        }
    }
}

/// Runs one command against `c`. `retry` says an earlier attempt may have happened,
/// so "already exists" / "not found" from a create or delete that may have gone
/// through count as done.
async fn execute(
    c: &mut ControlClient<Channel>,
    command: &Command,
    request_id: &str,
    retry: bool,
) -> Result<()> {
    match command {
        Command::Apps(AppsCmd::Create { name, repo, branch }) => {
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
        Command::Apps(AppsCmd::List { json }) => {
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
        Command::Apps(AppsCmd::Show { name, json }) => {
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
            }
        }
        Command::Apps(AppsCmd::Delete { name }) => {
            match c.delete_app(pb::DeleteAppRequest { name: name.clone() }).await {
                Ok(_) => {}
                Err(s) if retry && s.code() == Code::NotFound => {}
                Err(s) => return Err(s.into()),
            }
            println!("app {name} deleted (its service was removed)");
        }
        Command::Deploy { app, git_ref, no_cache } => {
            let req = pb::DeployRequest {
                app: app.clone(),
                git_ref: git_ref.clone().unwrap_or_default(),
                no_cache: *no_cache,
                request_id: request_id.to_string(),
            };
            let stream = c.deploy(req).await?.into_inner();
            follow_deploy(stream).await?;
        }
        Command::Builds(BuildsArgs { show: Some(BuildsCmd::Show { id, json }), .. }) => {
            let b = c.get_build(pb::GetBuildRequest { id: id.clone() }).await?.into_inner();
            if *json {
                print_json(&output::build_json(&b));
            } else {
                print_build(&b);
            }
        }
        Command::Builds(BuildsArgs { show: None, app, json }) => {
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
        Command::Logs { build, follow } => {
            let mut stream = c
                .build_logs(pb::BuildLogsRequest { build_id: build.clone(), follow: *follow })
                .await?
                .into_inner();
            while let Some(line) = stream.next().await {
                println!("{}", line?.line);
            }
        }
        Command::Releases { app, json } => {
            let releases =
                c.list_releases(pb::ListReleasesRequest { app: app.clone() }).await?.into_inner().releases;
            if *json {
                print_json(&Value::Array(releases.iter().map(output::release_json).collect()));
            } else {
                let rows = releases
                    .iter()
                    .map(|r| {
                        let what = if r.rollback_of != 0 {
                            format!("rollback to v{}", r.rollback_of)
                        } else {
                            format!("build {}", r.build_id)
                        };
                        vec![
                            format!("v{}", r.number),
                            short_digest(&r.digest),
                            r.git_sha.chars().take(10).collect(),
                            what,
                            deploy_state(r.deploy_state).into(),
                            age(r.created_at_ms),
                        ]
                    })
                    .collect();
                table(&["RELEASE", "DIGEST", "GIT SHA", "FROM", "DEPLOY", "CREATED"], rows);
            }
        }
        Command::Rollback { app, to } => {
            let req = pb::RollbackRequest {
                app: app.clone(),
                to: to.unwrap_or(0),
                request_id: request_id.to_string(),
            };
            let stream = c.rollback(req).await?.into_inner();
            follow_deploy(stream).await?;
        }
        Command::Nodes(NodesArgs {
            cmd: Some(NodesCmd::Drain { node } | NodesCmd::Activate { node }),
            ..
        }) => {
            let draining =
                matches!(command, Command::Nodes(NodesArgs { cmd: Some(NodesCmd::Drain { .. }), .. }));
            let req = pb::SetNodeDrainRequest { node: node.clone(), draining };
            let n = c.set_node_drain(req).await?.into_inner();
            if n.draining {
                println!("node {} is draining: it finishes its running builds and gets no new ones", n.name);
            } else {
                println!("node {} is active: builds may be placed on it", n.name);
            }
        }
        Command::Nodes(NodesArgs { cmd: None, json }) => {
            let nodes = c.list_nodes(pb::ListNodesRequest {}).await?.into_inner().nodes;
            if *json {
                print_json(&Value::Array(nodes.iter().map(output::node_json).collect()));
            } else {
                let rows = nodes
                    .iter()
                    .map(|n| {
                        let r = n.report.clone().unwrap_or_default();
                        let status = if n.draining {
                            format!("{} (draining)", node_status(n.status))
                        } else {
                            node_status(n.status).into()
                        };
                        vec![
                            n.name.clone(),
                            status,
                            format!(
                                "{} / {}",
                                human_bytes(r.build_fs_available_bytes),
                                human_bytes(r.build_fs_total_bytes)
                            ),
                            format!("{:.0}% of {}", r.cpu_usage_percent, r.cpu_count),
                            format!(
                                "{} / {}",
                                human_bytes(r.memory_available_bytes),
                                human_bytes(r.memory_total_bytes)
                            ),
                            format!("{}/{}", r.running_builds, r.build_slots),
                            human_bytes(r.cache_bytes),
                            r.docker_version.clone(),
                            if n.last_report_age_ms == 0 {
                                "-".into()
                            } else {
                                format!("{}s", n.last_report_age_ms / 1000)
                            },
                        ]
                    })
                    .collect();
                table(
                    &[
                        "NODE",
                        "STATUS",
                        "BUILD FS FREE",
                        "CPU USED",
                        "MEM FREE",
                        "BUILDS",
                        "CACHE",
                        "ENGINE",
                        "LAST REPORT",
                    ],
                    rows,
                );
            }
        }
        Command::Cluster(ClusterCmd::Join { addr, id }) => {
            let req = pb::AddMemberRequest { addr: addr.clone(), node_id: id.unwrap_or(0) };
            let status = c.add_member(req).await?.into_inner();
            let joined = status.members.iter().find(|m| m.addr == *addr).map_or(0, |m| m.id);
            println!("scheduler {joined} at {addr} joined the cluster ({} members)", status.members.len());
        }
        Command::Cluster(ClusterCmd::Remove { id }) => {
            match c.remove_member(pb::RemoveMemberRequest { node_id: *id }).await {
                Ok(_) => {}
                Err(s) if retry && s.code() == Code::NotFound => {}
                Err(s) => return Err(s.into()),
            }
            println!(
                "scheduler {id} removed from the cluster; stop it, and empty its data_dir before it joins again"
            );
        }
        Command::Cluster(ClusterCmd::Status { json }) => cluster_status(c, *json).await?,
        Command::Cluster(ClusterCmd::Token { role, rotate }) => {
            let req = pb::JoinTokenRequest { role: role.clone(), rotate: *rotate };
            println!("{}", c.join_token(req).await?.into_inner().token);
        }
        Command::Cluster(ClusterCmd::AdminCert { name, out }) => {
            let (key_pem, csr_pem) = slipway_proto::tls::new_key_and_csr().map_err(Failure::fatal)?;
            let req = pb::IssueAdminCertRequest { name: name.clone(), csr_pem };
            let got = c.issue_admin_cert(req).await?.into_inner();
            let creds =
                slipway_proto::tls::Credentials { ca_pem: got.ca_pem, cert_pem: got.cert_pem, key_pem };
            creds.save_dir(out).map_err(Failure::fatal)?;
            println!(
                "operator certificate for {name:?} in {}: point [tls] ca, cert and key of a CLI config at it",
                out.display()
            );
        }
    }
    Ok(())
}

/// `cluster status`: the members as the member `c` knows them, each asked for its own
/// view (role, term, log position); the leader's view adds what it replicated to each.
async fn cluster_status(c: &mut ControlClient<Channel>, json: bool) -> Result<()> {
    let first = c.cluster_status(pb::ClusterStatusRequest {}).await?.into_inner();
    if first.members.is_empty() {
        println!(
            "scheduler {} is not a member of any cluster yet: add it with `slipway cluster join ADDR` \
             against the cluster",
            first.node_id
        );
        return Ok(());
    }
    let from_leader = first.leader_id == first.node_id;
    let views = futures::future::join_all(first.members.iter().map(|m| async move {
        let view = match tokio::time::timeout(Duration::from_secs(3), connect(&m.addr)).await {
            Err(_) => Err("no answer in 3 s".to_string()),
            Ok(Err(e)) => Err(e),
            Ok(Ok(mut client)) => {
                match tokio::time::timeout(
                    Duration::from_secs(3),
                    client.cluster_status(pb::ClusterStatusRequest {}),
                )
                .await
                {
                    Err(_) => Err("no answer in 3 s".to_string()),
                    Ok(Err(s)) => Err(s.message().to_string()),
                    Ok(Ok(r)) => Ok(r.into_inner()),
                }
            }
        };
        (m.clone(), view)
    }))
    .await;
    let leader = views
        .iter()
        .filter_map(|(_, v)| v.as_ref().ok())
        .find(|v| v.leader_id == v.node_id)
        .map_or(0, |v| v.node_id);
    if json {
        let members: Vec<Value> = views
            .iter()
            .map(|(m, v)| {
                let mut entry = serde_json::json!({
                    "id": m.id, "addr": m.addr, "voter": m.voter,
                    "matched_index": from_leader.then_some(m.matched_index),
                });
                match v {
                    Ok(v) => {
                        entry["reachable"] = true.into();
                        entry["state"] = v.state.clone().into();
                        entry["term"] = v.term.into();
                        entry["last_log_index"] = v.last_log_index.into();
                        entry["last_applied_index"] = v.last_applied_index.into();
                        entry["snapshot_index"] = v.snapshot_index.into();
                        entry["purged_index"] = v.purged_index.into();
                    }
                    Err(e) => {
                        entry["reachable"] = false.into();
                        entry["error"] = e.clone().into();
                    }
                }
                entry
            })
            .collect();
        print_json(&serde_json::json!({ "leader_id": leader, "members": members }));
        return Ok(());
    }
    match leader {
        0 => println!("no leader: fewer than a majority of the members answer, or an election is under way"),
        id => println!("leader: scheduler {id}"),
    }
    let rows = views
        .iter()
        .map(|(m, v)| {
            let role = if m.voter { "voter" } else { "learner" };
            let matched = if from_leader { m.matched_index.to_string() } else { "-".into() };
            match v {
                Ok(v) => vec![
                    m.id.to_string(),
                    m.addr.clone(),
                    role.into(),
                    v.state.clone(),
                    v.term.to_string(),
                    v.last_log_index.to_string(),
                    v.last_applied_index.to_string(),
                    v.snapshot_index.to_string(),
                    matched,
                ],
                Err(e) => vec![
                    m.id.to_string(),
                    m.addr.clone(),
                    role.into(),
                    format!("unreachable ({})", e.chars().take(60).collect::<String>()),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    matched,
                ],
            }
        })
        .collect();
    table(&["ID", "ADDRESS", "ROLE", "STATE", "TERM", "LAST LOG", "APPLIED", "SNAPSHOT", "MATCHED"], rows);
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
            "image:    {}@{}\npushed:   {} layers ({}), {} reused; {} of {} steps cached",
            o.repository,
            o.digest,
            o.layers_pushed,
            human_bytes(o.bytes_pushed),
            o.layers_reused,
            o.cache_hits,
            o.steps
        );
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

/// Prints a deploy's events until it ends; an error if it failed.
async fn follow_deploy(mut stream: tonic::Streaming<DeployEvent>) -> Result<()> {
    let mut build_id = String::new();
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(e) => e,
            Err(status) => {
                return Err(Failure::fatal(format!(
                    "lost the scheduler while following the deploy ({}); it goes on without you: see `slipway builds show {build_id}`",
                    status.message()
                )))
            }
        };
        match event.event {
            Some(Event::BuildQueued(id)) => {
                println!("==> build {id} queued");
                build_id = id;
            }
            Some(Event::Placement(p)) if !p.node_id.is_empty() => println!("==> building on {}", p.node_name),
            Some(Event::Placement(p)) => {
                println!("==> waiting for a node that can build:");
                for r in &p.rejected {
                    println!("    {}: {}", r.node_name, r.reason);
                }
                if p.rejected.is_empty() {
                    println!("    no agents are registered: start slipway-agent on a node");
                }
            }
            Some(Event::Log(line)) => println!("{}", line.line),
            Some(Event::Built(o)) => {
                let t = o.timings.unwrap_or_default();
                println!(
                    "==> image {}@{}: {} layers pushed ({}), {} reused, {}/{} steps cached; clone {} ms, build {} ms, push {} ms",
                    o.repository, o.digest, o.layers_pushed, human_bytes(o.bytes_pushed), o.layers_reused, o.cache_hits, o.steps,
                    t.clone_ms, t.build_ms, t.push_ms
                );
            }
            Some(Event::Release(r)) => {
                let from = if r.rollback_of != 0 {
                    format!(" (image of v{})", r.rollback_of)
                } else {
                    String::new()
                };
                println!("==> release v{} of {} recorded: {}{from}", r.number, r.app, r.image);
            }
            Some(Event::DeployProgress(line)) => println!("    {line}"),
            Some(Event::Done(d)) => {
                let number = d.release.as_ref().map_or(0, |r| r.number);
                let port = if d.published_port != 0 {
                    format!(", published on port {}", d.published_port)
                } else {
                    String::new()
                };
                println!(
                    "==> release v{number} is live: service {} runs {} task(s){port}",
                    d.service, d.running
                );
                return Ok(());
            }
            Some(Event::Failed(reason)) => return Err(Failure::fatal(reason)),
            None => {}
        }
    }
    Err(Failure::fatal(format!(
        "the scheduler ended the stream before the deploy finished; see `slipway builds show {build_id}`"
    )))
}
