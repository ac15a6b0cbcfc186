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
    // Back-to-back sends measure the pipeline: no quiet window, no rate limit (with the
    // defaults, messages 100 ms apart would be folded into one event by design).
    let mut beta = mb
        .spawn_claude(
            "beta",
            &[("IPC_PUSH_QUIET_MS", "0"), ("IPC_PUSH_RATE", "0")],
        )
        .await;
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

/// With the default quiet window: messages spaced beyond it, as a conversation between
/// sessions is (the rate limit is off, or it would hold the 21st message of the minute).
async fn isolated_latency() {
    const N: usize = 30;
    let mb = TempMailbox::new();
    let alpha = mb.spawn("alpha").await;
    let mut beta = mb.spawn_claude("beta", &[("IPC_PUSH_RATE", "0")]).await;
    beta.next_event_or_none().await;
    let mut latencies = Vec::with_capacity(N);
    for i in 0..N {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let start = Instant::now();
        alpha.send("beta", &format!("m{i}"), "a body").await;
        beta.next_event().await;
        latencies.push(start.elapsed());
    }
    latencies.sort();
    println!(
        "push latency, default quiet window, {N} messages 150 ms apart: p50 {} · p99 {}",
        ms(percentile(&latencies, 0.50)),
        ms(percentile(&latencies, 0.99)),
    );
}

/// Writes `n` message files for `to` straight into the inbox (as many senders would have).
fn plant(mb: &TempMailbox, n: usize, to: impl Fn(usize) -> String) {
    use t9_ipc::message::{FrontMatter, file_stem, render};
    let now = chrono::Local::now();
    std::fs::create_dir_all(mb.inbox()).expect("inbox");
    for i in 0..n {
        let to = to(i);
        let front = FrontMatter {
            from: "alpha".into(),
            to: to.clone(),
            kind: "ipc".into(),
            subject: format!("planted {i}"),
            priority: "normal".into(),
            created: now.format(t9_ipc::message::TIME_FORMAT).to_string(),
            ..FrontMatter::default()
        };
        let at = now - chrono::TimeDelta::microseconds((n - i) as i64);
        let id = file_stem(at, &format!("{i:08x}"), "alpha", &to, &front.subject);
        std::fs::write(mb.inbox().join(format!("{id}.md")), render(&front, "body")).expect("plant");
    }
}

/// 10,000 messages waited for a name: time from spawn to the catch-up digest.
async fn catch_up() {
    const N: usize = 10_000;
    let mb = TempMailbox::new();
    plant(&mb, N, |_| "gamma".into());
    let start = Instant::now();
    let mut gamma = mb.spawn_claude("gamma", &[("IPC_PUSH", "on")]).await;
    let digest = gamma.next_event().await;
    let total = start.elapsed();
    assert_eq!(digest.meta("count"), N.to_string());
    let start = Instant::now();
    let page = gamma
        .ok("t9_ipc_unread", json!({"limit": 20, "mark_read": false}))
        .await;
    let unread = start.elapsed();
    assert!(page.contains(&format!("{} more unread", N - 20)));
    println!(
        "catch-up of {N} waiting messages: digest event {} after spawn (of which 1 s is the \
         channel grace period); first unread page of 20 {}",
        ms(total),
        ms(unread)
    );
}

/// `t9_ipc_unread` with 100,000 messages in the inbox, 10 of them for the caller.
async fn unread_in_a_big_inbox() {
    const N: usize = 100_000;
    let mb = TempMailbox::new();
    plant(&mb, N, |i| {
        if i % 10_000 == 0 {
            "beta".into()
        } else {
            format!("other{}", i % 7)
        }
    });
    let start = Instant::now();
    let beta = mb.spawn("beta").await;
    let first = beta.ok("t9_ipc_unread", json!({"mark_read": false})).await;
    let index = start.elapsed();
    assert!(first.starts_with("10 unread messages"), "{first}");
    let mut times = Vec::new();
    for _ in 0..50 {
        let start = Instant::now();
        beta.ok("t9_ipc_unread", json!({"mark_read": false})).await;
        times.push(start.elapsed());
    }
    times.sort();
    println!(
        "t9_ipc_unread, {N} messages in the inbox, 10 unread: p50 {} · p99 {} (first call, \
         with the start-up index, {})",
        ms(percentile(&times, 0.50)),
        ms(percentile(&times, 0.99)),
        ms(index)
    );
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
        isolated_latency().await;
        catch_up().await;
        unread_in_a_big_inbox().await;
    });
}
