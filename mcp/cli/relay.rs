//! `t9-ipc relay`: runs this mailbox's federation bridge alone (a machine with no session,
//! or under systemd) until SIGTERM or SIGINT. It takes part in the same election as every
//! other bridge of the mailbox: while another process holds `bridge.lock`, it waits and
//! takes over the moment that process ends.

use anyhow::{Context as _, bail};
use clap::Args;
use t9_ipc::config::Config;
use t9_ipc::federation::hub::MachineName;
use t9_ipc::federation::keys::Pins;
use t9_ipc::federation::{self, Paths, store, wire};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use super::UsageError;

/// `t9-ipc relay`.
#[derive(Debug, Args)]
#[command(after_help = "Environment:
  IPC_NATS_URL    the NATS server (nats://host:4222, tls://host:4222; user:password@ allowed)
  IPC_NATS_CREDS  a NATS .creds file
  IPC_MACHINE     this machine's name (default: the host name)

Example, trusting the new key of a machine that was reinstalled:
  t9-ipc relay --trust buildbox 3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29
and, on the reinstalled machine itself, taking its name back in the hub:
  t9-ipc relay --reclaim")]
pub struct RelayArgs {
    /// Pin KEY (hex) for MACHINE, replacing the key pinned before, deliver what MACHINE sent
    /// signed by KEY that was kept aside, and exit. Do this only when you know that machine
    /// made a new key.
    #[arg(long, num_args = 2, value_names = ["MACHINE", "KEY"])]
    pub trust: Option<Vec<String>>,
    /// Take this machine's name (IPC_MACHINE) over in the hub for this mailbox, after
    /// asking, when another mailbox holds it (this machine was reinstalled and made a new
    /// key), and exit.
    #[arg(long, conflicts_with = "trust")]
    pub reclaim: bool,
    /// With --reclaim: do not ask.
    #[arg(long, requires = "reclaim")]
    pub yes: bool,
}

pub async fn run(args: RelayArgs, config: &Config) -> anyhow::Result<()> {
    let paths = Paths::new(&config.data_dir);
    paths
        .create()
        .with_context(|| format!("creating {}", paths.dir.display()))?;
    if let Some(trust) = args.trust {
        return trust_key(&paths, &config.data_dir, &trust);
    }
    let Some(settings) = config.federation.clone().map_err(anyhow::Error::msg)? else {
        return Err(UsageError(
            "IPC_NATS_URL is not set; set it to the NATS server of your machines \
             (e.g. nats://hub.example:4222)"
                .to_owned(),
        )
        .into());
    };
    if args.reclaim {
        return reclaim(&settings, &paths, args.yes).await;
    }

    let cancel = CancellationToken::new();
    let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    let stop = cancel.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("relay: stopping");
        stop.cancel();
    });

    federation::run_elected(settings, &config.data_dir, cancel)
        .await
        .context("the federation bridge stopped")
}

/// `--trust MACHINE KEY`.
fn trust_key(paths: &Paths, data_dir: &std::path::Path, trust: &[String]) -> anyhow::Result<()> {
    let [machine, key] = trust else {
        bail!("--trust takes a machine name and a key");
    };
    federation::check_machine(machine).map_err(|e| UsageError(format!("--trust: {e}")))?;
    let key = wire::key_from_hex(key)
        .ok_or_else(|| UsageError("--trust: KEY is 64 hex digits (an Ed25519 key)".to_owned()))?;
    let mut pins = Pins::load(&paths.known_machines())?;
    let before = pins.get(machine).map(|k| wire::hex(k.as_bytes()));
    pins.trust(machine, &key)?;
    match before {
        Some(old) => println!(
            "{machine}: trusted {} (was {old})",
            wire::hex(key.as_bytes())
        ),
        None => println!("{machine}: trusted {}", wire::hex(key.as_bytes())),
    }
    let mailbox = t9_ipc::mailbox::Mailbox::open(data_dir)?;
    let released = store::release(paths, &mailbox, machine, &key)?;
    println!(
        "{} kept aside from {machine} with this key, now delivered; new ones from {machine} \
         are delivered. Anything else kept aside stays in {}.",
        t9_ipc::text::plural(released.len(), "message"),
        paths.quarantine().display()
    );
    Ok(())
}

/// `--reclaim`: takes this machine's name over in the hub, after asking unless `yes`.
async fn reclaim(settings: &federation::Settings, paths: &Paths, yes: bool) -> anyhow::Result<()> {
    use std::io::{BufRead as _, IsTerminal as _, Write as _};
    let key = t9_ipc::federation::keys::MachineKey::load_or_create(&paths.key())?;
    let wait = std::time::Duration::from_secs(10);
    let name = tokio::time::timeout(wait, MachineName::look(settings, &key))
        .await
        .map_err(|_| anyhow::anyhow!("the hub did not answer within {} s", wait.as_secs()))?
        .map_err(anyhow::Error::msg)?;
    let machine = &name.machine;
    if name.is_ours() {
        println!(
            "{machine} is already this mailbox's name in the hub (key {}). Nothing to do.",
            name.ours
        );
        return Ok(());
    }
    if let Some((other, _)) = &name.held {
        println!(
            "The machine name {machine} is held in the hub by another mailbox (key {other}).\n\
             This mailbox's key is {}.\n\
             Take the name over only if that mailbox is gone for good (this machine was \
             reinstalled, or its data folder replaced). If it still runs, give this one its own \
             name with IPC_MACHINE instead.",
            name.ours
        );
        if !yes {
            if !std::io::stdin().is_terminal() {
                return Err(UsageError(
                    "--reclaim asks before it takes a name over: run it in a terminal, or add --yes"
                        .to_owned(),
                )
                .into());
            }
            print!("Take over {machine}? [y/N] ");
            std::io::stdout().flush()?;
            let mut answer = String::new();
            std::io::stdin().lock().read_line(&mut answer)?;
            if !matches!(answer.trim(), "y" | "Y" | "yes") {
                println!("Left as it is.");
                return Ok(());
            }
        }
    }
    tokio::time::timeout(wait, name.take())
        .await
        .map_err(|_| anyhow::anyhow!("the hub did not answer within {} s", wait.as_secs()))?
        .map_err(anyhow::Error::msg)?;
    println!("{machine} is this mailbox's name in the hub now; its bridge can start.");
    if name.held.is_some() {
        println!(
            "The other machines keep this mailbox's messages aside until each runs:\n  \
             t9-ipc relay --trust {machine} {}",
            name.ours
        );
    }
    Ok(())
}
