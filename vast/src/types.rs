//! What Vast sends and takes, with Vast's own field names.
//!
//! Vast's JSON is loose: numbers sometimes arrive as strings, `ports` is null until an instance
//! runs, `HostPort` is a string, IP fields carry trailing whitespace, fields come and go between
//! API versions, and new status strings appear without notice. So every field here is optional
//! or defaulted, numbers are read from numbers or strings, strings are trimmed, and status
//! strings are kept as they are. [`Offer`] and [`Instance`] also keep the raw JSON object, so
//! `--json` output shows exactly what Vast sent (serialising them writes the raw object back).
//!
//! Money fields are `f64` because that is what Vast sends; the ledger converts to decimals.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// Lenient field readers for `#[serde(deserialize_with = ...)]`.
pub mod lenient {
    use super::*;

    fn number_from(v: &Value) -> Option<f64> {
        match v {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => {
                let t = s.trim();
                if t.is_empty() {
                    None
                } else {
                    t.parse::<f64>().ok().filter(|x| x.is_finite())
                }
            }
            Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
            _ => None,
        }
    }

    /// An `f64` from a number or a numeric string; null, missing or unreadable give `None`.
    pub fn opt_f64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        let v = Option::<Value>::deserialize(d)?;
        Ok(v.as_ref().and_then(number_from))
    }

    /// An `i64` from an integer, an integral float or a numeric string.
    pub fn opt_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        let v = Option::<Value>::deserialize(d)?;
        Ok(v.as_ref().and_then(|v| match v {
            Value::Number(n) => n
                .as_i64()
                .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64)),
            Value::String(s) => {
                let t = s.trim();
                t.parse::<i64>().ok().or_else(|| {
                    t.parse::<f64>()
                        .ok()
                        .filter(|f| f.is_finite() && f.fract() == 0.0)
                        .map(|f| f as i64)
                })
            }
            _ => None,
        }))
    }

    /// A `u64` as [`opt_i64`], negatives give `None`.
    pub fn opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        Ok(opt_i64(d)?.and_then(|i| u64::try_from(i).ok()))
    }

    /// A `u32` as [`opt_i64`].
    pub fn opt_u32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
        Ok(opt_i64(d)?.and_then(|i| u32::try_from(i).ok()))
    }

    /// A required `u64` id from a number or a numeric string.
    pub fn id<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        opt_u64(d)?.ok_or_else(|| serde::de::Error::custom("missing or non-numeric id"))
    }

    /// A trimmed string; numbers are turned into text; blank gives `None`.
    pub fn opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        let v = Option::<Value>::deserialize(d)?;
        Ok(v.and_then(|v| match v {
            Value::String(s) => Some(s.trim().to_string()).filter(|s| !s.is_empty()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }))
    }

    /// A string kept exactly (labels may have meaningful spaces); numbers turned into text.
    pub fn opt_string_exact<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        let v = Option::<Value>::deserialize(d)?;
        Ok(v.and_then(|v| match v {
            Value::String(s) => Some(s),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }))
    }

    /// A bool from a bool, 0/1, or "true"/"false"/"1"/"0".
    pub fn opt_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
        let v = Option::<Value>::deserialize(d)?;
        Ok(v.and_then(|v| match v {
            Value::Bool(b) => Some(b),
            Value::Number(n) => n.as_f64().map(|f| f != 0.0),
            Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" => Some(true),
                "false" | "0" | "no" => Some(false),
                _ => None,
            },
            _ => None,
        }))
    }

    /// A list that may be null or missing.
    pub fn vec_or_null<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de>,
    {
        Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
    }
}

/// Deserialize a value as `T` while keeping the raw JSON object next to it.
fn with_raw<'de, D, T>(d: D) -> Result<(T, Value), D::Error>
where
    D: Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    let raw = Value::deserialize(d)?;
    if !raw.is_object() {
        return Err(serde::de::Error::custom(format!(
            "expected a JSON object, got {}",
            short_json(&raw)
        )));
    }
    if raw.get("id").is_none_or(Value::is_null) {
        return Err(serde::de::Error::custom(format!(
            "object without an id: {}",
            short_json(&raw)
        )));
    }
    let typed = serde_json::from_value(raw.clone()).map_err(serde::de::Error::custom)?;
    Ok((typed, raw))
}

fn short_json(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 80 {
        let mut end = 80;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &s[..end])
    } else {
        s
    }
}

