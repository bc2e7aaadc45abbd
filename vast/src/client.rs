//! The typed async client for Vast.ai's REST API.
//!
//! It talks to Vast the way the official CLI does (same paths, bodies, key locations, `VAST_URL`
//! handling), and adds what a long-running controller needs and the CLI lacks:
//!
//! - **Typed errors** ([`VastError`]) for each failure shape Vast uses, including HTTP 200 with
//!   `success:false`, a bad key answered with 404, and a create that fails but still creates a
//!   stopped instance (its id is in the error so the caller can destroy it).
//! - **Bounded retries** with exponential backoff and jitter on 429/502/503/504, connect errors
//!   and timeouts. Vast sends no `Retry-After`, so we back off ourselves (and honour it if sent).
//!   Creating an instance is only retried when Vast cannot have acted on it (429, or no
//!   connection): a retried create after a timeout could rent two machines.
//! - **Per-endpoint pacing**: Vast limits each endpoint to a minimum interval per key, so the
//!   client spaces its own calls per endpoint instead of running into 429s
//!   ([`Pacing::vast_defaults`]; [`Pacing::none`] in tests).
//! - **The key stays secret**: it travels only in the `Authorization: Bearer` header, `Debug`
//!   redacts it, and it is scrubbed from any error text.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::error::VastError;
use crate::query::SearchRequest;
use crate::types::{
    Charge, ChargePage, CreateInstanceRequest, CreateInstanceResponse, CurrentUser, Instance,
    InstancePage, Offer,
};

/// Vast's API, used when `VAST_URL` is not set.
pub const DEFAULT_BASE_URL: &str = "https://console.vast.ai";

/// A Vast API key. `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wrap a key (surrounding whitespace removed, as the CLI does with key files).
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into().trim().to_string())
    }

    /// The key itself, for the Authorization header (and nothing else).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for ApiKey {
    fn from(key: String) -> Self {
        Self::new(key)
    }
}

