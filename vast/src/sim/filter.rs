//! The offer filter engine as Vast's server applies it, as a pure function over JSON.
//!
//! Clients send `{field: {op: value}}` with ops `eq neq gt gte lt lte in notin`. The official
//! CLI sends most numbers as strings (`{"gt": "0.98"}`), so values are coerced: a string that
//! parses as a number compares as one, `true`/`false` compare as 1/0 against numeric columns.
//! The server also rewrites some "virtual" columns (`verified` → `vericode`, `datacenter` →
//! `hosting_type`, `duration` → the offer's remaining seconds, `allocated_storage` →
//! `disk_space >=`, `geolocation` on its two-letter country suffix) and accepts a few aliases.
//! The planner may reuse [`matches`] to filter cached offers exactly as the market would.

use std::cmp::Ordering;

use serde_json::{Map, Value};

use super::catalog::country_code;

/// Top-level query keys that are not column filters.
pub const NON_FILTER_KEYS: &[&str] = &[
    "order",
    "type",
    "limit",
    "disable_bundling",
    "extra_ids",
    "show_incompatible",
    "sort_option",
    "template_id",
    "gpu_option",
    "select_cols",
    "has_avx_required",
];

/// Column aliases: the CLI's (`dph`, `cuda_vers`, …) and the server's (`reliability2`, …).
pub fn canonical_field(field: &str) -> &str {
    match field {
        "cuda_vers" => "cuda_max_good",
        "display_active" => "gpu_display_active",
        "dlperf_usd" => "dlperf_per_dphtotal",
        "dph" | "dphtotal" => "dph_total",
        "flops_usd" => "flops_per_dphtotal",
        "reliability2" => "reliability",
        "gpu_totalram" | "gpu_totalram_GB" => "gpu_total_ram",
        "gpu_ram_GB" => "gpu_ram",
        "cpu_ram_GB" => "cpu_ram",
        "ubuntu_version" => "os_version",
        other => other,
    }
}

fn unit_mult(field: &str) -> f64 {
    if field.ends_with("_GB") { 1000.0 } else { 1.0 }
}

/// Converts a dotted driver version to Vast's integer form (`535.86.05` → 535086005).
pub fn numeric_version(v: &str) -> Option<i64> {
    let mut out = String::new();
    for part in v.trim().split('.') {
        let n: u32 = part.trim().parse().ok()?;
        out.push_str(&format!("{n:03}"));
    }
    out.parse().ok()
}

/// A JSON value as a number, if it is one (numbers, numeric strings, booleans as 1/0).
pub fn as_num(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
        Value::String(s) => {
            let t = s.trim();
            if t.eq_ignore_ascii_case("true") {
                Some(1.0)
            } else if t.eq_ignore_ascii_case("false") {
                Some(0.0)
            } else {
                t.parse::<f64>().ok().filter(|x| x.is_finite())
            }
        }
        _ => None,
    }
}

fn num_eq(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

fn values_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Null, Value::Null) => true,
        (Value::Null, _) | (_, Value::Null) => false,
        (Value::String(x), Value::String(y)) => {
            if x.trim() == y.trim() {
                return true;
            }
            match (as_num(a), as_num(b)) {
                (Some(p), Some(q)) => num_eq(p, q),
                _ => false,
            }
        }
        _ => match (as_num(a), as_num(b)) {
            (Some(p), Some(q)) => num_eq(p, q),
            _ => a == b,
        },
    }
}

fn values_cmp(a: &Value, b: &Value) -> Option<Ordering> {
    match (as_num(a), as_num(b)) {
        (Some(p), Some(q)) => p.partial_cmp(&q),
        _ => match (a, b) {
            (Value::String(x), Value::String(y)) => Some(x.as_str().cmp(y.as_str())),
            _ => None,
        },
    }
}

fn list_of(v: &Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a.clone(),
        other => vec![other.clone()],
    }
}

/// Applies one operator: `actual op wanted`.
pub fn compare(actual: &Value, op: &str, wanted: &Value) -> bool {
    match op {
        "eq" => values_eq(actual, wanted),
        "neq" | "ne" => !values_eq(actual, wanted),
        "in" => list_of(wanted).iter().any(|w| values_eq(actual, w)),
        "notin" | "nin" => !list_of(wanted).iter().any(|w| values_eq(actual, w)),
        "gt" => values_cmp(actual, wanted) == Some(Ordering::Greater),
        "gte" => matches!(
            values_cmp(actual, wanted),
            Some(Ordering::Greater | Ordering::Equal)
        ),
        "lt" => values_cmp(actual, wanted) == Some(Ordering::Less),
        "lte" => matches!(
            values_cmp(actual, wanted),
            Some(Ordering::Less | Ordering::Equal)
        ),
        // Unknown operators match nothing, as an SQL error would return nothing.
        _ => false,
    }
}

