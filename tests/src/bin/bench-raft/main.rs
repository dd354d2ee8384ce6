//! `cargo run --release -p slipway-tests --bin bench-raft -- [SECONDS_PER_POINT] [KILLS] [--tls off|on|both]`:
//! what slipway's raft-replicated store costs, against etcd taking the same writes,
//! in plain text and with mutual TLS.
//!
//! Measures, in one run, on loopback, once per security mode (`--tls`, default `both`:
//! plain text first, then mutual TLS, each with new clusters and data dirs):
//! - **committed writes/s** of a 3-member slipway scheduler cluster (release build,
//!   default `[raft]` timings) at 1, 16 and 64 concurrent clients, with latency p50/p99,
//!   side by side with a 3-member etcd 3.4 cluster (Debian's `etcd-server`, installed
//!   with apt-get when `etcd` is missing) taking writes of the same size. Each point
//!   warms up for [`WARMUP`], then measures SECONDS_PER_POINT (default 10); slipway's
//!   and etcd's points alternate, so both see the same noise.
//! - **leader failover**: KILLS times (default 20), `kill -9` the slipway leader and
//!   time until a write is committed by a new leader, one client trying the surviving
//!   members in turn and following their "not the leader" hints (a hint naming the dead
//!   leader, or none, means a [`FAILOVER_RETRY_PAUSE`] and the next member); then
//!   restart the killed member and wait until its applied index reaches the leader's.
//!   The failover's client dials the survivors anew each time (with TLS, a handshake
//!   per survivor), as a client whose leader died would.
//!
//! **Security modes.** Plain text: the schedulers run with `tls.insecure`, etcd on
//! `http://` URLs. Mutual TLS, on every link (client to member and member to member):
//! the schedulers with a cluster CA in `tls.ca_dir` (made as `slipway-scheduler
//! init-ca` makes it; each member issues its own certificate from it, as in
//! production), the bench's clients with a scheduler certificate from that CA (the
//! internal `Raft` service takes calls only from schedulers); etcd with
//! `--client-cert-auth` and `--peer-client-cert-auth` and certificates from a CA of the
//! same key type (ECDSA P-256). The header of each mode prints the TLS version and
//! cipher suite a client's handshake really agreed with a member of each system.
//! When both modes ran, a last table gives each system's throughput with TLS over its
//! throughput without.
//!
//! The slipway write is the leader's whole write path: the internal `Raft` service's
//! `ForwardWrite` runs `client_write` on the member it reaches (a follower refuses,
//! naming the leader): append to the sled log and flush it, replicate to a majority,
//! apply to the state machine, answer. etcd's clients send `KV.Put` to the leader too
//! (found with `Maintenance.Status`), so neither system pays for forwarding. Every
//! client has its own HTTP/2 connection. The header prints the `[raft]` timings the
//! members load, read from their config files, not restated.
//!
//! **Which write.** The command is `RegisterNode` of a node whose record is padded
//! (one label) to the size of a queued build record, measured from a real `QueueBuild`
//! at the start; etcd puts values of that size. Not `QueueBuild` itself: with no agent
//! connected every queued build waits, and a waiting build costs the leader far more
//! than its write: the dispatcher walks the whole queue after every applied entry
//! (holding the state's read lock that `apply` needs) and publishes a `Placement`
//! event for each new waiting build, which opens an events topic (`events.rs`, a
//! broadcast channel of `LIVE_CAPACITY` slots) kept until the build ends. A bench of
//! `QueueBuild` would measure that dispatcher, not the replicated write, and it has not
//! been measured. `RegisterNode` writes a record of the same size into the replicated
//! state. The writes go round [`RECORDS`] node ids (etcd's round as many keys), so the
//! state holds that many such records throughout, as a fleet's does once build
//! retention bounds it (50 apps keeping 20 builds each): the state machine checks a
//! registering node's name against every node (`check_node_name`), so a state growing
//! by every write would measure that scan, not the replicated write (a run with
//! ~30,000 node records fell to a quarter of the writes/s at 64 clients).
//!
//! Each member of either system has its own data dir under one temporary directory
//! (one filesystem) and keeps its default durability; the output's header says what
//! each one syncs to disk before it acknowledges.
//!
//! The clients run in this process on the same cores as both clusters, and the
//! machine may be shared: only the ratios within one run mean much.

