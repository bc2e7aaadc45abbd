//! The offer query language, parsed exactly as the official `vastai` CLI (version 1.9.1) parses it.
//!
//! Why "exactly": users copy queries between `vastai search offers` and vasticlaude, and Vast's
//! server only understands the JSON the CLI produces. So for one query string we send the same
//! JSON body the CLI sends (numbers stay JSON strings, `gpu_ram` is multiplied by 1000, `_` turns
//! into a space, `any` removes a filter, and so on), and a query the CLI refuses is refused here
//! with the same message. `vast/tests/it/query_vs_cli.rs` checks this against the installed CLI.
//!
//! The grammar is one regular expression, applied repeatedly (like Python's `re.findall`):
//!
//! ```text
//! ([a-zA-Z0-9_]+)( *[=><!]+| +(?:[lg]te?|nin|neq|eq|not ?eq|not ?in|in) )?( *)(\[[^\]]+\]|"[^"]+"|[^ ]+)?( *)
//! ```
//!
//! If the matches, put back together, are not the whole query, the query is refused ("Unconsumed
//! text"). Each match is then `field op value`; see [`parse_query`] for the value rules.
//!
//! Some inputs make the CLI crash with a Python exception instead of printing an error (for
//! example `gpu_ram in [1,2]`); those are refused here with the exception's own message.

use std::sync::LazyLock;

use regex::Regex;
use serde_json::{Map, Value};

/// The fields the CLI knows (`offers_fields`). Others are accepted with a warning and sent as-is.
pub const OFFER_FIELDS: &[&str] = &[
    "bw_nvlink",
    "compute_cap",
    "cpu_arch",
    "cpu_cores",
    "cpu_cores_effective",
    "cpu_ghz",
    "cpu_ram",
    "cuda_max_good",
    "datacenter",
    "direct_port_count",
    "driver_version",
    "disk_bw",
    "disk_space",
    "dlperf",
    "dlperf_per_dphtotal",
    "dph_total",
    "duration",
    "external",
    "flops_per_dphtotal",
    "gpu_arch",
    "gpu_display_active",
    "gpu_frac",
    "gpu_mem_bw",
    "gpu_name",
    "gpu_ram",
    "gpu_total_ram",
    "gpu_max_power",
    "gpu_max_temp",
    "has_avx",
    "host_id",
    "id",
    "inet_down",
    "inet_down_cost",
    "inet_up",
    "inet_up_cost",
    "machine_id",
    "min_bid",
    "mobo_name",
    "num_gpus",
    "pci_gen",
    "pcie_bw",
    "reliability",
    "rentable",
    "rented",
    "storage_cost",
    "static_ip",
    "total_flops",
    "ubuntu_version",
    "verification",
    "verified",
    "vms_enabled",
    "geolocation",
    "cluster_id",
];

/// Field-name aliases (`offers_alias`); they apply to filters and to `order` fields.
pub const OFFER_ALIASES: &[(&str, &str)] = &[
    ("cuda_vers", "cuda_max_good"),
    ("display_active", "gpu_display_active"),
    ("dlperf_usd", "dlperf_per_dphtotal"),
    ("dph", "dph_total"),
    ("flops_usd", "flops_per_dphtotal"),
];

/// Unit multipliers (`offers_mult`): the CLI takes GB and days, the API wants MB (×1000, not
/// ×1024) and seconds. These fields are the only ones whose values become JSON numbers.
pub const OFFER_MULTIPLIERS: &[(&str, f64)] = &[
    ("cpu_ram", 1000.0),
    ("gpu_ram", 1000.0),
    ("gpu_total_ram", 1000.0),
    ("duration", 86400.0),
];

/// Default `--order` of `vastai search offers`.
pub const DEFAULT_ORDER: &str = "score-";
/// Default `--storage` (GB) of `vastai search offers`.
pub const DEFAULT_STORAGE_GB: f64 = 5.0;

