//! The agent's own `/metrics` (Prometheus text format) on `metrics_listen`: the last
//! report it measured for the scheduler, as gauges, and the agent process's own
//! resident memory and CPU time from `/proc/self`.
//!
//! ```text
//! slipway_agent_info{version} 1
//! slipway_agent_report_age_seconds          seconds since the last measurement
//! slipway_agent_build_fs_{total,available}_bytes, slipway_agent_cpus,
//! slipway_agent_cpu_usage_percent, slipway_agent_load1,
//! slipway_agent_memory_{total,available}_bytes, slipway_agent_running_builds,
//! slipway_agent_build_slots, slipway_agent_cache_bytes, slipway_agent_engine_healthy,
//! slipway_agent_build_cache_bytes, slipway_agent_reclaimed_bytes_total,
//! slipway_agent_reclaim_passes_total, slipway_agent_build_logs_stopped
//! process_resident_memory_bytes, process_cpu_seconds_total, process_open_fds,
//! process_start_time_seconds                (the standard process metrics)
//! ```
//!
//! The report gauges appear once a report was measured (the agent measures when it
//! opens a session and every report interval after). The last report is kept in a
//! [`LastReport`] that the agent's `run` makes and hands to both sides: the session's
//! reporter records into it, this listener renders from it.
//!
//! Why `prometheus-client`: the exposition format (escaping, number formats, `_total`) is the
//! client library's, not ours; each scrape fills a [`Registry`] from that report and
//! `/proc/self` and encodes it as Prometheus text 0.0.4, whose counter `# TYPE` line keeps
//! the `_total` name (OpenMetrics would drop it).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::State;
use axum::http::header;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::prometheus_text::{encode, CONTENT_TYPE};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Metric, Registry};
use slipway_proto::NodeReport;
use tokio::net::TcpListener;

/// Clock ticks per second of `/proc/self/stat` times (`USER_HZ`: 100 on every Linux
/// architecture Debian ships).
const USER_HZ: f64 = 100.0;

/// The last report measured, and when: written by whoever measures the node, read by
/// the `/metrics` handler. Cheap to clone (clones share the report).
#[derive(Debug, Clone, Default)]
pub struct LastReport(Arc<Mutex<Option<(NodeReport, Instant)>>>);

impl LastReport {
    /// Keeps `report` as the last one measured.
    pub fn record(&self, report: &NodeReport) {
        *self.0.lock().expect("metrics lock poisoned") = Some((report.clone(), Instant::now()));
    }

    /// The `/metrics` text now.
    pub fn render(&self) -> String {
        let last = self.0.lock().expect("metrics lock poisoned").clone();
        render_from(last.as_ref())
    }
}

/// The text of one scrape: the registry for `last` and this process, encoded.
fn render_from(last: Option<&(NodeReport, Instant)>) -> String {
    let mut out = String::new();
    encode(&mut out, &registry(last, ProcessStats::read().as_ref()))
        .expect("writing to a String cannot fail");
    out
}

/// The metrics of one scrape. Help texts carry no final period: the registry adds it.
fn registry(last: Option<&(NodeReport, Instant)>, process: Option<&ProcessStats>) -> Registry {
    let mut registry = Registry::default();
    // An info metric: the registry names it `slipway_agent_info`, typed gauge, value 1.
    registry.register(
        "slipway_agent",
        "This agent and its version",
        Info::new([("version", env!("CARGO_PKG_VERSION"))]),
    );
    let g = &mut registry;
    if let Some((r, at)) = last {
        let age = at.elapsed().as_secs_f64();
        gauge(g, "slipway_agent_report_age_seconds", "Seconds since the last report was measured", age);
        gauge(
            g,
            "slipway_agent_build_fs_total_bytes",
            "Size of the build filesystem (build_root's)",
            r.build_fs_total_bytes,
        );
        gauge(
            g,
            "slipway_agent_build_fs_available_bytes",
            "Free bytes on the build filesystem",
            r.build_fs_available_bytes,
        );
        gauge(g, "slipway_agent_cpus", "CPUs of the node", r.cpu_count);
        let cpu = f64::from(r.cpu_usage_percent);
        gauge(g, "slipway_agent_cpu_usage_percent", "CPU use of the whole node, 0-100", cpu);
        gauge(g, "slipway_agent_load1", "Load average over 1 minute", r.load_1m);
        gauge(g, "slipway_agent_memory_total_bytes", "Memory of the node", r.memory_total_bytes);
        let memory = r.memory_available_bytes;
        gauge(g, "slipway_agent_memory_available_bytes", "Memory available on the node", memory);
        gauge(g, "slipway_agent_running_builds", "Builds this agent runs", r.running_builds);
        gauge(g, "slipway_agent_build_slots", "Builds this agent runs at once, at most", r.build_slots);
        let cache = r.cache_bytes;
        gauge(
            g,
            "slipway_agent_cache_bytes",
            "Bytes held by slipway's images and the engine's build cache",
            cache,
        );
        let build_cache = r.build_cache_bytes;
        gauge(
            g,
            "slipway_agent_build_cache_bytes",
            "The engine's BuildKit build cache, cache mounts included, at the last reclaim measurement",
            build_cache,
        );
        // Counters: the registry appends `_total` to the name.
        g.register(
            "slipway_agent_reclaimed_bytes",
            "Bytes the reclaim passes freed (build cache and dangling slipway images) since the agent started",
            ConstCounter::new(r.reclaimed_bytes_total),
        );
        g.register(
            "slipway_agent_reclaim_passes",
            "Reclaim passes run since the agent started (high watermark or free-space floor)",
            ConstCounter::new(r.reclaim_passes_total),
        );
        let stopped = u32::from(r.build_logs_stopped);
        gauge(
            g,
            "slipway_agent_build_logs_stopped",
            "1 while no build log file is written (build filesystem below build_logs.min_free_bytes)",
            stopped,
        );
        let healthy = u32::from(r.docker_healthy);
        gauge(g, "slipway_agent_engine_healthy", "1 if the node's Docker engine answers", healthy);
    }
    if let Some(p) = process {
        gauge(g, "process_resident_memory_bytes", "Resident memory of the agent process", p.rss_bytes);
        // A counter: the registry appends `_total` to the name.
        let cpu = ConstCounter::new(p.cpu_seconds);
        g.register("process_cpu_seconds", "CPU time the agent process used (user + system)", cpu);
        gauge(g, "process_open_fds", "Open file descriptors of the agent process", p.open_fds);
        if let Some(start) = p.start_time_seconds {
            gauge(
                g,
                "process_start_time_seconds",
                "When the agent started, in seconds since the epoch",
                start,
            );
        }
    }
    registry
}

