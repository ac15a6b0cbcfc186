//! Figures of coordination (issue 15): claims, search, the size of the tool list. Each
//! figure runs only when `wanted` says so.
//!
//! - `claims`: 1,000 live claims held by one live session; `t9_ipc_claim` from another
//!   session (100 calls, each a new claim checked against all of them), and the check a
//!   commit meets, `t9-ipc hook pre-commit` on a staged file that is claimed (spawn to exit,
//!   with its two `git` calls), 100 runs.
//! - `search`: `t9_ipc_search` over 100,000 messages in the mailbox (10,000 of them the
//!   searching session's), 30 calls.
//! - `tools_list`: the `tools/list` result and `instructions`, in characters.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use super::util::{BIN, TempMailbox, listing};
use super::{Report, ms, percentile, plant};

pub(crate) async fn figures(report: &mut Report, wanted: &dyn Fn(&str) -> bool) {
    if wanted("claims") {
        claims(report).await;
    }
    if wanted("search") {
        search(report).await;
    }
    if wanted("tools_list") {
        tools_list(report).await;
    }
}

/// Writes `n` claims held by `holder` (name, pid) on `src/mod<i>/**` under `repo`: the
/// first through the library, the rest as copies of its file with their own id and path.
fn plant_claims(root: &Path, repo: &Path, holder: (&str, u32), n: usize) {
    use t9_ipc::coord::claims::{Claims, Holder, Request};
    let claims = Claims::new(root);
    let paths = ["src/mod0/**".to_owned()];
    let holder = Holder {
        name: holder.0,
        pid: holder.1,
        cwd: repo,
    };
    let req = Request {
        paths: &paths,
        ttl: Some(chrono::TimeDelta::hours(8)),
        note: "a planted claim",
        ..Request::default()
    };
    let granted = claims
        .claim(&holder, &req, chrono::Local::now())
        .expect("the first claim");
    let id = granted.claim.id;
    let text = std::fs::read_to_string(claims.dir().join(format!("{id}.md"))).expect("claim");
    let (stamp, rest) = id.split_once('-').expect("an id");
    let (_, name) = rest.split_once('-').expect("an id");
    for i in 1..n {
        let copy = text.replace("/src/mod0/**", &format!("/src/mod{i}/**"));
        let file = claims.dir().join(format!("{stamp}-{i:08x}-{name}.md"));
        std::fs::write(file, copy).expect("plant a claim");
    }
}

/// `t9-ipc hook pre-commit` in `repo` as `session`: (time spawn to exit, refused).
fn pre_commit(mb: &TempMailbox, repo: &Path, session: &str) -> (Duration, bool) {
    let start = Instant::now();
    let out = Command::new(BIN)
        .args(["hook", "pre-commit"])
        .current_dir(repo)
        .env("IPC_DATA_DIR", mb.root())
        .env("IPC_SESSION_ID", session)
        .stdin(Stdio::null())
        .output()
        .expect("run the hook");
    (start.elapsed(), !out.status.success())
}

fn git(repo: &Path, args: &[&str]) {
    let ok = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.org"])
        .args(args)
        .current_dir(repo)
        .output()
        .expect("run git")
        .status
        .success();
    assert!(ok, "git {args:?}");
}