/// Resolve an alias (`dph` → `dph_total`); other names are returned unchanged.
pub fn resolve_alias(field: &str) -> &str {
    OFFER_ALIASES
        .iter()
        .find(|(a, _)| *a == field)
        .map_or(field, |(_, f)| f)
}

fn multiplier(field: &str) -> Option<f64> {
    OFFER_MULTIPLIERS
        .iter()
        .find(|(f, _)| *f == field)
        .map(|(_, m)| *m)
}

/// Why a query was refused. `Display` is the CLI's own message (what `vastai` prints after
/// `Error:  `, or the last line of its traceback for the inputs that crash it).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QueryError {
    /// Part of the query matched no `field op value` term.
    #[error("Unconsumed text. Did you forget to quote your query? {} != {}", py_repr(.consumed), py_repr(.query))]
    Unconsumed { consumed: String, query: String },
    /// The operator is not one of `= == != < <= > >= eq neq noteq "not eq" in notin nin "not in"
    /// lt lte gt gte` (an empty operator means a bare word such as `gpu_ram`).
    #[error("Unknown operator. Did you forget to quote your query? {}", py_repr(.op))]
    UnknownOperator { op: String },
    /// `field op` with nothing after it (or an empty list, or a driver version that is not X.Y.Z).
    #[error("Value cannot be blank. Did you forget to quote your query? ({}, {}, {})", py_repr(.field), py_repr(.op), .value)]
    BlankValue {
        field: String,
        op: String,
        /// The value as Python's `repr` shows it (`''`, `[]`, `None`, `0`).
        value: String,
    },
    /// `any`, `?` or `*` with an operator other than equals.
    #[error("Wildcard only makes sense with equals.")]
    Wildcard,
    /// A unit-converted field (`gpu_ram`, `cpu_ram`, `gpu_total_ram`, `duration`) whose value is
    /// not a number.
    #[error("could not convert string to float: {}", py_repr(.value))]
    NotANumber { value: String },
    /// The value of a unit-converted field is infinite or NaN (the CLI crashes serialising it).
    #[error("Out of range float values are not JSON compliant")]
    NotFinite,
    /// `in`/`notin` with a unit-converted field (the CLI crashes with this TypeError).
    #[error("float() argument must be a string or a real number, not 'list'")]
    ListForUnitField,
    /// `driver_version in [...]` (the CLI converts the version first, then crashes splitting it).
    #[error("'{kind}' object has no attribute 'split'")]
    ListOfDriverVersions { kind: &'static str },
    /// A driver version too large for a 64-bit integer (the CLI would send a bignum).
    #[error("driver_version {value:?} is too large")]
    DriverVersionTooLarge { value: String },
    /// `--storage` that is not a finite number.
    #[error("allocated storage must be a finite number of GB, not {0}")]
    BadStorage(f64),
}

/// A parsed query: the filters, plus the fields the CLI would warn about.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedQuery {
    pub filters: Map<String, Value>,
    /// Fields not in [`OFFER_FIELDS`] (after alias resolution), in query order. The CLI prints
    /// `Warning: Unrecognized field: X, see list of recognized fields.` for each and sends them.
    pub unknown_fields: Vec<String>,
}

impl ParsedQuery {
    /// The CLI's warning line for each unknown field.
    pub fn warnings(&self) -> Vec<String> {
        self.unknown_fields
            .iter()
            .map(|f| format!("Warning: Unrecognized field: {f}, see list of recognized fields."))
            .collect()
    }
}

