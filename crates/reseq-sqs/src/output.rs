//! The built-in handlers behind `--output` (SPEC §3).
//!
//! - **`stdout`**: one JSON object per released message and line, flushed per line:
//!   `{"contextId":…,"sequence":N,"prevSequence":N|null,"messageId":…,"late":bool,
//!   "attempt":N,"body":"<UTF-8 body>","attributes":{name:{"dataType":…,"stringValue":…}}}`.
//!   A body that is not UTF-8 is written as `"bodyBase64"` instead of `"body"`; a binary
//!   attribute as `"binaryValue"` (base64). A failed write is retryable.
//! - **`sqs:<queue-url>`**: one `SendMessage` per release, the body as received, the
//!   message attributes preserved plus `contextId` and `sequence` (Number), which
//!   overwrite originals of the same name. `contextId` is a `String`, or, when the context
//!   id holds a character an SQS String refuses (anything outside `#x9 #xA #xD
//!   #x20-#xD7FF #xE000-#xFFFD #x10000-#x10FFFF`), a `Binary` with its UTF-8 bytes. SQS
//!   takes at most 10 attributes: when the originals and reseq's two are more,
//!   `contextId` and `sequence` are kept, then as many originals as fit in name order; the
//!   rest are left out without a log line. A `.fifo` queue gets `MessageGroupId` = the
//!   context id and `MessageDeduplicationId` = `<context>:<seq>`, or the hashed forms of
//!   [`crate::ids`] when the context id is not a valid FIFO id (over 128 characters, or
//!   characters outside printable ASCII). A message the queue can never take is
//!   [`HandlerError::Rejected`] (logged; the engine dead-letters it as `handler-failed`
//!   instead of blocking its context): a body that is not UTF-8, empty, or holds a
//!   character SQS refuses; body plus attributes over the 1 MiB message size limit
//!   (checked before sending); and any request SQS refuses because of the message
//!   (`InvalidParameterValue`, `InvalidMessageContents`, `MessageTooLong`, …).
//!   Throttling, timeouts, 5xx, network errors, a queue gone missing or access denied
//!   are retryable (an operator can fix those).
//! - **`http(s)://…`**: one `POST` per release, the body as received, with the headers
//!   `Reseq-Context-Id`, `Reseq-Sequence`, `Reseq-Prev-Sequence` (when there is one),
//!   `Reseq-Message-Id`, `Reseq-Attempt`, `Reseq-Late: true` (only when late), and
//!   `Content-Type: application/json` when the body is JSON, else
//!   `application/octet-stream`. Ids in headers are **percent-encoded**: printable ASCII
//!   other than `%` as it is, every other byte of the UTF-8 as `%XX` (so a context id
//!   made of letters, digits and punctuation arrives unchanged, and any other decodes with
//!   standard percent-decoding). 2xx is done; 5xx, 408, 429, no status within the
//!   timeout (`--http-timeout`, connecting included) and a connection error are
//!   retryable; any other status (4xx, and 3xx: redirects are not followed) is permanent.
//!   A retry after a timeout may repeat a POST the server did take: receivers fence with
//!   `(Reseq-Context-Id, Reseq-Sequence)`. Errors carry the status and the first 200
//!   bytes of the response body. One client for all requests, its connections reused.

use std::error::Error as StdError;
use std::fmt;
use std::io::Write;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Uri;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use reseq_core::{AttributeValue, Attributes, Handler, HandlerError, Release, TRACE_HEADER};
use serde::Serialize;
use serde::ser::SerializeMap;

use crate::ids::{
    MAX_MESSAGE_BYTES, attributes_for_sqs, fifo_dedup_id, fifo_group_id, message_size, sqs_allows, trace_for_sqs,
};

/// Where released messages go: the value of `--output`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutputTarget {
    /// `stdout`
    Stdout,
    /// `sqs:<queue-url>`
    Sqs {
        /// The output queue.
        queue_url: String,
    },
    /// `http://…` or `https://…`
    Http {
        /// Where each message is POSTed.
        url: String,
    },
}

const FORMS: &str = "stdout, sqs:<queue-url> or an http(s):// URL";