/// The typed fields of an offer (see [`Offer`]).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct OfferFields {
    #[serde(deserialize_with = "lenient::id")]
    pub id: u64,
    #[serde(deserialize_with = "lenient::opt_u64")]
    pub ask_contract_id: Option<u64>,
    #[serde(deserialize_with = "lenient::opt_u64")]
    pub bundle_id: Option<u64>,
    #[serde(deserialize_with = "lenient::opt_u64")]
    pub machine_id: Option<u64>,
    #[serde(deserialize_with = "lenient::opt_u64")]
    pub host_id: Option<u64>,
    #[serde(deserialize_with = "lenient::opt_u32")]
    pub num_gpus: Option<u32>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub gpu_name: Option<String>,
    /// MB per GPU.
    #[serde(deserialize_with = "lenient::opt_f64")]
    pub gpu_ram: Option<f64>,
    /// MB over all GPUs.
    #[serde(deserialize_with = "lenient::opt_f64")]
    pub gpu_total_ram: Option<f64>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub gpu_arch: Option<String>,
    #[serde(deserialize_with = "lenient::opt_f64")]
    pub compute_cap: Option<f64>,
    #[serde(deserialize_with = "lenient::opt_f64")]
    pub cuda_max_good: Option<f64>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub driver_version: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub cpu_name: Option<String>,
    #[serde(deserialize_with = "lenient::opt_f64")]
    pub cpu_cores: Option<f64>,
    #[serde(deserialize_with = "lenient::opt_f64")]
    pub cpu_cores_effective: Option<f64>,
    /// MB, whole machine.
    #[serde(deserialize_with = "lenient::opt_f64")]
    pub cpu_ram: Option<f64>,
    /// GB available.
    #[serde(deserialize_with = "lenient::opt_f64")]
    pub disk_space: Option<f64>,
    #[serde(deserialize_with = "lenient::opt_f64")]
    pub disk_bw: Option<f64>,
    #[serde(deserialize_with = "lenient::opt_f64")]
    pub inet_up: Option<f64>,
    #[serde(deserialize_with = "lenient::opt_f64")]
    pub inet_down: Option<f64>,
    /// $/GB.
    #[serde(deserialize_with = "lenient::opt_f64")]
    pub inet_up_cost: Option<f64>,
    /// $/GB.
    #[serde(deserialize_with = "lenient::opt_f64")]
    pub inet_down_cost: Option<f64>,
    /// $/h for the GPUs (compute).
    #[serde(deserialize_with = "lenient::opt_f64")]
    pub dph_base: Option<f64>,
    /// $/h including storage for the searched `allocated_storage`.
    #[serde(deserialize_with = "lenient::opt_f64")]
    pub dph_total: Option<f64>,
    /// $/h, the interruptible floor.
    #[serde(deserialize_with = "lenient::opt_f64")]
    pub min_bid: Option<f64>,
    /// $/GB/month.
    #[serde(deserialize_with = "lenient::opt_f64")]
    pub storage_cost: Option<f64>,
    /// $/h for the allocated storage.
    #[serde(deserialize_with = "lenient::opt_f64")]
    pub storage_total_cost: Option<f64>,
    #[serde(deserialize_with = "lenient::opt_f64")]
    pub dlperf: Option<f64>,
    #[serde(deserialize_with = "lenient::opt_f64")]
    pub dlperf_per_dphtotal: Option<f64>,
    #[serde(deserialize_with = "lenient::opt_f64")]
    pub total_flops: Option<f64>,
    #[serde(deserialize_with = "lenient::opt_f64")]
    pub reliability: Option<f64>,
    #[serde(deserialize_with = "lenient::opt_f64")]
    pub reliability2: Option<f64>,
    #[serde(deserialize_with = "lenient::opt_f64")]
    pub score: Option<f64>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub geolocation: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub verification: Option<String>,
    #[serde(deserialize_with = "lenient::opt_bool")]
    pub rentable: Option<bool>,
    #[serde(deserialize_with = "lenient::opt_bool")]
    pub rented: Option<bool>,
    #[serde(deserialize_with = "lenient::opt_bool")]
    pub is_bid: Option<bool>,
    #[serde(deserialize_with = "lenient::opt_i64")]
    pub hosting_type: Option<i64>,
    #[serde(deserialize_with = "lenient::opt_i64")]
    pub direct_port_count: Option<i64>,
    #[serde(deserialize_with = "lenient::opt_bool")]
    pub static_ip: Option<bool>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub public_ipaddr: Option<String>,
    /// Epoch seconds when the offer ends.
    #[serde(deserialize_with = "lenient::opt_f64")]
    pub end_date: Option<f64>,
    /// Seconds the offer stays available.
    #[serde(deserialize_with = "lenient::opt_f64")]
    pub duration: Option<f64>,
}

