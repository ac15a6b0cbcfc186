//! Figures across machines (issue 13), through a real `nats-server` on 127.0.0.1, obtained
//! and started the way tests/federation.rs does (that file is included here for its `Nats`).
//! Each "machine" is a mailbox folder whose servers run with the hub's `IPC_NATS_URL` and
//! their own `IPC_MACHINE`, no relay: the first server of a machine runs its bridge, as when
//! sessions start with federation set. Each figure has a hub of its own and runs only when
//! `wanted` says so:
//!
//! - `fed_push`: two sessions on two machines answering each other one message at a time,
//!   1,000 messages, each timed from the `t9_ipc_send` call to the channel event on the other
//!   machine;
//! - `fed_throughput`: 8 senders on A to one receiver on B, 250 messages each, until every
//!   message is in B's `inbox/`, against the same 8 senders within one mailbox in the same
//!   run;
//! - `fed_scale`: 10 machines × 10 sessions on one hub: answers between the first and the last
//!   machine with 2, 5 and 10 machines up, and the hub's CPU time and memory meanwhile.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, Instant};

#[allow(dead_code, unused_imports)]
#[path = "../tests/federation.rs"]
mod harness;

use harness::Nats;

use super::util::{Client, TempMailbox};
use super::{
    PUSH_ON, Report, drain, ms, once, percentile, proc_usage, raw_replies, raw_session_env,
    replies_named, send_all, through_rmcp,
};

/// Longer than any of these figures takes on a loaded machine; reached only when one stalls.
const STALL: Duration = Duration::from_secs(300);

pub(crate) async fn figures(report: &mut Report, wanted: &dyn Fn(&str) -> bool) {
    if wanted("fed_push") {
        let task = tokio::spawn(async {
            let mut report = Report::default();
            cross_push(&mut report).await;
            report
        });
        guarded(report, "fed_push", task).await;
    }
    if wanted("fed_throughput") {
        let task = tokio::spawn(async {
            let mut report = Report::default();
            cross_throughput(&mut report).await;
            report
        });
        guarded(report, "fed_throughput", task).await;
    }
    if wanted("fed_scale") {
        let task = tokio::spawn(async {
            let mut report = Report::default();
            scale(&mut report).await;
            report
        });
        guarded(report, "fed_scale", task).await;
    }
}

/// The figures of one task, or, when it panicked (an event that did not come within the
/// wait on a loaded machine), a line that says so: the run goes on to the other figures.
async fn guarded(report: &mut Report, name: &str, task: tokio::task::JoinHandle<Report>) {
    match task.await {
        Ok(done) => report.figures.extend(done.figures),
        Err(err) => report.add(
            &format!("`{name}` (across machines)"),
            "completes",
            format!("not measured: {err}"),
            Some(false),
        ),
    }
}

/// The settings of a server on `machine`, the hub at `url`, and `more`.
fn on<'a>(url: &'a str, machine: &'a str, more: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut envs = vec![("IPC_NATS_URL", url), ("IPC_MACHINE", machine)];
    envs.extend_from_slice(more);
    envs
}