impl FromStr for OutputTarget {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "stdout" {
            return Ok(OutputTarget::Stdout);
        }
        if let Some(url) = s.strip_prefix("sqs:") {
            return match http_uri(url) {
                Ok(_) => Ok(OutputTarget::Sqs { queue_url: url.into() }),
                Err(why) => Err(format!(
                    "--output {s:?}: sqs: must be followed by the queue URL ({why}), e.g. \
                     sqs:https://sqs.eu-west-1.amazonaws.com/123456789012/out.fifo"
                )),
            };
        }
        if s.starts_with("http://") || s.starts_with("https://") {
            return match http_uri(s) {
                Ok(_) => Ok(OutputTarget::Http { url: s.into() }),
                Err(why) => Err(format!("--output {s:?}: {why}")),
            };
        }
        Err(format!("--output {s:?} is not an output: use {FORMS}"))
    }
}

impl fmt::Display for OutputTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OutputTarget::Stdout => f.write_str("stdout"),
            OutputTarget::Sqs { queue_url } => write!(f, "sqs:{queue_url}"),
            OutputTarget::Http { url } => f.write_str(url),
        }
    }
}

/// An `http://` or `https://` URL with a host.
fn http_uri(url: &str) -> Result<Uri, String> {
    let uri: Uri = url.parse().map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(format!("{url:?} is not an http:// or https:// URL")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{url:?} has no host"));
    }
    Ok(uri)
}

/// Why [`Output::connect`] failed; each names the resource.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// The output queue cannot be used.
    #[error(
        "cannot use the output queue {queue_url}: {detail} (check the URL, the region and the credentials' SQS \
         permissions)"
    )]
    Queue {
        /// The output queue.
        queue_url: String,
        /// What SQS answered.
        detail: String,
    },
    /// The HTTP output's URL cannot be used.
    #[error("cannot use the output URL {url}: {detail}")]
    Http {
        /// The URL.
        url: String,
        /// Why.
        detail: String,
    },
}

type Https = hyper_rustls::HttpsConnector<HttpConnector>;

/// The handler behind `--output`.
pub struct Output {
    target: Target,
}

enum Target {
    Lines(Mutex<Box<dyn Write + Send>>),
    Sqs {
        client: Client,
        queue_url: String,
        fifo: bool,
    },
    Http {
        client: Box<HttpClient<Https, Full<Bytes>>>,
        uri: Uri,
        url: String,
        timeout: Duration,
    },
}

impl Output {
    /// Builds the output. An `sqs:` queue is checked here (`GetQueueAttributes`), so a
    /// wrong URL fails at start rather than at the first release; `stdout` and HTTP URLs
    /// have nothing to check. `http_timeout` bounds each HTTP exchange.
    pub async fn connect(target: OutputTarget, sqs: Client, http_timeout: Duration) -> Result<Output, OutputError> {
        let target = match target {
            OutputTarget::Stdout => Target::Lines(Mutex::new(Box::new(std::io::stdout()))),
            OutputTarget::Sqs { queue_url } => {
                sqs.get_queue_attributes()
                    .queue_url(&queue_url)
                    .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
                    .send()
                    .await
                    .map_err(|e| OutputError::Queue {
                        queue_url: queue_url.clone(),
                        detail: crate::describe_sqs_error(&e),
                    })?;
                let fifo = queue_url.ends_with(".fifo");
                Target::Sqs {
                    client: sqs,
                    queue_url,
                    fifo,
                }
            }
            OutputTarget::Http { url } => {
                let fail = |detail: String| OutputError::Http {
                    url: url.clone(),
                    detail,
                };
                let uri = http_uri(&url).map_err(fail)?;
                let client = http_client(uri.scheme_str() == Some("https"), http_timeout).map_err(fail)?;
                Target::Http {
                    client: Box::new(client),
                    uri,
                    url,
                    timeout: http_timeout,
                }
            }
        };
        Ok(Output { target })
    }

    /// The `stdout` format into any writer (tests, embedding): one JSON line per release,
    /// flushed per line.
    pub fn json_lines(writer: Box<dyn Write + Send>) -> Output {
        Output {
            target: Target::Lines(Mutex::new(writer)),
        }
    }
}

impl Handler for Output {
    async fn handle(&self, msg: &Release<'_>) -> Result<(), HandlerError> {
        match &self.target {
            Target::Lines(writer) => write_line(writer, msg),
            Target::Sqs {
                client,
                queue_url,
                fifo,
            } => send_to_queue(client, queue_url, *fifo, msg).await,
            Target::Http {
                client,
                uri,
                url,
                timeout,
            } => post(client, uri, url, *timeout, msg).await,
        }
    }
}

