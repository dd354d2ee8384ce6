//! [`Load`]: a steady stream of GET requests from the test, as users would send them
//! while an app is redeployed: `workers` keep-alive clients, each sending one request
//! every `interval` (so at most `workers / interval` requests a second), counting every
//! answer that is not a 200 as failed and remembering the distinct bodies in the order
//! they first came (so a test sees the old version give way to the new).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long one request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Failure messages kept for the report.
const KEPT_ERRORS: usize = 20;

/// What a [`Load`] saw.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// Requests answered 200.
    pub ok: u64,
    /// Requests that failed (an error, a timeout, or another status).
    pub failed: u64,
    /// The first failures, as `"+1.234s: what"` (time since the start).
    pub errors: Vec<String>,
    /// Distinct bodies of 200 answers, in the order each first came.
    pub bodies: Vec<String>,
    /// The slowest request.
    pub max_latency: Duration,
    /// How long the load ran.
    pub elapsed: Duration,
    /// Requests a second, on average.
    pub rate: f64,
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ok, {} failed in {:.1} s ({:.0} req/s, slowest {} ms); bodies {:?}; first errors {:?}{}",
            self.ok,
            self.failed,
            self.elapsed.as_secs_f64(),
            self.rate,
            self.max_latency.as_millis(),
            self.bodies,
            &self.errors[..self.errors.len().min(3)],
            if self.errors.len() > 3 { " …" } else { "" }
        )
    }
}

/// A running stream of requests; [`Load::stop`] ends it and reports.
pub struct Load {
    stop: Arc<AtomicBool>,
    report: Arc<Mutex<LoadReport>>,
    workers: Vec<tokio::task::JoinHandle<()>>,
    started: Instant,
}

impl Load {
    /// Starts `workers` clients sending `GET url` (with `Host: host` when given) every
    /// `interval` each.
    pub fn start(url: &str, host: Option<&str>, workers: usize, interval: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let report = Arc::new(Mutex::new(LoadReport::default()));
        let started = Instant::now();
        let workers = (0..workers)
            .map(|_| {
                let (stop, report) = (stop.clone(), report.clone());
                let (url, host) = (url.to_owned(), host.map(str::to_owned));
                tokio::spawn(async move {
                    let client = reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build().expect("client");
                    let mut tick = tokio::time::interval(interval);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    while !stop.load(Ordering::Relaxed) {
                        tick.tick().await;
                        let mut request = client.get(&url);
                        if let Some(host) = &host {
                            request = request.header(reqwest::header::HOST, host);
                        }
                        let sent = Instant::now();
                        let outcome = match request.send().await {
                            Ok(r) if r.status().is_success() => {
                                r.text().await.map_err(|e| format!("body: {e}"))
                            }
                            Ok(r) => Err(format!("status {}", r.status())),
                            Err(e) => Err(format!("{e}")),
                        };
                        let latency = sent.elapsed();
                        let mut report = report.lock().expect("load report");
                        report.max_latency = report.max_latency.max(latency);
                        match outcome {
                            Ok(body) => {
                                report.ok += 1;
                                if !report.bodies.contains(&body) {
                                    report.bodies.push(body);
                                }
                            }
                            Err(e) => {
                                report.failed += 1;
                                if report.errors.len() < KEPT_ERRORS {
                                    let at = started.elapsed().as_secs_f64();
                                    report.errors.push(format!("+{at:.3}s: {e}"));
                                }
                            }
                        }
                    }
                })
            })
            .collect();
        Load { stop, report, workers, started }
    }

    /// Requests answered so far (ok and failed).
    pub fn sent(&self) -> u64 {
        let report = self.report.lock().expect("load report");
        report.ok + report.failed
    }

    /// Ends the stream (each client finishes its request in flight) and reports.
    pub async fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        for worker in self.workers {
            let _ = worker.await;
        }
        let mut report = self.report.lock().expect("load report").clone();
        report.elapsed = self.started.elapsed();
        report.rate = (report.ok + report.failed) as f64 / report.elapsed.as_secs_f64().max(0.001);
        report
    }
}
