//! Telegram with federation on: the hub decides which machine forwards each escalation and
//! which machine's server polls `getUpdates`, carries the routes of replies between
//! machines, and the presses on a permission prompt polled on another machine than the one
//! that asked (`federation::claims`). With federation off nothing here runs.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::Local;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::api::backoff;
use super::inbound::Answer;
use super::permission::{PERMISSION_TIMEOUT, Verdict, parse_callback, typed_answer};
use super::service::Telegram;
use super::store::{Claim, Forwarded};
use crate::federation::Settings;
use crate::federation::claims::{
    self, Claims, Forward, LEASE_REFRESH, OFFSET_KEY, PERMS_MAX_AGE, PermWatch,
};
use crate::mailbox::Message;

/// How long a press put in the hub for another machine waits for the asking server to take
/// it (it records the outcome in the request's entry within milliseconds while it runs).
pub(super) const TAKEN_WITHIN: std::time::Duration = std::time::Duration::from_secs(3);

// A prompt's entry in the hub must outlive the prompt.
const _: () = assert!(PERMS_MAX_AGE.as_secs() > PERMISSION_TIMEOUT.as_secs());

/// A permission request as the hub holds it for the polling machine: where it was asked,
/// and its outcome once settled. No secret: those stay in the asking server's memory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct HubRequest {
    pub(super) request_id: String,
    pub(super) machine: String,
    pub(super) session: String,
    pub(super) created: String,
    /// `allowed`, `denied`, `expired` or `unsent` once settled.
    #[serde(default)]
    pub(super) outcome: Option<String>,
}

/// A prompt of this process open in the hub: its entry, and the watch on its verdicts.
pub(super) struct HubPrompt {
    request: HubRequest,
    watch: Option<PermWatch>,
}

/// This process's view of the hub, made when federation is on; connects on first use.
pub(super) struct Federated {
    pub(super) claims: Claims,
    /// Who holds the poller's lease when this process does: machine, pid and a random uid.
    holder: String,
    /// The last request to the hub failed: warned once until it answers again.
    unreachable: AtomicBool,
}

/// What the hub says about an escalation's forward.
enum HubClaim {
    Ours,
    /// Another machine sent it (or gave up on it).
    Elsewhere(String),
    /// Another machine is sending it: looked at again when its claim changes, or after
    /// [`RECHECK`] (it may have gone away and left it unsent).
    Pending(String),
    Cancelled,
}

/// How often an escalation another machine is sending is looked at again while its claim
/// does not change: after this long without a word, a machine counts as gone.
const RECHECK: std::time::Duration = crate::federation::presence::QUIET_AFTER;

impl Federated {
    pub(super) fn new(settings: &Settings) -> Federated {
        let holder = format!(
            "{} {} {}",
            settings.machine,
            std::process::id(),
            crate::fsx::random_uid()
        );
        Federated {
            claims: Claims::new(settings.clone()),
            holder,
            unreachable: AtomicBool::new(false),
        }
    }

    fn failed(&self, err: &str, what: &'static str) {
        if self.unreachable.swap(true, Ordering::Relaxed) {
            tracing::debug!(%err, what, "federation: the hub is still unreachable");
        } else {
            tracing::warn!(%err, what, "federation: the hub is unreachable; escalations wait for it before they go to Telegram (so that no two machines send one), and replies are read by a machine that holds the poller lease");
        }
    }

    fn answered(&self) {
        if self.unreachable.swap(false, Ordering::Relaxed) {
            tracing::info!("federation: the hub answers again; Telegram goes on");
        }
    }

