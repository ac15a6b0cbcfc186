//! Text of the coordination results (claims, board values, search hits), shown alike by the
//! tools (`server::coord`) and the commands (`t9-ipc claims|board|search`).

use std::fmt::Write as _;

use t9_ipc::coord::board::Entry;
use t9_ipc::coord::claims::Claim;
use t9_ipc::coord::search::{self, Found};
use t9_ipc::text::{Boundary, plural};

/// Body bytes a search result shows at most; the bodies of further hits are not shown (the
/// result says so).
const SEARCH_BODY_BYTES: usize = 16 * 1024;

pub fn header(e: &Entry) -> String {
    format!(
        "{} (version {}, by \"{}\" at {})",
        e.key,
        e.version,
        e.by,
        e.at_time().map_or_else(
            || e.at.clone(),
            |t| t.format("%Y-%m-%d %H:%M:%S").to_string()
        )
    )
}

/// One board entry on one line: key, version, writer, time, and the value when short.
pub fn board_line(e: &Entry) -> String {
    format!("{}: {}", header(e), short(&e.value))
}

/// A value on one line when it is short; otherwise its size, saying how to read it.
fn short(value: &str) -> String {
    if value.len() <= 120 && !value.trim_end().contains('\n') {
        value.trim_end().to_owned()
    } else {
        format!("({} bytes; action get shows it)", value.len())
    }
}

/// Claims as `t9_ipc_claim(action: "list")` and `t9-ipc claims` show them.
pub fn format_claims(claims: &[Claim], me: u32) -> String {
    if claims.is_empty() {
        return "No live claims.".to_owned();
    }
    let mut out = format!("{}:\n", plural(claims.len(), "live claim"));
    for c in claims {
        let _ = writeln!(
            out,
            "- {}{}",
            c.describe(),
            if c.pid == me { " (you)" } else { "" }
        );
    }
    out.trim_end().to_owned()
}

/// Search hits for the model: what the result holds first, then each hit opened by a line
/// with a boundary drawn for this result, its header, the receipts of sent mail, then its
/// body while bodies fit in [`SEARCH_BODY_BYTES`].
pub fn format_found(found: &Found) -> String {
    if found.hits.is_empty() {
        return "No message matches.".to_owned();
    }
    let n = found.hits.len();
    let mut budget = SEARCH_BODY_BYTES;
    let shown: Vec<bool> = found
        .hits
        .iter()
        .map(|hit| {
            let fits = hit.message.body.len() <= budget;
            if fits {
                budget -= hit.message.body.len();
            }
            fits
        })
        .collect();
    let unshown = shown.iter().filter(|s| !**s).count();
    let mut out = format!("{} (newest first).\n", plural(n, "message"));
    if unshown > 0 {
        let _ = writeln!(
            out,
            "{unshown} bod{} not shown to keep this short: narrow the search (more words, \
             limit: 1) to read {}.",
            if unshown == 1 { "y" } else { "ies" },
            if unshown == 1 { "it" } else { "them" }
        );
    }
    if found.more > 0 {
        let _ = writeln!(
            out,
            "{} older match{} not listed: narrow the search or raise limit (at most {}).",
            found.more,
            if found.more == 1 { "" } else { "es" },
            search::MAX_LIMIT
        );
    }
    let boundary = Boundary::new();
    out.push_str(&boundary.preamble(n));
    for (k, (hit, body)) in found.hits.iter().zip(shown).enumerate() {
        let m = &hit.message;
        let f = &m.front;
        let _ = write!(
            out,
            "\n\n{}\nmsg_id: {}{}\n{} · from {} · to {} · subject: {}\n",
            boundary.open(k + 1, n),
            m.id,
            if hit.archived { " (archived)" } else { "" },
            f.created,
            f.from,
            f.to,
            f.subject
        );
        if let Some(r) = &f.reply_to {
            let _ = writeln!(out, "reply_to: {r}");
        }
        for r in &hit.receipts {
            let _ = writeln!(out, "receipt: {}: {}", r.to, r.describe());
        }
        if body {
            out.push('\n');
            out.push_str(m.body.trim_end());
        } else {
            let _ = write!(out, "(body of {} bytes not shown)", m.body.len());
        }
    }
    out.trim_end().to_owned()
}
