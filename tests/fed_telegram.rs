//! Telegram across machines: two "machines" (mailboxes with their relays on one real
//! `nats-server`), each with a server that has the same bot token, against one fake Bot API.
//! An escalation reaches the API once, one machine polls, and a reply polled on one machine
//! reaches the escalating session on the other.

use std::path::{Path, PathBuf};

use serde_json::json;

use crate::federation::{Machine, Nats};
use crate::telegram::{CHAT, FakeBot, envs, read, text_of, wait_file};
use crate::util::{Client, msg_id_in};

/// Starts `t9-ipc serve` named `name` on `machine`, with Telegram pointed at `bot` and
/// federation on; its stderr goes to the returned log file.
async fn serve(machine: &Machine, name: &str, nats: &Nats, bot: &FakeBot) -> (Client, PathBuf) {
    let mut env = bot.env();
    env.push(("IPC_NATS_URL", nats.url()));
    env.push(("IPC_MACHINE", machine.name.clone()));
    let log = machine.mb.root().join(format!("{name}.log"));
    let client = machine.mb.spawn_env(name, &envs(&env), Some(&log)).await;
    (client, log)
}

/// True when the log at `path` has a line holding every one of `words`.
fn logged(path: &Path, words: &[&str]) -> bool {
    read(path)
        .lines()
        .any(|l| words.iter().all(|w| l.contains(w)))
}

#[tokio::test]
async fn an_escalation_with_tokens_on_two_machines_reaches_telegram_once_and_the_reply_comes_home()
{
    let nats = Nats::start().await;
    let bot = FakeBot::start();
    let a = Machine::start("laptop", &nats).await;
    let b = Machine::start("buildbox", &nats).await;
    // B's server starts first and takes the poller lease; A's then stands by.
    let (beta, log_b) = serve(&b, "beta", &nats, &bot).await;
    wait_file(&log_b, "B to hold the poller lease", |t| {
        t.contains("holds the poller lease")
    })
    .await;
    let (mut alpha, log_a) = serve(&a, "alpha", &nats, &bot).await;
    wait_file(&log_a, "A to stand by for the poller lease", |t| {
        t.contains("another machine reads the replies from Telegram")
    })
    .await;

    let sent = alpha
        .ok(
            "t9_ipc_send",
            json!({"to": "beta", "subject": "disk full", "body": "which one goes?", "priority": "critical"}),
        )
        .await;
    let id = msg_id_in(&sent);
    // Both machines handle it: one forwards it, the other finds it claimed in the hub.
    let forwarded = |log: &Path| logged(log, &["forwarded to Telegram", &id]);
    let elsewhere = |log: &Path| logged(log, &["another machine forwards it", &id]);
    let deadline = std::time::Instant::now() + crate::util::EVENT_WAIT;
    while !(forwarded(&log_a) && elsewhere(&log_b) || forwarded(&log_b) && elsewhere(&log_a)) {
        assert!(
            std::time::Instant::now() < deadline,
            "both machines did not handle {id}:\nA:\n{}\nB:\n{}",
            read(&log_a),
            read(&log_b)
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let calls = bot.sends();
    let ours: Vec<_> = calls
        .iter()
        .filter(|c| text_of(c).contains("disk full"))
        .collect();
    assert_eq!(ours.len(), 1, "sent {} times: {calls:?}", ours.len());
    let telegram_id = ours[0].message_id.expect("answered");
    let by_a = forwarded(&log_a);
    eprintln!("forwarded by {}", if by_a { "A" } else { "B" });
    // The machine that gave way wrote it down, so it never offers it again.
    let (gave_way, winner) = if by_a {
        (&b.mb, "laptop")
    } else {
        (&a.mb, "buildbox")
    };
    let claim = read(&gave_way.root().join("telegram/claims").join(&id));
    assert!(
        claim.contains(&format!("done elsewhere {winner}")),
        "{claim}"
    );

    // The phone answers; B polls it and writes it for alpha, and the bridge carries it to A.
    let answer = bot.push_message(json!({
        "message_id": 2, "date": 0,
        "chat": {"id": CHAT, "type": "private"},
        "from": {"id": CHAT, "is_bot": false, "first_name": "Me"},
        "text": "the spare one",
        "reply_to_message": {"message_id": telegram_id, "chat": {"id": CHAT}, "date": 0}
    }));
    let event = alpha.next_event().await;
    assert_eq!(event.meta("from"), "telegram");
    assert_eq!(event.meta("to"), "alpha");
    assert_eq!(event.meta("reply_to"), id);
    assert_eq!(event.content, "the spare one");
    let reply = event.meta("msg_id");
    assert!(a.file(reply).exists() && b.file(reply).exists());
    // Written on B, where the poller runs; A has it from the bridge.
    assert_eq!(
        t9_ipc::federation::origins::machine_of(a.mb.root(), reply).as_deref(),
        Some("buildbox")
    );
    bot.wait_handled(answer).await;
    assert!(!logged(&log_a, &["now reads the replies"]), "A polled too");

    // B's server ends: it gives the lease up, and A's server takes over the polling.
    beta.quit().await;
    wait_file(&log_a, "A to take the poller lease over", |t| {
        t.contains("holds the poller lease")
    })
    .await;
    bot.push_message(json!({
        "message_id": 3, "date": 0, "chat": {"id": CHAT, "type": "private"},
        "from": {"id": CHAT, "is_bot": false, "first_name": "Me"},
        "text": "@alpha still there?"
    }));
    let event = alpha.next_event().await;
    assert_eq!(event.content, "still there?");
    alpha.quit().await;
}
