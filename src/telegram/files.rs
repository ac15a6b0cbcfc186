//! Files both ways: a photo, document or voice note from the phone is downloaded (at most
//! [`MAX_DOWNLOAD`], the Bot API's limit) into `<data>/telegram/files/` (0600), and files a
//! session sends to `human` go out as documents (images as photos).
//!
//! Files a session sends travel inside the message: the tool appends a section headed
//! [`FILES_HEADER`] listing their paths, and whichever server forwards the escalation sends
//! them after its text, each recorded in the claim (`file i/n <id>`) so a restart sends the
//! rest and nothing twice.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::Local;
use serde::Deserialize;
use serde_json::{Value, json};

use super::api::{Api, ApiError};
use super::service::{Inner, Telegram};
use super::store::private;
use crate::fsx::private_dir;

/// The Bot API downloads files up to 20 MB.
pub const MAX_DOWNLOAD: u64 = 20 * 1024 * 1024;
/// The Bot API uploads documents up to 50 MB.
pub const MAX_UPLOAD: u64 = 50 * 1024 * 1024;
/// Photos up to 10 MB; a bigger image goes as a document.
const MAX_PHOTO: u64 = 10 * 1024 * 1024;
/// The line that starts the list of files in a message to `human`.
pub const FILES_HEADER: &str = "Files for the user (sent on Telegram as attachments):";

/// The file of an incoming message: what kind, its id, its name and size when given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Incoming {
    pub(super) kind: &'static str,
    pub(super) file_id: String,
    pub(super) name: Option<String>,
    pub(super) size: Option<u64>,
}

#[derive(Debug, Deserialize)]
pub(super) struct FileRef {
    file_id: String,
    #[serde(default)]
    file_size: Option<u64>,
    #[serde(default)]
    file_name: Option<String>,
}

/// The file a message carries (`photo`: its largest size), if any.
pub(super) fn incoming(message: &Value) -> Option<Incoming> {
    let take = |kind: &'static str, v: &Value| {
        let f: FileRef = serde_json::from_value(v.clone()).ok()?;
        Some(Incoming {
            kind,
            file_id: f.file_id,
            name: f.file_name,
            size: f.file_size,
        })
    };
    if let Some(sizes) = message.get("photo").and_then(Value::as_array) {
        return take("photo", sizes.last()?);
    }
    for kind in ["document", "voice", "audio", "video"] {
        if let Some(v) = message.get(kind) {
            return take(kind, v);
        }
    }
    None
}

#[derive(Deserialize)]
struct TgFile {
    #[serde(default)]
    file_size: Option<u64>,
    file_path: Option<String>,
}

/// A file name safe to keep: letters, digits, `.`, `-`, `_`; at most 80 characters.
fn safe_name(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || ".-_".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(80)
        .collect();
    let cleaned = cleaned.trim_start_matches('.').to_owned();
    if cleaned.is_empty() {
        "file".to_owned()
    } else {
        cleaned
    }
}

impl Telegram {
    /// Downloads the files of the messages in `updates` that will be heard (the chat, an
    /// allowed sender), before the batch is handled: update id → saved path, or why not.
    pub(super) async fn fetch_files(
        &self,
        updates: &[Value],
    ) -> HashMap<i64, Result<PathBuf, String>> {
        let mut out = HashMap::new();
        let chat = self.inner.chat();
        let allowed = match self.blocking(|inner| inner.allowed()).await {
            Some(a) => a,
            None => return out,
        };
        for update in updates {
            let (Some(id), Some(m)) = (
                update.get("update_id").and_then(Value::as_i64),
                update.get("message"),
            ) else {
                continue;
            };
            let Some(file) = incoming(m) else { continue };
            let heard = m["chat"]["id"].as_i64() == chat
                && m["from"]["id"]
                    .as_i64()
                    .is_some_and(|u| allowed.may_write(u))
                && !m["from"]["is_bot"].as_bool().unwrap_or(false);
            if !heard {
                continue;
            }
            out.insert(id, self.fetch(&file).await);
        }
        out
    }