async fn cross_push(report: &mut Report) {
    // Through minimal JSON-RPC clients first, as the single-machine replies figure, each
    // pair of machines with a hub of its own.
    let raw = {
        let hub = Nats::start().await;
        let url = hub.url();
        let (a, b) = (TempMailbox::new(), TempMailbox::new());
        let mut alpha = raw_session_env(&a, "alpha", &on(&url, "laptop", &[])).await;
        let mut beta = raw_session_env(&b, "beta", &on(&url, "buildbox", &[])).await;
        // Two answers first: both bridges receive and both sessions are past the grace
        // period.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        raw_replies(&mut alpha, &mut beta, 2).await;
        raw_replies(&mut alpha, &mut beta, 1000).await
    };
    let hub = Nats::start().await;
    let url = hub.url();
    let (a, b) = (TempMailbox::new(), TempMailbox::new());
    let mut alpha = a.spawn_claude("alpha", &on(&url, "laptop", &[])).await;
    let mut beta = b.spawn_claude("beta", &on(&url, "buildbox", &[])).await;
    replies_named((&mut alpha, "alpha"), (&mut beta, "beta"), 2).await;
    let latencies = replies_named((&mut alpha, "alpha"), (&mut beta, "beta"), 1000).await;
    report.latency_and(
        "cross-machine push latency, replies one at a time, default settings: two sessions on \
         two machines (mailboxes whose servers run the bridges) answering each other through a \
         local nats-server, 1,000 messages (send call on one machine to the event on the \
         other), each server spoken to by a minimal JSON-RPC client",
        &raw,
        (3.0, 10.0),
        through_rmcp(&latencies),
    );
    // `t9_ipc_who` on B lists alpha on A through the hub: the first call connects, the
    // others ask through that connection.
    let first = Instant::now();
    let said = beta.ok("t9_ipc_who", serde_json::json!({})).await;
    let first = first.elapsed();
    assert!(said.contains("machine laptop"), "{said}");
    let mut times = Vec::with_capacity(100);
    for _ in 0..100 {
        let start = Instant::now();
        beta.ok("t9_ipc_who", serde_json::json!({})).await;
        times.push(start.elapsed());
    }
    times.sort();
    report.add(
        "`t9_ipc_who` with federation on, a session on another machine listed through the \
         local nats-server, 100 calls after the first",
        "(no target; `t9_ipc_who` without federation: ≤ 5 ms)",
        format!(
            "p50 {} · p99 {}; the first call (it connects to the hub) {}",
            ms(percentile(&times, 0.5)),
            ms(percentile(&times, 0.99)),
            ms(first)
        ),
        None,
    );
}

/// Spawns `n` servers named `<prefix><i>` in `mb` with `envs`.
async fn spawn_many(
    mb: &TempMailbox,
    prefix: &str,
    n: usize,
    envs: &[(&str, &str)],
) -> Vec<Client> {
    let mut clients = Vec::with_capacity(n);
    for i in 0..n {
        clients.push(mb.spawn_claude(&format!("{prefix}{i}"), envs).await);
    }
    clients
}

/// A message file's name: `<id>.md`, not a writer's dot-named temporary file.
fn is_message(name: &OsString) -> bool {
    let name = name.to_string_lossy();
    name.ends_with(".md") && !name.starts_with('.')
}

