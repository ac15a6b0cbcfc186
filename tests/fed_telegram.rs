//! Telegram across machines: two "machines" (mailboxes with their relays on one real
//! `nats-server`), each with a server that has the same bot token, against one fake Bot API.
//! An escalation reaches the API once, one machine polls, and a reply polled on one machine
//! reaches the escalating session on the other.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::federation::{Machine, Nats};
use crate::telegram::{CHAT, Call, FakeBot, envs, read, text_of, wait_file};
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

/// Waits until both machines handled escalation `id`: one forwarded it, the other found it
/// claimed in the hub. True when A (`log_a`) forwarded it.
async fn handled_once(log_a: &Path, log_b: &Path, id: &str, wait: Duration) -> bool {
    let forwarded = |log: &Path| logged(log, &["forwarded to Telegram", id]);
    let elsewhere = |log: &Path| logged(log, &["another machine forwards it", id]);
    let deadline = Instant::now() + wait;
    loop {
        if forwarded(log_a) && elsewhere(log_b) {
            return true;
        }
        if forwarded(log_b) && elsewhere(log_a) {
            return false;
        }
        assert!(
            Instant::now() < deadline,
            "both machines did not handle {id}:\nA:\n{}\nB:\n{}",
            read(log_a),
            read(log_b)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The sendMessage calls whose text holds `subject`.
fn sends_of(bot: &FakeBot, subject: &str) -> Vec<Call> {
    bot.sends()
        .into_iter()
        .filter(|c| text_of(c).contains(subject))
        .collect()
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
    let by_a = handled_once(&log_a, &log_b, &id, crate::util::EVENT_WAIT).await;
    let ours = sends_of(&bot, "disk full");
    assert_eq!(ours.len(), 1, "sent {} times: {ours:?}", ours.len());
    let telegram_id = ours[0].message_id.expect("answered");
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

#[tokio::test]
async fn while_the_hub_is_down_escalations_wait_and_then_go_out_once() {
    let mut nats = Nats::start().await;
    let bot = FakeBot::start();
    let a = Machine::start("laptop", &nats).await;
    let b = Machine::start("buildbox", &nats).await;
    let (alpha, log_a) = serve(&a, "alpha", &nats, &bot).await;
    let (beta, log_b) = serve(&b, "beta", &nats, &bot).await;
    // Both are in touch with the hub: one polls, the other stands by.
    for log in [&log_a, &log_b] {
        wait_file(log, "the poller lease settled", |t| {
            t.contains("holds the poller lease")
                || t.contains("another machine reads the replies from Telegram")
        })
        .await;
    }

    nats.kill().await;
    let sent = alpha
        .ok(
            "t9_ipc_send",
            json!({"to": "beta", "subject": "hub away", "body": "wait for it", "priority": "critical"}),
        )
        .await;
    let id = msg_id_in(&sent);
    // A does not send it without the hub's claim: B could send it too.
    wait_file(&log_a, "A to say escalations wait for the hub", |t| {
        t.contains("escalations wait for it")
    })
    .await;
    assert!(
        sends_of(&bot, "hub away").is_empty(),
        "sent without the claim"
    );

    nats.restart().await;
    // Nothing is lost: A claims it once the hub answers, B finds it claimed.
    // (Whichever claims first: B may outrun A's next try once the message crosses.)
    handled_once(&log_a, &log_b, &id, Duration::from_secs(60)).await;
    let ours = sends_of(&bot, "hub away");
    assert_eq!(ours.len(), 1, "sent {} times: {ours:?}", ours.len());
    alpha.quit().await;
    beta.quit().await;
}
