//! The mail tools' arguments: hand-written input schemas (small, for the `tools/list` budget,
//! and saying exactly what the checks accept), and lenient parsing, so that a missing or
//! wrong argument gets the project's "Refused: …; use …" answer, not a deserializer's.

use std::sync::{Arc, LazyLock};

use rmcp::model::JsonObject;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use t9_ipc::message::Priority;

/// A JSON object literal as a tool's input schema.
pub fn schema(value: serde_json::Value) -> Arc<JsonObject> {
    match value {
        serde_json::Value::Object(map) => Arc::new(map),
        _ => unreachable!("schemas here are JSON object literals"),
    }
}

/// Parses a tool's arguments; a refusal names what was wrong and the accepted form `usage`.
pub fn parse<T: DeserializeOwned>(args: JsonObject, usage: &str) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::Object(args))
        .map_err(|err| format!("Refused: {err}; use {usage}."))
}

/// A required text argument: present and not blank.
pub fn required(value: Option<String>, name: &str, what: &str) -> Result<String, String> {
    match value {
        Some(v) if !v.trim().is_empty() => Ok(v),
        Some(_) => Err(format!("Refused: {name} is empty; give {what}.")),
        None => Err(format!("Refused: {name} is missing; give {what}.")),
    }
}

/// `priority` as given: normal when left out.
pub fn priority(value: Option<&str>) -> Result<Priority, String> {
    match value.map(str::trim) {
        None | Some("" | "normal") => Ok(Priority::Normal),
        Some("high") => Ok(Priority::High),
        Some("critical") => Ok(Priority::Critical),
        Some(other) => Err(format!(
            "Refused: priority {other:?} is unknown; use normal, high or critical."
        )),
    }
}

pub const SEND_USAGE: &str = "t9_ipc_send(to, subject, body?, priority?: normal|high|critical, \
reply_to?, ttl_s?, info_only?, supersedes?, files?)";
pub const BROADCAST_USAGE: &str =
    "t9_ipc_broadcast(subject, body?, priority?: normal|high|critical, ttl_s?, info_only?)";
pub const UNREAD_USAGE: &str = "t9_ipc_unread(mark_read?: true|false, limit?: 1 or more)";
pub const WAIT_USAGE: &str = "t9_ipc_wait(timeout_s?: 1-600, from?, reply_to?)";

/// `t9_ipc_send` and `t9_ipc_broadcast` (whose `to` is always `all`).
#[derive(Debug, Deserialize)]
pub struct SendArgs {
    #[serde(default)]
    pub to: Option<String>,
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default)]
    pub body: String,
    #[serde(default)]
    pub priority: Option<String>,
    #[serde(default)]
    pub reply_to: Option<String>,
    #[serde(default)]
    pub ttl_s: Option<u64>,
    #[serde(default)]
    pub info_only: Option<bool>,
    #[serde(default)]
    pub supersedes: Option<String>,
    /// To `human` only: paths of files sent to the user on Telegram.
    #[serde(default)]
    pub files: Vec<String>,
}

#[derive(Debug, Deserialize)]
pub struct WaitArgs {
    #[serde(default)]
    pub timeout_s: Option<u64>,
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub reply_to: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct UnreadArgs {
    #[serde(default)]
    pub mark_read: Option<bool>,
    #[serde(default)]
    pub limit: Option<u64>,
}

/// The fields a broadcast shares with a send.
fn message_fields() -> serde_json::Value {
    json!({
        "subject": {"type": "string", "description": "One line, at most 200 characters"},
        "body": {"type": "string", "description": "Markdown, at most 64 KiB"},
        "priority": {"enum": ["normal", "high", "critical"], "description": "critical also alerts the user"},
        "ttl_s": {"type": "integer", "minimum": 1, "maximum": 2_592_000, "description": "Seconds it matters; then archived unseen"},
        "info_only": {"type": "boolean", "description": "No reply wanted"}
    })
}

fn with(mut base: serde_json::Value, extra: serde_json::Value) -> serde_json::Value {
    if let (Some(b), serde_json::Value::Object(e)) = (base.as_object_mut(), extra) {
        b.extend(e);
    }
    base
}

pub static WHO_SCHEMA: LazyLock<Arc<JsonObject>> =
    LazyLock::new(|| schema(json!({"type": "object", "properties": {}})));

pub static SEND_SCHEMA: LazyLock<Arc<JsonObject>> = LazyLock::new(|| {
    let props = with(
        message_fields(),
        json!({
            "to": {"type": "string", "description": "A session name, \"all\", or \"human\" (the user)"},
            "reply_to": {"type": "string", "description": "msg_id this answers"},
            "supersedes": {"type": "string", "description": "msg_id of your earlier message this replaces"},
            "files": {"type": "array", "items": {"type": "string"}, "description": "To human only: file paths (each at most 50 MB) sent on Telegram"}
        }),
    );
    schema(json!({"type": "object", "properties": props, "required": ["to", "subject"]}))
});

pub static BROADCAST_SCHEMA: LazyLock<Arc<JsonObject>> = LazyLock::new(|| {
    schema(json!({"type": "object", "properties": message_fields(), "required": ["subject"]}))
});

pub static UNREAD_SCHEMA: LazyLock<Arc<JsonObject>> = LazyLock::new(|| {
    schema(json!({"type": "object", "properties": {
        "mark_read": {"type": "boolean", "description": "Default true; false only peeks"},
        "limit": {"type": "integer", "minimum": 1, "description": "At most this many messages"}
    }}))
});

pub static WAIT_SCHEMA: LazyLock<Arc<JsonObject>> = LazyLock::new(|| {
    schema(json!({"type": "object", "properties": {
        "timeout_s": {"type": "integer", "minimum": 1, "maximum": 600, "description": "Default 60"},
        "from": {"type": "string", "description": "Only from this session"},
        "reply_to": {"type": "string", "description": "Only a reply to this msg_id"}
    }}))
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_the_problem_and_the_accepted_form() {
        let obj = |v: serde_json::Value| v.as_object().cloned().unwrap();
        let err = parse::<WaitArgs>(obj(json!({"timeout_s": "soon"})), WAIT_USAGE).unwrap_err();
        assert!(err.starts_with("Refused: invalid type"), "{err}");
        assert!(err.ends_with("use t9_ipc_wait(timeout_s?: 1-600, from?, reply_to?)."));
        assert!(
            priority(Some("urgent"))
                .unwrap_err()
                .contains("normal, high or critical")
        );
        assert_eq!(priority(None).unwrap(), Priority::Normal);
        assert!(
            required(None, "subject", "one line")
                .unwrap_err()
                .contains("missing")
        );
    }
}
