//! Tool-permission prompts relayed to the phone, and the verdicts that come back.
//!
//! The asking server ([`Telegram::ask`]) makes two random secrets per request, one for
//! Allow and one for Deny, keeps them in memory only, and puts them in the callback data of
//! the prompt's two buttons, which it sends to Telegram itself. A press reaches the one
//! server that polls Telegram; that server checks the presser's user id and writes the
//! secret it got from Telegram into `verdicts/<request_id>.<uid>.json`; the asking server
//! watches that folder and takes a verdict only when it carries one of its secrets. So an
//! allow needs a secret that never touches the disk before someone pressed Allow in the chat:
//! no local file, command or tool can answer a prompt. With federation on, a press polled on
//! another machine comes through the hub instead (`federated`), taken only with a secret too
//! (a typed deny, which no secret proves, counts only from this machine's disk). See
//! docs/SECURITY.md for what this proves and what it does not.
//!
//! On disk, under `<data>/telegram/` (each file 0600):
//!
//! ```text
//! permissions/<request_id>.json  the open request: which session asked, and its outcome once
//!                                answered (the poller reads it to say "unknown" or
//!                                "already answered"); no secret
//! verdicts/<request_id>.<uid>.json  a press or a typed answer, for the asking server
//! ```

use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use chrono::Local;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::api::{ApiError, backoff};
use super::federated::{HubPrompt, next_from_hub};
use super::render::escape;
use super::service::{Inner, Telegram, locked};
use crate::error::Result;
use crate::fsx::private_dir;
use crate::fsx::write_atomic;
use crate::mailbox;
use crate::watch::Changes;

/// How long a prompt waits for an answer from the phone before it says "answered elsewhere
/// or expired" (Claude Code does not tell a channel when the terminal answered).
pub const PERMISSION_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// The input preview shown before "see more", in characters.
const PREVIEW_CHARS: usize = 300;
/// The whole preview is cut here, to keep the message under Telegram's 4096.
const FULL_PREVIEW_CHARS: usize = 3500;

/// A `notifications/claude/channel/permission_request`'s params. Unknown fields are ignored.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PermissionRequest {
    pub request_id: String,
    #[serde(default)]
    pub tool_name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub input_preview: String,
}

/// What the person decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behavior {
    Allow,
    Deny,
}

impl Behavior {
    /// The `behavior` value Claude Code takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Behavior::Allow => "allow",
            Behavior::Deny => "deny",
        }
    }
}

/// True for a request id as Claude Code makes them: 5 lowercase letters, `l` left out.
pub fn is_request_id(id: &str) -> bool {
    id.len() == 5 && id.bytes().all(|b| b.is_ascii_lowercase() && b != b'l')
}

/// `yes abcde` / `no abcde` (any case, spaces around): Claude Code's own pattern
/// `^\s*(y|yes|n|no)\s+([a-km-z]{5})\s*$`, case-insensitive. Returns the answer and the id.
pub fn typed_answer(text: &str) -> Option<(Behavior, String)> {
    let mut words = text.split_whitespace();
    let (word, id) = (words.next()?, words.next()?);
    if words.next().is_some() {
        return None;
    }
    let behavior = match word.to_ascii_lowercase().as_str() {
        "y" | "yes" => Behavior::Allow,
        "n" | "no" => Behavior::Deny,
        _ => return None,
    };
    let id = id.to_ascii_lowercase();
    is_request_id(&id).then_some((behavior, id))
}

/// The secrets of one open request, in the memory of the server that asked.
#[derive(Debug, Clone)]
pub(super) struct Secrets {
    allow: String,
    deny: String,
}

/// An open request as the poller sees it on disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct OpenRequest {
    pub(super) request_id: String,
    pub(super) session: String,
    pub(super) pid: u32,
    pub(super) created: String,
    /// `allowed`, `denied` or `expired` once settled.
    #[serde(default)]
    pub(super) outcome: Option<String>,
}