    async fn fetch(&self, file: &Incoming) -> Result<PathBuf, String> {
        if file.size.is_some_and(|s| s > MAX_DOWNLOAD) {
            return Err(format!(
                "the {} is over the 20 MB the Bot API lets a bot download",
                file.kind
            ));
        }
        let api = &self.inner.api;
        let info: TgFile = api
            .call("getFile", &json!({"file_id": file.file_id}), None)
            .await
            .map_err(|e| format!("getFile failed: {e}"))?;
        if info.file_size.is_some_and(|s| s > MAX_DOWNLOAD) {
            return Err(format!("the {} is over 20 MB", file.kind));
        }
        let remote = info.file_path.ok_or("Telegram gave no file path")?;
        let bytes = api
            .download(&remote, MAX_DOWNLOAD)
            .await
            .map_err(|e| format!("downloading failed: {e}"))?;
        let ext = Path::new(&remote)
            .extension()
            .and_then(|e| e.to_str())
            .map(|e| format!(".{}", safe_name(e)))
            .unwrap_or_default();
        let name = match &file.name {
            Some(n) => safe_name(n),
            None => format!("{}{ext}", file.kind),
        };
        let dir = self.inner.files_dir();
        let path = dir.join(format!(
            "{}-{}-{name}",
            Local::now().format("%Y%m%dT%H%M%S"),
            crate::fsx::random_uid()
        ));
        let saved = tokio::task::spawn_blocking(move || -> std::io::Result<PathBuf> {
            private_dir(&dir).map_err(std::io::Error::other)?;
            let mut f = private().write(true).create_new(true).open(&path)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            Ok(path)
        })
        .await
        .map_err(|e| e.to_string())?;
        saved.map_err(|e| format!("saving it failed: {e}"))
    }
}

impl Inner {
    pub(super) fn files_dir(&self) -> PathBuf {
        self.mailbox.root().join("telegram").join("files")
    }
}

/// The paths listed under [`FILES_HEADER`] at the end of a body.
pub fn listed_files(body: &str) -> Vec<PathBuf> {
    let Some(at) = body.rfind(FILES_HEADER) else {
        return Vec::new();
    };
    body[at + FILES_HEADER.len()..]
        .lines()
        .filter_map(|l| l.strip_prefix("- "))
        .map(|p| PathBuf::from(p.trim()))
        .collect()
}

/// Checks files a session wants to send (each a readable regular file of at most 50 MB)
/// and returns the section to append to the body, with absolute paths.
pub fn files_section(paths: &[String], cwd: &Path) -> Result<String, String> {
    let mut section = format!("\n\n{FILES_HEADER}\n");
    for p in paths {
        let path = cwd.join(p.trim());
        let meta = fs::metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        if !meta.is_file() {
            return Err(format!("{} is no regular file", path.display()));
        }
        if meta.len() > MAX_UPLOAD {
            return Err(format!(
                "{} is {} MB; Telegram takes at most 50 MB a file",
                path.display(),
                meta.len() / (1024 * 1024)
            ));
        }
        if path.to_string_lossy().contains('\n') {
            return Err(format!("{:?}: a path with a line break", path));
        }
        section.push_str(&format!("- {}\n", path.display()));
    }
    Ok(section)
}

fn is_image(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| {
        matches!(
            e.to_ascii_lowercase().as_str(),
            "jpg" | "jpeg" | "png" | "webp"
        )
    })
}

/// Sends one file: an image up to 10 MB as a photo, anything else as a document.
pub(super) async fn send_file(
    api: &Api,
    chat: i64,
    thread: Option<i64>,
    path: &Path,
) -> Result<i64, String> {
    let owned = path.to_path_buf();
    let bytes = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
        let meta = fs::metadata(&owned)?;
        if meta.len() > MAX_UPLOAD {
            return Err(std::io::Error::other("over 50 MB"));
        }
        fs::read(&owned)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    let photo = is_image(path) && (bytes.len() as u64) <= MAX_PHOTO;
    let (method, field) = if photo {
        ("sendPhoto", "photo")
    } else {
        ("sendDocument", "document")
    };
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .map(safe_name)
        .unwrap_or_else(|| "file".to_owned());
    let mut fields = vec![("chat_id".to_owned(), chat.to_string())];
    if let Some(t) = thread {
        fields.push(("message_thread_id".to_owned(), t.to_string()));
    }
    api.upload(method, &fields, field, &name, bytes)
        .await
        .map_err(|e: ApiError| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_travel_in_the_body() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a.png"), b"png").unwrap();
        let section = files_section(&["a.png".into()], dir.path()).unwrap();
        let body = format!("see the chart{section}");
        assert_eq!(listed_files(&body), [dir.path().join("a.png")]);
        assert!(files_section(&["missing".into()], dir.path()).is_err());
        assert!(files_section(&[".".into()], dir.path()).is_err());
        assert!(listed_files("no files").is_empty());
    }

    #[test]
    fn names_are_made_safe() {
        assert_eq!(safe_name("../../etc/passwd"), "_.._etc_passwd");
        assert_eq!(safe_name("report 1.pdf"), "report_1.pdf");
        assert_eq!(safe_name(""), "file");
    }

    #[test]
    fn the_largest_photo_is_taken() {
        let m =
            json!({"photo": [{"file_id": "s", "file_size": 1}, {"file_id": "L", "file_size": 9}]});
        assert_eq!(incoming(&m).unwrap().file_id, "L");
        let d = json!({"document": {"file_id": "d", "file_name": "x.pdf"}});
        assert_eq!(incoming(&d).unwrap().name.as_deref(), Some("x.pdf"));
        assert!(incoming(&json!({"text": "hi"})).is_none());
    }
}
