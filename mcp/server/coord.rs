//! The coordination tools: `t9_ipc_claim`, `t9_ipc_board`, `t9_ipc_search`. Their own
//! router (`T9::coord_router`), added to the server's; hand-written input schemas keep
//! `tools/list` small (the whole list has a budget of 6,000 characters).

use std::fmt::Write as _;
use std::sync::{Arc, LazyLock};

use chrono::{Local, TimeDelta};
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, JsonObject};
use rmcp::{ErrorData as McpError, tool, tool_router};
use serde::Deserialize;
use serde_json::json;
use t9_ipc::Error;
use t9_ipc::coord::board::Board;
use t9_ipc::coord::claims::{Claims, Holder, Request};
use t9_ipc::coord::search::{self, Query};
use t9_ipc::session::Session;
use t9_ipc::text::plural;

use super::args::{parse, schema};
use super::tools::T9;
use crate::shared::coord::{board_line, format_claims, format_found, header};

static CLAIM_SCHEMA: LazyLock<Arc<JsonObject>> = LazyLock::new(|| {
    schema(json!({"type": "object", "properties": {
        "action": {"enum": ["claim", "release", "list"]},
        "paths": {"type": "array", "items": {"type": "string"}, "description": "Globs, relative to your folder"},
        "shared": {"type": "boolean"},
        "ttl_s": {"type": "integer", "minimum": 1, "maximum": 28_800, "description": "Default 1800"},
        "note": {"type": "string"}
    }, "required": ["action"]}))
});

static BOARD_SCHEMA: LazyLock<Arc<JsonObject>> = LazyLock::new(|| {
    schema(json!({"type": "object", "properties": {
        "action": {"enum": ["set", "get", "list"]},
        "key": {"type": "string"},
        "value": {"type": "string"},
        "expect": {"type": "integer", "minimum": 0, "description": "Version you read; refused if it changed"}
    }, "required": ["action"]}))
});

static SEARCH_SCHEMA: LazyLock<Arc<JsonObject>> = LazyLock::new(|| {
    schema(json!({"type": "object", "properties": {
        "words": {"type": "string"},
        "with": {"type": "string", "description": "Session name"},
        "thread": {"type": "string", "description": "A msg_id"},
        "limit": {"type": "integer", "minimum": 1, "maximum": 100}
    }}))
});

#[derive(Debug, Deserialize)]
pub struct ClaimArgs {
    action: String,
    #[serde(default)]
    paths: Vec<String>,
    #[serde(default)]
    shared: bool,
    #[serde(default)]
    ttl_s: Option<u64>,
    #[serde(default)]
    note: String,
}

#[derive(Debug, Deserialize)]
pub struct BoardArgs {
    action: String,
    #[serde(default)]
    key: String,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    expect: Option<u64>,
}

#[derive(Debug, Deserialize)]
pub struct SearchArgs {
    #[serde(default)]
    words: String,
    #[serde(default)]
    with: Option<String>,
    #[serde(default)]
    thread: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
}