// ---- stdout ----

/// One line of the `stdout` format; the fields in the documented order.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Line<'a> {
    context_id: &'a str,
    sequence: u64,
    prev_sequence: Option<u64>,
    message_id: &'a str,
    late: bool,
    attempt: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body_base64: Option<String>,
    attributes: JsonAttributes<'a>,
}

struct JsonAttributes<'a>(&'a Attributes);

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsonAttribute<'a> {
    data_type: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    string_value: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    binary_value: Option<String>,
}

impl Serialize for JsonAttributes<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, value) in self.0 {
            map.serialize_entry(name, &json_attribute(value))?;
        }
        map.end()
    }
}

fn json_attribute(value: &AttributeValue) -> JsonAttribute<'_> {
    JsonAttribute {
        data_type: &value.data_type,
        string_value: value.string.as_deref(),
        binary_value: value.binary.as_deref().map(base64),
    }
}

fn write_line(writer: &Mutex<Box<dyn Write + Send>>, msg: &Release<'_>) -> Result<(), HandlerError> {
    let text = std::str::from_utf8(msg.body).ok();
    let line = Line {
        context_id: msg.context_id,
        sequence: msg.seq,
        prev_sequence: msg.prev_seq,
        message_id: msg.message_id,
        late: msg.late,
        attempt: msg.attempt,
        body: text,
        body_base64: text.is_none().then(|| base64(msg.body)),
        attributes: JsonAttributes(msg.attributes),
    };
    let mut bytes =
        serde_json::to_vec(&line).map_err(|e| HandlerError::Permanent(format!("encoding the JSON line: {e}")))?;
    bytes.push(b'\n');
    // One lock per line: lines of concurrent releases never interleave.
    let mut writer = writer.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    writer.write_all(&bytes).and_then(|()| writer.flush()).map_err(|e| {
        HandlerError::Retryable(format!(
            "writing context {} position {} to stdout: {e}",
            msg.context_id, msg.seq
        ))
    })
}

/// Standard base64 with padding (RFC 4648 §4).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

// ---- sqs: ----

/// Error codes of `SendMessage` that mean "this message can never be sent as it is": no
/// retry fixes them, so the message is [`HandlerError::Rejected`].
const REJECTED_SEND_CODES: [&str; 8] = [
    "InvalidMessageContents",
    "InvalidParameterValue",
    "InvalidAttributeName",
    "InvalidAttributeValue",
    "MessageTooLong",
    "MissingParameter",
    "InvalidParameterCombination",
    "UnsupportedOperation",
];

/// Whether an error code (`InvalidParameterValue`, or as the JSON protocol may spell it,
/// `InvalidParameterValueException` or `com.amazonaws.sqs#InvalidParameterValue`) is one
/// of [`REJECTED_SEND_CODES`].
fn is_rejected_code(code: &str) -> bool {
    let code = code.rsplit('#').next().unwrap_or(code);
    let code = code.rsplit('.').next().unwrap_or(code);
    let code = code.strip_suffix("Exception").unwrap_or(code);
    REJECTED_SEND_CODES.contains(&code)
}

/// The `contextId` attribute reseq adds: a `String` when SQS takes every character of the
/// context id, else `Binary` with its UTF-8 bytes (a String attribute refuses what
/// [`sqs_allows`] refuses; a context id may hold any UTF-8).
pub fn context_attribute(context_id: &str) -> AttributeValue {
    if context_id.chars().all(sqs_allows) {
        AttributeValue::string(context_id)
    } else {
        AttributeValue {
            data_type: "Binary".into(),
            string: None,
            binary: Some(Bytes::copy_from_slice(context_id.as_bytes())),
        }
    }
}

/// A message the target can never take: logged, and dead-lettered by the engine.
fn rejected(text: String) -> HandlerError {
    tracing::warn!("{text}: rejected, it goes to the DLQ as handler-failed");
    HandlerError::Rejected(text)
}