/// Parse a query into filters, without the default filters: `{"field": {"op": value}}`.
///
/// Value rules, in the CLI's order: strip `,[]` from both ends; split `in`/`notin` lists on `,`;
/// `any`/`?`/`*` with `=` removes the field; `_` becomes a space and surrounding `"` go; unit
/// fields become numbers (×1000 or ×86400); `true`/`false`/`None`/`null` become JSON literals;
/// everything else, numbers included, stays a JSON string. `driver_version` X.Y.Z becomes the
/// integer XXXYYYZZZ. Unknown fields are logged (tracing) and kept; use
/// [`parse_query_with_warnings`] to get them.
pub fn parse_query(q: &str) -> Result<Map<String, Value>, QueryError> {
    let parsed = parse_query_with_warnings(q)?;
    for field in &parsed.unknown_fields {
        tracing::warn!(field = %field, "unrecognized offer query field; sent as-is");
    }
    Ok(parsed.filters)
}

/// [`parse_query`], also returning the unknown fields.
pub fn parse_query_with_warnings(q: &str) -> Result<ParsedQuery, QueryError> {
    let mut filters = Map::new();
    let unknown_fields = parse_query_into(q, &mut filters)?;
    Ok(ParsedQuery {
        filters,
        unknown_fields,
    })
}

static TERM: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r#"([a-zA-Z0-9_]+)( *[=><!]+| +(?:[lg]te?|nin|neq|eq|not ?eq|not ?in|in) )?( *)(\[[^\]]+\]|"[^"]+"|[^ ]+)?( *)"#,
    )
    .expect("the query regex is valid")
});

/// A value as the CLI holds it while parsing (a Python str, list, int or None).
enum PyVal {
    Str(String),
    List(Vec<String>),
    Int(i64),
    None,
}

impl PyVal {
    fn repr(&self) -> String {
        match self {
            PyVal::Str(s) => py_repr(s),
            PyVal::List(items) => {
                let inner: Vec<String> = items.iter().map(|s| py_repr(s)).collect();
                format!("[{}]", inner.join(", "))
            }
            PyVal::Int(i) => i.to_string(),
            PyVal::None => "None".to_string(),
        }
    }

    fn is_blank(&self) -> bool {
        match self {
            PyVal::Str(s) => s.is_empty(),
            PyVal::List(l) => l.is_empty(),
            PyVal::Int(i) => *i == 0,
            PyVal::None => true,
        }
    }
}

fn op_name(op: &str) -> Option<&'static str> {
    Some(match op {
        ">=" | "gte" => "gte",
        ">" | "gt" => "gt",
        "<=" | "lte" => "lte",
        "<" | "lt" => "lt",
        "!=" | "neq" | "noteq" | "not eq" => "neq",
        "==" | "=" | "eq" => "eq",
        "notin" | "not in" | "nin" => "notin",
        "in" => "in",
        _ => return None,
    })
}