#[tool_router(router = coord_router, vis = "pub(crate)")]
impl T9 {
    #[tool(
        name = "t9_ipc_claim",
        description = "Claim files (exclusive unless shared), or release or list claims. Use \
before editing files other sessions may touch.",
        input_schema = CLAIM_SCHEMA.clone()
    )]
    async fn claim(
        &self,
        Parameters(args): Parameters<JsonObject>,
    ) -> Result<CallToolResult, McpError> {
        let args: ClaimArgs = match parse(
            args,
            "t9_ipc_claim(action: claim|release|list, paths?, shared?, ttl_s?: 1-28800, note?)",
        ) {
            Ok(args) => args,
            Err(text) => return Ok(CallToolResult::error(vec![ContentBlock::text(text)])),
        };
        let cwd = self.config.cwd.clone();
        run(self.session.clone(), move |s| {
            let now = Local::now();
            let claims = Claims::new(s.mailbox().root());
            let name = s.name();
            let holder = Holder {
                name: &name,
                pid: s.pid(),
                cwd: &cwd,
            };
            match args.action.as_str() {
                "claim" => {
                    let ttl = args.ttl_s.map(|t| {
                        i64::try_from(t)
                            .ok()
                            .and_then(TimeDelta::try_seconds)
                            .unwrap_or(TimeDelta::MAX)
                    });
                    let req = Request {
                        paths: &args.paths,
                        shared: args.shared,
                        ttl,
                        note: &args.note,
                    };
                    let granted = claims.claim(&holder, &req, now)?;
                    let c = &granted.claim;
                    let mut out = format!(
                        "Claimed {} until {}: {}. Release with t9_ipc_claim(action: \"release\") \
                         when done.",
                        c.mode,
                        c.expires_at().map_or_else(
                            || c.expires.clone(),
                            |t| t.format("%H:%M:%S").to_string()
                        ),
                        c.paths.join(", ")
                    );
                    for other in &granted.overlapping {
                        let _ = write!(out, "\nAlso claimed: {}", other.describe());
                    }
                    Ok(out)
                }
                "release" => {
                    let ended = claims.release(&holder, &args.paths, now)?;
                    Ok(if ended.is_empty() {
                        "No claim of yours matched; nothing released.".to_owned()
                    } else {
                        let paths: Vec<String> =
                            ended.iter().flat_map(|c| c.paths.clone()).collect();
                        format!(
                            "Released {}: {}.",
                            plural(ended.len(), "claim"),
                            paths.join(", ")
                        )
                    })
                }
                "list" => Ok(format_claims(&claims.live(now)?, s.pid())),
                other => Err(Error::Refused(format!(
                    "action {other:?} is unknown; use claim, release or list"
                ))),
            }
        })
        .await
    }

    #[tool(
        name = "t9_ipc_board",
        description = "Values all sessions share (\"build: red\"): set, get or list, with who \
and when. Use to publish or check shared state.",
        input_schema = BOARD_SCHEMA.clone()
    )]
    async fn board(
        &self,
        Parameters(args): Parameters<JsonObject>,
    ) -> Result<CallToolResult, McpError> {
        let args: BoardArgs = match parse(
            args,
            "t9_ipc_board(action: set|get|list, key?, value?, expect?)",
        ) {
            Ok(args) => args,
            Err(text) => return Ok(CallToolResult::error(vec![ContentBlock::text(text)])),
        };
        run(self.session.clone(), move |s| {
            let board = Board::new(s.mailbox().root());
            match args.action.as_str() {
                "set" => {
                    let Some(value) = args.value else {
                        return Err(Error::Refused(
                            "set needs a value (at most 4096 bytes)".to_owned(),
                        ));
                    };
                    let e = board.set(&args.key, &value, args.expect, &s.name(), Local::now())?;
                    Ok(format!(
                        "Set \"{}\" (version {}). To change it safely later, pass expect: {}.",
                        e.key, e.version, e.version
                    ))
                }
                "get" => Ok(match board.get(&args.key)? {
                    Some(e) => format!("{}\n{}", header(&e), e.value),
                    None => format!("No value under \"{}\" (version 0).", args.key),
                }),
                "list" => {
                    let all = board.list()?;
                    if all.is_empty() {
                        return Ok("The board is empty.".to_owned());
                    }
                    let mut out = String::new();
                    for e in &all {
                        let _ = writeln!(out, "{}", board_line(e));
                    }
                    Ok(out.trim_end().to_owned())
                }
                other => Err(Error::Refused(format!(
                    "action {other:?} is unknown; use set, get or list"
                ))),
            }
        })
        .await
    }

    #[tool(
        name = "t9_ipc_search",
        description = "Search your mail (inbox and archive), newest first; sent mail shows \
pushed/read/answered. Use to find a message or check a receipt.",
        input_schema = SEARCH_SCHEMA.clone()
    )]
    async fn search(
        &self,
        Parameters(args): Parameters<JsonObject>,
    ) -> Result<CallToolResult, McpError> {
        let args: SearchArgs =
            match parse(args, "t9_ipc_search(words?, with?, thread?, limit?: 1-100)") {
                Ok(args) => args,
                Err(text) => return Ok(CallToolResult::error(vec![ContentBlock::text(text)])),
            };
        run(self.session.clone(), move |s| {
            let clean =
                |v: Option<String>| v.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
            if args.limit == Some(0) {
                return Err(Error::Refused(
                    "limit must be 1 to 100, or left out for the default".to_owned(),
                ));
            }
            let query = Query {
                words: vec![args.words],
                with: clean(args.with),
                thread: clean(args.thread),
                limit: args.limit.unwrap_or(0),
            };
            let found = search::search(s.mailbox(), &s.name(), &query, Local::now())?;
            Ok(format_found(&found))
        })
        .await
    }
}

/// Runs blocking coordination work off the async threads; a refusal or a failure becomes an
/// error result the model can read.
async fn run(
    session: Arc<Session>,
    work: impl FnOnce(&Session) -> Result<String, Error> + Send + 'static,
) -> Result<CallToolResult, McpError> {
    let text = match tokio::task::spawn_blocking(move || work(&session)).await {
        Ok(Ok(text)) => return Ok(CallToolResult::success(vec![ContentBlock::text(text)])),
        Ok(Err(Error::Io { op, path, source })) => {
            tracing::warn!(%op, path = %path.display(), %source, "tool failed");
            format!(
                "Failed: {op} {}: {source}. Nothing was changed; tell the user.",
                path.display()
            )
        }
        Ok(Err(err)) => format!("Refused: {err}."),
        Err(err) => format!("Failed: internal error ({err}). Try again."),
    };
    Ok(CallToolResult::error(vec![ContentBlock::text(text)]))
}