fn scale(v: &Value, mult: f64) -> Value {
    if mult == 1.0 {
        return v.clone();
    }
    match v {
        Value::Array(a) => Value::Array(a.iter().map(|x| scale(x, mult)).collect()),
        other => match as_num(other) {
            Some(n) => serde_json::json!(n * mult),
            None => other.clone(),
        },
    }
}

fn map_values(v: &Value, f: &dyn Fn(&Value) -> Value) -> Value {
    match v {
        Value::Array(a) => Value::Array(a.iter().map(f).collect()),
        other => f(other),
    }
}

fn upper_country(v: &Value) -> Value {
    match v {
        Value::String(s) => Value::String(country_code(s).to_ascii_uppercase()),
        other => other.clone(),
    }
}

/// Whether `offer` satisfies every filter in `filters` (a Vast search body; its non-filter keys
/// such as `order`, `type` and `limit` are ignored, `allocated_storage` acts as
/// `disk_space >= value`). Fields the offer lacks compare as null. `rented` is ignored, as
/// Vast's backend does.
pub fn matches(filters: &Map<String, Value>, offer: &Value) -> bool {
    for (field, spec) in filters {
        let field = field.as_str();
        if NON_FILTER_KEYS.contains(&field) || field == "rented" {
            continue;
        }
        if field == "allocated_storage" {
            if let Some(gb) = as_num(spec)
                && !compare(
                    offer.get("disk_space").unwrap_or(&Value::Null),
                    "gte",
                    &serde_json::json!(gb),
                )
            {
                return false;
            }
            continue;
        }
        if field == "target_reliability" {
            if let Some(r) = as_num(spec)
                && !compare(
                    offer.get("reliability").unwrap_or(&Value::Null),
                    "gte",
                    &serde_json::json!(r),
                )
            {
                return false;
            }
            continue;
        }
        let Some(ops) = spec.as_object() else {
            continue;
        };
        for (op, wanted) in ops {
            if !field_matches(field, op, wanted, offer) {
                return false;
            }
        }
    }
    true
}

fn field_matches(field: &str, op: &str, wanted: &Value, offer: &Value) -> bool {
    let get = |k: &str| offer.get(k).cloned().unwrap_or(Value::Null);
    match field {
        // Virtual columns rewritten by the server.
        "verified" => {
            let actual = match offer.get("vericode") {
                Some(v) if !v.is_null() => v.clone(),
                _ => Value::Bool(
                    offer.get("verification").and_then(Value::as_str) == Some("verified"),
                ),
            };
            compare(&actual, op, wanted)
        }
        "datacenter" => compare(&get("hosting_type"), op, wanted),
        "geolocation" => {
            let actual = upper_country(&get("geolocation"));
            compare(&actual, op, &map_values(wanted, &upper_country))
        }
        "driver_version" | "driver_vers" => {
            let actual = match offer.get("driver_vers") {
                Some(v) if !v.is_null() => v.clone(),
                _ => match offer.get("driver_version").and_then(Value::as_str) {
                    Some(s) => numeric_version(s).map(Value::from).unwrap_or(Value::Null),
                    None => Value::Null,
                },
            };
            let conv = |v: &Value| match v {
                Value::String(s) if s.contains('.') => numeric_version(s)
                    .map(Value::from)
                    .unwrap_or_else(|| v.clone()),
                other => other.clone(),
            };
            compare(&actual, op, &map_values(wanted, &conv))
        }
        other => {
            let col = canonical_field(other);
            let wanted = scale(wanted, unit_mult(other));
            compare(&get(col), op, &wanted)
        }
    }
}

/// One sort key: field and whether it sorts descending.
pub type OrderKey = (String, bool);

/// Reads an `order` value: `[["field","asc|desc"], …]`, `[{"col":..,"dir":..}, …]`, or
/// `["field-", "field+"]`. Aliases are applied. `None` when the value has no usable key.
pub fn parse_order(v: &Value) -> Vec<OrderKey> {
    let mut out = Vec::new();
    let Some(items) = v.as_array() else {
        return out;
    };
    for item in items {
        let (field, dir) = match item {
            Value::Array(pair) => (
                pair.first().and_then(Value::as_str).unwrap_or(""),
                pair.get(1).and_then(Value::as_str).unwrap_or("asc"),
            ),
            Value::Object(o) => (
                o.get("col").and_then(Value::as_str).unwrap_or(""),
                o.get("dir").and_then(Value::as_str).unwrap_or("asc"),
            ),
            Value::String(s) => {
                if let Some(f) = s.strip_suffix('-') {
                    (f, "desc")
                } else {
                    (s.strip_suffix('+').unwrap_or(s), "asc")
                }
            }
            _ => continue,
        };
        if field.is_empty() {
            continue;
        }
        out.push((
            canonical_field(field).to_string(),
            dir.eq_ignore_ascii_case("desc"),
        ));
    }
    out
}