/// One press or typed answer, from the poller to the asking server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(super) enum Verdict {
    /// A button press: the secret that came back in its callback data.
    Press {
        secret: String,
        #[serde(default)]
        by: String,
    },
    /// A typed `no abcde` the poller could not prove with a secret: taken for deny only.
    TypedDeny {
        #[serde(default)]
        by: String,
    },
    /// "See more": show the whole preview (harmless, so not proven).
    More,
}

/// What a verdict does to the request whose secrets are `secrets`.
pub(super) enum Weighed {
    Decided(Behavior, String),
    More,
    /// Why it was ignored, for the log.
    Ignored(&'static str),
}

/// Weighs a verdict: a press decides only with one of `secrets`; a typed deny (which no
/// secret proves) counts only when `proven_only` is false, that is from this machine's disk,
/// never from the hub, where every machine may write.
pub(super) fn weigh(verdict: Verdict, secrets: &Secrets, proven_only: bool) -> Weighed {
    match verdict {
        Verdict::Press { secret, .. } if secret.is_empty() => {
            Weighed::Ignored("a verdict without this request's secret was ignored")
        }
        Verdict::Press { secret, by } if secret == secrets.allow => {
            Weighed::Decided(Behavior::Allow, by)
        }
        Verdict::Press { secret, by } if secret == secrets.deny => {
            Weighed::Decided(Behavior::Deny, by)
        }
        Verdict::Press { .. } => {
            Weighed::Ignored("a verdict without this request's secret was ignored")
        }
        Verdict::TypedDeny { by } if !proven_only => Weighed::Decided(Behavior::Deny, by),
        Verdict::TypedDeny { .. } => {
            Weighed::Ignored("a typed deny without this request's secret was ignored")
        }
        Verdict::More => Weighed::More,
    }
}

/// A button's callback data: `p`, the action (`a` allow, `d` deny, `m` more), the request
/// id, and for allow and deny the secret.
pub(super) fn parse_callback(data: &str) -> Option<(char, String, String)> {
    let rest = data.strip_prefix('p')?;
    let action = rest.chars().next()?;
    let rest = &rest[action.len_utf8()..];
    let id = rest.get(..5)?;
    if !is_request_id(id) || !matches!(action, 'a' | 'd' | 'm') {
        return None;
    }
    Some((action, id.to_owned(), rest[5..].to_owned()))
}

fn secret() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        // Without system randomness no secret can be made; a prompt then cannot be allowed.
        return String::new();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn cut(s: &str, max: usize) -> (String, bool) {
    if s.chars().count() <= max {
        return (s.to_owned(), false);
    }
    let mut out: String = s.chars().take(max).collect();
    out.push('…');
    (out, true)
}

/// Where a request was asked from, for the prompt's header.
#[derive(Debug, Clone)]
pub struct Asker {
    pub session: String,
    pub folder: String,
}

impl Inner {
    pub(super) fn permissions_dir(&self) -> PathBuf {
        self.mailbox.root().join("telegram").join("permissions")
    }

    pub(super) fn verdicts_dir(&self) -> PathBuf {
        self.mailbox.root().join("telegram").join("verdicts")
    }

    pub(super) fn open_request(&self, id: &str) -> Option<OpenRequest> {
        let path = self.permissions_dir().join(format!("{id}.json"));
        serde_json::from_str(&fs::read_to_string(path).ok()?).ok()
    }

    fn save_request(&self, request: &OpenRequest) -> Result<()> {
        let path = self
            .permissions_dir()
            .join(format!("{}.json", request.request_id));
        write_atomic(
            &path,
            serde_json::to_string(request).expect("plain").as_bytes(),
        )
    }

    /// Hands a verdict to the server that asked `id`.
    pub(super) fn write_verdict(&self, id: &str, verdict: &Verdict) -> Result<()> {
        let path = self
            .verdicts_dir()
            .join(format!("{id}.{}.json", mailbox::random_uid()));
        write_atomic(
            &path,
            serde_json::to_string(verdict).expect("plain").as_bytes(),
        )
    }

