//! The chaos run: a 3-member cluster of the real `slipway-scheduler` binaries, each in
//! its own network namespace ([`TestCluster::start_replicated`]), clients issuing
//! creates, deletes, deploys-to-nowhere and reads over mTLS while a [`nemesis`] kills,
//! pauses and partitions members; then the history is checked.
//!
//! - **Clients** (`clients` tasks) each pick an app from a small pool (`apps` names,
//!   so few builds wait at once: waiting builds cost the leader's dispatcher), an
//!   operation, and a random member (or the leader a refusal named, as the CLI
//!   follows). Writes carry the id of their operation ([`model`]), so reads tell which
//!   write they see. The cluster's agent is stopped, so a deploy's build stays queued
//!   until the placement's queue timeout fails it: deploys exercise `QueueBuild` and
//!   its request-id idempotence without building anything.
//! - **Outcomes.** An answer is recorded as it came (a refusal such as `AlreadyExists`
//!   or `NotFound` is an answer); a timeout or an error after the request may have
//!   reached the leader is *unknown* (it may take effect later, or never); a request
//!   that never left (no connection) is not recorded. Reads and deploys (same request
//!   id) retry on other members within one operation; creates and deletes do not (a
//!   retry could see its own first attempt), a refusal naming the leader sends the
//!   client's next operation there.
//! - **Nemesis.** `events` faults one after another, each picked by the seeded RNG
//!   among the enabled [`Fault`]s and aimed at the leader half of the time: held for
//!   `hold`, undone, then the run waits until every member answers and agrees on a
//!   leader ("survived") and a `quiet` pause passes. A fault on the leader times the
//!   failover: until the other members agree on a new leader.
//! - **Checks** once the nemesis stopped and a leader is agreed: final reads of every
//!   app (through the leader, recorded in the history); every member answers with the
//!   same apps and builds (converged); the history is linearizable per app
//!   ([`crate::linearizability`] against [`model::AppModel`]); no acknowledged create
//!   missing at the end unless a delete may have removed it (lost write); no build
//!   listed twice (a write applied twice).
//!
//! The seed is printed first: the same seed replays the same faults on the same
//! members and the same client choices (timings, and so interleavings, differ).

pub mod model;
pub mod nemesis;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use slipway_proto::control_client::ControlClient;
use slipway_proto::deploy_event::Event;
use slipway_proto::{self as pb};
use tonic::transport::Channel;
use tonic::Code;

use crate::linearizability::{self, Operation};
use crate::TestCluster;
use model::{AppModel, Input, Output};
pub use nemesis::Fault;

/// How long a client waits for one answer before calling the outcome unknown.
const OP_TIMEOUT: Duration = Duration::from_secs(12);
/// How long reads and deploys keep retrying on other members.
const RETRY_FOR: Duration = Duration::from_secs(15);
/// How long the cluster may take to agree on a leader after a fault is undone.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(45);
/// How long a status probe of one member may take (a paused member never answers).
const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);

/// What to run.
#[derive(Debug, Clone)]
pub struct ChaosConfig {
    /// Stack name (unique among tests running at once; also the network lab's tag).
    pub stack: String,
    /// Seeds the nemesis and the clients' choices.
    pub seed: u64,
    /// Nemesis events.
    pub events: usize,
    /// Concurrent clients.
    pub clients: usize,
    /// App names in the pool.
    pub apps: usize,
    /// How long a fault is held: a random duration in this range.
    pub hold: (Duration, Duration),
    /// Pause between a recovery and the next fault.
    pub quiet: Duration,
    /// The faults the nemesis picks among.
    pub faults: Vec<Fault>,
    /// Environment for every scheduler process (a test-only switch).
    pub member_env: Vec<(String, String)>,
}

impl ChaosConfig {
    /// Every fault kind, 4 clients, 4 apps, faults held 2-5 s, 1 s quiet.
    pub fn new(stack: &str, seed: u64, events: usize) -> ChaosConfig {
        ChaosConfig {
            stack: stack.to_string(),
            seed,
            events,
            clients: 4,
            apps: 4,
            hold: (Duration::from_secs(2), Duration::from_secs(5)),
            quiet: Duration::from_secs(1),
            faults: Fault::ALL.to_vec(),
            member_env: Vec::new(),
        }
    }
}