    /// Claims the forward of `id` in the hub; while the hub does not answer, tries again
    /// with a growing pause until it does or `cancel`.
    async fn claim_forward(&self, id: &str, cancel: &CancellationToken) -> HubClaim {
        let mut failures = 0;
        loop {
            match self.claims.claim_forward(id).await {
                Ok(Forward::Ours) => {
                    self.answered();
                    return HubClaim::Ours;
                }
                Ok(Forward::Taken { holder, finished }) => {
                    self.answered();
                    return if finished {
                        HubClaim::Elsewhere(holder)
                    } else {
                        HubClaim::Pending(holder)
                    };
                }
                Err(err) => self.failed(&err, "claiming an escalation's forward"),
            }
            failures += 1;
            tokio::select! {
                () = cancel.cancelled() => return HubClaim::Cancelled,
                () = tokio::time::sleep(backoff(failures - 1)) => {}
            }
        }
    }

    /// Waits until this process holds the poller's lease; its revision, or `None` at
    /// `cancel`. A lease expires [`claims::LEASE_TTL`] after its last renewal by the hub's
    /// clock, so the next try after that takes it.
    async fn wait_for_lease(&self, cancel: &CancellationToken) -> Option<u64> {
        let mut said = false;
        loop {
            // A server that ends takes nothing: it would hold the lease again right after
            // giving it up, and again, until it exits.
            if cancel.is_cancelled() {
                return None;
            }
            match self.claims.take_lease(&self.holder).await {
                Ok(Some(revision)) => {
                    self.answered();
                    return Some(revision);
                }
                Ok(None) => {
                    self.answered();
                    if !said {
                        tracing::info!(
                            "another machine reads the replies from Telegram; this one stands by"
                        );
                        said = true;
                    }
                }
                Err(err) => self.failed(&err, "taking the Telegram poller lease"),
            }
            tokio::select! {
                () = cancel.cancelled() => return None,
                () = tokio::time::sleep(LEASE_REFRESH) => {}
            }
        }
    }

    /// Renews the lease held at `revision` until `held` is cancelled (then gives it up when
    /// `cancel` was, the server ending) or the lease is lost (then cancels `held`: polling
    /// stops, and the server waits for the lease again).
    async fn keep(&self, mut revision: u64, held: &CancellationToken, cancel: &CancellationToken) {
        loop {
            tokio::select! {
                () = held.cancelled() => break,
                () = tokio::time::sleep(LEASE_REFRESH) => {}
            }
            match self.claims.renew_lease(&self.holder, revision).await {
                Ok(Some(next)) => revision = next,
                Ok(None) => {
                    tracing::warn!(
                        "the Telegram poller lease went to another machine; this one stops reading replies"
                    );
                    held.cancel();
                    return;
                }
                Err(err) => {
                    // Unrenewed, it expires and another machine may poll: stop first.
                    self.failed(&err, "renewing the Telegram poller lease");
                    held.cancel();
                    return;
                }
            }
        }
        if cancel.is_cancelled()
            && let Err(err) = self.claims.release_lease(revision).await
        {
            tracing::debug!(%err, "giving the Telegram poller lease up; it expires by itself");
        }
    }

    /// The `getUpdates` offset the latest poller of any machine reached.
    async fn offset(&self) -> Option<i64> {
        match self.claims.get(OFFSET_KEY).await {
            Ok(value) => value.and_then(|v| String::from_utf8(v).ok()?.trim().parse().ok()),
            Err(err) => {
                tracing::debug!(%err, "reading the shared Telegram offset");
                None
            }
        }
    }

    async fn put_offset(&self, offset: i64) {
        if let Err(err) = self
            .claims
            .put(OFFSET_KEY, offset.to_string().into_bytes())
            .await
        {
            tracing::warn!(%err, "sharing the Telegram offset; another machine taking over may deliver a reply twice");
        }
    }

    /// Puts where a reply to a forwarded part goes, for the machine that polls.
    async fn put_route(&self, forwarded: &Forwarded) {
        let key = claims::reply_key(forwarded.chat, forwarded.message_id);
        let value = serde_json::to_vec(forwarded).expect("plain strings and numbers");
        if let Err(err) = self.claims.put(&key, value).await {
            tracing::warn!(msg_id = %forwarded.msg_id, %err, "a reply polled on another machine will not find this escalation");
        }
    }

