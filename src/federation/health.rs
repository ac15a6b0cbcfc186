//! What `t9-ipc doctor` says about the federation: the settings, this machine's key, the
//! keys pinned for others, messages kept aside, whether a bridge runs, and the hub (the
//! connection, the stream, this machine's consumer and name claim, the claims of its
//! sessions' names). Reads only; changes nothing here or in the hub.

use std::path::Path;
use std::time::Duration;

use async_nats::jetstream;

use super::keys::Pins;
use super::marks::MARKS_STREAM;
use super::{Paths, STREAM, Settings, election, hub, store, wire};

/// How long the hub may take to answer all of doctor's questions.
const HUB_TIMEOUT: Duration = Duration::from_secs(5);

/// How serious a finding is; the binary maps these onto its own report lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Ok,
    Info,
    Warn,
    Problem,
}

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Finding {
    pub level: Level,
    pub text: String,
}

fn finding(level: Level, text: impl Into<String>) -> Finding {
    Finding {
        level,
        text: text.into(),
    }
}

/// Checks the federation of the mailbox at `data_dir`, with the `settings` of
/// [`crate::config::Config::federation`]. Blocks for at most a few seconds (the hub's
/// answers); runs its own small async runtime, so call it outside one.
pub fn check(data_dir: &Path, settings: &Result<Option<Settings>, String>) -> Vec<Finding> {
    let settings = match settings {
        Ok(Some(settings)) => settings,
        Ok(None) => {
            return vec![finding(
                Level::Info,
                "off: this mailbox stays on this machine (set IPC_NATS_URL to join other \
                 machines; docs/FEDERATION.md)",
            )];
        }
        Err(err) => return vec![finding(Level::Problem, err.clone())],
    };
    let paths = Paths::new(data_dir);
    let mut out = vec![finding(
        Level::Info,
        format!(
            "machine {}, hub {}",
            settings.machine,
            hub::redact_url(&settings.url)
        ),
    )];
    let key = local(&paths, &mut out);
    let live: Vec<String> = crate::heartbeat::Heartbeats::new(data_dir)
        .live(chrono::Local::now())
        .into_keys()
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    match runtime {
        Ok(runtime) => {
            let hub = runtime.block_on(async {
                tokio::time::timeout(HUB_TIMEOUT, at_hub(settings, key.as_deref(), &live)).await
            });
            match hub {
                Ok(found) => out.extend(found),
                Err(_) => out.push(finding(
                    Level::Problem,
                    format!(
                        "the hub did not answer within {} s; check IPC_NATS_URL and the network",
                        HUB_TIMEOUT.as_secs()
                    ),
                )),
            }
        }
        Err(err) => out.push(finding(Level::Warn, format!("hub not checked: {err}"))),
    }
    out
}

