//! The Bot API client: the token, one reqwest client, calls and their errors, the backoff.
//! The only code that puts the token into a URL.

use std::fmt;
use std::sync::{Arc, Once};
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::config::TelegramConfig;
use crate::error::{Error, Result};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The whole of one request (`sendMessage`), answer included.
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long Telegram holds a `getUpdates` call open when there is nothing new.
pub(super) const POLL_SECONDS: u64 = 50;
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// When a 429 answer names no `retry_after`.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(5);

const REDACTED: &str = "<redacted>";

/// The bot token. Its `Debug` and `Display` print `<redacted>`; only the request URL
/// (built inside this module) ever holds the real value.
#[derive(Clone)]
pub struct Token(Arc<str>);

impl Token {
    pub fn new(token: impl Into<String>) -> Token {
        Token(token.into().into())
    }

    /// `text` with every occurrence of the token (also percent-encoded) replaced.
    pub fn scrub(&self, text: &str) -> String {
        if self.0.is_empty() {
            return text.to_owned();
        }
        text.replace(&*self.0, REDACTED)
            .replace(&self.0.replace(':', "%3A"), REDACTED)
            .replace(&self.0.replace(':', "%3a"), REDACTED)
    }

    fn secret(&self) -> &str {
        &self.0
    }

    /// A name for `text` that only holders of the token can compute (HMAC-SHA256 keyed by
    /// the token, 128 bits in hex): a pairing code is put in the hub under it, so a reader
    /// of the hub without the token cannot learn the code, even by trying every one.
    pub(super) fn tag(&self, text: &str) -> String {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, self.secret().as_bytes());
        let tag = ring::hmac::sign(&key, text.as_bytes());
        crate::text::hex(&tag.as_ref()[..16])
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({REDACTED})")
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// Why a call to the Bot API failed. Every text is scrubbed of the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum ApiError {
    /// No answer: the connection failed or timed out. Worth another try.
    #[error("no answer from the Bot API: {0}")]
    Network(String),
    /// HTTP 429: wait this long before the next call.
    #[error("HTTP 429: too many requests, retry after {} s", .0.as_secs())]
    RateLimited(Duration),
    /// A 5xx, or an answer that is not Telegram's JSON. Worth another try.
    #[error("HTTP {0}: {1}")]
    Server(u16, String),
    /// A 4xx other than 429: this request will not succeed as it is.
    #[error("HTTP {0}: {1}")]
    Refused(u16, String),
}

impl ApiError {
    pub(super) fn is_bad_html(&self) -> bool {
        matches!(self, ApiError::Refused(400, d) if d.to_ascii_lowercase().contains("parse entities"))
    }
}

/// Telegram's answer envelope.
#[derive(Deserialize)]
struct Envelope<T> {
    #[serde(default)]
    ok: bool,
    result: Option<T>,
    description: Option<String>,
    parameters: Option<ResponseParameters>,
}

#[derive(Deserialize)]
struct ResponseParameters {
    retry_after: Option<u64>,
}

#[derive(Deserialize)]
struct SentMessage {
    message_id: i64,
}

/// One reqwest client (connect and overall timeouts, no redirects) and the base URL.
pub(super) struct Api {
    client: reqwest::Client,
    pub(super) base: String,
    pub(super) token: Token,
}

/// Installs rustls' ring provider as the process default, once, before any client exists.
fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Err means a provider is installed already, which serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

impl Api {
    pub(super) fn new(config: &TelegramConfig) -> Result<Api> {
        let base = reqwest::Url::parse(&config.api_base).map_err(|e| {
            Error::Telegram(format!(
                "IPC_TG_API_BASE {:?} is not a URL: {e}",
                config.token.scrub(&config.api_base)
            ))
        })?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(Error::Telegram(format!(
                "IPC_TG_API_BASE {:?} is not an http or https URL",
                config.token.scrub(&config.api_base)
            )));
        }
        install_crypto_provider();
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("t9-ipc/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Telegram(describe(e, &config.token)))?;
        Ok(Api {
            client,
            base: config.api_base.clone(),
            token: config.token.clone(),
        })
    }