    /// Puts (or updates) an open permission request.
    async fn put_request(&self, request: &HubRequest) -> Result<(), String> {
        let key = claims::permission_key(&request.request_id);
        let value = serde_json::to_vec(request).expect("plain strings");
        self.claims.put_perm(&key, value).await
    }

    async fn request(&self, id: &str) -> Option<HubRequest> {
        match self.claims.get_perm(&claims::permission_key(id)).await {
            Ok(value) => serde_json::from_slice(&value?).ok(),
            Err(err) => {
                tracing::warn!(request_id = %id, %err, "looking up a permission request in the hub");
                None
            }
        }
    }

    /// The forum topic the hub holds for `session` in `chat`.
    pub(super) async fn topic(&self, chat: i64, session: &str) -> Option<i64> {
        match self.claims.get(&claims::topic_key(chat, session)).await {
            Ok(value) => std::str::from_utf8(&value?).ok()?.parse().ok(),
            Err(err) => {
                self.failed(&err, "looking up a forum topic");
                None
            }
        }
    }

    /// Offers `thread` as the forum topic of `session` in `chat`; the topic that holds in the
    /// hub (ours, or one another machine made first). `None` when the hub does not answer.
    pub(super) async fn first_topic(&self, chat: i64, session: &str, thread: i64) -> Option<i64> {
        let key = claims::topic_key(chat, session);
        let first = match self
            .claims
            .put_first(&key, thread.to_string().into_bytes())
            .await
        {
            Ok(first) => std::str::from_utf8(&first).ok()?.parse().ok()?,
            Err(err) => {
                self.failed(&err, "sharing a forum topic");
                return None;
            }
        };
        if first == thread {
            let back = claims::thread_key(chat, thread);
            if let Err(err) = self.claims.put(&back, session.as_bytes().to_vec()).await {
                self.failed(&err, "sharing a forum topic");
            }
        }
        Some(first)
    }

    /// The session whose forum topic `thread` is in `chat`, as the hub holds it.
    pub(super) async fn session_of_topic(&self, chat: i64, thread: i64) -> Option<String> {
        match self.claims.get(&claims::thread_key(chat, thread)).await {
            Ok(value) => String::from_utf8(value?).ok(),
            Err(err) => {
                self.failed(&err, "looking up a forum topic");
                None
            }
        }
    }

    async fn route(&self, chat: i64, message_id: i64) -> Option<Forwarded> {
        match self.claims.get(&claims::reply_key(chat, message_id)).await {
            Ok(value) => serde_json::from_slice(&value?).ok(),
            Err(err) => {
                tracing::warn!(%err, "looking up a reply's escalation in the hub");
                None
            }
        }
    }
}

impl Telegram {
    /// Turns federation on for Telegram: escalations are claimed in the hub before they are
    /// sent, one machine's server polls `getUpdates` at a time, and replies find their
    /// escalation whichever machine forwarded it. Call it before [`Telegram::forward`] and
    /// [`Telegram::answer`]; no network traffic until then.
    pub fn federate(&self, settings: &Settings) {
        let _ = self.inner.federated.set(Federated::new(settings));
    }

