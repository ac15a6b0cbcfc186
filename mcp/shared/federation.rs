//! The other machines' live sessions, as both `t9-ipc who` and the `t9_ipc_who` tool ask for
//! them and say them, and a rename's claim of its name across machines, when federation is
//! on.

use std::fmt::Write as _;
use std::time::Duration;

use chrono::{DateTime, Local};
use t9_ipc::federation::names::{self, Claim};
use t9_ipc::federation::presence::{self, Quiet, Remote};
use t9_ipc::federation::{Settings, hub};

use super::ago;

/// How long `who` waits for the hub.
const HUB_WAIT: Duration = Duration::from_secs(3);

/// What the hub said about the other machines.
pub struct Others {
    /// The hub's URL without credentials.
    pub hub: String,
    /// Their live sessions, by machine and name, or why the hub could not be asked.
    pub found: Result<Vec<Remote>, String>,
    /// The machines without a fresh word (gone quiet, or stopped), by name.
    pub quiet: Vec<Quiet>,
}

/// Asks the hub who is live elsewhere, waiting at most a few seconds, with the `settings` of
/// `Config::federation`, through `link` when the caller keeps one (a server) or a connection
/// of its own; `None` when `IPC_NATS_URL` is not set.
pub async fn others(
    settings: &Result<Option<Settings>, String>,
    link: Option<&hub::Link>,
) -> Option<Others> {
    let settings = match settings {
        Ok(Some(settings)) => settings,
        Ok(None) => return None,
        Err(err) => {
            return Some(Others {
                hub: "?".to_owned(),
                found: Err(err.clone()),
                quiet: Vec::new(),
            });
        }
    };
    let asked = async {
        match link {
            Some(link) => presence::others_on(link.get().await?, &settings.machine).await,
            None => presence::others(settings).await,
        }
    };
    let (found, quiet) = match tokio::time::timeout(HUB_WAIT, asked).await {
        Ok(Ok(elsewhere)) => (Ok(elsewhere.live), elsewhere.quiet),
        Ok(Err(err)) => (Err(err), Vec::new()),
        Err(_) => (Err(no_answer()), Vec::new()),
    };
    Some(Others {
        hub: hub::redact_url(&settings.url),
        found,
        quiet,
    })
}

/// [`others`] outside an async runtime (the command line).
pub fn others_blocking(settings: &Result<Option<Settings>, String>) -> Option<Others> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(others(settings, None)),
        Err(err) => Some(Others {
            hub: "?".to_owned(),
            found: Err(err.to_string()),
            quiet: Vec::new(),
        }),
    }
}

/// What the hub said to a rename's claim of a session name.
pub enum NameClaim {
    /// Nothing was asked: federation is off (names are local).
    Off,
    /// This machine holds the name now.
    Ours,
    /// Another machine (this one) holds it.
    Taken(String),
    /// The hub could not be asked (why).
    Unreachable(String),
}

/// Claims `name` for this machine in the hub before a rename takes it, waiting at most a
/// few seconds, with the `settings` of `Config::federation`.
pub async fn claim_name(settings: &Result<Option<Settings>, String>, name: &str) -> NameClaim {
    let settings = match settings {
        Ok(Some(settings)) => settings,
        Ok(None) => return NameClaim::Off,
        Err(err) => return NameClaim::Unreachable(err.clone()),
    };
    match tokio::time::timeout(HUB_WAIT, names::claim_now(settings, name)).await {
        Ok(Ok(Claim::Ours)) => NameClaim::Ours,
        Ok(Ok(Claim::Taken(machine))) => NameClaim::Taken(machine),
        Ok(Err(err)) => NameClaim::Unreachable(err),
        Err(_) => NameClaim::Unreachable(no_answer()),
    }
}

/// The refusal of a name another machine holds.
pub fn taken_elsewhere(name: &str, machine: &str) -> String {
    format!(
        "Refused: \"{name}\" is taken by a live session on machine {machine}; choose another \
         name (t9_ipc_who lists the names in use)."
    )
}