/// The files of `<data>/federation/`; returns this machine's public key (hex), if any.
fn local(paths: &Paths, out: &mut Vec<Finding>) -> Option<String> {
    if !paths.dir.is_dir() {
        out.push(finding(
            Level::Warn,
            format!(
                "no bridge has run for this mailbox yet ({} is missing): mail crosses only \
                 while a session with IPC_NATS_URL set, or `t9-ipc relay`, runs",
                paths.dir.display()
            ),
        ));
        return None;
    }
    let key_path = paths.key();
    let key = if !key_path.exists() {
        out.push(finding(
            Level::Info,
            "no machine key yet: the bridge makes one when it first starts",
        ));
        None
    } else if !store::is_private(&key_path) {
        out.push(finding(
            Level::Problem,
            format!(
                "{} is readable by others: anyone who reads it can sign mail as this machine; \
                 `chmod 600 {}`",
                key_path.display(),
                key_path.display()
            ),
        ));
        None
    } else {
        match super::keys::MachineKey::load_or_create(&key_path) {
            Ok(key) => {
                let hex = wire::hex(key.public().as_bytes());
                out.push(finding(Level::Ok, format!("machine key {hex}")));
                Some(hex)
            }
            Err(err) => {
                out.push(finding(Level::Problem, err.to_string()));
                None
            }
        }
    };
    if paths.known_machines().exists() {
        match Pins::load(&paths.known_machines()) {
            Ok(pins) if !pins.all().is_empty() => {
                let names: Vec<&str> = pins.all().keys().map(String::as_str).collect();
                out.push(finding(
                    Level::Info,
                    format!("keys pinned for: {}", names.join(", ")),
                ));
            }
            Ok(_) => {}
            Err(err) => out.push(finding(Level::Problem, err.to_string())),
        }
    }
    match store::quarantined(&paths.quarantine()) {
        Ok(held) => {
            for held in held {
                out.push(finding(Level::Problem, kept_aside(&held)));
            }
        }
        Err(err) => out.push(finding(Level::Warn, err.to_string())),
    }
    match election::try_lead(&paths.bridge_lock()) {
        // Taken and dropped at once: nobody was holding it.
        Ok(Some(_)) => out.push(finding(
            Level::Warn,
            "no bridge runs for this mailbox: mail crosses only while a session with \
             IPC_NATS_URL set, or `t9-ipc relay`, runs",
        )),
        Ok(None) => out.push(finding(Level::Ok, "a bridge runs for this mailbox")),
        Err(err) => out.push(finding(Level::Warn, err.to_string())),
    }
    key
}

/// One kept-aside message, with what to do about it.
fn kept_aside(held: &store::Held) -> String {
    let why = held
        .why
        .lines()
        .find_map(|l| l.strip_prefix("refused: "))
        .unwrap_or("refused");
    let todo = match held.why.find("t9-ipc relay --trust") {
        Some(at) => format!(
            "if that machine really made a new key, run `{}`",
            held.why[at..].lines().next().unwrap_or_default().trim()
        ),
        None => "it did not come from where it claims; look at it, then move it away".to_owned(),
    };
    let why = why.split(": pinned").next().unwrap_or(why);
    format!(
        "kept aside, not delivered: {} ({why}); {todo}",
        held.path.display()
    )
}

/// The hub's side: reachable, the stream, this machine's consumer and name claim, and the
/// claims of the names of its `live` sessions.
async fn at_hub(settings: &Settings, key: Option<&str>, live: &[String]) -> Vec<Finding> {
    let mut out = Vec::new();
    let client = match hub::options(settings).await {
        Ok(options) => match options.connect(settings.url.as_str()).await {
            Ok(client) => client,
            Err(err) => {
                out.push(finding(
                    Level::Problem,
                    format!("cannot reach the hub: {err}; crossing mail waits until it can"),
                ));
                return out;
            }
        },
        Err(err) => {
            out.push(finding(Level::Problem, err.to_string()));
            return out;
        }
    };
    out.push(finding(Level::Ok, "connected to the hub"));
    let js = jetstream::new(client);
    match stream(&js, STREAM).await {
        Ok(messages) => out.push(messages),
        Err(err) => {
            out.push(finding(
                Level::Warn,
                format!("{err}; the first bridge to start creates it"),
            ));
            return out;
        }
    }
    out.push(consumer(&js, STREAM, &settings.machine).await);
    // The read marks' stream comes with a bridge of this version.
    match stream(&js, MARKS_STREAM).await {
        Ok(marks) => {
            out.push(marks);
            out.push(consumer(&js, MARKS_STREAM, &settings.machine).await);
        }
        Err(err) => out.push(finding(
            Level::Info,
            format!("{err}; a bridge creates it when it starts"),
        )),
    }
    out.push(name_claim(&js, &settings.machine, key).await);
    out.extend(session_names(&js, &settings.machine, live).await);
    out.extend(clocks(&js).await);
    out.extend(telegram_poller(&js).await);
    out
}