mod etcd;
mod pki;

use std::path::{Path, PathBuf};
use std::process::{self, Child, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use slipway_proto::control_client::ControlClient;
use slipway_proto::metadata::RAFT_LEADER_ADDR;
use slipway_proto::raft_client::RaftClient;
use slipway_proto::tls::{Transport, SERVER_NAME};
use slipway_proto::{ClusterStatusRequest, ClusterStatusResponse, RaftPayload};
use slipway_scheduler::config::{RaftSettings, SchedulerConfig};
use slipway_scheduler::raft::network::{ForwardedWrite, Peers};
use slipway_scheduler::state::{Command, NodeRecord, Response};
use slipway_testkit::free_port;
use slipway_tests::cluster::{binary, PROFILE_ENV};
use tonic::transport::Channel;

use etcd::etcdserverpb::kv_client::KvClient;
use etcd::etcdserverpb::PutRequest;
use etcd::Etcd;
use pki::{EtcdPki, SlipwayPki};

/// Concurrent clients of each throughput point.
const CLIENT_COUNTS: [usize; 3] = [1, 16, 64];
/// Writes before each point's measurement starts (connections, caches, batching).
const WARMUP: Duration = Duration::from_secs(2);
/// Members of each cluster.
const MEMBERS: u64 = 3;
/// Records the writes go round (node ids, etcd keys): how many the state holds.
const RECORDS: u64 = 1_000;
/// The app of the build whose record sizes the writes.
const APP: &str = "bench";
/// Deadline of one write during the throughput points.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline of one write attempt while the cluster elects a new leader.
const FAILOVER_TRY_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between failed write attempts during a failover (no member leads yet).
const FAILOVER_RETRY_PAUSE: Duration = Duration::from_millis(5);
/// How long a cluster may take to form, or a restarted member to catch up.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How both systems' clients and members talk in one pass of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Security {
    Plain,
    MutualTls,
}

impl Security {
    fn name(self) -> &'static str {
        match self {
            Security::Plain => "TLS off",
            Security::MutualTls => "mutual TLS",
        }
    }
}

/// The command line: `[SECONDS_PER_POINT] [KILLS] [--tls off|on|both]`.
struct Args {
    measure: Duration,
    kills: usize,
    modes: Vec<Security>,
}

impl Args {
    fn parse(args: impl Iterator<Item = String>) -> Result<Args, String> {
        let (mut positional, mut modes) = (Vec::new(), vec![Security::Plain, Security::MutualTls]);
        let mut args = args.peekable();
        while let Some(arg) = args.next() {
            if arg == "--tls" {
                modes = match args.next().as_deref() {
                    Some("off") => vec![Security::Plain],
                    Some("on") => vec![Security::MutualTls],
                    Some("both") => vec![Security::Plain, Security::MutualTls],
                    other => return Err(format!("--tls takes off, on or both, not {other:?}")),
                };
            } else {
                positional.push(arg);
            }
        }
        let number = |i: usize, name: &str, default: u64| match positional.get(i) {
            None => Ok(default),
            Some(text) => {
                text.parse::<u64>().map_err(|_| format!("{name} must be a whole number, not {text:?}"))
            }
        };
        if positional.len() > 2 {
            return Err(format!("unexpected argument {:?}", positional[2]));
        }
        Ok(Args {
            measure: Duration::from_secs(number(0, "SECONDS_PER_POINT", 10)?.max(1)),
            kills: number(1, "KILLS", 20)? as usize,
            modes,
        })
    }
}

fn main() {
    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("bench-raft: {e}\nusage: bench-raft [SECONDS_PER_POINT] [KILLS] [--tls off|on|both]");
            process::exit(2);
        }
    };
    std::env::set_var(PROFILE_ENV, "release");
    slipway_proto::tls::install_crypto_provider();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(async {
        tokio::select! {
            () = run(&args) => {}
            // Dropping `run` kills both clusters and removes their data dirs.
            _ = tokio::signal::ctrl_c() => eprintln!("interrupted: stopping both clusters"),
        }
    });
}

/// Throughput rows of one mode: clients, slipway's point, etcd's point.
type Rows = Vec<(usize, Point, Point)>;