/// Parse `q` into `res`, which may already hold filters (the defaults): like the CLI, terms merge
/// into existing fields and a wildcard removes them. Returns the unknown fields.
pub fn parse_query_into(q: &str, res: &mut Map<String, Value>) -> Result<Vec<String>, QueryError> {
    let q = py_strip_ws(q);
    let mut terms = Vec::new();
    let mut consumed = String::new();
    for caps in TERM.captures_iter(q) {
        consumed.push_str(caps.get(0).map_or("", |m| m.as_str()));
        let group = |i| caps.get(i).map_or("", |m| m.as_str());
        terms.push((group(1), group(2), group(4)));
    }
    if consumed != q {
        return Err(QueryError::Unconsumed {
            consumed,
            query: q.to_string(),
        });
    }

    let mut unknown = Vec::new();
    for (field, raw_op, raw_value) in terms {
        let value = raw_value.trim_matches(|c| matches!(c, ',' | '[' | ']'));
        let op = py_strip_ws(raw_op);
        let field = resolve_alias(field).to_string();
        // Like Python's setdefault: the entry exists from here on (a wildcard removes it again).
        res.entry(field.clone())
            .or_insert_with(|| Value::Object(Map::new()));

        let mut val = PyVal::Str(value.to_string());
        if field == "driver_version" && value.contains('.') {
            val = numeric_version(value)?;
        }
        if !OFFER_FIELDS.contains(&field.as_str()) {
            unknown.push(field.clone());
        }
        let Some(op_name) = op_name(op) else {
            return Err(QueryError::UnknownOperator { op: op.to_string() });
        };
        if matches!(op_name, "in" | "notin") {
            val = match val {
                PyVal::Str(s) => PyVal::List(
                    s.split(',')
                        .map(py_strip_ws)
                        .filter(|x| !x.is_empty())
                        .map(str::to_string)
                        .collect(),
                ),
                PyVal::Int(_) => return Err(QueryError::ListOfDriverVersions { kind: "int" }),
                PyVal::None => return Err(QueryError::ListOfDriverVersions { kind: "NoneType" }),
                list @ PyVal::List(_) => list,
            };
        }
        if val.is_blank() {
            return Err(QueryError::BlankValue {
                field,
                op: op.to_string(),
                value: val.repr(),
            });
        }
        if let PyVal::Str(s) = &val
            && matches!(s.as_str(), "?" | "*" | "any")
        {
            if op_name != "eq" {
                return Err(QueryError::Wildcard);
            }
            res.remove(&field);
            continue;
        }
        let clean = |s: &str| s.replace('_', " ").trim_matches('"').to_string();
        let val = match val {
            PyVal::Str(s) => PyVal::Str(clean(&s)),
            PyVal::List(l) => PyVal::List(l.iter().map(|s| clean(s)).collect()),
            other => other,
        };

        let json = if let Some(mult) = multiplier(&field) {
            let x = match &val {
                PyVal::Str(s) => {
                    py_float(s).ok_or_else(|| QueryError::NotANumber { value: s.clone() })?
                }
                PyVal::Int(i) => *i as f64,
                PyVal::List(_) => return Err(QueryError::ListForUnitField),
                PyVal::None => return Err(QueryError::ListForUnitField),
            };
            let x = x * mult;
            // Like the CLI, an infinite or NaN value only fails when the body is serialised,
            // after the whole query parsed (a later error wins, a later wildcard removes it).
            serde_json::Number::from_f64(x)
                .map_or_else(|| Value::String(NON_FINITE.into()), Value::Number)
        } else {
            match val {
                PyVal::Str(s) => match s.as_str() {
                    "true" | "True" => Value::Bool(true),
                    "false" | "False" => Value::Bool(false),
                    "None" | "null" => Value::Null,
                    _ => Value::String(s),
                },
                PyVal::List(l) => Value::Array(l.into_iter().map(Value::String).collect()),
                PyVal::Int(i) => Value::from(i),
                PyVal::None => Value::Null,
            }
        };
        let entry = res
            .entry(field)
            .or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        if let Value::Object(ops) = entry {
            ops.insert(op_name.to_string(), json);
        }
    }
    let non_finite = res.values().any(|ops| {
        ops.as_object()
            .is_some_and(|m| m.values().any(|v| v.as_str() == Some(NON_FINITE)))
    });
    if non_finite {
        return Err(QueryError::NotFinite);
    }
    Ok(unknown)
}

/// Stands in for an infinite or NaN number until the query is fully parsed.
const NON_FINITE: &str = "\u{0}non-finite\u{0}";

/// `535.86.05` → `535086005`: each of exactly three parts zero-padded to 3 digits, concatenated,
/// read as an integer. Anything else gives `None`, as the CLI does (which then reports a blank
/// value).
fn numeric_version(s: &str) -> Result<PyVal, QueryError> {
    let parts: Vec<&str> = s.split('.').collect();
    if parts.len() != 3 {
        return Ok(PyVal::None);
    }
    let joined: String = parts.iter().map(|p| py_zfill(p, 3)).collect();
    match py_int(&joined) {
        Some(Ok(i)) => Ok(PyVal::Int(i)),
        Some(Err(())) => Err(QueryError::DriverVersionTooLarge {
            value: s.to_string(),
        }),
        None => Ok(PyVal::None),
    }
}

