//! The speed figures of t9-ipc, measured the way a user meets them, on the built binary:
//! `cargo bench --bench figures`. It prints each figure and writes them all, with the
//! targets, the machine's core count and this command, to `docs/BENCHMARKS.md`.
//!
//! Every figure uses the default settings (`IPC_PUSH=on` stands in for Claude Code's launch
//! flag where a figure counts what was seen). Figures (targets from issues 5 and 12):
//! - push latency, replies one at a time: two sessions answering each other, `t9_ipc_send`
//!   call to the channel event;
//! - the same with 10 live sessions and 100,000 messages in the mailbox;
//! - a flood of 20,000 files dropped into `inbox/`: events in the first minute, every
//!   message delivered once, `t9_ipc_who` during the flood;
//! - spawn to `initialize` response;
//! - idle server: resident memory after init, CPU over 60 s idle;
//! - `t9_ipc_unread` with 100,000 messages in the mailbox, 10 unread;
//! - `t9_ipc_who` with 200 live heartbeat entries;
//! - 8 concurrent senders to one receiver: messages sent per second, beside the disk's own
//!   bound measured by the same run, every one delivered;
//! - catch-up of 10,000 messages that waited for a name;
//! - `t9-ipc hook UserPromptSubmit` on 10,000 messages (benches/hook.rs);
//! - across machines through a local `nats-server` (benches/federation.rs).
//!
//! It asserts only that what it measures happened (every message arrived); the numbers are
//! for people.

#[allow(dead_code)]
#[path = "../tests/util.rs"]
mod util;

#[allow(dead_code)]
#[path = "hook.rs"]
mod hook;

#[path = "coord.rs"]
mod coord;
#[path = "federation.rs"]
mod federation;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde_json::json;
use util::{BIN, Client, Raw, TempMailbox, delivered_ids, initialize_request, read_all};

/// Channel events count as seen, as under Claude Code started with the channel flag.
const PUSH_ON: &[(&str, &str)] = &[("IPC_PUSH", "on")];

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// One line of the report.
struct Figure {
    what: String,
    target: String,
    result: String,
    met: Option<bool>,
}

#[derive(Default)]
struct Report {
    figures: Vec<Figure>,
}

impl Report {
    fn add(&mut self, what: &str, target: &str, result: String, met: Option<bool>) {
        println!(
            "{what}: {result}{}",
            match met {
                Some(true) => "  [target met]",
                Some(false) => "  [TARGET MISSED]",
                None => "",
            }
        );
        self.figures.push(Figure {
            what: what.to_owned(),
            target: target.to_owned(),
            result,
            met,
        });
    }

    /// p50/p99 of sorted latencies against targets in milliseconds.
    fn latency(&mut self, what: &str, sorted: &[Duration], p50_ms: f64, p99_ms: f64) {
        self.latency_and(what, sorted, (p50_ms, p99_ms), String::new());
    }

    /// [`Report::latency`], with `more` after the figures.
    fn latency_and(
        &mut self,
        what: &str,
        sorted: &[Duration],
        (p50_ms, p99_ms): (f64, f64),
        more: String,
    ) {
        let (p50, p99) = (percentile(sorted, 0.50), percentile(sorted, 0.99));
        let met = p50.as_secs_f64() * 1e3 <= p50_ms && p99.as_secs_f64() * 1e3 <= p99_ms;
        self.add(
            what,
            &format!("p50 ≤ {p50_ms} ms, p99 ≤ {p99_ms} ms"),
            format!(
                "p50 {} · p99 {} · max {}{more}",
                ms(p50),
                ms(p99),
                ms(*sorted.last().expect("samples"))
            ),
            Some(met),
        );
    }
}

/// What a replies figure says beside its own: the same 1,000 answers through rmcp's client.
fn through_rmcp(sorted: &[Duration]) -> String {
    format!(
        "; through rmcp's client (another 1,000): p50 {} · p99 {}",
        ms(percentile(sorted, 0.5)),
        ms(percentile(sorted, 0.99))
    )
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
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (rss, tick(11) + tick(12))
}