async fn run(args: &Args) {
    let etcd_bin = etcd::ensure_etcd();
    let scheduler_bin = binary("slipway-scheduler");
    // Dropped last: the clusters are killed before their data dirs go.
    let root = tempfile::Builder::new().prefix("slipway-bench-raft-").tempdir().expect("tempdir");
    let mut passes = Vec::new();
    for (i, security) in args.modes.iter().copied().enumerate() {
        let dir = root.path().join(if security == Security::Plain { "plain" } else { "tls" });
        std::fs::create_dir_all(&dir).expect("create the pass's dir");
        let rows = pass(&scheduler_bin, &etcd_bin, &dir, security, args, i == 0).await;
        passes.push((security, rows));
    }
    if let [(Security::Plain, plain), (Security::MutualTls, tls)] = passes.as_slice() {
        println!();
        println!("what mutual TLS costs: writes/s with TLS over writes/s without, each system on its own");
        println!("{:>7}  {:>18}  {:>18}", "clients", "slipway tls/plain", "etcd tls/plain");
        for ((clients, s_plain, e_plain), (_, s_tls, e_tls)) in plain.iter().zip(tls) {
            println!(
                "{clients:>7}  {:>18.2}  {:>18.2}",
                s_tls.writes_per_sec / s_plain.writes_per_sec,
                e_tls.writes_per_sec / e_plain.writes_per_sec
            );
        }
    }
}

/// Both clusters in one security mode under `dir`: the throughput points, then the
/// failovers. Prints the run's common header first when `first`.
async fn pass(
    scheduler_bin: &Path,
    etcd_bin: &Path,
    dir: &Path,
    security: Security,
    args: &Args,
    first: bool,
) -> Rows {
    let (slipway_pki, etcd_pki) = match security {
        Security::Plain => (None, None),
        Security::MutualTls => {
            (Some(SlipwayPki::create(&dir.join("slipway-ca"))), Some(EtcdPki::create(&dir.join("etcd-pki"))))
        }
    };
    eprintln!("{}: starting 3 slipway schedulers and 3 etcd members in {}", security.name(), dir.display());
    let mut slipway = Slipway::start(scheduler_bin, dir, slipway_pki.as_ref()).await;
    let etcd = Etcd::start(etcd_bin, dir, etcd_pki.as_ref()).await;

    let leader = slipway.leader().await;
    let created = slipway.write(leader, &create_app()).await.expect("create the bench app");
    assert!(matches!(created.response, Response::App(_)), "CreateApp answered {:?}", created.response);
    let record = build_record(&slipway, leader).await;
    let writes = NodeWrites::sized_like(record.len());
    let first_write = slipway.write(leader, &writes.command(0)).await.expect("register a first node");
    let Response::Node(node) = &first_write.response else {
        panic!("RegisterNode answered {:?}", first_write.response);
    };

    if first {
        let node_bytes = serde_json::to_vec(node).expect("encode the node record").len();
        let command_bytes = serde_json::to_vec(&writes.command(0)).expect("encode the command").len();
        print_header(&slipway, &etcd, etcd_bin, dir, args, node_bytes, command_bytes, record.len());
    }
    println!();
    println!("== {} ==", security.name());
    match (&slipway_pki, &etcd_pki) {
        (Some(s), Some(e)) => {
            println!("  mutual TLS on client and peer links, certificates ECDSA P-256; a client's handshake agreed:");
            let s_agreed = pki::negotiated(&slipway.member(leader).grpc, &s.client, SERVER_NAME).await;
            println!("    slipway (rustls server): {s_agreed}");
            let e_agreed = pki::negotiated(&etcd.leader, &e.client, "127.0.0.1").await;
            println!("    etcd (Go crypto/tls server): {e_agreed}");
        }
        _ => println!("  plain text: the schedulers with tls.insecure, etcd on http:// URLs"),
    }
    let rows = throughput(&slipway, &etcd, writes, &record, args.measure).await;
    drop(etcd);
    println!();
    failovers(&mut slipway, writes, args.kills).await;
    rows
}