/// Which machine reads the Telegram replies for the federation (the poller's lease), when
/// Telegram ever ran across machines here.
async fn telegram_poller(js: &jetstream::Context) -> Option<Finding> {
    use super::claims::{LEASES_BUCKET, POLLER_KEY};
    let bucket = js.get_key_value(LEASES_BUCKET).await.ok()?;
    Some(match bucket.get(POLLER_KEY).await {
        Ok(Some(holder)) => {
            let holder = String::from_utf8_lossy(&holder).into_owned();
            let mut words = holder.split(' ');
            let (machine, pid) = (words.next().unwrap_or("?"), words.next().unwrap_or("?"));
            finding(
                Level::Ok,
                format!("Telegram replies are read by machine {machine} (pid {pid})"),
            )
        }
        Ok(None) => finding(
            Level::Info,
            "no machine reads Telegram replies now (none with IPC_TG_TOKEN runs a server)",
        ),
        Err(err) => finding(Level::Warn, format!("{LEASES_BUCKET}: {err}")),
    })
}

/// Clocks further apart than this make `created`, expiry and liveness across machines
/// misleading: a warning.
const SKEW_WARN: chrono::TimeDelta = chrono::TimeDelta::seconds(2);
/// Past this, a live session of that machine can look dead here (or a dead one live).
const SKEW_PROBLEM: chrono::TimeDelta = chrono::TimeDelta::seconds(30);

/// How far each machine's clock is from the hub's: each presence entry carries the time its
/// bridge put it by its own clock, and the hub stamps the put with its own (the network's
/// delay, milliseconds, is within the figure). One finding per machine seen.
async fn clocks(js: &jetstream::Context) -> Vec<Finding> {
    let Ok(bucket) = js.get_key_value(super::presence::BUCKET).await else {
        return vec![finding(
            Level::Info,
            "clocks: no presence yet (the bridges put it), so not compared",
        )];
    };
    let mut skews: std::collections::BTreeMap<String, chrono::TimeDelta> = Default::default();
    let Ok(mut keys) = bucket.keys().await else {
        return Vec::new();
    };
    while let Some(Ok(key)) = futures_util::StreamExt::next(&mut keys).await {
        let Ok(Some(entry)) = bucket.entry(&key).await else {
            continue;
        };
        let Ok(remote) = serde_json::from_slice::<super::presence::Remote>(&entry.value) else {
            continue;
        };
        let Some(put_at) = remote
            .put_at
            .as_deref()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        else {
            continue;
        };
        let hub = chrono::DateTime::from_timestamp_nanos(
            i64::try_from(entry.created.unix_timestamp_nanos()).unwrap_or(i64::MAX),
        );
        let skew = put_at.with_timezone(&chrono::Utc) - hub;
        let worst = skews.entry(remote.machine).or_default();
        if skew.abs() > worst.abs() {
            *worst = skew;
        }
    }
    skews
        .into_iter()
        .map(|(machine, skew)| clock_finding(&machine, skew))
        .collect()
}

/// What `skew` (this machine's clock minus the hub's) means for `machine`.
fn clock_finding(machine: &str, skew: chrono::TimeDelta) -> Finding {
    let how = match skew.num_milliseconds() {
        0 => "within a millisecond of the hub's".to_owned(),
        ms if ms > 0 => format!("{ms} ms ahead of the hub's"),
        ms => format!("{} ms behind the hub's", -ms),
    };
    let level = match skew.abs() {
        s if s > SKEW_PROBLEM => Level::Problem,
        s if s > SKEW_WARN => Level::Warn,
        _ => Level::Ok,
    };
    let advice = if level == Level::Ok {
        ""
    } else {
        "; set its clock by NTP (times in messages, expiry and who is live compare clocks)"
    };
    finding(level, format!("the clock of {machine} is {how}{advice}"))
}

