//! Telegram across machines: two "machines" (mailboxes with their relays on one real
//! `nats-server`), each with a server that has the same bot token, against one fake Bot API.
//! An escalation reaches the API once, one machine polls, and a reply polled on one machine
//! reaches the escalating session on the other; so does a press on a permission prompt, and
//! only with the prompt's secret.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use serde_json::json;
use t9_ipc::federation::claims::{CLAIMS_BUCKET, PERMS_BUCKET, forward_key, thread_key, topic_key};
use t9_ipc::federation::presence::SEEN_BUCKET;

use crate::federation::{Machine, Nats, message_file};
use crate::telegram::{
    ALLOWED, CHAT, Call, FakeBot, NEW_USER, REQUEST, button, envs, finish, next_verdict, pair_code,
    private_from, read, telegram_cli, text_of, wait_file,
};
use crate::util::{Client, msg_id_in};

/// The line of a server that takes the poller lease (a warning about an unreachable hub
/// mentions the lease too).
const HOLDS: &str = "now reads the replies from Telegram (it holds the poller lease)";

/// Starts `t9-ipc serve` named `name` on `machine`, with Telegram pointed at `bot` and
/// federation on; its stderr goes to the returned log file.
async fn serve(machine: &Machine, name: &str, nats: &Nats, bot: &FakeBot) -> (Client, PathBuf) {
    serve_with(machine, name, nats, bot, Vec::new()).await
}