/// `Deref` to the typed fields, `Deserialize` keeping the raw JSON beside them, and `Serialize`
/// writing the raw JSON back (so `--json` prints Vast's own field names).
macro_rules! typed_with_raw {
    ($outer:ident, $fields:ident) => {
        impl std::ops::Deref for $outer {
            type Target = $fields;
            fn deref(&self) -> &$fields {
                &self.fields
            }
        }

        impl<'de> Deserialize<'de> for $outer {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let (fields, raw) = with_raw(d)?;
                Ok($outer { fields, raw })
            }
        }

        impl Serialize for $outer {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                self.raw.serialize(s)
            }
        }
    };
}

/// One offer from search: typed fields (deref to [`OfferFields`]) and the raw JSON Vast sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Offer {
    pub fields: OfferFields,
    /// The offer as Vast sent it; `Serialize` writes this back.
    pub raw: Value,
}

typed_with_raw!(Offer, OfferFields);

impl Offer {
    /// Country code: the last two letters of `geolocation` ("Florida, US" → "US").
    pub fn country(&self) -> Option<&str> {
        let g = self.geolocation.as_deref()?.trim();
        let code = g.rsplit([',', ' ']).next()?.trim();
        (code.len() == 2 && code.chars().all(|c| c.is_ascii_alphabetic())).then_some(code)
    }
}

/// One entry of an instance's `ports` map: `{"HostIp": "0.0.0.0", "HostPort": "20000"}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default)]
pub struct PortMapping {
    #[serde(rename = "HostIp", deserialize_with = "lenient::opt_string")]
    pub host_ip: Option<String>,
    #[serde(rename = "HostPort", deserialize_with = "lenient_port")]
    pub host_port: Option<u16>,
}

fn lenient_port<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
    Ok(lenient::opt_i64(d)?.and_then(|p| u16::try_from(p).ok()))
}

/// `ports`: null, or a map from "22/tcp" to a list (itself possibly null) of mappings.
fn lenient_ports<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, Vec<PortMapping>>, D::Error> {
    let v = Option::<Value>::deserialize(d)?;
    let mut out = BTreeMap::new();
    if let Some(Value::Object(m)) = v {
        for (k, v) in m {
            let list = match v {
                Value::Array(items) => items
                    .into_iter()
                    .filter_map(|i| serde_json::from_value::<PortMapping>(i).ok())
                    .collect(),
                _ => Vec::new(),
            };
            out.insert(k, list);
        }
    }
    Ok(out)
}

