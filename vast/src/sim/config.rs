//! Knobs of the simulated market: seed, size, boot times, fault rates, rate limits, account.
//!
//! Everything is plain serde so a scenario can be written down as a TOML file
//! (`vasticlaude sim serve --config FILE`) and replayed exactly: the same config and seed give
//! the same machines, the same offers and the same event log.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// 2026-01-01T00:00:00Z: the virtual clock's default start, so in-process runs do not depend on
/// the wall clock.
pub const DEFAULT_START_MS: i64 = 1_767_225_600_000;

/// Everything that shapes one simulated market. Every key is optional in TOML:
///
/// ```
/// let cfg = vast::sim::SimConfig::from_toml_str(r#"
/// seed = 7
/// machines = 300            # host machines (>= 200 gives ~500 offers)
/// api_key = "sim"
/// initial_credit = 500.0    # dollars
/// ssh_port = 2222           # written into every instance's SSH fields (host 127.0.0.1)
/// root_dir = "/tmp/vc-sim"  # instance folders: <root_dir>/instances/<id>/
/// destroy_ignored = 0.01    # a destroy answers success but the instance stays (verify!)
///
/// [boot]                    # seconds
/// created_s = [2.0, 10.0]
/// loading_min_s = 20.0
/// loading_median_s = 90.0
/// loading_max_s = 600.0
/// restart_s = [5.0, 30.0]
///
/// [faults]                  # probabilities per instance, rates per hour
/// stuck_created = 0.02
/// exited = 0.01
/// offline = 0.01
/// slow_loading = 0.05
/// slow_loading_factor = 10.0
/// fault_after_mean_h = 2.0
/// outbid_per_hour = 0.1
/// outbid_hold_mean_h = 0.5
/// gpu_taken_on_stop = 0.2
/// gpu_taken_hold_mean_h = 1.0
/// http_429 = 0.01           # HTTP server only
/// http_5xx = 0.005
///
/// [churn]                   # other renters
/// arrivals_per_hour = 20.0
/// hold_mean_h = 3.0
///
/// [bandwidth]               # bytes per second while running
/// up_bytes_per_s = [1000, 50000]
/// down_bytes_per_s = [10000, 500000]
///
/// [rate_limits]             # HTTP server only; minimum seconds between calls
/// default_s = 0.5
/// body = "alternate"        # text | detail | alternate
/// [rate_limits.per_endpoint_s]
/// "GET /api/v0/instances/{id}/" = 2.0
/// "#).unwrap();
/// assert_eq!(cfg.machines, 300);
/// assert_eq!(cfg.boot.created_s, (2.0, 10.0));
/// assert_eq!(cfg.rate_limits.per_endpoint_s["GET /api/v0/instances/{id}/"], 2.0);
/// ```
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SimConfig {
    /// Seed of every random draw (catalogue, boot times, faults, churn).
    pub seed: u64,
    /// Number of host machines (each offers 1, 2, 4, … GPU bundles up to its GPU count).
    pub machines: usize,
    /// Virtual clock start in epoch milliseconds (`None`: [`DEFAULT_START_MS`]). The HTTP server
    /// in wall-clock mode sets this to the wall time.
    pub start_ms: Option<i64>,
    /// The one API key the market accepts.
    pub api_key: String,
    /// Starting credit of the account, in dollars.
    pub initial_credit: f64,
    /// Folder holding one sub-folder per instance (`None`: a fresh folder under the system temp
    /// directory).
    pub root_dir: Option<PathBuf>,
    /// Port written into every instance's SSH fields (host is always 127.0.0.1).
    pub ssh_port: u16,
    /// How long the phases of a boot take.
    pub boot: BootTimes,
    /// Fault rates.
    pub faults: SimFaults,
    /// Other renters taking and freeing GPUs, so offers come and go.
    pub churn: Churn,
    /// Simulated traffic of a running instance (billed per byte).
    pub bandwidth: Bandwidth,
    /// Per-endpoint minimum intervals between requests (HTTP server only).
    pub rate_limits: RateLimits,
    /// Fault: probability that a destroy answers success but the instance stays listed (and
    /// billed) until destroyed again. Vast instances can "reappear", so clients verify
    /// destroys. (Outside [`SimFaults`] so struct literals of it stay valid.)
    pub destroy_ignored: f64,
}