/// Writes `n` message files straight into the inbox (as many senders would have).
fn plant(mb: &TempMailbox, n: usize, to: impl Fn(usize) -> String) {
    use t9_ipc::message::{FrontMatter, TIME_FORMAT, file_stem, render};
    let now = chrono::Local::now();
    std::fs::create_dir_all(mb.inbox()).expect("inbox");
    for i in 0..n {
        let to = to(i);
        let front = FrontMatter {
            from: "planter".into(),
            to: to.clone(),
            kind: "ipc".into(),
            subject: format!("planted {i}"),
            priority: "normal".into(),
            created: now.format(TIME_FORMAT).to_string(),
            ..FrontMatter::default()
        };
        let at = now - chrono::TimeDelta::microseconds((n - i) as i64);
        let id = file_stem(at, &format!("{i:08x}"), "planter", &to, &front.subject);
        std::fs::write(mb.inbox().join(format!("{id}.md")), render(&front, "body")).expect("plant");
    }
}

/// `alpha` and `beta` answer each other `n` times, one message at a time (each a reply to
/// the one before, as a model answers an event); each timed from the send call to its event.
async fn replies(alpha: &mut Client, beta: &mut Client, n: usize) -> Vec<Duration> {
    replies_named((alpha, "alpha"), (beta, "beta"), n).await
}

/// [`replies`] between two sessions of any names.
async fn replies_named(
    (alpha, alpha_name): (&mut Client, &str),
    (beta, beta_name): (&mut Client, &str),
    n: usize,
) -> Vec<Duration> {
    let mut latencies = Vec::with_capacity(n);
    let mut last: Option<String> = None;
    for i in 0..n {
        let (from, to, name) = if i % 2 == 0 {
            (&*alpha, &mut *beta, beta_name)
        } else {
            (&*beta, &mut *alpha, alpha_name)
        };
        let mut args =
            json!({"to": name, "subject": format!("m{i}"), "body": "a body of a few words"});
        if let Some(r) = &last {
            args["reply_to"] = json!(r);
        }
        let start = Instant::now();
        let id = util::msg_id_in(&from.ok("t9_ipc_send", args).await);
        let event = to.next_event().await;
        latencies.push(start.elapsed());
        assert_eq!(event.meta("msg_id"), id);
        last = Some(id);
    }
    latencies.sort();
    latencies
}

/// A session spoken to by a minimal client: `initialize`, then `initialized`.
async fn raw_session(mb: &TempMailbox, name: &str) -> Raw {
    raw_session_env(mb, name, &[]).await
}

/// [`raw_session`] with extra environment variables.
async fn raw_session_env(mb: &TempMailbox, name: &str, envs: &[(&str, &str)]) -> Raw {
    let mut raw = Raw::spawn_env(mb.root(), name, envs);
    raw.send(initialize_request(1)).await;
    raw.response(json!(1)).await;
    raw.send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        .await;
    raw
}

/// [`replies`] through minimal clients: each call written to a server's stdin and each line
/// of its stdout read by the measuring task itself. rmcp's client, which [`replies`] uses,
/// puts its own tasks and channels between the pipe and the caller (0.07 to 0.10 ms more at
/// p50 in this round's runs, on the cores the servers use): that is the instrument, not the
/// servers.
async fn raw_replies(alpha: &mut Raw, beta: &mut Raw, n: usize) -> Vec<Duration> {
    let mut latencies = Vec::with_capacity(n);
    let mut last: Option<String> = None;
    for i in 0..n {
        let (from, to, name) = if i % 2 == 0 {
            (&mut *alpha, &mut *beta, "beta")
        } else {
            (&mut *beta, &mut *alpha, "alpha")
        };
        let mut args =
            json!({"to": name, "subject": format!("m{i}"), "body": "a body of a few words"});
        if let Some(r) = &last {
            args["reply_to"] = json!(r);
        }
        let call = json!(100 + i);
        let start = Instant::now();
        from.send(json!({"jsonrpc": "2.0", "id": call, "method": "tools/call",
            "params": {"name": "t9_ipc_send", "arguments": args}}))
            .await;
        let (mut answer, mut event) = (None, None);
        while answer.is_none() || event.is_none() {
            tokio::select! {
                line = from.recv() => if line["id"] == call { answer = Some(line) },
                line = to.recv() => if line["method"] == "notifications/claude/channel" {
                    event = Some(line);
                },
            }
        }
        latencies.push(start.elapsed());
        let (answer, event) = (answer.unwrap(), event.unwrap());
        let id = util::msg_id_in(answer["result"]["content"][0]["text"].as_str().unwrap());
        assert_eq!(event["params"]["meta"]["msg_id"], json!(id));
        last = Some(id);
    }
    latencies.sort();
    latencies
}