    /// Claims the forward of `msg` in the hub (federation on) after this server claimed it
    /// on its machine. `None` when it is not this machine's to send: another machine sent it
    /// (written in the local claim as `done elsewhere <machine>`, so it is not offered
    /// again), another machine is sending it (the local claim is let go, and the escalation
    /// is offered again when that machine's claim changes or it may have gone away), or
    /// `cancel` came while the hub did not answer (the claim stays without an outcome, and
    /// the next server takes it over).
    pub(super) async fn claim_in_hub(
        &self,
        msg: &Arc<Message>,
        claim: Claim,
        cancel: &CancellationToken,
    ) -> Option<Claim> {
        let Some(fed) = self.inner.federated.get() else {
            return Some(claim);
        };
        let id = &msg.id;
        match fed.claim_forward(id, cancel).await {
            HubClaim::Ours => Some(claim),
            HubClaim::Cancelled => None,
            HubClaim::Pending(machine) => {
                tracing::info!(msg_id = %id, %machine, "another machine is forwarding it to Telegram; looked at again when it is done or if it goes away");
                drop(claim);
                let (telegram, msg, cancel) = (self.clone(), msg.clone(), cancel.clone());
                tokio::spawn(async move {
                    if telegram.until_forward_changes(&msg.id, &cancel).await {
                        telegram.forget(&msg.id);
                        telegram.offer(&msg);
                    }
                });
                None
            }
            HubClaim::Elsewhere(machine) => {
                // Written down first: the line below says it is settled here.
                let outcome = format!("elsewhere {machine}");
                let finished = self.blocking(move |_| claim.finish(&outcome)).await;
                if let Some(Err(err)) = finished {
                    tracing::warn!(msg_id = %id, %err, "recording that another machine forwards it");
                }
                tracing::info!(msg_id = %id, %machine, "another machine forwards it to Telegram");
                None
            }
        }
    }

    /// Waits until the hub's claim on the forward of `id` changes, or [`RECHECK`] passed;
    /// false at `cancel`. True at once when it is finished already (it finished between the
    /// last look and the start of the watch).
    async fn until_forward_changes(&self, id: &str, cancel: &CancellationToken) -> bool {
        let Some(fed) = self.inner.federated.get() else {
            return false;
        };
        let watch = fed.claims.watch_forward(id).await.ok();
        if !matches!(fed.claims.forward_state(id).await, Ok(Some((_, false)))) {
            return true;
        }
        // A change seen by the watch; a watch that broke or ended leaves it to the timer.
        let changed = async {
            if let Some(mut watch) = watch {
                while let Some(seen) = futures_util::StreamExt::next(&mut watch).await {
                    if seen.is_ok() {
                        return;
                    }
                }
            }
            std::future::pending::<()>().await;
        };
        tokio::select! {
            () = cancel.cancelled() => false,
            () = changed => true,
            () = tokio::time::sleep(RECHECK) => true,
        }
    }

    /// Says in the hub that this machine is done with the forward of `id` (federation on).
    pub(super) async fn finish_in_hub(&self, id: &str, outcome: &str) {
        if let Some(fed) = self.inner.federated.get()
            && let Err(err) = fed.claims.finish_forward(id, outcome).await
        {
            fed.failed(&err, "saying in the hub that an escalation was forwarded");
        }
    }

    /// Shares a sent part's route (federation on).
    pub(super) async fn share_route(&self, forwarded: &Forwarded) {
        if let Some(fed) = self.inner.federated.get() {
            fed.put_route(forwarded).await;
        }
    }

    /// Polls until `cancel`; with federation on, only while this process holds the lease
    /// (waiting for it first, and again after losing it).
    pub(super) async fn poll_leased(&self, cancel: &CancellationToken) {
        let Some(fed) = self.inner.federated.get() else {
            tracing::info!(chat = ?self.inner.chat(), "this server now reads the replies from Telegram");
            return self.poll(cancel).await;
        };
        while let Some(revision) = fed.wait_for_lease(cancel).await {
            tracing::info!(chat = ?self.inner.chat(), machine = %fed.claims.machine(), "this server now reads the replies from Telegram (it holds the poller lease)");
            let held = cancel.child_token();
            tokio::join!(self.poll(&held), fed.keep(revision, &held, cancel));
        }
    }

    /// The offset to poll from: this machine's, or the one the latest poller of any machine
    /// reached when later.
    pub(super) async fn shared_offset(&self, local: Option<i64>) -> Option<i64> {
        match self.inner.federated.get() {
            Some(fed) => local.max(fed.offset().await),
            None => local,
        }
    }