    /// The secret for `behavior` when request `id` was asked by this process.
    pub(super) fn own_secret(&self, id: &str, behavior: Behavior) -> Option<String> {
        let pending = locked(&self.pending);
        let s = pending.get(id)?;
        Some(match behavior {
            Behavior::Allow => s.allow.clone(),
            Behavior::Deny => s.deny.clone(),
        })
    }

    /// Takes the verdict files of request `id`: returns the first decision among them (and
    /// whether "see more" was asked). Every file is removed once read.
    fn take_verdicts(&self, id: &str, secrets: &Secrets) -> (Option<(Behavior, String)>, bool) {
        let dir = self.verdicts_dir();
        let Ok(entries) = fs::read_dir(&dir) else {
            return (None, false);
        };
        let prefix = format!("{id}.");
        let mut files: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".json"))
            })
            .collect();
        files.sort();
        let (mut decided, mut more) = (None, false);
        for path in files {
            let text = fs::read_to_string(&path).unwrap_or_default();
            let _ = fs::remove_file(&path);
            match serde_json::from_str::<Verdict>(&text) {
                Ok(verdict) => match weigh(verdict, secrets, false) {
                    Weighed::Decided(behavior, by) => {
                        decided.get_or_insert((behavior, by));
                    }
                    Weighed::More => more = true,
                    Weighed::Ignored(why) => {
                        tracing::warn!(request_id = %id, file = %path.display(), "{why}")
                    }
                },
                Err(err) => {
                    tracing::warn!(request_id = %id, file = %path.display(), %err, "an unreadable verdict was ignored")
                }
            }
        }
        (decided, more)
    }
}

/// The prompt as shown: its header lines, the preview (cut or whole) and the footer.
struct Prompt {
    header: String,
    short: String,
    whole: String,
    cut: bool,
}

impl Prompt {
    fn new(req: &PermissionRequest, asker: &Asker) -> Prompt {
        let id = &req.request_id;
        let mut header = format!(
            "🔐 <b>Permission request</b> <code>{id}</code>\n<b>session</b> {}\n<b>folder</b> {}\n<b>tool</b> {}",
            escape(&asker.session),
            escape(&asker.folder),
            escape(&req.tool_name),
        );
        if !req.description.trim().is_empty() {
            let (description, _) = cut(req.description.trim(), 500);
            header.push_str(&format!("\n{}", escape(&description)));
        }
        let (short, cut_short) = cut(&req.input_preview, PREVIEW_CHARS);
        // Telegram counts the text as shown (an entity is one character): the header, the
        // outcome line and the preview must stay under 4096.
        let room = (super::render::MAX_MESSAGE - 300).saturating_sub(header.chars().count());
        let (whole, _) = cut(&req.input_preview, room.min(FULL_PREVIEW_CHARS));
        Prompt {
            header,
            short,
            whole,
            cut: cut_short,
        }
    }

    fn text(&self, whole: bool, footer: &str) -> String {
        let preview = if whole { &self.whole } else { &self.short };
        let mut text = self.header.clone();
        if !preview.trim().is_empty() {
            text.push_str(&format!("\n<pre>{}</pre>", escape(preview)));
        }
        text.push_str("\n\n");
        text.push_str(footer);
        text
    }
}

/// A prompt sent to the phone: which request, where it is, and what it shows.
struct Posted<'a> {
    id: &'a str,
    chat: i64,
    message_id: i64,
    secrets: &'a Secrets,
    prompt: Prompt,
    footer: String,
}

/// The prompt's buttons: allow and deny (each with its secret), and "See more" when `more`.
fn keyboard(id: &str, secrets: &Secrets, more: bool) -> Value {
    let mut rows = vec![json!([
        {"text": "✅ Allow", "callback_data": format!("pa{id}{}", secrets.allow)},
        {"text": "❌ Deny", "callback_data": format!("pd{id}{}", secrets.deny)},
    ])];
    if more {
        rows.push(json!([{"text": "See more", "callback_data": format!("pm{id}")}]));
    }
    json!({"inline_keyboard": rows})
}