async fn push_latency(report: &mut Report) {
    let raw_mb = TempMailbox::new();
    let mut raw_alpha = raw_session(&raw_mb, "alpha").await;
    let mut raw_beta = raw_session(&raw_mb, "beta").await;
    tokio::time::sleep(Duration::from_millis(1500)).await; // the grace after `initialized`
    let raw = raw_replies(&mut raw_alpha, &mut raw_beta, 1000).await;
    drop((raw_alpha, raw_beta));

    let mb = TempMailbox::new();
    let mut alpha = mb.spawn_claude("alpha", &[]).await;
    let mut beta = mb.spawn_claude("beta", &[]).await;
    beta.next_event_or_none().await; // the grace period after `initialized`
    alpha.next_event_or_none().await;
    let latencies = replies(&mut alpha, &mut beta, 1000).await;
    report.latency_and(
        "push latency, replies one at a time, default settings: two sessions answering each \
         other, 1,000 messages (send call to event), each server spoken to by a minimal \
         JSON-RPC client",
        &raw,
        (1.0, 5.0),
        through_rmcp(&latencies),
    );

    let (rss, before) = proc_usage(beta.pid);
    tokio::time::sleep(Duration::from_secs(60)).await;
    let (_, after) = proc_usage(beta.pid);
    let ticks = after - before;
    report.add(
        "idle: CPU of a server over 60 s idle (after 1,000 messages)",
        "≈ 0 (no polling); counted as met at ≤ 0.1 % of a core",
        format!(
            "{ticks} ticks of 10 ms = {:.3} % of a core (the once-a-minute heartbeat \
             write); resident memory {:.1} MiB",
            ticks as f64 * 10.0 / 60_000.0 * 100.0,
            rss as f64 / 1024.0
        ),
        Some(ticks <= 6),
    );
}

async fn push_latency_big(report: &mut Report) {
    let mb = TempMailbox::new();
    // 100,000 messages for the 8 other sessions: each of them has 12,500 unread.
    plant(&mb, 100_000, |i| format!("other{}", i % 8));
    let mut alpha = mb.spawn_claude("alpha", &[]).await;
    let mut beta = mb.spawn_claude("beta", &[]).await;
    let mut others = Vec::new();
    for i in 0..8 {
        others.push(mb.spawn(&format!("other{i}")).await);
    }
    beta.next_event_or_none().await;
    alpha.next_event_or_none().await;
    let latencies = replies(&mut alpha, &mut beta, 1000).await;
    report.latency(
        "push latency, replies one at a time, default settings, 10 live sessions, 100,000 \
         messages in the mailbox, 1,000 messages",
        &latencies,
        3.0,
        15.0,
    );
    drop(others);
}

/// What `events` (whole) and `pulled` (unread) delivered of `n` messages: (each exactly
/// once, pushed whole, delivered twice).
fn once(events: &[util::Event], pulled: &[String], n: usize) -> (bool, usize, usize) {
    let mut seen = std::collections::HashMap::<&str, usize>::new();
    let whole: Vec<String> = events.iter().flat_map(|e| delivered_ids(e).0).collect();
    for id in whole.iter().chain(pulled) {
        *seen.entry(id.as_str()).or_default() += 1;
    }
    let twice = seen.values().filter(|c| **c > 1).count();
    (seen.len() == n && twice == 0, whole.len(), twice)
}

/// Every event within `wait`, then every unread message, then what the freed limits pushed
/// meanwhile and what is left: (events in `wait`, all events, all pulled).
async fn drain(rx: &mut Client, wait: Duration) -> (usize, Vec<util::Event>, Vec<String>) {
    let mut events = rx.events_within(wait).await;
    let within = events.len();
    let mut pulled = read_all(rx).await;
    events.extend(rx.events_within(Duration::from_millis(500)).await);
    pulled.extend(read_all(rx).await);
    (within, events, pulled)
}