/// Python's `str.zfill`: pad with zeros on the left to `width` characters, after a sign.
fn py_zfill(s: &str, width: usize) -> String {
    let len = s.chars().count();
    if len >= width {
        return s.to_string();
    }
    let pad = "0".repeat(width - len);
    match s.chars().next() {
        Some(c @ ('+' | '-')) => format!("{c}{pad}{}", &s[1..]),
        _ => format!("{pad}{s}"),
    }
}

/// Python's `int(str)` for base 10: surrounding whitespace, one sign, ASCII digits with single
/// underscores between them. `None` when Python would raise ValueError; `Some(Err)` when the
/// number does not fit in an i64.
fn py_int(s: &str) -> Option<Result<i64, ()>> {
    let t = py_strip_ws(s);
    let (neg, body) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    if body.is_empty() || body.starts_with('_') || body.ends_with('_') || body.contains("__") {
        return None;
    }
    if !body.chars().all(|c| c.is_ascii_digit() || c == '_') {
        return None;
    }
    let digits: String = body.chars().filter(|c| *c != '_').collect();
    let mut n: i64 = 0;
    for d in digits.bytes() {
        let Some(next) = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(i64::from(d - b'0')))
        else {
            return Some(Err(()));
        };
        n = next;
    }
    Some(Ok(if neg { -n } else { n }))
}

/// Python's `float(str)`: surrounding whitespace allowed; decimal, exponent, inf and nan forms.
fn py_float(s: &str) -> Option<f64> {
    let t = py_strip_ws(s);
    // Rust accepts the same spellings as Python here except that Python also allows `_` between
    // digits, which cannot occur: every `_` was turned into a space before this point.
    if t.is_empty() || t.contains('_') {
        return None;
    }
    t.parse::<f64>().ok()
}

/// Python's `str.isspace` for one character.
fn py_isspace(c: char) -> bool {
    c.is_whitespace() || matches!(c, '\u{1c}'..='\u{1f}')
}

/// Python's `str.strip()` with no argument.
fn py_strip_ws(s: &str) -> &str {
    s.trim_matches(py_isspace)
}

/// Whether Python's `str.isprintable` holds for `c` (approximated outside Latin-1 for the
/// format and separator characters one meets in practice).
fn py_printable(c: char) -> bool {
    let u = c as u32;
    if u < 0x20 || (0x7f..=0xa0).contains(&u) || u == 0xad {
        return false;
    }
    if c == ' ' {
        return true;
    }
    !(c.is_whitespace()
        || matches!(u, 0x200b..=0x200f | 0x2028..=0x202e | 0x2060..=0x206f | 0xfeff | 0xfff9..=0xfffb)
        || (0xe000..=0xf8ff).contains(&u))
}

/// Python's `repr(str)`.
pub fn py_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if py_printable(c) => out.push(c),
            c => {
                let u = c as u32;
                if u < 0x100 {
                    out.push_str(&format!("\\x{u:02x}"));
                } else if u < 0x10000 {
                    out.push_str(&format!("\\u{u:04x}"));
                } else {
                    out.push_str(&format!("\\U{u:08x}"));
                }
            }
        }
    }
    out.push(quote);
    out
}

/// Sort direction of one `order` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Asc,
    Desc,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Asc => "asc",
            Direction::Desc => "desc",
        }
    }
}

/// Parse a `-o/--order` string as the CLI does: comma-separated fields; a `-` at either end means
/// descending, a `+` ascending (checked second, so it wins); aliases apply; blank items are skipped.
pub fn parse_order(order: &str) -> Vec<(String, Direction)> {
    let mut out = Vec::new();
    for name in order.split(',') {
        let name = py_strip_ws(name);
        if name.is_empty() {
            continue;
        }
        let mut direction = Direction::Asc;
        let mut field = name;
        let minus = name.trim_matches('-');
        if minus != name {
            direction = Direction::Desc;
            field = minus;
        }
        let plus = name.trim_matches('+');
        if plus != name {
            direction = Direction::Asc;
            field = plus;
        }
        out.push((resolve_alias(field).to_string(), direction));
    }
    out
}