impl From<&str> for ApiKey {
    fn from(key: &str) -> Self {
        Self::new(key)
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

impl std::fmt::Display for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where the CLI keeps the key: `$XDG_CONFIG_HOME/vastai/vast_api_key`, `XDG_CONFIG_HOME`
/// defaulting to `~/.config`.
pub fn xdg_key_path(xdg_config_home: Option<&Path>, home: Option<&Path>) -> PathBuf {
    let base = match xdg_config_home {
        Some(x) if !x.as_os_str().is_empty() => x.to_path_buf(),
        _ => home.unwrap_or(Path::new("~")).join(".config"),
    };
    base.join("vastai").join("vast_api_key")
}

/// Resolve the key from explicit inputs, in the official order: the `VAST_API_KEY` value, then
/// the XDG key file, then the legacy `~/.vast_api_key`. Empty values and empty files are skipped.
pub fn resolve_api_key_from(
    env_key: Option<&str>,
    xdg_config_home: Option<&Path>,
    home: Option<&Path>,
) -> Result<ApiKey, VastError> {
    if let Some(k) = env_key.map(str::trim).filter(|k| !k.is_empty()) {
        return Ok(ApiKey::new(k));
    }
    let xdg = xdg_key_path(xdg_config_home, home);
    let mut candidates = vec![xdg.clone()];
    if let Some(h) = home {
        candidates.push(h.join(".vast_api_key"));
    }
    for path in candidates {
        match std::fs::read_to_string(&path) {
            Ok(s) if !s.trim().is_empty() => return Ok(ApiKey::new(s)),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(VastError::KeyFile { path, source }),
        }
    }
    Err(VastError::MissingApiKey { xdg_path: xdg })
}

/// Resolve the key from this process's environment (`VAST_API_KEY`, `XDG_CONFIG_HOME`, `HOME`).
pub fn resolve_api_key() -> Result<ApiKey, VastError> {
    let env_key = std::env::var("VAST_API_KEY").ok();
    let xdg = std::env::var_os("XDG_CONFIG_HOME").map(PathBuf::from);
    let home = std::env::home_dir();
    resolve_api_key_from(env_key.as_deref(), xdg.as_deref(), home.as_deref())
}

/// The base URL: `VAST_URL` when set and non-empty, else [`DEFAULT_BASE_URL`].
pub fn resolve_base_url() -> String {
    std::env::var("VAST_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| DEFAULT_BASE_URL.to_string())
}

/// The URL for an API path, as the CLI builds it: the base URL followed by the path, which gets
/// `/api/v0` in front unless it already starts with `/api/v<digits>/`.
pub fn api_url(base_url: &str, subpath: &str) -> String {
    let versioned = subpath
        .strip_prefix("/api/v")
        .map(|rest| {
            let digits = rest.chars().take_while(char::is_ascii_digit).count();
            digits > 0 && rest[digits..].starts_with('/')
        })
        .unwrap_or(false);
    if versioned {
        format!("{base_url}{subpath}")
    } else {
        format!("{base_url}/api/v0{subpath}")
    }
}

/// How failed requests are retried.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Total attempts, at least 1.
    pub max_attempts: u32,
    /// Wait before the first retry.
    pub initial_backoff: Duration,
    /// Growth factor of the wait per retry.
    pub multiplier: f64,
    /// Cap on one wait.
    pub max_backoff: Duration,
    /// Wait a random 50–100% of the computed backoff, so many clients do not retry in step.
    pub jitter: bool,
    /// A `Retry-After` longer than this is not waited for (the error is returned).
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(500),
            multiplier: 2.0,
            max_backoff: Duration::from_secs(8),
            jitter: true,
            max_retry_after: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// `attempts` tries with no waiting (for tests); a `Retry-After` header ends the retries.
    pub fn immediate(attempts: u32) -> Self {
        Self {
            max_attempts: attempts.max(1),
            initial_backoff: Duration::ZERO,
            multiplier: 1.0,
            max_backoff: Duration::ZERO,
            jitter: false,
            max_retry_after: Duration::ZERO,
        }
    }

    /// Only one attempt.
    pub fn none() -> Self {
        Self::immediate(1)
    }

    fn backoff(&self, retry_index: u32) -> Duration {
        let base = self.initial_backoff.as_secs_f64()
            * self
                .multiplier
                .powi(i32::try_from(retry_index).unwrap_or(i32::MAX));
        let capped = base.min(self.max_backoff.as_secs_f64()).max(0.0);
        let factor = if self.jitter {
            0.5 + 0.5 * random_unit()
        } else {
            1.0
        };
        Duration::from_secs_f64(capped * factor)
    }
}

/// A number in [0, 1) from the standard library's randomly keyed hasher (jitter needs no more).
fn random_unit() -> f64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Minimum interval between two requests to the same endpoint.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Pacing {
    /// For endpoints not listed in `per_endpoint`.
    pub default_interval: Duration,
    /// By endpoint name, e.g. `"PUT /asks/{id}/"` (see [`Endpoint`] names).
    pub per_endpoint: HashMap<String, Duration>,
}

impl Pacing {
    /// No pacing.
    pub fn none() -> Self {
        Self::default()
    }

    /// Intervals from the thresholds in Vast's published 429 examples (seconds), 0.5 s elsewhere.
    /// Vast does not publish its real limits; these keep a busy controller from hitting them.
    pub fn vast_defaults() -> Self {
        let mut per_endpoint = HashMap::new();
        for (ep, secs) in [
            (Endpoint::CreateInstance, 4.5),
            (Endpoint::ChangeBid, 5.5),
            (Endpoint::DestroyInstance, 3.0),
            (Endpoint::UpdateInstance, 1.0),
            (Endpoint::GetInstance, 2.0),
            (Endpoint::ListInstances, 1.0),
            (Endpoint::RebootInstance, 1.0),
            (Endpoint::Charges, 1.0),
        ] {
            per_endpoint.insert(ep.name().to_string(), Duration::from_secs_f64(secs));
        }
        Self {
            default_interval: Duration::from_millis(500),
            per_endpoint,
        }
    }

    fn interval(&self, ep: Endpoint) -> Duration {
        self.per_endpoint
            .get(ep.name())
            .copied()
            .unwrap_or(self.default_interval)
    }
}

/// The endpoints this client calls (the unit of pacing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    SearchOffers,
    CreateInstance,
    GetInstance,
    ListInstances,
    DestroyInstance,
    UpdateInstance,
    RebootInstance,
    ChangeBid,
    AttachSshKey,
    RequestLogs,
    CurrentUser,
    Charges,
}

impl Endpoint {
    /// Method and path template, e.g. `"PUT /asks/{id}/"`.
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::SearchOffers => "POST /bundles/",
            Endpoint::CreateInstance => "PUT /asks/{id}/",
            Endpoint::GetInstance => "GET /instances/{id}/",
            Endpoint::ListInstances => "GET /api/v1/instances/",
            Endpoint::DestroyInstance => "DELETE /instances/{id}/",
            Endpoint::UpdateInstance => "PUT /instances/{id}/",
            Endpoint::RebootInstance => "PUT /instances/reboot/{id}/",
            Endpoint::ChangeBid => "PUT /instances/bid_price/{id}/",
            Endpoint::AttachSshKey => "POST /instances/{id}/ssh/",
            Endpoint::RequestLogs => "PUT /instances/request_logs/{id}/",
            Endpoint::CurrentUser => "GET /users/current",
            Endpoint::Charges => "GET /api/v0/charges/",
        }
    }
}