/// What the run measures, read from what it started.
#[allow(clippy::too_many_arguments)]
fn print_header(
    slipway: &Slipway,
    etcd: &Etcd,
    etcd_bin: &Path,
    dir: &Path,
    args: &Args,
    node_bytes: usize,
    command_bytes: usize,
    record_bytes: usize,
) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "bench-raft: 3-member clusters on loopback; {cores} cores shared by both clusters and the clients"
    );
    let modes: Vec<&str> = args.modes.iter().map(|m| m.name()).collect();
    println!("  modes, in turn, each with new clusters: {}", modes.join(", then "));
    println!("  data dirs: under {} ({})", dir.parent().unwrap_or(dir).display(), filesystem_of(dir));
    let raft = slipway.loaded_raft_settings();
    println!(
        "  slipway {} (release build), [raft] as loaded: heartbeat {} ms, election timeout {}-{} ms",
        env!("CARGO_PKG_VERSION"),
        raft.heartbeat_ms,
        raft.election_timeout_min_ms,
        raft.election_timeout_max_ms
    );
    println!("  etcd {} ({}), its defaults", etcd.version, etcd_bin.display());
    println!(
        "  a write: slipway ForwardWrite(RegisterNode) to the leader: a {node_bytes}-byte node record \
         ({command_bytes}-byte command),"
    );
    println!(
        "           as large as a queued build record (not QueueBuild: waiting builds load the leader's \
         dispatcher);"
    );
    println!("           etcd Put to the leader of a {record_bytes}-byte value under /slipway/builds/<n>");
    println!(
        "           both round {RECORDS} records (node ids, keys): the state holds that many throughout"
    );
    println!("  synced before a write is acknowledged, on the leader and on a follower:");
    println!("    slipway: the sled log, by sled's flush (sync_file_range of the written range) and then");
    println!("             fdatasync of sled's data file");
    println!("    etcd:    the WAL, by fdatasync (its bbolt backend commits with fdatasync every 100 ms");
    println!("             or 10,000 writes, in the background)");
    println!("  {WARMUP:?} warm-up, then {:?} per point; the two systems take turns", args.measure);
}

/// Runs the throughput points and prints their table.
async fn throughput(
    slipway: &Slipway,
    etcd: &Etcd,
    writes: NodeWrites,
    record: &[u8],
    measure: Duration,
) -> Rows {
    let mut rows = Vec::new();
    for clients in CLIENT_COUNTS {
        eprintln!("point: {clients} clients, slipway");
        let leader = slipway.leader().await;
        let s = load(slipway.writers(leader, clients, writes).await, measure).await;
        eprintln!("point: {clients} clients, etcd");
        let etcd_writers = etcd
            .clients(clients)
            .await
            .into_iter()
            .map(|client| Writer::Etcd { client, value: record.to_vec() })
            .collect();
        let e = load(etcd_writers, measure).await;
        rows.push((clients, s, e));
    }
    println!(
        "{:>7}  {:>21}  {:>15}  {:>21}  {:>15}  {:>12}",
        "clients", "slipway writes/s", "p50 / p99 ms", "etcd writes/s", "p50 / p99 ms", "slipway/etcd"
    );
    for (clients, s, e) in &rows {
        println!(
            "{clients:>7}  {:>21}  {:>15}  {:>21}  {:>15}  {:>12.2}",
            s.rate(),
            s.latencies(),
            e.rate(),
            e.latencies(),
            s.writes_per_sec / e.writes_per_sec
        );
    }
    rows
}

/// Kills the slipway leader `kills` times and prints how long each failover took.
async fn failovers(slipway: &mut Slipway, writes: NodeWrites, kills: usize) {
    println!("leader failover, slipway: kill -9 the leader; time until a new leader commits a write");
    println!(
        "  (openraft 0.9: a follower campaigns once it heard no leader for its leader lease, the \
         election timeout's max,"
    );
    let raft = slipway.loaded_raft_settings();
    let (min, max) = (raft.election_timeout_min_ms, raft.election_timeout_max_ms);
    println!(
        "  plus a random election timeout: {}-{} ms after the last heartbeat with the [raft] \
         settings loaded, then an election and a commit)",
        max + min,
        max * 2
    );
    let (mut samples, mut catch_ups) = (Vec::new(), Vec::new());
    for round in 1..=kills {
        let (failover, catch_up) = slipway.fail_over(writes).await;
        eprintln!(
            "kill {round}/{kills}: a new leader committed after {failover:?}; \
             the restarted member caught up after {catch_up:?}"
        );
        samples.push(failover);
        catch_ups.push(catch_up);
    }
    if samples.is_empty() {
        return;
    }
    let in_order: Vec<String> = samples.iter().map(|d| d.as_millis().to_string()).collect();
    samples.sort();
    catch_ups.sort();
    println!(
        "  {} kills: median {} ms, max {} ms",
        samples.len(),
        quantile(&samples, 0.5).as_millis(),
        quantile(&samples, 1.0).as_millis()
    );
    println!("  samples (ms, in order): {}", in_order.join(" "));
    println!(
        "  the restarted member's applied index reached the leader's {} ms after its restart \
         (median; max {} ms)",
        quantile(&catch_ups, 0.5).as_millis(),
        quantile(&catch_ups, 1.0).as_millis()
    );
}

