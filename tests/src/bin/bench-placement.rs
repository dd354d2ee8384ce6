//! `cargo run --release -p slipway-tests --bin bench-placement [NODES] [DECISIONS]`:
//! how long one placement decision takes over a large synthetic fleet (default 10,000
//! nodes, 500 decisions).
//!
//! The fleet is deterministic (a fixed-seed generator): headroom varies, and about one
//! node in ten is down, draining, out of disk, busy or has a sick engine, so the
//! filters reject with reasons as they would on a real fleet. Each decision is a full
//! [`place`] call: every filter on every node, scores, the ranking sort and the
//! rejection list. Baseline, measured in the same run: one pass over the same nodes
//! picking the one with the most free disk, the least any placement must do. Prints
//! median and p99 of both, and their ratio.

use std::time::{Duration, Instant};

use slipway_proto::NodeReport;
use slipway_scheduler::placement::{place, BuildNeeds, Liveness, NodeView};

/// A small fixed-seed generator (xorshift64*), so every run places on the same fleet.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const GIB: u64 = 1 << 30;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let nodes: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let decisions: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(500);
    let mut rng = Rng(0x5eed_1234_abcd_0001);

    let ids: Vec<String> = (0..nodes).map(|i| format!("node-{i:05}")).collect();
    let reports: Vec<NodeReport> = (0..nodes)
        .map(|_| {
            let total = (100 + rng.below(900)) * GIB;
            let cpu_count = 2 + rng.below(62) as u32;
            NodeReport {
                build_fs_total_bytes: total,
                build_fs_available_bytes: if rng.below(20) == 0 { GIB } else { rng.below(total) },
                cpu_count,
                cpu_usage_percent: rng.below(100) as f32,
                load_1m: rng.below(u64::from(cpu_count) * 150) as f64 / 100.0,
                memory_total_bytes: 64 * GIB,
                memory_available_bytes: rng.below(64) * GIB,
                running_builds: rng.below(4) as u32,
                build_slots: 4,
                docker_healthy: rng.below(50) != 0,
                ..Default::default()
            }
        })
        .collect();
    let views: Vec<NodeView<'_>> = (0..nodes)
        .map(|i| NodeView {
            id: &ids[i],
            name: &ids[i],
            liveness: if rng.below(40) == 0 { Liveness::Down } else { Liveness::Ready },
            draining: rng.below(50) == 0,
            report: Some(&reports[i]),
            assigned_builds: 0,
            refusal: None,
        })
        .collect();
    let apps: Vec<String> = (0..100).map(|i| format!("app-{i}")).collect();

    let mut placed = Vec::with_capacity(decisions);
    let mut baseline = Vec::with_capacity(decisions);
    let mut chosen = 0;
    for d in 0..decisions {
        let affinity = &ids[rng.below(nodes as u64) as usize];
        let needs = BuildNeeds {
            app: &apps[d % apps.len()],
            min_free_bytes: 2 * GIB + rng.below(4) * GIB,
            last_built_on: Some(affinity.as_str()),
        };
        // Interleaved, so both see the same machine noise.
        let started = Instant::now();
        let decision = place(&needs, &views);
        placed.push(started.elapsed());
        chosen += usize::from(decision.chosen.is_some());
        std::hint::black_box(&decision);

        let started = Instant::now();
        let best = views
            .iter()
            .filter_map(|v| v.report.map(|r| (r.build_fs_available_bytes, v.id)))
            .max_by_key(|(free, _)| *free);
        baseline.push(started.elapsed());
        std::hint::black_box(best);
    }
    placed.sort();
    baseline.sort();
    let (p50, p99) = (percentile(&placed, 0.5), percentile(&placed, 0.99));
    let (b50, b99) = (percentile(&baseline, 0.5), percentile(&baseline, 0.99));
    println!(
        "placement over {nodes} synthetic nodes, {decisions} decisions ({chosen} placed), {} cores",
        cores()
    );
    println!("  place():              median {p50:>10.3?}   p99 {p99:>10.3?}");
    println!("  baseline (max disk):  median {b50:>10.3?}   p99 {b99:>10.3?}");
    println!(
        "  ratio place/baseline: median {:.1}x   p99 {:.1}x",
        p50.as_secs_f64() / b50.as_secs_f64(),
        p99.as_secs_f64() / b99.as_secs_f64()
    );
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