/// Which failures may be retried for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RetryMode {
    /// 429, 502, 503, 504, connect errors and timeouts.
    Safe,
    /// Only failures where Vast cannot have acted: 429 and connect errors.
    UnsentOnly,
}

/// Settings for [`VastClient`]; start from [`VastClient::builder`].
#[derive(Debug, Clone)]
pub struct VastClientBuilder {
    base_url: String,
    api_key: ApiKey,
    retry: RetryPolicy,
    pacing: Pacing,
    timeout: Duration,
    connect_timeout: Duration,
    log_poll_tries: u32,
    log_poll_interval: Duration,
    destroy_checks: u32,
    destroy_check_interval: Duration,
    user_agent: String,
}

impl VastClientBuilder {
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }
    pub fn pacing(mut self, pacing: Pacing) -> Self {
        self.pacing = pacing;
        self
    }
    /// Whole-request timeout (default 30 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }
    /// How often and how long to poll a log URL (default 30 × 0.3 s, as the CLI).
    pub fn log_polling(mut self, tries: u32, interval: Duration) -> Self {
        self.log_poll_tries = tries.max(1);
        self.log_poll_interval = interval;
        self
    }
    /// How many times [`VastClient::destroy_and_verify`] checks that an instance is gone, and the
    /// wait between checks (default 6 × 2 s).
    pub fn destroy_verification(mut self, checks: u32, interval: Duration) -> Self {
        self.destroy_checks = checks.max(1);
        self.destroy_check_interval = interval;
        self
    }
    pub fn user_agent(mut self, ua: impl Into<String>) -> Self {
        self.user_agent = ua.into();
        self
    }

    pub fn build(self) -> Result<VastClient, VastError> {
        if !(self.base_url.starts_with("http://") || self.base_url.starts_with("https://")) {
            return Err(VastError::BadBaseUrl(self.base_url));
        }
        let http = reqwest::Client::builder()
            .timeout(self.timeout)
            .connect_timeout(self.connect_timeout)
            .user_agent(self.user_agent.clone())
            .build()
            .map_err(|source| VastError::Transport {
                method: "INIT".into(),
                path: "(client)".into(),
                source,
            })?;
        Ok(VastClient {
            inner: Arc::new(Inner {
                http,
                settings: self,
                next_slot: Mutex::new(HashMap::new()),
            }),
        })
    }
}

struct Inner {
    http: reqwest::Client,
    settings: VastClientBuilder,
    /// Per endpoint, the earliest time the next request may start.
    next_slot: Mutex<HashMap<Endpoint, Instant>>,
}

/// The Vast.ai client. Cheap to clone (shared connection pool and pacing).
#[derive(Clone)]
pub struct VastClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for VastClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.inner.settings;
        f.debug_struct("VastClient")
            .field("base_url", &s.base_url)
            .field("api_key", &s.api_key)
            .field("retry", &s.retry)
            .field("timeout", &s.timeout)
            .finish_non_exhaustive()
    }
}

/// What a non-success answer said.
struct ErrorBody {
    error: Option<String>,
    msg: String,
    new_contract: Option<u64>,
}

impl VastClient {
    /// Settings with defaults: retries as [`RetryPolicy::default`], pacing as
    /// [`Pacing::vast_defaults`], 30 s timeout.
    pub fn builder(base_url: impl Into<String>, api_key: impl Into<ApiKey>) -> VastClientBuilder {
        VastClientBuilder {
            base_url: base_url.into(),
            api_key: api_key.into(),
            retry: RetryPolicy::default(),
            pacing: Pacing::vast_defaults(),
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            log_poll_tries: 30,
            log_poll_interval: Duration::from_millis(300),
            destroy_checks: 6,
            destroy_check_interval: Duration::from_secs(2),
            user_agent: concat!("vasticlaude/", env!("CARGO_PKG_VERSION")).to_string(),
        }
    }

    /// A client with default settings.
    pub fn new(base_url: impl Into<String>, api_key: impl Into<ApiKey>) -> Result<Self, VastError> {
        Self::builder(base_url, api_key).build()
    }

    /// A client from the environment: `VAST_URL` (default `https://console.vast.ai`) and the key
    /// from `VAST_API_KEY`, `$XDG_CONFIG_HOME/vastai/vast_api_key` or `~/.vast_api_key`.
    pub fn from_env() -> Result<Self, VastError> {
        Self::builder_from_env()?.build()
    }