/// The app of the build whose record sizes the writes.
fn create_app() -> Command {
    Command::CreateApp {
        name: APP.into(),
        repo: "https://git.example.com/acme/bench.git".into(),
        branch: "main".into(),
        at_ms: slipway_common::now_ms(),
    }
}

/// A queued build of the bench app as slipway records it (JSON, as in its snapshots),
/// for a full commit id (as `slipway deploy` sends once it resolved the ref). The build
/// is cancelled at once, so no build waits in the queue during the run.
async fn build_record(slipway: &Slipway, leader: u64) -> Vec<u8> {
    let queue = Command::QueueBuild {
        app: APP.into(),
        git_ref: "3f786850e387550fdab836ed7e6dc881de23001b".into(),
        no_cache: false,
        request_id: Some(format!("bench-raft-{:016}", 0)),
        at_ms: slipway_common::now_ms(),
    };
    let queued = slipway.write(leader, &queue).await.expect("queue a build");
    let Response::Build(build) = &queued.response else {
        panic!("QueueBuild answered {:?}", queued.response);
    };
    let cancel = Command::CancelBuild {
        build_id: build.id.clone(),
        reason: "bench-raft: only its size was needed".into(),
        at_ms: slipway_common::now_ms(),
    };
    let cancelled = slipway.write(leader, &cancel).await.expect("cancel the build");
    assert!(
        matches!(cancelled.response, Response::Build(_)),
        "CancelBuild answered {:?}",
        cancelled.response
    );
    serde_json::to_vec(build).expect("encode the build record")
}

/// The slipway write of the throughput points and the failovers: `RegisterNode` of one
/// of [`RECORDS`] nodes, whose record, padded with one label, is as large as a build record.
#[derive(Debug, Clone, Copy)]
struct NodeWrites {
    label_bytes: usize,
}

impl NodeWrites {
    /// Writes whose node record serializes to `record_bytes` (ids have a fixed width).
    fn sized_like(record_bytes: usize) -> NodeWrites {
        let unpadded = NodeWrites { label_bytes: 0 }.record(0);
        let unpadded = serde_json::to_vec(&unpadded).expect("encode node record").len();
        NodeWrites { label_bytes: record_bytes.saturating_sub(unpadded) }
    }

    /// Write number `n`: registration of node `n` modulo [`RECORDS`].
    fn command(&self, n: u64) -> Command {
        let NodeRecord { id, name, labels, registered_at_ms, .. } = self.record(n % RECORDS);
        Command::RegisterNode { id, name, labels, at_ms: registered_at_ms }
    }

    /// The record [`command`](Self::command) creates.
    fn record(&self, n: u64) -> NodeRecord {
        NodeRecord {
            id: format!("bench-node-{n:016}"),
            name: format!("bench-{n:016}"),
            labels: [("pad".to_string(), "x".repeat(self.label_bytes))].into(),
            draining: false,
            registered_at_ms: slipway_common::now_ms(),
        }
    }
}

/// Numbers of writes, unique in the run (node ids and etcd keys take them modulo [`RECORDS`]).
fn next_write() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A child process, `kill -9`ed and reaped when dropped.
struct Running(Child);