impl Telegram {
    /// True when tool-permission prompts can be relayed: a chat to send them to, and at
    /// least one Telegram user id named as allowed (`IPC_TG_ALLOW` or a pairing) to answer.
    pub fn relays_permissions(&self) -> bool {
        self.inner.chat().is_some() && !self.inner.allowed().explicit.is_empty()
    }

    /// Relays one permission request to Telegram and waits for the answer from the phone.
    /// Returns the verdict once (to be sent back to Claude Code), or `None` when it expired
    /// ([`PERMISSION_TIMEOUT`]), the session ended, or it could not be sent. The Telegram
    /// message is edited to show the outcome.
    pub async fn ask(
        &self,
        req: PermissionRequest,
        asker: Asker,
        cancel: CancellationToken,
    ) -> Option<Behavior> {
        let id = req.request_id.clone();
        if !is_request_id(&id) {
            tracing::warn!(request_id = %id, "a permission request with an id Claude Code does not make; ignored");
            return None;
        }
        let chat = self.inner.chat()?;
        let secrets = Secrets {
            allow: secret(),
            deny: secret(),
        };
        let (_watcher, mut changes) = self.prepare_request(&id, &asker.session).await?;
        // Before the prompt goes out too, so that a press polled on another machine finds it.
        let mut hub = self.open_in_hub(&id, &asker.session).await;
        locked(&self.inner.pending).insert(id.clone(), secrets.clone());
        let prompt = Prompt::new(&req, &asker);
        let footer =
            format!("<i>Answer with the buttons, or type \"yes {id}\" or \"no {id}\".</i>");
        let mut body = json!({
            "chat_id": chat,
            "text": prompt.text(false, &footer),
            "parse_mode": "HTML",
            "link_preview_options": {"is_disabled": true},
            "reply_markup": keyboard(&id, &secrets, prompt.cut),
        });
        if let Some(thread) = self.topic_for(&asker.session).await {
            body["message_thread_id"] = json!(thread);
        }
        let Some(message_id) = self.send_retrying(&body, &cancel).await else {
            self.settle(&id, "unsent").await;
            self.settle_in_hub(hub, "unsent").await;
            return None;
        };
        tracing::info!(request_id = %id, tool = %req.tool_name, "permission request sent to Telegram");
        let posted = Posted {
            id: &id,
            chat,
            message_id,
            secrets: &secrets,
            prompt,
            footer,
        };
        let (outcome, shown_whole) = self
            .wait_verdict(&posted, &mut changes, &mut hub, &cancel)
            .await;
        locked(&self.inner.pending).remove(&id);
        let settled = self
            .close(&posted, outcome.as_ref(), shown_whole, hub)
            .await;
        let behavior = outcome.map(|(b, _)| b);
        tracing::info!(request_id = %id, outcome = settled, "permission request settled");
        behavior
    }

    /// The folders, the verdict watcher and the open request, made before the prompt goes
    /// out so that no press can come before them. `None` (logged) when they cannot be made.
    async fn prepare_request(
        &self,
        id: &str,
        session: &str,
    ) -> Option<(crate::watch::Watcher, Changes)> {
        let setup = {
            let (id, session) = (id.to_owned(), session.to_owned());
            self.blocking(move |inner| -> Result<_> {
                private_dir(&inner.permissions_dir())?;
                private_dir(&inner.verdicts_dir())?;
                let watch = crate::watch::watch(&inner.verdicts_dir())?;
                inner.save_request(&OpenRequest {
                    request_id: id,
                    session,
                    pid: std::process::id(),
                    created: Local::now().to_rfc3339(),
                    outcome: None,
                })?;
                Ok(watch)
            })
            .await?
        };
        match setup {
            Ok(w) => Some(w),
            Err(err) => {
                tracing::warn!(request_id = %id, err = %format!("{err:#}"), "cannot relay a permission request");
                None
            }
        }
    }