    /// [`VastClient::from_env`] as a builder, to change settings first.
    pub fn builder_from_env() -> Result<VastClientBuilder, VastError> {
        Ok(Self::builder(resolve_base_url(), resolve_api_key()?))
    }

    pub fn base_url(&self) -> &str {
        &self.inner.settings.base_url
    }

    // ---------------------------------------------------------------- operations

    /// Search offers (`POST /api/v0/bundles/`) with the body the CLI would send. Offers Vast sends
    /// without an id are skipped (and logged).
    pub async fn search_offers(&self, req: &SearchRequest) -> Result<Vec<Offer>, VastError> {
        let body = req.to_body()?;
        let path = "/bundles/";
        let v = self
            .call_ok(
                Endpoint::SearchOffers,
                Method::POST,
                path,
                &[],
                Some(&body),
                RetryMode::Safe,
            )
            .await?;
        let Some(Value::Array(items)) = v.get("offers") else {
            return Err(decode_err("POST", path, "no \"offers\" list", &v));
        };
        let mut offers = Vec::with_capacity(items.len());
        for item in items {
            match serde_json::from_value::<Offer>(item.clone()) {
                Ok(o) => offers.push(o),
                Err(e) => {
                    tracing::warn!(error = %e, "skipping an offer Vast sent that we cannot read")
                }
            }
        }
        Ok(offers)
    }

    /// Rent offer `offer_id` (`PUT /api/v0/asks/{id}/`). With `req.price` set the instance is
    /// interruptible at that bid. A create that fails but leaves a stopped instance gives
    /// [`VastError::BidTooLow`] with its id.
    pub async fn create_instance(
        &self,
        offer_id: u64,
        req: &CreateInstanceRequest,
    ) -> Result<CreateInstanceResponse, VastError> {
        if let Some(p) = req.price
            && !(p.is_finite() && p > 0.0)
        {
            return Err(VastError::InvalidArgument {
                what: "bid price",
                why: format!("{p} is not a positive number of $/h"),
            });
        }
        let path = format!("/asks/{offer_id}/");
        let body = serde_json::to_value(req).map_err(|e| VastError::InvalidArgument {
            what: "create request",
            why: e.to_string(),
        })?;
        let v = self
            .call(
                Endpoint::CreateInstance,
                Method::PUT,
                &path,
                &[],
                Some(&body),
                RetryMode::UnsentOnly,
            )
            .await?;
        if v.get("success") == Some(&Value::Bool(false)) {
            let eb = error_body_from_json(&v);
            return Err(match eb.new_contract {
                Some(id) => VastError::BidTooLow {
                    new_contract: id,
                    error: eb.error,
                    msg: self.scrub(&eb.msg),
                },
                None => VastError::Failed {
                    method: "PUT".into(),
                    path,
                    error: eb.error,
                    msg: self.scrub(&eb.msg),
                },
            });
        }
        serde_json::from_value(v.clone()).map_err(|e| {
            // The answer may carry the instance's own API key; keep it out of the error.
            let mut shown = v.clone();
            if let Some(obj) = shown.as_object_mut() {
                obj.remove("instance_api_key");
            }
            decode_err("PUT", &path, &e.to_string(), &shown)
        })
    }