/// What a run found.
#[derive(Debug, Default)]
pub struct ChaosReport {
    /// The seed.
    pub seed: u64,
    /// Wall-clock time of the whole run (setup included).
    pub duration: Duration,
    /// Faults injected, by kind.
    pub injected: BTreeMap<&'static str, usize>,
    /// Faults after which the cluster agreed on a leader again, by kind.
    pub survived: BTreeMap<&'static str, usize>,
    /// Operations by kind and outcome (`ok`, `refused`, `unknown`, `not-sent`).
    pub outcomes: BTreeMap<(&'static str, &'static str), usize>,
    /// Operations the linearizability checker searched.
    pub checked: usize,
    /// Everything found wrong, one line (or paragraph) each.
    pub violations: Vec<String>,
    /// Times from a fault on the leader until the others agreed on a new one.
    pub failovers: Vec<Duration>,
    /// Times from undoing a fault until every member agreed on a leader.
    pub recoveries: Vec<Duration>,
}

impl ChaosReport {
    /// No violation.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

fn median_max(samples: &[Duration]) -> String {
    if samples.is_empty() {
        return "none".to_string();
    }
    let mut sorted = samples.to_vec();
    sorted.sort();
    format!(
        "median {:.2} s, max {:.2} s ({} samples)",
        sorted[sorted.len() / 2].as_secs_f64(),
        sorted[sorted.len() - 1].as_secs_f64(),
        sorted.len()
    )
}

impl std::fmt::Display for ChaosReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "chaos run, seed {} ({:.0} s)", self.seed, self.duration.as_secs_f64())?;
        writeln!(f, "  nemesis events survived / injected, by kind:")?;
        for (kind, n) in &self.injected {
            writeln!(f, "    {kind:<9} {} / {n}", self.survived.get(kind).copied().unwrap_or(0))?;
        }
        writeln!(f, "  operations by outcome:")?;
        let kinds: BTreeSet<&str> = self.outcomes.keys().map(|(k, _)| *k).collect();
        for kind in kinds {
            let line: Vec<String> = ["ok", "refused", "unknown", "not-sent"]
                .iter()
                .map(|o| format!("{o} {}", self.outcomes.get(&(kind, *o)).copied().unwrap_or(0)))
                .collect();
            writeln!(f, "    {kind:<11} {}", line.join(", "))?;
        }
        writeln!(f, "  operations checked for linearizability: {}", self.checked)?;
        writeln!(
            f,
            "  failover under chaos (fault on the leader → others agree on a new one): {}",
            median_max(&self.failovers)
        )?;
        writeln!(
            f,
            "  recovery (fault undone → every member agrees on a leader): {}",
            median_max(&self.recoveries)
        )?;
        writeln!(f, "  violations: {}", self.violations.len())?;
        for v in &self.violations {
            writeln!(f, "  - {}", v.trim_end().replace('\n', "\n    "))?;
        }
        Ok(())
    }
}

/// The history and tallies the clients fill.
struct Recorder {
    start: Instant,
    next_id: AtomicU64,
    ops: Mutex<Vec<Operation<Input, Output>>>,
    outcomes: Mutex<BTreeMap<(&'static str, &'static str), usize>>,
    violations: Mutex<Vec<String>>,
}

impl Recorder {
    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn tally(&self, kind: &'static str, outcome: &'static str) {
        *self.outcomes.lock().expect("tallies").entry((kind, outcome)).or_default() += 1;
    }

    /// Records a finished operation (`output` None: unknown outcome).
    #[allow(clippy::too_many_arguments)]
    fn record(&self, id: u64, client: usize, key: &str, input: Input, output: Option<Output>, call: u64) {
        let ret = output.as_ref().map(|_| self.now());
        let op = Operation { id, client, key: key.to_string(), input, output, call, ret };
        self.ops.lock().expect("history").push(op);
    }

    fn violation(&self, what: String) {
        self.violations.lock().expect("violations").push(what);
    }
}

/// What one call to a member came to.
enum Heard<T> {
    Answer(T),
    Refused(tonic::Status),
    /// No connection: the request never left.
    NotSent,
    TimedOut,
}

async fn call<T, F, Fut>(cluster: &TestCluster, member: u64, f: F) -> Heard<T>
where
    F: FnOnce(ControlClient<Channel>) -> Fut,
    Fut: Future<Output = Result<T, tonic::Status>>,
{
    let client = match tokio::time::timeout(Duration::from_secs(3), cluster.member_client(member)).await {
        Ok(Ok(client)) => client,
        _ => return Heard::NotSent,
    };
    match tokio::time::timeout(OP_TIMEOUT, f(client)).await {
        Ok(Ok(answer)) => Heard::Answer(answer),
        Ok(Err(status)) => Heard::Refused(status),
        Err(_) => Heard::TimedOut,
    }
}