/// [`serve`] with `extra` in the environment too.
async fn serve_with(
    machine: &Machine,
    name: &str,
    nats: &Nats,
    bot: &FakeBot,
    extra: Vec<(&'static str, String)>,
) -> (Client, PathBuf) {
    let mut env = bot.env();
    env.extend(extra);
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
    wait_file(&log_b, "B to hold the poller lease", |t| t.contains(HOLDS)).await;
    let (mut alpha, log_a) = serve(&a, "alpha", &nats, &bot).await;
    wait_file(&log_a, "A to stand by for the poller lease", |t| {
        t.contains("another machine reads the replies from Telegram")
    })
    .await;
    let (_, doctor) = a.doctor(&nats.url()).await;
    assert!(
        doctor.contains("Telegram replies are read by machine buildbox (pid"),
        "{doctor}"
    );

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
    // Given up by B as it ends (or, were that lost, expired by the hub within its time to
    // live): A takes it at its next try.
    let quit = Instant::now();
    while !logged(&log_a, &[HOLDS]) {
        if quit.elapsed() > Duration::from_secs(30) {
            panic!(
                "A did not take the lease over.\nA:\n{}\nB:\n{}",
                read(&log_a),
                read(&log_b)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // B took it once, and gave it up once as it ended.
    let held = read(&log_b).matches(HOLDS).count();
    assert_eq!(held, 1, "B took the lease {held} times");
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
            t.contains(HOLDS) || t.contains("another machine reads the replies from Telegram")
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

/// The text of the last call of `method` whose text holds `part`, once there is one.
async fn called(bot: &FakeBot, method: &str, part: &str) -> String {
    let body = bot
        .wait_call(method, |b| b["text"].as_str().unwrap_or("").contains(part))
        .await;
    body["text"].as_str().unwrap_or("").to_owned()
}

/// Two machines on one hub and one fake bot, allowed users set on both: B's server ("beta")
/// holds the poller lease, A's ("alpha") stands by and asks permission `request_id`.
struct AskedOnA {
    nats: Nats,
    bot: FakeBot,
    /// Held for the test's length: their mailboxes go with them.
    machines: (Machine, Machine),
    alpha: Client,
    log_a: PathBuf,
    beta: Client,
    log_b: PathBuf,
    /// The prompt as the bot received it.
    prompt: Call,
}

async fn asked_on_a(request_id: &str) -> AskedOnA {
    let nats = Nats::start().await;
    let bot = FakeBot::start();
    let a = Machine::start("laptop", &nats).await;
    let b = Machine::start("buildbox", &nats).await;
    let allowed = || vec![("IPC_TG_ALLOW", ALLOWED.to_string())];
    // B's server takes the poller lease; A's, which asks, stands by.
    let (beta, log_b) = serve_with(&b, "beta", &nats, &bot, allowed()).await;
    wait_file(&log_b, "B to hold the poller lease", |t| t.contains(HOLDS)).await;
    let (alpha, log_a) = serve_with(&a, "alpha", &nats, &bot, allowed()).await;
    wait_file(&log_a, "A to stand by for the poller lease", |t| {
        t.contains("another machine reads the replies from Telegram")
    })
    .await;
    alpha
        .notify(
            REQUEST,
            json!({"request_id": request_id, "tool_name": "Bash", "description": "Deploy",
                   "input_preview": "make deploy"}),
        )
        .await;
    let prompt = bot.wait_sends(1).await[0].clone();
    AskedOnA {
        nats,
        bot,
        machines: (a, b),
        alpha,
        log_a,
        beta,
        log_b,
        prompt,
    }
}

#[tokio::test]
async fn a_permission_asked_on_the_machine_that_does_not_poll_is_answered_through_the_hub() {
    let AskedOnA {
        nats,
        bot,
        machines: _machines,
        mut alpha,
        log_a,
        beta,
        prompt,
        ..
    } = asked_on_a("fghij").await;
    assert!(text_of(&prompt).contains("fghij"), "{}", text_of(&prompt));
    let (allow, deny) = (button(&prompt.body, "Allow"), button(&prompt.body, "Deny"));

    // The hub knows where it was asked, and holds no secret.
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let perms = jetstream::new(client)
        .get_key_value(PERMS_BUCKET)
        .await
        .expect("the bucket of permission prompts");
    let open = perms.get("tg.perm.fghij").await.expect("read");
    let open = String::from_utf8_lossy(&open.expect("the request in the hub")).into_owned();
    assert!(open.contains("laptop") && open.contains("alpha"), "{open}");
    assert!(!open.contains(&allow[7..]) && !open.contains(&deny[7..]));
    // Verdicts put in the hub by someone without the secret are ignored: a press with a
    // wrong secret, and a typed deny (if it counted, the verdict below would be deny).
    for (key, forged) in [
        (
            "forged1",
            r#"{"kind":"press","secret":"00","by":"mallory"}"#,
        ),
        ("forged2", r#"{"kind":"typed_deny","by":"mallory"}"#),
    ] {
        perms
            .put(format!("tg.verdict.fghij.{key}"), forged.into())
            .await
            .expect("put");
    }
    wait_file(&log_a, "A to refuse both forged verdicts", |t| {
        t.contains("a verdict without this request's secret was ignored (put in the hub)")
            && t.contains("a typed deny without this request's secret was ignored")
    })
    .await;
    // A typed answer polled on B is not taken (no secret proves it), and says where to press.
    bot.push_message(json!({"message_id": 2, "date": 0,
        "chat": {"id": CHAT, "type": "private"},
        "from": {"id": ALLOWED, "is_bot": false, "first_name": "Me"}, "text": "yes fghij"}));
    let notice = bot.wait_sends(2).await[1].clone();
    assert!(
        text_of(&notice).starts_with("Not taken") && text_of(&notice).contains("laptop"),
        "{}",
        text_of(&notice)
    );

    // The real press, polled on B, reaches A through the hub.
    bot.push_press(ALLOWED, &allow);
    let verdict = next_verdict(&mut alpha).await;
    assert_eq!(verdict, json!({"request_id": "fghij", "behavior": "allow"}));
    called(&bot, "answerCallbackQuery", "Allowed.").await;
    called(&bot, "editMessageText", "Allowed from the phone").await;
    assert!(logged(&log_a, &["a verdict came through the hub", "fghij"]));
    assert!(!logged(&log_a, &["now reads the replies"]), "A polled too");
    // A second press finds it settled in the hub; an id nobody asked is still unknown.
    bot.push_press(ALLOWED, &deny);
    called(&bot, "answerCallbackQuery", "Already answered (allowed)").await;
    bot.push_press(ALLOWED, "pmzzzzz");
    called(&bot, "answerCallbackQuery", "Unknown request").await;
    alpha.quit().await;
    beta.quit().await;
}

/// A press on a prompt whose session was killed (its entry stays open in the hub) is not
/// confirmed as "Allowed.": nobody took it, and the person is told so.
#[tokio::test]
async fn a_press_for_a_session_killed_on_another_machine_is_not_confirmed() {
    let AskedOnA {
        nats: _nats,
        bot,
        machines: _machines,
        alpha,
        log_a,
        beta,
        log_b,
        prompt,
    } = asked_on_a("kmnop").await;
    let allow = button(&prompt.body, "Allow");
    wait_file(&log_a, "A to open the prompt in the hub", |t| {
        t.contains("permission request sent to Telegram")
    })
    .await;
    // Killed: no end of session runs, and the prompt's entry in the hub stays open.
    assert_eq!(unsafe { libc::kill(alpha.pid as i32, libc::SIGKILL) }, 0);
    bot.push_press(ALLOWED, &allow);
    let said = called(&bot, "answerCallbackQuery", "Not taken").await;
    assert!(said.contains("alpha on laptop"), "{said}");
    let toasts = bot.calls_to("answerCallbackQuery");
    assert!(toasts.iter().all(|t| t["text"] != "Allowed."), "{toasts:?}");
    assert!(logged(
        &log_b,
        &["the asking machine did not take a press", "kmnop"]
    ));
    beta.quit().await;
}

#[tokio::test]
async fn a_forum_topic_another_machine_made_is_used_and_text_in_it_reaches_its_session() {
    const GROUP: i64 = -100_777;
    let nats = Nats::start().await;
    let bot = FakeBot::start();
    bot.set_forum();
    let a = Machine::start("laptop", &nats).await;
    let group = vec![
        ("IPC_TG_CHAT", GROUP.to_string()),
        ("IPC_TG_ALLOW", ALLOWED.to_string()),
    ];
    let (alpha, log_a) = serve_with(&a, "alpha", &nats, &bot, group.clone()).await;
    // Holding the lease, the server has made the hub's Telegram buckets.
    wait_file(&log_a, "A to hold the poller lease", |t| t.contains(HOLDS)).await;
    let (mut gamma, _) = serve_with(&a, "gamma", &nats, &bot, group.clone()).await;
    // Another machine made the topics of alpha (77) and gamma (88), as the hub says.
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let claims = jetstream::new(client)
        .get_key_value(CLAIMS_BUCKET)
        .await
        .expect("the claims bucket");
    for (session, thread) in [("alpha", 77), ("gamma", 88)] {
        let (topic, back) = (topic_key(GROUP, session), thread_key(GROUP, thread));
        claims
            .put(topic, thread.to_string().into())
            .await
            .expect("put");
        claims
            .put(back, session.to_owned().into())
            .await
            .expect("put");
    }

    // alpha escalates: this machine sends it into the topic the hub names, and makes none.
    alpha
        .ok(
            "t9_ipc_send",
            json!({"to": "human", "subject": "disk full", "body": "which one goes?"}),
        )
        .await;
    bot.wait_sends(1).await;
    let ours = sends_of(&bot, "disk full");
    assert_eq!(ours.len(), 1, "{ours:?}");
    assert_eq!(ours[0].body["message_thread_id"], json!(77), "{ours:?}");
    assert_eq!(
        bot.calls_to("createForumTopic"),
        Vec::<serde_json::Value>::new()
    );

    // The phone writes in gamma's topic, which this machine never made: it reaches gamma.
    bot.push_message(json!({
        "message_id": 41, "date": 0,
        "chat": {"id": GROUP, "type": "supergroup", "is_forum": true},
        "from": {"id": ALLOWED, "is_bot": false, "first_name": "Me"},
        "message_thread_id": 88, "is_topic_message": true, "text": "hello gamma",
        "reply_to_message": {"message_id": 88, "date": 0, "chat": {"id": GROUP}}
    }));
    let event = gamma.next_event().await;
    assert_eq!(event.meta("from"), "telegram");
    assert_eq!(event.content, "hello gamma");

    // A session whose topic nobody made: this machine makes it and tells the hub.
    let (delta, _) = serve_with(&a, "delta", &nats, &bot, group).await;
    delta
        .ok(
            "t9_ipc_send",
            json!({"to": "human", "subject": "from delta", "body": "hi"}),
        )
        .await;
    bot.wait_sends(2).await;
    assert_eq!(bot.calls_to("createForumTopic").len(), 1);
    let thread = sends_of(&bot, "from delta")[0].body["message_thread_id"]
        .as_i64()
        .expect("in a topic");
    let held = |key: String| {
        let claims = claims.clone();
        async move {
            let value = claims.get(key).await.expect("get").expect("held");
            String::from_utf8(value.to_vec()).expect("text")
        }
    };
    assert_eq!(held(topic_key(GROUP, "delta")).await, thread.to_string());
    assert_eq!(held(thread_key(GROUP, thread)).await, "delta");
}

#[tokio::test]
async fn an_escalation_claimed_by_a_machine_that_stopped_without_sending_it_is_taken_over() {
    let nats = Nats::start().await;
    let bot = FakeBot::start();
    let b = Machine::start("buildbox", &nats).await;
    let (_beta, log_b) = serve(&b, "beta", &nats, &bot).await;
    // Holding the lease, the server has made the hub's Telegram buckets; the relay has
    // spoken in the bucket of last words.
    wait_file(&log_b, "B to hold the poller lease", |t| t.contains(HOLDS)).await;
    let (id, bytes) = message_file("alpha", "beta", "disk full", "which one goes?");
    let text = String::from_utf8(bytes)
        .unwrap()
        .replace("priority: normal", "priority: critical");
    // Machine "ghost" claimed its forward, then said its bridge stopped: no server of it
    // runs any more, and it never said it sent it.
    let js = jetstream::new(async_nats::connect(nats.url()).await.expect("connect"));
    let claims = js
        .get_key_value(CLAIMS_BUCKET)
        .await
        .expect("claims bucket");
    claims
        .put(forward_key(&id), "ghost".into())
        .await
        .expect("put");
    let seen = js
        .get_key_value(SEEN_BUCKET)
        .await
        .expect("last words bucket");
    let word = json!({"put_at": chrono::Local::now().to_rfc3339(), "stopped": true});
    seen.put("ghost", word.to_string().into())
        .await
        .expect("put");

    // The escalation lands on B: B takes the forward over and sends it, once.
    let tmp = b.mb.inbox().join(".hand.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, b.file(&id)).unwrap();
    bot.wait_sends(1).await;
    assert_eq!(sends_of(&bot, "disk full").len(), 1);
    assert!(
        logged(&log_b, &["took over the forward", &id, "ghost"]),
        "{}",
        read(&log_b)
    );
    // And says in the hub that it sent it.
    wait_file(&log_b, "the forward", |t| {
        t.contains("forwarded to Telegram")
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let value = claims.get(forward_key(&id)).await.expect("get");
        if value.as_deref() == Some(b"buildbox sent".as_slice()) {
            break;
        }
        assert!(Instant::now() < deadline, "{value:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sends_of(&bot, "disk full").len(), 1);
}

#[tokio::test]
async fn pairing_on_a_machine_that_does_not_poll_goes_through_the_hub() {
    let nats = Nats::start().await;
    let bot = FakeBot::start();
    let a = Machine::start("laptop", &nats).await;
    let b = Machine::start("buildbox", &nats).await;
    let (alpha, log_a) = serve(&a, "alpha", &nats, &bot).await;
    wait_file(&log_a, "A to hold the poller lease", |t| t.contains(HOLDS)).await;

    // `pair` on B, where no server runs: it must not poll beside A (two pollers of one bot
    // get 409, and A would take the code without knowing it).
    let mut env = bot.env();
    env.push(("IPC_NATS_URL", nats.url()));
    env.push(("IPC_MACHINE", b.name.clone()));
    let log_p = b.mb.root().join("pair.log");
    let mut pair = telegram_cli(&b.mb, &["pair"], &env, &log_p);
    let (code, lines) = pair_code(&mut pair).await;
    wait_file(&log_p, "the command to wait for the poller lease", |t| {
        t.contains("another machine reads the replies from Telegram")
    })
    .await;
    // The hub holds the code's tag and B's name, never the code.
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let perms = jetstream::new(client)
        .get_key_value(PERMS_BUCKET)
        .await
        .expect("the bucket");
    let mut keys = perms.keys().await.expect("keys");
    let mut offered = Vec::new();
    while let Some(key) = futures_util::StreamExt::next(&mut keys).await {
        let key = key.expect("key");
        let value = perms.get(&key).await.expect("get").unwrap_or_default();
        offered.push((key, String::from_utf8_lossy(&value).into_owned()));
    }
    assert!(
        offered
            .iter()
            .any(|(k, v)| k.starts_with("tg.pair.") && v.contains("buildbox")),
        "{offered:?}"
    );
    assert!(!format!("{offered:?}").contains(&code), "{offered:?}");
    // A writer of the hub without the bot token cannot pair an account of its choosing:
    // an arrival without the proof is passed over.
    let tag = offered
        .iter()
        .find_map(|(k, _)| k.strip_prefix("tg.pair."))
        .expect("the tag")
        .to_owned();
    let forged = format!("tg.paired.{tag}");
    let mallory = r#"{"user_id":666,"chat_id":666,"name":"Mallory","proof":"00"}"#;
    perms.put(&forged, mallory.into()).await.expect("put");
    wait_file(&log_p, "the forged pairing to be ignored", |t| {
        t.contains("without proof that the bot got the code was ignored")
    })
    .await;
    perms.delete(&forged).await.expect("delete");

    // A polls the code and hands who sent it over; B saves the user.
    bot.push_message(private_from(NEW_USER, &format!("/pair {code}")));
    let (ok, out) = finish(pair, lines).await;
    assert!(ok, "{out}\n{}\n{}", read(&log_p), read(&log_a));
    assert!(
        out.contains(&format!("user {NEW_USER} (New (@newbie))")),
        "{out}"
    );
    let saved = read(&b.mb.root().join("telegram/paired.json"));
    assert!(
        saved.contains(&NEW_USER.to_string()) && !saved.contains("666"),
        "{saved}"
    );
    assert!(
        !a.mb.root().join("telegram/paired.json").exists(),
        "paired on A too"
    );
    assert!(logged(&log_a, &["handed over through the hub"]));
    assert!(
        !logged(&log_p, &["now reads the replies"]),
        "the command polled"
    );
    let told = bot
        .sends()
        .into_iter()
        .find(|c| text_of(c).starts_with("Paired"))
        .expect("the person told");
    assert!(text_of(&told).contains("on buildbox"), "{}", text_of(&told));
    assert_eq!(told.body["chat_id"], json!(NEW_USER));
    // The command took its code out of the hub when it was done.
    let left = perms.keys().await.expect("keys");
    let left: Vec<String> = futures_util::StreamExt::collect::<Vec<_>>(left)
        .await
        .into_iter()
        .filter_map(Result::ok)
        .filter(|k| k.starts_with("tg.pair"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    alpha.quit().await;
}
