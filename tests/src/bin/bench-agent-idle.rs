//! `cargo run --release -p slipway-tests --bin bench-agent-idle [SECONDS]`: what an idle
//! agent costs its node. Starts a scheduler and an agent (release builds) on the local
//! engine, lets the agent settle for 5 s, then measures over SECONDS (default 60) of
//! idling: the agent's CPU time (utime + stime from `/proc/PID/stat`) as a share of
//! one core, and its resident memory (VmRSS, VmHWM) at the end. The scheduler, idle in
//! the same run, is measured alongside for comparison.

use std::time::Duration;

use slipway_tests::cluster::PROFILE_ENV;
use slipway_tests::TestCluster;

/// CPU seconds (user + system) a process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    // Fields after the command name (which may contain spaces) start after ") ".
    let rest = &stat[stat.rfind(") ").expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // USER_HZ is 100 on every Linux this runs on.
    ticks / 100.0
}

/// A `/proc/PID/status` field in kB.
fn status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.trim().strip_suffix("kB")?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let seconds: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(60);
    std::env::set_var(PROFILE_ENV, "release");
    let Some(cluster) = TestCluster::start("benchidle").await else {
        eprintln!("no Docker engine: nothing measured");
        std::process::exit(1);
    };
    tokio::time::sleep(Duration::from_secs(5)).await;
    let agent = cluster.agent_pid(1).expect("agent runs");
    let scheduler = cluster.member_pid(1).expect("scheduler runs");
    let (a0, s0) = (cpu_seconds(agent), cpu_seconds(scheduler));
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let (a1, s1) = (cpu_seconds(agent), cpu_seconds(scheduler));
    let share = |cpu: f64| 100.0 * cpu / seconds as f64;
    println!("idle for {seconds} s (report period 1 s in this fixture; the default is 3 s):");
    for (name, pid, cpu) in [("agent", agent, a1 - a0), ("scheduler", scheduler, s1 - s0)] {
        println!(
            "  {name:<9} CPU {cpu:6.2} s = {:5.2}% of one core   RSS {:6.1} MiB (peak {:6.1} MiB)",
            share(cpu),
            status_kb(pid, "VmRSS:") as f64 / 1024.0,
            status_kb(pid, "VmHWM:") as f64 / 1024.0,
        );
    }
}