/// The typed fields of an instance (see [`Instance`]).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct InstanceFields {
    #[serde(deserialize_with = "lenient::id")]
    pub id: u64,
    #[serde(deserialize_with = "lenient::opt_u64")]
    pub machine_id: Option<u64>,
    #[serde(deserialize_with = "lenient::opt_u64")]
    pub host_id: Option<u64>,
    #[serde(deserialize_with = "lenient::opt_string_exact")]
    pub label: Option<String>,
    /// The container's state as Vast reports it; unknown values are kept (see [`InstanceStatus`]).
    #[serde(deserialize_with = "lenient::opt_string")]
    pub actual_status: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub intended_status: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub cur_state: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub next_state: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub status_msg: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub image_uuid: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub image_runtype: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub ssh_host: Option<String>,
    #[serde(deserialize_with = "lenient_port")]
    pub ssh_port: Option<u16>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub public_ipaddr: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub local_ipaddrs: Option<String>,
    /// Empty while `ports` is null (the instance is not running).
    #[serde(deserialize_with = "lenient_ports")]
    pub ports: BTreeMap<String, Vec<PortMapping>>,
    #[serde(deserialize_with = "lenient::opt_i64")]
    pub direct_port_count: Option<i64>,
    #[serde(deserialize_with = "lenient::opt_f64")]
    pub start_date: Option<f64>,
    #[serde(deserialize_with = "lenient::opt_f64")]
    pub end_date: Option<f64>,
    #[serde(deserialize_with = "lenient::opt_f64")]
    pub uptime_mins: Option<f64>,
    #[serde(deserialize_with = "lenient::opt_u32")]
    pub num_gpus: Option<u32>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub gpu_name: Option<String>,
    /// MB per GPU.
    #[serde(deserialize_with = "lenient::opt_f64")]
    pub gpu_ram: Option<f64>,
    /// MB over all GPUs (Vast spells it this way on instances).
    #[serde(deserialize_with = "lenient::opt_f64")]
    pub gpu_totalram: Option<f64>,
    #[serde(deserialize_with = "lenient::opt_f64")]
    pub gpu_util: Option<f64>,
    #[serde(deserialize_with = "lenient::opt_f64")]
    pub gpu_temp: Option<f64>,
    #[serde(deserialize_with = "lenient::opt_f64")]
    pub cpu_ram: Option<f64>,
    #[serde(deserialize_with = "lenient::opt_f64")]
    pub disk_space: Option<f64>,
    #[serde(deserialize_with = "lenient::opt_f64")]
    pub dph_base: Option<f64>,
    #[serde(deserialize_with = "lenient::opt_f64")]
    pub dph_total: Option<f64>,
    #[serde(deserialize_with = "lenient::opt_bool")]
    pub is_bid: Option<bool>,
    #[serde(deserialize_with = "lenient::opt_f64")]
    pub min_bid: Option<f64>,
    #[serde(deserialize_with = "lenient::opt_f64")]
    pub storage_cost: Option<f64>,
    #[serde(deserialize_with = "lenient::opt_f64")]
    pub storage_total_cost: Option<f64>,
    #[serde(deserialize_with = "lenient::opt_f64")]
    pub inet_up_cost: Option<f64>,
    #[serde(deserialize_with = "lenient::opt_f64")]
    pub inet_down_cost: Option<f64>,
    #[serde(deserialize_with = "lenient::opt_f64")]
    pub inet_up_billed: Option<f64>,
    #[serde(deserialize_with = "lenient::opt_f64")]
    pub inet_down_billed: Option<f64>,
    #[serde(deserialize_with = "lenient::opt_f64")]
    pub dlperf: Option<f64>,
    #[serde(deserialize_with = "lenient::opt_f64")]
    pub reliability2: Option<f64>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub geolocation: Option<String>,
    #[serde(deserialize_with = "lenient::opt_f64")]
    pub cuda_max_good: Option<f64>,
}

/// One instance (contract) on the account: typed fields (deref to [`InstanceFields`]) and the raw
/// JSON Vast sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    pub fields: InstanceFields,
    /// The instance as Vast sent it; `Serialize` writes this back.
    pub raw: Value,
}

typed_with_raw!(Instance, InstanceFields);

/// Vast's `actual_status` values; anything new is kept in [`InstanceStatus::Other`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstanceStatus {
    /// `null`: being provisioned.
    Provisioning,
    Created,
    Loading,
    Running,
    Stopped,
    Frozen,
    Exited,
    Rebooting,
    Unknown,
    Offline,
    Scheduling,
    Other(String),
}

impl InstanceStatus {
    pub fn parse(s: Option<&str>) -> Self {
        match s.map(str::trim) {
            None | Some("") => Self::Provisioning,
            Some("created") => Self::Created,
            Some("loading") => Self::Loading,
            Some("running") => Self::Running,
            Some("stopped") => Self::Stopped,
            Some("frozen") => Self::Frozen,
            Some("exited") => Self::Exited,
            Some("rebooting") => Self::Rebooting,
            Some("unknown") => Self::Unknown,
            Some("offline") => Self::Offline,
            Some("scheduling") => Self::Scheduling,
            Some(other) => Self::Other(other.to_string()),
        }
    }
}

/// How to reach an instance over SSH (the user is always `root`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshEndpoint {
    pub host: String,
    pub port: u16,
    /// `true` for a direct port-22 mapping on the host, `false` for Vast's SSH proxy.
    pub direct: bool,
}

impl SshEndpoint {
    pub const USER: &'static str = "root";

    /// `ssh://root@host:port`, as `vastai ssh-url` prints it.
    pub fn url(&self) -> String {
        format!("ssh://{}@{}:{}", Self::USER, self.host, self.port)
    }
}