    /// One instance (`GET /api/v0/instances/{id}/?owner=me`); `None` when Vast answers
    /// `{"instances": null}` or "not found" (destroyed or never ours).
    pub async fn get_instance(&self, id: u64) -> Result<Option<Instance>, VastError> {
        let path = format!("/instances/{id}/");
        let query = [("owner", "me".to_string())];
        let v = match self
            .call_ok(
                Endpoint::GetInstance,
                Method::GET,
                &path,
                &query,
                None,
                RetryMode::Safe,
            )
            .await
        {
            Ok(v) => v,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        let inst = match v.get("instances") {
            None => return Err(decode_err("GET", &path, "no \"instances\" field", &v)),
            Some(Value::Null) => return Ok(None),
            // Old answers held a one-element list.
            Some(Value::Array(list)) => match list
                .iter()
                .find(|i| i.get("id").and_then(Value::as_u64) == Some(id))
            {
                Some(i) => i.clone(),
                None => return Ok(None),
            },
            Some(obj) => obj.clone(),
        };
        serde_json::from_value(inst)
            .map(Some)
            .map_err(|e| decode_err("GET", &path, &e.to_string(), &v))
    }

    /// All instances on the account (`GET /api/v1/instances/`, following `next_token`), keeping
    /// those whose label starts with `label_prefix` when given.
    pub async fn list_instances(
        &self,
        label_prefix: Option<&str>,
    ) -> Result<Vec<Instance>, VastError> {
        let path = "/api/v1/instances/";
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        let mut seen = std::collections::HashSet::new();
        loop {
            let mut query = vec![
                ("select_filters", "{}".to_string()),
                ("order_by", r#"[{"col": "id", "dir": "asc"}]"#.to_string()),
                ("limit", "25".to_string()),
            ];
            if let Some(t) = &token {
                query.push(("after_token", t.clone()));
            }
            let v = self
                .call_ok(
                    Endpoint::ListInstances,
                    Method::GET,
                    path,
                    &query,
                    None,
                    RetryMode::Safe,
                )
                .await?;
            let page: InstancePage = serde_json::from_value(v.clone())
                .map_err(|e| decode_err("GET", path, &e.to_string(), &v))?;
            out.extend(page.instances.into_iter().filter(|i| match label_prefix {
                None => true,
                Some(p) => i.label.as_deref().is_some_and(|l| l.starts_with(p)),
            }));
            match page.next_token {
                Some(t) if !t.is_empty() => {
                    if !seen.insert(t.clone()) {
                        return Err(decode_err(
                            "GET",
                            path,
                            "Vast repeated a pagination token",
                            &v,
                        ));
                    }
                    token = Some(t);
                }
                _ => break,
            }
        }
        Ok(out)
    }

    /// Destroy an instance (`DELETE /api/v0/instances/{id}/`). An instance that is already gone
    /// (`no_such_instance`, 404 not found) counts as destroyed.
    pub async fn destroy_instance(&self, id: u64) -> Result<(), VastError> {
        let path = format!("/instances/{id}/");
        match self
            .call_ok(
                Endpoint::DestroyInstance,
                Method::DELETE,
                &path,
                &[],
                Some(&json!({})),
                RetryMode::Safe,
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Destroy, then check (and destroy again) until the instance is gone, because Vast
    /// instances can reappear after a destroy. Gives [`VastError::NotGone`] if it stays.
    pub async fn destroy_and_verify(&self, id: u64) -> Result<(), VastError> {
        let s = &self.inner.settings;
        self.destroy_instance(id).await?;
        let mut last_status = None;
        for check in 1..=s.destroy_checks {
            match self.get_instance(id).await? {
                None => return Ok(()),
                Some(inst) => {
                    last_status = inst.actual_status.clone();
                    tracing::info!(id, check, status = ?last_status, "instance still present after destroy");
                }
            }
            if check < s.destroy_checks {
                tokio::time::sleep(s.destroy_check_interval).await;
                self.destroy_instance(id).await?;
            }
        }
        Err(VastError::NotGone {
            id,
            checks: s.destroy_checks,
            status: last_status,
        })
    }

    /// Stop (`{"state":"stopped"}`): data kept, storage still billed.
    pub async fn stop_instance(&self, id: u64) -> Result<(), VastError> {
        self.update_instance(id, json!({"state": "stopped"})).await
    }

    /// Start a stopped instance (`{"state":"running"}`); it may sit in `scheduling`.
    pub async fn start_instance(&self, id: u64) -> Result<(), VastError> {
        self.update_instance(id, json!({"state": "running"})).await
    }

    /// Set the label (at most 1024 characters).
    pub async fn set_label(&self, id: u64, label: &str) -> Result<(), VastError> {
        if label.chars().count() > 1024 {
            return Err(VastError::InvalidArgument {
                what: "label",
                why: format!("{} characters; Vast allows 1024", label.chars().count()),
            });
        }
        self.update_instance(id, json!({"label": label})).await
    }

    async fn update_instance(&self, id: u64, body: Value) -> Result<(), VastError> {
        let path = format!("/instances/{id}/");
        self.call_ok(
            Endpoint::UpdateInstance,
            Method::PUT,
            &path,
            &[],
            Some(&body),
            RetryMode::Safe,
        )
        .await
        .map(drop)
    }

    /// Restart the container without losing GPU priority (`PUT /instances/reboot/{id}/`).
    pub async fn reboot_instance(&self, id: u64) -> Result<(), VastError> {
        let path = format!("/instances/reboot/{id}/");
        self.call_ok(
            Endpoint::RebootInstance,
            Method::PUT,
            &path,
            &[],
            Some(&json!({})),
            RetryMode::Safe,
        )
        .await
        .map(drop)
    }

    /// Change an interruptible instance's bid, in $/h (`PUT /instances/bid_price/{id}/`).
    pub async fn change_bid(&self, id: u64, price: f64) -> Result<(), VastError> {
        if !(price.is_finite() && price > 0.0) {
            return Err(VastError::InvalidArgument {
                what: "bid price",
                why: format!("{price} is not a positive number of $/h"),
            });
        }
        let path = format!("/instances/bid_price/{id}/");
        let body = json!({"client_id": "me", "price": price});
        self.call_ok(
            Endpoint::ChangeBid,
            Method::PUT,
            &path,
            &[],
            Some(&body),
            RetryMode::Safe,
        )
        .await
        .map(drop)
    }

    /// Add a public SSH key to a running instance (`POST /instances/{id}/ssh/`).
    pub async fn attach_ssh_key(&self, id: u64, public_key: &str) -> Result<(), VastError> {
        let key = public_key.trim();
        if key.contains("PRIVATE KEY") {
            return Err(VastError::InvalidArgument {
                what: "SSH key",
                why: "this is a private key; pass the public key (.pub)".into(),
            });
        }
        if !key.starts_with("ssh") && !key.starts_with("ecdsa") && !key.starts_with("sk-") {
            return Err(VastError::InvalidArgument {
                what: "SSH key",
                why: "a public key starts with its type, e.g. ssh-ed25519".into(),
            });
        }
        let path = format!("/instances/{id}/ssh/");
        self.call_ok(
            Endpoint::AttachSshKey,
            Method::POST,
            &path,
            &[],
            Some(&json!({"ssh_key": key})),
            RetryMode::Safe,
        )
        .await
        .map(drop)
    }

    /// The container's logs: ask Vast to upload them (`PUT /instances/request_logs/{id}/`), then
    /// fetch the URL it gives, without credentials, until it is ready.
    pub async fn logs(&self, id: u64, tail: Option<u32>) -> Result<String, VastError> {
        let s = &self.inner.settings;
        let path = format!("/instances/request_logs/{id}/");
        let mut body = serde_json::Map::new();
        if let Some(t) = tail.filter(|t| *t > 0) {
            body.insert("tail".into(), Value::String(t.to_string()));
        }
        let v = self
            .call_ok(
                Endpoint::RequestLogs,
                Method::PUT,
                &path,
                &[],
                Some(&Value::Object(body)),
                RetryMode::Safe,
            )
            .await?;
        let Some(url) = v.get("result_url").and_then(Value::as_str) else {
            return Err(decode_err("PUT", &path, "no result_url", &v));
        };
        let url = if url.starts_with('/') {
            format!("{}{url}", s.base_url)
        } else {
            url.to_string()
        };
        for _ in 0..s.log_poll_tries {
            tokio::time::sleep(s.log_poll_interval).await;
            // Deliberately no Authorization header: the URL is a pre-signed object store URL.
            match self.inner.http.get(&url).send().await {
                Ok(r) if r.status() == StatusCode::OK => {
                    return r.text().await.map_err(|source| VastError::Transport {
                        method: "GET".into(),
                        path: "(log result_url)".into(),
                        source,
                    });
                }
                Ok(r) => tracing::debug!(status = %r.status(), "logs not ready yet"),
                Err(e) => tracing::debug!(error = %e, "logs not ready yet"),
            }
        }
        Err(VastError::LogsNotReady {
            id,
            tries: s.log_poll_tries,
        })
    }

    /// The account (`GET /api/v0/users/current`); `credit` is the spendable balance. The
    /// `api_key` field Vast includes is dropped.
    pub async fn current_user(&self) -> Result<CurrentUser, VastError> {
        let path = "/users/current";
        let v = self
            .call_ok(
                Endpoint::CurrentUser,
                Method::GET,
                path,
                &[],
                None,
                RetryMode::Safe,
            )
            .await?;
        serde_json::from_value(v).map_err(|e| VastError::Decode {
            method: "GET".into(),
            path: path.into(),
            detail: e.to_string(),
            // Never echo this body: it contains the API key.
            snippet: String::new(),
        })
    }

    /// Per-contract charges with their gpu/disk/bwu/bwd items for days in
    /// `[from_epoch_s, to_epoch_s]` (`GET /api/v0/charges/`, following `next_token`).
    pub async fn charges(
        &self,
        from_epoch_s: i64,
        to_epoch_s: i64,
    ) -> Result<Vec<Charge>, VastError> {
        if from_epoch_s > to_epoch_s {
            return Err(VastError::InvalidArgument {
                what: "charges range",
                why: format!("from {from_epoch_s} is after to {to_epoch_s}"),
            });
        }
        let path = "/api/v0/charges/";
        let filters = json!({"day": {"gte": from_epoch_s, "lte": to_epoch_s}}).to_string();
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        let mut seen = std::collections::HashSet::new();
        loop {
            let mut query = vec![
                ("select_filters", filters.clone()),
                ("latest_first", "false".to_string()),
                ("limit", "100".to_string()),
                ("format", "table".to_string()),
            ];
            if let Some(t) = &token {
                query.push(("after_token", t.clone()));
            }
            let v = self
                .call_ok(
                    Endpoint::Charges,
                    Method::GET,
                    path,
                    &query,
                    None,
                    RetryMode::Safe,
                )
                .await?;
            let page: ChargePage = serde_json::from_value(v.clone())
                .map_err(|e| decode_err("GET", path, &e.to_string(), &v))?;
            out.extend(page.results);
            match page.next_token {
                Some(t) if !t.is_empty() => {
                    if !seen.insert(t.clone()) {
                        return Err(decode_err(
                            "GET",
                            path,
                            "Vast repeated a pagination token",
                            &v,
                        ));
                    }
                    token = Some(t);
                }
                _ => break,
            }
        }
        Ok(out)
    }

    // ---------------------------------------------------------------- transport

    /// [`VastClient::call`], then refuse HTTP 200 with `success:false`.
    async fn call_ok(
        &self,
        ep: Endpoint,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
        mode: RetryMode,
    ) -> Result<Value, VastError> {
        let v = self
            .call(ep, method.clone(), path, query, body, mode)
            .await?;
        if v.get("success") == Some(&Value::Bool(false)) {
            let eb = error_body_from_json(&v);
            return Err(VastError::Failed {
                method: method.to_string(),
                path: path.to_string(),
                error: eb.error,
                msg: self.scrub(&eb.msg),
            });
        }
        Ok(v)
    }

    /// Send one API request with pacing and retries; the JSON answer of a 2xx (null when empty).
    async fn call(
        &self,
        ep: Endpoint,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
        mode: RetryMode,
    ) -> Result<Value, VastError> {
        let s = &self.inner.settings;
        let mut url = reqwest::Url::parse(&api_url(&s.base_url, path))
            .map_err(|_| VastError::BadBaseUrl(s.base_url.clone()))?;
        if !query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (k, v) in query {
                pairs.append_pair(k, v);
            }
        }
        let m = method.to_string();
        let attempts = s.retry.max_attempts.max(1);
        for attempt in 1..=attempts {
            self.pace(ep).await;
            let mut rb = self
                .inner
                .http
                .request(method.clone(), url.clone())
                .bearer_auth(s.api_key.expose());
            if let Some(b) = body {
                rb = rb.json(b);
            }
            let last = attempt == attempts;
            tracing::debug!(method = %m, path, attempt, "vast request");
            let resp = match rb.send().await {
                Ok(r) => r,
                Err(e) => {
                    let retryable = e.is_connect() || (mode == RetryMode::Safe && e.is_timeout());
                    if retryable && !last {
                        tracing::debug!(method = %m, path, attempt, error = %e, "retrying after transport error");
                        tokio::time::sleep(s.retry.backoff(attempt - 1)).await;
                        continue;
                    }
                    return Err(if e.is_timeout() {
                        VastError::Timeout {
                            method: m,
                            path: path.to_string(),
                            attempts: attempt,
                            timeout_s: s.timeout.as_secs_f64(),
                        }
                    } else if e.is_connect() {
                        VastError::Connect {
                            base_url: s.base_url.clone(),
                            method: m,
                            path: path.to_string(),
                            attempts: attempt,
                            source: e.without_url(),
                        }
                    } else {
                        VastError::Transport {
                            method: m,
                            path: path.to_string(),
                            source: e.without_url(),
                        }
                    });
                }
            };
            let status = resp.status();
            let retry_after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|h| h.to_str().ok())
                .and_then(|h| h.trim().parse::<f64>().ok())
                .filter(|x| x.is_finite() && *x >= 0.0);
            let text = match resp.text().await {
                Ok(t) => t,
                Err(e) if e.is_timeout() && mode == RetryMode::Safe && !last => {
                    tokio::time::sleep(s.retry.backoff(attempt - 1)).await;
                    continue;
                }
                Err(e) => {
                    return Err(VastError::Transport {
                        method: m,
                        path: path.to_string(),
                        source: e.without_url(),
                    });
                }
            };
            if status.is_success() {
                if text.trim().is_empty() {
                    return Ok(Value::Null);
                }
                return serde_json::from_str(&text).map_err(|e| VastError::Decode {
                    method: m.clone(),
                    path: path.to_string(),
                    detail: e.to_string(),
                    snippet: self.scrub(&snippet(&text)),
                });
            }
            let eb = self.error_body(&text);
            let code = status.as_u16();
            let retryable_status = match code {
                429 => eb.error.as_deref() != Some("search_quota_exceeded"),
                502..=504 => mode == RetryMode::Safe,
                _ => false,
            };
            if retryable_status && !last {
                let wait = match retry_after {
                    Some(ra) if Duration::from_secs_f64(ra) > s.retry.max_retry_after => None,
                    Some(ra) => Some(Duration::from_secs_f64(ra)),
                    None => Some(s.retry.backoff(attempt - 1)),
                };
                if let Some(wait) = wait {
                    tracing::debug!(method = %m, path, attempt, status = code, "retrying");
                    tokio::time::sleep(wait).await;
                    continue;
                }
            }
            return Err(self.status_error(&m, path, status, attempt, eb));
        }
        unreachable!("the retry loop returns on its last attempt")
    }

    fn status_error(
        &self,
        method: &str,
        path: &str,
        status: StatusCode,
        attempts: u32,
        eb: ErrorBody,
    ) -> VastError {
        let code = status.as_u16();
        let (method, path) = (method.to_string(), path.to_string());
        if let Some(id) = eb.new_contract {
            return VastError::BidTooLow {
                new_contract: id,
                error: eb.error,
                msg: eb.msg,
            };
        }
        let auth_msg = eb.msg.contains("Invalid user key");
        match code {
            401 => VastError::AuthRejected {
                method,
                path,
                status: code,
                msg: eb.msg,
            },
            404 if eb.error.as_deref() == Some("auth_error") || auth_msg => {
                VastError::AuthRejected {
                    method,
                    path,
                    status: code,
                    msg: eb.msg,
                }
            }
            403 => VastError::Forbidden {
                method,
                path,
                error: eb.error,
                msg: eb.msg,
            },
            410 => VastError::Deprecated {
                method,
                path,
                error: eb.error,
                msg: eb.msg,
            },
            429 => VastError::RateLimited {
                method,
                path,
                attempts,
                msg: eb.msg,
            },
            500..=599 => VastError::Server {
                method,
                path,
                status: code,
                attempts,
                msg: eb.msg,
            },
            _ => VastError::Http {
                method,
                path,
                status: code,
                error: eb.error,
                msg: eb.msg,
            },
        }
    }

    fn error_body(&self, text: &str) -> ErrorBody {
        let mut eb = match serde_json::from_str::<Value>(text) {
            Ok(v @ Value::Object(_)) => error_body_from_json(&v),
            _ => ErrorBody {
                error: None,
                msg: if text.trim().is_empty() {
                    "(no detail message supplied)".into()
                } else {
                    snippet(text.trim())
                },
                new_contract: None,
            },
        };
        eb.msg = self.scrub(&eb.msg);
        eb.error = eb.error.map(|e| self.scrub(&e));
        eb
    }

    /// Remove the API key from text that will end up in an error.
    fn scrub(&self, text: &str) -> String {
        let key = self.inner.settings.api_key.expose();
        if key.len() >= 4 && text.contains(key) {
            text.replace(key, "<redacted>")
        } else {
            text.to_string()
        }
    }

    /// Wait for this endpoint's next slot and reserve the one after it.
    async fn pace(&self, ep: Endpoint) {
        let interval = self.inner.settings.pacing.interval(ep);
        if interval.is_zero() {
            return;
        }
        let wait_until = {
            let mut slots = self
                .inner
                .next_slot
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let slot = slots.get(&ep).copied().filter(|t| *t > now).unwrap_or(now);
            slots.insert(ep, slot + interval);
            slot
        };
        tokio::time::sleep_until(wait_until).await;
    }
}

fn error_body_from_json(v: &Value) -> ErrorBody {
    let text = |k: &str| match v.get(k) {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_string()),
        _ => None,
    };
    let error = text("error");
    let msg = text("msg")
        .or_else(|| text("message"))
        .or_else(|| text("detail"))
        .or_else(|| error.clone())
        .unwrap_or_else(|| "(no detail message supplied)".into());
    let new_contract = v.get("new_contract").and_then(|n| match n {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    });
    ErrorBody {
        error,
        msg,
        new_contract,
    }
}

fn is_not_found(e: &VastError) -> bool {
    match e {
        VastError::Http { status: 404, .. } => true,
        VastError::Failed {
            error: Some(code), ..
        } => {
            matches!(
                code.as_str(),
                "no_such_instance" | "not_found" | "invalid_id"
            )
        }
        _ => false,
    }
}

fn snippet(text: &str) -> String {
    let t = text.trim();
    if t.len() <= 300 {
        return t.to_string();
    }
    let mut end = 300;
    while !t.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &t[..end])
}

fn decode_err(method: &str, path: &str, detail: &str, v: &Value) -> VastError {
    VastError::Decode {
        method: method.into(),
        path: path.into(),
        detail: detail.into(),
        snippet: snippet(&v.to_string()),
    }
}