/// This machine's durable consumer: how much it has to take.
async fn consumer(js: &jetstream::Context, stream: &str, machine: &str) -> Finding {
    let name = hub::consumer_name(machine);
    match js.get_stream(stream).await {
        Ok(handle) => match handle.consumer_info(&name).await {
            Ok(info) => finding(
                Level::Ok,
                format!(
                    "consumer {name} of {stream}: {} to take, {} taken and not yet acknowledged",
                    count(info.num_pending as usize, "message"),
                    info.num_ack_pending
                ),
            ),
            Err(err) => finding(
                Level::Info,
                format!("consumer {name} of {stream}: {err}; this machine's bridge creates it"),
            ),
        },
        Err(err) => finding(Level::Warn, format!("stream {stream}: {err}")),
    }
}

/// What stream `name` holds; an error when it is not there (or the hub does not say).
async fn stream(js: &jetstream::Context, name: &str) -> Result<Finding, String> {
    let mut handle = js
        .get_stream(name)
        .await
        .map_err(|e| format!("stream {name}: {e}"))?;
    Ok(match handle.info().await {
        Ok(info) => finding(
            Level::Ok,
            format!(
                "stream {name}: {} kept, {}",
                count(info.state.messages as usize, "message"),
                count(info.state.consumer_count, "consumer")
            ),
        ),
        Err(err) => finding(Level::Warn, format!("stream {name}: {err}")),
    })
}

/// Whether this mailbox holds its machine name in the hub.
async fn name_claim(js: &jetstream::Context, machine: &str, key: Option<&str>) -> Finding {
    match js.get_key_value(hub::MACHINES_BUCKET).await {
        Ok(bucket) => match (bucket.get(machine).await, key) {
            (Ok(Some(held)), Some(key)) if held.as_ref() == key.as_bytes() => finding(
                Level::Ok,
                format!("the name {} is claimed by this mailbox", machine),
            ),
            (Ok(Some(held)), _) => finding(
                Level::Problem,
                format!(
                    "the name {} is held by another mailbox (key {}): this one's bridge does \
                     not start; give it its own IPC_MACHINE, or, if this machine was \
                     reinstalled and that mailbox is gone, take the name back with: \
                     t9-ipc relay --reclaim",
                    machine,
                    String::from_utf8_lossy(&held)
                ),
            ),
            (Ok(None), _) => finding(
                Level::Info,
                format!(
                    "the name {} is not claimed yet; the bridge claims it",
                    machine
                ),
            ),
            (Err(err), _) => finding(Level::Warn, format!("{}: {err}", hub::MACHINES_BUCKET)),
        },
        Err(err) => finding(
            Level::Info,
            format!(
                "{}: {err}; the first bridge creates it",
                hub::MACHINES_BUCKET
            ),
        ),
    }
}

/// Whether another machine holds the name of a session live here (one that started under
/// it while the other machine had it): a problem each, since mail to it reaches both.
async fn session_names(js: &jetstream::Context, machine: &str, live: &[String]) -> Vec<Finding> {
    if live.is_empty() {
        return Vec::new();
    }
    match super::names::held_elsewhere(js, machine, live).await {
        Ok(clashes) if clashes.is_empty() => vec![finding(
            Level::Ok,
            format!(
                "session names: {} here, none held by another machine",
                count(live.len(), "live session")
            ),
        )],
        Ok(clashes) => clashes
            .iter()
            .map(|(name, holder)| {
                finding(Level::Problem, super::names::clash(name, machine, holder))
            })
            .collect(),
        Err(err) => vec![finding(Level::Warn, err)],
    }
}

/// "1 message", "2 messages".
fn count(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;

    #[test]
    fn clocks_apart_warn_then_are_a_problem() {
        let at = |ms| clock_finding("vm", TimeDelta::milliseconds(ms));
        let ok = at(-3);
        assert_eq!(ok.level, Level::Ok);
        assert_eq!(ok.text, "the clock of vm is 3 ms behind the hub's");
        assert_eq!(
            at(0).text,
            "the clock of vm is within a millisecond of the hub's"
        );
        let warn = at(3_000);
        assert_eq!(warn.level, Level::Warn);
        assert!(
            warn.text
                .starts_with("the clock of vm is 3000 ms ahead of the hub's; set")
        );
        assert_eq!(at(-45_000).level, Level::Problem);
    }
}