/// The message files in `inbox`.
fn listing(inbox: &Path) -> HashSet<OsString> {
    std::fs::read_dir(inbox)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name())
                .filter(is_message)
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until `inbox` holds `n` message files, woken by its file events (from `changes`,
/// made before the files could come).
async fn until_files(inbox: &Path, mut changes: t9_ipc::watch::Changes, n: usize) {
    let mut seen = listing(inbox);
    while seen.len() < n {
        changes.changed().await.expect("the inbox watcher runs");
        let changed = changes.take();
        if changed.rescan {
            seen = listing(inbox);
        }
        for path in changed.files.iter().filter(|p| p.exists()) {
            seen.extend(path.file_name().map(OsString::from).filter(is_message));
        }
    }
}

/// One run of the cross-machine throughput figure.
struct Across {
    /// The 8 senders within one mailbox, all 2,000 sent.
    local: Duration,
    /// The same across machines, until all are in B's `inbox/`; and until the sends returned.
    across: Duration,
    sent: Duration,
    summary: String,
    all_once: bool,
}

impl Across {
    fn ratio(&self) -> f64 {
        self.local.as_secs_f64() / self.across.as_secs_f64()
    }

    fn rates(&self, n: usize) -> String {
        let n = n as f64;
        format!(
            "{:.0} messages/s across ({} for all; the sends returned in {}) against {:.0} \
             messages/s within one mailbox ({}); ratio {:.2}",
            n / self.across.as_secs_f64(),
            ms(self.across),
            ms(self.sent),
            n / self.local.as_secs_f64(),
            ms(self.local),
            self.ratio()
        )
    }
}

/// The 8 senders within one mailbox, then across two machines. `cores`: each machine's
/// servers kept to a core of their own (the sending machine's on core 0 in both runs; the
/// receiving machine's and the hub on core 1), as two machines of one core each would run;
/// else every process on any core of this one host.
async fn across_once(senders_n: usize, each: usize, cores: bool) -> Across {
    let core = |c: usize| crate::util::start_on_core(cores.then_some(c));
    core(0);
    let one = TempMailbox::new();
    let mut rx = one.spawn_claude("receiver", PUSH_ON).await;
    let senders = spawn_many(&one, "sender", senders_n, &[]).await;
    rx.next_event_or_none().await;
    let (local, done) = send_all(senders, "receiver", each).await;
    drop((done, rx));

    core(1);
    let hub = Nats::start().await;
    let url = hub.url();
    let (a, b) = (TempMailbox::new(), TempMailbox::new());
    let mut rx = b
        .spawn_claude("receiver", &on(&url, "buildbox", PUSH_ON))
        .await;
    core(0);
    let senders = spawn_many(&a, "sender", senders_n, &on(&url, "laptop", &[])).await;
    crate::util::start_on_core(None);
    // One message first: both bridges carry mail, and the receiver is past its grace period.
    let first = senders[0].send("receiver", "first", "body").await;
    assert_eq!(rx.next_event().await.meta("msg_id"), first);
    let (_watcher, changes) = t9_ipc::watch::watch(&b.inbox()).expect("watch B's inbox");
    let start = Instant::now();
    let ((sent, done), across) = tokio::time::timeout(STALL, async {
        tokio::join!(send_all(senders, "receiver", each), async {
            until_files(&b.inbox(), changes, senders_n * each + 1).await;
            start.elapsed()
        })
    })
    .await
    .expect("every message reaches B");
    let (_, events, pulled) = drain(&mut rx, Duration::from_millis(500)).await;
    let (all_once, whole, twice) = once(&events, &pulled, senders_n * each);
    drop(done);
    Across {
        local,
        across,
        sent,
        summary: format!(
            "On the receiving machine {} events: {whole} pushed whole, {} read with \
             `t9_ipc_unread`, {twice} twice, all exactly once: {all_once}",
            events.len(),
            pulled.len()
        ),
        all_once,
    }
}

async fn cross_throughput(report: &mut Report) {
    const SENDERS: usize = 8;
    // A quarter of the single-machine figure's 1,000 each: the run stays short.
    const EACH: usize = 250;
    // Each round's two runs are a couple of seconds each, and the disk's pace moves from
    // one second to the next: the round with the median ratio of three stands for the figure.
    let mut rounds = Vec::new();
    for _ in 0..3 {
        rounds.push(across_once(SENDERS, EACH, true).await);
    }
    rounds.sort_by(|x, y| x.ratio().total_cmp(&y.ratio()));
    let ratios: Vec<String> = rounds.iter().map(|r| format!("{:.2}", r.ratio())).collect();
    let all_once = rounds.iter().all(|r| r.all_once);
    let machines = rounds.swap_remove(1);
    let host = across_once(SENDERS, EACH, false).await;
    report.add(
        "cross-machine throughput: 8 concurrent senders on one machine → one receiver on \
         another, 2,000 messages, default settings, until all are in the receiver's `inbox/`, \
         against the same 8 senders within one mailbox (same run); each simulated machine on \
         a core of its own (the sending machine's servers on core 0 in both runs, the \
         receiving machine's and the hub on core 1), and beside it every process on any core",
        "≥ 0.8 of the single-machine rate; every message delivered exactly once",
        format!(
            "a core each, the median of 3 rounds (ratios {}): {}. {}. Any core: {}. {}",
            ratios.join(", "),
            machines.rates(SENDERS * EACH),
            machines.summary,
            host.rates(SENDERS * EACH),
            host.summary
        ),
        Some(machines.ratio() >= 0.8 && all_once && host.all_once),
    );
}

/// One step of the scale figure: p50 and p99 of the answers, and the hub's CPU ticks used.
struct Step {
    machines: usize,
    p50: Duration,
    p99: Duration,
    hub_ticks: u64,
    took: Duration,
}

async fn scale(report: &mut Report) {
    const MACHINES: usize = 10;
    const SESSIONS: usize = 10;
    const ANSWERS: usize = 200;
    let hub = Nats::start().await;
    let url = hub.url();
    let mailboxes: Vec<TempMailbox> = (0..MACHINES).map(|_| TempMailbox::new()).collect();
    let mut machines: Vec<Vec<Client>> = Vec::new();
    let mut steps = Vec::new();
    for up in [2, 5, MACHINES] {
        let joined = machines.len();
        while machines.len() < up {
            let i = machines.len();
            let machine = format!("machine{i:02}");
            let envs = on(&url, &machine, &[]);
            let prefix = format!("m{i}-s");
            machines.push(spawn_many(&mailboxes[i], &prefix, SESSIONS, &envs).await);
        }
        // A machine that joins takes the stream's whole history first (every message is
        // written on every machine): wait until the new ones hold what the first one holds,
        // longer than an event's wait allows.
        let history = listing(&mailboxes[0].inbox()).len();
        for mb in &mailboxes[joined.max(1)..up] {
            let (_watcher, changes) = t9_ipc::watch::watch(&mb.inbox()).expect("watch");
            tokio::time::timeout(STALL, until_files(&mb.inbox(), changes, history))
                .await
                .expect("a new machine takes the stream's history");
        }
        let (first, rest) = machines.split_at_mut(up - 1);
        let near = (&mut first[0][0], "m0-s0");
        let far_name = format!("m{}-s0", up - 1);
        let far = (&mut rest[0][0], far_name.as_str());
        // Two answers first: the newest machines' bridges receive (and have taken the
        // stream's history) and their sessions are past the grace period.
        replies_named((&mut *near.0, near.1), (&mut *far.0, far.1), 2).await;
        let (_, ticks) = proc_usage(hub.pid());
        let start = Instant::now();
        let latencies = replies_named(near, far, ANSWERS).await;
        steps.push(Step {
            machines: up,
            p50: percentile(&latencies, 0.5),
            p99: percentile(&latencies, 0.99),
            hub_ticks: proc_usage(hub.pid()).1 - ticks,
            took: start.elapsed(),
        });
    }
    let (hub_rss, _) = proc_usage(hub.pid());
    let per_step: Vec<String> = steps
        .iter()
        .map(|s| {
            format!(
                "{} machines: p50 {} · p99 {}, the hub's CPU {:.1} % of a core",
                s.machines,
                ms(s.p50),
                ms(s.p99),
                s.hub_ticks as f64 * 10.0 / (s.took.as_secs_f64() * 1000.0) * 100.0
            )
        })
        .collect();
    let (two, ten) = (&steps[0], &steps[steps.len() - 1]);
    report.add(
        "scale by simulation: 10 machines × 10 live sessions (mailboxes whose first server runs \
         the bridge) on one host through one local nats-server; 200 answers one at a time \
         between a session on the first machine and one on the last, with 2, 5 and 10 machines \
         up (every message is written on every machine)",
        "(no target)",
        format!(
            "{}; p50 from 2 to 10 machines ×{:.2}; the hub's resident memory after the run {:.1} \
             MiB",
            per_step.join("; "),
            ten.p50.as_secs_f64() / two.p50.as_secs_f64(),
            hub_rss as f64 / 1024.0
        ),
        None,
    );
    drop(machines);
}