/// 20,000 files dropped into `inbox/` by a loop (written in place, a new `from` on each):
/// events in the first minute, `t9_ipc_who` meanwhile, every message delivered once.
async fn flood(report: &mut Report) {
    const FILES: usize = 20_000;
    let mb = TempMailbox::new();
    let mut beta = mb.spawn_claude("beta", PUSH_ON).await;
    beta.next_event_or_none().await;
    let inbox = mb.inbox();
    let start = Instant::now();
    let writer = tokio::task::spawn_blocking(move || {
        use t9_ipc::message::{FrontMatter, TIME_FORMAT, file_stem, render};
        for i in 0..FILES {
            let now = chrono::Local::now();
            let from = format!("flood{i}");
            let front = FrontMatter {
                from: from.clone(),
                to: "beta".into(),
                kind: "ipc".into(),
                subject: format!("flood {i}"),
                priority: "normal".into(),
                created: now.format(TIME_FORMAT).to_string(),
                ..FrontMatter::default()
            };
            let id = file_stem(now, &format!("{i:08x}"), &from, "beta", &front.subject);
            std::fs::write(inbox.join(format!("{id}.md")), render(&front, "body")).expect("write");
        }
    });
    let (mut who, mut events) = (Vec::new(), Vec::new());
    while !writer.is_finished() {
        let t = Instant::now();
        beta.ok("t9_ipc_who", json!({})).await;
        who.push(t.elapsed());
        events.extend(beta.events_within(Duration::from_millis(10)).await);
    }
    let written = start.elapsed();
    let (within, rest, pulled) = drain(
        &mut beta,
        Duration::from_secs(60).saturating_sub(start.elapsed()),
    )
    .await;
    let first_minute = events.len() + within;
    events.extend(rest);
    let (all_once, whole, twice) = once(&events, &pulled, FILES);
    who.sort();
    let p99 = percentile(&who, 0.99);
    report.add(
        "flood: 20,000 files dropped into `inbox/` by a loop (a new `from` on each), default \
         settings",
        "≤ 10 events in the first minute; every message delivered exactly once (events or \
         `t9_ipc_unread`); `t9_ipc_who` p99 ≤ 5 ms during the flood",
        format!(
            "{first_minute} events in the first minute; {whole} pushed whole, {} read with \
             `t9_ipc_unread`, {twice} twice, all exactly once: {all_once}; `t9_ipc_who` p50 \
             {} · p99 {} over {} calls while the files were written ({})",
            pulled.len(),
            ms(percentile(&who, 0.5)),
            ms(p99),
            who.len(),
            ms(written)
        ),
        Some(first_minute <= 10 && all_once && p99 <= Duration::from_millis(5)),
    );
}

/// The disk's own bound for durable sends: `writers` threads each writing `each` files of
/// `size` bytes the way a send does (write, fsync, rename, fsync of the folder); files/s.
/// The files are named `*.bound`, not messages, so that `dir` may be an `inbox/`.
fn disk_bound(dir: &std::path::Path, writers: usize, each: usize, size: usize) -> f64 {
    let start = Instant::now();
    std::thread::scope(|scope| {
        for w in 0..writers {
            scope.spawn(move || {
                use std::io::Write as _;
                let body = vec![b'x'; size];
                let folder = std::fs::File::open(dir).expect("folder");
                for n in 0..each {
                    let tmp = dir.join(format!(".w{w}-{n}.tmp"));
                    let mut f = std::fs::File::create(&tmp).expect("create");
                    f.write_all(&body).expect("write");
                    f.sync_all().expect("fsync");
                    std::fs::rename(&tmp, dir.join(format!("w{w}-{n}.bound"))).expect("rename");
                    folder.sync_all().expect("fsync folder");
                }
            });
        }
    });
    (writers * each) as f64 / start.elapsed().as_secs_f64()
}