/// Registers a gauge holding `value` for this scrape.
fn gauge<N>(registry: &mut Registry, name: &str, help: &str, value: N)
where
    ConstGauge<N>: Metric,
{
    registry.register(name, help, ConstGauge::new(value));
}

/// What `/proc/self` says of this process.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessStats {
    /// Resident memory (`VmRSS`).
    pub rss_bytes: u64,
    /// CPU time used, user + system.
    pub cpu_seconds: f64,
    /// Open file descriptors.
    pub open_fds: usize,
    /// When the process started, in seconds since the epoch (None without `btime`).
    pub start_time_seconds: Option<f64>,
}

impl ProcessStats {
    /// Reads `/proc/self/{stat,status,fd}` (None off Linux).
    pub fn read() -> Option<ProcessStats> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let boot_time = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("btime ")).and_then(|v| v.trim().parse::<f64>().ok())
        });
        let open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
        Self::parse(&stat, &status, boot_time, open_fds)
    }

    fn parse(stat: &str, status: &str, boot_time: Option<f64>, open_fds: usize) -> Option<ProcessStats> {
        // Fields after the command name (which may hold spaces and parentheses):
        // state is field 3, utime 14, stime 15, starttime 22.
        let fields: Vec<&str> = stat.get(stat.rfind(") ")? + 2..)?.split_whitespace().collect();
        let ticks = |field: usize| fields.get(field - 3)?.parse::<f64>().ok();
        let cpu_seconds = (ticks(14)? + ticks(15)?) / USER_HZ;
        let start_time_seconds = boot_time.zip(ticks(22)).map(|(boot, start)| boot + start / USER_HZ);
        let rss_kib: u64 =
            status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok()?;
        Some(ProcessStats { rss_bytes: rss_kib * 1024, cpu_seconds, open_fds, start_time_seconds })
    }
}

/// Routes of the agent's HTTP listener; `/metrics` renders from `last`.
pub fn router(last: LastReport) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(last): State<LastReport>| async move {
                ([(header::CONTENT_TYPE, CONTENT_TYPE)], last.render())
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(last)
}

/// Binds `addr` (`host:port`; port 0 picks one) and serves [`router`] for `last` until
/// `shutdown` resolves. Returns the bound address once it listens.
pub async fn serve(
    addr: &str,
    last: LastReport,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, router(last)).with_graceful_shutdown(shutdown).await {
            tracing::error!(%err, "metrics listener failed");
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_self_parses_including_odd_command_names() {
        let stat = "4242 (slip way) agent) S 1 4242 4242 0 -1 4194560 1 0 0 0 250 50 0 0 20 0 9 0 12345 \
                    1000 300 18446744073709551615";
        let status = "Name:\tslipway-agent\nVmRSS:\t   10240 kB\nThreads:\t9\n";
        let p = ProcessStats::parse(stat, status, Some(1_700_000_000.0), 12).unwrap();
        assert_eq!(p.rss_bytes, 10 * 1024 * 1024);
        assert_eq!(p.cpu_seconds, 3.0);
        assert_eq!(p.start_time_seconds, Some(1_700_000_123.45));
        assert!(ProcessStats::parse("garbage", status, None, 0).is_none());
        let live = ProcessStats::read().expect("this is Linux");
        assert!(live.rss_bytes > 0 && live.open_fds > 0);
    }

    #[test]
    fn the_last_report_becomes_gauges() {
        let report = NodeReport {
            build_fs_total_bytes: 1000,
            build_fs_available_bytes: 400,
            cpu_count: 2,
            cpu_usage_percent: 12.5,
            build_slots: 3,
            docker_healthy: true,
            ..Default::default()
        };
        let before = render_from(None);
        assert!(before.contains("slipway_agent_info{version=") && !before.contains("slipway_agent_cpus"));
        let text = render_from(Some(&(report, Instant::now())));
        for line in [
            "slipway_agent_build_fs_available_bytes 400\n",
            "slipway_agent_cpu_usage_percent 12.5\n",
            "slipway_agent_build_slots 3\n",
            "slipway_agent_engine_healthy 1\n",
            "# TYPE process_cpu_seconds_total counter\n",
        ] {
            assert!(text.contains(line), "{line:?} missing:\n{text}");
        }
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
    }

    #[tokio::test]
    async fn serves_metrics_over_http() {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let addr = serve("127.0.0.1:0", LastReport::default(), async move {
            let _ = stopped.await;
        })
        .await
        .unwrap();
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).await.unwrap();
        let _ = stop.send(());
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.contains("text/plain; version=0.0.4"), "{text}");
        assert!(text.contains("process_cpu_seconds_total "), "{text}");
    }
}
