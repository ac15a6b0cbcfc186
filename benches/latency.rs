//! Speed of the built server, measured the way a user meets it: `cargo bench --bench latency`.
//!
//! - push latency: a `t9_ipc_send` tool call on one server until the channel event arrives
//!   at another (p50/p99);
//! - start-up: spawn of `t9-ipc serve` until its `initialize` response;
//! - idle: resident memory and CPU time of a server that has nothing to do.
//!
//! The numbers are written down in README.md ("Speed"); this prints them, it asserts nothing.

#[allow(dead_code)]
#[path = "../tests/util.rs"]
mod util;

use std::time::{Duration, Instant};

use serde_json::json;
use util::{Raw, TempMailbox, initialize_request};

const MESSAGES: usize = 300;
const SPAWNS: usize = 50;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// `(resident KiB, CPU ticks used)` of a process, from /proc.
fn proc_usage(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    // After the ")": state is field 0, utime field 11, stime field 12.
    let ticks = fields
        .get(11)
        .and_then(|u| u.parse::<u64>().ok())
        .unwrap_or(0)
        + fields
            .get(12)
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0);
    (rss, ticks)
}

async fn push_latency() {
    let mb = TempMailbox::new();
    let alpha = mb.spawn("alpha").await;
    let mut beta = mb.spawn("beta").await;
    // The first push waits for the grace period after `initialized`; wait it out once.
    alpha.send("beta", "warm-up", "").await;
    beta.next_event().await;

    let mut latencies = Vec::with_capacity(MESSAGES);
    for i in 0..MESSAGES {
        let start = Instant::now();
        let id = alpha
            .send("beta", &format!("m{i}"), "a body of a few words")
            .await;
        let event = beta.next_event().await;
        latencies.push(start.elapsed());
        assert_eq!(event.meta("msg_id"), id);
    }
    latencies.sort();
    println!(
        "push latency over {MESSAGES} messages (send call to event at the other session): \
         p50 {} · p99 {} · max {}",
        ms(percentile(&latencies, 0.50)),
        ms(percentile(&latencies, 0.99)),
        ms(*latencies.last().unwrap())
    );

    let (rss, before) = proc_usage(beta.pid);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (_, after) = proc_usage(beta.pid);
    println!(
        "idle: resident memory {:.1} MiB after {MESSAGES} messages; CPU over 5 s idle: {} ticks",
        rss as f64 / 1024.0,
        after - before
    );
    alpha.quit().await;
    beta.quit().await;
}

async fn startup() {
    let mb = TempMailbox::new();
    let mut times = Vec::with_capacity(SPAWNS);
    let mut rss_fresh = 0;
    for i in 0..SPAWNS {
        let start = Instant::now();
        let mut raw = Raw::spawn(mb.root(), &format!("spawn-{i}"));
        raw.send(initialize_request(1)).await;
        raw.response(json!(1)).await;
        times.push(start.elapsed());
        if i == 0 {
            raw.send(json!({"jsonrpc":"2.0","method":"notifications/initialized"}))
                .await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            rss_fresh = proc_usage(raw.child.id().unwrap()).0;
        }
        raw.finish().await;
    }
    times.sort();
    println!(
        "start-up over {SPAWNS} spawns (spawn to initialize response): p50 {} · p99 {}",
        ms(percentile(&times, 0.50)),
        ms(percentile(&times, 0.99)),
    );
    println!(
        "idle: resident memory of a fresh session: {:.1} MiB",
        rss_fresh as f64 / 1024.0
    );
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` would too. Nothing to filter.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        startup().await;
        push_latency().await;
    });
}