async fn startup(report: &mut Report) {
    const SPAWNS: usize = 100;
    let mb = TempMailbox::new();
    let mut times = Vec::with_capacity(SPAWNS);
    for i in 0..SPAWNS {
        let start = Instant::now();
        let mut raw = Raw::spawn(mb.root(), &format!("spawn-{i}"));
        raw.send(initialize_request(1)).await;
        raw.response(json!(1)).await;
        times.push(start.elapsed());
        raw.finish().await;
    }
    times.sort();
    let rss = idle_resident(&mb).await;
    report.add(
        "start-up: spawn to `initialize` response, 100 spawns",
        "median ≤ 3 ms",
        format!(
            "min {} · median {} · max {}",
            ms(times[0]),
            ms(percentile(&times, 0.5)),
            ms(*times.last().expect("samples"))
        ),
        Some(percentile(&times, 0.5) <= Duration::from_millis(3)),
    );
    let mib = |kib: u64| format!("{:.2} MiB", kib as f64 / 1024.0);
    report.add(
        "idle: resident memory 2 s after init, 5 servers (each maps the binary's code at its own \
         random address, so the same pages come in different 64 KiB blocks)",
        "median ≤ 7 MiB",
        format!(
            "min {} · median {} · max {}",
            mib(rss[0]),
            mib(rss[2]),
            mib(rss[4])
        ),
        Some(rss[2] <= 7 * 1024),
    );
    // The binary the bench drives is the release build a user installs (stripped, LTO).
    let bytes = std::fs::metadata(BIN).map_or(0, |m| m.len());
    report.add(
        "size of the release binary (stripped)",
        "≤ 8 MiB",
        format!(
            "{:.1} MiB ({bytes} bytes)",
            bytes as f64 / (1024.0 * 1024.0)
        ),
        Some(bytes <= 8 * 1024 * 1024),
    );
}

