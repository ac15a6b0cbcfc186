//! `hook pre-commit`: a git pre-commit hook that refuses a commit touching files another
//! live session claimed exclusively (`--warn`: only warn). Installed by a line in
//! `.git/hooks/pre-commit`; `t9-ipc install` prints it.

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::{Context as _, bail};
use chrono::Local;
use t9_ipc::config::Config;
use t9_ipc::coord::claims::Claims;
use t9_ipc::heartbeat::Heartbeats;

/// Runs the hook: exit 0 to let the commit go on, 1 to stop it.
pub fn run(rest: &[String], config: &Config) -> ExitCode {
    let warn_only = rest.iter().any(|a| a == "--warn");
    if let Some(bad) = rest.iter().find(|a| *a != "--warn") {
        eprintln!("t9-ipc hook pre-commit: unknown argument {bad:?}; only --warn is known");
        return ExitCode::FAILURE;
    }
    match check(config) {
        Ok(blocked) if blocked.is_empty() => ExitCode::SUCCESS,
        Ok(blocked) => {
            eprintln!(
                "t9-ipc: this commit touches files another live session claimed exclusively:"
            );
            for line in &blocked {
                eprintln!("  {line}");
            }
            if warn_only {
                eprintln!("t9-ipc: committing anyway (--warn).");
                ExitCode::SUCCESS
            } else {
                eprintln!(
                    "t9-ipc: commit refused. Ask the holder, wait for the claim to end, or \
                     commit with --no-verify."
                );
                ExitCode::FAILURE
            }
        }
        Err(err) => {
            // A broken mailbox must not stop every commit: say so and let it through.
            let err = format!("{err:#}").replace('\n', " ");
            eprintln!("t9-ipc hook pre-commit: claims not checked: {err}");
            ExitCode::SUCCESS
        }
    }
}

/// One line per staged file that another live session claims exclusively.
fn check(config: &Config) -> anyhow::Result<Vec<String>> {
    let top = git(&["rev-parse", "--show-toplevel"])?;
    let top = PathBuf::from(top.trim_end_matches('\n'));
    let staged = git(&["diff", "--cached", "--name-only", "-z", "--no-renames"])?;
    let files: Vec<String> = staged
        .split('\0')
        .filter(|f| !f.is_empty())
        .map(|f| top.join(f).to_string_lossy().into_owned())
        .collect();
    if files.is_empty() {
        return Ok(Vec::new());
    }
    let now = Local::now();
    // The session committing keeps its own claims; when it cannot be told, every claim counts.
    let live = Heartbeats::new(&config.data_dir).live(now);
    let cwd = config.cwd.to_string_lossy().into_owned();
    let me = super::this_session(config, &live, Some(&cwd))
        .and_then(|(name, _)| live.get(&name).map(|e| e.pid));
    let claims = Claims::new(&config.data_dir);
    let blocked = claims
        .blocking(&files, me, now)
        .with_context(|| format!("reading {}", claims.dir().display()))?;
    Ok(blocked
        .into_iter()
        .map(|(file, claim)| format!("{file}: {}", claim.describe()))
        .collect())
}

fn git(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("git")
        .args(args)
        .output()
        .context("running git")?;
    if !out.status.success() {
        bail!(
            "`git {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).context("git printed a path that is not UTF-8")
}

/// What `t9-ipc install` prints about the git hook.
pub fn install_text(exe: &str) -> String {
    format!(
        "\nTo refuse commits that touch files another session claimed (t9_ipc_claim), add a git \
         pre-commit hook in each repository (add --warn to only warn):\n\n  \
         printf '#!/bin/sh\\nexec {exe} hook pre-commit\\n' > .git/hooks/pre-commit && chmod +x \
         .git/hooks/pre-commit"
    )
}