    /// Shares the offset after a batch (federation on).
    pub(super) async fn share_offset(&self, offset: Option<i64>) {
        if let (Some(fed), Some(offset)) = (self.inner.federated.get(), offset) {
            fed.put_offset(offset).await;
        }
    }

    /// Before a batch is taken: each reply to a message this machine did not forward finds
    /// its route in the hub, written into `replies.log` here (federation on).
    pub(super) async fn fetch_routes(&self, updates: &[Value]) {
        let Some(fed) = self.inner.federated.get() else {
            return;
        };
        for (chat, message_id) in updates.iter().filter_map(replied_to) {
            let known = self
                .blocking(move |inner| inner.store.lookup(chat, message_id))
                .await;
            if !matches!(known, Some(Ok(None))) {
                continue;
            }
            let Some(forwarded) = fed.route(chat, message_id).await else {
                continue;
            };
            let remembered = self
                .blocking(move |inner| inner.store.remember(&forwarded))
                .await;
            if let Some(Err(err)) = remembered {
                tracing::warn!(err = %format!("{err:#}"), "writing a reply's route from the hub");
            }
        }
    }
}

impl Telegram {
    /// Records permission request `id` in the hub and watches the verdicts put for it
    /// (federation on); call it before the prompt goes out. `None` with federation off, or
    /// when the hub does not answer (warned: then only a poller on this machine can answer).
    pub(super) async fn open_in_hub(&self, id: &str, session: &str) -> Option<HubPrompt> {
        let fed = self.inner.federated.get()?;
        let request = HubRequest {
            request_id: id.to_owned(),
            machine: fed.claims.machine().to_owned(),
            session: session.to_owned(),
            created: Local::now().to_rfc3339(),
            outcome: None,
        };
        let opened = match fed.claims.watch_verdicts(id).await {
            Ok(watch) => fed.put_request(&request).await.map(|()| watch),
            Err(err) => Err(err),
        };
        match opened {
            Ok(watch) => Some(HubPrompt {
                request,
                watch: Some(watch),
            }),
            Err(err) => {
                tracing::warn!(request_id = %id, %err, "the permission request is not in the hub: a press polled on another machine will not reach it");
                None
            }
        }
    }

    /// Records the outcome of a prompt open in the hub, so its poller says "already answered".
    pub(super) async fn settle_in_hub(&self, prompt: Option<HubPrompt>, outcome: &str) {
        let (Some(fed), Some(HubPrompt { mut request, .. })) = (self.inner.federated.get(), prompt)
        else {
            return;
        };
        request.outcome = Some(outcome.to_owned());
        if let Err(err) = fed.put_request(&request).await {
            tracing::warn!(request_id = %request.request_id, %err, "recording a permission request's outcome in the hub");
        }
    }

    /// Before a batch is taken: the permission requests pressed or answered in it that this
    /// machine does not hold but the hub knows (federation on).
    pub(super) async fn fetch_requests(&self, updates: &[Value]) -> HashMap<String, HubRequest> {
        let mut found = HashMap::new();
        let Some(fed) = self.inner.federated.get() else {
            return found;
        };
        for id in updates.iter().filter_map(request_of) {
            if found.contains_key(&id) {
                continue;
            }
            let asked = id.clone();
            let local = self
                .blocking(move |inner| inner.open_request(&asked).is_some())
                .await;
            if local == Some(false)
                && let Some(request) = fed.request(&id).await
            {
                found.insert(id, request);
            }
        }
        found
    }