/// A line for `who` when this session's name `me` is live on another machine too (a name
/// taken at start, before the hub was asked): which machine holds it, and who should rename.
pub async fn same_name(
    settings: &Result<Option<Settings>, String>,
    others: &Others,
    me: &str,
) -> Option<String> {
    let Ok(Some(settings)) = settings else {
        return None;
    };
    let also: Vec<&str> = others
        .found
        .as_ref()
        .ok()?
        .iter()
        .filter(|r| r.name == me)
        .map(|r| r.machine.as_str())
        .collect();
    if also.is_empty() {
        return None;
    }
    let also = also.join(", ");
    let holder = tokio::time::timeout(HUB_WAIT, names::holder_now(settings, me))
        .await
        .ok()
        .and_then(Result::ok)
        .flatten();
    Some(match holder {
        Some(h) if h == settings.machine => format!(
            "Your name \"{me}\" is also live on machine {also}; this machine holds it, so \
             that session is asked to rename."
        ),
        Some(h) => format!(
            "Your name \"{me}\" is held by machine {h}, where a session of that name is live \
             too: mail to \"{me}\" reaches both. Choose another name with t9_ipc_set_name."
        ),
        None => format!(
            "Your name \"{me}\" is also live on machine {also}: mail to \"{me}\" reaches \
             both. Names must be unique across machines; one of you should rename \
             (t9_ipc_set_name)."
        ),
    })
}

fn no_answer() -> String {
    format!("the hub did not answer within {} s", HUB_WAIT.as_secs())
}

/// The sentence for other machines the hub could not tell about.
pub fn unreachable(err: &str) -> String {
    format!(
        "Other machines: unreachable ({err}). Mail to their sessions waits here and crosses \
         when the hub is back."
    )
}

/// The sentence for a hub that knows no live session elsewhere.
pub fn none_elsewhere(hub: &str) -> String {
    format!("No live session on other machines (hub {hub}).")
}

/// One line for each machine without a fresh word: when it was last heard from, and what
/// that means for mail to it. Empty when there is none.
pub fn quiet_lines(others: &Others, now: DateTime<Local>) -> String {
    let mut out = String::new();
    for q in &others.quiet {
        let when = format!(
            "since {} ({})",
            q.last.format("%Y-%m-%d %H:%M"),
            ago(Some(q.last), now)
        );
        let _ = if q.stopped {
            writeln!(
                out,
                "Machine {}: no t9-ipc running there {when}; mail to its sessions waits in \
                 the hub until one starts there.",
                q.machine
            )
        } else {
            writeln!(
                out,
                "Machine {}: not heard from {when}: unreachable, or stopped without a word; \
                 its sessions may be gone, and mail to them waits in the hub until it is back.",
                q.machine
            )
        };
    }
    out.trim_end().to_owned()
}

/// The other machines' sessions for the `t9_ipc_who` tool: one line each, with its machine,
/// then the machines without a fresh word.
pub fn lines(others: &Others, now: DateTime<Local>) -> String {
    let live = live_lines(others, now);
    match quiet_lines(others, now) {
        quiet if quiet.is_empty() => live,
        quiet => format!("{live}\n{quiet}"),
    }
}

fn live_lines(others: &Others, now: DateTime<Local>) -> String {
    let list = match &others.found {
        Ok(list) if list.is_empty() => return none_elsewhere(&others.hub),
        Ok(list) => list,
        Err(err) => return unreachable(err),
    };
    let mut out = format!(
        "{} on other machines (mail to them crosses):\n",
        t9_ipc::text::plural(list.len(), "live session")
    );
    for r in list {
        let _ = write!(
            out,
            "- {} · machine {} · pid {} · {} · seen {}",
            r.name,
            r.machine,
            r.pid,
            r.cwd.as_deref().unwrap_or("folder unknown"),
            ago(r.last_seen(), now),
        );
        if !r.working_on.is_empty() {
            let _ = write!(out, " · working on: {}", r.working_on);
        }
        out.push('\n');
    }
    out.trim_end().to_owned()
}