impl Instance {
    /// Our reading of `actual_status`.
    pub fn status(&self) -> InstanceStatus {
        InstanceStatus::parse(self.actual_status.as_deref())
    }

    /// The SSH endpoint, by the official CLI's `ssh-url` rule: if `ports["22/tcp"]` exists,
    /// `public_ipaddr:HostPort` of its first mapping (direct); otherwise the proxy
    /// `ssh_host:ssh_port`, plus one when `image_runtype` contains "jupyter". `None` when the
    /// needed fields are missing (the instance is not up yet).
    pub fn ssh_endpoint(&self) -> Option<SshEndpoint> {
        if let Some(maps) = self.ports.get("22/tcp") {
            let port = maps.first()?.host_port?;
            let host = self.public_ipaddr.clone()?;
            return Some(SshEndpoint {
                host,
                port,
                direct: true,
            });
        }
        let host = self.ssh_host.clone()?;
        let mut port = self.ssh_port?;
        if self
            .image_runtype
            .as_deref()
            .is_some_and(|r| r.contains("jupyter"))
        {
            port = port.checked_add(1)?;
        }
        Some(SshEndpoint {
            host,
            port,
            direct: false,
        })
    }

    /// Vast's sign that an instance was stopped under us (outbid, or stopped by Vast):
    /// `cur_state == intended_status == next_state == "stopped"`.
    pub fn is_stopped_by_vast_or_outbid(&self) -> bool {
        let s = |v: &Option<String>| v.as_deref() == Some("stopped");
        s(&self.cur_state) && s(&self.intended_status) && s(&self.next_state)
    }
}

/// Body of `PUT /api/v0/asks/{offer_id}/`, shaped as the CLI sends it.
///
/// Setting `price` makes the instance interruptible at that bid; leaving it `None` rents
/// on-demand (even after a search with `type=bid`). `Debug` hides `image_login` (it carries a
/// registry password) and the values of `env` (they often carry tokens).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateInstanceRequest {
    /// Always "me".
    pub client_id: String,
    pub image: Option<String>,
    /// `{"KEY": "value", "-p 8080:8080": "1"}`.
    pub env: BTreeMap<String, String>,
    /// Bid in $/h; `Some` makes the instance interruptible.
    pub price: Option<f64>,
    /// GB of disk.
    pub disk: f64,
    pub label: Option<String>,
    pub extra: Option<String>,
    pub onstart: Option<String>,
    /// `-u user -p password registry`.
    pub image_login: Option<String>,
    pub python_utf8: bool,
    pub lang_utf8: bool,
    pub use_jupyter_lab: bool,
    pub jupyter_dir: Option<String>,
    pub force: bool,
    pub cancel_unavail: bool,
    pub template_hash_id: Option<String>,
    pub user: Option<String>,
    /// e.g. "ssh_direc ssh_proxy" (Vast's spelling), "ssh", "args".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtype: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    /// `running` (default) or `stopped`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_state: Option<String>,
}

impl Default for CreateInstanceRequest {
    fn default() -> Self {
        Self {
            client_id: "me".into(),
            image: None,
            env: BTreeMap::new(),
            price: None,
            disk: 10.0,
            label: None,
            extra: None,
            onstart: None,
            image_login: None,
            python_utf8: false,
            lang_utf8: false,
            use_jupyter_lab: false,
            jupyter_dir: None,
            force: false,
            cancel_unavail: false,
            template_hash_id: None,
            user: None,
            runtype: Some("ssh".into()),
            args: None,
            target_state: None,
        }
    }
}

impl std::fmt::Debug for CreateInstanceRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateInstanceRequest")
            .field("image", &self.image)
            .field("env_keys", &self.env.keys().collect::<Vec<_>>())
            .field("price", &self.price)
            .field("disk", &self.disk)
            .field("label", &self.label)
            .field("onstart_len", &self.onstart.as_ref().map(String::len))
            .field(
                "image_login",
                &self.image_login.as_ref().map(|_| "<redacted>"),
            )
            .field("runtype", &self.runtype)
            .field("args", &self.args)
            .field("cancel_unavail", &self.cancel_unavail)
            .field("target_state", &self.target_state)
            .finish_non_exhaustive()
    }
}