/// The resident memory (KiB) of 5 servers of `mb`, 2 s after `notifications/initialized`,
/// sorted.
async fn idle_resident(mb: &TempMailbox) -> Vec<u64> {
    let mut servers = Vec::new();
    for i in 0..5 {
        let mut raw = Raw::spawn(mb.root(), &format!("idle-{i}"));
        raw.send(initialize_request(1)).await;
        raw.response(json!(1)).await;
        raw.send(json!({"jsonrpc":"2.0","method":"notifications/initialized"}))
            .await;
        servers.push(raw);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut rss: Vec<u64> = servers
        .iter()
        .map(|raw| proc_usage(raw.child.id().expect("pid")).0)
        .collect();
    for raw in servers {
        raw.finish().await;
    }
    rss.sort();
    rss
}

async fn unread_big(report: &mut Report) {
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
    for _ in 0..100 {
        let start = Instant::now();
        beta.ok("t9_ipc_unread", json!({"mark_read": false})).await;
        times.push(start.elapsed());
    }
    times.sort();
    report.add(
        "`t9_ipc_unread`, 100,000 messages in the mailbox, 10 unread, 100 calls",
        "≤ 20 ms",
        format!(
            "p50 {} · p99 {}; the first call after spawn (it waits for the start-up index) {}",
            ms(percentile(&times, 0.5)),
            ms(percentile(&times, 0.99)),
            ms(index)
        ),
        Some(percentile(&times, 0.99) <= Duration::from_millis(20)),
    );
    drop(beta);
    // Start-up on this mailbox: nothing before the answer may cost what the mailbox holds,
    // except once for a new name (one listing of inbox/ for the name's first message).
    let mut starts = Vec::new();
    for _ in 0..21 {
        let start = Instant::now();
        let mut raw = Raw::spawn(mb.root(), "returning");
        raw.send(initialize_request(1)).await;
        raw.response(json!(1)).await;
        starts.push(start.elapsed());
        raw.finish().await;
    }
    let first = starts.remove(0);
    starts.sort();
    report.add(
        "start-up with 100,000 messages in the mailbox: spawn to `initialize` response, a name \
         started 21 times",
        "(no target; the empty-mailbox figure's ≤ 3 ms is the aim)",
        format!(
            "the name's first start {} (it lists `inbox/` once for the name's first message); \
             then min {} · median {} · max {}",
            ms(first),
            ms(starts[0]),
            ms(percentile(&starts, 0.5)),
            ms(*starts.last().expect("samples"))
        ),
        None,
    );
}

async fn who_200(report: &mut Report) {
    let mb = TempMailbox::new();
    let beta = mb.spawn("beta").await;
    // 200 live entries: this process's pid is running, so each counts as alive. Written
    // under the heartbeat lock, as a server would (beta refreshes its own entry meanwhile).
    let me = std::process::id();
    let now = chrono::Local::now();
    let stamp = now.format(t9_ipc::message::TIME_FORMAT).to_string();
    t9_ipc::heartbeat::Heartbeats::new(mb.root())
        .update(now, |table| {
            for i in 0..199 {
                let entry = serde_json::from_value(json!({
                    "timestamp": stamp, "status": "active", "pid": me,
                    "working_on": "benchmarks", "cwd": format!("/work/project-{i}"),
                }))
                .expect("an entry");
                table.insert(format!("peer{i:03}"), entry);
            }
        })
        .expect("heartbeats");
    let mut times = Vec::new();
    for _ in 0..100 {
        let start = Instant::now();
        let text = beta.ok("t9_ipc_who", json!({})).await;
        times.push(start.elapsed());
        assert!(text.starts_with("200 live sessions"), "{text}");
    }
    times.sort();
    report.add(
        "`t9_ipc_who` with 200 live heartbeat entries, 100 calls",
        "≤ 5 ms",
        format!(
            "p50 {} · p99 {}",
            ms(percentile(&times, 0.5)),
            ms(percentile(&times, 0.99))
        ),
        Some(percentile(&times, 0.99) <= Duration::from_millis(5)),
    );
}

/// Each of `senders` sends `each` messages to `to`, all of them at once: the time until
/// every send returned, and the senders.
async fn send_all(senders: Vec<Client>, to: &str, each: usize) -> (Duration, Vec<Client>) {
    let start = Instant::now();
    let tasks: Vec<_> = senders
        .into_iter()
        .map(|s| {
            let to = to.to_owned();
            tokio::spawn(async move {
                for n in 0..each {
                    s.send(&to, &format!("m{n}"), "body").await;
                }
                s
            })
        })
        .collect();
    let mut done = Vec::new();
    for t in tasks {
        done.push(t.await.expect("sender"));
    }
    (start.elapsed(), done)
}

/// [`send_all`] through minimal clients ([`raw_replies`] says why).
async fn raw_send_all(senders: Vec<Raw>, to: &str, each: usize) -> (Duration, Vec<Raw>) {
    let start = Instant::now();
    let tasks: Vec<_> = senders
        .into_iter()
        .map(|mut s| {
            let to = to.to_owned();
            tokio::spawn(async move {
                for n in 0..each {
                    let call = json!(100 + n);
                    s.send(json!({"jsonrpc": "2.0", "id": call, "method": "tools/call",
                        "params": {"name": "t9_ipc_send", "arguments":
                            {"to": to, "subject": format!("m{n}"), "body": "body"}}}))
                        .await;
                    let answer = s.response(call).await;
                    assert!(answer["result"]["isError"] != json!(true), "{answer}");
                }
                s
            })
        })
        .collect();
    let mut done = Vec::new();
    for t in tasks {
        done.push(t.await.expect("sender"));
    }
    (start.elapsed(), done)
}

async fn throughput(report: &mut Report) {
    const SENDERS: usize = 8;
    const EACH: usize = 1000;
    let mb = TempMailbox::new();
    let mut rx = mb.spawn_claude("receiver", PUSH_ON).await;
    let mut senders = Vec::new();
    for i in 0..SENDERS {
        senders.push(raw_session(&mb, &format!("sender{i}")).await);
    }
    rx.next_event_or_none().await;
    let (sent_in, done) = raw_send_all(senders, "receiver", EACH).await;
    let rate = (SENDERS * EACH) as f64 / sent_in.as_secs_f64();
    let (_, events, pulled) = drain(&mut rx, Duration::from_millis(500)).await;
    let (all_once, whole, twice) = once(&events, &pulled, SENDERS * EACH);
    // The same sizes on the same disk, the way a send writes them.
    let sizes: Vec<u64> = std::fs::read_dir(mb.inbox())
        .expect("inbox")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".md"))
        .filter_map(|e| e.metadata().ok().map(|m| m.len()))
        .collect();
    let size = (sizes.iter().sum::<u64>() / sizes.len().max(1) as u64) as usize;
    // The bound is measured in the same `inbox/`, once every server has exited: on ext4
    // without a journal, making a file cost from 8 to 280 µs by the folder it was made in
    // (folders made side by side land in different groups of inodes, and the allocator
    // walks past the inodes it takes for recently deleted), so a bound measured in another
    // folder says as much about that folder as about the disk. The one beside is reported
    // too. It moves between runs a few seconds apart (7,964 and 5,570 files/s, one after
    // the other, in one `inbox/`), so it is measured twice and the higher counts.
    for mut sender in done {
        let _ = sender.child.kill().await;
    }
    rx.quit().await;
    let runs = [(); 2].map(|()| disk_bound(&mb.inbox(), SENDERS, EACH, size));
    let bound = runs[0].max(runs[1]);
    let beside = mb.root().join("disk-bound");
    std::fs::create_dir_all(&beside).expect("a folder beside");
    let bound_beside = disk_bound(&beside, SENDERS, EACH, size);
    let ratio = rate / bound;
    report.add(
        "8 concurrent senders → one receiver, 8,000 messages, default settings, beside the \
         disk's own bound (8 writers doing write + fsync + rename + fsync of the folder, same \
         sizes, same run, in the same `inbox/` once the servers have exited, the higher of two \
         runs); the senders spoken to by minimal JSON-RPC clients",
        "≥ 0.5 of the disk's bound; every message pushed or named, delivered exactly once",
        format!(
            "{rate:.0} messages/s sent ({} for all); the disk's bound {bound:.0} files/s of \
             {size} bytes, the higher of {:.0} and {:.0} ({bound_beside:.0} files/s in a new \
             folder beside `inbox/`); ratio {ratio:.2}. {} events: {whole} pushed whole, {} \
             read with `t9_ipc_unread`, {twice} twice, all exactly once: {all_once}",
            ms(sent_in),
            runs[0],
            runs[1],
            events.len(),
            pulled.len()
        ),
        Some(ratio >= 0.5 && all_once),
    );
}

