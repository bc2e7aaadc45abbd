//! One rented contract: its Vast-visible state, its billing segments and its JSON form.
//!
//! Billing is kept as segments of constant rate between state changes, so totals are exact
//! sums of `rate × milliseconds` (divided once at the end) and any time window (for the
//! `/charges/` feed) can be itemised from the same data.

use std::path::PathBuf;

use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;
use serde::Serialize;
use serde_json::{Value, json};

use super::catalog::Machine;

const MS_PER_HOUR: i64 = 3_600_000;
/// Vast's storage prices are $/GB/month with a 30-day month: $/GB/h = storage_cost / 720.
const HOURS_PER_MONTH: i64 = 720;

/// Exact charges of one instance, by Vast's components.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Charges {
    /// Compute ($/h × hours while `running`/`frozen`; at the bid for interruptible instances).
    pub gpu: Decimal,
    /// Storage (GB × $/GB/month / 720 × hours, in every state but `loading` and `offline`).
    pub disk: Decimal,
    /// Upload bytes × `inet_up_cost` / 1e9.
    pub bwu: Decimal,
    /// Download bytes × `inet_down_cost` / 1e9.
    pub bwd: Decimal,
    /// Sum of the four.
    pub total: Decimal,
    pub gpu_ms: i64,
    pub disk_ms: i64,
    pub running_ms: i64,
    pub bytes_up: u64,
    pub bytes_down: u64,
}

/// A stretch of time with constant billing.
#[derive(Debug, Clone)]
pub(crate) struct Segment {
    pub from_ms: i64,
    pub to_ms: i64,
    /// $/h for compute, when compute is billed.
    pub gpu_rate: Option<Decimal>,
    pub disk: bool,
    pub running: bool,
}

/// Faults drawn for an instance at creation.
#[derive(Debug, Clone, Default)]
pub(crate) struct FaultPlan {
    pub stuck_created: bool,
    pub loading_factor: f64,
    /// Exit or go offline this long after first reaching `running`.
    pub exit_after_ms: Option<i64>,
    pub offline_after_ms: Option<i64>,
    pub fired: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct Instance {
    pub id: u64,
    pub offer_id: u64,
    pub machine: usize,
    pub num_gpus: u32,
    pub created_ms: i64,
    pub destroyed_ms: Option<i64>,
    pub image: String,
    pub label: Option<String>,
    pub onstart: Option<String>,
    pub env: Vec<(String, String)>,
    pub runtype: String,
    pub args: Value,
    pub disk_gb: Decimal,
    pub is_bid: bool,
    pub bid: Option<Decimal>,
    /// On-demand $/h of the bundle.
    pub dph_base: Decimal,
    /// Interruptible floor of the bundle, $/h.
    pub min_bid: Decimal,
    pub storage_cost: Decimal,
    pub inet_up_cost: Decimal,
    pub inet_down_cost: Decimal,
    pub actual: Option<&'static str>,
    pub intended: &'static str,
    pub cur_state: &'static str,
    pub next_state: &'static str,
    pub status_msg: Option<String>,
    pub holds_gpus: bool,
    /// Waiting for GPUs (after an outbid, a too-low bid, or a start while the GPUs are taken).
    pub wants_gpus: bool,
    /// Bumped whenever scheduled events for this instance become stale.
    pub epoch: u64,
    pub plan: FaultPlan,
    pub up_bps: u64,
    pub down_bps: u64,
    pub seg_from: i64,
    pub segments: Vec<Segment>,
    pub running_since: Option<i64>,
    pub ssh_keys: Vec<String>,
    pub history: Vec<(i64, String)>,
    pub dir: PathBuf,
}

impl Instance {
    /// The compute rate in $/h: the bid for interruptible instances, else the on-demand price.
    pub fn gpu_rate(&self) -> Decimal {
        if self.is_bid {
            self.bid.unwrap_or(self.min_bid)
        } else {
            self.dph_base
        }
    }

    fn billing_now(&self) -> (Option<Decimal>, bool, bool) {
        let a = self.actual;
        let gpu = matches!(a, Some("running") | Some("frozen")).then(|| self.gpu_rate());
        let disk = self.destroyed_ms.is_none() && !matches!(a, Some("loading") | Some("offline"));
        let running = a == Some("running");
        (gpu, disk, running)
    }

    /// Closes the open billing segment at `now` (call before any change that affects billing).
    pub fn close_segment(&mut self, now: i64) {
        if now <= self.seg_from {
            return;
        }
        let (gpu_rate, disk, running) = self.billing_now();
        if gpu_rate.is_some() || disk || running {
            // Merge with the previous segment when nothing changed, to keep the list short.
            if let Some(last) = self.segments.last_mut()
                && last.to_ms == self.seg_from
                && last.gpu_rate == gpu_rate
                && last.disk == disk
                && last.running == running
            {
                last.to_ms = now;
                self.seg_from = now;
                return;
            }
            self.segments.push(Segment {
                from_ms: self.seg_from,
                to_ms: now,
                gpu_rate,
                disk,
                running,
            });
        }
        self.seg_from = now;
    }