    /// Waits for the verdict, looking again at each change in the verdicts folder and at
    /// each verdict put in the hub for it (federation on), and shows the whole preview once
    /// "See more" is pressed. `None` when the session ended, the prompt expired or the
    /// watcher is gone; with whether the whole preview is shown.
    async fn wait_verdict(
        &self,
        posted: &Posted<'_>,
        changes: &mut Changes,
        hub: &mut Option<HubPrompt>,
        cancel: &CancellationToken,
    ) -> (Option<(Behavior, String)>, bool) {
        let deadline = tokio::time::Instant::now() + PERMISSION_TIMEOUT;
        let (mut shown_whole, mut more_from_hub) = (false, false);
        let outcome = loop {
            let taken = {
                let (id, secrets) = (posted.id.to_owned(), posted.secrets.clone());
                self.blocking(move |inner| inner.take_verdicts(&id, &secrets))
                    .await
            };
            let (decided, more) = taken.unwrap_or((None, false));
            if let Some(decided) = decided {
                break Some(decided);
            }
            if (more || more_from_hub) && !shown_whole {
                shown_whole = true;
                self.show_whole(posted).await;
            }
            tokio::select! {
                () = cancel.cancelled() => break None,
                () = tokio::time::sleep_until(deadline) => break None,
                changed = changes.changed() => {
                    if changed.is_none() {
                        break None;
                    }
                    changes.take();
                }
                verdict = next_from_hub(hub) => match weigh(verdict, posted.secrets, true) {
                    Weighed::Decided(behavior, by) => {
                        tracing::info!(request_id = %posted.id, "a verdict came through the hub");
                        break Some((behavior, by));
                    }
                    Weighed::More => more_from_hub = true,
                    Weighed::Ignored(why) => {
                        tracing::warn!(request_id = %posted.id, "{why} (put in the hub)");
                    }
                },
            }
        };
        (outcome, shown_whole)
    }

    /// Shows the whole preview in the prompt ("See more" was pressed).
    async fn show_whole(&self, posted: &Posted<'_>) {
        let edit = json!({
            "chat_id": posted.chat, "message_id": posted.message_id,
            "text": posted.prompt.text(true, &posted.footer), "parse_mode": "HTML",
            "reply_markup": keyboard(posted.id, posted.secrets, false),
        });
        if let Err(err) = self.inner.api.edit(&edit).await {
            tracing::warn!(request_id = %posted.id, %err, "showing the whole preview");
        }
    }

