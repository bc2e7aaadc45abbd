//! The market model: machines, GPUs shared between renters, our instances and their lifecycle,
//! faults, billing and the account. Synchronous and deterministic: time moves only through
//! [`Market::advance_to`], and every random draw comes from the seed.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};

use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::catalog::{self, Machine};
use super::config::{DEFAULT_START_MS, SimConfig};
use super::filter;
use super::instance::{Charges, FaultPlan, Instance};
use super::rng::SimRng;

/// Of the renters who claim an interruptible instance's GPUs (`SimFaults::outbid_per_hour`),
/// this share rent on demand and win whatever we bid; the others bid.
const CLAIM_ON_DEMAND_SHARE: f64 = 0.3;
/// A competing bid is the machine's `min_bid` plus an exponential premium of this mean (most
/// renters bid `min_bid` or a little over it, as dstack and SkyPilot do). It takes the GPUs only
/// when it beats ours, so a margin over `min_bid` buys fewer interruptions: about a third fewer
/// at +10 %, and bidders rarely beat a large margin (on-demand renters still do).
const BID_PREMIUM_MEAN: f64 = 0.15;

const OFFER_ID_BASE: u64 = 10_000_000;
const OFFER_SLOTS: u64 = 8;
const OCI_ERROR: &str = "Error response from daemon: failed to create task for container: failed to create shim task: OCI runtime create failed: runc create failed: unable to start container process: error during container init: error running hook #0: error running hook: exit status 1, stdout: , stderr: nvidia-container-cli: initialization error: nvml error: driver/library version mismatch: unknown";

/// Why a market operation failed, with the HTTP status and Vast error code it maps to.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SimError {
    #[error("error 404/3603: no_such_ask Instance type by id {0} is not available.")]
    NoSuchAsk(u64),
    #[error("Instance type {0} is no longer available.")]
    NoLongerAvailable(u64),
    #[error("{0}")]
    InvalidArgs(String),
    #[error("{0}")]
    InvalidPrice(String),
    #[error("Instance {0} not found.")]
    NoSuchInstance(u64),
    #[error("Invalid pagination token")]
    InvalidToken,
    #[error("Error in query parameters: {0} is not a valid search key")]
    InvalidSearchKey(String),
    #[error("Must provide both 'day' gte and lte filters for instance charges")]
    MissingDayFilter,
}

impl SimError {
    /// The HTTP status Vast answers with.
    pub fn status(&self) -> u16 {
        match self {
            SimError::NoSuchAsk(_) | SimError::NoSuchInstance(_) => 404,
            SimError::NoLongerAvailable(_) => 410,
            _ => 400,
        }
    }

    /// Vast's `error` code.
    pub fn code(&self) -> &'static str {
        match self {
            SimError::NoSuchAsk(_) | SimError::NoLongerAvailable(_) => "no_such_ask",
            SimError::InvalidArgs(_)
            | SimError::InvalidSearchKey(_)
            | SimError::MissingDayFilter => "invalid_args",
            SimError::InvalidPrice(_) => "invalid_price",
            SimError::NoSuchInstance(_) => "no_such_instance",
            SimError::InvalidToken => "invalid_token",
        }
    }

    /// The JSON error body.
    pub fn to_json(&self) -> Value {
        let mut v = json!({"success": false, "error": self.code(), "msg": self.to_string()});
        if let SimError::NoSuchAsk(id) | SimError::NoLongerAvailable(id) = self {
            v["ask_id"] = json!(id);
        }
        v
    }
}

/// What a create returned. A bid below the offer's `min_bid` still creates a (stopped)
/// instance: `success` is false but `new_contract` is set, as on Vast.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CreateResult {
    pub success: bool,
    pub new_contract: u64,
    pub error: Option<String>,
    pub msg: Option<String>,
}

impl CreateResult {
    pub fn to_json(&self) -> Value {
        let mut v = json!({"success": self.success, "new_contract": self.new_contract});
        if let Some(e) = &self.error {
            v["error"] = json!(e);
        }
        if let Some(m) = &self.msg {
            v["msg"] = json!(m);
        }
        if self.success {
            v["instance_api_key"] = json!(format!(
                "{:032x}",
                (self.new_contract as u128).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835)
            ));
        }
        v
    }
}

/// One entry of the market's event log (deterministic for a seed and a sequence of calls).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SimEvent {
    pub at_ms: i64,
    pub instance: Option<u64>,
    pub machine_id: Option<u64>,
    pub kind: String,
    pub detail: String,
}

/// Which price view a search asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfferType {
    OnDemand,
    Bid,
    Reserved,
}

impl OfferType {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "on-demand" | "ondemand" | "on_demand" => Some(Self::OnDemand),
            "bid" | "interruptible" => Some(Self::Bid),
            "reserved" => Some(Self::Reserved),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Ours(u64),
    External(u64),
}

#[derive(Debug, Clone)]
struct Holder {
    who: Who,
    gpus: u32,
    /// `None`: on-demand (beats every bid).
    bid: Option<Decimal>,
}

#[derive(Debug, Clone)]
enum Event {
    /// Next boot step (null → created → loading → running) if `epoch` still matches.
    Boot {
        id: u64,
        epoch: u64,
    },
    Exit {
        id: u64,
        epoch: u64,
    },
    Offline {
        id: u64,
        epoch: u64,
    },
    Outbid {
        id: u64,
        epoch: u64,
    },
    ExternalLeave {
        ext: u64,
        machine: usize,
    },
    ChurnArrival,
    /// Balance check, every [`BILLING_TICK_MS`] while instances exist (Vast updates balances
    /// "about once every few seconds" and stops instances at zero).
    BillingTick,
}

const BILLING_TICK_MS: i64 = 10_000;

/// An SSH key registered on the account.
#[derive(Debug, Clone, Serialize)]
pub struct SshKey {
    pub id: u64,
    pub public_key: String,
    pub created_at: f64,
}

/// Offer JSON by machine, then by bundle slot.
type OfferRows = Vec<Vec<Value>>;

static MARKET_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The simulated market. See the module docs of [`crate::sim`].
pub struct Market {
    config: SimConfig,
    now_ms: i64,
    machines: Vec<Machine>,
    holders: Vec<Vec<Holder>>,
    offline: Vec<bool>,
    instances: BTreeMap<u64, Instance>,
    closed: BTreeMap<u64, Instance>,
    queue: BTreeMap<(i64, u64), Event>,
    seq: u64,
    rng: SimRng,
    http_rng: SimRng,
    next_instance_id: u64,
    next_external_id: u64,
    events: Vec<SimEvent>,
    ssh_keys: Vec<SshKey>,
    next_key_id: u64,
    root_dir: PathBuf,
    logs: BTreeMap<String, String>,
    /// Offer JSON per (type, allocated_storage) and then [machine][slot]. Prices never change,
    /// so a search only refreshes the fields that depend on time and occupancy.
    offer_cache: RefCell<BTreeMap<(u8, u64), OfferRows>>,
    billing_tick: bool,
    /// No exact balance check is needed before this time (see `check_credit`).
    next_credit_check_ms: i64,
    /// Exact total of destroyed instances (their charges no longer change).
    closed_total: Decimal,
    /// Instances whose first destroy was ignored (the next one always works).
    ignored_destroys: std::collections::BTreeSet<u64>,
}

impl std::fmt::Debug for Market {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Market")
            .field("seed", &self.config.seed)
            .field("now_ms", &self.now_ms)
            .field("machines", &self.machines.len())
            .field("instances", &self.instances.len())
            .finish()
    }
}

fn dec_of(v: &Value) -> Option<Decimal> {
    match v {
        Value::Number(n) => {
            let s = n.to_string();
            s.parse::<Decimal>()
                .ok()
                .or_else(|| Decimal::from_scientific(&s).ok())
        }
        Value::String(s) => s.trim().parse::<Decimal>().ok(),
        _ => None,
    }
}

fn f64_of(d: Decimal) -> f64 {
    d.to_f64().unwrap_or(0.0)
}

fn round3(d: Decimal) -> f64 {
    f64_of(d.round_dp(3))
}

/// Parses Vast's `env`: a dict, or a docker-flag string (`-e K=V -p 8080:8080`).
fn parse_env(v: &Value) -> Vec<(String, String)> {
    match v {
        Value::Object(o) => o
            .iter()
            .map(|(k, v)| {
                let s = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), s)
            })
            .collect(),
        Value::String(s) => {
            let mut out = Vec::new();
            let words: Vec<&str> = s.split_whitespace().collect();
            let mut i = 0;
            while i < words.len() {
                match words[i] {
                    "-e" if i + 1 < words.len() => {
                        if let Some((k, v)) = words[i + 1].split_once('=') {
                            out.push((
                                k.to_string(),
                                v.trim_matches('"').trim_matches('\'').to_string(),
                            ));
                        }
                        i += 2;
                    }
                    flag @ ("-p" | "-v" | "-n") if i + 1 < words.len() => {
                        out.push((format!("{flag} {}", words[i + 1]), "1".to_string()));
                        i += 2;
                    }
                    "-h" if i + 1 < words.len() => {
                        out.push(("-h".to_string(), words[i + 1].to_string()));
                        i += 2;
                    }
                    _ => i += 1,
                }
            }
            out
        }
        _ => Vec::new(),
    }
}