    /// Sets `actual_status`, closing the billing segment first.
    pub fn set_actual(&mut self, now: i64, status: Option<&'static str>) {
        self.close_segment(now);
        self.actual = status;
        if status == Some("running") {
            self.running_since = Some(now);
        } else {
            self.running_since = None;
        }
    }

    pub fn log(&mut self, now: i64, line: impl Into<String>) {
        self.history.push((now, line.into()));
    }

    /// Exact charges over `[from_ms, to_ms]`, counting the open segment up to `now`.
    pub fn charges_between(&self, from_ms: i64, to_ms: i64, now: i64) -> Charges {
        let mut gpu_num = Decimal::ZERO;
        let mut disk_ms: i64 = 0;
        let mut gpu_ms: i64 = 0;
        let mut running_ms: i64 = 0;
        let open = {
            let (gpu_rate, disk, running) = self.billing_now();
            Segment {
                from_ms: self.seg_from,
                to_ms: now,
                gpu_rate,
                disk,
                running,
            }
        };
        for s in self.segments.iter().chain(std::iter::once(&open)) {
            let a = s.from_ms.max(from_ms);
            let b = s.to_ms.min(to_ms);
            if b <= a {
                continue;
            }
            let d = b - a;
            if let Some(r) = s.gpu_rate {
                gpu_num += r * Decimal::from(d);
                gpu_ms += d;
            }
            if s.disk {
                disk_ms += d;
            }
            if s.running {
                running_ms += d;
            }
        }
        // Bytes are a function of cumulative running time, so a window's bytes are the
        // difference of the cumulative counts at its ends.
        let bytes_up = (running_ms as u128 * self.up_bps as u128 / 1000) as u64;
        let bytes_down = (running_ms as u128 * self.down_bps as u128 / 1000) as u64;
        let gpu = gpu_num / Decimal::from(MS_PER_HOUR);
        let disk = self.disk_gb * self.storage_cost * Decimal::from(disk_ms)
            / Decimal::from(HOURS_PER_MONTH * MS_PER_HOUR);
        let giga = Decimal::from(1_000_000_000u64);
        let bwu = Decimal::from(bytes_up) * self.inet_up_cost / giga;
        let bwd = Decimal::from(bytes_down) * self.inet_down_cost / giga;
        Charges {
            total: gpu + disk + bwu + bwd,
            gpu,
            disk,
            bwu,
            bwd,
            gpu_ms,
            disk_ms,
            running_ms,
            bytes_up,
            bytes_down,
        }
    }

    pub fn charges(&self, now: i64) -> Charges {
        self.charges_between(i64::MIN, i64::MAX, now)
    }

    /// Storage $/h of this instance.
    pub fn storage_per_hour(&self) -> Decimal {
        self.disk_gb * self.storage_cost / Decimal::from(HOURS_PER_MONTH)
    }

