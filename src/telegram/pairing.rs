//! Pairing with federation on: `t9-ipc telegram pair` may run on any machine, while only the
//! server that holds the poller's lease, on whichever machine, reads Telegram.
//!
//! The command puts its code in the hub ([`PERMS_BUCKET`](crate::federation::claims)) under
//! the code's tag ([`Token::tag`](super::Token): only holders of the bot token can tell which
//! code a key is), with its machine and the code's expiry, and watches for who sent it. The
//! polling server, given a code it does not hold itself, looks the tag up and writes who sent
//! it into the hub once (create-if-absent), with a proof that it saw the code (an HMAC keyed
//! by the token over the code and the sender); the command checks the proof, records that
//! arrival on its own machine and saves the user there. As without federation, a pairing allows the user on the
//! machine where the command ran.

use std::collections::HashMap;

use chrono::{DateTime, Local};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::access::{Arrival, code_in};
use super::api::Token;
use super::inbound::Answer;
use super::service::Telegram;
use crate::federation::claims::{PermWatch, paired_key, pairing_key};

/// A pairing code waiting on some machine, as the hub holds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct HubCode {
    machine: String,
    expires: String,
}

/// A code of another machine that arrived here: who sent it, for the hub.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct HubPairing {
    code: String,
    machine: String,
    arrival: Arrival,
    chat: i64,
    thread: Option<i64>,
}

impl HubPairing {
    /// `code`, sent by `arrival` in `chat` (`thread`), waits on the machine `hub` names.
    pub(super) fn new(
        code: String,
        hub: &HubCode,
        arrival: Arrival,
        chat: i64,
        thread: Option<i64>,
    ) -> HubPairing {
        HubPairing {
            code,
            machine: hub.machine.clone(),
            arrival,
            chat,
            thread,
        }
    }
}

/// Who sent a code, as the polling machine writes it into the hub.
#[derive(Debug, Serialize, Deserialize)]
struct HubArrival {
    #[serde(flatten)]
    arrival: Arrival,
    /// [`proof`] of the code and the sender.
    proof: String,
}

/// What only a holder of the bot token who saw `code` can write beside its sender: without
/// it, any writer of the hub could pair an account of their choosing.
fn proof(token: &Token, code: &str, arrival: &Arrival) -> String {
    let Arrival {
        user_id,
        chat_id,
        name,
    } = arrival;
    token.tag(&format!("paired\n{code}\n{user_id}\n{chat_id}\n{name}"))
}

/// Who sent a code this command offered in the hub ([`Telegram::offer_code`]).
pub struct CodeWatch {
    watch: PermWatch,
    token: Token,
    code: String,
}

impl CodeWatch {
    /// Who sent the code, once the polling machine says; `None` when the watch ended. A
    /// value without a valid proof is warned about and passed over.
    pub async fn arrival(&mut self) -> Option<Arrival> {
        while let Some(value) = self.watch.next().await {
            match serde_json::from_slice::<HubArrival>(&value) {
                Ok(hub) if hub.proof == proof(&self.token, &self.code, &hub.arrival) => {
                    return Some(hub.arrival);
                }
                Ok(hub) => tracing::warn!(
                    user_id = hub.arrival.user_id,
                    "a pairing in the hub without proof that the bot got the code was ignored"
                ),
                Err(err) => tracing::warn!(%err, "an unreadable pairing in the hub was ignored"),
            }
        }
        None
    }
}

impl Telegram {
    /// Offers `code` in the hub until `expires` (federation on), so that whichever machine
    /// polls Telegram can hand its arrival over. `None` with federation off, or when the hub
    /// does not answer (warned: then only a poller of this machine sees the code).
    pub async fn offer_code(&self, code: &str, expires: DateTime<Local>) -> Option<CodeWatch> {
        let fed = self.inner.federated.get()?;
        let tag = self.inner.api.token.tag(code);
        let offer = HubCode {
            machine: fed.claims.machine().to_owned(),
            expires: expires.to_rfc3339(),
        };
        // Watching first: an arrival cannot come before the watch.
        let offered = match fed.claims.watch_perm(&paired_key(&tag)).await {
            Ok(watch) => fed
                .claims
                .put_perm(
                    &pairing_key(&tag),
                    serde_json::to_vec(&offer).expect("plain"),
                )
                .await
                .map(|()| watch),
            Err(err) => Err(err),
        };
        match offered {
            Ok(watch) => Some(CodeWatch {
                watch,
                token: self.inner.api.token.clone(),
                code: code.to_owned(),
            }),
            Err(err) => {
                tracing::warn!(%err, "the pairing code is not in the hub: only a server of this machine that reads Telegram sees it");
                None
            }
        }
    }