impl std::fmt::Debug for SimConfig {
    // Manual so the API key never reaches logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimConfig")
            .field("seed", &self.seed)
            .field("machines", &self.machines)
            .field("start_ms", &self.start_ms)
            .field("api_key", &"<redacted>")
            .field("initial_credit", &self.initial_credit)
            .field("root_dir", &self.root_dir)
            .field("ssh_port", &self.ssh_port)
            .field("boot", &self.boot)
            .field("faults", &self.faults)
            .field("churn", &self.churn)
            .field("bandwidth", &self.bandwidth)
            .field("rate_limits", &self.rate_limits)
            .field("destroy_ignored", &self.destroy_ignored)
            .finish()
    }
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            machines: 240,
            start_ms: None,
            api_key: "sim".to_string(),
            initial_credit: 1000.0,
            root_dir: None,
            ssh_port: 22,
            boot: BootTimes::default(),
            faults: SimFaults::default(),
            churn: Churn::default(),
            bandwidth: Bandwidth::default(),
            rate_limits: RateLimits::default(),
            destroy_ignored: 0.0,
        }
    }
}

/// Failure to load a [`SimConfig`].
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read sim config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid sim config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid sim config: {0}")]
    Invalid(String),
}

impl SimConfig {
    /// A default config with the given seed.
    pub fn with_seed(seed: u64) -> Self {
        Self {
            seed,
            ..Self::default()
        }
    }

    /// Parses a TOML document; missing keys take their defaults, unknown keys are errors.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        let cfg: SimConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<string>"),
            message: e.to_string().replace('\n', " "),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Loads a TOML file (see [`SimConfig::from_toml_str`]).
    pub fn from_toml_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let cfg: SimConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().replace('\n', " "),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks ranges that would otherwise make the model misbehave.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let rate = |name: &str, v: f64| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(ConfigError::Invalid(format!(
                    "{name} must be a probability in [0, 1], got {v}"
                )))
            }
        };
        let f = &self.faults;
        rate("faults.stuck_created", f.stuck_created)?;
        rate("faults.exited", f.exited)?;
        rate("faults.offline", f.offline)?;
        rate("faults.slow_loading", f.slow_loading)?;
        rate("faults.gpu_taken_on_stop", f.gpu_taken_on_stop)?;
        rate("destroy_ignored", self.destroy_ignored)?;
        rate("faults.http_429", f.http_429)?;
        rate("faults.http_5xx", f.http_5xx)?;
        if f.outbid_per_hour < 0.0 || !f.outbid_per_hour.is_finite() {
            return Err(ConfigError::Invalid(format!(
                "faults.outbid_per_hour must be >= 0, got {}",
                f.outbid_per_hour
            )));
        }
        let b = &self.boot;
        if !(b.created_s.0 >= 0.0 && b.created_s.0 <= b.created_s.1) {
            return Err(ConfigError::Invalid(format!(
                "boot.created_s must be [min, max] with 0 <= min <= max, got {:?}",
                b.created_s
            )));
        }
        if !(b.loading_min_s >= 0.0
            && b.loading_min_s <= b.loading_median_s
            && b.loading_median_s <= b.loading_max_s)
        {
            return Err(ConfigError::Invalid(format!(
                "boot loading times need 0 <= min <= median <= max, got {} / {} / {}",
                b.loading_min_s, b.loading_median_s, b.loading_max_s
            )));
        }
        if self.machines == 0 || self.machines > 100_000 {
            return Err(ConfigError::Invalid(format!(
                "machines must be between 1 and 100000, got {}",
                self.machines
            )));
        }
        if self.api_key.trim().is_empty() {
            return Err(ConfigError::Invalid("api_key must not be empty".into()));
        }
        Ok(())
    }
}

/// Boot phases: `created` for a few seconds, then `loading` (image pull; a log-normal-ish draw
/// between min and max around the median), then `running`. Restarts after stop skip the image
/// pull and take `restart_s`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BootTimes {
    /// Seconds spent in `created` before loading starts: uniform in [min, max].
    pub created_s: (f64, f64),
    pub loading_min_s: f64,
    pub loading_median_s: f64,
    pub loading_max_s: f64,
    /// Seconds from `loading` to `running` on start/reboot: uniform in [min, max].
    pub restart_s: (f64, f64),
}

impl Default for BootTimes {
    fn default() -> Self {
        Self {
            created_s: (2.0, 10.0),
            loading_min_s: 20.0,
            loading_median_s: 90.0,
            loading_max_s: 600.0,
            restart_s: (5.0, 30.0),
        }
    }
}

impl BootTimes {
    /// Boot times short enough for interactive tests through the real CLI.
    pub fn fast() -> Self {
        Self {
            created_s: (0.2, 0.5),
            loading_min_s: 0.5,
            loading_median_s: 1.0,
            loading_max_s: 2.0,
            restart_s: (0.3, 0.8),
        }
    }
}