/// Which prices a search shows: `on-demand`, `bid` (interruptible) or `reserved`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum OfferType {
    #[default]
    #[serde(rename = "on-demand")]
    OnDemand,
    #[serde(rename = "bid")]
    Bid,
    #[serde(rename = "reserved")]
    Reserved,
}

impl OfferType {
    /// The value sent as `type`.
    pub fn as_str(self) -> &'static str {
        match self {
            OfferType::OnDemand => "on-demand",
            OfferType::Bid => "bid",
            OfferType::Reserved => "reserved",
        }
    }
}

impl std::str::FromStr for OfferType {
    type Err = String;

    /// Accepts the CLI's spellings; `interruptible` means `bid` as in the CLI.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "on-demand" | "ondemand" => Ok(OfferType::OnDemand),
            "bid" | "interruptible" => Ok(OfferType::Bid),
            "reserved" => Ok(OfferType::Reserved),
            other => Err(format!(
                "unknown offer type {other:?}; expected on-demand, bid (interruptible) or reserved"
            )),
        }
    }
}

impl std::fmt::Display for OfferType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything `vastai search offers` takes, turned into the POST /api/v0/bundles/ body by
/// [`SearchRequest::to_body`].
#[derive(Debug, Clone, PartialEq)]
pub struct SearchRequest {
    /// The query string (positional words joined with spaces).
    pub query: String,
    /// `--type`.
    pub kind: OfferType,
    /// `-o/--order` as the CLI takes it, e.g. `"score-"` or `"num_gpus,total_flops-"`.
    pub order: String,
    /// `--limit`; like the CLI, `Some(0)` sends no limit.
    pub limit: Option<u32>,
    /// `--storage` GB used to price the disk (`allocated_storage`).
    pub storage_gb: f64,
    /// `-n/--no-default`: leave out the default filters verified/external/rentable.
    pub no_default: bool,
}

impl Default for SearchRequest {
    fn default() -> Self {
        Self {
            query: String::new(),
            kind: OfferType::OnDemand,
            order: DEFAULT_ORDER.to_string(),
            limit: None,
            storage_gb: DEFAULT_STORAGE_GB,
            no_default: false,
        }
    }
}

impl SearchRequest {
    /// A request for `query` with the CLI's defaults.
    pub fn new(query: impl Into<String>) -> Self {
        Self {
            query: query.into(),
            ..Self::default()
        }
    }

