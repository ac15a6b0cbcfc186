//! Session names across machines: a name live on one machine is refused on another, a name
//! taken at start while another machine holds it is warned about, and a name is free again
//! once its session ends. Two "machines" (mailboxes with their relays) on one `nats-server`.

use async_nats::jetstream;
use serde_json::json;

use crate::federation::{Machine, Nats};
use crate::util::TempMailbox;

/// The machine holding `name` in the hub's bucket of session names, if any.
async fn holder(nats: &Nats, name: &str) -> Option<String> {
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let names = jetstream::new(client)
        .get_key_value("T9IPC_NAMES")
        .await
        .expect("the names bucket");
    let value = names.get(name).await.expect("read a claim")?;
    Some(String::from_utf8(value.to_vec()).unwrap())
}

#[tokio::test]
async fn a_name_live_on_another_machine_is_refused_until_its_session_ends() {
    let nats = Nats::start().await;
    let a = Machine::start("laptop", &nats).await;
    let b = Machine::start("buildbox", &nats).await;
    let beta = b.serve("beta", &nats.url()).await;
    let alpha = a.mb.spawn("alpha").await;
    // A's bridge claims the name before it puts the session's presence.
    a.log
        .wait("alpha's presence", |log| {
            log.count("presence published sessions=1") > 0
        })
        .await;
    let who = beta.ok("t9_ipc_who", json!({})).await;
    assert!(who.contains("- alpha · machine laptop"), "{who}");
    assert_eq!(holder(&nats, "alpha").await.as_deref(), Some("laptop"));

    // A rename on B to a name live on A: refused, naming A; B's session keeps its name.
    let r = beta.call("t9_ipc_set_name", json!({"name": "alpha"})).await;
    assert!(r.is_error, "{}", r.text);
    assert!(
        r.text
            .starts_with("Refused: \"alpha\" is taken by a live session on machine laptop"),
        "{}",
        r.text
    );
    assert_eq!(b.mb.heartbeats()["beta"]["pid"], beta.pid);
    assert_eq!(holder(&nats, "alpha").await.as_deref(), Some("laptop"));

    // A session started on B under that name (no hub round trip at start): B's bridge warns,
    // naming both machines, and the session's `who` says who holds its name.
    let dup = b.serve("alpha", &nats.url()).await;
    b.log
        .wait("B's warning about the clash", |log| {
            log.count("is live on this machine (buildbox) and on machine laptop") > 0
        })
        .await;
    let who = dup.ok("t9_ipc_who", json!({})).await;
    assert!(
        who.contains("Your name \"alpha\" is held by machine laptop"),
        "{who}"
    );
    let (code, section) = b.doctor(&nats.url()).await;
    assert_eq!(code, 1, "{section}");
    let line = section
        .lines()
        .find(|l| l.contains("PROBLEM"))
        .unwrap_or_else(|| panic!("no problem said: {section}"));
    assert!(
        line.contains("\"alpha\" is live on this machine (buildbox) and on machine laptop"),
        "{section}"
    );
    // B's bridge leaves A's claim alone when its own "alpha" ends (its next publish has only
    // beta, and every earlier one is done by then).
    let beta_only = b.log.count("presence published sessions=1");
    dup.quit().await;
    b.log
        .wait("B's publish without the duplicate", |log| {
            log.count("presence published sessions=1") > beta_only
        })
        .await;
    assert_eq!(holder(&nats, "alpha").await.as_deref(), Some("laptop"));

    // Once A's session ends, its machine releases the name and B may take it.
    let empty = a.log.count("presence published sessions=0");
    alpha.quit().await;
    a.log
        .wait("alpha's end on A", |log| {
            log.count("presence published sessions=0") > empty
        })
        .await;
    assert_eq!(holder(&nats, "alpha").await, None);
    let r = beta.call("t9_ipc_set_name", json!({"name": "alpha"})).await;
    assert!(!r.is_error, "{}", r.text);
    assert!(!r.text.contains("could not be asked"), "{}", r.text);
    assert_eq!(holder(&nats, "alpha").await.as_deref(), Some("buildbox"));
    assert_eq!(b.mb.heartbeats()["alpha"]["pid"], beta.pid);
    beta.quit().await;
}

#[tokio::test]
async fn a_rename_with_the_hub_unreachable_is_taken_and_says_so() {
    let mb = TempMailbox::new();
    let envs = [
        ("IPC_NATS_URL", "nats://127.0.0.1:1"),
        ("IPC_MACHINE", "lost"),
    ];
    let gamma = mb.spawn_env("gamma", &envs, None).await;
    let r = gamma
        .call("t9_ipc_set_name", json!({"name": "delta"}))
        .await;
    assert!(!r.is_error, "{}", r.text);
    assert!(
        r.text.contains("This session is now \"delta\"")
            && r.text.contains("The hub could not be asked"),
        "{}",
        r.text
    );
    assert_eq!(mb.heartbeats()["delta"]["pid"], gamma.pid);
    gamma.quit().await;
}