async fn catch_up(report: &mut Report) {
    const N: usize = 10_000;
    let mb = TempMailbox::new();
    plant(&mb, N, |_| "gamma".into());
    let start = Instant::now();
    let mut gamma = mb.spawn_claude("gamma", &[("IPC_PUSH", "on")]).await;
    let digest = gamma.next_event().await;
    let total = start.elapsed();
    assert_eq!(digest.meta("count"), N.to_string());
    let start = Instant::now();
    gamma
        .ok("t9_ipc_unread", json!({"limit": 20, "mark_read": false}))
        .await;
    let page = start.elapsed();
    report.add(
        "catch-up: 10,000 messages waited for a name; spawn to the digest event",
        "(no target)",
        format!(
            "{} (of which 1 s is the channel grace period); first `t9_ipc_unread` page of 20 {}",
            ms(total),
            ms(page)
        ),
        None,
    );
}

fn hook_figure(report: &mut Report) {
    let (unread, none) = hook::run();
    let p = |t: &[Duration]| {
        format!(
            "min {} · p50 {} · p99 {}",
            ms(t[0]),
            ms(percentile(t, 0.5)),
            ms(percentile(t, 0.99))
        )
    };
    report.add(
        "`t9-ipc hook UserPromptSubmit`, 10,000 messages, nothing unread (the usual prompt), spawn to exit",
        "≤ 20 ms",
        p(&none),
        Some(percentile(&none, 0.5) <= Duration::from_millis(20)),
    );
    report.add(
        "`t9-ipc hook UserPromptSubmit`, 10,000 messages, 10 unread printed, spawn to exit",
        "≤ 20 ms",
        p(&unread),
        Some(percentile(&unread, 0.5) <= Duration::from_millis(20)),
    );
}