    /// The default filters the CLI starts from (unless `--no-default`).
    pub fn default_filters() -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("verified".into(), serde_json::json!({"eq": true}));
        m.insert("external".into(), serde_json::json!({"eq": false}));
        m.insert("rentable".into(), serde_json::json!({"eq": true}));
        m
    }

    /// The JSON body the CLI would POST for the same arguments.
    pub fn to_body(&self) -> Result<Value, QueryError> {
        Ok(self.to_body_with_warnings()?.0)
    }

    /// [`SearchRequest::to_body`], also returning the unknown fields (for the CLI's warnings).
    pub fn to_body_with_warnings(&self) -> Result<(Value, Vec<String>), QueryError> {
        if !self.storage_gb.is_finite() {
            return Err(QueryError::BadStorage(self.storage_gb));
        }
        let mut body = if self.no_default {
            Map::new()
        } else {
            Self::default_filters()
        };
        let unknown = parse_query_into(&self.query, &mut body)?;
        let order: Vec<Value> = parse_order(&self.order)
            .into_iter()
            .map(|(f, d)| serde_json::json!([f, d.as_str()]))
            .collect();
        body.insert("order".into(), Value::Array(order));
        body.insert("type".into(), Value::from(self.kind.as_str()));
        if let Some(limit) = self.limit.filter(|l| *l != 0) {
            body.insert("limit".into(), Value::from(limit));
        }
        body.insert("allocated_storage".into(), Value::from(self.storage_gb));
        Ok((Value::Object(body), unknown))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(q: &str) -> Value {
        Value::Object(parse_query(q).unwrap())
    }

    #[test]
    fn worked_example_from_reference() {
        let body = SearchRequest::new("reliability > 0.95 num_gpus=1 gpu_ram >= 24 dph < 0.5")
            .to_body()
            .unwrap();
        assert_eq!(
            body,
            json!({"verified": {"eq": true}, "external": {"eq": false}, "rentable": {"eq": true},
             "reliability": {"gt": "0.95"}, "num_gpus": {"eq": "1"}, "gpu_ram": {"gte": 24000.0},
             "dph_total": {"lt": "0.5"}, "order": [["score", "desc"]], "type": "on-demand",
             "allocated_storage": 5.0})
        );
    }

    #[test]
    fn lists_versions_durations() {
        assert_eq!(
            p(
                r#"gpu_name in [RTX_4090,"RTX 3090"] geolocation notin [CN,VN] driver_version >= 535.86.05 duration>2 num_gpus in [1,2]"#
            ),
            json!({"gpu_name":{"in":["RTX 4090","RTX 3090"]},"geolocation":{"notin":["CN","VN"]},
                   "driver_version":{"gte":535086005},"duration":{"gt":172800.0},"num_gpus":{"in":["1","2"]}})
        );
    }

    #[test]
    fn wildcard_removes_default_and_merges() {
        let mut req = SearchRequest::new("verified=any cuda_vers>=12.0 cuda_vers<14.0");
        req.kind = OfferType::Bid;
        req.limit = Some(0);
        let body = req.to_body().unwrap();
        assert!(body.get("verified").is_none());
        assert!(body.get("limit").is_none());
        assert_eq!(body["type"], "bid");
        assert_eq!(body["cuda_max_good"], json!({"gte": "12.0", "lt": "14.0"}));
    }

    #[test]
    fn errors_have_cli_messages() {
        let e = |q: &str| parse_query(q).unwrap_err().to_string();
        assert_eq!(
            e("gpu_ram=<5"),
            "Unknown operator. Did you forget to quote your query? '=<'"
        );
        assert_eq!(
            e("foo"),
            "Unknown operator. Did you forget to quote your query? ''"
        );
        assert_eq!(
            e("!!!"),
            "Unconsumed text. Did you forget to quote your query? '' != '!!!'"
        );
        assert_eq!(e("gpu_ram=abc"), "could not convert string to float: 'abc'");
        assert_eq!(e("num_gpus>=any"), "Wildcard only makes sense with equals.");
        assert_eq!(
            e("driver_version=5.3"),
            "Value cannot be blank. Did you forget to quote your query? ('driver_version', '=', None)"
        );
        assert_eq!(
            e("num_gpus in [,]"),
            "Value cannot be blank. Did you forget to quote your query? ('num_gpus', 'in', [])"
        );
    }

    #[test]
    fn order_parsing() {
        assert_eq!(
            parse_order("num_gpus,total_flops-, dph+ ,-score"),
            vec![
                ("num_gpus".to_string(), Direction::Asc),
                ("total_flops".to_string(), Direction::Desc),
                ("dph_total".to_string(), Direction::Asc),
                ("score".to_string(), Direction::Desc),
            ]
        );
    }

    #[test]
    fn repr_quotes_like_python() {
        assert_eq!(py_repr("a'b"), "\"a'b\"");
        assert_eq!(py_repr("a'b\""), "'a\\'b\"'");
        assert_eq!(py_repr("x\ty"), "'x\\ty'");
    }
}