async fn claims(report: &mut Report) {
    const CLAIMS: usize = 1000;
    const CALLS: usize = 100;
    let mb = TempMailbox::new();
    let repo = mb.root().join("repo");
    std::fs::create_dir_all(repo.join("src/mod7")).expect("repo");
    let repo = repo.canonicalize().expect("canonical repo");
    let alpha = mb.spawn_with(Some("alpha"), &repo).await;
    let beta = mb.spawn_with(Some("beta"), &repo).await;
    plant_claims(mb.root(), &repo, ("alpha", alpha.pid), CLAIMS);
    let listed = beta.ok("t9_ipc_claim", json!({"action": "list"})).await;
    assert!(listed.contains("/src/mod999/**"), "{listed}");

    let mut claim = Vec::with_capacity(CALLS);
    for i in 0..CALLS {
        let args = json!({"action": "claim", "paths": [format!("docs/page{i}.md")]});
        let start = Instant::now();
        let granted = beta.ok("t9_ipc_claim", args).await;
        claim.push(start.elapsed());
        assert!(granted.contains("Claimed exclusive"), "{granted}");
    }
    claim.sort();
    report.latency(
        "`t9_ipc_claim` (a new exclusive claim, checked against every live claim) with \
         1,000 live claims of another live session, 100 calls",
        &claim,
        5.0,
        20.0,
    );

    git(&repo, &["init", "-q"]);
    std::fs::write(repo.join("src/mod7/lib.rs"), "// claimed\n").expect("a file");
    git(&repo, &["add", "src/mod7/lib.rs"]);
    let mut check = Vec::with_capacity(CALLS);
    for _ in 0..CALLS {
        let (took, refused) = pre_commit(&mb, &repo, "beta");
        check.push(took);
        assert!(refused, "the hook lets a claimed file through");
    }
    check.sort();
    report.latency(
        "`t9-ipc hook pre-commit` (the check a commit meets) on a staged file claimed by \
         another live session, 1,000 live claims, 100 runs, spawn to exit including its two \
         `git` calls",
        &check,
        50.0,
        100.0,
    );
    alpha.quit().await;
    beta.quit().await;
}

async fn search(report: &mut Report) {
    const N: usize = 100_000;
    const CALLS: usize = 30;
    let mb = TempMailbox::new();
    // Every tenth message is alpha's; the rest are other sessions' mail.
    plant(&mb, N, |i| {
        if i % 10 == 0 {
            "alpha".into()
        } else {
            format!("other{}", i % 7)
        }
    });
    let alpha = mb.spawn("alpha").await;
    let start = Instant::now();
    let first = alpha
        .ok("t9_ipc_search", json!({"words": "planted 50000"}))
        .await;
    let first_call = start.elapsed();
    assert!(first.contains("planted 50000"), "{first}");
    let mut times = Vec::with_capacity(CALLS);
    for c in 0..CALLS {
        // A word in one subject, a word in every body, or a correspondent, in turn.
        let args = match c % 3 {
            0 => json!({"words": format!("planted {}", (c * 3331) / 10 * 10)}),
            1 => json!({"words": "body", "limit": 20}),
            _ => json!({"with": "planter"}),
        };
        let start = Instant::now();
        let found = alpha.ok("t9_ipc_search", args).await;
        times.push(start.elapsed());
        assert!(found.contains("msg_id"), "{found}");
    }
    times.sort();
    let (p50, p99) = (percentile(&times, 0.5), percentile(&times, 0.99));
    report.add(
        "`t9_ipc_search` over 100,000 messages in the mailbox (10,000 of them the \
         session's), 30 calls: one word of one subject, a word in every body, a correspondent",
        "p50 ≤ 50 ms",
        format!(
            "p50 {} · p99 {} · max {}; the first call after spawn {}",
            ms(p50),
            ms(p99),
            ms(*times.last().expect("samples")),
            ms(first_call)
        ),
        Some(p50 <= Duration::from_millis(50)),
    );
    alpha.quit().await;
}

async fn tools_list(report: &mut Report) {
    let (tools, init) = listing(&TempMailbox::new()).await;
    let size = serde_json::to_string(&tools).expect("json").chars().count();
    let count = tools["tools"].as_array().map_or(0, Vec::len);
    report.add(
        "size of the whole `tools/list` result (every tool schema)",
        "≤ 6,000 characters (about 1,500 tokens)",
        format!(
            "{size} characters, about {} tokens (characters / 4), {count} tools",
            size / 4
        ),
        Some(size <= 6_000),
    );
    let instructions = init["instructions"]
        .as_str()
        .map_or(0, |i| i.chars().count());
    report.add(
        "size of `instructions`",
        "< 2,048 characters (Claude Code cuts it there)",
        format!(
            "{instructions} characters, about {} tokens",
            instructions / 4
        ),
        Some(instructions < 2_048),
    );
}