/// Sends SIGKILL to every process group recorded under `<dir>/pids/` and removes the records.
fn kill_work(dir: &Path) -> usize {
    let pids = dir.join("pids");
    let Ok(rd) = std::fs::read_dir(&pids) else {
        return 0;
    };
    let mut killed = 0;
    for entry in rd.flatten() {
        if let Some(pgid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
            && kill_group(pgid)
        {
            killed += 1;
        }
        let _ = std::fs::remove_file(entry.path());
    }
    killed
}

#[allow(unsafe_code)]
fn kill_group(pgid: i32) -> bool {
    // Never signal "every process" (pgid 0/1 or negative) or our own group.
    if pgid <= 1 {
        return false;
    }
    // SAFETY: getpgrp and kill only read their integer arguments and send a signal; no memory
    // is shared with Rust. ESRCH (already gone) is ignored by design.
    unsafe {
        if libc::getpgrp() == pgid {
            return false;
        }
        libc::kill(-pgid, libc::SIGKILL) == 0
    }
}

impl Market {
    /// Builds the market for `config`: machines and prices from the seed, the clock at
    /// `config.start_ms` (default 2026-01-01).
    pub fn new(config: SimConfig) -> Self {
        let now_ms = config.start_ms.unwrap_or(DEFAULT_START_MS);
        let machines = catalog::generate(config.seed, config.machines, now_ms / 1000);
        let n = machines.len();
        let root_dir = config.root_dir.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!(
                "vast-sim-{}-{}-{}",
                std::process::id(),
                config.seed,
                MARKET_COUNTER.fetch_add(1, AtomicOrdering::Relaxed)
            ))
        });
        let mut rng = SimRng::stream(config.seed, 0xD1CE);
        let next_instance_id = 20_000_000 + rng.int(0, 999_999);
        let mut market = Market {
            http_rng: SimRng::stream(config.seed, 0x4771),
            config,
            now_ms,
            machines,
            holders: vec![Vec::new(); n],
            offline: vec![false; n],
            instances: BTreeMap::new(),
            closed: BTreeMap::new(),
            queue: BTreeMap::new(),
            seq: 0,
            rng,
            next_instance_id,
            next_external_id: 1,
            events: Vec::new(),
            ssh_keys: Vec::new(),
            next_key_id: 5_000,
            root_dir,
            logs: BTreeMap::new(),
            offer_cache: RefCell::new(BTreeMap::new()),
            billing_tick: false,
            ignored_destroys: std::collections::BTreeSet::new(),
            next_credit_check_ms: i64::MIN,
            closed_total: Decimal::ZERO,
        };
        // Start with some GPUs already rented by others, as on a real market.
        let initial = (n as f64 * 0.15) as usize;
        for _ in 0..initial {
            market.churn_arrival(false);
        }
        market.schedule_next_churn();
        market
    }

    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    /// The virtual clock, epoch milliseconds.
    pub fn now_ms(&self) -> i64 {
        self.now_ms
    }

    /// Whether `key` is the account's API key.
    pub fn check_api_key(&self, key: &str) -> bool {
        key == self.config.api_key
    }

    /// Runs every scheduled event up to `now_ms` in time order, then sets the clock there.
    /// Earlier times are ignored (the clock never goes back).
    pub fn advance_to(&mut self, now_ms: i64) {
        if now_ms < self.now_ms {
            return;
        }
        while let Some((&(at, seq), _)) = self.queue.first_key_value() {
            if at > now_ms {
                break;
            }
            let Some(ev) = self.queue.remove(&(at, seq)) else {
                break;
            };
            self.now_ms = self.now_ms.max(at);
            self.handle(ev);
            self.check_credit();
        }
        self.now_ms = now_ms;
        self.check_credit();
    }

    /// The event log so far.
    pub fn events(&self) -> &[SimEvent] {
        &self.events
    }

    /// The folder of instance `id`: `<root>/instances/<id>`. Whatever runs "on" the instance
    /// lives here. Contract with the local transport: each process group started for the
    /// instance is recorded as an empty file named after its pgid in `<instance_dir>/pids/`;
    /// when the instance stops, is outbid, exits, goes offline or is destroyed, the market
    /// sends SIGKILL to each recorded group (ignoring ones already gone) and removes the files.
    /// On destroy the folder itself is removed.
    pub fn instance_dir(&self, id: u64) -> PathBuf {
        self.root_dir.join("instances").join(id.to_string())
    }

    /// The root folder holding all instance folders.
    pub fn root_dir(&self) -> &Path {
        &self.root_dir
    }

    /// Number of host machines.
    pub fn machine_count(&self) -> usize {
        self.machines.len()
    }

    fn log_event(
        &mut self,
        instance: Option<u64>,
        machine: Option<usize>,
        kind: &str,
        detail: String,
    ) {
        let machine_id = machine.map(|m| self.machines[m].machine_id);
        self.events.push(SimEvent {
            at_ms: self.now_ms,
            instance,
            machine_id,
            kind: kind.to_string(),
            detail,
        });
    }

    fn schedule(&mut self, at: i64, ev: Event) {
        self.seq += 1;
        self.queue.insert((at.max(self.now_ms), self.seq), ev);
    }

    fn secs(s: f64) -> i64 {
        (s * 1000.0).round() as i64
    }

    // ---------------------------------------------------------------- GPUs and offers

    fn held(&self, m: usize) -> u32 {
        self.holders[m].iter().map(|h| h.gpus).sum()
    }

    fn free_gpus(&self, m: usize) -> u32 {
        self.machines[m].num_gpus.saturating_sub(self.held(m))
    }

    fn bid_held(&self, m: usize) -> u32 {
        self.holders[m]
            .iter()
            .filter(|h| h.bid.is_some())
            .map(|h| h.gpus)
            .sum()
    }

    /// Decodes an offer id into (machine index, GPUs).
    fn decode_offer(&self, offer_id: u64) -> Option<(usize, u32)> {
        let rel = offer_id.checked_sub(OFFER_ID_BASE)?;
        let m = (rel / OFFER_SLOTS) as usize;
        let slot = (rel % OFFER_SLOTS) as usize;
        let machine = self.machines.get(m)?;
        let n = *machine.bundle_sizes().get(slot)?;
        Some((m, n))
    }

    fn offer_id(m: usize, slot: usize) -> u64 {
        OFFER_ID_BASE + m as u64 * OFFER_SLOTS + slot as u64
    }

    fn offer_visible(&self, m: usize, n: u32) -> bool {
        !self.offline[m] && n <= self.free_gpus(m) + self.bid_held(m)
    }

    /// The offer JSON for `n` GPUs of machine `m`, priced for `typ` with `allocated_storage` GB.
    fn offer_json(&self, m: usize, slot: usize, n: u32, typ: OfferType, storage_gb: f64) -> Value {
        let mach = &self.machines[m];
        let nf = n as f64;
        let ondemand = mach.dph_per_gpu * Decimal::from(n);
        let min_bid = mach.min_bid_per_gpu * Decimal::from(n);
        let base = if typ == OfferType::Bid {
            min_bid
        } else {
            ondemand
        };
        let storage_dec = Decimal::from_f64_retain(storage_gb).unwrap_or_default();
        let storage_total = storage_dec * mach.storage_cost / Decimal::from(720);
        let dph_total = base + storage_total;
        let dph_total_f = f64_of(dph_total);
        let dlperf = mach.gpu.dlperf * nf * (1.0 - 0.04 * nf.log2());
        let total_flops = mach.gpu.tflops * nf;
        let dlperf_usd = if dph_total_f > 0.0 {
            dlperf / dph_total_f
        } else {
            0.0
        };
        let free = self.free_gpus(m);
        let id = Self::offer_id(m, slot);
        let now_s = self.now_ms / 1000;
        let duration = (mach.end_date_s - now_s).max(0) as f64;
        let discount = if typ == OfferType::Reserved { 0.3 } else { 0.0 };
        let discounted = dph_total_f * (1.0 - discount);
        let mut v = json!({
            "id": id,
            "ask_contract_id": id,
            "bundle_id": id,
            "bundled_results": 0,
            "machine_id": mach.machine_id,
            "host_id": mach.host_id,
            "cluster_id": null,
            "hostname": null,
            "num_gpus": n,
            "gpu_name": mach.gpu.name,
            "gpu_ram": mach.gpu.ram_mb,
            "gpu_total_ram": mach.gpu.ram_mb * n as u64,
            "gpu_frac": nf / mach.num_gpus as f64,
            "gpu_arch": "nvidia",
            "gpu_ids": (0..n).collect::<Vec<u32>>(),
            "gpu_lanes": mach.gpu_lanes,
            "gpu_mem_bw": mach.gpu.mem_bw,
            "gpu_max_power": mach.gpu.max_power,
            "gpu_max_temp": 83.0,
            "gpu_display_active": false,
            "compute_cap": mach.gpu.compute_cap,
            "cuda_max_good": mach.cuda_max_good,
            "driver_version": mach.driver_version,
            "driver_vers": filter::numeric_version(mach.driver_version),
            "bw_nvlink": mach.gpu.nvlink,
            "total_flops": total_flops,
            "dlperf": dlperf,
            "cpu_name": mach.cpu_name,
            "cpu_cores": mach.cpu_cores,
            "cpu_cores_effective": mach.cpu_cores as f64 * nf / mach.num_gpus as f64,
            "cpu_ghz": mach.cpu_ghz,
            "cpu_ram": mach.cpu_ram_mb,
            "cpu_arch": "amd64",
            "has_avx": mach.has_avx,
            "disk_space": (mach.disk_space_gb * nf / mach.num_gpus as f64).round(),
            "disk_bw": mach.disk_bw,
            "disk_name": mach.disk_name,
            "mobo_name": mach.mobo_name,
            "os_version": "22.04",
            "pci_gen": mach.pci_gen,
            "pcie_bw": mach.pcie_bw,
        });
        let more = json!({
            "inet_up": mach.inet_up,
            "inet_down": mach.inet_down,
            "inet_up_cost": f64_of(mach.inet_up_cost),
            "inet_down_cost": f64_of(mach.inet_down_cost),
            "internet_up_cost_per_tb": f64_of(mach.inet_up_cost * Decimal::from(1000)),
            "internet_down_cost_per_tb": f64_of(mach.inet_down_cost * Decimal::from(1000)),
            "direct_port_count": mach.direct_port_count,
            "public_ipaddr": mach.public_ipaddr,
            "static_ip": mach.static_ip,
            "dph_base": f64_of(base),
            "dph_total": dph_total_f,
            "dph_total_adj": dph_total_f,
            "min_bid": f64_of(min_bid),
            "storage_cost": f64_of(mach.storage_cost),
            "storage_total_cost": f64_of(storage_total),
            "vram_costperhour": f64_of(base) / (mach.gpu.ram_mb as f64 * nf / 1000.0),
            "credit_discount_max": 0.0,
            "discount_rate": discount,
            "discounted_hourly": f64_of(base) * (1.0 - discount),
            "discounted_dph_total": discounted,
            "platform_fee": 0.0,
            "search": {
                "gpuCostPerHour": f64_of(base),
                "diskHour": f64_of(storage_total),
                "totalHour": dph_total_f,
                "discountTotalHour": dph_total_f - discounted,
                "discountedTotalPerHour": discounted
            },
            "instance": {
                "gpuCostPerHour": f64_of(base),
                "diskHour": f64_of(storage_total),
                "totalHour": dph_total_f,
                "discountTotalHour": dph_total_f - discounted,
                "discountedTotalPerHour": discounted
            },
        });
        super::instance::merge(&mut v, more);
        let more = json!({
            "dlperf_per_dphtotal": dlperf_usd,
            "flops_per_dphtotal": if dph_total_f > 0.0 { total_flops / dph_total_f } else { 0.0 },
            "score": dlperf_usd * mach.reliability.powi(4),
            "rentable": true,
            "rented": n > free,
            "is_bid": typ == OfferType::Bid,
            "external": false,
            "hosting_type": mach.hosting_type,
            "verification": if mach.verified { "verified" } else { "unverified" },
            "vericode": u8::from(mach.verified),
            "vms_enabled": false,
            "is_vm_deverified": false,
            "resource_type": "gpu",
            "reliability": mach.reliability,
            "reliability2": mach.reliability,
            "reliability_mult": 1.0,
            "expected_reliability": mach.reliability,
            "geolocation": mach.geolocation,
            "geolocode": mach.geolocode,
            "start_date": mach.start_date_s as f64,
            "end_date": mach.end_date_s as f64,
            "duration": duration,
            "time_remaining": format!("{:.0} days", duration / 86_400.0),
            "time_remaining_isbid": "",
            "logo": "/static/logos/vastai_small2.png",
            "webpage": null,
            "avail_vol_ask_id": null,
            "avail_vol_dph": null,
            "avail_vol_size": null,
            "nw_disk_min_bw": null,
            "nw_disk_max_bw": null,
            "nw_disk_avg_bw": null,
            "rn": 0,
        });
        super::instance::merge(&mut v, more);
        v
    }

    /// Searches offers with a Vast query body (`{field: {op: value}, "order": [...], "type":
    /// ..., "limit": N, "allocated_storage": GB}`; the `--new` form `{"q": {...}}` also works).
    /// Offers whose GPUs are rented by others (on-demand) or by us are not listed.
    pub fn search(&self, body: &Value) -> Result<Vec<Value>, SimError> {
        let q = match body.get("q") {
            Some(Value::Object(inner)) => inner,
            _ => body
                .as_object()
                .ok_or_else(|| SimError::InvalidArgs("Invalid json body".into()))?,
        };
        let typ = match q.get("type") {
            None | Some(Value::Null) => OfferType::OnDemand,
            Some(Value::String(s)) => OfferType::parse(s).ok_or_else(|| {
                SimError::InvalidArgs(format!(
                    "Invalid type: {s}; expected on-demand, bid or reserved"
                ))
            })?,
            Some(other) => return Err(SimError::InvalidArgs(format!("Invalid type: {other}"))),
        };
        let storage = match q.get("allocated_storage") {
            None | Some(Value::Null) => 8.0,
            Some(v) => filter::as_num(v)
                .filter(|x| *x >= 0.0)
                .ok_or_else(|| SimError::InvalidArgs(format!("Invalid allocated_storage: {v}")))?,
        };
        let limit = match q.get("limit") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                filter::as_num(v)
                    .filter(|x| *x >= 0.0)
                    .ok_or_else(|| SimError::InvalidArgs(format!("Invalid limit: {v}")))?
                    as usize,
            ),
        };
        let mut filters: Map<String, Value> = q.clone();
        filters.insert("allocated_storage".into(), json!(storage));
        let key = (typ as u8, storage.to_bits());
        let mut cache = self.offer_cache.borrow_mut();
        if cache.len() >= 8 && !cache.contains_key(&key) {
            cache.clear();
        }
        let rows = cache.entry(key).or_insert_with(|| {
            (0..self.machines.len())
                .map(|m| {
                    self.machines[m]
                        .bundle_sizes()
                        .into_iter()
                        .enumerate()
                        .map(|(slot, n)| self.offer_json(m, slot, n, typ, storage))
                        .collect()
                })
                .collect()
        });
        let now_s = self.now_ms / 1000;
        let mut hits: Vec<(usize, usize)> = Vec::new();
        for (m, slots) in rows.iter_mut().enumerate() {
            let free = self.free_gpus(m);
            let duration = (self.machines[m].end_date_s - now_s).max(0) as f64;
            for (slot, offer) in slots.iter_mut().enumerate() {
                let n = offer["num_gpus"].as_u64().unwrap_or(0) as u32;
                if !self.offer_visible(m, n) {
                    continue;
                }
                // `duration` may be filtered on; the display fields are refreshed for hits only.
                offer["duration"] = json!(duration);
                if filter::matches(&filters, offer) {
                    offer["rented"] = json!(n > free);
                    offer["time_remaining"] = json!(format!("{:.0} days", duration / 86_400.0));
                    hits.push((m, slot));
                }
            }
        }
        let mut found: Vec<&Value> = hits.iter().map(|(m, slot)| &rows[*m][*slot]).collect();
        let mut order = q.get("order").map(filter::parse_order).unwrap_or_default();
        if order.is_empty() {
            order = vec![("score".to_string(), true)];
        }
        filter::sort_refs(&mut found, &order);
        if let Some(l) = limit {
            found.truncate(l);
        }
        Ok(found.into_iter().cloned().collect())
    }

    /// One offer as search would show it (on-demand view, 8 GB), whether or not it is
    /// currently available.
    pub fn offer(&self, offer_id: u64) -> Option<Value> {
        let (m, n) = self.decode_offer(offer_id)?;
        let slot = self.machines[m]
            .bundle_sizes()
            .iter()
            .position(|x| *x == n)?;
        Some(self.offer_json(m, slot, n, OfferType::OnDemand, 8.0))
    }

    /// Whether an offer can be rented right now.
    pub fn offer_available(&self, offer_id: u64) -> bool {
        self.decode_offer(offer_id)
            .is_some_and(|(m, n)| self.offer_visible(m, n))
    }

    // ---------------------------------------------------------------- churn (other renters)

    fn schedule_next_churn(&mut self) {
        let rate = self.config.churn.arrivals_per_hour;
        if rate > 0.0 {
            let dt = self.rng.exp(3600.0 / rate);
            let at = self.now_ms + Self::secs(dt).max(1);
            self.schedule(at, Event::ChurnArrival);
        }
    }

    fn churn_arrival(&mut self, log: bool) {
        if self.machines.is_empty() {
            return;
        }
        let m = self.rng.int(0, self.machines.len() as u64 - 1) as usize;
        let free = self.free_gpus(m);
        if self.offline[m] || free == 0 {
            return;
        }
        let sizes: Vec<u32> = self.machines[m]
            .bundle_sizes()
            .into_iter()
            .filter(|s| *s <= free)
            .collect();
        let n = *self.rng.pick(&sizes);
        let bid = if self.rng.chance(0.3) {
            let b = self.machines[m].min_bid_per_gpu
                * Decimal::from(n)
                * Decimal::from_f64_retain(self.rng.range(1.0, 1.3)).unwrap_or(Decimal::ONE);
            Some(b.round_dp(4))
        } else {
            None
        };
        let ext = self.next_external_id;
        self.next_external_id += 1;
        self.holders[m].push(Holder {
            who: Who::External(ext),
            gpus: n,
            bid,
        });
        let hold = self.rng.exp(self.config.churn.hold_mean_h * 3600.0);
        let at = self.now_ms + Self::secs(hold).max(1000);
        self.schedule(at, Event::ExternalLeave { ext, machine: m });
        if log {
            self.log_event(
                None,
                Some(m),
                "external_rent",
                format!("renter {ext} took {n} GPU(s)"),
            );
        }
    }

    // ---------------------------------------------------------------- instances

    fn inst(&self, id: u64) -> Result<&Instance, SimError> {
        self.instances.get(&id).ok_or(SimError::NoSuchInstance(id))
    }

    fn inst_mut(&mut self, id: u64) -> Result<&mut Instance, SimError> {
        self.instances
            .get_mut(&id)
            .ok_or(SimError::NoSuchInstance(id))
    }

    /// Tries to give instance `id` its GPUs, evicting lower-priority renters (on-demand beats
    /// every bid; a bid beats strictly lower bids). Returns whether it got them.
    fn try_acquire(&mut self, id: u64) -> bool {
        let Some(inst) = self.instances.get(&id) else {
            return false;
        };
        if inst.holds_gpus {
            return true;
        }
        let m = inst.machine;
        let n = inst.num_gpus;
        let prio = if inst.is_bid {
            Some(inst.gpu_rate())
        } else {
            None
        };
        if self.offline[m] {
            return false;
        }
        if inst.is_bid && inst.gpu_rate() < inst.min_bid {
            return false;
        }
        let free = self.free_gpus(m);
        if free < n {
            let need = n - free;
            let mut victims: Vec<(Decimal, usize)> = self.holders[m]
                .iter()
                .enumerate()
                .filter_map(|(i, h)| match (h.bid, prio) {
                    (Some(b), None) => Some((b, i)),
                    (Some(b), Some(p)) if b < p => Some((b, i)),
                    _ => None,
                })
                .collect();
            let evictable: u32 = victims.iter().map(|(_, i)| self.holders[m][*i].gpus).sum();
            if evictable < need {
                return false;
            }
            victims.sort();
            let mut freed = 0;
            let mut evict: Vec<Who> = Vec::new();
            for (_, i) in victims {
                if freed >= need {
                    break;
                }
                freed += self.holders[m][i].gpus;
                evict.push(self.holders[m][i].who);
            }
            for who in evict {
                match who {
                    Who::Ours(other) => self.preempt(
                        other,
                        "outbid",
                        "Instance outbid by a higher priority renter",
                    ),
                    Who::External(ext) => {
                        self.holders[m].retain(|h| h.who != Who::External(ext));
                        self.log_event(
                            None,
                            Some(m),
                            "external_evicted",
                            format!("renter {ext} lost its GPUs to instance {id}"),
                        );
                    }
                }
            }
        }
        let bid = prio;
        self.holders[m].push(Holder {
            who: Who::Ours(id),
            gpus: n,
            bid,
        });
        if let Some(inst) = self.instances.get_mut(&id) {
            inst.holds_gpus = true;
        }
        true
    }

    fn release(&mut self, id: u64) {
        if let Some(inst) = self.instances.get_mut(&id)
            && inst.holds_gpus
        {
            inst.holds_gpus = false;
            let m = inst.machine;
            self.holders[m].retain(|h| h.who != Who::Ours(id));
        }
    }

    fn kill(&mut self, id: u64) {
        let dir = self.instance_dir(id);
        let n = kill_work(&dir);
        // Not in the event log: whether a process was there to kill depends on real timing,
        // and the log must replay exactly for a seed.
        if n > 0 {
            tracing::debug!(instance = id, groups = n, "sim killed the instance's work");
        }
    }

    /// Stops an instance that lost its GPUs (outbid, taken): stopped in every state field,
    /// storage still billed, waiting to get them back.
    fn preempt(&mut self, id: u64, kind: &str, msg: &str) {
        let now = self.now_ms;
        self.release(id);
        let Some(inst) = self.instances.get_mut(&id) else {
            return;
        };
        inst.set_actual(now, Some("stopped"));
        inst.intended = "stopped";
        inst.cur_state = "stopped";
        inst.next_state = "stopped";
        inst.status_msg = Some(msg.to_string());
        inst.wants_gpus = true;
        inst.epoch += 1;
        inst.log(now, msg);
        let m = inst.machine;
        self.kill(id);
        self.log_event(Some(id), Some(m), kind, msg.to_string());
    }

    /// Starts the boot chain for an instance that has its GPUs: `loading` then `running`
    /// (restart) or null → created → loading → running (fresh).
    fn begin_boot(&mut self, id: u64, fresh: bool) {
        let now = self.now_ms;
        let boot = self.config.boot.clone();
        let Some(inst) = self.instances.get_mut(&id) else {
            return;
        };
        inst.epoch += 1;
        inst.wants_gpus = false;
        inst.intended = "running";
        inst.cur_state = "running";
        inst.next_state = "running";
        let epoch = inst.epoch;
        let delay = if fresh {
            inst.set_actual(now, None);
            inst.status_msg = None;
            self.rng.range(boot.created_s.0, boot.created_s.1) * 0.3
        } else {
            inst.set_actual(now, Some("loading"));
            inst.status_msg = Some("Starting container".into());
            self.rng.range(boot.restart_s.0, boot.restart_s.1)
        };
        self.schedule(now + Self::secs(delay), Event::Boot { id, epoch });
    }

    fn draw_loading_s(&mut self) -> f64 {
        let b = &self.config.boot;
        let (lo, med, hi) = (b.loading_min_s, b.loading_median_s, b.loading_max_s);
        if hi <= lo {
            return lo;
        }
        // Log-normal around the median, clamped: most boots are near the median, a few slow.
        let z = self.rng.normal();
        let sigma = 0.6;
        (med.max(1e-3) * (sigma * z).exp()).clamp(lo, hi)
    }

    fn on_boot(&mut self, id: u64, epoch: u64) {
        let now = self.now_ms;
        let boot = self.config.boot.clone();
        let Some(inst) = self.instances.get(&id) else {
            return;
        };
        if inst.epoch != epoch {
            return;
        }
        match inst.actual {
            None => {
                let stuck = inst.plan.stuck_created;
                let rest = self.rng.range(boot.created_s.0, boot.created_s.1) * 0.7;
                let Some(inst) = self.instances.get_mut(&id) else {
                    return;
                };
                inst.set_actual(now, Some("created"));
                inst.status_msg = Some("Creating container".into());
                inst.log(now, "container created");
                if stuck {
                    inst.status_msg = Some(OCI_ERROR.to_string());
                    inst.log(now, OCI_ERROR);
                    let m = inst.machine;
                    self.log_event(
                        Some(id),
                        Some(m),
                        "stuck_created",
                        "OCI runtime create failed".into(),
                    );
                    return;
                }
                self.schedule(now + Self::secs(rest), Event::Boot { id, epoch });
            }
            Some("created") => {
                let factor = inst.plan.loading_factor.max(1.0);
                let image = inst.image.clone();
                let load = self.draw_loading_s() * factor;
                let Some(inst) = self.instances.get_mut(&id) else {
                    return;
                };
                inst.set_actual(now, Some("loading"));
                inst.status_msg = Some(format!("Pulling image {image}"));
                inst.log(now, format!("pulling {image}"));
                self.schedule(now + Self::secs(load), Event::Boot { id, epoch });
            }
            Some("loading") | Some("rebooting") => self.enter_running(id),
            _ => {}
        }
    }

    fn enter_running(&mut self, id: u64) {
        let now = self.now_ms;
        let outbid_rate = self.config.faults.outbid_per_hour;
        let Some(inst) = self.instances.get_mut(&id) else {
            return;
        };
        inst.set_actual(now, Some("running"));
        inst.intended = "running";
        inst.cur_state = "running";
        inst.next_state = "running";
        inst.status_msg = Some(format!("success, running {}/ssh", inst.image));
        inst.log(now, "container running");
        let epoch = inst.epoch;
        let is_bid = inst.is_bid;
        let m = inst.machine;
        let mut plan_events = Vec::new();
        if !inst.plan.fired {
            if let Some(after) = inst.plan.exit_after_ms {
                plan_events.push((now + after, Event::Exit { id, epoch }));
            }
            if let Some(after) = inst.plan.offline_after_ms {
                plan_events.push((now + after, Event::Offline { id, epoch }));
            }
        }
        self.log_event(Some(id), Some(m), "running", String::new());
        for (at, ev) in plan_events {
            self.schedule(at, ev);
        }
        if is_bid && outbid_rate > 0.0 {
            self.schedule_claim(id, epoch);
        }
    }

    /// Draws when the next renter claims interruptible instance `id`'s GPUs.
    fn schedule_claim(&mut self, id: u64, epoch: u64) {
        let dt = self.rng.exp(3600.0 / self.config.faults.outbid_per_hour);
        self.schedule(
            self.now_ms + Self::secs(dt).max(1),
            Event::Outbid { id, epoch },
        );
    }

    /// Instances waiting for GPUs on machine `m` try again, highest priority first.
    fn reschedule_waiting(&mut self, m: usize) {
        let mut waiting: Vec<(u8, Decimal, u64)> = self
            .instances
            .values()
            .filter(|i| i.machine == m && i.wants_gpus && !i.holds_gpus)
            .map(|i| (u8::from(i.is_bid), -i.gpu_rate(), i.id))
            .collect();
        waiting.sort();
        for (_, _, id) in waiting {
            if self.try_acquire(id) {
                let resumed = self.instances.get(&id).map(|i| i.actual);
                self.log_event(
                    Some(id),
                    Some(m),
                    "resumed",
                    format!("got its GPUs back (was {:?})", resumed.flatten()),
                );
                self.begin_boot(id, false);
            }
        }
    }

    fn handle(&mut self, ev: Event) {
        match ev {
            Event::Boot { id, epoch } => self.on_boot(id, epoch),
            Event::Exit { id, epoch } => {
                if self
                    .instances
                    .get(&id)
                    .is_some_and(|i| i.epoch == epoch && i.actual == Some("running"))
                {
                    let now = self.now_ms;
                    self.release(id);
                    if let Some(inst) = self.instances.get_mut(&id) {
                        inst.plan.fired = true;
                        inst.epoch += 1;
                        inst.set_actual(now, Some("exited"));
                        inst.cur_state = "stopped";
                        inst.status_msg =
                            Some("Error: container exited unexpectedly with code 137".into());
                        inst.log(now, "container exited with code 137");
                        let m = inst.machine;
                        self.kill(id);
                        self.log_event(Some(id), Some(m), "exited", String::new());
                        self.reschedule_waiting(m);
                    }
                }
            }
            Event::Offline { id, epoch } => {
                if self
                    .instances
                    .get(&id)
                    .is_some_and(|i| i.epoch == epoch && i.actual == Some("running"))
                {
                    let m = self.instances[&id].machine;
                    self.take_machine_offline(m);
                }
            }
            Event::Outbid { id, epoch } => {
                let Some((min_bid, ours)) = self
                    .instances
                    .get(&id)
                    .filter(|i| i.epoch == epoch && i.actual == Some("running") && i.is_bid)
                    .map(|i| (i.min_bid, i.gpu_rate()))
                else {
                    return;
                };
                // Another renter wants these GPUs: on demand (wins whatever we bid), or with a
                // bid that wins only if it beats ours.
                let on_demand = self.rng.chance(CLAIM_ON_DEMAND_SHARE);
                let premium = self.rng.exp(BID_PREMIUM_MEAN);
                let theirs = (min_bid
                    * Decimal::from_f64_retain(1.0 + premium).unwrap_or(Decimal::ONE))
                .round_dp(4);
                if on_demand {
                    self.outbid_now(id, None);
                } else if theirs > ours {
                    self.outbid_now(id, Some(theirs));
                } else {
                    // Our bid holds; the next renter comes later.
                    self.schedule_claim(id, epoch);
                }
            }
            Event::ExternalLeave { ext, machine } => {
                let before = self.holders[machine].len();
                self.holders[machine].retain(|h| h.who != Who::External(ext));
                if self.holders[machine].len() != before {
                    self.reschedule_waiting(machine);
                }
            }
            Event::ChurnArrival => {
                self.churn_arrival(false);
                self.schedule_next_churn();
            }
            Event::BillingTick => {
                self.billing_tick = false;
                self.ensure_billing_tick();
            }
        }
    }

    fn take_machine_offline(&mut self, m: usize) {
        let now = self.now_ms;
        self.offline[m] = true;
        let ids: Vec<u64> = self
            .instances
            .values()
            .filter(|i| i.machine == m)
            .map(|i| i.id)
            .collect();
        for id in ids {
            if let Some(inst) = self.instances.get_mut(&id) {
                inst.plan.fired = true;
                inst.epoch += 1;
                inst.set_actual(now, Some("offline"));
                inst.status_msg = Some("Host machine is offline".into());
                inst.log(now, "host went offline");
            }
            self.kill(id);
            self.log_event(Some(id), Some(m), "offline", String::new());
        }
    }

    /// Another renter takes the GPUs of interruptible instance `id`: on demand (`None`) or with
    /// a bid of `their_bid` $/h that beats ours.
    fn outbid_now(&mut self, id: u64, their_bid: Option<Decimal>) {
        let Some(inst) = self.instances.get(&id) else {
            return;
        };
        let m = inst.machine;
        let n = inst.num_gpus;
        let msg = match their_bid {
            Some(b) => format!("Instance outbid: another renter bid ${b}/hr"),
            None => "Instance outbid: an on-demand renter took the GPUs".to_string(),
        };
        self.preempt(id, "outbid", &msg);
        // The outbidding renter takes the freed GPUs (evicting other lower bids if needed).
        let ext = self.next_external_id;
        self.next_external_id += 1;
        let free = self.free_gpus(m);
        let take = n.min(free.max(n));
        self.holders[m].push(Holder {
            who: Who::External(ext),
            gpus: take,
            bid: their_bid,
        });
        let hold = self.rng.exp(self.config.faults.outbid_hold_mean_h * 3600.0);
        let at = self.now_ms + Self::secs(hold).max(1000);
        self.schedule(at, Event::ExternalLeave { ext, machine: m });
    }

    fn ensure_billing_tick(&mut self) {
        if !self.billing_tick && !self.instances.is_empty() {
            self.billing_tick = true;
            let at = self.now_ms + BILLING_TICK_MS;
            self.schedule(at, Event::BillingTick);
        }
    }

    /// The most an instance can cost per hour right now (compute at its rate, storage, and
    /// its traffic at full speed), as f64: only used to know when credit *could* run out.
    fn max_burn_per_hour(inst: &Instance) -> f64 {
        let gpu = f64_of(inst.gpu_rate());
        let disk = f64_of(inst.storage_per_hour());
        let bw = (inst.up_bps as f64 * f64_of(inst.inet_up_cost)
            + inst.down_bps as f64 * f64_of(inst.inet_down_cost))
            * 3600.0
            / 1e9;
        gpu + disk + bw
    }

    fn check_credit(&mut self) {
        if self.instances.is_empty() || self.now_ms < self.next_credit_check_ms {
            return;
        }
        let credit = self.credit();
        if credit > Decimal::ZERO {
            // Skip exact checks until the credit could possibly be gone at the highest
            // possible burn rate (creates and bid changes reset this).
            let per_ms: f64 = self
                .instances
                .values()
                .map(Self::max_burn_per_hour)
                .sum::<f64>()
                / 3_600_000.0;
            let wait = if per_ms > 0.0 {
                (f64_of(credit) / per_ms * 0.9).min(1e15) as i64
            } else {
                i64::MAX / 4
            };
            self.next_credit_check_ms = self.now_ms.saturating_add(wait.max(1));
            return;
        }
        let ids: Vec<u64> = self
            .instances
            .values()
            .filter(|i| i.intended == "running" || i.wants_gpus)
            .map(|i| i.id)
            .collect();
        if ids.is_empty() {
            return;
        }
        self.log_event(
            None,
            None,
            "credit_exhausted",
            format!("stopping {} instance(s)", ids.len()),
        );
        for id in ids {
            let _ = self.stop(id);
        }
    }

    /// Rents offer `offer_id` with a Vast create body (`image`, `disk`, `price`, `label`,
    /// `onstart`, `env`, `runtype`, `args`, `cancel_unavail`, `target_state`). With `price`
    /// the instance is interruptible at that bid.
    pub fn create(&mut self, offer_id: u64, body: &Value) -> Result<CreateResult, SimError> {
        let now = self.now_ms;
        let (m, n) = self
            .decode_offer(offer_id)
            .ok_or(SimError::NoSuchAsk(offer_id))?;
        if !self.offer_visible(m, n) {
            return Err(SimError::NoSuchAsk(offer_id));
        }
        let b = body
            .as_object()
            .ok_or_else(|| SimError::InvalidArgs("Invalid json body".into()))?;
        let image = match b.get("image") {
            Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_string(),
            _ => {
                if b.get("template_hash_id").and_then(Value::as_str).is_some()
                    || b.get("template_id").is_some_and(|v| !v.is_null())
                {
                    "vastai/base-image:cuda-12.4.1-auto".to_string()
                } else {
                    return Err(SimError::InvalidArgs(
                        "error 400/3467: Invalid args: 'image' is required (or a template)".into(),
                    ));
                }
            }
        };
        let mach_disk =
            (self.machines[m].disk_space_gb * n as f64 / self.machines[m].num_gpus as f64).round();
        let disk_gb = match b.get("disk") {
            None | Some(Value::Null) => Decimal::from(8),
            Some(v) => dec_of(v).filter(|d| *d > Decimal::ZERO).ok_or_else(|| {
                SimError::InvalidArgs(format!(
                    "Invalid args: disk must be a positive number of GB, got {v}"
                ))
            })?,
        };
        if f64_of(disk_gb) > mach_disk {
            return Err(SimError::InvalidArgs(format!(
                "Invalid args: disk {disk_gb} GB exceeds the {mach_disk} GB available on offer {offer_id}"
            )));
        }
        let price = match b.get("price") {
            None | Some(Value::Null) => None,
            Some(v) => {
                let p = dec_of(v)
                    .ok_or_else(|| SimError::InvalidPrice(format!("Invalid bid price: {v}")))?;
                if p < Decimal::new(1, 3) || p > Decimal::from(128) {
                    return Err(SimError::InvalidPrice(format!(
                        "Invalid bid price {p}: must be between 0.001 and 128.0"
                    )));
                }
                Some(p)
            }
        };
        let cancel_unavail = b
            .get("cancel_unavail")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let target_stopped = b.get("target_state").and_then(Value::as_str) == Some("stopped");
        let label = b.get("label").and_then(Value::as_str).map(str::to_string);
        let onstart = b.get("onstart").and_then(Value::as_str).map(str::to_string);
        let env = b.get("env").map(parse_env).unwrap_or_default();
        let runtype = b
            .get("runtype")
            .and_then(Value::as_str)
            .unwrap_or("ssh")
            .to_string();
        let args = match b.get("args") {
            Some(Value::Array(a)) => Value::Array(a.clone()),
            _ => match b.get("args_str").and_then(Value::as_str) {
                Some(s) => json!(s.split_whitespace().collect::<Vec<_>>()),
                None => json!([]),
            },
        };

        // Draws in a fixed order so a seed replays exactly.
        let f = self.config.faults.clone();
        let stuck_created = self.rng.chance(f.stuck_created);
        let slow = self.rng.chance(f.slow_loading);
        let exits = self.rng.chance(f.exited);
        let offline = self.rng.chance(f.offline);
        let fault_after = Self::secs(self.rng.exp(f.fault_after_mean_h * 3600.0)).max(1000);
        let bw = self.config.bandwidth.clone();
        let up_bps = self.rng.int(bw.up_bytes_per_s.0, bw.up_bytes_per_s.1);
        let down_bps = self.rng.int(bw.down_bytes_per_s.0, bw.down_bytes_per_s.1);
        let id = self.next_instance_id;
        self.next_instance_id += self.rng.int(1, 37);

        let mach = &self.machines[m];
        let nd = Decimal::from(n);
        let dir = self.instance_dir(id);
        let _ = std::fs::create_dir_all(dir.join("pids"));
        let mut inst = Instance {
            id,
            offer_id,
            machine: m,
            num_gpus: n,
            created_ms: now,
            destroyed_ms: None,
            image,
            label,
            onstart,
            env,
            runtype,
            args,
            disk_gb,
            is_bid: price.is_some(),
            bid: price,
            dph_base: mach.dph_per_gpu * nd,
            min_bid: mach.min_bid_per_gpu * nd,
            storage_cost: mach.storage_cost,
            inet_up_cost: mach.inet_up_cost,
            inet_down_cost: mach.inet_down_cost,
            actual: None,
            intended: "running",
            cur_state: "running",
            next_state: "running",
            status_msg: None,
            holds_gpus: false,
            wants_gpus: false,
            epoch: 0,
            plan: FaultPlan {
                stuck_created,
                loading_factor: if slow { f.slow_loading_factor } else { 1.0 },
                exit_after_ms: exits.then_some(fault_after),
                offline_after_ms: (offline && !exits).then_some(fault_after),
                fired: false,
            },
            up_bps,
            down_bps,
            seg_from: now,
            segments: Vec::new(),
            running_since: None,
            ssh_keys: self.ssh_keys.iter().map(|k| k.public_key.clone()).collect(),
            history: vec![(now, format!("created from offer {offer_id}"))],
            dir,
        };
        let low_bid = price.is_some_and(|p| p < inst.min_bid);
        if low_bid || target_stopped {
            inst.actual = Some("stopped");
            inst.intended = "stopped";
            inst.cur_state = "stopped";
            inst.next_state = "stopped";
            inst.wants_gpus = low_bid && !target_stopped;
            inst.status_msg = Some(if low_bid {
                "Bid below the minimum bid; instance stopped".into()
            } else {
                "Created stopped".into()
            });
        }
        let min_bid = inst.min_bid;
        self.instances.insert(id, inst);
        self.next_credit_check_ms = i64::MIN;
        self.ensure_billing_tick();
        if low_bid {
            self.log_event(
                Some(id),
                Some(m),
                "created",
                format!("offer {offer_id}, bid below min_bid {min_bid}: stopped"),
            );
            return Ok(CreateResult {
                success: false,
                new_contract: id,
                error: Some("insufficient_bid".into()),
                msg: Some(format!(
                    "Your bid of ${}/hr is below the minimum bid of ${min_bid}/hr for offer {offer_id}; instance {id} was created stopped.",
                    price.unwrap_or_default()
                )),
            });
        }
        if target_stopped {
            self.log_event(
                Some(id),
                Some(m),
                "created",
                format!("offer {offer_id}, target_state stopped"),
            );
            return Ok(CreateResult {
                success: true,
                new_contract: id,
                error: None,
                msg: None,
            });
        }
        if self.try_acquire(id) {
            self.log_event(
                Some(id),
                Some(m),
                "created",
                format!(
                    "offer {offer_id}, {n} GPU(s){}",
                    if price.is_some() {
                        ", interruptible"
                    } else {
                        ""
                    }
                ),
            );
            self.begin_boot(id, true);
        } else if cancel_unavail {
            self.instances.remove(&id);
            let _ = std::fs::remove_dir_all(self.instance_dir(id));
            return Err(SimError::NoLongerAvailable(offer_id));
        } else {
            // A bid that does not beat the current renters waits, stopped, for its turn.
            if let Some(inst) = self.instances.get_mut(&id) {
                inst.actual = Some("stopped");
                inst.intended = "stopped";
                inst.cur_state = "stopped";
                inst.next_state = "stopped";
                inst.wants_gpus = true;
                inst.status_msg = Some("Waiting for GPUs: outbid by current renters".into());
            }
            self.log_event(
                Some(id),
                Some(m),
                "created",
                format!("offer {offer_id}: outbid at creation, waiting"),
            );
        }
        Ok(CreateResult {
            success: true,
            new_contract: id,
            error: None,
            msg: None,
        })
    }

    /// The instance as `GET /api/v0/instances/{id}/` returns it; `None` once destroyed.
    pub fn get(&self, id: u64) -> Option<Value> {
        let inst = self.instances.get(&id)?;
        Some(inst.to_json(
            &self.machines[inst.machine],
            self.now_ms,
            self.config.ssh_port,
        ))
    }

    /// All live instances (optionally only those with this label), by id.
    pub fn list(&self, label: Option<&str>) -> Vec<Value> {
        self.instances
            .values()
            .filter(|i| label.is_none_or(|l| i.label.as_deref() == Some(l)))
            .map(|i| i.to_json(&self.machines[i.machine], self.now_ms, self.config.ssh_port))
            .collect()
    }

    /// Ids of live instances.
    pub fn instance_ids(&self) -> Vec<u64> {
        self.instances.keys().copied().collect()
    }

    /// Destroys an instance: billing ends, its work is killed and its folder removed; it
    /// disappears from every listing.
    /// With `destroy_ignored` a destroy may answer success and leave the instance
    /// listed; a later destroy removes it.
    pub fn destroy(&mut self, id: u64) -> Result<(), SimError> {
        let now = self.now_ms;
        let m = self.inst(id)?.machine;
        let p = self.config.destroy_ignored;
        if !self.ignored_destroys.contains(&id) && self.rng.chance(p) {
            self.ignored_destroys.insert(id);
            self.log_event(Some(id), Some(m), "destroy_ignored", String::new());
            return Ok(());
        }
        self.release(id);
        self.kill(id);
        let mut inst = self
            .instances
            .remove(&id)
            .ok_or(SimError::NoSuchInstance(id))?;
        inst.close_segment(now);
        inst.destroyed_ms = Some(now);
        inst.actual = None;
        inst.epoch += 1;
        let m = inst.machine;
        let _ = std::fs::remove_dir_all(&inst.dir);
        self.closed_total += inst.charges(now).total;
        self.closed.insert(id, inst);
        self.log_event(Some(id), Some(m), "destroyed", String::new());
        self.reschedule_waiting(m);
        Ok(())
    }

    /// Stops an instance: its GPUs are released (others may take them), storage keeps billing.
    pub fn stop(&mut self, id: u64) -> Result<(), SimError> {
        let now = self.now_ms;
        let taken_p = self.config.faults.gpu_taken_on_stop;
        let inst = self.inst(id)?;
        if inst.actual == Some("offline") {
            return Ok(());
        }
        let m = inst.machine;
        let n = inst.num_gpus;
        let held = inst.holds_gpus;
        self.release(id);
        let inst = self.inst_mut(id)?;
        inst.epoch += 1;
        inst.wants_gpus = false;
        inst.set_actual(now, Some("stopped"));
        inst.intended = "stopped";
        inst.cur_state = "stopped";
        inst.next_state = "stopped";
        inst.status_msg = Some("Stopped by user".into());
        inst.log(now, "stopped by user");
        self.kill(id);
        self.log_event(Some(id), Some(m), "stopped", String::new());
        if held && self.rng.chance(taken_p) {
            self.take_gpus(m, n);
        }
        self.reschedule_waiting(m);
        Ok(())
    }

    /// Another (on-demand) renter takes `n` free GPUs of machine `m` for a while.
    fn take_gpus(&mut self, m: usize, n: u32) {
        let take = n.min(self.free_gpus(m));
        if take == 0 {
            return;
        }
        let ext = self.next_external_id;
        self.next_external_id += 1;
        self.holders[m].push(Holder {
            who: Who::External(ext),
            gpus: take,
            bid: None,
        });
        let hold = self
            .rng
            .exp(self.config.faults.gpu_taken_hold_mean_h * 3600.0);
        let at = self.now_ms + Self::secs(hold).max(1000);
        self.schedule(at, Event::ExternalLeave { ext, machine: m });
        self.log_event(
            None,
            Some(m),
            "gpus_taken",
            format!("renter {ext} took {take} GPU(s)"),
        );
    }

    /// Starts a stopped instance: `loading` then `running` when its GPUs are free, else
    /// `scheduling` until they are.
    pub fn start(&mut self, id: u64) -> Result<(), SimError> {
        let now = self.now_ms;
        let inst = self.inst(id)?;
        match inst.actual {
            Some("running") | Some("loading") | Some("scheduling") | Some("created") | None
                if inst.intended == "running" =>
            {
                return Ok(());
            }
            Some("offline") => return Ok(()),
            _ => {}
        }
        let m = inst.machine;
        if self.try_acquire(id) {
            self.log_event(Some(id), Some(m), "started", String::new());
            self.begin_boot(id, false);
        } else {
            let inst = self.inst_mut(id)?;
            inst.epoch += 1;
            inst.set_actual(now, Some("scheduling"));
            inst.intended = "running";
            inst.cur_state = "stopped";
            inst.next_state = "running";
            inst.wants_gpus = true;
            inst.status_msg =
                Some("Waiting for the GPUs on this machine to become available".into());
            inst.log(now, "scheduling: GPUs are in use");
            self.log_event(Some(id), Some(m), "scheduling", String::new());
        }
        Ok(())
    }

    /// Reboots a running instance (keeps its GPUs): `rebooting`, then `running`.
    pub fn reboot(&mut self, id: u64) -> Result<(), SimError> {
        let now = self.now_ms;
        let restart = self.config.boot.restart_s;
        let inst = self.inst(id)?;
        if !inst.holds_gpus || inst.actual == Some("offline") {
            return Ok(());
        }
        let m = inst.machine;
        let delay = self.rng.range(restart.0, restart.1);
        let inst = self.inst_mut(id)?;
        inst.epoch += 1;
        let epoch = inst.epoch;
        inst.set_actual(now, Some("rebooting"));
        inst.status_msg = Some("Rebooting".into());
        inst.log(now, "reboot requested");
        self.kill(id);
        self.log_event(Some(id), Some(m), "rebooting", String::new());
        self.schedule(now + Self::secs(delay), Event::Boot { id, epoch });
        Ok(())
    }

    /// Changes the bid of an interruptible instance (`None`: a winning bid). A raised bid that
    /// now beats the renters holding the GPUs resumes the instance.
    pub fn change_bid(&mut self, id: u64, price: Option<Decimal>) -> Result<(), SimError> {
        let now = self.now_ms;
        let inst = self.inst(id)?;
        let m = inst.machine;
        let price = match price {
            Some(p) => p,
            None => {
                let top = self.holders[m]
                    .iter()
                    .filter(|h| h.who != Who::Ours(id))
                    .filter_map(|h| h.bid)
                    .max()
                    .unwrap_or(Decimal::ZERO);
                inst.min_bid.max(top + Decimal::new(1, 3))
            }
        };
        if price < Decimal::new(1, 3) || price > Decimal::from(128) {
            return Err(SimError::InvalidPrice(
                "Please set a bid price >= 0.001.".into(),
            ));
        }
        let inst = self.inst_mut(id)?;
        inst.close_segment(now);
        inst.is_bid = true;
        inst.bid = Some(price);
        inst.log(now, format!("bid changed to ${price}/hr"));
        let holds = inst.holds_gpus;
        let waiting = inst.wants_gpus;
        if holds {
            for h in self.holders[m].iter_mut() {
                if h.who == Who::Ours(id) {
                    h.bid = Some(price);
                }
            }
        }
        self.next_credit_check_ms = i64::MIN;
        self.log_event(Some(id), Some(m), "bid_changed", price.to_string());
        if waiting && self.try_acquire(id) {
            self.log_event(Some(id), Some(m), "resumed", "bid now wins".into());
            self.begin_boot(id, false);
        }
        Ok(())
    }

    /// Sets (or clears) the label.
    pub fn set_label(&mut self, id: u64, label: Option<String>) -> Result<(), SimError> {
        if label.as_ref().is_some_and(|l| l.chars().count() > 1024) {
            return Err(SimError::InvalidArgs(
                "label is longer than 1024 characters".into(),
            ));
        }
        let inst = self.inst_mut(id)?;
        inst.label = label;
        Ok(())
    }

    /// Attaches a public key to an instance.
    pub fn attach_ssh_key(&mut self, id: u64, key: &str) -> Result<(), SimError> {
        let key = key.trim();
        if !key.starts_with("ssh") {
            return Err(SimError::InvalidArgs(
                "Invalid ssh key: a public key starts with 'ssh'".into(),
            ));
        }
        let now = self.now_ms;
        let inst = self.inst_mut(id)?;
        if !inst.ssh_keys.iter().any(|k| k == key) {
            inst.ssh_keys.push(key.to_string());
        }
        inst.log(now, "ssh key attached");
        Ok(())
    }

    /// Public keys attached to an instance.
    pub fn instance_ssh_keys(&self, id: u64) -> Result<Vec<String>, SimError> {
        Ok(self.inst(id)?.ssh_keys.clone())
    }

    /// Removes an attached key (by account key id or by text).
    pub fn detach_ssh_key(&mut self, id: u64, key_id: &str) -> Result<(), SimError> {
        let text = key_id
            .parse::<u64>()
            .ok()
            .and_then(|k| self.ssh_keys.iter().find(|s| s.id == k))
            .map(|s| s.public_key.clone())
            .unwrap_or_else(|| key_id.to_string());
        let inst = self.inst_mut(id)?;
        inst.ssh_keys.retain(|k| *k != text);
        Ok(())
    }

    /// Registers a key on the account (attached to instances created later).
    pub fn add_account_ssh_key(&mut self, key: &str) -> Result<SshKey, SimError> {
        let key = key.trim();
        if !key.starts_with("ssh") {
            return Err(SimError::InvalidArgs(
                "no_ssh_key: a public key starting with 'ssh' is required".into(),
            ));
        }
        let k = SshKey {
            id: self.next_key_id,
            public_key: key.to_string(),
            created_at: self.now_ms as f64 / 1000.0,
        };
        self.next_key_id += 1;
        self.ssh_keys.push(k.clone());
        Ok(k)
    }

    pub fn account_ssh_keys(&self) -> &[SshKey] {
        &self.ssh_keys
    }

    pub fn delete_account_ssh_key(&mut self, key_id: u64) -> bool {
        let before = self.ssh_keys.len();
        self.ssh_keys.retain(|k| k.id != key_id);
        before != self.ssh_keys.len()
    }

    pub fn update_account_ssh_key(&mut self, key_id: u64, key: &str) -> bool {
        match self.ssh_keys.iter_mut().find(|k| k.id == key_id) {
            Some(k) => {
                k.public_key = key.trim().to_string();
                true
            }
            None => false,
        }
    }

    /// The log text of an instance (its lifecycle lines plus container output), last `tail`
    /// lines, optionally only lines containing `filter`.
    pub fn log_text(
        &self,
        id: u64,
        tail: Option<usize>,
        filter: Option<&str>,
    ) -> Result<String, SimError> {
        let inst = self.inst(id)?;
        let mut lines: Vec<String> = Vec::new();
        for (at, line) in &inst.history {
            lines.push(format!("[{:.3}] {line}", *at as f64 / 1000.0));
        }
        if let Some(since) = inst.running_since {
            lines.push(format!(
                "[{:.3}] {} is up; ssh root@127.0.0.1 -p {}",
                since as f64 / 1000.0,
                inst.image,
                self.config.ssh_port
            ));
        }
        let log_file = inst.dir.join("container.log");
        if let Ok(text) = std::fs::read_to_string(&log_file) {
            lines.extend(text.lines().map(str::to_string));
        }
        if let Some(pat) = filter {
            lines.retain(|l| l.contains(pat));
        }
        if let Some(t) = tail {
            let skip = lines.len().saturating_sub(t);
            lines.drain(..skip);
        }
        Ok(lines.join("\n") + "\n")
    }

    /// Prepares logs for download: stores the text under a fresh token and returns the token
    /// (the server serves it at `/sim/logs/<token>.log` without auth, like Vast's S3 URLs).
    pub fn request_logs(
        &mut self,
        id: u64,
        tail: Option<usize>,
        filter: Option<&str>,
    ) -> Result<String, SimError> {
        let text = self.log_text(id, tail, filter)?;
        let token = format!("{:016x}{:08x}", self.http_rng.next_u64(), self.logs.len());
        self.logs.insert(token.clone(), text);
        Ok(token)
    }

    pub fn logs_by_token(&self, token: &str) -> Option<&str> {
        self.logs.get(token).map(String::as_str)
    }

    /// Exact charges of an instance (live or destroyed) up to now.
    pub fn charges(&self, id: u64) -> Option<Charges> {
        self.instances
            .get(&id)
            .or_else(|| self.closed.get(&id))
            .map(|i| i.charges(self.now_ms))
    }

    /// Exact charges so far of the interruptible (bid) instances ever created, live and
    /// destroyed: the part of [`Market::total_charged`] paid at bids.
    pub fn total_charged_at_bids(&self) -> Decimal {
        self.instances
            .values()
            .chain(self.closed.values())
            .filter(|i| i.is_bid)
            .map(|i| i.charges(self.now_ms).total)
            .sum()
    }

    /// Ids of every instance ever created (live and destroyed).
    pub fn all_instance_ids(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .instances
            .keys()
            .chain(self.closed.keys())
            .copied()
            .collect();
        v.sort_unstable();
        v
    }

    /// Exact total spend of the account so far.
    pub fn total_charged(&self) -> Decimal {
        self.closed_total
            + self
                .instances
                .values()
                .map(|i| i.charges(self.now_ms).total)
                .sum::<Decimal>()
    }

    /// Remaining credit: initial credit minus everything charged.
    pub fn credit(&self) -> Decimal {
        Decimal::from_f64_retain(self.config.initial_credit)
            .unwrap_or_default()
            .round_dp(6)
            - self.total_charged()
    }

    /// `GET /api/v0/users/current`.
    pub fn user_json(&self) -> Value {
        let credit = self.credit();
        json!({
            "id": 424242,
            "username": "sim",
            "fullname": "Simulated User",
            "email": "sim@example.invalid",
            "email_verified": true,
            "api_key": self.config.api_key,
            "credit": f64_of(credit.round_dp(6)),
            "balance": 0.0,
            "total_spend": f64_of(self.total_charged().round_dp(6)),
            "balance_threshold": 0.0,
            "balance_threshold_enabled": false,
            "billed_expected": 0.0,
            "billed_verified": 0.0,
            "billing_creditonly": false,
            "can_pay": true,
            "has_billing": true,
            "has_payout": false,
            "got_signup_credit": true,
            "host_agreement_accepted": false,
            "last4": null,
            "paid_expected": 0.0,
            "paid_verified": 0.0,
            "password_resettable": true,
            "paypal_email": null,
            "ssh_key": self.ssh_keys.last().map(|k| k.public_key.clone()),
            "user": "sim",
            "sid": null,
            "key_id": 1,
        })
    }

    /// `GET /api/v1/instances/`: one page of at most 25 instances.
    pub fn list_v1(
        &self,
        select_filters: &Map<String, Value>,
        order_by: &Value,
        limit: Option<i64>,
        after_token: Option<&str>,
    ) -> Result<Value, SimError> {
        const STORED: &[&str] = &[
            "id",
            "actual_status",
            "intended_status",
            "cur_state",
            "next_state",
            "label",
            "gpu_name",
            "verification",
            "machine_id",
            "host_id",
            "is_bid",
            "image_uuid",
            "status_msg",
            "start_date",
            "end_date",
            "geolocation",
            "template_id",
            "bundle_id",
        ];
        for k in select_filters.keys() {
            if !STORED.contains(&k.as_str()) {
                return Err(SimError::InvalidSearchKey(k.clone()));
            }
        }
        let mut order = filter::parse_order(order_by);
        for (col, _) in &order {
            if !STORED.contains(&col.as_str()) {
                return Err(SimError::InvalidArgs(format!(
                    "Invalid order_by column: {col}"
                )));
            }
        }
        if order.is_empty() {
            order.push(("id".into(), false));
        }
        let limit = match limit {
            None => 25,
            Some(l) if l <= 0 => 5,
            Some(l) => l.min(25) as usize,
        };
        let offset = match after_token {
            None | Some("") => 0,
            Some(t) => t
                .strip_prefix("v1.")
                .and_then(|h| usize::from_str_radix(h, 16).ok())
                .ok_or(SimError::InvalidToken)?,
        };
        let mut rows: Vec<Value> = self
            .list(None)
            .into_iter()
            .filter(|r| filter::matches(select_filters, r))
            .collect();
        let mut label_counts: BTreeMap<String, u64> = BTreeMap::new();
        for r in &rows {
            *label_counts
                .entry(r["label"].as_str().unwrap_or("").to_string())
                .or_default() += 1;
        }
        filter::sort_rows(&mut rows, &order);
        let total = rows.len();
        let page: Vec<Value> = rows.into_iter().skip(offset).take(limit).collect();
        let next = offset + page.len();
        let next_token = if next < total {
            Some(format!("v1.{next:x}"))
        } else {
            None
        };
        Ok(json!({
            "success": true,
            "instances_found": page.len(),
            "total_instances": total,
            "label_counts": label_counts,
            "next_token": next_token,
            "instances": page,
        }))
    }

    /// `GET /api/v0/charges/`: per-contract charges over `[day_gte, day_lte]` (epoch seconds),
    /// items `gpu`, `disk`, `bwu`, `bwd`, amounts rounded to 3 decimals.
    pub fn charges_report(
        &self,
        select_filters: &Map<String, Value>,
        latest_first: bool,
        limit: Option<i64>,
        after_token: Option<&str>,
    ) -> Result<Value, SimError> {
        let day = select_filters.get("day").and_then(Value::as_object);
        let gte = day.and_then(|d| d.get("gte")).and_then(filter::as_num);
        let lte = day.and_then(|d| d.get("lte")).and_then(filter::as_num);
        let (Some(gte), Some(lte)) = (gte, lte) else {
            return Err(SimError::MissingDayFilter);
        };
        if let Some(types) = select_filters
            .get("type")
            .and_then(|t| t.get("in"))
            .and_then(Value::as_array)
            && !types.is_empty()
            && !types.iter().any(|t| t.as_str() == Some("instance"))
        {
            return Ok(
                json!({"success": true, "count": 0, "total": 0, "next_token": null, "results": []}),
            );
        }
        let from_ms = (gte * 1000.0) as i64;
        // Bounds are whole seconds and `lte` includes all of its second: a contract that began
        // at 12:00:07.5 is inside `lte = 12:00:07`.
        let to_ms = ((lte * 1000.0) as i64).saturating_add(999).min(self.now_ms);
        let mut results: Vec<(i64, u64, Value)> = Vec::new();
        for inst in self.instances.values().chain(self.closed.values()) {
            let end = inst.destroyed_ms.unwrap_or(self.now_ms);
            if end < from_ms || inst.created_ms > to_ms {
                continue;
            }
            let c = inst.charges_between(from_ms, to_ms, self.now_ms);
            let start_s = inst.created_ms.max(from_ms) / 1000;
            let end_s = end.min(to_ms) / 1000;
            let hours = |ms: i64| ms as f64 / 3_600_000.0;
            let item = |typ: &str, desc: String, amount: Decimal| {
                json!({"start": start_s, "end": end_s, "type": typ, "source": null,
                       "description": desc, "amount": round3(amount), "metadata": {}, "items": []})
            };
            let items = vec![
                item(
                    "gpu",
                    format!(
                        "{:.3} hours at ${}/hour",
                        hours(c.gpu_ms),
                        f64_of(inst.gpu_rate())
                    ),
                    c.gpu,
                ),
                item(
                    "disk",
                    format!(
                        "{:.3} hours of {} GB at ${}/GB/month",
                        hours(c.disk_ms),
                        inst.disk_gb,
                        inst.storage_cost
                    ),
                    c.disk,
                ),
                item(
                    "bwu",
                    format!(
                        "{:.6} GB uploaded at ${}/GB",
                        c.bytes_up as f64 / 1e9,
                        inst.inet_up_cost
                    ),
                    c.bwu,
                ),
                item(
                    "bwd",
                    format!(
                        "{:.6} GB downloaded at ${}/GB",
                        c.bytes_down as f64 / 1e9,
                        inst.inet_down_cost
                    ),
                    c.bwd,
                ),
            ];
            let days = (end_s - start_s) as f64 / 86_400.0;
            results.push((
                inst.created_ms,
                inst.id,
                json!({
                    "start": start_s,
                    "end": end_s,
                    "type": "instance",
                    "source": format!("instance-{}", inst.id),
                    "description": format!("Instance {} Charges - {:.0} days", inst.id, days.ceil()),
                    "amount": round3(c.total),
                    "metadata": {"template_id": null, "label": inst.label},
                    "items": items,
                }),
            ));
        }
        results.sort_by_key(|(start, id, _)| (*start, *id));
        if latest_first {
            results.reverse();
        }
        let limit = match limit {
            None => 100,
            Some(l) if l <= 0 => 100,
            Some(l) => l.min(500) as usize,
        };
        let offset = match after_token {
            None | Some("") => 0,
            Some(t) => t
                .strip_prefix("c1.")
                .and_then(|h| usize::from_str_radix(h, 16).ok())
                .ok_or(SimError::InvalidToken)?,
        };
        let total = results.len();
        let page: Vec<Value> = results
            .into_iter()
            .skip(offset)
            .take(limit)
            .map(|(_, _, v)| v)
            .collect();
        let next = offset + page.len();
        Ok(json!({
            "success": true,
            "count": page.len(),
            "total": total,
            "next_token": if next < total { Some(format!("c1.{next:x}")) } else { None },
            "results": page,
        }))
    }

    // ---------------------------------------------------------------- fault hooks for tests

    /// Outbids an interruptible instance now (another renter takes its GPUs for a while).
    pub fn force_outbid(&mut self, id: u64) -> Result<(), SimError> {
        let inst = self.inst(id)?;
        if !inst.is_bid {
            return Err(SimError::InvalidArgs(format!(
                "instance {id} is not interruptible"
            )));
        }
        if inst.holds_gpus {
            let ours = inst.gpu_rate();
            let factor = Decimal::from_f64_retain(self.rng.range(1.1, 1.5)).unwrap_or(Decimal::TWO);
            let theirs = (ours * factor).round_dp(4).max(ours + Decimal::new(1, 3));
            self.outbid_now(id, Some(theirs));
        }
        Ok(())
    }

    /// Takes the instance's host offline now.
    pub fn force_offline(&mut self, id: u64) -> Result<(), SimError> {
        let m = self.inst(id)?.machine;
        self.take_machine_offline(m);
        Ok(())
    }

    /// Makes the instance's container exit now.
    pub fn force_exit(&mut self, id: u64) -> Result<(), SimError> {
        let epoch = self.inst(id)?.epoch;
        if self.inst(id)?.actual == Some("running") {
            self.handle(Event::Exit { id, epoch });
        }
        Ok(())
    }

    /// Another renter takes every free GPU of the instance's machine for `hold_ms`.
    pub fn force_gpus_taken(&mut self, id: u64, hold_ms: i64) -> Result<(), SimError> {
        let m = self.inst(id)?.machine;
        let free = self.free_gpus(m);
        if free == 0 {
            return Ok(());
        }
        let ext = self.next_external_id;
        self.next_external_id += 1;
        self.holders[m].push(Holder {
            who: Who::External(ext),
            gpus: free,
            bid: None,
        });
        self.schedule(
            self.now_ms + hold_ms.max(1),
            Event::ExternalLeave { ext, machine: m },
        );
        self.log_event(
            None,
            Some(m),
            "gpus_taken",
            format!("renter {ext} took {free} GPU(s)"),
        );
        Ok(())
    }

    /// Rolls the HTTP-level faults for one request: `Some(429)` or `Some(502|503|504)`.
    pub fn roll_http_fault(&mut self) -> Option<u16> {
        let f = &self.config.faults;
        let (p429, p5xx) = (f.http_429, f.http_5xx);
        if self.http_rng.chance(p429) {
            return Some(429);
        }
        if self.http_rng.chance(p5xx) {
            return Some(*self.http_rng.pick(&[502u16, 503, 504]));
        }
        None
    }

    /// A deterministic coin for the HTTP layer (e.g. which 429 body style to use).
    pub fn http_coin(&mut self) -> bool {
        self.http_rng.chance(0.5)
    }

    /// Distinct GPU names on the market (`/api/v0/gpu_names/unique/`).
    pub fn gpu_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .machines
            .iter()
            .map(|m| m.gpu.name.to_string())
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

impl Drop for Market {
    fn drop(&mut self) {
        // Leave no work running behind a dropped market.
        for id in self.instances.keys().copied().collect::<Vec<_>>() {
            kill_work(&self.instance_dir(id));
        }
    }
}