    /// Takes `code` out of the hub, once the command is done with it (federation on).
    pub async fn withdraw_code(&self, code: &str) {
        let Some(fed) = self.inner.federated.get() else {
            return;
        };
        let tag = self.inner.api.token.tag(code);
        for key in [pairing_key(&tag), paired_key(&tag)] {
            if let Err(err) = fed.claims.delete_perm(&key).await {
                // It expires with the bucket's age.
                tracing::debug!(%err, "taking a pairing code out of the hub");
            }
        }
    }

    /// Before a batch is taken: the pairing codes sent in it that wait on some machine, as
    /// the hub has them (federation on). An expired one is left out.
    pub(super) async fn fetch_codes(&self, updates: &[Value]) -> HashMap<String, HubCode> {
        let mut found = HashMap::new();
        let Some(fed) = self.inner.federated.get() else {
            return found;
        };
        for code in updates.iter().filter_map(code_of) {
            if found.contains_key(&code) {
                continue;
            }
            let key = pairing_key(&self.inner.api.token.tag(&code));
            let offer = match fed.claims.get_perm(&key).await {
                Ok(Some(value)) => serde_json::from_slice::<HubCode>(&value),
                Ok(None) => continue,
                Err(err) => {
                    tracing::warn!(%err, "looking a pairing code up in the hub");
                    continue;
                }
            };
            match offer {
                Ok(offer) if live(&offer, Local::now()) => {
                    found.insert(code, offer);
                }
                Ok(_) => {
                    tracing::info!("an expired pairing code of another machine arrived; ignored")
                }
                Err(err) => {
                    tracing::warn!(%err, "an unreadable pairing code in the hub was ignored")
                }
            }
        }
        found
    }

    /// Carries out [`Answer::Pair`]: writes who sent the code into the hub, once, and gives
    /// what to tell the person.
    pub(super) async fn pair_through_hub(&self, answer: Answer) -> Answer {
        let Answer::Pair(pairing) = answer else {
            return answer;
        };
        let HubPairing {
            code,
            machine,
            arrival,
            chat,
            thread,
        } = *pairing;
        let notice = |text: String| Answer::Notice(chat, thread, text);
        let Some(fed) = self.inner.federated.get() else {
            return notice("Not paired: this machine lost the hub. Send the code again.".into());
        };
        let token = &self.inner.api.token;
        let key = paired_key(&token.tag(&code));
        let hub = HubArrival {
            proof: proof(token, &code, &arrival),
            arrival,
        };
        let value = serde_json::to_vec(&hub).expect("plain");
        let arrival = hub.arrival;
        match fed.claims.create_perm(&key, value).await {
            Ok(true) => {
                tracing::info!(user_id = arrival.user_id, chat_id = chat, %machine, "a pairing code of another machine arrived; handed over through the hub");
                notice(format!(
                    "Paired: user {} in chat {chat}. `t9-ipc telegram pair` on {machine} saves it now.",
                    arrival.user_id
                ))
            }
            Ok(false) => notice(
                "This code was sent already. For another user, run `t9-ipc telegram pair` again."
                    .into(),
            ),
            Err(err) => {
                tracing::warn!(%err, "writing a pairing into the hub");
                notice("Not paired: the hub could not be written. Send the code again.".into())
            }
        }
    }
}

/// True while `offer` has not expired at `now`.
fn live(offer: &HubCode, now: DateTime<Local>) -> bool {
    DateTime::parse_from_rfc3339(&offer.expires).is_ok_and(|expires| now <= expires)
}

/// The pairing code an update's message is, if any.
fn code_of(update: &Value) -> Option<String> {
    code_in(update.pointer("/message/text")?.as_str()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_is_found_in_a_message_and_lives_until_it_expires() {
        let update = |text: &str| serde_json::json!({"update_id": 1, "message": {"text": text}});
        assert_eq!(code_of(&update("/pair k7pq2x")).as_deref(), Some("K7PQ2X"));
        assert_eq!(code_of(&update("hello there")), None);
        let now = Local::now();
        let offer = |expires: DateTime<Local>| HubCode {
            machine: "laptop".into(),
            expires: expires.to_rfc3339(),
        };
        assert!(live(&offer(now + chrono::TimeDelta::minutes(1)), now));
        assert!(!live(&offer(now - chrono::TimeDelta::seconds(1)), now));
        let junk = HubCode {
            machine: "laptop".into(),
            expires: "soon".into(),
        };
        assert!(!live(&junk, now));
    }
}
