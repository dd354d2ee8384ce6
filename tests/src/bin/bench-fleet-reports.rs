//! `cargo run --release -p slipway-tests --bin bench-fleet-reports [AGENTS] [SECONDS]`:
//! how many agents one scheduler holds.
//!
//! Starts a scheduler (release build, one member, on loopback) and opens AGENTS
//! (default 10,000) simulated agent sessions against it from this process, 100 per
//! HTTP/2 connection, each reporting at the default period (3 s, plus up to 20 %
//! jitter) with a realistic report, as real agents do. Once all are connected and
//! settled, it measures over SECONDS (default 30): the scheduler's CPU time
//! (`/proc/PID/stat`) as a share of one core, the reports it received per second, and
//! how late they reached it (`slipway_report_delay_seconds` from its `/metrics`:
//! the bucket bounds that bracket p50 and p99). Baseline, in the same run: the same
//! with a tenth of the agents, so the ratio shows how the cost scales.
//!
//! The simulated agents run on the same two cores as the scheduler; the numbers
//! include that contention. The scheduler runs without TLS here (`tls.insecure`): the
//! bench measures report handling, and 10,000 agent certificates would measure the
//! handshakes of one start-up.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use slipway_proto::agent_message::Msg;
use slipway_proto::agent_service_client::AgentServiceClient;
use slipway_proto::{AgentMessage, Hello, NodeReport};
use slipway_testkit::free_port;
use slipway_tests::cluster::{binary, PROFILE_ENV};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::transport::{Channel, Endpoint};

const PER_CONNECTION: usize = 100;
const REPORT_PERIOD: Duration = Duration::from_secs(3);

struct Scheduler {
    child: Child,
    grpc: String,
    http: String,
    _dir: tempfile::TempDir,
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_scheduler() -> Scheduler {
    let dir = tempfile::tempdir().expect("tempdir");
    let (grpc, http) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    let config = format!(
        "listen = \"{grpc}\"\nhttp_listen = \"{http}\"\ndata_dir = \"{}\"\n\n[agents]\nreport_interval_secs = {}\ndown_after_secs = 15\n\n\
         [tls]\ninsecure = true\n\n[http]\n# Loopback: /metrics without the token.\nrequire_auth = false\n",
        dir.path().join("data").display(),
        REPORT_PERIOD.as_secs()
    );
    let path = dir.path().join("scheduler.toml");
    std::fs::write(&path, config).expect("write config");
    let log = std::fs::File::create(dir.path().join("scheduler.log")).expect("log");
    let child = Command::new(binary("slipway-scheduler"))
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start slipway-scheduler");
    slipway_testkit::wait_for_http(&format!("http://{http}/readyz"), Duration::from_secs(30))
        .await
        .expect("scheduler ready");
    Scheduler { child, grpc, http, _dir: dir }
}

fn report(rng: &mut impl Rng) -> NodeReport {
    NodeReport {
        build_fs_total_bytes: 500 << 30,
        build_fs_available_bytes: rng.random_range(10..400) << 30,
        cpu_count: 16,
        cpu_usage_percent: rng.random_range(0.0..100.0),
        load_1m: rng.random_range(0.0..16.0),
        memory_total_bytes: 64 << 30,
        memory_available_bytes: rng.random_range(1..60) << 30,
        build_slots: 2,
        docker_healthy: true,
        docker_version: "20.10.24".into(),
        agent_version: "sim".into(),
        cache_bytes: rng.random_range(0..50) << 30,
        cached_apps: vec!["shop".into(), "blog".into()],
        ..Default::default()
    }
}

/// One simulated agent: Hello, wait for Welcome, then a report every period.
async fn agent(channel: Channel, i: usize, welcomed: Arc<AtomicUsize>) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut rng = rand::rngs::StdRng::seed_from_u64(i as u64);
    let hello = Hello {
        node_id: format!("sim-{i:05}"),
        name: format!("sim-{i:05}"),
        agent_version: "sim".into(),
        report: Some(report(&mut rng)),
        ..Default::default()
    };
    if tx.send(AgentMessage { msg: Some(Msg::Hello(hello)) }).await.is_err() {
        return;
    }
    let Ok(response) = AgentServiceClient::new(channel).session(ReceiverStream::new(rx)).await else {
        return;
    };
    let mut inbound = response.into_inner();
    if inbound.next().await.is_none() {
        return;
    }
    welcomed.fetch_add(1, Ordering::Relaxed);
    tokio::spawn(async move { while inbound.next().await.is_some() {} });
    loop {
        let jitter = rng.random_range(0..=REPORT_PERIOD.as_millis() as u64 / 5);
        tokio::time::sleep(REPORT_PERIOD + Duration::from_millis(jitter)).await;
        let sent_at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let report = NodeReport { sent_at_ms, ..report(&mut rng) };
        if tx.send(AgentMessage { msg: Some(Msg::Report(report)) }).await.is_err() {
            return;
        }
    }
}