    /// Calls `method` with a JSON body; `timeout` overrides the client's for this call.
    pub(super) async fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        body: &Value,
        timeout: Option<Duration>,
    ) -> Result<T, ApiError> {
        let url = format!("{}/bot{}/{method}", self.base, self.token.secret());
        let mut request = self.client.post(url).json(body);
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        let response = request
            .send()
            .await
            .map_err(|e| ApiError::Network(describe(e, &self.token)))?;
        let status = response.status().as_u16();
        let retry_header = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let bytes = response
            .bytes()
            .await
            .map_err(|e| ApiError::Network(describe(e, &self.token)))?;
        let envelope: Option<Envelope<T>> = serde_json::from_slice(&bytes).ok();
        let description = envelope
            .as_ref()
            .and_then(|e| e.description.as_deref())
            .map(|d| self.token.scrub(d))
            .unwrap_or_else(|| "no description".to_owned());
        if status == 429 {
            let seconds = envelope
                .as_ref()
                .and_then(|e| e.parameters.as_ref())
                .and_then(|p| p.retry_after)
                .or(retry_header);
            return Err(ApiError::RateLimited(
                seconds.map_or(DEFAULT_RETRY_AFTER, Duration::from_secs),
            ));
        }
        match envelope {
            Some(Envelope {
                ok: true,
                result: Some(result),
                ..
            }) if (200..300).contains(&status) => Ok(result),
            _ if (400..500).contains(&status) => Err(ApiError::Refused(status, description)),
            None if (200..300).contains(&status) => Err(ApiError::Server(
                status,
                "the answer is not the Bot API's JSON".to_owned(),
            )),
            _ => Err(ApiError::Server(status, description)),
        }
    }

    /// Sends one part to `chat` (in forum topic `thread` when given); returns its Telegram
    /// message id.
    pub(super) async fn send(
        &self,
        chat: i64,
        thread: Option<i64>,
        text: &str,
        html: bool,
    ) -> Result<i64, ApiError> {
        let mut body = json!({
            "chat_id": chat,
            "text": text,
            "link_preview_options": {"is_disabled": true},
        });
        if let Some(thread) = thread {
            body["message_thread_id"] = json!(thread);
        }
        if html {
            body["parse_mode"] = json!("HTML");
        }
        self.call::<SentMessage>("sendMessage", &body, None)
            .await
            .map(|m| m.message_id)
    }
}

impl Api {
    /// `sendMessage` with a body the caller built (keyboards, topics); returns the message id.
    pub(super) async fn send_body(&self, body: &Value) -> Result<i64, ApiError> {
        self.call::<SentMessage>("sendMessage", body, None)
            .await
            .map(|m| m.message_id)
    }

    /// `editMessageText` of a message this bot sent.
    pub(super) async fn edit(&self, body: &Value) -> Result<(), ApiError> {
        self.call::<Value>("editMessageText", body, None)
            .await
            .map(|_| ())
    }

