//! Speed of `t9-ipc hook UserPromptSubmit` (it runs at every prompt) on a mailbox of 10,000
//! messages: part of `cargo bench --bench figures`. Target: 20 ms. Timed from spawn to exit, the way
//! Claude Code waits for it.
//!
//! The mailbox: 10 sessions wrote 10,000 messages among themselves over a day (about 1,000
//! of them to `beta`, which has read all but the last 10, and some broadcasts). `beta`'s
//! heartbeat entry names this process as the parent of its server, so the hook finds it by
//! its ancestors, as in a real session (no server runs: it would add its own pushes to the
//! state file while the benchmark resets it). Two cases: 10 unread (printed; the state file is put back before each run) and
//! none unread (the usual prompt). This prints the numbers; it asserts only that the hook
//! printed what it should.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{BIN, TempMailbox};
use chrono::{Local, TimeDelta};
use t9_ipc::message::{self, FrontMatter};

const MESSAGES: usize = 10_000;
const UNREAD: usize = 10;
const RUNS: usize = 100;
const NAMES: [&str; 10] = [
    "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa",
];

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// Writes the messages straight to disk (no fsync: this is set-up) and returns beta's state
/// log with every message for it read but the last [`UNREAD`].
fn fill(mb: &TempMailbox) -> String {
    let start = Local::now() - TimeDelta::hours(24);
    let mut to_beta = Vec::new();
    for i in 0..MESSAGES {
        let from = NAMES[i % NAMES.len()];
        let to = if i % 20 == 0 {
            "all"
        } else {
            NAMES[(i * 7 + 3) % NAMES.len()]
        };
        let to = if to == from { "all" } else { to };
        let when = start + TimeDelta::milliseconds(i as i64 * 8_000);
        let subject = format!("progress note {i} about the parser");
        let id = message::file_stem(when, &format!("{i:08x}"), from, to, &subject);
        let front = FrontMatter {
            from: from.into(),
            to: to.into(),
            kind: if to == "all" { "broadcast" } else { "ipc" }.into(),
            subject,
            priority: "normal".into(),
            created: when.format(message::TIME_FORMAT).to_string(),
            ..FrontMatter::default()
        };
        let body = "A few lines of markdown, as sessions write them.\n\n- one\n- two\n";
        std::fs::write(
            mb.inbox().join(format!("{id}.md")),
            message::render(&front, body),
        )
        .expect("write a message");
        if to == "beta" || (to == "all" && from != "beta") {
            to_beta.push(id);
        }
    }
    // beta joined at the start and read every message for it but the last ones.
    // except those among the last messages.
    let mut log = format!("joined {}\n", start.to_rfc3339());
    let read_upto = to_beta.len() - UNREAD;
    for id in &to_beta[..read_upto] {
        log.push_str(&format!("read {id}\npushed {id}\n"));
    }
    println!(
        "mailbox: {MESSAGES} messages, {} for beta (direct and broadcast; {UNREAD} unread)",
        to_beta.len()
    );
    log
}

/// Runs the hook `RUNS` times; before each run the state log is put back to `log`.
fn time(mb: &TempMailbox, log: &str, expect_output: bool) -> Vec<Duration> {
    let state = mb.root().join("state/beta.log");
    let input = r#"{"session_id":"s","transcript_path":"/t","cwd":"/","hook_event_name":"UserPromptSubmit","prompt":"hi"}"#;
    let mut times = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        std::fs::write(&state, log).expect("state");
        let start = Instant::now();
        let mut child = Command::new(BIN)
            .args(["hook", "UserPromptSubmit"])
            .env("IPC_DATA_DIR", mb.root())
            .env_remove("IPC_SESSION_ID")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the hook");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().expect("hook output");
        times.push(start.elapsed());
        let text = String::from_utf8_lossy(&out.stdout);
        let printed = if expect_output {
            text.contains(&format!("{UNREAD} messages shown below"))
        } else {
            text.is_empty()
        };
        assert!(
            out.status.success() && printed,
            "unexpected hook result: {out:?}"
        );
    }
    times.sort();
    times
}

fn report(what: &str, t: &[Duration]) {
    println!(
        "hook UserPromptSubmit, {what}, {RUNS} runs (spawn to exit): min {} · p50 {} · p99 {} · max {}",
        ms(t[0]),
        ms(t[t.len() / 2]),
        ms(t[(t.len() * 99) / 100 - 1]),
        ms(t[t.len() - 1]),
    );
}

/// Times the hook: (10 unread printed, nothing unread), each sorted.
pub fn run() -> (Vec<Duration>, Vec<Duration>) {
    let mb = TempMailbox::new();
    std::fs::create_dir_all(mb.inbox()).expect("inbox");
    std::fs::create_dir_all(mb.root().join("state")).expect("state");
    let me = std::process::id();
    let heartbeats = serde_json::json!({"beta": {
        "timestamp": Local::now().format(message::TIME_FORMAT).to_string(),
        "status": "active", "pid": me, "working_on": "", "cwd": "/nowhere", "ppid": me,
    }});
    std::fs::write(mb.root().join("heartbeats.json"), heartbeats.to_string()).expect("heartbeats");
    let log = fill(&mb);
    let unread = time(&mb, &log, true);
    report(&format!("{UNREAD} unread printed"), &unread);
    // The usual prompt: nothing new. The same log with the last ones read too.
    let all_read = {
        let mut l = log.clone();
        let state_after = std::fs::read_to_string(mb.root().join("state/beta.log")).unwrap();
        l.push_str(&state_after[log.len()..]);
        l
    };
    let none = time(&mb, &all_read, false);
    report("nothing unread", &none);
    (unread, none)
}