/// The report-delay histogram from `/metrics`: (upper bound, cumulative count).
async fn delays(http: &str) -> Vec<(f64, u64)> {
    let text = reqwest::get(format!("http://{http}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("body");
    text.lines()
        .filter_map(|l| l.strip_prefix("slipway_report_delay_seconds_bucket{le=\""))
        .filter_map(|l| {
            let (le, rest) = l.split_once("\"}")?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((le, rest.trim().parse().ok()?))
        })
        .collect()
}

/// The bucket bound bracketing quantile `q` of the reports between two scrapes.
fn bracket(before: &[(f64, u64)], after: &[(f64, u64)], q: f64) -> Option<f64> {
    let diff: Vec<(f64, u64)> = after
        .iter()
        .map(|(le, n)| (*le, n - before.iter().find(|(b, _)| b == le).map_or(0, |(_, m)| *m)))
        .collect();
    let total = diff.last()?.1;
    let rank = (q * total as f64).ceil().max(1.0) as u64;
    diff.iter().find(|(_, n)| *n >= rank).map(|(le, _)| *le)
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    let fields: Vec<&str> = stat[stat.rfind(") ").expect("stat format") + 2..].split_whitespace().collect();
    (fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap()) / 100.0
}

struct Measured {
    agents: usize,
    cpu_share: f64,
    reports_per_sec: f64,
    p50: Option<f64>,
    p99: Option<f64>,
}

async fn run(agents: usize, seconds: u64) -> Measured {
    let scheduler = start_scheduler().await;
    let welcomed = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    let started = Instant::now();
    for chunk in 0..agents.div_ceil(PER_CONNECTION) {
        let channel = Endpoint::from_shared(format!("http://{}", scheduler.grpc))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect to the scheduler");
        for i in chunk * PER_CONNECTION..((chunk + 1) * PER_CONNECTION).min(agents) {
            tasks.push(tokio::spawn(agent(channel.clone(), i, welcomed.clone())));
        }
        // Ramp up: registering a node is a raft write.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    while welcomed.load(Ordering::Relaxed) < agents {
        assert!(
            Instant::now() < deadline,
            "only {} of {agents} sessions open after 300 s",
            welcomed.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("  {agents} sessions open in {:.1?}; settling", started.elapsed());
    tokio::time::sleep(REPORT_PERIOD * 2).await;

    let pid = scheduler.child.id();
    let (cpu0, d0, t0) = (cpu_seconds(pid), delays(&scheduler.http).await, Instant::now());
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let (cpu1, d1, elapsed) = (cpu_seconds(pid), delays(&scheduler.http).await, t0.elapsed().as_secs_f64());
    for task in tasks {
        task.abort();
    }
    let received = d1.last().map_or(0, |(_, n)| *n) - d0.last().map_or(0, |(_, n)| *n);
    Measured {
        agents,
        cpu_share: 100.0 * (cpu1 - cpu0) / elapsed,
        reports_per_sec: received as f64 / elapsed,
        p50: bracket(&d0, &d1, 0.5),
        p99: bracket(&d0, &d1, 0.99),
    }
}

fn show(bound: Option<f64>) -> String {
    match bound {
        None => "-".into(),
        Some(b) if b.is_infinite() => "> 10 s".into(),
        Some(b) => format!("<= {} ms", b * 1000.0),
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let agents: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let seconds: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(30);
    std::env::set_var(PROFILE_ENV, "release");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "agents reporting every {REPORT_PERIOD:?} (+0-20 % jitter) to one scheduler; {cores} cores shared"
    );
    let mut rows = Vec::new();
    for n in [agents / 10, agents] {
        eprintln!("phase: {n} agents");
        rows.push(run(n, seconds).await);
    }
    println!(
        "{:>8}  {:>14}  {:>10}  {:>14}  {:>14}",
        "agents", "scheduler CPU", "reports/s", "delay p50", "delay p99"
    );
    for m in &rows {
        println!(
            "{:>8}  {:>12.1} %  {:>10.0}  {:>14}  {:>14}",
            m.agents,
            m.cpu_share,
            m.reports_per_sec,
            show(m.p50),
            show(m.p99)
        );
    }
    let (small, big) = (&rows[0], &rows[1]);
    println!(
        "CPU per 1,000 agents: {:.2} % at {} vs {:.2} % at {} (ratio {:.2})",
        small.cpu_share * 1000.0 / small.agents as f64,
        small.agents,
        big.cpu_share * 1000.0 / big.agents as f64,
        big.agents,
        (big.cpu_share / big.agents as f64) / (small.cpu_share / small.agents as f64)
    );
}
