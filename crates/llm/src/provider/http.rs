//! HTTP plumbing shared by both providers: the client, and the mapping of
//! transport failures and status codes onto [`LlmError`].

use std::time::Duration;

use crate::error::LlmError;

/// Health checks should answer quickly even when generations are slow.
pub(crate) const HEALTH_TIMEOUT: Duration = Duration::from_secs(10);

/// How much of an error body we keep: enough to read, not a whole HTML page.
const BODY_SNIPPET: usize = 300;

pub(crate) fn client(timeout: Duration) -> Result<reqwest::Client, LlmError> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .build()
        .map_err(|e| LlmError::Transient {
            reason: format!("cannot build HTTP client: {e}"),
        })
}

/// A failed send: connect failures mean nobody listens; everything else
/// (timeout, reset mid-answer) may pass.
pub(crate) fn transport_error(endpoint: &str, timeout: Duration, e: reqwest::Error) -> LlmError {
    if e.is_timeout() {
        LlmError::Transient {
            reason: format!("no answer within {}s", timeout.as_secs_f64()),
        }
    } else if e.is_connect() {
        LlmError::Unreachable {
            url: endpoint.to_string(),
            reason: root_cause(&e),
        }
    } else {
        LlmError::Transient {
            reason: format!("connection failed: {}", root_cause(&e)),
        }
    }
}

/// reqwest's top-level message ("error sending request for url ...") hides
/// the useful part ("Connection refused"); the innermost source has it.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur: &(dyn std::error::Error + 'static) = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// The start of a body, on one line, for error messages.
pub(crate) fn snippet(body: &str) -> String {
    let one_line = body.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= BODY_SNIPPET {
        one_line
    } else {
        let cut: String = one_line.chars().take(BODY_SNIPPET).collect();
        format!("{cut}…")
    }
}

/// Maps a non-success status that is not a missing model.
pub(crate) fn status_error(status: reqwest::StatusCode, body: &str) -> LlmError {
    if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        LlmError::Transient {
            reason: format!("HTTP {}: {}", status.as_u16(), snippet(body)),
        }
    } else {
        LlmError::Rejected {
            status: status.as_u16(),
            body: snippet(body),
        }
    }
}

/// The `error` text of an error body, in either protocol's shape:
/// Ollama `{"error": "..."}`, OpenAI `{"error": {"message": "..."}}`.
pub(crate) fn error_message(body: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    let e = v.get("error")?;
    match e {
        serde_json::Value::String(s) => Some(s.clone()),
        other => other
            .get("message")
            .and_then(|m| m.as_str())
            .map(str::to_string),
    }
}

/// Whether an error text says the model does not exist. Ollama: `model "x"
/// not found, try pulling it first` (older: `model 'x' not found`); OpenAI:
/// `The model `x` does not exist`.
pub(crate) fn says_model_missing(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("model") && (m.contains("not found") || m.contains("does not exist"))
}