    /// Carries out an answer that needs the hub: puts the verdict for a request of another
    /// machine, and gives what to tell the person (federation on).
    pub(super) async fn through_hub(&self, answer: Answer) -> Answer {
        let Answer::Hub {
            request_id,
            verdict,
            settles,
            done,
            failed,
            not_taken,
        } = answer
        else {
            return answer;
        };
        let Some(fed) = self.inner.federated.get() else {
            return *failed;
        };
        // Watched before the verdict goes, so that the asking server's record is not missed.
        let mut taken = match settles {
            Some(_) => match fed
                .claims
                .watch_perm(&claims::permission_key(&request_id))
                .await
            {
                Ok(watch) => Some(watch),
                Err(err) => {
                    tracing::warn!(%request_id, %err, "watching a permission request in the hub; the press is confirmed without its taking");
                    None
                }
            },
            None => None,
        };
        let key = claims::verdict_key(&request_id, &crate::fsx::random_uid());
        let value = serde_json::to_vec(&verdict).expect("plain strings");
        if let Err(err) = fed.claims.put_perm(&key, value).await {
            tracing::warn!(%request_id, %err, "putting a verdict in the hub");
            return *failed;
        }
        tracing::info!(%request_id, "a press was handed to the asking machine through the hub");
        let (Some(settles), Some(watch)) = (settles, taken.as_mut()) else {
            return *done;
        };
        match tokio::time::timeout(TAKEN_WITHIN, settled(watch)).await {
            Ok(Some(outcome)) if outcome == settles => *done,
            // Settled otherwise meanwhile (another press, or it expired): said as such.
            Ok(Some(outcome)) => match *done {
                Answer::Toast(query, _) => {
                    Answer::Toast(query, format!("Already answered ({outcome})."))
                }
                done => done,
            },
            _ => {
                tracing::warn!(%request_id, "the asking machine did not take a press (its session ended?)");
                *not_taken
            }
        }
    }
}

/// The outcome the asking server records in a request's entry, from a watch on it; `None`
/// when the watch ends first.
async fn settled(watch: &mut PermWatch) -> Option<String> {
    loop {
        let value = watch.next().await?;
        if let Ok(HubRequest {
            outcome: Some(outcome),
            ..
        }) = serde_json::from_slice(&value)
        {
            return Some(outcome);
        }
    }
}

/// The next verdict put in the hub for an open prompt; never ready without one (federation
/// off, the hub unreachable when it was asked, or the watch ended).
pub(super) async fn next_from_hub(hub: &mut Option<HubPrompt>) -> Verdict {
    if let Some(prompt) = hub {
        while let Some(watch) = prompt.watch.as_mut() {
            let Some(value) = watch.next().await else {
                prompt.watch = None;
                break;
            };
            match serde_json::from_slice(&value) {
                Ok(verdict) => return verdict,
                Err(err) => {
                    tracing::warn!(request_id = %prompt.request.request_id, %err, "an unreadable verdict in the hub was ignored")
                }
            }
        }
    }
    std::future::pending().await
}

/// The permission request an update presses a button of, or answers by typing.
fn request_of(update: &Value) -> Option<String> {
    if let Some(data) = update.pointer("/callback_query/data") {
        return parse_callback(data.as_str()?).map(|(_, id, _)| id);
    }
    let text = update.pointer("/message/text")?.as_str()?;
    typed_answer(text).map(|(_, id)| id)
}

/// The chat and Telegram message id an update's message replies to.
fn replied_to(update: &Value) -> Option<(i64, i64)> {
    let message = update.get("message")?;
    let chat = message.get("chat")?.get("id")?.as_i64()?;
    let replied = message
        .get("reply_to_message")?
        .get("message_id")?
        .as_i64()?;
    Some((chat, replied))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_names_what_it_answers() {
        let reply = serde_json::json!({"update_id": 1, "message": {
            "message_id": 9, "chat": {"id": -1_005}, "text": "ok",
            "reply_to_message": {"message_id": 5001, "chat": {"id": -1_005}}
        }});
        assert_eq!(replied_to(&reply), Some((-1005, 5001)));
        let plain = serde_json::json!({"update_id": 2, "message": {
            "message_id": 10, "chat": {"id": 7}, "text": "@alpha hi"
        }});
        assert_eq!(replied_to(&plain), None);
        assert_eq!(replied_to(&serde_json::json!({"update_id": 3})), None);
    }
}
