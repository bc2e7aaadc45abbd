//! Typed errors of the Vast.ai client.
//!
//! Vast reports failure in several shapes (an HTTP status with a JSON or plain-text body, or HTTP
//! 200 with `success:false`), and callers need to act differently on them: a rejected key means
//! stop and tell the user, a rate limit or a 5xx means try later, a too-low bid means an instance
//! *was* created (stopped) and must be destroyed. So each shape has its own variant, and every
//! message names the request (method and path, never the key) and what Vast said.

use std::path::PathBuf;

use crate::query::QueryError;

/// Anything that can go wrong talking to Vast.
#[derive(Debug, thiserror::Error)]
pub enum VastError {
    /// No key in `VAST_API_KEY`, the XDG key file or `~/.vast_api_key`.
    #[error(
        "no Vast API key found: set VAST_API_KEY, or write the key to {} (or ~/.vast_api_key)",
        .xdg_path.display()
    )]
    MissingApiKey { xdg_path: PathBuf },

    /// A key file exists but cannot be read.
    #[error("cannot read the Vast API key file {}: {source}", .path.display())]
    KeyFile {
        path: PathBuf,
        source: std::io::Error,
    },

    /// The base URL (`VAST_URL`) is not an http(s) URL.
    #[error("VAST_URL {0:?} is not an http:// or https:// URL")]
    BadBaseUrl(String),

    /// Vast does not accept the key: HTTP 404 `auth_error` "Invalid user key", or 401.
    #[error(
        "Vast rejected the API key ({method} {path} answered HTTP {status}: {msg}); check VAST_API_KEY or the key file"
    )]
    AuthRejected {
        method: String,
        path: String,
        status: u16,
        msg: String,
    },

    /// HTTP 403: the account may not do this (or no key was sent).
    #[error("Vast refused {method} {path} (HTTP 403{}): {msg}", fmt_code(.error))]
    Forbidden {
        method: String,
        path: String,
        error: Option<String>,
        msg: String,
    },

    /// HTTP 410 `deprecated_endpoint`: Vast retired this endpoint.
    #[error("Vast retired {method} {path} (HTTP 410{}): {msg}", fmt_code(.error))]
    Deprecated {
        method: String,
        path: String,
        error: Option<String>,
        msg: String,
    },

    /// HTTP 429 on every attempt.
    #[error("Vast rate-limited {method} {path} on all {attempts} attempts (HTTP 429): {msg}")]
    RateLimited {
        method: String,
        path: String,
        attempts: u32,
        msg: String,
    },

    /// HTTP 5xx (after retries for 502/503/504).
    #[error(
        "Vast server error on {method} {path} after {attempts} attempt(s): HTTP {status}: {msg}"
    )]
    Server {
        method: String,
        path: String,
        status: u16,
        attempts: u32,
        msg: String,
    },

    /// Any other non-success HTTP status.
    #[error("Vast answered {method} {path} with HTTP {status}{}: {msg}", fmt_code(.error))]
    Http {
        method: String,
        path: String,
        status: u16,
        error: Option<String>,
        msg: String,
    },

    /// HTTP 200 with `success:false`.
    #[error("Vast refused {method} {path}{}: {msg}", fmt_code(.error))]
    Failed {
        method: String,
        path: String,
        error: Option<String>,
        msg: String,
    },

    /// Create failed (typically a bid below `min_bid`) but Vast still created the instance,
    /// stopped, and it bills storage until destroyed.
    #[error("Vast created instance {new_contract} stopped instead of running (bid too low?){}: {msg}; destroy it", fmt_code(.error))]
    BidTooLow {
        new_contract: u64,
        error: Option<String>,
        msg: String,
    },

    /// No answer in time, on every attempt.
    #[error("{method} {path} timed out after {attempts} attempt(s) of {timeout_s} s each")]
    Timeout {
        method: String,
        path: String,
        attempts: u32,
        timeout_s: f64,
    },

    /// Could not connect (or the connection broke), on every attempt.
    #[error(
        "cannot reach Vast at {base_url} for {method} {path} after {attempts} attempt(s): {source}"
    )]
    Connect {
        base_url: String,
        method: String,
        path: String,
        attempts: u32,
        source: reqwest::Error,
    },

    /// Another transport failure (not retried).
    #[error("{method} {path} failed: {source}")]
    Transport {
        method: String,
        path: String,
        source: reqwest::Error,
    },

    /// The answer is not the JSON we expect.
    #[error("cannot read Vast's answer to {method} {path}: {detail} (body starts: {snippet:?})")]
    Decode {
        method: String,
        path: String,
        detail: String,
        snippet: String,
    },

    /// The instance is still listed after destroy and the checks that followed.
    #[error(
        "instance {id} is still present after destroy and {checks} checks (actual_status {status:?})"
    )]
    NotGone {
        id: u64,
        checks: u32,
        status: Option<String>,
    },

    /// The log file never became available at the URL Vast gave.
    #[error("logs of instance {id} were not ready after {tries} tries")]
    LogsNotReady { id: u64, tries: u32 },

    /// A caller-side argument is invalid (checked before anything is sent).
    #[error("invalid {what}: {why}")]
    InvalidArgument { what: &'static str, why: String },

    /// The offer query was refused (nothing was sent).
    #[error(transparent)]
    Query(#[from] QueryError),
}

fn fmt_code(code: &Option<String>) -> String {
    match code {
        Some(c) if !c.is_empty() => format!(" {c}"),
        _ => String::new(),
    }
}

impl VastError {
    /// The instance Vast created despite the error, which the caller must destroy.
    pub fn created_instance_id(&self) -> Option<u64> {
        match self {
            VastError::BidTooLow { new_contract, .. } => Some(*new_contract),
            _ => None,
        }
    }

    /// Whether trying the same call later may succeed (rate limit, 5xx, timeout, network).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            VastError::RateLimited { .. }
                | VastError::Server { .. }
                | VastError::Timeout { .. }
                | VastError::Connect { .. }
        )
    }

    /// Whether Vast rejected the API key.
    pub fn is_auth(&self) -> bool {
        matches!(self, VastError::AuthRejected { .. })
    }
}