impl Running {
    /// Starts `command` with its stdout and stderr appended to `log`.
    fn spawn(mut command: process::Command, log: &Path) -> Running {
        let log = std::fs::File::options().create(true).append(true).open(log).expect("open log");
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {command:?}: {e}"));
        Running(child)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `127.0.0.1:PORT` on a port free a moment ago.
fn loopback() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// One scheduler of the bench cluster.
struct SchedulerMember {
    id: u64,
    grpc: String,
    http: String,
    config: PathBuf,
    log: PathBuf,
    /// The process, while it runs.
    process: Option<Running>,
}

/// Three `slipway-scheduler` processes on loopback founding one cluster from static
/// members, each with its own data dir; dropping it kills them.
struct Slipway {
    binary: PathBuf,
    members: Vec<SchedulerMember>,
    /// How the bench dials the members: as their peers would, with the bench's own
    /// certificate under mutual TLS.
    peers: Peers,
}

impl Slipway {
    /// The `[raft]` settings the members run with, read from their config files.
    fn loaded_raft_settings(&self) -> RaftSettings {
        let config = &self.members[0].config;
        let text = std::fs::read_to_string(config).expect("read a member's config");
        SchedulerConfig::parse(&text).expect("the bench's scheduler config parses").raft
    }

    /// Writes the members' configs under `root` (with the cluster CA of `pki`, or
    /// `tls.insecure` without), starts them and waits for a leader.
    async fn start(binary: &Path, root: &Path, pki: Option<&SlipwayPki>) -> Slipway {
        let tls = match pki {
            Some(pki) => format!("ca_dir = \"{}\"", pki.ca_dir.display()),
            None => "insecure = true".to_string(),
        };
        let addrs: Vec<(u64, String, String)> =
            (1..=MEMBERS).map(|id| (id, loopback(), loopback())).collect();
        let list: Vec<String> =
            addrs.iter().map(|(id, grpc, _)| format!("{{ id = {id}, addr = \"{grpc}\" }}")).collect();
        let members = addrs
            .into_iter()
            .map(|(id, grpc, http)| {
                let config = root.join(format!("slipway-{id}.toml"));
                let text = format!(
                    "node_id = {id}\nlisten = \"{grpc}\"\nhttp_listen = \"{http}\"\ndata_dir = \"{}\"\n\n\
                     [cluster]\nmembers = [{}]\n\n[tls]\n{tls}\n",
                    root.join(format!("slipway-{id}")).display(),
                    list.join(", ")
                );
                std::fs::write(&config, text).expect("write scheduler config");
                let log = root.join(format!("slipway-{id}.log"));
                SchedulerMember { id, grpc, http, config, log, process: None }
            })
            .collect();
        let transport = pki.map_or(Transport::Insecure, SlipwayPki::transport);
        let mut cluster = Slipway { binary: binary.to_path_buf(), members, peers: Peers::new(transport) };
        for id in 1..=MEMBERS {
            cluster.start_member(id).await;
        }
        cluster.leader().await;
        cluster
    }

    fn member(&self, id: u64) -> &SchedulerMember {
        self.members.iter().find(|m| m.id == id).unwrap_or_else(|| panic!("no scheduler {id}"))
    }

    fn member_mut(&mut self, id: u64) -> &mut SchedulerMember {
        self.members.iter_mut().find(|m| m.id == id).unwrap_or_else(|| panic!("no scheduler {id}"))
    }

    /// Starts (or restarts, from its data dir) member `id` and waits until it serves.
    async fn start_member(&mut self, id: u64) {
        let mut command = process::Command::new(&self.binary);
        let m = self.member_mut(id);
        command.arg("--config").arg(&m.config).env("RUST_LOG", "warn");
        m.process = Some(Running::spawn(command, &m.log));
        let url = format!("http://{}/healthz", m.http);
        if let Err(e) = slipway_testkit::wait_for_http(&url, SETTLE_TIMEOUT).await {
            panic!("scheduler {id} does not serve: {e}\n{}", tail(&m.log, 20));
        }
    }

    /// `kill -9` member `id`.
    fn kill(&mut self, id: u64) {
        self.member_mut(id).process = None;
    }

    /// The cluster as member `id` sees it.
    async fn status(&self, id: u64) -> Result<ClusterStatusResponse, tonic::Status> {
        let channel = connect(self.peers.endpoint(&self.member(id).grpc)).await?;
        let mut request = tonic::Request::new(ClusterStatusRequest {});
        request.set_timeout(Duration::from_secs(2));
        Ok(ControlClient::new(channel).cluster_status(request).await?.into_inner())
    }

    /// Waits until every running member names the same leader, which claims to lead.
    async fn leader(&self) -> u64 {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let mut views = Vec::new();
            for m in self.members.iter().filter(|m| m.process.is_some()) {
                views.push(self.status(m.id).await.ok());
            }
            let leader = views[0].as_ref().map_or(0, |v| v.leader_id);
            let agreed = views.iter().all(|v| v.as_ref().is_some_and(|v| v.leader_id == leader));
            let claimed = views.iter().flatten().any(|v| v.node_id == leader && v.state == "Leader");
            if leader != 0 && agreed && claimed {
                return leader;
            }
            assert!(
                Instant::now() < deadline,
                "no agreed slipway leader after {SETTLE_TIMEOUT:?}: {views:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends `cmd` to member `id` over `ForwardWrite`.
    async fn write(&self, id: u64, cmd: &Command) -> Result<ForwardedWrite, tonic::Status> {
        let mut client = RaftClient::new(connect(self.peers.endpoint(&self.member(id).grpc)).await?);
        forward_write(&mut client, cmd, WRITE_TIMEOUT).await
    }

    /// `clients` writers of node registrations to member `leader`, each on its own connection.
    async fn writers(&self, leader: u64, clients: usize, writes: NodeWrites) -> Vec<Writer> {
        let mut writers = Vec::new();
        for _ in 0..clients {
            let channel =
                connect(self.peers.endpoint(&self.member(leader).grpc)).await.expect("connect to the leader");
            writers.push(Writer::Slipway { client: RaftClient::new(channel), writes });
        }
        writers
    }

    /// Kills the leader, times the first write a new leader commits, restarts the
    /// killed member and waits until it caught up. Returns (failover, catch-up) times.
    async fn fail_over(&mut self, writes: NodeWrites) -> (Duration, Duration) {
        let leader = self.leader().await;
        let dead = self.member(leader).grpc.clone();
        let mut survivors = Vec::new();
        for m in self.members.iter().filter(|m| m.id != leader) {
            let channel = self.peers.endpoint(&m.grpc).expect("valid address").connect_lazy();
            survivors.push((m.grpc.clone(), RaftClient::new(channel)));
        }

        let killed_at = Instant::now();
        self.kill(leader);
        let (mut turn, mut hint) = (0, None::<String>);
        let failover = loop {
            let i = match hint.take().and_then(|h| survivors.iter().position(|(addr, _)| *addr == h)) {
                Some(i) => i,
                None => {
                    turn += 1;
                    turn % survivors.len()
                }
            };
            match forward_write(&mut survivors[i].1, &writes.command(next_write()), FAILOVER_TRY_TIMEOUT)
                .await
            {
                Ok(written) => {
                    assert!(matches!(written.response, Response::Node(_)), "{:?}", written.response);
                    break killed_at.elapsed();
                }
                Err(status) => {
                    hint = status
                        .metadata()
                        .get(RAFT_LEADER_ADDR)
                        .and_then(|v| v.to_str().ok())
                        .filter(|addr| *addr != dead)
                        .map(str::to_string);
                    if hint.is_none() {
                        tokio::time::sleep(FAILOVER_RETRY_PAUSE).await;
                    }
                }
            }
            assert!(killed_at.elapsed() < SETTLE_TIMEOUT, "no new leader took a write in {SETTLE_TIMEOUT:?}");
        };

        let restarted_at = Instant::now();
        self.start_member(leader).await;
        loop {
            let new_leader = self.leader().await;
            if let (Ok(l), Ok(m)) = (self.status(new_leader).await, self.status(leader).await) {
                if m.last_applied_index >= l.last_applied_index {
                    break;
                }
            }
            assert!(
                restarted_at.elapsed() < SETTLE_TIMEOUT,
                "restarted scheduler {leader} did not catch up in {SETTLE_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (failover, restarted_at.elapsed())
    }
}

impl Drop for Slipway {
    fn drop(&mut self) {
        for m in &mut self.members {
            m.process = None;
        }
        if std::thread::panicking() {
            for m in &self.members {
                eprintln!("--- scheduler {} log (tail) ---\n{}", m.id, tail(&m.log, 30));
            }
        }
    }
}

/// Connects a channel (the error as a status, for callers that answer statuses).
async fn connect(
    endpoint: Result<tonic::transport::Endpoint, tonic::transport::Error>,
) -> Result<Channel, tonic::Status> {
    let endpoint = endpoint.map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
    endpoint.connect().await.map_err(|e| tonic::Status::unavailable(e.to_string()))
}

/// One `ForwardWrite` of `cmd`, decoded.
async fn forward_write(
    client: &mut RaftClient<Channel>,
    cmd: &Command,
    timeout: Duration,
) -> Result<ForwardedWrite, tonic::Status> {
    let json = serde_json::to_vec(cmd).expect("encode command");
    let mut request = tonic::Request::new(RaftPayload { json });
    request.set_timeout(timeout);
    let reply = client.forward_write(request).await?.into_inner();
    serde_json::from_slice(&reply.json)
        .map_err(|e| tonic::Status::internal(format!("undecodable answer: {e}")))
}

/// One client of a throughput point.
enum Writer {
    Slipway { client: RaftClient<Channel>, writes: NodeWrites },
    Etcd { client: KvClient<Channel>, value: Vec<u8> },
}

impl Writer {
    /// Write number `n`, committed when this returns Ok.
    async fn write(&mut self, n: u64) -> Result<(), String> {
        match self {
            Writer::Slipway { client, writes } => {
                match forward_write(client, &writes.command(n), WRITE_TIMEOUT).await {
                    Ok(ForwardedWrite { response: Response::Node(_), .. }) => Ok(()),
                    Ok(other) => Err(format!("RegisterNode answered {:?}", other.response)),
                    Err(status) => Err(status.to_string()),
                }
            }
            Writer::Etcd { client, value } => {
                let put = PutRequest {
                    key: format!("/slipway/builds/b-{}", n % RECORDS).into_bytes(),
                    value: value.clone(),
                    ..Default::default()
                };
                let mut request = tonic::Request::new(put);
                request.set_timeout(WRITE_TIMEOUT);
                client.put(request).await.map(drop).map_err(|s| s.to_string())
            }
        }
    }
}

/// What one throughput point measured.
struct Point {
    writes_per_sec: f64,
    /// Latencies of the writes committed in the measured window, sorted.
    latencies: Vec<Duration>,
    errors: usize,
    first_error: Option<String>,
}

impl Point {
    fn rate(&self) -> String {
        if self.errors == 0 {
            format!("{:.0}", self.writes_per_sec)
        } else {
            format!("{:.0} ({} errors)", self.writes_per_sec, self.errors)
        }
    }

    fn latencies(&self) -> String {
        format!("{:.1} / {:.1}", ms_f(quantile(&self.latencies, 0.5)), ms_f(quantile(&self.latencies, 0.99)))
    }
}

/// Runs every writer in a loop for [`WARMUP`] plus `measure`; counts and times the
/// writes that completed within `measure`.
async fn load(writers: Vec<Writer>, measure: Duration) -> Point {
    let start = Instant::now() + WARMUP;
    let end = start + measure;
    let tasks: Vec<_> = writers
        .into_iter()
        .map(|mut writer| {
            tokio::spawn(async move {
                let (mut latencies, mut errors, mut first_error) = (Vec::new(), 0, None);
                while Instant::now() < end {
                    let began = Instant::now();
                    let result = writer.write(next_write()).await;
                    let done = Instant::now();
                    match result {
                        Ok(()) if done >= start && done <= end => latencies.push(done - began),
                        Ok(()) => {}
                        Err(e) => {
                            errors += 1;
                            first_error.get_or_insert(e);
                        }
                    }
                }
                (latencies, errors, first_error)
            })
        })
        .collect();
    let mut point = Point { writes_per_sec: 0.0, latencies: Vec::new(), errors: 0, first_error: None };
    for task in tasks {
        let (latencies, errors, first_error) = task.await.expect("writer task");
        point.latencies.extend(latencies);
        point.errors += errors;
        point.first_error = point.first_error.or(first_error);
    }
    point.latencies.sort();
    point.writes_per_sec = point.latencies.len() as f64 / measure.as_secs_f64();
    if let Some(e) = &point.first_error {
        eprintln!("  {} writes failed; the first: {e}", point.errors);
    }
    assert!(!point.latencies.is_empty(), "no write succeeded: {:?}", point.first_error);
    point
}

/// The `q` quantile of sorted samples.
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms_f(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The last `n` lines of the file at `path`.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The filesystem type holding `path` (`stat -f`), for the output's header.
fn filesystem_of(path: &Path) -> String {
    process::Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(path)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or_else(
            || "filesystem unknown".into(),
            |o| String::from_utf8_lossy(&o.stdout).trim().to_string(),
        )
}