/// Answer to a successful create: `new_contract` is the instance id.
#[derive(Clone, PartialEq, Deserialize, Serialize)]
pub struct CreateInstanceResponse {
    #[serde(default, deserialize_with = "lenient::opt_bool")]
    pub success: Option<bool>,
    #[serde(deserialize_with = "lenient::id")]
    pub new_contract: u64,
    /// A key limited to this instance (a secret; not shown by `Debug`).
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub instance_api_key: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub ask_id: Option<u64>,
}

impl std::fmt::Debug for CreateInstanceResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateInstanceResponse")
            .field("success", &self.success)
            .field("new_contract", &self.new_contract)
            .field(
                "instance_api_key",
                &self.instance_api_key.as_ref().map(|_| "<redacted>"),
            )
            .field("ask_id", &self.ask_id)
            .finish()
    }
}

/// `GET /api/v0/users/current`, without the `api_key` field Vast includes (never kept).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct CurrentUser {
    #[serde(deserialize_with = "lenient::opt_u64")]
    pub id: Option<u64>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub email: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub username: Option<String>,
    /// Spendable dollars.
    #[serde(deserialize_with = "lenient::opt_f64")]
    pub credit: Option<f64>,
    #[serde(deserialize_with = "lenient::opt_f64")]
    pub balance: Option<f64>,
    /// Lifetime spend.
    #[serde(deserialize_with = "lenient::opt_f64")]
    pub total_spend: Option<f64>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub ssh_key: Option<String>,
}

/// A sub-item of a [`Charge`]: `type` is `gpu`, `disk`, `bwu` (upload) or `bwd` (download).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct ChargeItem {
    #[serde(deserialize_with = "lenient::opt_f64")]
    pub start: Option<f64>,
    #[serde(deserialize_with = "lenient::opt_f64")]
    pub end: Option<f64>,
    #[serde(rename = "type", deserialize_with = "lenient::opt_string")]
    pub kind: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub source: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub description: Option<String>,
    /// Dollars, rounded by Vast to 3 decimals.
    #[serde(deserialize_with = "lenient::opt_f64")]
    pub amount: Option<f64>,
    pub metadata: Value,
}

/// One contract's charges over the requested days (`GET /api/v0/charges/`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct Charge {
    #[serde(deserialize_with = "lenient::opt_f64")]
    pub start: Option<f64>,
    #[serde(deserialize_with = "lenient::opt_f64")]
    pub end: Option<f64>,
    /// `instance`, `volume` or `serverless`.
    #[serde(rename = "type", deserialize_with = "lenient::opt_string")]
    pub kind: Option<String>,
    /// e.g. `instance-12345678`.
    #[serde(deserialize_with = "lenient::opt_string")]
    pub source: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub description: Option<String>,
    #[serde(deserialize_with = "lenient::opt_f64")]
    pub amount: Option<f64>,
    pub metadata: Value,
    #[serde(deserialize_with = "lenient::vec_or_null")]
    pub items: Vec<ChargeItem>,
}

impl Charge {
    /// The instance id from `source` ("instance-123" → 123).
    pub fn instance_id(&self) -> Option<u64> {
        self.source
            .as_deref()?
            .strip_prefix("instance-")?
            .trim()
            .parse()
            .ok()
    }

    /// The sum of the sub-items of one type (`gpu`, `disk`, `bwu`, `bwd`).
    pub fn item_amount(&self, kind: &str) -> f64 {
        self.items
            .iter()
            .filter(|i| i.kind.as_deref() == Some(kind))
            .filter_map(|i| i.amount)
            .sum()
    }
}

/// One page of `GET /api/v1/instances/`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct InstancePage {
    #[serde(deserialize_with = "lenient::vec_or_null")]
    pub instances: Vec<Instance>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub next_token: Option<String>,
    #[serde(deserialize_with = "lenient::opt_u64")]
    pub total_instances: Option<u64>,
}

/// One page of `GET /api/v0/charges/`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ChargePage {
    #[serde(deserialize_with = "lenient::vec_or_null")]
    pub results: Vec<Charge>,
    #[serde(deserialize_with = "lenient::opt_string")]
    pub next_token: Option<String>,
}

/// Build a map from an `env`-style list of pairs (`extra_env` on instances) or an object.
pub fn env_pairs(v: &Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m.clone(),
        Value::Array(items) => items
            .iter()
            .filter_map(|p| {
                let p = p.as_array()?;
                Some((p.first()?.as_str()?.to_string(), p.get(1)?.clone()))
            })
            .collect(),
        _ => Map::new(),
    }
}