async fn send_to_queue(client: &Client, queue_url: &str, fifo: bool, msg: &Release<'_>) -> Result<(), HandlerError> {
    let what = || {
        format!(
            "context {:?} position {} (message {})",
            msg.context_id, msg.seq, msg.message_id
        )
    };
    let body = std::str::from_utf8(msg.body).map_err(|_| {
        rejected(format!(
            "{}: the body is not UTF-8, and the SQS queue {queue_url} takes text bodies only",
            what()
        ))
    })?;
    if body.is_empty() {
        return Err(rejected(format!(
            "{}: the body is empty, and the SQS queue {queue_url} takes no empty body",
            what()
        )));
    }
    if let Some(c) = body.chars().find(|&c| !sqs_allows(c)) {
        return Err(rejected(format!(
            "{}: the body holds {c:?}, a character the SQS queue {queue_url} refuses",
            what()
        )));
    }
    let added = [
        ("contextId", context_attribute(msg.context_id)),
        ("sequence", AttributeValue::number(msg.seq)),
    ];
    let attributes = attributes_for_sqs(msg.attributes, &added);
    let size = message_size(body, &attributes);
    if size > MAX_MESSAGE_BYTES {
        return Err(rejected(format!(
            "{}: {size} bytes with its attributes (body {} bytes), over SQS's message size limit of \
             {MAX_MESSAGE_BYTES} bytes, so the SQS queue {queue_url} can never take it",
            what(),
            body.len()
        )));
    }
    let mut request = client
        .send_message()
        .queue_url(queue_url)
        .message_body(body)
        .set_message_attributes(Some(attributes))
        .set_message_system_attributes(trace_for_sqs(msg.attributes));
    if fifo {
        request = request
            .message_group_id(fifo_group_id(msg.context_id))
            .message_deduplication_id(fifo_dedup_id(msg.context_id, msg.seq));
    }
    match request.send().await {
        Ok(_) => Ok(()),
        Err(err) => {
            let text = format!(
                "sending {} to the SQS queue {queue_url}: {}",
                what(),
                crate::describe_sqs_error(&err)
            );
            let never = match &err {
                SdkError::ConstructionFailure(_) => true,
                SdkError::ServiceError(_) => err.code().is_some_and(is_rejected_code),
                _ => false,
            };
            Err(if never {
                rejected(text)
            } else {
                HandlerError::Retryable(text)
            })
        }
    }
}

// ---- http(s):// ----

/// The shared HTTP client: HTTP/1.1, TLS by rustls with the system's root certificates
/// (needed for `https://` only), idle connections kept for reuse.
fn http_client(https: bool, timeout: Duration) -> Result<HttpClient<Https, Full<Bytes>>, String> {
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
    let tls = match hyper_rustls::HttpsConnectorBuilder::new().with_provider_and_native_roots(provider.clone()) {
        Ok(builder) => builder,
        Err(e) if https => return Err(format!("no TLS root certificates: {e}")),
        // A plain http:// output never uses TLS: an empty trust store will do.
        Err(_) => {
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("TLS setup: {e}"))?
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config)
        }
    };
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(timeout));
    let connector = tls.https_or_http().enable_http1().wrap_connector(http);
    Ok(HttpClient::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector))
}

/// How much of a response body is read: the rest is dropped (with the connection).
const MAX_RESPONSE_READ: usize = 64 * 1024;
/// How much of a response body an error text quotes.
const ERROR_EXCERPT: usize = 200;

async fn post(
    client: &HttpClient<Https, Full<Bytes>>,
    uri: &Uri,
    url: &str,
    timeout: Duration,
    msg: &Release<'_>,
) -> Result<(), HandlerError> {
    let what = format!(
        "POST {url} (context {:?} position {}, message {})",
        msg.context_id, msg.seq, msg.message_id
    );
    let content_type = if serde_json::from_slice::<serde::de::IgnoredAny>(msg.body).is_ok() {
        "application/json"
    } else {
        "application/octet-stream"
    };
    let mut request = hyper::Request::post(uri.clone())
        .header(hyper::header::CONTENT_TYPE, content_type)
        .header("reseq-context-id", header_value(msg.context_id))
        .header("reseq-sequence", msg.seq.to_string())
        .header("reseq-message-id", header_value(msg.message_id))
        .header("reseq-attempt", msg.attempt.to_string());
    if let Some(prev) = msg.prev_seq {
        request = request.header("reseq-prev-sequence", prev.to_string());
    }
    if msg.late {
        request = request.header("reseq-late", "true");
    }
    if let Some(trace) = msg.attributes.get(TRACE_HEADER).and_then(|a| a.string.as_deref()) {
        // The X-Ray trace header of the input message, in the header X-Ray reads.
        request = request.header("x-amzn-trace-id", header_value(trace));
    }
    let request = request
        .body(Full::new(msg.body.clone()))
        .map_err(|e| HandlerError::Permanent(format!("{what}: cannot build the request: {e}")))?;
    let deadline = tokio::time::Instant::now() + timeout;
    let response = match tokio::time::timeout_at(deadline, client.request(request)).await {
        Err(_) => {
            return Err(HandlerError::Retryable(format!("{what}: no answer within {timeout:?}")));
        }
        Ok(Err(e)) => return Err(HandlerError::Retryable(format!("{what}: {}", error_chain(&e)))),
        Ok(Ok(response)) => response,
    };
    let status = response.status();
    // Read what the server sent, so that the connection can be reused (an answer cut
    // short only costs the connection: the status decides).
    let body = tokio::time::timeout_at(deadline, read_some(response.into_body()))
        .await
        .unwrap_or_default();
    if status.is_success() {
        return Ok(());
    }
    let text = format!("{what}: HTTP {status}: {}", excerpt(&body));
    let retryable = status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429;
    Err(if retryable {
        HandlerError::Retryable(text)
    } else if status.is_redirection() {
        HandlerError::Permanent(format!("{text} (redirects are not followed: give the final URL)"))
    } else {
        HandlerError::Permanent(text)
    })
}