    /// Downloads `file_path` (from `getFile`), refusing more than `max` bytes.
    pub(super) async fn download(&self, file_path: &str, max: u64) -> Result<Vec<u8>, ApiError> {
        let url = format!("{}/file/bot{}/{file_path}", self.base, self.token.secret());
        let mut response = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|e| ApiError::Network(describe(e, &self.token)))?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            return Err(ApiError::Refused(
                status,
                "the file could not be downloaded".to_owned(),
            ));
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| ApiError::Network(describe(e, &self.token)))?
        {
            bytes.extend_from_slice(&chunk);
            if bytes.len() as u64 > max {
                return Err(ApiError::Refused(
                    413,
                    format!("over {} MB", max / (1024 * 1024)),
                ));
            }
        }
        Ok(bytes)
    }

    /// Uploads one file (`multipart/form-data`) with `method` (`sendDocument`, `sendPhoto`):
    /// the text `fields`, then the file as `field` named `name`. Returns the message id.
    pub(super) async fn upload(
        &self,
        method: &str,
        fields: &[(String, String)],
        field: &str,
        name: &str,
        bytes: Vec<u8>,
    ) -> Result<i64, ApiError> {
        let boundary = format!(
            "t9ipc{}{}",
            crate::fsx::random_uid(),
            crate::fsx::random_uid()
        );
        let mut body = Vec::with_capacity(bytes.len() + 512);
        for (k, v) in fields {
            body.extend_from_slice(
                format!(
                    "--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n"
                )
                .as_bytes(),
            );
        }
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(&bytes);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let url = format!("{}/bot{}/{method}", self.base, self.token.secret());
        let response = self
            .client
            .post(url)
            .header(
                reqwest::header::CONTENT_TYPE,
                format!("multipart/form-data; boundary={boundary}"),
            )
            .timeout(Duration::from_secs(300))
            .body(body)
            .send()
            .await
            .map_err(|e| ApiError::Network(describe(e, &self.token)))?;
        let status = response.status().as_u16();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| ApiError::Network(describe(e, &self.token)))?;
        match serde_json::from_slice::<Envelope<SentMessage>>(&bytes) {
            Ok(Envelope {
                ok: true,
                result: Some(m),
                ..
            }) => Ok(m.message_id),
            Ok(e) => Err(ApiError::Refused(
                status,
                self.token
                    .scrub(e.description.as_deref().unwrap_or("no description")),
            )),
            Err(_) => Err(ApiError::Server(
                status,
                "the answer is not the Bot API's JSON".to_owned(),
            )),
        }
    }

    /// Answers a button press; `text` shows as a toast on the presser's phone.
    pub(super) async fn answer_callback(&self, id: &str, text: &str) -> Result<(), ApiError> {
        let body = json!({"callback_query_id": id, "text": text});
        self.call::<Value>("answerCallbackQuery", &body, None)
            .await
            .map(|_| ())
    }
}

/// A reqwest error as one line, without the URL (it holds the token), and scrubbed anyway.
fn describe(err: reqwest::Error, token: &Token) -> String {
    let err = err.without_url();
    let mut text = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    token.scrub(&text)
}

/// The delay before retry number `failures` (1 s, 2 s, 4 s, … at most 60 s).
pub(super) fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.min(6)).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tag_needs_the_token() {
        let (one, other) = (Token::new("1:aaa"), Token::new("2:bbb"));
        let tag = one.tag("K7PQ2X");
        assert_eq!(tag, one.tag("K7PQ2X"));
        assert_ne!(tag, other.tag("K7PQ2X"));
        assert_ne!(tag, one.tag("K7PQ2Y"));
        assert_eq!(tag.len(), 32);
        assert!(tag.bytes().all(|b| b.is_ascii_hexdigit()));
    }

    #[test]
    fn the_token_is_redacted() {
        let t = Token::new("123456:ABC-secret");
        assert_eq!(format!("{t}"), "<redacted>");
        assert_eq!(format!("{t:?}"), "Token(<redacted>)");
        assert_eq!(
            t.scrub("GET http://h/bot123456:ABC-secret/x and bot123456%3AABC-secret"),
            "GET http://h/bot<redacted>/x and bot<redacted>"
        );
        let config = TelegramConfig {
            token: t,
            chat: Some(1),
            api_base: "http://127.0.0.1:9".into(),
            give_up_after: Duration::from_secs(1),
            allow: Vec::new(),
        };
        assert!(!format!("{config:?}").contains("secret"));
    }

    #[tokio::test]
    async fn reqwest_errors_lose_the_url() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let api = Api::new(&TelegramConfig {
            token: Token::new("999:SECRET"),
            chat: Some(1),
            api_base: format!("http://127.0.0.1:{port}"),
            give_up_after: Duration::from_secs(1),
            allow: Vec::new(),
        })
        .unwrap();
        let err = api.send(1, None, "x", false).await.unwrap_err();
        assert!(matches!(err, ApiError::Network(_)), "{err:?}");
        let text = format!("{err} {err:?}");
        assert!(!text.contains("SECRET"), "{text}");
        assert!(!text.contains("999"), "{text}");
    }

    #[test]
    fn backoff_doubles_to_a_minute() {
        let secs: Vec<u64> = (0..9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }
}