    /// Records the outcome and shows it in the prompt on the phone (in place of the footer);
    /// returns its name for the log.
    async fn close(
        &self,
        posted: &Posted<'_>,
        outcome: Option<&(Behavior, String)>,
        shown_whole: bool,
        hub: Option<HubPrompt>,
    ) -> &'static str {
        let id = posted.id;
        let (line, settled) = match outcome {
            Some((Behavior::Allow, by)) => (
                format!("✅ <b>Allowed from the phone</b>{}", by_line(by)),
                "allowed",
            ),
            Some((Behavior::Deny, by)) => (format!("❌ <b>Denied</b>{}", by_line(by)), "denied"),
            None => (
                "⌛ <b>Answered elsewhere or expired</b>".to_owned(),
                "expired",
            ),
        };
        self.settle(id, settled).await;
        self.settle_in_hub(hub, settled).await;
        let edit = json!({
            "chat_id": posted.chat, "message_id": posted.message_id,
            "text": posted.prompt.text(shown_whole, &line), "parse_mode": "HTML",
        });
        // Short: at the end of a session this must not hold the exit up.
        match tokio::time::timeout(Duration::from_secs(5), self.inner.api.edit(&edit)).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                tracing::warn!(request_id = %id, %err, "showing the outcome on Telegram")
            }
            Err(_) => tracing::warn!(request_id = %id, "showing the outcome on Telegram timed out"),
        }
        settled
    }

    /// Records the outcome in the open request, so the poller says "already answered".
    async fn settle(&self, id: &str, outcome: &'static str) {
        let id = id.to_owned();
        let saved = self
            .blocking(move |inner| {
                let mut request = inner.open_request(&id).ok_or(())?;
                request.outcome = Some(outcome.to_owned());
                inner.save_request(&request).map_err(|_| ())
            })
            .await;
        if !matches!(saved, Some(Ok(()))) {
            tracing::warn!(outcome, "recording a permission request's outcome");
        }
    }

    /// Sends a prompt, retrying network and server errors a few times.
    async fn send_retrying(&self, body: &Value, cancel: &CancellationToken) -> Option<i64> {
        let mut failures = 0;
        loop {
            match self.inner.api.send_body(body).await {
                Ok(id) => return Some(id),
                Err(err @ (ApiError::Network(_) | ApiError::Server(..))) if failures < 4 => {
                    failures += 1;
                    tracing::info!(%err, "sending a permission request failed; retrying");
                    tokio::select! {
                        () = cancel.cancelled() => return None,
                        () = tokio::time::sleep(backoff(failures - 1)) => {}
                    }
                }
                Err(ApiError::RateLimited(wait)) if failures < 4 => {
                    failures += 1;
                    tokio::select! {
                        () = cancel.cancelled() => return None,
                        () = tokio::time::sleep(wait) => {}
                    }
                }
                Err(err) => {
                    tracing::warn!(%err, "a permission request could not be sent to Telegram");
                    return None;
                }
            }
        }
    }
}

fn by_line(by: &str) -> String {
    if by.is_empty() {
        String::new()
    } else {
        format!(" by {}", escape(by))
    }
}

/// The pending requests of this process, by id.
pub(super) type Pending = HashMap<String, Secrets>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_answers_follow_claude_codes_pattern() {
        assert_eq!(
            typed_answer("yes abcde"),
            Some((Behavior::Allow, "abcde".into()))
        );
        assert_eq!(
            typed_answer("  N  ABCDE "),
            Some((Behavior::Deny, "abcde".into()))
        );
        assert_eq!(
            typed_answer("y qwert"),
            Some((Behavior::Allow, "qwert".into()))
        );
        for no in [
            "yes abcdl",
            "yes abcd",
            "ok abcde",
            "yes abcde now",
            "yesabcde",
            "no",
        ] {
            assert_eq!(typed_answer(no), None, "{no}");
        }
    }

    #[test]
    fn callback_data_is_parsed_and_fits() {
        let s = secret();
        assert_eq!(s.len(), 32);
        let data = format!("pafghij{s}");
        assert!(data.len() <= 64);
        assert_eq!(parse_callback(&data), Some(('a', "fghij".into(), s)));
        assert_eq!(
            parse_callback("pmfghij"),
            Some(('m', "fghij".into(), String::new()))
        );
        assert_eq!(parse_callback("pxfghij"), None);
        assert_eq!(parse_callback("pafghil"), None);
        assert_eq!(parse_callback("x"), None);
    }

    #[test]
    fn the_prompt_escapes_and_cuts() {
        let req = PermissionRequest {
            request_id: "abcde".into(),
            tool_name: "Bash".into(),
            description: "run <rm>".into(),
            input_preview: "x&".repeat(400),
        };
        let p = Prompt::new(
            &req,
            &Asker {
                session: "alpha".into(),
                folder: "/w/a<b>".into(),
            },
        );
        assert!(p.cut);
        let short = p.text(false, "f");
        assert!(short.contains("/w/a&lt;b&gt;") && short.contains("run &lt;rm&gt;"));
        assert!(short.contains(&"x&amp;".repeat(150)));
        assert!(!short.contains(&"x&amp;".repeat(151)));
        assert!(p.text(true, "f").contains(&"x&amp;".repeat(400)));
    }
}