fn write_report(report: &Report, took: Duration) {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let mut md = format!(
        "# Benchmarks\n\nProduced by `cargo bench --bench figures` (release build of the real \
         binary, driven over stdio like an MCP client) on {} at {} on a machine with {cores} \
         cores ({cpu}); the run took {:.0} s. Run it again to replace this file.\n\n\
         | figure | target | result | met |\n| --- | --- | --- | --- |\n",
        chrono::Local::now().format("%Y-%m-%d"),
        chrono::Local::now().format("%H:%M"),
        took.as_secs_f64()
    );
    for f in &report.figures {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            f.what,
            f.target,
            f.result,
            match f.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "",
            }
        );
    }
    md.push_str(
        "\nNotes:\n\n\
         - Latencies are from the `t9_ipc_send` tool call at the sender to the channel event at \
         the receiver, both through real stdio pipes; the messages are written durably (fsync) \
         before the send returns.\n\
         - Every figure runs with the default settings (no `IPC_PUSH_QUIET_MS` or \
         `IPC_PUSH_RATE` set). The reply figures send each message as an answer \
         (`reply_to`) to the one before, as a model answers an event; answers to a session's \
         own messages are never held by the limits. `IPC_PUSH=on` stands in for Claude \
         Code's channel flag where a figure counts what was seen.\n\
         - Idle CPU is read from `/proc/<pid>/stat` (ticks of 10 ms).\n\
         - Sending is bounded by the disk: every send flushes the message file and the inbox \
         folder (two fsyncs) before it returns, so that a send that succeeded survives a \
         crash. The throughput figure measures that bound in the same run (8 threads doing \
         nothing but write, fsync, rename, fsync of the folder, with files of the messages' \
         size, in the same `inbox/` once its servers have exited, twice, the higher run \
         counting) and reports the sends against it; the bound in a new folder beside it is \
         given too, since making a file costs what the folder's place on the disk makes it \
         cost.\n\
         - Under the default limits most of a flood is not pushed: one notice names it and \
         the messages wait for `t9_ipc_unread`; the figures count a message delivered when an \
         event carried it whole or `t9_ipc_unread` returned it, and check that no message \
         came both ways.\n\
         - The replies figures (on one machine and across machines) and the 8-sender figure \
         drive the servers with minimal JSON-RPC clients: each call is written to a server's \
         stdin and each line of its stdout read by the measuring task itself. rmcp's client, \
         which the other figures use, puts its own tasks and channels between the pipe and the \
         caller, on the same 2 cores as the servers; the replies figures give its numbers \
         beside.\n\
         - The binary measured is the one `cargo install` makes: the bench builds it with \
         `cargo build --release --locked` into `target/installed/` (the build `cargo bench` \
         makes for itself carries the dev-dependencies' features).\n",
    );
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/BENCHMARKS.md");
    std::fs::create_dir_all(path.parent().expect("docs")).expect("docs/");
    std::fs::write(&path, md).expect("docs/BENCHMARKS.md");
    println!("written to {}", path.display());
}

/// Builds the binary as `cargo install` does (`cargo build --release`, without the features
/// the tests' dependencies add to the build `cargo bench` makes, such as rmcp's client) into
/// `installed/` beside the bench's own target folder, and returns its path. Every figure is
/// measured on it.
fn build_installed() -> std::path::PathBuf {
    let ours = std::path::Path::new(env!("CARGO_BIN_EXE_t9-ipc"));
    let target = ours
        .parent()
        .and_then(std::path::Path::parent)
        .expect("the target folder")
        .join("installed");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    println!(
        "building the binary a user installs: cargo build --release --locked (into {})",
        target.display()
    );
    let status = std::process::Command::new(cargo)
        .args(["build", "--release", "--locked", "--bin", "t9-ipc"])
        .env("CARGO_TARGET_DIR", &target)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("running cargo");
    assert!(status.success(), "cargo build --release failed");
    target.join("release/t9-ipc")
}

fn main() {
    util::use_binary(&build_installed());
    // Each figure's mailbox is removed at the end of the run, not before the next figure:
    // [`util::keep_mailboxes`] says why.
    util::keep_mailboxes();
    let started = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut report = Report::default();
    // `FIGURES=throughput,who`, or `cargo bench --bench figures -- flood who`, runs only
    // those (and writes no report): for working on one. (`cargo bench` passes `--bench`.)
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let only = std::env::var("FIGURES")
        .ok()
        .or_else(|| (!args.is_empty()).then(|| args.join(",")));
    let wanted = |name: &str| {
        only.as_deref()
            .is_none_or(|o| o.split(',').any(|w| w == name))
    };
    rt.block_on(async {
        if wanted("startup") {
            startup(&mut report).await;
        }
        if wanted("push") {
            push_latency(&mut report).await;
        }
        if wanted("push_big") {
            push_latency_big(&mut report).await;
        }
        if wanted("flood") {
            flood(&mut report).await;
        }
        if wanted("unread") {
            unread_big(&mut report).await;
        }
        if wanted("who") {
            who_200(&mut report).await;
        }
        if wanted("throughput") {
            throughput(&mut report).await;
        }
        if wanted("catch_up") {
            catch_up(&mut report).await;
        }
        coord::figures(&mut report, &wanted).await;
        federation::figures(&mut report, &wanted).await;
    });
    if wanted("hook") {
        hook_figure(&mut report);
    }
    drop(rt);
    util::remove_kept_mailboxes();
    if only.is_none() {
        write_report(&report, started.elapsed());
    }
}