/// Up to about [`MAX_RESPONSE_READ`] bytes of a response body.
async fn read_some(mut body: hyper::body::Incoming) -> Vec<u8> {
    let mut read = Vec::new();
    while read.len() <= MAX_RESPONSE_READ {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    read.extend_from_slice(&data);
                }
            }
            Some(Err(_)) | None => break,
        }
    }
    read
}

/// The first [`ERROR_EXCERPT`] bytes of a response body, as one line of text.
fn excerpt(body: &[u8]) -> String {
    let cut = &body[..body.len().min(ERROR_EXCERPT)];
    let text: String = String::from_utf8_lossy(cut)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let text = text.trim();
    if text.is_empty() {
        "(empty body)".to_string()
    } else if body.len() > ERROR_EXCERPT {
        format!("{text}…")
    } else {
        text.to_string()
    }
}

/// An error and its causes, `outer: inner: …` (hyper's own texts are terse).
fn error_chain(error: &dyn StdError) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// An id as a header value: printable ASCII other than `%` as it is, every other byte
/// (space, control characters, the UTF-8 of non-ASCII characters) as `%XX`.
fn header_value(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x21..0x7f).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        assert_eq!("stdout".parse(), Ok(OutputTarget::Stdout));
        assert_eq!(
            "sqs:http://localhost:4566/000000000000/out.fifo".parse(),
            Ok(OutputTarget::Sqs {
                queue_url: "http://localhost:4566/000000000000/out.fifo".into()
            })
        );
        assert_eq!(
            "https://x.example/in?a=1".parse(),
            Ok(OutputTarget::Http {
                url: "https://x.example/in?a=1".into()
            })
        );
        assert_eq!(
            "http://127.0.0.1:8080".parse(),
            Ok(OutputTarget::Http {
                url: "http://127.0.0.1:8080".into()
            })
        );
        for s in ["stdout", "sqs:https://q.example/1/out.fifo", "http://h.example/p"] {
            assert_eq!(s.parse::<OutputTarget>().map(|t| t.to_string()), Ok(s.to_string()));
        }
    }

    #[test]
    fn anything_else_names_the_flag_and_the_forms() {
        for bad in ["", "STDOUT", "stderr", "kafka://x", "file.txt", "ftp://h/x"] {
            let err = bad.parse::<OutputTarget>().unwrap_err();
            assert!(err.starts_with("--output"), "{err}");
            assert!(err.contains("stdout, sqs:<queue-url> or an http(s):// URL"), "{err}");
        }
        for bad in ["sqs:", "sqs:out", "sqs:arn:aws:sqs:eu-west-1:1:out", "sqs:http://"] {
            let err = bad.parse::<OutputTarget>().unwrap_err();
            assert!(err.starts_with("--output") && err.contains("queue URL"), "{err}");
        }
        for bad in ["http://", "https:// x", "http://exa mple.com/"] {
            let err = bad.parse::<OutputTarget>().unwrap_err();
            assert!(err.starts_with("--output"), "{err}");
        }
    }

    #[test]
    fn base64_matches_the_rfc_examples() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
        assert_eq!(base64(&[0xff, 0xfe, 0xfd]), "//79");
    }

    #[test]
    fn header_values_keep_printable_ascii_and_encode_the_rest() {
        assert_eq!(header_value("order-1"), "order-1");
        assert_eq!(header_value("a b\n%é"), "a%20b%0A%25%C3%A9");
        assert_eq!(header_value(""), "");
        let every: String = (0u8..=127).map(char::from).collect();
        assert!(hyper::header::HeaderValue::from_str(&header_value(&every)).is_ok());
    }

    #[test]
    fn error_codes_about_the_message_are_rejections_in_any_spelling() {
        for code in [
            "InvalidParameterValue",
            "InvalidParameterValueException",
            "com.amazonaws.sqs#InvalidMessageContents",
            "InvalidAttributeValue",
            "AWS.SimpleQueueService.MessageTooLong",
            "MessageTooLong",
        ] {
            assert!(is_rejected_code(code), "{code}");
        }
        for code in [
            "AWS.SimpleQueueService.NonExistentQueue",
            "QueueDoesNotExist",
            "RequestThrottled",
            "ThrottlingException",
            "AccessDenied",
            "InternalError",
        ] {
            assert!(!is_rejected_code(code), "{code}");
        }
    }

    fn offline_sqs(queue_url: &str) -> Output {
        let config = aws_sdk_sqs::Config::builder()
            .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
            .region(aws_sdk_sqs::config::Region::new("us-east-1"))
            .build();
        Output {
            target: Target::Sqs {
                client: Client::from_conf(config),
                queue_url: queue_url.into(),
                fifo: queue_url.ends_with(".fifo"),
            },
        }
    }

    fn release<'a>(context_id: &'a str, body: &'a Bytes, attributes: &'a Attributes) -> Release<'a> {
        Release {
            context_id,
            seq: 7,
            prev_seq: Some(6),
            message_id: "m-big",
            body,
            attributes,
            late: false,
            attempt: 1,
        }
    }

    #[test]
    fn a_context_id_sqs_strings_refuse_goes_as_binary_utf8() {
        let plain = context_attribute("order é 1");
        assert_eq!(
            (plain.data_type.as_str(), plain.string.as_deref()),
            ("String", Some("order é 1"))
        );
        for odd in ["ctx\u{1}", "a\u{FFFE}b", "\u{0}"] {
            let attribute = context_attribute(odd);
            assert_eq!(attribute.data_type, "Binary", "{odd:?}");
            assert_eq!(attribute.string, None);
            assert_eq!(attribute.binary.as_deref(), Some(odd.as_bytes()));
            let group = fifo_group_id(odd);
            assert!(
                group.len() <= 128 && group.bytes().all(|b| (0x21..=0x7e).contains(&b)),
                "{odd:?} -> {group}"
            );
            assert!(fifo_dedup_id(odd, 7).bytes().all(|b| (0x21..=0x7e).contains(&b)));
        }
    }

    #[tokio::test]
    async fn a_message_over_the_size_limit_is_rejected_before_sending_naming_size_and_limit() {
        let output = offline_sqs("https://sqs.us-east-1.amazonaws.com/1/out.fifo");
        let mut attributes = Attributes::new();
        attributes.insert("note".into(), AttributeValue::string("n".repeat(100)));
        // The body alone fits; with the attributes it does not.
        let body = Bytes::from(vec![b'x'; MAX_MESSAGE_BYTES - 50]);
        match output.handle(&release("c", &body, &attributes)).await {
            Err(HandlerError::Rejected(text)) => {
                assert!(text.contains(&MAX_MESSAGE_BYTES.to_string()), "{text}");
                assert!(text.contains("bytes") && text.contains("m-big"), "{text}");
            }
            other => panic!("expected a rejection, got {other:?}"),
        }
        for body in [Bytes::from_static(&[0xff]), Bytes::new(), Bytes::from_static(b"a\0")] {
            let got = output.handle(&release("c", &body, &attributes)).await;
            assert!(matches!(got, Err(HandlerError::Rejected(_))), "{body:?}: {got:?}");
        }
    }

    #[test]
    fn excerpts_are_one_short_line() {
        assert_eq!(excerpt(b""), "(empty body)");
        assert_eq!(excerpt(b"bad\r\nrequest\n"), "bad  request");
        let long = "x".repeat(500);
        assert_eq!(excerpt(long.as_bytes()), format!("{}…", "x".repeat(200)));
        assert_eq!(excerpt(&[0xff, b'a']), "\u{FFFD}a");
    }
}