/// Fault rates. Per-instance rates are drawn once at creation from the seeded generator.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SimFaults {
    /// Probability that an instance stays in `created` with an "OCI runtime create failed"
    /// status message.
    pub stuck_created: f64,
    /// Probability that a running instance's container exits on its own (`exited`).
    pub exited: f64,
    /// Probability that a running instance's host drops off (`offline`).
    pub offline: f64,
    /// Probability that loading takes `slow_loading_factor` times longer.
    pub slow_loading: f64,
    pub slow_loading_factor: f64,
    /// Mean time, in hours, from `running` to the exit/offline fault when one is drawn.
    pub fault_after_mean_h: f64,
    /// Rate (per running hour) at which another renter claims an interruptible instance's GPUs:
    /// 30 % of them rent on demand and always win, the others bid `min_bid` plus a premium
    /// (exponential, mean 15 %) and win only over a lower bid. A bid of exactly `min_bid` is
    /// outbid at this rate; a margin over it is outbid less often.
    pub outbid_per_hour: f64,
    /// Mean hours an outbidding renter keeps the GPUs.
    pub outbid_hold_mean_h: f64,
    /// Probability that another renter takes the GPUs right after a stop, so a later start
    /// waits in `scheduling`.
    pub gpu_taken_on_stop: f64,
    /// Mean hours that renter keeps them.
    pub gpu_taken_hold_mean_h: f64,
    /// Probability that any authenticated request answers 429 (HTTP server only).
    pub http_429: f64,
    /// Probability that any authenticated request answers 502/503/504 (HTTP server only).
    pub http_5xx: f64,
}

impl Default for SimFaults {
    fn default() -> Self {
        Self {
            stuck_created: 0.0,
            exited: 0.0,
            offline: 0.0,
            slow_loading: 0.0,
            slow_loading_factor: 10.0,
            fault_after_mean_h: 2.0,
            outbid_per_hour: 0.0,
            outbid_hold_mean_h: 0.5,
            gpu_taken_on_stop: 0.0,
            gpu_taken_hold_mean_h: 1.0,
            http_429: 0.0,
            http_5xx: 0.0,
        }
    }
}

impl SimFaults {
    /// No faults at all.
    pub fn none() -> Self {
        Self::default()
    }
}

/// Other renters: they arrive at random machines, rent free bundles and leave again.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Churn {
    /// Arrivals per hour across the whole market (0 disables churn).
    pub arrivals_per_hour: f64,
    /// Mean hours a renter keeps its GPUs.
    pub hold_mean_h: f64,
}

impl Default for Churn {
    fn default() -> Self {
        Self {
            arrivals_per_hour: 20.0,
            hold_mean_h: 3.0,
        }
    }
}

/// Traffic of a running instance, drawn per instance uniformly in [min, max] bytes per second.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Bandwidth {
    pub up_bytes_per_s: (u64, u64),
    pub down_bytes_per_s: (u64, u64),
}

impl Default for Bandwidth {
    fn default() -> Self {
        Self {
            up_bytes_per_s: (1_000, 50_000),
            down_bytes_per_s: (10_000, 500_000),
        }
    }
}

/// How 429 bodies look: Vast sends both.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitBody {
    /// `API requests too frequent endpoint threshold=N` as text/plain.
    Text,
    /// `{"detail": "API requests too frequent endpoint threshold=N"}`.
    Detail,
    /// Alternate between the two.
    #[default]
    Alternate,
}

/// Minimum intervals between two requests to one endpoint with one key (Vast limits per endpoint
/// and identity). Keys are `"METHOD /path/with/{id}/"`, for example `"GET /api/v0/instances/{id}/"`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimits {
    /// Interval for endpoints not listed in `per_endpoint_s` (`None`: unlimited).
    pub default_s: Option<f64>,
    pub per_endpoint_s: BTreeMap<String, f64>,
    pub body: RateLimitBody,
}

impl RateLimits {
    /// The thresholds from Vast's published 429 examples.
    pub fn vast_examples() -> Self {
        let mut m = BTreeMap::new();
        for (k, v) in [
            ("PUT /api/v0/asks/{id}/", 4.5),
            ("PUT /api/v0/instances/bid_price/{id}/", 5.5),
            ("DELETE /api/v0/instances/{id}/", 3.0),
            ("PUT /api/v0/instances/{id}/", 1.0),
            ("GET /api/v0/instances/{id}/", 2.0),
            ("GET /api/v1/instances/", 1.0),
            ("PUT /api/v0/instances/reboot/{id}/", 1.0),
            ("GET /api/v0/charges/", 1.0),
            ("POST /api/v0/ssh/", 1.0),
        ] {
            m.insert(k.to_string(), v);
        }
        Self {
            default_s: None,
            per_endpoint_s: m,
            body: RateLimitBody::Alternate,
        }
    }
}