    /// The instance as Vast's single-get and v1 list return it.
    pub fn to_json(&self, m: &Machine, now: i64, ssh_port: u16) -> Value {
        let f = |d: Decimal| d.to_f64().unwrap_or(0.0);
        let running = self.actual == Some("running");
        let storage_h = self.storage_per_hour();
        let gpu_h = self.gpu_rate();
        let charges = self.charges(now);
        let ports = if running {
            json!({"22/tcp": [{"HostIp": "0.0.0.0", "HostPort": ssh_port.to_string()}]})
        } else {
            Value::Null
        };
        let extra_env: Vec<Value> = self.env.iter().map(|(k, v)| json!([k, v])).collect();
        let dlperf = m.gpu.dlperf * self.num_gpus as f64;
        let dph_total = gpu_h + storage_h;
        let dph_total_f = f(dph_total);
        let mut v = json!({
            "id": self.id,
            "machine_id": m.machine_id,
            "host_id": m.host_id,
            "bundle_id": self.offer_id,
            "ask_id": self.offer_id,
            "label": self.label,
            "template_id": null,
            "template_hash_id": null,
            "template_name": null,
            "actual_status": self.actual,
            "intended_status": self.intended,
            "cur_state": self.cur_state,
            "next_state": self.next_state,
            "status_msg": self.status_msg,
            "uptime_mins": self.running_since.map(|s| (now - s) as f64 / 60_000.0),
            "image_uuid": self.image,
            "image_args": self.args.as_array().cloned().unwrap_or_default(),
            "image_runtype": self.runtype,
            "extra_env": extra_env,
            "onstart": self.onstart,
            "jupyter_token": format!("{:016x}", self.id.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            "ssh_host": "127.0.0.1",
            "ssh_port": ssh_port,
            "ssh_idx": "0",
            "machine_dir_ssh_port": ssh_port,
            "public_ipaddr": "127.0.0.1",
            "local_ipaddrs": "127.0.0.1\n",
            "ports": ports,
            "direct_port_count": m.direct_port_count,
            "direct_port_start": if m.direct_port_count > 0 { 40000 } else { -1 },
            "direct_port_end": if m.direct_port_count > 0 { 40000 + m.direct_port_count as i64 } else { -1 },
            "static_ip": m.static_ip,
            "inet_up": m.inet_up,
            "inet_down": m.inet_down,
            "start_date": self.created_ms as f64 / 1000.0,
            "end_date": m.end_date_s as f64,
            "client_run_time": charges.running_ms as f64 / 1000.0,
            "host_run_time": charges.running_ms as f64 / 1000.0,
        });
        let more = json!({
            "num_gpus": self.num_gpus,
            "gpu_name": m.gpu.name,
            "gpu_arch": "nvidia",
            "gpu_ram": m.gpu.ram_mb,
            "gpu_totalram": m.gpu.ram_mb * self.num_gpus as u64,
            "gpu_util": 0.0,
            "gpu_temp": if running { 41.0 } else { 0.0 },
            "gpu_frac": self.num_gpus as f64 / m.num_gpus as f64,
            "gpu_lanes": m.gpu_lanes,
            "gpu_mem_bw": m.gpu.mem_bw,
            "gpu_display_active": false,
            "bw_nvlink": m.gpu.nvlink,
            "compute_cap": m.gpu.compute_cap,
            "cuda_max_good": m.cuda_max_good,
            "driver_version": m.driver_version,
            "cpu_arch": "amd64",
            "cpu_cores": m.cpu_cores,
            "cpu_cores_effective": m.cpu_cores as f64 * self.num_gpus as f64 / m.num_gpus as f64,
            "cpu_name": m.cpu_name,
            "cpu_ram": m.cpu_ram_mb,
            "cpu_util": 0.0,
            "mem_limit": null,
            "mem_usage": null,
            "vmem_usage": null,
            "disk_name": m.disk_name,
            "disk_space": f(self.disk_gb),
            "disk_bw": m.disk_bw,
            "disk_util": 0.0,
            "disk_usage": -1,
            "mobo_name": m.mobo_name,
            "os_version": "22.04",
            "pci_gen": m.pci_gen,
            "pcie_bw": m.pcie_bw,
            "has_avx": m.has_avx,
            "volume_info": [],
        });
        merge(&mut v, more);
        let more = json!({
            "dph_base": f(if self.is_bid { gpu_h } else { self.dph_base }),
            "dph_total": dph_total_f,
            "is_bid": self.is_bid,
            "min_bid": f(self.min_bid),
            "storage_cost": f(self.storage_cost),
            "storage_total_cost": f(storage_h),
            "vram_costperhour": f(gpu_h) / (m.gpu.ram_mb as f64 * self.num_gpus as f64 / 1000.0),
            "inet_up_cost": f(self.inet_up_cost),
            "inet_down_cost": f(self.inet_down_cost),
            "internet_up_cost_per_tb": f(self.inet_up_cost) * 1000.0,
            "internet_down_cost_per_tb": f(self.inet_down_cost) * 1000.0,
            "inet_up_billed": charges.bytes_up as f64 / 1000.0,
            "inet_down_billed": charges.bytes_down as f64 / 1000.0,
            "credit_balance": null,
            "credit_discount": null,
            "credit_discount_max": 0.0,
            "search": {
                "gpuCostPerHour": f(gpu_h),
                "diskHour": f(storage_h),
                "totalHour": dph_total_f,
                "discountTotalHour": 0.0,
                "discountedTotalPerHour": dph_total_f
            },
            "instance": {
                "gpuCostPerHour": if running { f(gpu_h) } else { 0.0 },
                "diskHour": f(storage_h),
                "totalHour": if running { dph_total_f } else { f(storage_h) },
                "discountTotalHour": 0.0,
                "discountedTotalPerHour": if running { dph_total_f } else { f(storage_h) }
            },
            "geolocation": m.geolocation,
            "country_code": m.country(),
            "verification": if m.verified { "verified" } else { "unverified" },
            "rentable": true,
            "hosting_type": m.hosting_type,
            "external": false,
            "reliability2": m.reliability,
            "dlperf": dlperf,
            "dlperf_per_dphtotal": if dph_total_f > 0.0 { dlperf / dph_total_f } else { 0.0 },
            "flops_per_dphtotal": if dph_total_f > 0.0 { m.gpu.tflops * self.num_gpus as f64 / dph_total_f } else { 0.0 },
            "total_flops": m.gpu.tflops * self.num_gpus as f64,
            "score": 0.0,
            "logo": "/static/logos/vastai_small2.png",
            "webpage": null,
            "time_remaining": "",
            "time_remaining_isbid": "",
        });
        merge(&mut v, more);
        v
    }
}

/// Adds the keys of `more` to the object `v` (`json!` has a recursion limit on big literals).
pub(crate) fn merge(v: &mut Value, more: Value) {
    if let (Value::Object(a), Value::Object(b)) = (v, more) {
        a.extend(b);
    }
}