fn compare_rows(a: &Value, b: &Value, order: &[OrderKey]) -> Ordering {
    for (field, desc) in order {
        let x = a.get(field).unwrap_or(&Value::Null);
        let y = b.get(field).unwrap_or(&Value::Null);
        let ord = match (x.is_null(), y.is_null()) {
            (true, true) => Ordering::Equal,
            (true, false) => Ordering::Greater,
            (false, true) => Ordering::Less,
            _ => {
                let o = values_cmp(x, y).unwrap_or(Ordering::Equal);
                if *desc { o.reverse() } else { o }
            }
        };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    let ia = a.get("id").and_then(Value::as_i64).unwrap_or(0);
    let ib = b.get("id").and_then(Value::as_i64).unwrap_or(0);
    ia.cmp(&ib)
}

/// Sorts rows by the keys (nulls last in either direction), then by `id` ascending so equal
/// keys come out in a stable, deterministic order.
pub fn sort_rows(rows: &mut [Value], order: &[OrderKey]) {
    rows.sort_by(|a, b| compare_rows(a, b, order));
}

/// [`sort_rows`] over borrowed rows.
pub fn sort_refs(rows: &mut [&Value], order: &[OrderKey]) {
    rows.sort_by(|a, b| compare_rows(a, b, order));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn f(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn numeric_strings_are_coerced() {
        let offer = json!({"reliability": 0.99, "num_gpus": 2, "gpu_name": "RTX 4090"});
        assert!(matches(&f(json!({"reliability": {"gt": "0.98"}})), &offer));
        assert!(!matches(
            &f(json!({"reliability": {"gt": "0.995"}})),
            &offer
        ));
        assert!(matches(&f(json!({"num_gpus": {"in": ["1", "2"]}})), &offer));
        assert!(matches(
            &f(json!({"num_gpus": {"notin": ["1", "4"]}})),
            &offer
        ));
        assert!(matches(&f(json!({"gpu_name": {"eq": "RTX 4090"}})), &offer));
        assert!(!matches(
            &f(json!({"gpu_name": {"neq": "RTX 4090"}})),
            &offer
        ));
    }

    #[test]
    fn virtual_columns() {
        let offer = json!({"vericode": 1, "hosting_type": 0, "geolocation": "Texas, US",
                           "driver_vers": 535086005, "disk_space": 100.0, "duration": 86400.0});
        assert!(matches(&f(json!({"verified": {"eq": true}})), &offer));
        assert!(!matches(&f(json!({"verified": {"eq": false}})), &offer));
        assert!(matches(&f(json!({"datacenter": {"eq": false}})), &offer));
        assert!(matches(
            &f(json!({"geolocation": {"in": ["US", "CA"]}})),
            &offer
        ));
        assert!(!matches(
            &f(json!({"geolocation": {"notin": ["US"]}})),
            &offer
        ));
        assert!(matches(&f(json!({"geolocation": {"eq": "us"}})), &offer));
        assert!(matches(
            &f(json!({"driver_version": {"gte": "535.86.05"}})),
            &offer
        ));
        assert!(!matches(
            &f(json!({"driver_version": {"gt": 535086005}})),
            &offer
        ));
        assert!(matches(&f(json!({"allocated_storage": 50.0})), &offer));
        assert!(!matches(&f(json!({"allocated_storage": 150.0})), &offer));
        assert!(matches(&f(json!({"duration": {"gte": 3600}})), &offer));
        assert!(matches(
            &f(json!({"rented": {"eq": false}, "order": [["x","asc"]]})),
            &offer
        ));
    }

    #[test]
    fn order_and_aliases() {
        assert_eq!(
            parse_order(&json!([["dph", "asc"], ["score", "desc"]])),
            vec![
                ("dph_total".to_string(), false),
                ("score".to_string(), true)
            ]
        );
        let mut rows = vec![
            json!({"id": 3, "x": 2}),
            json!({"id": 1, "x": null}),
            json!({"id": 2, "x": 2}),
            json!({"id": 4, "x": 1}),
        ];
        sort_rows(&mut rows, &parse_order(&json!([["x", "desc"]])));
        let ids: Vec<i64> = rows.iter().map(|r| r["id"].as_i64().unwrap_or(0)).collect();
        assert_eq!(ids, vec![2, 3, 4, 1]);
    }
}