/// The member a "not the leader" refusal names, if any.
fn hinted(cluster: &TestCluster, status: &tonic::Status) -> Option<u64> {
    let addr = status.metadata().get(pb::metadata::LEADER_HINT)?.to_str().ok()?;
    cluster.member_ids().into_iter().find(|&id| cluster.grpc_addr(id) == addr)
}

/// One client's loop: random operations on random apps until `stop`.
async fn client_loop(
    cluster: Arc<TestCluster>,
    rec: Arc<Recorder>,
    client: usize,
    seed: u64,
    apps: Vec<String>,
    stop: Arc<AtomicBool>,
) {
    let mut rng = StdRng::seed_from_u64(seed ^ (client as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let members = cluster.member_ids();
    let mut hint: Option<u64> = None;
    while !stop.load(Ordering::Relaxed) {
        let key = apps[rng.random_range(0..apps.len())].clone();
        let target = hint.take().unwrap_or_else(|| members[rng.random_range(0..members.len())]);
        let roll = rng.random_range(0..100);
        let c = &cluster;
        hint = match roll {
            0..20 => create(c, &rec, client, &key, target).await,
            20..40 => delete(c, &rec, client, &key, &mut rng).await,
            40..44 => deploy(c, &rec, client, &key, target, seed, &mut rng).await,
            44..74 => get(c, &rec, client, &key, target, &mut rng).await,
            74..87 => list_builds(c, &rec, client, &key, target, &mut rng).await,
            _ => list_apps(c, &rec, client, &apps, target, &mut rng).await,
        };
        tokio::time::sleep(Duration::from_millis(rng.random_range(20..120))).await;
    }
}

/// `CreateApp`, once. Returns the leader a refusal named.
async fn create(cluster: &TestCluster, rec: &Recorder, client: usize, key: &str, target: u64) -> Option<u64> {
    let (id, call_at) = (rec.id(), rec.now());
    let req = pb::CreateAppRequest { name: key.into(), repo: model::repo_url(id), branch: "main".into() };
    let heard = call(cluster, target, |mut c| async move { c.create_app(req).await }).await;
    let input = Input::Create { id };
    match heard {
        Heard::Answer(_) => {
            rec.tally("create", "ok");
            rec.record(id, client, key, input, Some(Output::Created), call_at);
        }
        Heard::Refused(s) if s.code() == Code::AlreadyExists => {
            rec.tally("create", "refused");
            rec.record(id, client, key, input, Some(Output::Exists), call_at);
        }
        Heard::Refused(s) => {
            assert_ne!(s.code(), Code::InvalidArgument, "the chaos clients sent a bad request: {s:?}");
            rec.tally("create", "unknown");
            rec.record(id, client, key, input, None, call_at);
            return hinted(cluster, &s);
        }
        Heard::TimedOut => {
            rec.tally("create", "unknown");
            rec.record(id, client, key, input, None, call_at);
        }
        Heard::NotSent => rec.tally("create", "not-sent"),
    }
    None
}

/// The leader as a random member sees it (`None` if it does not answer or knows none).
async fn ask_leader(cluster: &TestCluster, rng: &mut StdRng) -> Option<u64> {
    let members = cluster.member_ids();
    let asked = members[rng.random_range(0..members.len())];
    let status = tokio::time::timeout(PROBE_TIMEOUT, cluster.status_of(asked)).await.ok()?.ok()?;
    (status.leader_id != 0).then_some(status.leader_id)
}

/// `DeleteApp` (served by the leader only), once, sent where a member says the leader is.
async fn delete(
    cluster: &TestCluster,
    rec: &Recorder,
    client: usize,
    key: &str,
    rng: &mut StdRng,
) -> Option<u64> {
    let members = cluster.member_ids();
    let target = match ask_leader(cluster, rng).await {
        Some(leader) => leader,
        None => members[rng.random_range(0..members.len())],
    };
    let (id, call_at) = (rec.id(), rec.now());
    let req = pb::DeleteAppRequest { name: key.into() };
    let heard = call(cluster, target, |mut c| async move { c.delete_app(req).await }).await;
    let output = match heard {
        Heard::Answer(_) => Some(Output::Deleted),
        Heard::Refused(s) if s.code() == Code::NotFound => Some(Output::NotFound),
        Heard::Refused(s) if s.code() == Code::FailedPrecondition => Some(Output::Busy),
        Heard::Refused(s) => {
            rec.tally("delete", "unknown");
            rec.record(id, client, key, Input::Delete, None, call_at);
            return hinted(cluster, &s);
        }
        Heard::TimedOut => None,
        Heard::NotSent => {
            rec.tally("delete", "not-sent");
            return None;
        }
    };
    let outcome = match output {
        Some(Output::Deleted) => "ok",
        Some(_) => "refused",
        None => "unknown",
    };
    rec.tally("delete", outcome);
    rec.record(id, client, key, Input::Delete, output, call_at);
    None
}

/// `Deploy` with a unique ref and request id, retried with the same request id (the
/// scheduler answers a repeated one with the first build) until an answer.
async fn deploy(
    cluster: &TestCluster,
    rec: &Recorder,
    client: usize,
    key: &str,
    mut target: u64,
    seed: u64,
    rng: &mut StdRng,
) -> Option<u64> {
    let (id, call_at) = (rec.id(), rec.now());
    let deadline = Instant::now() + RETRY_FOR;
    let members = cluster.member_ids();
    let mut maybe_applied = false;
    let mut hint = None;
    let output = loop {
        let req = pb::DeployRequest {
            app: key.into(),
            git_ref: model::git_ref(id),
            no_cache: false,
            request_id: format!("chaos-{seed}-{id}"),
        };
        let heard = call(cluster, target, |mut c| async move {
            let mut stream = c.deploy(req).await?.into_inner();
            stream.message().await
        })
        .await;
        match heard {
            Heard::Answer(Some(pb::DeployEvent { event: Some(Event::BuildQueued(_)) })) => {
                break Some(Output::Queued)
            }
            Heard::Refused(s) if s.code() == Code::NotFound && !maybe_applied => {
                break Some(Output::NotFound)
            }
            Heard::Refused(s) if s.code() == Code::NotFound => break None,
            Heard::Refused(s) => {
                maybe_applied = true;
                hint = hinted(cluster, &s);
            }
            Heard::Answer(_) | Heard::TimedOut => maybe_applied = true,
            Heard::NotSent => {}
        }
        if Instant::now() >= deadline {
            if !maybe_applied {
                rec.tally("deploy", "not-sent");
                return hint;
            }
            break None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        target = hint.take().unwrap_or_else(|| members[rng.random_range(0..members.len())]);
    };
    let outcome = match output {
        Some(Output::Queued) => "ok",
        Some(_) => "refused",
        None => "unknown",
    };
    rec.tally("deploy", outcome);
    rec.record(id, client, key, Input::Deploy { id }, output, call_at);
    hint
}

/// Sends a read until some member answers it (within [`RETRY_FOR`]); the answer or the
/// definite refusal (`NotFound`), or `None` when no member answered.
async fn read<T, F, Fut>(
    cluster: &TestCluster,
    mut target: u64,
    rng: &mut StdRng,
    f: F,
) -> Option<Result<T, tonic::Status>>
where
    F: Fn(ControlClient<Channel>) -> Fut,
    Fut: Future<Output = Result<T, tonic::Status>>,
{
    let deadline = Instant::now() + RETRY_FOR;
    let members = cluster.member_ids();
    loop {
        let mut hint = None;
        match call(cluster, target, &f).await {
            Heard::Answer(answer) => return Some(Ok(answer)),
            Heard::Refused(s) if s.code() == Code::NotFound => return Some(Err(s)),
            Heard::Refused(s) => hint = hinted(cluster, &s),
            Heard::TimedOut | Heard::NotSent => {}
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        target = hint.unwrap_or_else(|| members[rng.random_range(0..members.len())]);
    }
}

fn app_output(app: &pb::App) -> Output {
    // An app no chaos client created would be a write from nowhere: u64::MAX matches
    // no create, so the checker reports it.
    Output::App { create: model::create_of(&app.repo).unwrap_or(u64::MAX) }
}

async fn get(
    cluster: &TestCluster,
    rec: &Recorder,
    client: usize,
    key: &str,
    target: u64,
    rng: &mut StdRng,
) -> Option<u64> {
    let (id, call_at) = (rec.id(), rec.now());
    let name = key.to_string();
    let answer = read(cluster, target, rng, |mut c| {
        let req = pb::GetAppRequest { name: name.clone() };
        async move { c.get_app(req).await.map(|r| r.into_inner()) }
    })
    .await;
    let output = match answer {
        Some(Ok(app)) => app_output(&app),
        Some(Err(_)) => Output::NotFound,
        None => {
            rec.tally("get", "unknown");
            return None;
        }
    };
    rec.tally("get", "ok");
    rec.record(id, client, key, Input::Get, Some(output), call_at);
    None
}

async fn list_builds(
    cluster: &TestCluster,
    rec: &Recorder,
    client: usize,
    key: &str,
    target: u64,
    rng: &mut StdRng,
) -> Option<u64> {
    let (id, call_at) = (rec.id(), rec.now());
    let name = key.to_string();
    let answer = read(cluster, target, rng, |mut c| {
        let req = pb::ListBuildsRequest { app: name.clone() };
        async move { c.list_builds(req).await.map(|r| r.into_inner().builds) }
    })
    .await;
    let output = match answer {
        Some(Ok(builds)) => {
            let deploys: Vec<u64> =
                builds.iter().map(|b| model::deploy_of(&b.git_ref).unwrap_or(u64::MAX)).collect();
            let twice = model::duplicates(&deploys);
            if !twice.is_empty() {
                rec.violation(format!(
                    "applied twice: app {key} lists the builds of deploys {twice:?} more than once"
                ));
            }
            Output::Builds(deploys.into_iter().collect())
        }
        Some(Err(_)) => Output::NotFound,
        None => {
            rec.tally("list-builds", "unknown");
            return None;
        }
    };
    rec.tally("list-builds", "ok");
    rec.record(id, client, key, Input::ListBuilds, Some(output), call_at);
    None
}

/// `ListApps`, recorded as one read of each app of the pool (same call and return):
/// a sound projection of a read of every key.
async fn list_apps(
    cluster: &TestCluster,
    rec: &Recorder,
    client: usize,
    apps: &[String],
    target: u64,
    rng: &mut StdRng,
) -> Option<u64> {
    let call_at = rec.now();
    let answer = read(cluster, target, rng, |mut c| async move {
        c.list_apps(pb::ListAppsRequest {}).await.map(|r| r.into_inner().apps)
    })
    .await;
    let Some(Ok(listed)) = answer else {
        rec.tally("list-apps", "unknown");
        return None;
    };
    rec.tally("list-apps", "ok");
    let ret = rec.now();
    for key in apps {
        let output = listed.iter().find(|a| &a.name == key).map_or(Output::NotFound, app_output);
        let op = Operation {
            id: rec.id(),
            client,
            key: key.clone(),
            input: Input::Get,
            output: Some(output),
            call: call_at,
            ret: Some(ret),
        };
        rec.ops.lock().expect("history").push(op);
    }
    None
}

/// Member `id`'s status, or None if it does not answer in time.
async fn probe(cluster: &TestCluster, id: u64) -> Option<pb::ClusterStatusResponse> {
    tokio::time::timeout(PROBE_TIMEOUT, cluster.status_of(id)).await.ok()?.ok()
}

/// The leader every one of `members` names (and which claims it), if they agree.
async fn agreed_leader(cluster: &TestCluster, members: &[u64]) -> Option<u64> {
    let mut leaders = BTreeSet::new();
    let mut claimed = false;
    for &id in members {
        let status = probe(cluster, id).await?;
        leaders.insert(status.leader_id);
        claimed |= status.node_id == status.leader_id && status.state == "Leader";
    }
    match leaders.into_iter().collect::<Vec<_>>()[..] {
        [leader] if leader != 0 && claimed => Some(leader),
        _ => None,
    }
}

/// The state member `id` answers with: every app's repo, every build's (app, ref).
async fn view_of(
    cluster: &TestCluster,
    id: u64,
) -> Result<(BTreeMap<String, String>, Vec<(String, String)>), String> {
    let mut client = tokio::time::timeout(PROBE_TIMEOUT, cluster.member_client(id))
        .await
        .map_err(|_| "no connection in time".to_string())?
        .map_err(|e| e.to_string())?;
    let apps = tokio::time::timeout(OP_TIMEOUT, client.list_apps(pb::ListAppsRequest {}))
        .await
        .map_err(|_| "list apps timed out".to_string())?
        .map_err(|s| s.message().to_string())?
        .into_inner()
        .apps;
    let builds =
        tokio::time::timeout(OP_TIMEOUT, client.list_builds(pb::ListBuildsRequest { app: String::new() }))
            .await
            .map_err(|_| "list builds timed out".to_string())?
            .map_err(|s| s.message().to_string())?
            .into_inner()
            .builds;
    let apps = apps.into_iter().map(|a| (a.name, a.repo)).collect();
    let mut builds: Vec<(String, String)> = builds.into_iter().map(|b| (b.app, b.git_ref)).collect();
    builds.sort();
    Ok((apps, builds))
}

/// Runs the chaos run `config` describes; None after a loud skip where the machine
/// cannot host a replicated cluster (no Docker, not root).
pub async fn run(config: &ChaosConfig) -> Option<ChaosReport> {
    let started = Instant::now();
    println!(
        "chaos: seed {} ({} events, {} clients, {} apps; replay with --seed {})",
        config.seed, config.events, config.clients, config.apps, config.seed
    );
    let env: Vec<(&str, &str)> = config.member_env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut cluster = TestCluster::start_replicated_with_env(&config.stack, 3, "", &env).await?;
    // No agent: deploys stay queued (until the queue timeout fails them).
    cluster.kill_agent(1);
    let cluster = Arc::new(cluster);
    let mut report = ChaosReport { seed: config.seed, ..ChaosReport::default() };
    let rec = Arc::new(Recorder {
        start: Instant::now(),
        next_id: AtomicU64::new(1),
        ops: Mutex::default(),
        outcomes: Mutex::default(),
        violations: Mutex::default(),
    });
    let apps: Vec<String> = (0..config.apps).map(|i| format!("chaos{i}")).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..config.clients)
        .map(|i| {
            tokio::spawn(client_loop(
                cluster.clone(),
                rec.clone(),
                i,
                config.seed,
                apps.clone(),
                stop.clone(),
            ))
        })
        .collect();

    let mut rng = StdRng::seed_from_u64(config.seed);
    let members = cluster.member_ids();
    for event in 1..=config.events {
        let fault = config.faults[rng.random_range(0..config.faults.len())];
        let leader = agreed_leader(&cluster, &members).await;
        let random = members[rng.random_range(0..members.len())];
        let target = match leader {
            Some(leader) if rng.random_bool(0.5) => leader,
            _ => random,
        };
        let others: Vec<u64> = members.iter().copied().filter(|&m| m != target).collect();
        let peer = others[rng.random_range(0..others.len())];
        let hold_for = Duration::from_millis(
            rng.random_range(config.hold.0.as_millis() as u64..=config.hold.1.as_millis() as u64),
        );
        let hit_leader = leader == Some(target);
        println!(
            "chaos: event {event}/{}: {} member {target}{}{} for {:.1} s",
            config.events,
            fault.name(),
            if fault == Fault::CutLink { format!(" from member {peer}") } else { String::new() },
            if hit_leader { " (the leader)" } else { "" },
            hold_for.as_secs_f64()
        );
        *report.injected.entry(fault.name()).or_default() += 1;
        let injected_at = Instant::now();
        nemesis::inject(&cluster, fault, target, peer).await;
        if hit_leader && matches!(fault, Fault::Kill | Fault::Pause | Fault::Isolate) {
            // Failover: until the others agree on a new leader (or the hold ends).
            while injected_at.elapsed() < hold_for {
                if agreed_leader(&cluster, &others).await.is_some_and(|l| l != target) {
                    report.failovers.push(injected_at.elapsed());
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let remaining = hold_for.saturating_sub(injected_at.elapsed());
        nemesis::hold(&cluster, fault, target, remaining, &mut rng).await;
        nemesis::undo(&cluster, fault, target).await;
        let undone_at = Instant::now();
        loop {
            if agreed_leader(&cluster, &members).await.is_some() {
                report.recoveries.push(undone_at.elapsed());
                *report.survived.entry(fault.name()).or_default() += 1;
                break;
            }
            if undone_at.elapsed() > RECOVERY_DEADLINE {
                report.violations.push(format!(
                    "event {event} ({} member {target}): no leader agreed by every member {} s after it was undone",
                    fault.name(),
                    RECOVERY_DEADLINE.as_secs()
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(config.quiet).await;
    }

    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("a chaos client panicked");
    }
    final_checks(&cluster, &rec, &apps, config.clients, &mut report).await;
    report.outcomes = rec.outcomes.lock().expect("tallies").clone();
    report.violations.extend(rec.violations.lock().expect("violations").drain(..));
    let history = rec.ops.lock().expect("history").clone();
    report.checked = history.len();
    let checked = linearizability::check(&AppModel, &history, linearizability::DEFAULT_STEP_BUDGET);
    for v in &checked.violations {
        report.violations.push(format!("not linearizable: {v}"));
    }
    for key in &checked.inconclusive {
        report
            .violations
            .push(format!("linearizability of app {key} inconclusive: the search ran out of steps"));
    }
    report.violations.extend(lost_creates(&history));
    report.duration = started.elapsed();
    drop(cluster);
    Some(report)
}

/// After the nemesis: a leader, final reads of every app (recorded), every member
/// answering with the same state.
async fn final_checks(
    cluster: &TestCluster,
    rec: &Recorder,
    apps: &[String],
    reader: usize,
    report: &mut ChaosReport,
) {
    let members = cluster.member_ids();
    let deadline = Instant::now() + RECOVERY_DEADLINE;
    let leader = loop {
        if let Some(leader) = agreed_leader(cluster, &members).await {
            break leader;
        }
        if Instant::now() > deadline {
            report.violations.push("no agreed leader after the nemesis stopped".into());
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut rng = StdRng::seed_from_u64(0);
    for key in apps {
        get(cluster, rec, reader, key, leader, &mut rng).await;
        list_builds(cluster, rec, reader, key, leader, &mut rng).await;
    }
    let deadline = Instant::now() + RECOVERY_DEADLINE;
    loop {
        let mut views = Vec::new();
        for &id in &members {
            views.push((id, view_of(cluster, id).await));
        }
        let first = &views[0].1;
        if first.is_ok() && views.iter().all(|(_, v)| v == first) {
            if let Ok((_, builds)) = first {
                let refs: Vec<u64> =
                    builds.iter().map(|(_, r)| model::deploy_of(r).unwrap_or(u64::MAX)).collect();
                let twice = model::duplicates(&refs);
                if !twice.is_empty() {
                    report
                        .violations
                        .push(format!("applied twice: builds of deploys {twice:?} listed more than once"));
                }
            }
            return;
        }
        if Instant::now() > deadline {
            let summary: Vec<String> = views
                .iter()
                .map(|(id, v)| match v {
                    Ok((apps, builds)) => {
                        format!("member {id}: {} apps, {} builds", apps.len(), builds.len())
                    }
                    Err(e) => format!("member {id}: no answer ({e})"),
                })
                .collect();
            report.violations.push(format!(
                "members did not converge {} s after the nemesis stopped: {}",
                RECOVERY_DEADLINE.as_secs(),
                summary.join("; ")
            ));
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Acknowledged creates the final reads do not show, though no delete could have
/// removed them (none was in flight or later on that app): lost writes, said plainly
/// (the linearizability check reports them too, as a read it cannot place).
fn lost_creates(history: &[Operation<Input, Output>]) -> Vec<String> {
    let mut lost = Vec::new();
    let mut last_read: BTreeMap<&str, &Operation<Input, Output>> = BTreeMap::new();
    for op in history.iter().filter(|o| o.input == Input::Get && o.output.is_some()) {
        if last_read.get(op.key.as_str()).is_none_or(|r| r.call < op.call) {
            last_read.insert(&op.key, op);
        }
    }
    for create in history.iter().filter(|o| o.output == Some(Output::Created)) {
        let Input::Create { id } = create.input else { continue };
        let deleted_maybe = history.iter().any(|o| {
            o.key == create.key
                && o.input == Input::Delete
                && matches!(o.output, None | Some(Output::Deleted))
                && o.ret.is_none_or(|r| r > create.call)
        });
        let Some(last) = last_read.get(create.key.as_str()) else { continue };
        if !deleted_maybe
            && last.call > create.ret.unwrap_or(u64::MAX)
            && last.output != Some(Output::App { create: id })
        {
            lost.push(format!(
                "lost write: create {id} of app {} was acknowledged and never deleted, but the last read (op {}) shows {:?}",
                create.key, last.id, last.output
            ));
        }
    }
    lost
}
