//! The permission relay in the server: declares `claude/channel/permission` when Telegram
//! can authenticate who answers, takes Claude Code's `permission_request` notifications, and
//! sends the phone's verdict back, once, as `notifications/claude/channel/permission`.
//! The Telegram side (the prompt, the secrets, the verdict files) is in
//! `t9_ipc::telegram::permission`.

use rmcp::model::{CustomNotification, ExperimentalCapabilities, JsonObject, ServerNotification};
use rmcp::{Peer, RoleServer};
use serde_json::json;
use t9_ipc::config::Config;
use t9_ipc::session::Session;
use t9_ipc::telegram::{Asker, PermissionRequest, Telegram};
use tokio_util::sync::CancellationToken;

/// The capability that asks Claude Code to relay its tool-permission prompts.
pub const CAPABILITY: &str = "claude/channel/permission";
/// Claude Code → server: a tool-permission prompt is open.
pub const REQUEST_METHOD: &str = "notifications/claude/channel/permission_request";
/// Server → Claude Code: the answer.
pub const VERDICT_METHOD: &str = "notifications/claude/channel/permission";

/// Adds the capability when prompts can be relayed: Telegram configured with a chat, and at
/// least one Telegram user id named as allowed (`IPC_TG_ALLOW` or a pairing). Otherwise it
/// is left out (never declared as `false`).
pub fn declare(experimental: &mut ExperimentalCapabilities, telegram: Option<&Telegram>) {
    if telegram.is_some_and(Telegram::relays_permissions) {
        experimental.insert(CAPABILITY.to_owned(), JsonObject::new());
    }
}

/// Handles a custom notification from the client: a `permission_request` is relayed in the
/// background; anything else is logged and dropped.
pub fn on_notification(
    notification: CustomNotification,
    peer: Peer<RoleServer>,
    telegram: Option<&Telegram>,
    session: &Session,
    config: &Config,
    ending: &CancellationToken,
) {
    if notification.method != REQUEST_METHOD {
        tracing::debug!(method = %notification.method, "a notification this server does not take");
        return;
    }
    let Some(telegram) = telegram.filter(|t| t.relays_permissions()).cloned() else {
        tracing::warn!(
            "a permission request arrived, but prompts are not relayed here (no Telegram chat or no allowed user id)"
        );
        return;
    };
    let params = notification.params.unwrap_or_default();
    let request: PermissionRequest = match serde_json::from_value(params) {
        Ok(r) => r,
        Err(err) => {
            tracing::warn!(%err, "a permission request without a request_id; ignored");
            return;
        }
    };
    let asker = Asker {
        session: session.name(),
        folder: config.cwd.display().to_string(),
    };
    let cancel = ending.child_token();
    let tracker = telegram.clone();
    let task = tokio::spawn(async move {
        let id = request.request_id.clone();
        let Some(behavior) = telegram.ask(request, asker, cancel).await else {
            return;
        };
        let params = json!({"request_id": id, "behavior": behavior.as_str()});
        let verdict = CustomNotification::new(VERDICT_METHOD, Some(params));
        match peer
            .send_notification(ServerNotification::CustomNotification(verdict))
            .await
        {
            Ok(()) => {
                tracing::info!(request_id = %id, behavior = behavior.as_str(), "permission verdict sent to Claude Code")
            }
            Err(err) => tracing::warn!(request_id = %id, %err, "sending the permission verdict"),
        }
    });
    // Awaited at the end of the session, so an open prompt shows it expired.
    tracker.track(task);
}
